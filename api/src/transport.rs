//! Packet transport for the shim protocol (feature `transport`): one JSON document per
//! `SOCK_SEQPACKET` packet, with optional file descriptors (`SCM_RIGHTS`).
//!
//! The functions work on blocking and non-blocking sockets alike; on a non-blocking socket
//! they return `ErrorKind::WouldBlock` and the caller waits for readiness.

use crate::shim::MAX_PACKET;
use nix::sys::socket::{
    recvmsg, sendmsg, socket, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Error, ErrorKind, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Most fds one packet may carry.
pub const MAX_FDS: usize = 4;

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let data = serde_json::to_vec(msg).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    if data.len() > MAX_PACKET {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "shim message too large",
        ));
    }
    let iov = [IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds that came with it; `Ok(None)` at end of stream.
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed this fd in our table for us.
                                #[allow(unsafe_code)]
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
                break (m.bytes, fds, truncated);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if truncated {
        return Err(Error::new(ErrorKind::InvalidData, "shim message too large"));
    }
    if n == 0 {
        return Ok(None);
    }
    let msg =
        serde_json::from_slice(&buf[..n]).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds)))
}

/// Connects a blocking `SOCK_SEQPACKET` socket to `path`.
pub fn connect(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Binds and listens on a `SOCK_SEQPACKET` socket at `path` (replacing a stale file).
pub fn listen(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let _ = std::fs::remove_file(path);
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &addr)?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(64)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::{ShimRequest, ShimResponse};
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_fds_cross_a_seqpacket_pair() -> std::io::Result<()> {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let f = tempfile::tempfile()?;
        send(
            a.as_fd(),
            &ShimRequest::Hello { version: 1 },
            &[f.as_raw_fd()],
        )?;
        send(a.as_fd(), &ShimResponse::Ok, &[])?;
        let (m, fds): (ShimRequest, _) = recv(b.as_fd())?.ok_or(ErrorKind::UnexpectedEof)?;
        assert_eq!(m, ShimRequest::Hello { version: 1 });
        assert_eq!(fds.len(), 1);
        let (m, fds): (ShimResponse, _) = recv(b.as_fd())?.ok_or(ErrorKind::UnexpectedEof)?;
        assert_eq!(m, ShimResponse::Ok);
        assert!(fds.is_empty());
        drop(a);
        assert!(recv::<ShimResponse>(b.as_fd())?.is_none());
        Ok(())
    }
}
