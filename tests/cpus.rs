//! CPU placement with the real docker CLI: `--reserved-cpus` keeps CPUs from shared
//! containers, `berth.cpus.exclusive=N` gives whole cores that running shared containers
//! leave live (and get back at removal), `--cpuset-cpus` may not overlap them, and the
//! allocations survive a daemon crash, a live upgrade and a crash in the middle of a
//! create. One test runs a daemon over a fake 2-node NUMA topology (`--sysfs-root`).
//!
//! The kernel tests need a host with CPUs `0-1` on two separate cores (the test host); on
//! other hosts they say so and do nothing.

mod common;
use berthd::resources::cpus::fake;
use common::{is_root, until, Daemon, Launch};
use std::io::{Read, Write};
use std::process::Command;

/// Whether this host is the two-core machine the kernel tests expect.
fn two_core_host() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let ok = read("/sys/devices/system/cpu/online").trim() == "0-1"
        && read("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").trim() == "0";
    if !ok {
        eprintln!("skipped: needs a host with CPUs 0-1 on two cores");
    }
    ok
}

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let d = Daemon::start_with(Launch {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    d.import_busybox("bb:test");
    d
}

/// The container's `cpuset.cpus` as the kernel has it.
fn cpuset(d: &Daemon, name: &str) -> String {
    let id = d.ok(&["inspect", "-f", "{{.Id}}", name]);
    let path = format!("/sys/fs/cgroup/cpuset{}/{id}/cpuset.cpus", d.cgroup);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| format!("<{path}: {e}>"))
        .trim()
        .to_string()
}

fn inspect(d: &Daemon, name: &str, what: &str) -> String {
    d.ok(&["inspect", "-f", what, name])
}

fn wait_cpuset(d: &Daemon, name: &str, want: &str) {
    until(&format!("{name}'s cpuset to become {want}"), || {
        cpuset(d, name) == want
    });
}

/// `POST /containers/create` with a raw body; returns the status line and body.
fn raw_create(d: &Daemon, body: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&d.sock).expect("connect");
    let req = format!(
        "POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn reserved_cpus_are_given_only_to_containers_that_name_them() {
    if !is_root() || !two_core_host() {
        return;
    }
    let d = daemon(&[("BERTH_RESERVED_CPUS", "0")]);
    d.ok(&["run", "-d", "--name", "shared", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "named",
        "--cpuset-cpus",
        "0",
        "bb:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(cpuset(&d, "shared"), "1");
    assert_eq!(cpuset(&d, "named"), "0");
    // A shared container's HostConfig stays as the client sent it, as with dockerd.
    assert_eq!(inspect(&d, "shared", "{{.HostConfig.CpusetCpus}}"), "");
    assert_eq!(inspect(&d, "named", "{{.HostConfig.CpusetCpus}}"), "0");
    // The container sees it too.
    let seen = common::sh(&d, &[], "cat /sys/fs/cgroup/cpuset/cpuset.cpus");
    assert_eq!(seen, "1");
    // Exclusive cores never come from the reserved CPU: only 1 is left, and giving it
    // away would leave the shared containers nothing.
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("berth.cpus.exclusive=1: it would leave no CPU for the containers without exclusive cores"),
        "{e}"
    );
}

#[test]
fn exclusive_cores_leave_running_shared_containers_live_and_come_back_at_removal() {
    if !is_root() || !two_core_host() {
        return;
    }
    let d = daemon(&[]);
    d.ok(&["run", "-d", "--name", "s1", "bb:test", "sleep", "1000"]);
    assert_eq!(cpuset(&d, "s1"), "0-1");
    let s1_pid = inspect(&d, "s1", "{{.State.Pid}}");

    // Created, not started: the core is already taken from the shared containers.
    d.ok(&[
        "create",
        "--name",
        "ex",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(inspect(&d, "ex", "{{.HostConfig.CpusetCpus}}"), "1");
    assert_eq!(inspect(&d, "ex", "{{.HostConfig.CpusetMems}}"), "0");
    assert_eq!(cpuset(&d, "s1"), "0", "s1 shrank live");
    assert_eq!(
        inspect(&d, "s1", "{{.State.Pid}}"),
        s1_pid,
        "s1 kept running"
    );
    d.ok(&["start", "ex"]);
    assert_eq!(cpuset(&d, "ex"), "1");
    d.ok(&["run", "-d", "--name", "s2", "bb:test", "sleep", "1000"]);
    assert_eq!(cpuset(&d, "s2"), "0");

    // Naming its core is refused; naming the other one is fine.
    for list in ["1", "0-1"] {
        let e = d.fails(&["create", "--cpuset-cpus", list, "bb:test", "true"]);
        assert!(
            e.contains(&format!(
                "cpuset {list} overlaps the exclusive cores of container ex (1)"
            )),
            "{e}"
        );
    }
    // docker update is held to the same rule, and an exclusive container keeps its core.
    let e = d.fails(&["update", "--cpuset-cpus", "0-1", "s2"]);
    assert!(
        e.contains("cpuset 0-1 overlaps the exclusive cores of container ex (1)"),
        "{e}"
    );
    assert_eq!(cpuset(&d, "s2"), "0", "nothing changed");
    let e = d.fails(&["update", "--cpuset-cpus", "0", "ex"]);
    assert!(e.contains("ex"), "{e}");
    assert_eq!(cpuset(&d, "ex"), "1");
    // The last core cannot go: the shared containers would have none.
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("berth.cpus.exclusive=1: it would leave no CPU for the containers without exclusive cores (online: 0-1, reserved: none, held exclusively: 1, asked for: 0)"),
        "{e}"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "p0",
        "--cpuset-cpus",
        "0",
        "bb:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(cpuset(&d, "p0"), "0");

    // Bad requests: 400, clear, nothing allocated. CPU 0 is in p0's cpuset now, so no
    // core is free at all.
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains(
            "berth.cpus.exclusive=1: not enough free CPU cores: 1 wanted, 0 of 2 free \
             (0 reserved with --reserved-cpus, 1 held exclusively by other containers, \
             1 in other containers' --cpuset-cpus)"
        ),
        "{e}"
    );
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=two",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains(
            "invalid berth.cpus.exclusive value \"two\": want a positive whole number of cores"
        ),
        "{e}"
    );
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=1",
        "--cpuset-cpus",
        "0",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("conflicting options: --label berth.cpus.exclusive and --cpuset-cpus"),
        "{e}"
    );
    let resp = raw_create(
        &d,
        r#"{"Image":"bb:test","Cmd":["true"],"Labels":{"berth.cpus.exclusive":"0"}}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("want a positive whole number of cores"),
        "{resp}"
    );
    let resp = raw_create(
        &d,
        r#"{"Image":"bb:test","Cmd":["true"],"HostConfig":{"CpusetCpus":"1"}}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(
        d.ok(&["ps", "-aq"]).lines().count(),
        4,
        "nothing was created"
    );

    // Removal returns the core: the shared containers grow back onto it, live.
    d.ok(&["rm", "-f", "ex"]);
    wait_cpuset(&d, "s1", "0-1");
    assert_eq!(cpuset(&d, "s2"), "0-1");
    assert_eq!(cpuset(&d, "p0"), "0", "a named cpuset is left alone");
    assert_eq!(inspect(&d, "s1", "{{.State.Pid}}"), s1_pid);

    // p0 names CPU 0: a new allocation takes the other core.
    d.ok(&[
        "create",
        "--name",
        "ex2",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert_eq!(inspect(&d, "ex2", "{{.HostConfig.CpusetCpus}}"), "1");
    assert_eq!(cpuset(&d, "s1"), "0");
    // A create that fails after the allocation (the name is taken) returns the core.
    d.ok(&["rm", "ex2"]);
    wait_cpuset(&d, "s1", "0-1");
    let e = d.fails(&[
        "create",
        "--name",
        "s1",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("is already in use"), "{e}");
    assert_eq!(cpuset(&d, "s1"), "0-1");
    d.ok(&[
        "create",
        "--name",
        "ex3",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert_eq!(inspect(&d, "ex3", "{{.HostConfig.CpusetCpus}}"), "1");
}

#[test]
fn allocations_survive_a_crash_a_live_upgrade_and_a_crash_inside_create() {
    if !is_root() || !two_core_host() {
        return;
    }
    let mut d = daemon(&[]);
    d.ok(&["run", "-d", "--name", "s1", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ex",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(cpuset(&d, "s1"), "0");
    let refused = |d: &Daemon| {
        let e = d.fails(&[
            "create",
            "--label",
            "berth.cpus.exclusive=1",
            "bb:test",
            "true",
        ]);
        assert!(e.contains("would leave no CPU"), "{e}");
    };

    d.kill9();
    d.spawn();
    assert_eq!(inspect(&d, "ex", "{{.HostConfig.CpusetCpus}}"), "1");
    refused(&d);
    d.ok(&["run", "-d", "--name", "s2", "bb:test", "sleep", "1000"]);
    assert_eq!(
        cpuset(&d, "s2"),
        "0",
        "a new shared container after the crash"
    );

    d.upgrade_ok(&[]);
    refused(&d);
    d.ok(&["rm", "-f", "ex"]);
    wait_cpuset(&d, "s1", "0-1");
    assert_eq!(cpuset(&d, "s2"), "0-1");

    // The worker dies right after allocating, before the container is recorded: the next
    // worker returns the core (else no exclusive core could be had now).
    d.upgrade_ok(&["--fault", "cpus-allocated:exit"]);
    let out = d.docker(&[
        "create",
        "--name",
        "lost",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(
        !out.status.success(),
        "the create should have died with its worker"
    );
    until("a worker to serve again", || {
        d.docker(&["version"]).status.success()
    });
    assert!(d.fails(&["inspect", "lost"]).contains("No such"));
    wait_cpuset(&d, "s1", "0-1");
    d.ok(&[
        "create",
        "--name",
        "ex2",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert_eq!(inspect(&d, "ex2", "{{.HostConfig.CpusetCpus}}"), "1");
}

#[test]
fn a_fake_numa_topology_gets_whole_cores_from_the_best_fitting_node() {
    if !is_root() {
        return;
    }
    // Two nodes of four cores of two threads (node 0: 0-3,8-11; node 1: 4-7,12-15),
    // none of which exist here: containers are created and inspected, never started.
    let sys = tempfile::tempdir().expect("tmp");
    fake::write(sys.path(), &fake::two_by_four_by_two()).expect("fake sysfs");
    let root = sys.path().to_str().expect("utf8");
    let d = daemon(&[("BERTH_SYSFS_ROOT", root), ("BERTH_RESERVED_CPUS", "0,8")]);
    let create = |name: &str, n: &str| {
        d.ok(&[
            "create",
            "--name",
            name,
            "--label",
            &format!("berth.cpus.exclusive={n}"),
            "bb:test",
            "true",
        ]);
        inspect(
            &d,
            name,
            "{{.HostConfig.CpusetCpus}} {{.HostConfig.CpusetMems}}",
        )
    };
    // Node 0 has three free cores (its first is reserved), node 1 four: best fit.
    assert_eq!(create("na", "2"), "2-3,10-11 0");
    assert_eq!(create("nb", "4"), "4-7,12-15 1");
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=2",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("berth.cpus.exclusive=2: not enough free CPU cores: 2 wanted, 1 of 8 free (1 reserved with --reserved-cpus, 6 held exclusively by other containers, 0 in other containers' --cpuset-cpus)"),
        "{e}"
    );
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=1",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("(online: 0-15, reserved: 0,8, held exclusively: 2-7,10-15, asked for: 1,9)"),
        "{e}"
    );
    let e = d.fails(&["create", "--cpuset-cpus", "3", "bb:test", "true"]);
    assert!(
        e.contains("cpuset 3 overlaps the exclusive cores of container na (2-3,10-11)"),
        "{e}"
    );
    d.ok(&["rm", "na", "nb"]);
    let e = d.fails(&[
        "create",
        "--label",
        "berth.cpus.exclusive=8",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("8 wanted, 7 of 8 free (1 reserved"), "{e}");
    // No node has five free cores: all of node 1, then the top core of node 0.
    assert_eq!(create("nc", "5"), "3-7,11-15 0-1");
    assert_eq!(create("nd", "1"), "2,10 0");
}

#[test]
fn a_reservation_of_offline_cpus_stops_the_daemon_at_start() {
    let sys = tempfile::tempdir().expect("tmp");
    fake::write(sys.path(), &fake::uneven()).expect("fake sysfs");
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--reserved-cpus", "8-12", "--sysfs-root"])
        .arg(sys.path())
        .args(["--data-root"])
        .arg(sys.path().join("d"))
        .args(["-H"])
        .arg(format!("unix://{}", sys.path().join("s.sock").display()))
        .output()
        .expect("run berthd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("invalid --reserved-cpus 8-12: CPU 10-12 is not online (online: 0-9)"),
        "{err}"
    );
    assert!(!sys.path().join("s.sock").exists(), "it listened");
}
