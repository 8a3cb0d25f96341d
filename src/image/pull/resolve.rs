//! Resolving a pull before anything streams: the endpoints to try (mirrors, the HTTPS try
//! of an insecure registry, the registry), credentials, the manifest (an index narrowed to
//! linux/<host arch>) and the config, each size-limited and verified.

use super::manifest::{GetError, ManifestGet};
use super::registry::{registry_error, Insecure, Scheme};
use super::{bad_manifest, Manifest, Plan, ACCEPT, MAX_CONFIG, MAX_MANIFEST};
use super::{mirror, registry};
use crate::error::{ApiError, ApiResult};
use crate::image::blobs::digest_of;
use crate::image::config::ImageConfigFile;
use crate::image::host_arch;
use crate::image::reference::{is_digest, Reference};
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use std::sync::Arc;

impl Plan {
    pub(super) fn shown(&self) -> String {
        self.reference.familiar()
    }

    fn step_err(&self, e: oci_client::errors::OciDistributionError, manifest: bool) -> ApiError {
        let shown = self.shown();
        registry_error(e, "Get", manifest.then_some(shown.as_str()), self.anonymous)
    }

    async fn manifest(&self, oref: &oci_client::Reference) -> ApiResult<(Vec<u8>, String)> {
        let (body, header) = match self.manifests.get(oref, ACCEPT, MAX_MANIFEST).await {
            Ok(got) => got,
            Err(GetError::Registry(e)) => return Err(self.step_err(e, true)),
            Err(GetError::TooLarge) => {
                return Err(ApiError::Internal(format!(
                    "manifest for {} is larger than {MAX_MANIFEST} bytes",
                    self.shown()
                )))
            }
        };
        // Checked against the digest asked for, else the one the registry announced.
        let actual = digest_of(&body);
        let wanted = oref.digest().or(header.as_deref()).unwrap_or(&actual);
        if actual != wanted {
            return Err(ApiError::Internal(format!(
                "manifest verification failed for digest {wanted}"
            )));
        }
        Ok((body, actual))
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
                if !ep.kind.go_on(unreachable) {
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

impl Kind {
    /// Whether a failure here (`unreachable`: no HTTP answer at all) goes on to the next
    /// endpoint.
    fn go_on(self, unreachable: bool) -> bool {
        match self {
            Kind::Mirror => true,
            Kind::Probe => unreachable,
            Kind::Last => false,
        }
    }
}

/// One place to pull from.
struct Endpoint {
    client: Client,
    scheme: Scheme,
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
        scheme,
        registry: registry.to_string(),
        path: path.to_string(),
        kind,
    };
    let mut out = Vec::new();
    if domain == crate::image::reference::DEFAULT_DOMAIN {
        for m in mirrors {
            let scheme = if m.plain { Scheme::Http } else { Scheme::Https };
            out.push(ep(scheme, &m.host, Kind::Mirror));
        }
    }
    let schemes = registry::schemes(domain, insecure);
    for (i, scheme) in schemes.iter().enumerate() {
        let kind = if i + 1 == schemes.len() {
            Kind::Last
        } else {
            Kind::Probe
        };
        out.push(ep(*scheme, domain, kind));
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
        if !ep.kind.go_on(unreachable) {
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
                .unwrap_or_else(|| crate::image::reference::DEFAULT_TAG.into()),
        ),
    };
    let anonymous = matches!(auth, RegistryAuth::Anonymous);
    let client = Arc::new(ep.client.clone());
    let token = match client.auth(&oref, &auth, RegistryOperation::Pull).await {
        Ok(t) => t,
        Err(e) => {
            let unreachable = registry::unreachable(&e);
            return Err((registry_error(e, "Get", None, anonymous), unreachable));
        }
    };
    let manifests = ManifestGet::new(ep.scheme, &auth, token)
        .map_err(|e| (registry_error(e, "Get", None, anonymous), false))?;
    resolve(reference, manifests, client, oref, anonymous)
        .await
        .map_err(|e| (e, false))
}

/// The manifest (an index narrowed to this platform) and config, at an endpoint that
/// answered.
async fn resolve(
    reference: Reference,
    manifests: ManifestGet,
    client: Arc<Client>,
    oref: oci_client::Reference,
    anonymous: bool,
) -> ApiResult<Plan> {
    let mut plan = Plan {
        client,
        manifests,
        oref: oref.clone(),
        reference,
        anonymous,
        digest: String::new(),
        config: Vec::new(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
    };
    let (body, digest) = plan.manifest(&oref).await?;
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
        let (body, _) = plan.manifest(&child).await?;
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
