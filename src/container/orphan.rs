//! Containers whose shim died while they run (the shim was killed): the container keeps
//! running, unmonitored. Its init is re-parented to the master (the child subreaper of
//! every shim), which reaps it and records the exact exit status
//! ([`super::reaped`]). The worker holds a pidfd of the init to notice the exit and to
//! signal it for stop, kill and remove; on the exit it records the master's status and
//! time. Only when no record comes (the master was killed too, so another process reaped
//! the init) is the exit recorded as status unknown: code 255, as dockerd reports a lost
//! task, with `State.Error` saying so. Output written after the shim died is not logged.

use super::pending::answer_wait;
use super::reaped::{exit_code, wait_budget, wait_reaped};
use super::record::Status;
use super::{now_ns, Containers};
use crate::error::{ApiError, ApiResult};
use crate::master::reap::{forget_reaped, Reaped};
use berth_api::shim::{ExitRecord, ShimRequest, WaitCondition};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// `State.Error` of a container that runs without its shim.
pub const UNMONITORED: &str =
    "the container's shim exited while the container runs: its output is no longer logged";

/// `State.Error` after such a container exited (or was found gone) and nobody recorded
/// its status.
pub const EXIT_UNKNOWN: &str =
    "the container's shim exited before the container: exit status unknown";

/// Code recorded for an exit whose status nobody could read (dockerd's for a lost task).
pub const UNKNOWN_CODE: i32 = 255;

/// pidfds of the containers that run without a shim.
#[derive(Default)]
pub struct Orphans {
    map: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

impl Orphans {
    fn get(&self, id: &str) -> Option<Arc<OwnedFd>> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).cloned()
    }

    fn insert(&self, id: &str, fd: Arc<OwnedFd>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(id.to_string(), fd);
    }

    fn remove(&self, id: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(id);
    }

    /// Whether the container runs without its shim.
    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }
}

/// `pidfd_open(2)`.
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; on success it returns a new fd that
    // nothing else owns.
    #[allow(unsafe_code)]
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd refers to.
fn pidfd_signal(fd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: a plain syscall on an fd we own, with a null siginfo.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `pid` lives in a cgroup of container `id` (so it is the container's process
/// and not an unrelated one that got a recycled pid).
fn in_container_cgroup(pid: i32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.contains(id)))
}

impl Containers {
    /// The shim of a running container is gone. If the container's init still runs, keep
    /// it running and watch it; returns false when it is not running any more.
    pub(crate) fn adopt_orphan(self: &Arc<Self>, id: &str, pid: i32) -> bool {
        if pid <= 0 || !in_container_cgroup(pid, id) {
            return false;
        }
        let fd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%id, pid, error = %e, "pidfd of a container without shim");
                return false;
            }
        };
        // Checked again through the pidfd's process: the pid may have been recycled.
        if !in_container_cgroup(pid, id) {
            return false;
        }
        let fd = Arc::new(fd);
        self.orphans.insert(id, fd.clone());
        let _ = self.update(id, |r| r.state.error = UNMONITORED.into());
        tracing::error!(%id, pid, "the shim is gone but the container runs; watching it without a shim");
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // SAFETY: the Arc keeps the pidfd open and unchanged while the AsyncFd lives.
            #[allow(unsafe_code)]
            let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) };
            match afd {
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(e) => {
                    let e = e.into_parts().1;
                    tracing::error!(%id, error = %e, "watch a container without shim");
                    return;
                }
            }
            // The master's record is awaited before this generation's permission: a
            // generation handing over meanwhile leaves the record to the next one.
            let reaped = me.reaped_exit(&id, pid).await;
            let _bg = me.background().await;
            me.orphans.remove(&id);
            me.record_orphan_exit(&id, pid, reaped).await;
        });
        true
    }

    /// Records the exit of a running container whose shim is gone and whose init is not
    /// running any more: the master's record of it when there is one, else status unknown.
    pub(crate) async fn orphan_exited(self: &Arc<Self>, id: &str, pid: i32) {
        let reaped = self.reaped_exit(id, pid).await;
        self.record_orphan_exit(id, pid, reaped).await;
    }

    /// The master's record of the container's exited init, written since the container
    /// started, waited for as long as one may still come.
    async fn reaped_exit(&self, id: &str, pid: i32) -> Option<Reaped> {
        if pid <= 0 {
            return None;
        }
        let since = self.lookup(id).ok()?.state.started_at_ns;
        let budget = wait_budget(pid);
        wait_reaped(&self.paths.exec_root, pid, since, budget).await
    }

    /// Records the exit (the reaped status and time, or unknown), answers the waits queued
    /// here and applies the usual follow-ups. The master's record goes only once the exit
    /// is stored, so a worker killed in between finds it again.
    async fn record_orphan_exit(self: &Arc<Self>, id: &str, pid: i32, reaped: Option<Reaped>) {
        // Recorded meanwhile (a removal, or another generation), perhaps restarted since.
        match self.lookup(id) {
            Ok(r) if r.state.status.is_live() && r.state.pid == pid => {}
            _ => return,
        }
        let (x, error) = match &reaped {
            Some(r) => {
                let x = ExitRecord {
                    code: exit_code(r),
                    signal: r.signal,
                    oom_killed: false,
                    finished_at_ns: r.time_ns,
                    pid,
                };
                tracing::info!(%id, pid, code = x.code, "exit of a container without shim, as the master reaped it");
                (x, "")
            }
            None => {
                let x = ExitRecord {
                    code: UNKNOWN_CODE,
                    signal: None,
                    oom_killed: false,
                    finished_at_ns: now_ns(),
                    pid,
                };
                tracing::warn!(%id, pid, "a container without shim exited and nobody recorded its status");
                (x, EXIT_UNKNOWN)
            }
        };
        let _ = self.update(id, |r| r.state.error = error.into());
        self.handle_exit(id, &x).await;
        for fd in self.pending.take_waits(id, |c| c != WaitCondition::Removed) {
            answer_wait(fd, x.code, None);
        }
        if reaped.is_some() {
            forget_reaped(&self.paths.exec_root, pid);
        }
    }

    /// Signals a running container: through its shim, or directly when it has none.
    pub(crate) async fn signal_container(&self, id: &str, signal: i32, all: bool) -> ApiResult<()> {
        if let Some(fd) = self.orphans.get(id) {
            return pidfd_signal(&fd, signal).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => ApiError::Conflict(format!("Container {id} is not running")),
                _ => ApiError::internal("signal the container", e),
            });
        }
        self.shim(id)
            .call(ShimRequest::Kill { signal, all }, None)
            .await
            .map(|_| ())
    }

    /// Whether waits on a running container must be queued here (it has no shim).
    pub(crate) fn waits_queue_here(&self, id: &str) -> bool {
        self.orphans.contains(id)
            && self
                .lookup(id)
                .is_ok_and(|r| r.state.status == Status::Running)
    }
}
