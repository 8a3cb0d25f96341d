//! Lifecycle flags through the real docker CLI: `--env-file`, `--stop-signal`,
//! `--stop-timeout`, `stop -t`, `kill -s`, `restart`, `rm -f`, `ps` filters and format, `logs`
//! options, the CLI's exit codes, `rmi` of an image in use and json-file rotation.

mod common;
use common::{daemon_with_image, until, Daemon};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn logs_have(d: &Daemon, name: &str, needle: &str) -> bool {
    String::from_utf8_lossy(&d.docker(&["logs", name]).stdout).contains(needle)
}

fn inspect(d: &Daemon, fmt: &str, name: &str) -> String {
    d.ok(&["inspect", "-f", fmt, name])
}

/// Lines of `ps` output as a sorted list.
fn sorted(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn env_file_and_stop_flags() {
    let Some(d) = daemon_with_image() else { return };
    let env = d.path("env.list");
    std::fs::write(&env, "A=1\n# a comment\n\nB=two words\nFROMHOST\n").expect("env file");
    let out = d
        .cmd(&[
            "run",
            "--rm",
            "--env-file",
            env.to_str().expect("utf8"),
            "bb:test",
            "sh",
            "-c",
            "echo \"$A|$B|$FROMHOST\"",
        ])
        .env("FROMHOST", "host-value")
        .output()
        .expect("docker run --env-file");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1|two words|host-value\n"
    );

    // --stop-signal: stop sends it; the container traps it and exits on its own.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "sig",
        "--stop-signal",
        "USR1",
        "--stop-timeout",
        "30",
        "bb:test",
        "sh",
        "-c",
        "trap 'echo got-usr1; exit 5' USR1; echo ready; while true; do sleep 0.05; done",
    ]);
    assert_eq!(
        inspect(&d, "{{.Config.StopSignal}} {{.Config.StopTimeout}}", "sig"),
        "USR1 30"
    );
    until("the trap", || logs_have(&d, "sig", "ready"));
    let t = Instant::now();
    d.ok(&["stop", "sig"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(inspect(&d, "{{.State.ExitCode}}", "sig"), "5");
    assert!(logs_have(&d, "sig", "got-usr1"));

    // --stop-timeout: a container that ignores the signal is killed after it; stop -t
    // overrides the default.
    let ignore = "trap '' TERM; echo ready; while true; do sleep 0.05; done";
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--stop-timeout",
        "1",
        "bb:test",
        "sh",
        "-c",
        ignore,
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn2",
        "bb:test",
        "sh",
        "-c",
        ignore,
    ]);
    for (name, args) in [
        ("stubborn", vec!["stop", "stubborn"]),
        ("stubborn2", vec!["stop", "-t", "1", "stubborn2"]),
    ] {
        until("the trap", || logs_have(&d, name, "ready"));
        let t = Instant::now();
        d.ok(&args);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(8),
            "{name}: {took:?}"
        );
        assert_eq!(inspect(&d, "{{.State.ExitCode}}", name), "137");
    }

    // A stop signal the daemon cannot parse: 125 with dockerd's message.
    let out = d.docker(&["run", "--rm", "--stop-signal", "BOGUS", "bb:test", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid signal: BOGUS"));
}

#[test]
fn kill_restart_rm() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "trapper",
        "bb:test",
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.05; done",
    ]);
    until("the trap", || logs_have(&d, "trapper", "ready"));
    d.ok(&["kill", "-s", "USR1", "trapper"]);
    until("the trapped signal", || {
        logs_have(&d, "trapper", "got-usr1")
    });
    assert_eq!(inspect(&d, "{{.State.Status}}", "trapper"), "running");

    let before = inspect(&d, "{{.State.StartedAt}} {{.State.Pid}}", "trapper");
    d.ok(&["restart", "-t", "1", "trapper"]);
    let after = inspect(&d, "{{.State.StartedAt}} {{.State.Pid}}", "trapper");
    assert_eq!(inspect(&d, "{{.State.Status}}", "trapper"), "running");
    assert_ne!(before, after);
    // The log carries over the restart.
    until("the second start", || {
        String::from_utf8_lossy(&d.docker(&["logs", "trapper"]).stdout)
            .matches("ready")
            .count()
            == 2
    });

    d.ok(&["rm", "-f", "trapper"]);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    assert!(d
        .fails(&["inspect", "trapper"])
        .contains("No such object: trapper"));
}

#[test]
fn ps_filters_and_format() {
    let Some(d) = daemon_with_image() else { return };
    let web = d.ok(&[
        "run",
        "-d",
        "--name",
        "web1",
        "--label",
        "tier=front",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let job = d.ok(&[
        "create",
        "--name",
        "job1",
        "--label",
        "tier=back",
        "bb:test",
        "true",
    ]);
    d.ok(&[
        "run",
        "--name",
        "done1",
        "--label",
        "tier=back",
        "bb:test",
        "true",
    ]);
    let done = inspect(&d, "{{.Id}}", "done1");
    let short = |id: &str| id[..12].to_string();
    let names = |filters: &[&str]| {
        let mut args = vec!["ps", "-a", "--format", "{{.Names}}"];
        for f in filters {
            args.push("--filter");
            args.push(f);
        }
        sorted(&d.ok(&args))
    };

    assert_eq!(d.ok(&["ps", "-q"]), short(&web));
    assert_eq!(
        sorted(&d.ok(&["ps", "-a", "-q"])),
        sorted(&[short(&web), short(&job), short(&done)].join("\n"))
    );
    assert_eq!(names(&["name=job"]), ["job1"]);
    assert_eq!(names(&["label=tier=back"]), ["done1", "job1"]);
    assert_eq!(names(&["label=tier"]), ["done1", "job1", "web1"]);
    assert_eq!(names(&["status=created"]), ["job1"]);
    assert_eq!(names(&["status=exited"]), ["done1"]);
    assert_eq!(names(&["status=running"]), ["web1"]);
    let by_id = format!("id={}", &web[..10]);
    assert_eq!(names(&[by_id.as_str()]), ["web1"]);
    assert_eq!(names(&["ancestor=bb:test"]), ["done1", "job1", "web1"]);
    let image = d.ok(&["images", "-q", "bb:test"]);
    assert_eq!(
        names(&[format!("ancestor={image}").as_str()]),
        ["done1", "job1", "web1"]
    );
    assert!(names(&["ancestor=nosuch:tag"]).is_empty());
    assert_eq!(names(&["label=tier=back", "status=exited"]), ["done1"]);

    let rows = sorted(&d.ok(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"]));
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.split(' ').nth(1) == Some(name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("job1"), format!("{} job1 Created", short(&job)));
    assert!(
        row("web1").starts_with(&format!("{} web1 Up ", short(&web))),
        "{rows:?}"
    );
    assert!(
        row("done1").starts_with(&format!("{} done1 Exited (0) ", short(&done))),
        "{rows:?}"
    );
}

#[test]
fn logs_options() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "lg",
        "bb:test",
        "sh",
        "-c",
        "echo err-line >&2; echo early; while [ ! -e /tmp/go ]; do sleep 0.05; done; \
         echo late; echo last",
    ]);
    until("the early lines", || {
        let out = d.docker(&["logs", "lg"]);
        out.stdout == b"early\n" && out.stderr == b"err-line\n"
    });
    // Every line so far was logged before this instant, every later one after it.
    let mark = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);

    // logs -f: history, then live lines, then it ends when the container exits (exit 0).
    let mut follow = d
        .cmd(&["logs", "-f", "lg"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("early"));
    // Detached: the container exits as soon as the file exists, and the kernel SIGKILLs
    // whatever is left in its PID namespace, so `touch` itself may end with 137 (as with
    // dockerd); only its effect matters here.
    d.ok(&["exec", "-d", "lg", "touch", "/tmp/go"]);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest, ["late", "last"]);
    assert!(follow.wait().expect("wait logs -f").success());
    assert_eq!(d.ok(&["wait", "lg"]), "0");

    let out = d.docker(&["logs", "--since", &mark, "lg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\nlast\n");
    assert!(out.stderr.is_empty());
    let out = d.docker(&["logs", "--until", &mark, "lg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "early\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err-line\n");
    assert_eq!(d.ok(&["logs", "--tail", "2", "lg"]), "late\nlast");
    assert_eq!(d.ok(&["logs", "--tail", "0", "lg"]), "");
    let stamped = d.ok(&["logs", "-t", "--tail", "1", "lg"]);
    let (ts, line) = stamped.split_once(' ').expect("timestamp and line");
    assert_eq!(line, "last");
    assert_eq!(ts.len(), "2026-11-23T09:19:38.013165532Z".len(), "{ts}");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert!(ts > mark.as_str(), "{ts} vs {mark}");
    // --since and --until together select the window.
    let out = d.docker(&["logs", "--since", "0", "--until", &mark, "lg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "early\n");
}

#[test]
fn exit_codes() {
    let Some(d) = daemon_with_image() else { return };
    let out = d.docker(&["run", "--rm", "bb:test", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    let out = d.docker(&["run", "--rm", "bb:test", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // Values the daemon rejects: 125 with its message.
    let out = d.docker(&["run", "--rm", "-w", "relative", "bb:test", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the working directory 'relative' is invalid"));
    let out = d.docker(&[
        "run",
        "--rm",
        "--log-opt",
        "max-size=lots",
        "bb:test",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

#[test]
fn rmi_of_an_image_in_use() {
    let Some(d) = daemon_with_image() else { return };
    // An image with a layer of its own: busybox plus one file.
    let tar = d.path("solo.tar");
    std::fs::copy(d.path("busybox.tar"), &tar).expect("copy busybox tar");
    std::fs::create_dir_all(d.path("solo")).expect("solo dir");
    std::fs::write(d.path("solo/solo.txt"), "solo\n").expect("solo file");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(d.path("solo"))
        .arg("-rf")
        .arg(&tar)
        .arg("solo.txt")
        .status()
        .expect("tar");
    assert!(st.success());
    d.ok(&[
        "import",
        "-c",
        "ENV SOLO=1",
        tar.to_str().expect("utf8"),
        "solo:1",
    ]);
    let image = d.ok(&["images", "-q", "--no-trunc", "solo:1"]);
    let img12 = image.trim_start_matches("sha256:")[..12].to_string();
    d.ok(&[
        "create",
        "--name",
        "user1",
        "solo:1",
        "sh",
        "-c",
        "echo $SOLO; cat /solo.txt",
    ]);
    let c12 = inspect(&d, "{{.Id}}", "user1")[..12].to_string();

    let err = d.fails(&["rmi", "solo:1"]);
    assert!(
        err.contains(&format!(
            "conflict: unable to remove repository reference \"solo:1\" (must force) - container {c12} is using its referenced image {img12}"
        )),
        "{err}"
    );
    let err = d.fails(&["rmi", &img12]);
    assert!(
        err.contains(&format!(
            "conflict: unable to delete {img12} (must be forced) - image is being used by stopped container {c12}"
        )),
        "{err}"
    );
    let out = d.ok(&["rmi", "-f", "solo:1"]);
    assert!(out.contains("Untagged: solo:1"), "{out}");
    assert!(out.contains(&format!("Deleted: {image}")), "{out}");
    assert_eq!(d.ok(&["images", "-q", "solo"]), "");
    // Its layers were kept for the container, and ps shows the image id instead of the name.
    assert_eq!(out.matches("Deleted:").count(), 1, "{out}");
    assert_eq!(
        d.ok(&[
            "ps",
            "-a",
            "--filter",
            "name=user1",
            "--format",
            "{{.Image}}"
        ]),
        img12
    );
    // The container keeps its filesystem: it still starts.
    let out = d.docker(&["start", "-a", "user1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\nsolo\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Removing the last container that used it releases the layers.
    let layers = d.root.join("d/image/layers");
    let count = || std::fs::read_dir(&layers).map(|r| r.count()).unwrap_or(0);
    let before = count();
    d.ok(&["rm", "user1"]);
    assert_eq!(count(), before - 1, "the retained layer was not released");

    // An image a running container uses cannot be forced out.
    d.ok(&["run", "-d", "--name", "runner", "bb:test", "sleep", "1000"]);
    let r12 = inspect(&d, "{{.Id}}", "runner")[..12].to_string();
    let bb = d.ok(&["images", "-q", "bb:test"]);
    let err = d.fails(&["rmi", "-f", &bb]);
    assert!(
        err.contains(&format!(
            "conflict: unable to delete {bb} (cannot be forced) - image is being used by running container {r12}"
        )),
        "{err}"
    );
}

#[test]
fn log_rotation() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run",
        "--name",
        "rot",
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        "bb:test",
        "sh",
        "-c",
        "i=0; while [ $i -lt 300 ]; do echo \"line $i padding\"; i=$((i+1)); done",
    ]);
    assert_eq!(
        inspect(&d, "{{json .HostConfig.LogConfig.Config}}", "rot"),
        r#"{"max-file":"2","max-size":"1k"}"#
    );
    let log = std::path::PathBuf::from(inspect(&d, "{{.LogPath}}", "rot"));
    let base = log
        .file_name()
        .and_then(|n| n.to_str())
        .expect("log name")
        .to_string();
    let dir = log.parent().expect("log dir");
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read container dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let len = e.metadata().ok()?.len();
            name.starts_with(&base).then_some((name, len))
        })
        .collect();
    files.sort();
    assert_eq!(
        files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        [base.clone(), format!("{base}.1")],
        "{files:?}"
    );
    for (name, len) in &files {
        assert!(*len > 0 && *len <= 1024 + 128, "{name}: {len}");
    }
    // docker logs still shows the newest lines, in order, without gaps.
    let lines: Vec<String> = d.ok(&["logs", "rot"]).lines().map(str::to_string).collect();
    assert_eq!(lines.last().map(String::as_str), Some("line 299 padding"));
    assert!(lines.len() > 5 && lines.len() < 300, "{}", lines.len());
    let first: usize = lines[0]
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("line number");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line {} padding", first + i));
    }
}
