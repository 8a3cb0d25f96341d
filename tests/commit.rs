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

/// A file capability as the kernel stores it (`vfs_cap_data` revision 2): effective, with
/// CAP_NET_RAW permitted.
fn net_raw_capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    v
}

#[test]
fn committed_layers_keep_hardlinks_and_file_capabilities() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "hl", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "exec",
        "hl",
        "sh",
        "-c",
        "head -c 100000 /dev/urandom > /a && ln /a /b && cp /bin/busybox /pinger",
    ]);
    // setcap is not in busybox: the capability is set on the upper dir's file from here.
    let upper = d.ok(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "hl"]);
    let cap = net_raw_capability();
    xattr::set(
        std::path::Path::new(&upper).join("pinger"),
        "security.capability",
        &cap,
    )
    .expect("set the capability");
    d.ok(&["commit", "hl", "linked:1"]);
    d.ok(&["rm", "-f", "hl"]);

    // In a container of the new image, /a and /b are one file (one inode, two links).
    let out = d.ok(&["run", "--rm", "linked:1", "stat", "-c", "%i %h", "/a", "/b"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], lines[1], "{out}");
    assert!(lines[0].ends_with(" 2"), "{out}");

    // The layer on disk carries the capability; the layer tar has a link entry and the
    // PAX record (docker save shows what a registry or dockerd would get).
    let top = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .GraphDriver.Data.UpperDir}}",
        "linked:1",
    ]);
    let top: String = serde_json::from_str(&top).unwrap_or_default();
    if !top.is_empty() {
        let got = xattr::get(
            std::path::Path::new(&top).join("pinger"),
            "security.capability",
        )
        .expect("read xattr");
        assert_eq!(got.as_deref(), Some(cap.as_slice()));
    }
    let archive = d.path("linked.tar");
    d.ok(&["save", "-o", &archive.display().to_string(), "linked:1"]);
    let mut outer = tar::Archive::new(std::fs::File::open(&archive).expect("archive"));
    let mut saw_link = false;
    let mut saw_cap = false;
    for e in outer.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        if !path.ends_with(".tar") {
            continue;
        }
        let mut inner = tar::Archive::new(&mut e);
        for f in inner.entries().expect("layer entries") {
            let mut f = f.expect("layer entry");
            let name = f.path().expect("name").display().to_string();
            if f.header().entry_type() == tar::EntryType::Link && name == "b" {
                saw_link = f
                    .link_name()
                    .ok()
                    .flatten()
                    .is_some_and(|l| l.as_os_str() == "a");
            }
            if name == "pinger" {
                if let Ok(Some(pax)) = f.pax_extensions() {
                    saw_cap = pax.flatten().any(|x| {
                        x.key() == Ok("SCHILY.xattr.security.capability") && x.value_bytes() == cap
                    });
                }
            }
        }
    }
    assert!(saw_link, "no hardlink entry b -> a in the committed layer");
    assert!(saw_cap, "no security.capability PAX record for /pinger");
}
