//! The local image store: content-addressed blobs, one unpacked directory per layer (chain
//! id), image records and references in the sled store.
//!
//! On disk, under `<data-root>/image/`: `blobs/sha256/<hex>` (image configs), `layers/<chain
//! hex>/{diff/,layer.json,tar-split.gz}`, `tmp/` (work directories; moved to `trash/` and
//! deleted in the background at start-up).
//! In the store: table `images` (`sha256:<id>` → [`ImageMeta`]) and table `refs`
//! (normalized reference such as `docker.io/library/busybox:latest` → image id) and table
//! `distribution` (diff id → the registry blobs known to hold that layer, for push).
//!
//! The operations (`load`, `import`, `pull`, `push`, `save`, `tag`, `remove`, `list`, `inspect`) live in
//! submodules as `impl ImageStore` blocks; heavy ones are blocking and are run by the HTTP
//! handlers on `spawn_blocking`.

pub mod blobs;
pub mod changes;
pub mod commit;
pub mod config;
pub mod df;
pub mod extract;
mod extract_mode;
mod import;
pub mod layers;
mod load;
pub mod progress;
pub mod pull;
pub mod push;
mod query;
pub mod reference;
mod remove;
mod save;
pub mod split;

pub use config::{ContainerConfig, ImageConfigFile};
pub use query::ImageSummary;
pub use remove::InUse;
pub use save::SavePlan;

use crate::error::{ApiError, ApiResult};
use crate::events::EventBus;
use crate::store::{Store, Table};
use blobs::Blobs;
use layers::{LayerMeta, Layers};
use reference::{is_digest, is_hex, Reference};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// What the store keeps about one image (the rest is in its config blob).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    /// Chain ids of its layers, bottom first.
    pub layers: Vec<String>,
    /// Sum of the layers' sizes.
    pub size: u64,
    /// When it was last tagged (RFC 3339), if ever.
    pub last_tag_time: Option<String>,
}

/// An image as the container code sees it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// `sha256:<hex>`.
    pub id: String,
    /// The parsed config file.
    pub config: ImageConfigFile,
    /// Chain ids of its layers, bottom first.
    pub layers: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Last tag time.
    pub last_tag_time: Option<String>,
}

impl ImageRecord {
    /// The container defaults (Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes,
    /// Labels, StopSignal…).
    pub fn container_config(&self) -> ContainerConfig {
        self.config.container_defaults()
    }
}

/// The image store.
pub struct ImageStore {
    root: PathBuf,
    tmp: PathBuf,
    blobs: Blobs,
    layers: Layers,
    images: Table,
    refs: Table,
    /// Images deleted (`rmi -f`) while stopped containers still use them: no longer listed
    /// or resolvable, but their layers stay until the last such container is removed.
    retained: Table,
    /// Diff id → where its compressed blobs are ([`push::meta`]).
    distribution: Table,
    events: Arc<EventBus>,
    lock: Mutex<()>,
    in_use: RwLock<InUseChecker>,
    /// Layer fetches of pulls in progress, shared between pulls.
    inflight: Arc<pull::inflight::InFlight>,
}

/// The shared in-use check the daemon installs (see [`InUse`]).
pub type InUseChecker = Arc<InUse<'static>>;

/// The architecture name Docker uses for this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl ImageStore {
    /// Opens the store rooted at `root` (`<data-root>/image`). Only `tmp/` is touched: it
    /// is renamed away and deleted in the background (start-up stays O(1)).
    pub fn open(root: &Path, store: &Store, events: Arc<EventBus>) -> ApiResult<Self> {
        let tmp = root.join("tmp");
        let trash = root.join("trash");
        std::fs::create_dir_all(&trash)
            .map_err(|e| ApiError::internal(&format!("create {}", trash.display()), e))?;
        if tmp.exists() {
            let old = trash.join(format!("tmp-{}", rand::random::<u32>()));
            std::fs::rename(&tmp, &old)
                .map_err(|e| ApiError::internal(&format!("move {} away", tmp.display()), e))?;
        }
        // Left-overs of earlier runs (interrupted loads, half-deleted layers) go in the
        // background: start-up stays O(1).
        std::thread::spawn(move || {
            if let Ok(entries) = std::fs::read_dir(&trash) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        });
        let blob_dir = root.join("blobs").join("sha256");
        let layer_dir = root.join("layers");
        for d in [&tmp, &blob_dir, &layer_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| ApiError::internal(&format!("create {}", d.display()), e))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            blobs: Blobs::new(blob_dir, tmp.clone()),
            layers: Layers::new(layer_dir, tmp.clone()),
            tmp,
            images: store.table("images")?,
            refs: store.table("refs")?,
            retained: store.table("retained_images")?,
            distribution: store.table("distribution")?,
            events,
            lock: Mutex::new(()),
            in_use: RwLock::new(Arc::new(|_: &str| None)),
            inflight: Arc::default(),
        })
    }

    /// Installs the check `rmi` uses to find containers using an image (the container
    /// module calls this once at start-up; until then no image counts as in use).
    pub fn set_in_use_checker(&self, check: InUseChecker) {
        *self.in_use.write().unwrap_or_else(|p| p.into_inner()) = check;
    }

    /// The installed in-use check.
    pub fn in_use_checker(&self) -> InUseChecker {
        self.in_use
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an image event like dockerd: the image's config labels (while it still
    /// exists) plus `name`.
    fn event(&self, action: &str, id: &str, name: &str) {
        let mut attrs: BTreeMap<String, String> = self
            .meta(id)
            .and_then(|m| self.record_of(m))
            .ok()
            .and_then(|r| r.config.config.and_then(|c| c.labels))
            .unwrap_or_default();
        attrs.insert("name".to_string(), name.to_string());
        self.events.publish("image", action, id, attrs);
    }

    /// Number of images, for `/info`.
    pub fn count(&self) -> usize {
        self.images.all::<ImageMeta>().map(|v| v.len()).unwrap_or(0)
    }

    fn all_images(&self) -> ApiResult<Vec<ImageMeta>> {
        Ok(self
            .images
            .all::<ImageMeta>()?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Every reference key → image id.
    fn all_refs(&self) -> ApiResult<Vec<(String, String)>> {
        self.refs.all::<String>()
    }

    /// Reference keys pointing at `id`, sorted.
    fn refs_of(&self, id: &str) -> ApiResult<Vec<String>> {
        Ok(self
            .all_refs()?
            .into_iter()
            .filter(|(_, v)| v == id)
            .map(|(k, _)| k)
            .collect())
    }

    /// Finds an image id by reference, full id or id prefix (`sha256:` optional).
    fn find_id(&self, s: &str) -> ApiResult<Option<String>> {
        if is_digest(s) {
            return Ok(self.images.get::<ImageMeta>(s)?.map(|m| m.id));
        }
        if let Ok(r) = Reference::parse_with_default_tag(s) {
            if let Some(id) = self.refs.get::<String>(&r.key())? {
                return Ok(Some(id));
            }
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if !is_hex(hex) || hex.len() > 64 {
            return Ok(None);
        }
        let prefix = format!("sha256:{hex}");
        let mut found = self
            .all_images()?
            .into_iter()
            .filter(|m| m.id.starts_with(&prefix));
        match (found.next(), found.next()) {
            (Some(m), None) => Ok(Some(m.id)),
            _ => Ok(None),
        }
    }

    /// `No such image: busybox:latest` (the reference with its default tag).
    fn not_found(s: &str) -> ApiError {
        let shown = match Reference::parse_with_default_tag(s) {
            Ok(r) => r.familiar(),
            Err(_) => s.to_string(),
        };
        ApiError::NotFound(format!("No such image: {shown}"))
    }

    fn meta(&self, id: &str) -> ApiResult<ImageMeta> {
        self.images
            .get::<ImageMeta>(id)?
            .ok_or_else(|| ApiError::NotFound(format!("No such image: {id}")))
    }

    fn record_of(&self, meta: ImageMeta) -> ApiResult<ImageRecord> {
        let bytes = self.blobs.get(&meta.id)?;
        let config: ImageConfigFile = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(&format!("parse config of {}", meta.id), e))?;
        Ok(ImageRecord {
            id: meta.id,
            config,
            layers: meta.layers,
            size: meta.size,
            last_tag_time: meta.last_tag_time,
        })
    }

    /// The id a reference, full id or id prefix names, if any (no config parsing).
    pub fn id_of(&self, reference: &str) -> ApiResult<Option<String>> {
        self.find_id(reference)
    }

    /// Resolves a reference for container create: 404 `No such image: <ref>` when missing.
    pub fn resolve(&self, reference: &str) -> ApiResult<ImageRecord> {
        let id = self
            .find_id(reference)?
            .ok_or_else(|| Self::not_found(reference))?;
        self.record_of(self.meta(&id)?)
    }

    /// The overlayfs lower dirs of an image (also of one deleted while a container still
    /// uses it), topmost first.
    pub fn layer_dirs(&self, image_id: &str) -> ApiResult<Vec<PathBuf>> {
        let meta = match self.retained.get::<ImageMeta>(image_id)? {
            Some(m) => m,
            None => self.meta(image_id)?,
        };
        meta.layers
            .iter()
            .rev()
            .map(|c| self.layers.diff_dir(c))
            .collect()
    }

    /// Records an image whose layers are all present (under the lock): stores the config
    /// blob and the image record. Returns whether the image is new.
    fn commit_image(&self, config: &[u8], layers: &[String]) -> ApiResult<(String, bool)> {
        let _g = self.guard();
        let mut size = 0;
        for c in layers {
            let m: LayerMeta = self.layers.get(c)?.ok_or_else(|| {
                ApiError::Internal(format!(
                    "layer {c} was removed while the image was being stored; retry"
                ))
            })?;
            size += m.size;
        }
        let id = self.blobs.put(config)?;
        if self.images.get::<ImageMeta>(&id)?.is_some() {
            return Ok((id, false));
        }
        self.images.put(
            &id,
            &ImageMeta {
                id: id.clone(),
                layers: layers.to_vec(),
                size,
                last_tag_time: None,
            },
        )?;
        Ok((id, true))
    }

    /// Points `r` at `id`. Returns the image the reference was taken from, if any.
    fn set_ref(&self, r: &Reference, id: &str) -> ApiResult<Option<String>> {
        let _g = self.guard();
        let mut meta = self.meta(id)?;
        let old = self.refs.get::<String>(&r.key())?;
        self.refs.put(&r.key(), &id.to_string())?;
        meta.last_tag_time = Some(config::now_rfc3339());
        self.images.put(id, &meta)?;
        Ok(old.filter(|o| o != id))
    }
}

#[cfg(test)]
mod tests;
