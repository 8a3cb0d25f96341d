//! The daemon binary itself: `-H fd://` with a socket passed the way systemd passes it,
//! `--pidfile`, `--config-file`, and two daemons side by side.

mod common;
use common::{is_root, Daemon};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn docker_version(sock: &std::path::Path) -> Option<String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn systemd_socket_activation_pidfile_and_config_file() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("bt")
        .tempdir_in("/tmp")
        .expect("tmp");
    let sock = tmp.path().join("act.sock");
    // The "systemd" side: bind and listen before the daemon exists.
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let cfg = tmp.path().join("daemon.json");
    let pidfile = tmp.path().join("berthd.pid");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"data-root":"{0}/d","exec-root":"{0}/x","bridge":"btact0","bip":"10.199.7.1/24","nft-table":"btact","pidfile":"{1}","log-opts":{{"max-size":"1m"}}}}"#,
            tmp.path().display(),
            pidfile.display()
        ),
    )
    .expect("config");
    let lfd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ names the daemon, as systemd does.
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 exec {} -H fd:// --config-file {}",
            env!("CARGO_BIN_EXE_berthd"),
            cfg.display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("log")).expect("log"));
    // SAFETY: only dup2/fcntl (async-signal-safe) between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC: clear it explicitly then.
            let r = if lfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(lfd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Kill(cmd.spawn().expect("spawn"));
    let pid = child.0.id();
    // Connections made before the daemon accepts wait in the backlog, none is refused.
    let early = std::os::unix::net::UnixStream::connect(&sock).expect("connect before ready");
    drop(early);
    wait_for("daemon on the passed socket", || {
        docker_version(&sock).is_some()
    });
    assert_eq!(docker_version(&sock).as_deref(), Some("1.41"));
    let written = std::fs::read_to_string(&pidfile).expect("pidfile");
    assert_eq!(written.trim(), pid.to_string());
    let root = Command::new("docker")
        .args(["info", "--format", "{{.DockerRootDir}}"])
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output()
        .expect("info");
    assert_eq!(
        String::from_utf8_lossy(&root.stdout).trim(),
        tmp.path().join("d").display().to_string()
    );
    drop(child);
    let _ = Command::new("ip").args(["link", "del", "btact0"]).status();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "btact"])
        .status();
    let _ = nix::mount::umount2(
        &tmp.path().join("x/netns"),
        nix::mount::MntFlags::MNT_DETACH,
    );
}

#[test]
fn two_daemons_side_by_side_do_not_see_each_other() {
    if !is_root() {
        return;
    }
    let a = Daemon::start();
    let b = Daemon::start();
    a.import_busybox("only-a:1");
    a.ok(&["create", "--name", "in-a", "only-a:1", "true"]);
    assert_eq!(b.ok(&["images", "-q"]), "");
    assert_eq!(b.ok(&["ps", "-aq"]), "");
    assert_ne!(
        a.ok(&["info", "--format", "{{.ID}}"]),
        b.ok(&["info", "--format", "{{.ID}}"])
    );
    // A second daemon on a live socket refuses to start instead of stealing it.
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("-H")
        .arg(a.host())
        .arg("--data-root")
        .arg(b.path("other-d"))
        .arg("--exec-root")
        .arg(b.path("other-x"))
        .output()
        .expect("run berthd");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.ok(&["ps", "-aq"]).len(), 12);
}
