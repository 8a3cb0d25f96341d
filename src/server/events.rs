//! `GET /events` and its resumable stream producer.
//!
//! A stream replays the kept history inside the `since`/`until` window (only when one of
//! them is given, like dockerd), then follows live events until `until` passes or the client
//! goes away. [`event_stream`] yields every line with the `seq` of its event, so the
//! connection code can remember the last one it wrote; a stream continued by another worker
//! generation calls it again with that cursor and goes on with no gap and no duplicate.

use super::http::{split_target, Request, Response, Resumable};
use super::system::{parse_filters, parse_time_arg};
use super::Daemon;
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, EventBus, EventFilter, Subscription, FILTER_KEYS};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// Lines buffered between the producer and the connection.
const BUFFER: usize = 256;

/// The parsed parameters of an events request.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// `since`, ns since the epoch.
    pub since: Option<i64>,
    /// `until`, ns since the epoch.
    pub until: Option<i64>,
    /// `filters`.
    pub filter: EventFilter,
}

impl EventQuery {
    /// Parses `since`, `until` and `filters` from a query lookup.
    pub fn parse<'a>(q: impl Fn(&str) -> Option<&'a str>) -> ApiResult<EventQuery> {
        let time = |key: &str| {
            q(key)
                .filter(|s| !s.is_empty())
                .map(parse_time_arg)
                .transpose()
        };
        let (since, until) = (time("since")?, time("until")?);
        let filter = EventFilter {
            filters: parse_filters(q("filters"))?,
        };
        if let Some(bad) = filter
            .filters
            .keys()
            .find(|k| !FILTER_KEYS.contains(&k.as_str()))
        {
            return Err(ApiError::BadRequest(format!("Invalid filter '{bad}'")));
        }
        Ok(EventQuery {
            since,
            until,
            filter,
        })
    }

    fn in_window(&self, ev: &Event) -> bool {
        self.since.is_none_or(|s| ev.time_nano >= s) && self.until.is_none_or(|u| ev.time_nano <= u)
    }
}

/// `GET /events`: a stream the next worker generation can continue (live upgrade).
pub fn events(d: &Arc<Daemon>, req: &Request) -> ApiResult<Response> {
    let query = req.raw_target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let (rx, resumable) = resumable_stream(d, query, None)?;
    Ok(Response::Stream {
        status: 200,
        content_type: "application/json",
        headers: vec![],
        rx,
        resumable: Some(resumable),
    })
}

/// [`event_stream`] as the chunks of a response plus what the connection needs to hand it
/// over: each line's seq is queued before the line is sent.
pub fn resumable_stream(
    d: &Arc<Daemon>,
    query: &str,
    after_seq: Option<u64>,
) -> ApiResult<(mpsc::Receiver<Vec<u8>>, Resumable)> {
    let mut src = event_stream(d, query, after_seq)?;
    let seqs: Arc<std::sync::Mutex<std::collections::VecDeque<u64>>> = Arc::default();
    let (tx, rx) = mpsc::channel(BUFFER);
    let queued = seqs.clone();
    tokio::spawn(async move {
        while let Some((seq, line)) = src.recv().await {
            queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(seq);
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok((
        rx,
        Resumable {
            query: query.to_string(),
            seqs,
            after: after_seq,
        },
    ))
}

/// The `/events` stream for `query` (the raw query string of the request, with or without
/// its leading `?`), as `(seq, line)` pairs: `line` is one event's JSON with its newline, or
/// empty for a pair that only moves the cursor (sent once when the live part starts). After
/// writing (or skipping) a pair, the connection's cursor is its `seq`.
///
/// `after_seq: None` starts a new stream, exactly like `GET /events`. `Some(cursor)` resumes
/// a stream after the event `cursor`: every later event in the `since`/`until` window that
/// passes the filters is sent (from history first, then live), none twice. One difference
/// from an uninterrupted stream: with a `since` in the future, live events before `since`
/// that the first generation would have sent and not yet written are not sent again.
pub fn event_stream(
    daemon: &Arc<Daemon>,
    query: &str,
    after_seq: Option<u64>,
) -> ApiResult<mpsc::Receiver<(u64, Vec<u8>)>> {
    let (_, _, params) = split_target(&format!("?{}", query.trim_start_matches('?')));
    let get = |k: &str| params.get(k).and_then(|v| v.first()).map(String::as_str);
    let query = EventQuery::parse(get)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(produce(
        daemon.events.clone(),
        query,
        after_seq,
        tx,
        |seq, line| (seq, line),
    ));
    Ok(rx)
}

fn encode(ev: &Event) -> Vec<u8> {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Replays, then streams live events into `tx` until `until`, the client leaves or the bus
/// closes. `wrap` turns `(seq, line)` into the channel's item.
async fn produce<T: Send + 'static>(
    bus: Arc<EventBus>,
    q: EventQuery,
    after_seq: Option<u64>,
    tx: mpsc::Sender<T>,
    wrap: fn(u64, Vec<u8>) -> T,
) {
    let replay = after_seq.is_some() || q.since.is_some() || q.until.is_some();
    let Subscription {
        past,
        mut cursor,
        mut rx,
        ..
    } = if replay {
        bus.subscribe_after(after_seq)
    } else {
        bus.subscribe_live()
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    for ev in &past {
        if q.in_window(ev)
            && q.filter.matches(ev)
            && tx.send(wrap(ev.seq, encode(ev))).await.is_err()
        {
            return;
        }
    }
    if q.until.is_some_and(|u| u <= now) {
        return;
    }
    // Nothing is written for it; it tells the connection where the live part starts.
    if tx.send(wrap(cursor, Vec::new())).await.is_err() {
        return;
    }
    let deadline = q
        .until
        .map(|u| std::time::Duration::from_nanos((u - now).max(0) as u64));
    let sleep = async {
        match deadline {
            Some(dl) => tokio::time::sleep(dl).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        let batch = tokio::select! {
            _ = &mut sleep => return,
            _ = tx.closed() => return,
            ev = rx.recv() => match ev {
                Ok(ev) => vec![ev],
                Err(RecvError::Lagged(n)) => {
                    // Too slow for the channel: take the missed events from the history.
                    tracing::debug!(missed = n, cursor, "events subscriber lagged; catching up");
                    let sub = bus.subscribe_after(Some(cursor));
                    rx = sub.rx;
                    sub.past
                }
                Err(RecvError::Closed) => return,
            }
        };
        for ev in batch {
            if ev.seq <= cursor {
                continue;
            }
            cursor = ev.seq;
            if q.filter.matches(&ev) && tx.send(wrap(ev.seq, encode(&ev))).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tag(bus: &EventBus, name: &str) -> u64 {
        let attrs = BTreeMap::from([("name".to_string(), name.to_string())]);
        bus.publish("image", "tag", "sha256:1", attrs)
    }

    fn names(items: &[(u64, Vec<u8>)]) -> Vec<String> {
        items
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(_, l)| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap_or_default();
                v["Actor"]["Attributes"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    async fn next(rx: &mut mpsc::Receiver<(u64, Vec<u8>)>) -> (u64, Vec<u8>) {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn spawn(
        bus: &Arc<EventBus>,
        q: EventQuery,
        after: Option<u64>,
    ) -> mpsc::Receiver<(u64, Vec<u8>)> {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(produce(bus.clone(), q, after, tx, |s, l| (s, l)));
        rx
    }

    #[tokio::test]
    async fn a_resumed_stream_continues_after_its_cursor() {
        let bus = Arc::new(EventBus::new());
        tag(&bus, "before");
        let q = EventQuery::parse(|k| (k == "filters").then_some(r#"{"type":["image"]}"#))
            .expect("query");
        // A fresh stream without since/until starts live: only a cursor pair first.
        let mut first = spawn(&bus, q.clone(), None);
        assert_eq!(next(&mut first).await, (1, Vec::new()));
        tag(&bus, "a");
        tag(&bus, "b");
        bus.publish("container", "start", "c", BTreeMap::new());
        tag(&bus, "c");
        let a = next(&mut first).await;
        assert_eq!(
            (a.0, names(std::slice::from_ref(&a))),
            (2, vec!["a".to_string()])
        );
        // Hand-over after "a" was written: g+1 resumes from seq 2 while more happens.
        drop(first);
        tag(&bus, "d");
        let mut second = spawn(&bus, q, Some(a.0));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut second).await);
        }
        assert_eq!(names(&got), ["b", "c", "d"]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [3, 5, 6]);
        assert_eq!(next(&mut second).await, (6, Vec::new()), "live from 6 on");
        tag(&bus, "e");
        assert_eq!(names(&[next(&mut second).await]), ["e"]);
    }

    #[tokio::test]
    async fn a_lagging_stream_catches_up_from_the_journal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = Arc::new(EventBus::open(dir.path()));
        let mut rx = spawn(&bus, EventQuery::default(), None);
        assert_eq!(next(&mut rx).await, (0, Vec::new()));
        // Far more than the live channel and the ring hold, while nobody reads.
        let n = 3 * crate::events::RING as u64;
        for i in 0..n {
            tag(&bus, &i.to_string());
        }
        for want in 1..=n {
            let (seq, line) = next(&mut rx).await;
            assert_eq!(seq, want);
            assert_eq!(names(&[(seq, line)]), [(want - 1).to_string()]);
        }
    }

    #[tokio::test]
    async fn a_past_window_replays_and_ends() {
        let bus = Arc::new(EventBus::new());
        tag(&bus, "x");
        tag(&bus, "y");
        let mut rx = spawn(
            &bus,
            EventQuery::parse(|k| (k == "until").then_some("1")).expect("query"),
            None,
        );
        assert_eq!(
            next(&mut rx).await,
            (0, Vec::new()),
            "closed: nothing before 1 s"
        );
        let mut rx = spawn(
            &bus,
            EventQuery {
                since: Some(0),
                until: Some(i64::MAX / 2),
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            names(&[next(&mut rx).await, next(&mut rx).await]),
            ["x", "y"]
        );
    }

    #[test]
    fn unknown_filters_are_refused() {
        let q = EventQuery::parse(|k| (k == "filters").then_some(r#"{"bogus":["1"]}"#));
        assert!(matches!(q, Err(ApiError::BadRequest(m)) if m == "Invalid filter 'bogus'"));
    }
}
