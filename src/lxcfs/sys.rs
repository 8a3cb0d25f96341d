//! The two calls of the new mount API that nix does not wrap: `open_tree(2)` (clone a mount
//! into a detached tree held by an fd) and `move_mount(2)` (attach that tree somewhere in
//! the caller's mount namespace). The only `unsafe` of the lxcfs support.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `OPEN_TREE_CLONE` (linux/mount.h): a detached copy of the mount instead of an O_PATH fd.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
/// `OPEN_TREE_CLOEXEC` is `O_CLOEXEC`.
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
/// `MOVE_MOUNT_F_EMPTY_PATH`: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// A detached bind mount of `path` (non-recursive), as an fd that unmounts it when closed
/// unless it was attached with [`move_mount_to`].
pub fn open_tree_clone(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    // SAFETY: `p` is a NUL-terminated string that lives across the call; the kernel reads
    // only that pointer and returns a new fd or -1. No memory of ours is written.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("open_tree: fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the detached tree `tree` (from [`open_tree_clone`]) at `target` in the caller's
/// mount namespace.
pub fn move_mount_to(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let t = c_path(target)?;
    // SAFETY: both strings are NUL-terminated and live across the call; `tree` is an open fd
    // borrowed for the call. The kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
