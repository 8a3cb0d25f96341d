//! `docker container prune` (`POST /containers/prune?filters=`): removes every container
//! that does not run (created, exited, dead), narrowed by the `until` and
//! `label`/`label!` filters exactly as dockerd 20.10 applies them, and answers the ids
//! removed with the space their writable layers took.

use super::record::{Record, Status};
use super::rootfs::Rootfs;
use super::Containers;
use crate::error::{ApiError, ApiResult};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// What a prune removes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneFilters {
    /// Only containers created before this (ns since the epoch).
    pub until_ns: Option<i64>,
    /// `label` conditions (`key` or `key=value`), all must hold.
    pub label: Vec<String>,
    /// `label!` conditions: a container matching all of them is kept.
    pub not_label: Vec<String>,
}

/// Go's `time.ParseDuration` in ns.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * unit;
    }
    let ns = total as i64;
    Some(if neg { -ns } else { ns })
}

/// dockerd's `until`: a Go duration before `now_ns`, an RFC 3339 time, a unix time, or a
/// local date/time (`2006-01-02`, `2006-01-02T15:04:05`, `2006-01-02T15:04`).
pub fn parse_until(v: &str, now_ns: i64) -> ApiResult<i64> {
    if let Some(d) = parse_go_duration(v) {
        return Ok(now_ns - d);
    }
    if let Ok(ns) = crate::server::system::parse_time_arg(v) {
        return Ok(ns);
    }
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
    naive
        .and_then(|n| chrono::Local.from_local_datetime(&n).earliest())
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("failed to parse value as time or duration: {v:?}"))
        })
}

impl PruneFilters {
    /// From the request's `filters` (only `until`, `label` and `label!` are accepted).
    pub fn parse(filters: &HashMap<String, Vec<String>>, now_ns: i64) -> ApiResult<Self> {
        let mut f = PruneFilters::default();
        for (k, vals) in filters {
            match k.as_str() {
                "until" => {
                    if vals.len() > 1 {
                        return Err(ApiError::BadRequest(
                            "more than one until filter specified".into(),
                        ));
                    }
                    if let Some(v) = vals.first() {
                        f.until_ns = Some(parse_until(v, now_ns)?);
                    }
                }
                "label" => f.label = vals.clone(),
                "label!" => f.not_label = vals.clone(),
                other => return Err(ApiError::BadRequest(format!("invalid filter '{other}'"))),
            }
        }
        Ok(f)
    }

    /// Whether a container with these labels, created at `created_ns`, is pruned.
    pub fn matches(&self, labels: &HashMap<String, String>, created_ns: i64) -> bool {
        if self.until_ns.is_some_and(|u| created_ns > u) {
            return false;
        }
        if !match_kv_list(&self.label, labels) {
            return false;
        }
        self.not_label.is_empty() || !match_kv_list(&self.not_label, labels)
    }
}

/// dockerd's `filters.Args.MatchKVList`: every condition holds (vacuously true without
/// conditions; false for a container without labels).
fn match_kv_list(conds: &[String], labels: &HashMap<String, String>) -> bool {
    if conds.is_empty() {
        return true;
    }
    if labels.is_empty() {
        return false;
    }
    conds.iter().all(|c| match c.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(c.as_str()),
    })
}

/// Bytes of the files below `dir`, each inode once, directories not counted (dockerd's
/// `directory.Size`).
pub fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                walk(&e.path(), seen, total);
            } else if md.size() > 0 && seen.insert((md.dev(), md.ino())) {
                *total += md.size();
            }
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(dir, &mut seen, &mut total);
    total
}

impl Containers {
    /// Removes the stopped containers `f` selects: (ids removed, bytes reclaimed).
    pub async fn prune(self: &Arc<Self>, f: &PruneFilters) -> ApiResult<(Vec<String>, u64)> {
        let victims: Vec<Record> = self.scan(|r| {
            let stopped = matches!(
                r.state.status,
                Status::Created | Status::Exited | Status::Dead
            );
            let labels = r.config.labels.clone().unwrap_or_default();
            (stopped && f.matches(&labels, r.created_ns)).then(|| r.clone())
        });
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        for rec in victims {
            let upper = Rootfs::new(&self.paths.data_root, &rec.id).upper();
            let size = tokio::task::spawn_blocking(move || dir_size(&upper))
                .await
                .unwrap_or(0);
            match self.remove(&rec.id, false).await {
                Ok(()) => {
                    deleted.push(rec.id.clone());
                    reclaimed += size;
                }
                // Started meanwhile, or failing: dockerd logs it and goes on.
                Err(e) => tracing::warn!(id = %rec.id, error = %e, "prune: container not removed"),
            }
        }
        let mut attrs = BTreeMap::new();
        attrs.insert("reclaimed".to_string(), reclaimed.to_string());
        self.events.publish("container", "prune", "", attrs);
        Ok((deleted, reclaimed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
        m
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("24h"), Some(86_400_000_000_000));
        assert_eq!(parse_go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("3x"), None);
        assert_eq!(parse_until("10m", 1_000_000_000_000), Ok(400_000_000_000));
        assert_eq!(parse_until("1700000000", 0), Ok(1_700_000_000_000_000_000));
        assert!(parse_until("2026-01-02", 0).is_ok());
        assert!(parse_until("yesterday", 0).is_err());
    }

    #[test]
    fn filters_select_like_dockerd() -> anyhow::Result<()> {
        let now = 1_000_000_000_000_000_000;
        let e = PruneFilters::parse(&filters(&[("dangling", "true")]), now);
        assert_eq!(
            e.err().map(|e| e.to_string()),
            Some("invalid filter 'dangling'".to_string())
        );
        let e = PruneFilters::parse(&filters(&[("until", "1h"), ("until", "2h")]), now);
        assert_eq!(
            e.err().map(|e| e.to_string()),
            Some("more than one until filter specified".to_string())
        );
        let labels: HashMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let none = HashMap::new();
        let f = PruneFilters::parse(&filters(&[("label", "app=web")]), now)?;
        assert!(f.matches(&labels, now));
        assert!(!f.matches(&none, now));
        let f = PruneFilters::parse(&filters(&[("label", "app"), ("label", "tier")]), now)?;
        assert!(!f.matches(&labels, now));
        let f = PruneFilters::parse(&filters(&[("label!", "app=web")]), now)?;
        assert!(!f.matches(&labels, now));
        assert!(f.matches(&none, now));
        let f = PruneFilters::parse(&filters(&[("until", "1h")]), now)?;
        assert!(f.matches(&none, now - 7_200_000_000_000));
        assert!(!f.matches(&none, now - 60_000_000_000));
        Ok(())
    }

    #[test]
    fn size_counts_files_and_hardlinks_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("d"))?;
        std::fs::write(dir.path().join("d/a"), [0u8; 100])?;
        std::fs::hard_link(dir.path().join("d/a"), dir.path().join("b"))?;
        std::fs::write(dir.path().join("c"), [0u8; 11])?;
        assert_eq!(dir_size(dir.path()), 111);
        Ok(())
    }
}
