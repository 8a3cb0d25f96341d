//! Content-addressed blobs (`blobs/sha256/<hex>`): image configs and the manifests we
//! generate. Every write and every read is checked against the digest.

use crate::error::{ApiError, ApiResult};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<64 hex>` digest, refusing anything else.
pub fn hex_of(digest: &str) -> ApiResult<&str> {
    if super::reference::is_digest(digest) {
        Ok(&digest[7..])
    } else {
        Err(ApiError::BadRequest(format!("invalid digest {digest:?}")))
    }
}

/// The blob directory.
pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    /// Blobs under `dir`, temp files under `tmp` (same filesystem).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Blobs { dir, tmp }
    }

    fn path(&self, digest: &str) -> ApiResult<PathBuf> {
        Ok(self.dir.join(hex_of(digest)?))
    }

    /// Stores `data` (temp file, fsync, rename) and returns its digest.
    pub fn put(&self, data: &[u8]) -> ApiResult<String> {
        let digest = digest_of(data);
        let path = self.path(&digest)?;
        if path.exists() {
            return Ok(digest);
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(|e| ApiError::internal("create blob temp file", e))?;
        tmp.write_all(data)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| ApiError::internal("write blob", e))?;
        tmp.persist(&path)
            .map_err(|e| ApiError::internal(&format!("store blob {}", path.display()), e.error))?;
        Ok(digest)
    }

    /// Reads a blob and checks its digest.
    pub fn get(&self, digest: &str) -> ApiResult<Vec<u8>> {
        let path = self.path(digest)?;
        let data = std::fs::read(&path)
            .map_err(|e| ApiError::internal(&format!("read blob {digest}"), e))?;
        if digest_of(&data) != digest {
            return Err(ApiError::Internal(format!(
                "blob {digest} is corrupt (digest mismatch)"
            )));
        }
        Ok(data)
    }

    /// Removes a blob (missing is fine).
    pub fn remove(&self, digest: &str) -> ApiResult<()> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(&format!("remove blob {digest}"), e)),
        }
    }

    /// The directory blobs live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
