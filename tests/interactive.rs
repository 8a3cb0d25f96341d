//! Interactive flags through the real docker CLI, on a real terminal where the CLI needs one:
//! `run -t`/`-it`/`-i`, `attach` with detach keys and exit codes, `create` + `start -a`,
//! `wait`, and `exec -i`/`-t`/`-it`/`-d`/`-e`/`-w`/`-u`.

mod common;
use common::pty::Pty;
use common::{daemon_with_image, until, Daemon};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::Duration;

fn state(d: &Daemon, name: &str) -> String {
    d.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        name,
    ])
}

/// Deterministic text of about `n` bytes (lines of varying content).
fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0u64;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(out, "{i:08} {x:016x} {}", "=".repeat((x % 50) as usize)).expect("format");
        i += 1;
    }
    out
}

#[test]
fn run_tty_and_stdin() {
    let Some(d) = daemon_with_image() else { return };
    // -t alone: the process has a tty of the CLI's size from its first instruction.
    let mut p = Pty::spawn(
        &d.cmd(&["run", "--rm", "-t", "bb:test", "sh", "-c", "tty; stty size"]),
        37,
        111,
    );
    assert!(p.wait().success(), "{}", p.output());
    let out = p.output();
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("37 111"), "{out:?}");

    // -it: typed input reaches the process; the CLI exits with the container's code.
    let mut p = Pty::spawn(
        &d.cmd(&[
            "run",
            "--rm",
            "-it",
            "bb:test",
            "sh",
            "-c",
            "stty size; read line; echo got:$line; exit 4",
        ]),
        29,
        97,
    );
    p.expect("29 97");
    p.send(b"hello\r");
    p.expect("got:hello");
    assert_eq!(p.wait().code(), Some(4), "{}", p.output());

    // -i: stdin goes to cat and its end ends cat; 4 MiB arrive intact even though the
    // client sends faster than it reads.
    let data = text(4 << 20);
    for slow_reader in [false, true] {
        let mut child = d
            .cmd(&["run", "--rm", "-i", "bb:test", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker run -i");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&input).is_ok());
        let mut stdout = child.stdout.take().expect("stdout");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = stdout.read(&mut buf).expect("read output");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if slow_reader {
                // A consumer slower than the producer (throttling, not waiting).
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(writer.join().expect("writer"), "stdin write failed");
        let out = child.wait_with_output().expect("wait docker run -i");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(got.len(), data.len(), "slow_reader={slow_reader}");
        assert!(got == data, "output differs from input");
    }

    // A burst far larger than any buffer still reaches a client that keeps up.
    let out = d.docker(&[
        "run",
        "--rm",
        "bb:test",
        "head",
        "-c",
        "30000000",
        "/dev/zero",
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 30_000_000);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

#[test]
fn attach_detach_keys_and_exit_code() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-dit", "--name", "at", "bb:test", "sh"]);

    // ctrl-p ctrl-q detaches: the CLI exits like docker's ("read escape sequence", 1) and
    // the container keeps running.
    let mut p = Pty::spawn(&d.cmd(&["attach", "at"]), 30, 100);
    p.send(b"echo one-$((1+1))\r");
    p.expect("one-2");
    p.send(b"\x10\x11");
    assert_eq!(p.wait().code(), Some(1), "{}", p.output());
    assert!(p.output().contains("read escape sequence"));
    assert_eq!(state(&d, "at"), "running 0");

    // --detach-keys ctrl-x,x
    let mut p = Pty::spawn(
        &d.cmd(&["attach", "--detach-keys", "ctrl-x,x", "at"]),
        30,
        100,
    );
    p.send(b"echo two-$((2+1))\r");
    p.expect("two-3");
    p.send(b"\x18x");
    assert_eq!(p.wait().code(), Some(1), "{}", p.output());
    assert_eq!(state(&d, "at"), "running 0");

    // Attached when the container exits: the CLI exits with the container's code; the tty
    // has the attaching CLI's size.
    let mut p = Pty::spawn(&d.cmd(&["attach", "at"]), 33, 88);
    p.send(b"echo three-$((3+1))\r");
    p.expect("three-4");
    p.send(b"stty size; exit 9\r");
    assert_eq!(p.wait().code(), Some(9), "{}", p.output());
    assert!(p.output().contains("33 88"), "{}", p.output());
    assert_eq!(state(&d, "at"), "exited 9");

    // run -it detaches with ctrl-p ctrl-q too, and the container keeps running.
    let mut p = Pty::spawn(
        &d.cmd(&["run", "-it", "--name", "rit", "bb:test", "sh"]),
        30,
        100,
    );
    p.send(b"echo four-$((4+1))\r");
    p.expect("four-5");
    p.send(b"\x10\x11");
    assert_eq!(p.wait().code(), Some(0), "{}", p.output());
    assert_eq!(state(&d, "rit"), "running 0");

    // Without a tty: attach streams the output and exits with the container's code.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "nt",
        "bb:test",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do echo tick; sleep 0.05; done; echo bye; exit 3",
    ]);
    let mut child = d
        .cmd(&["attach", "nt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker attach");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Attached once live output arrives.
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("tick"));
    // Detached: the container exits as soon as the file exists, and the kernel SIGKILLs
    // whatever is left in its PID namespace, so `touch` itself may end with 137 (as with
    // dockerd); only its effect matters here.
    d.ok(&["exec", "-d", "nt", "touch", "/tmp/go"]);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest.last().map(String::as_str), Some("bye"), "{rest:?}");
    assert_eq!(child.wait().expect("wait attach").code(), Some(3));
}

#[test]
fn create_start_attach_and_wait() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "create",
        "--name",
        "cs",
        "bb:test",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 6",
    ]);
    let out = d.docker(&["start", "-a", "cs"]);
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // wait on an exited container answers at once.
    assert_eq!(d.ok(&["wait", "cs"]), "6");

    // start -ai: stdin reaches a created -i container and its end ends cat.
    d.ok(&[
        "create",
        "-i",
        "--name",
        "ci",
        "bb:test",
        "sh",
        "-c",
        "cat; echo done",
    ]);
    let mut child = d
        .cmd(&["start", "-ai", "ci"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker start -ai");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"piped\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait start -ai");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\ndone\n");

    // wait blocks until the exit and prints the code.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "wt",
        "bb:test",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 42",
    ]);
    let waiter = d
        .cmd(&["wait", "wt"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker wait");
    // Detached: the container exits as soon as the file exists, and the kernel SIGKILLs
    // whatever is left in its PID namespace, so `touch` itself may end with 137 (as with
    // dockerd); only its effect matters here.
    d.ok(&["exec", "-d", "wt", "touch", "/tmp/go"]);
    let out = waiter.wait_with_output().expect("wait output");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn exec_flags() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "ex", "bb:test", "sleep", "1000"]);

    // exec -i: stdin to cat, its end ends cat.
    let mut child = d
        .cmd(&["exec", "-i", "ex", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker exec -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"abc\ndef\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait exec -i");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\ndef\n");

    // exec -t: a tty.
    let mut p = Pty::spawn(&d.cmd(&["exec", "-t", "ex", "tty"]), 30, 100);
    assert!(p.wait().success(), "{}", p.output());
    assert!(p.output().contains("/dev/pts/"), "{}", p.output());

    // exec -it: the CLI resizes right after the start (API 1.41 sends no size with an
    // exec), so the process waits for a size; then typed input reaches it.
    let script = "tty; until [ -n \"$(stty size 2>/dev/null)\" ]; do sleep 0.02; done; \
                  echo size:$(stty size); read x; echo got:$x; exit 5";
    let mut p = Pty::spawn(&d.cmd(&["exec", "-it", "ex", "sh", "-c", script]), 31, 93);
    p.expect("size:31 93");
    p.send(b"hey\r");
    p.expect("got:hey");
    assert_eq!(p.wait().code(), Some(5), "{}", p.output());
    assert!(p.output().contains("/dev/pts/"));

    // exec -d runs in the background.
    assert_eq!(
        d.ok(&["exec", "-d", "ex", "sh", "-c", "echo bg > /tmp/bg"]),
        ""
    );
    until("the detached exec's file", || {
        d.docker(&["exec", "ex", "cat", "/tmp/bg"]).stdout == b"bg\n"
    });

    // -e, -w, -u
    assert_eq!(
        d.ok(&[
            "exec",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "1000",
            "ex",
            "sh",
            "-c",
            "echo $FOO $(pwd) $(id -u) $(id -g)",
        ]),
        "bar /tmp 1000 1000"
    );
    assert_eq!(
        d.ok(&[
            "exec",
            "-u",
            "user:wheel",
            "ex",
            "sh",
            "-c",
            "echo $(id -u) $(id -g)"
        ]),
        "1000 10"
    );
    // An unknown user: dockerd's message in the stream and 126.
    let out = d.docker(&["exec", "-u", "nosuch", "ex", "true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("unable to find user nosuch: no matching entries in passwd file"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Exit codes: the process's own, 126 (not executable), 127 (not found).
    assert_eq!(
        d.docker(&["exec", "ex", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    // As with dockerd, the runtime's message comes inside the stream (the CLI's stdout).
    let both = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = d.docker(&["exec", "ex", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(both(&out).contains("permission denied"), "{}", both(&out));
    let out = d.docker(&["exec", "ex", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        both(&out).contains("executable file not found"),
        "{}",
        both(&out)
    );
}
