//! One layer of a pull: the blob streams from the registry straight into the extractor (on a
//! blocking thread, which also computes the blob's sha256), so a layer is unpacked while it
//! downloads. The unpacked layer stays in a work directory nobody sees until the blob's
//! digest and the layer's diff id are both right; only then is it committed under its chain
//! id. Progress goes to a broadcast channel, so every pull waiting for this layer draws it.

use super::registry::registry_error;
use super::{short, Desc};
use crate::error::{ApiError, ApiResult};
use crate::image::layers::{LayerMeta, Layers, Unpacked};
use crate::image::ImageStore;
use bytes::Bytes;
use futures::StreamExt;
use oci_client::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, Semaphore};

/// A `Downloading` line at most every this many bytes.
const PROGRESS_STEP: u64 = 512 << 10;

/// Chunks buffered between the download and the extractor.
const PIPE_CHUNKS: usize = 64;

/// What one layer fetch needs.
pub(super) struct Job {
    pub client: Arc<Client>,
    pub oref: oci_client::Reference,
    pub layer: Desc,
    /// Chain id of the layer below, if any.
    pub parent: Option<String>,
    /// The diff id the image config gives for this layer.
    pub diff_id: String,
    pub anonymous: bool,
}

enum Chunk {
    Data(Bytes),
    End,
    Fail(String),
}

/// The extractor's side of the pipe: reads the chunks in order and hashes them.
struct PipeReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    hasher: Sha256,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => {
                    self.hasher.update(&b);
                    self.cur = b;
                }
                Some(Chunk::End) => self.ended = true,
                Some(Chunk::Fail(m)) => return Err(io::Error::other(m)),
                None => return Err(io::Error::other("download stopped")),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Unpacks from the pipe, then reads whatever the extractor left (so the digest covers the
/// whole blob even when the unpack failed). Returns the unpack result and the blob digest
/// (`None` when the download itself failed).
fn unpack_from(
    layers: &Layers,
    rx: mpsc::Receiver<Chunk>,
) -> (ApiResult<Unpacked>, Option<String>) {
    let mut r = PipeReader {
        rx,
        cur: Bytes::new(),
        hasher: Sha256::new(),
        ended: false,
    };
    let unpacked = layers.unpack(&mut r);
    let drained = io::copy(&mut r, &mut io::sink());
    let digest = drained
        .ok()
        .map(|_| format!("sha256:{}", hex::encode(r.hasher.finalize())));
    (unpacked, digest)
}

fn say(progress: &broadcast::Sender<Value>, v: Value) {
    // Nobody listening (all pulls left) is fine: the fetch is being aborted.
    let _ = progress.send(v);
}

/// Downloads, unpacks, verifies and commits one layer, at most [`super::inflight`]'s number
/// of layers at a time across the daemon.
pub(super) async fn fetch(
    job: Job,
    images: Arc<ImageStore>,
    progress: broadcast::Sender<Value>,
    slots: Arc<Semaphore>,
) -> ApiResult<LayerMeta> {
    let id = short(&job.layer.digest);
    let _slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            say(
                &progress,
                json!({"status": "Waiting", "progressDetail": {}, "id": id}),
            );
            slots
                .acquire_owned()
                .await
                .map_err(|e| ApiError::internal("wait for a download slot", e))?
        }
    };
    let mut s = job
        .client
        .pull_blob_stream(&job.oref, job.layer.digest.as_str())
        .await
        .map_err(|e| registry_error(e, "Get", None, job.anonymous))?;
    let total = u64::try_from(job.layer.size)
        .ok()
        .filter(|n| *n > 0)
        .or(s.content_length)
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
    let store = images.clone();
    let unpack = tokio::task::spawn_blocking(move || unpack_from(&store.layers, rx));
    let verify_failed = || {
        ApiError::Internal(format!(
            "filesystem layer verification failed for digest {}",
            job.layer.digest
        ))
    };
    let (mut cur, mut shown) = (0u64, 0u64);
    let mut failed: Option<ApiError> = None;
    while let Some(chunk) = s.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // oci-client checks the digest too, at the end of the stream.
                let digest = e
                    .get_ref()
                    .and_then(|x| x.downcast_ref::<oci_client::errors::DigestError>());
                failed = Some(match digest {
                    Some(oci_client::errors::DigestError::VerificationError { .. }) => {
                        verify_failed()
                    }
                    _ => ApiError::internal(&format!("download layer {}", job.layer.digest), e),
                });
                break;
            }
        };
        cur += chunk.len() as u64;
        if job.layer.size > 0 && cur > total {
            failed = Some(ApiError::Internal(format!(
                "layer {} is larger than its manifest says ({total} bytes)",
                job.layer.digest
            )));
            break;
        }
        // The extractor stops reading only when it is done with an error, which the join
        // below reports.
        if tx.send(Chunk::Data(chunk)).await.is_err() {
            break;
        }
        if cur - shown >= PROGRESS_STEP || cur == total {
            shown = cur;
            say(
                &progress,
                json!({"status": "Downloading", "progressDetail": {"current": cur, "total": total}, "id": id}),
            );
        }
    }
    let _ = tx
        .send(match &failed {
            Some(e) => Chunk::Fail(e.to_string()),
            None => Chunk::End,
        })
        .await;
    drop(tx);
    let (unpacked, digest) = unpack
        .await
        .map_err(|e| ApiError::internal("unpack task", e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    say(
        &progress,
        json!({"status": "Verifying Checksum", "progressDetail": {}, "id": id}),
    );
    if digest.as_deref() != Some(job.layer.digest.as_str()) {
        return Err(verify_failed());
    }
    say(
        &progress,
        json!({"status": "Download complete", "progressDetail": {}, "id": id}),
    );
    let unpacked = unpacked?;
    say(
        &progress,
        json!({"status": "Extracting", "progressDetail": {"current": cur, "total": cur}, "id": id}),
    );
    tokio::task::spawn_blocking(move || {
        images
            .layers
            .commit(unpacked, job.parent.as_deref(), Some(&job.diff_id))
    })
    .await
    .map_err(|e| ApiError::internal("commit layer task", e))?
}
