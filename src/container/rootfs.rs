//! The container root filesystem: one overlayfs per container over the image's layer
//! directories (`<data-root>/overlay/<id>/{upper,work,merged}`).

use crate::error::{ApiError, ApiResult};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// Paths of one container's overlay.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The overlay directory.
    pub dir: PathBuf,
}

impl Rootfs {
    /// The overlay of container `id` under `data_root`.
    pub fn new(data_root: &Path, id: &str) -> Self {
        Rootfs {
            dir: data_root.join("overlay").join(id),
        }
    }
    /// Mount point.
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    /// Writable layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// overlayfs work dir.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Whether the overlay is mounted now.
    pub fn is_mounted(&self) -> bool {
        let target = self.merged();
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        let t = target.to_string_lossy();
        text.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m == t))
    }

    /// Creates the directories (at create time).
    pub fn prepare(&self) -> ApiResult<()> {
        for d in [self.upper(), self.work(), self.merged()] {
            std::fs::create_dir_all(&d)
                .map_err(|e| ApiError::internal(&format!("create {}", d.display()), e))?;
        }
        Ok(())
    }

    /// Mounts the overlay over `lowers` (topmost first) unless it is mounted already.
    pub fn mount(&self, lowers: &[PathBuf]) -> ApiResult<PathBuf> {
        self.prepare()?;
        if self.is_mounted() {
            return Ok(self.merged());
        }
        if lowers.is_empty() {
            return Err(ApiError::Internal("image has no layers to mount".into()));
        }
        let lower = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let data = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            self.upper().display(),
            self.work().display()
        );
        if data.len() > 4000 {
            return Err(ApiError::Internal(format!(
                "mount rootfs: overlay options too long ({} layers)",
                lowers.len()
            )));
        }
        mount(
            Some("overlay"),
            &self.merged(),
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| ApiError::internal(&format!("mount rootfs {}", self.merged().display()), e))?;
        Ok(self.merged())
    }

    /// Unmounts the overlay if mounted (lazily, as a running exec may still hold it).
    pub fn unmount(&self) -> ApiResult<()> {
        if self.is_mounted() {
            umount2(&self.merged(), MntFlags::MNT_DETACH).map_err(|e| {
                ApiError::internal(&format!("unmount {}", self.merged().display()), e)
            })?;
        }
        Ok(())
    }

    /// Unmounts and deletes everything.
    pub fn remove(&self) -> ApiResult<()> {
        self.unmount()?;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(
                &format!("remove {}", self.dir.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_mounts_over_lowers_and_writes_go_up() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let lower = dir.path().join("l1");
        std::fs::create_dir_all(&lower)?;
        std::fs::write(lower.join("f"), "lower")?;
        let r = Rootfs::new(dir.path(), "c1");
        let merged = r.mount(std::slice::from_ref(&lower))?;
        struct Guard(Rootfs);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.unmount();
            }
        }
        let g = Guard(r.clone());
        assert!(r.is_mounted());
        assert_eq!(std::fs::read_to_string(merged.join("f"))?, "lower");
        std::fs::write(merged.join("g"), "upper")?;
        assert!(r.upper().join("g").exists());
        assert!(!lower.join("g").exists());
        r.mount(&[lower])?; // idempotent
        drop(g);
        assert!(!r.is_mounted());
        r.remove()?;
        assert!(!r.dir.exists());
        Ok(())
    }
}
