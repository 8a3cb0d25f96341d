//! The SR-IOV driver's operations for one container: allocate a free VF of a PF, configure
//! it on the PF, tune it, move it into the container; release it; and reconcile after a
//! crash. The network manager calls these; they keep no state of their own beyond the
//! store's [`Registry`] and the kernel.

use super::attach::{self, find_link, link_mac, MovedOut, VfNetdev};
use super::pf::{attach_settings, PfConfigurator, VfSetting};
use super::registry::{LeaseState, Registry, VfLease};
use super::sysfs::{self, SysfsRoot};
use super::tuning;
use crate::error::{ApiError, ApiResult};
use crate::network::options::SriovOptions;
use crate::store::Store;
use rtnetlink::Handle;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// What a container asks of its VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfRequest {
    /// The container.
    pub container: String,
    /// Its network namespace.
    pub netns: PathBuf,
    /// The VF's name inside (`eth0`, `ethN`).
    pub ifname: String,
    /// The container's MAC: set as the VF's admin MAC on the PF and on the VF netdev.
    pub mac: Option<[u8; 6]>,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Prefix length of `ip`.
    pub prefix_len: u8,
    /// Default gateway (`None`: no default route through this VF).
    pub gateway: Option<Ipv4Addr>,
    /// MTU (`None`: the driver's).
    pub mtu: Option<u32>,
}

/// What [`SriovDriver::reconcile`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// VFs given back (`<pf>/<index>` of a container that no longer exists, or whose
    /// release was interrupted).
    pub released: Vec<String>,
    /// VFs that could not be given back (they keep their lease; retried next time).
    pub failed: Vec<(String, String)>,
}

/// The SR-IOV driver.
pub struct SriovDriver<P> {
    sys: SysfsRoot,
    proc_irq: PathBuf,
    reg: Registry,
    pf: P,
    host: Handle,
    /// Serializes allocations in this process, so that two concurrent attaches of one
    /// container cannot take two VFs (the store's compare-and-swap already keeps two
    /// containers off one VF, also across processes).
    alloc: tokio::sync::Mutex<()>,
}

impl<P: PfConfigurator> SriovDriver<P> {
    /// A driver over the sysfs tree `sys`, IRQ directory `proc_irq` (`/proc/irq`), the
    /// store's `sriov_vfs` table and the PF configurator `pf`. Opens a netlink socket in
    /// the daemon's namespace (call inside a tokio runtime).
    pub fn new(sys: SysfsRoot, proc_irq: PathBuf, store: &Store, pf: P) -> ApiResult<Self> {
        let (conn, host, _) =
            rtnetlink::new_connection().map_err(|e| ApiError::internal("open netlink", e))?;
        tokio::spawn(conn);
        Ok(SriovDriver {
            sys,
            proc_irq,
            reg: Registry::open(store)?,
            pf,
            host,
            alloc: tokio::sync::Mutex::new(()),
        })
    }

    /// The allocation registry.
    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    /// The PF configurator.
    pub fn pf(&self) -> &P {
        &self.pf
    }

    /// VFs of `pf` nobody holds whose netdev is in the host namespace.
    pub fn free_vfs(&self, pf: &str) -> ApiResult<Vec<sysfs::VfEntry>> {
        let mut out = Vec::new();
        for vf in self.sys.vfs(pf)? {
            if self.reg.get(pf, vf.index)?.is_none() && sysfs::netdev_in_host(&vf) {
                out.push(vf);
            }
        }
        Ok(out)
    }

    /// Takes a free VF of `pf` for `req.container` (or returns the one it holds already).
    /// The lease is on disk before this returns; concurrent callers never get the same VF.
    pub async fn allocate(&self, pf: &str, req: &VfRequest) -> ApiResult<VfLease> {
        Ok(self.take(pf, req).await?.0)
    }

    /// [`SriovDriver::allocate`]; also says whether the lease is new.
    async fn take(&self, pf: &str, req: &VfRequest) -> ApiResult<(VfLease, bool)> {
        let _one_at_a_time = self.alloc.lock().await;
        if let Some(l) = self.reg.of_container(pf, &req.container)? {
            return Ok((l, false));
        }
        let total = self.sys.num_vfs(pf)?;
        for vf in self.free_vfs(pf)? {
            let Some(dev) = vf.netdev else { continue };
            let Some(ifindex) = sysfs::host_ifindex(&dev.name) else {
                continue;
            };
            let orig_mac = find_link(&self.host, Some(ifindex), Some(&dev.name))
                .await?
                .and_then(|l| link_mac(&l));
            let lease = VfLease {
                pf: pf.to_string(),
                index: vf.index,
                pci: vf.pci,
                host_ifname: dev.name,
                ifindex,
                container: req.container.clone(),
                netns: req.netns.clone(),
                ifname: req.ifname.clone(),
                state: LeaseState::Allocated,
                orig_mac,
                reset: Vec::new(),
            };
            if self.reg.try_take(&lease)? {
                return Ok((lease, true));
            }
        }
        Err(ApiError::Internal(format!(
            "no free VF on {pf}: all {total} virtual functions are in use"
        )))
    }

    /// Allocates a VF for the container, applies the network's PF-side settings and
    /// tuning, and moves it into the container's namespace, configured. Idempotent (a
    /// container that holds a VF keeps it; one whose namespace or interface name changed
    /// gets it moved over). When a first attach fails, everything done is undone and the
    /// VF is free again; a failed repeat leaves the held VF to the caller's release.
    pub async fn attach(&self, opts: &SriovOptions, req: &VfRequest) -> ApiResult<VfLease> {
        let (mut lease, fresh) = self.take(&opts.parent, req).await?;
        match self.configure(opts, req, &mut lease).await {
            Ok(()) => Ok(lease),
            Err(e) if !fresh => Err(e),
            Err(e) => {
                if let Err(undo) = self.release(&opts.parent, &req.container).await {
                    tracing::warn!(error = %undo, "undo a failed VF attach");
                }
                Err(e)
            }
        }
    }

    async fn configure(
        &self,
        opts: &SriovOptions,
        req: &VfRequest,
        lease: &mut VfLease,
    ) -> ApiResult<()> {
        if lease.netns != req.netns || lease.ifname != req.ifname {
            attach::move_out(
                &self.host,
                &lease.netns,
                &lease.ifname,
                lease.ifindex,
                &lease.host_ifname,
                None,
            )
            .await?;
            lease.netns = req.netns.clone();
            lease.ifname = req.ifname.clone();
            self.reg.update(lease)?;
        }
        let settings = attach_settings(opts, req.mac);
        // The undo list is on disk before anything is applied (a crash in between undoes
        // too much, which is harmless); a setting the PF refuses is dropped from it, so a
        // driver without, say, trust support does not block the release forever.
        // The undo of a setting restores what the PF reported before the first attach
        // (as sriov-cni does), or the driver default when the PF reports nothing.
        let before = lease.reset.clone();
        let orig = if before.is_empty() && !settings.is_empty() {
            match self.pf.current(&lease.pf, lease.index).await {
                Ok(o) => o.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(pf = %lease.pf, vf = lease.index, error = %e, "read VF settings");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let with_undo = |applied: &[VfSetting]| {
            let mut reset = before.clone();
            for s in applied {
                let u = orig
                    .iter()
                    .find(|o| o.same_kind(s))
                    .copied()
                    .unwrap_or_else(|| s.undo());
                if !reset.iter().any(|r| r.same_kind(&u)) {
                    reset.push(u);
                }
            }
            reset
        };
        lease.reset = with_undo(&settings);
        self.reg.update(lease)?;
        for (i, s) in settings.iter().enumerate() {
            if let Err(e) = self.pf.apply(&lease.pf, lease.index, *s).await {
                lease.reset = with_undo(&settings[..i]);
                self.reg.update(lease)?;
                return Err(e);
            }
        }
        let in_host = sysfs::host_ifindex(&lease.host_ifname) == Some(lease.ifindex);
        if let (Some(cpus), true) = (&opts.rps_cpus, in_host) {
            tuning::set_rps_cpus(&self.sys, &lease.host_ifname, cpus)?;
        }
        if let Some(cpus) = &opts.irq_cpus {
            tuning::set_irq_cpus(&self.sys, &self.proc_irq, &lease.pf, lease.index, cpus)?;
        }
        let netdev = VfNetdev {
            host_ifname: lease.host_ifname.clone(),
            ifindex: lease.ifindex,
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            mac: req.mac,
            mtu: req.mtu,
            ip: req.ip,
            prefix_len: req.prefix_len,
            gateway: req.gateway,
        };
        attach::move_in(&self.host, &netdev).await?;
        lease.state = LeaseState::Attached;
        self.reg.update(lease)
    }

    /// Gives back the VF `container` holds on `pf`: moves it to the host namespace under
    /// its original name and MAC, undoes the PF-side settings, frees it. `false` when the
    /// container held none. A failure leaves the lease (state `releasing`) for a retry.
    pub async fn release(&self, pf: &str, container: &str) -> ApiResult<bool> {
        let Some(mut lease) = self.reg.of_container(pf, container)? else {
            return Ok(false);
        };
        if lease.state != LeaseState::Releasing {
            lease.state = LeaseState::Releasing;
            self.reg.update(&lease)?;
        }
        let moved = attach::move_out(
            &self.host,
            &lease.netns,
            &lease.ifname,
            lease.ifindex,
            &lease.host_ifname,
            lease.orig_mac,
        )
        .await?;
        if moved == MovedOut::Missing {
            // A real VF whose namespace died comes back to the host by itself, possibly
            // as `dev%d` and with a new ifindex after a driver reset: find it by PCI
            // address and give it its name back.
            // A VF that sysfs no longer lists (PF gone, fewer VFs enabled) is just gone.
            let vf = match self.sys.vf(pf, lease.index) {
                Ok(vf) => Some(vf),
                Err(e) => {
                    tracing::warn!(pf, vf = lease.index, error = %e, "VF no longer in sysfs");
                    None
                }
            };
            let home = vf.as_ref().filter(|vf| vf.pci == lease.pci).and_then(|vf| {
                let d = vf.netdev.as_ref()?;
                sysfs::host_ifindex(&d.name).filter(|i| d.ifindex.is_none_or(|want| want == *i))
            });
            match home {
                Some(ifindex) => {
                    attach::move_out(
                        &self.host,
                        &lease.netns,
                        &lease.ifname,
                        ifindex,
                        &lease.host_ifname,
                        lease.orig_mac,
                    )
                    .await?;
                }
                _ => tracing::warn!(
                    pf,
                    vf = lease.index,
                    pci = %lease.pci,
                    "VF netdev not found in the host or the container; freeing its lease"
                ),
            }
        }
        for s in &lease.reset {
            match self.pf.apply(pf, lease.index, *s).await {
                Ok(()) => {}
                // The PF itself is gone: nothing left to reset.
                Err(ApiError::NotFound(m)) => {
                    tracing::warn!(pf, vf = lease.index, "{m}: PF settings not reset");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.reg.remove(pf, lease.index)?;
        Ok(true)
    }

    /// After a crash: gives back every VF whose container `is_live` says is gone, and
    /// finishes interrupted releases. A VF still inside a surviving namespace of a dead
    /// container is moved home. Leases of live containers are left for their attach.
    pub async fn reconcile(&self, is_live: impl Fn(&str) -> bool) -> ApiResult<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for lease in self.reg.all()? {
            if is_live(&lease.container) && lease.state != LeaseState::Releasing {
                continue;
            }
            let key = super::registry::lease_key(&lease.pf, lease.index);
            match self.release(&lease.pf, &lease.container).await {
                Ok(_) => report.released.push(key),
                Err(e) => {
                    tracing::warn!(vf = %key, error = %e, "reconcile: release VF");
                    report.failed.push((key, e.to_string()));
                }
            }
        }
        Ok(report)
    }
}
