//! Unpacked layers, one per chain id: `layers/<chainid-hex>/{diff/, layer.json,
//! tar-split.gz}`. A layer is unpacked into a temp directory and renamed into place, so a
//! crash never leaves a half layer visible; layers are shared by every image whose chain
//! contains them.

use super::blobs::{digest_of, hex_of};
use super::extract::{extract, Mode};
use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Metadata of one unpacked layer (`layer.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// `sha256:` chain id (the layer's identity).
    pub chain_id: String,
    /// `sha256:` of the uncompressed layer tar.
    pub diff_id: String,
    /// Chain id of the layer below, if any.
    pub parent: Option<String>,
    /// Bytes of file content.
    pub size: u64,
    /// Whether the original tar can be re-created exactly (needed by `save`).
    pub tar_split: bool,
}

/// The chain id of a layer: its diff id at the bottom, else
/// `sha256(parent_chain + " " + diff_id)`.
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => digest_of(format!("{p} {diff_id}").as_bytes()),
    }
}

/// A layer unpacked into a work directory, not yet visible (deleted when dropped).
pub struct Unpacked {
    work: tempfile::TempDir,
    ex: super::extract::Extracted,
}

/// The layer directory.
pub struct Layers {
    dir: PathBuf,
    tmp: PathBuf,
}

const META: &str = "layer.json";
const SPLIT: &str = "tar-split.gz";

impl Layers {
    /// Layers under `dir`, work directories under `tmp` (same filesystem).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Layers { dir, tmp }
    }

    /// `layers/<hex>`.
    pub fn path(&self, chain: &str) -> ApiResult<PathBuf> {
        Ok(self.dir.join(hex_of(chain)?))
    }

    /// The unpacked contents (an overlayfs lower dir).
    pub fn diff_dir(&self, chain: &str) -> ApiResult<PathBuf> {
        Ok(self.path(chain)?.join("diff"))
    }

    /// The layer's metadata, if it is present.
    pub fn get(&self, chain: &str) -> ApiResult<Option<LayerMeta>> {
        let p = self.path(chain)?.join(META);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                ApiError::internal(&format!("read layer metadata {}", p.display()), e)
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(&format!("read {}", p.display()), e)),
        }
    }

    /// Unpacks a layer tar (plain, gzip or zstd) on top of `parent`, checking its diff id
    /// against `expected` when given. Returns the existing layer when the chain is already
    /// present.
    pub fn register(
        &self,
        src: &mut dyn Read,
        parent: Option<&str>,
        expected: Option<&str>,
    ) -> ApiResult<LayerMeta> {
        let unpacked = self.unpack(src)?;
        self.commit(unpacked, parent, expected)
    }

    /// Unpacks a layer tar into a work directory that nothing else sees yet (a pull unpacks
    /// while the blob is still downloading, before its digest is known to be right).
    pub fn unpack(&self, src: &mut dyn Read) -> ApiResult<Unpacked> {
        let work = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&self.tmp)
            .map_err(|e| ApiError::internal("create layer work directory", e))?;
        let diff = work.path().join("diff");
        std::fs::create_dir(&diff).map_err(|e| ApiError::internal("create layer directory", e))?;
        // The root's mode comes from the tar's `./` entry when it has one.
        std::fs::set_permissions(&diff, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| ApiError::internal("chmod layer directory", e))?;
        let split = work.path().join(SPLIT);
        let ex = extract(src, &diff, Mode::Layer, Some(&split))?;
        if !ex.split_ok {
            let _ = std::fs::remove_file(&split);
        }
        Ok(Unpacked { work, ex })
    }

    /// Makes an unpacked layer visible as the chain `parent` + its diff id (synced, then
    /// renamed into place), after checking the diff id against `expected`. The parent need
    /// not be present yet: a chain id names the whole stack, so nothing uses the layer until
    /// every layer below it is there too.
    pub fn commit(
        &self,
        unpacked: Unpacked,
        parent: Option<&str>,
        expected: Option<&str>,
    ) -> ApiResult<LayerMeta> {
        let Unpacked { work, ex } = unpacked;
        if let Some(exp) = expected {
            if exp != ex.diff_id {
                return Err(ApiError::BadRequest(format!(
                    "invalid diffID for layer: expected {exp:?}, got {:?}",
                    ex.diff_id
                )));
            }
        }
        let chain = chain_id(parent, &ex.diff_id);
        if let Some(existing) = self.get(&chain)? {
            return Ok(existing);
        }
        let meta = LayerMeta {
            chain_id: chain.clone(),
            diff_id: ex.diff_id,
            parent: parent.map(str::to_string),
            size: ex.size,
            tar_split: ex.split_ok,
        };
        std::fs::write(work.path().join(META), serde_json::to_vec(&meta)?)
            .map_err(|e| ApiError::internal("write layer metadata", e))?;
        let dir = std::fs::File::open(work.path())
            .map_err(|e| ApiError::internal("open layer work directory", e))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| ApiError::internal("sync layer", e))?;
        let dest = self.path(&chain)?;
        match std::fs::rename(work.path(), &dest) {
            Ok(()) => {
                let _ = work.keep();
                Ok(meta)
            }
            // Another load unpacked the same layer meanwhile: use theirs.
            Err(e) => self.get(&chain)?.ok_or_else(|| {
                ApiError::internal(&format!("move layer into {}", dest.display()), e)
            }),
        }
    }

    /// Removes a layer: renamed away first (atomic), then deleted.
    pub fn remove(&self, chain: &str) -> ApiResult<()> {
        let src = self.path(chain)?;
        let trash = self.tmp.join(format!(
            "trash-{}-{}",
            hex_of(chain)?,
            rand::random::<u32>()
        ));
        match std::fs::rename(&src, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ApiError::internal(&format!("remove layer {chain}"), e)),
        }
        std::fs::remove_dir_all(&trash)
            .map_err(|e| ApiError::internal(&format!("delete layer {chain}"), e))
    }

    fn split_path(&self, meta: &LayerMeta) -> ApiResult<PathBuf> {
        if !meta.tar_split {
            return Err(ApiError::Internal(format!(
                "layer {} cannot be exported: its original tar cannot be re-created exactly",
                meta.chain_id
            )));
        }
        Ok(self.path(&meta.chain_id)?.join(SPLIT))
    }

    /// The byte length of the layer's tar.
    pub fn tar_len(&self, meta: &LayerMeta) -> ApiResult<u64> {
        let p = self.split_path(meta)?;
        super::split::tar_len(&p)
            .map_err(|e| ApiError::internal(&format!("read {}", p.display()), e))
    }

    /// Writes the layer's original uncompressed tar and checks it against the diff id.
    pub fn write_tar(&self, meta: &LayerMeta, out: &mut dyn Write) -> ApiResult<()> {
        let p = self.split_path(meta)?;
        let diff = self.diff_dir(&meta.chain_id)?;
        let got = super::split::write_tar(&diff, &p, out)
            .map_err(|e| ApiError::internal(&format!("export layer {}", meta.chain_id), e))?;
        if got != meta.diff_id {
            return Err(ApiError::Internal(format!(
                "export layer {}: re-created tar has digest {got}, expected {}",
                meta.chain_id, meta.diff_id
            )));
        }
        Ok(())
    }

    /// The directory layers live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
