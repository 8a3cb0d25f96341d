//! Restart policies, rename, pause, top, events and logs options through the docker CLI.

mod common;
use common::{is_root, until, Daemon};

#[test]
fn restart_policies_rename_pause_top() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "bb:test",
        "sh",
        "-c",
        "exit 3",
    ]);
    until("two restarts", || {
        d.ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky",
        ]) == "2 exited"
    });
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}} {{.State.ExitCode}}",
            "flaky"
        ]),
        "on-failure 3"
    );

    d.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        "--restart",
        "always",
        "bb:test",
        "sleep",
        "1000",
    ]);
    d.ok(&["rename", "svc", "svc2"]);
    assert_eq!(d.ok(&["inspect", "-f", "{{.Name}}", "svc2"]), "/svc2");
    d.ok(&["pause", "svc2"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}}",
            "svc2"
        ]),
        "paused true"
    );
    let out = d.docker(&["pause", "svc2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already paused"));
    d.ok(&["unpause", "svc2"]);
    let top = d.ok(&["top", "svc2"]);
    assert!(top.contains("sleep 1000"), "{top}");
    // docker kill marks it manually stopped: no restart.
    d.ok(&["kill", "svc2"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "svc2"]),
        "exited"
    );
    d.ok(&["start", "svc2"]);
    let pid: i32 = d
        .ok(&["inspect", "-f", "{{.State.Pid}}", "svc2"])
        .parse()
        .expect("pid");
    // An exit the user did not ask for is restarted by `always`.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill init");
    until("restart after crash", || {
        let s = d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.RestartCount}} {{.State.Pid}}",
            "svc2",
        ]);
        s.starts_with("running 1 ") && !s.ends_with(&format!(" {pid}"))
    });
}

#[test]
fn events_and_log_options() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let t0 = chrono::Utc::now().timestamp();
    let out = d.docker(&[
        "run",
        "--name",
        "ev",
        "bb:test",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let t1 = chrono::Utc::now().timestamp() + 1;
    let ev = d.ok(&[
        "events",
        "--since",
        &t0.to_string(),
        "--until",
        &t1.to_string(),
        "--filter",
        "container=ev",
        "--format",
        "{{.Type}} {{.Action}} {{index .Actor.Attributes \"exitCode\"}}",
    ]);
    let actions: Vec<&str> = ev.lines().collect();
    assert!(actions.contains(&"container create "), "{ev}");
    assert!(actions.contains(&"container start "), "{ev}");
    assert!(actions.contains(&"container die 2"), "{ev}");
    assert_eq!(d.ok(&["logs", "--tail", "2", "ev"]), "line4\nline5");
    let ts = d.ok(&["logs", "-t", "--tail", "1", "ev"]);
    assert!(
        ts.ends_with(" line5") && ts.len() == "2026-11-23T09:19:38.013165532Z line5".len(),
        "{ts}"
    );
    assert_eq!(d.ok(&["logs", "--until", "1", "ev"]), "");
    d.ok(&["rm", "ev"]);
    let ev = d.ok(&[
        "events",
        "--since",
        &t0.to_string(),
        "--until",
        &(chrono::Utc::now().timestamp() + 1).to_string(),
        "--filter",
        "event=destroy",
    ]);
    assert!(ev.contains("destroy"), "{ev}");
}
