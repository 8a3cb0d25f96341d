#!/usr/bin/env bash
# Images, berthd against dockerd on the same machine and the same registry:
#   1. `docker pull` of an image of $LAYERS layers x $MIB MiB of random data (gzip, Docker
#      schema 2), pushed to a local docker-registry by bench/images.py (no daemon involved):
#      wall time and the daemon's peak RSS during the pull, median of $BENCH_ROUNDS rounds;
#      before each round the image is removed and unused layers pruned, so every pull
#      downloads and unpacks all layers. Peak RSS is the highest sum of VmRSS sampled every
#      10 ms while the pull runs (berthd: master + worker; dockerd: dockerd alone — in
#      20.10 containerd takes no part in pulls, its lifetime peak is printed as a note).
#   2. `docker save` to a file, then (image removed) `docker load` of that file: times of
#      each and of both (a `save | load` into the same daemon would find the image present
#      and load nothing, so "save|load" is save + load of the same round).
#   3. `docker push` of a fresh tag of the pulled image (blobs already in the registry) and
#      to a fresh repository (blobs uploaded unless the daemon mounts them from bench/img).
#      When berthd answers push with "not supported" (501) its figures read "n/a".
#   4. Interop, printed as PASS/FAIL (a FAIL makes the bench exit non-zero): the pulled
#      image saved by berthd and loaded into dockerd, and the reverse, keeps its id and a
#      container created from it has the random files (`docker export`, sha256 checked);
#      the same both ways for a busybox image dockerd builds with a whiteout and an opaque
#      directory (`docker build`, legacy builder).
# The pull target (berthd at least twice as fast as dockerd) is printed, not enforced.
# Each daemon is measured alone (berthd, then dockerd), both run for the interop part.
# DOCKERD_ARGS adds dockerd flags. KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${BENCH_ROUNDS:-5}
LAYERS=${LAYERS:-5}
MIB=${MIB:-20}
REL=$PWD/target/release
[ -x "$REL/berthd" ] || { echo "missing $REL/berthd: cargo build --release --workspace" >&2; exit 2; }
command -v docker-registry >/dev/null || { echo "docker-registry is missing: make deps" >&2; exit 2; }
bench_install_docker
W=$(mktemp -d /tmp/bi.XXXX)
export DOCKER_CONFIG=$W/dc
BS=$W/berth.sock
DS=$W/docker.sock
BPID= DPID= RPID= SPID=
bench_fw_save "$W"

cleanup() {
  set +e
  [ -n "$SPID" ] && kill -TERM "$SPID" 2>/dev/null
  for s in "$BS" "$DS"; do
    [ -S "$s" ] && DOCKER_HOST=unix://$s docker rm -f $(DOCKER_HOST=unix://$s docker ps -aq 2>/dev/null) >/dev/null 2>&1
  done
  [ -n "$BPID" ] && bench_stop_pid "$BPID" 30
  [ -n "$DPID" ] && bench_stop_pid "$DPID" 30
  [ -n "$RPID" ] && bench_stop_pid "$RPID" 10
  bench_kill_under "$W"
  bench_cgroup_purge bimg
  sleep 0.5
  bench_umount_under "$W"
  ip link del bimg0 2>/dev/null; ip link del docker0 2>/dev/null
  nft delete table inet bimg 2>/dev/null
  bench_cgroup_purge bimg
  bench_fw_restore "$W"
  [ "${KEEP:-0}" = 1 ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
FAIL=0
# Runs COMMAND...; prints PASS or FAIL with WHAT (a failure makes the bench exit non-zero).
expect() { # WHAT COMMAND...
  local what=$1; shift
  if "$@"; then echo "PASS  $what"; else echo "FAIL  $what"; FAIL=1; fi
}

# --- registry, seeded without either daemon
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat > "$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
EOF
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
RPID=$!
for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
curl -sf "http://$REG/v2/" >/dev/null || { echo "docker-registry did not start:" >&2; cat "$W/registry.log" >&2; exit 1; }
echo "== seeding $REG/bench/img:v1 ($LAYERS layers x $MIB MiB of random data, gzip)"
python3 bench/images.py seed "$REG" bench/img v1 "$LAYERS" "$MIB" "$W"
IMG=$REG/bench/img:v1
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$W/expect.json")
GZ=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$W/expect.json")

start_berth() {
  "$REL/berthd" -H "unix://$BS" --data-root "$W/berth" --exec-root "$W/berthx" \
    --bridge bimg0 --bip 10.234.0.1/24 --nft-table bimg --cgroup-parent /bimg >>"$W/berthd.log" 2>&1 &
  BPID=$!
  bench_wait_ping "$BS" 60 || { echo "berthd did not start" >&2; tail "$W/berthd.log" >&2; exit 1; }
}
start_dockerd() {
  dockerd -H "unix://$DS" --data-root "$W/docker" --exec-root "$W/dockerx" \
    --pidfile "$W/docker.pid" ${DOCKERD_ARGS:-} >"$W/dockerd.log" 2>&1 &
  DPID=$!
  bench_wait_ping "$DS" 60 || { echo "dockerd did not start" >&2; tail "$W/dockerd.log" >&2; exit 1; }
}

# Removes the image (every tag) and prunes unused layers, then flushes dirty pages so that
# writeback of one round does not land in the next.
gone() { # IMAGE-ID
  if docker image inspect "$1" >/dev/null 2>&1; then docker rmi -f "$1" >/dev/null; fi
  docker image prune -af >/dev/null
  sync
}
same_id() { # IMAGE WANT
  [ "$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null)" = "$2" ]
}

# Runs parts 1-3 against the daemon on $DOCKER_HOST; results go to $W/WHO.*.
measure() { # WHO PIDFILE
  local who=$1 i s e out rc
  : >"$W/$who.pull"; : >"$W/$who.rss"
  for i in $(seq "$ROUNDS"); do
    gone "$ID"
    python3 bench/images.py rss "$2" "$W/$who.rss.$i" &
    SPID=$!
    sleep 0.1
    s=$(now); docker pull "$IMG" >/dev/null; e=$(now)
    kill -TERM "$SPID"; wait "$SPID"; SPID=
    ms "$s" "$e" >>"$W/$who.pull"
    cat "$W/$who.rss.$i" >>"$W/$who.rss"
    echo "  $who pull $i: $(tail -1 "$W/$who.pull") ms, peak RSS $(tail -1 "$W/$who.rss") KiB"
  done
  same_id "$IMG" "$ID" || { echo "FAIL  $who: pulled image id is not $ID" >&2; FAIL=1; }
  : >"$W/$who.save"; : >"$W/$who.load"; : >"$W/$who.both"
  for i in $(seq "$ROUNDS"); do
    sync
    s=$(now); docker save -o "$W/$who.tar" "$IMG"; e=$(now)
    ms "$s" "$e" >>"$W/$who.save"
    gone "$ID"
    s=$(now); docker load -i "$W/$who.tar" >/dev/null; e=$(now)
    ms "$s" "$e" >>"$W/$who.load"
    echo $(($(tail -1 "$W/$who.save") + $(tail -1 "$W/$who.load"))) >>"$W/$who.both"
    echo "  $who save $i: $(tail -1 "$W/$who.save") ms, load: $(tail -1 "$W/$who.load") ms"
  done
  same_id "$IMG" "$ID" || { echo "FAIL  $who: loaded image id is not $ID" >&2; FAIL=1; }
  : >"$W/$who.push"; : >"$W/$who.pushrepo"
  for i in $(seq "$ROUNDS"); do
    docker tag "$IMG" "$REG/bench/img:$who-r$i"
    docker tag "$IMG" "$REG/bench/$who-r$i:v1"
    for kind in push pushrepo; do
      local ref=$REG/bench/img:$who-r$i
      [ $kind = pushrepo ] && ref=$REG/bench/$who-r$i:v1
      s=$(now); rc=0; out=$(docker push "$ref" 2>&1) || rc=$?; e=$(now)
      if [ $rc != 0 ]; then
        if grep -qiE 'not (supported|implemented)' <<<"$out"; then
          echo "  $who push: not implemented"
          echo n/a >"$W/$who.push"; echo n/a >"$W/$who.pushrepo"
          return 0
        fi
        echo "FAIL  $who: docker push $ref: $out" >&2
        FAIL=1
        return 0
      fi
      ms "$s" "$e" >>"$W/$who.$kind"
    done
    echo "  $who push $i: fresh tag $(tail -1 "$W/$who.push") ms, fresh repository $(tail -1 "$W/$who.pushrepo") ms"
  done
}

echo "== berthd: $ROUNDS rounds"
start_berth
export DOCKER_HOST=unix://$BS
{ echo "$BPID"; pgrep -P "$BPID" -x berthd || true; } >"$W/berth.pids"
measure berth "$W/berth.pids"
bench_stop_pid "$BPID" 30; BPID=

echo "== dockerd: $ROUNDS rounds"
start_dockerd
export DOCKER_HOST=unix://$DS
echo "$DPID" >"$W/docker.pids"
measure docker "$W/docker.pids"
CTRD=$(pgrep -P "$DPID" -x containerd | head -1 || true)
CTRD_HWM=$([ -n "$CTRD" ] && awk '/VmHWM/{print $2}' "/proc/$CTRD/status" 2>/dev/null || echo n/a)

echo "== interop"
start_berth
B=unix://$BS D=unix://$DS
# Moves IMAGE from daemon FROM to daemon TO through `docker save` / `docker load` (the image
# is removed from TO first), then checks its id there.
move() { # FROM TO IMAGE ID
  local a=$W/move.tar
  DOCKER_HOST=$1 docker save -o "$a" "$3" || return 1
  DOCKER_HOST=$2 gone "$4" || return 1
  DOCKER_HOST=$2 docker load -i "$a" >/dev/null || return 1
  DOCKER_HOST=$2 same_id "$3" "$4"
}
# The random image: berthd has it from part 1-3 (restarted on the same data root).
DOCKER_HOST=$B same_id "$IMG" "$ID" || DOCKER_HOST=$B docker pull "$IMG" >/dev/null
DOCKER_HOST=$D same_id "$IMG" "$ID" || DOCKER_HOST=$D docker pull "$IMG" >/dev/null
files_ok() { # DOCKER_HOST
  local c rc=0
  c=$(DOCKER_HOST=$1 docker create "$IMG")
  DOCKER_HOST=$1 docker export "$c" | python3 bench/images.py check-tar "$W/expect.json" || rc=1
  DOCKER_HOST=$1 docker rm "$c" >/dev/null
  return $rc
}
expect "berth save | dockerd load (random image): id kept" move "$B" "$D" "$IMG" "$ID"
expect "berth save | dockerd load: container on dockerd has the $LAYERS random files" files_ok "$D"
expect "dockerd save | berth load (random image): id kept" move "$D" "$B" "$IMG" "$ID"
expect "dockerd save | berth load: container on berthd has the $LAYERS random files" files_ok "$B"

# The busybox image with a whiteout and an opaque directory, built by dockerd.
bench_image "$W"
mkdir -p "$W/ctx"
mv "$W/bb.tar" "$W/ctx/"
cat >"$W/ctx/Dockerfile" <<'EOF'
FROM scratch
ADD bb.tar /
RUN mkdir -p /keep /gone/sub && echo a >/keep/a && echo x >/keep/x && echo b >/gone/b && echo c >/gone/sub/c
RUN rm /keep/x && rm -r /gone && mkdir /gone && echo n >/gone/new
CMD ["/bin/sh"]
EOF
WH=bench/wh:v1
CHECK='test -f /keep/a && test ! -e /keep/x && test ! -e /gone/b && test ! -e /gone/sub && test "$(ls /gone)" = new && test "$(cat /gone/new)" = n && echo ok'
# The archive must really hold both kinds of whiteout, or the checks below prove nothing.
has_whiteouts() { # ARCHIVE
  python3 - "$1" <<'EOF'
import io, sys, tarfile
outer = tarfile.open(sys.argv[1])
names = []
for m in outer:
    if m.isfile() and (m.name.endswith("layer.tar") or m.name.startswith("blobs/")):
        try:
            names += tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())).getnames()
        except tarfile.TarError:
            pass
ok = any(n.endswith("keep/.wh.x") for n in names) and any(n.endswith("gone/.wh..wh..opq") for n in names)
sys.exit(0 if ok else 1)
EOF
}
whiteouts_applied() { # DOCKER_HOST
  [ "$(DOCKER_HOST=$1 docker run --rm --network none "$WH" sh -c "$CHECK" 2>&1)" = ok ]
}
if DOCKER_HOST=$D DOCKER_BUILDKIT=0 docker build -q -t "$WH" "$W/ctx" >"$W/build.log" 2>&1; then
  WHID=$(DOCKER_HOST=$D docker image inspect -f '{{.Id}}' "$WH")
  DOCKER_HOST=$D docker save -o "$W/wh.tar" "$WH"
  expect "dockerd's build of $WH has a whiteout (keep/.wh.x) and an opaque directory (gone/.wh..wh..opq)" \
    has_whiteouts "$W/wh.tar"
  expect "busybox image: whiteouts applied on dockerd" whiteouts_applied "$D"
  expect "dockerd save | berth load (busybox, whiteouts): id kept" move "$D" "$B" "$WH" "$WHID"
  expect "dockerd save | berth load: whiteouts applied on berthd" whiteouts_applied "$B"
  expect "berth save | dockerd load (busybox, whiteouts): id kept" move "$B" "$D" "$WH" "$WHID"
  expect "berth save | dockerd load: whiteouts applied on dockerd" whiteouts_applied "$D"
else
  cat "$W/build.log" >&2
  expect "docker build of the busybox whiteout image on dockerd" false
fi
echo "SKIP  OCI-layout archives: dockerd 20.10's docker save writes only the Docker archive format"

# --- table
val() { if [ "$(cat "$1" 2>/dev/null)" = n/a ]; then echo n/a; else median <"$1"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
echo
echo "Images, $LAYERS layers x $MIB MiB random data ($((GZ >> 20)) MiB gzip), medians of $ROUNDS rounds"
printf '| %-44s | %10s | %10s | %15s |\n' figure berthd dockerd "dockerd/berthd"
echo "|---|---|---|---|"
row() { # LABEL FILE-SUFFIX
  local b d
  b=$(val "$W/berth.$2"); d=$(val "$W/docker.$2")
  printf '| %-44s | %10s | %10s | %15s |\n' "$1" "$b" "$d" "$(ratio "$d" "$b")"
}
row "docker pull, ms" pull
row "daemon peak RSS during pull, KiB (10 ms VmRSS)" rss
row "docker save (to a file), ms" save
row "docker load (image absent), ms" load
row "save + load, ms" both
row "docker push, fresh tag, ms" push
row "docker push, fresh repository, ms" pushrepo
[ -n "${CTRD:-}" ] && echo "(dockerd's containerd, not involved in pulls: lifetime peak VmHWM $CTRD_HWM KiB, not counted)"
PR=$(ratio "$(val "$W/docker.pull")" "$(val "$W/berth.pull")")
if awk -v r="$PR" 'BEGIN{exit !(r != "n/a" && r >= 2.0)}'; then
  echo "PASS  target: pull ratio dockerd/berthd $PR >= 2.0"
else
  echo "FAIL  target: pull ratio dockerd/berthd $PR < 2.0 (target, not failing the bench)"
fi
exit $FAIL
