//! The master replaces its own program in place after a committed upgrade: `execve` of the
//! new binary keeps the PID (systemd's MAINPID), the children (worker, shims) and the
//! child-subreaper attribute; the fds it must keep (instance lock, listeners, worker
//! control channels) lose close-on-exec and are named, with the rest of its small state, in
//! an environment variable the new program reads at start (DESIGN "Live upgrade").

use super::{Master, Worker};
use crate::ctl::Channel;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable carrying [`MasterState`] across the exec.
pub const ENV_STATE: &str = "BERTH_MASTER_STATE";

/// What a master hands to the program that replaces it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MasterState {
    lock_fd: RawFd,
    listeners: Vec<RawFd>,
    binary: PathBuf,
    generation: u64,
    active: Option<i32>,
    notified_ready: bool,
    workers: Vec<WorkerState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerState {
    pid: i32,
    generation: u64,
    binary: PathBuf,
    ctl_fd: RawFd,
    store_format: Option<u32>,
    shim_protocol: Option<(u32, u32)>,
}

fn set_cloexec(fd: RawFd, on: bool) {
    let flags = if on {
        nix::fcntl::FdFlag::FD_CLOEXEC
    } else {
        nix::fcntl::FdFlag::empty()
    };
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags));
}

/// Execs `binary` as the new master; returns only if the exec failed (the master then
/// carries on as it was).
pub fn exec(m: &Master, binary: &Path) -> anyhow::Error {
    let state = MasterState {
        lock_fd: m.lock.as_raw_fd(),
        listeners: m.listeners.iter().map(|l| l.as_raw_fd()).collect(),
        binary: binary.to_path_buf(),
        generation: m.generation,
        active: m.active,
        notified_ready: m.notified_ready,
        workers: m
            .workers
            .iter()
            .map(|(pid, w)| WorkerState {
                pid: *pid,
                generation: w.generation,
                binary: w.binary.clone(),
                ctl_fd: w.ctl.raw_fd(),
                store_format: w.store_format,
                shim_protocol: w.shim_protocol,
            })
            .collect(),
    };
    let fds: Vec<RawFd> = std::iter::once(state.lock_fd)
        .chain(state.listeners.iter().copied())
        .chain(state.workers.iter().map(|w| w.ctl_fd))
        .collect();
    let res = (|| -> anyhow::Result<std::convert::Infallible> {
        let json = serde_json::to_string(&state)?;
        let prog = CString::new(binary.as_os_str().as_bytes())?;
        let mut argv = vec![prog.clone()];
        for a in &m.args {
            argv.push(CString::new(a.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == ENV_STATE {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(CString::new(kv)?);
        }
        envp.push(CString::new(format!("{ENV_STATE}={json}"))?);
        for fd in &fds {
            set_cloexec(*fd, false);
        }
        tracing::info!(binary = %binary.display(), "master re-executing in place");
        Ok(nix::unistd::execve(&prog, &argv, &envp)?)
    })();
    for fd in &fds {
        set_cloexec(*fd, true);
    }
    match res {
        Ok(never) => match never {},
        Err(e) => e.context(format!("re-exec the master as {}", binary.display())),
    }
}

/// The state left by the master this process replaced, if any (read once).
pub fn take_state() -> Option<MasterState> {
    let v = std::env::var(ENV_STATE).ok()?;
    std::env::remove_var(ENV_STATE);
    match serde_json::from_str(&v) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "unreadable state from the previous master");
            None
        }
    }
}

impl MasterState {
    /// The instance lock and the listeners, owned again.
    pub fn take_fds(&self) -> (std::fs::File, Vec<OwnedFd>) {
        for fd in std::iter::once(self.lock_fd).chain(self.listeners.iter().copied()) {
            set_cloexec(fd, true);
        }
        // SAFETY: the previous program of this process kept these fds open for us and
        // nothing else in this process owns them.
        #[allow(unsafe_code)]
        unsafe {
            (
                std::fs::File::from_raw_fd(self.lock_fd),
                self.listeners
                    .iter()
                    .map(|fd| OwnedFd::from_raw_fd(*fd))
                    .collect(),
            )
        }
    }

    /// The previous program's binary path (what `berthd upgrade` without `--binary` runs).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Restores the worker table into `m` (inside the runtime: channels register with it).
    pub fn adopt_workers(&self, m: &mut Master) -> anyhow::Result<()> {
        m.generation = self.generation;
        m.active = self.active;
        m.notified_ready = self.notified_ready;
        for w in &self.workers {
            set_cloexec(w.ctl_fd, true);
            // SAFETY: as in `take_fds`.
            #[allow(unsafe_code)]
            let fd = unsafe { OwnedFd::from_raw_fd(w.ctl_fd) };
            let ctl = Arc::new(Channel::new(fd).context("worker control channel")?);
            m.workers.insert(
                w.pid,
                Worker {
                    generation: w.generation,
                    binary: w.binary.clone(),
                    ctl: ctl.clone(),
                    store_format: w.store_format,
                    shim_protocol: w.shim_protocol,
                    // Re-executed masters only follow workers that served already.
                    serving_since: Some(std::time::Instant::now()),
                },
            );
            super::set_worker_pid(w.pid, true);
            m.follow(w.pid, ctl);
        }
        Ok(())
    }
}
