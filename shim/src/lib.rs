//! berth-shim: the per-container monitor (DESIGN.md "The shim").
//!
//! Start-up, all before any async runtime exists (libcontainer forks from the calling
//! thread): read the config, point tracing at `shim_log`, become a child subreaper, make the
//! container's stdio (pipes, or a pty via libcontainer's console socket), create the
//! container (init blocked in "created"), bind the control socket (mode 0700). Then a
//! current-thread tokio runtime writes `ShimReady` on fd 3 and serves: output drain into the
//! json-file log and to clients, reaping, and the control socket ([`server`]).
//!
//! Command line: `berth-shim --config <shim-dir>/config.json`, fd 3 = readiness pipe (one
//! JSON line, [`berth_api::shim::ShimReady`]; read one line, do not wait for end of file: the
//! created init holds a copy of the pipe until it starts).

mod attach;
mod cgfix;
pub mod config;
mod detach;
mod exec;
mod exec_seccomp;
pub mod exit;
mod fdio;
mod hub;
mod jsonlog;
mod outbox;
mod reaper;
mod runtime;
mod server;
mod state;
mod stats;
mod stdio;
mod streams;
mod sys;
mod trim;

use anyhow::{Context, Result};
use berth_api::logfmt::Stream;
use berth_api::shim::{ShimConfig, ShimReady, ShimStatus};
use fdio::FdIo;
use state::{Life, Shim, StdinMsg};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How long a removed shim waits for its streams to finish before it exits.
const REMOVED_GRACE: Duration = Duration::from_secs(2);

/// The readiness pipe: written once.
struct Ready(Option<OwnedFd>);

impl Ready {
    fn send(&mut self, r: &ShimReady) {
        if let Some(fd) = self.0.take() {
            let mut f = std::fs::File::from(fd);
            let mut data = serde_json::to_vec(r).unwrap_or_default();
            data.push(b'\n');
            if let Err(e) = f.write_all(&data) {
                tracing::warn!(error = %e, "write readiness");
            }
        }
    }

    fn fail(&mut self, msg: &str) {
        tracing::error!(error = msg, "shim start failed");
        self.send(&ShimReady {
            pid: None,
            error: Some(msg.to_string()),
        });
    }
}

/// Runs the shim with this command line; returns the process exit code.
pub fn main_entry<I: IntoIterator<Item = OsString>>(argv: I) -> i32 {
    let mut ready = Ready(sys::take_ready_fd());
    match run(argv, &mut ready) {
        Ok(code) => code,
        Err(e) => {
            ready.fail(&format!("{e:#}"));
            1
        }
    }
}

fn init_tracing(cfg: &ShimConfig) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.shim_log);
    let Ok(file) = file else { return };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // libcgroups warns about every controller the host lacks, on each cgroup access.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("libcgroups", tracing::Level::ERROR);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(%info, "panic");
    }));
}

fn run<I: IntoIterator<Item = OsString>>(argv: I, ready: &mut Ready) -> Result<i32> {
    let args = config::parse_args(argv)?;
    let cfg = config::load(&args.config)?;
    init_tracing(&cfg);
    tracing::info!(id = %cfg.id, "shim starting");
    nix::sys::prctl::set_child_subreaper(true).context("set child subreaper")?;
    sys::default_sigpipe().context("reset SIGPIPE")?;
    let spec = runtime::load_spec(&cfg.bundle)?;
    let cgroups_path = runtime::cgroups_path(&spec);
    let log = cfg
        .log
        .clone()
        .map(jsonlog::JsonLog::open)
        .transpose()
        .context("open the json-file log")?;

    let dir = config::shim_dir(&cfg);
    let (parent, child, console) = if cfg.tty {
        let cs = stdio::ConsoleSocket::bind(&dir.join("console.sock"))?;
        (stdio::ParentIo::default(), None, Some(cs))
    } else {
        let (p, c) = stdio::pipes(cfg.open_stdin, true, true)?;
        (p, Some(c), None)
    };
    let mut container = match runtime::create_init(&cfg, child, console.as_ref().map(|c| c.path()))
    {
        Ok(c) => c,
        Err(msg) => {
            ready.fail(&msg);
            return Ok(1);
        }
    };
    let abort = |c: &mut libcontainer::container::Container, e: anyhow::Error| {
        let _ = c.delete(true);
        e
    };
    let init_pid = match container.pid() {
        Some(p) => p.as_raw(),
        None => {
            return Err(abort(
                &mut container,
                anyhow::anyhow!("container has no pid"),
            ))
        }
    };
    let master = match console.as_ref().map(|c| c.receive_master()).transpose() {
        Ok(m) => m,
        Err(e) => return Err(abort(&mut container, e)),
    };
    drop(console);
    if let Some(m) = master.as_ref() {
        apply_console_size(m, &spec);
    }
    let (listener, ctl_ident) = match bind_ctl(&cfg) {
        Ok(l) => l,
        Err(e) => return Err(abort(&mut container, e)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the runtime")?;
    let shim = Shim {
        cfg,
        init_pid,
        cgroups_path,
        container: RefCell::new(Some(container)),
        life: RefCell::new(Life {
            status: ShimStatus::Created,
            started_at_ns: None,
            exit: None,
            acked: false,
            removed: false,
            output_done: false,
            readers_left: 0,
        }),
        hub: RefCell::new(hub::Hub::new(log)),
        stdin: RefCell::new(None),
        pty: None,
        outputs: Vec::new(),
        execs: RefCell::new(HashMap::new()),
        exec_pids: RefCell::new(HashMap::new()),
        subscribers: RefCell::new(Vec::new()),
        changed: watch::channel(0).0,
        streams: Cell::new(0),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        serve(shim, parent, master, (listener, ctl_ident), ready),
    )
}

/// Gives the pty the spec's `process.consoleSize` before the process starts (libcontainer
/// does not apply it), so the first `stty size` sees the CLI's terminal size.
fn apply_console_size(master: &OwnedFd, spec: &libcontainer::oci_spec::runtime::Spec) {
    let Some(size) = spec.process().as_ref().and_then(|p| p.console_size()) else {
        return;
    };
    let rows = u16::try_from(size.height()).unwrap_or(u16::MAX);
    let cols = u16::try_from(size.width()).unwrap_or(u16::MAX);
    if let Err(e) = sys::set_winsize(std::os::fd::AsRawFd::as_raw_fd(master), rows, cols) {
        tracing::warn!(error = %e, "set the initial tty size");
    }
}

/// Device and inode of a path, to tell our control socket from a successor's.
fn path_ident(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Binds the control socket; returns it with the identity of its path.
fn bind_ctl(cfg: &ShimConfig) -> Result<(OwnedFd, Option<(u64, u64)>)> {
    let fd = berth_api::transport::listen(&cfg.ctl_socket)
        .with_context(|| format!("bind control socket {}", cfg.ctl_socket.display()))?;
    std::fs::set_permissions(&cfg.ctl_socket, std::fs::Permissions::from_mode(0o700))
        .context("chmod control socket")?;
    sys::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((fd, path_ident(&cfg.ctl_socket)))
}

/// Reads one output source of the container into the hub until end of stream.
async fn drain(shim: Rc<Shim>, src: Rc<FdIo>, stream: Stream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                shim.hub
                    .borrow_mut()
                    .output(stream, &buf[..n], exit::now_ns());
                // Let the clients' writers send this chunk before the next one is read: a
                // busy pipe (1 MiB) read in one go would overflow a client's queue even when
                // the client keeps up.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?stream, "read container output");
                break;
            }
        }
    }
    shim.hub.borrow_mut().eof(stream, exit::now_ns());
    {
        let mut life = shim.life.borrow_mut();
        life.readers_left = life.readers_left.saturating_sub(1);
    }
    shim.bump();
}

async fn serve(
    mut shim: Shim,
    parent: stdio::ParentIo,
    master: Option<OwnedFd>,
    (listener, ctl_ident): (OwnedFd, Option<(u64, u64)>),
    ready: &mut Ready,
) -> Result<i32> {
    let sigchld = signal(SignalKind::child()).context("watch SIGCHLD")?;
    // A handled SIGPIPE makes writes to closed peers fail with EPIPE, and (unlike an ignored
    // one) is reset to the default in processes we exec.
    let _sigpipe = signal(SignalKind::pipe()).context("handle SIGPIPE")?;
    let mut sources: Vec<(Rc<FdIo>, Stream)> = Vec::new();
    let mut stdin_sink = None;
    if let Some(m) = master {
        let m = Rc::new(FdIo::new(m).context("register the pty")?);
        shim.pty = Some(m.clone());
        sources.push((m.clone(), Stream::Stdout));
        if shim.cfg.open_stdin {
            stdin_sink = Some((m, false));
        }
    } else {
        if let Some(fd) = parent.stdout {
            sources.push((Rc::new(FdIo::new(fd)?), Stream::Stdout));
        }
        if let Some(fd) = parent.stderr {
            sources.push((Rc::new(FdIo::new(fd)?), Stream::Stderr));
        }
        if let Some(fd) = parent.stdin {
            stdin_sink = Some((Rc::new(FdIo::new(fd)?), true));
        }
    }
    if let Some((sink, closable)) = stdin_sink {
        let (tx, rx) = mpsc::channel::<StdinMsg>(attach::STDIN_QUEUE);
        *shim.stdin.borrow_mut() = Some(tx);
        tokio::task::spawn_local(attach::stdin_pump(sink, rx, closable));
    }
    shim.life.borrow_mut().readers_left = sources.len();
    shim.outputs = sources.clone();
    let shim = Rc::new(shim);
    for (src, stream) in sources {
        tokio::task::spawn_local(drain(shim.clone(), src, stream));
    }
    let listener = sys::register(listener).context("register the control socket")?;
    tokio::task::spawn_local(server::accept_loop(shim.clone(), listener));
    tokio::task::spawn_local(reaper::run(shim.clone(), sigchld));
    ready.send(&ShimReady {
        pid: Some(shim.init_pid),
        error: None,
    });
    tracing::info!(pid = shim.init_pid, "container created");

    let mut rx = shim.changed.subscribe();
    loop {
        if shim.done() {
            break;
        }
        if shim.life.borrow().removed {
            let deadline = tokio::time::sleep(REMOVED_GRACE);
            tokio::pin!(deadline);
            while shim.streams.get() > 0 {
                tokio::select! {
                    _ = &mut deadline => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
            break;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    reaper::delete_container(&shim);
    // A shim started for the container's next run may have bound the same path since:
    // remove the socket only while it is still ours.
    if ctl_ident.is_some() && path_ident(&shim.cfg.ctl_socket) == ctl_ident {
        let _ = std::fs::remove_file(&shim.cfg.ctl_socket);
    }
    tracing::info!("shim exiting");
    Ok(0)
}
