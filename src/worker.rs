//! A worker generation: the API server and all logic, started by the master with the
//! listening sockets and a control channel (DESIGN "Processes", "Live upgrade").
//!
//! A `worker` opens the store and serves at once (first start, or a respawn after a crash).
//! A `successor` (live upgrade) warms up at low CPU priority while the current generation
//! serves and reports `Warm`. The current generation is then told to `Release`: it lets
//! its mutations finish, closes the store and answers reads only. The successor, told to
//! `TakeOver`, opens the store, reconnects to the shims and accepts connections, answering
//! reads and holding mutations until `Serve`: the master sends that once the previous
//! generation has `Freeze`d (stopped accepting, handed its connections over) — there is no
//! moment in which no generation accepts, and no client reads an older state after a
//! change. A rollback `Resume`s the previous generation, which takes the store back.

use crate::config::Config;
use crate::ctl::{self, Channel, ConnMsg, Resume, ToMaster, ToWorker};
use crate::server::http::{self, Gate, Phase};
use crate::server::{router::Router, Daemon};
use anyhow::Context;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Messages to the master, in order (connections before `Frozen`).
pub type CtlOut = mpsc::UnboundedSender<(ToMaster, Vec<OwnedFd>)>;

/// Injects the fault named in `BERTH_FAULT` when `point` matches (tests only): `exit`
/// leaves at once, `panic` panics, `hang` stops making progress, `delay` stalls for 3 s,
/// `crash` aborts.
pub fn fault(point: &str) {
    let Ok(spec) = std::env::var(ctl::ENV_FAULT) else {
        return;
    };
    let Some((at, action)) = spec.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    tracing::warn!(point, action, "injecting fault");
    match action {
        "exit" => std::process::exit(3),
        "panic" => panic!("injected fault at {point}"),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "delay" => std::thread::sleep(std::time::Duration::from_secs(3)),
        _ => std::process::abort(),
    }
}

/// Whether this process was started by a master as a worker.
pub fn is_worker() -> bool {
    std::env::var_os(ctl::ENV_ROLE).is_some()
}

/// Runs a worker generation until the master tells it to leave.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::server::init_tracing(&config.log_level);
    let successor = std::env::var(ctl::ENV_ROLE).as_deref() == Ok("successor");
    let generation: u64 = std::env::var(ctl::ENV_GENERATION)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1);
    let listeners: i32 = std::env::var(ctl::ENV_LISTENERS)
        .ok()
        .and_then(|n| n.parse().ok())
        .context("BERTH_LISTENERS is not set")?;
    for k in [ctl::ENV_ROLE, ctl::ENV_GENERATION, ctl::ENV_LISTENERS] {
        std::env::remove_var(k);
    }
    fault("start");
    // SAFETY: the master placed the control socket at fd 3 and the listeners after it;
    // nothing else in this process owns them.
    #[allow(unsafe_code)]
    let (ctl_fd, listen_fds) = unsafe {
        (
            OwnedFd::from_raw_fd(ctl::CTL_FD),
            (0..listeners)
                .map(|i| OwnedFd::from_raw_fd(ctl::CTL_FD + 1 + i))
                .collect::<Vec<_>>(),
        )
    };
    for fd in std::iter::once(&ctl_fd).chain(listen_fds.iter()) {
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    crate::server::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .context("start runtime")?;
    rt.block_on(serve(config, generation, successor, ctl_fd, listen_fds))
}

async fn serve(
    config: Config,
    generation: u64,
    successor: bool,
    ctl_fd: OwnedFd,
    listen_fds: Vec<OwnedFd>,
) -> anyhow::Result<()> {
    let ctl = Arc::new(Channel::new(ctl_fd).context("control channel")?);
    let (out, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(send_loop(ctl.clone(), out_rx));
    let _ = out.send((
        ToMaster::Hello {
            generation,
            ctl_protocol: ctl::CTL_PROTOCOL_VERSION,
            store_format: crate::store::FORMAT_VERSION,
            shim_protocol: (
                berth_api::shim::SHIM_PROTOCOL_MIN,
                berth_api::shim::SHIM_PROTOCOL_VERSION,
            ),
        },
        Vec::new(),
    ));
    let (mut clean, mut hold) = (false, false);
    if successor {
        fault("warmup");
        let _ = out.send((ToMaster::Warm, Vec::new()));
        match ctl.recv::<ToWorker>().await {
            Ok(Some((ToWorker::TakeOver { clean: c, hold: h }, _))) => (clean, hold) = (c, h),
            Ok(Some((other, _))) => anyhow::bail!("expected TakeOver, got {other:?}"),
            Ok(None) => anyhow::bail!("the master went away before the take-over"),
            Err(e) => return Err(e).context("read the master's take-over"),
        }
        fault("takeover");
        reset_priority();
    }
    let t0 = Instant::now();
    let gate = Gate::new();
    if hold {
        gate.set_phase(Phase::Held);
    }
    let handed = Arc::new(AtomicUsize::new(0));
    {
        let out = out.clone();
        let handed = handed.clone();
        gate.set_handoff(Arc::new(move |h: http::gate::Handover| {
            handed.fetch_add(1, Ordering::SeqCst);
            let mut msg = ConnMsg::new(&h.bytes, h.resume);
            let mut fds = vec![OwnedFd::from(h.stream)];
            if let Some((req, body)) = h.request {
                msg.request = Some(req);
                fds.push(body);
            }
            let _ = out.send((ToMaster::Conn(msg), fds));
        }));
    }
    let daemon = Daemon::open(config, gate.clone(), Some(out.clone()), clean).await?;
    let t_open = t0.elapsed();
    daemon.containers.restore(clean).await;
    if let Some(e) = daemon.containers.elastic.get() {
        crate::resources::elastic::controller::spawn(e.clone(), daemon.containers.clone());
    }
    if let Some(root) = daemon.config.lxcfs.clone() {
        crate::lxcfs::watch::spawn(daemon.containers.clone(), root);
    }
    tracing::debug!(open = ?t_open, restore = ?(t0.elapsed() - t_open), "worker start-up phases");
    let router = Arc::new(Router::new(daemon.clone()));
    let mut accepting = Vec::new();
    for fd in listen_fds {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true).context("listener nonblocking")?;
        let l = tokio::net::UnixListener::from_std(l).context("listener into tokio")?;
        accepting.push(tokio::spawn(accept_loop(l, router.clone(), gate.clone())));
    }
    let startup_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = out.send((ToMaster::Serving { startup_ms }, Vec::new()));
    tracing::info!(generation, startup_ms, hold, "worker serving");
    if !hold {
        fault("serving");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    loop {
        let msg = tokio::select! {
            m = ctl.recv::<ToWorker>() => m,
            _ = term.recv() => Ok(None),
        };
        match msg {
            Ok(Some((ToWorker::Conn(c), fds))) => adopt_conn(&router, &gate, fds, c),
            Ok(Some((ToWorker::Release, _))) => {
                let t_q = Instant::now();
                let error = release(&daemon, &gate)
                    .await
                    .err()
                    .map(|e| format!("{e:#}"));
                let quiesce_ms = t_q.elapsed().as_secs_f64() * 1000.0;
                if let Some(e) = &error {
                    tracing::error!(error = %e, "release the store; serving on");
                    gate.set_phase(Phase::Serving);
                }
                let _ = out.send((ToMaster::Released { quiesce_ms, error }, Vec::new()));
            }
            // A held successor hears when the previous generation freezes and acknowledges:
            // the master tells the previous one to leave only while this one is alive.
            Ok(Some((ToWorker::Freeze, _))) if gate.phase() == Phase::Held => {
                fault("freeze");
                let _ = out.send((ToMaster::Warm, Vec::new()));
            }
            Ok(Some((ToWorker::Freeze, _))) => {
                let t_q = Instant::now();
                if gate.phase() == Phase::Serving {
                    gate.set_phase(Phase::Quiescing);
                    gate.mutations_done().await;
                }
                let quiesce_ms = t_q.elapsed().as_secs_f64() * 1000.0;
                let t_f = Instant::now();
                gate.set_phase(Phase::Frozen);
                gate.all_done().await;
                let drain = t_f.elapsed();
                if let Err(e) = daemon.store.flush() {
                    tracing::error!(error = %e, "flush the store at freeze");
                }
                let freeze_ms = t_f.elapsed().as_secs_f64() * 1000.0;
                tracing::debug!(
                    quiesce_ms,
                    drain_ms = drain.as_secs_f64() * 1000.0,
                    flush_ms = freeze_ms - drain.as_secs_f64() * 1000.0,
                    "freeze phases"
                );
                let conns = handed.swap(0, Ordering::SeqCst);
                let _ = out.send((
                    ToMaster::Frozen {
                        conns,
                        quiesce_ms,
                        freeze_ms,
                    },
                    Vec::new(),
                ));
                fault("frozen");
            }
            Ok(Some((ToWorker::Resume, _))) => {
                tracing::warn!("upgrade rolled back; serving again");
                if let Err(e) = daemon.store.reacquire().await {
                    // Nothing can be written: leave, the master starts a worker that opens
                    // the store afresh.
                    tracing::error!(error = %format!("{e:#}"), "take the store back");
                    std::process::exit(1);
                }
                gate.set_phase(Phase::Serving);
            }
            Ok(Some((ToWorker::Serve, _))) => {
                gate.set_phase(Phase::Serving);
                tracing::info!(
                    generation,
                    "serving mutations: the previous generation froze"
                );
                fault("serving");
            }
            Ok(Some((ToWorker::Exit, _))) => {
                // Only a frozen generation is told to exit: nothing is in flight, the
                // store is flushed or handed over, every connection was handed over.
                tracing::info!(generation, "worker leaving; the next generation serves");
                std::process::exit(0);
            }
            Ok(Some((ToWorker::TakeOver { .. }, _))) => {}
            Ok(None) | Err(_) => {
                // The master is gone (or SIGTERM): finish what was admitted, then leave
                // so that the next master's worker can open the store.
                tracing::warn!("master gone or SIGTERM: worker draining");
                relinquish_memory(&daemon);
                gate.orphan();
                gate.set_phase(Phase::Frozen);
                // Close this process's copies of the listeners at once: the socket stays
                // open where systemd (or the next master) holds it.
                for a in &accepting {
                    a.abort();
                }
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), gate.all_done()).await;
                let _ = daemon.store.flush();
                std::process::exit(0);
            }
        }
    }
}

/// The daemon stops for good: no controller follows to grant memory to an elastic
/// container waiting at its limit, so the kernel's OOM killer takes over again.
fn relinquish_memory(daemon: &Daemon) {
    let Some(e) = daemon.containers.elastic.get() else {
        return;
    };
    let elastic: Vec<(String, u64)> = daemon
        .containers
        .all()
        .iter()
        .filter(|r| r.state.status.is_live())
        .filter_map(|r| {
            e.bounds(r)
                .map(|(_, c)| (daemon.containers.paths.cgroup_path(&r.id), c))
        })
        .collect();
    e.relinquish(&elastic);
}

/// Hands the store to the next generation: new mutations are parked, admitted ones (and
/// background work) finish, background work stops, then the store is flushed and closed.
/// Reads go on being answered throughout.
async fn release(daemon: &Daemon, gate: &Gate) -> anyhow::Result<()> {
    gate.set_phase(Phase::Quiescing);
    gate.mutations_done().await;
    // Background work admitted while quiescing finished; none starts from here on.
    gate.set_phase(Phase::Released);
    gate.mutations_done().await;
    daemon.store.release().context("close the store")?;
    tracing::info!("store released to the next generation; answering reads only");
    Ok(())
}

/// Writes the queued messages to the master, each with its fds (closed once sent).
async fn send_loop(ctl: Arc<Channel>, mut rx: mpsc::UnboundedReceiver<(ToMaster, Vec<OwnedFd>)>) {
    while let Some((msg, fd)) = rx.recv().await {
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = ctl.send(&msg, &fds).await {
            tracing::error!(error = %e, "send to the master");
        }
    }
}

async fn accept_loop(l: tokio::net::UnixListener, router: Arc<Router>, gate: Arc<Gate>) {
    let mut phase = gate.watch();
    loop {
        if phase.wait_for(|p| *p != Phase::Frozen).await.is_err() {
            return;
        }
        // The loop counts as a connection while it may accept (raised before the phase is
        // checked): a freeze waits until it has stopped accepting or the connection it
        // accepted was handed over, so no hand-over can follow the `Frozen` report.
        let guard = gate.enter_conn();
        if gate.phase() == Phase::Frozen {
            continue;
        }
        let accepted = tokio::select! {
            r = l.accept() => Some(r),
            _ = phase.wait_for(|p| *p == Phase::Frozen) => None,
        };
        match accepted {
            Some(Ok((s, _))) => {
                let router = router.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    http::serve_conn(s, &*router, &gate, Vec::new(), guard).await
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            None => {}
        }
    }
}

/// Serves a connection handed over by the previous generation (`fds`: the socket, then the
/// body file of a parked request).
fn adopt_conn(router: &Arc<Router>, gate: &Arc<Gate>, fds: Vec<OwnedFd>, msg: ConnMsg) {
    let mut fds = fds.into_iter();
    let Some(fd) = fds.next() else { return };
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    if let Err(e) = std_stream.set_nonblocking(true) {
        tracing::warn!(error = %e, "adopted connection");
        return;
    }
    let Ok(stream) = tokio::net::UnixStream::from_std(std_stream) else {
        return;
    };
    let body = fds.next().map(std::fs::File::from);
    let router = router.clone();
    let gate = gate.clone();
    let guard = gate.enter_conn();
    tokio::spawn(async move {
        let bytes = match msg.bytes() {
            Ok(b) => b,
            // Dropping it closes the client's connection: better than answering a request
            // other than the one it sent.
            Err(e) => {
                tracing::error!(error = %e, "decode the bytes of a handed-over connection");
                return;
            }
        };
        match (msg.resume, msg.request, body) {
            (Some(Resume::Events { query, after_seq }), _, _) => {
                match crate::server::events::resumable_stream(router.daemon(), &query, after_seq) {
                    Ok((rx, r)) => {
                        http::continue_stream(stream, &*router, &gate, rx, r, guard).await
                    }
                    Err(e) => tracing::warn!(error = %e, "resume an events stream"),
                }
            }
            (None, Some(req), Some(body)) => {
                tracing::debug!(method = %req.method, target = %req.raw_target, "answering a request handed over with its body");
                http::serve_parked(stream, &*router, &gate, req, body, bytes, guard).await
            }
            (None, Some(_), None) => {
                tracing::error!("a handed-over request came without its body");
            }
            (None, None, _) => http::serve_conn(stream, &*router, &gate, bytes, guard).await,
        }
    });
}

/// A successor ran at low priority while it warmed up; now it is the one that serves.
fn reset_priority() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            // SAFETY: setpriority on one of our own threads; no memory is passed.
            #[allow(unsafe_code)]
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, 0);
            }
        }
    }
}
