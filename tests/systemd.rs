//! berthd under systemd (issue 3 points 6b and 8): a stand-in for systemd's socket unit
//! keeps the API socket while the master is killed with -9 and started again, the master
//! reports readiness and its pid on `NOTIFY_SOCKET` only once the API answers, and the
//! packaged units say what the design needs.

mod common;
mod loadkit;
use berth_load::Op;
use common::{is_root, Daemon, Launch};
use loadkit::*;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Running containers while the master is killed.
const CONTAINERS: usize = 30;

#[test]
fn master_kill9_with_a_socket_held_by_systemd_refuses_nobody() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start_with(Launch {
        socket_backlog: Some(4096),
        ..Launch::default()
    });
    d.import_busybox("bb:test");
    let before = start_running(&d, "keep-", CONTAINERS);
    assert_eq!(before.len(), CONTAINERS, "running: {before:?}");
    let old_master = d.pid().expect("master pid");
    let old_worker = *d.workers().first().expect("a worker");

    let rt = runtime();
    let _rt = rt.enter();
    let load = berth_load::start(load_config(&d));
    until_completed(&load, 300);

    let t_kill = now_ns();
    d.kill9();
    // Restart=always, RestartSec=0: systemd starts the next master at once, while the old
    // worker (SIGTERM through PDEATHSIG) still drains.
    d.spawn_unready();
    let t_old_gone = wait_gone(old_worker, 10);
    let t_serving = ping_until_ok(&d.sock, 30);
    let new_master = d.pid().expect("new master pid");
    until_completed(&load, 300);
    let run = rt.block_on(load.finish()).expect("load run");
    let report = run.report(&[berth_load::Window {
        start_ns: t_kill,
        end_ns: t_serving,
    }]);
    eprintln!("{report}");
    let sorted = sort_failures(&run.records, t_old_gone);
    let during_drain = sorted
        .in_flight
        .iter()
        .filter(|r| r.start_ns >= t_kill)
        .count();
    let worst_wait = run
        .records
        .iter()
        .filter(|r| r.start_ns >= t_kill && r.outcome.is_ok())
        .filter(|r| matches!(r.op, Op::Ping | Op::List | Op::Inspect))
        .map(|r| r.latency_ns)
        .max()
        .unwrap_or(0);
    eprintln!(
        "master kill -9 with the socket held by the stand-in, {CONTAINERS} containers, 32 clients: \
         old worker gone {:.1} ms after the kill, new master serving {:.1} ms after it \
         (longest wait of a read made after the kill: {:.1} ms, longest time without a \
         successful completion: {:.1} ms); failed in flight on the old worker: {} {} ({} of \
         them sent after the kill); stale keep-alive: {} {}; unexplained: {} {}",
        ms(t_old_gone - t_kill),
        ms(t_serving - t_kill),
        ms(worst_wait),
        report.max_gap_ms,
        sorted.in_flight.len(),
        outcome_counts(&sorted.in_flight),
        during_drain,
        sorted.stale_keepalive.len(),
        outcome_counts(&sorted.stale_keepalive),
        sorted.unexplained.len(),
        outcome_counts(&sorted.unexplained),
    );
    eprintln!("from the daemon log:\n{}", startup_log(&d));

    assert_only_in_flight_failed(&report, &sorted, 32, "the master's crash");
    assert_ne!(new_master, old_master);
    assert_eq!(
        running_pids(&d, "keep-"),
        before,
        "the containers changed across the master's crash"
    );
    assert!(
        t_old_gone - t_kill < 2_000_000_000,
        "the orphaned worker drained for {:.1} ms",
        ms(t_old_gone - t_kill)
    );
}

/// The notification socket a test daemon reports to, with the sender's credentials.
struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
}

/// One notification: its sender's pid and its `KEY=VALUE` lines.
#[derive(Debug)]
struct Note {
    pid: i32,
    vars: HashMap<String, String>,
    at: u64,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tempfile::Builder::new()
            .prefix("bn")
            .tempdir_in("/tmp")
            .expect("tmp");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
            .expect("SO_PASSCRED");
        Notify {
            sock,
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    /// The next notification within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Note> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
        self.sock
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let msg = match recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(e) => panic!("recvmsg on the notify socket: {e}"),
        };
        let mut pid = 0;
        for c in msg.cmsgs().expect("control messages") {
            if let ControlMessageOwned::ScmCredentials(cr) = c {
                pid = cr.pid();
            }
        }
        let n = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let vars = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Note {
            pid,
            vars,
            at: now_ns(),
        })
    }
}

/// Waits for the `READY=1` notification; every notification before it comes from `master`.
fn until_ready(n: &Notify, master: i32) -> Note {
    loop {
        let note = n
            .recv(Duration::from_secs(30))
            .expect("READY=1 within 30 s");
        assert_eq!(
            note.pid, master,
            "a notification not from the master: {note:?}"
        );
        if note.vars.get("READY").map(String::as_str) == Some("1") {
            return note;
        }
    }
}

#[test]
fn master_notifies_ready_and_its_pid_only_once_the_api_answers() {
    if !is_root() {
        return;
    }
    let n = Notify::bind();
    let mut d = Daemon::new(Launch {
        env: vec![("NOTIFY_SOCKET".into(), n.path.clone())],
        ..Launch::default()
    });

    // First start: READY=1 and MAINPID, from the master, and the API answers.
    d.spawn_unready();
    let master = d.pid().expect("master pid");
    let ready = until_ready(&n, master);
    let ping = raw_ping(&d.sock, Duration::from_secs(5));
    assert_eq!(
        ping.ok(),
        Some(200),
        "READY=1 sent but the API does not answer"
    );
    assert_eq!(ready.vars.get("MAINPID"), Some(&master.to_string()));

    // Second start with the store held: the worker cannot open it, so it cannot serve.
    // Nothing may claim readiness until it does.
    d.kill9();
    let db = d.path("d/store/db");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .expect("open the store's lock file");
    // Blocks until the first master's orphaned worker has drained and let go of it.
    // SAFETY: flock on an fd we own.
    #[allow(unsafe_code)]
    let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", db.display());
    d.spawn_unready();
    let master = d.pid().expect("master pid");
    common::until("the worker to start", || !d.workers().is_empty());
    let t_held = now_ns();
    let early = raw_ping(&d.sock, Duration::from_secs(1));
    assert!(
        early.is_err(),
        "the API answered without its store: {early:?}"
    );
    let note = n.recv(Duration::from_millis(200));
    assert!(note.is_none(), "notified while not serving: {note:?}");
    let t_release = now_ns();
    drop(lock);
    let ready = until_ready(&n, master);
    let ping = raw_ping(&d.sock, Duration::from_secs(5));
    assert_eq!(
        ping.ok(),
        Some(200),
        "READY=1 sent but the API does not answer"
    );
    assert_eq!(ready.vars.get("MAINPID"), Some(&master.to_string()));
    eprintln!(
        "store held {:.0} ms: no notification, no answer; READY=1 {:.1} ms after its release",
        ms(t_release - t_held),
        ms(ready.at - t_release)
    );

    // A live upgrade keeps the main pid and says so in STATUS.
    d.upgrade_ok(&[]);
    let note = n
        .recv(Duration::from_secs(10))
        .expect("a notification after the upgrade");
    assert_eq!(note.pid, master, "{note:?}");
    assert!(
        note.vars
            .get("STATUS")
            .is_some_and(|s| s.starts_with("serving")),
        "{note:?}"
    );
    assert_eq!(note.vars.get("READY"), None, "{note:?}");
}

/// `[Section]` → key → values (a key may repeat).
fn unit(path: &Path) -> HashMap<String, HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {line:?}", path.display()));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn packaged_units_match_the_design() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let service = unit(&dir.join("berth.service"));
    let socket = unit(&dir.join("berth.socket"));
    let want = |u: &HashMap<String, HashMap<String, Vec<String>>>, s: &str, k: &str, v: &str| {
        let got = u.get(s).and_then(|m| m.get(k)).and_then(|v| v.last());
        assert_eq!(got.map(String::as_str), Some(v), "[{s}] {k}");
    };
    want(&service, "Service", "Type", "notify");
    want(&service, "Service", "KillMode", "process");
    want(&service, "Service", "Delegate", "yes");
    want(&service, "Service", "Restart", "always");
    want(&service, "Unit", "Requires", "berth.socket");
    let exec = service["Service"]["ExecStart"].join(" ");
    assert!(exec.contains("-H fd://"), "ExecStart {exec:?}");
    want(&socket, "Socket", "SocketMode", "0660");
    want(&socket, "Socket", "SocketGroup", "berth");
    want(&socket, "Socket", "Backlog", "4096");
    assert!(
        socket["Socket"].contains_key("ListenStream"),
        "berth.socket listens on no stream socket"
    );
}
