//! `docker commit` through the real docker CLI (root).

mod common;
use common::daemon_with_image;

#[test]
fn commit_makes_an_image_of_the_container_changes() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&[
        "run", "-d", "--name", "cm1", "-e", "B=2", "bb:test", "sleep", "1000",
    ]);
    d.ok(&[
        "exec",
        "cm1",
        "sh",
        "-c",
        "echo committed-data > /f && rm /bin/ls && mkdir -p /d/e && echo x > /d/e/g",
    ]);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let id = d.ok(&[
        "commit",
        "-m",
        "my commit message",
        "-a",
        "Ann <ann@example.com>",
        "-c",
        "ENV A=1",
        "-c",
        r#"CMD ["cat","/f"]"#,
        "cm1",
        "img:1",
    ]);
    assert!(id.starts_with("sha256:"), "{id}");
    // Still running: paused only during the commit.
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "cm1"]),
        "running"
    );
    assert_eq!(d.ok(&["run", "--rm", "img:1"]), "committed-data");
    let out = d.docker(&["run", "--rm", "img:1", "ls", "/"]);
    assert!(!out.status.success(), "/bin/ls should be gone");
    assert_eq!(d.ok(&["run", "--rm", "img:1", "cat", "/d/e/g"]), "x");
    let hist = d.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}|{{.Comment}}",
        "img:1",
    ]);
    let top = hist.lines().next().unwrap_or("");
    assert_eq!(top, "sleep 1000|my commit message", "{hist}");
    let env = d.ok(&["inspect", "-f", "{{json .Config.Env}}", "img:1"]);
    assert!(env.contains("\"A=1\""), "{env}");
    // The container's own environment is kept.
    assert!(env.contains("\"B=2\""), "{env}");
    let cmd = d.ok(&["inspect", "-f", "{{json .Config.Cmd}}", "img:1"]);
    assert_eq!(cmd, r#"["cat","/f"]"#);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.Author}}|{{.Comment}}", "img:1"]),
        "Ann <ann@example.com>|my commit message"
    );
    let full = d.ok(&["inspect", "-f", "{{.Id}}", "img:1"]);
    assert_eq!(full, id);
    // Without -c the image keeps the container's command; --pause=false does not pause.
    d.ok(&["commit", "--pause=false", "cm1", "img:2"]);
    let t1 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 1)
        .unwrap_or(0)
        .to_string();
    let ev = d.ok(&[
        "events",
        "--since",
        &t0,
        "--until",
        &t1,
        "--filter",
        "container=cm1",
        "--filter",
        "event=pause",
        "--filter",
        "event=unpause",
        "--filter",
        "event=commit",
        "--format",
        "{{.Action}}",
    ]);
    // dockerd's order: paused, committed, unpaused; the second commit without pausing.
    assert_eq!(
        ev.lines().collect::<Vec<_>>(),
        ["pause", "commit", "unpause", "commit"]
    );
    let cmd = d.ok(&["inspect", "-f", "{{json .Config.Cmd}}", "img:2"]);
    assert_eq!(cmd, r#"["sleep","1000"]"#);
    let err = d.fails(&["commit", "nosuchctr", "img:3"]);
    assert!(err.contains("No such container: nosuchctr"), "{err}");
    let err = d.fails(&["commit", "-c", "BOGUS x", "cm1", "img:3"]);
    assert!(err.contains("bogus is not a valid change command"), "{err}");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "cm1"]),
        "running"
    );
    d.ok(&["rm", "-f", "cm1"]);
    d.ok(&["rmi", "img:1", "img:2"]);
}
