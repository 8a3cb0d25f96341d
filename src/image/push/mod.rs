//! `docker push` to a Distribution v2 registry, as dockerd 20.10 does it, through the
//! oci-client crate.
//!
//! [`run`] streams the JSON messages the CLI draws: `The push refers to repository […]`,
//! then the tags to push are resolved (`repo:tag`, or every tag of `repo` when the API's
//! `tag` is empty; an unknown name is an error *in* the stream, as with dockerd). Per tag,
//! every layer says `Preparing` (top first) and is handled by [`upload::upload`], at most
//! five at a time; then the config blob goes up (unless the registry has it) and a Docker
//! schema 2 manifest is put under the tag. The tag's `<tag>: digest: … size: …` line and the
//! `aux` result follow, and `name@digest` becomes one of the image's `RepoDigests`.
//!
//! Layer tars are re-created from tar-split ([`super::layers::Layers::write_tar`]) and
//! gzipped deterministically ([`gzip`]); table `distribution` ([`meta`]) remembers which
//! compressed blob a layer is in which repository, so pushing it again, or to another
//! repository of the same registry, sends nothing.
//!
//! A failed layer upload is tried up to five times with dockerd's `Retrying in N seconds`
//! countdown (5 s, 10 s, …) unless the registry refused it for good.
//!
//! Insecure registries (loopback, `--insecure-registry`) are tried over HTTPS with any
//! certificate, then over plain HTTP, as for pulls.
//!
//! Not here: foreign (non-distributable) layers, the schema 1 fallback, content trust.

mod gzip;
pub mod meta;
mod upload;

use super::pull::registry::{self, envelope_text, registry_error, Insecure};
use super::reference::Reference;
use super::ImageStore;
use crate::error::{ApiError, ApiResult};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::Sender;
use upload::{Blob, Ctx};

/// Media type of the manifests pushed.
pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of the config blob in them.
pub const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";

use crate::image::progress::{say, short};

/// A registry error of a push step, worded as dockerd words it: a 401 is `no basic auth
/// credentials` without credentials, else the registry's own error (`unauthorized:
/// authentication required`, `denied: requested access to the resource is denied`).
pub fn push_error(e: OciDistributionError, step: &str, anonymous: bool) -> ApiError {
    let status = match &e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        _ => None,
    };
    if status == Some(401) && anonymous {
        return ApiError::Internal("no basic auth credentials".into());
    }
    if let OciDistributionError::ServerError { message, .. } = &e {
        if let Ok(env) = serde_json::from_str::<OciEnvelope>(message) {
            if !env.errors.is_empty() {
                return ApiError::Internal(envelope_text(&env));
            }
        }
    }
    if status == Some(401) {
        return ApiError::Internal("unauthorized: authentication required".into());
    }
    registry_error(e, step, None, anonymous)
}

/// The tags to push for `r` with their image ids, as dockerd resolves them.
fn targets(images: &ImageStore, r: &Reference) -> ApiResult<Vec<(String, String)>> {
    let refs: Vec<(String, String)> = images
        .all_refs()?
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix(&r.name)
                .is_some_and(|t| t.starts_with(':') || t.starts_with('@'))
        })
        .collect();
    if refs.is_empty() {
        return Err(ApiError::NotFound(format!(
            "An image does not exist locally with the tag: {}",
            r.familiar_name()
        )));
    }
    if let Some(tag) = &r.tag {
        let key = format!("{}:{tag}", r.name);
        return match refs.into_iter().find(|(k, _)| *k == key) {
            Some((_, id)) => Ok(vec![(tag.clone(), id)]),
            None => Err(ApiError::NotFound(format!(
                "tag does not exist: {}",
                r.familiar()
            ))),
        };
    }
    if r.digest.is_some() {
        return Err(ApiError::BadRequest(
            "cannot push a digest reference".into(),
        ));
    }
    let tags: Vec<(String, String)> = refs
        .into_iter()
        .filter_map(|(k, id)| {
            k[r.name.len()..]
                .strip_prefix(':')
                .map(|t| (t.to_string(), id))
        })
        .collect();
    if tags.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no tags to push for {}",
            r.familiar_name()
        )));
    }
    Ok(tags)
}

/// The schema 2 manifest, byte for byte as dockerd's distribution library writes it
/// (three-space indent).
pub fn manifest(config: &[u8], layers: &[Blob]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|b| json!({"mediaType": meta::GZIP_TYPES[0], "size": b.size, "digest": b.digest}))
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": config.len(), "digest": super::blobs::digest_of(config)},
        "layers": layers,
    });
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = serde::Serialize::serialize(&v, &mut ser);
    out
}

/// Streams the push of `reference` (a tag, or a bare name for all its tags) into `tx`.
pub async fn run(
    images: Arc<ImageStore>,
    reference: Reference,
    auth: RegistryAuth,
    insecure: Insecure,
    tx: Sender<Vec<u8>>,
) -> ApiResult<()> {
    say(
        &tx,
        json!({"status": format!("The push refers to repository [{}]", reference.name)}),
    )
    .await;
    let store = images.clone();
    let r = reference.clone();
    let tags = tokio::task::spawn_blocking(move || targets(&store, &r))
        .await
        .map_err(|e| ApiError::internal("push task", e))??;
    let (domain, path) = reference
        .name
        .split_once('/')
        .ok_or_else(|| ApiError::BadRequest(format!("invalid reference {}", reference.name)))?;
    let anonymous = matches!(auth, RegistryAuth::Anonymous);
    let repo = oci_client::Reference::with_tag(domain.into(), path.into(), "latest".into());
    // As with dockerd, an unreachable registry fails before the layers are listed, a token
    // service refusing the credentials only when the first layer asks for a token. An
    // insecure registry is tried over HTTPS first, then over plain HTTP.
    let schemes = registry::schemes(repo.resolve_registry(), &insecure);
    let mut chosen = None;
    for (i, scheme) in schemes.iter().enumerate() {
        let client = Arc::new(registry::client_with(*scheme));
        let mut refused = None;
        let mut token = false;
        let mut failed = None;
        for op in [RegistryOperation::Push, RegistryOperation::Pull] {
            match client.auth(&repo, &auth, op).await {
                Ok(t) => token |= t.is_some(),
                Err(e @ OciDistributionError::AuthenticationFailure(_)) => {
                    refused.get_or_insert(registry_error(e, "Get", None, anonymous));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) if registry::unreachable(&e) && i + 1 < schemes.len() => continue,
            Some(e) => return Err(registry_error(e, "Get", None, anonymous)),
            None => {}
        }
        chosen = Some((*scheme, client, refused, token));
        break;
    }
    let Some((scheme, mut client, mut refused, token)) = chosen else {
        return Err(ApiError::Internal(format!(
            "no way to reach the registry of {}",
            reference.name
        )));
    };
    if anonymous && !token {
        // Nothing to authenticate with: a client that never heard of this registry's auth
        // does not ping `/v2/` again before every request.
        client = Arc::new(registry::client_with(scheme));
    }
    let ctx = Arc::new(Ctx {
        client,
        oref: repo,
        name: reference.name.clone(),
        images: images.clone(),
        tx: tx.clone(),
        anonymous,
        slots: Arc::new(tokio::sync::Semaphore::new(upload::MAX_UPLOADS)),
        done: Mutex::new(HashMap::new()),
    });
    for (tag, id) in &tags {
        push_tag(&ctx, tag, id, refused.take()).await?;
    }
    let shown = reference.familiar();
    let store = images.clone();
    let name = reference.familiar_name();
    let _ = tokio::task::spawn_blocking(move || store.push_event(&shown, &name)).await;
    Ok(())
}

/// Aborts the layer tasks still running when a push ends early.
struct Tasks(Vec<tokio::task::JoinHandle<ApiResult<Blob>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Pushes one tag; `refused` is the token service's refusal, reported once the layers are
/// listed.
async fn push_tag(ctx: &Arc<Ctx>, tag: &str, id: &str, refused: Option<ApiError>) -> ApiResult<()> {
    let store = ctx.images.clone();
    let image = id.to_string();
    let (config, layers) = tokio::task::spawn_blocking(move || store.push_layers(&image))
        .await
        .map_err(|e| ApiError::internal("push task", e))??;
    for l in layers.iter().rev() {
        say(
            &ctx.tx,
            json!({"status": "Preparing", "progressDetail": {}, "id": short(&l.diff_id)}),
        )
        .await;
    }
    if let Some(e) = refused {
        return Err(e);
    }
    // One task per distinct layer, top first as dockerd queues them.
    let mut tasks = Tasks(Vec::new());
    let mut order: Vec<String> = Vec::new();
    for l in layers.iter().rev() {
        if !order.contains(&l.diff_id) {
            order.push(l.diff_id.clone());
            let slot = ctx.slots.clone().try_acquire_owned().ok();
            tasks
                .0
                .push(tokio::spawn(upload::upload(ctx.clone(), l.clone(), slot)));
        }
    }
    let mut blobs: HashMap<String, Blob> = HashMap::new();
    for (i, diff) in order.iter().enumerate() {
        let blob = (&mut tasks.0[i])
            .await
            .map_err(|e| ApiError::internal("layer push task", e))??;
        blobs.insert(diff.clone(), blob);
    }
    let mut descs = Vec::new();
    for l in &layers {
        descs.push(
            blobs
                .get(&l.diff_id)
                .cloned()
                .ok_or_else(|| ApiError::Internal(format!("layer {} was not pushed", l.diff_id)))?,
        );
    }
    let tagged = oci_client::Reference::with_tag(
        ctx.oref.registry().into(),
        ctx.oref.repository().into(),
        tag.into(),
    );
    let config_digest = super::blobs::digest_of(&config);
    let have = ctx
        .client
        .blob_exists(&tagged, &config_digest)
        .await
        .unwrap_or(false);
    if !have {
        ctx.client
            .push_blob(&tagged, config.clone(), &config_digest)
            .await
            .map_err(|e| push_error(e, "Post", ctx.anonymous))?;
    }
    let body = manifest(&config, &descs);
    let digest = super::blobs::digest_of(&body);
    let size = body.len();
    let ctype = reqwest::header::HeaderValue::from_static(MANIFEST_TYPE);
    ctx.client
        .push_manifest_raw(&tagged, body, ctype)
        .await
        .map_err(|e| push_error(e, "Put", ctx.anonymous))?;
    say(
        &ctx.tx,
        json!({"status": format!("{tag}: digest: {digest} size: {size}")}),
    )
    .await;
    let store = ctx.images.clone();
    let key = format!("{}@{digest}", ctx.name);
    let image = id.to_string();
    tokio::task::spawn_blocking(move || store.add_digest_ref(&key, &image))
        .await
        .map_err(|e| ApiError::internal("push task", e))??;
    say(
        &ctx.tx,
        json!({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": size}}),
    )
    .await;
    Ok(())
}

impl ImageStore {
    /// The config and layers (bottom first) of image `id`, checking every layer's tar can
    /// be re-created.
    fn push_layers(&self, id: &str) -> ApiResult<(Vec<u8>, Vec<super::layers::LayerMeta>)> {
        let meta = self.meta(id)?;
        let config = self.blobs.get(id)?;
        let mut out = Vec::new();
        for chain in &meta.layers {
            let m = self
                .layers
                .get(chain)?
                .ok_or_else(|| ApiError::Internal(format!("layer {chain} of {id} is missing")))?;
            if !m.tar_split {
                return Err(ApiError::Internal(format!(
                    "layer {} (diff id {}) of image {id} cannot be pushed: its original tar \
                     cannot be re-created exactly",
                    m.chain_id, m.diff_id
                )));
            }
            out.push(m);
        }
        Ok((config, out))
    }

    /// Records `key` (`name@digest`) for `id` unless it already names an image (dockerd
    /// never moves a digest reference).
    fn add_digest_ref(&self, key: &str, id: &str) -> ApiResult<()> {
        let _g = self.guard();
        if self.refs.get::<String>(key)?.is_none() {
            self.refs.put(key, &id.to_string())?;
        }
        Ok(())
    }

    /// The `push` event: actor id the pushed reference, `name` its repository, plus the
    /// image's labels.
    fn push_event(&self, shown: &str, name: &str) {
        let labels = self
            .find_id(shown)
            .ok()
            .flatten()
            .and_then(|id| self.meta(&id).and_then(|m| self.record_of(m)).ok())
            .and_then(|r| r.config.config.and_then(|c| c.labels))
            .unwrap_or_default();
        let mut attrs = labels;
        attrs.insert("name".to_string(), name.to_string());
        self.events.publish("image", "push", shown, attrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBus;
    use crate::store::Store;

    #[test]
    fn a_layer_without_tar_split_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let images = ImageStore::open(&dir.path().join("image"), &store, Arc::new(EventBus::new()))
            .expect("open");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"abc"[..]).expect("entry");
        let tar = b.into_inner().expect("tar");
        let id = images
            .import(&mut &tar[..], Some("x:1"), &[], "")
            .expect("import");
        let (config, layers) = images.push_layers(&id).expect("layers");
        assert_eq!(super::super::blobs::digest_of(&config), id);
        assert_eq!(layers.len(), 1);
        let chain = layers[0].chain_id.clone();
        let file = images.layers.path(&chain).expect("path").join("layer.json");
        let mut m = layers[0].clone();
        m.tar_split = false;
        std::fs::write(&file, serde_json::to_vec(&m).expect("json")).expect("write");
        let e = images.push_layers(&id).expect_err("refused").to_string();
        assert!(e.contains(&chain) && e.contains("cannot be pushed"), "{e}");
    }

    #[test]
    fn manifest_is_docker_schema2_with_three_space_indent() {
        let config = br#"{"architecture":"amd64"}"#;
        let blob = Blob {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 772_788,
        };
        let body = manifest(config, std::slice::from_ref(&blob));
        let text = String::from_utf8(body.clone()).expect("utf8");
        assert!(
            text.starts_with("{\n   \"schemaVersion\": 2,\n   \"mediaType\""),
            "{text}"
        );
        assert!(text.contains("\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 772788,\n"), "{text}");
        // dockerd's one-layer manifest with a 4-digit config and 6-digit layer size: 527 bytes
        // (the config here is 2 digits long).
        assert_eq!(body.len(), 525);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["config"]["size"], config.len());
        assert_eq!(v["config"]["mediaType"], CONFIG_TYPE);
    }

    #[test]
    fn push_errors_in_dockerd_words() {
        let e = |code, message: &str| OciDistributionError::ServerError {
            url: "http://r/v2/x/blobs/uploads/".into(),
            code,
            message: message.into(),
        };
        let unauthorized = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(
            push_error(e(401, unauthorized), "Post", true).to_string(),
            "no basic auth credentials"
        );
        assert_eq!(
            push_error(e(401, unauthorized), "Post", false).to_string(),
            "unauthorized: authentication required"
        );
        let denied = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        assert_eq!(
            push_error(e(403, denied), "Post", false).to_string(),
            "denied: requested access to the resource is denied"
        );
    }
}
