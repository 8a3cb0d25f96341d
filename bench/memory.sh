#!/usr/bin/env bash
# Issue 5 figures: what the elastic-memory controller costs and how fast it acts.
#   1. CPU of berthd (master + worker, utime + stime) over $IDLE_S seconds with 100 idle
#      containers (`-m 64m`, half of them elastic), with --elastic-memory (100 ms ticks) and
#      then without it (the same daemon roots restarted); dockerd with 100 idle `-m 64m`
#      containers as the reference (it has no controller).
#   2. Reaction from pressure to action, $ROUNDS rounds on a 600 MiB pool (low 60, critical
#      24 MiB): a holds 280 MiB within its 300 MiB entitlement, b (entitled to 50 MiB,
#      elastic) holds 200 MiB; c1 claims 80 MiB at once (headroom under the low threshold:
#      squeeze), then c2 claims 100 MiB at once (critical: kill). A poller (every 0.5 ms)
#      notes when the pool's headroom crosses the threshold (or the pool runs out) and when
#      b's limit dropped / b's group is empty.
# Run by bench/run.sh (BENCH=memory, or all); dockerd runs on its own socket and data root
# and is stopped afterwards, the firewall ruleset is saved and restored.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
IDLE_S=${IDLE_S:-30}
ROUNDS=${ROUNDS:-5}
W=$(mktemp -d /tmp/bm.XXXX)
BS=$W/berth.sock
DS=$W/docker.sock
export DOCKER_CONFIG=$W/dc
bench_install_docker
bench_fw_save "$W"

cleanup() {
  set +e
  for s in "$BS" "$W/r.sock" "$DS"; do
    DOCKER_HOST=unix://$s docker rm -f $(DOCKER_HOST=unix://$s docker ps -aq 2>/dev/null) >/dev/null 2>&1
  done
  [ -n "${BPID:-}" ] && bench_stop_pid "$BPID" 30
  [ -n "${RPID:-}" ] && bench_stop_pid "$RPID" 30
  [ -n "${DPID:-}" ] && bench_stop_pid "$DPID" 30
  bench_kill_under "$W"
  bench_cgroup_purge bmem
  bench_cgroup_purge bmemr
  sleep 1
  bench_umount_under "$W"
  ip link del bmem0 2>/dev/null; ip link del bmemr0 2>/dev/null; ip link del docker0 2>/dev/null
  nft delete table inet bmem 2>/dev/null; nft delete table inet bmemr 2>/dev/null
  bench_cgroup_purge bmem
  bench_cgroup_purge bmemr
  bench_fw_restore "$W"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
bench_image "$W"

# CPU ticks (utime + stime) of a berthd master and its worker(s), or of one process.
ticks() { # PID [berth]
  local t=0 p
  for p in "$1" $([ "${2:-}" = berth ] && pgrep -P "$1" -x berthd || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
# Percent of one CPU used by PID over IDLE_S seconds.
cpu_pct() { # PID [berth]
  local a b hz
  hz=$(getconf CLK_TCK)
  a=$(ticks "$@"); sleep "$IDLE_S"; b=$(ticks "$@")
  awk -v d=$((b - a)) -v hz="$hz" -v s="$IDLE_S" 'BEGIN{printf "%.2f", 100 * d / hz / s}'
}
# Starts berthd as a child of this shell (so that it can be waited for); its pid goes into
# the variable named VAR.
start_berth() { # VAR SOCK NAME EXTRA-ENV...
  local var=$1 sock=$2 name=$3; shift 3
  env "$@" target/release/berthd -H "unix://$sock" --data-root "$W/$name" --exec-root "$W/${name}x" \
    --bridge "${name}0" --bip "10.$((RANDOM % 50 + 180)).0.1/24" --nft-table "$name" \
    --cgroup-parent "/$name" >>"$W/$name.log" 2>&1 &
  printf -v "$var" %s $!
}
hundred() { # how
  local i
  for i in $(seq 100); do
    if [ "$1" = elastic ] && [ $((i % 2)) = 0 ]; then
      docker run -d -m 64m --label berth.memory.elastic=256m bb sleep 100000 >/dev/null
    else
      docker run -d -m 64m bb sleep 100000 >/dev/null
    fi
  done
}

echo "== 1. controller cost: CPU with 100 idle containers over ${IDLE_S}s"
start_berth BPID "$BS" bmem BERTH_ELASTIC_MEMORY=interval-ms=100
bench_wait_ping "$BS"
export DOCKER_HOST=unix://$BS
docker import "$W/bb.tar" bb >/dev/null
hundred elastic
sleep 3
ON=$(cpu_pct "$BPID" berth)
bench_stop_pid "$BPID" 30
start_berth BPID "$BS" bmem
bench_wait_ping "$BS"
[ "$(docker ps -q | wc -l)" = 100 ] || { echo "containers did not survive the restart" >&2; exit 1; }
sleep 3
OFF=$(cpu_pct "$BPID" berth)
docker rm -f $(docker ps -aq) >/dev/null
bench_stop_pid "$BPID" 30; BPID=
bench_cgroup_purge bmem

dockerd -H "unix://$DS" --data-root "$W/docker" --exec-root "$W/dockerx" \
  --pidfile "$W/docker.pid" ${DOCKERD_ARGS:-} >"$W/dockerd.log" 2>&1 &
DPID=$!
bench_wait_ping "$DS" 60
export DOCKER_HOST=unix://$DS
docker import "$W/bb.tar" bb >/dev/null
hundred plain
sleep 3
DOCK=$(cpu_pct "$DPID")
CTRD=$(pgrep -x containerd | head -1 || true)
docker rm -f $(docker ps -aq) >/dev/null
bench_stop_pid "$DPID" 30; DPID=

echo "== 2. reaction time, ${ROUNDS} rounds (pool 600 MiB, low 60, critical 24, ticks 100 ms)"
RS=$W/r.sock
start_berth RPID "$RS" bmemr BERTH_ELASTIC_MEMORY=pool-size=600m,low-headroom=60m,critical-headroom=24m,interval-ms=100
bench_wait_ping "$RS"
export DOCKER_HOST=unix://$RS
docker import "$W/bb.tar" bb >/dev/null
POOL=/sys/fs/cgroup/memory/bmemr
hogcmd() { echo "mkfifo /hog; ($1; sleep 100000) >/hog & exec tail -c 1000m </hog >/dev/null"; }
: > "$W/kill.txt"; : > "$W/squeeze.txt"
KERNEL_KILLS=0
for r in $(seq "$ROUNDS"); do
  a=$(docker run -d -m 300m bb sh -c "$(hogcmd 'head -c 280m /dev/zero')")
  until [ "$(cat $POOL/$a/memory.usage_in_bytes)" -ge $((275 << 20)) ]; do sleep 0.05; done
  b=$(docker run -d -m 50m --label berth.memory.elastic=max bb sh -c "$(hogcmd 'head -c 200m /dev/zero')")
  until [ "$(cat $POOL/$b/memory.usage_in_bytes)" -ge $((198 << 20)) ]; do sleep 0.05; done
  sleep 0.5
  python3 bench/memory_poll.py squeeze "$POOL" "$POOL/$b" $((600 << 20)) $((60 << 20)) >> "$W/squeeze.txt" &
  PP=$!
  sleep 0.2
  c1=$(docker run -d -m 100m bb sh -c "$(hogcmd 'head -c 80m /dev/zero')")
  wait $PP
  python3 bench/memory_poll.py kill "$POOL" "$POOL/$b" $((600 << 20)) $((24 << 20)) >> "$W/kill.txt" &
  PP=$!
  sleep 0.2
  c2=$(docker run -d -m 150m bb sh -c "$(hogcmd 'head -c 100m /dev/zero')")
  wait $PP
  for _ in $(seq 100); do [ "$(docker inspect -f '{{.State.Running}}' "$b")" = false ] && break; sleep 0.05; done
  [ "$(docker inspect -f '{{.State.OOMKilled}}' "$b")" = true ] || echo "round $r: b not marked OOMKilled" >&2
  for g in "$a" "$b" "$c1" "$c2"; do
    KERNEL_KILLS=$((KERNEL_KILLS + $(awk '/^oom_kill /{print $2}' "$POOL/$g/memory.oom_control" 2>/dev/null || echo 0)))
  done
  docker rm -f "$a" "$b" "$c1" "$c2" >/dev/null
  sleep 0.5
done

med() { sort -n | awk '{a[NR]=$1} END{if(NR==0){print "n/a"}else{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}}'; }
echo
echo "| figure | berthd | dockerd |"
echo "|---|---|---|"
echo "| CPU, 100 idle containers, elastic memory on (50 elastic, 100 ms ticks) | ${ON} % | — |"
echo "| CPU, 100 idle containers, elastic memory off | ${OFF} % | ${DOCK} % (dockerd alone) |"
echo "| controller's own cost (on − off) | $(awk -v a="$ON" -v b="$OFF" 'BEGIN{printf "%.2f", a - b}') % of one CPU | — |"
echo "| kill: pool at critical headroom → victim gone, median / max of $ROUNDS | $(awk '{print $1}' "$W/kill.txt" | med) / $(awk '{print $1}' "$W/kill.txt" | sort -n | tail -1) ms | — |"
echo "| squeeze: pool under low headroom → bursting limit lowered, median / max of $ROUNDS | $(awk '{print $1}' "$W/squeeze.txt" | med) / $(awk '{print $1}' "$W/squeeze.txt" | sort -n | tail -1) ms | — |"
echo "| kernel OOM kills during the rounds | ${KERNEL_KILLS} | — |"
[ -n "$CTRD" ] && echo "(containerd's CPU is not included in dockerd's figure)"
