//! `docker events` against a real berthd: dockerd 20.10's Type/Action/Actor attributes for
//! container, exec and image actions, `--since`/`--until` replay, `--filter`, a live stream
//! read while actions happen, a future `--until` that ends by itself, an OOM kill, and a
//! replay of events from before a `kill -9` of the daemon.

mod common;
use common::{is_root, Daemon};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The current time as the CLI sends absolute `--since`/`--until` values.
fn now_arg() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// `docker events --format '{{json .}}'` with `args`, parsed.
fn events(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--format", "{{json .}}"];
    all.extend_from_slice(args);
    d.ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l:?}: {e}")))
        .collect()
}

/// Replays everything since `since` up to now with extra filters.
fn replay(d: &Daemon, since: &str, filters: &[&str]) -> Vec<Value> {
    let until = now_arg();
    let mut args = vec!["--since", since, "--until", &until];
    for f in filters {
        args.push("--filter");
        args.push(f);
    }
    events(d, &args)
}

fn action(ev: &Value) -> &str {
    ev["Action"].as_str().unwrap_or_default()
}

fn attrs(ev: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(ev["Actor"]["Attributes"].clone()).expect("attributes map")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Polls the replay until an event passing `filters` shows up (the exec's exit is reported
/// by the shim asynchronously).
fn wait_for(d: &Daemon, since: &str, filters: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(ev) = replay(d, since, filters).pop() {
            return ev;
        }
        assert!(Instant::now() < deadline, "no event for {filters:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `docker events` child killed on drop.
struct Stream(Child);

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn container_and_exec_events_carry_dockerd_attributes() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let t0 = now_arg();
    let id = d.ok(&[
        "run", "-d", "--name", "ev1", "-l", "foo=bar", "bb:test", "sleep", "100",
    ]);
    assert_eq!(d.ok(&["exec", "ev1", "sh", "-c", "echo hi"]), "hi");
    wait_for(&d, &t0, &["event=exec_die"]);
    d.ok(&["top", "ev1"]);
    d.ok(&["pause", "ev1"]);
    d.ok(&["unpause", "ev1"]);
    d.ok(&["rename", "ev1", "ev2"]);
    d.ok(&["kill", "-s", "USR1", "ev2"]);
    // sleep as PID 1 ignores TERM: stop sends 15, then 9 after the timeout.
    d.ok(&["stop", "-t", "1", "ev2"]);
    d.ok(&["rm", "ev2"]);
    let evs = replay(&d, &t0, &[&format!("container={id}")]);
    let got: Vec<(&str, BTreeMap<String, String>)> =
        evs.iter().map(|e| (action(e), attrs(e))).collect();
    let base1 = [("foo", "bar"), ("image", "bb:test"), ("name", "ev1")];
    let base2 = [("foo", "bar"), ("image", "bb:test"), ("name", "ev2")];
    let exec_id = got
        .iter()
        .find_map(|(_, a)| a.get("execID").cloned())
        .expect("an exec event");
    let with = |base: &[(&str, &str)], extra: &[(&str, &str)]| {
        let mut m = map(base);
        m.extend(map(extra));
        m
    };
    let want = vec![
        ("create", map(&base1)),
        ("start", map(&base1)),
        (
            "exec_create: sh -c echo hi",
            with(&base1, &[("execID", &exec_id)]),
        ),
        (
            "exec_start: sh -c echo hi",
            with(&base1, &[("execID", &exec_id)]),
        ),
        (
            "exec_die",
            with(&base1, &[("execID", &exec_id), ("exitCode", "0")]),
        ),
        ("top", map(&base1)),
        ("pause", map(&base1)),
        ("unpause", map(&base1)),
        ("rename", with(&base2, &[("oldName", "/ev1")])),
        ("kill", with(&base2, &[("signal", "10")])),
        ("kill", with(&base2, &[("signal", "15")])),
        ("kill", with(&base2, &[("signal", "9")])),
        ("die", with(&base2, &[("exitCode", "137")])),
        ("stop", map(&base2)),
        ("destroy", map(&base2)),
    ];
    let want: Vec<(&str, BTreeMap<String, String>)> = want;
    assert_eq!(got, want);
    for e in &evs {
        assert_eq!(e["Type"], "container");
        assert_eq!(e["Actor"]["ID"], id.as_str());
        assert_eq!(e["scope"], "local");
        let nano = e["timeNano"].as_i64().expect("timeNano");
        assert_eq!(e["time"].as_i64(), Some(nano / 1_000_000_000));
    }
}

#[test]
fn replay_filters_select_like_dockerd() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    let t0 = now_arg();
    d.import_busybox("bb:test");
    let out = d.docker(&[
        "run",
        "--rm",
        "--name",
        "fg",
        "-l",
        "team=blue",
        "bb:test",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    d.ok(&["run", "-d", "--name", "other", "bb:test", "sleep", "100"]);
    d.ok(&["exec", "other", "true"]);
    wait_for(&d, &t0, &["event=exec_die"]);

    let actions = |filters: &[&str]| -> Vec<String> {
        replay(&d, &t0, filters)
            .iter()
            .map(|e| format!("{} {}", e["Type"].as_str().unwrap_or(""), action(e)))
            .collect()
    };
    // The attached run: create, attach, start, die, destroy (as in the dockerd capture).
    assert_eq!(
        actions(&["container=fg"]),
        [
            "container create",
            "container attach",
            "container start",
            "container die",
            "container destroy"
        ]
    );
    let die = replay(&d, &t0, &["container=fg", "event=die"]);
    assert_eq!(die.len(), 1);
    assert_eq!(
        attrs(&die[0]),
        map(&[
            ("exitCode", "3"),
            ("image", "bb:test"),
            ("name", "fg"),
            ("team", "blue")
        ])
    );
    assert_eq!(die[0]["from"], "bb:test");
    assert_eq!(die[0]["status"], "die");
    assert_eq!(actions(&["type=image"]), ["image tag", "image import"]);
    assert_eq!(
        actions(&["event=die"]),
        ["container die"],
        "other is still running"
    );
    assert_eq!(actions(&["label=team=blue"]).len(), 5);
    assert_eq!(actions(&["label=team"]).len(), 5);
    assert!(actions(&["label=team=red"]).is_empty());
    // image=bb matches container events of bb:test and image events named bb:test.
    let by_image = actions(&["image=bb"]);
    assert_eq!(by_image.len(), 1 + 5 + 5, "{by_image:?}");
    assert_eq!(actions(&["image=bb:test"]), by_image);
    assert!(actions(&["image=nosuch"]).is_empty());
    // exec_create/exec_start match by prefix, exec_die exactly.
    assert_eq!(
        actions(&["event=exec_create", "event=exec_die"]),
        ["container exec_create: true ", "container exec_die"]
    );
    // Values of one key are OR-ed, keys are AND-ed.
    assert_eq!(
        actions(&["type=container", "event=start", "event=create"]).len(),
        4
    );
    // A name prefix selects, like dockerd's fuzzy container match.
    assert_eq!(actions(&["container=oth"]).len(), 5);
    let err = d.fails(&["events", "--until", "0", "--filter", "bogus=1"]);
    assert!(err.contains("Invalid filter 'bogus'"), "{err}");
    // A window in the past ends after the replay and holds only what happened in it.
    let evs = events(&d, &["--since", "1", "--until", &t0]);
    assert!(evs.is_empty(), "{evs:?}");
}

#[test]
fn live_stream_and_future_until() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let child = d
        .cmd(&["events", "--format", "{{json .}}"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events");
    let mut stream = Stream(child);
    let (tx, rx) = mpsc::channel::<Value>();
    let out = stream.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // The stream has no "subscribed" signal: tag until a tag event arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    'probe: for n in 0.. {
        d.ok(&["tag", "bb:test", &format!("probe:{n}")]);
        while let Ok(ev) = rx.recv_timeout(Duration::from_millis(200)) {
            if action(&ev) == "tag" {
                break 'probe;
            }
        }
        assert!(Instant::now() < deadline, "the live stream shows nothing");
    }
    let id = d.ok(&["create", "--name", "live", "bb:test", "sh", "-c", "exit 7"]);
    d.ok(&["start", "live"]);
    d.ok(&["wait", "live"]);
    d.ok(&["rm", "live"]);
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("destroy") {
        let ev = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("live events stopped after {seen:?}"));
        if ev["Actor"]["ID"] == id.as_str() {
            if action(&ev) == "die" {
                assert_eq!(attrs(&ev)["exitCode"], "7");
            }
            seen.push(action(&ev).to_string());
        }
    }
    assert_eq!(seen, ["create", "start", "die", "destroy"]);
    drop(stream);

    // A future --until: replays, streams what happens inside the window, then ends.
    let t0 = now_arg();
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3;
    let started = Instant::now();
    let mut child = d
        .cmd(&[
            "events",
            "--format",
            "{{json .}}",
            "--since",
            &t0,
            "--until",
            &until.to_string(),
            "--filter",
            "type=image",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events --until");
    d.ok(&["tag", "bb:test", "window:1"]);
    let mut out = String::new();
    let mut pipe = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let _ = pipe.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait events") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("docker events --until did not end by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert!(started.elapsed() >= Duration::from_secs(1));
    let out = reader.join().expect("reader");
    let names: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| attrs(&e)["name"].clone())
        .collect();
    assert_eq!(names, ["window:1"]);
}

#[test]
fn oom_kill_is_reported_once_and_recorded() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    // -m reaches the cgroup: the running container's memory limit is 8 MiB.
    d.ok(&[
        "run", "-d", "--name", "lim", "-m", "8m", "bb:test", "sleep", "100",
    ]);
    let pid = d.ok(&["inspect", "-f", "{{.State.Pid}}", "lim"]);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    let mem = cg
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            ctl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .expect("memory cgroup (v1)");
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes"))
            .expect("memory.limit_in_bytes");
    assert_eq!(limit.trim(), "8388608");

    let t0 = now_arg();
    let out = d.docker(&[
        "run",
        "--name",
        "oom",
        "-m",
        "8m",
        "bb:test",
        "sh",
        "-c",
        "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(out.status.code(), Some(137));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.OOMKilled}}", "oom"]),
        "true"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "oom"]),
        "137"
    );
    let evs = replay(&d, &t0, &["container=oom"]);
    let acts: Vec<&str> = evs.iter().map(action).collect();
    assert_eq!(acts, ["create", "attach", "start", "oom", "die"]);
    assert_eq!(
        attrs(&evs[3]),
        map(&[("image", "bb:test"), ("name", "oom")])
    );
    assert_eq!(attrs(&evs[4])["exitCode"], "137");
}

#[test]
fn image_and_resize_events() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let tar = d.path("busybox.tar");
    let t0 = now_arg();
    let id = d.ok(&[
        "import",
        "--change",
        "LABEL team=red",
        tar.to_str().expect("utf8"),
        "lab:1",
    ]);
    d.ok(&["tag", "lab:1", "lab:2"]);
    let saved = d.path("lab.tar");
    d.ok(&["save", "-o", saved.to_str().expect("utf8"), "lab:1"]);
    d.ok(&["rmi", "lab:1", "lab:2"]);
    d.ok(&["load", "-i", saved.to_str().expect("utf8")]);
    d.ok(&["rmi", "lab:1"]);
    let evs = replay(&d, &t0, &["type=image"]);
    let got: Vec<(&str, BTreeMap<String, String>)> =
        evs.iter().map(|e| (action(e), attrs(e))).collect();
    let label = |name: &str| map(&[("name", name), ("team", "red")]);
    assert_eq!(
        got,
        vec![
            ("tag", label("lab:1")),
            ("import", label(&id)),
            ("tag", label("lab:2")),
            ("save", label(&id)),
            ("untag", label(&id)),
            ("untag", label(&id)),
            ("delete", map(&[("name", &id)])),
            ("load", label(&id)),
            ("untag", label(&id)),
            ("delete", map(&[("name", &id)])),
        ]
    );
    assert!(evs.iter().all(|e| e["Actor"]["ID"] == id.as_str()));

    // resize of a tty container: height and width attributes.
    let cid = d.ok(&[
        "run", "-d", "-t", "--name", "tty", "bb:test", "sleep", "100",
    ]);
    let t1 = now_arg();
    let mut s = std::os::unix::net::UnixStream::connect(&d.sock).expect("connect");
    s.write_all(
        format!(
            "POST /v1.41/containers/{cid}/resize?h=30&w=100 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let ev = wait_for(&d, &t1, &["event=resize"]);
    assert_eq!(
        attrs(&ev),
        map(&[
            ("height", "30"),
            ("image", "bb:test"),
            ("name", "tty"),
            ("width", "100")
        ])
    );
}

#[test]
fn events_from_before_a_crash_are_replayed_after_the_restart() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    let t0 = now_arg();
    d.import_busybox("bb:test");
    d.ok(&["tag", "bb:test", "before:1"]);
    let id = d.ok(&["create", "--name", "pre", "bb:test", "true"]);
    let before = replay(&d, &t0, &[]);
    let acts: Vec<&str> = before.iter().map(action).collect();
    assert_eq!(acts, ["tag", "import", "tag", "create"]);
    assert_eq!(before[3]["Actor"]["ID"], id.as_str());

    d.kill9();
    d.spawn();
    assert!(
        d.root.join("x/events/events.log").is_file(),
        "the journal lives in the exec root"
    );
    // The same events, field for field, in the same order (the restart may add its own).
    let after = replay(&d, &t0, &[]);
    assert!(after.len() >= before.len(), "{after:?}");
    assert_eq!(after[..before.len()], before[..]);
    // New events follow them, once each.
    d.ok(&["tag", "bb:test", "after:1"]);
    let all = replay(&d, &t0, &[]);
    assert_eq!(all[..after.len()], after[..]);
    assert_eq!(all.len(), after.len() + 1, "{all:?}");
    let last = all.last().expect("an event");
    assert_eq!(
        (action(last), attrs(last)["name"].as_str()),
        ("tag", "after:1")
    );
    let nanos: Vec<i64> = all.iter().filter_map(|e| e["timeNano"].as_i64()).collect();
    assert!(nanos.windows(2).all(|w| w[0] <= w[1]), "{nanos:?}");
    // Filters apply to the replayed events as to any other.
    let created = replay(&d, &t0, &["container=pre"]);
    assert_eq!(created.iter().map(action).collect::<Vec<_>>(), ["create"]);
}
