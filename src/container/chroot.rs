//! Runs filesystem work inside a container's root the way a chroot would: on a fresh
//! thread that unshares its filesystem attributes (`unshare(CLONE_FS)`, so root and
//! working directory become the thread's own) and then `chroot`s into the root. Every
//! path the work touches, absolute symlinks and `..` included, resolves inside the root,
//! also when a process in the running container changes the tree meanwhile. The rest of
//! the daemon is unaffected; the thread ends with the work.

use crate::error::{ApiError, ApiResult};
use std::path::{Path, PathBuf};

/// Runs `f` on a thread whose `/` is `root`; blocks until it returns.
pub fn in_root<T, F>(root: &Path, f: F) -> ApiResult<T>
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
