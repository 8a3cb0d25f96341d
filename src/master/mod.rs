//! The master: a small process that keeps its PID for the life of the host (systemd's
//! MAINPID), holds the listening sockets (never closed or re-bound: invariant 4), is the
//! child subreaper of every shim, starts worker generations, respawns a worker that dies
//! and runs live upgrades (DESIGN "Processes", "Live upgrade"). It parses no HTTP: the one
//! request it answers, `POST /berth/upgrade`, reaches it as a connection handed over by
//! the worker, and it writes a fixed response.

pub mod notify;
pub mod reap;
pub mod reexec;
pub mod spawn;
pub mod upgrade;

use crate::config::Config;
use crate::ctl::{Channel, ConnMsg, ToMaster, ToWorker};
use anyhow::Context;
use spawn::{spawn_worker, Role};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Something that happened to the master.
#[derive(Debug)]
pub enum Event {
    /// A worker sent a message.
    Msg(i32, ToMaster, Vec<OwnedFd>),
    /// A worker closed its control channel.
    Closed(i32),
    /// A worker process exited.
    Exited(i32, String),
    /// SIGTERM or SIGINT.
    Stop,
}

/// What the master knows of one worker.
pub struct Worker {
    /// Generation number.
    pub generation: u64,
    /// The binary it runs.
    pub binary: PathBuf,
    /// Its control channel.
    pub ctl: Arc<Channel>,
    /// Store format it reported.
    pub store_format: Option<u32>,
    /// Shim protocol range it reported.
    pub shim_protocol: Option<(u32, u32)>,
    /// When it reported serving.
    pub serving_since: Option<Instant>,
}

/// Back-off before respawning a worker that died young, doubling up to the maximum.
const RESPAWN_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that served this long is respawned at once when it dies.
const RESPAWN_STABLE: Duration = Duration::from_secs(1);

/// The master's state.
pub struct Master {
    config: Config,
    args: Vec<OsString>,
    binary: PathBuf,
    listeners: Vec<OwnedFd>,
    workers: HashMap<i32, Worker>,
    active: Option<i32>,
    generation: u64,
    /// Handed-over connections (the socket, then a parked request's body file, if any).
    pending: VecDeque<(ConnMsg, Vec<OwnedFd>)>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    notified_ready: bool,
    /// An upgrade runs: handed-over connections wait until it knows who serves next.
    upgrading: bool,
    /// The instance lock (kept across a re-exec).
    lock: std::fs::File,
}

/// Runs the master until SIGTERM/SIGINT. `args` are the daemon's arguments, given to every
/// worker as they are.
pub fn run(config: Config, args: Vec<OsString>) -> anyhow::Result<()> {
    crate::server::init_tracing(&config.log_level);
    // SAFETY: prctl with integer arguments.
    #[allow(unsafe_code)]
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("become child subreaper");
    }
    for d in [&config.data_root, &config.exec_root] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let previous = reexec::take_state();
    let (lock, listeners, binary) = match &previous {
        Some(st) => {
            let (lock, listeners) = st.take_fds();
            (lock, listeners, st.binary().to_path_buf())
        }
        None => {
            let lock = instance_lock(&config)?;
            let listeners: Vec<OwnedFd> = crate::listener::open_all(&config.hosts)
                .context("open listeners")?
                .into_iter()
                .map(OwnedFd::from)
                .collect();
            let binary = std::env::current_exe().context("find the berthd binary")?;
            (lock, listeners, binary)
        }
    };
    if let Some(p) = &config.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    let pidfile = config.pidfile.clone();
    let res = rt.block_on(async move {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut m = Master {
            config,
            args,
            binary,
            listeners,
            workers: HashMap::new(),
            active: None,
            generation: 0,
            pending: VecDeque::new(),
            events_tx,
            events,
            notified_ready: false,
            upgrading: false,
            lock,
        };
        match previous {
            Some(st) => {
                st.adopt_workers(&mut m)?;
                tracing::info!(
                    pid = std::process::id(),
                    "master re-executed; workers adopted"
                );
            }
            None => {
                m.start_worker(m.binary.clone(), Role::Worker, None)?;
            }
        }
        m.run().await
    });
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
    res
}

/// One master per exec root: a second one exits with an error instead of fighting over
/// the store and the shims.
fn instance_lock(config: &Config) -> anyhow::Result<std::fs::File> {
    let path = config.exec_root.join("berthd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    #[allow(unsafe_code)]
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        anyhow::bail!(
            "another berthd is running on exec root {} (lock {} is held)",
            config.exec_root.display(),
            path.display()
        );
    }
    Ok(f)
}

impl Master {
    async fn run(&mut self) -> anyhow::Result<()> {
        self.spawn_signal_tasks()?;
        let mut backoff = RESPAWN_BACKOFF_MIN;
        loop {
            let Some(ev) = self.events.recv().await else {
                return Ok(());
            };
            match ev {
                Event::Stop => return self.stop().await,
                Event::Msg(pid, ToMaster::Upgrade(params), fds) => {
                    let Some(client) = fds.into_iter().next() else {
                        continue;
                    };
                    if Some(pid) != self.active {
                        upgrade::reply(client, 409, &upgrade::busy());
                        continue;
                    }
                    self.upgrading = true;
                    upgrade::run(self, params, client).await;
                    self.upgrading = false;
                    if let Some(a) = self.active {
                        self.flush_pending(a).await;
                    }
                }
                Event::Msg(pid, msg, fds) => self.on_msg(pid, msg, fds).await,
                Event::Exited(pid, status) => {
                    let was_active = self.active == Some(pid);
                    let served = self.workers.remove(&pid).and_then(|w| w.serving_since);
                    if was_active {
                        // A worker that had served a while died of something rare: its
                        // clients wait in the listen backlog, start the next one at once.
                        // One that died young is likely to die again: back off, doubling.
                        let stable = served.is_some_and(|t| t.elapsed() >= RESPAWN_STABLE);
                        let delay = if stable { Duration::ZERO } else { backoff };
                        backoff = if stable {
                            RESPAWN_BACKOFF_MIN
                        } else {
                            (backoff * 2).min(RESPAWN_BACKOFF_MAX)
                        };
                        tracing::error!(pid, %status, ?delay, "worker died; starting a new one");
                        self.active = None;
                        tokio::time::sleep(delay).await;
                        if let Err(e) = self.start_worker(self.binary.clone(), Role::Worker, None) {
                            tracing::error!(error = %e, "respawn worker");
                        }
                    }
                }
                Event::Closed(_) => {}
            }
        }
    }

    /// Handles a message outside an upgrade.
    pub(crate) async fn on_msg(&mut self, pid: i32, msg: ToMaster, fds: Vec<OwnedFd>) {
        match msg {
            ToMaster::Hello {
                generation,
                store_format,
                shim_protocol,
                ..
            } => {
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.store_format = Some(store_format);
                    w.shim_protocol = Some(shim_protocol);
                }
                tracing::debug!(pid, generation, "worker hello");
            }
            ToMaster::Serving { startup_ms } => {
                tracing::info!(pid, startup_ms, "worker serving");
                self.mark_serving(pid);
                if self.active == Some(pid) {
                    self.flush_pending(pid).await;
                    if !self.notified_ready {
                        self.notified_ready = true;
                        notify::notify(&format!(
                            "READY=1\nMAINPID={}\nSTATUS=serving",
                            std::process::id()
                        ));
                    }
                }
            }
            ToMaster::Conn(c) => {
                // A connection outside an upgrade (a worker that froze on its own):
                // give it to whoever serves.
                self.park(c, fds);
                if let (Some(a), false) = (self.active, self.upgrading) {
                    self.flush_pending(a).await;
                }
            }
            ToMaster::Upgrade(_)
            | ToMaster::Warm
            | ToMaster::Released { .. }
            | ToMaster::Frozen { .. } => {}
        }
    }

    /// Notes that worker `pid` serves (see [`RESPAWN_STABLE`]).
    pub(crate) fn mark_serving(&mut self, pid: i32) {
        if let Some(w) = self.workers.get_mut(&pid) {
            w.serving_since = Some(Instant::now());
        }
    }

    /// Keeps a handed-over connection for the generation that serves next.
    pub(crate) fn park(&mut self, c: ConnMsg, fds: Vec<OwnedFd>) {
        if !fds.is_empty() {
            self.pending.push_back((c, fds));
        }
    }

    /// Sends the connections waiting in the master to worker `pid`.
    pub(crate) async fn flush_pending(&mut self, pid: i32) {
        let Some(w) = self.workers.get(&pid) else {
            return;
        };
        let ctl = w.ctl.clone();
        while let Some((c, fds)) = self.pending.pop_front() {
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = ctl.send(&ToWorker::Conn(c), &raw).await {
                tracing::error!(pid, error = %e, "hand a connection to the worker");
            }
        }
    }

    /// Starts a worker process and follows its control channel.
    pub(crate) fn start_worker(
        &mut self,
        binary: PathBuf,
        role: Role,
        fault: Option<&str>,
    ) -> anyhow::Result<i32> {
        self.generation += 1;
        let s = spawn_worker(
            &binary,
            &self.args,
            &self.listeners,
            self.generation,
            role,
            fault,
        )?;
        let ctl = Arc::new(s.ctl);
        let pid = s.pid;
        set_worker_pid(pid, true);
        self.workers.insert(
            pid,
            Worker {
                generation: self.generation,
                binary,
                ctl: ctl.clone(),
                store_format: None,
                shim_protocol: None,
                serving_since: None,
            },
        );
        if role == Role::Worker {
            self.active = Some(pid);
        }
        self.follow(pid, ctl);
        tracing::info!(pid, generation = self.generation, ?role, "worker started");
        Ok(pid)
    }

    /// Reads worker `pid`'s control channel into the event queue.
    pub(crate) fn follow(&self, pid: i32, ctl: Arc<Channel>) {
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            loop {
                match ctl.recv::<ToMaster>().await {
                    Ok(Some((msg, fds))) => {
                        if tx.send(Event::Msg(pid, msg, fds)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = tx.send(Event::Closed(pid));
                        return;
                    }
                }
            }
        });
    }

    fn spawn_signal_tasks(&self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut chld = signal(SignalKind::child()).context("install SIGCHLD handler")?;
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(Event::Stop);
        });
        let tx = self.events_tx.clone();
        let exec_root = self.config.exec_root.clone();
        tokio::spawn(async move {
            loop {
                for (pid, status) in reap::reap_all(&exec_root, &worker_pids()) {
                    set_worker_pid(pid, false);
                    let _ = tx.send(Event::Exited(pid, status));
                }
                if chld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// The next event, or `None` at `deadline`.
    pub(crate) async fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        tokio::time::timeout_at(deadline.into(), self.events.recv())
            .await
            .ok()
            .flatten()
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        tracing::info!("berthd stopping; containers keep running under their shims");
        for pid in self.workers.keys() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.workers.is_empty() {
            match self.next_event(deadline).await {
                Some(Event::Exited(pid, _)) => {
                    self.workers.remove(&pid);
                }
                Some(_) => {}
                None => break,
            }
        }
        Ok(())
    }
}

/// Worker pids, which the reaper reports instead of recording: a process-wide set so the
/// reaper task can read it without borrowing the master (one thread: no reap can run
/// between a spawn and its registration).
static WORKER_PIDS: std::sync::Mutex<Option<HashSet<i32>>> = std::sync::Mutex::new(None);

fn worker_pids() -> HashSet<i32> {
    WORKER_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

pub(crate) fn set_worker_pid(pid: i32, present: bool) {
    let mut g = WORKER_PIDS.lock().unwrap_or_else(|e| e.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if present {
        set.insert(pid);
    } else {
        set.remove(&pid);
    }
}
