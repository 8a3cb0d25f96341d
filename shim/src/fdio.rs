//! Non-blocking fds (pipes, pty masters, sockets of any family) driven by the tokio reactor,
//! with plain `read(2)`/`write(2)`: no extra threads, no assumptions about the fd's type.

use crate::sys::set_nonblocking;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// An fd registered with the reactor.
pub struct FdIo {
    inner: AsyncFd<OwnedFd>,
}

impl FdIo {
    /// Makes `fd` non-blocking and registers it.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Self {
            inner: crate::sys::register(fd)?,
        })
    }

    /// Reads some bytes; `Ok(0)` at end of stream (a pty master's `EIO` after the last slave
    /// closed counts as end of stream).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // A ready fd never makes `readable()` wait: spend the task's budget so a busy
        // stream cannot starve the other tasks of this single thread.
        tokio::task::consume_budget().await;
        loop {
            let mut guard = self.inner.readable().await?;
            let res = guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            });
            match res {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        tokio::task::consume_budget().await;
        while !data.is_empty() {
            let mut guard = self.inner.writable().await?;
            let res =
                guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from));
            match res {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Bytes waiting to be read (`FIONREAD`).
    pub fn unread(&self) -> usize {
        crate::sys::unread_bytes(self.raw())
    }

    /// The raw fd (for ioctls).
    pub fn raw(&self) -> RawFd {
        self.inner.get_ref().as_raw_fd()
    }
}

impl AsFd for FdIo {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

/// Resolves once the peer closed the connection (read end of stream or error); input that
/// arrives meanwhile is discarded. Used by streams that never read client input.
pub async fn peer_closed(sock: &FdIo) {
    let mut buf = [0u8; 512];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_round_trip_and_eof() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (r, w) = nix::unistd::pipe()?;
            let r = FdIo::new(r)?;
            let w = FdIo::new(w)?;
            w.write_all(b"hello").await?;
            drop(w);
            let mut buf = [0u8; 16];
            let n = r.read(&mut buf).await?;
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(r.read(&mut buf).await?, 0);
            Ok(())
        })
    }
}
