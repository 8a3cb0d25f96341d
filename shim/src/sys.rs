//! The few system calls the shim needs that have no safe wrapper: adopting fd 3, signal
//! dispositions, `accept4`, reactor registration, the pty window size and `FIONREAD`. Every `unsafe` block lives here.
#![allow(unsafe_code)]

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{accept4, SockFlag};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The readiness pipe's fd number (the daemon's convention).
pub const READY_FD: RawFd = 3;

/// Takes ownership of fd 3 if it is open, and marks it close-on-exec.
pub fn take_ready_fd() -> Option<OwnedFd> {
    fcntl(READY_FD, FcntlArg::F_GETFD).ok()?;
    // SAFETY: fd 3 is open (F_GETFD succeeded) and nothing else in this process owns it: the
    // daemon passes it to us by convention and we take it exactly once, at start-up.
    let fd = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    Some(fd)
}

/// Restores the default SIGPIPE disposition. Rust starts programs with SIGPIPE ignored, and
/// an ignored signal stays ignored across `execve`: the container must not inherit that.
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_DFL runs no handler code; it only changes the disposition.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Accepts one connection from a non-blocking listening socket (close-on-exec, non-blocking).
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    let fd = accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
    // SAFETY: accept4 just returned this new fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets a pty's window size (`TIOCSWINSZ`) on its master.
pub fn set_winsize(master: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize that outlives the call; the kernel only reads it.
    unsafe { tiocswinsz(master, &ws) }
        .map(|_| ())
        .map_err(io::Error::from)
}

nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);

/// Bytes waiting to be read from a pipe, socket or pty master (`FIONREAD`); 0 when unknown.
pub fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is a valid c_int that outlives the call; the kernel only writes it.
    match unsafe { fionread(fd, &mut n) } {
        Ok(_) => usize::try_from(n).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Registers an owned fd with the tokio reactor.
pub fn register(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd owns an open fd for its whole life and `as_raw_fd` always returns
    // that same fd; the AsyncFd takes ownership of it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Puts an fd into non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Drops this process's page-table entries for read-only file mappings (program text,
/// rodata, shared libraries) so that code used once — libcontainer's create and start —
/// stops counting in the shim's resident set. The pages stay in the page cache; the
/// monitor loop faults back in only what it uses. Mappings that are writable, or that have
/// any copied-on-write page (RELRO after relocation), are never touched: only pages that
/// are identical to the file are dropped. Returns the bytes advised.
pub fn trim_readonly_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut candidates: Vec<(usize, usize, bool)> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let f: Vec<&str> = line.split_whitespace().collect();
                let perms = f.get(1).copied().unwrap_or("");
                let inode = f.get(4).copied().unwrap_or("0");
                let ok = !perms.contains('w') && perms.ends_with('p') && inode != "0";
                candidates.push((start, end, ok));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            let kb: usize = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(1);
            if kb > 0 {
                if let Some(last) = candidates.last_mut() {
                    last.2 = false;
                }
            }
        }
    }
    let mut trimmed = 0;
    for (start, end, ok) in candidates {
        if !ok {
            continue;
        }
        // SAFETY: the range is one of our own read-only, never-written file mappings;
        // MADV_DONTNEED only drops page-table entries and the file supplies the same
        // content on the next fault.
        #[allow(unsafe_code)]
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            trimmed += end - start;
        }
    }
    trimmed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winsize_round_trips_on_a_real_pty() -> anyhow::Result<()> {
        let pty = nix::pty::openpty(None, None)?;
        set_winsize(pty.master.as_raw_fd(), 40, 120)?;
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
        // SAFETY: `ws` is a valid, writable winsize for the duration of the call.
        unsafe { tiocgwinsz(pty.slave.as_raw_fd(), &mut ws) }?;
        assert_eq!((ws.ws_row, ws.ws_col), (40, 120));
        Ok(())
    }

    #[test]
    fn nonblocking_flag_is_set() -> anyhow::Result<()> {
        let (r, _w) = nix::unistd::pipe()?;
        set_nonblocking(r.as_raw_fd())?;
        let fl = OFlag::from_bits_truncate(fcntl(r.as_raw_fd(), FcntlArg::F_GETFL)?);
        assert!(fl.contains(OFlag::O_NONBLOCK));
        Ok(())
    }

    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn trimming_drops_clean_text_pages_and_the_process_keeps_working() {
        // Touch a lot of code and data first (formatting, allocation, file reading).
        let before_work: String = (0..2000).map(|i| format!("{i:x}")).collect();
        let before = rss_kb();
        let advised = trim_readonly_file_pages();
        let after = rss_kb();
        assert!(advised > 0, "some read-only file mapping was advised");
        assert!(
            after < before,
            "file-backed RSS went down: {before} kB -> {after} kB"
        );
        // Code and read-only data fault back in from the files and still work.
        let again: String = (0..2000).map(|i| format!("{i:x}")).collect();
        assert_eq!(before_work, again);
        assert!(std::fs::read_to_string("/proc/self/maps").is_ok());
    }
}
