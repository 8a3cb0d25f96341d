//! The VF allocation registry: table `sriov_vfs` of the store, key `<pf>/<vf index>`, value
//! the [`VfLease`] of the container holding that VF.
//!
//! A lease is taken with the store's compare-and-swap (`put_new`), so two allocations
//! racing for the same VF (threads of one daemon, or a daemon and its successor during a
//! live upgrade) cannot both win, and the lease is on disk before the VF is touched: after
//! a crash, the VF's owner is always known.

use super::pf::VfSetting;
use crate::error::{ApiError, ApiResult};
use crate::store::{Store, Table};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The store table of VF leases.
pub const TABLE: &str = "sriov_vfs";

/// Where an allocated VF is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Taken; the VF may still be in the host namespace (a crash here leaves it there).
    Allocated,
    /// Moved into the container's namespace and configured.
    Attached,
    /// Being given back; the VF may be in either namespace.
    Releasing,
}

/// One container's claim on one VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfLease {
    /// PF netdev name.
    pub pf: String,
    /// VF index on the PF.
    pub index: u32,
    /// PCI address of the VF (how it is found again whatever its name).
    pub pci: String,
    /// The VF netdev's name in the host namespace before berth moved it.
    pub host_ifname: String,
    /// Its ifindex then (kept across a netns move unless the target already uses it).
    pub ifindex: u32,
    /// The container holding it.
    pub container: String,
    /// The container's network namespace.
    pub netns: PathBuf,
    /// Its name inside the container (`eth0`).
    pub ifname: String,
    /// Progress of attach/release.
    pub state: LeaseState,
    /// The netdev's MAC in the host before berth changed it (restored on release).
    #[serde(default)]
    pub orig_mac: Option<[u8; 6]>,
    /// The PF-side settings that undo what attach applied (applied on release).
    #[serde(default)]
    pub reset: Vec<VfSetting>,
}

/// `<pf>/<index>`.
pub fn lease_key(pf: &str, index: u32) -> String {
    format!("{pf}/{index}")
}

/// The registry over the store.
#[derive(Clone)]
pub struct Registry {
    table: Table,
}

impl Registry {
    /// Opens the `sriov_vfs` table.
    pub fn open(store: &Store) -> ApiResult<Self> {
        Ok(Registry {
            table: store.table(TABLE)?,
        })
    }

    /// Takes the VF for `lease.container`; `false` when someone holds it already.
    pub fn try_take(&self, lease: &VfLease) -> ApiResult<bool> {
        self.table
            .put_new(&lease_key(&lease.pf, lease.index), lease)
    }

    /// Records a new state of a lease that this caller holds.
    pub fn update(&self, lease: &VfLease) -> ApiResult<()> {
        let key = lease_key(&lease.pf, lease.index);
        match self.table.get::<VfLease>(&key)? {
            Some(cur) if cur.container == lease.container => self.table.put(&key, lease),
            Some(cur) => Err(ApiError::Internal(format!(
                "VF {key} is held by container {}, not {}",
                cur.container, lease.container
            ))),
            None => Err(ApiError::Internal(format!(
                "VF {key} is not allocated to {}",
                lease.container
            ))),
        }
    }

    /// The lease of VF `index` of `pf`.
    pub fn get(&self, pf: &str, index: u32) -> ApiResult<Option<VfLease>> {
        self.table.get(&lease_key(pf, index))
    }

    /// Frees the VF.
    pub fn remove(&self, pf: &str, index: u32) -> ApiResult<()> {
        self.table.remove(&lease_key(pf, index))
    }

    /// Every lease.
    pub fn all(&self) -> ApiResult<Vec<VfLease>> {
        Ok(self
            .table
            .all::<VfLease>()?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The lease a container holds on `pf`, if any.
    pub fn of_container(&self, pf: &str, container: &str) -> ApiResult<Option<VfLease>> {
        Ok(self
            .all()?
            .into_iter()
            .find(|l| l.pf == pf && l.container == container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    pub(crate) fn lease(pf: &str, index: u32, container: &str) -> VfLease {
        VfLease {
            pf: pf.into(),
            index,
            pci: format!("0000:af:06.{index}"),
            host_ifname: format!("vf{index}"),
            ifindex: 100 + index,
            container: container.into(),
            netns: PathBuf::from(format!("/run/berth/netns/{container}")),
            ifname: "eth0".into(),
            state: LeaseState::Allocated,
            orig_mac: None,
            reset: Vec::new(),
        }
    }

    #[test]
    fn concurrent_takers_never_share_a_vf_and_leases_survive_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open(dir.path())?;
            let reg = Arc::new(Registry::open(&store)?);
            // 16 containers race for 8 VFs, each trying every VF in order.
            let threads: Vec<_> = (0..16)
                .map(|c| {
                    let reg = reg.clone();
                    std::thread::spawn(move || -> ApiResult<Option<u32>> {
                        for vf in 0..8 {
                            if reg.try_take(&lease("pf0", vf, &format!("c{c}")))? {
                                return Ok(Some(vf));
                            }
                        }
                        Ok(None)
                    })
                })
                .collect();
            let mut got = Vec::new();
            for t in threads {
                match t.join() {
                    Ok(r) => got.push(r?),
                    Err(_) => anyhow::bail!("taker panicked"),
                }
            }
            let won: Vec<u32> = got.iter().flatten().copied().collect();
            assert_eq!(won.len(), 8, "{got:?}");
            assert_eq!(won.iter().collect::<HashSet<_>>().len(), 8, "{got:?}");
            // Another container cannot update a lease it does not hold.
            let held = reg
                .get("pf0", 3)?
                .ok_or_else(|| anyhow::anyhow!("vf3 free"))?;
            let mut other = held.clone();
            other.container = "intruder".into();
            assert!(reg.update(&other).is_err());
            let mut next = held.clone();
            next.state = LeaseState::Attached;
            reg.update(&next)?;
        }
        let store = Store::open(dir.path())?;
        let reg = Registry::open(&store)?;
        assert_eq!(reg.all()?.len(), 8);
        assert_eq!(
            reg.get("pf0", 3)?.map(|l| l.state),
            Some(LeaseState::Attached)
        );
        let holder = reg.get("pf0", 5)?.map(|l| l.container).unwrap_or_default();
        assert_eq!(reg.of_container("pf0", &holder)?.map(|l| l.index), Some(5));
        assert!(!reg.try_take(&lease("pf0", 5, "late"))?);
        reg.remove("pf0", 5)?;
        assert!(reg.try_take(&lease("pf0", 5, "late"))?);
        Ok(())
    }
}
