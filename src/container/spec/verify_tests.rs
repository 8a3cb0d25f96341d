//! Tests for `verify`: dockerd's checks and defaults, and the refusals on hosts that lack a
//! cgroup feature (hosts described by [`CgroupCaps`] as the detection reads them).

use super::*;

fn host(caps: CgroupCaps) -> HostInfo {
    let mut h = HostInfo::detect_in(std::path::Path::new("/nonexistent"));
    h.cgroups = caps;
    h.ncpu = 2;
    h
}

fn full() -> HostInfo {
    host(CgroupCaps {
        cpus: "0-1".into(),
        ..CgroupCaps::everything()
    })
}

/// The error message of verifying `hc` on `h`.
fn err(hc: HostConfig, h: &HostInfo) -> String {
    let mut hc = hc;
    match verify(&mut hc, h) {
        Ok(w) => panic!("verify passed (warnings {w:?})"),
        Err(e) => {
            assert_eq!(e.status(), 400, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn memory_defaults_follow_dockerd() -> ApiResult<()> {
    let mut hc = HostConfig {
        memory: Some(64 << 20),
        memory_swappiness: Some(-1),
        ..Default::default()
    };
    assert!(verify(&mut hc, &full())?.is_empty());
    assert_eq!(
        hc.memory_swap,
        Some(128 << 20),
        "swap defaults to 2x memory"
    );
    assert_eq!(hc.memory_swappiness, None, "-1 means unset");

    // No swap accounting: the limit applies, swap is unlimited, dockerd's warning.
    let no_swap = host(CgroupCaps {
        swap_limit: false,
        ..CgroupCaps::everything()
    });
    let mut hc = HostConfig {
        memory: Some(64 << 20),
        memory_swap: Some(32 << 20),
        ..Default::default()
    };
    assert_eq!(verify(&mut hc, &no_swap)?, vec![NO_SWAP_LIMIT.to_string()]);
    assert_eq!(hc.memory_swap, Some(-1));

    let mut hc = HostConfig {
        oom_kill_disable: Some(true),
        ..Default::default()
    };
    let w = verify(&mut hc, &full())?;
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("OOM killer is disabled for the container, but no memory limit"));
    Ok(())
}

#[test]
fn memory_errors_carry_dockerds_words() {
    let h = full();
    let mem = |m: i64| HostConfig {
        memory: Some(m),
        ..Default::default()
    };
    assert_eq!(err(mem(1 << 20), &h), "Minimum memory limit allowed is 6MB");
    assert_eq!(err(mem(-1), &h), "Minimum memory limit allowed is 6MB");
    assert_eq!(
        err(
            HostConfig {
                memory_swap: Some(64 << 20),
                ..Default::default()
            },
            &h
        ),
        "You should always set the Memory limit when using Memoryswap limit, see usage"
    );
    assert_eq!(
        err(
            HostConfig {
                memory: Some(32 << 20),
                memory_reservation: Some(64 << 20),
                ..Default::default()
            },
            &h
        ),
        "Minimum memory limit can not be less than memory reservation limit, see usage"
    );
    assert_eq!(
        err(
            HostConfig {
                memory_reservation: Some(1 << 20),
                ..Default::default()
            },
            &h
        ),
        "Minimum memory reservation allowed is 6MB"
    );
    assert_eq!(
        err(
            HostConfig {
                memory_swappiness: Some(101),
                ..Default::default()
            },
            &h
        ),
        "Invalid value: 101, valid memory swappiness range is 0-100"
    );
}

#[test]
fn features_the_host_lacks_are_refused() {
    let none = host(CgroupCaps::nothing());
    let cases: Vec<(HostConfig, &str)> = vec![
        (
            HostConfig {
                memory: Some(64 << 20),
                ..Default::default()
            },
            "Your kernel does not support memory limit capabilities or the cgroup is not mounted",
        ),
        (
            HostConfig {
                memory_reservation: Some(64 << 20),
                ..Default::default()
            },
            "Your kernel does not support memory soft limit capabilities or the cgroup is not mounted",
        ),
        (
            HostConfig {
                memory_swappiness: Some(10),
                ..Default::default()
            },
            "Your kernel does not support memory swappiness capabilities or the cgroup is not mounted",
        ),
        (
            HostConfig {
                oom_kill_disable: Some(true),
                ..Default::default()
            },
            "Your kernel does not support OomKillDisable",
        ),
        (
            HostConfig {
                pids_limit: Some(50),
                ..Default::default()
            },
            "Your kernel does not support PIDs limit capabilities or the cgroup is not mounted",
        ),
        (
            HostConfig {
                nano_cpus: Some(500_000_000),
                ..Default::default()
            },
            "NanoCPUs can not be set, as your kernel does not support CPU CFS scheduler or the cgroup is not mounted",
        ),
        (
            HostConfig {
                cpu_quota: Some(50_000),
                ..Default::default()
            },
            "Your kernel does not support CPU CFS scheduler",
        ),
        (
            HostConfig {
                cpu_shares: Some(512),
                ..Default::default()
            },
            "Your kernel does not support CPU shares or the cgroup is not mounted",
        ),
        (
            HostConfig {
                cpuset_cpus: Some("0".into()),
                ..Default::default()
            },
            "Your kernel does not support cpuset or the cgroup is not mounted",
        ),
        (
            HostConfig {
                cpu_realtime_runtime: Some(950_000),
                ..Default::default()
            },
            "Your kernel does not support cgroup cpu real-time runtime",
        ),
        (
            HostConfig {
                blkio_weight: Some(300),
                ..Default::default()
            },
            "Your kernel does not support Block I/O weight or the cgroup is not mounted",
        ),
        (
            HostConfig {
                blkio_weight_device: Some(vec![ResourcesBlkioWeightDevice {
                    path: Some("/dev/null".into()),
                    weight: Some(300),
                }]),
                ..Default::default()
            },
            "Your kernel does not support Block I/O weight_device or the cgroup is not mounted",
        ),
        (
            HostConfig {
                blkio_device_write_iops: Some(vec![berth_api::models::ThrottleDevice {
                    path: Some("/dev/null".into()),
                    rate: Some(10),
                }]),
                ..Default::default()
            },
            "Your kernel does not support IOPS Block write limit or the cgroup is not mounted",
        ),
    ];
    for (hc, want) in cases {
        assert_eq!(err(hc.clone(), &none), want, "{hc:?}");
        // The same request passes on a host that has the feature.
        let mut ok = hc.clone();
        if ok.blkio_weight_device.is_none() {
            assert!(verify(&mut ok, &full()).is_ok(), "{hc:?}");
        }
    }
    // Unset or "off" values of a missing feature are not refused.
    let mut hc = HostConfig {
        oom_kill_disable: Some(false),
        pids_limit: Some(-1),
        memory_swappiness: Some(-1),
        ..Default::default()
    };
    assert!(verify(&mut hc, &none).is_ok());
    assert_eq!((hc.oom_kill_disable, hc.pids_limit), (None, None));
}

#[test]
fn cpu_checks_follow_dockerd() {
    let h = full();
    let cpu = |nano: i64, period: i64, quota: i64| HostConfig {
        nano_cpus: Some(nano),
        cpu_period: Some(period),
        cpu_quota: Some(quota),
        ..Default::default()
    };
    assert_eq!(
        err(cpu(1_000_000_000, 100_000, 0), &h),
        "Conflicting options: Nano CPUs and CPU Period cannot both be set"
    );
    assert_eq!(
        err(cpu(1_000_000_000, 0, 50_000), &h),
        "Conflicting options: Nano CPUs and CPU Quota cannot both be set"
    );
    assert_eq!(
        err(cpu(3_000_000_000, 0, 0), &h),
        "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
    );
    assert!(err(cpu(0, 500, 0), &h).starts_with("CPU cfs period can not be less than 1ms"));
    assert_eq!(
        err(cpu(0, 0, 500), &h),
        "CPU cfs quota can not be less than 1ms (i.e. 1000)"
    );
    assert_eq!(
        err(
            HostConfig {
                cpu_realtime_period: Some(1000),
                cpu_realtime_runtime: Some(2000),
                ..Default::default()
            },
            &h
        ),
        "cpu-rt-runtime cannot be higher than cpu-rt-period"
    );
    let mut hc = HostConfig {
        cpu_percent: Some(50),
        ..Default::default()
    };
    let w = verify(&mut hc, &h).expect("cpu percent is only a warning");
    assert_eq!(
        w,
        ["linux does not support CPU percent. Percent discarded."]
    );
    assert_eq!(hc.cpu_percent, Some(0));
}

#[test]
fn cpusets_must_be_available() {
    let h = full();
    let set = |cpus: &str, mems: &str| HostConfig {
        cpuset_cpus: Some(cpus.into()),
        cpuset_mems: Some(mems.into()),
        ..Default::default()
    };
    assert!(verify(&mut set("0-1", "0"), &h).is_ok());
    assert!(verify(&mut set("1", ""), &h).is_ok());
    assert_eq!(
        err(set("2", ""), &h),
        "Requested CPUs are not available - requested 2, available: 0-1"
    );
    assert_eq!(
        err(set("", "1"), &h),
        "Requested memory nodes are not available - requested 1, available: 0"
    );
    assert_eq!(
        err(set("1-a", ""), &h),
        "Invalid value 1-a for cpuset cpus: invalid format: 1-a"
    );
    assert_eq!(
        err(set("9000", ""), &h),
        "Invalid value 9000 for cpuset cpus: value of out range, maximum is 8192"
    );
    assert_eq!(
        parse_uint_list("0-2,7", 10).map(|s| s.into_iter().collect::<Vec<_>>()),
        Ok(vec![0, 1, 2, 7])
    );
    assert!(parse_uint_list("3-1", 10).is_err());
    assert!(parse_uint_list("", 10).is_ok_and(|s| s.is_empty()));
}

#[test]
fn blkio_checks() {
    let h = full();
    assert_eq!(
        err(
            HostConfig {
                blkio_weight: Some(5),
                ..Default::default()
            },
            &h
        ),
        "Range of blkio weight is from 10 to 1000"
    );
    let dev = |path: &str| HostConfig {
        blkio_weight_device: Some(vec![ResourcesBlkioWeightDevice {
            path: Some(path.into()),
            weight: Some(300),
        }]),
        ..Default::default()
    };
    assert_eq!(err(dev("/dev/null"), &h), "/dev/null is not a block device");
    assert!(err(dev("/nonexistent/disk"), &h).starts_with("/nonexistent/disk: "));
}
