//! A real terminal for the docker CLI: runs a command on the slave side of a fresh pty of a
//! given size (its controlling terminal, through util-linux `setsid --ctty`), collects what it
//! prints, and lets the test type into it.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long [`Pty::expect`] and [`Pty::wait`] wait by default.
pub const PTY_TIMEOUT: Duration = Duration::from_secs(30);

/// A command running on a pty.
pub struct Pty {
    master: File,
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
}

/// What the terminal showed, and whether the reader saw its end.
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    eof: bool,
}

impl Pty {
    /// Starts `cmd` (program and environment taken from it) on a `rows`×`cols` pty.
    pub fn spawn(cmd: &Command, rows: u16, cols: u16) -> Pty {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave = File::from(pty.slave);
        let mut c = Command::new("setsid");
        c.arg("--ctty").arg("--wait").arg(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        let child = c.spawn().expect("spawn on pty");
        let master = File::from(pty.master);
        let mut reader = master.try_clone().expect("dup master");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // EIO once every slave fd is closed.
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*sink;
                {
                    let mut o = lock.lock().expect("pty buffer");
                    o.bytes.extend_from_slice(&buf[..n]);
                    o.eof = n == 0;
                }
                cv.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Pty { master, child, out }
    }

    /// Resizes the terminal; the kernel sends SIGWINCH to its foreground process group (the
    /// docker CLI, which then resizes the container's tty through the API).
    #[allow(dead_code)]
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the fd is our pty master.
        #[allow(unsafe_code)]
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Types `data` into the terminal.
    pub fn send(&mut self, data: &[u8]) {
        self.master.write_all(data).expect("write to pty");
    }

    /// Everything printed so far, lossily decoded.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.0.lock().expect("pty buffer").bytes).into_owned()
    }

    /// Waits until the output contains `needle` (panics after [`PTY_TIMEOUT`]).
    pub fn expect(&self, needle: &str) {
        let deadline = Instant::now() + PTY_TIMEOUT;
        let (lock, cv) = &*self.out;
        let mut g = lock.lock().expect("pty buffer");
        while !String::from_utf8_lossy(&g.bytes).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {needle:?} on the pty; got {:?}",
                String::from_utf8_lossy(&g.bytes)
            );
            g = cv
                .wait_timeout(g, left.min(Duration::from_millis(200)))
                .expect("pty buffer")
                .0;
        }
    }

    /// Waits for the command to exit and for everything it printed (panics after
    /// [`PTY_TIMEOUT`], killing it).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PTY_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for pty child") {
                self.wait_eof(deadline);
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "command on the pty did not exit; output {:?}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Pty {
    /// Waits until the reader drained the terminal (every slave fd closed), or `deadline`.
    fn wait_eof(&self, deadline: Instant) {
        let (lock, cv) = &*self.out;
        let mut g = lock.lock().expect("pty buffer");
        while !g.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = cv
                .wait_timeout(g, left.min(Duration::from_millis(200)))
                .expect("pty buffer")
                .0;
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
