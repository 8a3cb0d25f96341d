//! Elastic memory: a container created with `-m L --label berth.memory.elastic=CEILING` is
//! entitled to `L` and may grow toward `CEILING` while the pool has headroom; when headroom
//! runs low the controller squeezes bursting containers back toward their entitlement and,
//! at the critical threshold, kills the one furthest over its entitlement, before the kernel
//! OOM killer would pick a victim by size (DESIGN.md "Resources", research/net-mem.md §5).
//!
//! [`config`] parses the daemon option and the label, [`decide`] is the policy (pure),
//! [`cgmem`] the cgroup files, [`controller`] the loop that samples, decides and acts, with
//! an event and an inspect-visible status per action.

pub mod cgmem;
pub mod config;
pub mod controller;
pub mod decide;

pub use config::{ElasticConfig, FileElastic, LABEL};

use crate::container::record::Record;
use crate::error::{ApiError, ApiResult};
use cgmem::CgroupMemory;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// The last thing the controller did to a container (persisted in its record, shown in
/// `docker inspect` as `BerthElasticMemory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticStatus {
    /// The dynamic limit after the action, bytes.
    pub limit: u64,
    /// `grow`, `squeeze` or `kill`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// When, ns since the epoch.
    pub time_ns: i64,
    /// Killed by the controller and not yet recorded as exited (the exit then reads as
    /// `OOMKilled`).
    #[serde(default)]
    pub kill_pending: bool,
}

/// The controller's shared state: its settings and the cgroups it drives.
pub struct Elastic {
    cfg: ElasticConfig,
    mem: CgroupMemory,
    pool: String,
    /// Containers adopted by this generation (adoption is idempotent; a new generation
    /// adopts again).
    adopted: Mutex<HashMap<String, i64>>,
}

/// The entitlement (`-m`) and ceiling of an elastic container; `None` otherwise.
pub fn elastic_of(rec: &Record) -> Option<(u64, u64)> {
    let mem = rec.host_config.memory.unwrap_or(0);
    config::ceiling(rec.config.labels.as_ref(), mem)
        .ok()
        .flatten()
        .map(|c| (mem as u64, c))
}

impl Elastic {
    /// Prepares the pool group `pool` (absolute cgroup path) and returns the controller
    /// state; the loop starts with [`controller::spawn`].
    pub fn open(cfg: ElasticConfig, mem: CgroupMemory, pool: &str) -> anyhow::Result<Self> {
        mem.prepare_pool(pool, cfg.pool_size).map_err(|e| {
            anyhow::anyhow!(
                "elastic memory: limit the pool {pool} to {} bytes: {e}",
                cfg.pool_size
            )
        })?;
        Ok(Elastic {
            cfg,
            mem,
            pool: pool.to_string(),
            adopted: Mutex::new(HashMap::new()),
        })
    }

    /// Refuses a start that would make the pool's entitlements exceed its size (the
    /// promise that a container within its entitlement is never the victim rests on it).
    pub fn admit(&self, rec: &Record, running: &[Record]) -> ApiResult<()> {
        let own = rec.host_config.memory.unwrap_or(0).max(0) as u64;
        let others: u64 = running
            .iter()
            .filter(|r| r.id != rec.id && r.state.status.is_live())
            .map(|r| r.host_config.memory.unwrap_or(0).max(0) as u64)
            .sum();
        if own + others > self.cfg.pool_size {
            return Err(ApiError::Conflict(format!(
                "cannot start container {}: memory entitlements would reach {} MiB, over the elastic memory pool of {} MiB ({} MiB entitled to running containers)",
                rec.short_id(),
                (own + others) >> 20,
                self.cfg.pool_size >> 20,
                others >> 20
            )));
        }
        Ok(())
    }

    /// An elastic container's entitlement and its ceiling as the controller enforces it
    /// (`max` is the pool's size).
    pub fn bounds(&self, rec: &Record) -> Option<(u64, u64)> {
        elastic_of(rec).map(|(l, c)| (l, c.min(self.cfg.pool_size).max(l)))
    }

    /// The spec's memory settings for an elastic container: its limit starts at its ceiling
    /// (it grows without waiting for anyone while the pool has room), its entitlement is its
    /// soft limit, and memory+swap keeps the swap allowance `-m` gave it.
    pub fn adjust_spec(&self, rec: &Record, spec: &mut oci_spec::runtime::Spec) {
        let Some((entitlement, ceiling)) = self.bounds(rec) else {
            return;
        };
        let Some(linux) = spec.linux_mut() else {
            return;
        };
        let mut res = linux.resources().clone().unwrap_or_default();
        let mut memory = res.memory().unwrap_or_default();
        memory.set_limit(Some(ceiling.min(i64::MAX as u64) as i64));
        if memory.reservation().is_none() {
            memory.set_reservation(Some(entitlement as i64));
        }
        if let Some(swap) = memory.swap() {
            let allowance = (swap as u64).saturating_sub(entitlement);
            memory.set_swap(Some(if swap < 0 {
                -1
            } else {
                ceiling.saturating_add(allowance).min(i64::MAX as u64) as i64
            }));
        }
        res.set_memory(Some(memory));
        linux.set_resources(Some(res));
    }

    /// `docker update` of a container while the controller runs: a new `-m` is a new
    /// entitlement, which must stay under the ceiling and within the pool; for an elastic
    /// container the limit in force is the controller's (it is only raised to a new
    /// entitlement above it, and memory+swap stays as the start set it).
    pub fn check_update(
        &self,
        rec: &Record,
        merged: &berth_api::models::HostConfig,
        running: &[Record],
        live: &mut crate::resources::Limits,
        path: &str,
    ) -> Result<(), String> {
        let new_mem = merged.memory.unwrap_or(0);
        if let Some(v) = rec.config.labels.as_ref().and_then(|l| l.get(LABEL)) {
            config::ceiling(rec.config.labels.as_ref(), new_mem)
                .map_err(|e| format!("{e} (label {LABEL}={v})"))?;
        }
        if rec.state.status.is_live() && new_mem != rec.host_config.memory.unwrap_or(0) {
            let mut probe = rec.clone();
            probe.host_config.memory = Some(new_mem);
            self.admit(&probe, running).map_err(|e| e.to_string())?;
        }
        if self.bounds(rec).is_some() && rec.state.status.is_live() {
            live.memory_swap = None;
            live.memory = match (live.memory, self.mem.sample(path)) {
                (Some(m), Ok(s)) if m > 0 && (m as u64) > s.limit => Some(m),
                _ => None,
            };
        }
        Ok(())
    }

    /// Takes a container that just started under control (idempotent; the loop adopts
    /// every elastic container it has not adopted yet anyway).
    pub fn adopt_started(&self, rec: &Record, path: &str) {
        let Some((_, ceiling)) = self.bounds(rec) else {
            return;
        };
        if let Err(e) = self.mem.adopt(path, ceiling) {
            tracing::warn!(id = %rec.id, error = %e, "elastic memory: adopt at start");
        }
    }

    /// Gives the pool and the elastic containers back to the kernel's OOM killer, with
    /// their limits at their ceilings: for a daemon that stops for good (no controller
    /// follows to un-pause a container waiting at its limit).
    pub fn relinquish(&self, elastic: &[(String, u64)]) {
        for (path, ceiling) in elastic {
            if let Err(e) = self.mem.set_limit(path, *ceiling, *ceiling) {
                tracing::warn!(path, error = %e, "elastic memory: restore the ceiling");
            }
        }
        if let Err(e) = self.mem.relinquish_pool(&self.pool) {
            tracing::warn!(pool = %self.pool, error = %e, "elastic memory: re-enable the pool's OOM killer");
        }
    }
}

/// Checks the label at create: a valid ceiling over a limit, and a daemon that runs the
/// controller (the label would otherwise promise what nothing keeps).
pub fn validate_create(
    labels: Option<&HashMap<String, String>>,
    memory: i64,
    enabled: bool,
) -> ApiResult<()> {
    let ceiling = config::ceiling(labels, memory).map_err(ApiError::BadRequest)?;
    if ceiling.is_some() && !enabled {
        return Err(ApiError::BadRequest(format!(
            "{LABEL}: the daemon does not run the elastic-memory controller (start berthd with --elastic-memory)"
        )));
    }
    Ok(())
}

/// `BerthElasticMemory` of `docker inspect`: entitlement, ceiling, the limit in force and
/// the controller's last action; `null` for a container that is not elastic.
pub fn inspect_json(rec: &Record, live: Option<(&Elastic, String)>) -> Value {
    let Some((entitlement, ceiling)) = elastic_of(rec) else {
        return Value::Null;
    };
    let sample = live
        .filter(|_| rec.state.status.is_live())
        .and_then(|(e, path)| e.mem.sample(&path).ok());
    json!({
        "Entitlement": entitlement,
        "Ceiling": if ceiling == u64::MAX { json!("max") } else { json!(ceiling) },
        "Limit": sample.map(|s| s.limit),
        "Usage": sample.map(|s| s.usage),
        "LastAction": rec.elastic.as_ref().map(|s| json!({
            "Action": s.action, "Reason": s.reason, "Limit": s.limit,
            "Time": chrono::DateTime::from_timestamp_nanos(s.time_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        })),
    })
}
