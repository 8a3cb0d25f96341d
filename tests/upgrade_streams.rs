//! Streams in flight continue across live upgrades (issue 3 point 5): `logs -f` on a
//! container printing ~1,000 lines a second (no gap, no duplicate), `attach` and `exec -it`
//! sessions on a pty (input echoed, resize works after the upgrade), `wait` (real exit
//! code) and a long `docker load` that the old generation finishes.

mod common;

use common::pty::Pty;
use common::{daemon_with_image, Daemon};
use std::process::{Child, Command, Stdio};

fn bg(d: &Daemon, args: &[&str]) -> Child {
    d.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker")
}

fn lines_of(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn logs_follow_wait_attach_and_exec_continue_across_upgrades() {
    let Some(d) = daemon_with_image() else { return };
    // ~1,000 lines a second for ~6 s, then exit 3.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "fast",
        "bb:test",
        "sh",
        "-c",
        "i=0; while [ $i -lt 6000 ]; do echo $i; i=$((i+1)); usleep 1000; done; exit 3",
    ]);
    let logs_path = d.path("follow.out");
    let logs = d
        .cmd(&["logs", "-f", "fast"])
        .stdout(std::fs::File::create(&logs_path).expect("follow file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f");
    let wait = bg(&d, &["wait", "fast"]);

    // An attach session and an exec -it session, both on a pty.
    d.ok(&["run", "-dit", "--name", "tt", "bb:test", "sh"]);
    let mut attach = Pty::spawn(&d.cmd(&["attach", "tt"]), 24, 80);
    attach.send(b"echo at-$((40+2))\r");
    attach.expect("at-42");
    let script = "while read l; do [ \"$l\" = size ] && echo sz:$(stty size) || echo ex-$l; done";
    let mut exec = Pty::spawn(&d.cmd(&["exec", "-it", "tt", "sh", "-c", script]), 30, 90);
    exec.send(b"one\r");
    exec.expect("ex-one");

    for round in 0..3 {
        let before = lines_of(&logs_path);
        common::until("log lines to flow", || lines_of(&logs_path) > before + 300);
        d.upgrade_ok(&["--probation-ms", "100"]);
        attach.send(format!("echo at-{round}-$((1+1))\r").as_bytes());
        attach.expect(&format!("at-{round}-2"));
        exec.send(format!("r{round}\r").as_bytes());
        exec.expect(&format!("ex-r{round}"));
    }
    // Resize after the upgrades reaches the exec's tty.
    exec.resize(41, 123);
    common::until("the exec's tty to be resized", || {
        exec.send(b"size\r");
        std::thread::sleep(std::time::Duration::from_millis(100));
        exec.output().contains("sz:41 123")
    });

    let w = wait.wait_with_output().expect("docker wait");
    assert_eq!(String::from_utf8_lossy(&w.stdout).trim(), "3");
    let mut logs = logs;
    assert!(logs.wait().expect("logs -f").success());
    let text = std::fs::read_to_string(&logs_path).expect("follow output");
    let got: Vec<&str> = text.lines().collect();
    let want: Vec<String> = (0..6000).map(|i| i.to_string()).collect();
    if got != want {
        let first_bad = got
            .iter()
            .zip(want.iter())
            .position(|(a, b)| *a != b.as_str())
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "logs -f lost or repeated lines: {} lines, first difference at {first_bad}: {:?}",
            got.len(),
            &got[first_bad.saturating_sub(2)..(first_bad + 3).min(got.len())]
        );
    }
    attach.send(b"exit 9\r");
    assert_eq!(attach.wait().code(), Some(9), "{}", attach.output());
    let _ = exec.wait();
}

#[test]
fn a_long_load_is_finished_by_the_old_generation() {
    let Some(d) = daemon_with_image() else { return };
    // A ~64 MiB image to load: a layer of random data.
    let dir = d.path("big");
    std::fs::create_dir_all(dir.join("rootfs/data")).expect("dir");
    let mut f = std::fs::File::create(dir.join("rootfs/data/blob")).expect("blob");
    let mut rng = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::copy(&mut std::io::Read::take(&mut rng, 64 << 20), &mut f).expect("fill blob");
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
    d.ok(&["import", tar.to_str().unwrap_or_default(), "big:one"]);
    let saved = dir.join("saved.tar");
    d.ok(&["save", "-o", saved.to_str().unwrap_or_default(), "big:one"]);
    d.ok(&["rmi", "big:one"]);

    let load = bg(&d, &["load", "-i", saved.to_str().unwrap_or_default()]);
    d.upgrade_ok(&["--probation-ms", "100"]);
    let out = load.wait_with_output().expect("docker load");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::tail(&d.log(), 40)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Loaded image: big:one"));
    assert_eq!(
        d.ok(&["image", "ls", "-q", "big:one"]).lines().count(),
        1,
        "the loaded image is known to the new generation"
    );
}

#[test]
fn an_upload_after_the_store_was_handed_over_is_carried_over_whole() {
    let Some(d) = daemon_with_image() else { return };
    // An image archive of ~1 MiB or more: too big to re-encode, it travels as a file.
    let saved = d.path("carried.tar");
    d.ok(&["tag", "bb:test", "bb:carried"]);
    d.ok(&[
        "save",
        "-o",
        saved.to_str().unwrap_or_default(),
        "bb:carried",
    ]);
    d.ok(&["rmi", "bb:carried"]);
    assert!(std::fs::metadata(&saved).map(|m| m.len()).unwrap_or(0) > 200 << 10);
    // The new generation stalls 3 s before it opens the store: the old one has released it
    // and answers reads only, so the load must be handed over.
    let upgrade = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args([
            "upgrade",
            "-H",
            &d.host(),
            "--json",
            "--fault",
            "takeover:delay",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berthd upgrade");
    common::until("the old generation to release the store", || {
        d.log().contains("store released to the next generation")
    });
    let out = d.ok(&["load", "-i", saved.to_str().unwrap_or_default()]);
    assert!(out.contains("Loaded image: bb:carried"), "{out}");
    let up = upgrade.wait_with_output().expect("berthd upgrade");
    assert!(
        up.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&up.stderr),
        common::tail(&d.log(), 40)
    );
    assert!(
        d.log()
            .contains("answering a request handed over with its body"),
        "the load was not carried over whole:\n{}",
        common::tail(&d.log(), 40)
    );
    assert_eq!(
        d.ok(&["image", "ls", "-q", "bb:carried"]).lines().count(),
        1
    );
}

#[test]
fn an_events_stream_continues_across_upgrades_with_no_loss_or_repeat() {
    let Some(d) = daemon_with_image() else { return };
    let out_path = d.path("events.out");
    // `--since` a moment ago: the stream replays what happened before the CLI connected.
    let since = (chrono_now_secs() - 1).to_string();
    let mut events = d
        .cmd(&[
            "events",
            "--since",
            &since,
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--format",
            "{{.Actor.Attributes.name}}",
        ])
        .stdout(std::fs::File::create(&out_path).expect("events file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("docker events");
    let seen = || std::fs::read_to_string(&out_path).unwrap_or_default();
    // The stream is established once a first event arrives.
    d.ok(&["create", "--name", "ev-first", "bb:test", "true"]);
    common::until("the events stream", || seen().contains("ev-first"));
    let mut want = vec!["ev-first".to_string()];
    for round in 0..3 {
        for i in 0..3 {
            let name = format!("ev-{round}-{i}");
            d.ok(&["create", "--name", &name, "bb:test", "true"]);
            want.push(name);
        }
        d.upgrade_ok(&["--probation-ms", "100"]);
    }
    d.ok(&["create", "--name", "ev-last", "bb:test", "true"]);
    want.push("ev-last".into());
    common::until("the last event", || seen().contains("ev-last"));
    let _ = events.kill();
    let _ = events.wait();
    let got: Vec<String> = seen().lines().map(str::to_string).collect();
    assert_eq!(got, want, "events lost, repeated or out of order");
}

fn chrono_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
