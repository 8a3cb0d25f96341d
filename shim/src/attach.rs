//! Serving a hijacked connection (attach, exec): output from the client's [`Outbox`], input
//! to the process's stdin pump, the detach key sequence on tty input.
//!
//! A client's end of input (half-close) never ends its output: the CLI half-closes at once
//! when stdin is not attached. With stdin attached and "close stdin on EOF" set (container
//! `StdinOnce`, or any exec), the process's stdin is closed so that e.g. `cat` finishes.

use crate::detach::DetachMatcher;
use crate::fdio::FdIo;
use crate::hub::AttachSink;
use crate::jsonlog;
use crate::outbox::{pump, Outbox, CLIENT_BUFFER};
use crate::state::{Shim, StdinMsg};
use berth_api::logfmt::{self, LogFilter, Stream};
use berth_api::shim::AttachParams;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use tokio::sync::mpsc;

/// Depth of a stdin pump's queue (chunks); clients wait when it is full.
pub const STDIN_QUEUE: usize = 16;

/// A client's input is held back while more than this much of its output is unsent (queued
/// for it, or still unread in the container's output pipes). With the stdin pipe at its
/// default size and the queue above, what the process can still turn into output stays well
/// under [`CLIENT_BUFFER`] for a filter like `cat`.
pub const INPUT_PAUSE: usize = CLIENT_BUFFER / 4;

/// How one hijacked connection is served.
pub struct Interactive {
    /// Output for this client.
    pub outbox: Rc<Outbox>,
    /// Where its input goes (`None`: input is read and discarded).
    pub stdin: Option<mpsc::Sender<StdinMsg>>,
    /// Detach key matcher (tty only).
    pub detach: Option<DetachMatcher>,
    /// Close the process's stdin when the client's input ends.
    pub close_stdin_on_eof: bool,
    /// Input the daemon already read past the request.
    pub initial: Vec<u8>,
    /// Output the process wrote that is not yet in `outbox` (unread pipe bytes); input
    /// pauses while this plus the queue exceeds [`INPUT_PAUSE`].
    pub backlog: Box<dyn Fn() -> usize>,
}

/// Serves the connection until its output ended (and was written) or the client detached.
pub async fn serve_interactive(sock: &FdIo, mut it: Interactive) {
    let outbox = it.outbox.clone();
    tokio::select! {
        r = pump(&outbox, sock) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "client stream write failed");
            }
        }
        () = read_input(sock, &mut it) => {
            tracing::debug!("client detached");
            outbox.drop_client();
        }
    }
}

/// Returns only when the client detached.
async fn read_input(sock: &FdIo, it: &mut Interactive) {
    let initial = std::mem::take(&mut it.initial);
    if !initial.is_empty() && forward(it, &initial).await {
        return;
    }
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            if let Some(m) = &mut it.detach {
                let held = m.take_held();
                if !held.is_empty() {
                    if let Some(tx) = &it.stdin {
                        let _ = tx.send(StdinMsg::Data(held)).await;
                    }
                }
            }
            if it.close_stdin_on_eof {
                if let Some(tx) = it.stdin.take() {
                    let _ = tx.send(StdinMsg::Close).await;
                }
            }
            return std::future::pending().await;
        }
        if forward(it, &buf[..n]).await {
            return;
        }
    }
}

/// Forwards input; true when the client detached.
async fn forward(it: &mut Interactive, data: &[u8]) -> bool {
    let (bytes, detach) = match &mut it.detach {
        Some(m) => {
            let f = m.feed(data);
            (f.forward, f.detach)
        }
        None => (data.to_vec(), false),
    };
    if !bytes.is_empty() {
        it.outbox.wait_room(INPUT_PAUSE, &it.backlog).await;
        if let Some(tx) = &it.stdin {
            if tx.send(StdinMsg::Data(bytes)).await.is_err() {
                it.stdin = None;
            }
        }
    }
    detach
}

/// Writes what comes from `rx` into a process's stdin. `closable`: a `Close` (or the last
/// sender going away) closes the fd; a pty master is never closed that way.
pub async fn stdin_pump(sink: Rc<FdIo>, mut rx: mpsc::Receiver<StdinMsg>, closable: bool) {
    while let Some(m) = rx.recv().await {
        match m {
            StdinMsg::Data(d) => {
                if let Err(e) = sink.write_all(&d).await {
                    tracing::debug!(error = %e, "stdin write failed");
                    if closable {
                        return;
                    }
                }
            }
            StdinMsg::Close if closable => return,
            StdinMsg::Close => {}
        }
    }
}

/// Serves an attach hand-over to its end.
pub async fn serve_attach(shim: Rc<Shim>, fd: OwnedFd, p: AttachParams) -> io::Result<()> {
    let _guard = shim.stream_guard();
    let sock = FdIo::new(fd)?;
    let raw = shim.cfg.tty;
    let outbox = Outbox::new(CLIENT_BUFFER);
    if p.logs {
        let filter = LogFilter {
            stdout: p.stdout,
            stderr: p.stderr,
            ..Default::default()
        };
        for d in jsonlog::read_history(shim.cfg.log.as_ref(), &filter) {
            outbox.push_history(logfmt::render(&d, false, raw));
        }
    }
    if p.stream && !shim.life.borrow().output_done {
        shim.hub.borrow_mut().add_attach(AttachSink {
            outbox: outbox.clone(),
            stdout: p.stdout,
            stderr: p.stderr,
            raw,
        });
    } else {
        outbox.finish();
    }
    let stdin = if p.stdin {
        shim.stdin.borrow().clone()
    } else {
        None
    };
    let watched: Vec<Rc<FdIo>> = shim
        .outputs
        .iter()
        .filter(|(_, s)| match s {
            Stream::Stderr => p.stderr,
            _ => p.stdout,
        })
        .map(|(f, _)| f.clone())
        .collect();
    let it = Interactive {
        outbox,
        stdin,
        detach: raw.then(|| DetachMatcher::new(&p.detach_keys)),
        close_stdin_on_eof: shim.cfg.stdin_once,
        initial: p.initial,
        backlog: Box::new(move || watched.iter().map(|f| f.unread()).sum()),
    };
    serve_interactive(&sock, it).await;
    Ok(())
}
