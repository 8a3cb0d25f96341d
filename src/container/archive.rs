//! `docker cp` and `docker export`: the archive API (`HEAD|GET|PUT
//! /containers/{id}/archive?path=`) and `GET /containers/{id}/export`, as dockerd 20.10
//! answers them.
//!
//! Every path is resolved inside the container's root ([`super::chroot::in_root`]): a
//! symlink named in `path`, in one of its parents or inside an uploaded archive can never
//! reach the host. A stopped container's overlay is mounted for the request and stays
//! mounted like after a stop (`docker rm` unmounts it). `docker cp` sees the container's
//! bind mounts (mounted in the copying thread's private namespace); `export` does not,
//! as with dockerd.

use super::chroot::{in_root, in_root_with, Bind};
use super::rootfs::Rootfs;
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::image::extract::{extract, Mode};
use serde::Serialize;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the `X-Docker-Container-Path-Stat` header carries (base64 of this as JSON).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathStat {
    /// Base name of the path.
    pub name: String,
    /// Size in bytes (lstat).
    pub size: i64,
    /// Go `os.FileMode` bits.
    pub mode: u32,
    /// RFC 3339 modification time.
    pub mtime: String,
    /// For a symlink: the container path it resolves to.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

impl PathStat {
    /// The header value.
    pub fn header(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }
}

/// Go's `os.FileMode` for a `st_mode`: permission bits plus type and special flags.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => m |= 1 << 31,
        libc::S_IFLNK => m |= 1 << 27,
        libc::S_IFBLK => m |= 1 << 26,
        libc::S_IFCHR => m |= (1 << 26) | (1 << 21),
        libc::S_IFIFO => m |= 1 << 25,
        libc::S_IFSOCK => m |= 1 << 24,
        _ => {}
    }
    if st_mode & libc::S_ISUID != 0 {
        m |= 1 << 23;
    }
    if st_mode & libc::S_ISGID != 0 {
        m |= 1 << 22;
    }
    if st_mode & libc::S_ISVTX != 0 {
        m |= 1 << 20;
    }
    m
}

/// Go's `time.Time` JSON form (RFC 3339 with trailing zeros of the fraction trimmed).
pub fn go_time(secs: i64, nanos: i64) -> String {
    let t = chrono::DateTime::from_timestamp(secs, nanos.clamp(0, 999_999_999) as u32)
        .unwrap_or_default();
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// `path` as an absolute container path, cleaned, keeping a trailing `/` or `/.` (Go's
/// `archive.PreserveTrailingDotOrSeparator(filepath.Join("/", path), path)`).
pub fn abs_path(path: &str) -> String {
    let mut comps: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    let mut out = format!("/{}", comps.join("/"));
    if out != "/" {
        if path.ends_with("/.") || path == "." {
            out.push_str("/.");
        } else if path.ends_with('/') {
            out.push('/');
        }
    }
    out
}

/// Go's `filepath.Base`.
pub fn base(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

/// Stats `abs` (inside the chroot): parents are followed, the last element is not.
fn stat_path(abs: &str) -> io::Result<PathStat> {
    let md = fs::symlink_metadata(abs)?;
    let link_target = if md.file_type().is_symlink() {
        match fs::canonicalize(abs) {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => fs::read_link(abs)?.to_string_lossy().into_owned(),
        }
    } else {
        String::new()
    };
    Ok(PathStat {
        name: base(abs),
        size: md.size() as i64,
        mode: go_mode(md.mode()),
        mtime: go_time(md.mtime(), md.mtime_nsec()),
        link_target,
    })
}

fn tar_err(e: io::Error) -> ApiError {
    ApiError::internal("write archive", e)
}

/// Appends `src` (not following a final symlink) as `name`, and below it everything a
/// directory holds, in name order. Sockets are skipped like dockerd does.
fn append_tree(tb: &mut tar::Builder<&mut dyn Write>, src: &Path, name: &Path) -> ApiResult<()> {
    let md = fs::symlink_metadata(src).map_err(tar_err)?;
    if md.file_type().is_socket() {
        return Ok(());
    }
    if !name.as_os_str().is_empty() {
        tb.append_path_with_name(src, name).map_err(tar_err)?;
    }
    if md.is_dir() {
        let mut kids: Vec<_> = fs::read_dir(src)
            .map_err(tar_err)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        kids.sort();
        for k in kids {
            append_tree(tb, &src.join(&k), &name.join(&k))?;
        }
    }
    Ok(())
}

/// Writes a tar of `src` with entries named below `name` (empty: relative to `src`).
fn write_tree(out: &mut dyn Write, src: &Path, name: &Path) -> ApiResult<()> {
    let mut tb = tar::Builder::new(out);
    tb.follow_symlinks(false);
    append_tree(&mut tb, src, name)?;
    tb.finish().map_err(tar_err)?;
    Ok(())
}

/// What `PUT …/archive` carries besides the tar.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// `noOverwriteDirNonDir`.
    pub no_overwrite_dir_non_dir: bool,
    /// `copyUIDGID`: files belong to the container's user (when it has one).
    pub copy_uid_gid: bool,
}

impl Containers {
    /// The container's mounted root, mounting a stopped container's overlay.
    pub async fn mounted_root(&self, name: &str) -> ApiResult<(super::record::Record, PathBuf)> {
        let rec = self.lookup(name)?;
        let rootfs = Rootfs::new(&self.paths.data_root, &rec.id);
        if rootfs.is_mounted() {
            return Ok((rec, rootfs.merged()));
        }
        let _g = self.lock(&rec.id).await;
        // Removed while we waited?
        let rec = self.lookup(&rec.id)?;
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        let merged = rootfs.mount(&lowers)?;
        Ok((rec, merged))
    }

    /// `HEAD …/archive?path=`: the stat of `path` in container `name`.
    pub async fn stat_path(&self, name: &str, path: &str) -> ApiResult<PathStat> {
        let (rec, root) = self.mounted_root(name).await?;
        let abs = abs_path(path);
        let not_found = file_not_found(path, name);
        let binds = binds_of(&rec);
        blocking(move || {
            in_root_with(&root, binds, move || {
                stat_path(&abs).map_err(|e| io_err(e, not_found))
            })
        })
        .await
    }

    /// `GET …/archive?path=`: the stat (errors come before any byte), and a tar of the
    /// path streamed to `out` by a background thread (a later failure cuts the archive
    /// and is logged).
    pub async fn archive_path(
        &self,
        name: &str,
        path: &str,
        out: Box<dyn Write + Send>,
    ) -> ApiResult<PathStat> {
        let stat = self.stat_path(name, path).await?;
        let (rec, root) = self.mounted_root(name).await?;
        let binds = binds_of(&rec);
        let abs = abs_path(path);
        let rename = PathBuf::from(if stat.name == "/" { "." } else { &stat.name });
        tokio::task::spawn_blocking(move || {
            let mut out = out;
            let r = in_root_with(&root, binds, move || {
                write_tree(&mut out, Path::new(&abs), &rename)?;
                out.flush().map_err(tar_err)
            });
            if let Err(e) = r {
                // The status is sent already: the client sees a cut archive.
                tracing::warn!(error = %e, "archive of a container path failed mid-stream");
            }
        });
        self.event(&rec, "archive-path", &[]);
        Ok(stat)
    }

    /// `PUT …/archive?path=`: extracts the tar `body` into directory `path`.
    pub async fn extract_to(
        &self,
        name: &str,
        path: &str,
        opts: PutOptions,
        body: Box<dyn Read + Send>,
    ) -> ApiResult<()> {
        let (rec, root) = self.mounted_root(name).await?;
        let ev_rec = rec.clone();
        let readonly_rootfs = rec.host_config.readonly_rootfs == Some(true);
        let user = rec.config.user.clone().unwrap_or_default();
        let abs = abs_path(path);
        let not_found = file_not_found(path, name);
        let binds = binds_of(&rec);
        blocking(move || {
            in_root_with(&root, binds.clone(), move || {
                // The last element is followed too: a symlink to a directory is a fine
                // extraction point.
                let md = fs::metadata(&abs).map_err(|e| io_err(e, not_found.clone()))?;
                if !md.is_dir() {
                    return Err(ApiError::Internal(
                        "extraction point is not a directory".into(),
                    ));
                }
                let dest = fs::canonicalize(&abs).map_err(|e| io_err(e, not_found))?;
                match binds.iter().rev().find(|b| under(&dest, &b.dest)) {
                    Some(b) if !b.writable => {
                        return Err(ApiError::Internal(
                            "mounted volume is marked read-only".into(),
                        ))
                    }
                    None if readonly_rootfs => {
                        return Err(ApiError::Internal(
                            "container rootfs is marked read-only".into(),
                        ))
                    }
                    _ => {}
                }
                let chown = if opts.copy_uid_gid && !user.is_empty() {
                    let (uid, gid, _) = super::spec::resolve_user(Path::new("/"), &user)?;
                    Some((uid, gid))
                } else {
                    None
                };
                let mode = Mode::Cp {
                    no_overwrite_dir_non_dir: opts.no_overwrite_dir_non_dir,
                    chown,
                };
                let mut body = body;
                extract(&mut body, &dest, mode, None).map(|_| ())
            })
        })
        .await?;
        self.event(&ev_rec, "extract-to-dir", &[]);
        Ok(())
    }

    /// `GET …/export`: a tar of the container's whole filesystem streamed to `out`.
    pub async fn export(&self, name: &str, out: Box<dyn Write + Send>) -> ApiResult<()> {
        let (rec, root) = self.mounted_root(name).await?;
        self.event(&rec, "export", &[]);
        tokio::task::spawn_blocking(move || {
            let mut out = out;
            let r = in_root(&root, move || {
                write_tree(&mut out, Path::new("/"), Path::new(""))?;
                out.flush().map_err(tar_err)
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "container export failed mid-stream");
            }
        });
        Ok(())
    }
}

/// The container's bind mounts, outermost first.
fn binds_of(rec: &super::record::Record) -> Vec<Bind> {
    use super::spec::binds::{from_api_mount, parse_bind, UserMountKind};
    let hc = &rec.host_config;
    let binds = hc.binds.iter().flatten().map(|b| parse_bind(b));
    let mounts = hc.mounts.iter().flatten().map(from_api_mount);
    let mut out: Vec<Bind> = binds
        .chain(mounts)
        .filter_map(|m| {
            let m = m.ok()?;
            match m.kind {
                UserMountKind::Bind {
                    writable,
                    recursive,
                    ..
                } => Some(Bind {
                    dest: m.dest,
                    source: m.source,
                    writable,
                    recursive,
                }),
                UserMountKind::Tmpfs { .. } => None,
            }
        })
        .collect();
    out.sort_by_key(|b| b.dest.matches('/').count());
    out
}

/// Whether container path `p` is `dir` or below it.
fn under(p: &Path, dir: &str) -> bool {
    p.starts_with(Path::new(dir))
}

fn file_not_found(path: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Could not find the file {path} in container {name}"
    ))
}

fn io_err(e: io::Error, not_found: ApiError) -> ApiError {
    if e.kind() == io::ErrorKind::NotFound {
        not_found
    } else {
        ApiError::Internal(e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("archive task", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_trailing_separator_and_dot() {
        assert_eq!(abs_path("tmp/"), "/tmp/");
        assert_eq!(abs_path("/a/../b/./c"), "/b/c");
        assert_eq!(abs_path("/a/."), "/a/.");
        assert_eq!(abs_path("/../.."), "/");
        assert_eq!(base("/tmp/"), "tmp");
        assert_eq!(base("/a/."), ".");
        assert_eq!(base("/"), "/");
    }

    #[test]
    fn modes_and_times_are_go_shaped() {
        assert_eq!(go_mode(libc::S_IFDIR | 0o755), 2147484141);
        assert_eq!(go_mode(libc::S_IFREG | 0o644), 420);
        assert_eq!(go_mode(libc::S_IFLNK | 0o777), (1 << 27) | 0o777);
        assert_eq!(go_time(1_795_425_412, 0), "2026-11-23T09:16:52Z");
        assert_eq!(
            go_time(1_795_425_412, 120_000_000),
            "2026-11-23T09:16:52.12Z"
        );
        let s = PathStat {
            name: "tmp".into(),
            size: 4096,
            mode: 2147484141,
            mtime: "2026-11-23T09:16:52Z".into(),
            link_target: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap_or_default(),
            r#"{"name":"tmp","size":4096,"mode":2147484141,"mtime":"2026-11-23T09:16:52Z","linkTarget":""}"#
        );
    }
}
