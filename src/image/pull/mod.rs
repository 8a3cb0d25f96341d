//! `docker pull` from a Distribution v2 registry, through the oci-client crate.
//!
//! [`prepare`] does everything that can fail before the first progress line (credentials,
//! manifest, index → linux/<host arch>, config), so an unknown image is a plain 404 as with
//! dockerd. [`run`] then streams the JSON messages the CLI draws: each missing layer is
//! fetched in its own task ([`fetch`]: the blob streams into the extractor, so a layer is
//! unpacked while it downloads; it is committed once its digest and diff id are checked),
//! shared with any other pull of that layer ([`inflight`]), at most three downloads at once
//! daemon-wide. The image then gets its tag and its `name@digest` reference (`RepoDigests`);
//! until then its layers are claimed, so `rmi` and prune leave them alone, and a pull cut
//! short leaves committed layers but no image (prune removes them).
//!
//! Images of Docker Hub come from the `--registry-mirror`s first ([`mirror`]).
//!
//! `docker pull -a` lists the tags and pulls each ([`run_all_tags`]).
//!
//! Insecure registries (loopback, `--insecure-registry`) are tried over HTTPS with any
//! certificate, then over plain HTTP when HTTPS gets no answer, as dockerd does.
//!
//! Each layer's blob is remembered for push ([`super::push::meta`]).

mod fetch;
pub mod inflight;
pub mod login;
pub mod mirror;
pub mod registry;

pub use registry::{decode_auth, Insecure};

use super::blobs::digest_of;
use super::config::ImageConfigFile;
use super::layers::chain_id;
use super::reference::{is_digest, Reference};
use super::{host_arch, ImageStore};
use crate::error::{ApiError, ApiResult};
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use registry::{registry_error, Scheme};
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
            let chunk = chunk.map_err(|e| {
                // oci-client checks the digest at the end of the stream; its message names
                // the wrong digest, so say it as we do below.
                let digest_err = e
                    .get_ref()
                    .is_some_and(|x| x.is::<oci_client::errors::DigestError>());
                if digest_err {
                    ApiError::Internal(format!("blob verification failed for digest {digest}"))
                } else {
                    ApiError::internal(&format!("read blob {digest}"), e)
                }
            })?;
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

/// A `mediaType` the manifest names must be one we asked for (dockerd's wording).
fn check_media_type(m: &Manifest) -> ApiResult<()> {
    if m.media_type.is_empty() || ACCEPT.contains(&m.media_type.as_str()) {
        return Ok(());
    }
    Err(ApiError::Internal(format!(
        "unsupported manifest media type and no default available: {}",
        m.media_type
    )))
}

/// Resolves `reference` at its registry: credentials, manifest (an index is narrowed to
/// linux/<host arch>), config. Images of Docker Hub are looked for on each
/// `--registry-mirror` first, then on Docker Hub. Errors here are returned before any
/// streaming.
pub async fn prepare(
    reference: Reference,
    auth: RegistryAuth,
    insecure: &Insecure,
    mirrors: &[mirror::Mirror],
) -> ApiResult<Plan> {
    let mut last = None;
    for ep in endpoints(&reference, insecure, mirrors)? {
        match prepare_at(reference.clone(), auth.clone(), &ep).await {
            Ok(plan) => return Ok(plan),
            Err((e, unreachable)) => {
                let next = match ep.kind {
                    Kind::Mirror => true,
                    Kind::Probe => unreachable,
                    Kind::Last => false,
                };
                if !next {
                    return Err(e);
                }
                tracing::warn!(registry = %ep.registry, error = %e, "pull endpoint failed, trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ApiError::Internal("no registry endpoint to pull from".into())))
}

/// What happens when an endpoint fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A `--registry-mirror`: any failure goes on to the next endpoint.
    Mirror,
    /// HTTPS to an insecure registry: go on to plain HTTP when it cannot be reached.
    Probe,
    /// The last endpoint: its error is the pull's.
    Last,
}

/// One place to pull from.
struct Endpoint {
    client: Client,
    /// `host[:port]`.
    registry: String,
    /// The repository path there.
    path: String,
    kind: Kind,
}

/// Where `reference` is pulled from, in order. Docker Hub names go to each mirror first;
/// an insecure registry is tried over HTTPS with any certificate, then over plain HTTP.
fn endpoints(
    reference: &Reference,
    insecure: &Insecure,
    mirrors: &[mirror::Mirror],
) -> ApiResult<Vec<Endpoint>> {
    let (domain, path) = reference
        .name
        .split_once('/')
        .ok_or_else(|| ApiError::BadRequest(format!("invalid reference {}", reference.name)))?;
    let ep = |scheme, registry: &str, kind| Endpoint {
        client: registry::client_with(scheme),
        registry: registry.to_string(),
        path: path.to_string(),
        kind,
    };
    let mut out = Vec::new();
    if domain == super::reference::DEFAULT_DOMAIN {
        for m in mirrors {
            let scheme = if m.plain { Scheme::Http } else { Scheme::Https };
            out.push(ep(scheme, &m.host, Kind::Mirror));
        }
    }
    if insecure.allows(domain) {
        out.push(ep(Scheme::HttpsAnyCert, domain, Kind::Probe));
        out.push(ep(Scheme::Http, domain, Kind::Last));
    } else {
        out.push(ep(Scheme::Https, domain, Kind::Last));
    }
    Ok(out)
}

/// `docker pull -a`: the tags of the repository `reference` names, from the first endpoint
/// that lists them.
pub async fn list_tags(
    reference: &Reference,
    auth: &RegistryAuth,
    insecure: &Insecure,
    mirrors: &[mirror::Mirror],
) -> ApiResult<Vec<String>> {
    let anonymous = matches!(auth, RegistryAuth::Anonymous);
    let mut last = None;
    for ep in endpoints(reference, insecure, mirrors)? {
        let oref = oci_client::Reference::with_tag(ep.registry.clone(), ep.path, "latest".into());
        let listed = match ep.client.auth(&oref, auth, RegistryOperation::Pull).await {
            Ok(_) => ep.client.list_tags(&oref, auth, None, None).await,
            Err(e) => Err(e),
        };
        let unreachable = match listed {
            Ok(t) if !t.tags.is_empty() => return Ok(t.tags),
            Ok(_) => {
                last = Some(ApiError::NotFound(format!(
                    "repository {} has no tags",
                    reference.familiar()
                )));
                false
            }
            Err(e) => {
                let u = registry::unreachable(&e);
                last = Some(registry_error(e, "Get", None, anonymous));
                u
            }
        };
        if ep.kind == Kind::Last || (ep.kind == Kind::Probe && !unreachable) {
            break;
        }
    }
    Err(last.unwrap_or_else(|| ApiError::Internal("no registry endpoint to pull from".into())))
}

/// [`prepare`] at one endpoint. An error says whether the endpoint could not be reached at
/// all (its first request got no HTTP answer).
async fn prepare_at(
    reference: Reference,
    auth: RegistryAuth,
    ep: &Endpoint,
) -> Result<Plan, (ApiError, bool)> {
    let (registry, path) = (ep.registry.as_str(), ep.path.as_str());
    let oref = match (&reference.digest, &reference.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(registry.into(), path.into(), d.clone()),
        (None, t) => oci_client::Reference::with_tag(
            registry.into(),
            path.into(),
            t.clone()
                .unwrap_or_else(|| super::reference::DEFAULT_TAG.into()),
        ),
    };
    let anonymous = matches!(auth, RegistryAuth::Anonymous);
    let client = Arc::new(ep.client.clone());
    if let Err(e) = client.auth(&oref, &auth, RegistryOperation::Pull).await {
        let unreachable = registry::unreachable(&e);
        return Err((registry_error(e, "Get", None, anonymous), unreachable));
    }
    resolve(reference, auth, client, oref, anonymous)
        .await
        .map_err(|e| (e, false))
}

/// The manifest (an index narrowed to this platform) and config, at an endpoint that
/// answered.
async fn resolve(
    reference: Reference,
    auth: RegistryAuth,
    client: Arc<Client>,
    oref: oci_client::Reference,
    anonymous: bool,
) -> ApiResult<Plan> {
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
    check_media_type(&m)?;
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
        check_media_type(&m)?;
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

/// Aborts the progress-following tasks of a pull that ends early (dropping their hold on
/// the shared fetches, which stop when no other pull waits for them).
struct Follows(Vec<Option<tokio::task::JoinHandle<ApiResult<super::layers::LayerMeta>>>>);

impl Drop for Follows {
    fn drop(&mut self) {
        for h in self.0.iter().flatten() {
            h.abort();
        }
    }
}

/// Streams the pull of a prepared image into `tx` and records it.
pub async fn run(images: Arc<ImageStore>, plan: Plan, tx: Sender<Vec<u8>>) -> ApiResult<()> {
    let shown = plan.shown();
    let up_to_date = run_clean(images, plan, &tx).await?;
    say(&tx, json!({ "status": final_status(up_to_date, &shown) })).await;
    Ok(())
}

fn final_status(up_to_date: bool, shown: &str) -> String {
    if up_to_date {
        format!("Status: Image is up to date for {shown}")
    } else {
        format!("Status: Downloaded newer image for {shown}")
    }
}

/// `docker pull -a`: every tag of the repository, one after the other, then one status line
/// naming the repository.
pub async fn run_all_tags(
    images: Arc<ImageStore>,
    repo: Reference,
    tags: Vec<String>,
    auth: RegistryAuth,
    insecure: Insecure,
    mirrors: Vec<mirror::Mirror>,
    tx: Sender<Vec<u8>>,
) -> ApiResult<()> {
    let mut all_up_to_date = true;
    for tag in tags {
        let r = Reference {
            name: repo.name.clone(),
            tag: Some(tag),
            digest: None,
        };
        let plan = prepare(r, auth.clone(), &insecure, &mirrors).await?;
        all_up_to_date &= run_clean(images.clone(), plan, &tx).await?;
    }
    say(
        &tx,
        json!({ "status": final_status(all_up_to_date, &repo.familiar()) }),
    )
    .await;
    Ok(())
}

/// [`run_one`], then, if it failed, removal of the layers it had committed that no image
/// uses and no other running pull needs: a failed pull leaves nothing behind.
async fn run_clean(images: Arc<ImageStore>, plan: Plan, tx: &Sender<Vec<u8>>) -> ApiResult<bool> {
    let mut fresh = Vec::new();
    let res = run_one(images.clone(), plan, tx, &mut fresh).await;
    if res.is_err() && !fresh.is_empty() {
        let _ = tokio::task::spawn_blocking(move || images.drop_unreferenced_layers(&fresh)).await;
    }
    res
}

/// One image: layers, record, references, the `Digest:` line. Returns whether the image
/// and its references were all there already. `fresh` gets the chains that were missing.
async fn run_one(
    images: Arc<ImageStore>,
    plan: Plan,
    tx: &Sender<Vec<u8>>,
    fresh: &mut Vec<String>,
) -> ApiResult<bool> {
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
        tx,
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
    // From here until the image is recorded, rmi and prune keep these layers.
    let _claim = images.inflight.claim(&chains);
    let mut present = Vec::new();
    for c in &chains {
        present.push(images.layers.get(c)?.is_some());
    }
    fresh.extend(
        chains
            .iter()
            .zip(&present)
            .filter(|(_, have)| !**have)
            .map(|(c, _)| c.clone()),
    );
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
            tx,
            json!({"status": status, "progressDetail": {}, "id": short(&layer.digest)}),
        )
        .await;
    }
    // Every missing layer is fetched (downloaded and unpacked at once) in its own task,
    // shared with any other pull of it; each is followed here by a task forwarding its
    // progress into this pull's stream.
    let mut follows = Follows(Vec::new());
    for (i, (layer, have)) in plan.layers.iter().zip(&present).enumerate() {
        if *have {
            follows.0.push(None);
            continue;
        }
        let job = fetch::Job {
            client: plan.client.clone(),
            oref: plan.oref.clone(),
            layer: layer.clone(),
            parent: i.checked_sub(1).map(|p| chains[p].clone()),
            diff_id: plan.diff_ids[i].clone(),
            anonymous: plan.anonymous,
        };
        let store = images.clone();
        let waiter = images
            .inflight
            .join_or_start(&chains[i], move |progress, slots| {
                tokio::spawn(fetch::fetch(job, store, progress, slots))
            });
        if !waiter.started {
            // Another pull is fetching it: this one waits for that download.
            say(
                tx,
                json!({"status": "Waiting", "progressDetail": {}, "id": short(&layer.digest)}),
            )
            .await;
        }
        let tx = tx.clone();
        follows.0.push(Some(tokio::spawn(async move {
            waiter
                .follow(|v| {
                    let tx = tx.clone();
                    async move { say(&tx, v).await }
                })
                .await
        })));
    }
    for (i, slot) in follows.0.iter_mut().enumerate() {
        let Some(handle) = slot.as_mut() else {
            continue;
        };
        handle
            .await
            .map_err(|e| ApiError::internal("layer task", e))??;
        slot.take();
        say(
            tx,
            json!({"status": "Pull complete", "progressDetail": {}, "id": short(&plan.layers[i].digest)}),
        )
        .await;
        crate::worker::fault("pull-layer-complete");
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
    say(tx, json!({"status": format!("Digest: {}", plan.digest)})).await;
    Ok(up_to_date)
}
