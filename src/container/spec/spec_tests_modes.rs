//! Tests for `spec`: namespace and IPC modes, mounts, security options, users, devices,
//! resources and the config.json round trip.

use super::*;

#[test]
fn init_binary_wraps_args() {
    let fx = Fixture::new();
    let tini = fx.etc.path().join("tini");
    std::fs::write(&tini, "").expect("tini");
    let cfg = config(&["sleep", "1"]);
    let hc = models::HostConfig {
        init: Some(true),
        ..Default::default()
    };
    let input = SpecInput {
        id: ID,
        rootfs: fx.rootfs.path(),
        config: &cfg,
        host_config: &hc,
        netns: None,
        etc: None,
        cgroup_path: "/berth/x".into(),
        init_binary: Some(&tini),
        shm_dir: None,
        lxcfs: None,
    };
    let s = build_with(&input, &host()).expect("build");
    let args = s
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .expect("args");
    assert_eq!(args, ["/sbin/docker-init", "--", "sleep", "1"]);
    let ms = mounts(&s);
    assert_eq!(opts(&ms, "/sbin/docker-init"), ["bind", "ro"]);
    assert_eq!(
        find(&ms, "/sbin/docker-init").and_then(|m| m.source().clone()),
        Some(tini.clone())
    );

    let no_bin = SpecInput {
        init_binary: None,
        ..input.clone()
    };
    assert_eq!(
        build_with(&no_bin, &host()).expect_err("no tini").status(),
        500
    );
    let pid_host = models::HostConfig {
        init: Some(true),
        pid_mode: Some("host".into()),
        ..Default::default()
    };
    let s = build_with(
        &SpecInput {
            host_config: &pid_host,
            ..input
        },
        &host(),
    )
    .expect("build");
    assert_eq!(
        s.process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .expect("args"),
        ["sleep", "1"]
    );
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Pid));
}

#[test]
fn host_network_and_cgroup_namespaces() {
    let fx = Fixture::new();
    let cfg = config(&["true"]);
    let hc = models::HostConfig::default();
    let input = SpecInput {
        id: ID,
        rootfs: fx.rootfs.path(),
        config: &cfg,
        host_config: &hc,
        netns: None,
        etc: None,
        cgroup_path: "/berth/x".into(),
        init_binary: None,
        shm_dir: None,
        lxcfs: None,
    };
    let s = build_with(&input, &host()).expect("build");
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Network));
    assert!(
        !ns_types(&s).contains(&LinuxNamespaceType::Cgroup),
        "v1: host cgroupns"
    );
    assert!(linux(&s).sysctl().clone().unwrap_or_default().is_empty());
    let v2 = HostInfo {
        cgroup_v2: true,
        ..host()
    };
    assert!(
        ns_types(&build_with(&input, &v2).expect("build")).contains(&LinuxNamespaceType::Cgroup)
    );
    let hc_host = models::HostConfig {
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::HOST),
        ..Default::default()
    };
    let s = build_with(
        &SpecInput {
            host_config: &hc_host,
            ..input.clone()
        },
        &v2,
    )
    .expect("build");
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Cgroup));

    let net_sysctl = models::HostConfig {
        sysctls: Some(HashMap::from([(
            "net.core.somaxconn".to_string(),
            "1024".to_string(),
        )])),
        ..Default::default()
    };
    assert_eq!(
        build_with(
            &SpecInput {
                host_config: &net_sysctl,
                ..input.clone()
            },
            &host()
        )
        .expect_err("net sysctl")
        .status(),
        400
    );
    let uts = models::HostConfig {
        uts_mode: Some("host".into()),
        ..Default::default()
    };
    let s = build_with(
        &SpecInput {
            host_config: &uts,
            ..input.clone()
        },
        &host(),
    )
    .expect("build");
    assert!(s.hostname().is_none());
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Uts));
    let bad_ipc = models::HostConfig {
        ipc_mode: Some("bogus".into()),
        ..Default::default()
    };
    let err = build_with(
        &SpecInput {
            host_config: &bad_ipc,
            ..input
        },
        &host(),
    )
    .expect_err("bad ipc");
    assert_eq!(err.to_string(), "invalid IPC mode: bogus");
}

#[test]
fn user_mounts_ordering_and_overrides() {
    let fx = Fixture::new();
    let src = tempfile::tempdir().expect("src");
    let shm = tempfile::tempdir().expect("shm");
    let hc = models::HostConfig {
        binds: Some(vec![
            format!("{}:/a/b/c:ro", src.path().display()),
            format!("{}:/dev/shm", shm.path().display()),
            format!("{}:/a", src.path().display()),
        ]),
        tmpfs: Some(HashMap::from([("/run".to_string(), "size=1m".to_string())])),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &hc, &host()).expect("build");
    let ms = mounts(&s);
    let shm_mounts: Vec<&Mount> = ms
        .iter()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
        .collect();
    assert_eq!(
        shm_mounts.len(),
        1,
        "the bind replaces the default /dev/shm"
    );
    assert_eq!(shm_mounts[0].typ().as_deref(), Some("bind"));
    let pos = |d: &str| {
        ms.iter()
            .position(|m| m.destination() == Path::new(d))
            .expect(d)
    };
    assert!(pos("/a") < pos("/a/b/c"), "parents first");
    assert!(pos("/sys/fs/cgroup") < pos("/a"), "defaults first");
    assert_eq!(opts(&ms, "/a/b/c"), ["rbind", "ro", "rprivate"]);
    assert_eq!(
        opts(&ms, "/run"),
        ["noexec", "nosuid", "nodev", "rprivate", "size=1m"]
    );
    assert_eq!(
        find(&ms, "/run").and_then(|m| m.typ().clone()).as_deref(),
        Some("tmpfs")
    );

    let dup = models::HostConfig {
        binds: Some(vec![format!("{}:/x", src.path().display())]),
        tmpfs: Some(HashMap::from([("/x".to_string(), String::new())])),
        ..Default::default()
    };
    let err = build_for(&fx, &config(&["true"]), &dup, &host()).expect_err("duplicate");
    assert_eq!(err.to_string(), "Duplicate mount point: /x");
    let vol = models::HostConfig {
        binds: Some(vec!["data:/data".into()]),
        ..Default::default()
    };
    assert_eq!(
        build_for(&fx, &config(&["true"]), &vol, &host())
            .expect_err("volume")
            .status(),
        400
    );
}

#[test]
fn ipc_modes_shape_dev_shm() {
    let fx = Fixture::new();
    let none = models::HostConfig {
        ipc_mode: Some("none".into()),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &none, &host()).expect("build");
    assert!(find(&mounts(&s), "/dev/shm").is_none());
    let sized = models::HostConfig {
        shm_size: Some(1 << 20),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &sized, &host()).expect("build");
    assert!(opts(&mounts(&s), "/dev/shm").contains(&"size=1048576".to_string()));
    let ipc_host = models::HostConfig {
        ipc_mode: Some("host".into()),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &ipc_host, &host()).expect("build");
    assert_eq!(
        find(&mounts(&s), "/dev/shm").and_then(|m| m.source().clone()),
        Some(PathBuf::from("/dev/shm"))
    );
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Ipc));
}

#[test]
fn security_options() {
    let fx = Fixture::new();
    let sec = |opts: &[&str]| models::HostConfig {
        security_opt: Some(opts.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let s = build_for(
        &fx,
        &config(&["true"]),
        &sec(&["no-new-privileges"]),
        &host(),
    )
    .expect("build");
    assert_eq!(
        s.process().as_ref().and_then(|p| p.no_new_privileges()),
        Some(true)
    );
    let s = build_for(
        &fx,
        &config(&["true"]),
        &sec(&["seccomp=unconfined"]),
        &host(),
    )
    .expect("build");
    assert!(linux(&s).seccomp().is_none());
    let custom = r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
    let s = build_for(&fx, &config(&["true"]), &sec(&[custom]), &host()).expect("build");
    let sc = linux(&s).seccomp().clone().expect("seccomp");
    assert_eq!(sc.syscalls().clone().map(|v| v.len()), Some(1));
    let err = build_for(&fx, &config(&["true"]), &sec(&["bogus"]), &host()).expect_err("bad opt");
    assert_eq!(err.to_string(), r#"invalid --security-opt 1: "bogus""#);
    assert_eq!(
        build_for(&fx, &config(&["true"]), &sec(&["seccomp={"]), &host())
            .expect_err("bad json")
            .status(),
        400
    );
}

#[test]
fn user_caps_devices_resources() {
    let fx = Fixture::new();
    let cfg = models::ContainerConfig {
        user: Some("alice".into()),
        working_dir: Some("/home/alice/work".into()),
        ..config(&["true"])
    };
    let hc = models::HostConfig {
        cap_add: Some(vec!["NET_ADMIN".into()]),
        cap_drop: Some(vec!["MKNOD".into()]),
        group_add: Some(vec!["1234".into()]),
        devices: Some(vec![models::DeviceMapping {
            path_on_host: Some("/dev/null".into()),
            path_in_container: Some("/dev/xnull".into()),
            cgroup_permissions: Some("rwm".into()),
        }]),
        device_cgroup_rules: Some(vec!["c 42:* rmw".into()]),
        memory: Some(256 << 20),
        nano_cpus: Some(500_000_000),
        pids_limit: Some(64),
        oom_score_adj: Some(500),
        ulimits: Some(vec![models::ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(512),
            hard: Some(1024),
        }]),
        ..Default::default()
    };
    let s = build_for(&fx, &cfg, &hc, &host()).expect("build");
    let p = s.process().as_ref().expect("process");
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(
        p.user().additional_gids().clone(),
        Some(vec![1000, 44, 1234])
    );
    assert_eq!(p.cwd(), Path::new("/home/alice/work"));
    assert!(fx.rootfs.path().join("home/alice/work").is_dir());
    let caps = p.capabilities().clone().expect("caps");
    assert!(caps.effective().is_none(), "non-root: bounding only");
    let bounding = caps.bounding().clone().expect("bounding");
    assert!(bounding.contains(&Capability::NetAdmin) && !bounding.contains(&Capability::Mknod));
    assert_eq!(p.oom_score_adj(), Some(500));
    assert_eq!(p.rlimits().as_ref().map(|r| r.len()), Some(1));

    let l = linux(&s);
    let d = &l.devices().clone().expect("devices")[0];
    assert_eq!(
        (d.path().as_path(), d.typ(), d.major(), d.minor()),
        (Path::new("/dev/xnull"), LinuxDeviceType::C, 1, 3)
    );
    let rules: Vec<String> = l
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("rules")
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert!(rules.contains(&"c 1:3 rwm".to_string()) && rules.contains(&"c 42:* rmw".to_string()));
    let r = l.resources().as_ref().expect("resources");
    assert_eq!(r.memory().and_then(|m| m.limit()), Some(256 << 20));
    assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(50_000));
    assert_eq!(r.pids().map(|p| p.limit()), Some(64));

    let bad = models::HostConfig {
        oom_score_adj: Some(2000),
        ..Default::default()
    };
    assert_eq!(
        build_for(&fx, &cfg, &bad, &host())
            .expect_err("oom")
            .status(),
        400
    );
    let rel = models::ContainerConfig {
        working_dir: Some("rel".into()),
        ..config(&["true"])
    };
    assert!(build_for(&fx, &rel, &models::HostConfig::default(), &host()).is_err());
    let nocmd = models::ContainerConfig::default();
    assert_eq!(
        build_for(&fx, &nocmd, &models::HostConfig::default(), &host())
            .expect_err("no cmd")
            .to_string(),
        "No command specified"
    );
}

#[test]
fn round_trips_through_config_json() {
    let fx = Fixture::new();
    let hc = models::HostConfig {
        memory: Some(64 << 20),
        cap_add: Some(vec!["SYS_ADMIN".into()]),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &hc, &host()).expect("build");
    let json = serde_json::to_string_pretty(&s).expect("encode");
    for key in [
        "\"ociVersion\"",
        "\"cgroupsPath\"",
        "\"maskedPaths\"",
        "\"CAP_SYS_ADMIN\"",
        "\"SCMP_ACT_ERRNO\"",
    ] {
        assert!(json.contains(key), "{key} missing");
    }
    let back: Spec = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, s);
    // the loader libcontainer uses
    let dir = tempfile::tempdir().expect("bundle");
    let path = dir.path().join("config.json");
    s.save(&path).expect("save");
    assert_eq!(Spec::load(&path).expect("load"), s);
}
