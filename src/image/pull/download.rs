//! Layer downloads of a pull: one task per missing layer, each streaming its blob into a
//! temp file with `Downloading` progress and checking the blob's digest.

use super::{say, short, Desc};
use crate::error::{ApiError, ApiResult};
use futures::StreamExt;
use oci_client::Client;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Sender;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::registry::registry_error;

/// Layers downloaded at once per pull (dockerd's default `--max-concurrent-downloads`).
pub(super) const MAX_DOWNLOADS: usize = 3;

/// A `Downloading` line at most every this many bytes.
const PROGRESS_STEP: u64 = 512 << 10;

/// Aborts the download tasks still running when a pull ends early.
pub(super) struct Downloads(pub(super) Vec<Option<JoinHandle<ApiResult<tempfile::NamedTempFile>>>>);

impl Drop for Downloads {
    fn drop(&mut self) {
        for h in self.0.iter().flatten() {
            h.abort();
        }
    }
}

/// Downloads one layer blob into a temp file under `tmp`, reporting progress and checking
/// the digest.
pub(super) async fn download(
    plan_client: Arc<Client>,
    oref: oci_client::Reference,
    layer: Desc,
    tmp: PathBuf,
    anonymous: bool,
    tx: Sender<Vec<u8>>,
    slots: Arc<Semaphore>,
) -> ApiResult<tempfile::NamedTempFile> {
    // Fair: the layers asked for first (the bottom ones) get the first slots.
    let _slot = slots
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("wait for a download slot", e))?;
    let id = short(&layer.digest);
    let mut s = plan_client
        .pull_blob_stream(&oref, layer.digest.as_str())
        .await
        .map_err(|e| registry_error(e, "Get", None, anonymous))?;
    let total = u64::try_from(layer.size)
        .ok()
        .filter(|n| *n > 0)
        .or(s.content_length)
        .unwrap_or(0);
    let file = tempfile::NamedTempFile::new_in(&tmp)
        .map_err(|e| ApiError::internal("create download file", e))?;
    let handle = file
        .reopen()
        .map_err(|e| ApiError::internal("open download file", e))?;
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(handle));
    let mut hasher = Sha256::new();
    let (mut cur, mut shown) = (0u64, 0u64);
    let verify_failed = || {
        ApiError::Internal(format!(
            "filesystem layer verification failed for digest {}",
            layer.digest
        ))
    };
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            // oci-client checks the digest too, at the end of the stream.
            let digest = e
                .get_ref()
                .and_then(|x| x.downcast_ref::<oci_client::errors::DigestError>());
            match digest {
                Some(oci_client::errors::DigestError::VerificationError { .. }) => verify_failed(),
                _ => ApiError::internal(&format!("download layer {}", layer.digest), e),
            }
        })?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal("write download file", e))?;
        cur += chunk.len() as u64;
        if layer.size > 0 && cur > total {
            return Err(ApiError::Internal(format!(
                "layer {} is larger than its manifest says ({total} bytes)",
                layer.digest
            )));
        }
        if cur - shown >= PROGRESS_STEP || cur == total {
            shown = cur;
            say(
                &tx,
                json!({"status": "Downloading", "progressDetail": {"current": cur, "total": total}, "id": id}),
            )
            .await;
        }
    }
    out.flush()
        .await
        .map_err(|e| ApiError::internal("write download file", e))?;
    say(
        &tx,
        json!({"status": "Verifying Checksum", "progressDetail": {}, "id": id}),
    )
    .await;
    if format!("sha256:{}", hex::encode(hasher.finalize())) != layer.digest {
        return Err(verify_failed());
    }
    say(
        &tx,
        json!({"status": "Download complete", "progressDetail": {}, "id": id}),
    )
    .await;
    Ok(file)
}
