//! Tests of the load generator against a tiny fake Docker API server on a unix socket, which
//! counts what it received so the generator's records can be checked against it.

use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers like a daemon; closes gracefully (`Connection: close`) every third response.
    Normal,
    /// Answers, then closes the kept-alive connection while it is idle.
    CloseIdle,
    /// Answers everything with 500.
    Fail500,
    /// Reads the request and never answers.
    Hang,
}

#[derive(Default)]
struct State {
    hits: HashMap<Op, u64>,
    /// id -> name of the containers created and not yet removed.
    live: HashMap<String, String>,
    next: u64,
    accepted: u64,
    bad_bodies: u64,
}

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    fn state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("state lock"))
    }
}

const IDS: [&str; 3] = ["aaa111", "bbb222", "ccc333"];

fn fake(mode: Mode) -> Fake {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).expect("bind the fake socket");
    let state = Arc::new(Mutex::new(State::default()));
    let st = Arc::clone(&state);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            st.lock().expect("state lock").accepted += 1;
            tokio::spawn(serve(s, mode, Arc::clone(&st)));
        }
    });
    Fake {
        _dir: dir,
        path,
        state,
        task,
    }
}

/// Serves requests on one connection until it is closed.
async fn serve(mut s: UnixStream, mode: Mode, st: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut served = 0u32;
    loop {
        let (method, path, close, head, body_len) = loop {
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut h);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                };
                let close = header("connection").is_some_and(|v| v == "close");
                let len = header("content-length").and_then(|v| v.parse().ok());
                let m = req.method.unwrap_or("").to_string();
                break (
                    m,
                    req.path.unwrap_or("").to_string(),
                    close,
                    n,
                    len.unwrap_or(0),
                );
            }
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        };
        while buf.len() < head + body_len {
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        }
        let body: Vec<u8> = buf.drain(..head + body_len).skip(head).collect();
        if mode == Mode::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        served += 1;
        let (status, reply, op) = route(&method, &path, &body, &st, mode);
        let graceful = mode == Mode::Normal && served % 3 == 0;
        let mut out = format!("HTTP/1.1 {status} X\r\nApi-Version: 1.41\r\n");
        if close || graceful {
            out.push_str("Connection: close\r\n");
        }
        if op == Some(Op::List) && mode == Mode::Normal {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
            for part in reply.as_bytes().chunks(5) {
                out.push_str(&format!(
                    "{:x}\r\n{}\r\n",
                    part.len(),
                    String::from_utf8_lossy(part)
                ));
            }
            out.push_str("0\r\n\r\n");
        } else if status == 204 {
            out.push_str("\r\n");
        } else {
            out.push_str(&format!("Content-Length: {}\r\n\r\n{reply}", reply.len()));
        }
        if s.write_all(out.as_bytes()).await.is_err() || close || graceful {
            return;
        }
        if mode == Mode::CloseIdle {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        }
    }
}

/// The fake daemon: (status, body, op counted).
fn route(
    method: &str,
    path: &str,
    body: &[u8],
    st: &Mutex<State>,
    mode: Mode,
) -> (u16, String, Option<Op>) {
    let mut st = st.lock().expect("state lock");
    let Some(p) = path.strip_prefix("/v1.41") else {
        return (400, "no version prefix".into(), None);
    };
    let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
    let op = match (method, parts.as_slice()) {
        ("GET", ["_ping"]) => Op::Ping,
        ("GET", ["containers", "json?all=1"]) => Op::List,
        ("GET", ["containers", "json"]) => {
            let list: Vec<_> = IDS
                .iter()
                .map(|id| serde_json::json!({ "Id": id }))
                .collect();
            return (200, serde_json::Value::from(list).to_string(), None);
        }
        ("GET", ["containers", _, "json"]) => Op::Inspect,
        ("POST", ["containers", c]) if c.starts_with("create?name=berth-load-") => Op::Create,
        ("POST", ["containers", _, "start"]) => Op::Start,
        ("DELETE", ["containers", c]) if c.ends_with("?force=1") => Op::Delete,
        _ => return (400, format!("unexpected {method} {path}"), None),
    };
    *st.hits.entry(op).or_default() += 1;
    if mode == Mode::Fail500 {
        return (500, r#"{"message":"boom"}"#.into(), Some(op));
    }
    let known = |st: &State, c: &str| IDS.contains(&c) || st.live.contains_key(c);
    let (status, reply) = match op {
        Op::Ping => (200, "OK".to_string()),
        Op::List => {
            let ids = IDS
                .iter()
                .map(|s| s.to_string())
                .chain(st.live.keys().cloned());
            let list: Vec<_> = ids.map(|id| serde_json::json!({ "Id": id })).collect();
            (200, serde_json::Value::from(list).to_string())
        }
        Op::Inspect if known(&st, parts[1]) => (200, format!(r#"{{"Id":"{}"}}"#, parts[1])),
        Op::Create => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if v["Image"] != "img:test" || v["HostConfig"]["NetworkMode"] != "none" {
                st.bad_bodies += 1;
            }
            st.next += 1;
            let id = format!("id{}", st.next);
            let name = parts[1].trim_start_matches("create?name=").to_string();
            st.live.insert(id.clone(), name);
            (201, format!(r#"{{"Id":"{id}","Warnings":[]}}"#))
        }
        Op::Start if st.live.contains_key(parts[1]) => (204, String::new()),
        Op::Delete => {
            let c = parts[1].trim_end_matches("?force=1");
            let before = st.live.len();
            st.live.retain(|id, name| id != c && name != c);
            if st.live.len() < before {
                (204, String::new())
            } else {
                (404, r#"{"message":"no such container"}"#.into())
            }
        }
        _ => (404, r#"{"message":"no such container"}"#.into()),
    };
    (status, reply, Some(op))
}

fn config(f: &Fake, clients: usize, mix: &str) -> Config {
    let mut cfg = Config::new(&f.path);
    cfg.clients = clients;
    cfg.image = "img:test".into();
    cfg.mix = mix.parse().expect("mix parses");
    cfg
}

/// Waits until the load has completed `n` requests (bounded, so a stuck load fails).
async fn until_completed(load: &LoadHandle, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while load.progress().completed() < n {
        assert!(
            tokio::time::Instant::now() < deadline && !load.is_finished(),
            "only {} requests completed",
            load.progress().completed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_server_every_request_ok_and_counted() {
    let f = fake(Mode::Normal);
    let load = start(config(&f, 8, "ping=4,list=2,inspect=3,cycle=1"));
    until_completed(&load, 600).await;
    let run = load.finish().await.expect("run");
    let r = run.report(&[]);
    assert!(r.passed(), "{r}");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.count("ok"), run.records.len() as u64);
    let hits = f.state(|s| s.hits.clone());
    for op in Op::ALL {
        let n = r.op_count(op, None);
        assert!(n > 0, "no {op:?} request: {r}");
        assert_eq!(
            n,
            hits.get(&op).copied().unwrap_or(0),
            "{op:?} count differs from the server's"
        );
    }
    let (create, start_n, delete) = (
        r.op_count(Op::Create, None),
        r.op_count(Op::Start, None),
        r.op_count(Op::Delete, None),
    );
    assert_eq!(
        (start_n, delete),
        (create, create),
        "every cycle ran to the delete"
    );
    assert_eq!(f.state(|s| s.live.len()), 0, "cycle containers left behind");
    assert_eq!(
        f.state(|s| s.bad_bodies),
        0,
        "create bodies lacked the image or network mode"
    );
    // Fresh clients connect per request; keep-alive ones reconnect only after the graceful
    // close on every third response (plus the discovery connection).
    let (fresh, keep) = (r.conns["fresh"].total, r.conns["keepalive"].total);
    assert!(fresh > 0 && keep > 0, "{r}");
    let accepted = f.state(|s| s.accepted);
    assert!(
        accepted <= fresh + keep / 3 + 4 + 1,
        "{accepted} connections for {fresh} fresh and {keep} keep-alive requests"
    );
    assert!(accepted > fresh, "keep-alive clients never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_close_is_an_io_error() {
    let f = fake(Mode::CloseIdle);
    let mut cfg = config(&f, 4, "ping=1");
    cfg.pause = Some(Duration::from_millis(30));
    let load = start(cfg);
    until_completed(&load, 40).await;
    let run = load.finish().await.expect("run");
    let r = run.report(&[]);
    let io = r.count("io_error");
    assert!(io > 0, "{r}");
    assert_eq!(io, r.all.failed, "only io errors expected: {r}");
    assert_eq!(r.conns["fresh"].failed, 0, "{r}");
    assert!(
        r.conns["fresh"].total > 0 && r.conns["keepalive"].outcomes["ok"] > 0,
        "{r}"
    );
    for rec in run.records.iter().filter(|rec| !rec.outcome.is_ok()) {
        assert_eq!(rec.conn, ConnKind::Keepalive);
        assert!(
            matches!(
                rec.outcome,
                Outcome::IoError {
                    received: false,
                    ..
                }
            ),
            "{:?}",
            rec.outcome
        );
    }
    let sample = r
        .failures
        .iter()
        .find(|s| s.outcome == "io_error")
        .expect("an io_error sample");
    assert!(
        sample.message.contains("/v1.41/_ping"),
        "{}",
        sample.message
    );
    assert!(!r.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gone.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let mut cfg = Config::new(&path);
    cfg.clients = 4;
    cfg.mix = "ping=1,cycle=1".parse().expect("mix");
    cfg.duration = Some(Duration::from_millis(200));
    let run = start(cfg).join().await.expect("run");
    let r = run.report(&[]);
    // No pause: only the 10 ms failure back-off keeps the clients from spinning.
    assert!(r.all.total >= 4 && r.all.total <= 4 * (200 / 10 + 2), "{r}");
    assert_eq!(r.count("refused"), r.all.total, "{r}");
    assert_eq!(
        r.op_count(Op::Start, None) + r.op_count(Op::Delete, None),
        0,
        "{r}"
    );
    assert!(r.leaked.is_empty());
    assert!(r.failures.iter().all(|s| s.outcome == "refused"));
    assert!(r.failures.len() <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_http_errors_and_cleanup_is_tried() {
    let f = fake(Mode::Fail500);
    let mut cfg = config(&f, 4, "ping=2,list=1,cycle=1");
    cfg.inspect_ids = Some(vec![]);
    cfg.delete_attempts = 2;
    let load = start(cfg);
    until_completed(&load, 60).await;
    let run = load.finish().await.expect("run");
    let r = run.report(&[]);
    assert_eq!(r.count("http_error"), r.all.total, "{r}");
    assert!(run
        .records
        .iter()
        .all(|rec| rec.outcome == Outcome::HttpError { status: 500 }));
    let hits = f.state(|s| s.hits.clone());
    for op in Op::ALL {
        assert_eq!(
            r.op_count(op, None),
            hits.get(&op).copied().unwrap_or(0),
            "{op:?}"
        );
    }
    // A failed create may have created the container: it is deleted by name, twice here,
    // then reported leaked.
    let creates = r.op_count(Op::Create, None);
    assert!(creates > 0, "{r}");
    assert_eq!(r.op_count(Op::Start, None), 0);
    assert_eq!(r.op_count(Op::Delete, None), 2 * creates);
    assert_eq!(r.leaked.len() as u64, creates);
    assert!(r.leaked.iter().all(|n| n.starts_with("berth-load-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_time_out() {
    let f = fake(Mode::Hang);
    let mut cfg = config(&f, 2, "ping=1");
    cfg.timeout = Duration::from_millis(100);
    cfg.duration = Some(Duration::from_millis(250));
    let run = start(cfg).join().await.expect("run");
    let r = run.report(&[]);
    assert!(r.all.total >= 2, "{r}");
    assert_eq!(r.count("timeout"), r.all.total, "{r}");
    assert!(run.records.iter().all(|rec| rec.latency_ns >= 100_000_000));
}
