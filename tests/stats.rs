//! `docker stats` and `docker top` against the real kernel: a one-shot reading shows a sane
//! memory usage; its figures match the container's cgroup (memory usage and limit, PIDs) and a
//! busy loop under `--cpus 0.5` reads about 50% (the one object carries a previous sample); a
//! stream's objects chain and a streaming `docker stats` renders the same figures; the
//! streaming `docker stats` (served by the container's shim, DESIGN.md invariant 2) keeps
//! delivering fresh samples across a live upgrade of the daemon; `docker top` lists exactly the
//! container's processes.

mod common;

use common::daemon_with_image;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of a docker CLI size (`1.5MiB`, `7.6GiB`, `512KiB`, `0B`).
fn bytes(s: &str) -> f64 {
    let s = s.trim();
    let units = [
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("KiB", 1024.0),
        ("B", 1.0),
    ];
    for (u, m) in units {
        if let Some(n) = s.strip_suffix(u) {
            return n.trim().parse::<f64>().map(|v| v * m).unwrap_or(f64::NAN);
        }
    }
    f64::NAN
}

/// `(usage, limit)` from a `MemUsage` column (`1.2MiB / 7.6GiB`).
fn mem_usage(col: &str) -> (f64, f64) {
    let (u, l) = col.split_once('/').unwrap_or((col, ""));
    (bytes(u), bytes(l))
}

/// The `MemUsage` columns of the lines for `name` in a `docker stats` output file (the CLI
/// may put screen-clearing escapes in front of a line).
fn mem_columns(path: &std::path::Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            l.find(&format!("{name} "))
                .map(|i| &l[i + name.len() + 1..])
        })
        .map(|s| s.split('\u{1b}').next().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn no_stream_shows_sane_memory_usage() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "st1", "bb:test", "sleep", "300"]);
    let out = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.CPUPerc}} {{.MemUsage}}",
        "st1",
    ]);
    eprintln!("docker stats --no-stream: {out}");
    let mut parts = out.splitn(3, ' ');
    assert_eq!(parts.next(), Some("st1"), "stats output: {out}");
    let cpu = parts.next().unwrap_or("");
    assert!(cpu.ends_with('%'), "CPU column {cpu:?} in {out:?}");
    let (usage, limit) = mem_usage(parts.next().unwrap_or(""));
    assert!(usage > 0.0, "memory usage not positive: {out:?}");
    assert!(
        limit.is_finite() && usage < limit,
        "usage not below limit: {out:?}"
    );

    // With a memory limit the limit column shows it.
    d.ok(&[
        "run", "-d", "--name", "st2", "-m", "64m", "bb:test", "sleep", "300",
    ]);
    let out = d.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "st2"]);
    let (usage, limit) = mem_usage(&out);
    assert_eq!(limit, 64.0 * 1024.0 * 1024.0, "limit column: {out:?}");
    assert!(usage > 0.0 && usage < limit, "usage: {out:?}");

    // A busy container shows CPU use: the single object carries a previous sample.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "bb:test",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let out = d.ok(&["stats", "--no-stream", "--format", "{{.CPUPerc}}", "busy"]);
    let cpu: f64 = out.trim_end_matches('%').parse().unwrap_or(0.0);
    assert!(cpu > 10.0, "busy container CPU: {out:?}");
    d.ok(&["rm", "-f", "busy"]);

    // A stopped container answers with zeros, not an error.
    d.ok(&["stop", "-t", "0", "st2"]);
    let out = d.ok(&["stats", "--no-stream", "--format", "{{.Name}}", "st2"]);
    assert_eq!(out, "st2");
    d.ok(&["rm", "-f", "st1", "st2"]);
}

#[test]
fn streaming_stats_survive_an_upgrade() {
    let Some(d) = daemon_with_image() else { return };
    // Memory grows ~100 KiB every 200 ms, so every fresh sample shows a new usage.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "grow",
        "bb:test",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); eval \"v$i=$(head -c 100000 /dev/zero | tr '\\0' x)\"; usleep 200000; done",
    ]);

    // The docker CLI, streaming to a file.
    let out_path = d.path("stats.out");
    let mut cli = d
        .cmd(&["stats", "--format", "{{.Name}} {{.MemUsage}}", "grow"])
        .stdout(std::fs::File::create(&out_path).expect("stats output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docker stats");

    // A raw API client on one connection: counts the objects it receives and sees the end.
    let mut conn = UnixStream::connect(&d.sock).expect("connect");
    conn.write_all(b"GET /v1.41/containers/grow/stats?stream=1 HTTP/1.1\r\nHost: berth\r\n\r\n")
        .expect("send stats request");
    let objects = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (objects, closed) = (objects.clone(), closed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        objects.fetch_add(text.matches("\"cpu_stats\"").count(), Ordering::SeqCst);
                    }
                }
            }
            closed.store(true, Ordering::SeqCst);
        })
    };

    common::until("CLI stats lines", || {
        mem_columns(&out_path, "grow").len() >= 2
    });
    common::until("raw stats objects", || objects.load(Ordering::SeqCst) >= 2);
    eprintln!("first CLI lines: {:?}", mem_columns(&out_path, "grow"));
    for round in 0..2 {
        d.upgrade_ok(&["--probation-ms", "100"]);
        let seen: Vec<String> = mem_columns(&out_path, "grow");
        let at_upgrade = objects.load(Ordering::SeqCst);
        // Fresh samples on the same connection after the new generation serves.
        common::until("raw stats objects after the upgrade", || {
            objects.load(Ordering::SeqCst) >= at_upgrade + 2
        });
        assert!(
            !closed.load(Ordering::SeqCst),
            "raw stats stream closed (round {round})"
        );
        // The CLI prints new lines with a memory usage it never showed before the upgrade.
        common::until("a fresh CLI stats line after the upgrade", || {
            mem_columns(&out_path, "grow")
                .iter()
                .skip(seen.len())
                .any(|c| !seen.contains(c) && mem_usage(c).0 > 0.0)
        });
        assert!(
            cli.try_wait().expect("poll docker stats").is_none(),
            "docker stats exited"
        );
    }

    eprintln!("last CLI lines: {:?}", {
        let c = mem_columns(&out_path, "grow");
        c[c.len().saturating_sub(4)..].to_vec()
    });
    // The stream ends when the container stops.
    d.ok(&["stop", "-t", "0", "grow"]);
    common::until("raw stats stream to end", || closed.load(Ordering::SeqCst));
    let _ = reader.join();
    let _ = cli.kill();
    let _ = cli.wait();
    d.ok(&["rm", "-f", "grow"]);
}

/// A cgroup v1 file of the container `name` under the daemon's pool.
fn cg(d: &common::Daemon, ctrl: &str, name: &str, file: &str) -> String {
    let id = d.ok(&["inspect", "-f", "{{.Id}}", name]);
    let p = std::path::Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(d.cgroup.trim_start_matches('/'))
        .join(id)
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// What the docker CLI shows as memory usage, computed from the cgroup: usage minus
/// `total_inactive_file` (v1).
fn cgroup_mem_usage(d: &common::Daemon, name: &str) -> f64 {
    let usage: f64 = cg(d, "memory", name, "memory.usage_in_bytes")
        .parse()
        .unwrap_or(f64::NAN);
    let stat = cg(d, "memory", name, "memory.stat");
    let inactive: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    usage - inactive
}

/// `--cpus 0.5` busy loop, 20 MiB held in a shell variable, 3 more processes.
const WORKLOAD: &str = "sleep 3000 & sleep 3000 & x=$(head -c 20m /dev/zero | tr '\\0' a); \
                        (while :; do :; done) & wait";

#[test]
fn no_stream_figures_match_the_cgroup() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run", "-d", "--name", "fig", "-m", "64m", "--cpus", "0.5", "bb:test", "sh", "-c", WORKLOAD,
    ]);
    common::until("the workload to hold its memory and spin", || {
        cg(&d, "pids", "fig", "pids.current") == "4" && cgroup_mem_usage(&d, "fig") > 20e6
    });
    let fmt = "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.MemPerc}}|{{.PIDs}}";
    // The quota caps every reading; the loop reaches about half a cpu in one of them at least
    // (the test host is shared and can starve it for a while).
    let mut cpus = Vec::new();
    for _ in 0..5 {
        let before = cgroup_mem_usage(&d, "fig");
        let out = d.ok(&["stats", "--no-stream", "--format", fmt, "fig"]);
        let after = cgroup_mem_usage(&d, "fig");
        eprintln!("docker stats --no-stream: {out}");
        let cols: Vec<&str> = out.split('|').collect();
        assert_eq!(cols.len(), 5, "{out}");
        assert_eq!(cols[0], "fig");
        let (usage, limit) = mem_usage(cols[2]);
        assert_eq!(limit, 64.0 * 1024.0 * 1024.0, "limit column: {out}");
        // The CLI prints 3 significant digits: within 1 MiB of the cgroup's figure.
        let (lo, hi) = (before.min(after), before.max(after));
        assert!(
            usage > lo - 1048576.0 && usage < hi + 1048576.0,
            "usage {usage} vs cgroup {before}..{after}: {out}"
        );
        let perc: f64 = cols[3].trim_end_matches('%').parse().unwrap_or(f64::NAN);
        assert!((perc - usage / limit * 100.0).abs() < 1.0, "{out}");
        assert_eq!(cols[4], cg(&d, "pids", "fig", "pids.current"), "{out}");
        let cpu: f64 = cols[1].trim_end_matches('%').parse().unwrap_or(f64::NAN);
        assert!(cpu <= 65.0, "over the quota: {out}");
        cpus.push(cpu);
        if cpu >= 35.0 {
            break;
        }
    }
    assert!(cpus.iter().any(|c| *c >= 35.0), "never near 50%: {cpus:?}");
}

/// Reads stats objects from a raw `stats?stream=1` connection until `n` arrived.
fn read_objects(conn: &mut UnixStream, n: usize) -> Vec<serde_json::Value> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("read timeout");
    let (mut text, mut buf, mut out) = (String::new(), [0u8; 64 * 1024], Vec::new());
    while out.len() < n {
        let k = conn.read(&mut buf).expect("read stats stream");
        assert!(k > 0, "stats stream ended after {} objects", out.len());
        text.push_str(&String::from_utf8_lossy(&buf[..k]));
        // Chunked: size lines, then one JSON line per object.
        while let Some(i) = text.find('\n') {
            let line: String = text.drain(..=i).collect();
            if line.starts_with('{') {
                out.push(serde_json::from_str(line.trim()).expect("stats object"));
            }
        }
    }
    out
}

/// The docker CLI's CPU % of one stats object (against its `precpu_stats`).
fn cli_cpu_percent(v: &serde_json::Value) -> f64 {
    let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let cpu = f("/cpu_stats/cpu_usage/total_usage") - f("/precpu_stats/cpu_usage/total_usage");
    let sys = f("/cpu_stats/system_cpu_usage") - f("/precpu_stats/system_cpu_usage");
    cpu / sys * f("/cpu_stats/online_cpus") * 100.0
}

#[test]
fn streaming_stats_update_with_the_cgroup() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run", "-d", "--name", "live", "-m", "64m", "--cpus", "0.5", "bb:test", "sh", "-c",
        WORKLOAD,
    ]);
    common::until("the workload to start", || {
        cg(&d, "pids", "live", "pids.current") == "4"
    });

    // The API stream: consecutive objects chain (each one's precpu is the previous one's cpu)
    // and carry the cgroup's figures.
    let mut conn = UnixStream::connect(&d.sock).expect("connect");
    conn.write_all(b"GET /v1.41/containers/live/stats?stream=1 HTTP/1.1\r\nHost: berth\r\n\r\n")
        .expect("send stats request");
    let objs = read_objects(&mut conn, 4);
    for w in objs.windows(2) {
        assert_eq!(w[1]["precpu_stats"], w[0]["cpu_stats"]);
        assert_eq!(w[1]["preread"], w[0]["read"]);
    }
    let last = &objs[3];
    assert_eq!(last["memory_stats"]["limit"], 64 << 20);
    assert_eq!(last["pids_stats"]["current"], 4);
    let usage = last["memory_stats"]["usage"].as_f64().unwrap_or(0.0);
    let now: f64 = cg(&d, "memory", "live", "memory.usage_in_bytes")
        .parse()
        .unwrap_or(0.0);
    assert!(
        (usage - now).abs() < 1048576.0,
        "usage {usage} vs cgroup {now}"
    );
    let cpus: Vec<f64> = objs[1..].iter().map(cli_cpu_percent).collect();
    eprintln!("CPU % of the updates: {cpus:?}");
    assert!(cpus.iter().all(|c| *c <= 65.0), "over the quota: {cpus:?}");
    assert!(cpus.iter().any(|c| *c >= 35.0), "never near 50%: {cpus:?}");
    drop(conn);

    // The CLI streaming: it renders updates with the same figures.
    let out_path = d.path("live.out");
    let mut cli = d
        .cmd(&[
            "stats",
            "--format",
            "{{.Name}} {{.CPUPerc}} {{.PIDs}} {{.MemUsage}}",
            "live",
        ])
        .stdout(std::fs::File::create(&out_path).expect("stats output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docker stats");
    let rows = || -> Vec<Vec<String>> {
        mem_columns(&out_path, "live")
            .iter()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .filter(|c: &Vec<String>| c.len() >= 5)
            .collect()
    };
    let cpu = |r: &Vec<String>| r[0].trim_end_matches('%').parse::<f64>().unwrap_or(0.0);
    // The first object has no previous sample (CPU near 0); an update shows the loop.
    common::until("a CLI update with the loop's CPU", || {
        rows().iter().any(|r| cpu(r) >= 35.0)
    });
    let _ = cli.kill();
    let _ = cli.wait();
    let got = rows();
    eprintln!("docker stats lines: {got:?}");
    for r in &got {
        assert!(cpu(r) <= 65.0, "over the quota: {r:?}");
        assert_eq!(r[1], "4", "{r:?}");
        let (usage, limit) = mem_usage(&r[2..].join(" "));
        assert_eq!(limit, 64.0 * 1024.0 * 1024.0, "{r:?}");
        assert!(usage > 20e6 && usage < limit, "{r:?}");
    }
}

#[test]
fn top_lists_the_containers_processes() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "tp",
        "bb:test",
        "sh",
        "-c",
        "sleep 3001 & sleep 3002 & wait",
    ]);
    common::until("both sleeps", || {
        cg(&d, "pids", "tp", "pids.current") == "3"
    });
    d.ok(&["exec", "-d", "tp", "sleep", "3003"]);
    common::until("the exec", || cg(&d, "pids", "tp", "pids.current") == "4");
    let mut want: Vec<String> = cg(&d, "pids", "tp", "cgroup.procs")
        .lines()
        .map(str::to_string)
        .collect();
    want.sort();
    let init = d.ok(&["inspect", "-f", "{{.State.Pid}}", "tp"]);
    assert!(want.contains(&init), "{want:?}");
    let top = d.ok(&["top", "tp"]);
    eprintln!("docker top:\n{top}");
    let mut lines = top.lines();
    let titles: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let pid_col = titles.iter().position(|t| *t == "PID").expect("PID column");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let mut pids: Vec<String> = rows.iter().map(|r| r[pid_col].to_string()).collect();
    pids.sort();
    assert_eq!(pids, want);
    for cmd in ["sleep 3001", "sleep 3002", "sleep 3003"] {
        assert!(top.contains(cmd), "{cmd} missing:\n{top}");
    }
    // ps options: the columns asked for, same processes.
    let top = d.ok(&["top", "tp", "-o", "pid,comm"]);
    let mut pids: Vec<String> = top
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    pids.sort();
    assert_eq!(pids, want, "{top}");
}
