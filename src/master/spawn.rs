//! Starting worker generations: the control socket becomes fd 3 and the listening sockets
//! fds 4.. of the new process, which dies with the master (`PR_SET_PDEATHSIG`) and, as a
//! successor, warms up at low CPU priority so that it cannot slow the generation serving.

use crate::ctl::{self, Channel};
use anyhow::Context;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// How a worker starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens the store and serves at once.
    Worker,
    /// Warms up and waits for `TakeOver`.
    Successor,
}

/// A started worker process.
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// The master's end of its control channel.
    pub ctl: Channel,
}

/// Niceness of a successor while it warms up.
const SUCCESSOR_NICE: i32 = 10;

/// Starts `binary` with the daemon's own arguments as a worker of `generation`.
pub fn spawn_worker(
    binary: &Path,
    args: &[OsString],
    listeners: &[OwnedFd],
    generation: u64,
    role: Role,
    fault: Option<&str>,
) -> anyhow::Result<Spawned> {
    let (master_end, worker_end) = Channel::pair().context("control socketpair")?;
    // Park every fd the child needs above the targets, so that the dup2 calls in the child
    // cannot overwrite one another.
    let mut sources: Vec<OwnedFd> = Vec::new();
    for fd in std::iter::once(&worker_end).chain(listeners.iter()) {
        let high = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))
            .context("duplicate an fd for the worker")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        #[allow(unsafe_code)]
        sources.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(high) });
    }
    let raw: Vec<RawFd> = sources.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env(
            ctl::ENV_ROLE,
            if role == Role::Worker {
                "worker"
            } else {
                "successor"
            },
        )
        .env(ctl::ENV_GENERATION, generation.to_string())
        .env(ctl::ENV_LISTENERS, listeners.len().to_string())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    match fault {
        Some(f) => cmd.env(ctl::ENV_FAULT, f),
        None => cmd.env_remove(ctl::ENV_FAULT),
    };
    let nice = if role == Role::Successor {
        SUCCESSOR_NICE
    } else {
        0
    };
    // SAFETY: only async-signal-safe calls (dup2, prctl, setpriority) on fds we own.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, ctl::CTL_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if nice != 0 {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start worker {}", binary.display()))?;
    drop(sources);
    drop(worker_end);
    let pid = child.id() as i32;
    // The master reaps workers through its SIGCHLD loop, not through `Child`.
    std::mem::forget(child);
    Ok(Spawned {
        pid,
        ctl: Channel::new(master_end).context("control channel")?,
    })
}
