//! The append-only event journal under `<exec-root>/events/`, so that events survive the
//! worker process (a crash, or the hand-over from worker generation g to g+1).
//!
//! Format: one line per event, `{"seq":N,` followed by the rest of the event's dockerd JSON
//! (so every line is itself a JSON object whose first key is `seq`). Lines are written with
//! one `write()` on an `O_APPEND` descriptor and never fsync'ed: the exec root is runtime
//! state, only process crashes have to be survived. `events.log` is rotated to
//! `events.log.1` once it would grow past [`ROTATE_AT`]; one old file is kept.
//!
//! A line cut short by a crash is skipped when reading (its `seq` prefix, when present, still
//! counts, so sequence numbers are never reused), and the next append starts on a fresh line.

use super::Event;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The file appended to.
pub const CURRENT: &str = "events.log";
/// The rotated file.
pub const PREVIOUS: &str = "events.log.1";
/// Size at which `events.log` is rotated.
pub const ROTATE_AT: u64 = 2 * 1024 * 1024;

/// What [`Journal::load`] found on disk.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The most recent events, oldest first, with strictly increasing `seq`.
    pub events: Vec<Event>,
    /// The highest sequence number written so far (0 when the journal is empty).
    pub last_seq: u64,
    /// Lines that could not be parsed (torn or damaged).
    pub skipped: usize,
}

/// The writer side of the journal (the reader side is [`Journal::load`] / [`Journal::read_after`]).
pub struct Journal {
    dir: PathBuf,
    rotate_at: u64,
    file: Option<File>,
    /// Bytes in `events.log` as far as this process knows.
    size: u64,
    /// Size at which the next rotation is tried.
    next_rotation: u64,
    /// `events.log` does not end in a newline: the next line must start with one.
    torn_tail: bool,
}

impl Journal {
    /// A journal in `dir` rotating at `rotate_at` bytes; nothing is opened before the first
    /// append.
    pub fn new(dir: &Path, rotate_at: u64) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            rotate_at,
            file: None,
            size: 0,
            next_rotation: rotate_at,
            torn_tail: false,
        }
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Forgets the open descriptor, so the next append re-opens `events.log` and re-reads its
    /// size (after another process may have appended to or rotated it).
    pub fn reopen(&mut self) {
        self.file = None;
    }

    /// Appends one event (its `seq` must be set).
    pub fn append(&mut self, ev: &Event) -> io::Result<()> {
        let json = serde_json::to_vec(ev).map_err(io::Error::other)?;
        if self.file.is_none() {
            self.open_current()?;
        }
        if self.size > 0 && self.size + json.len() as u64 + 24 > self.next_rotation {
            if let Err(e) = self.rotate() {
                // Keep appending to the big file; try again after another `rotate_at` bytes.
                self.next_rotation = self.size + self.rotate_at;
                tracing::warn!(error = %e, dir = %self.dir.display(), "event journal: rotation failed");
            }
        }
        let line = encode_line(ev.seq, &json, self.torn_tail);
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("event journal not open"));
        };
        if let Err(e) = file.write_all(&line) {
            // The tail may now be torn: re-open (and re-check the tail) on the next append.
            self.file = None;
            return Err(e);
        }
        self.size += line.len() as u64;
        self.torn_tail = false;
        Ok(())
    }

    fn open_current(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(self.dir.join(CURRENT))?;
        let size = file.metadata()?.len();
        let mut last = [b'\n'];
        if size > 0 {
            file.read_exact_at(&mut last, size - 1)?;
        }
        self.torn_tail = last[0] != b'\n';
        self.size = size;
        if size < self.rotate_at {
            self.next_rotation = self.rotate_at;
        }
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
        self.file = None;
        self.size = 0;
        self.next_rotation = self.rotate_at;
        self.open_current()
    }

    /// Reads the last `keep` events and the highest sequence number (`events.log.1` only
    /// when `events.log` holds fewer than `keep`).
    pub fn load(&self, keep: usize) -> Loaded {
        let mut out = Loaded::default();
        let mut newest_first: Vec<Event> = Vec::new();
        let mut floor = u64::MAX;
        // Newest first: the current file's lines backwards, then the previous file's.
        for name in [CURRENT, PREVIOUS] {
            if newest_first.len() >= keep {
                break;
            }
            let bytes = self.read(name);
            for line in lines_rev(&bytes) {
                let Some(seq) = seq_prefix(line) else {
                    out.skipped += 1;
                    continue;
                };
                out.last_seq = out.last_seq.max(seq);
                if newest_first.len() >= keep {
                    break;
                }
                match serde_json::from_slice::<Event>(line) {
                    // Strictly decreasing going backwards; anything else is a stray line.
                    Ok(mut ev) if seq < floor => {
                        ev.seq = seq;
                        floor = seq;
                        newest_first.push(ev);
                    }
                    _ => out.skipped += 1,
                }
            }
        }
        newest_first.reverse();
        out.events = newest_first;
        out
    }

    /// Every journaled event with `seq > after`, oldest first (for a cursor that fell out of
    /// the in-memory ring).
    pub fn read_after(&self, after: u64) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for name in [PREVIOUS, CURRENT] {
            let bytes = self.read(name);
            for line in bytes.split(|b| *b == b'\n') {
                let Some(seq) = seq_prefix(line) else {
                    continue;
                };
                if seq <= after || out.last().is_some_and(|l| seq <= l.seq) {
                    continue;
                }
                if let Ok(mut ev) = serde_json::from_slice::<Event>(line) {
                    ev.seq = seq;
                    out.push(ev);
                }
            }
        }
        out
    }

    fn read(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "event journal: read failed");
                Vec::new()
            }
        }
    }
}

/// `{"seq":N,` + the event's JSON without its opening brace + `\n` (after a `\n` when the
/// file's tail is torn).
fn encode_line(seq: u64, json: &[u8], torn_tail: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 32);
    if torn_tail {
        line.push(b'\n');
    }
    let _ = write!(line, "{{\"seq\":{seq}");
    let body = json.strip_prefix(b"{").unwrap_or(json);
    if body != b"}" {
        line.push(b',');
    }
    line.extend_from_slice(body);
    line.push(b'\n');
    line
}

/// The sequence number at the start of a line, also of a torn one.
pub fn seq_prefix(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // A number cut short by a crash is no number.
    if digits == 0 || digits == rest.len() {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Non-empty lines, last first.
fn lines_rev(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.rsplit(|b| *b == b'\n').filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_and_seq_prefix() {
        let line = encode_line(42, br#"{"Type":"image"}"#, false);
        assert_eq!(line, b"{\"seq\":42,\"Type\":\"image\"}\n");
        assert_eq!(seq_prefix(&line), Some(42));
        assert_eq!(encode_line(1, b"{}", true), b"\n{\"seq\":1}\n");
        assert_eq!(seq_prefix(b"{\"seq\":7,\"Ty"), Some(7));
        assert_eq!(
            seq_prefix(b"{\"seq\":7"),
            None,
            "the number may be cut short"
        );
        assert_eq!(seq_prefix(b"{\"se"), None);
        assert_eq!(seq_prefix(b"garbage"), None);
    }
}
