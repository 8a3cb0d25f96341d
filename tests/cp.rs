//! Container filesystem APIs through the real docker CLI (root): `docker cp` both ways on
//! running and stopped containers, hostile archives PUT through the raw API, `docker
//! export` and `docker diff`. (`docker container prune`: tests/prune.rs.)

mod common;
use common::daemon_with_image;
use common::rawapi::curl;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// One raw ustar entry; names and link targets are written as given (`..`, `/` allowed).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn chrono_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 1)
        .unwrap_or(0)
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 1024]);
    t
}

#[test]
fn cp_files_and_dirs_both_ways_on_running_and_stopped_containers() {
    let Some(d) = daemon_with_image() else { return };
    let src = d.path("src");
    std::fs::create_dir_all(src.join("dir/sub")).expect("mkdir");
    std::fs::write(src.join("f.txt"), "hello file\n").expect("write");
    std::fs::set_permissions(src.join("f.txt"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    std::fs::write(src.join("dir/sub/inner"), "inner\n").expect("write");
    std::fs::set_permissions(src.join("dir/sub"), std::fs::Permissions::from_mode(0o705))
        .expect("chmod");
    let f = src.join("f.txt");
    let dir = src.join("dir");
    let (f, dir) = (f.to_str().expect("utf8"), dir.to_str().expect("utf8"));

    d.ok(&["run", "-d", "--name", "cprun", "bb:test", "sleep", "1000"]);
    d.ok(&["create", "--name", "cpstop", "bb:test", "sleep", "1000"]);
    for c in ["cprun", "cpstop"] {
        d.ok(&["cp", f, &format!("{c}:/tmp/")]);
        d.ok(&["cp", dir, &format!("{c}:/root/")]);
        // A new name: the CLI renames inside the archive and PUTs to the parent.
        d.ok(&["cp", f, &format!("{c}:/tmp/renamed")]);
        let out = d.path(&format!("out-{c}"));
        std::fs::create_dir_all(&out).expect("mkdir out");
        let o = out.to_str().expect("utf8");
        d.ok(&["cp", &format!("{c}:/tmp/f.txt"), o]);
        d.ok(&["cp", &format!("{c}:/tmp/renamed"), o]);
        d.ok(&["cp", &format!("{c}:/root/dir"), o]);
        // `dir/.` copies the directory's contents.
        let contents = out.join("contents");
        std::fs::create_dir_all(&contents).expect("mkdir");
        let co = contents.to_str().expect("utf8");
        d.ok(&["cp", &format!("{c}:/root/dir/."), co]);
        assert_eq!(
            std::fs::read_to_string(contents.join("sub/inner")).expect("contents"),
            "inner\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("f.txt")).expect("f"),
            "hello file\n"
        );
        assert_eq!(mode_of(&out.join("f.txt")), 0o751);
        assert_eq!(
            std::fs::read_to_string(out.join("renamed")).expect("renamed"),
            "hello file\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("dir/sub/inner")).expect("inner"),
            "inner\n"
        );
        assert_eq!(mode_of(&out.join("dir/sub")), 0o705);
        // A file the image has, out of the container.
        d.ok(&["cp", &format!("{c}:/etc/passwd"), o]);
        assert!(std::fs::read_to_string(out.join("passwd"))
            .expect("passwd")
            .starts_with("root:x:0:0"));
        let err = d.fails(&["cp", &format!("{c}:/nonexist"), o]);
        assert!(
            err.contains(&format!(
                "Could not find the file /nonexist in container {c}"
            )),
            "{err}"
        );
    }
    // What went in is seen from inside the running container, mode included.
    assert_eq!(
        d.ok(&[
            "exec",
            "cprun",
            "stat",
            "-c",
            "%a %s",
            "/tmp/f.txt",
            "/root/dir/sub"
        ])
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect::<Vec<_>>(),
        ["751", "705"]
    );
    assert_eq!(
        d.ok(&["exec", "cprun", "cat", "/root/dir/sub/inner"]),
        "inner"
    );
    // And by the stopped one once it runs.
    d.ok(&["start", "cpstop"]);
    assert_eq!(
        d.ok(&["exec", "cpstop", "cat", "/tmp/renamed"]),
        "hello file"
    );
    // cp into a container stopped after it ran.
    d.ok(&["stop", "-t", "0", "cprun"]);
    d.ok(&["cp", f, "cprun:/tmp/after-stop"]);
    let back = d.path("back");
    d.ok(&["cp", "cprun:/tmp/after-stop", back.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("back"),
        "hello file\n"
    );
    let events = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &format!("{}", chrono_now_secs()),
        "--filter",
        "container=cpstop",
        "--format",
        "{{.Action}}",
    ]);
    for want in ["extract-to-dir", "archive-path"] {
        assert!(events.lines().any(|l| l == want), "{events}");
    }
    d.ok(&["rm", "-f", "cprun", "cpstop"]);
}

#[test]
fn archive_api_answers_stat_header_and_docker_errors() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "cpapi", "bb:test", "sleep", "1000"]);
    let out = Command::new("curl")
        .args(["-s", "-I", "--unix-socket"])
        .arg(&d.sock)
        .arg("http://x/v1.41/containers/cpapi/archive?path=/tmp/")
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-docker-container-path-stat:")
        })
        .expect("stat header");
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD
        .decode(line.split_once(':').expect("value").1.trim())
        .expect("base64");
    let stat: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(stat["name"], "tmp");
    // Go's os.FileMode: dir bit | 01777 is not what busybox's /tmp has; check the dir bit.
    assert_eq!(stat["mode"].as_u64().expect("mode") >> 31, 1);
    assert_eq!(stat["linkTarget"], "");
    let (code, body) = curl(&d, "GET", "/containers/cpapi/archive?path=/nope", None);
    assert_eq!(code, 404);
    assert!(
        body.contains("Could not find the file /nope in container cpapi"),
        "{body}"
    );
    let (code, body) = curl(&d, "GET", "/containers/cpapi/archive?path=", None);
    assert_eq!(
        (code, body.trim()),
        (400, r#"{"message":"Path cannot be empty"}"#)
    );
    let (code, body) = curl(&d, "GET", "/containers/nosuch/archive?path=/", None);
    assert_eq!(code, 404);
    assert!(body.contains("No such container: nosuch"), "{body}");
    // Extraction into a file is refused.
    let t = d.path("one.tar");
    let mut tar = Vec::new();
    raw_entry(&mut tar, "x", b'0', "", b"x");
    std::fs::write(&t, finish(tar)).expect("tar");
    let (code, body) = curl(
        &d,
        "PUT",
        "/containers/cpapi/archive?path=/etc/passwd",
        Some(&t),
    );
    assert_eq!(code, 500);
    assert!(
        body.contains("extraction point is not a directory"),
        "{body}"
    );
    // noOverwriteDirNonDir: a file may not replace /tmp.
    let mut tar = Vec::new();
    raw_entry(&mut tar, "tmp", b'0', "", b"x");
    std::fs::write(&t, finish(tar)).expect("tar");
    let (code, body) = curl(
        &d,
        "PUT",
        "/containers/cpapi/archive?path=/&noOverwriteDirNonDir=true",
        Some(&t),
    );
    assert_eq!(code, 500);
    assert!(
        body.contains("cannot overwrite directory \\\"/tmp\\\" with non-directory"),
        "{body}"
    );
    assert_eq!(
        d.ok(&["exec", "cpapi", "stat", "-c", "%F", "/tmp"]),
        "directory"
    );
    // A read-only root refuses uploads, copying out still works.
    d.ok(&["create", "--name", "cpro", "--read-only", "bb:test", "true"]);
    let f = d.path("ro.txt");
    std::fs::write(&f, "x").expect("write");
    let err = d.fails(&["cp", f.to_str().expect("utf8"), "cpro:/tmp/"]);
    assert!(
        err.contains("container rootfs is marked read-only"),
        "{err}"
    );
    d.ok(&[
        "cp",
        "cpro:/etc/passwd",
        d.path("ro-out").to_str().expect("utf8"),
    ]);
    d.ok(&["rm", "cpro"]);
    d.ok(&["rm", "-f", "cpapi"]);
}

#[test]
fn hostile_archives_and_symlinks_never_reach_the_host() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "cpevil", "bb:test", "sleep", "1000"]);
    // Paths on the host a successful escape would create or read.
    let host = d.path("host");
    std::fs::create_dir_all(&host).expect("mkdir");
    std::fs::write(host.join("secret"), "host secret").expect("secret");
    let hs = host.to_str().expect("utf8");
    let rel = hs.trim_start_matches('/');
    let t = d.path("evil.tar");
    let put = |tar: Vec<u8>, path: &str| {
        std::fs::write(&t, finish(tar)).expect("tar");
        curl(
            &d,
            "PUT",
            &format!("/containers/cpevil/archive?path={path}"),
            Some(&t),
        )
    };
    // `..` and absolute names stay below the extraction point.
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        &format!("../../../../../../../../{rel}/dotdot"),
        b'0',
        "",
        b"1",
    );
    raw_entry(&mut tar, &format!("/{rel}/abs"), b'0', "", b"2");
    let (code, body) = put(tar, "/tmp");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        d.ok(&["exec", "cpevil", "cat", &format!("/tmp/{rel}/dotdot")]),
        "1"
    );
    assert_eq!(
        d.ok(&["exec", "cpevil", "cat", &format!("/tmp/{rel}/abs")]),
        "2"
    );
    // A symlink in the archive pointing at the host, then a file through it.
    let mut tar = Vec::new();
    raw_entry(&mut tar, "lnk", b'2', hs, b"");
    raw_entry(&mut tar, "lnk/through-archive-link", b'0', "", b"3");
    let (code, body) = put(tar, "/tmp");
    assert_eq!(code, 400, "{body}");
    // A symlink target with `..` components.
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "up",
        b'2',
        &format!("../../../../../../{rel}"),
        b"",
    );
    raw_entry(&mut tar, "up/through-dotdot-link", b'0', "", b"4");
    let (code, body) = put(tar, "/tmp");
    assert_eq!(code, 400, "{body}");
    // Symlinks made inside the container, named as the extraction point or the source.
    d.ok(&[
        "exec",
        "cpevil",
        "sh",
        "-c",
        &format!("ln -s {hs} /tmp/abslink && ln -s ../../../../../../{rel} /tmp/rellink"),
    ]);
    for link in ["/tmp/abslink", "/tmp/rellink"] {
        let mut tar = Vec::new();
        raw_entry(&mut tar, "via-container-link", b'0', "", b"5");
        let (code, body) = put(tar, link);
        assert_eq!(code, 404, "{body}");
        assert!(
            body.contains(&format!(
                "Could not find the file {link} in container cpevil"
            )),
            "{body}"
        );
        let out = d.path("stolen");
        let err = d.fails(&[
            "cp",
            &format!("cpevil:{link}/secret"),
            out.to_str().expect("utf8"),
        ]);
        assert!(err.contains("Could not find the file"), "{err}");
        assert!(!out.exists());
    }
    // Nothing appeared on the host.
    let mut names: Vec<String> = std::fs::read_dir(&host)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    for p in [
        "/lnk",
        "/up",
        "/through-archive-link",
        "/via-container-link",
    ] {
        assert!(!Path::new(p).exists(), "{p} appeared on the host");
    }
    d.ok(&["rm", "-f", "cpevil"]);
}

#[test]
fn export_and_diff_show_the_container_filesystem() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "cpdiff", "bb:test", "sleep", "1000"]);
    // Nothing the runtime provides (mount points, /etc/hosts, …) counts as a change.
    assert_eq!(d.ok(&["diff", "cpdiff"]), "");
    d.ok(&[
        "exec",
        "cpdiff",
        "sh",
        "-c",
        "echo more >> /etc/passwd && mkdir -p /newdir && echo x > /newdir/file && rm /etc/group",
    ]);
    let diff = d.ok(&["diff", "cpdiff"]);
    assert_eq!(
        diff.lines().collect::<Vec<_>>(),
        [
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "A /newdir",
            "A /newdir/file"
        ],
        "{diff}"
    );
    let tarf = d.path("export.tar");
    d.ok(&["export", "-o", tarf.to_str().expect("utf8"), "cpdiff"]);
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(&tarf)
        .output()
        .expect("tar");
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in ["bin/busybox", "newdir/file", "etc/passwd"] {
        assert!(names.contains(&want), "{want} missing from\n{list}");
    }
    assert!(!names.contains(&"etc/group"), "{list}");
    assert!(list.contains("bin/sh -> busybox"), "{list}");
    let events = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &format!("{}", chrono_now_secs()),
        "--filter",
        "container=cpdiff",
        "--format",
        "{{.Action}}",
    ]);
    assert!(events.lines().any(|l| l == "export"), "{events}");
    d.ok(&["rm", "-f", "cpdiff"]);
}

#[test]
fn cp_reaches_bind_mounts_and_respects_read_only_ones() {
    let Some(d) = daemon_with_image() else { return };
    let (rw, ro) = (d.path("vol-rw"), d.path("vol-ro"));
    std::fs::create_dir_all(&rw).expect("mkdir");
    std::fs::create_dir_all(&ro).expect("mkdir");
    std::fs::write(rw.join("on-host"), "from the host\n").expect("write");
    let f = d.path("in.txt");
    std::fs::write(&f, "into the volume\n").expect("write");
    let f = f.to_str().expect("utf8");
    let v1 = format!("{}:/data", rw.display());
    let v2 = format!("{}:/ro:ro", ro.display());
    d.ok(&[
        "run", "-d", "--name", "cpvol", "-v", &v1, "-v", &v2, "bb:test", "sleep", "1000",
    ]);
    d.ok(&[
        "create",
        "--name",
        "cpvolstop",
        "-v",
        &v1,
        "bb:test",
        "true",
    ]);
    d.ok(&["cp", f, "cpvol:/data/running.txt"]);
    d.ok(&["cp", f, "cpvolstop:/data/stopped.txt"]);
    for n in ["running.txt", "stopped.txt"] {
        assert_eq!(
            std::fs::read_to_string(rw.join(n)).expect("on host"),
            "into the volume\n"
        );
    }
    assert_eq!(
        d.ok(&["exec", "cpvol", "cat", "/data/stopped.txt"]),
        "into the volume"
    );
    let out = d.path("out-vol");
    d.ok(&["cp", "cpvolstop:/data/on-host", out.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        "from the host\n"
    );
    let err = d.fails(&["cp", f, "cpvol:/ro/"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");
    assert_eq!(std::fs::read_dir(&ro).expect("ls").count(), 0);
    // The copy's mounts stayed in its own namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.lines().any(|l| l.contains("/merged/data")),
        "{mounts}"
    );
    d.ok(&["rm", "-f", "cpvol", "cpvolstop"]);
}
