//! Optional receive tuning of a VF: `rps_cpus` (Receive Packet Steering: which CPUs run the
//! protocol stack for the VF's receive queues) and `irq_cpus` (which CPUs take the VF's
//! MSI/MSI-X interrupts).
//!
//! RPS files (`class/net/<if>/queues/rx-*/rps_cpus`) are netns-scoped in sysfs, so they are
//! written while the VF is still in the host namespace; the setting survives the move
//! (verified on 6.18 with a veth). IRQ affinity (`/proc/irq/<n>/smp_affinity_list`) is
//! global and can be written any time. Real hardware adds: managed IRQs that refuse the
//! write (EIO, skipped with a warning), irqbalance rewriting affinities unless it is told to
//! leave those CPUs alone, and multi-queue VFs with hardware RSS (where RPS matters less).

use super::sysfs::SysfsRoot;
use crate::error::{ApiError, ApiResult};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The kernel's hex bitmap format for `cpus`: 32-bit groups, most significant first, comma
/// separated (`3` for CPUs 0-1, `1,00000000` for CPU 32).
pub fn cpu_mask_hex(cpus: &[u32]) -> String {
    let top = cpus.iter().copied().max().unwrap_or(0) / 32;
    let mut groups = vec![0u32; top as usize + 1];
    for &c in cpus {
        groups[(c / 32) as usize] |= 1 << (c % 32);
    }
    let mut out = Vec::new();
    for (i, g) in groups.iter().rev().enumerate() {
        out.push(if i == 0 {
            format!("{g:x}")
        } else {
            format!("{g:08x}")
        });
    }
    out.join(",")
}

/// `0-1,4` style list of `cpus` (sorted, distinct).
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Writes the RPS mask of every receive queue of `ifname` (in the namespace `sys` shows);
/// returns the files written.
pub fn set_rps_cpus(sys: &SysfsRoot, ifname: &str, cpus: &[u32]) -> ApiResult<Vec<PathBuf>> {
    let queues = sys.netdev_dir(ifname).join("queues");
    let step = format!("set rps_cpus of {ifname}");
    let entries = fs::read_dir(&queues)
        .map_err(|e| ApiError::internal(&format!("{step}: list {}", queues.display()), e))?;
    let mask = cpu_mask_hex(cpus);
    let mut written = Vec::new();
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rx-"))
        .collect();
    names.sort();
    for n in names {
        let f = queues.join(n).join("rps_cpus");
        fs::write(&f, &mask)
            .map_err(|e| ApiError::internal(&format!("{step}: write {}", f.display()), e))?;
        written.push(f);
    }
    Ok(written)
}

/// Pins every MSI IRQ of VF `index` of `pf` to `cpus` by writing
/// `<proc_irq>/<irq>/smp_affinity_list`; returns the IRQs pinned. A managed IRQ (EIO) is
/// skipped with a warning: the kernel places those itself.
pub fn set_irq_cpus(
    sys: &SysfsRoot,
    proc_irq: &Path,
    pf: &str,
    index: u32,
    cpus: &[u32],
) -> ApiResult<Vec<u32>> {
    let list = cpu_list(cpus);
    let mut pinned = Vec::new();
    for irq in sys.msi_irqs(pf, index)? {
        let f = proc_irq.join(irq.to_string()).join("smp_affinity_list");
        match fs::write(&f, &list) {
            Ok(()) => pinned.push(irq),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                tracing::warn!(
                    irq,
                    pf,
                    vf = index,
                    "managed IRQ: affinity left to the kernel"
                );
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!(irq, pf, vf = index, "IRQ has no /proc/irq entry");
            }
            Err(e) => {
                return Err(ApiError::internal(
                    &format!("pin IRQ {irq} of VF {index} of {pf} to CPUs {list}"),
                    e,
                ))
            }
        }
    }
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_lists() {
        assert_eq!(cpu_mask_hex(&[0, 1]), "3");
        assert_eq!(cpu_mask_hex(&[4]), "10");
        assert_eq!(cpu_mask_hex(&[0, 32]), "1,00000001");
        assert_eq!(cpu_mask_hex(&[]), "0");
        assert_eq!(cpu_list(&[0, 1, 2, 4, 6, 7]), "0-2,4,6-7");
        assert_eq!(cpu_list(&[3]), "3");
    }

    #[test]
    fn rps_and_irq_files_are_written_in_the_tree() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("sys");
        super::super::sysfs::tests::fake_tree(&root, "pf0", &[("vf0", 11), ("vf1", 12)])?;
        let sys = SysfsRoot::new(&root);
        let q = root.join("class/net/vf1/queues");
        for d in ["rx-0", "rx-1", "tx-0"] {
            fs::create_dir_all(q.join(d))?;
        }
        fs::write(q.join("tx-0/xps_cpus"), "0")?;
        let written = set_rps_cpus(&sys, "vf1", &[0, 1])?;
        assert_eq!(written.len(), 2);
        assert_eq!(fs::read_to_string(q.join("rx-0/rps_cpus"))?, "3");
        assert_eq!(fs::read_to_string(q.join("rx-1/rps_cpus"))?, "3");
        assert!(!q.join("tx-0/rps_cpus").exists());
        assert!(set_rps_cpus(&sys, "nope", &[0]).is_err());

        let proc_irq = dir.path().join("irq");
        for irq in [42, 43] {
            fs::create_dir_all(proc_irq.join(irq.to_string()))?;
        }
        // VF 1 owns IRQs 42 and 43 in the fake tree.
        assert_eq!(
            set_irq_cpus(&sys, &proc_irq, "pf0", 1, &[2, 3])?,
            vec![42, 43]
        );
        assert_eq!(
            fs::read_to_string(proc_irq.join("42/smp_affinity_list"))?,
            "2-3"
        );
        // VF 0's IRQs (40, 41) have no /proc entry here: skipped, nothing pinned.
        assert!(set_irq_cpus(&sys, &proc_irq, "pf0", 0, &[1])?.is_empty());
        Ok(())
    }
}
