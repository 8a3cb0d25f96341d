//! Live upgrade of the worker (DESIGN "Live upgrade"; research/hot-restart.md §6.5):
//! preflight → spawn the successor at low priority → warm-up while the active generation
//! serves → freeze (quiesce mutations, stop accepting, hand connections over, flush) →
//! cut-over (the old generation exits, the successor opens the store and accepts) →
//! probation → commit. Every failure rolls back: before the cut-over the old generation
//! resumes; after it, a worker of the old binary is started in its place. The caller gets
//! a JSON report on the connection it sent `POST /berth/upgrade` on.

use super::spawn::Role;
use super::{Event, Master};
use crate::ctl::{ToMaster, ToWorker, UpgradeParams, CTL_PROTOCOL_VERSION};
use serde::Serialize;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DEFAULT_WARMUP: Duration = Duration::from_secs(30);
const DEFAULT_PROBATION: Duration = Duration::from_millis(500);
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight mutations (a pull, a load) may take this long to finish before the freeze.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(600);
const CUTOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// The report sent to `berthd upgrade`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// `committed` or `rolled-back`.
    pub result: String,
    /// Why it rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The binary asked for.
    pub binary: String,
    /// Generation serving afterwards.
    pub generation: u64,
    /// Milliseconds of preflight.
    pub preflight_ms: f64,
    /// Milliseconds of warm-up.
    pub warmup_ms: f64,
    /// Milliseconds during which mutations were held back (reads were answered).
    pub quiesce_ms: f64,
    /// Milliseconds during which no connection was accepted: freeze plus cut-over.
    pub freeze_cutover_ms: f64,
    /// Connections handed from the old generation to the new one.
    pub conns_handed_over: usize,
}

/// The body for a second upgrade while one runs.
pub fn busy() -> serde_json::Value {
    serde_json::json!({"message": "an upgrade is already in progress"})
}

/// Writes a complete HTTP response on the client connection and closes it.
pub fn reply(client: OwnedFd, status: u16, body: &serde_json::Value) {
    use std::io::Write;
    let body = format!("{body}\n");
    let reason = match status {
        200 => "OK",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::os::unix::net::UnixStream::from(client);
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = s.write_all(text.as_bytes()) {
        tracing::warn!(error = %e, "answer the upgrade client");
    }
}

/// Runs one upgrade and answers the client.
pub async fn run(m: &mut Master, params: UpgradeParams, client: OwnedFd) {
    let binary = params
        .binary
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| m.binary.clone());
    let mut report = Report {
        binary: binary.display().to_string(),
        ..Report::default()
    };
    let res = attempt(m, &params, &binary, &mut report).await;
    report.generation = m
        .active
        .and_then(|a| m.workers.get(&a))
        .map(|w| w.generation)
        .unwrap_or(0);
    match res {
        Ok(()) => {
            report.result = "committed".into();
            tracing::info!(?report, "upgrade committed");
            super::notify::notify(&format!(
                "STATUS=serving (generation {})",
                report.generation
            ));
            reply(
                client,
                200,
                &serde_json::to_value(&report).unwrap_or_default(),
            );
            // The master follows: same PID, the new program (returns only on failure).
            let e = super::reexec::exec(m, &binary);
            tracing::error!(error = %format!("{e:#}"), "the master keeps running its old program");
        }
        Err(reason) => {
            report.result = "rolled-back".into();
            report.reason = Some(reason.clone());
            tracing::error!(?report, "upgrade rolled back");
            let mut body = serde_json::to_value(&report).unwrap_or_default();
            body["message"] = format!("upgrade rolled back: {reason}").into();
            reply(client, 500, &body);
        }
    }
}

async fn attempt(
    m: &mut Master,
    params: &UpgradeParams,
    binary: &PathBuf,
    report: &mut Report,
) -> Result<(), String> {
    let old = m.active.ok_or("no worker is serving")?;
    let old_binary = m
        .workers
        .get(&old)
        .map(|w| w.binary.clone())
        .unwrap_or_else(|| m.binary.clone());
    // PREFLIGHT
    let t = Instant::now();
    preflight(m, old, binary).await?;
    report.preflight_ms = ms(t);
    // SPAWN + WARMUP
    let t = Instant::now();
    let new = m
        .start_worker(binary.clone(), Role::Successor, params.fault.as_deref())
        .map_err(|e| format!("start the new worker: {e:#}"))?;
    let warmup = params
        .warmup_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WARMUP);
    let deadline = Instant::now() + warmup;
    loop {
        match m.next_event(deadline).await {
            None => {
                kill(new);
                return Err(format!("the new worker did not warm up within {warmup:?}"));
            }
            Some(Event::Msg(pid, ToMaster::Warm, _)) if pid == new => break,
            Some(Event::Msg(pid, ToMaster::Hello { ctl_protocol, .. }, _))
                if pid == new && ctl_protocol != CTL_PROTOCOL_VERSION =>
            {
                kill(new);
                return Err(format!(
                    "the new worker speaks control protocol {ctl_protocol}"
                ));
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(format!("{e} during warm-up"));
                }
            }
        }
    }
    report.warmup_ms = ms(t);
    // FREEZE
    let t_freeze = Instant::now();
    send(m, old, ToWorker::Freeze).await;
    // The successor learns of the freeze too (it only matters to fault injection).
    send(m, new, ToWorker::Freeze).await;
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    let mut old_alive = true;
    // The successor answers the freeze notice with `Warm`: proof that it is alive and
    // responsive right before the point of no return.
    let mut successor_ready = false;
    loop {
        match m.next_event(deadline).await {
            None => {
                kill(new);
                send(m, old, ToWorker::Resume).await;
                m.flush_pending(old).await;
                return Err("in-flight requests did not finish in time for the freeze".into());
            }
            Some(Event::Msg(pid, ToMaster::Warm, _)) if pid == new => successor_ready = true,
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => {
                if let Some(fd) = fds.into_iter().next() {
                    m.pending.push_back((c, fd));
                }
            }
            Some(Event::Msg(
                pid,
                ToMaster::Frozen {
                    conns, quiesce_ms, ..
                },
                _,
            )) if pid == old => {
                report.conns_handed_over = conns;
                report.quiesce_ms = quiesce_ms;
                break;
            }
            Some(Event::Exited(pid, status)) if pid == new => {
                m.workers.remove(&new);
                send(m, old, ToWorker::Resume).await;
                m.flush_pending(old).await;
                return Err(format!("the new worker died during the freeze ({status})"));
            }
            Some(Event::Exited(pid, status)) if pid == old => {
                tracing::error!(%status, "the old worker died during the freeze");
                m.workers.remove(&old);
                old_alive = false;
                break;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(format!("{e} during the freeze"));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while old_alive && !successor_ready {
        match m.next_event(deadline).await {
            Some(Event::Msg(pid, ToMaster::Warm, _)) if pid == new => successor_ready = true,
            Some(Event::Exited(pid, _)) if pid == new => {
                m.workers.remove(&new);
                break;
            }
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => {
                if let Some(fd) = fds.into_iter().next() {
                    m.pending.push_back((c, fd));
                }
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(format!("{e} during the freeze"));
                }
            }
            None => {
                kill(new);
                break;
            }
        }
    }
    let t_frozen = Instant::now();
    if old_alive && (!successor_ready || has_exited(new)) {
        // The successor died while the old generation froze (its exit may not have been
        // reaped yet): the old generation resumes.
        send(m, old, ToWorker::Resume).await;
        m.flush_pending(old).await;
        return Err("the new worker died during the freeze".into());
    }
    // CUT-OVER: the old generation leaves (releasing the store) while the new one is told
    // to take over at once: it opens the store as soon as the lock is free, without waiting
    // for the master to notice the old generation's exit. Done when the old generation is
    // gone and the new one serves, in either order.
    if old_alive {
        send(m, old, ToWorker::Exit).await;
    }
    m.active = Some(new);
    send(m, new, ToWorker::TakeOver { clean: old_alive }).await;
    let (mut old_gone, mut serving) = (!old_alive, false);
    let mut old_deadline = Instant::now() + Duration::from_secs(5);
    let deadline = Instant::now() + CUTOVER_TIMEOUT;
    while !(old_gone && serving) {
        let wait_until = if old_gone {
            deadline
        } else {
            old_deadline.min(deadline)
        };
        match m.next_event(wait_until).await {
            None if !old_gone && Instant::now() >= old_deadline => {
                // It did not leave when told: kill it, then wait for the reaper to see it.
                kill(old);
                old_deadline = Instant::now() + Duration::from_secs(5);
            }
            None => {
                kill(new);
                return rollback_cold(
                    m,
                    old_binary,
                    "the new worker did not take over in time".into(),
                )
                .await;
            }
            Some(Event::Exited(pid, _)) if pid == old => {
                m.workers.remove(&old);
                old_gone = true;
                tracing::debug!(old_exit_ms = ms(t_frozen), "old generation gone");
            }
            Some(Event::Msg(pid, ToMaster::Serving { .. }, _)) if pid == new => {
                serving = true;
                report.freeze_cutover_ms = ms(t_freeze) - report.quiesce_ms;
                tracing::debug!(takeover_ms = ms(t_frozen), "new generation serving");
                m.mark_serving(new);
                m.flush_pending(new).await;
            }
            // A connection the old generation still hands over waits for the new one
            // (`other` would flush every pending connection back to the leaving one).
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => {
                if let Some(fd) = fds.into_iter().next() {
                    m.pending.push_back((c, fd));
                }
                if serving {
                    m.flush_pending(new).await;
                }
            }
            Some(Event::Exited(pid, status)) if pid == new => {
                m.workers.remove(&new);
                return rollback_cold(
                    m,
                    old_binary,
                    format!("the new worker died during the cut-over ({status})"),
                )
                .await;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(e);
                }
            }
        }
    }
    // PROBATION
    let probation = params
        .probation_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_PROBATION);
    let deadline = Instant::now() + probation;
    loop {
        match m.next_event(deadline).await {
            None => break,
            Some(Event::Exited(pid, status)) if pid == new => {
                m.workers.remove(&new);
                return rollback_cold(
                    m,
                    old_binary,
                    format!("the new worker died after the cut-over ({status})"),
                )
                .await;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(e);
                }
            }
        }
    }
    // COMMIT
    m.binary = binary.clone();
    Ok(())
}

/// Handles an event that is not the one an upgrade step waits for; `Some` aborts.
async fn other(m: &mut Master, ev: Event, new: i32, old: i32) -> Option<String> {
    match ev {
        Event::Msg(_, ToMaster::Upgrade(_), fds) => {
            if let Some(c) = fds.into_iter().next() {
                reply(c, 409, &busy());
            }
            None
        }
        Event::Msg(pid, msg, fds) => {
            m.on_msg(pid, msg, fds).await;
            None
        }
        Event::Exited(pid, status) if pid == new => {
            m.workers.remove(&new);
            Some(format!("the new worker exited ({status})"))
        }
        Event::Exited(pid, status) if pid == old => {
            // The serving generation crashed while the successor warms up: start a
            // replacement of the old binary; the upgrade is abandoned.
            m.workers.remove(&old);
            kill(new);
            m.active = None;
            let bin = m.binary.clone();
            if let Err(e) = m.start_worker(bin, Role::Worker, None) {
                tracing::error!(error = %e, "respawn worker");
            }
            Some(format!("the serving worker died ({status})"))
        }
        Event::Exited(pid, _) => {
            m.workers.remove(&pid);
            None
        }
        Event::Closed(_) => None,
        Event::Stop => {
            kill(new);
            let _ = m.events_tx.send(Event::Stop);
            Some("the daemon is stopping".into())
        }
    }
}

/// After the cut-over the old generation is gone: a worker of the old binary takes over.
async fn rollback_cold(m: &mut Master, old_binary: PathBuf, reason: String) -> Result<(), String> {
    m.active = None;
    match m.start_worker(old_binary, Role::Worker, None) {
        Ok(pid) => {
            let deadline = Instant::now() + CUTOVER_TIMEOUT;
            while let Some(ev) = m.next_event(deadline).await {
                match ev {
                    Event::Msg(p, ToMaster::Serving { .. }, _) if p == pid => {
                        m.mark_serving(pid);
                        m.flush_pending(pid).await;
                        break;
                    }
                    Event::Msg(p, msg, fds) => m.on_msg(p, msg, fds).await,
                    Event::Exited(p, _) => {
                        m.workers.remove(&p);
                        if p == pid {
                            let _ = m.events_tx.send(Event::Exited(p, "respawn failed".into()));
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "start a worker of the old binary"),
    }
    Err(reason)
}

async fn send(m: &Master, pid: i32, msg: ToWorker) {
    if let Some(w) = m.workers.get(&pid) {
        if let Err(e) = w.ctl.send(&msg, &[]).await {
            tracing::warn!(pid, error = %e, ?msg, "send to worker");
        }
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether `pid` (a child) has exited, without reaping it (the reaper does that).
fn has_exited(pid: i32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // Already reaped: gone.
        Err(_) => true,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Runs `<binary> preflight` and checks that it reads the store and speaks the shim and
/// control protocols of what runs now.
async fn preflight(m: &Master, old: i32, binary: &PathBuf) -> Result<(), String> {
    let out = tokio::time::timeout(
        PREFLIGHT_TIMEOUT,
        tokio::process::Command::new(binary)
            .arg("preflight")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| format!("preflight: {} did not answer in time", binary.display()))?
    .map_err(|e| format!("preflight: cannot run {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "preflight: {} failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let p: crate::upgrade_cli::Preflight = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "preflight: unreadable answer from {}: {e}",
            binary.display()
        )
    })?;
    let w = m.workers.get(&old).ok_or("no serving worker")?;
    let store = w.store_format.unwrap_or(crate::store::FORMAT_VERSION);
    if p.store_format < store {
        return Err(format!(
            "preflight: the new binary reads store format {} but the store is format {store}",
            p.store_format
        ));
    }
    let shim = berth_api::shim::SHIM_PROTOCOL_VERSION;
    let running = w.shim_protocol.map(|r| r.1).unwrap_or(shim);
    if !(p.shim_protocol.0..=p.shim_protocol.1).contains(&running) {
        return Err(format!(
            "preflight: the new binary speaks shim protocol {}..={} but running shims speak {running}",
            p.shim_protocol.0, p.shim_protocol.1
        ));
    }
    if p.ctl_protocol != CTL_PROTOCOL_VERSION {
        return Err(format!(
            "preflight: the new binary speaks control protocol {}, this master {}",
            p.ctl_protocol, CTL_PROTOCOL_VERSION
        ));
    }
    Ok(())
}
