//! Writing a container's limits into its cgroup, v1 or v2: what `docker update` changes on a
//! running container (and the cpuset and memory changes the CPU allocator and the
//! elastic-memory controller make). Only the fields that are set are written, in an order
//! the kernel accepts (v1 refuses a memory limit above the memory+swap limit and the other
//! way round).

use super::cgroupfs::{CgResult, Cgroups, Version};

/// The cgroup-controlled resources of a container that can change while it runs. `None`
/// leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes; `-1`: unlimited.
    pub memory: Option<i64>,
    /// Soft limit (v1) / `memory.low` (v2) in bytes; `-1` or 0: none.
    pub memory_reservation: Option<i64>,
    /// Memory + swap in bytes (Docker's `MemorySwap`); `-1`: unlimited swap.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (`cpu.shares`, 2..262144).
    pub cpu_shares: Option<u64>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    /// CFS quota in µs; `-1`: unlimited.
    pub cpu_quota: Option<i64>,
    /// CPU list (`0-3,6`).
    pub cpuset_cpus: Option<String>,
    /// NUMA node list.
    pub cpuset_mems: Option<String>,
    /// Most processes; 0 or less: unlimited.
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10..1000).
    pub blkio_weight: Option<u16>,
}

impl Limits {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

fn unlimited_v2(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// v2 `cpu.weight` for v1 shares, as runc converts them (2..262144 → 1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Writes the set fields of `l` to the group `path`.
pub fn apply(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<()> {
    match cg.version() {
        Version::V1 => apply_v1(cg, path, l),
        Version::V2 => apply_v2(cg, path, l),
    }
}

fn apply_v1(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<()> {
    let mem = |f: &str, v: i64| cg.write("memory", path, f, &v.to_string());
    let memsw = cg.has("memory", path, "memory.memsw.limit_in_bytes");
    match (l.memory, l.memory_swap.filter(|_| memsw)) {
        (Some(m), Some(s)) => {
            // Raising: memsw first (the limit may not exceed it); lowering: the limit first.
            let cur = cg.read_u64("memory", path, "memory.limit_in_bytes")?;
            if s == -1 || (cur as i128) < s as i128 {
                mem("memory.memsw.limit_in_bytes", s)?;
                mem("memory.limit_in_bytes", m)?;
            } else {
                mem("memory.limit_in_bytes", m)?;
                mem("memory.memsw.limit_in_bytes", s)?;
            }
        }
        (Some(m), None) => mem("memory.limit_in_bytes", m)?,
        (None, Some(s)) => mem("memory.memsw.limit_in_bytes", s)?,
        (None, None) => {}
    }
    if let Some(r) = l.memory_reservation {
        mem("memory.soft_limit_in_bytes", if r > 0 { r } else { -1 })?;
    }
    if let Some(s) = l.cpu_shares {
        cg.write("cpu", path, "cpu.shares", &s.to_string())?;
    }
    if let Some(p) = l.cpu_period {
        cg.write("cpu", path, "cpu.cfs_period_us", &p.to_string())?;
    }
    if let Some(q) = l.cpu_quota {
        cg.write(
            "cpu",
            path,
            "cpu.cfs_quota_us",
            &(if q > 0 { q } else { -1 }).to_string(),
        )?;
    }
    if let Some(m) = &l.cpuset_mems {
        cg.write("cpuset", path, "cpuset.mems", m)?;
    }
    if let Some(c) = &l.cpuset_cpus {
        cg.write("cpuset", path, "cpuset.cpus", c)?;
    }
    if let Some(p) = l.pids_limit {
        cg.write(
            "pids",
            path,
            "pids.max",
            &if p > 0 { p.to_string() } else { "max".into() },
        )?;
    }
    if let Some(w) = l.blkio_weight {
        cg.write("blkio", path, "blkio.weight", &w.to_string())?;
    }
    Ok(())
}

fn apply_v2(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<()> {
    let w = |f: &str, v: &str| cg.write("", path, f, v);
    if let Some(m) = l.memory {
        w("memory.max", &unlimited_v2(m))?;
    }
    if let Some(s) = l.memory_swap {
        // v2 limits swap alone: Docker's memory+swap minus the memory limit.
        let swap = match (s, l.memory) {
            (-1, _) => "max".to_string(),
            (s, Some(m)) if m > 0 => (s - m).max(0).to_string(),
            (s, _) => {
                let cur = cg.read_u64("", path, "memory.max")?;
                if cur == u64::MAX {
                    "max".to_string()
                } else {
                    (s - cur as i64).max(0).to_string()
                }
            }
        };
        if cg.has("", path, "memory.swap.max") {
            w("memory.swap.max", &swap)?;
        }
    }
    if let Some(r) = l.memory_reservation {
        w(
            "memory.low",
            &if r > 0 { r.to_string() } else { "0".into() },
        )?;
    }
    if let Some(s) = l.cpu_shares {
        w("cpu.weight", &shares_to_weight(s).to_string())?;
    }
    if l.cpu_quota.is_some() || l.cpu_period.is_some() {
        let cur = cg.read("", path, "cpu.max").unwrap_or_default();
        let mut it = cur.split_whitespace();
        let cur_quota = it.next().unwrap_or("max").to_string();
        let cur_period = it.next().unwrap_or("100000").to_string();
        let quota = match l.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_string(),
            None => cur_quota,
        };
        let period = l.cpu_period.map(|p| p.to_string()).unwrap_or(cur_period);
        w("cpu.max", &format!("{quota} {period}"))?;
    }
    if let Some(m) = &l.cpuset_mems {
        w("cpuset.mems", m)?;
    }
    if let Some(c) = &l.cpuset_cpus {
        w("cpuset.cpus", c)?;
    }
    if let Some(p) = l.pids_limit {
        w(
            "pids.max",
            &if p > 0 { p.to_string() } else { "max".into() },
        )?;
    }
    if let Some(bw) = l.blkio_weight {
        if cg.has("", path, "io.bfq.weight") {
            w("io.bfq.weight", &bw.to_string())?;
        } else {
            // runc: 10..1000 → 1..10000.
            let weight = 1 + (u64::from(bw).clamp(10, 1000) - 10) * 9999 / 990;
            w("io.weight", &format!("default {weight}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const V1_FILES: &[(&str, &str)] = &[
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.soft_limit_in_bytes"),
        ("cpu", "cpu.shares"),
        ("cpu", "cpu.cfs_period_us"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpuset", "cpuset.cpus"),
        ("cpuset", "cpuset.mems"),
        ("pids", "pids.max"),
    ];

    fn v1_tree(root: &Path) -> Cgroups {
        let cg = Cgroups::new(Version::V1, root.into());
        for (c, f) in V1_FILES {
            let d = cg.dir(c, "/pool/c");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join(f), "9223372036854771712\n").expect("seed");
        }
        cg
    }

    fn v2_tree(root: &Path) -> Cgroups {
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("seed");
        let cg = Cgroups::at(root.into());
        let d = cg.dir("", "/pool/c");
        std::fs::create_dir_all(&d).expect("mkdir");
        for (f, v) in [
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("memory.low", "0"),
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("pids.max", "max"),
            ("io.weight", "default 100"),
        ] {
            std::fs::write(d.join(f), format!("{v}\n")).expect("seed");
        }
        cg
    }

    fn read(cg: &Cgroups, c: &str, f: &str) -> String {
        cg.read(c, "/pool/c", f).expect("read").trim().to_string()
    }

    fn everything() -> Limits {
        Limits {
            memory: Some(256 << 20),
            memory_reservation: Some(128 << 20),
            memory_swap: Some(512 << 20),
            cpu_shares: Some(512),
            cpu_period: Some(50_000),
            cpu_quota: Some(25_000),
            cpuset_cpus: Some("1".into()),
            cpuset_mems: Some("0".into()),
            pids_limit: Some(64),
            blkio_weight: Some(500),
        }
    }

    #[test]
    fn v1_writes_each_controller_file() {
        let t = tempfile::tempdir().expect("tmp");
        let cg = v1_tree(t.path());
        let l = Limits {
            blkio_weight: None,
            ..everything()
        };
        apply(&cg, "/pool/c", &l).expect("apply");
        assert_eq!(
            read(&cg, "memory", "memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(
            read(&cg, "memory", "memory.memsw.limit_in_bytes"),
            (512u64 << 20).to_string()
        );
        assert_eq!(
            read(&cg, "memory", "memory.soft_limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        assert_eq!(read(&cg, "cpu", "cpu.shares"), "512");
        assert_eq!(read(&cg, "cpu", "cpu.cfs_period_us"), "50000");
        assert_eq!(read(&cg, "cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read(&cg, "cpuset", "cpuset.cpus"), "1");
        assert_eq!(read(&cg, "cpuset", "cpuset.mems"), "0");
        assert_eq!(read(&cg, "pids", "pids.max"), "64");
        // blkio.weight absent on this tree: asking for it names the file.
        let e = apply(
            &cg,
            "/pool/c",
            &Limits {
                blkio_weight: Some(300),
                ..Default::default()
            },
        )
        .expect_err("no blkio hierarchy");
        assert!(e.to_string().contains("blkio.weight"), "{e}");
    }

    #[test]
    fn v1_unset_fields_are_left_alone_and_unlimited_is_minus_one_or_max() {
        let t = tempfile::tempdir().expect("tmp");
        let cg = v1_tree(t.path());
        apply(
            &cg,
            "/pool/c",
            &Limits {
                cpu_quota: Some(-1),
                pids_limit: Some(0),
                ..Default::default()
            },
        )
        .expect("apply");
        assert_eq!(read(&cg, "cpu", "cpu.cfs_quota_us"), "-1");
        assert_eq!(read(&cg, "pids", "pids.max"), "max");
        assert_eq!(
            read(&cg, "memory", "memory.limit_in_bytes"),
            "9223372036854771712"
        );
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn v2_converts_to_unified_files() {
        let t = tempfile::tempdir().expect("tmp");
        let cg = v2_tree(t.path());
        apply(&cg, "/pool/c", &everything()).expect("apply");
        assert_eq!(read(&cg, "", "memory.max"), (256u64 << 20).to_string());
        assert_eq!(
            read(&cg, "", "memory.swap.max"),
            (256u64 << 20).to_string(),
            "swap alone"
        );
        assert_eq!(read(&cg, "", "memory.low"), (128u64 << 20).to_string());
        assert_eq!(
            read(&cg, "", "cpu.weight"),
            shares_to_weight(512).to_string()
        );
        assert_eq!(read(&cg, "", "cpu.max"), "25000 50000");
        assert_eq!(read(&cg, "", "cpuset.cpus"), "1");
        assert_eq!(read(&cg, "", "pids.max"), "64");
        assert_eq!(read(&cg, "", "io.weight"), "default 4950");
        // Only the quota: the period already written stays; unlimited is "max".
        apply(
            &cg,
            "/pool/c",
            &Limits {
                cpu_quota: Some(-1),
                memory: Some(-1),
                memory_swap: Some(-1),
                ..Default::default()
            },
        )
        .expect("apply");
        assert_eq!(read(&cg, "", "cpu.max"), "max 50000");
        assert_eq!(read(&cg, "", "memory.max"), "max");
        assert_eq!(read(&cg, "", "memory.swap.max"), "max");
    }

    #[test]
    fn shares_map_to_weights_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
    }
}
