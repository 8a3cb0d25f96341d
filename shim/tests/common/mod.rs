//! Test harness: a busybox bundle, a shim spawned with a readiness pipe on fd 3, a control
//! client over the seqpacket transport, and guards that remove every process, cgroup and
//! temp dir the test created, even when it fails.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use berth_api::shim::{
    LogConfig, ShimConfig, ShimReady, ShimRequest, ShimResponse, SHIM_PROTOCOL_VERSION,
};
use berth_api::transport;
use libcontainer::oci_spec::runtime::{LinuxNamespaceType, RootBuilder, Spec};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the kernel-level tests can run here.
pub fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/bin/busybox").exists();
    if !ok {
        eprintln!("skipping: needs root and /bin/busybox (apt-get install busybox-static)");
    }
    ok
}

/// Options of one test container.
#[derive(Clone, Default)]
pub struct Opts {
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub max_size: Option<u64>,
    pub max_file: u32,
    pub no_log: bool,
    pub memory_limit: Option<i64>,
    pub cwd: Option<String>,
}

/// One container under a shim, cleaned up on drop.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cfg: ShimConfig,
    pub cgroup_parent: String,
    pub child: Option<Child>,
    pub ready: ShimReady,
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), t)
}

fn make_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for app in ["sh", "echo", "cat", "sleep", "ls", "id", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app))?;
    }
    Ok(())
}

impl Fixture {
    /// Builds the bundle and config and spawns the shim; waits for its readiness line.
    pub fn start(args: &[&str], opts: Opts) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bs").tempdir_in("/tmp")?;
        let suffix = rand_suffix();
        let id = format!("c{suffix}");
        let cgroup_parent = format!("berth-shimtest-{suffix}");
        let bundle = dir.path().join("b");
        make_rootfs(&bundle.join("rootfs"))?;
        let mut spec = Spec::default();
        spec.set_root(Some(
            RootBuilder::default()
                .path(bundle.join("rootfs"))
                .readonly(false)
                .build()?,
        ));
        if let Some(p) = spec.process_mut() {
            p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
            p.set_terminal(Some(opts.tty));
            if let Some(cwd) = &opts.cwd {
                p.set_cwd(PathBuf::from(cwd));
            }
        }
        if let Some(l) = spec.linux_mut() {
            l.set_cgroups_path(Some(PathBuf::from(format!("/{cgroup_parent}/{id}"))));
            if let Some(limit) = opts.memory_limit {
                let mut res = l.resources().clone().unwrap_or_default();
                let mut mem = (*res.memory()).unwrap_or_default();
                mem.set_limit(Some(limit));
                res.set_memory(Some(mem));
                l.set_resources(Some(res));
            }
            let ns = l.namespaces().clone().unwrap_or_default();
            l.set_namespaces(Some(
                ns.into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect(),
            ));
        }
        spec.save(bundle.join("config.json"))?;
        let shim_dir = dir.path().join("s");
        std::fs::create_dir_all(&shim_dir)?;
        let cfg = ShimConfig {
            version: SHIM_PROTOCOL_VERSION,
            id,
            bundle,
            runtime_root: dir.path().join("rt"),
            ctl_socket: shim_dir.join("ctl"),
            exit_file: shim_dir.join("exit.json"),
            log: (!opts.no_log).then(|| LogConfig {
                path: dir.path().join("c-json.log"),
                max_size: opts.max_size,
                max_file: opts.max_file.max(1),
            }),
            tty: opts.tty,
            open_stdin: opts.open_stdin,
            stdin_once: opts.stdin_once,
            shim_log: shim_dir.join("shim.log"),
        };
        let cfg_path = shim_dir.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
        let mut fx = Fixture {
            dir,
            cfg,
            cgroup_parent,
            child: None,
            ready: ShimReady {
                pid: None,
                error: None,
            },
        };
        let (r, w) = nix::unistd::pipe()?;
        let child = spawn_shim(&cfg_path, w.as_raw_fd())?;
        drop(w);
        fx.child = Some(child);
        let mut line = String::new();
        BufReader::new(std::fs::File::from(r)).read_line(&mut line)?;
        fx.ready = serde_json::from_str(line.trim()).with_context(|| format!("ready {line:?}"))?;
        Ok(fx)
    }

    /// The init pid (fails when the shim reported an error).
    pub fn pid(&self) -> Result<i32> {
        self.ready
            .pid
            .ok_or_else(|| anyhow!("shim not ready: {:?}", self.ready.error))
    }

    /// A new control connection after the hello.
    pub fn connect(&self) -> Result<Ctl> {
        let fd = transport::connect(&self.cfg.ctl_socket)?;
        let ctl = Ctl { fd };
        match ctl.call(&ShimRequest::Hello {
            version: SHIM_PROTOCOL_VERSION,
        })? {
            ShimResponse::Hello { .. } => Ok(ctl),
            other => bail!("hello answered with {other:?}"),
        }
    }

    /// The json-file log's current contents.
    pub fn log_text(&self) -> String {
        self.cfg
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(&l.path).ok())
            .unwrap_or_default()
    }

    /// Waits for the shim process to exit; its status code.
    pub fn wait_shim_exit(&mut self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("no shim")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                bail!("shim did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The shim's own log, for failure messages.
    pub fn shim_log(&self) -> String {
        std::fs::read_to_string(&self.cfg.shim_log).unwrap_or_default()
    }
}

#[allow(unsafe_code)]
fn spawn_shim(cfg_path: &Path, ready_w: RawFd) -> Result<Child> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-shim"));
    cmd.arg("--config")
        .arg(cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if ready_w == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(ready_w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn kill_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            kill_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SHIM_TEST_LOG").is_some() {
            eprintln!("--- shim log ---\n{}", self.shim_log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                kill_cgroup_tree(&c.path().join(&self.cgroup_parent));
            }
        }
    }
}

/// A control connection.
pub struct Ctl {
    pub fd: OwnedFd,
}

impl Ctl {
    /// Sends a request and reads one response.
    pub fn call(&self, req: &ShimRequest) -> Result<ShimResponse> {
        self.call_fds(req, &[])
    }

    /// Sends a request with fds and reads one response.
    pub fn call_fds(&self, req: &ShimRequest, fds: &[RawFd]) -> Result<ShimResponse> {
        transport::send(self.fd.as_fd(), req, fds)?;
        self.recv()
    }

    /// Reads one packet (with a timeout).
    pub fn recv(&self) -> Result<ShimResponse> {
        let tv = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        let (m, _) = transport::recv::<ShimResponse>(self.fd.as_fd())?
            .ok_or_else(|| anyhow!("shim closed the connection"))?;
        Ok(m)
    }

    /// Hands one end of a fresh socket pair over with `req`; returns the other end.
    pub fn hand_over(&self, req: &ShimRequest) -> Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let resp = self.call_fds(req, &[theirs.as_raw_fd()])?;
        if resp != ShimResponse::Ok && !matches!(resp, ShimResponse::ExecStarted { .. }) {
            bail!("hand-over refused: {resp:?}");
        }
        ours.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(ours)
    }
}

/// Reads until the peer closes.
pub fn read_all(s: &mut UnixStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).context("read stream to end")?;
    Ok(out)
}

/// Splits a multiplexed stream into (stream id, payload) frames.
pub fn frames(mut data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 8 {
            bail!("truncated frame header {data:?}");
        }
        let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        if data.len() < 8 + len {
            bail!("truncated frame");
        }
        out.push((data[0], data[8..8 + len].to_vec()));
        data = &data[8 + len..];
    }
    Ok(out)
}

/// Concatenated payload of one stream id.
pub fn stream_text(fr: &[(u8, Vec<u8>)], id: u8) -> String {
    let bytes: Vec<u8> = fr
        .iter()
        .filter(|(s, _)| *s == id)
        .flat_map(|(_, p)| p.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Decodes a chunked body into its chunks; checks the terminating chunk.
pub fn chunks(mut data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let pos = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..pos])?, 16)?;
        data = &data[pos + 2..];
        if size == 0 {
            if data != b"\r\n" {
                bail!("bad last chunk {data:?}");
            }
            return Ok(out);
        }
        out.push(data[..size].to_vec());
        data = &data[size + 2..];
    }
}

/// Polls `f` until it holds or the timeout passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
