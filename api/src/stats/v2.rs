//! One sample from the cgroup v2 (unified) group `<root>/<cgroup path>`: `cpu.stat`,
//! `memory.current`/`max`/`stat`/`events`, `pids.current`/`max` and `io.stat`, turned into the
//! figures dockerd 20.10 reports on v2 (`statsV2`): CPU times in ns, no per-cpu usage, no
//! `max_usage`, dockerd's fixed set of `memory.stat` keys, `failcnt` from the `oom` count, and
//! block I/O as `read`/`write` bytes per device.

use super::{key_values, read, read_u64, Sample, Source};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The `memory.stat` keys dockerd 20.10 copies into `memory_stats.stats` on v2 (a key the
/// kernel lacks reads as 0, as in dockerd).
pub const MEMORY_STAT_KEYS: &[&str] = &[
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
];

/// `io.stat` rows (`8:0 rbytes=1 wbytes=2 rios=3 ...`) as read/write byte entries.
pub fn parse_io_stat(text: &str) -> Vec<(u64, u64, String, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        let kv: BTreeMap<&str, u64> = it
            .filter_map(|f| {
                let (k, v) = f.split_once('=')?;
                Some((k, v.parse().ok()?))
            })
            .collect();
        for (key, op) in [("rbytes", "read"), ("wbytes", "write")] {
            out.push((maj, min, op.to_string(), kv.get(key).copied().unwrap_or(0)));
        }
    }
    out
}

/// A `max`-or-number file (`memory.max`, `pids.max`): `None` for `max` or an unreadable file.
fn limit(text: Option<String>) -> Option<u64> {
    text.and_then(|s| s.trim().parse().ok())
}

impl Source {
    fn v2_file(&self, name: &str) -> PathBuf {
        self.cgroup_root.join(self.relative()).join(name)
    }

    /// The cgroup part of a v2 sample (host-wide and network figures are filled by the caller).
    pub(super) fn sample_v2(&self) -> Sample {
        let cpu = read(&self.v2_file("cpu.stat"))
            .map(|s| key_values(&s))
            .unwrap_or_default();
        let us = |k: &str| cpu.get(k).copied().unwrap_or(0).saturating_mul(1000);
        let n = |k: &str| cpu.get(k).copied().unwrap_or(0);
        let stat = read(&self.v2_file("memory.stat"))
            .map(|s| key_values(&s))
            .unwrap_or_default();
        let events = read(&self.v2_file("memory.events"))
            .map(|s| key_values(&s))
            .unwrap_or_default();
        Sample {
            cgroup_v2: true,
            cpu_total: us("usage_usec"),
            cpu_user: us("user_usec"),
            cpu_kernel: us("system_usec"),
            throttling: [n("nr_periods"), n("nr_throttled"), us("throttled_usec")],
            mem_usage: read_u64(&self.v2_file("memory.current")),
            // "max": no limit (capped to the host's memory by the caller).
            mem_limit: limit(read(&self.v2_file("memory.max"))).unwrap_or(u64::MAX),
            mem_failcnt: events.get("oom").copied().unwrap_or(0),
            mem_stats: MEMORY_STAT_KEYS
                .iter()
                .map(|k| (k.to_string(), stat.get(*k).copied().unwrap_or(0)))
                .collect(),
            pids: read_u64(&self.v2_file("pids.current")),
            pids_limit: limit(read(&self.v2_file("pids.max"))).unwrap_or(0),
            io_bytes: read(&self.v2_file("io.stat"))
                .map(|s| parse_io_stat(&s))
                .unwrap_or_default(),
            ..Sample::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::to_json;
    use super::*;

    fn fake_v2() -> std::io::Result<tempfile::TempDir> {
        let root = tempfile::tempdir()?;
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )?;
        let g = root.path().join("pool/abc");
        std::fs::create_dir_all(&g)?;
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250\n",
            ),
            ("memory.current", "10485760\n"),
            ("memory.max", "max\n"),
            (
                "memory.stat",
                "anon 6291456\nfile 4194304\ninactive_file 3145728\nactive_file 1048576\npercpu 12\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            (
                "io.stat",
                "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
            ),
        ];
        for (f, text) in files {
            std::fs::write(g.join(f), text)?;
        }
        Ok(root)
    }

    #[test]
    fn v2_sample_renders_dockerds_v2_shape() -> std::io::Result<()> {
        let root = fake_v2()?;
        let src = Source::new(root.path(), "/pool/abc", None);
        assert!(src.unified, "cgroup.controllers at the root means v2");
        let s = src.sample();
        assert_eq!(
            (s.cpu_total, s.cpu_user, s.cpu_kernel),
            (1_500_000, 1_000_000, 500_000)
        );
        assert!(s.percpu.is_empty());
        assert_eq!(s.throttling, [10, 4, 250_000]);
        // "max" is the host's memory.
        assert!(s.mem_limit > 0 && s.mem_limit < u64::MAX);
        let v = to_json("web", "abc", Some(&s), None);
        let cpu = &v["cpu_stats"]["cpu_usage"];
        assert_eq!(cpu["total_usage"], 1_500_000);
        assert_eq!(cpu["usage_in_usermode"], 1_000_000);
        assert_eq!(cpu["usage_in_kernelmode"], 500_000);
        assert!(cpu.get("percpu_usage").is_none(), "no per-cpu usage on v2");
        assert_eq!(v["cpu_stats"]["throttling_data"]["throttled_time"], 250_000);
        let mem = &v["memory_stats"];
        assert_eq!(mem["usage"], 10_485_760);
        assert!(mem.get("max_usage").is_none(), "no max_usage on v2");
        assert_eq!(mem["failcnt"], 2);
        assert_eq!(mem["limit"], s.mem_limit);
        let stats = mem["stats"].as_object().expect("stats object");
        assert_eq!(stats.len(), MEMORY_STAT_KEYS.len());
        assert_eq!(stats["anon"], 6_291_456);
        assert_eq!(stats["inactive_file"], 3_145_728);
        assert_eq!(stats["pgfault"], 0, "a key the kernel lacks reads 0");
        assert!(stats.get("percpu").is_none() && stats.get("total_inactive_file").is_none());
        assert_eq!(v["pids_stats"], serde_json::json!({"current": 3}));
        assert_eq!(
            v["blkio_stats"]["io_service_bytes_recursive"],
            serde_json::json!([
                {"major": 254, "minor": 0, "op": "read", "value": 4096},
                {"major": 254, "minor": 0, "op": "write", "value": 8192},
            ])
        );
        assert!(v["blkio_stats"]["io_serviced_recursive"].is_null());
        Ok(())
    }

    #[test]
    fn v2_limits_and_empty_io() -> std::io::Result<()> {
        let root = fake_v2()?;
        let g = root.path().join("pool/abc");
        std::fs::write(g.join("memory.max"), "67108864\n")?;
        std::fs::write(g.join("pids.max"), "50\n")?;
        std::fs::write(g.join("io.stat"), "")?;
        let s = Source::new(root.path(), "/pool/abc", None).sample();
        let v = to_json("web", "abc", Some(&s), None);
        assert_eq!(v["memory_stats"]["limit"], 67_108_864);
        assert_eq!(
            v["pids_stats"],
            serde_json::json!({"current": 3, "limit": 50})
        );
        assert!(v["blkio_stats"]["io_service_bytes_recursive"].is_null());
        assert_eq!(
            parse_io_stat("8:0 rbytes=1 wbytes=2\nbogus\n8:16 rios=3\n"),
            vec![
                (8, 0, "read".to_string(), 1),
                (8, 0, "write".to_string(), 2),
                (8, 16, "read".to_string(), 0),
                (8, 16, "write".to_string(), 0),
            ]
        );
        Ok(())
    }
}
