#!/usr/bin/env bash
# Networking, berthd against dockerd (issue 4 point 9), on this machine, side by side:
#   container-to-container TCP throughput on a bridge (iperf3, run from the host inside the
#   containers' network namespaces: the test image has no iperf3), median of $RUNS runs of
#   $SECS s; time to create and to remove a user network (median of $N); time to connect and
#   to disconnect a running container (median of $N).
# Each daemon runs alone (berthd first, then dockerd), on its own socket and roots;
# dockerd's firewall changes are undone (the ruleset is saved before and restored after).
# DOCKERD_ARGS adds dockerd flags. KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${RUNS:-3}
SECS=${SECS:-5}
N=${N:-10}
REL=$PWD/target/release
[ -x "$REL/berthd" ] || { echo "missing $REL/berthd: cargo build --release --workspace" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "iperf3 is missing: make deps" >&2; exit 2; }
bench_install_docker
W=$(mktemp -d /tmp/bn.XXXX)
export DOCKER_CONFIG=$W/dc
PID_D=
bench_fw_save "$W"

cleanup() {
  set +e
  [ -n "$PID_D" ] && { DOCKER_HOST=unix://$SOCK docker rm -f $(DOCKER_HOST=unix://$SOCK docker ps -aq) >/dev/null 2>&1; bench_stop_pid "$PID_D" 30; }
  pkill -f "iperf3 -s -1 -p 5299" 2>/dev/null
  bench_kill_under "$W"
  bench_cgroup_purge bnbench
  sleep 0.5
  bench_umount_under "$W"
  ip link del bnbench0 2>/dev/null; ip link del docker0 2>/dev/null
  nft delete table inet bnbench 2>/dev/null
  bench_cgroup_purge bnbench
  bench_fw_restore "$W"
  [ "${KEEP:-0}" = 1 ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bench_image "$W"

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "nan"}'; }
ms_of() { # COMMAND...: milliseconds the command took (fails the bench if it fails)
  local s e
  s=$(date +%s%N); "$@" >/dev/null || return 1; e=$(date +%s%N)
  echo $(((e - s) / 1000000))
}

# Runs the measurements against the daemon on $SOCK; writes PREFIX.{tput,create,rm,connect,disconnect}.
measure() { # PREFIX SUBNET_PREFIX (e.g. 10.232)
  local p=$1 sp=$2 a b pa pb ipa i
  export DOCKER_HOST=unix://$SOCK
  docker import "$W/bb.tar" bb:bench >/dev/null
  a=$(docker run -d bb:bench sleep 100000)
  b=$(docker run -d bb:bench sleep 100000)
  pa=$(docker inspect -f '{{.State.Pid}}' "$a"); pb=$(docker inspect -f '{{.State.Pid}}' "$b")
  ipa=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "$a")
  : > "$W/$p.tput"
  for i in $(seq "$RUNS"); do
    nsenter -t "$pa" -n iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
    local spid=$!
    # The client starts once the one-off server listens.
    for _ in $(seq 300); do
      nsenter -t "$pa" -n ss -Hltn "sport = :5299" | grep -q LISTEN && break
      sleep 0.1
    done
    nsenter -t "$pb" -n iperf3 -c "$ipa" -p 5299 -t "$SECS" -J > "$W/$p.iperf.$i.json" || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' \
      "$W/$p.iperf.$i.json" >> "$W/$p.tput"
  done
  : > "$W/$p.create"; : > "$W/$p.rm"; : > "$W/$p.connect"; : > "$W/$p.disconnect"
  for i in $(seq "$N"); do
    if ! ms_of docker network create --subnet "$sp.$i.0/24" "bn$i" >> "$W/$p.create"; then
      echo "$p: docker network create failed: no network figures" >&2
      break
    fi
    ms_of docker network connect "bn$i" "$a" >> "$W/$p.connect"
    ms_of docker network disconnect "bn$i" "$a" >> "$W/$p.disconnect"
    ms_of docker network rm "bn$i" >> "$W/$p.rm"
  done
  docker rm -f "$a" "$b" >/dev/null
}

SOCK=$W/berth.sock
"$REL/berthd" -H "unix://$SOCK" --data-root "$W/berth" --exec-root "$W/berthx" \
  --bridge bnbench0 --bip 10.230.0.1/24 --nft-table bnbench --cgroup-parent /bnbench \
  >"$W/berthd.log" 2>&1 &
PID_D=$!
bench_wait_ping "$SOCK" 30 || { echo "berthd did not answer" >&2; exit 1; }
measure berth 10.232
DOCKER_HOST=unix://$SOCK docker rm -f $(DOCKER_HOST=unix://$SOCK docker ps -aq) >/dev/null 2>&1 || true
bench_stop_pid "$PID_D" 30; PID_D=

SOCK=$W/docker.sock
dockerd -H "unix://$SOCK" --data-root "$W/docker" --exec-root "$W/dockerx" \
  --pidfile "$W/docker.pid" ${DOCKERD_ARGS:-} >"$W/dockerd.log" 2>&1 &
PID_D=$!
bench_wait_ping "$SOCK" 60 || { echo "dockerd did not answer" >&2; exit 1; }
measure docker 10.233

printf '%-44s %10s %10s %8s\n' metric berthd dockerd ratio
row() { # NAME FILE UNIT
  local b d
  b=$(median < "$W/berth.$2"); d=$(median < "$W/docker.$2")
  printf '%-44s %10s %10s %8s\n' "$1 ($3)" "$b" "$d" \
    "$(python3 -c "import sys; b,d=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/d:.2f}' if d else '-')" "$b" "$d")"
}
row "container-to-container TCP, median of $RUNS" tput "Gbit/s"
row "network create, median of $N" create ms
row "network rm, median of $N" rm ms
row "network connect (running container)" connect ms
row "network disconnect (running container)" disconnect ms
