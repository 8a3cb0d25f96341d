//! The container's (or an exec's) stdio as the shim prepares it: output pipes sized up to 1 MiB
//! (the shim keeps the read ends of stdout/stderr and the write end of stdin), `/dev/null`
//! for what is not wanted, or a pty whose master comes back over libcontainer's console
//! socket.

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pipe size asked for with `F_SETPIPE_SZ` (the kernel may cap it at `pipe-max-size`).
pub const PIPE_SIZE: i32 = 1024 * 1024;

/// The child's ends, handed to libcontainer.
pub struct ChildIo {
    /// fd 0 of the process.
    pub stdin: OwnedFd,
    /// fd 1.
    pub stdout: OwnedFd,
    /// fd 2.
    pub stderr: OwnedFd,
}

/// The shim's ends of the pipes; `None` where the child got `/dev/null`.
#[derive(Default)]
pub struct ParentIo {
    /// Write end of the child's stdin.
    pub stdin: Option<OwnedFd>,
    /// Read end of the child's stdout.
    pub stdout: Option<OwnedFd>,
    /// Read end of the child's stderr.
    pub stderr: Option<OwnedFd>,
}

fn dev_null() -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    Ok(f.into())
}

/// A pipe; `big` asks for [`PIPE_SIZE`] (output pipes, so a burst never blocks the
/// process). Stdin keeps the default size: what sits in it is output the shim cannot hold
/// back when a client's input is paused.
fn pipe(big: bool) -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create pipe")?;
    if big {
        // Best effort: an unprivileged caller may be capped below 1 MiB.
        let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    Ok((r, w))
}

/// Makes stdio for a process: a pipe for each wanted stream, `/dev/null` for the rest.
pub fn pipes(stdin: bool, stdout: bool, stderr: bool) -> Result<(ParentIo, ChildIo)> {
    let mut parent = ParentIo::default();
    let child_stdin = if stdin {
        let (r, w) = pipe(false)?;
        parent.stdin = Some(w);
        r
    } else {
        dev_null()?
    };
    let child_stdout = if stdout {
        let (r, w) = pipe(true)?;
        parent.stdout = Some(r);
        w
    } else {
        dev_null()?
    };
    let child_stderr = if stderr {
        let (r, w) = pipe(true)?;
        parent.stderr = Some(r);
        w
    } else {
        dev_null()?
    };
    Ok((
        parent,
        ChildIo {
            stdin: child_stdin,
            stdout: child_stdout,
            stderr: child_stderr,
        },
    ))
}

/// A listening console socket: libcontainer connects to it during `build()` and the new
/// process sends its pty master over it.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a fresh socket at `path`.
    pub fn bind(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("bind console socket {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("console socket non-blocking")?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Where libcontainer should connect.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master; call after `build()` returned (the connection and the fd
    /// are already queued by then).
    pub fn receive_master(&self) -> Result<OwnedFd> {
        let (conn, _) = match self.listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                bail!("the container did not connect to the console socket")
            }
            Err(e) => return Err(e).context("accept on the console socket"),
        };
        conn.set_nonblocking(false)
            .context("console connection blocking")?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .context("console connection timeout")?;
        recv_fd(conn.as_raw_fd())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receive the pty master")?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().context("read the console message")? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw);
        }
    }
    let mut owned: Vec<OwnedFd> = fds.into_iter().map(adopt).collect();
    match owned.len() {
        1 => Ok(owned.remove(0)),
        n => bail!("console socket message carried {n} fds, expected 1"),
    }
}

#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just installed this fd for us with SCM_RIGHTS; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    #[test]
    fn pipes_and_dev_null() -> Result<()> {
        let (p, c) = pipes(false, true, true)?;
        assert!(p.stdin.is_none() && p.stdout.is_some() && p.stderr.is_some());
        nix::unistd::write(&c.stdout, b"x")?;
        let mut b = [0u8; 1];
        let out = p.stdout.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        assert_eq!(nix::unistd::read(out, &mut b)?, 1);
        let sz = fcntl(out, FcntlArg::F_GETPIPE_SZ)?;
        assert!(sz >= 64 * 1024, "{sz}");
        Ok(())
    }

    #[test]
    fn console_socket_passes_a_master() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let cs = ConsoleSocket::bind(&dir.path().join("c.sock"))?;
        assert!(cs.receive_master().is_err());
        let pty = nix::pty::openpty(None, None)?;
        let s = UnixStream::connect(cs.path())?;
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(b"/dev/pts/x")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
        let m = cs.receive_master()?;
        nix::unistd::write(&m, b"ping\n")?;
        let p = cs.path().to_path_buf();
        drop(cs);
        assert!(!p.exists());
        Ok(())
    }
}
