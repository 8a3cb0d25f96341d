//! OCI runtime spec (`config.json`) generation: turns a container's Docker `Config` and
//! `HostConfig` into the [`Spec`] that `berth-shim` hands to libcontainer, with dockerd 20.10's
//! security defaults (capabilities, seccomp, masked paths, device rules).
//!
//! [`build`] uses the host's facts (cgroup features, kernel, capabilities) read once through
//! [`HostInfo`]; [`build_with`] takes them explicitly so tests can pin them. [`verify`] holds
//! dockerd's resource checks, run at create and again at start.

pub mod binds;
pub mod caps;
pub mod devices;
pub mod host;
pub mod mounts;
pub mod process;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod user;
pub mod verify;

pub use host::{CgroupCaps, HostInfo};
pub use process::{merge_env, process_args};
pub use user::{resolve_user, user_home};

use crate::error::{ApiError, ApiResult};
use berth_api::models::{self, HostConfigCgroupnsModeEnum};
use oci_spec::runtime::{Linux, LinuxNamespace, LinuxNamespaceType, Process, Root, Spec, User};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Host files bind-mounted over the container's `/etc` (each optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcPaths<'a> {
    /// Mounted at `/etc/resolv.conf`.
    pub resolv_conf: Option<&'a Path>,
    /// Mounted at `/etc/hostname`.
    pub hostname: Option<&'a Path>,
    /// Mounted at `/etc/hosts`.
    pub hosts: Option<&'a Path>,
}

/// Everything [`build`] needs to know about one container start.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// Full container id (its first 12 characters are the default hostname).
    pub id: &'a str,
    /// The mounted root filesystem (overlay merged dir).
    pub rootfs: &'a Path,
    /// The container's `Config`, already merged with the image's defaults.
    pub config: &'a models::ContainerConfig,
    /// The container's `HostConfig`.
    pub host_config: &'a models::HostConfig,
    /// Network namespace to join; `None` runs in the host's network namespace.
    pub netns: Option<&'a Path>,
    /// `/etc/resolv.conf`, `/etc/hostname`, `/etc/hosts` to bind-mount.
    pub etc: Option<EtcPaths<'a>>,
    /// Absolute cgroup path, e.g. `/berth/<id>`.
    pub cgroup_path: String,
    /// Static init (tini) bind-mounted at `/sbin/docker-init` for `--init`.
    pub init_binary: Option<&'a Path>,
    /// Host directory bound at `/dev/shm` (shareable/host IPC); `None` gives a private tmpfs of
    /// `ShmSize` (64 MiB by default).
    pub shm_dir: Option<&'a Path>,
    /// lxcfs's mount point: its files that exist are bound over `/proc/meminfo`, … (see
    /// [`crate::lxcfs::TARGETS`]), except where the container mounts something itself.
    pub lxcfs: Option<&'a Path>,
}

/// Paths hidden from non-privileged containers (dockerd's default `MaskedPaths`).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in non-privileged containers (dockerd's default `ReadonlyPaths`).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the spec for one container start on this host.
///
/// Side effects, as dockerd has at start: missing `Binds` source directories are created on
/// the host (0755), and the working directory is created inside the rootfs (owned by the
/// container user). Input errors are 400 with dockerd's wording; `container:` namespace modes
/// and user namespaces are 501.
pub fn build(input: &SpecInput) -> ApiResult<Spec> {
    build_with(input, HostInfo::get())
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The namespaces dockerd would create for these modes.
fn namespaces(input: &SpecInput, host: &HostInfo) -> ApiResult<Vec<LinuxNamespace>> {
    let hc = input.host_config;
    let unsupported = |what: &str, mode: &str| {
        ApiError::NotImplemented(format!("{what} mode {mode} is not supported yet"))
    };
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)];
    if let Some(path) = input.netns {
        out.push(namespace(LinuxNamespaceType::Network, Some(path)));
    }
    match hc.uts_mode.as_deref().unwrap_or("") {
        "" => out.push(namespace(LinuxNamespaceType::Uts, None)),
        "host" => {}
        m => return Err(ApiError::BadRequest(format!("invalid UTS mode: {m}"))),
    }
    match hc.pid_mode.as_deref().unwrap_or("") {
        "" => out.push(namespace(LinuxNamespaceType::Pid, None)),
        "host" => {}
        m if m.starts_with("container:") => return Err(unsupported("PID", m)),
        m => return Err(ApiError::BadRequest(format!("invalid PID mode: {m}"))),
    }
    match hc.ipc_mode.as_deref().unwrap_or("") {
        "" | "private" | "shareable" | "none" => out.push(namespace(LinuxNamespaceType::Ipc, None)),
        "host" => {}
        m if m.starts_with("container:") => return Err(unsupported("IPC", m)),
        m => return Err(ApiError::BadRequest(format!("invalid IPC mode: {m}"))),
    }
    let cgroupns = match hc.cgroupns_mode {
        Some(HostConfigCgroupnsModeEnum::PRIVATE) => true,
        Some(HostConfigCgroupnsModeEnum::HOST) => false,
        Some(HostConfigCgroupnsModeEnum::EMPTY) | None => host.cgroup_v2,
    };
    if cgroupns {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    match hc.userns_mode.as_deref().unwrap_or("") {
        "" | "host" => {}
        m => return Err(unsupported("user namespace", m)),
    }
    Ok(out)
}

/// Sysctls: dockerd's two network defaults for a private network namespace, then
/// `HostConfig.Sysctls` on top.
fn sysctls(input: &SpecInput, host: &HostInfo) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    if input.netns.is_some() {
        if host.ping_group_range {
            out.insert(
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            );
        }
        if host.unprivileged_port_start {
            out.insert(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            );
        }
    }
    for (k, v) in input.host_config.sysctls.iter().flatten() {
        if input.netns.is_none() && k.starts_with("net.") {
            return Err(ApiError::BadRequest(format!(
                "sysctl \"{k}\" is not allowed in host network namespace"
            )));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// Builds the spec with explicit host facts.
pub fn build_with(input: &SpecInput, host: &HostInfo) -> ApiResult<Spec> {
    let cfg = input.config;
    let hc = input.host_config;
    let privileged = hc.privileged.unwrap_or(false);
    let sec = security::parse(hc.security_opt.as_deref().unwrap_or_default())?;

    // Process.
    let mut args = process_args(cfg)?;
    if hc.init.unwrap_or(false) && hc.pid_mode.as_deref().unwrap_or("").is_empty() {
        if input.init_binary.is_none() {
            return Err(ApiError::Internal(
                "exec: \"docker-init\": executable file not found in $PATH".into(),
            ));
        }
        let mut with_init = vec![process::INIT_PATH.to_string(), "--".to_string()];
        with_init.append(&mut args);
        args = with_init;
    }
    let uts_host = hc.uts_mode.as_deref() == Some("host");
    let hostname = cfg
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| input.id.chars().take(12).collect());
    let (uid, gid, mut additional) = resolve_user(input.rootfs, cfg.user.as_deref().unwrap_or(""))?;
    additional.extend(user::resolve_group_add(
        input.rootfs,
        hc.group_add.as_deref().unwrap_or_default(),
    )?);
    let cwd = match cfg.working_dir.as_deref().filter(|w| !w.is_empty()) {
        None => "/".to_string(),
        Some(w) if !w.starts_with('/') => {
            return Err(ApiError::BadRequest(format!(
                "the working directory '{w}' is invalid, it needs to be an absolute path"
            )))
        }
        Some(w) => binds::clean(w),
    };
    user::mkdir_in_root(input.rootfs, &cwd, uid, gid)?;
    let cap_list = caps::tweak(
        hc.cap_add.as_deref().unwrap_or_default(),
        hc.cap_drop.as_deref().unwrap_or_default(),
        privileged,
        &caps::Available {
            last_cap: host.cap_last_cap,
            held: host.cap_held,
        },
    )?;
    let oom = hc.oom_score_adj.unwrap_or(0);
    if !(-1000..=1000).contains(&oom) {
        return Err(ApiError::BadRequest(format!(
            "Invalid value {oom}, range for oom score adj is [-1000, 1000]"
        )));
    }

    let mut u = User::default();
    u.set_uid(uid);
    u.set_gid(gid);
    u.set_additional_gids(Some(additional));
    let mut p = Process::default();
    p.set_terminal(Some(cfg.tty.unwrap_or(false)));
    p.set_console_size(process::console_size(cfg, hc));
    p.set_user(u);
    p.set_args(Some(args));
    let home = user_home(input.rootfs, cfg.user.as_deref().unwrap_or(""))?;
    p.set_env(Some(process::daemon_env(cfg, &hostname, &home)));
    p.set_cwd(PathBuf::from(cwd));
    p.set_capabilities(Some(caps::process_caps(&cap_list, uid)));
    let rlimits = process::rlimits(hc.ulimits.as_deref().unwrap_or_default())?;
    p.set_rlimits((!rlimits.is_empty()).then_some(rlimits));
    // libcontainer reads `Some(false)` like `Some(true)` when ordering seccomp; leave it unset.
    p.set_no_new_privileges(sec.no_new_privileges.then_some(true));
    p.set_oom_score_adj(Some(oom as i32));
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(hc.readonly_rootfs.unwrap_or(false)));

    let (mounts, propagation) = mounts::build_mounts(input, privileged)?;

    // Devices and resources.
    let mut res = resources::resources(hc, host)?;
    let mut devs = Vec::new();
    let mut rules;
    if privileged {
        devs = devices::host_devices(&host.dev_dir);
        rules = devices::privileged_rules();
        for m in hc.devices.iter().flatten() {
            if m.path_on_host == m.path_in_container
                || m.path_in_container.as_deref().unwrap_or("").is_empty()
            {
                continue;
            }
            devs.extend(devices::from_mapping(m)?.0);
        }
    } else {
        rules = devices::default_rules();
        for m in hc.devices.iter().flatten() {
            let (d, r) = devices::from_mapping(m)?;
            devs.extend(d);
            rules.extend(r);
        }
        for raw in hc.device_cgroup_rules.iter().flatten() {
            rules.push(devices::parse_cgroup_rule(raw)?);
        }
    }
    res.set_devices(Some(rules));

    let seccomp = match sec.seccomp.as_deref() {
        _ if privileged => None,
        Some("unconfined") => None,
        None | Some("") | Some("builtin") => Some(seccomp::default_profile()),
        Some(json) => Some(seccomp::parse_profile(json)?),
    };
    let seccomp = match seccomp {
        None => None,
        Some(profile) => {
            let (go_arch, native) = seccomp::native_arch();
            let target = seccomp::Target {
                caps: &cap_list,
                go_arch,
                native,
                kernel: host.kernel,
            };
            Some(seccomp::to_oci(&profile, &target)?)
        }
    };

    let paths = |given: &Option<Vec<String>>, default: &[&str]| -> Option<Vec<String>> {
        if privileged {
            return None;
        }
        Some(
            given
                .clone()
                .unwrap_or_else(|| default.iter().map(|s| (*s).to_string()).collect()),
        )
    };

    let mut linux = Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(Some(sysctls(input, host)?));
    linux.set_resources(Some(res));
    linux.set_cgroups_path(Some(PathBuf::from(&input.cgroup_path)));
    linux.set_namespaces(Some(namespaces(input, host)?));
    linux.set_devices(Some(devs));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(propagation);
    linux.set_masked_paths(paths(&hc.masked_paths, MASKED_PATHS));
    linux.set_readonly_paths(paths(&hc.readonly_paths, READONLY_PATHS));
    linux.set_mount_label(None);

    let mut spec = Spec::default();
    spec.set_root(Some(root));
    spec.set_process(Some(p));
    spec.set_mounts(Some(mounts));
    spec.set_hostname((!uts_host).then_some(hostname));
    spec.set_domainname(
        cfg.domainname
            .clone()
            .filter(|d| !d.is_empty() && !uts_host),
    );
    spec.set_hooks(None);
    spec.set_annotations(hc.annotations.clone().filter(|a| !a.is_empty()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
