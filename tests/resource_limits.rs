//! The effects of resource limits on the real kernel: an allocation over `-m` is OOM-killed
//! and reported (`State.OOMKilled`, exit 137, an `oom` event), a fork bomb stops at
//! `--pids-limit` while the container lives on, `--cpus 0.5` holds a busy loop near half a
//! cpu; and the daemon's own processes and the shims stay outside the containers' pool cgroup
//! while the containers' processes are in `<pool>/<id>`.

mod common;

use common::cgroups::{cg, cg_path, inspect, pid_of, proc_cgroup, run_d};
use common::{daemon_with_image, until, Daemon};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The current time as the CLI sends `--since`/`--until`.
fn now_arg() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

#[test]
fn allocation_over_the_memory_limit_is_oom_killed() {
    let Some(d) = daemon_with_image() else { return };
    let t0 = now_arg();
    // `tail` keeps everything it reads from a newline-free stream: anonymous memory.
    let out = d.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "32m",
        "bb:test",
        "sh",
        "-c",
        // tail raises its own OOM score (allowed unprivileged) so that the kernel's pick
        // is tail, not the shell, however the pages are spread when the limit is hit.
        "head -c 200m /dev/zero | (echo 1000 >/proc/self/oom_score_adj; exec tail); echo survived",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("survived"),
        "the shell outlives its killed child: {stdout}"
    );
    let out = d.docker(&[
        "run",
        "--name",
        "hog2",
        "-m",
        "32m",
        "bb:test",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["hog", "hog2"] {
        let st = &inspect(&d, name)["State"];
        assert_eq!(st["OOMKilled"], true, "{name}: {st}");
    }
    assert_eq!(inspect(&d, "hog2")["State"]["ExitCode"], 137);
    let until_arg = now_arg();
    let evs = d.ok(&[
        "events",
        "--since",
        &t0,
        "--until",
        &until_arg,
        "--filter",
        "event=oom",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    let mut names: Vec<&str> = evs.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["hog", "hog2"]);

    // Under the limit nothing is killed.
    let out = d.docker(&[
        "run",
        "--name",
        "fits",
        "-m",
        "64m",
        "bb:test",
        "sh",
        "-c",
        "head -c 16m /dev/zero | tail | wc -c",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "16777216");
    assert_eq!(inspect(&d, "fits")["State"]["OOMKilled"], false);
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let Some(d) = daemon_with_image() else { return };
    // The init never forks, so it survives the bomb. (busybox sh exits when a fork fails, so
    // each bomber dies at the limit; several run one after the other.)
    run_d(&d, "bomb", &["--pids-limit", "20"], &["sleep", "3000"]);
    let current = cg_path(&d, "pids", "bomb", "pids.current");
    let read = || {
        std::fs::read_to_string(&current)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let bomb = "while :; do sleep 300 & done";
    d.ok(&["exec", "-d", "bomb", "sh", "-c", bomb]);
    let mut peak = 0;
    until("the bomb to reach the limit", || {
        peak = peak.max(read());
        peak >= 19
    });
    // More bombers: each takes the free slot and fails to fork; the count never passes 20.
    for _ in 0..3 {
        let _ = d.docker(&["exec", "-d", "bomb", "sh", "-c", bomb]);
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end {
            peak = peak.max(read());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(peak <= 20, "pids.current reached {peak}, over the limit");
    let events = cg(&d, "pids", "bomb", "pids.events");
    let refused: u64 = events
        .strip_prefix("max ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "no fork was refused: {events}");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "bomb"]),
        "true"
    );
    // The init and the bomb's sleeps: as many as the cgroup holds, all seen by `docker top`.
    let n = read();
    assert!((19..=20).contains(&n), "pids.current {n}");
    let top = d.ok(&["top", "bomb"]);
    assert_eq!(top.lines().count() as u64 - 1, n, "{top}");
}

/// `cpuacct.usage` (ns) of the container `name`.
fn cpu_ns(d: &Daemon, name: &str) -> u64 {
    cg(d, "cpuacct", name, "cpuacct.usage").parse().expect("ns")
}

#[test]
fn half_a_cpu_holds_a_busy_loop_near_fifty_percent() {
    let Some(d) = daemon_with_image() else { return };
    run_d(
        &d,
        "busy",
        &["--cpus", "0.5"],
        &["sh", "-c", "while :; do :; done"],
    );
    until("the loop to run", || cpu_ns(&d, "busy") > 100_000_000);
    // 2 s measurement windows. The quota must hold in every one; the loop must reach about
    // half a cpu in one of them at least (the test host is shared: other loads can starve it
    // for a while, never push it over its quota).
    let mut shares = Vec::new();
    for _ in 0..5 {
        let (t0, u0) = (Instant::now(), cpu_ns(&d, "busy"));
        std::thread::sleep(Duration::from_secs(2));
        let (t1, u1) = (Instant::now(), cpu_ns(&d, "busy"));
        let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
        eprintln!("busy loop under --cpus 0.5: {:.1}% of a cpu", share * 100.0);
        assert!(share <= 0.65, "over the quota: {share}");
        shares.push(share);
        if share >= 0.35 {
            break;
        }
    }
    assert!(
        shares.iter().any(|s| *s >= 0.35),
        "never near half a cpu: {shares:?}"
    );
    let stat = cg(&d, "cpu", "busy", "cpu.stat");
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "never throttled: {stat}");
}

#[test]
fn daemon_and_shims_stay_outside_the_pool() {
    let Some(d) = daemon_with_image() else { return };
    run_d(&d, "c1", &[], &["sleep", "300"]);
    run_d(&d, "c2", &["-m", "64m"], &["sleep", "300"]);
    d.ok(&["exec", "-d", "c1", "sleep", "300"]);
    let pool = d.cgroup.clone();
    let mut ours = vec![d.master_pid()];
    ours.extend(d.worker_pids());
    let shims = shim_pids(&d);
    assert_eq!(shims.len(), 2, "one shim per container: {shims:?}");
    ours.extend(&shims);
    for pid in ours {
        for ctrl in ["memory", "pids"] {
            let path = proc_cgroup(pid, ctrl).unwrap_or_else(|| panic!("cgroup of {pid}"));
            assert!(
                !path.starts_with(&pool),
                "process {pid} is in {ctrl}:{path}, inside the pool {pool}"
            );
        }
    }
    for name in ["c1", "c2"] {
        let id = d.ok(&["inspect", "-f", "{{.Id}}", name]);
        let want = format!("{pool}/{id}");
        let procs = cg(&d, "pids", name, "cgroup.procs");
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(pids.contains(&pid_of(&d, name)), "{name}: {procs}");
        if name == "c1" {
            assert_eq!(pids.len(), 2, "the init and the exec: {procs}");
        }
        for pid in pids {
            for ctrl in ["memory", "pids", "cpu", "cpuset"] {
                assert_eq!(
                    proc_cgroup(pid, ctrl).as_deref(),
                    Some(want.as_str()),
                    "{ctrl}"
                );
            }
        }
    }
}

/// Live `berth-shim` processes of this daemon (their command line names its exec root).
fn shim_pids(d: &Daemon) -> Vec<i32> {
    let root = d.root.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if exe.to_string_lossy().contains("berth-shim")
            && String::from_utf8_lossy(&cmd).contains(&root)
        {
            out.push(pid);
        }
    }
    out
}
