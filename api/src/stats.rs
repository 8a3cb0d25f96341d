//! Container resource statistics (`GET /containers/{id}/stats`): one sample read from the
//! container's cgroup (v1 hierarchies in [`v1`], the unified v2 group in [`v2`]), `/proc/stat`
//! and the init's network namespace, and the JSON object the docker CLI reads to compute CPU %,
//! memory, network and block I/O, in the shape dockerd 20.10 gives on each cgroup version.
//!
//! Shared by the shim (which streams one object a second to a handed-over connection) and
//! the daemon (which answers by itself when no shim can). Only files are read here.

mod v1;
pub mod v2;

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Nanoseconds per `USER_HZ` tick: the kernel exports `/proc/stat` and `cpuacct.stat` in
/// units of `USER_HZ`, which is 100 on every Linux ABI.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

/// Where the statistics of one container are read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The cgroup mount root (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The container's cgroup path inside each hierarchy (`<cgroup-parent>/<id>`).
    pub cgroup_path: PathBuf,
    /// The container's init pid, for its network namespace's counters (`None`: no networks).
    pub pid: Option<i32>,
    /// The root is the unified (v2) hierarchy: one group with every controller's files.
    pub unified: bool,
}

/// One reading of a container's counters (v1 file names; [`v2`] says where v2 takes each).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Read from a cgroup v2 group (the JSON then has dockerd's v2 shape).
    pub cgroup_v2: bool,
    /// Wall-clock time of the reading, ns since the Unix epoch.
    pub read_ns: i64,
    /// `cpuacct.usage` (ns).
    pub cpu_total: u64,
    /// `cpuacct.usage_percpu` (ns per cpu; empty on v2).
    pub percpu: Vec<u64>,
    /// `cpuacct.stat` user time (ns).
    pub cpu_user: u64,
    /// `cpuacct.stat` system time (ns).
    pub cpu_kernel: u64,
    /// Host CPU time from `/proc/stat` (ns).
    pub system_cpu: u64,
    /// Online cpus (`cpuN` lines of `/proc/stat`).
    pub online_cpus: u32,
    /// `cpu.stat`: nr_periods, nr_throttled, throttled_time.
    pub throttling: [u64; 3],
    /// `memory.usage_in_bytes`.
    pub mem_usage: u64,
    /// `memory.max_usage_in_bytes` (0 on v2).
    pub mem_max_usage: u64,
    /// `memory.limit_in_bytes`, capped to the host's memory.
    pub mem_limit: u64,
    /// `memory.failcnt` (v2: the `oom` count of `memory.events`).
    pub mem_failcnt: u64,
    /// `memory.stat`.
    pub mem_stats: BTreeMap<String, u64>,
    /// `pids.current`.
    pub pids: u64,
    /// `pids.max` (0 = unlimited).
    pub pids_limit: u64,
    /// `blkio.throttle.io_service_bytes` rows: major, minor, op, value (v2: `io.stat`'s
    /// read and write bytes).
    pub io_bytes: Vec<(u64, u64, String, u64)>,
    /// `blkio.throttle.io_serviced` rows (none on v2).
    pub io_ops: Vec<(u64, u64, String, u64)>,
    /// Interfaces of the container's network namespace (lo excluded): rx/tx counters.
    pub networks: BTreeMap<String, [u64; 8]>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> u64 {
    read(p).and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn key_values(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Parses blkio rows (`8:0 Read 4096`); the `Total` rows are skipped.
fn blkio_rows(text: &str) -> Vec<(u64, u64, String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (maj, min) = it.next()?.split_once(':')?;
            let op = it.next()?.to_string();
            let v = it.next()?.parse().ok()?;
            Some((maj.parse().ok()?, min.parse().ok()?, op, v))
        })
        .collect()
}

/// Host CPU time (ns) and the number of online cpus from `/proc/stat` text.
pub fn parse_proc_stat(text: &str) -> (u64, u32) {
    let mut total = 0;
    let mut cpus = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("cpu") => {
                // user nice system idle iowait irq softirq (steal and guests excluded, as dockerd).
                total = it
                    .take(7)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum::<u64>()
                    .saturating_mul(NS_PER_TICK);
            }
            Some(c) if c.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    (total, cpus)
}

/// Interface counters from `/proc/<pid>/net/dev` text: rx bytes, packets, errs, drop, then tx.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, [u64; 8]> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 12 {
            continue;
        }
        out.insert(
            name.to_string(),
            [v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]],
        );
    }
    out
}

fn host_memory() -> Option<u64> {
    let text = read(Path::new("/proc/meminfo"))?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

impl Source {
    /// The source of the group `cgroup_path` under `cgroup_root`, v2 when the root has
    /// `cgroup.controllers`.
    pub fn new(cgroup_root: &Path, cgroup_path: impl Into<PathBuf>, pid: Option<i32>) -> Self {
        Source {
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_path: cgroup_path.into(),
            pid,
            unified: cgroup_root.join("cgroup.controllers").exists(),
        }
    }

    /// The cgroup path relative to a hierarchy's root.
    fn relative(&self) -> &Path {
        self.cgroup_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroup_path)
    }

    /// Reads one sample now. Missing files read as zero (a controller the host lacks).
    pub fn sample(&self) -> Sample {
        let read_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut s = if self.unified {
            self.sample_v2()
        } else {
            self.sample_v1()
        };
        s.read_ns = read_ns;
        (s.system_cpu, s.online_cpus) = read(Path::new("/proc/stat"))
            .map(|t| parse_proc_stat(&t))
            .unwrap_or((0, 0));
        // dockerd: no limit (or one above the host's memory) shows as the host's memory.
        if let Some(host) = host_memory() {
            if s.mem_limit == 0 || s.mem_limit > host {
                s.mem_limit = host;
            }
        }
        s.networks = self
            .pid
            .and_then(|p| read(Path::new(&format!("/proc/{p}/net/dev"))))
            .map(|t| parse_net_dev(&t))
            .unwrap_or_default();
        s
    }
}

fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn cpu_json(s: Option<&Sample>) -> Value {
    let d = Sample::default();
    let s = s.unwrap_or(&d);
    let mut usage = json!({
        "total_usage": s.cpu_total,
        "usage_in_kernelmode": s.cpu_kernel,
        "usage_in_usermode": s.cpu_user,
    });
    // `omitempty` in dockerd: absent on v2 and before the first sample.
    if !s.percpu.is_empty() {
        usage["percpu_usage"] = json!(s.percpu);
    }
    json!({
        "cpu_usage": usage,
        "system_cpu_usage": s.system_cpu,
        "online_cpus": s.online_cpus,
        "throttling_data": {
            "periods": s.throttling[0],
            "throttled_periods": s.throttling[1],
            "throttled_time": s.throttling[2],
        },
    })
}

fn blkio_json(rows: &[(u64, u64, String, u64)]) -> Value {
    Value::Array(
        rows.iter()
            .filter(|r| r.2 != "Total")
            .map(|(major, minor, op, value)| {
                json!({"major": major, "minor": minor, "op": op, "value": value})
            })
            .collect(),
    )
}

/// The Docker stats object for `cur` with `pre` as the previous sample (`None`: none yet,
/// written as zeros like dockerd's first object). `cur = None` gives the all-zero object of a
/// container that does not run.
pub fn to_json(name: &str, id: &str, cur: Option<&Sample>, pre: Option<&Sample>) -> Value {
    let mut v = Map::new();
    v.insert(
        "name".into(),
        json!(format!("/{}", name.trim_start_matches('/'))),
    );
    v.insert("id".into(), json!(id));
    v.insert("read".into(), json!(rfc3339(cur.map_or(0, |s| s.read_ns))));
    v.insert(
        "preread".into(),
        json!(rfc3339(pre.map_or(0, |s| s.read_ns))),
    );
    v.insert("cpu_stats".into(), cpu_json(cur));
    v.insert("precpu_stats".into(), cpu_json(pre));
    let d = Sample::default();
    let s = cur.unwrap_or(&d);
    v.insert(
        "pids_stats".into(),
        if s.pids_limit > 0 {
            json!({"current": s.pids, "limit": s.pids_limit})
        } else {
            json!({"current": s.pids})
        },
    );
    // v2: dockerd fills only the bytes (null without devices), the rest stays null.
    let (bytes, ops) = if s.cgroup_v2 {
        let bytes = if s.io_bytes.is_empty() {
            Value::Null
        } else {
            blkio_json(&s.io_bytes)
        };
        (bytes, Value::Null)
    } else {
        (blkio_json(&s.io_bytes), blkio_json(&s.io_ops))
    };
    v.insert(
        "blkio_stats".into(),
        json!({
            "io_service_bytes_recursive": bytes,
            "io_serviced_recursive": ops,
            "io_queue_recursive": null,
            "io_service_time_recursive": null,
            "io_wait_time_recursive": null,
            "io_merged_recursive": null,
            "io_time_recursive": null,
            "sectors_recursive": null,
        }),
    );
    v.insert("num_procs".into(), json!(0));
    v.insert("storage_stats".into(), json!({}));
    v.insert(
        "memory_stats".into(),
        if cur.is_some() {
            let mut m = json!({
                "usage": s.mem_usage,
                "stats": s.mem_stats,
                "limit": s.mem_limit,
            });
            // `omitempty` in dockerd: v2 has no max_usage; failcnt shows once it counts.
            if s.mem_max_usage > 0 {
                m["max_usage"] = json!(s.mem_max_usage);
            }
            if s.mem_failcnt > 0 {
                m["failcnt"] = json!(s.mem_failcnt);
            }
            m
        } else {
            json!({})
        },
    );
    if !s.networks.is_empty() {
        let nets: Map<String, Value> = s
            .networks
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    json!({
                        "rx_bytes": c[0], "rx_packets": c[1], "rx_errors": c[2], "rx_dropped": c[3],
                        "tx_bytes": c[4], "tx_packets": c[5], "tx_errors": c[6], "tx_dropped": c[7],
                    }),
                )
            })
            .collect();
        v.insert("networks".into(), Value::Object(nets));
    }
    Value::Object(v)
}

/// One stats object as a line of JSON (what dockerd's encoder writes).
pub fn to_line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_net_dev_parse() {
        let (total, cpus) = parse_proc_stat(
            "cpu  10 0 5 100 1 0 0 7 0 0\ncpu0 5 0 2 50 1 0 0 0 0 0\ncpu1 5 0 3 50 0 0 0 0 0 0\nintr 1\n",
        );
        assert_eq!(total, 116 * NS_PER_TICK);
        assert_eq!(cpus, 2);
        let nets = parse_net_dev(
            "Inter-|   Receive\n face |bytes\n    lo: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 1 0 0 0 0\n",
        );
        assert_eq!(nets.len(), 1);
        assert_eq!(nets["eth0"], [100, 2, 0, 0, 300, 4, 0, 1]);
    }

    #[test]
    fn sample_reads_v1_files_and_renders_docker_shape() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = |c: &str| root.path().join(c).join("parent/abc");
        for c in ["cpuacct", "memory", "pids"] {
            std::fs::create_dir_all(dir(c))?;
        }
        std::fs::write(dir("cpuacct").join("cpuacct.usage"), "1500\n")?;
        std::fs::write(dir("cpuacct").join("cpuacct.usage_percpu"), "1000 500 \n")?;
        std::fs::write(dir("cpuacct").join("cpuacct.stat"), "user 2\nsystem 1\n")?;
        std::fs::write(dir("memory").join("memory.usage_in_bytes"), "4096\n")?;
        std::fs::write(dir("memory").join("memory.limit_in_bytes"), "8192\n")?;
        std::fs::write(
            dir("memory").join("memory.stat"),
            "cache 10\ntotal_inactive_file 5\n",
        )?;
        std::fs::write(dir("pids").join("pids.current"), "3\n")?;
        let src = Source::new(root.path(), "/parent/abc", None);
        assert!(!src.unified);
        let s = src.sample();
        assert_eq!(s.cpu_total, 1500);
        assert_eq!(s.percpu, vec![1000, 500]);
        assert_eq!(s.cpu_user, 2 * NS_PER_TICK);
        assert_eq!(s.mem_limit, 8192);
        let v = to_json("web", "abc", Some(&s), None);
        assert_eq!(v["name"], "/web");
        assert_eq!(v["cpu_stats"]["cpu_usage"]["total_usage"], 1500);
        assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 0);
        assert_eq!(v["memory_stats"]["usage"], 4096);
        assert_eq!(v["memory_stats"]["stats"]["cache"], 10);
        assert_eq!(v["pids_stats"]["current"], 3);
        assert_eq!(v["preread"], "0001-01-01T00:00:00Z");
        Ok(())
    }
}
