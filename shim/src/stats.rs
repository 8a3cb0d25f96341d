//! The stats hand-over: one Docker stats object per second (or one for `stream=0`), each a
//! chunk, read from the container's cgroup. The stream ends when the client leaves or the
//! container stops; it does not depend on the daemon, so it survives daemon upgrades.

use crate::fdio::{peer_closed, FdIo};
use crate::outbox::{http_chunk, LAST_CHUNK};
use crate::state::Shim;
use berth_api::shim::{ShimStatus, StatsParams};
use berth_api::stats::{to_json, to_line, Sample, Source};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

/// Time between two objects of a stream (dockerd's collection interval).
const INTERVAL: Duration = Duration::from_secs(1);

fn running(shim: &Shim) -> bool {
    matches!(shim.status(), ShimStatus::Running | ShimStatus::Paused)
}

/// Waits `d`, returning early with `false` when the client left or the container stopped.
async fn pause_for(shim: &Shim, sock: &FdIo, d: Duration) -> bool {
    let mut rx = shim.changed.subscribe();
    let timer = tokio::time::sleep(d);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            () = &mut timer => return true,
            () = peer_closed(sock) => return false,
            r = rx.changed() => if r.is_err() || !running(shim) { return false },
        }
    }
}

/// Serves a stats hand-over.
pub async fn serve_stats(shim: Rc<Shim>, fd: OwnedFd, p: StatsParams) -> io::Result<()> {
    let _guard = shim.stream_guard();
    let sock = FdIo::new(fd)?;
    let src = Source::new(
        Path::new("/sys/fs/cgroup"),
        shim.cgroups_path.clone().unwrap_or_default(),
        Some(shim.init_pid),
    );
    let id = shim.cfg.id.clone();
    let mut pre: Option<Sample> = None;
    if !p.stream && !p.one_shot && running(&shim) {
        // Like dockerd: a single object carries a previous sample to compute CPU % from.
        pre = Some(src.sample());
        if !pause_for(&shim, &sock, INTERVAL).await && !running(&shim) {
            pre = None;
        }
    }
    loop {
        let live = running(&shim);
        let cur = live.then(|| src.sample());
        let obj = to_json(&p.name, &id, cur.as_ref(), pre.as_ref());
        sock.write_all(&http_chunk(&to_line(&obj))).await?;
        if !p.stream || !live {
            break;
        }
        pre = cur;
        if !pause_for(&shim, &sock, INTERVAL).await {
            if !running(&shim) {
                continue; // one last all-zero object, then the end
            }
            return Ok(()); // client gone
        }
    }
    sock.write_all(LAST_CHUNK).await?;
    Ok(())
}
