//! The berth shim protocol: messages between the daemon (worker) and one `berth-shim`.
//!
//! Transport: a `SOCK_SEQPACKET` unix socket at `<exec-root>/shims/<id>/ctl` (mode 0700).
//! Every packet is one JSON document; a packet may carry file descriptors (`SCM_RIGHTS`).
//! Every connection starts with [`ShimRequest::Hello`] from the daemon, answered by
//! [`ShimResponse::Hello`]; the shim refuses versions outside
//! [`SHIM_PROTOCOL_MIN`]..=[`SHIM_PROTOCOL_VERSION`]. After the hello, each request gets
//! exactly one response, except [`ShimRequest::Subscribe`], which turns the connection into
//! an event stream of [`ShimResponse::Event`] packets (the daemon answers exits with
//! [`ShimRequest::AckExit`] on the same connection).
//!
//! Hand-over requests (`Attach`, `Wait`, `Logs`, `Stats`, `Exec` with a stream) carry exactly one fd:
//! the client's HTTP connection. The daemon has already written the response head (101 for
//! attach and exec, `200` with `Transfer-Encoding: chunked` and `Connection: close` for wait,
//! logs and stats); the shim writes the body and closes the connection when done.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The protocol version this build speaks (and writes in its hello).
pub const SHIM_PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this build still accepts.
pub const SHIM_PROTOCOL_MIN: u32 = 1;
/// Largest packet either side sends or accepts.
pub const MAX_PACKET: usize = 256 * 1024;

/// Written by the daemon to `<shim-dir>/config.json` before it spawns the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimConfig {
    /// Protocol version of the daemon that wrote this config.
    pub version: u32,
    /// Full container id (64 hex).
    pub id: String,
    /// OCI bundle directory (holds `config.json`; the spec's root path is absolute).
    pub bundle: PathBuf,
    /// libcontainer state root (short path; `<exec-root>/rt`).
    pub runtime_root: PathBuf,
    /// Control socket path.
    pub ctl_socket: PathBuf,
    /// Where the exit record is written (temp file, fsync, rename).
    pub exit_file: PathBuf,
    /// json-file log settings; `None` means no log (log driver `none`).
    pub log: Option<LogConfig>,
    /// Container has a pty (`Config.Tty`).
    pub tty: bool,
    /// Container stdin is a pipe the shim holds (`Config.OpenStdin`).
    pub open_stdin: bool,
    /// Close the container's stdin when the first attached client detaches (`StdinOnce`).
    pub stdin_once: bool,
    /// Where the shim writes its own diagnostics (never fd 2 of the container).
    pub shim_log: PathBuf,
}

/// json-file log driver options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogConfig {
    /// The current log file; rotated files are `path.1`, `path.2`, ...
    pub path: PathBuf,
    /// Rotate when the current file would exceed this many bytes (`max-size`); `None` = never.
    pub max_size: Option<u64>,
    /// Number of files kept, current one included (`max-file`, at least 1).
    pub max_file: u32,
}

/// The exit of a container's init process, as recorded by the shim (invariant 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// Docker-style exit code: the status, or 128 + signal.
    pub code: i32,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    /// The cgroup's OOM killer fired for this container.
    pub oom_killed: bool,
    /// Wall-clock time of the exit, nanoseconds since the Unix epoch.
    pub finished_at_ns: i64,
    /// Pid of the init that exited.
    pub pid: i32,
}

/// Docker's `wait` conditions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WaitCondition {
    /// Answer when the container is not running (at once if it already exited).
    NotRunning,
    /// Answer at the next exit.
    NextExit,
    /// Answer when the container has been removed (the daemon sends `Removed`).
    Removed,
}

/// Parameters of an attach hand-over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttachParams {
    /// Forward the client's input to the container's stdin.
    pub stdin: bool,
    /// Send stdout.
    pub stdout: bool,
    /// Send stderr.
    pub stderr: bool,
    /// Replay the log before streaming (`logs=1`).
    pub logs: bool,
    /// Stream live output (`stream=1`).
    pub stream: bool,
    /// Detach key sequence as bytes (already parsed from `detachKeys`); empty = default ctrl-p ctrl-q.
    pub detach_keys: Vec<u8>,
    /// Bytes the daemon read from the connection past the request (early stdin).
    pub initial: Vec<u8>,
}

/// Parameters of a `logs?follow=1` hand-over; the shim sends history and then follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogsParams {
    /// Send stdout lines.
    pub stdout: bool,
    /// Send stderr lines.
    pub stderr: bool,
    /// Prefix every line with its RFC3339Nano timestamp and a space.
    pub timestamps: bool,
    /// Only the last N lines of history (`None` = all).
    pub tail: Option<usize>,
    /// Skip lines older than this (ns since epoch).
    pub since_ns: Option<i64>,
    /// Stop at lines newer than this (ns since epoch); ends the stream.
    pub until_ns: Option<i64>,
    /// Container has a tty: raw bytes, no multiplexing header.
    pub raw: bool,
}

impl LogsParams {
    /// The history selection these parameters ask for.
    pub fn filter(&self) -> crate::logfmt::LogFilter {
        crate::logfmt::LogFilter {
            stdout: self.stdout,
            stderr: self.stderr,
            since_ns: self.since_ns,
            until_ns: self.until_ns,
            tail: self.tail,
        }
    }
}

/// Parameters of a stats hand-over (`GET /containers/{id}/stats`). Added after protocol
/// version 1 shipped (an addition, no version bump): a shim that predates it cannot parse
/// the request and closes the control connection, and the daemon then serves the request
/// itself with one object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsParams {
    /// Container name without the leading slash (the shim does not know it).
    pub name: String,
    /// One object a second until the client leaves or the container stops (`stream=1`).
    pub stream: bool,
    /// With `stream=0`: answer at once, without a previous sample (`one-shot=1`).
    pub one_shot: bool,
}

/// A process to run inside the container (`docker exec`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecParams {
    /// Exec id (64 hex).
    pub exec_id: String,
    /// argv.
    pub args: Vec<String>,
    /// Full environment (`KEY=value`).
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Numeric user.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Allocate a pty.
    pub tty: bool,
    /// Client input goes to the process's stdin.
    pub attach_stdin: bool,
    /// Send stdout to the client.
    pub attach_stdout: bool,
    /// Send stderr to the client.
    pub attach_stderr: bool,
    /// No client stream (fd absent); output is discarded.
    pub detach: bool,
    /// Full capabilities.
    pub privileged: bool,
    /// Detach key sequence as bytes.
    pub detach_keys: Vec<u8>,
    /// Bytes the daemon read from the connection past the request.
    pub initial: Vec<u8>,
}

/// Daemon → shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum ShimRequest {
    /// First message on every connection.
    Hello {
        /// Protocol version the daemon speaks.
        version: u32,
    },
    /// Report the current state.
    State,
    /// Start the created container (once).
    Start,
    /// Send a signal to the init (or to every process when `all`).
    Kill {
        /// Signal number.
        signal: i32,
        /// Signal every process in the container.
        all: bool,
    },
    /// Freeze the container.
    Pause,
    /// Thaw the container.
    Resume,
    /// Resize the container's pty, or an exec's pty when `exec_id` is set.
    Resize {
        /// Exec whose pty to resize; `None` = the container's.
        exec_id: Option<String>,
        /// Rows.
        height: u16,
        /// Columns.
        width: u16,
    },
    /// Serve an attach on the passed fd.
    Attach(AttachParams),
    /// Serve a wait on the passed fd.
    Wait {
        /// Which event answers the wait.
        condition: WaitCondition,
    },
    /// Serve a following log stream on the passed fd.
    Logs(LogsParams),
    /// Serve container statistics on the passed fd.
    Stats(StatsParams),
    /// Run an exec; serve its stream on the passed fd unless detached.
    Exec(ExecParams),
    /// Ask for an exec's state.
    ExecState {
        /// Exec id.
        exec_id: String,
    },
    /// Turn this connection into an event stream.
    Subscribe,
    /// The daemon has stored the exit record with this pid; the shim may exit once idle.
    AckExit {
        /// Pid from the acknowledged record.
        pid: i32,
    },
    /// The container was removed: answer `removed` waiters, then exit.
    Removed,
}

/// Lifecycle status of the container as the shim sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ShimStatus {
    /// Built, waiting for `Start`.
    Created,
    /// Init runs.
    Running,
    /// Frozen.
    Paused,
    /// Init exited; the record is in `exit`.
    Exited,
}

/// State of the container held by a shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimState {
    /// Init pid (host namespace).
    pub pid: i32,
    /// Lifecycle status.
    pub status: ShimStatus,
    /// Start time (ns since epoch), once started.
    pub started_at_ns: Option<i64>,
    /// The exit record, once exited.
    pub exit: Option<ExitRecord>,
}

/// State of one exec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecState {
    /// Exec id.
    pub exec_id: String,
    /// Host pid, 0 before start.
    pub pid: i32,
    /// Still running.
    pub running: bool,
    /// Exit code once finished.
    pub exit_code: Option<i32>,
}

/// Asynchronous notifications on a subscribed connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event")]
pub enum ShimEvent {
    /// The container's init exited (record already on disk).
    Exit(ExitRecord),
    /// The OOM killer fired in the container's cgroup.
    Oom,
    /// An exec finished.
    ExecExit {
        /// Exec id.
        exec_id: String,
        /// Its exit code.
        code: i32,
    },
}

/// Error classes the daemon maps to HTTP statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShimErrorKind {
    /// The request does not fit the container's state (409).
    Conflict,
    /// Unknown exec id and similar (404).
    NotFound,
    /// Bad parameters (400).
    InvalidArgument,
    /// Anything else (500).
    Internal,
}

/// Shim → daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum ShimResponse {
    /// Answer to `Hello`.
    Hello {
        /// Protocol version the shim speaks.
        version: u32,
        /// Shim pid.
        shim_pid: i32,
    },
    /// The request was done.
    Ok,
    /// Answer to `State`.
    State(ShimState),
    /// Answer to `ExecState`.
    ExecState(ExecState),
    /// Answer to `Exec`: the exec's host pid.
    ExecStarted {
        /// Host pid of the exec'd process.
        pid: i32,
    },
    /// An event on a subscribed connection.
    Event(ShimEvent),
    /// The request failed.
    Error {
        /// Class of the failure.
        kind: ShimErrorKind,
        /// What failed, in Docker's wording where one exists.
        message: String,
    },
}

/// Written by the shim on its readiness pipe (fd 3) once, then the pipe is closed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimReady {
    /// Init pid on success.
    pub pid: Option<i32>,
    /// Why the container could not be created.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_a_type_tag() {
        let r = ShimRequest::Kill {
            signal: 15,
            all: false,
        };
        let s = serde_json::to_string(&r).expect("serialize");
        assert_eq!(s, r#"{"type":"Kill","signal":15,"all":false}"#);
        let back: ShimRequest = serde_json::from_str(&s).expect("deserialize");
        assert_eq!(back, r);
        let w: ShimRequest =
            serde_json::from_str(r#"{"type":"Wait","condition":"next-exit"}"#).expect("wait");
        assert_eq!(
            w,
            ShimRequest::Wait {
                condition: WaitCondition::NextExit
            }
        );
    }

    #[test]
    fn events_are_tagged() {
        let e = ShimResponse::Event(ShimEvent::Oom);
        let s = serde_json::to_string(&e).expect("serialize");
        assert_eq!(s, r#"{"type":"Event","event":"Oom"}"#);
    }
}
