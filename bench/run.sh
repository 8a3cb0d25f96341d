#!/usr/bin/env bash
# berthd vs dockerd, side by side on this machine (issue 2 figures):
#   median `docker run --rm IMAGE true`, 20 `docker run -d` in parallel, idle daemon RSS,
#   RSS per shim (berth-shim vs containerd-shim-runc-v2).
# dockerd (Debian docker.io) runs on its own socket and data root and is stopped afterwards;
# the firewall ruleset is saved before and restored after (dockerd rewrites iptables).
# DOCKERD_ARGS adds dockerd flags (e.g. --iptables=false while other tests share the host).
# BENCH=startup runs only these figures, BENCH=upgrade only bench/upgrade.sh (issue 3: live
# upgrades under load against dockerd --live-restore), BENCH=egress only bench/egress.sh
# (issue 4: egress shaping accuracy at 10/50/200 Mbit/s), BENCH=net only bench/net.sh (issue
# 4: bridge throughput, network create/rm/connect times), BENCH=memory only bench/memory.sh
# (issue 5: the elastic-memory controller's CPU cost and reaction time), BENCH=images only
# bench/images.sh (pull, save/load and push against dockerd on one local registry, and
# save/load interop both ways); the default runs all, one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BENCH=${BENCH:-all}
case $BENCH in
  upgrade) exec bash bench/upgrade.sh ;;
  egress) exec bash bench/egress.sh ;;
  net) exec bash bench/net.sh ;;
  memory) exec bash bench/memory.sh ;;
  images) exec bash bench/images.sh ;;
  all|startup) ;;
  *) echo "BENCH=$BENCH: expected all, startup, upgrade, egress, net, memory or images" >&2; exit 2 ;;
esac
N=${N:-15}
PAR=${PAR:-20}
W=$(mktemp -d /tmp/bb.XXXX)
BERTH_SOCK=$W/berth.sock
DOCKER_SOCK=$W/docker.sock
export DOCKER_CONFIG=$W/dc

bench_install_docker
bench_fw_save "$W"

cleanup() {
  set +e
  DOCKER_HOST=unix://$BERTH_SOCK docker rm -f $(DOCKER_HOST=unix://$BERTH_SOCK docker ps -aq) >/dev/null 2>&1
  DOCKER_HOST=unix://$DOCKER_SOCK docker rm -f $(DOCKER_HOST=unix://$DOCKER_SOCK docker ps -aq) >/dev/null 2>&1
  [ -n "${BPID:-}" ] && bench_stop_pid "$BPID" 30
  [ -n "${DPID:-}" ] && bench_stop_pid "$DPID" 30
  bench_kill_under "$W"
  bench_cgroup_purge bbench
  sleep 1
  bench_umount_under "$W"
  ip link del bbench0 2>/dev/null; ip link del docker0 2>/dev/null
  nft delete table inet bbench 2>/dev/null
  bench_cgroup_purge bbench
  bench_fw_restore "$W"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

bench_image "$W"

target/release/berthd -H "unix://$BERTH_SOCK" --data-root "$W/berth" --exec-root "$W/berthx" \
  --bridge bbench0 --bip 10.231.0.1/24 --nft-table bbench --cgroup-parent /bbench >"$W/berthd.log" 2>&1 &
BPID=$!
dockerd -H "unix://$DOCKER_SOCK" --data-root "$W/docker" --exec-root "$W/dockerx" \
  --pidfile "$W/docker.pid" ${DOCKERD_ARGS:-} >"$W/dockerd.log" 2>&1 &
DPID=$!
for s in "$BERTH_SOCK" "$DOCKER_SOCK"; do
  for _ in $(seq 300); do DOCKER_HOST=unix://$s docker version >/dev/null 2>&1 && break; sleep 0.1; done
done

rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# berthd is a master and its worker (a child named berthd): the daemon's RSS is both.
daemon_rss_kb() { # WHO PID
  local t c
  t=$(rss_kb "$2")
  if [ "$1" = berth ]; then
    for c in $(pgrep -P "$2" -x berthd || true); do t=$((t + $(rss_kb "$c"))); done
  fi
  echo "$t"
}
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
for who in berth docker; do
  sock=$([ $who = berth ] && echo "$BERTH_SOCK" || echo "$DOCKER_SOCK")
  pid=$([ $who = berth ] && echo "$BPID" || echo "$DPID")
  export DOCKER_HOST=unix://$sock
  docker import "$W/bb.tar" bb:bench >/dev/null
  sleep 2
  R[$who.idle_rss_kb]=$(daemon_rss_kb $who "$pid")
  docker run --rm bb:bench true >/dev/null   # warm-up
  for i in $(seq "$N"); do
    s=$(date +%s%N); docker run --rm bb:bench true >/dev/null; e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
  done > "$W/$who.run"
  R[$who.run_ms]=$(median < "$W/$who.run")
  s=$(date +%s%N)
  jobs_=(); for i in $(seq "$PAR"); do docker run -d bb:bench sleep 3600 >/dev/null & jobs_+=($!); done
  wait "${jobs_[@]}"
  e=$(date +%s%N)
  R[$who.par_ms]=$(( (e - s) / 1000000 ))
  sleep 2
  if [ $who = berth ]; then shims=$(pgrep -f "berth-shim --config $W/berthx" || true)
  else shims=$(pgrep -f containerd-shim-runc-v2 || true); fi
  tot=0; n=0; for p in $shims; do tot=$((tot + $(rss_kb "$p"))); n=$((n + 1)); done
  R[$who.shim_rss_kb]=$(( n > 0 ? tot / n : 0 )); R[$who.shims]=$n
  R[$who.busy_rss_kb]=$(daemon_rss_kb $who "$pid")
  docker rm -f $(docker ps -aq) >/dev/null
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "n/a"; else printf "%.3f", a / b }'; }
printf '%-36s %12s %12s %8s\n' metric berthd dockerd ratio
printf '%-36s %12s %12s %8s\n' "docker run --rm true, median ms (n=$N)" "${R[berth.run_ms]}" "${R[docker.run_ms]}" "$(ratio "${R[berth.run_ms]}" "${R[docker.run_ms]}")"
printf '%-36s %12s %12s %8s\n' "$PAR x docker run -d in parallel, ms" "${R[berth.par_ms]}" "${R[docker.par_ms]}" "$(ratio "${R[berth.par_ms]}" "${R[docker.par_ms]}")"
printf '%-36s %12s %12s %8s\n' "idle daemon RSS KiB (master+worker)" "${R[berth.idle_rss_kb]}" "${R[docker.idle_rss_kb]}" "$(ratio "${R[berth.idle_rss_kb]}" "${R[docker.idle_rss_kb]}")"
printf '%-36s %12s %12s %8s\n' "daemon RSS with $PAR containers, KiB" "${R[berth.busy_rss_kb]}" "${R[docker.busy_rss_kb]}" "$(ratio "${R[berth.busy_rss_kb]}" "${R[docker.busy_rss_kb]}")"
printf '%-36s %12s %12s %8s\n' "RSS per shim, KiB (n=${R[berth.shims]}/${R[docker.shims]})" "${R[berth.shim_rss_kb]}" "${R[docker.shim_rss_kb]}" "$(ratio "${R[berth.shim_rss_kb]}" "${R[docker.shim_rss_kb]}")"

# Issue 2's targets: run latency at most a quarter of dockerd's, shim under 2 MiB, idle
# berthd under 20 MiB. The bench exits non-zero when one is missed.
fail=0
check() { if awk -v v="$2" -v t="$3" 'BEGIN{exit !(v <= t)}'; then echo "target met:     $1 ($2 <= $3)"; else echo "target missed:  $1 ($2 > $3)"; fail=1; fi; }
check "run latency ratio" "$(ratio "${R[berth.run_ms]}" "${R[docker.run_ms]}")" 0.25
check "shim RSS KiB" "${R[berth.shim_rss_kb]}" 2048
check "idle berthd RSS KiB" "${R[berth.idle_rss_kb]}" 20480
if [ "$BENCH" = all ]; then
  # The upgrade bench sets up its own daemons on the same bridge/table names: clean up first.
  trap - EXIT
  cleanup
  bash bench/upgrade.sh || fail=1
  bash bench/egress.sh || fail=1
  bash bench/net.sh || fail=1
  bash bench/memory.sh || fail=1
  bash bench/images.sh || fail=1
fi
exit $fail
