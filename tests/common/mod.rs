//! Shared helpers for integration tests: a `berthd` started for one test in its own temp
//! data root, exec root and socket, killed and cleaned up on drop; the real `docker` CLI
//! pointed at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running daemon owned by one test.
pub struct Daemon {
    /// The API socket.
    pub sock: PathBuf,
    /// The temp directory holding data root, exec root and socket (removed on drop).
    pub root: tempfile::TempDir,
    /// The daemon process.
    pub child: Child,
}

impl Daemon {
    /// Starts `berthd` and waits until `_ping` answers (panics after 20 s).
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Like [`Daemon::start`], with extra daemon flags.
    pub fn start_with(extra: &[&str]) -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir()
            .expect("create temp dir");
        let sock = root.path().join("s.sock");
        let log = std::fs::File::create(root.path().join("berthd.log")).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("--data-root")
            .arg(root.path().join("data"))
            .arg("--exec-root")
            .arg(root.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(extra)
            .env("BERTH_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        let d = Daemon { sock, root, child };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.sock.exists() && std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                let out = self.docker(&["version", "--format", "{{.Server.APIVersion}}"]);
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("berthd did not come up; log:\n{}", self.log());
    }

    /// `DOCKER_HOST` for this daemon.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd(args).output().expect("run docker")
    }

    /// A docker CLI command against this daemon (for stdin or cwd tweaks).
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.root.path().join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        c
    }

    /// Runs docker and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs docker and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("berthd.log")).unwrap_or_default()
    }

    /// A path inside this test's temp directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a small busybox root filesystem tar to `dest` (installs busybox-static if needed).
pub fn busybox_rootfs_tar(dest: &Path) {
    if !Path::new("/bin/busybox").exists() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status();
    }
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox");
    let mut b = tar::Builder::new(std::fs::File::create(dest).expect("create rootfs tar"));
    let dir = |b: &mut tar::Builder<std::fs::File>, p: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, p, std::io::empty()).expect("dir");
    };
    dir(&mut b, "bin/");
    dir(&mut b, "etc/");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bb[..])
        .expect("busybox");
    for applet in ["sh", "ls", "cat", "echo"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(6);
    b.append_data(&mut h, "etc/hostname", &b"berth\n"[..])
        .expect("hostname");
    b.finish().expect("finish rootfs tar");
}
