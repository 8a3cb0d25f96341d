//! Tests of the bus and its journal: append and reload, rotation, a torn last line, the
//! sequence across re-opens, and `subscribe_after` under concurrent publishing.

use super::journal::{CURRENT, PREVIOUS};
use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn attrs(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("name".to_string(), name.to_string())])
}

fn seqs(evs: &[Event]) -> Vec<u64> {
    evs.iter().map(|e| e.seq).collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn journal_reloads_events_and_continues_the_sequence() {
    let dir = tmp();
    let bus = EventBus::open(dir.path());
    assert_eq!(bus.last_seq(), 0);
    assert_eq!(bus.publish("container", "create", "c1", attrs("a")), 1);
    assert_eq!(bus.publish("image", "tag", "sha256:1", attrs("bb:1")), 2);
    assert_eq!(bus.publish("network", "connect", "n1", attrs("br")), 3);
    let before = bus.subscribe_after(None).past;
    drop(bus);

    let bus = EventBus::open(dir.path());
    assert_eq!(bus.last_seq(), 3);
    let after = bus.subscribe_after(None).past;
    assert_eq!(after, before, "fields and seq survive the journal");
    assert_eq!(after[0].from, None, "no image attribute, no from");
    assert_eq!(
        after[2].status, None,
        "network events have no legacy fields"
    );
    assert_eq!(bus.publish("container", "start", "c1", attrs("a")), 4);
    let text = std::fs::read_to_string(dir.path().join(CURRENT)).expect("journal");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[3].starts_with(r#"{"seq":4,"status":"start","id":"c1","#));
    // Every line is JSON, and the API encoding has no seq.
    for l in lines {
        serde_json::from_str::<serde_json::Value>(l).expect("JSON line");
    }
    let api = serde_json::to_value(&after[0]).expect("json");
    assert!(api.get("seq").is_none());
}

#[test]
fn only_the_last_ring_of_events_is_kept_in_memory() {
    let dir = tmp();
    let bus = EventBus::open(dir.path());
    for i in 0..RING + 100 {
        bus.publish("image", "tag", &format!("i{i}"), BTreeMap::new());
    }
    assert_eq!(bus.subscribe_after(None).past.len(), RING);
    drop(bus);
    let bus = EventBus::open(dir.path());
    let past = bus.subscribe_after(None).past;
    assert_eq!(seqs(&past), (101..=(RING as u64 + 100)).collect::<Vec<_>>());
}

#[test]
fn journal_rotates_and_keeps_one_old_file() {
    let dir = tmp();
    let bus = EventBus::open_with(dir.path(), 4096);
    for i in 0..200 {
        bus.publish("container", "start", &format!("c{i}"), attrs("x"));
    }
    let cur = std::fs::metadata(dir.path().join(CURRENT)).expect("current");
    let old = std::fs::metadata(dir.path().join(PREVIOUS)).expect("previous");
    assert!(cur.len() <= 4096 && old.len() <= 4096, "{cur:?} {old:?}");
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(files, 2, "one old file is kept");
    drop(bus);

    // After a re-open: the sequence continues and what is left is contiguous up to 200.
    let bus = EventBus::open_with(dir.path(), 4096);
    let past = bus.subscribe_after(None).past;
    let first = past.first().map(|e| e.seq).expect("some events kept");
    assert!(first > 1, "the oldest events were rotated away");
    assert_eq!(seqs(&past), (first..=200).collect::<Vec<_>>());
    assert_eq!(bus.publish("container", "die", "c", attrs("x")), 201);
    // A cursor older than both files is reported as a gap.
    let sub = bus.subscribe_after(Some(0));
    assert!(sub.gap);
    assert_eq!(sub.past.len(), past.len() + 1);
    let sub = bus.subscribe_after(Some(first - 1));
    assert!(!sub.gap);
}

#[test]
fn a_torn_last_line_is_skipped_and_its_seq_not_reused() {
    let dir = tmp();
    let bus = EventBus::open(dir.path());
    for _ in 0..6 {
        bus.publish("image", "tag", "sha256:1", attrs("bb"));
    }
    drop(bus);
    // A crash in the middle of writing event 7.
    let path = dir.path().join(CURRENT);
    let mut bytes = std::fs::read(&path).expect("journal");
    bytes.extend_from_slice(br#"{"seq":7,"status":"ta"#);
    std::fs::write(&path, &bytes).expect("write torn line");

    let bus = EventBus::open(dir.path());
    assert_eq!(seqs(&bus.subscribe_after(None).past), [1, 2, 3, 4, 5, 6]);
    assert_eq!(bus.publish("image", "untag", "sha256:1", attrs("bb")), 8);
    drop(bus);
    // The next line started on a line of its own: it reloads, the torn fragment does not.
    let bus = EventBus::open(dir.path());
    let past = bus.subscribe_after(None).past;
    assert_eq!(seqs(&past), [1, 2, 3, 4, 5, 6, 8]);
    assert_eq!(past[6].action, "untag");

    // A fragment cut inside the number carries no seq: the sequence continues after 8.
    let mut bytes = std::fs::read(&path).expect("journal");
    bytes.extend_from_slice(br#"{"seq":9"#);
    std::fs::write(&path, &bytes).expect("write torn line");
    let bus = EventBus::open(dir.path());
    assert_eq!(bus.last_seq(), 8);
    assert_eq!(bus.publish("image", "tag", "sha256:1", attrs("bb")), 9);
}

#[test]
fn a_journal_that_cannot_be_written_does_not_stop_events() {
    let dir = tmp();
    // The journal directory is a file: every append fails.
    let blocked = dir.path().join("events");
    std::fs::write(&blocked, b"not a directory").expect("file");
    let bus = EventBus::open(&blocked);
    assert_eq!(bus.publish("image", "tag", "sha256:1", attrs("bb")), 1);
    assert_eq!(bus.publish("image", "tag", "sha256:1", attrs("bb")), 2);
    assert_eq!(seqs(&bus.subscribe_after(None).past), [1, 2]);
}

#[test]
fn resync_picks_up_what_another_generation_appended() {
    let dir = tmp();
    let g = EventBus::open_with(dir.path(), 3000);
    g.publish("image", "tag", "a", attrs("1"));
    g.publish("image", "tag", "a", attrs("2"));
    let next = EventBus::open_with(dir.path(), 3000);
    assert_eq!(next.last_seq(), 2);
    // g keeps publishing (and rotates) until the freeze.
    for _ in 0..20 {
        g.publish("container", "exec_die", "c", attrs("x"));
    }
    drop(g);
    assert!(dir.path().join(PREVIOUS).exists(), "g rotated");
    next.resync();
    assert_eq!(next.last_seq(), 22);
    assert_eq!(next.publish("container", "die", "c", attrs("x")), 23);
    let sub = next.subscribe_after(Some(2));
    assert_eq!(seqs(&sub.past), (3..=23).collect::<Vec<_>>());
    // g+1 wrote to the new events.log, not to the file g rotated away.
    let cur = std::fs::read_to_string(dir.path().join(CURRENT)).expect("current");
    assert!(cur
        .lines()
        .last()
        .is_some_and(|l| l.starts_with(r#"{"seq":23,"#)));
}

/// The next live event; fails (instead of hanging) when none comes.
fn recv(rx: &mut broadcast::Receiver<Event>, got: &[u64]) -> Event {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(ev) => return ev,
            Err(broadcast::error::TryRecvError::Empty) => {
                let tail = &got[got.len().saturating_sub(5)..];
                assert!(
                    std::time::Instant::now() < deadline,
                    "no event after {tail:?}"
                );
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            Err(e) => panic!("receive after {:?}: {e}", got.last()),
        }
    }
}

#[test]
fn subscribe_after_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 250;
    const TOTAL: u64 = PUBLISHERS * EACH;
    let bus = Arc::new(EventBus::new());
    // Some events before anyone subscribes.
    for _ in 0..10 {
        bus.publish("image", "tag", "x", BTreeMap::new());
    }
    let total = TOTAL + 10;
    let start = Arc::new(std::sync::Barrier::new(PUBLISHERS as usize + 4));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (bus, start) = (bus.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..EACH {
                    bus.publish("container", "start", &format!("{p}-{i}"), BTreeMap::new());
                    if i % 2 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    // Subscribers join at different moments, from different cursors.
    let subscribers: Vec<_> = (0..4u64)
        .map(|k| {
            let (bus, start) = (bus.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..k * 50 {
                    std::thread::yield_now();
                }
                let after = match k {
                    0 => None,
                    _ => Some(bus.last_seq().saturating_sub(k * 3)),
                };
                // Hand the stream over (re-subscribe from the cursor) every few events.
                let (mut cursor, mut got) = (after, Vec::new());
                loop {
                    let mut sub = bus.subscribe_after(cursor);
                    got.extend(seqs(&sub.past));
                    let mut last = sub.cursor;
                    for _ in 0..=k * 2 {
                        if last >= total {
                            break;
                        }
                        let ev = recv(&mut sub.rx, &got);
                        got.push(ev.seq);
                        last = ev.seq;
                    }
                    if last >= total {
                        break;
                    }
                    cursor = Some(last);
                }
                (after, got)
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("publisher");
    }
    for s in subscribers {
        let (after, got) = s.join().expect("subscriber");
        let first = after.map_or(1, |a| a + 1);
        assert_eq!(got, (first..=total).collect::<Vec<_>>(), "after {after:?}");
    }
}
