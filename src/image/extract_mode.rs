//! How [`super::extract`] treats an archive: as an image layer, a transport archive or a
//! `docker cp` upload, and the `noOverwriteDirNonDir` check of the last.

use crate::error::{ApiError, ApiResult};
use std::fs;
use std::path::Path;

/// What kind of archive is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An image layer: ownership, xattrs and whiteouts are applied.
    Layer,
    /// A transport archive (`docker save` output): plain files, dirs and links only.
    Plain,
    /// `docker cp` into a container: ownership and permission bits as in the archive,
    /// `.wh.` names are ordinary files.
    Cp {
        /// Refuse to replace a directory with a non-directory or the reverse.
        no_overwrite_dir_non_dir: bool,
        /// Owner of everything written instead of the archive's (`copyUIDGID`).
        chown: Option<(u32, u32)>,
    },
}

impl Mode {
    pub(super) fn owners(self) -> bool {
        !matches!(self, Mode::Plain)
    }
    pub(super) fn keep_dir_kinds(self) -> bool {
        matches!(
            self,
            Mode::Cp {
                no_overwrite_dir_non_dir: true,
                ..
            }
        )
    }
}

/// dockerd's refusal to swap a directory and a non-directory (`noOverwriteDirNonDir`).
pub(super) fn check_kind(p: &Path, want_dir: bool, mode: Mode, root: &Path) -> ApiResult<()> {
    if !mode.keep_dir_kinds() {
        return Ok(());
    }
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() && !want_dir => Err(ApiError::Internal(format!(
            "cannot overwrite directory {:?} with non-directory {:?}",
            p.display(),
            root.display()
        ))),
        Ok(m) if !m.file_type().is_dir() && want_dir => Err(ApiError::Internal(format!(
            "cannot overwrite non-directory {:?} with directory {:?}",
            p.display(),
            root.display()
        ))),
        _ => Ok(()),
    }
}
