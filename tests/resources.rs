//! Resource flags of `docker run` against the real kernel (cgroup v1 hybrid on the test
//! hosts): each flag reaches the container's cgroup files (or its process) and shows in
//! `docker inspect`'s `HostConfig` as dockerd 20.10 shows it, and dockerd's checks refuse bad
//! values at create with its messages. Block I/O weights: `resources_blkio.rs`; the limits'
//! effects (OOM kill, fork bomb, CPU quota) and the pool's membership: `resource_limits.rs`.

mod common;

use common::cgroups::{block_device, cg, inspect, pid_of, raw_create, run_d};
use common::{daemon_with_image, until};
use serde_json::{json, Value};
use std::path::Path;

fn memsw_supported() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
}

/// The kernel's "unlimited" in v1 memory files (PAGE_COUNTER_MAX pages of 4 KiB).
const V1_UNLIMITED: &str = "9223372036854771712";

#[test]
fn memory_flags_reach_the_cgroup_and_inspect() {
    let Some(d) = daemon_with_image() else { return };
    let warn = run_d(
        &d,
        "mem",
        &[
            "-m",
            "64m",
            "--memory-reservation",
            "32m",
            "--memory-swap",
            "96m",
            "--memory-swappiness",
            "10",
            "--oom-kill-disable",
            "--oom-score-adj",
            "500",
        ],
        &["sleep", "300"],
    );
    assert_eq!(cg(&d, "memory", "mem", "memory.limit_in_bytes"), "67108864");
    assert_eq!(
        cg(&d, "memory", "mem", "memory.soft_limit_in_bytes"),
        "33554432"
    );
    assert_eq!(cg(&d, "memory", "mem", "memory.swappiness"), "10");
    let oom = cg(&d, "memory", "mem", "memory.oom_control");
    assert!(oom.lines().any(|l| l == "oom_kill_disable 1"), "{oom}");
    let pid = pid_of(&d, "mem");
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).expect("adj");
    assert_eq!(adj.trim(), "500");
    let hc = &inspect(&d, "mem")["HostConfig"];
    assert_eq!(hc["Memory"], 64 << 20);
    assert_eq!(hc["MemoryReservation"], 32 << 20);
    assert_eq!(hc["MemorySwappiness"], 10);
    assert_eq!(hc["OomKillDisable"], true);
    assert_eq!(hc["OomScoreAdj"], 500);
    if memsw_supported() {
        assert!(!warn.contains("WARNING"), "unexpected warning: {warn}");
        assert_eq!(
            cg(&d, "memory", "mem", "memory.memsw.limit_in_bytes"),
            "100663296"
        );
        assert_eq!(hc["MemorySwap"], 96 << 20);
    } else {
        // dockerd: the memory limit applies, swap is not limited, with its warning.
        assert!(
            warn.contains("WARNING: Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory limited without swap."),
            "{warn}"
        );
        assert_eq!(hc["MemorySwap"], -1);
    }

    // -m alone: swap defaults to twice the memory (dockerd's adaptContainerSettings), the
    // OOM killer stays on, swappiness is left to the kernel.
    run_d(&d, "mem2", &["-m", "64m"], &["sleep", "300"]);
    let hc = &inspect(&d, "mem2")["HostConfig"];
    assert_eq!(hc["MemorySwappiness"], Value::Null);
    assert_eq!(hc["OomKillDisable"], false);
    assert_eq!(hc["MemoryReservation"], 0);
    let oom = cg(&d, "memory", "mem2", "memory.oom_control");
    assert!(oom.lines().any(|l| l == "oom_kill_disable 0"), "{oom}");
    if memsw_supported() {
        assert_eq!(hc["MemorySwap"], 128 << 20);
        assert_eq!(
            cg(&d, "memory", "mem2", "memory.memsw.limit_in_bytes"),
            "134217728"
        );
        // --memory-swap -1: unlimited swap.
        run_d(
            &d,
            "mem3",
            &["-m", "64m", "--memory-swap", "-1"],
            &["sleep", "300"],
        );
        assert_eq!(inspect(&d, "mem3")["HostConfig"]["MemorySwap"], -1);
        assert_eq!(
            cg(&d, "memory", "mem3", "memory.memsw.limit_in_bytes"),
            V1_UNLIMITED
        );
    }

    // The daemon's warnings reach the CLI (which adds its own for this case).
    let warn = run_d(&d, "nolimit", &["--oom-kill-disable"], &["sleep", "300"]);
    assert!(
        warn.contains("WARNING: OOM killer is disabled for the container, but no memory limit is set, this can result in the system running out of resources."),
        "{warn}"
    );

    // dockerd's validation messages, as the CLI prints them.
    let e = d.fails(&[
        "create",
        "-m",
        "64m",
        "--memory-swap",
        "32m",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("Minimum memoryswap limit should be larger than memory limit, see usage"),
        "{e}"
    );
    let e = d.fails(&[
        "create",
        "-m",
        "32m",
        "--memory-reservation",
        "64m",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("Minimum memory limit can not be less than memory reservation limit, see usage"),
        "{e}"
    );
    let e = d.fails(&["create", "--oom-score-adj", "1001", "bb:test", "true"]);
    assert!(
        e.contains("Invalid value 1001, range for oom score adj is [-1000, 1000]"),
        "{e}"
    );
}

#[test]
fn cpu_flags_reach_the_cgroup_and_inspect() {
    let Some(d) = daemon_with_image() else { return };
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let cpu = last_cpu.to_string();
    run_d(
        &d,
        "cpu",
        &[
            "--cpus",
            "0.5",
            "--cpu-shares",
            "512",
            "--cpuset-cpus",
            &cpu,
            "--cpuset-mems",
            "0",
        ],
        &[
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status; sleep 300",
        ],
    );
    assert_eq!(cg(&d, "cpu", "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg(&d, "cpu", "cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(cg(&d, "cpu", "cpu", "cpu.shares"), "512");
    assert_eq!(cg(&d, "cpuset", "cpu", "cpuset.cpus"), cpu);
    assert_eq!(cg(&d, "cpuset", "cpu", "cpuset.mems"), "0");
    // The container's process may only run on that cpu.
    until("the container's affinity in its log", || {
        d.ok(&["logs", "cpu"]).contains("Cpus_allowed_list")
    });
    let logs = d.ok(&["logs", "cpu"]);
    assert_eq!(logs.split_whitespace().nth(1), Some(cpu.as_str()), "{logs}");
    let hc = &inspect(&d, "cpu")["HostConfig"];
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["CpuShares"], 512);
    assert_eq!(hc["CpuPeriod"], 0);
    assert_eq!(hc["CpuQuota"], 0);
    assert_eq!(hc["CpusetCpus"], cpu.as_str());
    assert_eq!(hc["CpusetMems"], "0");

    run_d(
        &d,
        "cfs",
        &["--cpu-period", "50000", "--cpu-quota", "25000"],
        &["sleep", "300"],
    );
    assert_eq!(cg(&d, "cpu", "cfs", "cpu.cfs_period_us"), "50000");
    assert_eq!(cg(&d, "cpu", "cfs", "cpu.cfs_quota_us"), "25000");
    let hc = &inspect(&d, "cfs")["HostConfig"];
    assert_eq!(
        (&hc["CpuPeriod"], &hc["CpuQuota"]),
        (&json!(50000), &json!(25000))
    );
    assert_eq!(hc["NanoCpus"], 0);

    // dockerd's checks against the host's cpus and memory nodes.
    let n = last_cpu + 1;
    let too_many = (n + 1).to_string();
    let e = d.fails(&["create", "--cpus", &too_many, "bb:test", "true"]);
    assert!(
        e.contains(&format!(
            "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
        )),
        "{e}"
    );
    let avail =
        std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.effective_cpus").expect("host cpus");
    let e = d.fails(&["create", "--cpuset-cpus", "63", "bb:test", "true"]);
    assert!(
        e.contains(&format!(
            "Requested CPUs are not available - requested 63, available: {}",
            avail.trim()
        )),
        "{e}"
    );
    let e = d.fails(&["create", "--cpuset-mems", "7", "bb:test", "true"]);
    assert!(
        e.contains("Requested memory nodes are not available - requested 7, available: "),
        "{e}"
    );
    let e = d.fails(&["create", "--cpuset-cpus", "1-a", "bb:test", "true"]);
    assert!(e.contains("Invalid value 1-a for cpuset cpus"), "{e}");
    let e = d.fails(&[
        "create",
        "--cpus",
        "1",
        "--cpu-period",
        "1000",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("Conflicting options: Nano CPUs and CPU Period cannot both be set"),
        "{e}"
    );
    // The raw API: 400 with the message, and no container.
    let (status, body) = raw_create(
        &d,
        &format!(
            r#"{{"Image":"bb:test","Cmd":["true"],"HostConfig":{{"NanoCpus":{}}}}}"#,
            (n as u64 + 1) * 1_000_000_000
        ),
    );
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(
        v["message"],
        format!("Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available")
    );
    assert_eq!(d.ok(&["ps", "-aq", "--filter", "status=created"]), "");
}

#[test]
fn pids_ulimit_shm_and_device_flags() {
    let Some(d) = daemon_with_image() else { return };
    let script = "ulimit -n; ulimit -Hn; df -k /dev/shm | tail -n 1; \
                  echo data > /dev/xnull && cat /dev/xnull && echo xnull-ok; \
                  ls -l /dev/xnull; sleep 300";
    run_d(
        &d,
        "misc",
        &[
            "--pids-limit",
            "50",
            "--ulimit",
            "nofile=512:1024",
            "--shm-size",
            "32m",
            "--device",
            "/dev/null:/dev/xnull",
        ],
        &["sh", "-c", script],
    );
    assert_eq!(cg(&d, "pids", "misc", "pids.max"), "50");
    until("the container's report", || {
        d.ok(&["logs", "misc"]).contains("xnull")
    });
    let logs = d.ok(&["logs", "misc"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.first(), Some(&"512"), "{logs}");
    assert_eq!(lines.get(1), Some(&"1024"), "{logs}");
    // df: Filesystem 1K-blocks Used Available Use% Mounted on
    let df: Vec<&str> = lines.get(2).unwrap_or(&"").split_whitespace().collect();
    assert_eq!(df.get(1), Some(&"32768"), "{logs}");
    assert!(logs.contains("xnull-ok"), "{logs}");
    let ls = lines
        .iter()
        .find(|l| l.ends_with("/dev/xnull"))
        .expect("ls");
    assert!(
        ls.starts_with('c') && ls.contains("1,") && ls.contains(" 3 "),
        "{ls}"
    );
    let list = cg(&d, "devices", "misc", "devices.list");
    assert!(list.lines().any(|l| l == "c 1:3 rwm"), "{list}");
    let pid = pid_of(&d, "misc");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("nofile")
        .split_whitespace()
        .collect();
    assert_eq!(&nofile[3..5], ["512", "1024"]);

    let hc = &inspect(&d, "misc")["HostConfig"];
    assert_eq!(hc["PidsLimit"], 50);
    assert_eq!(
        hc["Ulimits"],
        json!([{"Name": "nofile", "Hard": 1024, "Soft": 512}])
    );
    assert_eq!(hc["ShmSize"], 32 << 20);
    assert_eq!(
        hc["Devices"],
        json!([{"PathOnHost": "/dev/null", "PathInContainer": "/dev/xnull", "CgroupPermissions": "rwm"}])
    );

    // Block I/O throttling on a real block device of the host.
    if let Some((dev, majmin)) = block_device() {
        run_d(
            &d,
            "bps",
            &["--device-read-bps", &format!("{dev}:1mb")],
            &["sleep", "300"],
        );
        let rows = cg(&d, "blkio", "bps", "blkio.throttle.read_bps_device");
        assert_eq!(rows, format!("{majmin} 1048576"));
        assert_eq!(
            inspect(&d, "bps")["HostConfig"]["BlkioDeviceReadBps"],
            json!([{"Path": dev, "Rate": 1048576}])
        );
    }
}
