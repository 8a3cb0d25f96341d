//! Configuration of the elastic-memory controller (`--elastic-memory` / daemon.json
//! `elastic-memory`) and the per-container label `berth.memory.elastic=CEILING`.

use crate::container::create::parse_size;
use serde::Deserialize;
use std::collections::HashMap;

/// The label that makes a container elastic: its ceiling, a size or `max`.
pub const LABEL: &str = "berth.memory.elastic";

const MIB: u64 = 1 << 20;

/// The daemon.json form: `true`, or an object with the same keys as the flag.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileElastic {
    /// `"elastic-memory": true` (defaults) or `false`.
    Enabled(bool),
    /// `"elastic-memory": {"pool-size": "20g", ...}`.
    Options(HashMap<String, serde_json::Value>),
}

/// The controller's settings, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticConfig {
    /// Memory of the pool (the containers' parent group): host memory minus `reserve`
    /// unless given.
    pub pool_size: u64,
    /// Below this much headroom the controller stops granting and squeezes bursting
    /// containers back toward their entitlement.
    pub low_headroom: u64,
    /// At or below this much headroom it kills the container furthest over its
    /// entitlement.
    pub critical_headroom: u64,
    /// How often the pool is sampled.
    pub interval_ms: u64,
}

/// A size, or a percentage of `of`.
fn size_or_percent(key: &str, v: &str, of: u64) -> Result<u64, String> {
    if let Some(p) = v.trim().strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("elastic-memory {key}: invalid percentage {v:?}"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("elastic-memory {key}: {v:?} is not within 0-100%"));
        }
        return Ok((of as f64 * p / 100.0) as u64);
    }
    parse_size(v).map_err(|e| format!("elastic-memory {key}: {e}"))
}

impl ElasticConfig {
    /// Parses `key=value,...` (keys `pool-size`, `reserve`, `low-headroom`,
    /// `critical-headroom`, `interval-ms`; sizes like `600m`, headrooms also as `%` of the
    /// pool) against a host with `host_memory` bytes. Empty: every default.
    pub fn parse(opts: &str, host_memory: u64) -> Result<Self, String> {
        let mut map = HashMap::new();
        for kv in opts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("elastic-memory: {kv:?} is not key=value"))?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Self::from_map(&map, host_memory)
    }

    /// The daemon.json form; `None` when it disables the controller.
    pub fn from_file(f: &FileElastic, host_memory: u64) -> Result<Option<Self>, String> {
        match f {
            FileElastic::Enabled(false) => Ok(None),
            FileElastic::Enabled(true) => Self::from_map(&HashMap::new(), host_memory).map(Some),
            FileElastic::Options(o) => {
                let map = o
                    .iter()
                    .map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), s)
                    })
                    .collect();
                Self::from_map(&map, host_memory).map(Some)
            }
        }
    }

    fn from_map(map: &HashMap<String, String>, host_memory: u64) -> Result<Self, String> {
        for k in map.keys() {
            if ![
                "pool-size",
                "reserve",
                "low-headroom",
                "critical-headroom",
                "interval-ms",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("elastic-memory: unknown option {k:?}"));
            }
        }
        let reserve = match map.get("reserve") {
            Some(v) => size_or_percent("reserve", v, host_memory)?,
            None => (host_memory / 10).max(512 * MIB),
        };
        let pool_size = match map.get("pool-size") {
            Some(v) => size_or_percent("pool-size", v, host_memory)?,
            None => host_memory.saturating_sub(reserve),
        };
        if pool_size < 64 * MIB {
            return Err(format!(
                "elastic-memory: pool of {} MiB is too small (at least 64 MiB)",
                pool_size / MIB
            ));
        }
        if host_memory > 0 && pool_size > host_memory {
            return Err(format!(
                "elastic-memory: pool of {} MiB is larger than the host's {} MiB",
                pool_size / MIB,
                host_memory / MIB
            ));
        }
        let low_headroom = match map.get("low-headroom") {
            Some(v) => size_or_percent("low-headroom", v, pool_size)?,
            None => pool_size / 10,
        };
        let critical_headroom = match map.get("critical-headroom") {
            Some(v) => size_or_percent("critical-headroom", v, pool_size)?,
            None => pool_size * 3 / 100,
        };
        if critical_headroom >= low_headroom || low_headroom >= pool_size {
            return Err(format!(
                "elastic-memory: need critical-headroom ({} MiB) < low-headroom ({} MiB) < pool-size ({} MiB)",
                critical_headroom / MIB,
                low_headroom / MIB,
                pool_size / MIB
            ));
        }
        let interval_ms = match map.get("interval-ms") {
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (10..=10_000).contains(n))
                .ok_or_else(|| format!("elastic-memory interval-ms: {v:?} is not 10 to 10000"))?,
            None => 100,
        };
        Ok(ElasticConfig {
            pool_size,
            low_headroom,
            critical_headroom,
            interval_ms,
        })
    }
}

/// `MemTotal` of `/proc/meminfo` in bytes (0 when unreadable).
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A container's elastic ceiling from its labels: `None` without the label,
/// `Some(u64::MAX)` for `max`. `memory` is its limit (`-m`, the entitlement).
pub fn ceiling(
    labels: Option<&HashMap<String, String>>,
    memory: i64,
) -> Result<Option<u64>, String> {
    let Some(v) = labels.and_then(|l| l.get(LABEL)) else {
        return Ok(None);
    };
    if memory <= 0 {
        return Err(format!(
            "{LABEL} needs a memory limit (-m): the limit is what the container is entitled to"
        ));
    }
    let c = if v.trim() == "max" {
        u64::MAX
    } else {
        parse_size(v).map_err(|_| format!("invalid {LABEL} {v:?}: a size such as 2g, or max"))?
    };
    if c < memory as u64 {
        return Err(format!(
            "{LABEL} {v:?} is below the memory limit ({} bytes): the ceiling must be at least the limit",
            memory
        ));
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn defaults_keep_a_reserve_and_derive_thresholds_from_the_pool() {
        let c = ElasticConfig::parse("", 24 * GIB).expect("defaults");
        assert_eq!(c.pool_size, 24 * GIB - 24 * GIB / 10);
        assert_eq!(c.low_headroom, c.pool_size / 10);
        assert_eq!(c.critical_headroom, c.pool_size * 3 / 100);
        assert_eq!(c.interval_ms, 100);
        // a small host keeps at least 512 MiB
        let c = ElasticConfig::parse("", 2 * GIB).expect("small host");
        assert_eq!(c.pool_size, 2 * GIB - 512 * MIB);
    }

    #[test]
    fn options_sizes_and_percentages() {
        let c = ElasticConfig::parse(
            "pool-size=600m, low-headroom=10%,critical-headroom=24m,interval-ms=50",
            24 * GIB,
        )
        .expect("parse");
        assert_eq!(
            c,
            ElasticConfig {
                pool_size: 600 * MIB,
                low_headroom: 60 * MIB,
                critical_headroom: 24 * MIB,
                interval_ms: 50
            }
        );
        let c = ElasticConfig::parse("reserve=4g", 24 * GIB).expect("reserve");
        assert_eq!(c.pool_size, 20 * GIB);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let e = |s: &str| ElasticConfig::parse(s, 24 * GIB).expect_err(s);
        assert!(e("pool").contains("key=value"));
        assert!(e("speed=3").contains("unknown option \"speed\""));
        assert!(e("pool-size=lots").contains("pool-size"));
        assert!(e("pool-size=10m").contains("too small"));
        assert!(e("pool-size=100g").contains("larger than the host"));
        assert!(e("pool-size=600m,low-headroom=10m,critical-headroom=20m")
            .contains("critical-headroom"));
        assert!(e("low-headroom=120%").contains("0-100%"));
        assert!(e("interval-ms=1").contains("interval-ms"));
    }

    #[test]
    fn daemon_json_forms() {
        let f: FileElastic = serde_json::from_str("false").expect("json");
        assert_eq!(ElasticConfig::from_file(&f, 24 * GIB), Ok(None));
        let f: FileElastic = serde_json::from_str("true").expect("json");
        assert!(ElasticConfig::from_file(&f, 24 * GIB)
            .expect("on")
            .is_some());
        let f: FileElastic =
            serde_json::from_str(r#"{"pool-size":"600m","interval-ms":200}"#).expect("json");
        let c = ElasticConfig::from_file(&f, 24 * GIB)
            .expect("ok")
            .expect("on");
        assert_eq!((c.pool_size, c.interval_ms), (600 * MIB, 200));
    }

    #[test]
    fn the_label_needs_a_limit_and_a_ceiling_above_it() {
        let l = |v: &str| Some(HashMap::from([(LABEL.to_string(), v.to_string())]));
        assert_eq!(ceiling(None, 0), Ok(None));
        assert_eq!(ceiling(l("max").as_ref(), 100 << 20), Ok(Some(u64::MAX)));
        assert_eq!(ceiling(l("1g").as_ref(), 100 << 20), Ok(Some(GIB)));
        assert!(ceiling(l("1g").as_ref(), 0)
            .expect_err("no -m")
            .contains("-m"));
        assert!(ceiling(l("50m").as_ref(), 100 << 20)
            .expect_err("below")
            .contains("at least"));
        assert!(ceiling(l("huge").as_ref(), 100 << 20)
            .expect_err("bad")
            .contains("invalid"));
    }
}
