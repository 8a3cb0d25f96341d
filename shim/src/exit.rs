//! Exit bookkeeping: wait statuses to Docker exit codes, the OOM flag from the cgroup, and the
//! atomic exit record (invariant 3).

use berth_api::shim::ExitRecord;
use nix::sys::wait::WaitStatus;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A finished child: pid, Docker exit code and the killing signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Host pid.
    pub pid: i32,
    /// The status, or 128 + signal.
    pub code: i32,
    /// Signal that killed it.
    pub signal: Option<i32>,
}

/// Maps a wait status to an exit; `None` for stop/continue notifications.
pub fn reaped(status: WaitStatus) -> Option<Reaped> {
    match status {
        WaitStatus::Exited(pid, code) => Some(Reaped {
            pid: pid.as_raw(),
            code,
            signal: None,
        }),
        WaitStatus::Signaled(pid, sig, _) => Some(Reaped {
            pid: pid.as_raw(),
            code: 128 + sig as i32,
            signal: Some(sig as i32),
        }),
        _ => None,
    }
}

/// Wall-clock now in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Writes the record atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_record(path: &Path, rec: &ExitRecord) -> io::Result<()> {
    let data =
        serde_json::to_vec(rec).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a previously written exit record.
pub fn read_record(path: &Path) -> io::Result<ExitRecord> {
    let data = std::fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The `oom_kill N` counter of a cgroup v1 `memory.oom_control` or v2 `memory.events` file.
pub fn parse_oom_kill(contents: &str) -> u64 {
    contents
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Whether the OOM killer fired in the container's cgroup (`cgroups_path` from the OCI spec,
/// absolute), looking under `cgroup_root` (normally `/sys/fs/cgroup`).
pub fn oom_killed(cgroup_root: &Path, cgroups_path: &Path) -> bool {
    let rel = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let candidates = if cgroup_root.join("cgroup.controllers").exists() {
        vec![cgroup_root.join(rel).join("memory.events")]
    } else {
        vec![
            cgroup_root
                .join("memory")
                .join(rel)
                .join("memory.oom_control"),
            cgroup_root.join("unified").join(rel).join("memory.events"),
        ]
    };
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|c| parse_oom_kill(&c) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn codes_follow_docker() {
        let p = Pid::from_raw(7);
        assert_eq!(
            reaped(WaitStatus::Exited(p, 3)),
            Some(Reaped {
                pid: 7,
                code: 3,
                signal: None
            })
        );
        assert_eq!(
            reaped(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(Reaped {
                pid: 7,
                code: 137,
                signal: Some(9)
            })
        );
        assert_eq!(
            reaped(WaitStatus::Signaled(p, Signal::SIGTERM, true)).map(|r| r.code),
            Some(143)
        );
        assert_eq!(reaped(WaitStatus::StillAlive), None);
    }

    #[test]
    fn record_is_written_atomically_and_reads_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("exit.json");
        let rec = ExitRecord {
            code: 3,
            signal: None,
            oom_killed: false,
            finished_at_ns: 42,
            pid: 9,
        };
        write_record(&p, &rec)?;
        assert_eq!(read_record(&p)?, rec);
        assert!(!dir.path().join("exit.json.tmp").exists());
        Ok(())
    }

    #[test]
    fn oom_counters_v1_and_v2() -> io::Result<()> {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n"),
            0
        );
        let v1 = tempfile::tempdir()?;
        let g = v1.path().join("memory/berth/c1");
        std::fs::create_dir_all(&g)?;
        std::fs::write(g.join("memory.oom_control"), "under_oom 0\noom_kill 1\n")?;
        assert!(oom_killed(v1.path(), Path::new("/berth/c1")));
        assert!(!oom_killed(v1.path(), Path::new("/berth/c2")));
        let v2 = tempfile::tempdir()?;
        std::fs::write(v2.path().join("cgroup.controllers"), "memory\n")?;
        let g = v2.path().join("berth/c1");
        std::fs::create_dir_all(&g)?;
        std::fs::write(g.join("memory.events"), "oom 1\noom_kill 1\n")?;
        assert!(oom_killed(v2.path(), Path::new("/berth/c1")));
        Ok(())
    }
}
