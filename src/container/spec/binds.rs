//! Parsing the container's own mounts: `HostConfig.Binds` (`/src:/dst[:mode]`),
//! `HostConfig.Mounts` (bind and tmpfs) and `HostConfig.Tmpfs`, with dockerd's validation and
//! error wording.

use crate::error::{ApiError, ApiResult};
use berth_api::models::{self, MountBindOptionsPropagationEnum, MountTypeEnum};
use std::path::{Path, PathBuf};

/// A mount the container asked for (or the daemon adds, like `/etc/hosts`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserMount {
    /// Cleaned absolute destination inside the container.
    pub dest: String,
    /// Host source (binds) or `tmpfs`.
    pub source: PathBuf,
    /// What kind of mount.
    pub kind: UserMountKind,
    /// Create a missing bind source directory (Binds do, the Mounts API refuses).
    pub create_source: bool,
}

/// Bind or tmpfs specifics.
#[derive(Debug, Clone, PartialEq)]
pub enum UserMountKind {
    /// A bind mount.
    Bind {
        /// `rw` (true) or `ro`.
        writable: bool,
        /// Propagation mode, `rprivate` when unset.
        propagation: Option<String>,
        /// `rbind` (true) or `bind`.
        recursive: bool,
    },
    /// A tmpfs with its merged options.
    Tmpfs {
        /// Mount options, already merged (`noexec,nosuid,nodev,rprivate,...`).
        options: Vec<String>,
    },
}

impl UserMount {
    /// A recursive private bind that the daemon itself adds.
    pub fn bind(src: &Path, dest: &str, writable: bool) -> Self {
        UserMount {
            dest: dest.to_string(),
            source: src.to_path_buf(),
            kind: UserMountKind::Bind {
                writable,
                propagation: None,
                recursive: true,
            },
            create_source: false,
        }
    }
}

const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// Lexically cleans an absolute path (`//a/./b/../c` → `/a/c`), like Go's `filepath.Clean`.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    format!("/{}", parts.join("/"))
}

/// dockerd's `ValidMountMode` for Linux: a comma list with at most one of each kind.
fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let mut counts = [0u8; 5];
    for o in mode.split(',') {
        let kind = match o {
            "rw" | "ro" => 0,
            "z" | "Z" => 1,
            x if PROPAGATIONS.contains(&x) => 2,
            "nocopy" => 3,
            "consistent" | "cached" | "delegated" => 4,
            _ => return false,
        };
        counts[kind] += 1;
    }
    counts.iter().all(|c| *c <= 1)
}

fn check_dest(raw_err: &dyn Fn(String) -> ApiError, dest: &str) -> ApiResult<String> {
    if dest.is_empty() {
        return Err(raw_err("field Target must not be empty".into()));
    }
    if !dest.starts_with('/') {
        return Err(raw_err(format!(
            "invalid mount path: '{dest}' mount path must be absolute"
        )));
    }
    let c = clean(dest);
    if c == "/" {
        return Err(raw_err(
            "invalid specification: destination can't be '/'".into(),
        ));
    }
    Ok(c)
}

/// Parses one `Binds` entry: `/host:/ctr`, `/host:/ctr:ro,rslave`, ... A relative source is a
/// named volume, which berth does not support yet.
pub fn parse_bind(raw: &str) -> ApiResult<UserMount> {
    let invalid = || ApiError::BadRequest(format!("invalid volume specification: '{raw}'"));
    let parts: Vec<&str> = raw.splitn(4, ':').collect();
    if parts[0].is_empty() {
        return Err(invalid());
    }
    let (src, dst, mode) = match parts.as_slice() {
        [_] => {
            return Err(ApiError::BadRequest(
                "named volumes are not supported yet".into(),
            ))
        }
        [s, d] => {
            if valid_mode(d) {
                return Err(invalid());
            }
            (*s, *d, "")
        }
        [s, d, m] => (*s, *d, *m),
        _ => return Err(invalid()),
    };
    if !valid_mode(mode) {
        return Err(ApiError::BadRequest(format!("invalid mode: {mode}")));
    }
    if !src.starts_with('/') {
        return Err(ApiError::BadRequest(
            "named volumes are not supported yet".into(),
        ));
    }
    let wrap = |e: String| {
        ApiError::BadRequest(format!(
            "invalid volume specification: '{raw}': invalid mount config for type \"bind\": {e}"
        ))
    };
    let dest = check_dest(&wrap, dst)?;
    let opts: Vec<&str> = mode.split(',').collect();
    Ok(UserMount {
        dest,
        source: PathBuf::from(clean(src)),
        kind: UserMountKind::Bind {
            writable: !opts.contains(&"ro"),
            propagation: opts
                .iter()
                .find(|o| PROPAGATIONS.contains(o))
                .map(|s| s.to_string()),
            recursive: true,
        },
        create_source: true,
    })
}

/// Converts one `HostConfig.Mounts` entry (types `bind` and `tmpfs`).
pub fn from_api_mount(m: &models::Mount) -> ApiResult<UserMount> {
    let typ = m.typ.unwrap_or(MountTypeEnum::EMPTY);
    let wrap =
        |e: String| ApiError::BadRequest(format!("invalid mount config for type \"{typ}\": {e}"));
    let dest = check_dest(&wrap, m.target.as_deref().unwrap_or(""))?;
    let source = m.source.as_deref().unwrap_or("");
    match typ {
        MountTypeEnum::BIND => {
            if m.tmpfs_options.is_some() {
                return Err(wrap("field TmpfsOptions must not be specified".into()));
            }
            if source.is_empty() {
                return Err(wrap("field Source must not be empty".into()));
            }
            if !source.starts_with('/') {
                return Err(wrap(format!(
                    "invalid mount path: '{source}' mount path must be absolute"
                )));
            }
            let bo = m.bind_options.clone().unwrap_or_default();
            let propagation = bo
                .propagation
                .filter(|p| *p != MountBindOptionsPropagationEnum::EMPTY)
                .map(|p| p.to_string());
            Ok(UserMount {
                dest,
                source: PathBuf::from(clean(source)),
                kind: UserMountKind::Bind {
                    writable: !m.read_only.unwrap_or(false),
                    propagation,
                    recursive: !bo.non_recursive.unwrap_or(false),
                },
                create_source: bo.create_mountpoint.unwrap_or(false),
            })
        }
        MountTypeEnum::TMPFS => {
            if !source.is_empty() {
                return Err(wrap("field Source must not be specified".into()));
            }
            if m.bind_options.is_some() {
                return Err(wrap("field BindOptions must not be specified".into()));
            }
            let mut data: Vec<String> = Vec::new();
            if m.read_only.unwrap_or(false) {
                data.push("ro".into());
            }
            if let Some(t) = &m.tmpfs_options {
                if let Some(mode) = t.mode.filter(|m| *m != 0) {
                    data.push(format!("mode={mode:o}"));
                }
                if let Some(size) = t.size_bytes.filter(|s| *s != 0) {
                    data.push(format!("size={}", size_with_suffix(size)));
                }
                for kv in t.options.as_deref().unwrap_or_default() {
                    match kv.as_slice() {
                        [k] => data.push(k.clone()),
                        [k, v] => data.push(format!("{k}={v}")),
                        _ => return Err(wrap(format!("invalid tmpfs option {kv:?}"))),
                    }
                }
            }
            tmpfs_from_map(&dest, &data.join(","))
        }
        MountTypeEnum::VOLUME => Err(ApiError::BadRequest(
            "named volumes are not supported yet".into(),
        )),
        other => Err(ApiError::BadRequest(format!(
            "mount type unknown or not supported: {other}"
        ))),
    }
}

/// `SizeBytes` with dockerd's k/m/g suffix when it divides evenly.
fn size_with_suffix(size: i64) -> String {
    const K: i64 = 1024;
    if size % (K * K * K) == 0 {
        format!("{}g", size / (K * K * K))
    } else if size % (K * K) == 0 {
        format!("{}m", size / (K * K))
    } else if size % K == 0 {
        format!("{}k", size / K)
    } else {
        size.to_string()
    }
}

/// One `HostConfig.Tmpfs` entry: `"/run": "size=1m,exec"`.
pub fn tmpfs_from_map(dest: &str, data: &str) -> ApiResult<UserMount> {
    let wrap =
        |e: String| ApiError::BadRequest(format!("invalid mount config for type \"tmpfs\": {e}"));
    let dest = check_dest(&wrap, dest)?;
    let mut opts: Vec<String> = ["noexec", "nosuid", "nodev", "rprivate"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !data.is_empty() {
        opts.extend(data.split(',').map(str::to_string));
    }
    Ok(UserMount {
        dest,
        source: PathBuf::from("tmpfs"),
        kind: UserMountKind::Tmpfs {
            options: merge_tmpfs_options(&opts)?,
        },
        create_source: false,
    })
}

/// Flag options and the "slot" they occupy: a later option in the same slot wins.
fn flag_slot(opt: &str) -> Option<u8> {
    Some(match opt {
        "ro" | "rw" => 1,
        "suid" | "nosuid" => 2,
        "dev" | "nodev" => 3,
        "exec" | "noexec" => 4,
        "sync" | "async" => 5,
        "dirsync" => 6,
        "remount" => 7,
        "mand" | "nomand" => 8,
        "atime" | "noatime" => 9,
        "diratime" | "nodiratime" => 10,
        "bind" | "rbind" => 11,
        "relatime" | "norelatime" => 12,
        "strictatime" | "nostrictatime" => 13,
        x if PROPAGATIONS.contains(&x) || x == "unbindable" || x == "runbindable" => 0,
        _ => return None,
    })
}

/// dockerd's `MergeTmpfsOptions`: deduplicates flags and `key=value` data (the last one wins)
/// and rejects unknown options with `Invalid tmpfs option ["x"]`.
pub fn merge_tmpfs_options(options: &[String]) -> ApiResult<Vec<String>> {
    const DATA_KEYS: &[&str] = &[
        "size",
        "mode",
        "uid",
        "gid",
        "nr_inodes",
        "nr_blocks",
        "mpol",
    ];
    let mut flags_seen = std::collections::HashSet::new();
    let mut data_seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for opt in options.iter().rev() {
        if opt == "defaults" {
            continue;
        }
        if let Some(slot) = flag_slot(opt) {
            if flags_seen.insert(slot) {
                out.insert(0, opt.clone());
            }
            continue;
        }
        match opt.split_once('=') {
            Some((k, _)) if DATA_KEYS.contains(&k) => {
                if data_seen.insert(k.to_string()) {
                    out.insert(0, opt.clone());
                }
            }
            _ => {
                let quoted: Vec<String> = opt.splitn(2, '=').map(|p| format!("{p:?}")).collect();
                return Err(ApiError::BadRequest(format!(
                    "Invalid tmpfs option [{}]",
                    quoted.join(" ")
                )));
            }
        }
    }
    Ok(out)
}

/// Checks a bind source before start: Binds create a missing directory (0755) like dockerd,
/// the Mounts API refuses a missing source.
pub fn prepare_source(m: &UserMount) -> ApiResult<()> {
    if !matches!(m.kind, UserMountKind::Bind { .. }) {
        return Ok(());
    }
    match std::fs::symlink_metadata(&m.source) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !m.create_source {
                return Err(ApiError::BadRequest(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    m.source.display()
                )));
            }
            std::fs::create_dir_all(&m.source).map_err(|e| {
                ApiError::internal(&format!("create bind source {}", m.source.display()), e)
            })
        }
        Err(e) => Err(ApiError::internal(
            &format!("stat bind source {}", m.source.display()),
            e,
        )),
    }
}

#[cfg(test)]
#[path = "binds_tests.rs"]
mod tests;
