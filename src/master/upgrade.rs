//! Live upgrade of the worker (DESIGN "Live upgrade"; research/hot-restart.md §6.5):
//! preflight → spawn the successor at low priority → warm-up while the active generation
//! serves → release (the old generation lets its mutations finish, parks new ones, closes
//! the store and answers reads only) → take-over (the successor opens the store,
//! reconnects to the shims and accepts, answering reads and holding mutations) → freeze
//! and cut-over (the old generation stops accepting and hands its connections over; the
//! successor serves mutations) → probation → commit. Some generation accepts connections
//! at every moment, and reads are answered throughout. Every failure rolls back: until the
//! old generation leaves it takes the store back and serves on; after that, a worker of the
//! old binary is started in its place. The caller gets a JSON report on the connection it
//! sent `POST /berth/upgrade` on.

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
    /// Milliseconds the old generation took to let its in-flight mutations finish before
    /// it closed the store (new mutations were parked, reads answered).
    pub quiesce_ms: f64,
    /// Milliseconds the new generation took to open the store, reconnect to the shims and
    /// accept (the old one answered reads, mutations waited).
    pub takeover_ms: f64,
    /// Milliseconds from the freeze order to the old generation until the new one serves
    /// mutations: the old one stops accepting, finishes the reads it admitted and hands its
    /// connections over, while the new one already accepts and answers reads.
    pub freeze_cutover_ms: f64,
    /// Milliseconds during which mutations waited: quiesce, take-over, freeze and cut-over.
    /// Reads were answered all along, and some generation accepted connections.
    pub mutations_held_ms: f64,
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
    // RELEASE: the old generation lets its mutations finish (new ones are parked here)
    // and closes the store; it answers reads throughout.
    let t_held = Instant::now();
    send(m, old, ToWorker::Release).await;
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    let mut old_alive = true;
    loop {
        match m.next_event(deadline).await {
            None => {
                kill(new);
                let why = "in-flight requests did not finish in time for the hand-over";
                return Err(resume(m, old, why.into()).await);
            }
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => m.park(c, fds),
            Some(Event::Msg(pid, ToMaster::Released { quiesce_ms, error }, _)) if pid == old => {
                report.quiesce_ms = quiesce_ms;
                if let Some(e) = error {
                    // It serves on with the store it kept.
                    kill(new);
                    m.flush_pending(old).await;
                    return Err(format!(
                        "the serving worker could not hand the store over: {e}"
                    ));
                }
                break;
            }
            Some(Event::Exited(pid, status)) if pid == new => {
                m.workers.remove(&new);
                let why = format!("the new worker died during the hand-over ({status})");
                return Err(resume(m, old, why).await);
            }
            Some(Event::Exited(pid, status)) if pid == old => {
                tracing::error!(%status, "the old worker died during the hand-over");
                m.workers.remove(&old);
                old_alive = false;
                break;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(format!("{e} during the hand-over"));
                }
            }
        }
    }
    // TAKE-OVER: the new generation opens the store, reconnects to the shims and accepts;
    // while the old one still answers reads, it answers reads too and holds mutations.
    let t_take = Instant::now();
    send(
        m,
        new,
        ToWorker::TakeOver {
            clean: old_alive,
            hold: old_alive,
        },
    )
    .await;
    let deadline = Instant::now() + CUTOVER_TIMEOUT;
    loop {
        match m.next_event(deadline).await {
            None => {
                kill(new);
                let why = "the new worker did not take over in time".to_string();
                return back_to_old(m, old_alive, old, old_binary, why).await;
            }
            Some(Event::Msg(pid, ToMaster::Serving { .. }, _)) if pid == new => {
                m.mark_serving(new);
                m.flush_pending(new).await;
                break;
            }
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => m.park(c, fds),
            Some(Event::Exited(pid, status)) if pid == new => {
                m.workers.remove(&new);
                let why = format!("the new worker died before it served ({status})");
                return back_to_old(m, old_alive, old, old_binary, why).await;
            }
            Some(Event::Exited(pid, status)) if pid == old => {
                tracing::error!(%status, "the old worker died during the take-over");
                m.workers.remove(&old);
                old_alive = false;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(format!("{e} during the take-over"));
                }
            }
        }
    }
    report.takeover_ms = ms(t_take);
    // FREEZE + CUT-OVER: the old generation stops accepting, finishes the reads it
    // admitted and hands its connections over (straight to the new one, which accepts
    // already); then the new one serves mutations. The new one acknowledges the freeze
    // notice: proof that it is alive right before the old one is told to leave.
    let t_freeze = Instant::now();
    if old_alive {
        send(m, old, ToWorker::Freeze).await;
        send(m, new, ToWorker::Freeze).await;
        let (mut frozen, mut acked) = (false, false);
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        while !(frozen && acked) {
            match m.next_event(deadline).await {
                None if !frozen => {
                    tracing::error!("the old worker did not freeze in time: killing it");
                    kill(old);
                    frozen = true;
                }
                None => break,
                Some(Event::Msg(pid, ToMaster::Warm, _)) if pid == new => acked = true,
                Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => {
                    m.park(c, fds);
                    m.flush_pending(new).await;
                }
                Some(Event::Msg(pid, ToMaster::Frozen { conns, .. }, _)) if pid == old => {
                    report.conns_handed_over = conns;
                    frozen = true;
                }
                Some(Event::Exited(pid, _)) if pid == old => {
                    m.workers.remove(&old);
                    old_alive = false;
                    frozen = true;
                }
                Some(Event::Exited(pid, status)) if pid == new => {
                    m.workers.remove(&new);
                    let why = format!("the new worker died during the freeze ({status})");
                    return back_to_old(m, old_alive, old, old_binary, why).await;
                }
                Some(ev) => {
                    if let Some(e) = other(m, ev, new, old).await {
                        return Err(format!("{e} during the freeze"));
                    }
                }
            }
        }
        if !acked || has_exited(new) {
            // Its exit may not have been reaped yet.
            kill(new);
            let why = "the new worker died during the freeze".to_string();
            return back_to_old(m, old_alive, old, old_binary, why).await;
        }
        if old_alive {
            send(m, old, ToWorker::Exit).await;
        }
    }
    m.active = Some(new);
    send(m, new, ToWorker::Serve).await;
    report.freeze_cutover_ms = ms(t_freeze);
    report.mutations_held_ms = ms(t_held);
    tracing::debug!(
        quiesce_ms = report.quiesce_ms,
        takeover_ms = report.takeover_ms,
        freeze_cutover_ms = report.freeze_cutover_ms,
        "cut over"
    );
    // PROBATION (the old generation leaves meanwhile)
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
            Some(Event::Exited(pid, _)) if pid == old => {
                m.workers.remove(&old);
            }
            Some(Event::Msg(pid, ToMaster::Conn(c), fds)) if pid == old => {
                m.park(c, fds);
                m.flush_pending(new).await;
            }
            Some(ev) => {
                if let Some(e) = other(m, ev, new, old).await {
                    return Err(e);
                }
            }
        }
    }
    if m.workers.contains_key(&old) {
        tracing::warn!(
            pid = old,
            "the old worker did not leave when told: killing it"
        );
        kill(old);
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

/// Rollback before the old generation left: it takes the store back (if it had released
/// it) and serves the connections waiting here. Returns `why`.
async fn resume(m: &mut Master, old: i32, why: String) -> String {
    send(m, old, ToWorker::Resume).await;
    m.flush_pending(old).await;
    why
}

/// Rollback after the old generation released the store: it resumes if it still runs,
/// else a worker of the old binary is started.
async fn back_to_old(
    m: &mut Master,
    old_alive: bool,
    old: i32,
    old_binary: PathBuf,
    why: String,
) -> Result<(), String> {
    if old_alive {
        Err(resume(m, old, why).await)
    } else {
        rollback_cold(m, old_binary, why).await
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
/// control protocols of what runs now. The master reaps every child: this one's exit comes
/// as an event like a worker's.
async fn preflight(m: &mut Master, old: i32, binary: &PathBuf) -> Result<(), String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = std::process::Command::new(binary)
        .arg("preflight")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("preflight: cannot run {}: {e}", binary.display()))?;
    let pid = child.id() as i32;
    super::set_worker_pid(pid, true);
    let read = |r: Option<Box<dyn Read + Send>>| {
        tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + PREFLIGHT_TIMEOUT;
    let status = loop {
        match m.next_event(deadline).await {
            None => {
                kill(pid);
                return Err(format!(
                    "preflight: {} did not answer in time",
                    binary.display()
                ));
            }
            Some(Event::Exited(p, status)) if p == pid => break status,
            Some(ev) => {
                if let Some(e) = other(m, ev, pid, old).await {
                    return Err(format!("{e} during the preflight"));
                }
            }
        }
    };
    let out = stdout.await.unwrap_or_default();
    let err = stderr.await.unwrap_or_default();
    if status != "exit status 0" {
        return Err(format!(
            "preflight: {} failed ({status}): {}",
            binary.display(),
            String::from_utf8_lossy(&err).trim()
        ));
    }
    let p: crate::upgrade_cli::Preflight = serde_json::from_slice(&out).map_err(|e| {
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
