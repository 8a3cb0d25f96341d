//! Shared integration-test harness: a berthd per test in its own temporary data root,
//! exec root, socket, bridge, subnet, nft table and cgroup parent, driven with the real
//! docker CLI. Everything is torn down on drop, also when the test fails.
#![allow(dead_code)]

pub mod cgroups;
pub mod pty;
pub mod rawapi;
pub mod usernet;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether the tests can touch the kernel (root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A running test daemon.
pub struct Daemon {
    /// Temporary root holding data, exec root and socket.
    pub root: PathBuf,
    /// API socket.
    pub sock: PathBuf,
    /// Bridge device name.
    pub bridge: String,
    /// nft table name.
    pub table: String,
    /// cgroup parent.
    pub cgroup: String,
    /// `--bip`.
    pub bip: String,
    child: Option<Child>,
    /// The API socket when the test holds it (a systemd stand-in), passed as fd 3.
    listener: Option<OwnedFd>,
    /// Extra environment of every berthd started.
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

/// How a test daemon is started (see [`Daemon::start_with`]).
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Bind the API socket in the test with this listen backlog and pass it to every berthd
    /// started as fd 3 with `LISTEN_PID`/`LISTEN_FDS` and `-H fd://`, the way systemd's
    /// socket unit does: the socket outlives the daemon's processes.
    pub socket_backlog: Option<i32>,
    /// Extra environment (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

fn unique() -> (u32, u32) {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    (std::process::id() % 200 + 20, n)
}

impl Daemon {
    /// Starts a daemon with fresh roots.
    pub fn start() -> Daemon {
        let mut d = Daemon::new(Launch::default());
        d.spawn();
        d
    }

    /// Starts a daemon with fresh roots, launched as `launch` says.
    pub fn start_with(launch: Launch) -> Daemon {
        let mut d = Daemon::new(launch);
        d.spawn();
        d
    }

    /// A daemon with fresh roots, not started yet ([`Daemon::spawn`] or
    /// [`Daemon::spawn_unready`] start it).
    pub fn new(launch: Launch) -> Daemon {
        let (p, n) = unique();
        // Short paths: the shim socket path must stay under 108 bytes.
        let tmp = tempfile::Builder::new()
            .prefix("bt")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = tmp.path().to_path_buf();
        let tag = format!("{:x}{:03x}", p, n);
        let mut d = Daemon {
            sock: root.join("s.sock"),
            bridge: format!("bt{tag}"),
            table: format!("bt{tag}"),
            cgroup: format!("/bt{tag}"),
            bip: format!("10.{}.{}.1/24", 100 + (p % 100), n % 250),
            root,
            child: None,
            listener: None,
            env: launch.env,
            _tmp: tmp,
        };
        if let Some(backlog) = launch.socket_backlog {
            let l = std::os::unix::net::UnixListener::bind(&d.sock).expect("bind the API socket");
            // listen(2) again sets the backlog (std binds with its own).
            // SAFETY: listen on a socket this process owns.
            #[allow(unsafe_code)]
            let r = unsafe { libc::listen(l.as_raw_fd(), backlog) };
            assert_eq!(r, 0, "listen: {}", std::io::Error::last_os_error());
            d.listener = Some(OwnedFd::from(l));
        }
        d
    }

    /// (Re)starts berthd on the same roots.
    pub fn spawn(&mut self) {
        self.spawn_unready();
        self.wait_ready();
    }

    /// (Re)starts berthd on the same roots without waiting until it serves (to kill it in
    /// the middle of its start-up).
    pub fn spawn_unready(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("berthd.log"))
            .expect("daemon log");
        let mut cmd = match &self.listener {
            None => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_berthd"));
                c.arg("-H").arg(format!("unix://{}", self.sock.display()));
                c
            }
            Some(l) => systemd_activated(l.as_raw_fd()),
        };
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--data-root")
            .arg(self.root.join("d"))
            .arg("--exec-root")
            .arg(self.root.join("x"))
            .arg("--bridge")
            .arg(&self.bridge)
            .arg("--bip")
            .arg(&self.bip)
            .arg("--nft-table")
            .arg(&self.table)
            .arg("--cgroup-parent")
            .arg(&self.cgroup)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start berthd");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok()
                && self
                    .docker(&["version", "--format", "{{.Server.APIVersion}}"])
                    .status
                    .success()
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("berthd exited during start-up ({st}): {}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "berthd not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("berthd.log")).unwrap_or_default()
    }

    /// `DOCKER_HOST` value.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// A docker CLI command aimed at this daemon.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.root.join("dc"))
            .env_remove("DOCKER_API_VERSION")
            .stdin(Stdio::null());
        c
    }

    /// Runs the docker CLI and returns its output.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run docker")
    }

    /// Runs the docker CLI, asserts success, returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The master's pid, while one started by this test runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The master's live worker processes (its `berthd` children).
    pub fn workers(&self) -> Vec<i32> {
        let Some(master) = self.pid() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let tasks = std::fs::read_dir(format!("/proc/{master}/task"));
        for t in tasks.into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rfind(')')
                    .and_then(|i| stat.get(i + 2..i + 3))
                    .is_some_and(|s| s == "Z");
                if comm.trim() == "berthd" && !zombie {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// kill -9 of the daemon (containers and shims keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Imports the busybox test image as `name`.
    pub fn import_busybox(&self, name: &str) {
        let tar = self.root.join("busybox.tar");
        if !tar.exists() {
            busybox_rootfs_tar(&tar);
        }
        self.ok(&["import", tar.to_str().expect("utf8 path"), name]);
    }

    /// Runs docker, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A path inside this test's temp directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `berthd upgrade --json` with `extra` flags: its output and the parsed report (`Null`
    /// when it printed none).
    #[allow(dead_code)]
    pub fn upgrade(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args(["upgrade", "-H", &self.host(), "--json"])
            .args(extra)
            .output()
            .expect("run berthd upgrade");
        let text = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
        (out, report)
    }

    /// [`Daemon::upgrade`] that must commit; returns the report.
    #[allow(dead_code)]
    pub fn upgrade_ok(&self, extra: &[&str]) -> serde_json::Value {
        let (out, report) = self.upgrade(extra);
        assert!(
            out.status.success() && report["Result"] == "committed",
            "upgrade failed: {report} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        report
    }

    /// The master's pid.
    #[allow(dead_code)]
    pub fn master_pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The worker processes (the master's children that run berthd, not shims).
    #[allow(dead_code)]
    pub fn worker_pids(&self) -> Vec<i32> {
        let m = self.master_pid();
        let children =
            std::fs::read_to_string(format!("/proc/{m}/task/{m}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .map(|e| !e.to_string_lossy().contains("berth-shim"))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// A docker CLI command (alias of [`Daemon::cmd`]).
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        self.cmd(args)
    }
}

/// `sh -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec berthd -H fd:// ...'` with `fd` as fd 3: `exec`
/// keeps the shell's pid, so `LISTEN_PID` names the daemon, as systemd sets it.
fn systemd_activated(fd: std::os::fd::RawFd) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_berthd"))
        .args(["-H", "fd://"]);
    // SAFETY: only fcntl/dup2 (async-signal-safe) between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC: clear it explicitly then.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// A daemon with the busybox image imported as `bb:test`; `None` (test skipped) when not root.
pub fn daemon_with_image() -> Option<Daemon> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    Some(d)
}

/// Polls `f` every 25 ms until it holds; panics after 20 s naming `what`.
pub fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `docker run --rm [opts] bb:test sh -c '{ script; } 2>&1'`: asserts the container ran
/// (whatever the script's own exit status) and returns its trimmed output, stderr folded in.
pub fn sh(d: &Daemon, opts: &[&str], script: &str) -> String {
    let wrapped = format!("{{ {script}\n}} 2>&1");
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["bb:test", "sh", "-c", &wrapped]);
    let out = d.docker(&args);
    assert!(
        out.status.code().is_some_and(|c| c < 125),
        "docker {args:?} did not run ({}): {}\n--- daemon log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&d.log(), 40)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Last `n` lines of a text.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `out`: a rootfs tar with busybox-static and one symlink per applet.
pub fn busybox_rootfs_tar(out: &Path) {
    let rootfs = out.with_extension("root");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "home"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (make deps)");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\nwheel:x:10:user\n",
    )
    .expect("group");
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("tmp mode");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar rootfs");
}

/// SIGKILLs every process in the cgroup `dir` and below, waiting up to 2 s for them to go.
fn kill_cgroup_tree(dir: &Path) {
    fn procs(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    procs(&e.path(), out);
                }
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut pids = Vec::new();
        procs(dir, &mut pids);
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Remove every container (stops shims, releases netns/veths, unmounts).
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let mut args = vec!["rm", "-f"];
            args.extend(ids.split_whitespace());
            if args.len() > 2 {
                let _ = self.docker(&args);
            }
        }
        self.kill9();
        // Containers whose daemon was down (a test that failed after kill9): their
        // processes are in the daemon's cgroup parent, whatever their command line.
        kill_cgroup_tree(
            &Path::new("/sys/fs/cgroup/pids").join(self.cgroup.trim_start_matches('/')),
        );
        // Whatever is left: shims, mounts, links, tables, cgroups.
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.root.to_string_lossy().as_ref())
            .status();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let root = self.root.to_string_lossy().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .stderr(Stdio::null())
            .status();
        for ctl in [
            "memory", "pids", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "systemd",
            "unified", "",
        ] {
            let base = Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(self.cgroup.trim_start_matches('/'));
            if let Ok(rd) = std::fs::read_dir(&base) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&base);
        }
    }
}
