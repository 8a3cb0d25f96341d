//! Named network namespaces as bind-mounted files (like `ip netns`, but under
//! `<exec_root>/netns`), and the one helper that opens a netlink socket inside a namespace.
//!
//! A namespace is created on a dedicated thread (`unshare(CLONE_NEWNET)` affects only the
//! calling thread) and pinned by bind-mounting `/proc/thread-self/ns/net` onto a file; the
//! thread then exits. A netlink socket stays in the namespace it was created in, so a
//! thread that `setns()`es into the namespace creates the socket and hands it back.

use crate::error::{ApiError, ApiResult};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Runs `f` on a fresh OS thread (which may change its namespaces and then dies) and
/// awaits its result without blocking the runtime.
pub(crate) async fn on_thread<T, F>(step: &str, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| ApiError::internal(&format!("{step}: spawn thread"), e))?;
    rx.await
        .map_err(|_| ApiError::Internal(format!("{step}: worker thread died")))?
}

/// Makes `dir` a private bind mount of itself so that namespace mounts made in it do not
/// propagate into (or in from) other mount namespaces.
pub(crate) fn prepare_dir(dir: &Path) -> ApiResult<()> {
    let step = |what: &str| format!("prepare netns directory {}: {what}", dir.display());
    fs::create_dir_all(dir).map_err(|e| ApiError::internal(&step("create"), e))?;
    let dir = fs::canonicalize(dir).map_err(|e| ApiError::internal(&step("resolve"), e))?;
    if !is_mount_point(&dir)? {
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| ApiError::internal(&step("bind mount"), e))?;
    }
    mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ApiError::internal(&step("make private"), e))?;
    Ok(())
}

/// Whether `path` (canonical) is a mount point of this mount namespace.
pub(crate) fn is_mount_point(path: &Path) -> ApiResult<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ApiError::internal("read /proc/self/mountinfo", e))?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&unescape_mountinfo(mp)) == path))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mounted network namespace (an nsfs mount).
pub(crate) fn exists(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Creates a new network namespace and binds it at `path` (which must not be a namespace
/// yet; a stale plain file left after a reboot is reused).
pub(crate) async fn create(path: &Path) -> ApiResult<()> {
    let step = format!("create network namespace {}", path.display());
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ApiError::internal(&step, e)),
    }
    let target: PathBuf = path.to_owned();
    let res = on_thread(&step, move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ApiError::internal("unshare", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| ApiError::internal("bind mount", e))
    })
    .await;
    if let Err(e) = res {
        let _ = fs::remove_file(path);
        return Err(ApiError::Internal(format!("{step}: {e}")));
    }
    Ok(())
}

/// Unmounts and removes a netns file; a missing or unmounted file is fine.
pub(crate) fn remove(path: &Path) -> ApiResult<()> {
    let step = format!("remove network namespace {}", path.display());
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(ApiError::internal(&step, e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::internal(&step, e)),
    }
}

/// File names in the netns directory (empty when it does not exist).
pub(crate) fn list(dir: &Path) -> ApiResult<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ApiError::internal(&format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// An rtnetlink handle whose socket lives in the network namespace at `path`.
pub(crate) async fn handle_in(path: &Path) -> ApiResult<rtnetlink::Handle> {
    let step = format!("open netlink in {}", path.display());
    let rt = tokio::runtime::Handle::current();
    let path = path.to_owned();
    let (conn, handle) = on_thread(&step, move || {
        let ns = File::open(&path).map_err(|e| ApiError::internal("open netns", e))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| ApiError::internal("setns", e))?;
        let _guard = rt.enter();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ApiError::internal("netlink socket", e))?;
        Ok((conn, handle))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("{step}: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/tail\\"), "/tail\\");
    }
}
