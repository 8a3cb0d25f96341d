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
mod manifest;
pub mod mirror;
pub mod registry;
mod resolve;
mod stream;

pub use registry::{decode_auth, Insecure};
pub use resolve::{list_tags, prepare};
pub use stream::{run, run_all_tags};

use super::reference::Reference;
use crate::error::ApiError;
use oci_client::Client;
use serde::Deserialize;
use std::sync::Arc;

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
    /// Manifest GETs, size-limited, with the credentials the client settled on.
    manifests: manifest::ManifestGet,
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

use crate::image::progress::{say, short};
