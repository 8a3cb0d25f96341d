#!/usr/bin/env bash
# Egress shaping accuracy (issue 4, point 7): one container with berth.egress.rate, its
# limit changed through POST /berth/containers/{id}/egress to 10, 50 and 200 Mbit/s, and
# iperf3 TCP from inside its netns to an iperf3 server on the bridge gateway (host side).
# Prints, per rate: TCP goodput (median of REPS runs of T seconds after O omitted seconds),
# its error against the configured rate, the goodput the rate allows in theory (tc counts
# whole Ethernet frames: 1448 bytes of payload per 1514-byte frame), TCP retransmits, and
# the wire rate from the qdisc's own byte counter. Target: goodput within 5 % of the rate;
# exits non-zero when a rate misses it.
# Runs on its own bridge (beg0, 10.232.0.0/24), nft table and cgroup parent; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REPS=${REPS:-3}
T=${T:-10}
O=${O:-2}
RATES=${RATES:-"10 50 200"}
BIN=${BIN:-target/release}
PORT=${PORT:-5299}
GW=10.232.0.1
W=$(mktemp -d /tmp/be.XXXX)
SOCK=$W/berth.sock
export DOCKER_CONFIG=$W/dc DOCKER_HOST=unix://$SOCK

command -v iperf3 >/dev/null || { apt-get update -qq && apt-get install -y -qq iperf3 >/dev/null; }

cleanup() {
  set +e
  docker rm -f $(docker ps -aq) >/dev/null 2>&1
  [ -n "${IPID:-}" ] && bench_stop_pid "$IPID" 5 KILL
  [ -n "${BPID:-}" ] && bench_stop_pid "$BPID" 30
  bench_kill_under "$W"
  bench_cgroup_purge beg
  sleep 0.5
  bench_umount_under "$W"
  ip link del beg0 2>/dev/null
  nft delete table inet beg 2>/dev/null
  bench_cgroup_purge beg
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

bench_image "$W"
"$BIN/berthd" -H "unix://$SOCK" --data-root "$W/d" --exec-root "$W/x" --bridge beg0 \
  --bip $GW/24 --nft-table beg --cgroup-parent /beg >"$W/berthd.log" 2>&1 &
BPID=$!
bench_wait_ping "$SOCK" 30 || { echo "berthd did not start:"; tail -20 "$W/berthd.log"; exit 1; }
docker import "$W/bb.tar" bb:bench >/dev/null
ID=$(docker run -d --label berth.egress.rate=10mbit bb:bench sleep 3600)
NS=$W/x/netns/$ID
iperf3 -s -B $GW -p "$PORT" >"$W/iperf3-server.log" 2>&1 &
IPID=$!
disown "$IPID"   # killed by pid at the end, without the shell's "Killed" notice
for _ in $(seq 100); do (exec 3<>/dev/tcp/$GW/$PORT) 2>/dev/null && break; sleep 0.1; done

set_rate() { # RATE -> the endpoint's answer
  curl -sf --unix-socket "$SOCK" -H 'Content-Type: application/json' \
    -d "{\"Rate\":\"$1\"}" "http://d/v1.41/berth/containers/$ID/egress"
}
sent_bytes() { nsenter --net="$NS" tc -j -s qdisc show dev eth0 root | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["bytes"])'; }

printf '%-8s %-45s %8s %7s %8s %6s %8s %6s\n' rate "tc qdisc show dev eth0 (container netns)" goodput error "max TCP" retr "wire" result
fail=0
for r in $RATES; do
  answer=$(set_rate "${r}mbit")
  qd=$(nsenter --net="$NS" tc qdisc show dev eth0 root | awk '{print $2, $3, "rate", $8, "burst", $10, "lat", $12}')
  : > "$W/runs.$r"
  for i in $(seq "$REPS"); do
    b0=$(sent_bytes); t0=$(date +%s%N)
    # iperf3's server takes a moment between two tests ("the server is busy"): retry.
    for _ in $(seq 50); do
      nsenter --net="$NS" iperf3 -c $GW -p "$PORT" -t "$T" -O "$O" -J > "$W/iperf.$r.$i.json" && break
      sleep 0.1
    done
    t1=$(date +%s%N); b1=$(sent_bytes)
    python3 - "$W/iperf.$r.$i.json" "$b0" "$b1" "$t0" "$t1" >> "$W/runs.$r" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
b0, b1, t0, t1 = map(int, sys.argv[2:])
good = j["end"]["sum_received"]["bits_per_second"] / 1e6
retr = j["end"]["sum_sent"].get("retransmits", 0)
wire = (b1 - b0) * 8 / ((t1 - t0) / 1e9) / 1e6
print(f"{good:.3f} {retr} {wire:.3f}")
EOF
  done
  read -r good retr wire < <(sort -n "$W/runs.$r" | awk -v n="$REPS" 'NR == int((n + 1) / 2)')
  spread=$(awk '{print $1}' "$W/runs.$r" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{printf "%.2f-%.2f", lo, hi}')
  err=$(awk -v g="$good" -v r="$r" 'BEGIN{printf "%+.2f%%", (g - r) / r * 100}')
  theory=$(awk -v r="$r" 'BEGIN{printf "%.2f", r * 1448 / 1514}')
  ok=$(awk -v g="$good" -v r="$r" 'BEGIN{d = (g - r) / r; if (d < 0) d = -d; print (d <= 0.05) ? "ok" : "MISSED"}')
  [ "$ok" = ok ] || fail=1
  printf '%-8s %-45s %8s %7s %8s %6s %8s %6s\n' "${r}Mbit" "$qd" "$good" "$err" "$theory" "$retr" "$wire" "$ok"
  echo "          runs: $spread Mbit/s; endpoint answered $answer" >&2
done
echo "Mbit/s. goodput: median of $REPS iperf3 TCP runs of ${T}s (first ${O}s omitted), container netns -> host;"
echo "max TCP: the rate x 1448/1514 (payload per Ethernet frame, what tc counts); wire: the qdisc's byte counter over the run"
exit $fail
