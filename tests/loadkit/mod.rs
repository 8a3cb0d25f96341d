//! Helpers for the crash-under-load and systemd tests: many running containers at once,
//! berth-load in the background, a kill -9 that notes when the process was really gone,
//! a raw `GET /_ping`, and the sorting of a run's failures into the ones a crash may cause
//! and the ones it may not.
#![allow(dead_code)]

use crate::common::{tail, Daemon};
use berth_load::{ConnKind, Outcome, Record};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Wall clock, ns since the epoch (the clock berth-load stamps its records with).
pub fn now_ns() -> u64 {
    berth_load::now_ns()
}

/// ns → ms for printing.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Starts `n` containers `bb:test sleep 100000` named `{prefix}{i}` (network none), a few
/// CLI clients at a time; returns (name, init pid) of each.
pub fn start_running(d: &Daemon, prefix: &str, n: usize) -> Vec<(String, i32)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let name = format!("{prefix}{i}");
                d.ok(&[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--name",
                    &name,
                    "bb:test",
                    "sleep",
                    "100000",
                ]);
            });
        }
    });
    running_pids(d, prefix)
}

/// (name, init pid) of the running containers whose name starts with `prefix`, by name.
pub fn running_pids(d: &Daemon, prefix: &str) -> Vec<(String, i32)> {
    // (berth's name filter is a substring match, not Docker's regular expression.)
    let out = d.ok(&["ps", "--format", "{{.Names}}"]);
    let names: Vec<&str> = out.lines().filter(|n| n.starts_with(prefix)).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "inspect",
        "-f",
        "{{.Name}} {{.State.Status}} {{.State.Pid}}",
    ];
    args.extend(names.iter().copied());
    let mut v: Vec<(String, i32)> = d
        .ok(&args)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, status, pid) = (it.next()?, it.next()?, it.next()?);
            if status != "running" {
                return None;
            }
            Some((name.trim_start_matches('/').to_string(), pid.parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// The load of the tests: 32 clients (half with a fresh connection per request), ping,
/// list, inspect of the running containers and create/start/rm cycles of `bb:test`.
pub fn load_config(d: &Daemon) -> berth_load::Config {
    let mut cfg = berth_load::Config::new(&d.sock);
    cfg.clients = 32;
    cfg.image = "bb:test".into();
    cfg.cmd = vec!["sleep".into(), "1000".into()];
    cfg.mix = "ping=4,list=2,inspect=3,cycle=1".parse().expect("mix");
    cfg
}

/// A multi-threaded runtime for berth-load; the test thread stays free to block.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until the load completed `n` more requests than `from` (20 s at most).
pub fn until_completed(load: &berth_load::LoadHandle, n: u64) {
    let from = load.progress().completed();
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.progress().completed() < from + n {
        assert!(
            Instant::now() < deadline,
            "the load completed {} of {n} requests in 20 s",
            load.progress().completed() - from
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A kill -9 and when it happened.
#[derive(Debug, Clone, Copy)]
pub struct Killed {
    /// The pid killed.
    pub pid: i32,
    /// Just before kill(2).
    pub t_kill: u64,
    /// When the process had exited (its pidfd became readable: every fd closed).
    pub t_dead: u64,
}

fn pidfd(pid: i32) -> OwnedFd {
    // SAFETY: pidfd_open with integer arguments; the result is a new fd we own.
    #[allow(unsafe_code)]
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(
            fd >= 0,
            "pidfd_open {pid}: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from_raw_fd(fd as i32)
    }
}

/// Waits until the process behind `fd` exited; panics after `secs`.
fn wait_pidfd(fd: &OwnedFd, what: &str, secs: u64) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    #[allow(unsafe_code)]
    let r = unsafe { libc::poll(&mut pfd, 1, (secs * 1000) as i32) };
    assert!(r == 1, "{what} did not exit within {secs} s");
}

/// Sends SIGKILL to `pid` and waits until it is gone.
pub fn kill9(pid: i32) -> Killed {
    let fd = pidfd(pid);
    let t_kill = now_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
    wait_pidfd(&fd, &format!("process {pid}"), 10);
    Killed {
        pid,
        t_kill,
        t_dead: now_ns(),
    }
}

/// Waits until `pid` exits by itself; returns when it was seen gone.
pub fn wait_gone(pid: i32, secs: u64) -> u64 {
    let fd = pidfd(pid);
    wait_pidfd(&fd, &format!("process {pid}"), secs);
    now_ns()
}

/// `GET /_ping` on a fresh connection; the status, or the error.
pub fn raw_ping(sock: &Path, timeout: Duration) -> std::io::Result<u16> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))
}

/// Pings until one answers 200; the time it did.
pub fn ping_until_ok(sock: &Path, secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(200) = raw_ping(sock, Duration::from_secs(secs)) {
            return now_ns();
        }
        assert!(
            Instant::now() < deadline,
            "the API did not answer within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A run's failures sorted by what a crash at `t_dead` may explain.
#[derive(Debug, Default)]
pub struct Sorted {
    /// io_error or 5xx of requests started before the process was gone (in flight on it).
    pub in_flight: Vec<Record>,
    /// io_error of a keep-alive client's first request after `t_dead`, sent on the
    /// connection the dead process held (its previous request had succeeded before).
    pub stale_keepalive: Vec<Record>,
    /// Every other failure.
    pub unexplained: Vec<Record>,
}

/// Sorts the failed records of `records` (sorted by start) around a crash at `t_dead`.
pub fn sort_failures(records: &[Record], t_dead: u64) -> Sorted {
    let mut out = Sorted::default();
    let mut last: std::collections::HashMap<u32, &Record> = std::collections::HashMap::new();
    for r in records {
        let prev = last.insert(r.client, r);
        if r.outcome.is_ok() {
            continue;
        }
        let io_or_5xx = match r.outcome {
            Outcome::IoError { .. } => true,
            Outcome::HttpError { status } => status >= 500,
            _ => false,
        };
        let stale = matches!(
            r.outcome,
            Outcome::IoError {
                received: false,
                ..
            }
        ) && r.conn == ConnKind::Keepalive
            && prev.is_some_and(|p| p.outcome.is_ok() && p.end_ns() < t_dead);
        if io_or_5xx && r.start_ns < t_dead {
            out.in_flight.push(*r);
        } else if stale && r.start_ns >= t_dead {
            out.stale_keepalive.push(*r);
        } else {
            out.unexplained.push(*r);
        }
    }
    out
}

/// The first successful request that started at or after `t`: when it ended.
/// The checks every crash under load must pass: no connection refused or timed out, only
/// failures of requests in flight on the dead process (one per client at most), nothing
/// leaked. `what` names the crash in the messages.
pub fn assert_only_in_flight_failed(
    report: &berth_load::Report,
    sorted: &Sorted,
    clients: usize,
    what: &str,
) {
    for o in ["refused", "connect_eagain", "connect_error", "timeout"] {
        assert_eq!(report.count(o), 0, "{o} during {what}:\n{report}");
    }
    assert!(
        sorted.unexplained.is_empty(),
        "failures {what} does not explain: {:#?}\n{report}",
        &sorted.unexplained[..sorted.unexplained.len().min(10)]
    );
    // A client has one request in flight at a time: at most one failure each.
    assert!(
        sorted.in_flight.len() <= clients,
        "more failures than clients: {}",
        sorted.in_flight.len()
    );
    assert!(report.leaked.is_empty(), "leaked: {:?}", report.leaked);
}

pub fn first_ok_after(records: &[Record], t: u64) -> Option<u64> {
    records
        .iter()
        .filter(|r| r.start_ns >= t && r.outcome.is_ok())
        .map(Record::end_ns)
        .min()
}

/// Counts of records by outcome name.
pub fn outcome_counts(records: &[Record]) -> String {
    let mut m = std::collections::BTreeMap::new();
    for r in records {
        let key = match r.outcome {
            Outcome::IoError { io, .. } => format!("io_error/{io:?}"),
            Outcome::HttpError { status } => format!("http_{status}"),
            o => o.name().to_string(),
        };
        *m.entry(key).or_insert(0usize) += 1;
    }
    format!("{m:?}")
}

/// The daemon's log lines about worker start-ups, stripped of colour codes.
pub fn startup_log(d: &Daemon) -> String {
    let keys = [
        "worker died",
        "worker started",
        "daemon state opened",
        "worker start-up phases",
        "restore phases",
        "worker serving",
        "draining",
    ];
    let log = strip_ansi(&d.log());
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| keys.iter().any(|k| l.contains(k)))
        .collect();
    tail(&lines.join("\n"), 30)
}

/// `s` without ANSI escape sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
