//! Linux capabilities: dockerd's default set, `--cap-add`/`--cap-drop`/`--privileged`, and the
//! process capability sets written into the spec.

use crate::error::{ApiError, ApiResult};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Every capability berth knows, in kernel order: (name, number, spec value).
const ALL: &[(&str, u32, Capability)] = &[
    ("CAP_CHOWN", 0, Capability::Chown),
    ("CAP_DAC_OVERRIDE", 1, Capability::DacOverride),
    ("CAP_DAC_READ_SEARCH", 2, Capability::DacReadSearch),
    ("CAP_FOWNER", 3, Capability::Fowner),
    ("CAP_FSETID", 4, Capability::Fsetid),
    ("CAP_KILL", 5, Capability::Kill),
    ("CAP_SETGID", 6, Capability::Setgid),
    ("CAP_SETUID", 7, Capability::Setuid),
    ("CAP_SETPCAP", 8, Capability::Setpcap),
    ("CAP_LINUX_IMMUTABLE", 9, Capability::LinuxImmutable),
    ("CAP_NET_BIND_SERVICE", 10, Capability::NetBindService),
    ("CAP_NET_BROADCAST", 11, Capability::NetBroadcast),
    ("CAP_NET_ADMIN", 12, Capability::NetAdmin),
    ("CAP_NET_RAW", 13, Capability::NetRaw),
    ("CAP_IPC_LOCK", 14, Capability::IpcLock),
    ("CAP_IPC_OWNER", 15, Capability::IpcOwner),
    ("CAP_SYS_MODULE", 16, Capability::SysModule),
    ("CAP_SYS_RAWIO", 17, Capability::SysRawio),
    ("CAP_SYS_CHROOT", 18, Capability::SysChroot),
    ("CAP_SYS_PTRACE", 19, Capability::SysPtrace),
    ("CAP_SYS_PACCT", 20, Capability::SysPacct),
    ("CAP_SYS_ADMIN", 21, Capability::SysAdmin),
    ("CAP_SYS_BOOT", 22, Capability::SysBoot),
    ("CAP_SYS_NICE", 23, Capability::SysNice),
    ("CAP_SYS_RESOURCE", 24, Capability::SysResource),
    ("CAP_SYS_TIME", 25, Capability::SysTime),
    ("CAP_SYS_TTY_CONFIG", 26, Capability::SysTtyConfig),
    ("CAP_MKNOD", 27, Capability::Mknod),
    ("CAP_LEASE", 28, Capability::Lease),
    ("CAP_AUDIT_WRITE", 29, Capability::AuditWrite),
    ("CAP_AUDIT_CONTROL", 30, Capability::AuditControl),
    ("CAP_SETFCAP", 31, Capability::Setfcap),
    ("CAP_MAC_OVERRIDE", 32, Capability::MacOverride),
    ("CAP_MAC_ADMIN", 33, Capability::MacAdmin),
    ("CAP_SYSLOG", 34, Capability::Syslog),
    ("CAP_WAKE_ALARM", 35, Capability::WakeAlarm),
    ("CAP_BLOCK_SUSPEND", 36, Capability::BlockSuspend),
    ("CAP_AUDIT_READ", 37, Capability::AuditRead),
    ("CAP_PERFMON", 38, Capability::Perfmon),
    ("CAP_BPF", 39, Capability::Bpf),
    ("CAP_CHECKPOINT_RESTORE", 40, Capability::CheckpointRestore),
];

/// dockerd's default capability set (`oci.DefaultCapabilities`), in its order.
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What the host allows: the kernel's highest capability and the set this daemon holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// Bit mask of the capabilities the daemon (and so the shim) holds; a container cannot be
    /// given more, since `capset` only ever lowers the permitted set.
    pub held: u64,
}

impl Available {
    /// Every capability up to `last_cap`, all held.
    pub fn all(last_cap: u32) -> Self {
        Available {
            last_cap,
            held: u64::MAX,
        }
    }

    fn known(&self, n: u32) -> bool {
        n <= self.last_cap
    }

    fn holds(&self, n: u32) -> bool {
        self.known(n) && n < 64 && self.held & (1u64 << n) != 0
    }
}

/// Every capability the kernel supports and the daemon holds, by name: what `--privileged`
/// and `--cap-add ALL` grant (as dockerd does since it detects the current environment).
pub fn all_caps(avail: &Available) -> Vec<String> {
    ALL.iter()
        .filter(|(_, n, _)| avail.holds(*n))
        .map(|(name, _, _)| (*name).to_string())
        .collect()
}

/// Upper-cases and `CAP_`-prefixes each entry (keeping `ALL`), rejecting unknown names with
/// dockerd's `unknown capability: "CAP_X"`, and names the daemon does not hold with its
/// `capability not supported by your kernel or not available in the current environment`.
fn normalize(caps: &[String], avail: &Available) -> ApiResult<Vec<String>> {
    let mut out = Vec::with_capacity(caps.len());
    for c in caps {
        let mut c = c.trim().to_ascii_uppercase();
        if c == "ALL" {
            out.push(c);
            continue;
        }
        if !c.starts_with("CAP_") {
            c = format!("CAP_{c}");
        }
        match ALL.iter().find(|(name, _, _)| *name == c) {
            Some((_, n, _)) if avail.holds(*n) => {}
            Some((_, n, _)) if avail.known(*n) => {
                return Err(ApiError::BadRequest(format!(
                    "capability not supported by your kernel or not available in the current environment: \"{c}\""
                )))
            }
            _ => return Err(ApiError::BadRequest(format!("unknown capability: \"{c}\""))),
        }
        out.push(c);
    }
    Ok(out)
}

/// The effective capability list for a container, as dockerd's `TweakCapabilities` computes it:
/// privileged gets everything; `ALL` in CapAdd adds all but CapDrop; `ALL` in CapDrop keeps only
/// CapAdd; otherwise the defaults minus CapDrop plus CapAdd.
pub fn tweak(
    adds: &[String],
    drops: &[String],
    privileged: bool,
    avail: &Available,
) -> ApiResult<Vec<String>> {
    if privileged {
        return Ok(all_caps(avail));
    }
    let basics: Vec<String> = DEFAULT.iter().map(|s| (*s).to_string()).collect();
    if adds.is_empty() && drops.is_empty() {
        return Ok(basics);
    }
    let drops = normalize(drops, avail)?;
    let adds = normalize(adds, avail)?;
    let all = "ALL".to_string();
    let mut caps: Vec<String> = if adds.contains(&all) {
        all_caps(avail)
            .into_iter()
            .filter(|c| !drops.contains(c))
            .collect()
    } else if drops.contains(&all) {
        adds.clone()
    } else {
        let mut v: Vec<String> = basics.into_iter().filter(|c| !drops.contains(c)).collect();
        v.extend(adds.iter().cloned());
        v
    };
    caps.retain(|c| c != "ALL");
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| seen.insert(c.clone()));
    Ok(caps)
}

/// Converts capability names into the spec's set type (names were validated by [`tweak`]).
pub fn to_set(caps: &[String]) -> Capabilities {
    caps.iter()
        .filter_map(|c| {
            ALL.iter()
                .find(|(name, _, _)| name == c)
                .map(|(_, _, cap)| *cap)
        })
        .collect()
}

/// The process capability sets: root gets bounding, effective and permitted; any other user
/// only the bounding set, to match what execve does (dockerd's `SetCapabilities`).
pub fn process_caps(caps: &[String], uid: u32) -> LinuxCapabilities {
    let set = to_set(caps);
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(set.clone()));
    lc.set_inheritable(None);
    lc.set_ambient(None);
    if uid == 0 {
        lc.set_effective(Some(set.clone()));
        lc.set_permitted(Some(set));
    } else {
        lc.set_effective(None);
        lc.set_permitted(None);
    }
    lc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn defaults_without_tweaks() {
        let caps = tweak(&[], &[], false, &Available::all(40)).expect("should succeed");
        assert_eq!(caps, s(DEFAULT));
        assert_eq!(caps.len(), 14);
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn add_and_drop_accept_both_spellings() {
        let caps = tweak(
            &s(&["net_admin", "CAP_SYS_PTRACE"]),
            &s(&["MKNOD", "cap_chown"]),
            false,
            &Available::all(40),
        )
        .expect("should succeed");
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(caps.contains(&"CAP_SYS_PTRACE".to_string()));
        assert!(!caps.contains(&"CAP_MKNOD".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(caps.contains(&"CAP_KILL".to_string()));
    }

    #[test]
    fn add_all_minus_drops() {
        let caps = tweak(&s(&["ALL"]), &s(&["NET_ADMIN"]), false, &Available::all(40))
            .expect("should succeed");
        assert_eq!(caps.len(), 40);
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_NET_ADMIN".to_string()));
    }

    #[test]
    fn drop_all_keeps_only_adds() {
        let caps = tweak(&s(&["CHOWN"]), &s(&["all"]), false, &Available::all(40))
            .expect("should succeed");
        assert_eq!(caps, s(&["CAP_CHOWN"]));
        let none = tweak(&[], &s(&["ALL"]), false, &Available::all(40)).expect("should succeed");
        assert!(none.is_empty());
    }

    #[test]
    fn privileged_gets_what_the_kernel_has() {
        assert_eq!(
            tweak(&[], &s(&["ALL"]), true, &Available::all(40))
                .expect("should succeed")
                .len(),
            41
        );
        let old_kernel = tweak(&[], &[], true, &Available::all(37)).expect("should succeed");
        assert_eq!(old_kernel.len(), 38);
        assert!(!old_kernel.contains(&"CAP_BPF".to_string()));
    }

    #[test]
    fn unknown_capability_is_400() {
        let err = tweak(&s(&["FOO"]), &[], false, &Available::all(40)).expect_err("should fail");
        assert_eq!(
            err,
            ApiError::BadRequest("unknown capability: \"CAP_FOO\"".into())
        );
        // a cap newer than the kernel counts as unknown
        assert!(tweak(&s(&["BPF"]), &[], false, &Available::all(37)).is_err());
    }

    #[test]
    fn caps_the_daemon_lacks_are_never_granted() {
        // A host whose bounding set lacks CAP_SYS_RESOURCE (24), as in some VMs.
        let avail = Available {
            last_cap: 40,
            held: 0x1ff_feff_ffff,
        };
        let all = tweak(&[], &[], true, &avail).expect("privileged");
        assert_eq!(all.len(), 40);
        assert!(!all.contains(&"CAP_SYS_RESOURCE".to_string()));
        let add_all = tweak(&s(&["ALL"]), &[], false, &avail).expect("cap-add ALL");
        assert_eq!(add_all, all);
        let err = tweak(&s(&["SYS_RESOURCE"]), &[], false, &avail).expect_err("not held");
        assert_eq!(
            err,
            ApiError::BadRequest(
                "capability not supported by your kernel or not available in the current environment: \"CAP_SYS_RESOURCE\"".into()
            )
        );
        // Dropping it is harmless; it is not in the defaults anyway.
        assert!(tweak(&[], &s(&["CHOWN"]), false, &avail).is_ok());
    }

    #[test]
    fn non_root_gets_bounding_only() {
        let caps = s(DEFAULT);
        let root = process_caps(&caps, 0);
        assert_eq!(root.effective().as_ref().map(|e| e.len()), Some(14));
        assert_eq!(root.permitted().as_ref().map(|e| e.len()), Some(14));
        assert!(root.inheritable().is_none() && root.ambient().is_none());
        let user = process_caps(&caps, 1000);
        assert_eq!(user.bounding().as_ref().map(|e| e.len()), Some(14));
        assert!(user.effective().is_none() && user.permitted().is_none());
        assert!(user
            .bounding()
            .as_ref()
            .is_some_and(|b| b.contains(&Capability::NetBindService)));
    }
}
