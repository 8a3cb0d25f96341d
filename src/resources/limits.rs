//! Writing a container's limits into its cgroup, v1 or v2: what `docker update` changes on a
//! running container (and the cpuset and memory changes the CPU allocator and the
//! elastic-memory controller make). Only the fields that are set are written.
//!
//! A change is first turned into a [`plan`] (the file writes, in an order the kernel
//! accepts: v1 refuses a memory limit above the memory+swap limit and the other way round),
//! then carried out by [`execute`]. [`snapshot`] reads what the planned files hold now, so a
//! change that fails half-way can be undone by executing the snapshot.

use super::cgroupfs::{CgResult, Cgroups, Version};

/// The cgroup-controlled resources of a container that can change while it runs. `None`
/// leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes; `-1`: unlimited.
    pub memory: Option<i64>,
    /// Soft limit (v1) / `memory.low` (v2) in bytes; `-1` or 0: none.
    pub memory_reservation: Option<i64>,
    /// Memory + swap in bytes (Docker's `MemorySwap`); `-1`: unlimited swap.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (`cpu.shares`, 2..262144).
    pub cpu_shares: Option<u64>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    /// CFS quota in µs; `-1`: unlimited.
    pub cpu_quota: Option<i64>,
    /// CPU list (`0-3,6`).
    pub cpuset_cpus: Option<String>,
    /// NUMA node list.
    pub cpuset_mems: Option<String>,
    /// Most processes; 0 or less: unlimited.
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10..1000).
    pub blkio_weight: Option<u16>,
}

impl Limits {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// One write of a cgroup file of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The v1 controller hierarchy (ignored on v2).
    pub controller: &'static str,
    /// The file name.
    pub file: &'static str,
    /// What is written.
    pub value: String,
}

fn w(controller: &'static str, file: &'static str, value: impl ToString) -> Write {
    Write {
        controller,
        file,
        value: value.to_string(),
    }
}

fn unlimited_v2(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

fn pids_value(p: i64) -> String {
    if p > 0 {
        p.to_string()
    } else {
        "max".into()
    }
}

/// v2 `cpu.weight` for v1 shares, as runc converts them (2..262144 → 1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Writes the set fields of `l` to the group `path`.
pub fn apply(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<()> {
    execute(cg, path, &plan(cg, path, l)?)
}

/// The writes that put the set fields of `l` into the group `path`, in order. Reads the
/// group where the order or a value depends on what it holds now.
pub fn plan(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<Vec<Write>> {
    match cg.version() {
        Version::V1 => plan_v1(cg, path, l),
        Version::V2 => plan_v2(cg, path, l),
    }
}

/// Carries out `writes` in order. A write the kernel refuses with `EINVAL` while other
/// writes follow is tried again once after them: the kernel checks some files against
/// others (the CFS period against the quota, the memory limit against memory+swap), so a
/// pair can need either order. The first write that still fails is the error.
pub fn execute(cg: &Cgroups, path: &str, writes: &[Write]) -> CgResult<()> {
    execute_with(writes, |x| cg.write(x.controller, path, x.file, &x.value))
}

/// [`execute`] through `write` (unit tests give a fake kernel).
fn execute_with(writes: &[Write], mut write: impl FnMut(&Write) -> CgResult<()>) -> CgResult<()> {
    let mut again = Vec::new();
    for (i, x) in writes.iter().enumerate() {
        if let Err(e) = write(x) {
            let last = i + 1 == writes.len();
            if last || e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            again.push(x);
        }
    }
    for x in again {
        write(x)?;
    }
    Ok(())
}

/// What the files `writes` change hold now (first line), as writes that put it back.
pub fn snapshot(cg: &Cgroups, path: &str, writes: &[Write]) -> CgResult<Vec<Write>> {
    writes
        .iter()
        .map(|x| {
            let text = cg.read(x.controller, path, x.file)?;
            Ok(w(
                x.controller,
                x.file,
                text.lines().next().unwrap_or("").trim(),
            ))
        })
        .collect()
}

fn plan_v1(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<Vec<Write>> {
    let mut out = Vec::new();
    let memsw = cg.has("memory", path, "memory.memsw.limit_in_bytes");
    let limit = |v: i64| w("memory", "memory.limit_in_bytes", v);
    let swap = |v: i64| w("memory", "memory.memsw.limit_in_bytes", v);
    // As runc: an unlimited memory limit without a swap limit lifts the swap limit too
    // (the kernel refuses a memory limit above memory+swap).
    let swap_value = match (l.memory, l.memory_swap) {
        (Some(-1), None) => Some(-1),
        (_, s) => s,
    };
    match (l.memory, swap_value.filter(|_| memsw)) {
        (Some(m), Some(s)) => {
            // Raising: memsw first (the limit may not exceed it); lowering: the limit first.
            let cur = cg.read_u64("memory", path, "memory.limit_in_bytes")?;
            if s == -1 || (cur as i128) < s as i128 {
                out.extend([swap(s), limit(m)]);
            } else {
                out.extend([limit(m), swap(s)]);
            }
        }
        (Some(m), None) => out.push(limit(m)),
        (None, Some(s)) => out.push(swap(s)),
        (None, None) => {}
    }
    if let Some(r) = l.memory_reservation {
        out.push(w(
            "memory",
            "memory.soft_limit_in_bytes",
            if r > 0 { r } else { -1 },
        ));
    }
    if let Some(s) = l.cpu_shares {
        out.push(w("cpu", "cpu.shares", s));
    }
    if let Some(p) = l.cpu_period {
        out.push(w("cpu", "cpu.cfs_period_us", p));
    }
    if let Some(q) = l.cpu_quota {
        out.push(w("cpu", "cpu.cfs_quota_us", if q > 0 { q } else { -1 }));
    }
    if let Some(m) = &l.cpuset_mems {
        out.push(w("cpuset", "cpuset.mems", m));
    }
    if let Some(c) = &l.cpuset_cpus {
        out.push(w("cpuset", "cpuset.cpus", c));
    }
    if let Some(p) = l.pids_limit {
        out.push(w("pids", "pids.max", pids_value(p)));
    }
    if let Some(bw) = l.blkio_weight {
        // BFQ's file when the kernel has no other.
        let bfq =
            !cg.has("blkio", path, "blkio.weight") && cg.has("blkio", path, "blkio.bfq.weight");
        let file = if bfq {
            "blkio.bfq.weight"
        } else {
            "blkio.weight"
        };
        out.push(w("blkio", file, bw));
    }
    Ok(out)
}

fn plan_v2(cg: &Cgroups, path: &str, l: &Limits) -> CgResult<Vec<Write>> {
    let mut out = Vec::new();
    if let Some(m) = l.memory {
        out.push(w("", "memory.max", unlimited_v2(m)));
    }
    if let Some(s) = l.memory_swap {
        // v2 limits swap alone: Docker's memory+swap minus the memory limit.
        let swap = match (s, l.memory) {
            (-1, _) => "max".to_string(),
            (s, Some(m)) if m > 0 => (s - m).max(0).to_string(),
            (s, _) => {
                let cur = cg.read_u64("", path, "memory.max")?;
                if cur == u64::MAX {
                    "max".to_string()
                } else {
                    (s - cur as i64).max(0).to_string()
                }
            }
        };
        if cg.has("", path, "memory.swap.max") {
            out.push(w("", "memory.swap.max", swap));
        }
    }
    if let Some(r) = l.memory_reservation {
        out.push(w("", "memory.low", if r > 0 { r } else { 0 }));
    }
    if let Some(s) = l.cpu_shares {
        out.push(w("", "cpu.weight", shares_to_weight(s)));
    }
    if l.cpu_quota.is_some() || l.cpu_period.is_some() {
        let cur = cg.read("", path, "cpu.max").unwrap_or_default();
        let mut it = cur.split_whitespace();
        let cur_quota = it.next().unwrap_or("max").to_string();
        let cur_period = it.next().unwrap_or("100000").to_string();
        let quota = match l.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_string(),
            None => cur_quota,
        };
        let period = l.cpu_period.map(|p| p.to_string()).unwrap_or(cur_period);
        out.push(w("", "cpu.max", format!("{quota} {period}")));
    }
    if let Some(m) = &l.cpuset_mems {
        out.push(w("", "cpuset.mems", m));
    }
    if let Some(c) = &l.cpuset_cpus {
        out.push(w("", "cpuset.cpus", c));
    }
    if let Some(p) = l.pids_limit {
        out.push(w("", "pids.max", pids_value(p)));
    }
    if let Some(bw) = l.blkio_weight {
        if cg.has("", path, "io.bfq.weight") {
            out.push(w("", "io.bfq.weight", bw));
        } else {
            // runc: 10..1000 → 1..10000.
            let weight = 1 + (u64::from(bw).clamp(10, 1000) - 10) * 9999 / 990;
            out.push(w("", "io.weight", format!("default {weight}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
