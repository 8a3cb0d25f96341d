//! Tests for `seccomp`.

use super::*;
use crate::container::spec::caps;

fn target(caps: &[String]) -> Target<'_> {
    Target {
        caps,
        go_arch: "amd64",
        native: "SCMP_ARCH_X86_64",
        kernel: (6, 1),
    }
}

fn default_caps() -> Vec<String> {
    caps::DEFAULT.iter().map(|s| s.to_string()).collect()
}

/// Rules naming `name`, as (action, args).
fn rules_for<'a>(s: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
    s.syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.names().iter().any(|n| n == name))
        .collect()
}

fn allowed_unconditionally(s: &LinuxSeccomp, name: &str) -> bool {
    rules_for(s, name)
        .iter()
        .any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
}

#[test]
fn default_profile_for_default_caps() {
    let caps = default_caps();
    let s = to_oci(&default_profile(), &target(&caps)).expect("should succeed");
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(s.default_errno_ret(), Some(1));
    assert_eq!(
        s.architectures().clone().expect("should succeed"),
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    for ok in [
        "read",
        "write",
        "execve",
        "openat",
        "arch_prctl",
        "ptrace",
        "chown",
    ] {
        assert!(allowed_unconditionally(&s, ok), "{ok} should be allowed");
    }
    for denied in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "reboot",
        "init_module",
        "bpf",
        "kexec_load",
        "chroot",
    ] {
        if denied == "chroot" {
            // CAP_SYS_CHROOT is in the default set
            assert!(allowed_unconditionally(&s, denied));
            continue;
        }
        assert!(
            rules_for(&s, denied).is_empty(),
            "{denied} must not be allowed by default"
        );
    }
    // s390 and arm only rules are filtered out on amd64
    assert!(rules_for(&s, "s390_runtime_instr").is_empty());
    assert!(rules_for(&s, "set_tls").is_empty());
}

#[test]
fn clone_is_restricted_without_sys_admin() {
    let caps = default_caps();
    let s = to_oci(&default_profile(), &target(&caps)).expect("should succeed");
    let clone = rules_for(&s, "clone");
    assert_eq!(clone.len(), 1, "only the amd64 masked rule");
    let args = clone[0].args().clone().expect("should succeed");
    assert_eq!(args.len(), 1);
    assert_eq!(args[0].index(), 0);
    assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    // libcontainer: value = datum, valueTwo = mask
    assert_eq!(
        (args[0].value(), args[0].value_two()),
        (0, Some(default::CLONE_NS_MASK))
    );
    let clone3 = rules_for(&s, "clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3[0].errno_ret(), Some(38));
    // personality is allowed only for the listed values
    let pers = rules_for(&s, "personality");
    assert_eq!(pers.len(), 5);
    assert!(pers.iter().all(|r| r
        .args()
        .as_ref()
        .is_some_and(|a| a[0].op() == LinuxSeccompOperator::ScmpCmpEq)));
    // socket: everything but AF_VSOCK
    let sock = rules_for(&s, "socket");
    assert_eq!(
        sock[0].args().clone().expect("should succeed")[0].value(),
        40
    );
}

#[test]
fn capabilities_open_their_syscalls() {
    let mut caps = default_caps();
    caps.push("CAP_SYS_ADMIN".into());
    caps.push("CAP_SYS_TIME".into());
    let s = to_oci(&default_profile(), &target(&caps)).expect("should succeed");
    for ok in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "settimeofday",
        "sethostname",
    ] {
        assert!(
            allowed_unconditionally(&s, ok),
            "{ok} should be allowed with CAP_SYS_ADMIN/CAP_SYS_TIME"
        );
    }
    assert!(
        rules_for(&s, "clone").iter().all(|r| r.args().is_none()),
        "no masked clone rule with SYS_ADMIN"
    );
    assert!(rules_for(&s, "clone3")
        .iter()
        .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
    assert!(rules_for(&s, "init_module").is_empty());

    let ptrace_caps = vec!["CAP_SYS_PTRACE".to_string()];
    let s = to_oci(&default_profile(), &target(&ptrace_caps)).expect("should succeed");
    assert!(allowed_unconditionally(&s, "kcmp"));
    assert!(
        rules_for(&s, "chroot").is_empty(),
        "chroot needs CAP_SYS_CHROOT"
    );
}

#[test]
fn min_kernel_filters() {
    let caps = default_caps();
    let old = Target {
        kernel: (4, 4),
        ..target(&caps)
    };
    let s = to_oci(&default_profile(), &old).expect("should succeed");
    assert!(rules_for(&s, "ptrace").is_empty());
    assert_eq!(parse_kernel("6.18.44-fc-v657"), Some((6, 18)));
    assert_eq!(parse_kernel("5"), Some((5, 0)));
    assert_eq!(parse_kernel("x"), None);
}

#[test]
fn custom_profile_from_json() {
    let json = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chmod"], "action": "SCMP_ACT_KILL_PROCESS", "includes": {"caps": ["CAP_NET_ADMIN"]}},
            {"names": ["kill"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
        ],
        "someFutureField": true
    }"#;
    let caps = default_caps();
    let s = to_oci(
        &parse_profile(json).expect("should succeed"),
        &target(&caps),
    )
    .expect("should succeed");
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(
        s.architectures().clone().expect("should succeed"),
        vec![Arch::ScmpArchX86_64]
    );
    let mkdir = rules_for(&s, "mkdir");
    assert_eq!(
        (mkdir[0].action(), mkdir[0].errno_ret()),
        (LinuxSeccompAction::ScmpActErrno, Some(13))
    );
    assert!(
        rules_for(&s, "chmod").is_empty(),
        "include on a cap the container lacks"
    );
    let kill = rules_for(&s, "kill")[0]
        .args()
        .clone()
        .expect("should succeed");
    assert_eq!(
        (kill[0].index(), kill[0].value(), kill[0].value_two()),
        (1, 9, None)
    );
}

#[test]
fn bad_profiles_are_400() {
    let caps = default_caps();
    let err = parse_profile("{not json").expect_err("should fail");
    assert!(
        err.to_string()
            .starts_with("Decoding seccomp profile failed"),
        "{err}"
    );
    assert_eq!(err.status(), 400);
    let both = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ALLOW"}]}"#;
    assert!(to_oci(
        &parse_profile(both).expect("should succeed"),
        &target(&caps)
    )
    .expect_err("should fail")
    .to_string()
    .contains("'name' and 'names'"));
    let arches = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86"],
        "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":null}]}"#;
    assert!(to_oci(
        &parse_profile(arches).expect("should succeed"),
        &target(&caps)
    )
    .is_err());
    assert!(parse_profile(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).is_err());
    assert!(to_oci(
        &parse_profile("{}").expect("should succeed"),
        &target(&caps)
    )
    .is_err());
}

#[test]
fn serializes_with_oci_names() {
    let caps = default_caps();
    let s = to_oci(&default_profile(), &target(&caps)).expect("should succeed");
    let json = serde_json::to_string(&s).expect("should succeed");
    assert!(
        json.contains("\"defaultAction\":\"SCMP_ACT_ERRNO\""),
        "{json}"
    );
    assert!(json.contains("\"defaultErrnoRet\":1"));
    assert!(json.contains("\"SCMP_ARCH_X86_64\""));
    assert!(json.contains("\"SCMP_CMP_MASKED_EQ\""));
    let back: LinuxSeccomp = serde_json::from_str(&json).expect("should succeed");
    assert_eq!(back, s);
}
