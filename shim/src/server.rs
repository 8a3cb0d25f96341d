//! The control socket: accepts daemon connections (peer uid checked), checks the hello's
//! protocol version and answers requests; hand-over requests spawn a task that serves the
//! passed client connection to its end.

use crate::exec;
use crate::reaper::delete_container;
use crate::runtime;
use crate::state::Shim;
use crate::sys;
use crate::{attach, streams};
use berth_api::shim::{
    ShimErrorKind, ShimEvent, ShimRequest, ShimResponse, ShimStatus, SHIM_PROTOCOL_MIN,
    SHIM_PROTOCOL_VERSION,
};
use berth_api::transport;
use nix::sys::signal::Signal;
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::Pid;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

fn err(kind: ShimErrorKind, message: impl Into<String>) -> ShimResponse {
    ShimResponse::Error {
        kind,
        message: message.into(),
    }
}

/// Accepts connections forever.
pub async fn accept_loop(shim: Rc<Shim>, listener: AsyncFd<OwnedFd>) {
    loop {
        let mut guard = match listener.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "control socket failed");
                return;
            }
        };
        match guard.try_io(|l| sys::accept(l.get_ref().as_raw_fd())) {
            Ok(Ok(fd)) => {
                let shim = shim.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = serve_conn(shim, fd).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "accept on the control socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_would_block) => {}
        }
    }
}

async fn recv_msg(sock: &AsyncFd<OwnedFd>) -> io::Result<Option<(ShimRequest, Vec<OwnedFd>)>> {
    loop {
        let mut guard = sock.readable().await?;
        match guard.try_io(|s| transport::recv(s.get_ref().as_fd())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn send_msg(sock: &AsyncFd<OwnedFd>, msg: &ShimResponse) -> io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|s| transport::send(s.get_ref().as_fd(), msg, &[])) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn next_event(rx: &mut Option<mpsc::UnboundedReceiver<ShimEvent>>) -> Option<ShimEvent> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a peer may talk to us: root, or our own uid.
pub fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

async fn serve_conn(shim: Rc<Shim>, fd: OwnedFd) -> io::Result<()> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials)?;
    if !peer_allowed(cred.uid()) {
        tracing::warn!(uid = cred.uid(), "refused a control connection");
        return Ok(());
    }
    let sock = sys::register(fd)?;
    let Some((hello, _)) = recv_msg(&sock).await? else {
        return Ok(());
    };
    let reply = match hello {
        ShimRequest::Hello { version }
            if (SHIM_PROTOCOL_MIN..=SHIM_PROTOCOL_VERSION).contains(&version) =>
        {
            ShimResponse::Hello {
                version: SHIM_PROTOCOL_VERSION,
                shim_pid: std::process::id() as i32,
            }
        }
        ShimRequest::Hello { version } => err(
            ShimErrorKind::InvalidArgument,
            format!(
                "shim protocol version {version} not supported (supported {SHIM_PROTOCOL_MIN}..={SHIM_PROTOCOL_VERSION})"
            ),
        ),
        _ => err(ShimErrorKind::InvalidArgument, "expected Hello first"),
    };
    let ok = matches!(reply, ShimResponse::Hello { .. });
    send_msg(&sock, &reply).await?;
    if !ok {
        return Ok(());
    }
    let mut events = None;
    loop {
        tokio::select! {
            r = recv_msg(&sock) => {
                let Some((req, fds)) = r? else { return Ok(()) };
                let resp = dispatch(&shim, req, fds, &mut events);
                send_msg(&sock, &resp).await?;
            }
            Some(ev) = next_event(&mut events) => {
                send_msg(&sock, &ShimResponse::Event(ev)).await?;
            }
        }
    }
}

fn one_fd(mut fds: Vec<OwnedFd>) -> Result<OwnedFd, ShimResponse> {
    if fds.len() != 1 {
        return Err(err(
            ShimErrorKind::InvalidArgument,
            format!("expected exactly one fd, got {}", fds.len()),
        ));
    }
    Ok(fds.remove(0))
}

fn spawn_stream<F>(what: &'static str, fut: F)
where
    F: Future<Output = io::Result<()>> + 'static,
{
    tokio::task::spawn_local(async move {
        if let Err(e) = fut.await {
            tracing::debug!(error = %e, what, "stream ended with an error");
        }
    });
}

fn dispatch(
    shim: &Rc<Shim>,
    req: ShimRequest,
    fds: Vec<OwnedFd>,
    events: &mut Option<mpsc::UnboundedReceiver<ShimEvent>>,
) -> ShimResponse {
    match req {
        ShimRequest::Hello { .. } => ShimResponse::Hello {
            version: SHIM_PROTOCOL_VERSION,
            shim_pid: std::process::id() as i32,
        },
        ShimRequest::State => ShimResponse::State(shim.state()),
        ShimRequest::Start => start(shim),
        ShimRequest::Kill { signal, all } => kill(shim, signal, all),
        ShimRequest::Pause => pause(shim, true),
        ShimRequest::Resume => pause(shim, false),
        ShimRequest::Resize {
            exec_id,
            height,
            width,
        } => resize(shim, exec_id.as_deref(), height, width),
        ShimRequest::Attach(p) => match one_fd(fds) {
            Ok(fd) => {
                spawn_stream("attach", attach::serve_attach(shim.clone(), fd, p));
                ShimResponse::Ok
            }
            Err(e) => e,
        },
        ShimRequest::Wait { condition } => match one_fd(fds) {
            Ok(fd) => {
                spawn_stream("wait", streams::serve_wait(shim.clone(), fd, condition));
                ShimResponse::Ok
            }
            Err(e) => e,
        },
        ShimRequest::Logs(p) => match one_fd(fds) {
            Ok(fd) => {
                spawn_stream("logs", streams::serve_logs(shim.clone(), fd, p));
                ShimResponse::Ok
            }
            Err(e) => e,
        },
        ShimRequest::Stats(p) => match one_fd(fds) {
            Ok(fd) => {
                spawn_stream("stats", crate::stats::serve_stats(shim.clone(), fd, p));
                ShimResponse::Ok
            }
            Err(e) => e,
        },
        ShimRequest::Exec(p) => {
            let fd = if p.detach {
                None
            } else {
                match one_fd(fds) {
                    Ok(fd) => Some(fd),
                    Err(e) => return e,
                }
            };
            exec::start_exec(shim, p, fd)
        }
        ShimRequest::ExecState { exec_id } => exec::exec_state(shim, &exec_id),
        ShimRequest::Subscribe => {
            let (tx, rx) = mpsc::unbounded_channel();
            let life = shim.life.borrow().clone();
            if let (Some(rec), false) = (life.exit, life.acked) {
                let _ = tx.send(ShimEvent::Exit(rec));
            }
            shim.subscribers.borrow_mut().push(tx);
            *events = Some(rx);
            ShimResponse::Ok
        }
        ShimRequest::AckExit { pid } => {
            let matches = shim
                .life
                .borrow()
                .exit
                .as_ref()
                .is_some_and(|e| e.pid == pid);
            if !matches {
                return err(
                    ShimErrorKind::Conflict,
                    format!("no exit of pid {pid} to acknowledge"),
                );
            }
            shim.life.borrow_mut().acked = true;
            shim.bump();
            ShimResponse::Ok
        }
        ShimRequest::Removed => {
            shim.life.borrow_mut().removed = true;
            if shim.life.borrow().exit.is_none() {
                delete_container(shim);
            }
            shim.bump();
            ShimResponse::Ok
        }
    }
}

fn start(shim: &Shim) -> ShimResponse {
    match shim.status() {
        ShimStatus::Created => {}
        ShimStatus::Exited => return err(ShimErrorKind::Conflict, "container has exited"),
        _ => {
            return err(
                ShimErrorKind::Conflict,
                format!("Container {} is already running", shim.cfg.id),
            )
        }
    }
    let res = match shim.container.borrow_mut().as_mut() {
        Some(c) => c.start(),
        None => return err(ShimErrorKind::Conflict, shim.not_running()),
    };
    match res {
        Ok(()) => {
            let mut life = shim.life.borrow_mut();
            if life.status == ShimStatus::Created {
                life.status = ShimStatus::Running;
            }
            life.started_at_ns = Some(crate::exit::now_ns());
            drop(life);
            shim.bump();
            tracing::info!("container started");
            crate::trim::after_one_off_work();
            ShimResponse::Ok
        }
        Err(e) => err(
            ShimErrorKind::Internal,
            runtime::docker_message(&runtime::error_chain(&e), ""),
        ),
    }
}

fn kill(shim: &Shim, signal: i32, all: bool) -> ShimResponse {
    if !matches!(shim.status(), ShimStatus::Running | ShimStatus::Paused) {
        return err(ShimErrorKind::Conflict, shim.not_running());
    }
    let Ok(sig) = Signal::try_from(signal) else {
        return err(
            ShimErrorKind::InvalidArgument,
            format!("Invalid signal: {signal}"),
        );
    };
    if all {
        let mut guard = shim.container.borrow_mut();
        let Some(c) = guard.as_mut() else {
            return err(ShimErrorKind::Conflict, shim.not_running());
        };
        let res = c.kill(sig, true);
        // libcontainer records "stopped" for any signal; put back what /proc says.
        let _ = c.refresh_status();
        let _ = c.save();
        return match res {
            Ok(()) => ShimResponse::Ok,
            Err(e) => err(ShimErrorKind::Internal, runtime::error_chain(&e)),
        };
    }
    match nix::sys::signal::kill(Pid::from_raw(shim.init_pid), sig) {
        Ok(()) => ShimResponse::Ok,
        Err(nix::errno::Errno::ESRCH) => err(ShimErrorKind::Conflict, shim.not_running()),
        Err(e) => err(ShimErrorKind::Internal, format!("kill: {e}")),
    }
}

fn pause(shim: &Shim, freeze: bool) -> ShimResponse {
    let status = shim.status();
    let id = &shim.cfg.id;
    match (freeze, status) {
        (true, ShimStatus::Running) | (false, ShimStatus::Paused) => {}
        (true, ShimStatus::Paused) => {
            return err(
                ShimErrorKind::Conflict,
                format!("Container {id} is already paused"),
            )
        }
        (false, ShimStatus::Running) => {
            return err(
                ShimErrorKind::Conflict,
                format!("Container {id} is not paused"),
            )
        }
        _ => return err(ShimErrorKind::Conflict, shim.not_running()),
    }
    let res = match shim.container.borrow_mut().as_mut() {
        Some(c) if freeze => c.pause(),
        Some(c) => c.resume(),
        None => return err(ShimErrorKind::Conflict, shim.not_running()),
    };
    match res {
        Ok(()) => {
            let mut life = shim.life.borrow_mut();
            if life.status != ShimStatus::Exited {
                life.status = if freeze {
                    ShimStatus::Paused
                } else {
                    ShimStatus::Running
                };
            }
            drop(life);
            shim.bump();
            ShimResponse::Ok
        }
        Err(e) => err(ShimErrorKind::Internal, runtime::error_chain(&e)),
    }
}

fn resize(shim: &Shim, exec_id: Option<&str>, rows: u16, cols: u16) -> ShimResponse {
    let master = match exec_id {
        Some(id) => match shim.execs.borrow().get(id) {
            None => {
                return err(
                    ShimErrorKind::NotFound,
                    format!("No such exec instance: {id}"),
                )
            }
            Some(e) if !e.running => {
                return err(ShimErrorKind::Conflict, format!("Exec {id} is not running"))
            }
            Some(e) => e.pty.clone(),
        },
        None => {
            if !matches!(shim.status(), ShimStatus::Running | ShimStatus::Paused) {
                return err(ShimErrorKind::Conflict, shim.not_running());
            }
            shim.pty.clone()
        }
    };
    let Some(master) = master else {
        return err(ShimErrorKind::InvalidArgument, "the process has no tty");
    };
    match sys::set_winsize(master.raw(), rows, cols) {
        Ok(()) => ShimResponse::Ok,
        Err(e) => err(ShimErrorKind::Internal, format!("resize tty: {e}")),
    }
}
