//! The control channel between the master and a worker generation: one `SOCK_SEQPACKET`
//! socketpair per worker, one JSON message per packet, file descriptors (client
//! connections) attached with `SCM_RIGHTS`.
//!
//! The worker reports its life cycle (warm, serving, frozen) and hands client connections
//! to the master during an upgrade; the master forwards them to the generation that serves
//! next. The protocol is private to one host and one upgrade: master and workers of
//! neighbouring releases must understand each other, so fields are only ever added.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// Version of this protocol; a master refuses a successor that does not speak it.
pub const CTL_PROTOCOL_VERSION: u32 = 2;

/// Environment variable naming the worker's role (`worker` or `successor`).
pub const ENV_ROLE: &str = "BERTH_ROLE";
/// Environment variable with the worker's generation number.
pub const ENV_GENERATION: &str = "BERTH_GENERATION";
/// Environment variable with the number of listening sockets (fds 4.., after the ctl fd 3).
pub const ENV_LISTENERS: &str = "BERTH_LISTENERS";
/// Environment variable with a named fault to inject (tests only).
pub const ENV_FAULT: &str = "BERTH_FAULT";
/// The fd number of the control socket in a worker.
pub const CTL_FD: RawFd = 3;

/// A stream that must be resumed where the previous generation left it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Resume {
    /// A `GET /events` stream: the head was written; continue after event `after_seq`.
    Events {
        /// The request's raw query string.
        query: String,
        /// Last event sequence number written to the client.
        after_seq: Option<u64>,
    },
}

/// A request read completely and handed over unanswered with its body, which travels as
/// a file (the connection's second fd): one too big to re-encode in `leftover`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParkedRequest {
    /// `POST`, …
    pub method: String,
    /// The request target as the client sent it.
    pub raw_target: String,
    /// Lower-cased header names.
    pub headers: std::collections::HashMap<String, String>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A client connection travelling between generations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnMsg {
    /// Bytes read from the socket and not yet answered (base64), replayed before reading
    /// from the socket again.
    pub leftover: String,
    /// A response stream to continue instead of reading a request.
    #[serde(default)]
    pub resume: Option<Resume>,
    /// A request to answer first (its body is the second fd), before `leftover`.
    #[serde(default)]
    pub request: Option<ParkedRequest>,
}

impl ConnMsg {
    /// A connection with `bytes` to replay.
    pub fn new(bytes: &[u8], resume: Option<Resume>) -> Self {
        ConnMsg {
            leftover: base64::engine::general_purpose::STANDARD.encode(bytes),
            resume,
            request: None,
        }
    }

    /// The bytes to replay.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.leftover)
    }
}

/// What the caller of `berthd upgrade` asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UpgradeParams {
    /// The new binary (default: the one the master runs now).
    pub binary: Option<String>,
    /// A named fault for the new generation (tests).
    #[serde(default)]
    pub fault: Option<String>,
    /// How long the new generation may take to warm up.
    #[serde(default)]
    pub warmup_timeout_ms: Option<u64>,
    /// How long the new generation must serve before the upgrade commits.
    #[serde(default)]
    pub probation_ms: Option<u64>,
}

/// Worker → master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ToMaster {
    /// First message of every worker.
    Hello {
        /// Generation number the master gave it.
        generation: u64,
        /// This control protocol's version.
        ctl_protocol: u32,
        /// Newest store format this binary reads.
        store_format: u32,
        /// Shim protocol range this binary speaks.
        shim_protocol: (u32, u32),
    },
    /// A successor finished warming up and can take over.
    Warm,
    /// Answer to `Release`: mutations are quiesced and the store is closed (reads are still
    /// answered), or `error` says why not (the generation serves on).
    Released {
        /// Milliseconds spent letting in-flight mutations finish (accepting meanwhile).
        quiesce_ms: f64,
        /// Why the store could not be released.
        #[serde(default)]
        error: Option<String>,
    },
    /// The worker opened the store and accepts connections (a successor told to `hold`
    /// answers reads only, until `Serve`).
    Serving {
        /// Milliseconds from `TakeOver` (or process start) to accepting.
        startup_ms: f64,
    },
    /// A client connection (fd attached) for the next generation.
    Conn(ConnMsg),
    /// The freeze is complete: no request is in flight, the store is flushed; waiting for
    /// `Exit` (commit) or `Resume` (rollback).
    Frozen {
        /// Connections handed over.
        conns: usize,
        /// Milliseconds spent letting in-flight mutations finish (accepting meanwhile).
        quiesce_ms: f64,
        /// Milliseconds from not accepting to frozen.
        freeze_ms: f64,
    },
    /// `POST /berth/upgrade` arrived; the client connection is attached and the master
    /// answers on it.
    Upgrade(UpgradeParams),
}

/// Master → worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ToWorker {
    /// Let in-flight mutations finish, then close the store and keep answering reads
    /// (mutations are handed over); answered with `Released`.
    Release,
    /// Let in-flight mutations finish, stop accepting, hand connections over, flush. To a
    /// held successor: the previous generation freezes now (fault injection only).
    Freeze,
    /// Rollback: take the store back if it was released and serve again.
    Resume,
    /// Successor: open the store and serve. `clean`: the previous generation quiesced and
    /// left everything consistent (no kernel state to verify).
    TakeOver {
        /// Whether the previous generation handed over cleanly.
        clean: bool,
        /// Answer reads only until `Serve` (the previous generation still answers reads).
        #[serde(default)]
        hold: bool,
    },
    /// A held successor: the previous generation froze; serve mutations and do background
    /// work.
    Serve,
    /// A client connection (fd attached) to serve.
    Conn(ConnMsg),
    /// Leave: the next generation owns the store now.
    Exit,
}

/// One end of the control channel, usable from async code.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Wraps a connected `SOCK_SEQPACKET` socket (made non-blocking).
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: `fd` is an OwnedFd: it stays open and the same until the AsyncFd drops it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Channel { fd })
    }

    /// A connected pair (master end, worker end); the worker end is not close-on-exec
    /// aware: the spawner dups it to [`CTL_FD`].
    pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        Ok(socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?)
    }

    /// The socket's fd number (kept open across a master's re-exec).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Sends one message with fds.
    pub async fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| berth_api::transport::send(fd.get_ref().as_fd(), msg, fds)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message; `None` when the peer closed its end.
    pub async fn recv<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| berth_api::transport::recv(fd.get_ref().as_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_fds_cross_the_channel() -> anyhow::Result<()> {
        let (a, b) = Channel::pair()?;
        let (a, b) = (Channel::new(a)?, Channel::new(b)?);
        let (x, _y) = std::os::unix::net::UnixStream::pair()?;
        let msg = ToMaster::Conn(ConnMsg::new(b"GET /_ping HTTP/1.1\r\n\r\n", None));
        a.send(&msg, &[x.as_raw_fd()]).await?;
        let (got, fds) = b.recv::<ToMaster>().await?.ok_or(anyhow::anyhow!("eof"))?;
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        match got {
            ToMaster::Conn(c) => assert_eq!(c.bytes()?, b"GET /_ping HTTP/1.1\r\n\r\n"),
            other => anyhow::bail!("unexpected {other:?}"),
        }
        drop(a);
        assert!(b.recv::<ToMaster>().await?.is_none());
        Ok(())
    }
}
