//! The container's output hub: every chunk read from the container's stdout/stderr (or pty)
//! goes to the json-file log and to each attached client and log follower. Everything runs
//! on the shim's single thread, so "what is in the log" and "what followers got" never
//! diverge: a follower registered between two chunks sees exactly the lines after that point.

use crate::jsonlog::JsonLog;
use crate::outbox::{http_chunk, Outbox};
use berth_api::logfmt::{self, Decoded, LogEntry, LogFilter, Stream};
use std::rc::Rc;

/// An attached client's share of the live output.
pub struct AttachSink {
    /// Its queue.
    pub outbox: Rc<Outbox>,
    /// Send stdout.
    pub stdout: bool,
    /// Send stderr.
    pub stderr: bool,
    /// Raw bytes (tty) instead of multiplexed frames.
    pub raw: bool,
}

/// A `logs --follow` client: one chunk per line that passes its filter.
pub struct FollowSink {
    /// Its queue (chunked body).
    pub outbox: Rc<Outbox>,
    /// Stream and time selection (no tail for live lines).
    pub filter: LogFilter,
    /// Prefix lines with their time.
    pub timestamps: bool,
    /// Raw bytes (tty) instead of multiplexed frames.
    pub raw: bool,
}

/// Fan-out of the container's output.
pub struct Hub {
    log: Option<JsonLog>,
    pending: [Vec<u8>; 2],
    attach: Vec<AttachSink>,
    follow: Vec<FollowSink>,
    log_error_reported: bool,
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stderr => 1,
        _ => 0,
    }
}

/// Encodes a follower's line: one chunk holding one frame (or the raw text).
pub fn follow_chunk(d: &Decoded, timestamps: bool, raw: bool) -> Vec<u8> {
    http_chunk(&logfmt::render(d, timestamps, raw))
}

impl Hub {
    /// A hub writing to `log` (`None`: log driver none).
    pub fn new(log: Option<JsonLog>) -> Self {
        Self {
            log,
            pending: [Vec::new(), Vec::new()],
            attach: Vec::new(),
            follow: Vec::new(),
            log_error_reported: false,
        }
    }

    /// Adds an attached client.
    pub fn add_attach(&mut self, sink: AttachSink) {
        self.attach.push(sink);
    }

    /// Adds a log follower.
    pub fn add_follow(&mut self, sink: FollowSink) {
        self.follow.push(sink);
    }

    /// Handles one chunk read from the container.
    pub fn output(&mut self, stream: Stream, chunk: &[u8], now_ns: i64) {
        let lines = logfmt::split_lines(&mut self.pending[slot(stream)], chunk);
        for line in &lines {
            self.line(stream, line, now_ns);
        }
        self.attach.retain(|s| !s.outbox.is_closed());
        for s in &self.attach {
            let wanted = match stream {
                Stream::Stderr => s.stderr,
                _ => s.stdout,
            };
            if wanted {
                let data = if s.raw {
                    chunk.to_vec()
                } else {
                    logfmt::frame(stream, chunk)
                };
                s.outbox.push(data);
            }
        }
    }

    /// The stream reached its end: a partial last line is written out.
    pub fn eof(&mut self, stream: Stream, now_ns: i64) {
        if let Some(line) = logfmt::flush_pending(&mut self.pending[slot(stream)]) {
            self.line(stream, &line, now_ns);
        }
    }

    fn line(&mut self, stream: Stream, line: &[u8], now_ns: i64) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(&logfmt::encode_entry(stream, line, now_ns)) {
                if !self.log_error_reported {
                    tracing::error!(error = %e, "write json-file log");
                    self.log_error_reported = true;
                }
            }
        }
        self.follow.retain(|s| !s.outbox.is_closed());
        if self.follow.is_empty() {
            return;
        }
        let d = Decoded {
            entry: LogEntry {
                log: String::from_utf8_lossy(line).into_owned(),
                stream,
                time: logfmt::rfc3339_nano(now_ns),
            },
            time_ns: now_ns,
        };
        for s in &self.follow {
            if s.filter.accepts(&d) {
                s.outbox.push(follow_chunk(&d, s.timestamps, s.raw));
            }
        }
    }

    /// All output has been delivered: every client's stream ends after its queue drains.
    pub fn finish_all(&mut self) {
        for s in self.attach.drain(..) {
            s.outbox.finish();
        }
        for s in self.follow.drain(..) {
            s.outbox.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::CLIENT_BUFFER;
    use berth_api::shim::LogConfig;

    fn drain(o: &Outbox) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let Ok(rt) = rt else { return Vec::new() };
        o.finish();
        rt.block_on(async {
            let mut all = Vec::new();
            while let Some(d) = o.next().await {
                all.extend(d);
            }
            all
        })
    }

    #[test]
    fn output_is_logged_framed_and_raw() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let cfg = LogConfig {
            path: dir.path().join("c.log"),
            max_size: None,
            max_file: 1,
        };
        let mut hub = Hub::new(Some(JsonLog::open(cfg.clone())?));
        let framed = Outbox::new(CLIENT_BUFFER);
        let raw_out = Outbox::new(CLIENT_BUFFER);
        hub.add_attach(AttachSink {
            outbox: framed.clone(),
            stdout: true,
            stderr: true,
            raw: false,
        });
        hub.add_attach(AttachSink {
            outbox: raw_out.clone(),
            stdout: true,
            stderr: false,
            raw: true,
        });
        hub.output(Stream::Stdout, b"hi\npar", 1);
        hub.output(Stream::Stderr, b"err\n", 2);
        hub.eof(Stream::Stdout, 3);
        let mut want = logfmt::frame(Stream::Stdout, b"hi\npar");
        want.extend(logfmt::frame(Stream::Stderr, b"err\n"));
        assert_eq!(drain(&framed), want);
        assert_eq!(drain(&raw_out), b"hi\npar");
        let text = std::fs::read_to_string(&cfg.path)?;
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains(r#""log":"hi\n","stream":"stdout""#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#""log":"err\n","stream":"stderr""#),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains(r#""log":"par","stream":"stdout""#),
            "{}",
            lines[2]
        );
        Ok(())
    }

    #[test]
    fn followers_get_one_chunk_per_line_filtered() {
        let mut hub = Hub::new(None);
        let o = Outbox::new(CLIENT_BUFFER);
        hub.add_follow(FollowSink {
            outbox: o.clone(),
            filter: LogFilter {
                stdout: false,
                stderr: true,
                ..Default::default()
            },
            timestamps: false,
            raw: false,
        });
        hub.output(Stream::Stdout, b"out\n", 1);
        hub.output(Stream::Stderr, b"e1\ne2\n", 2);
        let mut want = http_chunk(&logfmt::frame(Stream::Stderr, b"e1\n"));
        want.extend(http_chunk(&logfmt::frame(Stream::Stderr, b"e2\n")));
        assert_eq!(drain(&o), want);
    }

    #[test]
    fn a_slow_client_is_dropped_and_removed() {
        let mut hub = Hub::new(None);
        let o = Outbox::new(8);
        hub.add_attach(AttachSink {
            outbox: o.clone(),
            stdout: true,
            stderr: true,
            raw: true,
        });
        hub.output(Stream::Stdout, b"12345", 1);
        hub.output(Stream::Stdout, b"67890", 1);
        assert!(o.is_dropped());
        hub.output(Stream::Stdout, b"x", 1);
        assert!(hub.attach.is_empty());
    }
}
