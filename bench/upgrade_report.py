#!/usr/bin/env python3
"""The table of bench/upgrade.sh: berthd live upgrades against dockerd --live-restore restarts.

Reads, in the work directory W, for each daemon that ran (prefix berth / docker):
  PREFIX.load.json   berth-load's JSON report (latencies split by the windows)
  PREFIX.records     berth-load's request records, one JSON object a line
  PREFIX.win         the windows, "start_ns end_ns" a line
  PREFIX.running     how many of the bench's containers still ran at the end
  PREFIX.loadavg     the host's 1-minute load average when the load started and stopped
  berth.upgrade.N.json  the reports of `berthd upgrade --json`
Prints the table and exits 1 when berthd misses one of issue 3's targets.

usage: upgrade_report.py W UPGRADES RESTARTS CONTAINERS CLIENTS
"""

import bisect
import json
import math
import os
import sys

CONNECT_FAILED = ("refused", "connect_eagain", "connect_error")
FAILED_AFTER_CONNECT = ("io_error", "http_error", "timeout")
FREEZE_CUTOVER_P99_MS = 20.0


def pct(values, p):
    """Nearest-rank percentile, as berth-load computes it; None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = math.ceil(p * len(v))
    return v[min(max(k, 1), len(v)) - 1]


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def triple(values, digits=1):
    return "/".join(fmt(pct(values, p), digits) for p in (0.5, 0.99, 1.0))


def lat(l):
    if not l or not l.get("count"):
        return "-"
    return f"{l['p50_ms']:.2f}/{l['p99_ms']:.2f}/{l['max_ms']:.2f}"


def read_windows(path):
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), int(parts[1])))
    return out


def control_windows(windows, offset_ns=200_000_000):
    """Windows of the same lengths starting `offset_ns` after each window ends, kept when
    they end before the next window starts: the same measure on plain load, to compare."""
    out = []
    for k, (s, e) in enumerate(windows):
        cs, ce = e + offset_ns, e + offset_ns + (e - s)
        if k + 1 < len(windows) and ce >= windows[k + 1][0]:
            continue
        out.append((cs, ce))
    return out


def window_gaps(records_path, windows):
    """Per window, the longest time inside it with no successful completion, ms (the
    window's edges count as completions)."""
    ends = []
    with open(records_path) as f:
        for line in f:
            r = json.loads(line)
            if r["outcome"]["kind"] == "ok":
                ends.append(r["start_ns"] + r["latency_ns"])
    ends.sort()
    gaps = []
    for s, e in windows:
        i, j = bisect.bisect_left(ends, s), bisect.bisect_right(ends, e)
        prev, best = s, 0
        for t in ends[i:j] + [e]:
            best = max(best, t - prev)
            prev = t
        gaps.append(best / 1e6)
    return gaps


def side(w, prefix):
    """Everything the table needs about one daemon, or None when it did not run."""
    load = os.path.join(w, f"{prefix}.load.json")
    if not os.path.exists(load):
        return None
    with open(load) as f:
        rep = json.load(f)
    windows = read_windows(os.path.join(w, f"{prefix}.win"))
    outcomes = rep["all"]["outcomes"]
    out = {
        "rep": rep,
        "windows": windows,
        "window_ms": [(e - s) / 1e6 for s, e in windows],
        "gaps": window_gaps(os.path.join(w, f"{prefix}.records"), windows),
        "control_gaps": window_gaps(os.path.join(w, f"{prefix}.records"),
                                    control_windows(windows)),
        "connect_failed": sum(outcomes.get(k, 0) for k in CONNECT_FAILED),
        "after_connect": sum(outcomes.get(k, 0) for k in FAILED_AFTER_CONNECT),
        "outcomes": outcomes,
    }
    try:
        with open(os.path.join(w, f"{prefix}.loadavg")) as f:
            out["loadavg"] = " -> ".join(f.read().split())
    except OSError:
        out["loadavg"] = "-"
    try:
        with open(os.path.join(w, f"{prefix}.running")) as f:
            out["running"] = int(f.read().strip() or 0)
    except (OSError, ValueError):
        out["running"] = None
    return out


def upgrades(w, n):
    reps = []
    for i in range(1, n + 1):
        try:
            with open(os.path.join(w, f"berth.upgrade.{i}.json")) as f:
                reps.append(json.load(f))
        except (OSError, ValueError):
            reps.append({"Result": "no report"})
    return reps


def main():
    w, n_up, n_rs, n_ct, n_cl = sys.argv[1], *map(int, sys.argv[2:6])
    b, d = side(w, "berth"), side(w, "docker")
    ups = upgrades(w, n_up) if b else []
    committed = sum(1 for r in ups if r.get("Result") == "committed")
    fc = [r["FreezeCutoverMs"] for r in ups if "FreezeCutoverMs" in r]
    qu = [r["QuiesceMs"] for r in ups if "QuiesceMs" in r]
    tk = [r["TakeoverMs"] for r in ups if "TakeoverMs" in r]
    held = [r["MutationsHeldMs"] for r in ups if "MutationsHeldMs" in r]
    handed = [r.get("ConnsHandedOver", 0) for r in ups if "ConnsHandedOver" in r]
    lost = sum(r.get("LostInFlight", 0) for r in ups)

    rows = []

    def row(name, bv, dv):
        rows.append((name, bv if b else "-", dv if d else "-"))

    g = lambda s, f: f(s) if s else "-"  # noqa: E731
    row("containers running / clients", f"{n_ct} / {n_cl}", f"{n_ct} / {n_cl}")
    row("upgrades (committed) / restarts", f"{n_up} ({committed})", f"{n_rs}")
    row("freeze+cut-over (berthd) / API unavailable (dockerd), ms p50/p99/max",
        triple(fc, 2) + " (freeze+cut-over)", g(d, lambda s: triple(s["window_ms"]) + " (SIGTERM to _ping)"))
    row("longest gap w/o completion in window, ms", g(b, lambda s: triple(s["gaps"], 2)),
        g(d, lambda s: triple(s["gaps"])))
    row("  same, windows as long on plain load, ms", g(b, lambda s: triple(s["control_gaps"], 2)),
        g(d, lambda s: triple(s["control_gaps"])))
    row("window (whole upgrade / restart), ms p50/max",
        g(b, lambda s: f"{fmt(pct(s['window_ms'], .5))}/{fmt(pct(s['window_ms'], 1))}"),
        g(d, lambda s: f"{fmt(pct(s['window_ms'], .5))}/{fmt(pct(s['window_ms'], 1))}"))
    row("mutations held, ms p50/p99/max (reads answered)", triple(held, 2), "n/a")
    row("  of which quiesce, ms p50/p99/max", triple(qu, 2), "n/a")
    row("  of which take-over (store open), ms p50/p99/max", triple(tk, 2), "n/a")
    row("connections handed over per upgrade, p50/max",
        f"{fmt(pct(handed, .5), 0)}/{fmt(pct(handed, 1), 0)}", "n/a")
    row("refused connections (connect failed)", g(b, lambda s: str(s["connect_failed"])),
        g(d, lambda s: str(s["connect_failed"])))
    row("failed requests after connect", g(b, lambda s: str(s["after_connect"])),
        g(d, lambda s: str(s["after_connect"])))
    row("failed requests, all / inside windows",
        g(b, lambda s: f"{s['rep']['all']['failed']} / {s['rep']['failed_in_windows']}"),
        g(d, lambda s: f"{s['rep']['all']['failed']} / {s['rep']['failed_in_windows']}"))
    row("requests, all / inside windows",
        g(b, lambda s: f"{s['rep']['all']['total']} / {s['rep']['requests_in_windows']}"),
        g(d, lambda s: f"{s['rep']['all']['total']} / {s['rep']['requests_in_windows']}"))
    row("latency inside windows, ms p50/p99/max", g(b, lambda s: lat(s["rep"]["all"]["inside"])),
        g(d, lambda s: lat(s["rep"]["all"]["inside"])))
    row("latency outside windows, ms p50/p99/max", g(b, lambda s: lat(s["rep"]["all"]["outside"])),
        g(d, lambda s: lat(s["rep"]["all"]["outside"])))
    row("cycle containers leaked", g(b, lambda s: str(len(s["rep"]["leaked"]))),
        g(d, lambda s: str(len(s["rep"]["leaked"]))))
    row("host load average (1 min), load start -> end", g(b, lambda s: s["loadavg"]),
        g(d, lambda s: s["loadavg"]))
    row("bench containers running at the end", g(b, lambda s: fmt(s["running"], 0)),
        g(d, lambda s: fmt(s["running"], 0)))

    shares = os.environ.get("CPU_SHARES")
    print(f"host: {os.cpu_count()} CPUs; bench "
          + (f"in its own cpu cgroup, weight {shares} (a plain process: 1024)" if shares
             else "sharing the host's CPUs with whatever else runs"))
    wid = max(len(r[0]) for r in rows)
    bw = max(12, max(len(r[1]) for r in rows))
    print(f"{'metric':<{wid}}  {'berthd':<{bw}}  dockerd --live-restore")
    for name, bv, dv in rows:
        print(f"{name:<{wid}}  {bv:<{bw}}  {dv}")
    for name, s in (("berthd", b), ("dockerd", d)):
        if not s:
            continue
        oc = " ".join(f"{k}={v}" for k, v in s["outcomes"].items())
        print(f"{name} outcomes: {oc}")
        for f in s["rep"]["failures"][:8]:
            print(f"  {name} {f['outcome']} {f['op']} {f['conn']}: {f['message']}")
    if b:
        print("berthd per upgrade (FreezeCutoverMs/QuiesceMs/TakeoverMs/gap ms): "
              + " ".join(f"{fmt(r.get('FreezeCutoverMs'))}/{fmt(r.get('QuiesceMs'))}/"
                         f"{fmt(r.get('TakeoverMs'))}/{gap:.1f}"
                         for r, gap in zip(ups, b["gaps"])))
        for i, r in enumerate(ups, 1):
            if r.get("Result") != "committed":
                print(f"  upgrade {i}: {r.get('Result')} {r.get('Reason', '')}")
    if lost:
        print(f"berthd: {lost} requests lost in flight according to the upgrade reports")

    if not b:
        return 0
    fail = []
    if b["connect_failed"]:
        fail.append(f"refused connections {b['connect_failed']} (target 0)")
    if b["rep"]["all"]["failed"]:
        fail.append(f"failed requests {b['rep']['all']['failed']} (target 0)")
    if b["rep"]["leaked"]:
        fail.append(f"leaked cycle containers {len(b['rep']['leaked'])} (target 0)")
    if committed != n_up:
        fail.append(f"committed upgrades {committed} of {n_up}")
    p99 = pct(fc, 0.99)
    if p99 is None or p99 >= FREEZE_CUTOVER_P99_MS:
        fail.append(f"freeze+cut-over p99 {fmt(p99, 2)} ms (target < {FREEZE_CUTOVER_P99_MS} ms)")
    if b["running"] is not None and b["running"] != n_ct:
        fail.append(f"containers running after the upgrades {b['running']} of {n_ct}")
    for f in fail:
        print(f"target missed:  {f}")
    if not fail:
        print(f"targets met:    0 refused, 0 failed, {n_up}/{n_up} committed, "
              f"freeze+cut-over p99 {fmt(p99, 2)} ms < {FREEZE_CUTOVER_P99_MS} ms")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
