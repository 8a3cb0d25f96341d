//! `docker tag` and `docker rmi`, with dockerd's untag/delete semantics and conflict
//! messages. Layers no other image uses are deleted with the image, except while a stopped
//! container still uses a force-deleted image: its layers are retained until that
//! container is removed.

use super::reference::{familiar, Reference};
use super::{ImageMeta, ImageStore};
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Tells whether a container uses an image: given the image id (`sha256:<hex>`), returns a
/// container id and whether that container is running. The daemon's implementation should
/// prefer a running container when several use the image.
pub type InUse<'a> = dyn Fn(&str) -> Option<(String, bool)> + Send + Sync + 'a;

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

impl ImageStore {
    /// `POST /images/{name}/tag`: points `repo:tag` (tag default `latest`) at `source`.
    pub fn tag(&self, source: &str, repo: &str, tag: &str) -> ApiResult<()> {
        let id = self
            .find_id(source)?
            .ok_or_else(|| Self::not_found(source))?;
        let full = if tag.is_empty() {
            repo.to_string()
        } else {
            format!("{repo}:{tag}")
        };
        let r = Reference::parse_with_default_tag(&full)?;
        if r.digest.is_some() {
            return Err(ApiError::BadRequest(
                "refusing to create a tag with a digest reference".into(),
            ));
        }
        if let Some(old) = self.set_ref(&r, &id)? {
            tracing::debug!(tag = %r.familiar(), %old, "tag moved to another image");
        }
        self.event("tag", &id, &r.familiar());
        Ok(())
    }

    fn untag(&self, key: &str, id: &str, out: &mut Vec<Value>) -> ApiResult<()> {
        {
            let _g = self.guard();
            self.refs.remove(key)?;
        }
        self.event("untag", id, id);
        out.push(json!({ "Untagged": familiar(key) }));
        Ok(())
    }

    /// `DELETE /images/{name}`: returns the `[{"Untagged":…},{"Deleted":…}]` list.
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        _noprune: bool,
        in_use: &InUse<'_>,
    ) -> ApiResult<Vec<Value>> {
        let id = self.find_id(name)?.ok_or_else(|| Self::not_found(name))?;
        let mut out = Vec::new();
        let mut refs = self.refs_of(&id)?;
        let by_id = id.starts_with(name) || id.starts_with(&format!("sha256:{name}"));
        let single = is_single_reference(&refs);
        let mut removed_repo_ref = false;
        if !by_id {
            let r = Reference::parse_with_default_tag(name)?;
            if !force && single {
                if let Some((cid, _)) = in_use(&id) {
                    return Err(ApiError::Conflict(format!(
                        "conflict: unable to remove repository reference {name:?} (must force) - container {} is using its referenced image {}",
                        short(&cid),
                        short(&id)
                    )));
                }
            }
            self.untag(&r.key(), &id, &mut out)?;
            refs.retain(|k| *k != r.key());
            if r.digest.is_none()
                && !refs
                    .iter()
                    .any(|k| !k.contains('@') && repo_of(k) == r.name)
            {
                // Only digest references of that repository remain: drop them too.
                for k in refs.clone() {
                    if k.contains('@') && repo_of(&k) == r.name {
                        self.untag(&k, &id, &mut out)?;
                        refs.retain(|x| *x != k);
                    }
                }
            }
            if !refs.is_empty() {
                return Ok(out);
            }
            removed_repo_ref = true;
        } else if single {
            if let Some(msg) = conflict(&id, in_use, !force, false) {
                return Err(ApiError::Conflict(msg.1));
            }
            for k in refs.clone() {
                self.untag(&k, &id, &mut out)?;
            }
            refs.clear();
        }
        // The image itself.
        let referenced_elsewhere = !refs.is_empty();
        let hard_or_soft = conflict(&id, in_use, !force, referenced_elsewhere);
        if let Some((used, msg)) = hard_or_soft {
            let dangling = self.refs_of(&id)?.is_empty();
            if removed_repo_ref && (!dangling || used) {
                return Ok(out);
            }
            return Err(ApiError::Conflict(msg));
        }
        for k in self.refs_of(&id)? {
            self.untag(&k, &id, &mut out)?;
        }
        if in_use(&id).is_some() {
            // Forced past a stopped container: the image goes, its layers stay for the
            // container (dockerd's layer store keeps them referenced by its RW layer).
            self.retain_image(&id, &mut out)?;
        } else {
            self.delete_image(&id, &mut out)?;
        }
        Ok(out)
    }

    /// Deletes an image record but keeps its config blob and layers for the containers
    /// that still use it, until [`ImageStore::release_retained`].
    fn retain_image(&self, id: &str, out: &mut Vec<Value>) -> ApiResult<()> {
        let _g = self.guard();
        let meta: ImageMeta = self.meta(id)?;
        self.retained.put(id, &meta)?;
        self.images.remove(id)?;
        self.event("delete", id, id);
        out.push(json!({ "Deleted": id }));
        Ok(())
    }

    /// Called after a container is removed: an image deleted while that container used it
    /// is now deleted for real (with the layers nothing else uses) once no container uses it.
    pub fn release_retained(&self, id: &str) -> ApiResult<()> {
        if self.retained.get::<ImageMeta>(id)?.is_none() || self.in_use_checker()(id).is_some() {
            return Ok(());
        }
        let _g = self.guard();
        let Some(meta) = self.retained.get::<ImageMeta>(id)? else {
            return Ok(());
        };
        self.retained.remove(id)?;
        self.drop_unused_layers(id, &meta)?;
        Ok(())
    }

    /// `POST /images/prune`: deletes dangling images (with `all`, every image no container
    /// uses, untagging it first). Returns the `ImagesDeleted` items and the bytes reclaimed.
    pub fn prune(&self, all: bool, in_use: &InUse<'_>) -> ApiResult<(Vec<Value>, u64)> {
        let mut out = Vec::new();
        let mut reclaimed = 0;
        let refs = self.all_refs()?;
        for meta in self.all_images()? {
            let tagged = refs.iter().any(|(_, v)| *v == meta.id);
            if (tagged && !all) || in_use(&meta.id).is_some() {
                continue;
            }
            for k in self.refs_of(&meta.id)? {
                self.untag(&k, &meta.id, &mut out)?;
            }
            reclaimed += self.delete_image(&meta.id, &mut out)?;
        }
        reclaimed += self.drop_orphan_layers(&mut out)?;
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("reclaimed".to_string(), reclaimed.to_string());
        self.events.publish("image", "prune", "", attrs);
        Ok((out, reclaimed))
    }

    /// Deletes an untagged image and the layers only it used; returns the layer bytes freed.
    fn delete_image(&self, id: &str, out: &mut Vec<Value>) -> ApiResult<u64> {
        let _g = self.guard();
        let meta: ImageMeta = self.meta(id)?;
        self.images.remove(id)?;
        self.event("delete", id, id);
        out.push(json!({ "Deleted": id }));
        let removed = self.drop_unused_layers(id, &meta)?;
        let mut freed = 0;
        for (chain, size) in removed {
            freed += size;
            out.push(json!({ "Deleted": chain }));
        }
        Ok(freed)
    }

    /// Removes those of `chains` (layers a failed load or pull registered) that no image
    /// nor retained image uses and no running pull needs, so a failure leaves no layer
    /// behind. A concurrent load that wanted one of them fails in `commit_image` with a
    /// "retry" error, never with a half image. Errors are logged: this runs on an error
    /// path already.
    pub(crate) fn drop_unreferenced_layers(&self, chains: &[String]) {
        if chains.is_empty() {
            return;
        }
        let _g = self.guard();
        if let Err(e) = self.remove_unused_layers(chains.iter().rev()) {
            tracing::warn!(error = %e, "layers of a failed load or pull not removed");
        }
    }

    /// The chains of every image, retained ones included.
    fn used_layers(&self) -> ApiResult<HashSet<String>> {
        let mut still: HashSet<String> = self
            .all_images()?
            .into_iter()
            .flat_map(|m| m.layers)
            .collect();
        for (_, m) in self.retained.all::<ImageMeta>()? {
            still.extend(m.layers);
        }
        Ok(still)
    }

    /// Removes, in the order given (topmost first), those of `chains` that are present and
    /// that no image, retained image or running pull uses; returns them with their sizes.
    /// The caller holds the guard.
    fn remove_unused_layers<'a>(
        &self,
        chains: impl IntoIterator<Item = &'a String>,
    ) -> ApiResult<Vec<(String, u64)>> {
        let still = self.used_layers()?;
        let mut removed = Vec::new();
        for chain in chains {
            if still.contains(chain) || self.inflight.busy(chain) {
                continue;
            }
            let Some(meta) = self.layers.get(chain)? else {
                continue;
            };
            self.layers.remove(chain)?;
            removed.push((chain.clone(), meta.size));
        }
        Ok(removed)
    }

    /// Removes layers no image uses and no running pull needs: what a pull cut short by a
    /// killed daemon had already committed. Returns the bytes freed.
    fn drop_orphan_layers(&self, out: &mut Vec<Value>) -> ApiResult<u64> {
        let _g = self.guard();
        let dir = self.layers.dir();
        let chains: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ApiError::internal(&format!("list {}", dir.display()), e))?
            .flatten()
            .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
            // Anything else in the directory is not a layer of ours.
            .filter(|c| super::reference::is_digest(c))
            .collect();
        let mut freed = 0;
        for (chain, size) in self.remove_unused_layers(&chains)? {
            freed += size;
            out.push(json!({ "Deleted": chain }));
        }
        Ok(freed)
    }

    /// Removes a gone image's config blob and the layers of `meta` that no image (nor a
    /// retained one) uses; returns the removed chain ids, topmost first, with their sizes.
    /// The caller holds the guard and has already removed the image's record.
    fn drop_unused_layers(&self, id: &str, meta: &ImageMeta) -> ApiResult<Vec<(String, u64)>> {
        self.blobs.remove(id)?;
        self.remove_unused_layers(meta.layers.iter().rev())
    }
}

/// The repository part of a reference key.
fn repo_of(key: &str) -> &str {
    if let Some((n, _)) = key.split_once('@') {
        return n;
    }
    let slash = key.rfind('/').map(|i| i + 1).unwrap_or(0);
    match key[slash..].rfind(':') {
        Some(i) => &key[..slash + i],
        None => key,
    }
}

/// At most one tag, and every reference in one repository.
fn is_single_reference(refs: &[String]) -> bool {
    let tags = refs.iter().filter(|k| !k.contains('@')).count();
    let repos: HashSet<&str> = refs.iter().map(|k| repo_of(k)).collect();
    tags <= 1 && repos.len() <= 1
}

/// dockerd's delete conflicts: a running container is a hard conflict; with `soft`, a
/// stopped container or references in several repositories are too. Returns (used, message).
fn conflict(id: &str, in_use: &InUse<'_>, soft: bool, referenced: bool) -> Option<(bool, String)> {
    let msg = |forced: &str, why: String| {
        format!(
            "conflict: unable to delete {} ({forced}) - {why}",
            short(id)
        )
    };
    let user = in_use(id);
    if let Some((cid, true)) = &user {
        return Some((
            true,
            msg(
                "cannot be forced",
                format!("image is being used by running container {}", short(cid)),
            ),
        ));
    }
    if !soft {
        return None;
    }
    if referenced {
        return Some((
            false,
            msg(
                "must be forced",
                "image is referenced in multiple repositories".into(),
            ),
        ));
    }
    if let Some((cid, false)) = &user {
        return Some((
            true,
            msg(
                "must be forced",
                format!("image is being used by stopped container {}", short(cid)),
            ),
        ));
    }
    None
}
