//! dockerd's resource checks (`verifyPlatformContainerResources`, the realtime checks of
//! `verifyPlatformContainerSettings` and the memory default of `adaptContainerSettings`), run on
//! a create's `HostConfig` before any record exists and again on the stored one at start.
//!
//! Where dockerd 20.10 only warns that the host cannot enforce a limit and drops it ("... Weight
//! discarded."), berth refuses the request (400) with dockerd's first sentence: a limit that
//! silently does nothing is worse than an error. Swap is the exception, as in dockerd: without
//! swap accounting `-m` still applies, with dockerd's warning, and swap stays unlimited.

use super::host::{CgroupCaps, HostInfo};
use crate::error::{ApiError, ApiResult};
use berth_api::models::{HostConfig, ResourcesBlkioWeightDevice};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Smallest memory limit or reservation dockerd accepts (6 MiB).
pub const MIN_MEMORY: i64 = 6 << 20;

/// dockerd's warning for `-m` on a host without swap accounting (the create still succeeds).
pub const NO_SWAP_LIMIT: &str = "Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory limited without swap.";

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// The refusal for a feature the host lacks: dockerd's warning without its "discarded" tail.
fn unsupported(what: &str) -> ApiError {
    bad(format!(
        "Your kernel does not support {what} or the cgroup is not mounted"
    ))
}

/// Checks `hc` against the host, fills dockerd's defaults in place (swap twice the memory,
/// `-1` swappiness as unset) and returns dockerd's warnings for the create response.
pub fn verify(hc: &mut HostConfig, host: &HostInfo) -> ApiResult<Vec<String>> {
    let mut warnings = Vec::new();
    let adj = hc.oom_score_adj.unwrap_or(0);
    if !(-1000..=1000).contains(&adj) {
        return Err(bad(format!(
            "Invalid value {adj}, range for oom score adj is [-1000, 1000]"
        )));
    }
    memory(hc, &host.cgroups, &mut warnings)?;
    if let Some(limit) = hc.pids_limit {
        if !host.cgroups.pids {
            if limit > 0 {
                return Err(unsupported("PIDs limit capabilities"));
            }
            hc.pids_limit = None;
        }
    }
    cpu(hc, host, &mut warnings)?;
    cpuset(hc, &host.cgroups)?;
    blkio(hc, host)?;
    Ok(warnings)
}

fn memory(hc: &mut HostConfig, c: &CgroupCaps, warnings: &mut Vec<String>) -> ApiResult<()> {
    let mem = hc.memory.unwrap_or(0);
    let reservation = hc.memory_reservation.unwrap_or(0);
    if mem != 0 && mem < MIN_MEMORY {
        return Err(bad("Minimum memory limit allowed is 6MB"));
    }
    if mem > 0 && !c.memory_limit {
        return Err(unsupported("memory limit capabilities"));
    }
    let mut swap = hc.memory_swap.unwrap_or(0);
    if mem > 0 && swap != -1 && !c.swap_limit {
        warnings.push(NO_SWAP_LIMIT.to_string());
        swap = -1;
        hc.memory_swap = Some(-1);
    }
    if mem > 0 && swap > 0 && swap < mem {
        return Err(bad(
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ));
    }
    if mem == 0 && swap > 0 {
        return Err(bad(
            "You should always set the Memory limit when using Memoryswap limit, see usage",
        ));
    }
    if hc.memory_swappiness == Some(-1) {
        hc.memory_swappiness = None;
    }
    if let Some(s) = hc.memory_swappiness {
        if !c.memory_swappiness {
            return Err(unsupported("memory swappiness capabilities"));
        }
        if !(0..=100).contains(&s) {
            return Err(bad(format!(
                "Invalid value: {s}, valid memory swappiness range is 0-100"
            )));
        }
    }
    if reservation > 0 && !c.memory_reservation {
        return Err(unsupported("memory soft limit capabilities"));
    }
    if reservation != 0 && reservation < MIN_MEMORY {
        return Err(bad("Minimum memory reservation allowed is 6MB"));
    }
    if mem > 0 && reservation > 0 && mem < reservation {
        return Err(bad(
            "Minimum memory limit can not be less than memory reservation limit, see usage",
        ));
    }
    match hc.oom_kill_disable {
        Some(true) if !c.oom_kill_disable => {
            return Err(bad("Your kernel does not support OomKillDisable"))
        }
        Some(false) if !c.oom_kill_disable => hc.oom_kill_disable = None,
        _ => {}
    }
    if hc.oom_kill_disable == Some(true) && mem == 0 {
        warnings.push("OOM killer is disabled for the container, but no memory limit is set, this can result in the system running out of resources.".to_string());
    }
    if mem > 0 && swap == 0 {
        hc.memory_swap = Some(mem.saturating_mul(2));
    }
    Ok(())
}

fn cpu(hc: &mut HostConfig, host: &HostInfo, warnings: &mut Vec<String>) -> ApiResult<()> {
    let c = &host.cgroups;
    let nano = hc.nano_cpus.unwrap_or(0);
    let period = hc.cpu_period.unwrap_or(0);
    let quota = hc.cpu_quota.unwrap_or(0);
    if nano > 0 && period > 0 {
        return Err(bad(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set",
        ));
    }
    if nano > 0 && quota > 0 {
        return Err(bad(
            "Conflicting options: Nano CPUs and CPU Quota cannot both be set",
        ));
    }
    if nano > 0 && !c.cpu_cfs {
        return Err(bad("NanoCPUs can not be set, as your kernel does not support CPU CFS scheduler or the cgroup is not mounted"));
    }
    let n = host.ncpu as i64;
    if nano < 0 || nano > n.saturating_mul(1_000_000_000) {
        return Err(bad(format!(
            "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
        )));
    }
    let shares = hc.cpu_shares.unwrap_or(0);
    if shares < 0 {
        return Err(bad("invalid CPU shares: must not be negative"));
    }
    if shares > 0 && !c.cpu_shares {
        return Err(unsupported("CPU shares"));
    }
    if (period != 0 || quota != 0) && !c.cpu_cfs {
        return Err(bad("Your kernel does not support CPU CFS scheduler"));
    }
    if period != 0 && !(1000..=1_000_000).contains(&period) {
        return Err(bad(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
        ));
    }
    if quota > 0 && quota < 1000 {
        return Err(bad("CPU cfs quota can not be less than 1ms (i.e. 1000)"));
    }
    if hc.cpu_percent.unwrap_or(0) > 0 {
        warnings.push("linux does not support CPU percent. Percent discarded.".to_string());
        hc.cpu_percent = Some(0);
    }
    let rt_period = hc.cpu_realtime_period.unwrap_or(0);
    let rt_runtime = hc.cpu_realtime_runtime.unwrap_or(0);
    if rt_period > 0 && !c.cpu_realtime {
        return Err(bad(
            "Your kernel does not support cgroup cpu real-time period",
        ));
    }
    if rt_runtime > 0 && !c.cpu_realtime {
        return Err(bad(
            "Your kernel does not support cgroup cpu real-time runtime",
        ));
    }
    if rt_period != 0 && rt_runtime != 0 && rt_runtime > rt_period {
        return Err(bad("cpu-rt-runtime cannot be higher than cpu-rt-period"));
    }
    Ok(())
}

/// dockerd's `parsers.ParseUintListMaximum`: `0-2,7` as a set; `max` bounds each value.
pub fn parse_uint_list(val: &str, max: u32) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    if val.is_empty() {
        return Ok(out);
    }
    let invalid = || format!("invalid format: {val}");
    let num = |s: &str| s.parse::<u32>().map_err(|_| invalid());
    let check = |v: u32| {
        if v > max {
            Err(format!("value of out range, maximum is {max}"))
        } else {
            Ok(v)
        }
    };
    for part in val.split(',') {
        match part.split_once('-') {
            None => {
                out.insert(check(num(part)?)?);
            }
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if hi < lo {
                    return Err(invalid());
                }
                check(hi)?;
                out.extend(lo..=hi);
            }
        }
    }
    Ok(out)
}

/// Whether every cpu (memory node) of `provided` is in `available` (dockerd's
/// `isCpusetListAvailable`).
fn list_available(provided: &str, available: &str) -> Result<bool, String> {
    let avail = parse_uint_list(available, u32::MAX)?;
    let max = avail.iter().copied().max().unwrap_or(0).max(8192);
    let want = parse_uint_list(provided, max)?;
    Ok(want.is_subset(&avail))
}

fn cpuset(hc: &HostConfig, c: &CgroupCaps) -> ApiResult<()> {
    let cpus = hc.cpuset_cpus.as_deref().unwrap_or("");
    let mems = hc.cpuset_mems.as_deref().unwrap_or("");
    if cpus.is_empty() && mems.is_empty() {
        return Ok(());
    }
    if !c.cpuset {
        return Err(unsupported("cpuset"));
    }
    let ok = list_available(cpus, &c.cpus)
        .map_err(|e| bad(format!("Invalid value {cpus} for cpuset cpus: {e}")))?;
    if !ok {
        return Err(bad(format!(
            "Requested CPUs are not available - requested {cpus}, available: {}",
            c.cpus
        )));
    }
    let ok = list_available(mems, &c.mems)
        .map_err(|e| bad(format!("Invalid value {mems} for cpuset mems: {e}")))?;
    if !ok {
        return Err(bad(format!(
            "Requested memory nodes are not available - requested {mems}, available: {}",
            c.mems
        )));
    }
    Ok(())
}

/// A per-device weight needs a block device whose disk is scheduled by BFQ (or the old CFQ):
/// the kernel refuses the write for any other scheduler (EOPNOTSUPP).
fn weight_device(d: &ResourcesBlkioWeightDevice, host: &HostInfo) -> ApiResult<()> {
    let path = d.path.as_deref().unwrap_or("");
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{path}: {e}")))?;
    if !meta.file_type().is_block_device() {
        return Err(bad(format!("{path} is not a block device")));
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    match host.io_scheduler(major, minor).as_deref() {
        Some("bfq") | Some("cfq") => Ok(()),
        other => Err(bad(format!(
            "Your kernel does not support Block I/O weight_device for {path}: its I/O scheduler is {}, not bfq",
            other.unwrap_or("unknown")
        ))),
    }
}

fn blkio(hc: &HostConfig, host: &HostInfo) -> ApiResult<()> {
    let c = &host.cgroups;
    let weight = hc.blkio_weight.unwrap_or(0);
    if weight > 0 && !(10..=1000).contains(&weight) {
        return Err(bad("Range of blkio weight is from 10 to 1000"));
    }
    if weight > 0 && !c.blkio_weight {
        return Err(unsupported("Block I/O weight"));
    }
    let devices = hc.blkio_weight_device.as_deref().unwrap_or_default();
    if !devices.is_empty() && !c.blkio_weight_device {
        return Err(unsupported("Block I/O weight_device"));
    }
    for d in devices {
        weight_device(d, host)?;
    }
    let throttles = [
        (
            &hc.blkio_device_read_bps,
            c.blkio_read_bps,
            "BPS Block I/O read limit",
        ),
        (
            &hc.blkio_device_write_bps,
            c.blkio_write_bps,
            "BPS Block I/O write limit",
        ),
        (
            &hc.blkio_device_read_iops,
            c.blkio_read_iops,
            "IOPS Block read limit",
        ),
        (
            &hc.blkio_device_write_iops,
            c.blkio_write_iops,
            "IOPS Block write limit",
        ),
    ];
    for (list, supported, what) in throttles {
        if list.as_ref().is_some_and(|l| !l.is_empty()) && !supported {
            return Err(unsupported(what));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
