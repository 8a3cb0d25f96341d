#!/usr/bin/env python3
"""Polls cgroup v1 memory files every 0.5 ms for bench/memory.sh and prints one reaction
time in milliseconds.

  memory_poll.py kill POOL VICTIM SIZE CRITICAL
      from the first sample where the pool's headroom (SIZE minus usage minus inactive
      file pages) is at or under CRITICAL, or the pool is under_oom, until VICTIM's
      cgroup.procs is empty.
  memory_poll.py squeeze POOL GROUP SIZE LOW
      from the first sample where the pool's headroom is under LOW until GROUP's
      memory.limit_in_bytes is lower than it was then.
"""
import sys
import time


def read(path):
    with open(path) as f:
        return f.read()


def keyed(text, key):
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def kill(pool, victim, size, critical):
    t_cross = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = time.monotonic()
        if t_cross is None:
            usage = int(read(pool + "/memory.usage_in_bytes"))
            inactive = keyed(read(pool + "/memory.stat"), "total_inactive_file")
            under = keyed(read(pool + "/memory.oom_control"), "under_oom")
            if size - (usage - inactive) <= critical or under:
                t_cross = now
        if t_cross is not None:
            try:
                procs = read(victim + "/cgroup.procs").strip()
            except OSError:
                procs = ""
            if not procs:
                return (now - t_cross) * 1000
        time.sleep(0.0005)
    raise SystemExit("kill: timed out")


def headroom(pool, size):
    usage = int(read(pool + "/memory.usage_in_bytes"))
    inactive = keyed(read(pool + "/memory.stat"), "total_inactive_file")
    return size - (usage - inactive)


def squeeze(pool, group, size, low):
    t_low = None
    limit0 = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = time.monotonic()
        limit = int(read(group + "/memory.limit_in_bytes"))
        if t_low is None:
            if headroom(pool, size) < low:
                t_low, limit0 = now, limit
        elif limit < limit0:
            return (now - t_low) * 1000
        time.sleep(0.0005)
    raise SystemExit("squeeze: timed out")


def main():
    mode = sys.argv[1]
    if mode == "kill":
        ms = kill(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        ms = squeeze(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    print(f"{ms:.1f}")


if __name__ == "__main__":
    main()
