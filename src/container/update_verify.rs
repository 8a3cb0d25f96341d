//! The checks `docker update` makes on a request before anything changes, in dockerd 20.10's
//! words (`verifyPlatformContainerResources` with `update=true`, `validateRestartPolicy`):
//! refusals are 400s, settings the host cannot apply are dropped with a warning.

use super::update::UpdateRequest;
use crate::error::{ApiError, ApiResult};
use crate::resources::{Cgroups, Version};
use std::collections::BTreeSet;

/// Smallest memory limit and reservation dockerd accepts (6 MiB).
const MIN_MEMORY: i64 = 6 << 20;
/// Smallest kernel memory limit dockerd accepts (4 MiB).
const MIN_KERNEL_MEMORY: i64 = 4 << 20;

/// What the host supports (dockerd's `sysinfo`), read from the cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// CPUs this daemon may run on (Go's `runtime.NumCPU`).
    pub ncpu: usize,
    /// The root cpuset's CPUs (`0-1`).
    pub cpus: String,
    /// The root cpuset's memory nodes.
    pub mems: String,
    /// Swap is accounted (v1 `memory.memsw.*`, v2 memory controller).
    pub swap_limit: bool,
    /// A block I/O weight can be set.
    pub blkio_weight: bool,
    /// The CPU real-time group scheduler exists.
    pub cpu_realtime: bool,
    /// The v1 kernel memory files exist.
    pub kernel_memory: bool,
}

impl HostLimits {
    /// From the host's features as the daemon read them at start-up (the kernel memory
    /// files are looked up here: only `update` asks about them).
    pub fn from_host(host: &super::spec::HostInfo, cg: &Cgroups) -> Self {
        let c = &host.cgroups;
        HostLimits {
            ncpu: host.ncpu.max(1),
            cpus: c.cpus.clone(),
            mems: c.mems.clone(),
            swap_limit: c.swap_limit,
            blkio_weight: c.blkio_weight,
            cpu_realtime: c.cpu_realtime,
            kernel_memory: cg.version() == Version::V1
                && cg.has("memory", "/", "memory.kmem.limit_in_bytes"),
        }
    }
}

/// A CPU or memory-node list (`0-3,6`) as a set; `None` when malformed (moby's
/// `ParseUintList`). An empty list is empty.
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            None => {
                out.insert(part.parse().ok()?);
            }
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
        }
    }
    Some(out)
}

/// `requested` within `available`, in dockerd's words (`what`: "cpus" or "mems").
fn check_cpuset(requested: &str, available: &str, what: &str) -> ApiResult<()> {
    if requested.is_empty() {
        return Ok(());
    }
    let Some(want) = parse_cpu_list(requested) else {
        return Err(ApiError::BadRequest(format!(
            "Invalid value {requested} for cpuset {what}: invalid format: {requested}"
        )));
    };
    let have = parse_cpu_list(available).unwrap_or_default();
    if want.is_subset(&have) {
        return Ok(());
    }
    let noun = if what == "cpus" {
        "CPUs"
    } else {
        "memory nodes"
    };
    Err(ApiError::BadRequest(format!(
        "Requested {noun} are not available - requested {requested}, available: {available}"
    )))
}

/// Checks a request as dockerd does before an update; drops what the host cannot apply
/// (with a warning each) and returns the warnings.
pub fn verify(req: &mut UpdateRequest, host: &HostLimits) -> ApiResult<Vec<String>> {
    let bad = |m: &str| Err(ApiError::BadRequest(m.to_string()));
    let mut warnings = Vec::new();
    let r = &mut req.body;
    if r.memory_swappiness == Some(-1) {
        r.memory_swappiness = None;
    }
    let mem = r.memory.unwrap_or(0);
    if mem != 0 && mem < MIN_MEMORY {
        return bad("Minimum memory limit allowed is 6MB");
    }
    if mem > 0 && r.memory_swap.unwrap_or(0) != -1 && !host.swap_limit {
        warnings.push("Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory limited without swap.".to_string());
        r.memory_swap = Some(-1);
    }
    let swap = r.memory_swap.unwrap_or(0);
    if mem > 0 && swap > 0 && swap < mem {
        return bad("Minimum memoryswap limit should be larger than memory limit, see usage");
    }
    if let Some(s) = r.memory_swappiness.filter(|s| !(0..=100).contains(s)) {
        return bad(&format!(
            "Invalid value: {s}, valid memory swappiness range is 0-100"
        ));
    }
    let reservation = r.memory_reservation.unwrap_or(0);
    if reservation > 0 && reservation < MIN_MEMORY {
        return bad("Minimum memory reservation allowed is 6MB");
    }
    if mem > 0 && reservation > 0 && mem < reservation {
        return bad(
            "Minimum memory limit can not be less than memory reservation limit, see usage",
        );
    }
    if req.kernel_memory > 0 {
        warnings.push(
            "Specifying a kernel memory limit is deprecated and will be removed in a future release."
                .to_string(),
        );
        if !host.kernel_memory {
            warnings.push("Your kernel does not support kernel memory limit capabilities or the cgroup is not mounted. Limitation discarded.".to_string());
        } else if req.kernel_memory < MIN_KERNEL_MEMORY {
            return bad("Minimum kernel memory limit allowed is 4MB");
        } else {
            // Kernels since 5.4 ignore or refuse kmem limits; berth never writes them.
            warnings.push(
                "Kernel memory limits are not applied by this daemon. Limitation discarded."
                    .to_string(),
            );
        }
        req.kernel_memory = 0;
    }
    if r.oom_kill_disable == Some(true) && mem == 0 {
        warnings.push("OOM killer is disabled for the container, but no memory limit is set, this can result in the system running out of resources.".to_string());
    }
    let (nano, period, quota) = (
        r.nano_cpus.unwrap_or(0),
        r.cpu_period.unwrap_or(0),
        r.cpu_quota.unwrap_or(0),
    );
    if nano > 0 && period > 0 {
        return bad("Conflicting options: Nano CPUs and CPU Period cannot both be set");
    }
    if nano > 0 && quota > 0 {
        return bad("Conflicting options: Nano CPUs and CPU Quota cannot both be set");
    }
    let n = host.ncpu;
    if nano < 0 || nano as i128 > n as i128 * 1_000_000_000 {
        return bad(&format!(
            "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
        ));
    }
    if period != 0 && !(1000..=1_000_000).contains(&period) {
        return bad(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
        );
    }
    if quota > 0 && quota < 1000 {
        return bad("CPU cfs quota can not be less than 1ms (i.e. 1000)");
    }
    if r.cpu_percent.unwrap_or(0) > 0 {
        warnings.push("linux does not support CPU percent. Percent discarded.".to_string());
        r.cpu_percent = Some(0);
    }
    let (rt_period, rt_runtime) = (
        r.cpu_realtime_period.unwrap_or(0),
        r.cpu_realtime_runtime.unwrap_or(0),
    );
    if (rt_period > 0 || rt_runtime > 0) && !host.cpu_realtime {
        return bad("Your kernel does not support CPU real-time scheduler");
    }
    if rt_period != 0 && rt_runtime != 0 && rt_runtime > rt_period {
        return bad("cpu real-time runtime cannot be higher than cpu real-time period");
    }
    check_cpuset(r.cpuset_cpus.as_deref().unwrap_or(""), &host.cpus, "cpus")?;
    check_cpuset(r.cpuset_mems.as_deref().unwrap_or(""), &host.mems, "mems")?;
    let weight = r.blkio_weight.unwrap_or(0);
    if weight > 0 && !host.blkio_weight {
        warnings.push(
            "Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded."
                .to_string(),
        );
        r.blkio_weight = Some(0);
    } else if weight > 0 && !(10..=1000).contains(&weight) {
        return bad("Range of blkio weight is from 10 to 1000");
    }
    if r.io_maximum_bandwidth.unwrap_or(0) != 0 || r.io_maximum_iops.unwrap_or(0) != 0 {
        return bad(
            "Invalid QoS settings: linux does not support Maximum IO Bandwidth or Maximum IO IOps",
        );
    }
    if let Some(p) = &r.restart_policy {
        let name = p.name.map(|n| n.to_string()).unwrap_or_default();
        let max = p.maximum_retry_count.unwrap_or(0);
        match name.as_str() {
            "always" | "unless-stopped" | "no" if max != 0 => {
                return bad(&format!(
                    "maximum retry count cannot be used with restart policy '{name}'"
                ))
            }
            "on-failure" if max < 0 => return bad("maximum retry count cannot be negative"),
            _ => {}
        }
    }
    Ok(warnings)
}
