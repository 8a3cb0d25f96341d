//! A TCP proxy in front of a test registry: counts the requests that pass (by request line)
//! and can hold the response to one blob after some bytes until the test opens a gate, to
//! catch a pull in the middle of a layer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct Shared {
    /// Request lines seen ("GET /v2/…"), with how often.
    requests: Mutex<HashMap<String, usize>>,
    /// (blob digest, bytes) — hold a response to that blob after that many body bytes.
    hold: Mutex<Option<(String, usize)>>,
    gate: (Mutex<bool>, Condvar),
    /// Whether a held response reached its limit (the pull is stuck in the layer).
    holding: AtomicBool,
    stop: AtomicBool,
}

/// The proxy; it stops accepting when dropped (open connections end with their peers).
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = l.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                connection(client, server, s.clone());
            }
        });
        Proxy { port, shared }
    }

    /// `127.0.0.1:<port>`, the registry name to pull through.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds the response to `GET …/blobs/<digest>` after `bytes` bytes until [`Proxy::open`].
    pub fn hold(&self, digest: &str, bytes: usize) {
        *self.shared.hold.lock().expect("hold") = Some((digest.to_string(), bytes));
        *self.shared.gate.0.lock().expect("gate") = false;
    }

    /// Lets held responses go on.
    pub fn open(&self) {
        *self.shared.gate.0.lock().expect("gate") = true;
        self.shared.gate.1.notify_all();
    }

    /// Whether a response is held at its limit now.
    pub fn holding(&self) -> bool {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// How many requests had a request line containing `part` (e.g. `blobs/sha256:…`).
    pub fn count(&self, part: &str) -> usize {
        self.shared
            .requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|(k, _)| k.contains(part))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.open();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Two threads per connection: requests upstream (request lines recorded; pulls send no
/// bodies), responses back (held when the current request is the held blob).
fn connection(client: TcpStream, server: TcpStream, s: Arc<Shared>) {
    let current = Arc::new(Mutex::new(String::new()));
    let (mut c_in, mut s_out) = match (client.try_clone(), server.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return,
    };
    let (s2, cur2) = (s.clone(), current.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        let mut pending = Vec::new();
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&pending[..i]).to_string();
                pending.drain(..i + 2);
                if line.starts_with("GET ") || line.starts_with("HEAD ") {
                    *s2.requests
                        .lock()
                        .expect("requests")
                        .entry(line.clone())
                        .or_default() += 1;
                    *cur2.lock().expect("current") = line;
                }
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut s_in, mut c_out) = (server, client);
        let mut buf = [0u8; 16 << 10];
        let mut sent_for: (String, usize) = (String::new(), 0);
        loop {
            let n = match s_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let line = current.lock().expect("current").clone();
            if sent_for.0 != line {
                sent_for = (line.clone(), 0);
            }
            let limit = s
                .hold
                .lock()
                .expect("hold")
                .as_ref()
                .filter(|(d, _)| line.contains(&format!("blobs/{d}")))
                .map(|(_, b)| *b);
            let mut off = 0;
            if let Some(limit) = limit {
                if sent_for.1 + n > limit && !*s.gate.0.lock().expect("gate") {
                    let first = limit.saturating_sub(sent_for.1).min(n);
                    if c_out.write_all(&buf[..first]).is_err() {
                        break;
                    }
                    sent_for.1 += first;
                    off = first;
                    s.holding.store(true, Ordering::SeqCst);
                    let mut open = s.gate.0.lock().expect("gate");
                    while !*open {
                        open = s.gate.1.wait(open).expect("gate wait");
                    }
                    s.holding.store(false, Ordering::SeqCst);
                }
            }
            if c_out.write_all(&buf[off..n]).is_err() {
                break;
            }
            sent_for.1 += n - off;
        }
        let _ = c_out.shutdown(Shutdown::Write);
    });
}
