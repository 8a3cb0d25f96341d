//! Layer fetches shared between pulls. A pull that needs a layer (by chain id) another pull
//! is already fetching joins that fetch: it draws the same progress and gets the same
//! result, so two concurrent pulls of one image download each blob once. A fetch runs in its
//! own task and is aborted when the last pull waiting for it goes away. The number of layer
//! downloads at once is limited daemon-wide, like dockerd's `--max-concurrent-downloads`.

use crate::error::{ApiError, ApiResult};
use crate::image::layers::LayerMeta;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

/// Layers downloaded at once (dockerd's default `--max-concurrent-downloads`).
pub const MAX_DOWNLOADS: usize = 3;

/// Progress lines kept for a pull that reads slowly (older ones are skipped).
const PROGRESS_BACKLOG: usize = 256;

/// A fetch's result as every waiter sees it.
pub type Outcome = Result<LayerMeta, String>;

/// Aborts the fetch task when the last waiter drops it.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Entry {
    generation: u64,
    done: Shared<BoxFuture<'static, Outcome>>,
    progress: broadcast::Sender<Value>,
    alive: Weak<AbortOnDrop>,
}

/// The fetches in flight, by chain id.
pub struct InFlight {
    map: Mutex<HashMap<String, Entry>>,
    slots: Arc<Semaphore>,
    next: Mutex<u64>,
}

/// One pull's hold on a fetch.
pub struct Waiter {
    /// Resolves when the layer is committed (or the fetch failed).
    pub done: Shared<BoxFuture<'static, Outcome>>,
    /// The fetch's progress lines from the moment this pull joined.
    pub progress: broadcast::Receiver<Value>,
    /// Whether this pull started the fetch (a joining pull says so in its stream).
    pub started: bool,
    _hold: Arc<AbortOnDrop>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            map: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
            next: Mutex::new(0),
        }
    }
}

impl InFlight {
    /// Joins the fetch of `chain` if one is running, else starts one with `start` (given the
    /// progress sender and the daemon-wide download slots).
    pub fn join_or_start<F>(self: &Arc<Self>, chain: &str, start: F) -> Waiter
    where
        F: FnOnce(broadcast::Sender<Value>, Arc<Semaphore>) -> JoinHandle<ApiResult<LayerMeta>>,
    {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(chain) {
            if let Some(hold) = e.alive.upgrade() {
                return Waiter {
                    done: e.done.clone(),
                    progress: e.progress.subscribe(),
                    started: false,
                    _hold: hold,
                };
            }
        }
        let generation = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let (progress, rx) = broadcast::channel(PROGRESS_BACKLOG);
        let handle = start(progress.clone(), self.slots.clone());
        let hold = Arc::new(AbortOnDrop(handle.abort_handle()));
        let me = Arc::downgrade(self);
        let key = chain.to_string();
        let done = async move {
            let out = match handle.await {
                Ok(Ok(meta)) => Ok(meta),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("layer fetch stopped: {e}")),
            };
            if let Some(me) = me.upgrade() {
                me.finish(&key, generation);
            }
            out
        }
        .boxed()
        .shared();
        map.insert(
            chain.to_string(),
            Entry {
                generation,
                done: done.clone(),
                progress,
                alive: Arc::downgrade(&hold),
            },
        );
        Waiter {
            done,
            progress: rx,
            started: true,
            _hold: hold,
        }
    }

    fn finish(&self, chain: &str, generation: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(chain).is_some_and(|e| e.generation == generation) {
            map.remove(chain);
        }
    }

    /// Chain ids being fetched now (prune leaves their layers alone).
    pub fn chains(&self) -> Vec<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, e)| e.alive.strong_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Waiter {
    /// Forwards the fetch's progress through `say` until the layer is there, then returns it.
    pub async fn follow<S, Fut>(mut self, mut say: S) -> ApiResult<LayerMeta>
    where
        S: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut done = self.done.clone();
        let mut out = None;
        while out.is_none() {
            tokio::select! {
                biased;
                line = self.progress.recv() => match line {
                    Ok(v) => say(v).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => out = Some((&mut done).await),
                },
                r = &mut done => out = Some(r),
            }
        }
        // Lines sent before the end that were not read yet.
        while let Ok(v) = self.progress.try_recv() {
            say(v).await;
        }
        out.unwrap_or_else(|| Err("layer fetch ended without a result".into()))
            .map_err(ApiError::Internal)
    }
}
