#!/usr/bin/env bash
# berthd vs dockerd, side by side on this machine (issue 2 figures):
#   median `docker run --rm IMAGE true`, 20 `docker run -d` in parallel, idle daemon RSS,
#   RSS per shim (berth-shim vs containerd-shim-runc-v2).
# dockerd (Debian docker.io) runs on its own socket and data root and is stopped afterwards;
# the firewall ruleset is saved before and restored after (dockerd rewrites iptables).
# DOCKERD_ARGS adds dockerd flags (e.g. --iptables=false while other tests share the host).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-15}
PAR=${PAR:-20}
W=$(mktemp -d /tmp/bb.XXXX)
BERTH_SOCK=$W/berth.sock
DOCKER_SOCK=$W/docker.sock
export DOCKER_CONFIG=$W/dc

if ! command -v dockerd >/dev/null; then
  # Install without letting the package start a system dockerd (it would rewrite iptables).
  had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  pkill -x dockerd 2>/dev/null || true
fi
# dockerd's iptables rules live in the ip/ip6 filter/nat tables: remember which existed and
# their contents; berth's own (inet) tables and anything else are left alone.
nft list tables > "$W/tables.before" 2>/dev/null || true
iptables-save > "$W/iptables.save" 2>/dev/null || true
ip6tables-save > "$W/ip6tables.save" 2>/dev/null || true

cleanup() {
  set +e
  DOCKER_HOST=unix://$BERTH_SOCK docker rm -f $(DOCKER_HOST=unix://$BERTH_SOCK docker ps -aq) >/dev/null 2>&1
  DOCKER_HOST=unix://$DOCKER_SOCK docker rm -f $(DOCKER_HOST=unix://$DOCKER_SOCK docker ps -aq) >/dev/null 2>&1
  [ -n "${BPID:-}" ] && kill "$BPID" 2>/dev/null && wait "$BPID" 2>/dev/null
  [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  pkill -f "$W" 2>/dev/null
  sleep 1
  grep " $W" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  ip link del bbench0 2>/dev/null; ip link del docker0 2>/dev/null
  nft delete table inet bbench 2>/dev/null
  for c in /sys/fs/cgroup/*/bbench; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; ; done 2>/dev/null
  for t in "ip filter" "ip nat" "ip mangle" "ip raw" "ip6 filter" "ip6 nat" "ip6 mangle" "ip6 raw"; do
    grep -qx "table $t" "$W/tables.before" || nft delete table $t 2>/dev/null
  done
  [ -s "$W/iptables.save" ] && iptables-restore < "$W/iptables.save" 2>/dev/null
  [ -s "$W/ip6tables.save" ] && ip6tables-restore < "$W/ip6tables.save" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

# Image: busybox-static rootfs.
mkdir -p "$W/root/bin" "$W/root/etc" "$W/root/tmp"
cp /bin/busybox "$W/root/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$W/root/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$W/root/etc/passwd"
tar -C "$W/root" -cf "$W/bb.tar" .

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
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
for who in berth docker; do
  sock=$([ $who = berth ] && echo "$BERTH_SOCK" || echo "$DOCKER_SOCK")
  pid=$([ $who = berth ] && echo "$BPID" || echo "$DPID")
  export DOCKER_HOST=unix://$sock
  docker import "$W/bb.tar" bb:bench >/dev/null
  sleep 2
  R[$who.idle_rss_kb]=$(rss_kb "$pid")
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
  R[$who.busy_rss_kb]=$(rss_kb "$pid")
  docker rm -f $(docker ps -aq) >/dev/null
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "n/a"; else printf "%.3f", a / b }'; }
printf '%-36s %12s %12s %8s\n' metric berthd dockerd ratio
printf '%-36s %12s %12s %8s\n' "docker run --rm true, median ms (n=$N)" "${R[berth.run_ms]}" "${R[docker.run_ms]}" "$(ratio "${R[berth.run_ms]}" "${R[docker.run_ms]}")"
printf '%-36s %12s %12s %8s\n' "$PAR x docker run -d in parallel, ms" "${R[berth.par_ms]}" "${R[docker.par_ms]}" "$(ratio "${R[berth.par_ms]}" "${R[docker.par_ms]}")"
printf '%-36s %12s %12s %8s\n' "idle daemon RSS, KiB" "${R[berth.idle_rss_kb]}" "${R[docker.idle_rss_kb]}" "$(ratio "${R[berth.idle_rss_kb]}" "${R[docker.idle_rss_kb]}")"
printf '%-36s %12s %12s %8s\n' "daemon RSS with $PAR containers, KiB" "${R[berth.busy_rss_kb]}" "${R[docker.busy_rss_kb]}" "$(ratio "${R[berth.busy_rss_kb]}" "${R[docker.busy_rss_kb]}")"
printf '%-36s %12s %12s %8s\n' "RSS per shim, KiB (n=${R[berth.shims]}/${R[docker.shims]})" "${R[berth.shim_rss_kb]}" "${R[docker.shim_rss_kb]}" "$(ratio "${R[berth.shim_rss_kb]}" "${R[docker.shim_rss_kb]}")"

# Issue 2's targets: run latency at most a quarter of dockerd's, shim under 2 MiB, idle
# berthd under 20 MiB. The bench exits non-zero when one is missed.
fail=0
check() { if awk -v v="$2" -v t="$3" 'BEGIN{exit !(v <= t)}'; then echo "target met:     $1 ($2 <= $3)"; else echo "target missed:  $1 ($2 > $3)"; fail=1; fi; }
check "run latency ratio" "$(ratio "${R[berth.run_ms]}" "${R[docker.run_ms]}")" 0.25
check "shim RSS KiB" "${R[berth.shim_rss_kb]}" 2048
check "idle berthd RSS KiB" "${R[berth.idle_rss_kb]}" 20480
exit $fail
