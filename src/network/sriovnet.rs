//! The `sriov` driver of user networks on the [`NetworkManager`]: `docker network create
//! -d sriov -o parent=<PF> [-o vlan=…]` (no bridge, no rules), a VF per container endpoint
//! through [`SriovDriver`] (moved into the container's netns as `eth0`/`ethN` with its
//! address and route), given back before the netns goes (stop, rm, disconnect) and
//! reconciled after a crash.
//!
//! The sysfs root is configurable (`--sriov-sysfs-root`, default `/sys`) so that tests can
//! describe a PF whose VFs are veths. With any other root the PF is not real hardware
//! (a veth or no link at all answers EOPNOTSUPP or ENODEV to VF settings): the PF-side
//! settings (`vlan`, `spoofchk`, `trust`, rates) are then logged and skipped
//! ([`VfPf::Emulated`]), and IRQ affinities go to `<root>/proc-irq` instead of `/proc/irq`.

use super::endpoint::EpNet;
use super::ipam::{Lease, IN_NETNS};
use super::kernel::Kernel;
use super::manager::NetworkManager;
use super::options::SriovOptions;
use super::shaping::{vf_max_tx_rate_mbps, Rate};
use super::sriov::VfRequest;
use super::sriov::{NetlinkPf, PfConfigurator, SriovDriver, SysfsRoot, VfSetting};
use super::types::{Attachment, NetRequest};
use crate::error::{ApiError, ApiResult};
use crate::store::Store;
use std::path::Path;

/// The PF configurator of the daemon: netlink on real hardware, a no-op on a test root.
pub enum VfPf {
    /// PF settings go to the PF over netlink.
    Hardware(NetlinkPf),
    /// Test sysfs root: PF settings are logged and skipped (see the module doc).
    Emulated,
}

impl PfConfigurator for VfPf {
    async fn apply(&self, pf: &str, vf: u32, setting: VfSetting) -> ApiResult<()> {
        match self {
            VfPf::Hardware(p) => p.apply(pf, vf, setting).await,
            VfPf::Emulated => {
                tracing::info!(pf, vf, setting = %setting.describe(), "emulated PF: VF setting skipped");
                Ok(())
            }
        }
    }

    async fn current(&self, pf: &str, vf: u32) -> ApiResult<Option<Vec<VfSetting>>> {
        match self {
            VfPf::Hardware(p) => p.current(pf, vf).await,
            VfPf::Emulated => Ok(None),
        }
    }
}

/// The daemon's SR-IOV driver over the sysfs tree at `root`.
pub(super) fn open_driver(root: &Path, store: &Store) -> ApiResult<SriovDriver<VfPf>> {
    let real = root == Path::new("/sys");
    let (pf, irq) = if real {
        (VfPf::Hardware(NetlinkPf::open()?), "/proc/irq".into())
    } else {
        (VfPf::Emulated, root.join("proc-irq"))
    };
    SriovDriver::new(SysfsRoot::new(root), irq, store, pf)
}

impl<K: Kernel> NetworkManager<K> {
    /// The VF of a container on an sriov network (idempotent: a container that holds a VF
    /// keeps it).
    pub(super) async fn ensure_vf(
        &self,
        opts: &SriovOptions,
        ep: &EpNet<'_>,
        mut lease: Lease,
        mac: [u8; 6],
        path: &Path,
        req: &NetRequest,
    ) -> ApiResult<Attachment> {
        let vf = VfRequest {
            container: lease.container_id.clone(),
            netns: path.to_path_buf(),
            ifname: ep.ifname.clone(),
            mac: Some(mac),
            ip: lease.ip,
            prefix_len: lease.prefix_len,
            gateway: (!ep.extra && !ep.internal).then_some(ep.bridge.gateway),
            mtu: None,
        };
        self.sriov.attach(opts, &vf).await?;
        let mark = format!("{IN_NETNS}{}", ep.ifname);
        if lease.veth.as_deref() != Some(mark.as_str()) {
            lease.veth = Some(mark);
            ep.ipam.update(&lease)?;
        }
        Ok(self.endpoint_attachment(ep, &lease, path, req))
    }

    /// Gives back every VF the container holds (before its netns goes: a real VF in a
    /// dying namespace would come back to the host under its container name).
    pub(super) async fn release_vfs(&self, cid: &str) -> ApiResult<()> {
        let held: Vec<String> = self
            .sriov
            .registry()
            .all()?
            .into_iter()
            .filter(|l| l.container == cid)
            .map(|l| l.pf)
            .collect();
        for pf in held {
            self.sriov.release(&pf, cid).await?;
        }
        Ok(())
    }

    /// After a crash: VFs of containers that are gone, or whose release was cut short.
    pub(super) async fn reconcile_vfs(&self, live: &std::collections::HashSet<&str>) {
        match self.sriov.reconcile(|id| live.contains(id)).await {
            Ok(r) => {
                for vf in r.released {
                    tracing::info!(%vf, "released leftover VF");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reconcile VFs"),
        }
    }

    /// Egress shaping of a container on sriov networks (`berth.egress.rate`): the max TX
    /// rate of every VF it holds, set on the PF (`network::shaping::vf_max_tx_rate_mbps`)
    /// instead of a tbf qdisc; `None` puts back the network's own `max_tx_rate` (or none).
    /// The release restores the VF's rate as it was before the attach. Returns the number
    /// of VFs set.
    pub async fn set_vf_egress(&self, cid: &str, rate: Option<Rate>) -> ApiResult<usize> {
        let mut n = 0;
        for (_, spec) in self.user_records()? {
            let Some(o) = &spec.sriov else {
                continue;
            };
            let Some(mut vf) = self.sriov.registry().of_container(&o.parent, cid)? else {
                continue;
            };
            let max = match rate {
                Some(r) => vf_max_tx_rate_mbps(r).map_err(ApiError::BadRequest)?,
                None => o.max_tx_rate.unwrap_or(0),
            };
            let setting = VfSetting::Rate {
                min: o.min_tx_rate.unwrap_or(0),
                max,
            };
            if !vf.reset.iter().any(|r| r.same_kind(&setting)) {
                // On disk before the change, like the attach's own settings.
                vf.reset.push(setting.undo());
                self.sriov.registry().update(&vf)?;
            }
            self.sriov.pf().apply(&o.parent, vf.index, setting).await?;
            n += 1;
        }
        Ok(n)
    }
}
