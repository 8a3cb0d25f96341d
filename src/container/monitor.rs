//! Following each shim's events, exit handling (restart policies, auto-removal) and
//! re-adoption of shims after a daemon (re)start.

use super::lifecycle::read_exit_file;
use super::record::Status;
use super::{now_ns, Containers};
use berth_api::shim::{ExitRecord, ShimEvent, ShimRequest, ShimResponse, ShimState, ShimStatus};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Shims asked at the same time while restoring.
const PROBE_CONCURRENCY: usize = 32;

impl Containers {
    /// Follows a shim's events until its container's exit is handled.
    pub(crate) fn spawn_monitor(self: &Arc<Self>, id: String) {
        let me = self.clone();
        tokio::spawn(async move { me.monitor(id).await });
    }

    async fn monitor(self: Arc<Self>, id: String) {
        let mut sub = match self.shim(&id).subscribe().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%id, error = %e, "cannot follow shim");
                let _bg = self.background().await;
                self.shim_lost(&id).await;
                return;
            }
        };
        // dockerd emits one `oom` per OOM kill: remember the live one so the exit does not
        // announce it again.
        let mut oom_announced = false;
        while let Some(ev) = sub.next().await {
            match ev {
                ShimEvent::Exit(x) => {
                    // Recorded and acknowledged by one generation, never half by each.
                    let _bg = self.background().await;
                    self.record_exit(&id, &x, oom_announced).await;
                    if let Err(e) = sub.send(&ShimRequest::AckExit { pid: x.pid }) {
                        tracing::warn!(%id, error = %e, "acknowledge exit");
                    }
                    return;
                }
                // Announced by the generation that owns the store (a released one waits:
                // the next one, subscribed too, announces it).
                ShimEvent::Oom => {
                    let _bg = self.background().await;
                    if let Ok(rec) = self.lookup(&id) {
                        self.event(&rec, "oom", &[]);
                        oom_announced = true;
                    }
                }
                ShimEvent::ExecExit { exec_id, code } => {
                    let _bg = self.background().await;
                    self.execs.finished(&exec_id, code);
                    if let Ok(rec) = self.lookup(&id) {
                        // Unlike exec_create/exec_start, dockerd's exec_die carries no command.
                        self.event(
                            &rec,
                            "exec_die",
                            &[("execID", exec_id.clone()), ("exitCode", code.to_string())],
                        );
                    }
                }
            }
        }
        self.shim_lost(&id).await;
    }

    /// The shim closed without an exit being handled: use its exit file; else watch the
    /// container if it still runs, or take its status from the master's reaped record, or
    /// record the loss explicitly (never a made-up code).
    async fn shim_lost(self: &Arc<Self>, id: &str) {
        let Ok(rec) = self.lookup(id) else { return };
        if !rec.state.status.is_live() && rec.state.status != Status::Restarting {
            return;
        }
        if let Some(x) = read_exit_file(&self.paths.exit_file(id)) {
            self.handle_exit(id, &x).await;
            return;
        }
        if !rec.state.status.is_live() {
            return;
        }
        let pid = rec.state.pid;
        if !self.adopt_orphan(id, pid) {
            self.orphan_exited(id, pid).await;
        }
    }

    /// Records an exit (idempotent), emits events, then applies auto-remove or the
    /// restart policy. An exit recorded already by a daemon that died before its
    /// follow-ups (the record still says `exited`) gets only the follow-ups.
    pub(crate) async fn handle_exit(self: &Arc<Self>, id: &str, x: &ExitRecord) {
        self.record_exit(id, x, false).await;
    }

    /// [`Self::handle_exit`], told whether the shim's live `oom` event was already published.
    async fn record_exit(self: &Arc<Self>, id: &str, x: &ExitRecord, oom_announced: bool) {
        let Ok(before) = self.lookup(id) else { return };
        if !before.state.status.is_live() && before.state.finished_at_ns == x.finished_at_ns {
            if before.state.status == Status::Exited {
                self.after_exit(&before, x.code);
            }
            return;
        }
        let rec = match self.update(id, |r| {
            // Killed by the elastic-memory controller: an OOM kill, decided by policy.
            let by_policy = r
                .elastic
                .as_mut()
                .is_some_and(|s| std::mem::take(&mut s.kill_pending));
            r.state
                .exited(x.code, x.oom_killed || by_policy, x.finished_at_ns)
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%id, error = %e, "recording exit failed");
                return;
            }
        };
        if x.oom_killed && !oom_announced {
            self.event(&rec, "oom", &[]);
        }
        self.event(&rec, "die", &[("exitCode", x.code.to_string())]);
        self.notify_exit(id);
        self.release_endpoint_soon(id);
        self.after_exit(&rec, x.code);
    }

    /// Auto-removal or the restart policy after an exit recorded in `rec`. Deterministic
    /// in the record, so running it again after a crash decides the same.
    fn after_exit(self: &Arc<Self>, rec: &super::record::Record, code: i32) {
        let id = rec.id.as_str();
        if rec.host_config.auto_remove == Some(true) {
            self.spawn_remove(id, "auto-remove failed");
        } else if rec.should_restart(code) {
            let ran_ns = rec.state.finished_at_ns - rec.state.started_at_ns;
            let count = if ran_ns > 10_000_000_000 {
                0
            } else {
                rec.state.restart_count
            };
            let delay = Duration::from_millis(100u64 << count.clamp(0, 9) as u64);
            let _ = self.update(id, |r| r.state.status = Status::Restarting);
            self.spawn_policy_restart(id.to_string(), delay);
        }
    }

    /// After a daemon start: re-adopt live shims, record exits that happened while no
    /// daemon ran, finish interrupted removals, apply restart policies. The daemon may have
    /// died at any point of a start, an exit or a restart: whatever the store says, a shim
    /// still on the container's control socket tells what really happened.
    pub async fn restore(self: &Arc<Self>, clean_takeover: bool) {
        let t0 = std::time::Instant::now();
        let all = self.all();
        let ids: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
        if !clean_takeover {
            if let Err(e) = self.net.reconcile(&ids).await {
                tracing::warn!(error = %e, "network reconcile");
            }
        }
        self.reconcile_cpus(!clean_takeover);
        let t_net = t0.elapsed();
        // Ask every shim at once, before any monitor subscribes: one by one (and queued
        // behind the monitors' subscriptions), a respawned worker with many containers
        // would wait for each round trip before it serves.
        let to_probe = all
            .iter()
            .filter(|r| match r.state.status {
                Status::Running | Status::Paused => !clean_takeover,
                Status::Removing => false,
                _ => true,
            })
            .map(|r| r.id.clone());
        let mut probed = self.probe_shims(to_probe).await;
        let t_probed = t0.elapsed();
        // Monitors and interrupted removals start after the loop, so that the few shim
        // calls in it do not queue behind their work.
        let (mut follow, mut removals) = (Vec::new(), Vec::new());
        for rec in all {
            let id = rec.id.clone();
            match rec.state.status {
                // The previous generation handed over with every shim alive: subscribe at
                // once (a shim that is gone is found by the monitor's subscription).
                Status::Running | Status::Paused if clean_takeover => follow.push(id),
                Status::Running | Status::Paused => match probed.remove(&id).flatten() {
                    Some(ShimState {
                        exit: Some(x),
                        status: ShimStatus::Exited,
                        ..
                    }) => {
                        // Exited while no worker ran: recorded before the API answers.
                        self.record_exit(&id, &x, false).await;
                        if let Err(e) = self
                            .shim(&id)
                            .call(ShimRequest::AckExit { pid: x.pid }, None)
                            .await
                        {
                            tracing::warn!(%id, error = %e, "acknowledge exit");
                        }
                    }
                    Some(st) => {
                        tracing::info!(%id, pid = st.pid, "re-adopted shim");
                        follow.push(id);
                    }
                    None => self.shim_lost(&id).await,
                },
                // Finished in the background: the API answers meanwhile (the container
                // shows as `removing`, its lock held by the removal).
                Status::Removing => removals.push(id),
                status => {
                    let st = probed.remove(&id).flatten();
                    if self.restore_stray_shim(&id, status, st).await {
                        continue;
                    }
                    if status == Status::Restarting {
                        self.spawn_policy_restart(id, Duration::ZERO);
                    }
                }
            }
        }
        for id in follow {
            self.spawn_monitor(id);
        }
        for id in removals {
            self.spawn_remove(&id, "finishing interrupted removal");
        }
        if !clean_takeover {
            self.reapply_egress_soon();
        }
        tracing::debug!(
            containers = ids.len(),
            net = ?t_net,
            probes = ?(t_probed - t_net),
            rest = ?(t0.elapsed() - t_probed),
            "restore phases"
        );
    }

    /// [`Self::probe_shim`] of each of `ids`, [`PROBE_CONCURRENCY`] at a time.
    async fn probe_shims(
        &self,
        ids: impl Iterator<Item = String>,
    ) -> HashMap<String, Option<ShimState>> {
        futures::stream::iter(ids)
            .map(|id| async move {
                let st = self.probe_shim(&id).await;
                (id, st)
            })
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect()
            .await
    }

    /// The shim's state, when one answers on the container's control socket.
    async fn probe_shim(&self, id: &str) -> Option<berth_api::shim::ShimState> {
        let shim = self.shim(id);
        if !shim.path().exists() {
            return None;
        }
        match shim.call(ShimRequest::State, None).await {
            Ok(ShimResponse::State(st)) => Some(st),
            _ => None,
        }
    }

    /// A shim on the socket of a container the store says is not running: the daemon died
    /// after a start took effect (adopt the run), before an exit was acknowledged (take
    /// it again: its follow-ups run if they had not), or before a created container was
    /// started (discard it). `probed` is what the shim answered, if one did. Returns
    /// whether the container was adopted as running.
    async fn restore_stray_shim(
        self: &Arc<Self>,
        id: &str,
        status: Status,
        probed: Option<ShimState>,
    ) -> bool {
        let Some(st) = probed else {
            return false;
        };
        match st.status {
            ShimStatus::Running | ShimStatus::Paused => {
                let started = st.started_at_ns.unwrap_or_else(now_ns);
                let paused = st.status == ShimStatus::Paused;
                let res = self.update(id, |r| {
                    if r.state.status == Status::Restarting {
                        r.state.restart_count += 1;
                    }
                    r.state.started(st.pid, 0, started);
                    if paused {
                        r.state.status = Status::Paused;
                    }
                });
                match res {
                    Ok(_) => {
                        tracing::info!(%id, pid = st.pid, "adopted a run started just before the daemon died");
                        self.spawn_monitor(id.to_string());
                        true
                    }
                    Err(e) => {
                        tracing::error!(%id, error = %e, "recording an adopted run");
                        false
                    }
                }
            }
            // Restarting: the restart acknowledges the old shim before it starts a new one.
            ShimStatus::Exited if status == Status::Exited => {
                self.spawn_monitor(id.to_string());
                false
            }
            ShimStatus::Exited => false,
            ShimStatus::Created => {
                tracing::info!(%id, "discarding a shim whose start was interrupted");
                let _ = self.shim(id).call(ShimRequest::Removed, None).await;
                false
            }
        }
    }

    /// Restarts a container in `restarting` after `delay` (a restart decided before the
    /// daemon died is carried out at once), unless it was stopped or removed meanwhile.
    fn spawn_policy_restart(self: &Arc<Self>, id: String, delay: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _bg = me.background().await;
            let _g = me.lock(&id).await;
            let Ok(cur) = me.lookup(&id) else { return };
            if cur.state.status != Status::Restarting {
                return;
            }
            // `docker update --restart` during the back-off: the policy now in the record
            // decides.
            if !cur.should_restart(cur.state.exit_code) {
                let _ = me.update(&id, |r| r.state.status = Status::Exited);
                return;
            }
            if let Err(e) = me.start_locked(&id, false).await {
                tracing::warn!(%id, error = %e, "restart by policy failed");
            }
        });
    }

    /// Before a new shim binds the container's control socket: a shim of the previous run
    /// still there (its exit never acknowledged because the daemon died, or its start
    /// never made) is told to finish, so that it does not linger.
    pub(crate) async fn retire_previous_shim(&self, id: &str) {
        let Some(st) = self.probe_shim(id).await else {
            return;
        };
        let req = match (st.status, st.exit) {
            (ShimStatus::Exited, Some(x)) => ShimRequest::AckExit { pid: x.pid },
            (ShimStatus::Created, _) => ShimRequest::Removed,
            (status, _) => {
                tracing::warn!(%id, ?status, pid = st.pid, "a previous shim still holds a process");
                return;
            }
        };
        if let Err(e) = self.shim(id).call(req, None).await {
            tracing::warn!(%id, error = %e, "retiring the previous shim");
        }
    }
}
