//! Tests of the report: window classification, percentiles, gaps, window files.

use super::*;
use crate::record::IoKind;

const MS: u64 = 1_000_000;

fn rec(start_ms: u64, lat_ms: u64, outcome: Outcome, conn: ConnKind) -> Record {
    Record {
        start_ns: start_ms * MS,
        latency_ns: lat_ms * MS,
        op: Op::Ping,
        conn,
        outcome,
        client: 0,
    }
}

#[test]
fn latencies_split_by_windows() {
    let ka = ConnKind::Keepalive;
    let refused = Outcome::Refused;
    let io = Outcome::IoError {
        io: IoKind::Eof,
        errno: 0,
        received: false,
    };
    let mut records = vec![
        rec(1000, 100, Outcome::Ok, ConnKind::Fresh), // 1000-1100: before the first window
        rec(1900, 200, Outcome::Ok, ka),              // overlaps the first window's start
        rec(2500, 10, Outcome::Ok, ka),               // inside
        rec(2990, 500, Outcome::Ok, ka),              // overlaps the (merged) end 3000
        rec(3001, 50, Outcome::Ok, ka),               // just after
        rec(5000, 1000, refused, ka),                 // overlaps the second window, failed
        rec(7000, 1, Outcome::Ok, ka),                // after everything
        rec(7100, 3, io, ConnKind::Fresh),            // failed outside
    ];
    records[1].op = Op::List;
    let run = Run {
        started_ns: 1000 * MS,
        ended_ns: 10_000 * MS,
        clients: 4,
        fresh_clients: 1,
        records,
        ..Run::default()
    };
    // Two overlapping windows that merge into [2000, 3000], and [5500, 5600].
    let windows = [
        Window {
            start_ns: 2000 * MS,
            end_ns: 2600 * MS,
        },
        Window {
            start_ns: 5500 * MS,
            end_ns: 5600 * MS,
        },
        Window {
            start_ns: 2400 * MS,
            end_ns: 3000 * MS,
        },
    ];
    let r = run.report(&windows);
    assert_eq!(r.all.total, 8);
    assert_eq!(r.all.failed, 2);
    assert_eq!(r.count("ok"), 6);
    assert_eq!(r.count("refused"), 1);
    assert_eq!(r.count("io_error"), 1);
    assert_eq!(r.requests_in_windows, 4);
    assert_eq!(r.failed_in_windows, 1);
    let ms = |count, p50_ms, p99_ms, max_ms| Latency {
        count,
        p50_ms,
        p99_ms,
        max_ms,
    };
    assert_eq!(r.all.inside, ms(3, 200.0, 500.0, 500.0));
    assert_eq!(r.all.outside, ms(3, 50.0, 100.0, 100.0));
    assert_eq!(r.latency, ms(6, 50.0, 500.0, 500.0));
    assert_eq!(r.ops["list"].inside, ms(1, 200.0, 200.0, 200.0));
    assert_eq!(r.ops["ping"].inside, ms(2, 10.0, 500.0, 500.0));
    assert_eq!(r.op_count(Op::Ping, Some("refused")), 1);
    assert_eq!(r.op_count(Op::Delete, None), 0);
    assert_eq!(r.conns["fresh"].total, 2);
    assert_eq!(r.conns["fresh"].failed, 1);
    assert_eq!(r.conns["keepalive"].outside, ms(2, 1.0, 50.0, 50.0));
    assert_eq!((r.fresh_clients, r.keepalive_clients), (1, 3));
    // ok completions: 1100 2100 2510 3051 3490 7001, edges 1000 and 10000.
    assert_eq!(r.max_gap_ms, 3511.0);
    assert_eq!(r.max_gap_start_ns, 3490 * MS);
    assert!(!r.passed());
    // The table and the JSON both carry it.
    let table = r.to_string();
    assert!(table.contains("refused=1"), "{table}");
    let json = serde_json::to_string(&r).expect("serialises");
    let back: Report = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, r);
}

#[test]
fn no_windows_means_all_outside_and_empty_run_gap_is_the_run() {
    let run = Run {
        started_ns: 5 * MS,
        ended_ns: 25 * MS,
        records: vec![rec(10, 2, Outcome::Ok, ConnKind::Fresh)],
        ..Run::default()
    };
    let r = run.report(&[]);
    assert_eq!(r.all.inside.count, 0);
    assert_eq!(r.all.outside.count, 1);
    assert_eq!(r.max_gap_ms, 13.0);
    assert!(r.passed());
    let empty = Run {
        started_ns: 5 * MS,
        ended_ns: 25 * MS,
        ..Run::default()
    };
    assert_eq!(empty.report(&[]).max_gap_ms, 20.0);
}

#[test]
fn percentiles_are_nearest_rank() {
    let mut ns: Vec<u64> = (1..=100).rev().map(|i| i * MS).collect();
    let l = Latency::of(&mut ns);
    assert_eq!(
        (l.count, l.p50_ms, l.p99_ms, l.max_ms),
        (100, 50.0, 99.0, 100.0)
    );
    let mut one = vec![7 * MS];
    assert_eq!(Latency::of(&mut one).p99_ms, 7.0);
    assert_eq!(Latency::of(&mut []).count, 0);
}

#[test]
fn windows_file_parses() {
    let w = parse_windows("# upgrades\n10 20\n\n30 40 # second\n").expect("parses");
    assert_eq!(
        w,
        vec![
            Window {
                start_ns: 10,
                end_ns: 20
            },
            Window {
                start_ns: 30,
                end_ns: 40
            }
        ]
    );
    assert!(parse_windows("10").is_err());
    assert!(parse_windows("10 20 30").is_err());
    assert!(parse_windows("20 10").is_err());
    assert!(parse_windows("a b").is_err());
}
