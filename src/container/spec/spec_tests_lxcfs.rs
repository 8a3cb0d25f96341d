//! Tests for `spec`: lxcfs's files in the mount list (`--lxcfs`).

use super::*;

/// A stand-in for an lxcfs mount: the files lxcfs provides, minus `proc/swaps`.
fn fake_lxcfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("lxcfs dir");
    for t in crate::lxcfs::TARGETS
        .iter()
        .filter(|t| **t != "/proc/swaps")
    {
        let p = crate::lxcfs::source(dir.path(), t);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "").expect("file");
    }
    dir
}

fn build_lxcfs(fx: &Fixture, hc: &models::HostConfig, lxcfs: &Path) -> Vec<Mount> {
    let cfg = config(&["true"]);
    let input = SpecInput {
        id: ID,
        rootfs: fx.rootfs.path(),
        config: &cfg,
        host_config: hc,
        netns: None,
        etc: None,
        cgroup_path: "/berth/x".into(),
        init_binary: None,
        shm_dir: None,
        lxcfs: Some(lxcfs),
    };
    mounts(&build_with(&input, &host()).expect("build"))
}

fn dests(ms: &[Mount]) -> Vec<String> {
    ms.iter()
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn lxcfs_files_that_exist_are_bound_after_proc_and_sys() {
    let fx = Fixture::new();
    let lx = fake_lxcfs();
    let ms = build_lxcfs(&fx, &models::HostConfig::default(), lx.path());
    let d = dests(&ms);
    let expected: Vec<&str> = crate::lxcfs::TARGETS
        .iter()
        .copied()
        .filter(|t| *t != "/proc/swaps")
        .collect();
    assert_eq!(d[d.len() - expected.len()..], expected, "last, in order");
    assert!(!d.contains(&"/proc/swaps".to_string()), "lxcfs lacks it");
    let meminfo = find(&ms, "/proc/meminfo").expect("meminfo bound");
    assert_eq!(meminfo.typ().as_deref(), Some("bind"));
    assert_eq!(
        meminfo.source().clone(),
        Some(lx.path().join("proc/meminfo"))
    );
    assert_eq!(opts(&ms, "/proc/meminfo"), ["bind", "rprivate"]);
    assert_eq!(
        find(&ms, "/sys/devices/system/cpu/online").and_then(|m| m.source().clone()),
        Some(lx.path().join("sys/devices/system/cpu/online"))
    );
}

#[test]
fn without_lxcfs_nothing_is_bound_over_proc() {
    let fx = Fixture::new();
    let s = build_for(
        &fx,
        &config(&["true"]),
        &models::HostConfig::default(),
        &host(),
    )
    .expect("build");
    assert!(dests(&mounts(&s))
        .iter()
        .all(|d| !d.starts_with("/proc/") && !d.starts_with("/sys/devices")));
}

#[test]
fn read_only_and_privileged_keep_the_lxcfs_binds_as_they_are() {
    let fx = Fixture::new();
    let lx = fake_lxcfs();
    let ro = models::HostConfig {
        readonly_rootfs: Some(true),
        ..Default::default()
    };
    let ms = build_lxcfs(&fx, &ro, lx.path());
    assert!(opts(&ms, "/sys").contains(&"ro".to_string()));
    assert_eq!(opts(&ms, "/proc/meminfo"), ["bind", "rprivate"]);
    let privileged = models::HostConfig {
        privileged: Some(true),
        ..Default::default()
    };
    let ms = build_lxcfs(&fx, &privileged, lx.path());
    assert!(!opts(&ms, "/sys").contains(&"ro".to_string()));
    assert_eq!(opts(&ms, "/proc/cpuinfo"), ["bind", "rprivate"]);
    assert!(find(&ms, "/sys/devices/system/cpu/online").is_some());
}

#[test]
fn the_containers_own_mounts_win_over_lxcfs() {
    let fx = Fixture::new();
    let lx = fake_lxcfs();
    let mine = fx.etc.path().join("my-meminfo");
    std::fs::write(&mine, "MemTotal: 1 kB\n").expect("file");
    let hc = models::HostConfig {
        binds: Some(vec![format!("{}:/proc/meminfo:ro", mine.display())]),
        tmpfs: Some(HashMap::from([("/sys/devices".to_string(), String::new())])),
        ..Default::default()
    };
    let ms = build_lxcfs(&fx, &hc, lx.path());
    let meminfo: Vec<&Mount> = ms
        .iter()
        .filter(|m| m.destination() == Path::new("/proc/meminfo"))
        .collect();
    assert_eq!(meminfo.len(), 1);
    assert_eq!(meminfo[0].source().clone(), Some(mine));
    assert!(find(&ms, "/sys/devices/system/cpu/online").is_none());
    assert!(find(&ms, "/proc/cpuinfo").is_some());
    assert_eq!(
        mounts::user_destinations(&hc).len(),
        2,
        "the watcher sees the same two"
    );
}
