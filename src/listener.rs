//! Listening sockets: `unix://PATH` (created 0660, group `berth` when it exists) and
//! `fd://` (sockets passed by systemd through `LISTEN_FDS`, never re-bound: invariant 4).

use anyhow::{bail, Context};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Opens every listener named in `hosts`.
pub fn open_all(hosts: &[String]) -> anyhow::Result<Vec<std::os::unix::net::UnixListener>> {
    let mut out = Vec::new();
    for h in hosts {
        if let Some(path) = h.strip_prefix("unix://") {
            out.push(bind_unix(Path::new(path))?);
        } else if h == "fd://" || h.starts_with("fd://") {
            out.extend(from_systemd(h.strip_prefix("fd://").unwrap_or(""))?);
        } else if h.starts_with('/') {
            out.push(bind_unix(Path::new(h))?);
        } else {
            bail!("unsupported host {h:?}: berth listens on unix://PATH or fd://");
        }
    }
    if out.is_empty() {
        bail!("no listening socket configured");
    }
    Ok(out)
}

fn bind_unix(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers on it: refuse to steal its socket. A worker of a master
        // that was just killed closes its copy within moments: give it two seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::os::unix::net::UnixStream::connect(path).is_ok() {
            if std::time::Instant::now() > deadline {
                bail!("{} is in use by another daemon", path.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("berth") {
        nix::unistd::chown(path, None, Some(group.gid))
            .with_context(|| format!("chown {} to group berth", path.display()))?;
    }
    Ok(l)
}

/// Sockets passed with `LISTEN_PID`/`LISTEN_FDS` (fds 3..3+n); `name` selects one by
/// `LISTEN_FDNAMES` when given.
fn from_systemd(name: &str) -> anyhow::Result<Vec<std::os::unix::net::UnixListener>> {
    let pid: u32 = std::env::var("LISTEN_PID")
        .context("fd:// given but LISTEN_PID is not set")?
        .parse()
        .context("LISTEN_PID is not a number")?;
    if pid != std::process::id() {
        bail!("LISTEN_PID {pid} is not this process");
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .context("LISTEN_FDS is not set")?
        .parse()
        .context("LISTEN_FDS is not a number")?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = 3 + i;
        if !name.is_empty() && names.get(i as usize).map(String::as_str) != Some(name) {
            continue;
        }
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: systemd passes these fds to us and nothing else in the process owns them.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(std::os::unix::net::UnixListener::from(owned));
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if out.is_empty() {
        bail!("no socket named {name:?} among the {n} passed by systemd");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_socket_is_0660_and_a_live_one_is_not_stolen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("s.sock");
        let host = format!("unix://{}", p.display());
        let l = open_all(std::slice::from_ref(&host))?;
        let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(open_all(std::slice::from_ref(&host)).is_err());
        drop(l);
        // Stale socket file: replaced.
        assert!(open_all(&[host])?.len() == 1);
        assert!(open_all(&["tcp://0.0.0.0:2375".into()]).is_err());
        Ok(())
    }
}
