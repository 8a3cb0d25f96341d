//! VF discovery through sysfs under a configurable root (`/sys` in production, a temporary
//! tree in tests):
//!
//! ```text
//! <root>/class/net/<pf>/device/sriov_numvfs      number of enabled VFs
//! <root>/class/net/<pf>/device/virtfn<N>         symlink to ../<VF PCI address>
//! <root>/class/net/<pf>/device/virtfn<N>/net/<ifname>/ifindex
//! <root>/class/net/<pf>/device/virtfn<N>/msi_irqs/<irq>
//! ```
//!
//! On real hardware `virtfnN/net/` is netns-scoped: it lists the VF netdev only while it is
//! in the host namespace (and is empty when the VF is bound to vfio-pci). A fake tree cannot
//! hide entries, so "in the host namespace" is confirmed by looking the name up in the
//! daemon's own namespace and comparing its ifindex with sysfs'.

use crate::error::{ApiError, ApiResult};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A sysfs tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    root: PathBuf,
}

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot::new("/sys")
    }
}

/// One VF of a PF as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfEntry {
    /// VF index on the PF (the `N` of `virtfnN`, the `vf` of `IFLA_VF_*`).
    pub index: u32,
    /// PCI address of the VF (`0000:af:06.2`): its identity across renames, netns moves
    /// and driver resets.
    pub pci: String,
    /// The VF netdev as sysfs lists it (`None`: no netdev visible from the host namespace,
    /// because it is in another namespace or bound to a userspace driver).
    pub netdev: Option<NetdevEntry>,
}

/// A netdev under `virtfnN/net/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevEntry {
    /// Interface name.
    pub name: String,
    /// Interface index (`net/<name>/ifindex`), when readable.
    pub ifindex: Option<u32>,
}

fn read_trim(path: &Path) -> ApiResult<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ApiError::internal(&format!("read {}", path.display()), e))
}

impl SysfsRoot {
    /// A sysfs tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SysfsRoot { root: root.into() }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/class/net/<pf>/device`.
    pub fn pf_device(&self, pf: &str) -> PathBuf {
        self.root.join("class/net").join(pf).join("device")
    }

    /// Number of enabled VFs of `pf` (`sriov_numvfs`); an error names the PF when it is no
    /// SR-IOV capable device.
    pub fn num_vfs(&self, pf: &str) -> ApiResult<u32> {
        let dev = self.pf_device(pf);
        if !self.root.join("class/net").join(pf).exists() {
            return Err(ApiError::BadRequest(format!(
                "-o parent interface was not found on the host: {pf}"
            )));
        }
        let path = dev.join("sriov_numvfs");
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                ApiError::Internal(format!("{}: not a number: {s:?}", path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ApiError::BadRequest(format!(
                "interface {pf} is not an SR-IOV physical function (no sriov_numvfs)"
            ))),
            Err(e) => Err(ApiError::internal(&format!("read {}", path.display()), e)),
        }
    }

    /// The PCI device directory of VF `index` (`virtfnN`).
    pub fn vf_dir(&self, pf: &str, index: u32) -> PathBuf {
        self.pf_device(pf).join(format!("virtfn{index}"))
    }

    /// The VF `index` of `pf`.
    pub fn vf(&self, pf: &str, index: u32) -> ApiResult<VfEntry> {
        let link = self.vf_dir(pf, index);
        let target = fs::read_link(&link)
            .map_err(|e| ApiError::internal(&format!("read link {}", link.display()), e))?;
        let pci = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ApiError::Internal(format!("{}: no PCI address in its target", link.display()))
            })?;
        let netdev = self.netdev_under(&link.join("net"))?;
        Ok(VfEntry { index, pci, netdev })
    }

    /// Every enabled VF of `pf`, by index.
    pub fn vfs(&self, pf: &str) -> ApiResult<Vec<VfEntry>> {
        let n = self.num_vfs(pf)?;
        (0..n).map(|i| self.vf(pf, i)).collect()
    }

    fn netdev_under(&self, net: &Path) -> ApiResult<Option<NetdevEntry>> {
        let entries = match fs::read_dir(net) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ApiError::internal(&format!("list {}", net.display()), e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // A VF has one netdev; take the first name if a driver ever shows more.
        let Some(name) = names.into_iter().next() else {
            return Ok(None);
        };
        let ifindex = read_trim(&net.join(&name).join("ifindex"))
            .ok()
            .and_then(|s| s.parse().ok());
        Ok(Some(NetdevEntry { name, ifindex }))
    }

    /// IRQ numbers of the VF's MSI/MSI-X vectors (`virtfnN/msi_irqs/*`), sorted.
    pub fn msi_irqs(&self, pf: &str, index: u32) -> ApiResult<Vec<u32>> {
        let dir = self.vf_dir(pf, index).join("msi_irqs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ApiError::internal(&format!("list {}", dir.display()), e)),
        };
        let mut irqs: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect();
        irqs.sort_unstable();
        Ok(irqs)
    }

    /// `<root>/class/net/<ifname>`: a netdev's own directory (its `queues/` live there).
    pub fn netdev_dir(&self, ifname: &str) -> PathBuf {
        self.root.join("class/net").join(ifname)
    }
}

/// The ifindex of `name` in the calling thread's network namespace (`None`: no such link).
pub fn host_ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Whether the VF's netdev is in the host (the daemon's) namespace: sysfs lists it and a
/// link of that name and ifindex exists here.
pub fn netdev_in_host(vf: &VfEntry) -> bool {
    match &vf.netdev {
        Some(n) => match (host_ifindex(&n.name), n.ifindex) {
            (Some(found), Some(want)) => found == want,
            (Some(_), None) => true,
            (None, _) => false,
        },
        None => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A PF `pf0` with `n` VFs whose netdevs are named `vfname(i)`.
    pub(crate) fn fake_tree(root: &Path, pf: &str, vfs: &[(&str, u32)]) -> std::io::Result<()> {
        let pci = root.join("bus/pci/devices");
        let pf_pci = pci.join("0000:af:00.1");
        fs::create_dir_all(&pf_pci)?;
        fs::create_dir_all(root.join("class/net").join(pf))?;
        symlink(&pf_pci, root.join("class/net").join(pf).join("device"))?;
        fs::write(pf_pci.join("sriov_numvfs"), format!("{}\n", vfs.len()))?;
        for (i, (name, ifindex)) in vfs.iter().enumerate() {
            let vf_pci = pci.join(format!("0000:af:06.{i}"));
            fs::create_dir_all(vf_pci.join("net").join(name))?;
            fs::write(
                vf_pci.join("net").join(name).join("ifindex"),
                format!("{ifindex}\n"),
            )?;
            fs::create_dir_all(vf_pci.join("msi_irqs"))?;
            for irq in [40 + 2 * i as u32, 41 + 2 * i as u32] {
                fs::write(vf_pci.join("msi_irqs").join(irq.to_string()), "msix\n")?;
            }
            symlink(
                format!("../0000:af:06.{i}"),
                pf_pci.join(format!("virtfn{i}")),
            )?;
        }
        Ok(())
    }

    #[test]
    fn discovers_vfs_pci_addresses_netdevs_and_irqs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fake_tree(dir.path(), "pf0", &[("vf0", 11), ("vf1", 12)])?;
        let sys = SysfsRoot::new(dir.path());
        assert_eq!(sys.num_vfs("pf0")?, 2);
        let vfs = sys.vfs("pf0")?;
        assert_eq!(vfs.len(), 2);
        assert_eq!(vfs[1].index, 1);
        assert_eq!(vfs[1].pci, "0000:af:06.1");
        assert_eq!(
            vfs[1].netdev,
            Some(NetdevEntry {
                name: "vf1".into(),
                ifindex: Some(12)
            })
        );
        assert_eq!(sys.msi_irqs("pf0", 1)?, vec![42, 43]);
        // A VF whose netdev left the host namespace: sysfs shows no entry.
        fs::remove_dir_all(dir.path().join("bus/pci/devices/0000:af:06.0/net/vf0"))?;
        assert_eq!(sys.vf("pf0", 0)?.netdev, None);
        assert!(!netdev_in_host(&sys.vf("pf0", 0)?));
        // "lo" with a wrong ifindex is not the VF's netdev.
        let lo = VfEntry {
            index: 0,
            pci: "x".into(),
            netdev: Some(NetdevEntry {
                name: "lo".into(),
                ifindex: Some(999_999),
            }),
        };
        assert!(!netdev_in_host(&lo));
        let e = sys.num_vfs("nope").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("-o parent interface was not found on the host: nope")
        );
        fs::create_dir_all(dir.path().join("class/net/eth9"))?;
        let e = sys.num_vfs("eth9").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not an SR-IOV physical function")));
        Ok(())
    }
}
