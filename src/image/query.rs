//! Read-only views: `GET /images/json` (with filters), `GET /images/{name}/json` and
//! `GET /images/{name}/history`, shaped as dockerd 20.10 returns them.

use super::config::{ContainerConfig, ZERO_TIME};
use super::reference::{familiar, glob_match, Reference};
use super::{ImageRecord, ImageStore};
use crate::error::{ApiError, ApiResult};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// One element of `GET /images/json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    /// Always -1 (not computed).
    pub containers: i64,
    /// Unix seconds.
    pub created: i64,
    /// `sha256:<hex>`.
    pub id: String,
    /// Config labels, `null` when none.
    pub labels: Option<BTreeMap<String, String>>,
    /// Always empty (no parent chains in berth).
    pub parent_id: String,
    /// `name@digest` references, `null` when none.
    pub repo_digests: Option<Vec<String>>,
    /// `name:tag` references, `null` when none.
    pub repo_tags: Option<Vec<String>>,
    /// Always -1 (not computed).
    pub shared_size: i64,
    /// Bytes.
    pub size: u64,
    /// Same as `Size` (API < 1.44).
    pub virtual_size: u64,
}

/// `GET /images/{name}/json`, field order as dockerd.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    parent: String,
    comment: String,
    created: String,
    container: String,
    container_config: ContainerConfig,
    docker_version: String,
    author: String,
    config: ContainerConfig,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    os: String,
    size: u64,
    virtual_size: u64,
    graph_driver: Value,
    #[serde(rename = "RootFS")]
    root_fs: Value,
    metadata: Value,
}

const FILTERS: &[&str] = &["dangling", "label", "before", "since", "reference"];

fn bool_filter(vals: &[String]) -> ApiResult<Option<bool>> {
    let mut out = None;
    for v in vals {
        let b = match v.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Invalid filter 'dangling={v}'"
                )))
            }
        };
        out = Some(b);
    }
    Ok(out)
}

fn labels_match(wanted: &[String], labels: Option<&BTreeMap<String, String>>) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((k, v)) => labels.and_then(|l| l.get(k)).map(String::as_str) == Some(v),
        None => labels.is_some_and(|l| l.contains_key(w.as_str())),
    })
}

impl ImageStore {
    fn created_of(&self, reference: &str) -> ApiResult<i64> {
        Ok(self.resolve(reference)?.config.created_nanos())
    }

    /// `GET /images/json`. `all` changes nothing (berth keeps no intermediate images).
    pub fn list(
        &self,
        _all: bool,
        filters: &HashMap<String, Vec<String>>,
    ) -> ApiResult<Vec<ImageSummary>> {
        if let Some(k) = filters.keys().find(|k| !FILTERS.contains(&k.as_str())) {
            return Err(ApiError::BadRequest(format!("Invalid filter '{k}'")));
        }
        let get = |k: &str| filters.get(k).map(Vec::as_slice).unwrap_or(&[]);
        let dangling = bool_filter(get("dangling"))?;
        let before = get("before")
            .iter()
            .map(|r| self.created_of(r))
            .collect::<ApiResult<Vec<_>>>()?;
        let since = get("since")
            .iter()
            .map(|r| self.created_of(r))
            .collect::<ApiResult<Vec<_>>>()?;
        let patterns = get("reference");
        let refs = self.all_refs()?;
        let mut out: Vec<(i64, ImageSummary)> = Vec::new();
        for meta in self.all_images()? {
            let rec = match self.record_of(meta) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable image");
                    continue;
                }
            };
            let created = rec.config.created_nanos();
            if before.iter().any(|b| created >= *b) || since.iter().any(|s| created <= *s) {
                continue;
            }
            let labels = rec.config.config.as_ref().and_then(|c| c.labels.clone());
            if !labels_match(get("label"), labels.as_ref()) {
                continue;
            }
            let mut tags = Vec::new();
            let mut digests = Vec::new();
            for (k, _) in refs.iter().filter(|(_, v)| *v == rec.id) {
                let fam = familiar(k);
                if !patterns.is_empty() {
                    let name = Reference::parse(&fam)
                        .map(|r| r.familiar_name())
                        .unwrap_or_default();
                    if !patterns
                        .iter()
                        .any(|p| glob_match(p, &fam) || glob_match(p, &name))
                    {
                        continue;
                    }
                }
                if k.contains('@') {
                    digests.push(fam);
                } else {
                    tags.push(fam);
                }
            }
            let untagged = tags.is_empty() && digests.is_empty();
            if untagged {
                if dangling == Some(false) || !patterns.is_empty() {
                    continue;
                }
                tags.push("<none>:<none>".into());
                digests.push("<none>@<none>".into());
            } else if dangling == Some(true) && !tags.is_empty() {
                continue;
            }
            out.push((
                created,
                ImageSummary {
                    containers: -1,
                    created: rec.config.created_unix(),
                    id: rec.id.clone(),
                    labels,
                    parent_id: String::new(),
                    repo_digests: (!digests.is_empty()).then_some(digests),
                    repo_tags: (!tags.is_empty()).then_some(tags),
                    shared_size: -1,
                    size: rec.size,
                    virtual_size: rec.size,
                },
            ));
        }
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    fn inspect_record(&self, reference: &str) -> ApiResult<ImageRecord> {
        self.resolve(reference).map_err(|e| match e {
            ApiError::NotFound(m) => ApiError::NotFound(format!("no such image: {reference}: {m}")),
            other => other,
        })
    }

    /// `GET /images/{name}/json`.
    pub fn inspect(&self, reference: &str) -> ApiResult<Value> {
        let rec = self.inspect_record(reference)?;
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for k in self.refs_of(&rec.id)? {
            if k.contains('@') {
                digests.push(familiar(&k));
            } else {
                tags.push(familiar(&k));
            }
        }
        let dirs = rec
            .layers
            .iter()
            .rev()
            .map(|c| self.layers.path(c))
            .collect::<ApiResult<Vec<_>>>()?;
        let mut data = serde_json::Map::new();
        if let Some(top) = dirs.first() {
            let lower: Vec<String> = dirs[1..]
                .iter()
                .map(|d| d.join("diff").display().to_string())
                .collect();
            if !lower.is_empty() {
                data.insert("LowerDir".into(), json!(lower.join(":")));
            }
            data.insert("MergedDir".into(), json!(top.join("merged")));
            data.insert("UpperDir".into(), json!(top.join("diff")));
            data.insert("WorkDir".into(), json!(top.join("work")));
        }
        let c = &rec.config;
        let out = Inspect {
            id: rec.id.clone(),
            repo_tags: tags,
            repo_digests: digests,
            parent: String::new(),
            comment: c.comment.clone().unwrap_or_default(),
            created: c.created.clone().unwrap_or_else(|| ZERO_TIME.into()),
            container: c.container.clone().unwrap_or_default(),
            container_config: c.container_config.clone().unwrap_or_default(),
            docker_version: c.docker_version.clone().unwrap_or_default(),
            author: c.author.clone().unwrap_or_default(),
            config: c.container_defaults(),
            architecture: c.architecture.clone(),
            variant: c.variant.clone(),
            os: c.os.clone(),
            size: rec.size,
            virtual_size: rec.size,
            graph_driver: json!({"Data": data, "Name": "overlay2"}),
            root_fs: json!({"Type": "layers", "Layers": c.rootfs.diff_ids}),
            metadata: json!({"LastTagTime": rec.last_tag_time.clone().unwrap_or_else(|| ZERO_TIME.into())}),
        };
        Ok(serde_json::to_value(out)?)
    }

    /// `GET /images/{name}/history`, newest first.
    pub fn history(&self, reference: &str) -> ApiResult<Vec<Value>> {
        let rec = self.inspect_record(reference)?;
        let mut sizes = rec.layers.iter().map(|c| {
            self.layers
                .get(c)
                .ok()
                .flatten()
                .map(|m| m.size)
                .unwrap_or(0)
        });
        let mut rows: Vec<Value> = Vec::new();
        for h in &rec.config.history {
            let size = if h.empty_layer.unwrap_or(false) {
                0
            } else {
                sizes.next().unwrap_or(0)
            };
            let created = h
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|t| t.timestamp())
                .unwrap_or(0);
            rows.push(json!({
                "Comment": h.comment.clone().unwrap_or_default(),
                "Created": created,
                "CreatedBy": h.created_by.clone().unwrap_or_default(),
                "Id": "<missing>",
                "Size": size,
                "Tags": null,
            }));
        }
        rows.reverse();
        if let Some(top) = rows.first_mut() {
            let tags: Vec<String> = self
                .refs_of(&rec.id)?
                .iter()
                .filter(|k| !k.contains('@'))
                .map(|k| familiar(k))
                .collect();
            top["Id"] = json!(rec.id);
            top["Tags"] = if tags.is_empty() {
                Value::Null
            } else {
                json!(tags)
            };
        }
        Ok(rows)
    }
}
