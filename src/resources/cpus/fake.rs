//! Fake sysfs CPU trees for tests (unit tests here, and daemon tests that start berthd with
//! `--sysfs-root`): the files [`super::topology`] reads, in the kernel's formats.

use super::cpulist::CpuSet;
use std::collections::BTreeMap;
use std::path::Path;

/// One online CPU of a fake tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeCpu {
    /// CPU number.
    pub cpu: u32,
    /// `physical_package_id`.
    pub package: u32,
    /// `core_id`; CPUs with the same package and core id are siblings.
    pub core_id: u32,
    /// NUMA node.
    pub node: u32,
}

impl FakeCpu {
    /// CPU `cpu` of core `core_id` in package `package`, on node `node`.
    pub fn new(cpu: u32, package: u32, core_id: u32, node: u32) -> Self {
        FakeCpu {
            cpu,
            package,
            core_id,
            node,
        }
    }
}

/// Writes `devices/system/cpu/{online,cpuN/topology/*}` and `devices/system/node/nodeN/cpulist`
/// under `root`.
pub fn write(root: &Path, cpus: &[FakeCpu]) -> std::io::Result<()> {
    let cpu_dir = root.join("devices/system/cpu");
    std::fs::create_dir_all(&cpu_dir)?;
    let online: CpuSet = cpus.iter().map(|c| c.cpu).collect();
    std::fs::write(cpu_dir.join("online"), format!("{online}\n"))?;
    let mut nodes: BTreeMap<u32, CpuSet> = BTreeMap::new();
    for c in cpus {
        let siblings: CpuSet = cpus
            .iter()
            .filter(|o| o.package == c.package && o.core_id == c.core_id)
            .map(|o| o.cpu)
            .collect();
        let topo = cpu_dir.join(format!("cpu{}/topology", c.cpu));
        std::fs::create_dir_all(&topo)?;
        std::fs::write(topo.join("core_id"), format!("{}\n", c.core_id))?;
        std::fs::write(topo.join("physical_package_id"), format!("{}\n", c.package))?;
        std::fs::write(topo.join("thread_siblings_list"), format!("{siblings}\n"))?;
        nodes.entry(c.node).or_default().insert(c.cpu);
    }
    for (n, list) in nodes {
        let d = root.join(format!("devices/system/node/node{n}"));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("cpulist"), format!("{list}\n"))?;
    }
    Ok(())
}

/// Two sockets (= NUMA nodes) of four cores of two threads, numbered as Intel hosts do:
/// core `c` of socket `s` has CPUs `4s+c` and `8+4s+c` (node 0: `0-3,8-11`, node 1:
/// `4-7,12-15`).
pub fn two_by_four_by_two() -> Vec<FakeCpu> {
    let mut out = Vec::new();
    for thread in 0..2 {
        for s in 0..2 {
            for c in 0..4 {
                out.push(FakeCpu::new(8 * thread + 4 * s + c, s, c, s));
            }
        }
    }
    out
}

/// An uneven host: node 0 has three cores of two adjacent threads (`0-5`), node 1 one such
/// core (`6-7`), node 2 two cores without SMT (`8`, `9`).
pub fn uneven() -> Vec<FakeCpu> {
    let mut out = Vec::new();
    for cpu in 0..8 {
        let node = if cpu < 6 { 0 } else { 1 };
        out.push(FakeCpu::new(cpu, node, cpu / 2, node));
    }
    out.push(FakeCpu::new(8, 2, 0, 2));
    out.push(FakeCpu::new(9, 2, 1, 2));
    out
}
