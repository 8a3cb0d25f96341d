//! `sd_notify(3)`: readiness, the main PID and a status line for systemd, sent to
//! `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). Without systemd the
//! variable is unset and nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let res = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = res {
        tracing::warn!(error = %e, socket = %path, "sd_notify");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_datagram_reaches_the_notify_socket() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path)?;
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::notify("READY=1\nMAINPID=42");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        Ok(())
    }
}
