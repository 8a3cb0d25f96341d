//! The summary of a run: counts per outcome, op and connection kind, latency percentiles of
//! the successful requests inside and outside the given windows (e.g. upgrade windows), and
//! the longest stretch without a completion. JSON-serialisable; `Display` prints a table.

use crate::record::{ConnKind, FailureSample, Op, Outcome, Record};
use crate::Run;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A time interval, `CLOCK_REALTIME` ns since the epoch, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First instant of the window.
    pub start_ns: u64,
    /// Last instant of the window.
    pub end_ns: u64,
}

/// Parses windows, one `start_ns end_ns` per line; blank lines and `#` comments are skipped.
pub fn parse_windows(text: &str) -> Result<Vec<Window>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(start_ns)), Some(Ok(end_ns)), None) = (it.next(), it.next(), it.next()) else {
            bail!(
                "windows line {}: expected \"start_ns end_ns\", got {line:?}",
                i + 1
            );
        };
        if end_ns < start_ns {
            bail!(
                "windows line {}: end {end_ns} is before start {start_ns}",
                i + 1
            );
        }
        out.push(Window { start_ns, end_ns });
    }
    Ok(out)
}

/// Reads a windows file (see [`parse_windows`]).
pub fn read_windows(path: &Path) -> Result<Vec<Window>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the windows file {}", path.display()))?;
    parse_windows(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Latency percentiles (nearest rank) of a set of requests, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// How many requests.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `ns` (sorted in place).
    pub fn of(ns: &mut [u64]) -> Latency {
        if ns.is_empty() {
            return Latency::default();
        }
        ns.sort_unstable();
        let rank = |p: f64| {
            let k = (p * ns.len() as f64).ceil() as usize;
            ns[k.clamp(1, ns.len()) - 1] as f64 / 1e6
        };
        Latency {
            count: ns.len() as u64,
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: ns[ns.len() - 1] as f64 / 1e6,
        }
    }
}

/// Counts and latencies of a subset of the requests (one op or one connection kind).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Requests.
    pub total: u64,
    /// Requests whose outcome is not `ok`.
    pub failed: u64,
    /// Requests per outcome name (every name present).
    pub outcomes: BTreeMap<String, u64>,
    /// Successful requests overlapping a window.
    pub inside: Latency,
    /// Successful requests overlapping no window.
    pub outside: Latency,
}

/// The summary of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the clients started, ns since the epoch.
    pub started_ns: u64,
    /// When the last client stopped, ns since the epoch.
    pub ended_ns: u64,
    /// `ended_ns - started_ns`, seconds.
    pub duration_s: f64,
    /// Clients with a fresh connection per request.
    pub fresh_clients: usize,
    /// Clients with a kept-alive connection.
    pub keepalive_clients: usize,
    /// Every request, every kind, every outcome.
    pub all: Breakdown,
    /// Latency of all successful requests, windows or not.
    pub latency: Latency,
    /// Per op name.
    pub ops: BTreeMap<String, Breakdown>,
    /// Per connection kind name.
    pub conns: BTreeMap<String, Breakdown>,
    /// The windows the latencies were split by.
    pub windows: Vec<Window>,
    /// Requests (any outcome) overlapping a window.
    pub requests_in_windows: u64,
    /// Failed requests overlapping a window.
    pub failed_in_windows: u64,
    /// The longest time in which no request completed successfully (run start and end count
    /// as edges), ms.
    pub max_gap_ms: f64,
    /// Where that gap started, ns since the epoch.
    pub max_gap_start_ns: u64,
    /// The first failures of each outcome kind, with their messages.
    pub failures: Vec<FailureSample>,
    /// Cycle containers whose delete never succeeded.
    pub leaked: Vec<String>,
    /// Remarks about the run (e.g. inspect disabled for lack of containers).
    pub notes: Vec<String>,
}

/// Accumulates one [`Breakdown`].
#[derive(Default)]
struct Acc {
    total: u64,
    failed: u64,
    outcomes: [u64; Outcome::NAMES.len()],
    inside: Vec<u64>,
    outside: Vec<u64>,
}

impl Acc {
    fn add(&mut self, r: &Record, inside: bool) {
        self.total += 1;
        let name = r.outcome.name();
        if let Some(i) = Outcome::NAMES.iter().position(|n| *n == name) {
            self.outcomes[i] += 1;
        }
        if !r.outcome.is_ok() {
            self.failed += 1;
        } else if inside {
            self.inside.push(r.latency_ns);
        } else {
            self.outside.push(r.latency_ns);
        }
    }

    fn finish(mut self) -> Breakdown {
        Breakdown {
            total: self.total,
            failed: self.failed,
            outcomes: Outcome::NAMES
                .iter()
                .zip(self.outcomes)
                .map(|(n, c)| (n.to_string(), c))
                .collect(),
            inside: Latency::of(&mut self.inside),
            outside: Latency::of(&mut self.outside),
        }
    }
}

/// Sorts and merges overlapping windows.
fn merge(windows: &[Window]) -> Vec<Window> {
    let mut w = windows.to_vec();
    w.sort_unstable_by_key(|w| w.start_ns);
    let mut out: Vec<Window> = Vec::with_capacity(w.len());
    for x in w {
        match out.last_mut() {
            Some(last) if x.start_ns <= last.end_ns => last.end_ns = last.end_ns.max(x.end_ns),
            _ => out.push(x),
        }
    }
    out
}

/// Whether `[start, end]` overlaps one of the merged, sorted `windows`.
fn overlaps(windows: &[Window], start: u64, end: u64) -> bool {
    let i = windows.partition_point(|w| w.end_ns < start);
    windows.get(i).is_some_and(|w| w.start_ns <= end)
}

impl Report {
    /// Summarises `run`, splitting latencies by `windows`.
    pub fn build(run: &Run, windows: &[Window]) -> Report {
        let merged = merge(windows);
        let mut all = Acc::default();
        let mut ops: BTreeMap<Op, Acc> = BTreeMap::new();
        let mut conns: BTreeMap<ConnKind, Acc> = BTreeMap::new();
        let mut ok_ends = Vec::new();
        let (mut in_windows, mut failed_in_windows) = (0, 0);
        for r in &run.records {
            let inside = overlaps(&merged, r.start_ns, r.end_ns());
            all.add(r, inside);
            ops.entry(r.op).or_default().add(r, inside);
            conns.entry(r.conn).or_default().add(r, inside);
            if inside {
                in_windows += 1;
                failed_in_windows += u64::from(!r.outcome.is_ok());
            }
            if r.outcome.is_ok() {
                ok_ends.push(r.end_ns());
            }
        }
        let mut ok_all: Vec<u64> = all.inside.iter().chain(&all.outside).copied().collect();
        ok_ends.sort_unstable();
        let (mut max_gap, mut max_gap_start) = (0, run.started_ns);
        let mut prev = run.started_ns;
        for t in ok_ends.into_iter().chain([run.ended_ns]) {
            if t.saturating_sub(prev) > max_gap {
                max_gap = t - prev;
                max_gap_start = prev;
            }
            prev = prev.max(t);
        }
        Report {
            started_ns: run.started_ns,
            ended_ns: run.ended_ns,
            duration_s: run.ended_ns.saturating_sub(run.started_ns) as f64 / 1e9,
            fresh_clients: run.fresh_clients,
            keepalive_clients: run.clients - run.fresh_clients.min(run.clients),
            latency: Latency::of(&mut ok_all),
            all: all.finish(),
            ops: ops
                .into_iter()
                .map(|(k, a)| (k.name().to_string(), a.finish()))
                .collect(),
            conns: conns
                .into_iter()
                .map(|(k, a)| (k.name().to_string(), a.finish()))
                .collect(),
            windows: windows.to_vec(),
            requests_in_windows: in_windows,
            failed_in_windows,
            max_gap_ms: max_gap as f64 / 1e6,
            max_gap_start_ns: max_gap_start,
            failures: run.failures.clone(),
            leaked: run.leaked.clone(),
            notes: run.notes.clone(),
        }
    }

    /// Requests with the given outcome name.
    pub fn count(&self, outcome: &str) -> u64 {
        self.all.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// Requests of `op` with the given outcome name (`None` for all outcomes).
    pub fn op_count(&self, op: Op, outcome: Option<&str>) -> u64 {
        self.ops.get(op.name()).map_or(0, |b| match outcome {
            Some(o) => b.outcomes.get(o).copied().unwrap_or(0),
            None => b.total,
        })
    }

    /// No request failed and no container leaked.
    pub fn passed(&self) -> bool {
        self.all.failed == 0 && self.leaked.is_empty()
    }
}

fn lat_cols(l: &Latency) -> String {
    format!(
        "{:>8}{:>10.3}{:>10.3}{:>10.3}",
        l.count, l.p50_ms, l.p99_ms, l.max_ms
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.all;
        writeln!(
            f,
            "berth-load: {} clients ({} fresh, {} keep-alive), {:.1} s, {} requests, {} failed, {} leaked",
            self.fresh_clients + self.keepalive_clients,
            self.fresh_clients,
            self.keepalive_clients,
            self.duration_s,
            a.total,
            a.failed,
            self.leaked.len()
        )?;
        write!(f, "outcomes:")?;
        for n in Outcome::NAMES {
            write!(f, " {n}={}", a.outcomes.get(n).copied().unwrap_or(0))?;
        }
        writeln!(f)?;
        let win_s: u64 = merge(&self.windows)
            .iter()
            .map(|w| w.end_ns - w.start_ns)
            .sum();
        writeln!(
            f,
            "windows: {} ({:.2} s in total), {} requests overlap them, {} of them failed",
            self.windows.len(),
            win_s as f64 / 1e9,
            self.requests_in_windows,
            self.failed_in_windows
        )?;
        let head = |first: &str| {
            format!(
                "{first:<28}{:>8}{:>10}{:>10}{:>10}",
                "count", "p50", "p99", "max"
            )
        };
        writeln!(f, "{}", head("latency of ok requests (ms)"))?;
        writeln!(f, "{:<28}{}", "  all", lat_cols(&self.latency))?;
        writeln!(f, "{:<28}{}", "  inside windows", lat_cols(&a.inside))?;
        writeln!(f, "{:<28}{}", "  outside windows", lat_cols(&a.outside))?;
        for (title, map) in [("per op", &self.ops), ("per connection", &self.conns)] {
            writeln!(
                f,
                "{title:<16}{:>8}{:>8} | {:>8}{:>10}{:>10}{:>10} | {:>8}{:>10}{:>10}{:>10}",
                "total", "failed", "in", "p50", "p99", "max", "out", "p50", "p99", "max"
            )?;
            for (name, b) in map {
                writeln!(
                    f,
                    "  {name:<14}{:>8}{:>8} | {} | {}",
                    b.total,
                    b.failed,
                    lat_cols(&b.inside),
                    lat_cols(&b.outside)
                )?;
            }
        }
        writeln!(
            f,
            "longest time without a successful completion: {:.1} ms (from {} ns, +{:.3} s)",
            self.max_gap_ms,
            self.max_gap_start_ns,
            self.max_gap_start_ns.saturating_sub(self.started_ns) as f64 / 1e9
        )?;
        if !self.failures.is_empty() {
            writeln!(f, "first failures:")?;
            for s in &self.failures {
                writeln!(
                    f,
                    "  {} {} {} @{}: {}",
                    s.outcome,
                    s.op.name(),
                    s.conn.name(),
                    s.start_ns,
                    s.message
                )?;
            }
        }
        if !self.leaked.is_empty() {
            writeln!(f, "leaked containers: {}", self.leaked.join(" "))?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
