//! `docker save`: writes a docker-archive as dockerd 20.10 does (`manifest.json`,
//! `repositories`, `<layer dir>/{VERSION,json,layer.tar}`, `<config hex>.json`). Layer tars
//! are re-created byte for byte from the tar-split records, so their digests match the
//! configs' diff ids. Names are resolved first ([`ImageStore::prepare_save`]) so unknown
//! names fail before any byte is streamed.

use super::blobs::hex_of;
use super::config::{ContainerConfig, ZERO_TIME};
use super::reference::{familiar, Reference};
use super::ImageStore;
use crate::error::{ApiError, ApiResult};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;

/// The images to save, each with the tags to record for it.
#[derive(Debug, Clone, Default)]
pub struct SavePlan {
    /// (image id, reference keys), in request order.
    pub images: Vec<(String, Vec<String>)>,
}

impl SavePlan {
    fn add(&mut self, id: String, key: Option<String>) {
        let pos = match self.images.iter().position(|(i, _)| *i == id) {
            Some(p) => p,
            None => {
                self.images.push((id, Vec::new()));
                self.images.len() - 1
            }
        };
        if let Some(k) = key {
            if !self.images[pos].1.contains(&k) {
                self.images[pos].1.push(k);
            }
        }
    }
}

fn tar_err(e: std::io::Error) -> ApiError {
    ApiError::internal("write archive", e)
}

fn append(
    tb: &mut tar::Builder<&mut dyn Write>,
    path: &str,
    data: &[u8],
    mtime: u64,
) -> ApiResult<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    tb.append_data(&mut h, path, data).map_err(tar_err)
}

impl ImageStore {
    /// Resolves `names` for save. A name without tag saves every tag of that repository;
    /// an id saves the image without tags.
    pub fn prepare_save(&self, names: &[String]) -> ApiResult<SavePlan> {
        let mut plan = SavePlan::default();
        let refs = self.all_refs()?;
        for name in names {
            if let Ok(r) = Reference::parse(name) {
                if r.is_name_only() {
                    let mut found = false;
                    for (k, id) in &refs {
                        if !k.contains('@')
                            && k.strip_prefix(&r.name).is_some_and(|t| t.starts_with(':'))
                        {
                            plan.add(id.clone(), Some(k.clone()));
                            found = true;
                        }
                    }
                    if found {
                        continue;
                    }
                } else if let Some(id) = self.refs.get::<String>(&r.key())? {
                    plan.add(id, r.tag.is_some().then(|| r.key()));
                    continue;
                }
            }
            let id = self.find_id(name)?.ok_or_else(|| Self::not_found(name))?;
            plan.add(id, None);
        }
        for (id, _) in &plan.images {
            for chain in &self.meta(id)?.layers {
                let m = self.layers.get(chain)?.ok_or_else(|| {
                    ApiError::Internal(format!("layer {chain} of {id} is missing"))
                })?;
                if !m.tar_split {
                    return Err(ApiError::Internal(format!(
                        "image {id}: layer {chain} cannot be exported (its original tar cannot be re-created)"
                    )));
                }
            }
        }
        Ok(plan)
    }

    /// Writes the archive for a prepared plan.
    pub fn save(&self, plan: &SavePlan, out: &mut dyn Write) -> ApiResult<()> {
        let mut tb = tar::Builder::new(out);
        let mut written: HashSet<String> = HashSet::new();
        let mut manifest = Vec::new();
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (id, keys) in &plan.images {
            let meta = self.meta(id)?;
            let config = self.blobs.get(id)?;
            let created = self
                .record_of(meta.clone())
                .map(|r| r.config.created_unix().max(0) as u64)
                .unwrap_or(0);
            let mut layer_paths = Vec::new();
            let mut parent: Option<String> = None;
            for chain in &meta.layers {
                let dir = hex_of(chain)?.to_string();
                if written.insert(dir.clone()) {
                    self.save_layer(&mut tb, chain, &dir, parent.as_deref(), created)?;
                }
                layer_paths.push(format!("{dir}/layer.tar"));
                parent = Some(dir);
            }
            let cfg_name = format!("{}.json", hex_of(id)?);
            append(&mut tb, &cfg_name, &config, created)?;
            let tags: Vec<String> = keys.iter().map(|k| familiar(k)).collect();
            for k in keys {
                if let (Ok(r), Some(top)) = (Reference::parse(&familiar(k)), &parent) {
                    if let Some(t) = &r.tag {
                        repos
                            .entry(r.familiar_name())
                            .or_default()
                            .insert(t.clone(), top.clone());
                    }
                }
            }
            manifest.push(json!({
                "Config": cfg_name,
                "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { json!(tags) },
                "Layers": layer_paths,
            }));
            self.event("save", id, id);
        }
        if !repos.is_empty() {
            append(&mut tb, "repositories", &serde_json::to_vec(&repos)?, 0)?;
        }
        append(&mut tb, "manifest.json", &serde_json::to_vec(&manifest)?, 0)?;
        tb.finish().map_err(tar_err)?;
        tb.get_mut().flush().map_err(tar_err)
    }

    fn save_layer(
        &self,
        tb: &mut tar::Builder<&mut dyn Write>,
        chain: &str,
        dir: &str,
        parent: Option<&str>,
        mtime: u64,
    ) -> ApiResult<()> {
        let meta = self
            .layers
            .get(chain)?
            .ok_or_else(|| ApiError::Internal(format!("layer {chain} is missing")))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(mtime);
        tb.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .map_err(tar_err)?;
        append(tb, &format!("{dir}/VERSION"), b"1.0", mtime)?;
        let mut v1 = json!({
            "id": dir,
            "created": ZERO_TIME,
            "container_config": ContainerConfig::default(),
            "os": "linux",
        });
        if let Some(p) = parent {
            v1["parent"] = json!(p);
        }
        append(tb, &format!("{dir}/json"), &serde_json::to_vec(&v1)?, mtime)?;
        // layer.tar: header by hand, contents re-created straight into the archive.
        let len = self.layers.tar_len(&meta)?;
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("{dir}/layer.tar")).map_err(tar_err)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(len);
        h.set_mtime(mtime);
        h.set_cksum();
        let w = tb.get_mut();
        w.write_all(h.as_bytes()).map_err(tar_err)?;
        self.layers.write_tar(&meta, &mut **w)?;
        let pad = (512 - (len % 512) as usize) % 512;
        w.write_all(&vec![0u8; pad]).map_err(tar_err)?;
        Ok(())
    }
}
