//! Docker's json-file log format and the stream framing used by attach, exec and logs.
//!
//! One log line is `{"log":"<text>","stream":"stdout|stderr","time":"<RFC3339Nano>"}\n`.
//! The shim writes these; the daemon and the shim read them. Pure functions over bytes and
//! readers only: opening files is the caller's business.

use serde::{Deserialize, Serialize};
use std::io::BufRead;

/// Docker splits a line that has no newline after this many bytes.
pub const MAX_LINE: usize = 16 * 1024;

/// Stream numbers of the multiplexed framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard input (never sent by a server).
    Stdin,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The byte in the frame header.
    pub fn id(self) -> u8 {
        match self {
            Stream::Stdin => 0,
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// One entry of a json-file log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The text, with its newline when it had one.
    pub log: String,
    /// Which stream it came from.
    pub stream: Stream,
    /// RFC3339Nano UTC.
    pub time: String,
}

/// Formats nanoseconds since the epoch as Docker does: UTC, 9 fraction digits, `Z`.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// Parses an RFC3339 time (any fraction) into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Encodes one log entry as a json-file line (with its trailing newline).
/// Invalid UTF-8 is replaced, as Docker does.
pub fn encode_entry(stream: Stream, text: &[u8], time_ns: i64) -> Vec<u8> {
    let entry = LogEntry {
        log: String::from_utf8_lossy(text).into_owned(),
        stream,
        time: rfc3339_nano(time_ns),
    };
    let mut out = serde_json::to_vec(&entry).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Splits a chunk read from a stream into log lines: each ends at a newline or at
/// [`MAX_LINE`] bytes. `pending` carries a partial line between calls; call
/// [`flush_pending`] at end of stream.
pub fn split_lines(pending: &mut Vec<u8>, chunk: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for &b in chunk {
        pending.push(b);
        if b == b'\n' || pending.len() >= MAX_LINE {
            out.push(std::mem::take(pending));
        }
    }
    out
}

/// Returns the partial line left at end of stream, if any.
pub fn flush_pending(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    if pending.is_empty() {
        None
    } else {
        Some(std::mem::take(pending))
    }
}

/// A decoded log entry with its time as nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The entry.
    pub entry: LogEntry,
    /// Its time in ns since the epoch.
    pub time_ns: i64,
}

/// Reads every well-formed entry from a json-file log; malformed lines (a torn last line
/// after a crash) are skipped.
pub fn read_entries<R: BufRead>(reader: R) -> Vec<Decoded> {
    let mut out = Vec::new();
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        if let Some(d) = decode_line(&line) {
            out.push(d);
        }
    }
    out
}

/// Decodes one json-file line (without or with its newline).
pub fn decode_line(line: &[u8]) -> Option<Decoded> {
    let entry: LogEntry = serde_json::from_slice(line).ok()?;
    let time_ns = parse_rfc3339(&entry.time)?;
    Some(Decoded { entry, time_ns })
}

/// Selection applied to log history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFilter {
    /// Include stdout.
    pub stdout: bool,
    /// Include stderr.
    pub stderr: bool,
    /// Only entries at or after this time.
    pub since_ns: Option<i64>,
    /// Only entries at or before this time.
    pub until_ns: Option<i64>,
    /// Only the last N matching entries.
    pub tail: Option<usize>,
}

impl LogFilter {
    /// Whether one entry passes the stream and time tests (not the tail).
    pub fn accepts(&self, d: &Decoded) -> bool {
        let stream_ok = match d.entry.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
            Stream::Stdin => false,
        };
        stream_ok
            && self.since_ns.is_none_or(|s| d.time_ns >= s)
            && self.until_ns.is_none_or(|u| d.time_ns <= u)
    }

    /// Applies the filter, tail last, to entries in time order.
    pub fn apply(&self, entries: Vec<Decoded>) -> Vec<Decoded> {
        let mut kept: Vec<Decoded> = entries.into_iter().filter(|d| self.accepts(d)).collect();
        if let Some(n) = self.tail {
            let skip = kept.len().saturating_sub(n);
            kept.drain(..skip);
        }
        kept
    }
}

/// Renders an entry for the client: optional timestamp prefix, then either raw bytes
/// (tty containers) or one multiplexed frame.
pub fn render(d: &Decoded, timestamps: bool, raw: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(d.entry.log.len() + 32);
    if timestamps {
        payload.extend_from_slice(rfc3339_nano(d.time_ns).as_bytes());
        payload.push(b' ');
    }
    payload.extend_from_slice(d.entry.log.as_bytes());
    if raw {
        payload
    } else {
        frame(d.entry.stream, &payload)
    }
}

/// One multiplexed frame: `[stream, 0, 0, 0, len u32 BE]` then the payload.
pub fn frame(stream: Stream, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(stream.id());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Rotated file names for a log path, oldest first, current last: `p.(n-1)`, …, `p.1`, `p`.
pub fn rotated_names(path: &std::path::Path, max_file: u32) -> Vec<std::path::PathBuf> {
    let mut names = Vec::new();
    for i in (1..max_file.max(1)).rev() {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        names.push(std::path::PathBuf::from(s));
    }
    names.push(path.to_path_buf());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encodes_like_docker() {
        let line = encode_entry(Stream::Stdout, b"hi\n", 1_795_425_869_779_277_410);
        assert_eq!(
            String::from_utf8(line).expect("utf8"),
            "{\"log\":\"hi\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-23T09:24:29.779277410Z\"}\n"
        );
    }

    #[test]
    fn time_round_trips_with_nine_digits() {
        let ns = 1_795_425_869_000_000_001;
        let s = rfc3339_nano(ns);
        assert!(s.ends_with(".000000001Z"), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(ns));
    }

    #[test]
    fn lines_split_at_newline_and_max_line() {
        let mut pending = Vec::new();
        let out = split_lines(&mut pending, b"a\nbc");
        assert_eq!(out, vec![b"a\n".to_vec()]);
        assert_eq!(pending, b"bc");
        let out = split_lines(&mut pending, b"d\n");
        assert_eq!(out, vec![b"bcd\n".to_vec()]);
        let big = vec![b'x'; MAX_LINE + 3];
        let out = split_lines(&mut pending, &big);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(flush_pending(&mut pending), Some(vec![b'x'; 3]));
        assert_eq!(flush_pending(&mut pending), None);
    }

    #[test]
    fn filter_applies_streams_times_and_tail() {
        let mut data = Vec::new();
        for (i, s) in [
            Stream::Stdout,
            Stream::Stderr,
            Stream::Stdout,
            Stream::Stdout,
        ]
        .iter()
        .enumerate()
        {
            data.extend(encode_entry(
                *s,
                format!("l{i}\n").as_bytes(),
                1000 + i as i64,
            ));
        }
        data.extend_from_slice(b"{\"log\":\"torn");
        let entries = read_entries(&data[..]);
        assert_eq!(entries.len(), 4);
        let f = LogFilter {
            stdout: true,
            stderr: false,
            since_ns: Some(1001),
            until_ns: None,
            tail: Some(1),
        };
        let kept = f.apply(entries);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].entry.log, "l3\n");
    }

    #[test]
    fn frames_have_the_eight_byte_header() {
        assert_eq!(
            frame(Stream::Stderr, b"err\n"),
            b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
        );
        let d = decode_line(&encode_entry(Stream::Stdout, b"out\n", 0)).expect("decode");
        assert_eq!(render(&d, false, true), b"out\n");
        assert_eq!(
            render(&d, true, true),
            b"1970-01-01T00:00:00.000000000Z out\n".to_vec()
        );
    }

    #[test]
    fn rotated_names_oldest_first() {
        let p = std::path::Path::new("/x/c-json.log");
        let n = rotated_names(p, 3);
        assert_eq!(
            n,
            vec![
                std::path::PathBuf::from("/x/c-json.log.2"),
                std::path::PathBuf::from("/x/c-json.log.1"),
                std::path::PathBuf::from("/x/c-json.log"),
            ]
        );
    }
}
