//! The kernel side of the elastic-memory controller: the pool's and the containers' memory
//! cgroups, v1 and v2.
//!
//! * v1: the pool gets `memory.limit_in_bytes` = pool size and `oom_kill_disable=1` while the
//!   controller runs (a pool out of memory pauses its allocating tasks instead of letting
//!   the kernel pick a victim by size; the controller sees `under_oom` and kills by policy).
//!   An elastic container's dynamic limit is its `memory.limit_in_bytes`; below its ceiling
//!   its own OOM killer is disabled, so reaching the limit pauses it until the controller
//!   grants more (at the ceiling the kernel kills it, as Docker's `-m` does).
//! * v2: the pool gets `memory.max` = pool size; an elastic container's dynamic limit is
//!   `memory.high` (throttles and reclaims, never kills) under `memory.max` = ceiling.
//!
//! Usage is the working set: usage minus inactive file pages, as `docker stats` shows it.

use crate::resources::cgroupfs::{keyed, CgResult, Cgroups, Version};

/// One sample of a group's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemSample {
    /// Working set in bytes.
    pub usage: u64,
    /// The limit the controller moves (v1 `limit_in_bytes`, v2 `memory.high`, else
    /// `memory.max`).
    pub limit: u64,
    /// Paused at its limit (v1 `under_oom`).
    pub under_oom: bool,
    /// Kernel OOM kills so far (v1 `oom_control`/v2 `memory.events` `oom_kill`).
    pub oom_kills: u64,
}

/// The memory cgroups the controller drives.
#[derive(Debug, Clone)]
pub struct CgroupMemory {
    cg: Cgroups,
}

const M: &str = "memory";
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

impl CgroupMemory {
    /// Over a cgroup mount.
    pub fn new(cg: Cgroups) -> Self {
        CgroupMemory { cg }
    }

    /// The mount.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cg
    }

    /// Creates the pool group and limits it to `size`.
    pub fn prepare_pool(&self, pool: &str, size: u64) -> CgResult<()> {
        self.cg.create(&[M], pool)?;
        match self.cg.version() {
            Version::V1 => {
                self.cg
                    .write(M, pool, "memory.limit_in_bytes", &size.to_string())?;
                self.cg.write(M, pool, "memory.oom_control", "1")
            }
            Version::V2 => self.cg.write(M, pool, "memory.max", &size.to_string()),
        }
    }

    /// Gives the pool back to the kernel's OOM killer (v1), for when no controller follows.
    pub fn relinquish_pool(&self, pool: &str) -> CgResult<()> {
        match self.cg.version() {
            Version::V1 => self.cg.write(M, pool, "memory.oom_control", "0"),
            Version::V2 => Ok(()),
        }
    }

    /// Samples a group (the pool or a container).
    pub fn sample(&self, path: &str) -> CgResult<MemSample> {
        let stat = self.cg.read_keyed(M, path, "memory.stat")?;
        match self.cg.version() {
            Version::V1 => {
                let usage = self.cg.read_u64(M, path, "memory.usage_in_bytes")?;
                let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0);
                let oom = self.cg.read_keyed(M, path, "memory.oom_control")?;
                Ok(MemSample {
                    usage: usage.saturating_sub(inactive),
                    limit: self.cg.read_u64(M, path, "memory.limit_in_bytes")?,
                    under_oom: keyed(&oom, "under_oom").unwrap_or(0) > 0,
                    oom_kills: keyed(&oom, "oom_kill").unwrap_or(0),
                })
            }
            Version::V2 => {
                let usage = self.cg.read_u64(M, path, "memory.current")?;
                let inactive = keyed(&stat, "inactive_file").unwrap_or(0);
                let high = self.cg.read_u64(M, path, "memory.high").unwrap_or(u64::MAX);
                let limit = if high == u64::MAX {
                    self.cg.read_u64(M, path, "memory.max")?
                } else {
                    high
                };
                let events = self
                    .cg
                    .read_keyed(M, path, "memory.events")
                    .unwrap_or_default();
                Ok(MemSample {
                    usage: usage.saturating_sub(inactive),
                    limit,
                    under_oom: false,
                    oom_kills: keyed(&events, "oom_kill").unwrap_or(0),
                })
            }
        }
    }

    /// Only the limit the controller moves (the cheap read of a green tick).
    pub fn limit(&self, path: &str) -> CgResult<u64> {
        match self.cg.version() {
            Version::V1 => self.cg.read_u64(M, path, "memory.limit_in_bytes"),
            Version::V2 => match self.cg.read_u64(M, path, "memory.high") {
                Ok(u64::MAX) | Err(_) => self.cg.read_u64(M, path, "memory.max"),
                Ok(h) => Ok(h),
            },
        }
    }

    /// Takes an elastic container under control: v1 pauses instead of killing at the dynamic
    /// limit; v2 moves its `-m` limit to `memory.high` and puts the ceiling in `memory.max`.
    pub fn adopt(&self, path: &str, ceiling: u64) -> CgResult<()> {
        match self.cg.version() {
            Version::V1 => {
                let limit = self.cg.read_u64(M, path, "memory.limit_in_bytes")?;
                let disable = if limit < ceiling { "1" } else { "0" };
                self.cg.write(M, path, "memory.oom_control", disable)
            }
            Version::V2 => {
                let high = self.cg.read_u64(M, path, "memory.high").unwrap_or(u64::MAX);
                if high == u64::MAX {
                    let max = self.cg.read(M, path, "memory.max")?;
                    self.cg.write(M, path, "memory.high", max.trim())?;
                }
                self.cg.write(M, path, "memory.max", &max_or(ceiling))
            }
        }
    }

    /// Moves an elastic container's dynamic limit to `to` (at most `ceiling`); returns the
    /// limit in force afterwards. v1 refuses (EBUSY, after trying to reclaim) a limit under
    /// what the group holds: the lowest value it accepts is then kept, which is what
    /// squeezing anonymous memory can reach.
    pub fn set_limit(&self, path: &str, to: u64, ceiling: u64) -> CgResult<u64> {
        let to = to.min(ceiling);
        match self.cg.version() {
            Version::V2 => {
                self.cg.write(M, path, "memory.high", &max_or(to))?;
                Ok(to)
            }
            Version::V1 => {
                match self.write_v1_limit(path, to) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(EBUSY) => {
                        let now = self.cg.read_u64(M, path, "memory.usage_in_bytes")?;
                        let floor = round_up(now + (1 << 20));
                        if floor < self.cg.read_u64(M, path, "memory.limit_in_bytes")? {
                            if let Err(e) = self.write_v1_limit(path, floor) {
                                tracing::debug!(path, error = %e, "squeeze to usage refused");
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
                let limit = self.cg.read_u64(M, path, "memory.limit_in_bytes")?;
                // Under its ceiling a full container waits for the controller; at its ceiling
                // the kernel kills it, as it would any `-m` container.
                let disable = if limit < ceiling { "1" } else { "0" };
                self.cg.write(M, path, "memory.oom_control", disable)?;
                Ok(limit)
            }
        }
    }

    fn write_v1_limit(&self, path: &str, to: u64) -> CgResult<()> {
        match self
            .cg
            .write(M, path, "memory.limit_in_bytes", &to.to_string())
        {
            Err(e)
                if e.raw_os_error() == Some(EINVAL)
                    && self.cg.has(M, path, "memory.memsw.limit_in_bytes") =>
            {
                // Above the memory+swap limit: raise that first, keeping the swap allowance.
                let limit = self.cg.read_u64(M, path, "memory.limit_in_bytes")?;
                let memsw = self.cg.read_u64(M, path, "memory.memsw.limit_in_bytes")?;
                let allowance = memsw.saturating_sub(limit);
                self.cg.write(
                    M,
                    path,
                    "memory.memsw.limit_in_bytes",
                    &to.saturating_add(allowance).to_string(),
                )?;
                self.cg
                    .write(M, path, "memory.limit_in_bytes", &to.to_string())
            }
            other => other,
        }
    }

    /// Kills every process of the group (v2 `cgroup.kill`; v1 SIGKILL to each member until
    /// none is left or 20 rounds passed). Returns how many were signalled.
    pub fn kill(&self, path: &str) -> usize {
        if self.cg.version() == Version::V2 && self.cg.has(M, path, "cgroup.kill") {
            let n = self.cg.procs(path).len();
            match self.cg.write(M, path, "cgroup.kill", "1") {
                Ok(()) => return n,
                Err(e) => tracing::warn!(path, error = %e, "cgroup.kill; signalling each process"),
            }
        }
        let mut signalled = 0;
        for _ in 0..20 {
            let procs = self.cg.procs(path);
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    signalled += 1;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        signalled
    }
}

fn max_or(v: u64) -> String {
    if v == u64::MAX {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// Up to the next 4 KiB page.
fn round_up(v: u64) -> u64 {
    v.div_ceil(4096) * 4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn put(dir: &Path, f: &str, v: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(f), v).expect("write");
    }

    #[test]
    fn v1_pool_container_sample_adopt_and_limits() {
        let t = tempfile::tempdir().expect("tmp");
        let cg = Cgroups::new(Version::V1, t.path().into());
        let mem = CgroupMemory::new(cg.clone());
        mem.prepare_pool("/pool", 600 << 20).expect("pool");
        let pool = cg.dir("memory", "/pool");
        assert_eq!(
            std::fs::read_to_string(pool.join("memory.limit_in_bytes")).ok(),
            Some((600u64 << 20).to_string())
        );
        assert_eq!(
            std::fs::read_to_string(pool.join("memory.oom_control"))
                .ok()
                .as_deref(),
            Some("1")
        );
        mem.relinquish_pool("/pool").expect("relinquish");
        assert_eq!(
            std::fs::read_to_string(pool.join("memory.oom_control"))
                .ok()
                .as_deref(),
            Some("0")
        );

        let c = cg.dir("memory", "/pool/c");
        put(&c, "memory.usage_in_bytes", "209715200\n");
        put(&c, "memory.stat", "cache 0\ntotal_inactive_file 10485760\n");
        put(
            &c,
            "memory.oom_control",
            "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n",
        );
        put(&c, "memory.limit_in_bytes", "104857600\n");
        let s = mem.sample("/pool/c").expect("sample");
        assert_eq!(
            s,
            MemSample {
                usage: 190 << 20,
                limit: 100 << 20,
                under_oom: true,
                oom_kills: 0
            }
        );
        mem.adopt("/pool/c", 400 << 20).expect("adopt");
        assert_eq!(
            std::fs::read_to_string(c.join("memory.oom_control"))
                .ok()
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            mem.set_limit("/pool/c", 150 << 20, 400 << 20)
                .expect("grow"),
            150 << 20
        );
        // reaching the ceiling hands the container back to the kernel's OOM killer
        assert_eq!(
            mem.set_limit("/pool/c", 500 << 20, 400 << 20).expect("cap"),
            400 << 20
        );
        assert_eq!(
            std::fs::read_to_string(c.join("memory.oom_control"))
                .ok()
                .as_deref(),
            Some("0")
        );
    }

    #[test]
    fn v2_moves_memory_high_under_a_ceiling_in_memory_max() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::write(t.path().join("cgroup.controllers"), "memory\n").expect("seed");
        let cg = Cgroups::at(t.path().into());
        let mem = CgroupMemory::new(cg.clone());
        mem.prepare_pool("/pool", 600 << 20).expect("pool");
        assert_eq!(
            cg.read("", "/pool", "memory.max").ok(),
            Some((600u64 << 20).to_string())
        );
        let c = cg.dir("", "/pool/c");
        put(&c, "memory.current", "209715200\n");
        put(
            &c,
            "memory.stat",
            "anon 199229440\ninactive_file 10485760\n",
        );
        put(&c, "memory.max", "104857600\n");
        put(&c, "memory.high", "max\n");
        put(
            &c,
            "memory.events",
            "low 0\nhigh 2\nmax 0\noom 0\noom_kill 1\n",
        );
        mem.adopt("/pool/c", u64::MAX).expect("adopt");
        assert_eq!(
            cg.read("", "/pool/c", "memory.high").ok().as_deref(),
            Some("104857600")
        );
        assert_eq!(
            cg.read("", "/pool/c", "memory.max").ok().as_deref(),
            Some("max")
        );
        let s = mem.sample("/pool/c").expect("sample");
        assert_eq!(
            s,
            MemSample {
                usage: 190 << 20,
                limit: 100 << 20,
                under_oom: false,
                oom_kills: 1
            }
        );
        assert_eq!(
            mem.set_limit("/pool/c", 300 << 20, u64::MAX).expect("grow"),
            300 << 20
        );
        assert_eq!(
            cg.read("", "/pool/c", "memory.high").ok(),
            Some((300u64 << 20).to_string())
        );
        // v2 kill goes through cgroup.kill
        put(&c, "cgroup.procs", "");
        put(&c, "cgroup.kill", "");
        mem.kill("/pool/c");
        assert_eq!(
            cg.read("", "/pool/c", "cgroup.kill").ok().as_deref(),
            Some("1")
        );
    }
}
