//! `docker exec`: a tenant process in the container with pipes or a pty, its output sent to
//! the client that started it (the exec waits for a slow client, as with dockerd: it has no
//! log to fall back on), and its exit code recorded before the stream closes, so an
//! `ExecState` right after end of stream has it.

use crate::attach::{serve_interactive, stdin_pump, Interactive, STDIN_QUEUE};
use crate::config::shim_dir;
use crate::detach::DetachMatcher;
use crate::fdio::FdIo;
use crate::outbox::{Outbox, CLIENT_BUFFER};
use crate::reaper::{exec_exited, DRAIN_GRACE};
use crate::runtime;
use crate::state::{ExecEntry, Shim};
use crate::stdio::{self, ConsoleSocket, ParentIo};
use berth_api::logfmt::{self, Stream};
use berth_api::shim::{ExecParams, ExecState, ShimErrorKind, ShimResponse, ShimStatus};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use tokio::sync::mpsc;

fn err(kind: ShimErrorKind, message: String) -> ShimResponse {
    ShimResponse::Error { kind, message }
}

/// Answers `ExecState`.
pub fn exec_state(shim: &Shim, exec_id: &str) -> ShimResponse {
    match shim.execs.borrow().get(exec_id) {
        Some(e) => ShimResponse::ExecState(ExecState {
            exec_id: exec_id.to_string(),
            pid: e.pid,
            running: e.running,
            exit_code: e.exit_code,
        }),
        None => err(
            ShimErrorKind::NotFound,
            format!("No such exec instance: {exec_id}"),
        ),
    }
}

/// Starts an exec; `fd` is the client connection unless the exec is detached.
pub fn start_exec(shim: &Rc<Shim>, p: ExecParams, fd: Option<OwnedFd>) -> ShimResponse {
    match shim.status() {
        ShimStatus::Running => {}
        ShimStatus::Paused => {
            return err(
                ShimErrorKind::Conflict,
                format!(
                    "Container {} is paused, unpause the container before exec",
                    shim.cfg.id
                ),
            )
        }
        _ => return err(ShimErrorKind::Conflict, shim.not_running()),
    }
    if shim.execs.borrow().contains_key(&p.exec_id) {
        return err(
            ShimErrorKind::Conflict,
            format!("Exec {} has already been started", p.exec_id),
        );
    }
    if p.args.is_empty() {
        return err(
            ShimErrorKind::InvalidArgument,
            "No exec command specified".into(),
        );
    }
    let fd = if p.detach { None } else { fd };
    if !p.detach && fd.is_none() {
        return err(
            ShimErrorKind::InvalidArgument,
            "an attached exec needs exactly one fd".into(),
        );
    }
    match spawn(shim, &p) {
        Ok((pid, parent, master)) => {
            let pty = master.map(Rc::new);
            shim.exec_pids.borrow_mut().insert(pid, p.exec_id.clone());
            shim.execs.borrow_mut().insert(
                p.exec_id.clone(),
                ExecEntry {
                    pid,
                    running: true,
                    exit_code: None,
                    pty: pty.clone(),
                },
            );
            tracing::info!(exec_id = %p.exec_id, pid, "exec started");
            let guard = fd.as_ref().map(|_| shim.stream_guard());
            let shim2 = shim.clone();
            tokio::task::spawn_local(async move {
                let _guard = guard;
                run_io(shim2, p, parent, pty, fd).await;
            });
            crate::trim::after_one_off_work();
            ShimResponse::ExecStarted { pid }
        }
        Err(message) => {
            let message = format!("OCI runtime exec failed: exec failed: {message}: unknown");
            let code = runtime::exec_failure_code(&message);
            tracing::warn!(exec_id = %p.exec_id, %message, "exec failed");
            shim.execs.borrow_mut().insert(
                p.exec_id.clone(),
                ExecEntry {
                    pid: 0,
                    running: false,
                    exit_code: None,
                    pty: None,
                },
            );
            exec_exited(shim, &p.exec_id, code);
            if let Some(fd) = fd {
                let guard = shim.stream_guard();
                let text = format!("{message}\r\n").into_bytes();
                let data = if p.tty {
                    text
                } else {
                    logfmt::frame(Stream::Stdout, &text)
                };
                tokio::task::spawn_local(async move {
                    let _guard = guard;
                    if let Ok(sock) = FdIo::new(fd) {
                        let _ = sock.write_all(&data).await;
                    }
                });
            }
            err(ShimErrorKind::Internal, message)
        }
    }
}

/// Creates the stdio and the tenant; returns its pid, the pipes and the pty master.
fn spawn(shim: &Shim, p: &ExecParams) -> Result<(i32, ParentIo, Option<FdIo>), String> {
    let dir = shim_dir(&shim.cfg);
    let attached = !p.detach;
    let console = if p.tty {
        Some(ConsoleSocket::bind(&dir.join("exec-console.sock")).map_err(|e| format!("{e:#}"))?)
    } else {
        None
    };
    let pipes = !p.tty && attached;
    let (parent, child) = stdio::pipes(
        pipes && p.attach_stdin,
        pipes && p.attach_stdout,
        pipes && p.attach_stderr,
    )
    .map_err(|e| format!("{e:#}"))?;
    let pid = runtime::exec(
        &shim.cfg,
        p,
        child,
        console.as_ref().map(|c| c.path()),
        &dir.join("exec-process.json"),
    )?;
    let master = match console {
        Some(c) => {
            let m = c.receive_master().map_err(|e| format!("{e:#}"))?;
            Some(FdIo::new(m).map_err(|e| format!("register pty: {e}"))?)
        }
        None => None,
    };
    Ok((pid, parent, master))
}

fn exec_finished(shim: &Shim, id: &str) -> bool {
    shim.execs.borrow().get(id).is_none_or(|e| !e.running)
}

async fn wait_exit(shim: &Shim, id: &str) {
    let mut rx = shim.changed.subscribe();
    while !exec_finished(shim, id) {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Copies one output source into the client's outbox (discarding when `discard` or once the
/// client is gone).
async fn read_into(
    src: Option<Rc<FdIo>>,
    stream: Stream,
    raw: bool,
    discard: bool,
    out: Rc<Outbox>,
) {
    let Some(src) = src else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if discard {
            continue;
        }
        let data = if raw {
            buf[..n].to_vec()
        } else {
            logfmt::frame(stream, &buf[..n])
        };
        out.push_wait(data).await;
    }
}

fn register(fd: Option<OwnedFd>) -> Option<Rc<FdIo>> {
    fd.and_then(|f| match FdIo::new(f) {
        Ok(io) => Some(Rc::new(io)),
        Err(e) => {
            tracing::warn!(error = %e, "register exec pipe");
            None
        }
    })
}

async fn run_io(
    shim: Rc<Shim>,
    p: ExecParams,
    parent: ParentIo,
    pty: Option<Rc<FdIo>>,
    fd: Option<OwnedFd>,
) {
    let outbox = Outbox::new(CLIENT_BUFFER);
    let raw = p.tty;
    let (out_src, err_src, stdin_sink, closable) = match &pty {
        Some(m) => (Some(m.clone()), None, Some(m.clone()), false),
        None => (
            register(parent.stdout),
            register(parent.stderr),
            register(parent.stdin),
            true,
        ),
    };
    let stdin = match stdin_sink {
        Some(sink) if p.attach_stdin && fd.is_some() => {
            let (tx, rx) = mpsc::channel(STDIN_QUEUE);
            tokio::task::spawn_local(stdin_pump(sink, rx, closable));
            Some(tx)
        }
        _ => None,
    };
    if fd.is_none() {
        // Nobody reads: a detached exec's pty output is drained and dropped.
        outbox.drop_client();
    }
    let discard_pty = raw && !p.attach_stdout;
    let producer = {
        let shim = shim.clone();
        let out = outbox.clone();
        let id = p.exec_id.clone();
        async move {
            let reading = async {
                tokio::join!(
                    read_into(out_src, Stream::Stdout, raw, discard_pty, out.clone()),
                    read_into(err_src, Stream::Stderr, raw, false, out.clone()),
                );
            };
            tokio::pin!(reading);
            tokio::select! {
                () = &mut reading => wait_exit(&shim, &id).await,
                () = wait_exit(&shim, &id) => {
                    let _ = tokio::time::timeout(DRAIN_GRACE, &mut reading).await;
                }
            }
            out.finish();
        }
    };
    let Some(fd) = fd else {
        producer.await;
        return;
    };
    tokio::task::spawn_local(producer);
    let sock = match FdIo::new(fd) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "register exec client");
            outbox.drop_client();
            return;
        }
    };
    let it = Interactive {
        outbox,
        stdin,
        detach: raw.then(|| DetachMatcher::new(&p.detach_keys)),
        close_stdin_on_eof: true,
        initial: p.initial,
        // An exec's output waits for its client (no log), so it never overflows.
        backlog: Box::new(|| 0),
    };
    serve_interactive(&sock, it).await;
}
