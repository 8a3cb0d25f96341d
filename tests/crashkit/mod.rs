//! Helpers for the daemon-crash tests: polling, process facts from /proc, background CLI
//! clients that are killed on drop, and the measuring writer container.
#![allow(dead_code)]

use crate::common::Daemon;
use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds; panics with `what` after `secs` seconds.
pub fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `docker inspect -f fmt name`, or "" when it fails (container gone).
pub fn inspect(d: &Daemon, fmt: &str, name: &str) -> String {
    let out = d.docker(&["inspect", "-f", fmt, name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The container's init pid.
pub fn pid_of(d: &Daemon, name: &str) -> i32 {
    let s = inspect(d, "{{.State.Pid}}", name);
    s.parse().unwrap_or_else(|_| panic!("pid of {name}: {s:?}"))
}

/// The full id of a container.
pub fn id_of(d: &Daemon, name: &str) -> String {
    inspect(d, "{{.Id}}", name)
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split(' ').map(str::to_string).collect())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// The parent pid of `pid` (0 when gone).
pub fn ppid(pid: i32) -> i32 {
    stat_fields(pid)
        .and_then(|f| f[1].parse().ok())
        .unwrap_or(0)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("kill {pid}: {e}"));
}

/// Sends SIGTERM to a container's init and waits until it is gone.
pub fn term_and_wait_gone(pid: i32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    until(&format!("pid {pid} to exit"), 20, || !alive(pid));
}

/// Number of sockets `pid` holds.
pub fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Pids of the live berth-shim processes of this daemon.
pub fn shims(d: &Daemon) -> Vec<i32> {
    let root = d.root.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("berth-shim") && cmd.contains(&root) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Wall clock in ns since the epoch.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Parses an RFC 3339 time as the CLI prints it.
pub fn parse_ts(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s:?}: {e}"))
        .timestamp_nanos_opt()
        .unwrap_or(0)
}

/// A docker CLI running in the background; its stdout is collected; killed on drop.
pub struct Bg {
    child: Option<Child>,
    out: Option<std::thread::JoinHandle<String>>,
    what: String,
}

impl Bg {
    /// Starts `docker args` in the background.
    pub fn start(d: &Daemon, args: &[&str]) -> Bg {
        let mut child = d
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start docker");
        let mut so = child.stdout.take().expect("stdout pipe");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        Bg {
            child: Some(child),
            out: Some(out),
            what: format!("docker {args:?}"),
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `secs` for it to end; returns its status and stdout.
    pub fn finish(&mut self, secs: u64) -> (ExitStatus, String) {
        let what = self.what.clone();
        until(&format!("{what} to end"), secs, || !self.running());
        let st = self
            .child
            .take()
            .and_then(|mut c| c.wait().ok())
            .expect("client status");
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (st, out)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A shell script that exits with `code` on SIGTERM after printing `before` lines, and
/// prints `after` lines in the trap.
pub fn trap_script(code: i32, before: &[&str], after: &[&str]) -> String {
    let pre: String = before.iter().map(|l| format!("echo {l}; ")).collect();
    let post: String = after.iter().map(|l| format!("echo {l}; ")).collect();
    format!("trap '{post}exit {code}' TERM; {pre}sleep 1000 & wait")
}

/// Prints 1, 2, 3, ... (ten lines, then a 1 ms pause) until /tmp/stop exists, measuring
/// each `echo` with `$EPOCHREALTIME` (no fork), then prints `max_us=<longest> n=<lines>`.
pub const WRITER: &str = r#"mkfifo /tmp/f; exec 3<>/tmp/f; i=0; max=0
while [ ! -e /tmp/stop ]; do
  k=0
  while [ $k -lt 10 ]; do
    i=$((i+1)); k=$((k+1)); s=$EPOCHREALTIME; echo $i; e=$EPOCHREALTIME
    d=$(( ${e/./} - ${s/./} )); [ $d -gt $max ] && max=$d
  done
  read -t 0.001 x <&3
done
echo "max_us=$max n=$i""#;

/// What the writer's log shows.
#[derive(Debug)]
pub struct WriterFigures {
    /// Lines written (and found exactly once each, in order).
    pub lines: u64,
    /// The container's longest single `echo`, in µs.
    pub max_write_us: u64,
    /// Lines the shim logged while the daemon was down.
    pub lines_down: u64,
    /// Longest gap between consecutive log timestamps overlapping the down period, in ms.
    pub max_gap_down_ms: f64,
}

/// Stops the writer, waits for it, and checks its log: 1..n exactly once each, in order,
/// then the summary line. `down` is the (kill, restart) wall-clock window.
pub fn finish_writer(d: &Daemon, name: &str, down: (i64, i64)) -> WriterFigures {
    // Detached: the writer exits as soon as the file exists, and the end of its PID
    // namespace kills an exec that has not exited yet (137).
    d.ok(&["exec", "-d", name, "touch", "/tmp/stop"]);
    assert_eq!(d.ok(&["wait", name]), "0");
    let log = d.ok(&["logs", "-t", name]);
    let mut lines: Vec<&str> = log.lines().collect();
    let summary = lines.pop().expect("writer log is empty");
    let (_, summary) = summary.split_once(' ').expect("timestamped summary");
    let nums: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(
        summary.starts_with("max_us=") && nums.len() == 2,
        "bad summary {summary:?}"
    );
    let (max_write_us, n) = (nums[0], nums[1]);
    assert_eq!(
        lines.len() as u64,
        n,
        "line count differs from lines written"
    );
    let mut stamps = Vec::with_capacity(lines.len());
    for (k, l) in lines.iter().enumerate() {
        let (ts, v) = l.split_once(' ').expect("timestamped line");
        assert_eq!(
            v,
            (k + 1).to_string(),
            "line {} of the log is {v:?}: gap or duplicate",
            k + 1
        );
        stamps.push(parse_ts(ts));
    }
    let (t0, t1) = down;
    let lines_down = stamps.iter().filter(|t| **t >= t0 && **t <= t1).count() as u64;
    let max_gap = stamps
        .windows(2)
        .filter(|w| w[1] >= t0 && w[0] <= t1)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(i64::MAX);
    WriterFigures {
        lines: n,
        max_write_us,
        lines_down,
        max_gap_down_ms: max_gap as f64 / 1e6,
    }
}

/// `docker run -d args...`; returns the id.
pub fn run_d(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    d.ok(&all)
}

/// Where a daemon killed in the middle of an exit or a restart stopped.
#[derive(Clone, Copy, PartialEq)]
pub enum Midway {
    /// The exit recorded, no follow-up done, the shim never acknowledged.
    ExitRecorded,
    /// The exit recorded and the restart decided, not carried out.
    RestartDecided,
    /// The restart's new run started but not recorded.
    RestartNotRecorded,
}

/// Puts containers' records in the state a daemon killed midway leaves behind.
pub fn record_as_if_killed_midway(d: &Daemon, which: &[(&str, Midway)]) {
    use berthd::container::record::{Record, Status};
    let store = berthd::store::Store::open(&d.root.join("d/store")).expect("open store");
    let table = store.table("containers").expect("containers table");
    for (id, midway) in which {
        let mut rec: Record = table.get(id).expect("read").expect("record");
        if *midway == Midway::RestartNotRecorded {
            rec.state.exited(0, false, rec.state.started_at_ns + 1);
        } else {
            let path = d.root.join("d/containers").join(id).join("exit.json");
            let x: berth_api::shim::ExitRecord =
                serde_json::from_slice(&std::fs::read(path).expect("exit record"))
                    .expect("exit record json");
            rec.state.exited(x.code, x.oom_killed, x.finished_at_ns);
        }
        if *midway != Midway::ExitRecorded {
            rec.state.status = Status::Restarting;
        }
        table.put(id, &rec).expect("write record");
    }
    store.flush().expect("flush store");
}
