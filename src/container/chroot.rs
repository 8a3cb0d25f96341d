//! Runs filesystem work inside a container's root the way a chroot would: on a fresh
//! thread that unshares its filesystem attributes (`unshare(CLONE_FS)`, so root and
//! working directory become the thread's own) and then `chroot`s into the root. Every
//! path the work touches, absolute symlinks and `..` included, resolves inside the root,
//! also when a process in the running container changes the tree meanwhile. The rest of
//! the daemon is unaffected; the thread ends with the work.
//!
//! With [`Bind`]s the thread first gets a private mount namespace (`CLONE_NEWNS`, its
//! mounts made `rprivate` so nothing propagates back) and mounts the container's bind
//! sources over their destinations below the root, as dockerd mounts a container's volumes
//! for `docker cp`; the namespace vanishes with the thread.

use crate::error::{ApiError, ApiResult};
use std::path::{Path, PathBuf};

/// A host directory or file mounted at a container path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Container path.
    pub dest: String,
    /// Host path.
    pub source: PathBuf,
    /// `rw` (else read-only).
    pub writable: bool,
    /// `rbind`.
    pub recursive: bool,
}

/// Runs `f` on a thread whose `/` is `root`; blocks until it returns.
pub fn in_root<T, F>(root: &Path, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    in_root_with(root, Vec::new(), f)
}

/// Mounts `binds` (outermost first) below `root` in this thread's private namespace.
fn mount_binds(root: &Path, binds: &[Bind]) -> ApiResult<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| ApiError::internal("unshare the mount namespace", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ApiError::internal("make the private mounts private", e))?;
    for b in binds {
        let Ok(source_md) = std::fs::metadata(&b.source) else {
            continue;
        };
        // Where the destination is, resolved inside the root; a missing one is made like
        // dockerd (and the runtime at start) make mount points.
        let dest = b.dest.clone();
        let is_dir = source_md.is_dir();
        let inside = in_root(root, move || {
            let p = Path::new(&dest);
            if std::fs::symlink_metadata(p).is_err() {
                let made = if is_dir {
                    std::fs::create_dir_all(p)
                } else {
                    p.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|_| std::fs::File::create(p).map(|_| ()))
                };
                made.map_err(|e| ApiError::internal(&format!("create mount point {dest}"), e))?;
            }
            std::fs::canonicalize(p).map_err(|e| ApiError::internal(&format!("resolve {dest}"), e))
        })?;
        let target = root.join(inside.strip_prefix("/").unwrap_or(&inside));
        let mut flags = MsFlags::MS_BIND;
        if b.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&b.source), &target, None::<&str>, flags, None::<&str>).map_err(|e| {
            ApiError::internal(&format!("mount {} for the copy", b.source.display()), e)
        })?;
        if !b.writable {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| ApiError::internal(&format!("remount {} read-only", b.dest), e))?;
        }
    }
    Ok(())
}

/// [`in_root`] with the container's binds mounted (see the module doc).
pub fn in_root_with<T, F>(root: &Path, binds: Vec<Bind>, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    let root: PathBuf = root.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("berth-chroot".into())
        .spawn(move || -> ApiResult<T> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(|e| ApiError::internal("unshare the filesystem attributes", e))?;
            if !binds.is_empty() {
                mount_binds(&root, &binds)?;
            }
            nix::unistd::chroot(&root)
                .map_err(|e| ApiError::internal(&format!("chroot {}", root.display()), e))?;
            nix::unistd::chdir("/").map_err(|e| ApiError::internal("chdir /", e))?;
            f()
        })
        .map_err(|e| ApiError::internal("start the chroot thread", e))?;
    handle
        .join()
        .map_err(|_| ApiError::Internal("chroot thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_symlinks_and_dotdot_stay_inside() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("etc"))?;
        std::fs::write(dir.path().join("etc/hostname"), "inside")?;
        std::os::unix::fs::symlink("/etc", dir.path().join("link"))?;
        let got = in_root(dir.path(), || {
            let a = std::fs::read_to_string("/link/hostname")
                .map_err(|e| ApiError::internal("read", e))?;
            let b = std::fs::read_to_string("/../../../etc/hostname")
                .map_err(|e| ApiError::internal("read", e))?;
            Ok((a, b))
        })?;
        assert_eq!(got, ("inside".to_string(), "inside".to_string()));
        // The daemon's own root is untouched.
        assert!(Path::new("/proc/self").exists());
        Ok(())
    }
}
