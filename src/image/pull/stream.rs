//! The streaming part of a pull: layers fetched (shared with other pulls) and followed in
//! the progress stream, the image recorded with its references, and what a failed pull had
//! committed removed again.

use super::registry::Insecure;
use super::{fetch, mirror};
use super::{say, short, Plan};
use crate::error::{ApiError, ApiResult};
use crate::image::blobs::digest_of;
use crate::image::layers::chain_id;
use crate::image::reference::Reference;
use crate::image::ImageStore;
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Aborts the progress-following tasks of a pull that ends early (dropping their hold on
/// the shared fetches, which stop when no other pull waits for them).
struct Follows(Vec<Option<tokio::task::JoinHandle<ApiResult<crate::image::layers::LayerMeta>>>>);

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
        let plan = super::prepare(r, auth.clone(), &insecure, &mirrors).await?;
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
        .get::<crate::image::ImageMeta>(&digest_of(&plan.config))?
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
