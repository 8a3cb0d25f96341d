//! Client connections that arrived before a container had a shim (attach and wait sent
//! by `docker run` before `start`, `wait` on a created container). They are handed to the
//! shim right after it is ready, or answered by the daemon when the start fails or the
//! container is removed without ever running.

use berth_api::shim::{AttachParams, WaitCondition};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// One queued hand-over.
pub enum Pending {
    /// An attach (101 already written).
    Attach(AttachParams, OwnedFd),
    /// A wait (200 chunked head already written).
    Wait(WaitCondition, OwnedFd),
}

/// Queued hand-overs per container.
#[derive(Default)]
pub struct PendingTable {
    map: Mutex<HashMap<String, Vec<Pending>>>,
}

impl PendingTable {
    /// Queues a hand-over.
    pub fn push(&self, id: &str, p: Pending) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(id.to_string()).or_default().push(p);
    }

    /// Takes every queued hand-over of a container.
    pub fn take(&self, id: &str) -> Vec<Pending> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(id).unwrap_or_default()
    }

    /// Takes only the waits matching `pred`, leaving the rest queued.
    pub fn take_waits(&self, id: &str, pred: impl Fn(WaitCondition) -> bool) -> Vec<OwnedFd> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = m.get_mut(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for p in list.drain(..) {
            match p {
                Pending::Wait(c, fd) if pred(c) => out.push(fd),
                other => keep.push(other),
            }
        }
        *list = keep;
        out
    }
}

/// Writes a wait answer as the chunked body of an already-sent 200 head, then closes.
pub fn answer_wait(fd: OwnedFd, code: i32, error: Option<&str>) {
    let body = match error {
        Some(e) => serde_json::json!({"Error": {"Message": e}, "StatusCode": code}),
        None => serde_json::json!({"Error": null, "StatusCode": code}),
    };
    let mut data = serde_json::to_vec(&body).unwrap_or_default();
    data.push(b'\n');
    let mut out = crate::server::http::chunk(&data);
    out.extend_from_slice(crate::server::http::LAST_CHUNK);
    let mut f = std::fs::File::from(fd);
    let _ = f.write_all(&out);
}

/// Closes a pending attach: the client sees the stream end.
pub fn close_attach(fd: OwnedFd) {
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::sys::socket::Shutdown::Both,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn wait_answers_are_one_chunk_and_the_end() -> std::io::Result<()> {
        let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
        answer_wait(OwnedFd::from(a), 127, None);
        let mut s = String::new();
        b.read_to_string(&mut s)?;
        assert_eq!(
            s,
            "20\r\n{\"Error\":null,\"StatusCode\":127}\n\r\n0\r\n\r\n"
        );
        Ok(())
    }

    #[test]
    fn take_waits_keeps_the_rest() -> std::io::Result<()> {
        let t = PendingTable::default();
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        t.push("c", Pending::Wait(WaitCondition::Removed, OwnedFd::from(a)));
        t.push(
            "c",
            Pending::Wait(WaitCondition::NextExit, OwnedFd::from(b)),
        );
        assert_eq!(t.take_waits("c", |c| c == WaitCondition::NextExit).len(), 1);
        assert_eq!(t.take("c").len(), 1);
        assert!(t.take("c").is_empty());
        Ok(())
    }
}
