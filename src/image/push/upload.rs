//! One layer of a push, as dockerd's v2 push descriptor does it: wait for one of the
//! [`MAX_UPLOADS`] slots (`Waiting`), then skip it when this push already sent it, when the
//! distribution metadata names a blob of it that the target repository has (`HEAD`, `Layer
//! already exists`), or when a cross-repository mount from another repository of the same
//! registry works (`Mounted from …`); else re-create its tar, gzip it while uploading it in
//! chunks (`Pushing` with progress, `Pushed`; a failure that may pass is retried after a
//! `Retrying in N seconds` countdown) and remember the blob.

use super::gzip::{compress, Compressed};
use super::meta::{BlobSource, GZIP_TYPES};
use super::{push_error, say, short};
use crate::error::{ApiError, ApiResult};
use crate::image::layers::LayerMeta;
use crate::image::ImageStore;
use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::Client;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::Sender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Layers uploaded at once (dockerd's default `--max-concurrent-uploads`).
pub const MAX_UPLOADS: usize = 5;

/// A `Pushing` line at most every this many (uncompressed) bytes.
const PROGRESS_STEP: u64 = 512 << 10;

/// Tries of one layer upload (dockerd's `maxUploadAttempts`); the n-th retry waits 5n s.
const MAX_ATTEMPTS: usize = 5;

/// One second of the `Retrying in N seconds` countdown.
const RETRY_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a failed upload is tried again, as dockerd's `retryOnError` decides: transport
/// failures and most registry errors are; refused credentials or access, an unknown
/// repository, rate limiting, an unsupported operation and answers that are not registry
/// errors are not.
pub fn retriable(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::ServerError { message, .. } => {
            match serde_json::from_str::<oci_client::errors::OciEnvelope>(message) {
                Ok(env) => env.errors.first().is_some_and(|x| {
                    !matches!(
                        x.code,
                        C::Unauthorized
                            | C::Denied
                            | C::Unsupported
                            | C::Toomanyrequests
                            | C::NameUnknown
                    )
                }),
                Err(_) => false,
            }
        }
        OciDistributionError::RequestError(r) => r.status().is_none(),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::SpecViolationError(_)
        | OciDistributionError::GenericError(_) => false,
        _ => true,
    }
}

/// Blobs of other repositories tried as mount sources, per layer.
const MAX_MOUNTS: usize = 3;

/// Blobs of the target repository checked with `HEAD`, per layer.
const MAX_CHECKS: usize = 3;

/// A layer blob in the registry, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

/// What every layer task of one push shares.
pub struct Ctx {
    /// The registry client (authenticated for pull and push on the target).
    pub client: Arc<Client>,
    /// The target repository (the tag does not matter for blobs).
    pub oref: oci_client::Reference,
    /// Its full name (`127.0.0.1:5000/test/img`).
    pub name: String,
    /// The image store.
    pub images: Arc<ImageStore>,
    /// The progress stream.
    pub tx: Sender<Vec<u8>>,
    /// Whether the push has no credentials (how a 401 is worded).
    pub anonymous: bool,
    /// The upload slots.
    pub slots: Arc<Semaphore>,
    /// Diff id → blob, for layers already in the target during this push.
    pub done: Mutex<HashMap<String, Blob>>,
}

impl Ctx {
    fn registry(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }

    fn finish(&self, layer: &LayerMeta, blob: &Blob, media_type: &str) -> ApiResult<()> {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(layer.diff_id.clone(), blob.clone());
        self.images.remember_blob(
            &layer.diff_id,
            &blob.digest,
            blob.size,
            &self.name,
            media_type,
        )
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("push task", e))?
}

/// Pushes one layer (or finds it already there); returns the blob the manifest names.
/// `slot` is the upload slot taken when the task was queued, if one was free (queued in
/// order, so the first layers get the first slots); without one the layer is `Waiting`.
pub async fn upload(
    ctx: Arc<Ctx>,
    layer: LayerMeta,
    slot: Option<OwnedSemaphorePermit>,
) -> ApiResult<Blob> {
    let id = short(&layer.diff_id);
    let _slot = match slot {
        Some(s) => s,
        None => {
            say(
                &ctx.tx,
                json!({"status": "Waiting", "progressDetail": {}, "id": id}),
            )
            .await;
            ctx.slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ApiError::internal("wait for an upload slot", e))?
        }
    };
    let known = ctx
        .done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&layer.diff_id)
        .cloned();
    if let Some(blob) = known {
        say(
            &ctx.tx,
            json!({"status": "Layer already exists", "progressDetail": {}, "id": id}),
        )
        .await;
        return Ok(blob);
    }
    let store = ctx.images.clone();
    let diff = layer.diff_id.clone();
    let mut sources: Vec<BlobSource> = blocking(move || store.blob_sources(&diff))
        .await?
        .into_iter()
        .filter(|s| s.registry() == ctx.registry() && s.is_gzip())
        .collect();
    sources.reverse(); // newest first
    if let Some(blob) = existing(&ctx, &layer, &sources).await? {
        say(
            &ctx.tx,
            json!({"status": "Layer already exists", "progressDetail": {}, "id": id}),
        )
        .await;
        return Ok(blob);
    }
    if let Some((blob, from)) = mount(&ctx, &layer, &sources).await? {
        say(
            &ctx.tx,
            json!({"status": format!("Mounted from {from}"), "progressDetail": {}, "id": id}),
        )
        .await;
        return Ok(blob);
    }
    let mut attempt = 1;
    let blob = loop {
        match send(&ctx, &layer, &id).await {
            Ok(b) => break b,
            Err((e, retry)) if !retry || attempt == MAX_ATTEMPTS => return Err(e),
            Err((e, _)) => {
                tracing::info!(error = %e, layer = %layer.diff_id, attempt, "upload failed, retrying");
                for left in (1..=attempt * 5).rev() {
                    let unit = if left == 1 { "second" } else { "seconds" };
                    say(
                        &ctx.tx,
                        json!({"status": format!("Retrying in {left} {unit}"), "progressDetail": {}, "id": id}),
                    )
                    .await;
                    tokio::time::sleep(RETRY_TICK).await;
                }
                attempt += 1;
            }
        }
    };
    ctx.finish(&layer, &blob, GZIP_TYPES[0])?;
    say(
        &ctx.tx,
        json!({"status": "Pushed", "progressDetail": {}, "id": id}),
    )
    .await;
    Ok(blob)
}

/// A known blob of the layer that the target repository already has.
async fn existing(ctx: &Ctx, layer: &LayerMeta, sources: &[BlobSource]) -> ApiResult<Option<Blob>> {
    let mine = sources.iter().filter(|s| s.repository == ctx.name);
    for s in mine.take(MAX_CHECKS) {
        match ctx.client.blob_exists(&ctx.oref, &s.digest).await {
            Ok(true) => {
                let blob = Blob {
                    digest: s.digest.clone(),
                    size: s.size,
                };
                ctx.finish(layer, &blob, &s.media_type)?;
                return Ok(Some(blob));
            }
            Ok(false) => {
                ctx.images
                    .forget_blob(&layer.diff_id, &s.digest, &s.repository)?;
            }
            // As dockerd: a failed check only means the layer is sent.
            Err(e) => tracing::debug!(error = %e, digest = %s.digest, "blob check failed"),
        }
    }
    Ok(None)
}

/// Mounts a known blob of the layer from another repository of the registry.
async fn mount(
    ctx: &Ctx,
    layer: &LayerMeta,
    sources: &[BlobSource],
) -> ApiResult<Option<(Blob, String)>> {
    let others = sources.iter().filter(|s| s.repository != ctx.name);
    for s in others.take(MAX_MOUNTS) {
        let from = oci_client::Reference::with_tag(
            ctx.registry().to_string(),
            s.path().to_string(),
            "latest".into(),
        );
        match ctx.client.mount_blob(&ctx.oref, &from, &s.digest).await {
            Ok(()) => {
                let blob = Blob {
                    digest: s.digest.clone(),
                    size: s.size,
                };
                ctx.finish(layer, &blob, &s.media_type)?;
                return Ok(Some((blob, s.path().to_string())));
            }
            // The registry answered with an upload session instead: it does not have the
            // blob there (any more).
            Err(OciDistributionError::SpecViolationError(_)) => {
                ctx.images
                    .forget_blob(&layer.diff_id, &s.digest, &s.repository)?;
            }
            Err(e) => tracing::debug!(error = %e, from = %s.repository, "blob mount failed"),
        }
    }
    Ok(None)
}

/// Re-creates, compresses and uploads the layer; the compression runs on a blocking
/// thread feeding the upload chunk by chunk. A failure says whether to try again.
async fn send(ctx: &Ctx, layer: &LayerMeta, id: &str) -> Result<Blob, (ApiError, bool)> {
    let store = ctx.images.clone();
    let meta = layer.clone();
    let total = blocking(move || store.layers.tar_len(&meta))
        .await
        .map_err(|e| (e, false))?;
    let (chunk_tx, mut chunk_rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, OciDistributionError>>(1);
    let store = ctx.images.clone();
    let meta = layer.clone();
    let tx = ctx.tx.clone();
    let shown_id = id.to_string();
    let producer = tokio::task::spawn_blocking(move || -> ApiResult<Compressed> {
        let mut shown = 0u64;
        let out = chunk_tx.clone();
        let res = compress(
            |w| store.layers.write_tar(&meta, w),
            |b| {
                out.blocking_send(Ok(b)).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped")
                })
            },
            &mut |n| {
                if n - shown >= PROGRESS_STEP || n == total {
                    shown = n;
                    let _ = tx.blocking_send(crate::image::progress::message(&json!({
                        "status": "Pushing",
                        "progressDetail": {"current": n, "total": total},
                        "id": shown_id,
                    })));
                }
            },
        );
        if let Err(e) = &res {
            // The upload must fail, not commit a cut blob.
            let _ = chunk_tx
                .blocking_send(Err(OciDistributionError::GenericError(Some(e.to_string()))));
        }
        res
    });
    let stream = futures::stream::poll_fn(move |cx| chunk_rx.poll_recv(cx));
    let sent = ctx.client.push_blob_stream_chunked(&ctx.oref, stream).await;
    let made = producer
        .await
        .map_err(|e| (ApiError::internal("compress task", e), false))?;
    match (sent, made) {
        (Ok(r), Ok(c)) => {
            if r.blob_digest != c.digest || r.size != c.size {
                return Err((
                    ApiError::Internal(format!(
                        "layer {}: uploaded {} ({} bytes), compressed {} ({} bytes)",
                        layer.diff_id, r.blob_digest, r.size, c.digest, c.size
                    )),
                    false,
                ));
            }
            Ok(Blob {
                digest: c.digest,
                size: c.size,
            })
        }
        (_, Err(e)) if !e.to_string().contains("upload stopped") => Err((
            ApiError::Internal(format!("push layer {}: {e}", layer.diff_id)),
            false,
        )),
        (Err(e), _) => {
            let retry = retriable(&e);
            Err((push_error(e, "Post", ctx.anonymous), retry))
        }
        (Ok(_), Err(e)) => Err((e, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_are_retried() {
        let server = |code, message: &str| OciDistributionError::ServerError {
            url: "http://r/v2/x/blobs/uploads/".into(),
            code,
            message: message.into(),
        };
        let env = |c: &str| format!(r#"{{"errors":[{{"code":"{c}","message":"m"}}]}}"#);
        assert!(retriable(&server(400, &env("BLOB_UPLOAD_INVALID"))));
        assert!(retriable(&server(500, &env("UNKNOWN"))));
        for c in [
            "UNAUTHORIZED",
            "DENIED",
            "UNSUPPORTED",
            "TOOMANYREQUESTS",
            "NAME_UNKNOWN",
        ] {
            assert!(!retriable(&server(400, &env(c))), "{c}");
        }
        assert!(!retriable(&server(502, "<html>bad gateway</html>")));
        assert!(!retriable(&OciDistributionError::GenericError(None)));
        assert!(retriable(&OciDistributionError::PushNoDataError));
    }
}
