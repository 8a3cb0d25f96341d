//! One sample from the cgroup v1 hierarchies: `cpuacct`, `cpu`, `memory`, `pids` and `blkio`,
//! each at `<root>/<controller>/<cgroup path>`.

use super::{blkio_rows, key_values, read, read_u64, Sample, Source, NS_PER_TICK};
use std::path::PathBuf;

impl Source {
    fn v1_file(&self, controller: &str, name: &str) -> PathBuf {
        self.cgroup_root
            .join(controller)
            .join(self.relative())
            .join(name)
    }

    /// The cgroup part of a v1 sample (host-wide and network figures are filled by the caller).
    pub(super) fn sample_v1(&self) -> Sample {
        let cpu = |n| self.v1_file("cpuacct", n);
        let percpu = read(&cpu("cpuacct.usage_percpu"))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let acct = read(&cpu("cpuacct.stat"))
            .map(|s| key_values(&s))
            .unwrap_or_default();
        let ticks = |k: &str| {
            acct.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_mul(NS_PER_TICK)
        };
        let thr = read(&self.v1_file("cpu", "cpu.stat"))
            .map(|s| key_values(&s))
            .unwrap_or_default();
        let t = |k: &str| thr.get(k).copied().unwrap_or(0);
        let mem = |n| self.v1_file("memory", n);
        let pids_limit = read(&self.v1_file("pids", "pids.max"))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let blk = |n| {
            read(&self.v1_file("blkio", n))
                .map(|s| blkio_rows(&s))
                .unwrap_or_default()
        };
        Sample {
            cpu_total: read_u64(&cpu("cpuacct.usage")),
            percpu,
            cpu_user: ticks("user"),
            cpu_kernel: ticks("system"),
            throttling: [t("nr_periods"), t("nr_throttled"), t("throttled_time")],
            mem_usage: read_u64(&mem("memory.usage_in_bytes")),
            mem_max_usage: read_u64(&mem("memory.max_usage_in_bytes")),
            mem_limit: read_u64(&mem("memory.limit_in_bytes")),
            mem_failcnt: read_u64(&mem("memory.failcnt")),
            mem_stats: read(&mem("memory.stat"))
                .map(|s| key_values(&s))
                .unwrap_or_default(),
            pids: read_u64(&self.v1_file("pids", "pids.current")),
            pids_limit,
            io_bytes: blk("blkio.throttle.io_service_bytes"),
            io_ops: blk("blkio.throttle.io_serviced"),
            ..Sample::default()
        }
    }
}
