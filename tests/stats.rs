//! `docker stats`: a one-shot reading shows a sane memory usage, and a streaming `docker stats`
//! (served by the container's shim, DESIGN.md invariant 2) keeps delivering fresh samples
//! across a live upgrade of the daemon.

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
