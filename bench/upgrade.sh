#!/usr/bin/env bash
# Live upgrade under load (issue 3), berthd against dockerd --live-restore:
#   berthd: $CONTAINERS running containers, berth-load's $CLIENTS clients (fresh and kept-alive
#     connections mixing _ping, containers/json, inspect and create/start/rm), $UPGRADES
#     consecutive `berthd upgrade`s, alternating between the build's binary and a copy at
#     another path (a real binary swap);
#   dockerd --live-restore: the same containers and load, $RESTARTS restarts (SIGTERM, wait,
#     start again with the same flags).
# Each upgrade/restart is a window (CLOCK_REALTIME ns): for berthd from just before to just
# after the `berthd upgrade` command, for dockerd from the SIGTERM to the first successful
# _ping. berth-load splits its latencies by these windows; bench/upgrade_report.py prints the
# table and exits non-zero when berthd misses issue 3's targets: 0 refused connections,
# 0 failed requests, every upgrade committed, freeze plus cut-over under 20 ms at p99.
#
# ONLY=berth|docker runs one side. DOCKERD_ARGS replaces dockerd's extra flags (default
# --iptables=false: no container here has a network, and dockerd's iptables rewrite would
# disturb whatever else shares the host; the firewall is saved and restored either way).
# BERTHD_ARGS adds berthd flags (e.g. "-l debug" to log the cut-over phases). KEEP=1 keeps
# the work directory (logs, reports, request records). CPU_SHARES=N runs the whole bench (both
# daemons, their shims and the load generator alike) in a cpu cgroup of that weight (1024 is
# a plain process's), to measure it apart from other load on a shared host.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
UPGRADES=${UPGRADES:-20}
RESTARTS=${RESTARTS:-3}
CONTAINERS=${CONTAINERS:-100}
CLIENTS=${CLIENTS:-32}
SETTLE=${SETTLE:-2}          # seconds of plain load before the first and after each window
ONLY=${ONLY:-both}
DOCKERD_ARGS=${DOCKERD_ARGS---iptables=false}
REL=$PWD/target/release
for b in berthd berth-shim berth-load; do
  [ -x "$REL/$b" ] || { echo "missing $REL/$b: cargo build --release --workspace" >&2; exit 2; }
done
if [ "$ONLY" != berth ]; then bench_install_docker; fi
W=$(mktemp -d /tmp/bu.XXXX)
BERTH_SOCK=$W/berth.sock
DOCKER_SOCK=$W/docker.sock
export DOCKER_CONFIG=$W/dc
BPID= DPID= LPID=
DOCKERD_FLAGS=(-H "unix://$DOCKER_SOCK" --data-root "$W/docker" --exec-root "$W/dockerx"
  --pidfile "$W/docker.pid" --cgroup-parent /dbench --live-restore)

bench_fw_save "$W"

# Removes every container of the daemon on SOCK (no-op when it does not answer).
rm_all() { # SOCK
  local ids
  ids=$(DOCKER_HOST=unix://$1 timeout 60 docker ps -aq 2>/dev/null) || return 0
  [ -z "$ids" ] || DOCKER_HOST=unix://$1 timeout 120 docker rm -f $ids >/dev/null 2>&1
  return 0
}

start_dockerd() {
  dockerd "${DOCKERD_FLAGS[@]}" $DOCKERD_ARGS >>"$W/dockerd.log" 2>&1 &
  DPID=$!
}

cleanup() {
  set +e
  [ -n "$LPID" ] && bench_stop_pid "$LPID" 30 INT
  if [ -n "$BPID" ]; then rm_all "$BERTH_SOCK"; bench_stop_pid "$BPID" 30; fi
  if [ -n "$DPID" ]; then
    # With --live-restore a stopped dockerd leaves its containers running: remove them
    # through a running dockerd, started again if it had stopped.
    if ! bench_alive "$DPID"; then start_dockerd; bench_wait_ping "$DOCKER_SOCK" 30; fi
    rm_all "$DOCKER_SOCK"
    bench_stop_pid "$DPID" 30
  fi
  bench_kill_under "$W"          # containerd, shims, anything else started under $W
  bench_cgroup_purge bbench
  bench_cgroup_purge dbench
  bench_kill_under "$W"
  sleep 0.5
  bench_umount_under "$W"
  ip link del bbench0 2>/dev/null
  ip link del docker0 2>/dev/null
  nft delete table inet bbench 2>/dev/null
  bench_cgroup_purge bbench
  bench_cgroup_purge dbench
  bench_fw_restore "$W"
  [ -z "${CPU_SHARES:-}" ] || bench_cpu_release bbench-run
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -z "${CPU_SHARES:-}" ] || bench_cpu_isolate bbench-run "$CPU_SHARES"

bench_image "$W"

# Imports the image, starts $CONTAINERS containers and checks they run.
populate() { # SOCK
  export DOCKER_HOST=unix://$1
  docker import "$W/bb.tar" bb:bench >/dev/null
  seq "$CONTAINERS" | xargs -P 8 -I{} docker run -d --network none --name bench{} bb:bench \
    sleep 1000000 >/dev/null
  local n
  n=$(docker ps -q | wc -l)
  [ "$n" -eq "$CONTAINERS" ] || { echo "only $n of $CONTAINERS containers run" >&2; exit 1; }
}

# How many of populate's containers run (berthd's name filter is a substring match, dockerd's
# a regex: filter here).
running() { # SOCK
  DOCKER_HOST=unix://$1 docker ps --format '{{.Names}}' | grep -cE '^/?bench[0-9]+$' || true
}

start_load() { # SOCK PREFIX
  : > "$2.win"
  cut -d' ' -f1 /proc/loadavg > "$2.loadavg"
  "$REL/berth-load" --socket "$1" --clients "$CLIENTS" --image bb:bench --json \
    --windows "$2.win" --records "$2.records" > "$2.load.json" 2> "$2.load.err" &
  LPID=$!
  sleep "$SETTLE"
}

stop_load() { # PREFIX
  kill -INT "$LPID"
  local rc=0
  wait "$LPID" || rc=$?
  LPID=
  cut -d' ' -f1 /proc/loadavg >> "$1.loadavg"
  # 0: all ok, 1: failures (reported), 2: the run itself failed.
  [ $rc -le 1 ] || { echo "berth-load failed:" >&2; cat "$1.load.err" >&2; exit 1; }
}

# --- berthd: $UPGRADES live upgrades ---------------------------------------------------------
if [ "$ONLY" != docker ]; then
  mkdir -p "$W/alt"
  cp "$REL/berthd" "$REL/berth-shim" "$W/alt/"
  "$REL/berthd" -H "unix://$BERTH_SOCK" --data-root "$W/berth" --exec-root "$W/berthx" \
    --bridge bbench0 --bip 10.231.0.1/24 --nft-table bbench --cgroup-parent /bbench \
    ${BERTHD_ARGS:-} >"$W/berthd.log" 2>&1 &
  BPID=$!
  bench_wait_ping "$BERTH_SOCK" 30 || { echo "berthd did not answer" >&2; exit 1; }
  populate "$BERTH_SOCK"
  echo "berthd: $CONTAINERS containers, $CLIENTS clients, $UPGRADES upgrades" >&2
  start_load "$BERTH_SOCK" "$W/berth"
  for i in $(seq "$UPGRADES"); do
    if [ $((i % 2)) = 1 ]; then bin=$W/alt/berthd; else bin=$REL/berthd; fi
    s=$(date +%s%N)
    rc=0
    "$REL/berthd" upgrade -H "unix://$BERTH_SOCK" --binary "$bin" --json \
      > "$W/berth.upgrade.$i.json" 2> "$W/berth.upgrade.$i.err" || rc=$?
    e=$(date +%s%N)
    echo "$s $e" >> "$W/berth.win"
    [ $rc = 0 ] || echo "upgrade $i exited $rc: $(cat "$W/berth.upgrade.$i.err")" >&2
    sleep "$SETTLE"
  done
  stop_load "$W/berth"
  running "$BERTH_SOCK" > "$W/berth.running"
  rm_all "$BERTH_SOCK"
  bench_stop_pid "$BPID" 30
  BPID=
fi

# --- dockerd --live-restore: $RESTARTS restarts ----------------------------------------------
if [ "$ONLY" != berth ]; then
  start_dockerd
  bench_wait_ping "$DOCKER_SOCK" 60 || { echo "dockerd did not answer" >&2; exit 1; }
  populate "$DOCKER_SOCK"
  echo "dockerd --live-restore: $CONTAINERS containers, $CLIENTS clients, $RESTARTS restarts" >&2
  start_load "$DOCKER_SOCK" "$W/docker"
  for i in $(seq "$RESTARTS"); do
    s=$(date +%s%N)
    kill -TERM "$DPID"
    wait "$DPID" || true
    start_dockerd
    bench_wait_ping "$DOCKER_SOCK" 120 || { echo "dockerd did not come back" >&2; exit 1; }
    e=$(date +%s%N)
    echo "$s $e" >> "$W/docker.win"
    # Settle longer than for berthd: dockerd restores its containers after it answers.
    sleep "$((SETTLE * 3))"
  done
  stop_load "$W/docker"
  running "$DOCKER_SOCK" > "$W/docker.running"
fi

python3 bench/upgrade_report.py "$W" "$UPGRADES" "$RESTARTS" "$CONTAINERS" "$CLIENTS"
