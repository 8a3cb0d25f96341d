//! The spec's mount list: dockerd's default mounts (`/proc`, `/dev`, ...), the `/etc` files,
//! `Binds`, `Mounts`, `Tmpfs` and the `--init` binary, merged and ordered as dockerd does,
//! then lxcfs's files over `/proc/meminfo`, … when the daemon runs with `--lxcfs`.

use super::binds::{self, UserMount, UserMountKind};
use super::process::INIT_PATH;
use super::SpecInput;
use crate::error::{ApiError, ApiResult};
use berth_api::models::HostConfig;
use oci_spec::runtime::Mount;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Default `/dev/shm` size (64 MiB) when `ShmSize` is unset.
pub const DEFAULT_SHM_SIZE: i64 = 64 << 20;

/// Builds one spec mount.
pub fn mount(dest: &str, typ: &str, source: &str, opts: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(opts.iter().map(|s| (*s).to_string()).collect()));
    m
}

/// dockerd's `DefaultLinuxSpec` mounts, in its order.
fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777"],
        ),
    ]
}

fn opts_of(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

fn dest_of(m: &Mount) -> String {
    m.destination().to_string_lossy().into_owned()
}

/// Number of path components, the key dockerd sorts container mounts by (parents first).
fn depth(dest: &str) -> usize {
    Path::new(dest).components().count()
}

/// The IPC mode's effect on `/dev/shm`.
enum Shm {
    /// Private tmpfs of this many bytes.
    Tmpfs(i64),
    /// Bind of a host directory.
    Bind(PathBuf),
    /// No `/dev/shm` at all (`--ipc none`).
    None,
}

fn shm_plan(input: &SpecInput) -> Shm {
    let mode = input.host_config.ipc_mode.as_deref().unwrap_or("");
    let size = input
        .host_config
        .shm_size
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SHM_SIZE);
    match (mode, input.shm_dir) {
        ("none", _) => Shm::None,
        (_, Some(dir)) => Shm::Bind(dir.to_path_buf()),
        ("host", None) => Shm::Bind(PathBuf::from("/dev/shm")),
        _ => Shm::Tmpfs(size),
    }
}

/// The spec's mounts and, when a bind asks for shared or slave propagation, the rootfs
/// propagation libcontainer needs (`shared` / `slave`).
pub fn build_mounts(
    input: &SpecInput,
    privileged: bool,
) -> ApiResult<(Vec<Mount>, Option<String>)> {
    let hc = input.host_config;
    let readonly = hc.readonly_rootfs.unwrap_or(false);

    // Container mounts: /etc files, shm bind, binds, Mounts, Tmpfs.
    let mut user: Vec<UserMount> = Vec::new();
    if let Some(etc) = &input.etc {
        for (dest, src) in [
            ("/etc/resolv.conf", etc.resolv_conf),
            ("/etc/hostname", etc.hostname),
            ("/etc/hosts", etc.hosts),
        ] {
            if let Some(src) = src {
                user.push(UserMount::bind(src, dest, !readonly));
            }
        }
    }
    let shm = shm_plan(input);
    if let Shm::Bind(dir) = &shm {
        user.push(UserMount::bind(dir, "/dev/shm", true));
    }
    let mut explicit: Vec<UserMount> = Vec::new();
    for raw in hc.binds.as_deref().unwrap_or_default() {
        explicit.push(binds::parse_bind(raw)?);
    }
    for m in hc.mounts.as_deref().unwrap_or_default() {
        explicit.push(binds::from_api_mount(m)?);
    }
    if let Some(tmpfs) = &hc.tmpfs {
        let mut keys: Vec<&String> = tmpfs.keys().collect();
        keys.sort();
        for dest in keys {
            explicit.push(binds::tmpfs_from_map(dest, &tmpfs[dest])?);
        }
    }
    let mut seen = HashSet::new();
    for m in &explicit {
        if !seen.insert(m.dest.clone()) {
            return Err(ApiError::BadRequest(format!(
                "Duplicate mount point: {}",
                m.dest
            )));
        }
    }
    // Explicit mounts replace the /etc files and the shm bind at the same place.
    user.retain(|m| !seen.contains(&m.dest));
    user.extend(explicit);
    for m in &user {
        binds::prepare_source(m)?;
    }
    user.sort_by_key(|m| depth(&m.dest));
    let user_dests: HashSet<String> = user.iter().map(|m| m.dest.clone()).collect();

    // Defaults, minus what the container mounts over.
    let mount_dev = user_dests.contains("/dev");
    let mut out: Vec<Mount> = Vec::new();
    for mut m in default_mounts() {
        let dest = dest_of(&m);
        if user_dests.contains(&dest) || (mount_dev && dest.starts_with("/dev/")) {
            continue;
        }
        if dest == "/dev/shm" {
            match shm {
                Shm::Tmpfs(size) => {
                    let mut o = opts_of(&m);
                    o.push(format!("size={size}"));
                    m.set_options(Some(o));
                }
                Shm::Bind(_) | Shm::None => continue,
            }
        }
        out.push(m);
    }
    if let Some(init) = input.init_binary.filter(|_| wants_init(input)) {
        out.push(mount(
            INIT_PATH,
            "bind",
            &init.to_string_lossy(),
            &["bind", "ro"],
        ));
    }

    let mut propagation: Option<String> = None;
    for m in &user {
        match &m.kind {
            UserMountKind::Tmpfs { options } => {
                let refs: Vec<&str> = options.iter().map(String::as_str).collect();
                out.push(mount(&m.dest, "tmpfs", "tmpfs", &refs));
            }
            UserMountKind::Bind {
                writable,
                propagation: prop,
                recursive,
            } => {
                let mut o = vec![if *recursive { "rbind" } else { "bind" }];
                if !writable {
                    o.push("ro");
                }
                let prop = prop.as_deref().unwrap_or("rprivate");
                o.push(prop);
                match prop {
                    "shared" | "rshared" => propagation = Some("shared".into()),
                    "slave" | "rslave" if propagation.is_none() => {
                        propagation = Some("slave".into())
                    }
                    _ => {}
                }
                out.push(mount(&m.dest, "bind", &m.source.to_string_lossy(), &o));
            }
        }
    }

    if readonly {
        for m in out.iter_mut() {
            let dest = dest_of(m);
            if matches!(
                dest.as_str(),
                "/proc" | "/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev"
            ) || user_dests.contains(&dest)
            {
                continue;
            }
            let mut o = opts_of(m);
            if !o.iter().any(|x| x == "ro") {
                o.push("ro".into());
                m.set_options(Some(o));
            }
        }
    }
    if privileged {
        for m in out.iter_mut() {
            if dest_of(m) == "/sys" || m.typ().as_deref() == Some("cgroup") {
                let o: Vec<String> = opts_of(m).into_iter().filter(|x| x != "ro").collect();
                m.set_options(Some(o));
            }
        }
    }
    if let Some(root) = input.lxcfs {
        // Last, over the /proc and /sys mounted above; writable like /proc itself (lxcfs
        // refuses writes anyway), so `--read-only` leaves them as they are.
        for target in crate::lxcfs::targets_for(user_dests.iter().map(String::as_str)) {
            let src = crate::lxcfs::source(root, target);
            if src.exists() {
                out.push(mount(
                    target,
                    "bind",
                    &src.to_string_lossy(),
                    &["bind", "rprivate"],
                ));
            }
        }
    }
    Ok((out, propagation))
}

/// The container paths the container's own `Binds`, `Mounts` and `Tmpfs` mount over (the
/// entries [`build_mounts`] accepted; unparseable ones are skipped).
pub fn user_destinations(hc: &HostConfig) -> Vec<String> {
    let binds = hc.binds.iter().flatten().map(|b| binds::parse_bind(b));
    let mounts = hc.mounts.iter().flatten().map(binds::from_api_mount);
    let tmpfs = hc
        .tmpfs
        .iter()
        .flatten()
        .map(|(dest, data)| binds::tmpfs_from_map(dest, data));
    binds
        .chain(mounts)
        .chain(tmpfs)
        .filter_map(|m| m.ok().map(|m| m.dest))
        .collect()
}

/// `--init` applies only with a private PID namespace (as in dockerd).
pub fn wants_init(input: &SpecInput) -> bool {
    input.host_config.init.unwrap_or(false)
        && input.init_binary.is_some()
        && input
            .host_config
            .pid_mode
            .as_deref()
            .unwrap_or("")
            .is_empty()
}
