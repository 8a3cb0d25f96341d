//! The chunked hand-overs: `wait` (one JSON chunk when the condition is met) and
//! `logs --follow` (history, then live lines, each line one chunk).

use crate::exit::now_ns;
use crate::fdio::{peer_closed, FdIo};
use crate::hub::{follow_chunk, FollowSink};
use crate::jsonlog;
use crate::outbox::{http_chunk, pump, Outbox, CLIENT_BUFFER, LAST_CHUNK};
use crate::state::Shim;
use berth_api::logfmt::LogFilter;
use berth_api::shim::{LogsParams, ShimStatus, WaitCondition};
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

/// The body Docker sends for a wait: `{"Error":null,"StatusCode":N}` and a newline.
pub fn wait_body(code: i32) -> Vec<u8> {
    format!("{{\"Error\":null,\"StatusCode\":{code}}}\n").into_bytes()
}

/// The exit code that answers `cond` now, if it is met.
fn wait_answer(shim: &Shim, cond: WaitCondition, exited_before: bool) -> Option<i32> {
    let life = shim.life.borrow();
    let code = life.exit.as_ref().map(|e| e.code);
    match cond {
        WaitCondition::NotRunning if life.status == ShimStatus::Created => Some(0),
        WaitCondition::NotRunning => code,
        WaitCondition::NextExit if exited_before => None,
        WaitCondition::NextExit => code,
        WaitCondition::Removed if life.removed => Some(code.unwrap_or(0)),
        WaitCondition::Removed => None,
    }
}

/// Whether a wait may be answered: the exit was acknowledged by the daemon, or no daemon
/// follows this shim (no exit yet: nothing to settle).
fn exit_settled(shim: &Shim) -> bool {
    let life = shim.life.borrow();
    life.exit.is_none() || life.acked || shim.subscribers.borrow().iter().all(|s| s.is_closed())
}

/// Serves a wait hand-over: answers once, or ends quietly when the client goes away.
pub async fn serve_wait(shim: Rc<Shim>, fd: OwnedFd, cond: WaitCondition) -> io::Result<()> {
    let exited_before = shim.life.borrow().exit.is_some();
    // A next-exit wait after the exit can only be answered by a later shim: it must not keep
    // this one alive.
    let _guard = (!(exited_before && cond == WaitCondition::NextExit)).then(|| shim.stream_guard());
    let sock = FdIo::new(fd)?;
    let mut rx = shim.changed.subscribe();
    // Once the answer is known, a daemon that follows this shim records the exit first (it
    // acknowledges it): a client that reads the state right after its wait returned (`docker
    // run` then `docker ps`) sees the container exited, as with dockerd. Without a daemon
    // (or one that does not answer within a second) the wait is answered anyway.
    let mut settle_by: Option<tokio::time::Instant> = None;
    let code = loop {
        if let Some(code) = wait_answer(&shim, cond, exited_before) {
            let by = *settle_by
                .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(1));
            if exit_settled(&shim) || tokio::time::Instant::now() >= by {
                break code;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(()) },
                () = tokio::time::sleep_until(by) => {}
                () = peer_closed(&sock) => return Ok(()),
            }
            continue;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(()) },
            () = peer_closed(&sock) => return Ok(()),
        }
    };
    sock.write_all(&http_chunk(&wait_body(code))).await?;
    sock.write_all(LAST_CHUNK).await?;
    Ok(())
}

/// Serves a `logs --follow` hand-over.
pub async fn serve_logs(shim: Rc<Shim>, fd: OwnedFd, p: LogsParams) -> io::Result<()> {
    let _guard = shim.stream_guard();
    let sock = FdIo::new(fd)?;
    let filter = p.filter();
    let outbox = Outbox::new(CLIENT_BUFFER);
    // History and registration happen in one synchronous step: no line can be written to the
    // log in between, so the follower sees neither a gap nor a duplicate.
    for d in jsonlog::read_history(shim.cfg.log.as_ref(), &filter) {
        outbox.push_history(follow_chunk(&d, p.timestamps, p.raw));
    }
    let now = now_ns();
    let ended = {
        let life = shim.life.borrow();
        life.output_done
            || life.status == ShimStatus::Created
            || p.until_ns.is_some_and(|u| u <= now)
    };
    let mut timer = None;
    if ended {
        outbox.finish();
    } else {
        shim.hub.borrow_mut().add_follow(FollowSink {
            outbox: outbox.clone(),
            filter: LogFilter {
                tail: None,
                ..filter
            },
            timestamps: p.timestamps,
            raw: p.raw,
        });
        if let Some(until) = p.until_ns {
            let o = outbox.clone();
            let wait = Duration::from_nanos(u64::try_from(until.saturating_sub(now)).unwrap_or(0));
            timer = Some(tokio::task::spawn_local(async move {
                tokio::time::sleep(wait).await;
                o.finish();
            }));
        }
    }
    let res = tokio::select! {
        r = pump(&outbox, &sock) => r,
        () = peer_closed(&sock) => {
            outbox.drop_client();
            Err(io::ErrorKind::BrokenPipe.into())
        }
    };
    if let Some(t) = timer {
        t.abort();
    }
    if res.is_ok() {
        sock.write_all(LAST_CHUNK).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_body_matches_docker() {
        assert_eq!(wait_body(3), b"{\"Error\":null,\"StatusCode\":3}\n");
    }
}
