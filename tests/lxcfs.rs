//! lxcfs support (`--lxcfs`): with lxcfs serving, a container's `/proc/meminfo`,
//! `/proc/cpuinfo` and `/sys/devices/system/cpu/online` show its limits; a restart of lxcfs
//! is repaired in running containers (also by the worker of a live upgrade; a container
//! that cannot be repaired does not hold the others up); a container
//! started while lxcfs is not mounted starts without its files and gets them when lxcfs
//! comes up. Each test runs its own lxcfs on a private mount point.

mod common;

use common::{until, Daemon, Launch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An lxcfs of this test, mounted on a private directory; killed and unmounted on drop.
struct Lxcfs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    child: Option<Child>,
}

impl Lxcfs {
    /// A mount point for lxcfs, nothing mounted yet; `None` (test skipped) without lxcfs.
    fn new() -> Option<Lxcfs> {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        if Command::new("lxcfs").arg("--version").output().is_err() {
            eprintln!("skipped: the lxcfs binary is not installed (make deps installs it)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lx")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        Some(Lxcfs {
            dir,
            mnt,
            child: None,
        })
    }

    /// Starts lxcfs (CPU views from the CFS quota) and waits until it answers.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lxcfs.log"))
            .expect("lxcfs log");
        let child = Command::new("lxcfs")
            .args(["-f", "-l", "--enable-cfs", "-p"])
            .arg(self.dir.path().join("lxcfs.pid"))
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start lxcfs");
        self.child = Some(child);
        until("lxcfs serves", || {
            self.mounted() && std::fs::read_to_string(self.mnt.join("proc/meminfo")).is_ok()
        });
    }

    /// Whether the top mount at the mount point is lxcfs.
    fn mounted(&self) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mnt = self.mnt.to_string_lossy();
        info.lines()
            .rfind(|l| l.split(' ').nth(4) == Some(&*mnt))
            .is_some_and(|l| l.contains(" - fuse.lxcfs "))
    }

    /// kill -9: the mount stays behind, answering ENOTCONN, as after an lxcfs crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What a service manager does around a restart: kill, unmount the dead mount, start.
    fn restart(&mut self) {
        self.kill();
        self.unmount();
        self.start();
    }

    fn unmount(&self) {
        for _ in 0..4 {
            if nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        self.kill();
        self.unmount();
    }
}

/// A daemon started with `--lxcfs <mnt>` (through its environment variable) and the busybox
/// image.
fn daemon(lxcfs: &Path) -> Daemon {
    let d = Daemon::start_with(Launch {
        env: vec![("BERTH_LXCFS".into(), lxcfs.to_string_lossy().into_owned())],
        ..Default::default()
    });
    d.import_busybox("bb:test");
    d
}

/// [`until`] that shows the daemon's log when it times out.
fn until_d(d: &Daemon, what: &str, f: impl FnMut() -> bool) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| until(what, f))).is_err() {
        let log: Vec<String> = d
            .log()
            .lines()
            .filter(|l| !l.contains("server::router"))
            .map(String::from)
            .collect();
        panic!(
            "timed out waiting for {what}\n--- daemon log (no requests) ---\n{}",
            common::tail(&log.join("\n"), 60)
        );
    }
}

/// The `MemTotal` (kB) of a meminfo text.
fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn host_mem_total() -> u64 {
    mem_total(&std::fs::read_to_string("/proc/meminfo").expect("host meminfo")).expect("MemTotal")
}

/// `MemTotal` inside a running container, `None` when the read fails (ENOTCONN).
fn exec_mem_total(d: &Daemon, name: &str) -> Option<u64> {
    let out = d.docker(&["exec", name, "cat", "/proc/meminfo"]);
    out.status
        .success()
        .then(|| mem_total(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

#[test]
fn proc_files_show_the_containers_limits() {
    let Some(mut lx) = Lxcfs::new() else { return };
    lx.start();
    let d = daemon(&lx.mnt);
    let total = |opts: &[&str]| mem_total(&common::sh(&d, opts, "cat /proc/meminfo"));
    assert_eq!(total(&["-m", "256m"]), Some(262_144));
    assert_eq!(total(&[]), Some(host_mem_total()), "no limit: the host's");
    assert_eq!(
        total(&["-m", "256m", "--label", "berth.lxcfs=false"]),
        Some(host_mem_total()),
        "opted out"
    );
    assert_eq!(total(&["-m", "192m", "--read-only"]), Some(196_608));
    assert_eq!(total(&["-m", "160m", "--privileged"]), Some(163_840));

    let cpus = |opts: &[&str]| {
        common::sh(
            &d,
            opts,
            "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online",
        )
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if host_cpus >= 2 {
        assert_eq!(cpus(&["--cpus", "1"]), "1\n0", "one CPU of quota");
        assert_eq!(cpus(&["--cpuset-cpus", "1"]), "1\n0", "one CPU in the set");
        assert_eq!(
            cpus(&[]),
            format!("{host_cpus}\n0-{}", host_cpus - 1),
            "no limit: the host's CPUs"
        );
    } else {
        eprintln!("CPU views not checked: the host has one CPU");
    }
}

#[test]
fn an_lxcfs_restart_is_repaired_in_running_containers_also_after_an_upgrade() {
    let Some(mut lx) = Lxcfs::new() else { return };
    lx.start();
    let d = daemon(&lx.mnt);
    d.ok(&[
        "run", "-d", "--name", "lx1", "-m", "128m", "bb:test", "sleep", "600",
    ]);
    d.ok(&["run", "-d", "--name", "lx2", "bb:test", "sleep", "600"]);
    assert_eq!(exec_mem_total(&d, "lx1"), Some(131_072));
    // One that cannot be repaired: it hid /proc under a tmpfs of its own.
    let lx3 = d.ok(&[
        "run",
        "-d",
        "--name",
        "lx3",
        "--privileged",
        "bb:test",
        "sh",
        "-c",
        "mount -t tmpfs t /proc && exec sleep 600",
    ]);
    until_d(&d, "lx3 hides /proc", || {
        exec_mem_total(&d, "lx3").is_none()
    });

    lx.kill();
    let err = d.fails(&["exec", "lx1", "cat", "/proc/meminfo"]);
    assert!(
        err.contains("Transport endpoint is not connected"),
        "a dead lxcfs breaks the bound files: {err}"
    );
    lx.unmount();
    lx.start();
    until_d(&d, "lx1 reads its meminfo again", || {
        exec_mem_total(&d, "lx1") == Some(131_072)
    });
    until_d(&d, "lx2 reads its meminfo again", || {
        exec_mem_total(&d, "lx2") == Some(host_mem_total())
    });
    assert!(d.log().contains("lxcfs files re-attached"), "{}", d.log());
    until_d(&d, "the failed repair of lx3 is logged", || {
        d.log()
            .lines()
            .any(|l| l.contains("re-attach lxcfs files failed") && l.contains(&lx3))
    });
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "lx3"]),
        "true"
    );
    // The repair put the new file in place of the old one (one mount, not a stack).
    let mounts = d.ok(&["exec", "lx1", "cat", "/proc/self/mountinfo"]);
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.contains(" /proc/meminfo "))
            .count(),
        1,
        "{mounts}"
    );

    d.upgrade_ok(&["--probation-ms", "100"]);
    lx.restart();
    until_d(&d, "lx1 is repaired by the new worker", || {
        exec_mem_total(&d, "lx1") == Some(131_072)
    });
    // Containers started by the new worker get the files too.
    assert_eq!(
        mem_total(&common::sh(&d, &["-m", "64m"], "cat /proc/meminfo")),
        Some(65_536)
    );
}

#[test]
fn without_lxcfs_containers_start_and_get_its_files_when_it_comes_up() {
    let Some(mut lx) = Lxcfs::new() else { return };
    // --lxcfs names a plain directory: nothing is mounted there yet.
    let d = daemon(&lx.mnt);
    d.ok(&[
        "run", "-d", "--name", "early", "-m", "256m", "bb:test", "sleep", "600",
    ]);
    assert_eq!(
        exec_mem_total(&d, "early"),
        Some(host_mem_total()),
        "started without lxcfs's files"
    );
    let warning = format!(
        "lxcfs is not mounted at {}: nothing is mounted there",
        lx.mnt.display()
    );
    assert!(d.log().contains(&warning), "{}", d.log());

    lx.start();
    until_d(&d, "the running container gets lxcfs's meminfo", || {
        exec_mem_total(&d, "early") == Some(262_144)
    });
    d.ok(&["restart", "-t", "0", "early"]);
    assert_eq!(exec_mem_total(&d, "early"), Some(262_144), "bound at start");
}
