//! The event bus behind `GET /events`. Every event gets a sequence number (`seq`) that keeps
//! growing across worker restarts; events are appended to a journal in the exec root
//! ([`journal`]), the last [`RING`] are kept in memory for `since`/`until` replay, and live
//! subscribers get them from a broadcast channel. [`EventBus::subscribe_after`] hands out
//! "everything after this seq" plus the live receiver under one lock, so a stream resumed
//! from a cursor (after a hand-over between worker generations) has no gap and no duplicate.
//!
//! Events carry dockerd's legacy fields (`status`, `id`, `from`) beside `Type`/`Action`/`Actor`.

pub mod filter;
pub mod journal;
#[cfg(test)]
mod tests;

pub use filter::{EventFilter, FILTER_KEYS};

use journal::Journal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::broadcast;

/// How many past events are kept in memory (dockerd keeps 256; the slack covers hand-overs).
pub const RING: usize = 1024;

/// Capacity of the live channel; a subscriber further behind gets `Lagged` and can catch up
/// with [`EventBus::subscribe_after`].
const CHANNEL: usize = 1024;

/// One event, serialized exactly as dockerd does (`seq` is not part of the API JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Position in the event sequence (1, 2, …; monotonic across worker restarts).
    #[serde(skip)]
    pub seq: u64,
    /// Legacy: the action, for containers and images.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Legacy: the actor id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// Legacy: the container's image.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
    /// `container`, `image`, `network`, `volume`, `daemon`.
    #[serde(rename = "Type")]
    pub typ: String,
    /// `create`, `start`, `die`, …
    #[serde(rename = "Action")]
    pub action: String,
    /// The object and its attributes.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local`.
    pub scope: String,
    /// Unix seconds.
    pub time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

/// The object an event is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    /// Object id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Attributes (name, image, exitCode, signal, labels…), sorted.
    #[serde(rename = "Attributes", default)]
    pub attributes: BTreeMap<String, String>,
}

/// Past events and a live receiver that continues exactly where they end.
pub struct Subscription {
    /// Past events, oldest first.
    pub past: Vec<Event>,
    /// Every event with `seq <= cursor` is in `past` or was excluded by the request; `rx`
    /// yields exactly the events with `seq > cursor`, in order.
    pub cursor: u64,
    /// Live events.
    pub rx: broadcast::Receiver<Event>,
    /// The requested cursor is older than anything still journaled: events were lost.
    pub gap: bool,
}

/// Publishes events and serves replay and subscriptions.
pub struct EventBus {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

struct Inner {
    ring: VecDeque<Event>,
    next_seq: u64,
    journal: Option<Journal>,
    /// The last journal write failed (warn once per failing streak).
    journal_failing: bool,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus without a journal.
    pub fn new() -> Self {
        Self::with(VecDeque::new(), 1, None)
    }

    /// A bus journaling to `dir` (`<exec-root>/events`), loaded with the journal's most
    /// recent events and continuing its sequence. Never fails: a journal that cannot be read
    /// or written is logged and the bus keeps working in memory.
    pub fn open(dir: &Path) -> Self {
        Self::open_with(dir, journal::ROTATE_AT)
    }

    /// [`EventBus::open`] with another rotation size (tests).
    pub fn open_with(dir: &Path, rotate_at: u64) -> Self {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "event journal: create directory failed");
        }
        let journal = Journal::new(dir, rotate_at);
        let loaded = journal.load(RING);
        if loaded.skipped > 0 {
            tracing::warn!(dir = %dir.display(), lines = loaded.skipped, "event journal: skipped unreadable lines");
        }
        tracing::debug!(dir = %dir.display(), events = loaded.events.len(), last_seq = loaded.last_seq, "event journal loaded");
        Self::with(loaded.events.into(), loaded.last_seq + 1, Some(journal))
    }

    fn with(ring: VecDeque<Event>, next_seq: u64, journal: Option<Journal>) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        EventBus {
            inner: Mutex::new(Inner {
                ring,
                next_seq,
                journal,
                journal_failing: false,
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one event now and returns its `seq`. A journal write failure is logged and
    /// does not stop the event.
    pub fn publish(
        &self,
        typ: &str,
        action: &str,
        id: &str,
        attributes: BTreeMap<String, String>,
    ) -> u64 {
        let legacy = typ == "container" || typ == "image";
        let mut ev = Event {
            seq: 0,
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| id.to_string()),
            from: if typ == "container" {
                attributes.get("image").cloned()
            } else {
                None
            },
            typ: typ.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes,
            },
            scope: "local".into(),
            time: 0,
            time_nano: 0,
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        // Stamped under the lock: time never goes backwards along the sequence (as long as
        // the clock does not).
        ev.time_nano = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        ev.time = ev.time_nano / 1_000_000_000;
        ev.seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(j) = inner.journal.as_mut() {
            match j.append(&ev) {
                Ok(()) if inner.journal_failing => {
                    inner.journal_failing = false;
                    tracing::info!(dir = %j.dir().display(), "event journal: writes work again");
                }
                Ok(()) => {}
                Err(e) if !inner.journal_failing => {
                    inner.journal_failing = true;
                    tracing::warn!(error = %e, dir = %j.dir().display(), seq = ev.seq, "event journal: append failed; events stay in memory");
                }
                Err(_) => {}
            }
        }
        if inner.ring.len() >= RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back(ev.clone());
        // Sent under the lock: receivers see events in seq order, and a subscription taken
        // under the same lock splits the sequence exactly.
        let _ = self.tx.send(ev);
        inner.next_seq - 1
    }

    /// The `seq` of the last published event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Atomically: the events after `after_seq` (all kept history for `None`) and a receiver
    /// for every later one. A cursor older than the in-memory ring is served from the
    /// journal; one older than the journal sets `gap`.
    pub fn subscribe_after(&self, after_seq: Option<u64>) -> Subscription {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let last = inner.next_seq - 1;
        let Some(after) = after_seq else {
            return Subscription {
                past: inner.ring.iter().cloned().collect(),
                cursor: last,
                rx,
                gap: false,
            };
        };
        if after >= last {
            if after > last {
                tracing::warn!(
                    after,
                    last,
                    "event cursor is ahead of the journal; continuing from its end"
                );
            }
            return Subscription {
                past: Vec::new(),
                cursor: last,
                rx,
                gap: false,
            };
        }
        let ring_first = inner.ring.front().map_or(inner.next_seq, |e| e.seq);
        let mut past = Vec::new();
        if after + 1 < ring_first {
            // Rare (a cursor more than RING events behind): read the journal. Under the lock,
            // so no append or rotation moves the files meanwhile.
            if let Some(j) = inner.journal.as_ref() {
                past = j.read_after(after);
                past.retain(|e| e.seq < ring_first);
            }
        }
        let gap = past.first().map_or(ring_first, |e| e.seq) > after + 1;
        if gap {
            tracing::warn!(
                after,
                first_kept = past.first().map_or(ring_first, |e| e.seq),
                "event cursor older than the journal: events were lost"
            );
        }
        past.extend(inner.ring.iter().filter(|e| e.seq > after).cloned());
        Subscription {
            past,
            cursor: last,
            rx,
            gap,
        }
    }

    /// Only the live receiver (no history copy), with its cursor.
    pub fn subscribe_live(&self) -> Subscription {
        let inner = self.lock();
        Subscription {
            past: Vec::new(),
            cursor: inner.next_seq - 1,
            rx: self.tx.subscribe(),
            gap: false,
        }
    }

    /// Re-reads the journal after another process appended to it (worker generation g+1 at
    /// cut-over, once g stopped publishing): the ring and the sequence continue from what is
    /// on disk, and the next append re-opens `events.log` (g may have rotated it). Events
    /// this process published before are kept only as far as they are journaled.
    pub fn resync(&self) {
        let mut inner = self.lock();
        let Some(j) = inner.journal.as_mut() else {
            return;
        };
        j.reopen();
        let loaded = j.load(RING);
        inner.next_seq = inner.next_seq.max(loaded.last_seq + 1);
        inner.ring = loaded.events.into();
        tracing::debug!(
            last_seq = inner.next_seq - 1,
            "event journal re-read at cut-over"
        );
    }
}
