//! `POST /containers/{id}/update` (`docker update`), as dockerd 20.10 does it: the request
//! is verified like a create (400), merged into the stored HostConfig where it sets a value
//! (409 where it conflicts with what is stored), written live into the cgroup of a running
//! or paused container (500 naming the file that failed; what was written is put back), and
//! only then persisted, so `docker inspect`, a daemon restart, a live upgrade and the next
//! start all see the new values. A new restart policy decides the next exit (and a restart
//! still waiting in its back-off). The `update` event follows a successful update only
//! (dockerd also emits it when the live write fails, after restoring the HostConfig).
//!
//! [`Containers::update_container`] is the one entry point. Two components will join it:
//! the exclusive-CPU allocator vetoes cpuset changes in [`Containers::check_update`], and
//! the elastic-memory controller learns the new memory limits in
//! [`Containers::notify_update`].

use super::record::{Record, Status};
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::resources::{limits, CgroupError, Cgroups, Limits, Version};
use berth_api::models::{ContainerUpdateBody, HostConfig, RestartPolicy};

use super::spec::resources::CPU_PERIOD_US;

pub use super::update_verify::{parse_cpu_list, verify, HostLimits};

/// A parsed update body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateRequest {
    /// The body (Resources and RestartPolicy).
    pub body: ContainerUpdateBody,
    /// `KernelMemory` (API < 1.42 clients send it; the stubs do not carry it).
    pub kernel_memory: i64,
}

impl UpdateRequest {
    /// Parses the JSON body as dockerd's router does: an unknown restart policy is a 400
    /// naming it; below API 1.40 `PidsLimit` is ignored; a `PidsLimit` of 0 or less means
    /// unlimited, stored as 0.
    pub fn parse(bytes: &[u8], api_version: Option<&str>) -> ApiResult<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("invalid JSON: {e}"));
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
        if let Some(name) = v.pointer("/RestartPolicy/Name").and_then(|n| n.as_str()) {
            if name
                .parse::<berth_api::models::RestartPolicyNameEnum>()
                .is_err()
            {
                return Err(ApiError::BadRequest(format!(
                    "invalid restart policy '{name}'"
                )));
            }
        }
        let kernel_memory = v.get("KernelMemory").and_then(|k| k.as_i64()).unwrap_or(0);
        let mut body: ContainerUpdateBody = serde_json::from_value(v).map_err(invalid)?;
        if api_below(api_version, (1, 40)) {
            body.pids_limit = None;
        }
        if body.pids_limit.is_some_and(|p| p <= 0) {
            body.pids_limit = Some(0);
        }
        Ok(UpdateRequest {
            body,
            kernel_memory,
        })
    }
}

/// Whether the request's API version is below `min`.
fn api_below(version: Option<&str>, min: (u32, u32)) -> bool {
    let Some((a, b)) = version.and_then(|v| v.split_once('.')) else {
        return false;
    };
    match (a.parse::<u32>(), b.parse::<u32>()) {
        (Ok(a), Ok(b)) => (a, b) < min,
        _ => false,
    }
}

/// dockerd's `Cannot update container <id>: <reason>`.
fn cannot(id: &str, reason: impl std::fmt::Display) -> String {
    format!("Cannot update container {id}: {reason}")
}

/// The restart policy's name as written (`""` when none is given).
fn policy_name(p: Option<&RestartPolicy>) -> String {
    p.and_then(|p| p.name.as_ref())
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// The stored HostConfig with `MemorySwap` as dockerd stores it at create: twice the
/// memory limit when only the limit was given (unlimited, `-1`, without swap accounting).
fn normalized(hc: &HostConfig, swap_limit: bool) -> HostConfig {
    let mut hc = hc.clone();
    let mem = hc.memory.unwrap_or(0);
    if mem > 0 && hc.memory_swap.unwrap_or(0) == 0 {
        hc.memory_swap = Some(if swap_limit {
            mem.saturating_mul(2)
        } else {
            -1
        });
    }
    hc
}

/// dockerd's `container.UpdateContainer`: what `req` sets over `hc`. The error is the
/// conflict's message.
pub fn merge(
    hc: &HostConfig,
    req: &ContainerUpdateBody,
    swap_limit: bool,
) -> Result<HostConfig, String> {
    let mut out = normalized(hc, swap_limit);
    let had = out.clone();
    let set = |v: Option<i64>| v.filter(|v| *v != 0);
    let (nano, period, quota) = (
        req.nano_cpus.unwrap_or(0),
        req.cpu_period.unwrap_or(0),
        req.cpu_quota.unwrap_or(0),
    );
    let (had_nano, had_period, had_quota) = (
        had.nano_cpus.unwrap_or(0),
        had.cpu_period.unwrap_or(0),
        had.cpu_quota.unwrap_or(0),
    );
    let conflicts = [
        (
            nano > 0 && had_period > 0,
            "Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set",
        ),
        (
            nano > 0 && had_quota > 0,
            "Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set",
        ),
        (
            period > 0 && had_nano > 0,
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set",
        ),
        (
            quota > 0 && had_nano > 0,
            "Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set",
        ),
    ];
    if let Some((_, msg)) = conflicts.iter().find(|(c, _)| *c) {
        return Err((*msg).to_string());
    }
    if let Some(w) = req.blkio_weight.filter(|w| *w != 0) {
        out.blkio_weight = Some(w);
    }
    out.cpu_shares = set(req.cpu_shares).or(out.cpu_shares);
    out.nano_cpus = set(req.nano_cpus).or(out.nano_cpus);
    out.cpu_period = set(req.cpu_period).or(out.cpu_period);
    out.cpu_quota = set(req.cpu_quota).or(out.cpu_quota);
    if let Some(c) = req.cpuset_cpus.as_ref().filter(|c| !c.is_empty()) {
        out.cpuset_cpus = Some(c.clone());
    }
    if let Some(m) = req.cpuset_mems.as_ref().filter(|m| !m.is_empty()) {
        out.cpuset_mems = Some(m.clone());
    }
    if let Some(m) = set(req.memory) {
        // As dockerd (it compares with the stored swap even when that is 0 or -1).
        if m > had.memory_swap.unwrap_or(0) && req.memory_swap.unwrap_or(0) == 0 {
            return Err("Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time".into());
        }
        out.memory = Some(m);
    }
    out.memory_swap = set(req.memory_swap).or(out.memory_swap);
    out.memory_reservation = set(req.memory_reservation).or(out.memory_reservation);
    out.cpu_realtime_period = set(req.cpu_realtime_period).or(out.cpu_realtime_period);
    out.cpu_realtime_runtime = set(req.cpu_realtime_runtime).or(out.cpu_realtime_runtime);
    if req.pids_limit.is_some() {
        out.pids_limit = req.pids_limit;
    }
    let name = policy_name(req.restart_policy.as_ref());
    if !name.is_empty() {
        if had.auto_remove == Some(true) && name != "no" {
            return Err(
                "Restart policy cannot be updated because AutoRemove is enabled for the container"
                    .into(),
            );
        }
        out.restart_policy = Some(RestartPolicy {
            name: req.restart_policy.as_ref().and_then(|p| p.name),
            maximum_retry_count: Some(
                req.restart_policy
                    .as_ref()
                    .and_then(|p| p.maximum_retry_count)
                    .unwrap_or(0),
            ),
        });
    }
    Ok(out)
}

/// What a verified request writes into a live cgroup (dockerd's `toContainerdResources`
/// and runc's update: values left at 0 are not written).
pub fn live_limits(req: &ContainerUpdateBody) -> Limits {
    let set = |v: Option<i64>| v.filter(|v| *v != 0);
    let nano = req.nano_cpus.unwrap_or(0);
    let (cpu_period, cpu_quota) = if nano != 0 {
        (
            Some(CPU_PERIOD_US),
            Some(nano.saturating_mul(CPU_PERIOD_US as i64) / 1_000_000_000),
        )
    } else {
        (
            set(req.cpu_period).map(|p| p.max(0) as u64),
            set(req.cpu_quota),
        )
    };
    Limits {
        memory: set(req.memory),
        memory_reservation: set(req.memory_reservation),
        memory_swap: req.memory_swap.filter(|s| *s > 0 || *s == -1),
        cpu_shares: set(req.cpu_shares).map(|s| s.max(0) as u64),
        cpu_period,
        cpu_quota,
        cpuset_cpus: req.cpuset_cpus.clone().filter(|c| !c.is_empty()),
        cpuset_mems: req.cpuset_mems.clone().filter(|m| !m.is_empty()),
        pids_limit: req.pids_limit,
        blkio_weight: req.blkio_weight.filter(|w| *w != 0),
    }
}

/// A verified, merged update of one container: what the hooks see.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The container before the update.
    pub before: &'a Record,
    /// Its HostConfig after the update.
    pub host_config: &'a HostConfig,
    /// What is written into its cgroup now (empty when it does not run).
    pub live: &'a Limits,
}

/// The message of a failed live write: runc's for a memory limit under the usage (v1
/// refuses it with EBUSY), else the file, the value and the error.
fn write_error(cg: &Cgroups, cgroup: &str, e: &CgroupError) -> String {
    if let CgroupError::Write { path, value, .. } = e {
        let limit_file = path.ends_with("memory.limit_in_bytes");
        if limit_file && e.raw_os_error() == Some(libc::EBUSY) {
            let usage = cg.read_u64("memory", cgroup, "memory.usage_in_bytes");
            let peak = cg.read_u64("memory", cgroup, "memory.max_usage_in_bytes");
            if let (Ok(u), Ok(p)) = (usage, peak) {
                return format!(
                    "unable to set memory limit to {value} (current usage: {u}, peak usage: {p})"
                );
            }
        }
    }
    e.to_string()
}

/// runc's check of `cpu.shares` on v1: the kernel clamps the value into 2..262144, and a
/// clamped value is refused with the bound.
fn check_shares(cg: &Cgroups, cgroup: &str, live: &Limits) -> Result<(), String> {
    let Some(want) = live.cpu_shares.filter(|_| cg.version() == Version::V1) else {
        return Ok(());
    };
    let got = cg
        .read_u64("cpu", cgroup, "cpu.shares")
        .map_err(|e| e.to_string())?;
    match want.cmp(&got) {
        std::cmp::Ordering::Greater => Err(format!("the maximum allowed cpu-shares is {got}")),
        std::cmp::Ordering::Less => Err(format!("the minimum allowed cpu-shares is {got}")),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl Containers {
    /// `POST /containers/{id}/update`: returns the warnings for the response.
    pub async fn update_container(
        &self,
        name: &str,
        mut req: UpdateRequest,
    ) -> ApiResult<Vec<String>> {
        let id = self.lookup(name)?.id;
        let cg = Cgroups::detect();
        let host = HostLimits::from_host(super::spec::HostInfo::get(), &cg);
        let warnings = verify(&mut req, &host)?;
        let _g = self.lock(&id).await;
        let rec = self.lookup(&id)?;
        if matches!(rec.state.status, Status::Removing | Status::Dead) {
            return Err(ApiError::Internal(cannot(
                &id,
                "container is marked for removal and cannot be \"update\"",
            )));
        }
        let merged = merge(&rec.host_config, &req.body, host.swap_limit)
            .map_err(|m| ApiError::Conflict(cannot(&id, m)))?;
        // The result must still start: the create-time checks of the merged values.
        super::spec::resources::resources(&merged, super::spec::HostInfo::get())?;
        let mut live = if rec.state.status.is_live() {
            live_limits(&req.body)
        } else {
            Limits::default()
        };
        if let Some(e) = self.elastic.get() {
            let running = self.all();
            e.check_update(
                &rec,
                &merged,
                &running,
                &mut live,
                &self.paths.cgroup_path(&id),
            )
            .map_err(|m| ApiError::Conflict(cannot(&id, m)))?;
        }
        let change = Change {
            before: &rec,
            host_config: &merged,
            live: &live,
        };
        self.check_update(&change)?;
        let undo = if live.is_empty() {
            Vec::new()
        } else {
            self.write_live(&cg, &id, &live)?
        };
        let cgroup = self.paths.cgroup_path(&id);
        let saved = self.update(&id, |r| r.host_config = merged.clone());
        let rec = match saved {
            Ok(r) => r,
            Err(e) => {
                if let Err(u) = limits::execute(&cg, &cgroup, &undo) {
                    tracing::warn!(%id, error = %u, "putting back the cgroup limits");
                }
                return Err(ApiError::Internal(cannot(&id, e)));
            }
        };
        self.notify_update(&change);
        self.event(&rec, "update", &[]);
        Ok(warnings)
    }

    /// Writes `live` into the container's cgroup; returns the writes that undo it. On a
    /// failure what was written is put back; a container that stopped meanwhile (its group
    /// gone) takes the values at its next start.
    fn write_live(&self, cg: &Cgroups, id: &str, live: &Limits) -> ApiResult<Vec<limits::Write>> {
        let cgroup = self.paths.cgroup_path(id);
        let gone = |e: &CgroupError| {
            e.raw_os_error() == Some(libc::ENOENT)
                && self.lookup(id).is_ok_and(|r| !r.state.status.is_live())
        };
        let fail = |e: &CgroupError| ApiError::Internal(cannot(id, write_error(cg, &cgroup, e)));
        let plan = match limits::plan(cg, &cgroup, live) {
            Ok(p) => p,
            Err(e) if gone(&e) => return Ok(Vec::new()),
            Err(e) => return Err(fail(&e)),
        };
        let undo = match limits::snapshot(cg, &cgroup, &plan) {
            Ok(u) => u,
            Err(e) if gone(&e) => return Ok(Vec::new()),
            Err(e) => return Err(fail(&e)),
        };
        let put_back = || {
            if let Err(u) = limits::execute(cg, &cgroup, &undo) {
                tracing::warn!(%id, error = %u, "putting back the cgroup limits");
            }
        };
        if let Err(e) = limits::execute(cg, &cgroup, &plan) {
            if gone(&e) {
                return Ok(Vec::new());
            }
            put_back();
            return Err(fail(&e));
        }
        if let Err(msg) = check_shares(cg, &cgroup, live) {
            put_back();
            return Err(ApiError::Internal(cannot(id, msg)));
        }
        tracing::debug!(%id, writes = plan.len(), "cgroup limits updated");
        Ok(undo)
    }

    /// Vetoes before limits change: a cpuset may not take another container's exclusive
    /// cores, nor move an exclusive container off its own.
    fn check_update(&self, change: &Change<'_>) -> ApiResult<()> {
        let new = change.host_config.cpuset_cpus.as_deref().unwrap_or("");
        if new
            != change
                .before
                .host_config
                .cpuset_cpus
                .as_deref()
                .unwrap_or("")
        {
            self.check_cpuset_update(&change.before.id, new)?;
        }
        Ok(())
    }

    /// Where the elastic-memory controller will learn a container's new memory limits
    /// (`change.host_config`), after they are in force and persisted.
    fn notify_update(&self, _change: &Change<'_>) {}
}

#[cfg(test)]
#[path = "update_tests.rs"]
mod tests;
