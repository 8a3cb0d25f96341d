//! Exit statuses of containers whose shim died, as the master reaped them. The master is
//! the child subreaper of every shim, so the init of a container whose shim was killed is
//! re-parented to it; the master reaps it and writes `<exec-root>/reaped/<pid>.json`
//! (`crate::master::reap`). The worker waits here for that record (woken by inotify on the
//! directory; the master writes it within milliseconds of the exit) and accepts it only if
//! it was written after the container started: an older record of the same pid belongs to
//! an earlier process that had that pid.

use crate::master::reap::{read_reaped, reaped_dir, Reaped};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long to wait for the record of an exited process the master should reap.
pub const WAIT_MASTER: Duration = Duration::from_secs(2);

/// How long to wait for the record of a process that was reaped already: the master
/// writes the record right after reaping, so only that short gap needs covering.
pub const WAIT_GONE: Duration = Duration::from_millis(250);

/// How long a record of `pid` may be waited for, from who is (or was) its parent: the
/// master (it reaps and records it) → [`WAIT_MASTER`]; reaped already → [`WAIT_GONE`]
/// (by the master, in which case the record is on its way, or by another reaper);
/// another parent (the master that adopted it was killed) → no record will come.
pub fn wait_budget(pid: i32) -> Duration {
    let Some(parent) = parent_of(pid) else {
        return WAIT_GONE;
    };
    if parent == nix::unistd::getppid().as_raw() {
        WAIT_MASTER
    } else {
        Duration::ZERO
    }
}

/// The parent pid of `pid`, `None` when it is gone.
fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// Docker's exit code for a reaped status: the code, or 128 + the signal number.
pub fn exit_code(r: &Reaped) -> i32 {
    match (r.code, r.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => super::orphan::UNKNOWN_CODE,
    }
}

/// The master's record of `pid` written at or after `since_ns` (the container's start),
/// waiting up to `budget` for it to appear.
pub async fn wait_reaped(
    exec_root: &Path,
    pid: i32,
    since_ns: i64,
    budget: Duration,
) -> Option<Reaped> {
    let fresh = || read_reaped(exec_root, pid).filter(|r| r.time_ns >= since_ns);
    if budget.is_zero() {
        return fresh();
    }
    let deadline = tokio::time::Instant::now() + budget;
    // Watching starts before the first look, so a record written in between wakes us.
    let watch = match DirWatch::new(&reaped_dir(exec_root)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "watch the reaped directory; polling it instead");
            None
        }
    };
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(r) = fresh() {
            return Some(r);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        match &watch {
            Some(w) => {
                if let Ok(Err(e)) = tokio::time::timeout_at(deadline, w.changed()).await {
                    tracing::warn!(error = %e, "read the reaped directory's events");
                    tokio::time::sleep_until(deadline.min(now + pause)).await;
                }
            }
            None => {
                tokio::time::sleep_until(deadline.min(now + pause)).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// An inotify instance as a raw fd for [`AsyncFd`].
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Files renamed into (or written in) a directory.
struct DirWatch(AsyncFd<InotifyFd>);

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        // SAFETY: the Inotify owns its fd, which stays open and the same until the
        // AsyncFd (which owns the Inotify) is dropped.
        #[allow(unsafe_code)]
        let afd = unsafe { AsyncFd::register(InotifyFd(ino)) };
        afd.map(DirWatch).map_err(|e| e.into_parts().1)
    }

    /// Waits for the next batch of events and consumes it.
    async fn changed(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|a| a.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(res) => return res.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_record(exec_root: &Path, r: &Reaped) -> std::io::Result<()> {
        let dir = reaped_dir(exec_root);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", r.pid));
        std::fs::write(&tmp, serde_json::to_vec(r)?)?;
        std::fs::rename(tmp, dir.join(format!("{}.json", r.pid)))
    }

    fn rec(pid: i32, time_ns: i64) -> Reaped {
        Reaped {
            pid,
            code: Some(37),
            signal: None,
            time_ns,
            comm: "sh".into(),
        }
    }

    #[test]
    fn codes_follow_docker() {
        let mut r = rec(1, 0);
        assert_eq!(exit_code(&r), 37);
        r.code = None;
        r.signal = Some(libc::SIGKILL);
        assert_eq!(exit_code(&r), 137);
    }

    #[tokio::test]
    async fn a_record_written_while_waiting_wakes_the_wait() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().to_path_buf();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            write_record(&path, &rec(4242, 100))
        });
        let t0 = std::time::Instant::now();
        let got = wait_reaped(root.path(), 4242, 100, Duration::from_secs(10)).await;
        writer.await.map_err(std::io::Error::other)??;
        assert_eq!(got, Some(rec(4242, 100)));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not woken by the write"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_record_older_than_the_start_is_another_process() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        write_record(root.path(), &rec(4243, 100))?;
        let got = wait_reaped(root.path(), 4243, 101, Duration::from_millis(100)).await;
        assert_eq!(got, None);
        let got = wait_reaped(root.path(), 4243, 100, Duration::ZERO).await;
        assert_eq!(got, Some(rec(4243, 100)));
        Ok(())
    }
}
