//! Container lifecycle through the real docker CLI against a real berthd (root).

mod common;
use common::daemon_with_image;
use std::io::Write;
use std::process::Stdio;

#[test]
fn run_foreground_returns_output_and_exit_codes() {
    let Some(d) = daemon_with_image() else { return };
    assert_eq!(d.ok(&["run", "--rm", "bb:test", "echo", "hello"]), "hello");
    let out = d.docker(&[
        "run",
        "--rm",
        "bb:test",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = d.docker(&["run", "--rm", "bb:test", "nosuchcmd"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // --rm removed everything.
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

#[test]
fn run_detached_then_inspect_logs_stop_rm() {
    let Some(d) = daemon_with_image() else { return };
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--label",
        "tier=front",
        "-e",
        "FOO=bar",
        "bb:test",
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 7' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(id.len(), 64);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.Name}} {{.Config.Labels.tier}}",
            "web"
        ]),
        "true /web front"
    );
    let env = d.ok(&["inspect", "-f", "{{json .Config.Env}}", "web"]);
    assert!(env.contains("FOO=bar"), "{env}");
    assert!(d
        .ok(&[
            "ps",
            "--filter",
            "label=tier=front",
            "--format",
            "{{.Names}} {{.Status}}"
        ])
        .starts_with("web Up"));
    // Logs arrive (wait on the log, not a sleep).
    let mut seen = false;
    for _ in 0..200 {
        if d.ok(&["logs", "web"]).contains("started") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(seen, "log line never arrived");
    d.ok(&["stop", "web"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "web"
        ]),
        "exited 7"
    );
    assert!(d.ok(&["logs", "web"]).contains("bye"));
    assert!(d
        .ok(&[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Status}}"
        ])
        .starts_with("Exited (7)"));
    let out = d.docker(&["rm", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such container: nope"));
    d.ok(&["rm", "web"]);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

#[test]
fn exec_and_stdin_and_errors() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "box", "bb:test", "sleep", "1000"]);
    let out = d.docker(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "box",
        "sh",
        "-c",
        "echo $X $(pwd); exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 /tmp\n");
    assert_eq!(d.ok(&["exec", "-u", "nobody", "box", "id", "-u"]), "65534");
    let mut child = d
        .cmd(&["run", "-i", "--rm", "bb:test", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn docker run -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello-stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-stdin\n");
    // Conflicts with dockerd's wording.
    let out = d.docker(&["rm", "box"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("You cannot remove a running container"));
    let out = d.docker(&["run", "--name", "box", "bb:test", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already in use by container"));
    d.ok(&["kill", "box"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "box"]),
        "137"
    );
    let out = d.docker(&["kill", "box"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not running"));
    d.ok(&["rm", "box"]);
}

#[test]
fn containers_survive_a_daemon_kill() {
    let Some(mut d) = daemon_with_image() else {
        return;
    };
    d.ok(&["run", "-d", "--name", "long", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "bb:test",
        "sh",
        "-c",
        "read x < /dev/stdin; exit 42",
    ]);
    let pid = d.ok(&["inspect", "-f", "{{.State.Pid}}", "long"]);
    d.kill9();
    // While no daemon runs, `short` exits on its own (stdin is /dev/null: read hits EOF).
    d.spawn();
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Pid}} {{.State.Running}}", "long"]),
        format!("{pid} true")
    );
    let mut st = String::new();
    for _ in 0..200 {
        st = d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "short",
        ]);
        if st.starts_with("exited") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(st, "exited 42");
    assert_ne!(
        d.ok(&["inspect", "-f", "{{.State.FinishedAt}}", "short"]),
        "0001-01-01T00:00:00Z"
    );
    d.ok(&["rm", "-f", "long", "short"]);
}
