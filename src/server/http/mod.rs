//! A small HTTP/1.1 server for the Docker API over unix sockets.
//!
//! We parse with `httparse` (hyper's own parser) instead of running hyper's server because
//! berth must be able to give a client connection away at any request boundary or in the
//! middle of a response: to a shim (attach, exec, wait, `logs -f`: invariant 2) and, later,
//! to the next worker generation (idle keep-alive connections during a live upgrade).
//! hyper's server owns the socket and only returns it after an `Upgrade`, which `wait` and
//! `logs` never send. Here the connection loop owns the raw `UnixStream` plus the bytes it
//! has read ahead, and a handler can take both ([`Response::Takeover`]).

mod body;
pub mod gate;

use body::{fill, read_chunked, read_sized};
use bytes::{Buf, BytesMut};
pub use gate::{Admission, Gate, Phase};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Largest request head we accept.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies up to this size stay in memory; larger ones are spooled to a temp file.
const MEM_BODY: usize = 4 * 1024 * 1024;
/// Largest JSON body a handler may ask for in memory.
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path with any `/vX.Y` prefix removed, percent-decoded.
    pub path: String,
    /// The request target as the client sent it.
    pub raw_target: String,
    /// The API version from the prefix, when there was one.
    pub api_version: Option<String>,
    /// Query parameters (each may repeat).
    pub query: HashMap<String, Vec<String>>,
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Body,
}

/// A request body.
#[derive(Debug)]
pub enum Body {
    /// In memory (JSON and small uploads).
    Mem(Vec<u8>),
    /// Spooled to an unlinked temp file (large uploads).
    File(std::fs::File),
}

impl Body {
    /// The body as bytes, refusing bodies that are too big to hold.
    pub fn bytes(self) -> Result<Vec<u8>, String> {
        match self {
            Body::Mem(b) => Ok(b),
            Body::File(mut f) => {
                use std::io::{Read, Seek};
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len as usize > MAX_JSON_BODY {
                    return Err(format!("request body too large ({len} bytes)"));
                }
                let mut v = Vec::with_capacity(len as usize);
                f.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| e.to_string())?;
                f.read_to_end(&mut v).map_err(|e| e.to_string())?;
                Ok(v)
            }
        }
    }

    /// The body as a file at offset 0 (one in memory is written to an unlinked temp
    /// file): to hand the request to another process.
    pub fn into_file(self) -> std::io::Result<std::fs::File> {
        use std::io::{Seek, Write};
        let mut f = match self {
            Body::File(f) => f,
            Body::Mem(b) => {
                let mut f = tempfile::tempfile()?;
                f.write_all(&b)?;
                f
            }
        };
        f.seek(std::io::SeekFrom::Start(0))?;
        Ok(f)
    }

    /// The body as a blocking reader (for tar uploads).
    pub fn reader(self) -> Box<dyn std::io::Read + Send> {
        match self {
            Body::Mem(b) => Box::new(std::io::Cursor::new(b)),
            Body::File(mut f) => {
                use std::io::Seek;
                let _ = f.seek(std::io::SeekFrom::Start(0));
                Box::new(f)
            }
        }
    }
}

impl Request {
    /// First value of a query parameter.
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Every value of a repeated query parameter.
    pub fn q_all(&self, key: &str) -> Vec<String> {
        self.query.get(key).cloned().unwrap_or_default()
    }

    /// A boolean query parameter (`1`, `true`, `True`); absent = `default`.
    pub fn q_bool(&self, key: &str, default: bool) -> bool {
        match self.q(key) {
            None => default,
            Some(v) => matches!(v, "1" | "true" | "True" | "TRUE" | "yes"),
        }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The request as bytes another server can read again (for a hand-over to the next
    /// generation); `None` when the body was spooled to disk or it is too large.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let Body::Mem(body) = &self.body else {
            return None;
        };
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.raw_target);
        for (k, v) in &self.headers {
            if k == "content-length" || k == "transfer-encoding" {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        (bytes.len() <= gate::MAX_PARKED).then_some(bytes)
    }
}

/// A connection handed to a handler after the response head was written.
pub struct Conn {
    /// The client socket.
    pub stream: UnixStream,
    /// Bytes already read from the socket past the request.
    pub leftover: Vec<u8>,
}

/// How a response stream is continued by the next generation: the producer pushes the
/// sequence number of each chunk to `seqs` before it sends the chunk; the connection pops
/// one per chunk written, so it knows the last one the client got.
pub struct Resumable {
    /// The request's raw query string (filters, since, until).
    pub query: String,
    /// Sequence numbers of the chunks sent, in order.
    pub seqs: Arc<std::sync::Mutex<std::collections::VecDeque<u64>>>,
    /// The cursor before the first chunk.
    pub after: Option<u64>,
}

/// What a handler returns.
pub enum Response {
    /// A complete response.
    Full {
        /// HTTP status.
        status: u16,
        /// Content-Type, if there is a body.
        content_type: Option<&'static str>,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body bytes.
        body: Vec<u8>,
    },
    /// A chunked stream; ends when the sender is dropped.
    Stream {
        /// HTTP status.
        status: u16,
        /// Content-Type.
        content_type: &'static str,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Chunks.
        rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
        /// Set for streams the next generation can continue (events); others are waited
        /// for by a freeze.
        resumable: Option<Resumable>,
    },
    /// Write a head, then give the connection to `then` (the connection is not reused).
    Takeover {
        /// 101 (hijack), 200 (a chunked body written by whoever takes the connection) or 0
        /// (no head: whoever takes the connection writes the whole response).
        status: u16,
        /// Content-Type.
        content_type: &'static str,
        /// Receives the connection.
        then: Box<dyn FnOnce(Conn) -> futures::future::BoxFuture<'static, ()> + Send>,
    },
}

impl Response {
    /// The status this response will carry.
    pub fn status_code(&self) -> u16 {
        match self {
            Response::Full { status, .. }
            | Response::Stream { status, .. }
            | Response::Takeover { status, .. } => *status,
        }
    }

    /// A JSON body with a status.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::Full {
                    status,
                    content_type: Some("application/json"),
                    headers: vec![],
                    body,
                }
            }
            Err(e) => Response::error(500, &format!("encode response: {e}")),
        }
    }

    /// A Docker error body.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "message": message });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        Response::Full {
            status,
            content_type: Some("application/json"),
            headers: vec![],
            body: bytes,
        }
    }

    /// An empty response.
    pub fn empty(status: u16) -> Response {
        Response::Full {
            status,
            content_type: None,
            headers: vec![],
            body: vec![],
        }
    }

    /// A plain-text body.
    pub fn text(status: u16, text: &str) -> Response {
        Response::Full {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            headers: vec![],
            body: text.as_bytes().to_vec(),
        }
    }
}

/// Headers dockerd adds to every response.
pub fn common_headers() -> String {
    format!(
        "Api-Version: {}\r\nDocker-Experimental: false\r\nOstype: linux\r\nServer: Docker/{} (linux)\r\n",
        berth_api::API_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "UPGRADED",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Encodes one chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The terminating chunk.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Something that turns requests into responses.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, req: Request) -> futures::future::BoxFuture<'_, Response>;
}

/// Why reading a request stopped.
enum ReadOutcome {
    Request(Request, bool),
    Closed,
    Bad(u16, String),
}

/// Serves one connection until it closes, is taken over by a handler, or is handed to the
/// next worker generation through `gate`. `initial` holds bytes already read from the
/// socket (a connection handed over by the previous generation).
///
/// `guard` counts the connection in the gate from the moment it was accepted (taken by the
/// caller before spawning this task, so that a freeze cannot miss it).
pub async fn serve_conn<H: Handler + ?Sized>(
    stream: UnixStream,
    handler: &H,
    gate: &Arc<Gate>,
    initial: Vec<u8>,
    guard: gate::ConnGuard,
) {
    serve(stream, handler, gate, initial, guard, None).await
}

/// Serves a connection handed over by the previous generation with a request it had read
/// completely (`parked`, whose body is `body`), then the connection on (`initial` holds
/// the bytes read past that request).
pub async fn serve_parked<H: Handler + ?Sized>(
    stream: UnixStream,
    handler: &H,
    gate: &Arc<Gate>,
    parked: crate::ctl::ParkedRequest,
    body: std::fs::File,
    initial: Vec<u8>,
    guard: gate::ConnGuard,
) {
    let (path, api_version, query) = split_target(&parked.raw_target);
    let req = Request {
        method: parked.method,
        path,
        raw_target: parked.raw_target,
        api_version,
        query,
        headers: parked.headers,
        body: Body::File(body),
    };
    serve(
        stream,
        handler,
        gate,
        initial,
        guard,
        Some((req, parked.keep_alive)),
    )
    .await
}

async fn serve<H: Handler + ?Sized>(
    mut stream: UnixStream,
    handler: &H,
    gate: &Arc<Gate>,
    initial: Vec<u8>,
    guard: gate::ConnGuard,
    mut first: Option<(Request, bool)>,
) {
    let _conn_guard = guard;
    let mut buf = BytesMut::with_capacity(8192.max(initial.len()));
    buf.extend_from_slice(&initial);
    let mut phase = gate.watch();
    loop {
        if buf.is_empty() && first.is_none() {
            // Idle between requests: a frozen generation gives the connection away.
            let frozen = tokio::select! {
                r = stream.readable() => r.is_err(),
                _ = phase.wait_for(|p| *p == Phase::Frozen) => true,
            };
            if frozen && gate.phase() == Phase::Frozen {
                if gate.is_orphaned() {
                    // Nobody to hand it to: close it unless a request is already there.
                    match stream.try_read_buf(&mut buf) {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                }
                match gate.hand_off(stream, Vec::new(), None) {
                    Ok(()) => return,
                    Err(s) => stream = s,
                }
            }
        }
        let next = match first.take() {
            Some((r, k)) => ReadOutcome::Request(r, k),
            None => read_request(&mut stream, &mut buf).await,
        };
        let (req, keep_alive) = match next {
            ReadOutcome::Request(r, k) => (r, k),
            ReadOutcome::Closed => return,
            ReadOutcome::Bad(status, msg) => {
                if let Some(p) = FullParts::of(Response::error(status, &msg)) {
                    let _ = write_full(&mut stream, p, false, false).await;
                }
                return;
            }
        };
        // An orphaned generation answers and closes: the next requests go to the backlog.
        let keep_alive = keep_alive && !gate.is_orphaned();
        let admitted = match gate.admit(&req).await {
            Admission::Admit(a) => a,
            Admission::Park(mut bytes) => {
                bytes.extend_from_slice(&buf);
                let _ = gate.hand_off(stream, bytes, None);
                return;
            }
            Admission::ParkWhole => {
                let head = crate::ctl::ParkedRequest {
                    method: req.method,
                    raw_target: req.raw_target,
                    headers: req.headers,
                    keep_alive,
                };
                match req.body.into_file() {
                    Ok(f) => {
                        let parked = Some((head, std::os::fd::OwnedFd::from(f)));
                        let _ = gate.hand_off_with(stream, buf.to_vec(), None, parked);
                    }
                    Err(e) => {
                        let msg = format!("hand the request to the next worker generation: {e}");
                        tracing::error!("{msg}");
                        if let Some(p) = FullParts::of(Response::error(500, &msg)) {
                            let _ = write_full(&mut stream, p, false, false).await;
                        }
                    }
                }
                return;
            }
        };
        let is_head = req.method == "HEAD";
        let resp = handler.handle(req).await;
        match resp {
            r @ Response::Full { .. } => {
                let Some(parts) = FullParts::of(r) else {
                    return;
                };
                let res = write_full(&mut stream, parts, keep_alive, is_head).await;
                drop(admitted);
                if res.is_err() || !keep_alive {
                    return;
                }
            }
            Response::Stream {
                status,
                content_type,
                headers,
                rx,
                resumable,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} {}\r\n{}Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n",
                    reason(status),
                    common_headers()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                let admitted = if resumable.is_some() {
                    // A resumable stream does not hold up a freeze: it is handed over with
                    // its cursor. Any other stream (a load's progress) is finished here.
                    drop(admitted);
                    None
                } else {
                    Some(admitted)
                };
                let Some(s) = pump(stream, gate, rx, resumable, admitted).await else {
                    return;
                };
                stream = s;
                if stream.write_all(LAST_CHUNK).await.is_err() || !keep_alive {
                    return;
                }
            }
            Response::Takeover {
                status,
                content_type,
                then,
            } => {
                let head = if status == 0 {
                    String::new()
                } else if status == 101 {
                    format!(
                        "HTTP/1.1 101 UPGRADED\r\nContent-Type: {content_type}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n{}\r\n",
                        common_headers()
                    )
                } else {
                    format!(
                        "HTTP/1.1 {status} {}\r\n{}Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                        reason(status),
                        common_headers()
                    )
                };
                if !head.is_empty() {
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                }
                let leftover = buf.to_vec();
                then(Conn { stream, leftover }).await;
                drop(admitted);
                return;
            }
        }
    }
}

/// Writes a response stream's chunks until its producer ends (the stream is returned, the
/// terminating chunk not yet written), the client goes away, or, for a resumable stream,
/// the generation freezes: then the connection is handed over with its cursor.
async fn pump(
    mut stream: UnixStream,
    gate: &Arc<Gate>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    resumable: Option<Resumable>,
    _admitted: Option<gate::Admitted>,
) -> Option<UnixStream> {
    let mut phase = gate.watch();
    let mut last = resumable.as_ref().and_then(|r| r.after);
    loop {
        let data = tokio::select! {
            d = rx.recv() => d,
            _ = phase.wait_for(|p| *p == Phase::Frozen), if resumable.is_some() => {
                let r = resumable?;
                let resume = crate::ctl::Resume::Events {
                    query: r.query,
                    after_seq: last,
                };
                drop(rx);
                let _ = gate.hand_off(stream, Vec::new(), Some(resume));
                return None;
            }
        };
        let Some(data) = data else {
            return Some(stream);
        };
        if let Some(r) = &resumable {
            let seq = r.seqs.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            if seq.is_some() {
                last = seq;
            }
        }
        if data.is_empty() {
            continue;
        }
        if stream.write_all(&chunk(&data)).await.is_err() {
            return None;
        }
    }
}

/// Continues a response stream handed over by the previous generation (its head was
/// written there), then serves the connection on.
pub async fn continue_stream<H: Handler + ?Sized>(
    stream: UnixStream,
    handler: &H,
    gate: &Arc<Gate>,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    resumable: Resumable,
    guard: gate::ConnGuard,
) {
    let Some(mut stream) = pump(stream, gate, rx, Some(resumable), None).await else {
        return;
    };
    if stream.write_all(LAST_CHUNK).await.is_err() {
        return;
    }
    serve_conn(stream, handler, gate, Vec::new(), guard).await
}

/// The parts of a complete response.
struct FullParts {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl FullParts {
    fn of(resp: Response) -> Option<FullParts> {
        match resp {
            Response::Full {
                status,
                content_type,
                headers,
                body,
            } => Some(FullParts {
                status,
                content_type,
                headers,
                body,
            }),
            _ => None,
        }
    }
}

async fn write_full(
    stream: &mut UnixStream,
    resp: FullParts,
    keep_alive: bool,
    is_head: bool,
) -> std::io::Result<()> {
    let FullParts {
        status,
        content_type,
        headers,
        body,
    } = &resp;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\n{}",
        reason(*status),
        common_headers()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if *status != 204 && *status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !is_head && *status != 204 && *status != 304 {
        out.extend_from_slice(body);
    }
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn read_request(stream: &mut UnixStream, buf: &mut BytesMut) -> ReadOutcome {
    // Read the head.
    let (head_len, method, target, headers, http10) = loop {
        let parsed = {
            let mut hdrs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hdrs);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut headers = HashMap::new();
                    for h in req.headers.iter() {
                        headers.insert(
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        );
                    }
                    Ok(Some((
                        n,
                        req.method.unwrap_or("GET").to_string(),
                        req.path.unwrap_or("/").to_string(),
                        headers,
                        req.version == Some(0),
                    )))
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        match parsed {
            Ok(Some(head)) => break head,
            Ok(None) => {
                if buf.len() > MAX_HEAD {
                    return ReadOutcome::Bad(400, "request header too large".into());
                }
                match fill(stream, buf).await {
                    Ok(0) | Err(_) => return ReadOutcome::Closed,
                    Ok(_) => {}
                }
            }
            Err(e) => return ReadOutcome::Bad(400, format!("malformed HTTP request: {e}")),
        }
    };
    buf.advance(head_len);
    let keep_alive = match headers.get("connection").map(|s| s.to_ascii_lowercase()) {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => !http10,
    };
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        match read_chunked(stream, buf).await {
            Ok(b) => b,
            Err(e) => return ReadOutcome::Bad(400, format!("read request body: {e}")),
        }
    } else {
        let len: usize = match headers.get("content-length").map(|v| v.trim().parse()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return ReadOutcome::Bad(400, "invalid Content-Length".into()),
        };
        match read_sized(stream, buf, len).await {
            Ok(b) => b,
            Err(e) => return ReadOutcome::Bad(400, format!("read request body: {e}")),
        }
    };
    let (path, api_version, query) = split_target(&target);
    ReadOutcome::Request(
        Request {
            method,
            raw_target: target,
            path,
            api_version,
            query,
            headers,
            body,
        },
        keep_alive,
    )
}

/// Splits a request target into (path without version prefix, version, query).
pub fn split_target(target: &str) -> (String, Option<String>, HashMap<String, Vec<String>>) {
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let mut version = None;
    let mut path = decoded.clone();
    if let Some(rest) = decoded.strip_prefix("/v") {
        if let Some((v, tail)) = rest.split_once('/') {
            if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
                version = Some(v.to_string());
                path = format!("/{tail}");
            }
        }
    }
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    for pair in raw_query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        query.entry(dec(k)).or_default().push(dec(v));
    }
    (path, version, query)
}

#[cfg(test)]
mod tests;
