//! `docker diff` (`GET /containers/{id}/changes`): what the container changed, read from
//! its overlay upper dir the way dockerd's overlay2 driver does (`archive.OverlayChanges`):
//! a 0:0 character device is a deletion, an opaque directory is reported deleted (its
//! contents follow as added), anything else is modified when a lower layer has the path
//! and added otherwise; the parent of an addition or deletion is listed as modified once.
//! Paths the runtime creates as mount points (dockerd keeps them in its `-init` layer)
//! are left out, as dockerd never lists them.

use super::rootfs::Rootfs;
use super::Containers;
use crate::error::{ApiError, ApiResult};
use serde::Serialize;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One entry of the answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// Container path.
    #[serde(rename = "Path")]
    pub path: String,
    /// 0 modified, 1 added, 2 deleted.
    #[serde(rename = "Kind")]
    pub kind: u8,
}

/// Modified.
pub const MODIFIED: u8 = 0;
/// Added.
pub const ADDED: u8 = 1;
/// Deleted.
pub const DELETED: u8 = 2;

/// What dockerd's init layer holds: mount points and files the runtime provides.
const INIT_PATHS: &[&str] = &[
    "/.dockerenv",
    "/dev",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/mtab",
    "/etc/resolv.conf",
    "/proc",
    "/sys",
];

/// `path` (absolute, container) in a lower layer, without following any symlink: every
/// parent must be a real directory of that layer.
fn lower_meta(layer: &Path, path: &str) -> Option<fs::Metadata> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (last, parents) = comps.split_last()?;
    let mut p = layer.to_path_buf();
    for c in parents {
        p.push(c);
        if !fs::symlink_metadata(&p).ok()?.is_dir() {
            return None;
        }
    }
    p.push(last);
    fs::symlink_metadata(&p).ok()
}

/// Whether directory `host` (container path `path`) holds nothing but init-layer paths.
fn only_init_paths(host: &Path, path: &str) -> bool {
    let Ok(rd) = fs::read_dir(host) else {
        return false;
    };
    rd.flatten().all(|e| {
        let p = format!("{path}/{}", e.file_name().to_string_lossy());
        INIT_PATHS.contains(&p.as_str())
    })
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    matches!(xattr::get(p, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

struct Walk<'a> {
    lowers: &'a [PathBuf],
    changed_dirs: HashSet<String>,
    out: Vec<Change>,
}

impl Walk<'_> {
    fn visit(&mut self, host: &Path, path: &str, md: &fs::Metadata) {
        let is_dir = md.is_dir();
        let kind = if is_whiteout(md) || (is_dir && is_opaque(host)) {
            DELETED
        } else {
            let mut kind = ADDED;
            for l in self.lowers {
                if let Some(lm) = lower_meta(l, path) {
                    // A directory only on the way to a change is not itself a change; nor
                    // is one that only holds the runtime's mount points (dockerd's init
                    // layer has them, so its upper dir would not have the directory).
                    if lm.is_dir()
                        && is_dir
                        && lm.mode() == md.mode()
                        && ((lm.size() == md.size()
                            && lm.mtime() == md.mtime()
                            && lm.mtime_nsec() == md.mtime_nsec())
                            || only_init_paths(host, path))
                    {
                        return;
                    }
                    kind = MODIFIED;
                    break;
                }
            }
            kind
        };
        if is_dir {
            self.changed_dirs.insert(path.to_string());
        }
        if kind != MODIFIED {
            let parent = match path.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &path[..i],
            };
            if parent != "/" && self.changed_dirs.insert(parent.to_string()) {
                self.out.push(Change {
                    path: parent.to_string(),
                    kind: MODIFIED,
                });
            }
        }
        self.out.push(Change {
            path: path.to_string(),
            kind,
        });
    }

    fn walk(&mut self, dir: &Path, prefix: &str) -> ApiResult<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| ApiError::internal(&format!("read {}", dir.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let path = format!("{prefix}/{}", n.to_string_lossy());
            if INIT_PATHS.contains(&path.as_str()) {
                continue;
            }
            let host = dir.join(&n);
            let Ok(md) = fs::symlink_metadata(&host) else {
                continue;
            };
            self.visit(&host, &path, &md);
            if md.is_dir() {
                self.walk(&host, &path)?;
            }
        }
        Ok(())
    }
}

/// The changes in `upper` over `lowers` (topmost first), in dockerd's order.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> ApiResult<Vec<Change>> {
    let mut w = Walk {
        lowers,
        changed_dirs: HashSet::new(),
        out: Vec::new(),
    };
    w.walk(upper, "")?;
    Ok(w.out)
}

impl Containers {
    /// `GET /containers/{id}/changes`.
    pub async fn changes(&self, name: &str) -> ApiResult<Vec<Change>> {
        let rec = self.lookup(name)?;
        let upper = Rootfs::new(&self.paths.data_root, &rec.id).upper();
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        tokio::task::spawn_blocking(move || changes(&upper, &lowers))
            .await
            .map_err(|e| ApiError::internal("changes task", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_dir_entries_become_added_modified_deleted() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for d in ["etc", "var/lib", "opq"] {
            fs::create_dir_all(lower.join(d))?;
        }
        fs::write(lower.join("etc/passwd"), "root")?;
        fs::write(lower.join("etc/gone"), "x")?;
        fs::write(lower.join("opq/old"), "x")?;
        // An image symlink to the host's /etc must not make /etc/... look present.
        std::os::unix::fs::symlink("/etc", lower.join("hostetc"))?;
        fs::create_dir_all(upper.join("etc"))?;
        fs::create_dir_all(upper.join("hostetc"))?;
        fs::create_dir_all(upper.join("new/dir"))?;
        fs::create_dir_all(upper.join("opq"))?;
        xattr::set(upper.join("opq"), "trusted.overlay.opaque", b"y")?;
        fs::write(upper.join("opq/fresh"), "x")?;
        fs::write(upper.join("etc/passwd"), "root2")?;
        fs::write(upper.join("hostetc/passwd"), "x")?;
        fs::write(upper.join("etc/hosts"), "")?;
        nix::sys::stat::mknod(
            &upper.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )?;
        let got: Vec<(String, u8)> = changes(&upper, &[lower])?
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        let want: Vec<(String, u8)> = [
            ("/etc", MODIFIED),
            ("/etc/gone", DELETED),
            ("/etc/passwd", MODIFIED),
            ("/hostetc", MODIFIED),
            ("/hostetc/passwd", ADDED),
            ("/new", ADDED),
            ("/new/dir", ADDED),
            ("/opq", DELETED),
            ("/opq/fresh", ADDED),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), *k))
        .collect();
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn runtime_mount_points_are_no_change() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("etc"))?;
        fs::create_dir_all(upper.join("etc"))?;
        fs::create_dir_all(upper.join("proc"))?;
        fs::write(upper.join("etc/hosts"), "")?;
        fs::write(upper.join("etc/resolv.conf"), "")?;
        let t = nix::sys::time::TimeSpec::new(1_000_000, 0);
        nix::sys::stat::utimensat(
            None,
            &lower.join("etc"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        assert_eq!(changes(&upper, std::slice::from_ref(&lower))?, vec![]);
        fs::write(upper.join("etc/motd"), "hi")?;
        let got: Vec<(String, u8)> = changes(&upper, &[lower])?
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/etc".to_string(), MODIFIED),
                ("/etc/motd".to_string(), ADDED)
            ]
        );
        Ok(())
    }
}
