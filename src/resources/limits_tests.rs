//! Unit tests of the limit writer against fake v1 and v2 trees.

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

fn set(cg: &Cgroups, c: &str, f: &str, v: &str) {
    std::fs::write(cg.file(c, "/pool/c", f), format!("{v}\n")).expect("seed");
}

fn files(plan: &[Write]) -> Vec<&str> {
    plan.iter().map(|x| x.file).collect()
}

#[test]
fn v1_memory_order_follows_the_direction_of_the_change() {
    let t = tempfile::tempdir().expect("tmp");
    let cg = v1_tree(t.path());
    set(&cg, "memory", "memory.limit_in_bytes", "67108864");
    let both = |m: i64, s: i64| Limits {
        memory: Some(m),
        memory_swap: Some(s),
        ..Default::default()
    };
    // Raising above the current limit: memory+swap first.
    let p = plan(&cg, "/pool/c", &both(200 << 20, 400 << 20)).expect("plan");
    assert_eq!(
        files(&p),
        ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    );
    // Lowering: the limit first.
    let p = plan(&cg, "/pool/c", &both(16 << 20, 32 << 20)).expect("plan");
    assert_eq!(
        files(&p),
        ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    );
    // Unlimited memory alone lifts the swap limit too, before the limit.
    let p = plan(
        &cg,
        "/pool/c",
        &Limits {
            memory: Some(-1),
            ..Default::default()
        },
    )
    .expect("plan");
    assert_eq!(
        files(&p),
        ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    );
    assert!(p.iter().all(|x| x.value == "-1"));
    // Without swap accounting the swap limit is not written.
    std::fs::remove_file(cg.file("memory", "/pool/c", "memory.memsw.limit_in_bytes")).expect("rm");
    let p = plan(&cg, "/pool/c", &both(200 << 20, 400 << 20)).expect("plan");
    assert_eq!(files(&p), ["memory.limit_in_bytes"]);
}

#[test]
fn a_snapshot_puts_back_what_a_change_overwrote() {
    let t = tempfile::tempdir().expect("tmp");
    let cg = v1_tree(t.path());
    set(&cg, "memory", "memory.limit_in_bytes", "67108864");
    set(&cg, "cpu", "cpu.cfs_quota_us", "-1");
    set(&cg, "cpu", "cpu.cfs_period_us", "100000");
    set(&cg, "cpuset", "cpuset.cpus", "0-1");
    set(&cg, "pids", "pids.max", "max");
    let l = Limits {
        memory: Some(32 << 20),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpuset_cpus: Some("1".into()),
        pids_limit: Some(10),
        ..Default::default()
    };
    let p = plan(&cg, "/pool/c", &l).expect("plan");
    let before = snapshot(&cg, "/pool/c", &p).expect("snapshot");
    execute(&cg, "/pool/c", &p).expect("apply");
    assert_eq!(read(&cg, "cpuset", "cpuset.cpus"), "1");
    execute(&cg, "/pool/c", &before).expect("restore");
    assert_eq!(read(&cg, "memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&cg, "cpu", "cpu.cfs_quota_us"), "-1");
    assert_eq!(read(&cg, "cpuset", "cpuset.cpus"), "0-1");
    assert_eq!(read(&cg, "pids", "pids.max"), "max");
    // A file the change would write but the group lacks: the snapshot names it.
    let e = snapshot(
        &cg,
        "/pool/c",
        &plan(
            &cg,
            "/pool/c",
            &Limits {
                blkio_weight: Some(100),
                ..Default::default()
            },
        )
        .expect("plan"),
    )
    .expect_err("no blkio");
    assert!(e.to_string().contains("blkio.weight"), "{e}");
}

#[test]
fn v2_snapshot_round_trips_unified_files() {
    let t = tempfile::tempdir().expect("tmp");
    let cg = v2_tree(t.path());
    std::fs::write(
        cg.file("", "/pool/c", "io.weight"),
        "default 100\n8:0 200\n",
    )
    .expect("seed");
    set(&cg, "", "cpuset.cpus", "0-1");
    set(&cg, "", "cpuset.mems", "0");
    let p = plan(&cg, "/pool/c", &everything()).expect("plan");
    let before = snapshot(&cg, "/pool/c", &p).expect("snapshot");
    execute(&cg, "/pool/c", &p).expect("apply");
    assert_eq!(read(&cg, "", "cpu.max"), "25000 50000");
    execute(&cg, "/pool/c", &before).expect("restore");
    assert_eq!(read(&cg, "", "cpu.max"), "max 100000");
    assert_eq!(read(&cg, "", "memory.max"), "max");
    assert_eq!(read(&cg, "", "io.weight"), "default 100");
}

fn errno(file: &str, e: i32) -> super::super::CgroupError {
    super::super::CgroupError::Write {
        path: file.into(),
        value: String::new(),
        source: std::io::Error::from_raw_os_error(e),
    }
}

#[test]
fn a_write_refused_with_einval_is_retried_after_the_others() {
    let plan = vec![
        w("cpu", "cpu.cfs_period_us", 10_000),
        w("cpu", "cpu.cfs_quota_us", 5_000),
    ];
    // The kernel refuses the period until the quota fits it.
    let mut done = Vec::new();
    let mut quota_set = false;
    execute_with(&plan, |x| {
        if x.file == "cpu.cfs_period_us" && !quota_set {
            return Err(errno(x.file, libc::EINVAL));
        }
        quota_set |= x.file == "cpu.cfs_quota_us";
        done.push(x.file);
        Ok(())
    })
    .expect("second order works");
    assert_eq!(done, ["cpu.cfs_quota_us", "cpu.cfs_period_us"]);
    // Refused both times: the error is the write's.
    let e = execute_with(&plan, |x| {
        if x.file == "cpu.cfs_period_us" {
            return Err(errno(x.file, libc::EINVAL));
        }
        Ok(())
    })
    .expect_err("always refused");
    assert!(e.to_string().contains("cpu.cfs_period_us"), "{e}");
    // Other errors stop at once (EBUSY: a memory limit under the usage).
    let mut tried = Vec::new();
    let e = execute_with(&plan, |x| {
        tried.push(x.file);
        Err(errno(x.file, libc::EBUSY))
    })
    .expect_err("busy");
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    assert_eq!(tried, ["cpu.cfs_period_us"]);
}
