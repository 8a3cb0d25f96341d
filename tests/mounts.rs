//! The run flags that live in the OCI spec, checked from inside real containers (root, real
//! docker CLI): `-v` binds (rw, `ro`, files, missing sources), `--mount`, `--tmpfs`,
//! `--hostname`, `-w`, `-u`, `--entrypoint`, `--init`, the network modes' interfaces, and the
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` the container sees.

mod common;
use common::{daemon_with_image, sh};
use std::time::{Duration, Instant};

/// dockerd's fixed head of `/etc/hosts`.
const HOSTS_HEAD: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
    fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

#[test]
fn bind_mounts_rw_ro_and_files() {
    let Some(d) = daemon_with_image() else { return };
    let dir = d.path("bind");
    std::fs::create_dir_all(&dir).expect("bind dir");
    std::fs::write(dir.join("f"), "host data\n").expect("host file");
    let rw = format!("{}:/data", dir.display());
    let out = sh(
        &d,
        &["-v", &rw],
        "cat /data/f; echo from-container > /data/g",
    );
    assert_eq!(out, "host data");
    assert_eq!(
        std::fs::read_to_string(dir.join("g")).expect("written through the bind"),
        "from-container\n"
    );
    let ro = format!("{}:/data:ro", dir.display());
    let out = sh(
        &d,
        &["-v", &ro],
        "cat /data/f; echo x > /data/h || echo denied; grep ' /data ' /proc/mounts",
    );
    assert!(out.starts_with("host data\n"), "{out}");
    assert!(out.contains("/data/h: Read-only file system") && out.contains("denied"));
    assert!(out.contains(" ro,"), "{out}");
    assert!(!dir.join("h").exists());
    // A single file, read-only, over a path of the image.
    let file = format!("{}:/etc/motd:ro", dir.join("f").display());
    assert_eq!(sh(&d, &["-v", &file], "cat /etc/motd"), "host data");
    // --mount with readonly.
    let mount = format!("type=bind,src={},dst=/m,readonly", dir.display());
    let out = sh(
        &d,
        &["--mount", &mount],
        "cat /m/f; touch /m/z || echo denied",
    );
    assert!(
        out.starts_with("host data") && out.contains("denied"),
        "{out}"
    );
    // -v creates a missing source directory; --mount refuses it with dockerd's words.
    let fresh = d.path("fresh/sub");
    let v = format!("{}:/n", fresh.display());
    assert_eq!(sh(&d, &["-v", &v], "test -d /n && echo dir"), "dir");
    assert!(fresh.is_dir());
    let missing = format!("type=bind,src={},dst=/m", d.path("nope").display());
    let err = d.fails(&["run", "--rm", "--mount", &missing, "bb:test", "true"]);
    assert!(err.contains("bind source path does not exist"), "{err}");
    let err = d.fails(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:rel", dir.display()),
        "bb:test",
        "true",
    ]);
    assert!(err.contains("mount path must be absolute"), "{err}");
}

#[test]
fn tmpfs_mounts() {
    let Some(d) = daemon_with_image() else { return };
    let out = sh(
        &d,
        &["--tmpfs", "/run:size=1m,mode=1777", "--tmpfs", "/cache"],
        "grep -E ' /(run|cache) ' /proc/mounts; stat -c %a /run; \
         echo x > /run/f && echo run-ok; echo x > /cache/f && echo cache-ok",
    );
    let run = out
        .lines()
        .find(|l| l.contains(" /run "))
        .unwrap_or_else(|| panic!("no /run mount: {out}"));
    assert!(run.starts_with("tmpfs /run tmpfs rw,"), "{run}");
    for opt in ["nosuid", "nodev", "noexec", "size=1024k"] {
        assert!(run.contains(opt), "{opt}: {run}");
    }
    assert!(
        out.contains("tmpfs /cache tmpfs rw,nosuid,nodev,noexec"),
        "{out}"
    );
    assert!(out.contains("\n1777\n"), "{out}");
    assert!(out.contains("run-ok") && out.contains("cache-ok"), "{out}");
    // Each container gets its own, empty tmpfs.
    assert_eq!(sh(&d, &["--tmpfs", "/run"], "ls -A /run | wc -l"), "0");
}

#[test]
fn workdir_users_and_entrypoint() {
    let Some(d) = daemon_with_image() else { return };
    // -w creates the directory.
    assert_eq!(
        sh(
            &d,
            &["-w", "/some/new/dir"],
            "pwd; stat -c %U /some/new/dir"
        ),
        "/some/new/dir\nroot"
    );
    assert_eq!(
        sh(&d, &["-u", "user", "-w", "/work"], "pwd; stat -c %U /work"),
        "/work\nuser"
    );
    let err = d.fails(&["run", "--rm", "-w", "rel", "bb:test", "true"]);
    assert!(err.contains("needs to be an absolute path"), "{err}");
    // -u: name, uid, uid:gid, name:group; HOME follows passwd, or / for unknown uids.
    let id = "id; echo HOME=$HOME";
    assert_eq!(
        sh(&d, &[], id),
        "uid=0(root) gid=0(root) groups=0(root)\nHOME=/root"
    );
    assert_eq!(
        sh(&d, &["-u", "user"], id),
        "uid=1000(user) gid=1000(user) groups=10(wheel),1000(user)\nHOME=/home"
    );
    assert!(sh(&d, &["-u", "1234"], id).starts_with("uid=1234 gid=0(root)"));
    assert!(sh(&d, &["-u", "1234"], id).ends_with("HOME=/"));
    assert_eq!(sh(&d, &["-u", "1234:77"], "id -u; id -g"), "1234\n77");
    assert_eq!(sh(&d, &["-u", "user:wheel"], "id -u; id -g"), "1000\n10");
    assert_eq!(sh(&d, &["-u", "65534"], "id -un"), "nobody");
    let err = d.fails(&["run", "--rm", "-u", "nosuch", "bb:test", "true"]);
    assert!(
        err.contains("unable to find user nosuch: no matching entries in passwd file"),
        "{err}"
    );
    // --entrypoint replaces the image's, the rest are its arguments.
    assert_eq!(
        d.ok(&["run", "--rm", "--entrypoint", "echo", "bb:test", "a", "b"]),
        "a b"
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            "bb:test",
            "-c",
            "echo $0 $$"
        ]),
        "/bin/sh 1"
    );
}

/// Polls `f` until it returns `Some` or 15 s pass.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn init_is_pid1_and_reaps_zombies() {
    let Some(d) = daemon_with_image() else { return };
    let out = d.ok(&["run", "--rm", "--init", "bb:test", "cat", "/proc/1/cmdline"]);
    assert_eq!(
        out.replace('\0', " ").trim(),
        "/sbin/docker-init -- cat /proc/1/cmdline"
    );
    // An orphan whose parent exits is re-parented to PID 1. Without --init PID 1 is `sleep`,
    // which never reaps it; with --init docker-init does.
    // The orphan lingers until its grandparent has become `sleep`, so the shell cannot reap
    // it first.
    let script = "(sh -c \"while ! grep -q sleep /proc/$$/comm; do usleep 10000; done; \
                  touch /tmp/orphan-done\" &); exec sleep 1000";
    let no_init = d.ok(&["run", "-d", "bb:test", "sh", "-c", script]);
    poll("a zombie under a plain PID 1", || {
        let ps = d.ok(&["exec", &no_init, "ps", "-o", "stat,comm"]);
        ps.lines().any(|l| l.starts_with('Z')).then_some(())
    });
    let with_init = d.ok(&["run", "-d", "--init", "bb:test", "sh", "-c", script]);
    let ps = poll("the orphan to be gone", || {
        let done = d.docker(&["exec", &with_init, "test", "-e", "/tmp/orphan-done"]);
        let ps = d.ok(&["exec", &with_init, "ps", "-o", "pid,stat,comm"]);
        let others = ps
            .lines()
            .skip(1)
            .filter(|l| {
                !l.ends_with(" ps") && !l.ends_with(" sleep") && !l.ends_with(" docker-init")
            })
            .count();
        (done.status.success() && others == 0).then_some(ps)
    });
    assert!(!ps.lines().any(|l| l.contains(" Z ")), "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.ends_with("docker-init")),
        "{ps}"
    );
    d.ok(&["rm", "-f", &no_init, &with_init]);
}

/// Interface names seen by `ip -o link` output.
fn links(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The nameservers dockerd copies from the host's resolv.conf (no localhost ones), or its
/// public fallback when none is left.
fn expected_nameservers() -> Vec<String> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ns: Vec<String> = host
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|ip| !ip.starts_with("127.") && ip != "::1")
        .collect();
    if ns.is_empty() {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    } else {
        ns
    }
}

#[test]
fn network_modes_and_etc_files() {
    let Some(d) = daemon_with_image() else { return };
    let show = "ip -o link; echo ---; hostname; echo ---; cat /etc/hostname; echo ---; \
                cat /etc/hosts; echo ---; cat /etc/resolv.conf";
    // Default bridge: lo and eth0; hostname is the id's first 12 characters.
    let id = d.ok(&[
        "run",
        "-d",
        "bb:test",
        "sh",
        "-c",
        &format!("{{ {show}; }} 2>&1; echo =end; sleep 1000"),
    ]);
    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]);
    let out = poll("the container's output", || {
        let logs = d.ok(&["logs", &id]);
        logs.ends_with("=end").then_some(logs)
    });
    let out = out.trim_end_matches("=end");
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(links(parts[0]), ["lo", "eth0"], "{out}");
    assert_eq!(parts[1].trim(), &id[..12]);
    assert_eq!(parts[2].trim(), &id[..12]);
    assert_eq!(parts[3], format!("{HOSTS_HEAD}{ip}\t{}\n", &id[..12]));
    let ns: Vec<String> = parts[4]
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(str::to_string)
        .collect();
    assert_eq!(ns, expected_nameservers(), "{}", parts[4]);
    d.ok(&["rm", "-f", &id]);

    // --hostname, --add-host and the DNS flags.
    let out = sh(
        &d,
        &[
            "--hostname",
            "myhost",
            "--add-host",
            "db:10.1.2.3",
            "--add-host",
            "v6:fd00::1",
            "--dns",
            "9.9.9.9",
            "--dns-search",
            "example.com",
            "--dns-option",
            "ndots:2",
        ],
        "hostname; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf",
    );
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts[0], "myhost\nmyhost\n");
    assert!(
        parts[1].starts_with(&format!("{HOSTS_HEAD}10.1.2.3\tdb\nfd00::1\tv6\n")),
        "{out}"
    );
    assert!(parts[1].trim_end().ends_with("\tmyhost"), "{out}");
    assert_eq!(
        parts[2],
        "search example.com\nnameserver 9.9.9.9\noptions ndots:2"
    );

    // --network none: only loopback, no address line in /etc/hosts.
    let out = sh(
        &d,
        &["--network", "none"],
        "ip -o link; echo ---; cat /etc/hosts",
    );
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(links(parts[0]), ["lo"], "{out}");
    assert_eq!(parts[1], HOSTS_HEAD.trim_end());

    // --network host: the host's interfaces (our bridge among them), name and files.
    let out = sh(
        &d,
        &["--network", "host"],
        "ip -o link; echo ---; hostname; cat /etc/hostname; echo ---; cat /etc/hosts",
    );
    let parts: Vec<&str> = out.split("---\n").collect();
    let seen = links(parts[0]);
    assert!(seen.contains(&d.bridge), "{} not in {seen:?}", d.bridge);
    let host_name = nix::unistd::gethostname().expect("hostname");
    let host_name = host_name.to_string_lossy();
    assert_eq!(parts[1], format!("{host_name}\n{host_name}\n"));
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert_eq!(parts[2].trim_end(), host_hosts.trim_end());
}
