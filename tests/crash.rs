//! The daemon may die at any time (kill -9): containers keep running with the same pid,
//! exits while it is down keep their real code and time, logs stay exact, handed-over
//! clients finish, restart policies and auto-removal apply afterwards, a kill during
//! start-up loses nothing, and a killed shim does not take its container down.

mod common;
mod crashkit;
use common::{is_root, Daemon};
use crashkit::*;
use nix::sys::signal::Signal;
use std::time::Duration;

/// How long the daemon stays dead while the writer keeps printing.
const DOWN: Duration = Duration::from_millis(1500);

#[test]
fn running_containers_survive_a_crash_with_exact_logs() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    run_d(&d, &["--name", "wr", "bb:test", "sh", "-c", WRITER]);
    run_d(&d, &["--name", "sl", "bb:test", "sleep", "1000"]);
    let (wpid, spid) = (pid_of(&d, "wr"), pid_of(&d, "sl"));
    until("the writer to print", 20, || {
        !d.ok(&["logs", "--tail", "1", "wr"]).is_empty()
    });

    let t_kill = now_ns();
    d.kill9();
    std::thread::sleep(DOWN);
    let t_up = now_ns();
    d.spawn();

    for (name, pid) in [("wr", wpid), ("sl", spid)] {
        assert_eq!(
            inspect(&d, "{{.State.Status}} {{.State.Pid}}", name),
            format!("running {pid}"),
            "{name} after the restart"
        );
        assert!(alive(pid), "{name}'s process {pid} is gone");
    }
    let ps = d.ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(ps.lines().count(), 2, "docker ps after the restart: {ps}");

    let f = finish_writer(&d, "wr", (t_kill, t_up));
    eprintln!("writer across a {DOWN:?} crash: {f:?}");
    assert!(
        f.lines_down > 100,
        "the shim logged too little while down: {f:?}"
    );
    assert!(
        f.max_gap_down_ms < 100.0,
        "the log has a gap while the daemon was down: {f:?}"
    );
    assert!(
        f.max_write_us < 100_000,
        "the writer blocked on stdout: {f:?}"
    );
    assert_eq!(inspect(&d, "{{.State.Status}}", "sl"), "running");
}

#[test]
fn exit_while_down_keeps_its_real_code_and_time() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let script = trap_script(7, &["before"], &["after"]);
    run_d(&d, &["--name", "e7", "bb:test", "sh", "-c", &script]);
    let id = id_of(&d, "e7");
    let pid = pid_of(&d, "e7");
    until("e7 to print", 20, || d.ok(&["logs", "e7"]) == "before");

    d.kill9();
    let t_term = now_ns();
    term_and_wait_gone(pid);
    let exit_file = d.root.join("d/containers").join(&id).join("exit.json");
    until("the exit record", 20, || exit_file.exists());
    std::thread::sleep(Duration::from_millis(300));
    let t_up = now_ns();
    d.spawn();

    assert_eq!(
        inspect(
            &d,
            "{{.State.Status}} {{.State.ExitCode}} {{.State.Pid}}",
            "e7"
        ),
        "exited 7 0"
    );
    let finished = parse_ts(&inspect(&d, "{{.State.FinishedAt}}", "e7"));
    assert!(
        finished > t_term && finished < t_up,
        "FinishedAt {finished} is not the exit time (TERM at {t_term}, restart at {t_up})"
    );
    assert_eq!(d.ok(&["logs", "e7"]), "before\nafter");
    assert_eq!(d.ok(&["wait", "e7"]), "7");
    // The exit was acknowledged: the shim is gone.
    until("the shim to exit", 20, || shims(&d).is_empty());
    let ps = d.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("e7 Exited (7)"), "{ps}");
}

#[test]
fn handed_over_clients_finish_without_the_daemon() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let c_script = trap_script(
        5,
        &["line1", "line2", "line3"],
        &["after1", "after2", "after3"],
    );
    run_d(&d, &["--name", "cc", "bb:test", "sh", "-c", &c_script]);
    until("c to print", 20, || {
        d.ok(&["logs", "cc"]).ends_with("line3")
    });
    let c_pid = pid_of(&d, "cc");
    let c_shim = ppid(c_pid);
    let base = socket_fds(c_shim);
    let mut wait = Bg::start(&d, &["wait", "cc"]);
    let mut logs = Bg::start(&d, &["logs", "-f", "cc"]);
    let mut attach = Bg::start(&d, &["attach", "cc"]);
    // wait, logs -f, attach and attach's own wait: four connections now held by the shim.
    until("the shim to hold the clients", 20, || {
        socket_fds(c_shim) >= base + 4
    });
    let r_script = trap_script(6, &["hello"], &["bye"]);
    let mut run = Bg::start(
        &d,
        &["run", "--name", "rn", "bb:test", "sh", "-c", &r_script],
    );
    let rr_script = trap_script(4, &[], &["gone"]);
    let mut run_rm = Bg::start(
        &d,
        &[
            "run", "--rm", "--name", "rr", "bb:test", "sh", "-c", &rr_script,
        ],
    );
    until("r and rr to run", 20, || {
        inspect(&d, "{{.State.Status}}", "rn") == "running"
            && inspect(&d, "{{.State.Status}}", "rr") == "running"
    });
    let (r_pid, rr_pid) = (pid_of(&d, "rn"), pid_of(&d, "rr"));
    until("r to print", 20, || d.ok(&["logs", "rn"]) == "hello");

    d.kill9();
    for pid in [c_pid, r_pid, rr_pid] {
        term_and_wait_gone(pid);
    }
    // All of these end while no daemon runs.
    let (st, out) = wait.finish(20);
    assert_eq!((st.code(), out.trim()), (Some(0), "5"), "docker wait");
    let (st, out) = logs.finish(20);
    assert_eq!(st.code(), Some(0), "docker logs -f: {out}");
    assert_eq!(
        out, "line1\nline2\nline3\nafter1\nafter2\nafter3\n",
        "docker logs -f"
    );
    let (st, out) = attach.finish(20);
    assert_eq!(
        (st.code(), out.as_str()),
        (Some(5), "after1\nafter2\nafter3\n"),
        "docker attach"
    );
    let (st, out) = run.finish(20);
    assert_eq!(
        (st.code(), out.as_str()),
        (Some(6), "hello\nbye\n"),
        "docker run"
    );
    // `run --rm` waits for the removal, which needs the daemon.
    assert!(run_rm.running(), "docker run --rm ended before the removal");

    d.spawn();
    let (st, out) = run_rm.finish(20);
    assert_eq!(
        (st.code(), out.as_str()),
        (Some(4), "gone\n"),
        "docker run --rm"
    );
    assert_eq!(d.ok(&["ps", "-aq", "--filter", "name=rr"]), "");
    assert_eq!(inspect(&d, "{{.State.ExitCode}}", "rn"), "6");
    assert_eq!(inspect(&d, "{{.State.ExitCode}}", "cc"), "5");
}

#[test]
fn restart_policies_apply_to_exits_while_down() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let ok = trap_script(0, &[], &[]);
    let fail = trap_script(3, &[], &[]);
    run_d(
        &d,
        &[
            "--name",
            "al",
            "--restart",
            "always",
            "bb:test",
            "sh",
            "-c",
            &ok,
        ],
    );
    let of_args = ["--name", "of", "--restart", "on-failure:1", "bb:test"];
    run_d(&d, &[&of_args[..], &["sh", "-c", &fail]].concat());
    run_d(&d, &["--name", "no", "bb:test", "sh", "-c", &fail]);
    run_d(&d, &["--rm", "--name", "rm", "bb:test", "sh", "-c", &fail]);
    run_d(
        &d,
        &[
            "--name",
            "st",
            "--restart",
            "always",
            "bb:test",
            "sh",
            "-c",
            &trap_script(0, &["ready"], &[]),
        ],
    );
    // Its trap set before the stop (SIGTERM to the namespace's init is ignored before).
    until("st to set its trap", 20, || {
        d.ok(&["logs", "st"]) == "ready"
    });
    d.ok(&["stop", "st"]);
    let pids: Vec<i32> = ["al", "of", "no", "rm"]
        .iter()
        .map(|n| pid_of(&d, n))
        .collect();

    d.kill9();
    for pid in &pids {
        term_and_wait_gone(*pid);
    }
    d.spawn();
    let state = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}";
    until("al and of to be restarted", 20, || {
        inspect(&d, state, "al") == "running 1 0" && inspect(&d, state, "of") == "running 1 0"
    });
    assert_ne!(pid_of(&d, "al"), pids[0]);
    assert_eq!(inspect(&d, state, "no"), "exited 0 3");
    until("rm to be removed", 20, || {
        d.ok(&["ps", "-aq", "--filter", "name=^rm$"]).is_empty()
    });
    // A manually stopped container stays stopped: a daemon crash must not be noticed.
    assert_eq!(inspect(&d, state, "st"), "exited 0 0");

    // Second crash: on-failure:1 has used its one restart; always restarts again.
    let (al2, of2) = (pid_of(&d, "al"), pid_of(&d, "of"));
    d.kill9();
    term_and_wait_gone(al2);
    term_and_wait_gone(of2);
    d.spawn();
    until("al to be restarted again", 20, || {
        inspect(&d, state, "al") == "running 2 0"
    });
    until("of to be recorded", 20, || {
        inspect(&d, state, "of") == "exited 1 3"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        inspect(&d, state, "of"),
        "exited 1 3",
        "on-failure:1 ignored its limit"
    );
}

#[test]
fn kill_during_restart_loses_nothing() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    run_d(&d, &["--name", "wr", "bb:test", "sh", "-c", WRITER]);
    run_d(&d, &["--name", "sl", "bb:test", "sleep", "1000"]);
    let e7 = trap_script(7, &[], &[]);
    run_d(&d, &["--name", "e7", "bb:test", "sh", "-c", &e7]);
    let ok = trap_script(0, &[], &[]);
    run_d(
        &d,
        &[
            "--name",
            "al",
            "--restart",
            "always",
            "bb:test",
            "sh",
            "-c",
            &ok,
        ],
    );
    run_d(&d, &["--rm", "--name", "rm", "bb:test", "sh", "-c", &e7]);
    let spid = pid_of(&d, "sl");
    let wpid = pid_of(&d, "wr");
    let dying: Vec<i32> = ["e7", "al", "rm"].iter().map(|n| pid_of(&d, n)).collect();

    let t_kill = now_ns();
    d.kill9();
    let t_exit = now_ns();
    for pid in &dying {
        term_and_wait_gone(*pid);
    }
    // Kill the daemon again and again early in its start-up: while restoring, while
    // re-subscribing, while handling the exits that happened meanwhile.
    for ms in [0u64, 10, 30, 60, 120, 250] {
        d.spawn_unready();
        until("the daemon's socket", 20, || d.sock.exists());
        std::thread::sleep(Duration::from_millis(ms));
        d.kill9();
    }
    let t_up = now_ns();
    d.spawn();

    let state = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}";
    until("al to be restarted once", 20, || {
        inspect(&d, state, "al") == "running 1 0"
    });
    assert_eq!(inspect(&d, state, "e7"), "exited 0 7");
    let finished = parse_ts(&inspect(&d, "{{.State.FinishedAt}}", "e7"));
    assert!(
        finished > t_exit && finished < t_up,
        "e7 FinishedAt {finished}"
    );
    until("rm to be removed", 20, || {
        d.ok(&["ps", "-aq", "--filter", "name=^rm$"]).is_empty()
    });
    assert_eq!(inspect(&d, "{{.State.Pid}}", "sl"), spid.to_string());
    assert_eq!(inspect(&d, "{{.State.Pid}}", "wr"), wpid.to_string());
    // One shim per running container: the acknowledged ones exited, none leaked.
    until("one shim per running container", 20, || {
        shims(&d).len() == 3
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        inspect(&d, state, "al"),
        "running 1 0",
        "policy applied twice"
    );
    let f = finish_writer(&d, "wr", (t_kill, t_up));
    eprintln!("writer across repeated crashes: {f:?}");
    assert!(f.max_write_us < 100_000, "the writer blocked: {f:?}");
}

#[test]
fn killed_shim_does_not_take_the_container_down() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    run_d(&d, &["--name", "sl", "bb:test", "sleep", "1000"]);
    let pid = pid_of(&d, "sl");
    let shim = ppid(pid);
    assert!(
        shims(&d).contains(&shim),
        "the container's parent is not its shim"
    );
    signal(shim, Signal::SIGKILL);
    until("the daemon to notice", 20, || {
        !inspect(&d, "{{.State.Error}}", "sl").is_empty()
    });
    assert!(alive(pid), "the container died with its shim");
    // Still running (it is), and said to be unmonitored.
    let running = format!("running {pid}");
    assert_eq!(
        inspect(&d, "{{.State.Status}} {{.State.Pid}}", "sl"),
        running
    );
    let err = inspect(&d, "{{.State.Error}}", "sl");
    assert!(err.contains("no longer logged"), "{err}");
    // A daemon restart finds it the same way. The killed master took the init's
    // adoption with it: the init's parent is now outside berthd, so its exit status
    // cannot be known any more (tests/shim_kill.rs has the exact exits).
    d.kill9();
    d.spawn();
    assert_eq!(
        inspect(&d, "{{.State.Status}} {{.State.Pid}}", "sl"),
        running
    );
    assert_eq!(inspect(&d, "{{.State.Error}}", "sl"), err);
    // The daemon still controls it (signals through a pidfd) and notices its exit; with
    // no master record, the code is dockerd's for a lost task, and the error says so.
    let mut wait = Bg::start(&d, &["wait", "sl"]);
    let t0 = now_ns();
    d.ok(&["stop", "-t", "1", "sl"]);
    assert!(!alive(pid), "docker stop left the container running");
    let (st, out) = wait.finish(20);
    assert_eq!((st.code(), out.trim()), (Some(0), "255"), "docker wait");
    let st = inspect(
        &d,
        "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}",
        "sl",
    );
    eprintln!("after a killed shim, the container's exit shows: {st}");
    assert!(
        st.starts_with("exited 255 ") && st.contains("exit status unknown"),
        "{st}"
    );
    let finished = parse_ts(&inspect(&d, "{{.State.FinishedAt}}", "sl"));
    assert!(
        finished > t0,
        "FinishedAt {finished} before the stop at {t0}"
    );
    d.ok(&["rm", "sl"]);
}

#[test]
fn kill_between_recording_an_exit_and_its_follow_ups() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let ok = trap_script(0, &[], &[]);
    let fail = trap_script(3, &[], &[]);
    run_d(
        &d,
        &[
            "--name",
            "al",
            "--restart",
            "always",
            "bb:test",
            "sh",
            "-c",
            &ok,
        ],
    );
    run_d(
        &d,
        &[
            "--name",
            "ar",
            "--restart",
            "always",
            "bb:test",
            "sh",
            "-c",
            &ok,
        ],
    );
    run_d(&d, &["--rm", "--name", "rm", "bb:test", "sh", "-c", &fail]);
    run_d(&d, &["--name", "no", "bb:test", "sh", "-c", &fail]);
    let names = ["al", "ar", "rm", "no"];
    let ids: Vec<String> = names.iter().map(|n| id_of(&d, n)).collect();
    let pids: Vec<i32> = names.iter().map(|n| pid_of(&d, n)).collect();
    run_d(
        &d,
        &[
            "--name",
            "ad",
            "--restart",
            "always",
            "bb:test",
            "sleep",
            "1000",
        ],
    );
    let (ad_id, ad_pid) = (id_of(&d, "ad"), pid_of(&d, "ad"));

    d.kill9();
    for pid in &pids {
        term_and_wait_gone(*pid);
    }
    let mut which = vec![(ad_id.as_str(), Midway::RestartNotRecorded)];
    for (k, id) in ids.iter().enumerate() {
        until("the exit record", 20, || {
            d.root
                .join("d/containers")
                .join(id)
                .join("exit.json")
                .exists()
        });
        let midway = if names[k] == "ar" {
            Midway::RestartDecided
        } else {
            Midway::ExitRecorded
        };
        which.push((id.as_str(), midway));
    }
    record_as_if_killed_midway(&d, &which);
    d.spawn();

    let state = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}";
    until("al and ar to be restarted", 20, || {
        inspect(&d, state, "al") == "running 1 0" && inspect(&d, state, "ar").starts_with("running")
    });
    until("rm to be removed", 20, || {
        d.ok(&["ps", "-aq", "--filter", "name=^rm$"]).is_empty()
    });
    assert_eq!(inspect(&d, state, "no"), "exited 0 3");
    // The run started just before the kill is adopted, not started a second time.
    assert_eq!(
        inspect(&d, "{{.State.Status}} {{.State.Pid}}", "ad"),
        format!("running {ad_pid}")
    );
    // The old shims were acknowledged and exited; the new ones still answer.
    until("one shim per running container", 20, || {
        shims(&d).len() == 3
    });
    for name in ["al", "ar", "ad"] {
        d.ok(&["stop", "-t", "5", name]);
    }
    until("every shim to exit after the stops", 20, || {
        shims(&d).is_empty()
    });
}
