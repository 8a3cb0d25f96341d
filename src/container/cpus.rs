//! Where a container's processes may run ([`crate::resources::cpus`]).
//!
//! A container is one of three kinds:
//! - **exclusive**: `berth.cpus.exclusive=N` (its own label, or its image's when it names
//!   no cpuset itself). Whole cores are allocated at create, written into its
//!   `HostConfig.CpusetCpus` (and `CpusetMems`: the cores' NUMA nodes), and returned at
//!   removal or when the create fails.
//! - **own cpuset**: `--cpuset-cpus` names the CPUs; reserved CPUs may be named, another
//!   container's exclusive cores may not (400), and the allocator never hands out CPUs a
//!   container names.
//! - **shared**: everything else runs on online − reserved − all exclusive cores. The set
//!   goes into the spec at start, and is rewritten live in every running shared
//!   container's cgroup when exclusive cores are allocated (before they are handed over:
//!   at create) or returned. `HostConfig.CpusetCpus` stays empty, as the client set it.
//!
//! Allocations and the live rewrites they cause are serialised by one lock, which a
//! create that allocates or names CPUs holds until its record is stored.

use super::record::{Record, Status};
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::resources::cpus::{parse_exclusive, Allocation, CpuManager, CpuSet, LABEL_EXCLUSIVE};
use crate::resources::{limits, Cgroups, Limits};
use berth_api::models::HostConfig;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// The daemon's CPU placement state.
pub struct CpuPolicy {
    /// Topology, reservation and allocations.
    pub manager: CpuManager,
    /// Where running containers' cpusets are rewritten.
    pub cgroups: Cgroups,
    lock: Mutex<()>,
    /// The shared set each starting container's spec got (`None`: all online CPUs).
    spec_sets: Mutex<HashMap<String, Option<CpuSet>>>,
}

impl CpuPolicy {
    /// Placement over `manager`, rewriting cpusets under `cgroups`.
    pub fn new(manager: CpuManager, cgroups: Cgroups) -> Self {
        CpuPolicy {
            manager,
            cgroups,
            lock: Mutex::new(()),
            spec_sets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spec_sets(&self) -> MutexGuard<'_, HashMap<String, Option<CpuSet>>> {
        self.spec_sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared set as a spec carries it: `None` when it is every online CPU (the
    /// container then inherits its parent's cpuset).
    fn shared_for_spec(&self) -> Option<CpuSet> {
        let s = self.manager.shared();
        (s != self.manager.topology().online).then_some(s)
    }
}

/// What a new container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: it shares.
    Shared,
    /// `--cpuset-cpus`.
    Own(CpuSet),
    /// `berth.cpus.exclusive=N`.
    Exclusive(usize),
}

/// `Invalid value X for cpuset cpus` (dockerd's 400) for a list that does not parse.
pub fn parse_cpuset(list: &str) -> ApiResult<CpuSet> {
    CpuSet::parse(list)
        .map_err(|_| ApiError::BadRequest(format!("Invalid value {list} for cpuset cpus")))
}

/// Reads a new container's request from its labels (`labels`: merged with the image's;
/// `own`: the client's) and `--cpuset-cpus`. An image's label does not count against a
/// cpuset the client names: that container just gets its cpuset.
pub fn plan(
    labels: &HashMap<String, String>,
    own: &HashMap<String, String>,
    hc: &HostConfig,
) -> ApiResult<Plan> {
    let named = hc.cpuset_cpus.as_deref().filter(|c| !c.is_empty());
    match (named, labels.get(LABEL_EXCLUSIVE)) {
        (Some(_), Some(_)) if own.contains_key(LABEL_EXCLUSIVE) => {
            Err(ApiError::BadRequest(format!(
                "conflicting options: --label {LABEL_EXCLUSIVE} and --cpuset-cpus \
                 (the daemon chooses a container's exclusive cores)"
            )))
        }
        (Some(list), _) => Ok(Plan::Own(parse_cpuset(list)?)),
        (None, Some(n)) => Ok(Plan::Exclusive(
            parse_exclusive(n).map_err(ApiError::BadRequest)?,
        )),
        (None, None) => Ok(Plan::Shared),
    }
}

/// A container holding exclusive cores keeps exactly those: an update of its cpuset to
/// anything else is refused.
pub fn keeps_exclusive_cores(
    name: &str,
    held: Option<&Allocation>,
    wanted: &CpuSet,
) -> ApiResult<()> {
    match held {
        Some(a) if a.cpus != *wanted => Err(ApiError::BadRequest(format!(
            "cannot change the cpuset of container {name}: it holds the exclusive cores {} \
             ({LABEL_EXCLUSIVE}={}); re-create it to change them",
            a.cpus, a.cores
        ))),
        _ => Ok(()),
    }
}

/// The CPU part of a create in progress: holds the placement lock until the record is
/// stored, and returns an allocation unless [`CpuClaim::keep`] is called.
pub struct CpuClaim<'a> {
    containers: &'a Containers,
    allocated: Option<String>,
    _guard: Option<MutexGuard<'a, ()>>,
}

impl CpuClaim<'_> {
    /// The container was recorded: it keeps its cores.
    pub fn keep(mut self) {
        self.allocated = None;
    }
}

impl Drop for CpuClaim<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.allocated.take() {
            let c = self.containers;
            match c.cpus.manager.release(&id) {
                Ok(_) => {
                    if let Err(e) = c.apply_shared() {
                        tracing::warn!(%id, error = %e, "give cores back to shared containers");
                    }
                }
                Err(e) => tracing::warn!(%id, error = %e, "return the cores of a failed create"),
            }
        }
    }
}

impl Containers {
    fn is_shared(&self, rec: &Record) -> bool {
        rec.host_config
            .cpuset_cpus
            .as_deref()
            .is_none_or(str::is_empty)
            && self.cpus.manager.get(&rec.id).is_none()
    }

    /// CPUs named by the `--cpuset-cpus` of containers other than `id`.
    fn named_by_others(&self, id: &str) -> CpuSet {
        let mut out = CpuSet::new();
        for r in self.all() {
            let Some(list) = r.host_config.cpuset_cpus.as_deref() else {
                continue;
            };
            if r.id == id || list.is_empty() || self.cpus.manager.get(&r.id).is_some() {
                continue;
            }
            match CpuSet::parse(list) {
                Ok(s) => out = out.union(&s),
                Err(e) => tracing::warn!(id = %r.id, error = %e, "unreadable cpuset"),
            }
        }
        out
    }

    fn name_of(&self, id: &str) -> String {
        self.lookup(id)
            .map(|r| r.name)
            .unwrap_or_else(|_| id.to_string())
    }

    /// Refuses `cpus` (as the client wrote them: `list`) if they overlap another
    /// container's exclusive cores.
    fn check_overlap(&self, id: &str, list: &str, cpus: &CpuSet) -> ApiResult<()> {
        match self.cpus.manager.holder(cpus, id) {
            Some((holder, theirs)) => Err(ApiError::BadRequest(format!(
                "cpuset {list} overlaps the exclusive cores of container {} ({theirs})",
                self.name_of(&holder)
            ))),
            None => Ok(()),
        }
    }

    /// At create, after validation: checks a named cpuset or allocates exclusive cores
    /// (into `hc`) for the new container `id`, and shrinks the running shared containers.
    /// Drop the claim to undo, [`CpuClaim::keep`] it once the record is stored.
    pub(crate) fn claim_cpus(
        &self,
        id: &str,
        labels: &HashMap<String, String>,
        own: &HashMap<String, String>,
        hc: &mut HostConfig,
    ) -> ApiResult<CpuClaim<'_>> {
        let mut claim = CpuClaim {
            containers: self,
            allocated: None,
            _guard: None,
        };
        match plan(labels, own, hc)? {
            Plan::Shared => {}
            Plan::Own(cpus) => {
                claim._guard = Some(self.cpus.lock());
                self.check_overlap(id, hc.cpuset_cpus.as_deref().unwrap_or(""), &cpus)?;
            }
            Plan::Exclusive(n) => {
                claim._guard = Some(self.cpus.lock());
                let a = self
                    .cpus
                    .manager
                    .allocate(id, n, &self.named_by_others(id))?;
                claim.allocated = Some(id.to_string());
                hc.cpuset_cpus = Some(a.cpus.to_string());
                if self.cpus.manager.topology().numa
                    && hc.cpuset_mems.as_deref().is_none_or(str::is_empty)
                {
                    hc.cpuset_mems = Some(a.nodes.to_string());
                }
                // Shrink the shared containers before the cores are handed over.
                self.apply_shared()?;
                crate::worker::fault("cpus-allocated");
                tracing::info!(%id, cpus = %a.cpus, nodes = %a.nodes, "exclusive cores allocated");
            }
        }
        Ok(claim)
    }

    /// For `docker update --cpuset-cpus`: the new list must parse, must not overlap
    /// another container's exclusive cores, and a container holding exclusive cores keeps
    /// them (an update to the same list is accepted).
    pub fn check_cpuset_update(&self, id: &str, list: &str) -> ApiResult<()> {
        if list.is_empty() {
            return Ok(());
        }
        let cpus = parse_cpuset(list)?;
        let _g = self.cpus.lock();
        keeps_exclusive_cores(&self.name_of(id), self.cpus.manager.get(id).as_ref(), &cpus)?;
        self.check_overlap(id, list, &cpus)
    }

    /// The record a start builds its spec from: a shared container gets the shared set
    /// (unless that is every online CPU); an exclusive one its cores.
    pub(crate) fn spec_cpus<'r>(&self, rec: &'r Record) -> Cow<'r, Record> {
        if let Some(a) = self.cpus.manager.get(&rec.id) {
            self.cpus.spec_sets().remove(&rec.id);
            let cpus = a.cpus.to_string();
            if rec.host_config.cpuset_cpus.as_deref() == Some(cpus.as_str()) {
                return Cow::Borrowed(rec);
            }
            let mut r = rec.clone();
            r.host_config.cpuset_cpus = Some(cpus);
            return Cow::Owned(r);
        }
        if !self.is_shared(rec) {
            return Cow::Borrowed(rec);
        }
        let set = self.cpus.shared_for_spec();
        self.cpus.spec_sets().insert(rec.id.clone(), set.clone());
        match set {
            None => Cow::Borrowed(rec),
            Some(s) => {
                let mut r = rec.clone();
                r.host_config.cpuset_cpus = Some(s.to_string());
                Cow::Owned(r)
            }
        }
    }

    /// After a start is recorded: if exclusive cores were allocated or returned while the
    /// container started, its cgroup gets the current shared set.
    pub(crate) fn settle_cpus(&self, id: &str) {
        let Some(used) = self.cpus.spec_sets().remove(id) else {
            return;
        };
        let _g = self.cpus.lock();
        if self.cpus.shared_for_spec() == used {
            return;
        }
        if let Ok(rec) = self.lookup(id) {
            if self.is_shared(&rec) {
                let shared = self.cpus.manager.shared().to_string();
                if let Err(e) = self.write_cpuset(&rec, &shared) {
                    tracing::warn!(%id, error = %e, "update the CPUs of a started container");
                }
            }
        }
    }

    /// At removal (the record is gone): returns the container's cores, and the shared
    /// containers grow back onto them. A failure is logged; the next daemon start returns
    /// cores of containers that no longer exist.
    pub(crate) fn release_cpus(&self, id: &str) {
        self.cpus.spec_sets().remove(id);
        let _g = self.cpus.lock();
        match self.cpus.manager.release(id) {
            Ok(Some(a)) => {
                tracing::info!(%id, cpus = %a.cpus, "exclusive cores returned");
                if let Err(e) = self.apply_shared() {
                    tracing::warn!(%id, error = %e, "give cores back to shared containers");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%id, error = %e, "return exclusive cores"),
        }
    }

    /// At worker start: returns the cores of containers that were never recorded (a crash
    /// during a create) and, with `kernel` (after a crash), rewrites every running shared
    /// container's cpuset.
    pub(crate) fn reconcile_cpus(&self, kernel: bool) {
        let ids: HashSet<String> = self.all().into_iter().map(|r| r.id).collect();
        let _g = self.cpus.lock();
        match self.cpus.manager.retain(|id| ids.contains(id)) {
            Ok(gone) => {
                for id in gone {
                    tracing::info!(%id, "returned the cores of a container never recorded");
                }
            }
            Err(e) => tracing::warn!(error = %e, "return cores of unknown containers"),
        }
        if kernel {
            if let Err(e) = self.apply_shared() {
                tracing::warn!(error = %e, "reconcile the CPUs of shared containers");
            }
        }
    }

    /// Writes the shared set into every running shared container (placement lock held).
    fn apply_shared(&self) -> ApiResult<()> {
        let shared = self.cpus.manager.shared().to_string();
        let mut first = None;
        for rec in self.all() {
            let live = matches!(
                rec.state.status,
                Status::Running | Status::Paused | Status::Restarting
            );
            if live && self.is_shared(&rec) {
                if let Err(e) = self.write_cpuset(&rec, &shared) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes `cpuset.cpus` of a container's cgroup; a container whose group is gone (it
    /// exited) is skipped.
    fn write_cpuset(&self, rec: &Record, list: &str) -> ApiResult<()> {
        let cg = &self.cpus.cgroups;
        let path = self.paths.cgroup_path(&rec.id);
        let l = Limits {
            cpuset_cpus: Some(list.to_string()),
            ..Default::default()
        };
        match limits::apply(cg, &path, &l) {
            Ok(()) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT) && !cg.dir("cpuset", &path).exists() =>
            {
                Ok(())
            }
            Err(e) => Err(ApiError::Internal(format!(
                "update the CPUs of container {}: {e}",
                rec.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn hc(cpuset: &str) -> HostConfig {
        HostConfig {
            cpuset_cpus: Some(cpuset.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn plans_from_labels_and_cpuset() -> ApiResult<()> {
        let none = HashMap::new();
        let excl = labels(&[(LABEL_EXCLUSIVE, "2")]);
        assert_eq!(plan(&none, &none, &hc(""))?, Plan::Shared);
        assert_eq!(plan(&excl, &excl, &hc(""))?, Plan::Exclusive(2));
        assert_eq!(
            plan(&excl, &none, &hc(""))?,
            Plan::Exclusive(2),
            "image label"
        );
        assert_eq!(
            plan(&none, &none, &hc("0-1"))?,
            Plan::Own(CpuSet::parse("0-1").map_err(|e| ApiError::Internal(e.to_string()))?)
        );
        // The image asks for exclusive cores, the client names CPUs: the client wins.
        assert!(matches!(plan(&excl, &none, &hc("1"))?, Plan::Own(_)));
        let e = plan(&excl, &excl, &hc("1")).expect_err("both");
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .starts_with("conflicting options: --label berth.cpus.exclusive and --cpuset-cpus"),
            "{e}"
        );
        let e = plan(&none, &none, &hc("1-a")).expect_err("bad list");
        assert_eq!(e.to_string(), "Invalid value 1-a for cpuset cpus");
        for bad in ["0", "x", "-2", "1.5"] {
            let l = labels(&[(LABEL_EXCLUSIVE, bad)]);
            let e = plan(&l, &l, &hc("")).expect_err(bad);
            assert_eq!(e.status(), 400);
            assert!(
                e.to_string()
                    .contains("want a positive whole number of cores"),
                "{e}"
            );
        }
        Ok(())
    }

    #[test]
    fn an_exclusive_container_keeps_its_cores_on_update() -> ApiResult<()> {
        let set = |s: &str| CpuSet::parse(s).map_err(|e| ApiError::Internal(e.to_string()));
        let a = Allocation {
            cpus: set("2-3,10-11")?,
            nodes: set("0")?,
            cores: 2,
        };
        keeps_exclusive_cores("gs", Some(&a), &set("2-3,10-11")?)?;
        keeps_exclusive_cores("web", None, &set("0-3")?)?;
        let e = keeps_exclusive_cores("gs", Some(&a), &set("2-3")?).expect_err("half");
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.to_string(),
            "cannot change the cpuset of container gs: it holds the exclusive cores \
             2-3,10-11 (berth.cpus.exclusive=2); re-create it to change them"
        );
        Ok(())
    }
}
