//! One load client: picks an op by weight, issues it over a fresh or a kept-alive connection,
//! and records every request it made. A container cycle, once started, always runs to the
//! delete (retried until it succeeds or the attempts run out), even after stop.

use crate::config::{Mix, API_PREFIX};
use crate::http::{Fail, Http};
use crate::record::{now_ns, ConnKind, FailureSample, Op, Outcome, Record, SAMPLES_PER_KIND};
use crate::{Config, Progress, StopToken};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// What every client of a run shares.
pub(crate) struct Shared {
    pub cfg: Config,
    /// The mix in effect (inspect is 0 when there is nothing to inspect).
    pub mix: Mix,
    pub create_body: Vec<u8>,
    pub ids: Vec<String>,
    pub stop: StopToken,
    pub progress: Arc<Progress>,
    /// Prefix of the cycle containers' names, unique per run.
    pub tag: String,
}

/// What a client hands back when it stops.
#[derive(Default)]
pub(crate) struct ClientOut {
    pub records: Vec<Record>,
    pub samples: Vec<FailureSample>,
    pub leaked: Vec<String>,
}

/// The result of one request, before it is recorded.
type Result1 = (Outcome, Option<String>);

/// A connection (or none yet) with its buffers.
struct Link {
    kind: ConnKind,
    http: Http,
    conn: Option<UnixStream>,
}

impl Link {
    /// One request under the per-request timeout; `ok` lists the expected statuses.
    async fn request(
        &mut self,
        socket: &Path,
        timeout: Duration,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        ok: &[u16],
    ) -> Result1 {
        match tokio::time::timeout(timeout, self.request_inner(socket, method, path, body, ok))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                (
                    Outcome::Timeout,
                    Some(format!(
                        "{method} {path}: no complete response within {timeout:?}"
                    )),
                )
            }
        }
    }

    async fn request_inner(
        &mut self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        ok: &[u16],
    ) -> Result1 {
        let mut stream = match self.conn.take() {
            Some(s) => s,
            None => match UnixStream::connect(socket).await {
                Ok(s) => s,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    let outcome = match errno {
                        libc::ECONNREFUSED => Outcome::Refused,
                        libc::EAGAIN => Outcome::ConnectEagain,
                        _ => Outcome::ConnectError { errno },
                    };
                    let msg = format!("{method} {path}: connect {}: {e}", socket.display());
                    return (outcome, Some(msg));
                }
            },
        };
        let close = self.kind == ConnKind::Fresh;
        match self
            .http
            .exchange(&mut stream, method, path, body, close)
            .await
        {
            Ok(resp) => {
                if resp.reusable && !close {
                    self.conn = Some(stream);
                }
                if resp.status < 500 && ok.contains(&resp.status) {
                    (Outcome::Ok, None)
                } else {
                    let n = self.http.body.len().min(200);
                    let text = String::from_utf8_lossy(&self.http.body[..n]);
                    let msg = format!("{method} {path}: status {}: {}", resp.status, text.trim());
                    (
                        Outcome::HttpError {
                            status: resp.status,
                        },
                        Some(msg),
                    )
                }
            }
            Err(Fail::Io {
                io,
                errno,
                received,
                msg,
            }) => (
                Outcome::IoError {
                    io,
                    errno,
                    received,
                },
                Some(format!("{method} {path}: {msg}")),
            ),
            Err(Fail::Malformed(msg)) => (
                Outcome::HttpError { status: 0 },
                Some(format!("{method} {path}: {msg}")),
            ),
        }
    }
}

/// One client's state.
struct Client {
    shared: Arc<Shared>,
    idx: u32,
    link: Link,
    rng: u64,
    path: String,
    seq: u64,
    samples_per_kind: [usize; Outcome::NAMES.len()],
    /// Whether a request of the current op failed.
    last_failed: bool,
    out: ClientOut,
}

/// Runs client `idx` until the stop token is triggered.
pub(crate) async fn run_client(shared: Arc<Shared>, idx: u32, kind: ConnKind) -> ClientOut {
    let seed = now_ns() ^ (u64::from(idx) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut c = Client {
        shared,
        idx,
        link: Link {
            kind,
            http: Http::default(),
            conn: None,
        },
        rng: seed | 1,
        path: String::with_capacity(128),
        seq: 0,
        samples_per_kind: [0; Outcome::NAMES.len()],
        last_failed: false,
        out: ClientOut {
            records: Vec::with_capacity(4096),
            ..ClientOut::default()
        },
    };
    let stop = c.shared.stop.clone();
    let pause = c.shared.cfg.pause.unwrap_or_default();
    let backoff = c.shared.cfg.failure_backoff;
    while !stop.is_stopped() {
        c.last_failed = false;
        c.one().await;
        let wait = if c.last_failed {
            pause.max(backoff)
        } else {
            pause
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.stopped() => {}
            }
        }
    }
    c.link.conn = None;
    c.out
}

impl Client {
    /// xorshift64*: cheap and good enough to pick ops and ids.
    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Picks and runs one op (a whole cycle counts as one).
    async fn one(&mut self) {
        let mix = self.shared.mix;
        let mut r = self.next_rand() % u64::from(mix.total());
        if r < u64::from(mix.ping) {
            self.set_path(format_args!("/_ping"));
            self.simple(Op::Ping).await;
            return;
        }
        r -= u64::from(mix.ping);
        if r < u64::from(mix.list) {
            self.set_path(format_args!("/containers/json?all=1"));
            self.simple(Op::List).await;
            return;
        }
        r -= u64::from(mix.list);
        if r < u64::from(mix.inspect) {
            // `run` zeroes the inspect weight when there are no ids.
            let shared = Arc::clone(&self.shared);
            let n = shared.ids.len().max(1) as u64;
            let i = (self.next_rand() % n) as usize;
            match shared.ids.get(i) {
                Some(id) => {
                    self.set_path(format_args!("/containers/{id}/json"));
                    self.simple(Op::Inspect).await;
                }
                None => {
                    self.set_path(format_args!("/_ping"));
                    self.simple(Op::Ping).await;
                }
            }
            return;
        }
        self.cycle().await;
    }

    fn set_path(&mut self, rest: std::fmt::Arguments<'_>) {
        self.path.clear();
        self.path.push_str(API_PREFIX);
        // Writing into a String cannot fail.
        let _ = self.path.write_fmt(rest);
    }

    /// A GET expecting 200 on `self.path`.
    async fn simple(&mut self, op: Op) {
        self.timed(op, "GET", false, &[200]).await;
    }

    /// Runs one request on `self.path` (with the create body when `create_body`) and records
    /// it.
    async fn timed(&mut self, op: Op, method: &str, create_body: bool, ok: &[u16]) -> Outcome {
        let start_ns = now_ns();
        let t0 = Instant::now();
        let body = create_body.then_some(self.shared.create_body.as_slice());
        let (outcome, msg) = self
            .link
            .request(
                &self.shared.cfg.socket,
                self.shared.cfg.timeout,
                method,
                &self.path,
                body,
                ok,
            )
            .await;
        let latency_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.record(
            Record {
                start_ns,
                latency_ns,
                op,
                conn: self.link.kind,
                outcome,
                client: self.idx,
            },
            msg,
        );
        outcome
    }

    fn record(&mut self, rec: Record, msg: Option<String>) {
        let progress = &self.shared.progress;
        progress.completed.fetch_add(1, Ordering::Relaxed);
        if !rec.outcome.is_ok() {
            self.last_failed = true;
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let name = rec.outcome.name();
            let k = Outcome::NAMES.iter().position(|n| *n == name).unwrap_or(0);
            if self.samples_per_kind[k] < SAMPLES_PER_KIND {
                self.samples_per_kind[k] += 1;
                self.out.samples.push(FailureSample {
                    outcome: name.to_string(),
                    op: rec.op,
                    conn: rec.conn,
                    start_ns: rec.start_ns,
                    message: msg.unwrap_or_default(),
                });
            }
        }
        self.out.records.push(rec);
    }

    /// create + start + delete of one container; the delete always runs once create may
    /// have created something.
    async fn cycle(&mut self) {
        self.seq += 1;
        let name = format!("{}-{}-{}", self.shared.tag, self.idx, self.seq);
        self.set_path(format_args!("/containers/create?name={name}"));
        let outcome = self.timed(Op::Create, "POST", true, &[201]).await;
        let target = match outcome {
            Outcome::Ok => match serde_json::from_slice::<serde_json::Value>(&self.link.http.body)
                .ok()
                .and_then(|v| v.get("Id").and_then(|id| id.as_str()).map(str::to_string))
            {
                Some(id) => id,
                None => name,
            },
            // Nothing reached the server.
            Outcome::Refused | Outcome::ConnectEagain | Outcome::ConnectError { .. } => return,
            // The container may or may not exist: remove it by name, absent is fine.
            _ => {
                self.delete(&name, true).await;
                return;
            }
        };
        self.set_path(format_args!("/containers/{target}/start"));
        self.timed(Op::Start, "POST", false, &[204, 304]).await;
        self.delete(&target, false).await;
    }

    /// Force-removes `target`, retrying failed attempts; a 404 is accepted when `maybe_absent`
    /// or after an earlier attempt failed (that attempt may have removed it).
    async fn delete(&mut self, target: &str, maybe_absent: bool) {
        let attempts = self.shared.cfg.delete_attempts;
        for attempt in 0..attempts {
            self.set_path(format_args!("/containers/{target}?force=1"));
            let ok: &[u16] = if maybe_absent || attempt > 0 {
                &[204, 404]
            } else {
                &[204]
            };
            if self.timed(Op::Delete, "DELETE", false, ok).await.is_ok() {
                return;
            }
            if attempt + 1 < attempts {
                let ms = (100u64 << attempt.min(4)).min(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        self.out.leaked.push(target.to_string());
    }
}
