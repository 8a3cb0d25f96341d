//! Spawning shims so that they outlive every worker: a double fork into a new session
//! re-parents the shim at once to the nearest subreaper, the master (which reaps it and,
//! should the shim die first, its container's init), and the worker waits only for the
//! shim's readiness report. Nothing here assumes the worker is the shim's parent after the
//! spawn returns.

use crate::error::{ApiError, ApiResult};
use berth_api::shim::ShimReady;
use std::io::BufRead;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a shim may take to create its container.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Spawns `berth-shim --config <config>` detached from the caller and returns the
/// container's init pid once the shim reports it ready (or the shim's error).
pub async fn spawn_shim(binary: &Path, config: &Path) -> ApiResult<i32> {
    let binary = binary.to_path_buf();
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || spawn_blocking(&binary, &config))
        .await
        .map_err(|e| ApiError::internal("shim spawn task", e))?
}

fn spawn_blocking(binary: &Path, config: &Path) -> ApiResult<i32> {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ApiError::internal("readiness pipe", e))?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET");
    // SAFETY: between fork and exec we only call async-signal-safe functions (dup2, setsid,
    // fork, _exit) on fds we own; no allocation or locking happens here.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wr_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Double fork: the intermediate exits at once, the shim is re-parented to the
            // nearest subreaper (the master) or init, never to a worker that may die.
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ApiError::internal(&format!("start {}", binary.display()), e))?;
    drop(wr);
    let _ = child.wait();
    // Read the one-line readiness report. Do not wait for end of file: the container's
    // init is a clone of the shim and holds a copy of fd 3 until it execs at start.
    let file = std::fs::File::from(rd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let r = std::io::BufReader::new(file)
            .read_until(b'\n', &mut line)
            .map(|_| line);
        let _ = tx.send(r);
    });
    let buf = rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| ApiError::Internal("shim did not report readiness in time".into()))?
        .map_err(|e| ApiError::internal("read shim readiness", e))?;
    if buf.is_empty() {
        return Err(ApiError::Internal(
            "shim exited before reporting readiness (see its shim.log)".into(),
        ));
    }
    let ready: ShimReady =
        serde_json::from_slice(&buf).map_err(|e| ApiError::internal("decode shim readiness", e))?;
    match (ready.pid, ready.error) {
        (_, Some(err)) => Err(ApiError::BadRequest(format!(
            "failed to create shim task: OCI runtime create failed: {err}: unknown"
        ))),
        (Some(pid), None) => Ok(pid),
        (None, None) => Err(ApiError::Internal(
            "shim reported neither pid nor error".into(),
        )),
    }
}
