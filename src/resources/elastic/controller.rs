//! The elastic-memory loop: every interval it samples the pool (and the containers the
//! decision needs), asks [`super::decide`] what to do, and does it, each action an event
//! and a status in the container's record. Only the generation that owns the store acts
//! (a generation handing over, or a successor not yet serving, samples nothing).

use super::cgmem::MemSample;
use super::decide::{decide, Action, Member, Pool};
use super::{Elastic, ElasticStatus};
use crate::container::now_ns;
use crate::container::record::Status;
use crate::container::Containers;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a killed container counts as dying (no second victim meanwhile).
const DYING_FOR: Duration = Duration::from_secs(2);

/// What a tick needs of a running container (taken under the records' lock, no clone of
/// the record).
#[derive(Debug)]
struct Live {
    id: String,
    path: String,
    entitlement: u64,
    /// Entitlement and enforced ceiling of an elastic container.
    bounds: Option<(u64, u64)>,
    started_ns: i64,
    kill_pending: bool,
}

/// An action done, for the async side to record.
#[derive(Debug)]
struct Done {
    id: String,
    action: &'static str,
    reason: String,
    limit: u64,
}

/// Starts the loop.
pub fn spawn(elastic: Arc<Elastic>, containers: Arc<Containers>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(elastic, containers))
}

async fn run(elastic: Arc<Elastic>, containers: Arc<Containers>) {
    let mut tick = tokio::time::interval(Duration::from_millis(elastic.cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dying: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    tracing::info!(
        pool = %elastic.pool,
        size_mib = elastic.cfg.pool_size >> 20,
        low_mib = elastic.cfg.low_headroom >> 20,
        critical_mib = elastic.cfg.critical_headroom >> 20,
        "elastic memory controller running"
    );
    loop {
        tick.tick().await;
        let Some(_admitted) = containers.gate.begin_internal() else {
            continue;
        };
        let e = elastic.clone();
        let running: Vec<Live> = containers.scan(|r| {
            matches!(r.state.status, Status::Running | Status::Paused).then(|| Live {
                id: r.id.clone(),
                path: containers.paths.cgroup_path(&r.id),
                entitlement: r.host_config.memory.unwrap_or(0).max(0) as u64,
                bounds: e.bounds(r),
                started_ns: r.state.started_at_ns,
                kill_pending: r.elastic.as_ref().is_some_and(|s| s.kill_pending),
            })
        });
        let d = dying.clone();
        let done = tokio::task::spawn_blocking(move || e.tick(&running, &d)).await;
        let (done, kill) = match done {
            Ok(d) => d,
            Err(err) => {
                tracing::error!(error = %err, "elastic memory: a tick failed");
                continue;
            }
        };
        for d in done {
            record(&containers, d);
        }
        if let Some((d, path)) = kill {
            // Marked in the record before the signal: the exit then reads as OOMKilled,
            // whichever generation records it.
            record(&containers, d);
            let e = elastic.clone();
            let n = tokio::task::spawn_blocking(move || e.mem.kill(&path))
                .await
                .unwrap_or(0);
            tracing::debug!(processes = n, "elastic memory: kill signalled");
        }
    }
}

fn record(containers: &Containers, d: Done) {
    let status = ElasticStatus {
        limit: d.limit,
        action: d.action.to_string(),
        reason: d.reason.clone(),
        time_ns: now_ns(),
        kill_pending: d.action == "kill",
    };
    let rec = match containers.update(&d.id, |r| {
        // A kill is marked before the signal; nothing done later replaces it.
        if !r.elastic.as_ref().is_some_and(|s| s.kill_pending) {
            r.elastic = Some(status.clone());
        }
    }) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(id = %d.id, error = %e, "elastic memory: record the action");
            return;
        }
    };
    let action = match d.action {
        "kill" => "oom",
        "grow" => "elastic-grow",
        _ => "elastic-squeeze",
    };
    tracing::info!(id = %d.id, action = d.action, limit_mib = d.limit >> 20, reason = %d.reason, "elastic memory");
    containers.event(
        &rec,
        action,
        &[("reason", d.reason), ("limit", d.limit.to_string())],
    );
}

impl Elastic {
    /// One round (blocking: cgroup files, and v1 refuses a squeeze only after trying to
    /// reclaim). While the pool is green only the elastic containers' limits are read (to
    /// give squeezed ones their room back); under the low threshold every elastic
    /// container is sampled, and in the red every container (victims are chosen among all).
    fn tick(
        &self,
        running: &[Live],
        dying: &std::sync::Mutex<HashMap<String, Instant>>,
    ) -> (Vec<Done>, Option<(Done, String)>) {
        let pool_sample = match self.mem.sample(&self.pool) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool = %self.pool, error = %e, "elastic memory: sample the pool");
                return (Vec::new(), None);
            }
        };
        let pool = Pool {
            size: self.cfg.pool_size,
            low: self.cfg.low_headroom,
            critical: self.cfg.critical_headroom,
            usage: pool_sample.usage,
            under_oom: pool_sample.under_oom,
        };
        let red = pool.headroom() <= pool.critical || pool.under_oom;
        let green = !red && pool.headroom() >= pool.low;
        let mut dying = dying.lock().unwrap_or_else(|p| p.into_inner());
        dying.retain(|id, t| t.elapsed() < DYING_FOR && running.iter().any(|r| &r.id == id));
        let mut adopted = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
        adopted.retain(|id, started| {
            running
                .iter()
                .any(|r| &r.id == id && r.started_ns == *started)
        });
        let mut members = Vec::new();
        for live in running {
            if live.bounds.is_none() && !red {
                continue;
            }
            if let Some((_, ceiling)) = live.bounds {
                if !adopted.contains_key(&live.id) {
                    match self.mem.adopt(&live.path, ceiling) {
                        Ok(()) => {
                            adopted.insert(live.id.clone(), live.started_ns);
                        }
                        Err(e) => {
                            tracing::warn!(id = %live.id, error = %e, "elastic memory: adopt")
                        }
                    }
                }
            }
            let s = if green {
                self.mem.limit(&live.path).map(|limit| MemSample {
                    limit,
                    ..Default::default()
                })
            } else {
                self.mem.sample(&live.path)
            };
            // Gone between the listing and the sample: it is not a member any more.
            let Ok(s) = s else { continue };
            members.push(Member {
                id: live.id.clone(),
                entitlement: live.entitlement,
                ceiling: live.bounds.map(|(_, c)| c),
                limit: s.limit,
                usage: s.usage,
                started_ns: live.started_ns,
                dying: dying.contains_key(&live.id) || live.kill_pending,
            });
        }
        let mut done = Vec::new();
        let mut kill = None;
        for action in decide(&pool, &members) {
            let (id, to, reason) = match action {
                Action::Grow { id, to, reason } | Action::Squeeze { id, to, reason } => {
                    (id, to, reason)
                }
                Action::Kill { id, reason } => {
                    let Some(path) = running.iter().find(|r| r.id == id).map(|r| r.path.clone())
                    else {
                        continue;
                    };
                    dying.insert(id.clone(), Instant::now());
                    let limit = members
                        .iter()
                        .find(|m| m.id == id)
                        .map(|m| m.limit)
                        .unwrap_or(0);
                    kill = Some((
                        Done {
                            id,
                            action: "kill",
                            reason,
                            limit,
                        },
                        path,
                    ));
                    continue;
                }
            };
            let Some((path, ceiling)) = running
                .iter()
                .find(|r| r.id == id)
                .and_then(|r| r.bounds.map(|(_, c)| (&r.path, c)))
            else {
                continue;
            };
            let before = members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.limit)
                .unwrap_or(0);
            match self.mem.set_limit(path, to, ceiling) {
                Ok(limit) if limit != before => done.push(Done {
                    id,
                    action: if limit > before { "grow" } else { "squeeze" },
                    reason,
                    limit,
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(%id, error = %e, "elastic memory: set the limit"),
            }
        }
        (done, kill)
    }
}
