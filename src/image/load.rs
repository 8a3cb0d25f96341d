//! `docker load`: docker-archive (`manifest.json`, as `docker save` writes it) and OCI
//! layouts (`oci-layout`, `index.json`, `blobs/sha256/…`). The outer tar is first unpacked
//! into a private work directory (it may be large), then read from there; paths named by
//! the archive are resolved inside that directory only, symlinks included.

use super::blobs::{digest_of, hex_of};
use super::config::ImageConfigFile;
use super::extract::{clean, extract, Mode};
use super::layers::chain_id;
use super::reference::Reference;
use super::{host_arch, ImageStore};
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest `manifest.json` of a docker-save archive (it lists every image saved).
const MAX_JSON: u64 = 32 << 20;
/// Largest OCI index or manifest (as `docker pull` allows).
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config (as `docker pull` allows).
const MAX_CONFIG: u64 = 8 << 20;

/// The manifest and index media types an OCI layout may use.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(msg.to_string())
}

/// Resolves `rel` inside `root`, following symlinks as if `root` were `/`.
fn resolve_in(root: &Path, rel: &str) -> ApiResult<PathBuf> {
    let mut pending: Vec<Vec<u8>> = rel
        .as_bytes()
        .split(|b| *b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let mut p = root.to_path_buf();
        for x in cur.iter().chain(std::iter::once(&c)) {
            p.push(OsStr::from_bytes(x));
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(bad(format!("{rel}: too many levels of symbolic links")));
                }
                let target =
                    std::fs::read_link(&p).map_err(|e| ApiError::internal("read link", e))?;
                let t = target.as_os_str().as_bytes();
                if t.starts_with(b"/") {
                    cur.clear();
                }
                pending.extend(t.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
            }
            _ => cur.push(c),
        }
    }
    let mut p = root.to_path_buf();
    for x in &cur {
        p.push(OsStr::from_bytes(x));
    }
    Ok(p)
}

/// Opens a regular file of the archive; a fifo is never waited on (`O_NONBLOCK`).
fn open_in(root: &Path, rel: &str) -> ApiResult<std::fs::File> {
    let p = resolve_in(root, rel)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&p)
        .map_err(|e| bad(format!("invalid archive: open {rel}: {e}")))?;
    match f.metadata() {
        Ok(m) if m.is_file() => Ok(f),
        Ok(_) => Err(bad(format!("invalid archive: {rel} is not a regular file"))),
        Err(e) => Err(bad(format!("invalid archive: stat {rel}: {e}"))),
    }
}

fn read_json_in(root: &Path, rel: &str, limit: u64) -> ApiResult<Vec<u8>> {
    let mut v = Vec::new();
    open_in(root, rel)?
        .take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|e| bad(format!("invalid archive: read {rel}: {e}")))?;
    if v.len() as u64 > limit {
        return Err(bad(format!(
            "invalid archive: {rel} is too large (more than {limit} bytes)"
        )));
    }
    Ok(v)
}

fn exists_in(root: &Path, rel: &str) -> bool {
    resolve_in(root, rel).map(|p| p.is_file()).unwrap_or(false)
}

#[derive(Deserialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// What every manifest and index blob is checked for first.
#[derive(Deserialize)]
struct ManifestHead {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Tags must carry a tag (`name:tag`), as dockerd requires.
fn parse_tag(t: &str) -> ApiResult<Reference> {
    let r = Reference::parse(t)?;
    if r.tag.is_none() || r.digest.is_some() {
        return Err(bad(format!("invalid tag {t:?}")));
    }
    Ok(r)
}

impl ImageStore {
    /// Loads every image of a docker-archive or OCI-layout tar. `progress` receives the
    /// lines dockerd streams (`Loaded image: busybox:latest\n`, `Loaded image ID: …\n`).
    pub fn load(&self, src: &mut dyn Read, progress: &mut dyn FnMut(String)) -> ApiResult<()> {
        let work = tempfile::Builder::new()
            .prefix("load-")
            .tempdir_in(&self.tmp)
            .map_err(|e| ApiError::internal("create load work directory", e))?;
        let root = work.path().join("archive");
        std::fs::create_dir(&root).map_err(|e| ApiError::internal("create load directory", e))?;
        extract(src, &root, Mode::Plain, None)?;
        if exists_in(&root, "manifest.json") {
            self.load_docker(&root, progress)
        } else if exists_in(&root, "index.json") {
            self.load_oci(&root, progress)
        } else {
            Err(bad("invalid archive: neither manifest.json nor index.json found (is this a docker save or OCI layout tar?)"))
        }
    }

    fn load_docker(&self, root: &Path, progress: &mut dyn FnMut(String)) -> ApiResult<()> {
        let items: Vec<ManifestItem> =
            serde_json::from_slice(&read_json_in(root, "manifest.json", MAX_JSON)?)
                .map_err(|e| bad(format!("invalid archive: manifest.json: {e}")))?;
        for item in items {
            let tags = item
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| parse_tag(t))
                .collect::<ApiResult<Vec<_>>>()?;
            let config = read_json_in(root, &item.config, MAX_CONFIG)?;
            // A config named after its digest must match it.
            let named = clean(item.config.as_bytes())
                .last()
                .map(|n| {
                    String::from_utf8_lossy(n)
                        .trim_end_matches(".json")
                        .to_string()
                })
                .unwrap_or_default();
            let actual = digest_of(&config);
            if named.len() == 64 && actual[7..] != named {
                return Err(bad(format!(
                    "invalid archive: config {} has digest {actual}",
                    item.config
                )));
            }
            let id = self.load_image(root, &config, &item.layers)?;
            self.announce(&id, &tags, progress)?;
        }
        Ok(())
    }

    fn load_oci(&self, root: &Path, progress: &mut dyn FnMut(String)) -> ApiResult<()> {
        let index: OciIndex =
            serde_json::from_slice(&read_json_in(root, "index.json", MAX_MANIFEST)?)
                .map_err(|e| bad(format!("invalid archive: index.json: {e}")))?;
        for desc in index.manifests {
            let name = desc
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    desc.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains(':') || n.contains('/'))
                })
                .cloned();
            let tags = match name {
                Some(n) => vec![parse_tag(&n)?],
                None => vec![],
            };
            let id = self.load_oci_desc(root, &desc, 0)?;
            self.announce(&id, &tags, progress)?;
        }
        Ok(())
    }

    fn read_blob_in(&self, root: &Path, digest: &str, limit: u64) -> ApiResult<Vec<u8>> {
        let data = read_json_in(root, &format!("blobs/sha256/{}", hex_of(digest)?), limit)?;
        if digest_of(&data) != digest {
            return Err(bad(format!(
                "invalid archive: blob {digest} does not match its digest"
            )));
        }
        Ok(data)
    }

    fn load_oci_desc(&self, root: &Path, desc: &Descriptor, depth: u32) -> ApiResult<String> {
        if depth > 4 {
            return Err(bad("invalid archive: image indexes nested too deeply"));
        }
        let data = self.read_blob_in(root, &desc.digest, MAX_MANIFEST)?;
        let head: ManifestHead = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("invalid archive: manifest {}: {e}", desc.digest)))?;
        if let Some(v) = head.schema_version.filter(|v| *v != 2) {
            return Err(bad(format!(
                "invalid archive: unsupported manifest schema version {v} in {}",
                desc.digest
            )));
        }
        if !head.media_type.is_empty() && !MANIFEST_TYPES.contains(&head.media_type.as_str()) {
            return Err(bad(format!(
                "invalid archive: unsupported manifest media type {:?} in {}",
                head.media_type, desc.digest
            )));
        }
        let is_index =
            desc.media_type.contains("index") || desc.media_type.contains("manifest.list");
        if is_index {
            let index: OciIndex = serde_json::from_slice(&data)
                .map_err(|e| bad(format!("invalid archive: index {}: {e}", desc.digest)))?;
            let pick = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
                })
                .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
                .ok_or_else(|| {
                    bad(format!(
                        "invalid archive: no manifest for linux/{} in {}",
                        host_arch(),
                        desc.digest
                    ))
                })?;
            return self.load_oci_desc(root, pick, depth + 1);
        }
        let m: OciManifest = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("invalid archive: manifest {}: {e}", desc.digest)))?;
        let config = self.read_blob_in(root, &m.config.digest, MAX_CONFIG)?;
        let mut paths = Vec::new();
        for l in &m.layers {
            let p = format!("blobs/sha256/{}", hex_of(&l.digest)?);
            let len = open_in(root, &p)?
                .metadata()
                .map_err(|e| bad(format!("invalid archive: stat {p}: {e}")))?
                .len();
            if let Some(size) = l.size.filter(|s| *s != len as i64) {
                return Err(bad(format!(
                    "invalid archive: layer {} is {len} bytes, its descriptor says {size}",
                    l.digest
                )));
            }
            paths.push(p);
        }
        self.load_image(root, &config, &paths)
    }

    /// Unpacks the layers an image needs (skipping present ones) and records the image.
    fn load_image(&self, root: &Path, config: &[u8], layer_paths: &[String]) -> ApiResult<String> {
        let cfg: ImageConfigFile = serde_json::from_slice(config)
            .map_err(|e| bad(format!("invalid image config: {e}")))?;
        let diff_ids = &cfg.rootfs.diff_ids;
        if diff_ids.len() != layer_paths.len() {
            return Err(bad(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                diff_ids.len(),
                layer_paths.len()
            )));
        }
        let mut fresh = Vec::new();
        let res = self.load_layers(root, config, diff_ids, layer_paths, &mut fresh);
        if res.is_err() {
            // Layers this load registered before failing belong to no image.
            self.drop_unreferenced_layers(&fresh);
        }
        res
    }

    /// [`Self::load_image`]'s layers and record; `fresh` collects the layers it registered.
    fn load_layers(
        &self,
        root: &Path,
        config: &[u8],
        diff_ids: &[String],
        layer_paths: &[String],
        fresh: &mut Vec<String>,
    ) -> ApiResult<String> {
        let mut parent: Option<String> = None;
        let mut chains = Vec::new();
        for (diff, path) in diff_ids.iter().zip(layer_paths) {
            hex_of(diff)?;
            let chain = chain_id(parent.as_deref(), diff);
            if self.layers.get(&chain)?.is_none() {
                let mut f = open_in(root, path)?;
                self.layers
                    .register(&mut f, parent.as_deref(), Some(diff))?;
                fresh.push(chain.clone());
            }
            chains.push(chain.clone());
            parent = Some(chain);
        }
        let (id, _) = self.commit_image(config, &chains)?;
        Ok(id)
    }

    /// Applies the loaded tags (moving them from other images) and reports them.
    fn announce(
        &self,
        id: &str,
        tags: &[Reference],
        progress: &mut dyn FnMut(String),
    ) -> ApiResult<()> {
        if tags.is_empty() {
            progress(format!("Loaded image ID: {id}\n"));
        }
        for r in tags {
            if let Some(old) = self.set_ref(r, id)? {
                progress(format!(
                    "The image {} already exists, renaming the old one with ID {old} to empty string\n",
                    r.familiar()
                ));
            }
            progress(format!("Loaded image: {}\n", r.familiar()));
        }
        // Like dockerd: the tags are set silently (no tag/untag events), then one `load`.
        self.event("load", id, id);
        Ok(())
    }
}
