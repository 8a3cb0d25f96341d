//! dockerd's security defaults, checked from inside real containers (root, real docker CLI):
//! capabilities, `--privileged`, `--cap-add`/`--cap-drop`, masked and read-only paths, the
//! default seccomp profile, `seccomp=unconfined`, custom profiles, `no-new-privileges` and
//! `--read-only`.

mod common;
use common::{daemon_with_image, sh, Daemon};

/// dockerd's default capability set, by number (`oci.DefaultCapabilities`).
const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    4,  // FSETID
    3,  // FOWNER
    27, // MKNOD
    13, // NET_RAW
    6,  // SETGID
    7,  // SETUID
    31, // SETFCAP
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    5,  // KILL
    29, // AUDIT_WRITE
];

/// The value of a `Name:\tvalue` line of a `/proc/<pid>/status` text.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

/// A hex capability mask field.
fn mask(status: &str, name: &str) -> u64 {
    u64::from_str_radix(field(status, name), 16)
        .unwrap_or_else(|_| panic!("bad {name} in {status:?}"))
}

fn bit(n: u32) -> u64 {
    1u64 << n
}

fn status(d: &Daemon, opts: &[&str]) -> String {
    sh(d, opts, "cat /proc/self/status")
}

#[test]
fn default_capabilities_are_dockerds() {
    let Some(d) = daemon_with_image() else { return };
    let expected: u64 = DEFAULT_CAPS.iter().map(|n| bit(*n)).sum();
    assert_eq!(expected, 0x0000_0000_a804_25fb, "the test's own table");
    let root = status(&d, &[]);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(mask(&root, set), expected, "{set} of root: {root}");
    }
    assert_eq!(mask(&root, "CapInh"), 0);
    assert_eq!(mask(&root, "CapAmb"), 0);
    // Any other user keeps the bounding set only, as execve leaves it.
    let user = status(&d, &["-u", "1000"]);
    assert_eq!(mask(&user, "CapEff"), 0, "{user}");
    assert_eq!(mask(&user, "CapPrm"), 0, "{user}");
    assert_eq!(mask(&user, "CapBnd"), expected, "{user}");
}

#[test]
fn cap_add_and_cap_drop_change_what_works() {
    let Some(d) = daemon_with_image() else { return };
    // NET_ADMIN: creating a link in the container's own namespace.
    let link = "ip link add va type veth && echo created";
    let denied = sh(&d, &[], link);
    assert!(denied.contains("Operation not permitted"), "{denied}");
    let added = sh(
        &d,
        &["--cap-add", "NET_ADMIN"],
        &format!("{link}; ip -o link"),
    );
    assert!(
        added.contains("created") && added.contains(": va@"),
        "{added}"
    );
    let st = status(&d, &["--cap-add", "net_admin"]);
    assert_eq!(mask(&st, "CapEff"), 0xa804_25fb | bit(12));
    // CHOWN: default root may chown, without CAP_CHOWN it may not.
    let chown = "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f";
    assert_eq!(sh(&d, &[], chown), "1000");
    let dropped = sh(&d, &["--cap-drop", "CHOWN"], chown);
    assert!(dropped.contains("Operation not permitted"), "{dropped}");
    let st = status(&d, &["--cap-drop", "chown"]);
    assert_eq!(mask(&st, "CapEff"), 0xa804_25fb & !bit(0));
    // ALL forms.
    let st = status(&d, &["--cap-drop", "ALL", "--cap-add", "KILL"]);
    assert_eq!(mask(&st, "CapEff"), bit(5));
    assert_eq!(mask(&st, "CapBnd"), bit(5));
    // Unknown names are refused before anything runs.
    let err = d.fails(&["run", "--rm", "--cap-add", "NOPE", "bb:test", "true"]);
    assert!(err.contains("unknown capability: \"CAP_NOPE\""), "{err}");
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

/// The capabilities this test process holds (the daemon it started holds the same).
fn own_caps() -> u64 {
    let me = std::fs::read_to_string("/proc/self/status").expect("own status");
    mask(&me, "CapEff")
}

/// A device node of the host's `/dev` that no default container has.
fn host_only_device() -> String {
    let common = [
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "fuse", "net", "tun",
    ];
    let mut names: Vec<String> = std::fs::read_dir("/dev")
        .expect("read /dev")
        .flatten()
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type()
                .is_ok_and(|t| t.is_char_device() || t.is_block_device())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !common.contains(&n.as_str()) && !n.starts_with("tty"))
        .collect();
    names.sort();
    names.into_iter().next().expect("a device node in /dev")
}

#[test]
fn privileged_gets_everything() {
    let Some(d) = daemon_with_image() else { return };
    let st = status(&d, &["--privileged"]);
    let all = own_caps();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(mask(&st, set), all, "{set}: {st}");
    }
    assert_eq!(field(&st, "Seccomp"), "0");
    // /sys is writable (the container's own network device), and so is /proc/sys.
    let sys = "echo 1400 > /sys/class/net/eth0/mtu && cat /sys/class/net/eth0/mtu; \
               echo 100 > /proc/sys/kernel/ns_last_pid && echo procsys-ok";
    let out = sh(&d, &["--privileged"], sys);
    assert_eq!(out, "1400\nprocsys-ok", "{out}");
    let out = sh(&d, &[], sys);
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
    // The host's devices are visible.
    let dev = host_only_device();
    let ls = format!("ls /dev/{dev}");
    assert_eq!(sh(&d, &["--privileged"], &ls), format!("/dev/{dev}"));
    assert!(sh(&d, &[], &ls).contains("No such file"), "{dev} leaked");
    // Nothing is masked.
    if std::fs::read_to_string("/proc/timer_list").is_ok_and(|t| !t.is_empty()) {
        let out = sh(&d, &["--privileged"], "wc -c < /proc/timer_list");
        assert!(out.trim().parse::<u64>().is_ok_and(|n| n > 0), "{out}");
    }
}

#[test]
fn masked_and_readonly_proc_paths() {
    let Some(d) = daemon_with_image() else { return };
    // Masked files read empty (or are absent on this kernel); masked dirs are empty.
    for f in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        let out = sh(&d, &[], &format!("cat {f} | wc -c"));
        let n: u64 = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(1);
        assert_eq!(n, 0, "{f} is readable in the container: {out}");
    }
    assert!(
        std::fs::read_to_string("/proc/keys").is_ok_and(|k| !k.is_empty())
            || std::fs::read_to_string("/proc/timer_list").is_ok_and(|k| !k.is_empty()),
        "the host shows neither file: the mask check above proves nothing"
    );
    for dir in ["/proc/acpi", "/sys/firmware"] {
        assert_eq!(
            sh(&d, &[], &format!("ls -A {dir} 2>/dev/null | wc -l")),
            "0"
        );
    }
    // Read-only paths.
    let out = sh(
        &d,
        &[],
        "echo 100 > /proc/sys/kernel/ns_last_pid; \
         grep -E ' /proc/(sys|bus|fs|irq|sysrq-trigger) ' /proc/mounts",
    );
    assert_eq!(out.matches("Read-only file system").count(), 1, "{out}");
    for line in out.lines().filter(|l| l.starts_with("proc ")) {
        assert!(line.contains(" ro,"), "{line}");
    }
    assert!(out.contains(" /proc/sys "), "{out}");
    // /sys is read-only for a default container.
    let sys = sh(&d, &[], "grep ' /sys ' /proc/mounts");
    assert!(sys.contains("sysfs ro,"), "{sys}");
}

#[test]
fn default_seccomp_profile_and_unconfined() {
    let Some(d) = daemon_with_image() else { return };
    let probe = "grep Seccomp: /proc/self/status; \
                 unshare -U true && echo userns-ok; \
                 mkdir -p /mnt/t; mount -t tmpfs t /mnt/t && echo mount-ok; \
                 sleep 0 & wait $! && echo fork-ok";
    // Default profile: no user namespaces, no mount without CAP_SYS_ADMIN; fork works (the
    // clone rule with its masked namespace flags lets plain forks through).
    let out = sh(&d, &[], probe);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        out.contains("unshare(0x10000000): Operation not permitted"),
        "{out}"
    );
    assert!(
        !out.contains("userns-ok") && !out.contains("mount-ok"),
        "{out}"
    );
    assert!(out.contains("fork-ok"), "{out}");
    // CAP_SYS_ADMIN opens the profile's admin calls.
    let out = sh(&d, &["--cap-add", "SYS_ADMIN"], probe);
    assert!(out.contains("mount-ok") && out.contains("fork-ok"), "{out}");
    // Unconfined: user namespaces need no capability; mount still needs CAP_SYS_ADMIN.
    let unconfined = ["--security-opt", "seccomp=unconfined"];
    let out = sh(&d, &unconfined, probe);
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(
        out.contains("userns-ok") && out.contains("fork-ok"),
        "{out}"
    );
    assert!(!out.contains("mount-ok"), "{out}");
    let out = sh(
        &d,
        &[unconfined[0], unconfined[1], "--cap-add", "SYS_ADMIN"],
        probe,
    );
    assert!(
        out.contains("userns-ok") && out.contains("mount-ok"),
        "{out}"
    );
}

/// A custom profile with a `SCMP_CMP_MASKED_EQ` rule proves the operand order reaches
/// libseccomp as Docker means it: `value` is the mask, `valueTwo` the expected result.
#[test]
fn custom_profile_masked_eq_keeps_dockers_meaning() {
    let Some(d) = daemon_with_image() else { return };
    // kill(pid, sig) fails when (sig & 3) == 1: SIGHUP (1) is denied, SIGTERM (15) is not.
    // With the operands swapped (mask 1, value 3) nothing would match.
    let profile = d.path("masked.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":3,"valueTwo":1,
            "op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
    )
    .expect("write profile");
    let opt = format!("seccomp={}", profile.display());
    let out = sh(
        &d,
        &["--security-opt", &opt],
        "sleep 30 & p=$!; kill -HUP $p || echo hup-denied; kill -TERM $p && echo term-sent; \
         wait $p; echo status=$?",
    );
    assert!(out.contains("hup-denied"), "{out}");
    assert!(out.contains("term-sent"), "{out}");
    assert!(out.contains("status=143"), "SIGTERM ended sleep: {out}");
}

#[test]
fn no_new_privileges() {
    let Some(d) = daemon_with_image() else { return };
    assert_eq!(field(&status(&d, &[]), "NoNewPrivs"), "0");
    for opt in [
        "no-new-privileges",
        "no-new-privileges:true",
        "no-new-privileges=true",
    ] {
        let st = status(&d, &["--security-opt", opt]);
        assert_eq!(field(&st, "NoNewPrivs"), "1", "{opt}");
        assert_eq!(field(&st, "Seccomp"), "2", "{opt}: seccomp stays on");
    }
    let st = status(&d, &["--security-opt", "no-new-privileges=false"]);
    assert_eq!(field(&st, "NoNewPrivs"), "0");
    let err = d.fails(&["run", "--rm", "--security-opt", "bogus", "bb:test", "true"]);
    assert!(err.contains("Invalid --security-opt"), "{err}");
}

#[test]
fn read_only_rootfs_with_tmpfs_and_binds() {
    let Some(d) = daemon_with_image() else { return };
    let host_dir = d.path("rw-bind");
    std::fs::create_dir_all(&host_dir).expect("bind dir");
    let bind = format!("{}:/data", host_dir.display());
    let out = sh(
        &d,
        &["--read-only", "--tmpfs", "/tmp", "-v", &bind],
        "touch /x || echo root-ro; touch /tmp/y && echo tmp-ok; \
         echo hi > /dev/shm/z && echo shm-ok; echo v > /data/f && echo bind-ok; \
         echo 1.2.3.4 x >> /etc/hosts || echo hosts-ro",
    );
    assert!(out.contains("touch: /x: Read-only file system"), "{out}");
    for word in ["root-ro", "tmp-ok", "shm-ok", "bind-ok", "hosts-ro"] {
        assert!(out.contains(word), "{word}: {out}");
    }
    assert_eq!(
        std::fs::read_to_string(host_dir.join("f")).expect("written"),
        "v\n"
    );
    // Without --tmpfs, /tmp is part of the read-only root.
    let out = sh(&d, &["--read-only"], "touch /tmp/y || echo tmp-ro");
    assert!(out.contains("tmp-ro"), "{out}");
    // And a normal container may write its root.
    assert_eq!(sh(&d, &[], "touch /x && echo ok"), "ok");
}

/// `docker exec` runs under the container's confinement: the same capabilities, the same
/// seccomp filter (libcontainer drops it for tenants; the shim puts it back) and the same
/// no-new-privileges flag; `--privileged` (of the exec or the container) gets every capability
/// the daemon holds.
#[test]
fn exec_shares_the_containers_confinement() {
    let Some(d) = daemon_with_image() else { return };
    let probe = "grep -E '^(Cap|NoNew|Seccomp:)' /proc/self/status; \
                 unshare -U true && echo userns-ok; sleep 0 & wait $! && echo fork-ok";
    let exec = |id: &str, extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[id, "sh", "-c"]);
        let script = format!("{{ {probe}\n}} 2>&1");
        args.push(&script);
        let out = d.docker(&args);
        assert!(
            out.status.code().is_some_and(|c| c < 125),
            "exec {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = d.ok(&["run", "-d", "bb:test", "sleep", "1000"]);
    let out = exec(&plain, &[]);
    assert_eq!(mask(&out, "CapEff"), 0xa804_25fb, "{out}");
    assert_eq!(mask(&out, "CapBnd"), 0xa804_25fb, "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    assert!(
        out.contains("Operation not permitted") && !out.contains("userns-ok"),
        "{out}"
    );
    assert!(out.contains("fork-ok"), "{out}");
    let out = exec(&plain, &["-u", "1000"]);
    assert_eq!(mask(&out, "CapEff"), 0, "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    // exec --privileged widens the capabilities, not the syscall filter.
    let out = exec(&plain, &["--privileged"]);
    assert_eq!(mask(&out, "CapEff"), own_caps(), "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");

    let nnp = d.ok(&[
        "run",
        "-d",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "CHOWN",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let out = exec(&nnp, &[]);
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    assert_eq!(mask(&out, "CapEff"), 0xa804_25fb & !bit(0), "{out}");

    let privileged = d.ok(&["run", "-d", "--privileged", "bb:test", "sleep", "1000"]);
    let out = exec(&privileged, &[]);
    assert_eq!(mask(&out, "CapEff"), own_caps(), "{out}");
    assert_eq!(field(&out, "Seccomp"), "0", "{out}");
    assert!(out.contains("userns-ok"), "{out}");
    d.ok(&["rm", "-f", &plain, &nnp, &privileged]);
}
