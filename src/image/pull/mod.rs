//! `docker pull` from a Distribution v2 registry, through the oci-client crate.
//!
//! [`prepare`] does everything that can fail before the first progress line (credentials,
//! manifest, index → linux/<host arch>, config), so an unknown image is a plain 404 as with
//! dockerd. [`run`] then streams the JSON messages the CLI draws: missing layers download
//! in parallel (three at a time) into temp files (each one's digest checked), and are
//! unpacked bottom-up, each as soon as it and the ones below it are there, through the same
//! layer store `docker load` uses ([`super::layers::Layers::register`], which checks the
//! diff id). The image then gets its tag and its `name@digest` reference (`RepoDigests`).
//!
//! Each layer's blob is remembered for push ([`super::push::meta`]).
//!
//! Not here yet: `--registry-mirror`, `pull -a`, unpacking while a layer is still
//! downloading, sharing a blob between two concurrent pulls of it, the HTTPS-then-HTTP
//! fallback dockerd uses for insecure registries (they are plain HTTP right away).

mod download;
pub mod login;
pub mod registry;

pub use registry::{decode_auth, Insecure};

use super::blobs::digest_of;
use super::config::ImageConfigFile;
use super::layers::chain_id;
use super::reference::{is_digest, Reference};
use super::{host_arch, ImageStore};
use crate::error::{ApiError, ApiResult};
use download::{download, Downloads};
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use registry::registry_error;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Largest manifest or index accepted (dockerd's limit).
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted.
const MAX_CONFIG: u64 = 8 << 20;

const ACCEPT: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

#[derive(Debug, Clone, Deserialize)]
struct Desc {
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

/// What [`prepare`] learnt: enough to stream the rest.
pub struct Plan {
    client: Arc<Client>,
    oref: oci_client::Reference,
    reference: Reference,
    anonymous: bool,
    /// Digest of what the reference names (the index when it is one).
    digest: String,
    config: Vec<u8>,
    layers: Vec<Desc>,
    diff_ids: Vec<String>,
}

fn bad_manifest(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("invalid {what}: {e}"))
}

/// The JSON message line for the stream.
pub fn message(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

async fn say(tx: &Sender<Vec<u8>>, v: Value) {
    // A client that went away does not stop the pull (the image is still wanted).
    let _ = tx.send(message(&v)).await;
}

/// The first 12 hex digits of a digest (the layer ids of the progress stream).
fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

impl Plan {
    fn shown(&self) -> String {
        self.reference.familiar()
    }

    fn step_err(&self, e: oci_client::errors::OciDistributionError, manifest: bool) -> ApiError {
        let shown = self.shown();
        registry_error(e, "Get", manifest.then_some(shown.as_str()), self.anonymous)
    }

    async fn manifest(
        &self,
        oref: &oci_client::Reference,
        auth: &RegistryAuth,
    ) -> ApiResult<(Vec<u8>, String)> {
        let (body, digest) = self
            .client
            .pull_manifest_raw(oref, auth, ACCEPT)
            .await
            .map_err(|e| self.step_err(e, true))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(ApiError::Internal(format!(
                "manifest for {} is larger than {MAX_MANIFEST} bytes",
                self.shown()
            )));
        }
        let actual = digest_of(&body);
        let wanted = oref.digest().unwrap_or(&digest);
        if actual != wanted {
            return Err(ApiError::Internal(format!(
                "manifest verification failed for digest {wanted}"
            )));
        }
        Ok((body.to_vec(), actual))
    }

    /// A small blob (the config), read whole, size-limited and verified.
    async fn small_blob(&self, digest: &str, limit: u64) -> ApiResult<Vec<u8>> {
        let mut s = self
            .client
            .pull_blob_stream(&self.oref, digest)
            .await
            .map_err(|e| self.step_err(e, false))?;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| ApiError::internal(&format!("read blob {digest}"), e))?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(ApiError::Internal(format!(
                    "blob {digest} is larger than {limit} bytes"
                )));
            }
        }
        if digest_of(&out) != digest {
            return Err(ApiError::Internal(format!(
                "blob verification failed for digest {digest}"
            )));
        }
        Ok(out)
    }
}

/// Resolves `reference` at its registry: credentials, manifest (an index is narrowed to
/// linux/<host arch>), config. Errors here are returned before any streaming.
pub async fn prepare(
    reference: Reference,
    auth: RegistryAuth,
    insecure: &Insecure,
) -> ApiResult<Plan> {
    let (domain, path) = reference
        .name
        .split_once('/')
        .ok_or_else(|| ApiError::BadRequest(format!("invalid reference {}", reference.name)))?;
    let oref = match (&reference.digest, &reference.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(domain.into(), path.into(), d.clone()),
        (None, t) => oci_client::Reference::with_tag(
            domain.into(),
            path.into(),
            t.clone()
                .unwrap_or_else(|| super::reference::DEFAULT_TAG.into()),
        ),
    };
    let anonymous = matches!(auth, RegistryAuth::Anonymous);
    let client = Arc::new(registry::client(oref.resolve_registry(), insecure));
    client
        .auth(&oref, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(e, "Get", None, anonymous))?;
    let mut plan = Plan {
        client,
        oref: oref.clone(),
        reference,
        anonymous,
        digest: String::new(),
        config: Vec::new(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
    };
    let (body, digest) = plan.manifest(&oref, &auth).await?;
    plan.digest = digest;
    let mut m: Manifest = serde_json::from_slice(&body).map_err(|e| bad_manifest("manifest", e))?;
    let is_index = m.manifests.is_some()
        || m.media_type.contains("manifest.list")
        || m.media_type.contains("image.index");
    if is_index {
        let list = m.manifests.take().unwrap_or_default();
        let pick = list
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
            })
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no matching manifest for linux/{} in the manifest list entries",
                    host_arch()
                ))
            })?;
        if !is_digest(&pick.digest) {
            return Err(bad_manifest(
                "manifest list",
                format!("digest {:?}", pick.digest),
            ));
        }
        let child = oci_client::Reference::with_digest(
            oref.registry().into(),
            oref.repository().into(),
            pick.digest.clone(),
        );
        let (body, _) = plan.manifest(&child, &auth).await?;
        m = serde_json::from_slice(&body).map_err(|e| bad_manifest("manifest", e))?;
        if m.manifests.is_some() {
            return Err(bad_manifest("manifest", "an index inside an index"));
        }
    }
    if m.schema_version != 2 {
        return Err(ApiError::Internal(format!(
            "unsupported manifest schema version {} for {} (only schema 2 and OCI)",
            m.schema_version,
            plan.shown()
        )));
    }
    let config = m
        .config
        .ok_or_else(|| bad_manifest("manifest", "no config"))?;
    for d in std::iter::once(&config).chain(&m.layers) {
        if !is_digest(&d.digest) {
            return Err(bad_manifest("manifest", format!("digest {:?}", d.digest)));
        }
    }
    plan.config = plan.small_blob(&config.digest, MAX_CONFIG).await?;
    let cfg: ImageConfigFile =
        serde_json::from_slice(&plan.config).map_err(|e| bad_manifest("image config", e))?;
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(bad_manifest(
            "manifest",
            format!(
                "layers length mismatch: {} diff ids, {} layers",
                cfg.rootfs.diff_ids.len(),
                m.layers.len()
            ),
        ));
    }
    for d in &cfg.rootfs.diff_ids {
        if !is_digest(d) {
            return Err(bad_manifest("image config", format!("diff id {d:?}")));
        }
    }
    plan.diff_ids = cfg.rootfs.diff_ids;
    plan.layers = m.layers;
    Ok(plan)
}

/// Streams the pull of a prepared image into `tx` and records it.
pub async fn run(images: Arc<ImageStore>, plan: Plan, tx: Sender<Vec<u8>>) -> ApiResult<()> {
    let path = plan
        .reference
        .name
        .split_once('/')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    let id_shown = plan
        .reference
        .digest
        .clone()
        .or_else(|| plan.reference.tag.clone())
        .unwrap_or_default();
    say(
        &tx,
        json!({"status": format!("Pulling from {path}"), "id": id_shown}),
    )
    .await;
    let mut chains = Vec::new();
    let mut parent: Option<String> = None;
    for d in &plan.diff_ids {
        let c = chain_id(parent.as_deref(), d);
        chains.push(c.clone());
        parent = Some(c);
    }
    let mut present = Vec::new();
    for c in &chains {
        present.push(images.layers.get(c)?.is_some());
    }
    let mut downloads = Downloads(Vec::new());
    // An image already here: dockerd names no layers, only the digest and the status.
    let known = images
        .images
        .get::<super::ImageMeta>(&digest_of(&plan.config))?
        .is_some();
    for (layer, have) in plan.layers.iter().zip(&present).filter(|_| !known) {
        let status = if *have {
            "Already exists"
        } else {
            "Pulling fs layer"
        };
        say(
            &tx,
            json!({"status": status, "progressDetail": {}, "id": short(&layer.digest)}),
        )
        .await;
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(download::MAX_DOWNLOADS));
    for (layer, have) in plan.layers.iter().zip(&present) {
        downloads.0.push((!have).then(|| {
            tokio::spawn(download(
                plan.client.clone(),
                plan.oref.clone(),
                layer.clone(),
                images.tmp.clone(),
                plan.anonymous,
                tx.clone(),
                slots.clone(),
            ))
        }));
    }
    for i in 0..plan.layers.len() {
        let Some(handle) = downloads.0[i].take() else {
            continue;
        };
        let file = handle
            .await
            .map_err(|e| ApiError::internal("download task", e))??;
        let id = short(&plan.layers[i].digest);
        let size = file.as_file().metadata().map(|m| m.len()).unwrap_or(0);
        say(
            &tx,
            json!({"status": "Extracting", "progressDetail": {"current": size, "total": size}, "id": id}),
        )
        .await;
        let parent = i.checked_sub(1).map(|p| chains[p].clone());
        let diff = plan.diff_ids[i].clone();
        let store = images.clone();
        tokio::task::spawn_blocking(move || -> ApiResult<()> {
            let mut f = file
                .reopen()
                .map_err(|e| ApiError::internal("open downloaded layer", e))?;
            store
                .layers
                .register(&mut f, parent.as_deref(), Some(&diff))?;
            Ok(())
        })
        .await
        .map_err(|e| ApiError::internal("extract task", e))??;
        say(
            &tx,
            json!({"status": "Pull complete", "progressDetail": {}, "id": id}),
        )
        .await;
    }
    let store = images.clone();
    let config = plan.config.clone();
    let tag_ref = plan.reference.tag.is_some().then(|| plan.reference.clone());
    let digest_ref = Reference {
        name: plan.reference.name.clone(),
        tag: None,
        digest: Some(plan.digest.clone()),
    };
    let shown = plan.shown();
    let (remember, diff_ids) = (plan.layers.clone(), plan.diff_ids.clone());
    let repo = plan.reference.name.clone();
    let up_to_date = tokio::task::spawn_blocking(move || -> ApiResult<bool> {
        let (id, new) = store.commit_image(&config, &chains)?;
        for (l, diff) in remember.iter().zip(&diff_ids) {
            let size = u64::try_from(l.size).unwrap_or(0);
            if let Err(e) = store.remember_blob(diff, &l.digest, size, &repo, &l.media_type) {
                tracing::warn!(error = %e, layer = %l.digest, "could not remember the layer's blob");
            }
        }
        let mut same = !new;
        for r in tag_ref.iter().chain(std::iter::once(&digest_ref)) {
            let before = store.refs.get::<String>(&r.key())?;
            same &= before.as_deref() == Some(id.as_str());
            store.set_ref(r, &id)?;
        }
        store.event("pull", &id, &shown);
        Ok(same)
    })
    .await
    .map_err(|e| ApiError::internal("record image task", e))??;
    say(&tx, json!({"status": format!("Digest: {}", plan.digest)})).await;
    let status = if up_to_date {
        format!("Status: Image is up to date for {}", plan.shown())
    } else {
        format!("Status: Downloaded newer image for {}", plan.shown())
    };
    say(&tx, json!({ "status": status })).await;
    Ok(())
}
