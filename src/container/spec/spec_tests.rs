//! Tests for `spec`: whole specs built from Docker configs.

use super::*;
use oci_spec::runtime::{Capability, LinuxDeviceType, Mount};
use std::collections::HashMap;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fixture {
    rootfs: tempfile::TempDir,
    etc: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let rootfs = tempfile::tempdir().expect("rootfs");
        std::fs::create_dir_all(rootfs.path().join("etc")).expect("etc");
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\nvideo:x:44:alice\n",
        )
        .expect("group");
        let etc = tempfile::tempdir().expect("etc files");
        for f in ["resolv.conf", "hostname", "hosts"] {
            std::fs::write(etc.path().join(f), "").expect("etc file");
        }
        Fixture { rootfs, etc }
    }
}

fn host() -> HostInfo {
    HostInfo {
        cgroup_v2: false,
        cgroups: CgroupCaps::everything(),
        ncpu: 2,
        cap_last_cap: 40,
        cap_held: u64::MAX,
        kernel: (6, 1),
        ping_group_range: true,
        unprivileged_port_start: true,
        dev_dir: PathBuf::from("/dev"),
        sys_dir: PathBuf::from("/sys"),
    }
}

fn config(cmd: &[&str]) -> models::ContainerConfig {
    models::ContainerConfig {
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        env: Some(vec!["FOO=bar".into()]),
        ..Default::default()
    }
}

/// Builds with the fixture's rootfs, a netns path and the /etc files.
fn build_for(
    fx: &Fixture,
    cfg: &models::ContainerConfig,
    hc: &models::HostConfig,
    host: &HostInfo,
) -> ApiResult<Spec> {
    let resolv = fx.etc.path().join("resolv.conf");
    let hostname = fx.etc.path().join("hostname");
    let hosts = fx.etc.path().join("hosts");
    let input = SpecInput {
        id: ID,
        rootfs: fx.rootfs.path(),
        config: cfg,
        host_config: hc,
        netns: Some(Path::new("/run/berth/netns/test")),
        etc: Some(EtcPaths {
            resolv_conf: Some(&resolv),
            hostname: Some(&hostname),
            hosts: Some(&hosts),
        }),
        cgroup_path: format!("/berth/{ID}"),
        init_binary: None,
        shm_dir: None,
        lxcfs: None,
    };
    build_with(&input, host)
}

fn mounts(s: &Spec) -> Vec<Mount> {
    s.mounts().clone().expect("mounts")
}

fn find<'a>(ms: &'a [Mount], dest: &str) -> Option<&'a Mount> {
    ms.iter().find(|m| m.destination() == Path::new(dest))
}

fn opts(ms: &[Mount], dest: &str) -> Vec<String> {
    find(ms, dest)
        .and_then(|m| m.options().clone())
        .unwrap_or_default()
}

fn linux(s: &Spec) -> &Linux {
    s.linux().as_ref().expect("linux")
}

fn ns_types(s: &Spec) -> Vec<LinuxNamespaceType> {
    linux(s)
        .namespaces()
        .clone()
        .expect("namespaces")
        .iter()
        .map(|n| n.typ())
        .collect()
}

#[test]
fn defaults_match_dockerd() {
    let fx = Fixture::new();
    let cfg = models::ContainerConfig {
        tty: Some(true),
        ..config(&["sh", "-c", "true"])
    };
    let s = build_for(&fx, &cfg, &models::HostConfig::default(), &host()).expect("build");
    let p = s.process().as_ref().expect("process");
    assert_eq!(p.args().clone().expect("args"), ["sh", "-c", "true"]);
    let env = p.env().clone().expect("env");
    assert_eq!(env[0], format!("PATH={}", process::DEFAULT_PATH));
    assert!(env.contains(&"HOSTNAME=0123456789ab".to_string()));
    assert!(env.contains(&"TERM=xterm".to_string()) && env.contains(&"FOO=bar".to_string()));
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(
        p.no_new_privileges(),
        None,
        "unset, so libcontainer loads seccomp before dropping caps"
    );
    assert_eq!(p.oom_score_adj(), Some(0));
    assert!(p.rlimits().is_none());
    let caps = p.capabilities().clone().expect("caps");
    assert_eq!(caps.effective().as_ref().map(|c| c.len()), Some(14));
    assert!(!caps
        .bounding()
        .as_ref()
        .expect("bounding")
        .contains(&Capability::SysAdmin));
    assert_eq!(s.hostname().as_deref(), Some("0123456789ab"));
    assert_eq!(
        s.root().as_ref().map(|r| (r.path().clone(), r.readonly())),
        Some((fx.rootfs.path().to_path_buf(), Some(false)))
    );

    let ms = mounts(&s);
    let dests: Vec<String> = ms
        .iter()
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/mqueue",
            "/dev/shm",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/etc/hosts"
        ]
    );
    assert!(opts(&ms, "/dev/shm").contains(&"size=67108864".to_string()));
    assert!(opts(&ms, "/sys").contains(&"ro".to_string()));
    assert_eq!(opts(&ms, "/etc/hosts"), ["rbind", "rprivate"]);
    assert_eq!(
        find(&ms, "/etc/hosts").and_then(|m| m.source().clone()),
        Some(fx.etc.path().join("hosts"))
    );

    let l = linux(&s);
    assert_eq!(
        ns_types(&s),
        [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc
        ]
    );
    let net = l
        .namespaces()
        .clone()
        .expect("ns")
        .into_iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network);
    assert_eq!(
        net.and_then(|n| n.path().clone()),
        Some(PathBuf::from("/run/berth/netns/test"))
    );
    assert_eq!(
        l.cgroups_path().clone(),
        Some(PathBuf::from(format!("/berth/{ID}")))
    );
    let masked = l.masked_paths().clone().expect("masked");
    assert!(
        masked.contains(&"/proc/kcore".to_string())
            && masked.contains(&"/sys/devices/virtual/powercap".to_string())
    );
    assert_eq!(
        l.readonly_paths().clone().expect("ro paths"),
        READONLY_PATHS
    );
    assert!(l.seccomp().is_some());
    let rules = l
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("device rules");
    assert_eq!(rules[0].to_string(), "a *:* rwm");
    assert!(!rules[0].allow());
    let sysctl = l.sysctl().clone().expect("sysctl");
    assert_eq!(
        sysctl.get("net.ipv4.ping_group_range").map(String::as_str),
        Some("0 2147483647")
    );
    assert_eq!(
        sysctl
            .get("net.ipv4.ip_unprivileged_port_start")
            .map(String::as_str),
        Some("0")
    );
}

#[test]
fn privileged_opens_everything() {
    let fx = Fixture::new();
    let hc = models::HostConfig {
        privileged: Some(true),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &hc, &host()).expect("build");
    let caps = s
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .expect("caps");
    assert_eq!(caps.bounding().as_ref().map(|c| c.len()), Some(41));
    // Only what the daemon holds: a host without CAP_SYS_RESOURCE (24) cannot grant it.
    let lacking = HostInfo {
        cap_held: !(1u64 << 24),
        ..host()
    };
    let s2 = build_for(&fx, &config(&["true"]), &hc, &lacking).expect("build");
    let bounding = s2
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .and_then(|c| c.bounding().clone())
        .expect("bounding");
    assert_eq!(bounding.len(), 40);
    assert!(!bounding.contains(&Capability::SysResource));
    assert_eq!(
        host::parse_cap_eff("CapPrm:\t0000000000000001\nCapEff:\t000001fffeffffff\n"),
        Some(0x1ff_feff_ffff)
    );
    let l = linux(&s);
    assert!(l.seccomp().is_none());
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    let ms = mounts(&s);
    assert!(!opts(&ms, "/sys").contains(&"ro".to_string()));
    assert!(!opts(&ms, "/sys/fs/cgroup").contains(&"ro".to_string()));
    let rules = l
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("rules");
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].to_string() == "a *:* rwm");
    let devs = l.devices().clone().expect("devices");
    assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
}

#[test]
fn read_only_rootfs() {
    let fx = Fixture::new();
    let bind_src = tempfile::tempdir().expect("bind src");
    let hc = models::HostConfig {
        readonly_rootfs: Some(true),
        binds: Some(vec![format!("{}:/data", bind_src.path().display())]),
        tmpfs: Some(HashMap::from([("/run".to_string(), String::new())])),
        ..Default::default()
    };
    let s = build_for(&fx, &config(&["true"]), &hc, &host()).expect("build");
    assert_eq!(s.root().as_ref().and_then(|r| r.readonly()), Some(true));
    let ms = mounts(&s);
    for ro in ["/etc/hosts", "/etc/resolv.conf", "/sys", "/sys/fs/cgroup"] {
        assert!(
            opts(&ms, ro).contains(&"ro".to_string()),
            "{ro} should be ro"
        );
    }
    for rw in [
        "/proc",
        "/dev",
        "/dev/shm",
        "/dev/mqueue",
        "/dev/pts",
        "/data",
        "/run",
    ] {
        assert!(
            !opts(&ms, rw).contains(&"ro".to_string()),
            "{rw} should stay writable"
        );
    }
}

#[path = "spec_tests_modes.rs"]
mod modes;

#[path = "spec_tests_lxcfs.rs"]
mod lxcfs;
