//! Cgroup resources from `HostConfig` (memory, CPU, pids, blkio) as dockerd converts them;
//! the checks against the host are [`super::verify`]'s.

use super::host::HostInfo;
use super::verify::verify;
use crate::error::{ApiError, ApiResult};
use berth_api::models;
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, LinuxThrottleDevice,
    LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder,
};
use std::os::unix::fs::MetadataExt;

/// CFS period dockerd uses for `--cpus` (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The memory part (checked by [`verify`] first). `swap_limit` says whether the host accounts
/// swap (v1 `memsw` files); without it no swap limit is written.
fn memory(hc: &models::HostConfig, swap_limit: bool) -> Option<LinuxMemory> {
    let mem = hc.memory.unwrap_or(0);
    let mut swap = hc.memory_swap.unwrap_or(0);
    if mem > 0 && swap == 0 {
        swap = mem.saturating_mul(2);
    }
    let mut out = LinuxMemory::default();
    let mut any = false;
    if mem > 0 {
        out.set_limit(Some(mem));
        any = true;
    }
    if let Some(r) = hc.memory_reservation.filter(|r| *r > 0) {
        out.set_reservation(Some(r));
        any = true;
    }
    if swap_limit && (swap > 0 || swap == -1) && mem > 0 {
        out.set_swap(Some(swap));
        any = true;
    }
    if let Some(s) = hc.memory_swappiness.filter(|s| (0..=100).contains(s)) {
        out.set_swappiness(Some(s as u64));
        any = true;
    }
    if let Some(d) = hc.oom_kill_disable {
        out.set_disable_oom_killer(Some(d));
        any = true;
    }
    if let Some(t) = hc.kernel_memory_tcp.filter(|t| *t > 0) {
        out.set_kernel_tcp(Some(t));
        any = true;
    }
    any.then_some(out)
}

/// The CPU part: shares, `--cpus` as quota/period, explicit period/quota, cpusets, realtime.
fn cpu(hc: &models::HostConfig) -> Option<LinuxCpu> {
    let nano = hc.nano_cpus.unwrap_or(0);
    let period = hc.cpu_period.unwrap_or(0);
    let quota = hc.cpu_quota.unwrap_or(0);
    let mut out = LinuxCpu::default();
    let mut any = false;
    if let Some(s) = hc.cpu_shares.filter(|s| *s > 0) {
        out.set_shares(Some(s as u64));
        any = true;
    }
    if nano > 0 {
        out.set_period(Some(CPU_PERIOD_US));
        out.set_quota(Some(
            nano.saturating_mul(CPU_PERIOD_US as i64) / 1_000_000_000,
        ));
        any = true;
    }
    if period > 0 {
        out.set_period(Some(period as u64));
        any = true;
    }
    if quota != 0 {
        out.set_quota(Some(quota));
        any = true;
    }
    if let Some(c) = hc.cpuset_cpus.as_ref().filter(|c| !c.is_empty()) {
        out.set_cpus(Some(c.clone()));
        any = true;
    }
    if let Some(m) = hc.cpuset_mems.as_ref().filter(|m| !m.is_empty()) {
        out.set_mems(Some(m.clone()));
        any = true;
    }
    if let Some(p) = hc.cpu_realtime_period.filter(|p| *p > 0) {
        out.set_realtime_period(Some(p as u64));
        any = true;
    }
    if let Some(r) = hc.cpu_realtime_runtime.filter(|r| *r != 0) {
        out.set_realtime_runtime(Some(r));
        any = true;
    }
    any.then_some(out)
}

/// Major and minor numbers of a block/char device node on the host.
pub fn dev_numbers(path: &str) -> std::io::Result<(i64, i64)> {
    let rdev = std::fs::metadata(path)?.rdev();
    Ok((libc::major(rdev) as i64, libc::minor(rdev) as i64))
}

fn throttle(
    list: Option<&Vec<models::ThrottleDevice>>,
) -> ApiResult<Option<Vec<LinuxThrottleDevice>>> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for d in list {
        let path = d.path.clone().unwrap_or_default();
        let (major, minor) =
            dev_numbers(&path).map_err(|e| ApiError::BadRequest(format!("{path}: {e}")))?;
        let t = LinuxThrottleDeviceBuilder::default()
            .major(major)
            .minor(minor)
            .rate(d.rate.unwrap_or(0).max(0) as u64)
            .build()
            .map_err(|e| ApiError::internal("build throttle device", e))?;
        out.push(t);
    }
    Ok(Some(out))
}

fn blkio(hc: &models::HostConfig) -> ApiResult<Option<LinuxBlockIo>> {
    let mut out = LinuxBlockIo::default();
    let mut any = false;
    if let Some(w) = hc.blkio_weight.filter(|w| *w > 0) {
        out.set_weight(Some(w));
        any = true;
    }
    if let Some(list) = hc.blkio_weight_device.as_ref().filter(|l| !l.is_empty()) {
        let mut devs = Vec::with_capacity(list.len());
        for d in list {
            let path = d.path.clone().unwrap_or_default();
            let (major, minor) =
                dev_numbers(&path).map_err(|e| ApiError::BadRequest(format!("{path}: {e}")))?;
            let mut wd = LinuxWeightDeviceBuilder::default()
                .major(major)
                .minor(minor);
            if let Some(w) = d.weight {
                wd = wd.weight(w.min(u16::MAX as usize) as u16);
            }
            devs.push(
                wd.build()
                    .map_err(|e| ApiError::internal("build weight device", e))?,
            );
        }
        out.set_weight_device(Some(devs));
        any = true;
    }
    if let Some(devs) = throttle(hc.blkio_device_read_bps.as_ref())? {
        out.set_throttle_read_bps_device(Some(devs));
        any = true;
    }
    if let Some(devs) = throttle(hc.blkio_device_write_bps.as_ref())? {
        out.set_throttle_write_bps_device(Some(devs));
        any = true;
    }
    if let Some(devs) = throttle(hc.blkio_device_read_iops.as_ref())? {
        out.set_throttle_read_iops_device(Some(devs));
        any = true;
    }
    if let Some(devs) = throttle(hc.blkio_device_write_iops.as_ref())? {
        out.set_throttle_write_iops_device(Some(devs));
        any = true;
    }
    Ok(any.then_some(out))
}

/// `HostConfig` resources as the spec's `linux.resources` (devices are added separately),
/// after dockerd's checks against `host` ([`verify`], as dockerd repeats them at start).
pub fn resources(hc: &models::HostConfig, host: &HostInfo) -> ApiResult<LinuxResources> {
    let mut hc = hc.clone();
    verify(&mut hc, host)?;
    let hc = &hc;
    let mut r = LinuxResources::default();
    r.set_memory(memory(hc, host.cgroups.swap_limit));
    r.set_cpu(cpu(hc));
    r.set_block_io(blkio(hc)?);
    // dockerd: 0 or negative means "unlimited", written as -1.
    r.set_pids(hc.pids_limit.map(|l| {
        let mut p = LinuxPids::default();
        p.set_limit(if l > 0 { l } else { -1 });
        p
    }));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::CgroupCaps;

    /// A host with every cgroup feature; `swap` says whether swap is accounted.
    fn host(swap: bool) -> HostInfo {
        let mut h = HostInfo::detect_in(std::path::Path::new("/nonexistent"));
        h.cgroups = CgroupCaps {
            swap_limit: swap,
            ..CgroupCaps::everything()
        };
        h.ncpu = 4;
        h
    }

    #[test]
    fn memory_limits_and_default_swap() {
        let hc = models::HostConfig {
            memory: Some(64 << 20),
            ..Default::default()
        };
        let r = resources(&hc, &host(true)).expect("should succeed");
        let m = r.memory().expect("should succeed");
        assert_eq!(m.limit(), Some(64 << 20));
        assert_eq!(m.swap(), Some(128 << 20));
        // no swap accounting on the host: swap dropped
        let r = resources(&hc, &host(false)).expect("should succeed");
        assert_eq!(r.memory().expect("should succeed").swap(), None);
        // unlimited swap
        let hc = models::HostConfig {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            resources(&hc, &host(true))
                .expect("should succeed")
                .memory()
                .expect("should succeed")
                .swap(),
            Some(-1)
        );
    }

    #[test]
    fn memory_misc_and_validation() {
        let hc = models::HostConfig {
            memory_reservation: Some(32 << 20),
            memory_swappiness: Some(-1),
            oom_kill_disable: Some(true),
            ..Default::default()
        };
        let m = resources(&hc, &host(true))
            .expect("should succeed")
            .memory()
            .expect("should succeed");
        assert_eq!(m.reservation(), Some(32 << 20));
        assert_eq!(m.swappiness(), None);
        assert_eq!(m.disable_oom_killer(), Some(true));
        assert_eq!(m.limit(), None);

        let e = |hc: models::HostConfig| {
            resources(&hc, &host(true))
                .expect_err("should fail")
                .to_string()
        };
        assert_eq!(
            e(models::HostConfig {
                memory: Some(1 << 20),
                ..Default::default()
            }),
            "Minimum memory limit allowed is 6MB"
        );
        assert!(e(models::HostConfig {
            memory_swappiness: Some(101),
            ..Default::default()
        })
        .contains("0-100"));
        assert!(e(models::HostConfig {
            memory: Some(64 << 20),
            memory_swap: Some(32 << 20),
            ..Default::default()
        })
        .contains("larger than memory limit"));
        assert!(resources(&models::HostConfig::default(), &host(true))
            .expect("should succeed")
            .memory()
            .is_none());
    }

    #[test]
    fn cpus_become_quota_and_period() {
        let hc = models::HostConfig {
            nano_cpus: Some(1_500_000_000),
            cpu_shares: Some(512),
            ..Default::default()
        };
        let c = resources(&hc, &host(true))
            .expect("should succeed")
            .cpu()
            .clone()
            .expect("should succeed");
        assert_eq!(
            (c.quota(), c.period(), c.shares()),
            (Some(150_000), Some(100_000), Some(512))
        );

        let hc = models::HostConfig {
            cpu_period: Some(50_000),
            cpu_quota: Some(25_000),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            ..Default::default()
        };
        let c = resources(&hc, &host(true))
            .expect("should succeed")
            .cpu()
            .clone()
            .expect("should succeed");
        assert_eq!((c.quota(), c.period()), (Some(25_000), Some(50_000)));
        assert_eq!(
            (c.cpus().as_deref(), c.mems().as_deref()),
            (Some("0-1"), Some("0"))
        );

        let both = models::HostConfig {
            nano_cpus: Some(1),
            cpu_period: Some(100_000),
            ..Default::default()
        };
        assert_eq!(
            resources(&both, &host(true))
                .expect_err("should fail")
                .status(),
            400
        );
        assert!(resources(&models::HostConfig::default(), &host(true))
            .expect("should succeed")
            .cpu()
            .is_none());
    }

    #[test]
    fn pids_and_blkio() {
        let hc = models::HostConfig {
            pids_limit: Some(100),
            blkio_weight: Some(300),
            ..Default::default()
        };
        let r = resources(&hc, &host(true)).expect("should succeed");
        assert_eq!(r.pids().expect("should succeed").limit(), 100);
        assert_eq!(
            r.block_io().clone().expect("should succeed").weight(),
            Some(300)
        );
        let hc = models::HostConfig {
            pids_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(
            resources(&hc, &host(true))
                .expect("should succeed")
                .pids()
                .expect("should succeed")
                .limit(),
            -1
        );
        let hc = models::HostConfig {
            blkio_weight: Some(5),
            ..Default::default()
        };
        assert!(resources(&hc, &host(true)).is_err());
        assert!(resources(&models::HostConfig::default(), &host(true))
            .expect("should succeed")
            .pids()
            .is_none());
    }

    #[test]
    fn throttle_devices_are_statted() {
        let hc = models::HostConfig {
            blkio_device_read_bps: Some(vec![models::ThrottleDevice {
                path: Some("/dev/null".into()),
                rate: Some(1 << 20),
            }]),
            ..Default::default()
        };
        let b = resources(&hc, &host(true))
            .expect("should succeed")
            .block_io()
            .clone()
            .expect("should succeed");
        let t = &b
            .throttle_read_bps_device()
            .clone()
            .expect("should succeed")[0];
        assert_eq!((t.major(), t.minor(), t.rate()), (1, 3, 1 << 20));
        let hc = models::HostConfig {
            blkio_device_write_iops: Some(vec![models::ThrottleDevice {
                path: Some("/nonexistent".into()),
                rate: Some(1),
            }]),
            ..Default::default()
        };
        assert_eq!(
            resources(&hc, &host(true))
                .expect_err("should fail")
                .status(),
            400
        );
    }
}
