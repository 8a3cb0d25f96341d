//! berth-load: a Docker API load generator for berth's live-upgrade work.
//!
//! `clients` tasks talk plain Docker API (`/v1.41`) over a unix socket, each either with a
//! fresh connection per request or with one kept-alive connection, picking `_ping`,
//! `containers/json`, `containers/{id}/json` or a create/start/force-delete cycle by weight.
//! Every request is recorded with its realtime start, latency and exact outcome, so that
//! refused connections, connections dropped while idle, 5xx and timeouts are all counted and
//! nothing is retried silently. A [`Report`] then splits latencies by windows (e.g. upgrade
//! windows) given after the run.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let mut cfg = berth_load::Config::new("/run/berth.sock");
//! cfg.image = "bb:test".into();
//! let load = berth_load::start(cfg);
//! // ... upgrade the daemon, noting each window ...
//! let run = load.finish().await?;
//! let report = run.report(&[berth_load::Window { start_ns: 1, end_ns: 2 }]);
//! assert!(report.passed(), "{report}");
//! # Ok(()) }
//! ```

mod client;
mod config;
mod http;
mod record;
mod report;

pub use config::{Config, Mix, API_PREFIX};
pub use record::{now_ns, ConnKind, FailureSample, IoKind, Op, Outcome, Record};
pub use report::{parse_windows, read_windows, Breakdown, Latency, Report, Window};

use anyhow::{bail, Context, Result};
use client::{run_client, Shared};
use record::SAMPLES_PER_KIND;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cloneable stop signal: once [`StopToken::stop`] is called, clients finish their current
/// request (or cycle) and the run ends.
#[derive(Debug, Clone)]
pub struct StopToken(Arc<watch::Sender<bool>>);

impl Default for StopToken {
    fn default() -> Self {
        StopToken(Arc::new(watch::channel(false).0))
    }
}

impl StopToken {
    /// A token not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers the stop (idempotent).
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Whether the stop was triggered.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is triggered.
    pub async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Live counters of a run, readable while it goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Progress {
    /// Requests finished so far, whatever their outcome.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Requests finished so far with an outcome other than `ok`.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Everything a run observed.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// When the clients started, ns since the epoch.
    pub started_ns: u64,
    /// When the last client stopped, ns since the epoch.
    pub ended_ns: u64,
    /// Clients in total.
    pub clients: usize,
    /// Of which with a fresh connection per request.
    pub fresh_clients: usize,
    /// Every request, sorted by start.
    pub records: Vec<Record>,
    /// The first few failures of each outcome kind.
    pub failures: Vec<FailureSample>,
    /// Cycle containers whose delete never succeeded.
    pub leaked: Vec<String>,
    /// Remarks (e.g. inspect disabled because no container was running).
    pub notes: Vec<String>,
}

impl Run {
    /// The report, latencies split by `windows`.
    pub fn report(&self, windows: &[Window]) -> Report {
        Report::build(self, windows)
    }

    /// Requests with an outcome other than `ok`.
    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| !r.outcome.is_ok()).count()
    }
}

/// Runs the load until `stop` is triggered or `cfg.duration` passes (whichever is first;
/// the duration triggers `stop`). Errors only when the run cannot start (bad config, the
/// inspect ids cannot be listed); request failures are recorded, not returned.
pub async fn run(cfg: Config, stop: StopToken) -> Result<Run> {
    run_with(cfg, stop, Arc::new(Progress::default())).await
}

/// [`run`], counting into `progress` as requests complete.
pub async fn run_with(cfg: Config, stop: StopToken, progress: Arc<Progress>) -> Result<Run> {
    cfg.validate()?;
    let mut notes = Vec::new();
    let mut mix = cfg.mix;
    let ids = match (&cfg.inspect_ids, mix.inspect) {
        (_, 0) => Vec::new(),
        (Some(ids), _) => ids.clone(),
        (None, _) => discover_ids(&cfg).await?,
    };
    if ids.is_empty() && mix.inspect > 0 {
        mix.inspect = 0;
        notes.push("no container to inspect: the inspect weight was set to 0".to_string());
        if mix.total() == 0 {
            bail!("nothing to do: the mix only has inspect and there is no container");
        }
    }
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let started_ns = now_ns();
    let tag = format!(
        "berth-load-{}-{:x}{}",
        std::process::id(),
        (started_ns / 1_000_000) & 0xff_ffff,
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let fresh = cfg.fresh_clients();
    let clients = cfg.clients;
    let duration = cfg.duration;
    let shared = Arc::new(Shared {
        create_body: cfg.create_body(),
        cfg,
        mix,
        ids,
        stop: stop.clone(),
        progress,
        tag,
    });
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let kind = if i < fresh {
                ConnKind::Fresh
            } else {
                ConnKind::Keepalive
            };
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            tokio::spawn(run_client(Arc::clone(&shared), idx, kind))
        })
        .collect();
    match duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => stop.stop(),
                _ = stop.stopped() => {}
            }
        }
        None => stop.stopped().await,
    }
    let mut run = Run {
        started_ns,
        clients,
        fresh_clients: fresh,
        notes,
        ..Run::default()
    };
    for t in tasks {
        let out = t.await.context("a load client task panicked")?;
        run.records.extend(out.records);
        run.failures.extend(out.samples);
        run.leaked.extend(out.leaked);
    }
    run.ended_ns = now_ns();
    run.records.sort_unstable_by_key(|r| r.start_ns);
    run.failures.sort_by_key(|s| s.start_ns);
    let mut per_kind = std::collections::HashMap::new();
    run.failures.retain(|s| {
        let n = per_kind.entry(s.outcome.clone()).or_insert(0usize);
        *n += 1;
        *n <= SAMPLES_PER_KIND
    });
    Ok(run)
}

/// Lists the running containers' ids for inspect.
async fn discover_ids(cfg: &Config) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Summary {
        #[serde(rename = "Id")]
        id: String,
    }
    let socket = &cfg.socket;
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "listing containers to inspect: connect {}",
                socket.display()
            )
        })?;
    let mut http = http::Http::default();
    let path = format!("{API_PREFIX}/containers/json");
    let resp = tokio::time::timeout(
        cfg.timeout,
        http.exchange(&mut stream, "GET", &path, None, true),
    )
    .await
    .context("listing containers to inspect: timed out")?
    .map_err(|e| anyhow::anyhow!("listing containers to inspect: {e:?}"))?;
    if resp.status != 200 {
        bail!("listing containers to inspect: status {}", resp.status);
    }
    let list: Vec<Summary> =
        serde_json::from_slice(&http.body).context("listing containers to inspect: bad JSON")?;
    Ok(list.into_iter().map(|s| s.id).collect())
}

/// A run in the background, see [`start`].
#[derive(Debug)]
pub struct LoadHandle {
    stop: StopToken,
    progress: Arc<Progress>,
    task: JoinHandle<Result<Run>>,
}

/// Starts a run on the current tokio runtime; stop it with [`LoadHandle::finish`].
pub fn start(cfg: Config) -> LoadHandle {
    let stop = StopToken::new();
    let progress = Arc::new(Progress::default());
    let task = tokio::spawn(run_with(cfg, stop.clone(), Arc::clone(&progress)));
    LoadHandle {
        stop,
        progress,
        task,
    }
}

impl LoadHandle {
    /// The run's stop token.
    pub fn stop_token(&self) -> &StopToken {
        &self.stop
    }

    /// Live counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Whether the run ended already (duration passed, or it failed to start).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the clients (each finishes its current request or cycle) and returns the run.
    pub async fn finish(self) -> Result<Run> {
        self.stop.stop();
        self.join().await
    }

    /// Waits for the run to end by itself (its duration) and returns it.
    pub async fn join(self) -> Result<Run> {
        self.task.await.context("the load run task panicked")?
    }
}

#[cfg(test)]
mod tests;
