//! `kill -9` of a shim: its container keeps running (same pid) and its exit is still
//! recorded exactly — code, time and `die` event — because the master, child subreaper of
//! every shim, reaps the re-parented init and records its status for the worker. Also when
//! the worker is killed too and the container exits before a new worker runs; and stop,
//! kill, `rm -f`, restart policies and `--rm` of a container that has no shim.

mod common;
mod crashkit;
use common::{daemon_with_image, Daemon};
use crashkit::*;
use nix::sys::signal::Signal;
use std::path::Path;

/// A TERM-trapping container init's exit code in these tests.
const CODE: i32 = 37;

/// `--since`/`--until` value for a time in ns since the epoch.
fn ts_arg(ns: i64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// The `exitCode` of every `die` event of container `id` since `since_ns`.
fn die_codes(d: &Daemon, id: &str, since_ns: i64) -> Vec<String> {
    let since = ts_arg(since_ns);
    let until = ts_arg(now_ns());
    let filter = format!("container={id}");
    let out = d.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &filter,
        "--filter",
        "event=die",
        "--format",
        "{{.Actor.Attributes.exitCode}}",
    ]);
    out.lines().map(str::to_string).collect()
}

/// Runs a container that exits with [`CODE`] on SIGTERM; returns its id once the trap is
/// set (before, SIGTERM to the namespace's init would be ignored).
fn run_trap(d: &Daemon, name: &str, opts: &[&str]) -> String {
    let script = trap_script(CODE, &["ready"], &[]);
    let mut args = vec!["--name", name];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["bb:test", "sh", "-c", &script]);
    let id = run_d(d, &args);
    until(&format!("{name} to set its trap"), 20, || {
        d.ok(&["logs", name]) == "ready"
    });
    id
}

/// kill -9 of the container's shim; waits until the worker watches the container without
/// it and the init is re-parented. Returns (init pid, its new parent).
fn kill_shim(d: &Daemon, name: &str) -> (i32, i32) {
    let pid = pid_of(d, name);
    let shim = ppid(pid);
    assert!(
        shims(d).contains(&shim),
        "the parent of {name}'s init is not its shim"
    );
    signal(shim, Signal::SIGKILL);
    until(
        "the worker to watch the container without its shim",
        20,
        || inspect(d, "{{.State.Error}}", name).contains("shim exited"),
    );
    until("the init to be re-parented", 20, || ppid(pid) != shim);
    assert!(alive(pid), "{name} died with its shim");
    assert_eq!(
        inspect(d, "{{.State.Status}} {{.State.Pid}}", name),
        format!("running {pid}")
    );
    (pid, ppid(pid))
}

/// `comm` of a process.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the process is gone from /proc (reaped, not just a zombie).
fn reaped(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The worker: the master's child running berthd.
fn worker_of(master: i32) -> i32 {
    let mut found = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{master}/task"))
        .expect("master tasks")
        .flatten()
    {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        found.extend(
            kids.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|p| comm(*p) == "berthd" && alive(*p)),
        );
    }
    assert_eq!(found.len(), 1, "workers of master {master}: {found:?}");
    found[0]
}

/// Resumes a stopped process when dropped (a failing test must not leave the master
/// stopped: the daemon's teardown talks to it).
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Asserts the container exited with [`CODE`], no error, at a time within `window`, with
/// one `die` event saying so, and that the master's record was consumed.
fn assert_exact_exit(d: &Daemon, name: &str, id: &str, pid: i32, window: (i64, i64)) {
    until("the exit to be recorded", 20, || {
        inspect(d, "{{.State.Status}}", name) == "exited"
    });
    assert_eq!(
        inspect(
            d,
            "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}} [{{.State.Error}}]",
            name
        ),
        format!("exited {CODE} false []")
    );
    let finished = parse_ts(&inspect(d, "{{.State.FinishedAt}}", name));
    let (t0, t1) = window;
    eprintln!(
        "FinishedAt is {:.1} ms after the signal, the reap seen {:.1} ms after it",
        (finished - t0) as f64 / 1e6,
        (t1 - t0) as f64 / 1e6
    );
    assert!(
        finished >= t0 && finished <= t1 + 200_000_000,
        "FinishedAt {finished} outside [{t0}, {t1} + 200 ms]"
    );
    assert_eq!(die_codes(d, id, t0), vec![CODE.to_string()], "die events");
    let record = d.root.join(format!("x/reaped/{pid}.json"));
    assert!(!record.exists(), "the reaped record was left behind");
}

#[test]
fn killed_shim_keeps_the_exact_exit() {
    let Some(d) = daemon_with_image() else { return };
    let id = run_trap(&d, "sk", &[]);
    let pid = pid_of(&d, "sk");
    let shim = ppid(pid);
    // Clients the shim serves end with it (EOF) and leave the daemon unharmed.
    let base = socket_fds(shim);
    let mut wait = Bg::start(&d, &["wait", "sk"]);
    let mut logs = Bg::start(&d, &["logs", "-f", "sk"]);
    until("the shim to hold the clients", 20, || {
        socket_fds(shim) >= base + 2
    });
    let (_, master) = kill_shim(&d, "sk");
    assert_eq!(
        comm(master),
        "berthd",
        "the init was not adopted by the master"
    );
    let (st, out) = wait.finish(20);
    eprintln!("docker wait served by the killed shim: {st} {out:?}");
    let (st, _) = logs.finish(20);
    eprintln!("docker logs -f served by the killed shim: {st}");
    // A wait sent now is the daemon's to answer.
    let mut wait = Bg::start(&d, &["wait", "sk"]);
    let t0 = now_ns();
    signal(pid, Signal::SIGTERM);
    until("the master to reap the init", 20, || reaped(pid));
    let t1 = now_ns();
    assert_exact_exit(&d, "sk", &id, pid, (t0, t1));
    let (st, out) = wait.finish(20);
    assert_eq!((st.code(), out.trim()), (Some(0), "37"), "docker wait");
    assert!(
        d.log().contains("as the master reaped it"),
        "not recorded from the master's record"
    );
    // The container starts again normally, under a new shim.
    d.ok(&["start", "sk"]);
    let pid2 = pid_of(&d, "sk");
    assert!(shims(&d).contains(&ppid(pid2)), "restarted without a shim");
    assert_eq!(inspect(&d, "{{.State.Error}}", "sk"), "");
}

#[test]
fn killed_shim_and_worker_keep_the_exact_exit() {
    let Some(d) = daemon_with_image() else { return };
    let id = run_trap(&d, "sw", &[]);
    let (pid, master) = kill_shim(&d, "sw");
    let worker = worker_of(master);
    // The master stopped: the worker stays dead and the init unreaped until it resumes,
    // so the exit surely happens while no worker runs.
    let resume = Resume(master);
    signal(master, Signal::SIGSTOP);
    signal(worker, Signal::SIGKILL);
    until("the worker to die", 20, || !alive(worker));
    let t0 = now_ns();
    signal(pid, Signal::SIGTERM);
    until("the init to exit", 20, || !alive(pid));
    drop(resume);
    until("the master to reap the init", 20, || reaped(pid));
    let t1 = now_ns();
    // The new worker finds the exit at start-up, in the master's record.
    assert_exact_exit(&d, "sw", &id, pid, (t0, t1));
}

#[test]
fn shimless_containers_obey_stop_kill_rm_and_policies() {
    let Some(d) = daemon_with_image() else { return };
    let st_id = run_trap(&d, "st", &[]);
    let kl_id = run_trap(&d, "kl", &[]);
    run_trap(&d, "rf", &[]);
    let rp_id = run_trap(&d, "rp", &["--restart", "on-failure:1"]);
    run_trap(&d, "ar", &["--rm"]);
    let t0 = now_ns();
    let pids: Vec<i32> = ["st", "kl", "rf", "rp", "ar"]
        .iter()
        .map(|n| kill_shim(&d, n).0)
        .collect();
    // stop: SIGTERM through the pidfd, the trap's code recorded.
    d.ok(&["stop", "-t", "10", "st"]);
    assert!(!alive(pids[0]), "docker stop left the container running");
    assert_eq!(
        inspect(&d, "{{.State.Status}} {{.State.ExitCode}}", "st"),
        format!("exited {CODE}")
    );
    assert_eq!(die_codes(&d, &st_id, t0), vec![CODE.to_string()]);
    // kill: SIGKILL, recorded as 128 + 9.
    d.ok(&["kill", "kl"]);
    until("kl to be recorded", 20, || {
        inspect(&d, "{{.State.Status}}", "kl") == "exited"
    });
    assert_eq!(inspect(&d, "{{.State.ExitCode}}", "kl"), "137");
    assert_eq!(die_codes(&d, &kl_id, t0), vec!["137".to_string()]);
    // rm -f: killed, recorded, removed.
    d.ok(&["rm", "-f", "rf"]);
    assert!(!alive(pids[2]), "docker rm -f left the container running");
    assert_eq!(inspect(&d, "{{.Id}}", "rf"), "", "rf still exists");
    // on-failure: the exact code is a failure, so it restarts, under a new shim.
    signal(pids[3], Signal::SIGTERM);
    until("rp to restart", 20, || {
        inspect(&d, "{{.State.Status}} {{.RestartCount}}", "rp") == "running 1"
    });
    let rp_pid = pid_of(&d, "rp");
    assert_ne!(rp_pid, pids[3]);
    assert!(
        shims(&d).contains(&ppid(rp_pid)),
        "restarted without a shim"
    );
    assert_eq!(die_codes(&d, &rp_id, t0), vec![CODE.to_string()]);
    // --rm: removed after its exit.
    signal(pids[4], Signal::SIGTERM);
    until("ar to be removed", 20, || {
        inspect(&d, "{{.Id}}", "ar").is_empty()
    });
    // Every master record was consumed.
    let left: Vec<_> = std::fs::read_dir(d.root.join("x/reaped"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "reaped records left: {left:?}");
}
