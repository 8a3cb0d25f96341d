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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Chains the running pulls need (theirs or already present), with how many pulls need
    /// each: `rmi` and prune leave them alone until the pull has recorded its image.
    claims: Arc<Mutex<HashMap<String, usize>>>,
    slots: Arc<Semaphore>,
    next: AtomicU64,
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
            claims: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
            next: AtomicU64::new(0),
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
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
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

/// A running pull's claim on the chains of its image (released when dropped).
pub struct Claim {
    chains: Vec<String>,
    claims: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.chains {
            if let Some(n) = map.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    map.remove(c);
                }
            }
        }
    }
}

impl InFlight {
    /// Claims `chains` for a pull until the returned guard is dropped.
    pub fn claim(&self, chains: &[String]) -> Claim {
        let mut map = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        for c in chains {
            *map.entry(c.clone()).or_default() += 1;
        }
        Claim {
            chains: chains.to_vec(),
            claims: self.claims.clone(),
        }
    }

    /// Whether a running pull needs `chain` (being fetched, or claimed).
    pub fn busy(&self, chain: &str) -> bool {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(chain)
            || self
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(chain)
                .is_some_and(|e| e.alive.strong_count() > 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn meta(chain: &str) -> LayerMeta {
        LayerMeta {
            chain_id: chain.into(),
            diff_id: chain.into(),
            parent: None,
            size: 1,
            tar_split: true,
        }
    }

    /// Sets its flag when dropped (the fetch task's future was dropped: aborted or done).
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_second_pull_joins_the_running_fetch_and_shares_its_result() {
        let f = Arc::new(InFlight::default());
        let (go, wait) = oneshot::channel::<()>();
        let mut starts = 0;
        let one = f.join_or_start("sha256:a", |progress, _| {
            starts += 1;
            tokio::spawn(async move {
                let _ = wait.await;
                let _ = progress.send(serde_json::json!({"status": "late"}));
                Ok(meta("sha256:a"))
            })
        });
        let two = f.join_or_start("sha256:a", |_, _| -> JoinHandle<ApiResult<LayerMeta>> {
            panic!("a second fetch was started")
        });
        assert_eq!(starts, 1);
        assert!(one.started && !two.started);
        assert_eq!(f.chains(), vec!["sha256:a".to_string()]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let b = tokio::spawn(two.follow(move |v| {
            s2.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            async {}
        }));
        go.send(()).expect("fetch waiting");
        let a = one.follow(|_| async {}).await.expect("first result");
        let b = b.await.expect("join").expect("second result");
        assert_eq!(a, b);
        assert_eq!(seen.lock().unwrap_or_else(|p| p.into_inner()).len(), 1);
        assert!(f.chains().is_empty(), "finished fetches leave the map");
    }

    #[tokio::test]
    async fn the_fetch_is_aborted_when_the_last_waiter_leaves() {
        let f = Arc::new(InFlight::default());
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = dropped.clone();
        let one = f.join_or_start("sha256:b", move |_, _| {
            tokio::spawn(async move {
                let _guard = Dropped(d2);
                std::future::pending::<()>().await;
                Ok(meta("sha256:b"))
            })
        });
        let two = f.join_or_start("sha256:b", |_, _| -> JoinHandle<ApiResult<LayerMeta>> {
            panic!("a second fetch was started")
        });
        drop(one);
        tokio::task::yield_now().await;
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        drop(two);
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "fetch not aborted"
        );
        assert!(f.chains().is_empty());
        // A later pull starts a new fetch.
        let three = f.join_or_start("sha256:b", |_, _| {
            tokio::spawn(async { Ok(meta("sha256:b")) })
        });
        assert!(three.started);
    }

    #[test]
    fn claims_count_pulls() {
        let f = InFlight::default();
        let a = f.claim(&["sha256:c".to_string()]);
        let b = f.claim(&["sha256:c".to_string()]);
        assert!(f.busy("sha256:c"));
        drop(a);
        assert!(f.busy("sha256:c"));
        drop(b);
        assert!(!f.busy("sha256:c"));
    }
}
