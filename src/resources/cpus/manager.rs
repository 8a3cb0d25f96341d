//! The daemon's CPU bookkeeping: the topology, the reserved CPUs and every container's
//! exclusive cores, persisted in the store table `cpus` (container id → [`Allocation`]) so
//! that they survive a daemon crash and a live upgrade. Writes go to the store first, then
//! to memory; a failed write changes nothing.

use super::alloc::{self, Pool};
use super::cpulist::CpuSet;
use super::topology::Topology;
use super::LABEL_EXCLUSIVE;
use crate::error::{ApiError, ApiResult};
use crate::store::{Store, Table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Name of the store table.
pub const TABLE: &str = "cpus";

/// A container's exclusive cores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Allocation {
    /// Every thread of its cores.
    pub cpus: CpuSet,
    /// NUMA nodes of those cores.
    pub nodes: CpuSet,
    /// How many cores.
    pub cores: usize,
}

/// Checks `--reserved-cpus` against the online CPUs: every reserved CPU must be online,
/// and at least one online CPU must stay for the containers.
pub fn check_reserved(reserved: &CpuSet, online: &CpuSet) -> Result<(), String> {
    let missing = reserved.difference(online);
    if !missing.is_empty() {
        return Err(format!(
            "invalid --reserved-cpus {reserved}: CPU {missing} is not online (online: {online})"
        ));
    }
    if !online.is_empty() && online.difference(reserved).is_empty() {
        return Err(format!(
            "invalid --reserved-cpus {reserved}: it reserves every online CPU ({online}), \
             containers need at least one"
        ));
    }
    Ok(())
}

/// Topology, reservation and exclusive allocations.
pub struct CpuManager {
    topo: Topology,
    reserved: CpuSet,
    table: Table,
    held: Mutex<BTreeMap<String, Allocation>>,
}

impl CpuManager {
    /// Loads the allocations from the store's `cpus` table.
    pub fn open(store: &Store, topo: Topology, reserved: CpuSet) -> ApiResult<Self> {
        check_reserved(&reserved, &topo.online).map_err(ApiError::Internal)?;
        let table = store.table(TABLE)?;
        let held: BTreeMap<String, Allocation> = table.all()?.into_iter().collect();
        for (id, a) in &held {
            if a.cpus.overlaps(&reserved) || !a.cpus.is_subset(&topo.online) {
                tracing::warn!(
                    %id,
                    cpus = %a.cpus,
                    reserved = %reserved,
                    online = %topo.online,
                    "a container keeps exclusive CPUs that are now reserved or offline"
                );
            }
        }
        Ok(CpuManager {
            topo,
            reserved,
            table,
            held: Mutex::new(held),
        })
    }

    fn held(&self) -> MutexGuard<'_, BTreeMap<String, Allocation>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host's topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// `--reserved-cpus`.
    pub fn reserved(&self) -> &CpuSet {
        &self.reserved
    }

    /// The exclusive cores of container `id`.
    pub fn get(&self, id: &str) -> Option<Allocation> {
        self.held().get(id).cloned()
    }

    /// Every allocation, by container id.
    pub fn all(&self) -> Vec<(String, Allocation)> {
        self.held()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The CPUs of containers without exclusive cores or a cpuset of their own: online,
    /// minus reserved, minus every exclusive core.
    pub fn shared(&self) -> CpuSet {
        let held = self.held();
        held.values()
            .fold(self.topo.online.difference(&self.reserved), |acc, a| {
                acc.difference(&a.cpus)
            })
    }

    /// The first container other than `except` whose exclusive cores overlap `cpus`, with
    /// its cores.
    pub fn holder(&self, cpus: &CpuSet, except: &str) -> Option<(String, CpuSet)> {
        self.held()
            .iter()
            .find(|(id, a)| id.as_str() != except && a.cpus.overlaps(cpus))
            .map(|(id, a)| (id.clone(), a.cpus.clone()))
    }

    /// Gives container `id` `n` whole free cores (see [`alloc`] for the choice), not
    /// taking CPUs in `pinned` (other containers' `--cpuset-cpus`). A container that
    /// already holds cores keeps them (idempotent).
    pub fn allocate(&self, id: &str, n: usize, pinned: &CpuSet) -> ApiResult<Allocation> {
        let mut held = self.held();
        if let Some(a) = held.get(id) {
            return Ok(a.clone());
        }
        let others = held
            .values()
            .fold(CpuSet::new(), |acc, a| acc.union(&a.cpus));
        let grant = alloc::allocate(
            Pool {
                topo: &self.topo,
                reserved: &self.reserved,
                held: &others,
                pinned,
            },
            n,
        )
        .map_err(|e| ApiError::BadRequest(format!("{LABEL_EXCLUSIVE}={n}: {e}")))?;
        let a = Allocation {
            cpus: grant.cpus,
            nodes: grant.nodes,
            cores: grant.cores,
        };
        self.table
            .put(id, &a)
            .map_err(|e| ApiError::Internal(format!("record the exclusive cores of {id}: {e}")))?;
        held.insert(id.to_string(), a.clone());
        Ok(a)
    }

    /// Returns the cores of container `id`; `None` if it held none.
    pub fn release(&self, id: &str) -> ApiResult<Option<Allocation>> {
        let mut held = self.held();
        if !held.contains_key(id) {
            return Ok(None);
        }
        self.table
            .remove(id)
            .map_err(|e| ApiError::Internal(format!("return the exclusive cores of {id}: {e}")))?;
        Ok(held.remove(id))
    }

    /// Returns the cores of every container `exists` does not know (a daemon that died
    /// between allocating and recording a new container); returns their ids.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) -> ApiResult<Vec<String>> {
        let gone: Vec<String> = self
            .held()
            .keys()
            .filter(|id| !exists(id))
            .cloned()
            .collect();
        for id in &gone {
            self.release(id)?;
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    fn list(s: &str) -> CpuSet {
        CpuSet::parse(s).expect("list")
    }

    fn numa_host(root: &std::path::Path) -> Topology {
        fake::write(root, &fake::two_by_four_by_two()).expect("fake tree");
        Topology::read(root).expect("read")
    }

    #[test]
    fn reservation_must_be_online_and_leave_a_cpu() {
        let online = list("0-3");
        assert!(check_reserved(&list("0,2"), &online).is_ok());
        assert!(check_reserved(&CpuSet::new(), &online).is_ok());
        let e = check_reserved(&list("2-5"), &online).expect_err("offline");
        assert_eq!(
            e,
            "invalid --reserved-cpus 2-5: CPU 4-5 is not online (online: 0-3)"
        );
        let e = check_reserved(&list("0-3"), &online).expect_err("all");
        assert!(e.contains("reserves every online CPU (0-3)"), "{e}");
    }

    #[test]
    fn allocations_persist_and_shared_set_follows() -> ApiResult<()> {
        let t = tempfile::tempdir().map_err(|e| ApiError::internal("tmp", e))?;
        let topo = numa_host(&t.path().join("sys"));
        let dir = t.path().join("store");
        {
            let store = Store::open(&dir)?;
            let m = CpuManager::open(&store, topo.clone(), list("0,8"))?;
            assert_eq!(m.shared().to_string(), "1-7,9-15");
            // Node 0 has three free cores (its first is reserved), node 1 four: best fit.
            let a = m.allocate("a", 2, &CpuSet::new())?;
            assert_eq!(a.cpus.to_string(), "2-3,10-11");
            assert_eq!((a.nodes.to_string(), a.cores), ("0".to_string(), 2));
            assert_eq!(m.allocate("a", 3, &CpuSet::new())?, a, "idempotent");
            // Node 0 has one core left; node 1 three (5 is in another container's cpuset).
            let b = m.allocate("b", 2, &list("5"))?;
            assert_eq!(b.cpus.to_string(), "6-7,14-15");
            assert_eq!(m.shared().to_string(), "1,4-5,9,12-13");
            assert_eq!(m.holder(&list("0-2"), "x").map(|h| h.0), Some("a".into()));
            assert_eq!(m.holder(&list("2"), "a"), None);
            let e = m.allocate("c", 4, &CpuSet::new()).expect_err("3 free");
            assert!(
                e.to_string()
                    .starts_with("berth.cpus.exclusive=4: not enough free CPU cores"),
                "{e}"
            );
            assert_eq!(e.status(), 400);
            assert!(m.get("c").is_none());
        }
        // A restarted daemon finds both; returning one frees its cores.
        let store = Store::open(&dir)?;
        let m = CpuManager::open(&store, topo.clone(), list("0,8"))?;
        assert_eq!(m.all().len(), 2);
        assert_eq!(m.shared().to_string(), "1,4-5,9,12-13");
        assert_eq!(m.release("a")?.map(|a| a.cores), Some(2));
        assert_eq!(m.release("a")?, None);
        assert_eq!(m.shared().to_string(), "1-5,9-13");
        // A container the records do not know loses its cores.
        assert_eq!(m.retain(|id| id != "b")?, vec!["b".to_string()]);
        assert_eq!(m.shared().to_string(), "1-7,9-15");
        drop(m);
        let m = CpuManager::open(&store, topo, list("0,8"))?;
        assert!(m.all().is_empty());
        Ok(())
    }

    #[test]
    fn a_released_store_refuses_an_allocation_and_keeps_memory_unchanged() -> ApiResult<()> {
        let t = tempfile::tempdir().map_err(|e| ApiError::internal("tmp", e))?;
        let topo = numa_host(&t.path().join("sys"));
        let store = Store::open(&t.path().join("store"))?;
        let m = CpuManager::open(&store, topo, CpuSet::new())?;
        store.release()?;
        let e = m.allocate("a", 1, &CpuSet::new()).expect_err("released");
        assert!(
            e.to_string().contains("record the exclusive cores of a"),
            "{e}"
        );
        assert!(m.all().is_empty());
        assert_eq!(m.shared().to_string(), "0-15");
        Ok(())
    }
}
