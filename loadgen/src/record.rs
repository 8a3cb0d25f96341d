//! What one request looked like: the per-request [`Record`] every client keeps, the exact
//! [`Outcome`] classification, and the first few failure messages ([`FailureSample`]).

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The recorded operations. A container cycle is three records: create, start, delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `GET /_ping`.
    Ping,
    /// `GET /containers/json?all=1`.
    List,
    /// `GET /containers/{id}/json`.
    Inspect,
    /// `POST /containers/create`.
    Create,
    /// `POST /containers/{id}/start`.
    Start,
    /// `DELETE /containers/{id}?force=1`.
    Delete,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 6] = [
        Op::Ping,
        Op::List,
        Op::Inspect,
        Op::Create,
        Op::Start,
        Op::Delete,
    ];

    /// The op's name as used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::List => "list",
            Op::Inspect => "inspect",
            Op::Create => "create",
            Op::Start => "start",
            Op::Delete => "delete",
        }
    }
}

/// How a client talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnKind {
    /// A new connection per request (`Connection: close`).
    Fresh,
    /// One persistent connection, reopened only after the server closed it gracefully
    /// (`Connection: close` on a response) or after a failure.
    Keepalive,
}

impl ConnKind {
    /// The kind's name as used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ConnKind::Fresh => "fresh",
            ConnKind::Keepalive => "keepalive",
        }
    }
}

/// How an I/O failure after connect looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    /// The server closed the connection (read returned 0).
    Eof,
    /// `ECONNRESET`.
    Reset,
    /// `EPIPE` while writing the request.
    BrokenPipe,
    /// Any other error; see the errno.
    Other,
}

/// The exact classification of one request's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The expected status arrived with a complete response.
    Ok,
    /// `connect()` failed with `ECONNREFUSED`.
    Refused,
    /// `connect()` failed with `EAGAIN` (listen backlog full).
    ConnectEagain,
    /// `connect()` failed otherwise (e.g. `ENOENT` when the socket file is missing).
    ConnectError {
        /// The errno, 0 when there was none.
        errno: i32,
    },
    /// The connection failed after connect: EOF, reset, broken pipe, ...
    IoError {
        /// How it failed.
        io: IoKind,
        /// The errno, 0 for EOF.
        errno: i32,
        /// Whether any byte of the response had been received.
        received: bool,
    },
    /// A status >= 500, a status not expected for the op, or (status 0) a malformed response.
    HttpError {
        /// The HTTP status, 0 when the response could not be parsed.
        status: u16,
    },
    /// The per-request timeout expired.
    Timeout,
}

impl Outcome {
    /// Every outcome name, in report order.
    pub const NAMES: [&'static str; 7] = [
        "ok",
        "refused",
        "connect_eagain",
        "connect_error",
        "io_error",
        "http_error",
        "timeout",
    ];

    /// The outcome's name as used in reports (one of [`Outcome::NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::ConnectEagain => "connect_eagain",
            Outcome::ConnectError { .. } => "connect_error",
            Outcome::IoError { .. } => "io_error",
            Outcome::HttpError { .. } => "http_error",
            Outcome::Timeout => "timeout",
        }
    }

    /// Whether this is [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One request as observed by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the request started (connect included), `CLOCK_REALTIME` ns since the epoch.
    pub start_ns: u64,
    /// Start to completion or failure, ns (monotonic clock).
    pub latency_ns: u64,
    /// What was requested.
    pub op: Op,
    /// Over which kind of connection.
    pub conn: ConnKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Which client (0-based).
    pub client: u32,
}

impl Record {
    /// When the request ended, `CLOCK_REALTIME` ns since the epoch.
    pub fn end_ns(&self) -> u64 {
        self.start_ns.saturating_add(self.latency_ns)
    }
}

/// The message of one of the first failures of a kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSample {
    /// The outcome name ([`Outcome::name`]).
    pub outcome: String,
    /// The op that failed.
    pub op: Op,
    /// The connection kind.
    pub conn: ConnKind,
    /// When the failed request started, ns since the epoch.
    pub start_ns: u64,
    /// What went wrong, in words.
    pub message: String,
}

/// How many failure messages are kept per outcome kind.
pub const SAMPLES_PER_KIND: usize = 5;

/// `CLOCK_REALTIME` now, ns since the epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
