# Helpers shared by bench/run.sh and bench/upgrade.sh (sourced, not run).
# Everything here acts on what the bench itself started: processes are found by the bench's
# private directory in their command line and killed by pid, cgroups by the bench's own
# parents, firewall tables by comparing with the list saved before dockerd ran.

# Installs Debian's docker.io without letting the package start a system dockerd (it would
# rewrite iptables).
bench_install_docker() {
  command -v dockerd >/dev/null && return 0
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  # policy-rc.d kept the service down; a dockerd running now would be one the package
  # started anyway: stop it by its pid file.
  if [ -s /var/run/docker.pid ]; then kill "$(cat /var/run/docker.pid)" 2>/dev/null || true; fi
}

# dockerd's iptables rules live in the ip/ip6 filter/nat tables: remember which existed and
# their contents; berth's own (inet) tables and anything else are left alone.
bench_fw_save() { # DIR
  nft list tables > "$1/tables.before" 2>/dev/null || true
  iptables-save > "$1/iptables.save" 2>/dev/null || true
  ip6tables-save > "$1/ip6tables.save" 2>/dev/null || true
}

bench_fw_restore() { # DIR
  [ -e "$1/tables.before" ] || return 0
  local t
  for t in "ip filter" "ip nat" "ip mangle" "ip raw" "ip6 filter" "ip6 nat" "ip6 mangle" "ip6 raw"; do
    grep -qx "table $t" "$1/tables.before" || nft delete table $t 2>/dev/null
  done
  [ -s "$1/iptables.save" ] && iptables-restore < "$1/iptables.save" 2>/dev/null
  [ -s "$1/ip6tables.save" ] && ip6tables-restore < "$1/ip6tables.save" 2>/dev/null
  return 0
}

# A busybox-static rootfs tarball at DIR/bb.tar.
bench_image() { # DIR
  local a
  mkdir -p "$1/root/bin" "$1/root/etc" "$1/root/tmp"
  cp /bin/busybox "$1/root/bin/"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$1/root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$1/root/etc/passwd"
  tar -C "$1/root" -cf "$1/bb.tar" .
}

# Pids of the processes whose command line mentions DIR (the bench's private directory),
# except this shell and its ancestors.
bench_pids_under() { # DIR
  local p cmd
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
    cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline") || continue
    [[ $cmd == *"$1"* ]] && echo "$p"
  done
  return 0
}

# SIGTERM, then after a grace period SIGKILL, to the processes under DIR, by pid.
bench_kill_under() { # DIR
  local pids p
  pids=$(bench_pids_under "$1")
  [ -n "$pids" ] || return 0
  for p in $pids; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    pids=$(for p in $pids; do bench_alive "$p" && echo "$p"; done)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null; done
  return 0
}

# Kills every task left in the cgroup NAME (a parent the bench chose) and removes its
# directories, cgroup v1 (one tree per controller) and v2 alike.
bench_cgroup_purge() { # NAME
  local c p
  for c in /sys/fs/cgroup/"$1" /sys/fs/cgroup/*/"$1"; do
    [ -d "$c" ] || continue
    for p in $(find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
      kill -KILL "$p" 2>/dev/null
    done
  done
  sleep 0.2
  for c in /sys/fs/cgroup/"$1" /sys/fs/cgroup/*/"$1"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# Lazily unmounts everything mounted under DIR, deepest first.
bench_umount_under() { # DIR
  grep " $1" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  return 0
}

# Waits until GET /_ping on the unix socket SOCK answers OK, at most SECONDS (default 30).
bench_wait_ping() { # SOCK [SECONDS]
  local deadline=$(( $(date +%s) + ${2:-30} ))
  until curl -sf --max-time 1 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.01
  done
}

# Whether PID runs (a zombie does not).
bench_alive() { # PID
  local s
  s=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$s" ] && [ "${s#Z}" = "$s" ]
}

# Waits for the child PID to exit, at most SECONDS (default 30), then kills it.
bench_stop_pid() { # PID [SECONDS] [SIGNAL]
  kill -"${3:-TERM}" "$1" 2>/dev/null || return 0
  local n=$(( ${2:-30} * 10 ))
  while [ $n -gt 0 ] && bench_alive "$1"; do sleep 0.1; n=$((n - 1)); done
  bench_alive "$1" && kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
  return 0
}

# Runs this shell (and so everything it starts from now on) in its own cpu cgroup NAME with
# the given weight (cgroup v1 cpu.shares; v2 cpu.weight scaled from it), so that the bench
# is measured against itself rather than against whatever else loads the host. Both daemons
# and the load generator get the same treatment. No-op (with a note) when not possible.
bench_cpu_isolate() { # NAME SHARES
  local d
  if [ -d /sys/fs/cgroup/cpu ] && [ -e /sys/fs/cgroup/cpu/cpu.shares ]; then
    d=/sys/fs/cgroup/cpu/$1
    mkdir -p "$d" && echo "$2" > "$d/cpu.shares" && echo $$ > "$d/cgroup.procs" && return 0
  elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    d=/sys/fs/cgroup/$1
    mkdir -p "$d" && echo $(( $2 * 100 / 1024 > 10000 ? 10000 : ($2 * 100 / 1024 < 1 ? 1 : $2 * 100 / 1024) )) > "$d/cpu.weight" \
      && echo $$ > "$d/cgroup.procs" && return 0
  fi
  echo "note: cannot give the bench its own cpu cgroup; measuring on the shared host" >&2
}

# Leaves the cgroup of bench_cpu_isolate and removes it.
bench_cpu_release() { # NAME
  local d
  for d in /sys/fs/cgroup/cpu/"$1" /sys/fs/cgroup/"$1"; do
    [ -d "$d" ] || continue
    echo $$ > "$(dirname "$d")/cgroup.procs" 2>/dev/null
    bench_cgroup_purge "$(basename "$d")" >/dev/null 2>&1
  done
  return 0
}
