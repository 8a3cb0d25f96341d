//! What the host can do, read once when the worker starts: cgroup version and the cgroup
//! features dockerd's `sysinfo` checks (memory, swap, CFS, cpusets, pids, block I/O weights and
//! throttles), capabilities, kernel version and a few sysctls. Every path is taken relative to a
//! root so tests can point the detection at a fake tree.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The cgroup features a container's resources can use (dockerd's `sysinfo.SysInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupCaps {
    /// Memory limits (`-m`).
    pub memory_limit: bool,
    /// Swap can be limited (v1 `memory.memsw.*`, or v2 with the memory controller).
    pub swap_limit: bool,
    /// Soft limits (`--memory-reservation`).
    pub memory_reservation: bool,
    /// `memory.swappiness` (v1 only).
    pub memory_swappiness: bool,
    /// `memory.oom_control` (v1 only).
    pub oom_kill_disable: bool,
    /// `cpu.shares` / `cpu.weight`.
    pub cpu_shares: bool,
    /// The CFS bandwidth controller (`cpu.cfs_quota_us` / `cpu.max`).
    pub cpu_cfs: bool,
    /// Realtime scheduling groups (`cpu.rt_period_us`, v1 only).
    pub cpu_realtime: bool,
    /// The cpuset controller.
    pub cpuset: bool,
    /// CPUs a container may be pinned to (`cpuset.cpus` of the root, e.g. `0-3`).
    pub cpus: String,
    /// Memory nodes a container may be bound to (`cpuset.mems` of the root).
    pub mems: String,
    /// The pids controller.
    pub pids: bool,
    /// Proportional block I/O weight (`blkio.weight`, or BFQ's `blkio.bfq.weight`).
    pub blkio_weight: bool,
    /// Per-device block I/O weight (`blkio.weight_device`, or BFQ's).
    pub blkio_weight_device: bool,
    /// `blkio.throttle.read_bps_device`.
    pub blkio_read_bps: bool,
    /// `blkio.throttle.write_bps_device`.
    pub blkio_write_bps: bool,
    /// `blkio.throttle.read_iops_device`.
    pub blkio_read_iops: bool,
    /// `blkio.throttle.write_iops_device`.
    pub blkio_write_iops: bool,
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl CgroupCaps {
    /// Everything supported, on cpus `0-63` and memory node `0` (for tests).
    pub fn everything() -> Self {
        CgroupCaps {
            memory_limit: true,
            swap_limit: true,
            memory_reservation: true,
            memory_swappiness: true,
            oom_kill_disable: true,
            cpu_shares: true,
            cpu_cfs: true,
            cpu_realtime: true,
            cpuset: true,
            cpus: "0-63".into(),
            mems: "0".into(),
            pids: true,
            blkio_weight: true,
            blkio_weight_device: true,
            blkio_read_bps: true,
            blkio_write_bps: true,
            blkio_read_iops: true,
            blkio_write_iops: true,
        }
    }

    /// Nothing supported (a host without any controller mounted).
    pub fn nothing() -> Self {
        CgroupCaps {
            memory_limit: false,
            swap_limit: false,
            memory_reservation: false,
            memory_swappiness: false,
            oom_kill_disable: false,
            cpu_shares: false,
            cpu_cfs: false,
            cpu_realtime: false,
            cpuset: false,
            cpus: String::new(),
            mems: String::new(),
            pids: false,
            blkio_weight: false,
            blkio_weight_device: false,
            blkio_read_bps: false,
            blkio_write_bps: false,
            blkio_read_iops: false,
            blkio_write_iops: false,
        }
    }

    /// Reads the cgroup mount at `root` (normally `/sys/fs/cgroup`): the unified hierarchy
    /// when it has `cgroup.controllers`, else one v1 hierarchy per controller directory.
    pub fn detect(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            Self::detect_v2(root)
        } else {
            Self::detect_v1(root)
        }
    }

    /// cgroup v2: what the root delegates (`cgroup.controllers`), as dockerd reads it.
    fn detect_v2(root: &Path) -> Self {
        let ctl = read_trim(&root.join("cgroup.controllers"));
        let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
        let (memory, cpu, io, cpuset) = (has("memory"), has("cpu"), has("io"), has("cpuset"));
        CgroupCaps {
            memory_limit: memory,
            swap_limit: memory,
            memory_reservation: memory,
            cpu_shares: cpu,
            cpu_cfs: cpu,
            cpuset,
            cpus: if cpuset {
                read_trim(&root.join("cpuset.cpus.effective"))
            } else {
                String::new()
            },
            mems: if cpuset {
                read_trim(&root.join("cpuset.mems.effective"))
            } else {
                String::new()
            },
            pids: has("pids"),
            blkio_weight: io,
            blkio_weight_device: io,
            blkio_read_bps: io,
            blkio_write_bps: io,
            blkio_read_iops: io,
            blkio_write_iops: io,
            ..Self::nothing()
        }
    }

    /// cgroup v1: the files of each hierarchy's root. BFQ's weight files exist only in child
    /// groups; the policy is there when the root has any `blkio.bfq.*` file.
    fn detect_v1(root: &Path) -> Self {
        let file = |ctl: &str, f: &str| root.join(ctl).join(f).exists();
        let mem = root.join("memory");
        let cpuset = root.join("cpuset").is_dir();
        let first = |dir: &Path, names: &[&str]| {
            names
                .iter()
                .map(|n| read_trim(&dir.join(n)))
                .find(|v| !v.is_empty())
                .unwrap_or_default()
        };
        let bfq = std::fs::read_dir(root.join("blkio"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("blkio.bfq."))
            })
            .unwrap_or(false);
        CgroupCaps {
            memory_limit: mem.is_dir(),
            swap_limit: file("memory", "memory.memsw.limit_in_bytes"),
            memory_reservation: file("memory", "memory.soft_limit_in_bytes"),
            memory_swappiness: file("memory", "memory.swappiness"),
            oom_kill_disable: file("memory", "memory.oom_control"),
            cpu_shares: file("cpu", "cpu.shares"),
            cpu_cfs: file("cpu", "cpu.cfs_quota_us") && file("cpu", "cpu.cfs_period_us"),
            cpu_realtime: file("cpu", "cpu.rt_period_us"),
            cpuset,
            cpus: if cpuset {
                first(
                    &root.join("cpuset"),
                    &["cpuset.effective_cpus", "cpuset.cpus"],
                )
            } else {
                String::new()
            },
            mems: if cpuset {
                first(
                    &root.join("cpuset"),
                    &["cpuset.effective_mems", "cpuset.mems"],
                )
            } else {
                String::new()
            },
            pids: root.join("pids").is_dir(),
            blkio_weight: file("blkio", "blkio.weight") || bfq,
            blkio_weight_device: file("blkio", "blkio.weight_device") || bfq,
            blkio_read_bps: file("blkio", "blkio.throttle.read_bps_device"),
            blkio_write_bps: file("blkio", "blkio.throttle.write_bps_device"),
            blkio_read_iops: file("blkio", "blkio.throttle.read_iops_device"),
            blkio_write_iops: file("blkio", "blkio.throttle.write_iops_device"),
        }
    }
}

/// Facts about the host the spec depends on.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// `/sys/fs/cgroup` is the unified (v2) hierarchy.
    pub cgroup_v2: bool,
    /// The cgroup features resources can use.
    pub cgroups: CgroupCaps,
    /// CPUs this daemon may run on (dockerd's `sysinfo.NumCPU`, the `--cpus` ceiling).
    pub ncpu: usize,
    /// Highest capability number the kernel knows.
    pub cap_last_cap: u32,
    /// Capabilities this daemon holds (`CapEff` of `/proc/self/status`) as a bit mask: the
    /// most a container can get.
    pub cap_held: u64,
    /// Kernel version (major, minor).
    pub kernel: (u32, u32),
    /// `net.ipv4.ping_group_range` exists.
    pub ping_group_range: bool,
    /// `net.ipv4.ip_unprivileged_port_start` exists.
    pub unprivileged_port_start: bool,
    /// Where privileged containers take their devices from (`/dev`).
    pub dev_dir: PathBuf,
    /// sysfs (`/sys`), for per-device facts such as a disk's I/O scheduler.
    pub sys_dir: PathBuf,
}

static HOST: OnceLock<HostInfo> = OnceLock::new();

/// CPUs in this process's affinity mask.
fn affinity_cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

impl HostInfo {
    /// The running host, detected on first use (the worker calls this at start-up) and kept.
    pub fn get() -> &'static HostInfo {
        HOST.get_or_init(|| Self::detect_in(Path::new("/")))
    }

    /// Reads the host whose `/sys`, `/proc` and `/dev` are under `root`.
    pub fn detect_in(root: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        let cgroup_root = root.join("sys/fs/cgroup");
        HostInfo {
            cgroup_v2: cgroup_root.join("cgroup.controllers").exists(),
            cgroups: CgroupCaps::detect(&cgroup_root),
            ncpu: affinity_cpus(),
            cap_last_cap: read("proc/sys/kernel/cap_last_cap")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(40),
            cap_held: read("proc/self/status")
                .and_then(|s| parse_cap_eff(&s))
                .unwrap_or(u64::MAX),
            kernel: read("proc/sys/kernel/osrelease")
                .and_then(|s| super::seccomp::parse_kernel(&s))
                .unwrap_or((0, 0)),
            ping_group_range: root.join("proc/sys/net/ipv4/ping_group_range").exists(),
            unprivileged_port_start: root
                .join("proc/sys/net/ipv4/ip_unprivileged_port_start")
                .exists(),
            dev_dir: root.join("dev"),
            sys_dir: root.join("sys"),
        }
    }

    /// The active I/O scheduler of the disk behind block device `major:minor` (`None`: no
    /// such block device, or no scheduler file).
    pub fn io_scheduler(&self, major: i64, minor: i64) -> Option<String> {
        let dev = self.sys_dir.join(format!("dev/block/{major}:{minor}"));
        // A partition's queue is its disk's (the parent directory of the resolved link).
        let disk = if dev.join("partition").exists() {
            std::fs::canonicalize(&dev).ok()?.parent()?.to_path_buf()
        } else {
            dev
        };
        let text = std::fs::read_to_string(disk.join("queue/scheduler")).ok()?;
        let active = text
            .split_whitespace()
            .find(|s| s.starts_with('['))
            .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string());
        active.or_else(|| text.split_whitespace().next().map(str::to_string))
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub(crate) fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str, text: &str) -> std::io::Result<()> {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, text)
    }

    #[test]
    fn v1_hybrid_like_the_test_hosts() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let r = t.path();
        for f in [
            "memory/memory.limit_in_bytes",
            "memory/memory.memsw.limit_in_bytes",
            "memory/memory.soft_limit_in_bytes",
            "memory/memory.swappiness",
            "memory/memory.oom_control",
            "cpu/cpu.shares",
            "cpu/cpu.cfs_quota_us",
            "cpu/cpu.cfs_period_us",
            "pids/cgroup.procs",
            // BFQ registered (stats at the root, weights only in child groups), throttling.
            "blkio/blkio.bfq.io_service_bytes",
            "blkio/blkio.throttle.read_bps_device",
            "blkio/blkio.throttle.write_bps_device",
            "blkio/blkio.throttle.read_iops_device",
            "blkio/blkio.throttle.write_iops_device",
        ] {
            touch(r, &format!("sys/fs/cgroup/{f}"), "")?;
        }
        touch(r, "sys/fs/cgroup/cpuset/cpuset.cpus", "0-3\n")?;
        touch(r, "sys/fs/cgroup/cpuset/cpuset.effective_cpus", "0-1\n")?;
        touch(r, "sys/fs/cgroup/cpuset/cpuset.mems", "0\n")?;
        touch(r, "sys/fs/cgroup/unified/cgroup.controllers", "")?;
        touch(r, "proc/sys/kernel/osrelease", "6.1.0-18-amd64\n")?;
        touch(r, "proc/sys/kernel/cap_last_cap", "40\n")?;
        let h = HostInfo::detect_in(r);
        assert!(!h.cgroup_v2);
        assert_eq!(h.kernel, (6, 1));
        let want = CgroupCaps {
            cpu_realtime: false,
            cpus: "0-1".into(),
            ..CgroupCaps::everything()
        };
        assert_eq!(h.cgroups, want);
        assert_eq!(h.dev_dir, r.join("dev"));
        Ok(())
    }

    #[test]
    fn v1_without_features_reports_each_missing() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let r = t.path().join("sys/fs/cgroup");
        // Memory without swap accounting, swappiness or oom_control; cpu without CFS; blkio
        // with throttling but no weight policy; no cpuset and no pids hierarchy.
        touch(&r, "memory/memory.limit_in_bytes", "")?;
        touch(&r, "cpu/cpu.shares", "")?;
        touch(&r, "blkio/blkio.throttle.read_bps_device", "")?;
        let c = CgroupCaps::detect(&r);
        let want = CgroupCaps {
            memory_limit: true,
            cpu_shares: true,
            blkio_read_bps: true,
            ..CgroupCaps::nothing()
        };
        assert_eq!(c, want);
        // CFQ's weight files at the root count too.
        touch(&r, "blkio/blkio.weight", "")?;
        let c = CgroupCaps::detect(&r);
        assert!(c.blkio_weight && !c.blkio_weight_device);
        Ok(())
    }

    #[test]
    fn v2_reads_the_delegated_controllers() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let r = t.path();
        touch(r, "cgroup.controllers", "cpuset cpu io memory pids\n")?;
        touch(r, "cpuset.cpus.effective", "0-7\n")?;
        touch(r, "cpuset.mems.effective", "0-1\n")?;
        let c = CgroupCaps::detect(r);
        let want = CgroupCaps {
            memory_swappiness: false,
            oom_kill_disable: false,
            cpu_realtime: false,
            cpus: "0-7".into(),
            mems: "0-1".into(),
            ..CgroupCaps::everything()
        };
        assert_eq!(c, want);
        touch(r, "cgroup.controllers", "memory\n")?;
        let c = CgroupCaps::detect(r);
        assert!(c.memory_limit && c.swap_limit && !c.cpu_cfs && !c.pids && !c.blkio_weight);
        Ok(())
    }

    #[test]
    fn io_scheduler_of_disks_and_partitions() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let r = t.path();
        touch(
            r,
            "sys/devices/virtual/block/vda/queue/scheduler",
            "none [mq-deadline] kyber bfq\n",
        )?;
        touch(r, "sys/devices/virtual/block/vda/vda1/partition", "1\n")?;
        touch(
            r,
            "sys/devices/virtual/block/loop0/queue/scheduler",
            "none mq-deadline [bfq]\n",
        )?;
        std::fs::create_dir_all(r.join("sys/dev/block"))?;
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(
                r.join("sys/devices/virtual/block").join(target),
                r.join("sys/dev/block").join(name),
            )
        };
        link("vda", "254:0")?;
        link("vda/vda1", "254:1")?;
        link("loop0", "7:0")?;
        let h = HostInfo {
            sys_dir: r.join("sys"),
            ..HostInfo::detect_in(r)
        };
        assert_eq!(h.io_scheduler(254, 0).as_deref(), Some("mq-deadline"));
        assert_eq!(h.io_scheduler(254, 1).as_deref(), Some("mq-deadline"));
        assert_eq!(h.io_scheduler(7, 0).as_deref(), Some("bfq"));
        assert_eq!(h.io_scheduler(1, 3), None);
        Ok(())
    }
}
