//! The master is the child subreaper of every shim (they are double-forked by workers) and,
//! when a shim dies before its container, of the container's init. It reaps them all:
//! workers' exits are reported to the master loop; a reaped process that is neither a
//! worker nor a shim is a container init whose shim is gone, and its exact exit status is
//! written to `<exec-root>/reaped/<pid>.json` for the worker to record (DESIGN invariant 3;
//! research/hot-restart.md §6.4 "second line").

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The exit of a process the master reaped that was not its own worker or a shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reaped {
    /// The process id.
    pub pid: i32,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// Wall-clock time of the reap, ns since the epoch.
    pub time_ns: i64,
    /// `comm` of the process.
    pub comm: String,
}

/// Where reaped records go.
pub fn reaped_dir(exec_root: &Path) -> PathBuf {
    exec_root.join("reaped")
}

/// Reads the record of `pid`, if the master reaped it.
pub fn read_reaped(exec_root: &Path, pid: i32) -> Option<Reaped> {
    let data = std::fs::read(reaped_dir(exec_root).join(format!("{pid}.json"))).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Removes the record of `pid` once it was recorded.
pub fn forget_reaped(exec_root: &Path, pid: i32) {
    let _ = std::fs::remove_file(reaped_dir(exec_root).join(format!("{pid}.json")));
}

/// Reaps every exited child; returns the workers among them with their status text.
pub fn reap_all(exec_root: &Path, workers: &HashSet<i32>) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let pid = match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(st) => match st.pid() {
                Some(p) => p,
                None => break,
            },
        };
        // Still a zombie: its comm is readable before the reap.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(s) => s,
            Err(_) => continue,
        };
        let (code, signal) = match status {
            WaitStatus::Exited(_, c) => (Some(c), None),
            WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
            _ => continue,
        };
        let text = match (code, signal) {
            (Some(c), _) => format!("exit status {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => String::new(),
        };
        if workers.contains(&pid.as_raw()) {
            out.push((pid.as_raw(), text));
        } else if comm != "berth-shim" {
            record(exec_root, pid, code, signal, comm);
        }
    }
    out
}

fn record(exec_root: &Path, pid: Pid, code: Option<i32>, signal: Option<i32>, comm: String) {
    let rec = Reaped {
        pid: pid.as_raw(),
        code,
        signal,
        time_ns: crate::container::now_ns(),
        comm,
    };
    let dir = reaped_dir(exec_root);
    let res = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", rec.pid));
        std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default())?;
        std::fs::rename(&tmp, dir.join(format!("{}.json", rec.pid)))
    })();
    match res {
        Ok(()) => {
            tracing::info!(pid = rec.pid, code, signal, comm = %rec.comm, "reaped a container whose shim was gone")
        }
        Err(e) => tracing::error!(pid = rec.pid, error = %e, "write the reaped record"),
    }
}
