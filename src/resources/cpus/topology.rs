//! The host's CPU topology from sysfs: which CPUs are online, which of them are hardware
//! threads of one physical core, and which NUMA node each belongs to.
//!
//! Read under a configurable root (`/sys`, or a fake tree in tests):
//! `devices/system/cpu/online`, `devices/system/cpu/cpuN/topology/{core_id,
//! physical_package_id,thread_siblings_list}` and `devices/system/node/nodeN/cpulist`.
//! A kernel without `topology/` for a CPU (some virtual machines) makes that CPU a core of
//! its own; a kernel without `devices/system/node` (no NUMA) puts every CPU on node 0.

use super::cpulist::{CpuSet, ListError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A topology file that could not be read or holds what the kernel never writes.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// Reading a file failed.
    #[error("read CPU topology {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds something else than its kernel format.
    #[error("parse CPU topology {path}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One physical core: all its online hardware threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// `physical_package_id` (socket).
    pub package: u32,
    /// `core_id` (unique within its package only).
    pub core_id: u32,
    /// NUMA node.
    pub node: u32,
    /// Its online threads (`thread_siblings_list`).
    pub cpus: CpuSet,
}

/// The online CPUs grouped into cores and NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every online CPU.
    pub online: CpuSet,
    /// Physical cores, ordered by their lowest CPU.
    pub cores: Vec<Core>,
    /// Online CPUs of each NUMA node.
    pub nodes: BTreeMap<u32, CpuSet>,
    /// Whether the kernel reports NUMA nodes (`devices/system/node` exists): only then is a
    /// container's `cpuset.mems` set from the nodes of its cores.
    pub numa: bool,
}

fn read(path: &Path) -> Result<String, TopologyError> {
    std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_list(path: &Path) -> Result<CpuSet, TopologyError> {
    CpuSet::parse(&read(path)?).map_err(|e: ListError| TopologyError::Parse {
        path: path.to_path_buf(),
        why: e.why,
    })
}

fn read_u32(path: &Path) -> Result<u32, TopologyError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| TopologyError::Parse {
        path: path.to_path_buf(),
        why: format!("{:?} is not a number", text.trim()),
    })
}

/// `<root>/devices/system/cpu/online`.
pub fn online_path(sysfs_root: &Path) -> PathBuf {
    sysfs_root.join("devices/system/cpu/online")
}

/// The online CPUs under `sysfs_root`.
pub fn read_online(sysfs_root: &Path) -> Result<CpuSet, TopologyError> {
    read_list(&online_path(sysfs_root))
}

/// The `nodeN` entries of `devices/system/node`, or `None` without NUMA support.
fn read_nodes(sysfs_root: &Path) -> Result<Option<BTreeMap<u32, CpuSet>>, TopologyError> {
    let dir = sysfs_root.join("devices/system/node");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TopologyError::Read { path: dir, source }),
    };
    let mut nodes = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Read {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        nodes.insert(n, read_list(&entry.path().join("cpulist"))?);
    }
    Ok(Some(nodes))
}

impl Topology {
    /// Reads the topology under `sysfs_root`.
    pub fn read(sysfs_root: &Path) -> Result<Topology, TopologyError> {
        let online = read_online(sysfs_root)?;
        let cpu_dir = sysfs_root.join("devices/system/cpu");
        let nodes = read_nodes(sysfs_root)?;
        let numa = nodes.is_some();
        let nodes: BTreeMap<u32, CpuSet> = match nodes {
            Some(n) => n
                .into_iter()
                .map(|(id, cpus)| (id, cpus.intersection(&online)))
                .collect(),
            None => BTreeMap::from([(0, online.clone())]),
        };
        let node_of = |cpu: u32| {
            nodes
                .iter()
                .find(|(_, cpus)| cpus.contains(cpu))
                .map(|(n, _)| *n)
        };
        let mut cores: Vec<Core> = Vec::new();
        for cpu in online.iter() {
            if cores.iter().any(|c| c.cpus.contains(cpu)) {
                continue;
            }
            let topo = cpu_dir.join(format!("cpu{cpu}/topology"));
            let node = node_of(cpu).ok_or_else(|| TopologyError::Parse {
                path: sysfs_root.join("devices/system/node"),
                why: format!("online CPU {cpu} is in no node's cpulist"),
            })?;
            let core = if topo.join("thread_siblings_list").exists() {
                let siblings_path = topo.join("thread_siblings_list");
                let siblings = read_list(&siblings_path)?.intersection(&online);
                if !siblings.contains(cpu) {
                    return Err(TopologyError::Parse {
                        path: siblings_path,
                        why: format!("CPU {cpu} is not among its own siblings"),
                    });
                }
                if let Some(other) = siblings.iter().find(|s| node_of(*s) != Some(node)) {
                    return Err(TopologyError::Parse {
                        path: siblings_path,
                        why: format!("sibling CPUs {cpu} and {other} are on different nodes"),
                    });
                }
                Core {
                    package: read_u32(&topo.join("physical_package_id"))?,
                    core_id: read_u32(&topo.join("core_id"))?,
                    node,
                    cpus: siblings,
                }
            } else {
                Core {
                    package: 0,
                    core_id: cpu,
                    node,
                    cpus: std::iter::once(cpu).collect(),
                }
            };
            cores.push(core);
        }
        Ok(Topology {
            online,
            cores,
            nodes,
            numa,
        })
    }

    /// The NUMA nodes of `cpus`.
    pub fn nodes_of(&self, cpus: &CpuSet) -> CpuSet {
        self.nodes
            .iter()
            .filter(|(_, n)| n.overlaps(cpus))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, FakeCpu};
    use super::*;

    fn list(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap_or_default()
    }

    #[test]
    fn two_nodes_of_four_cores_of_two_threads() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        fake::write(t.path(), &fake::two_by_four_by_two())?;
        let topo = Topology::read(t.path())?;
        assert_eq!(topo.online.to_string(), "0-15");
        assert!(topo.numa);
        assert_eq!(topo.cores.len(), 8);
        assert_eq!(topo.nodes[&0].to_string(), "0-3,8-11");
        assert_eq!(topo.nodes[&1].to_string(), "4-7,12-15");
        let first = &topo.cores[0];
        assert_eq!((first.package, first.core_id, first.node), (0, 0, 0));
        assert_eq!(first.cpus.to_string(), "0,8");
        let c5 = &topo.cores[5];
        assert_eq!((c5.package, c5.core_id, c5.node), (1, 1, 1));
        assert_eq!(c5.cpus.to_string(), "5,13");
        assert_eq!(topo.nodes_of(&list("1,5")).to_string(), "0-1");
        Ok(())
    }

    #[test]
    fn offline_threads_and_missing_topology_files() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        fake::write(t.path(), &fake::two_by_four_by_two())?;
        // CPU 9 (sibling of 1) offline: core 1 has one thread left.
        std::fs::write(t.path().join("devices/system/cpu/online"), "0-8,10-15\n")?;
        let topo = Topology::read(t.path())?;
        assert_eq!(topo.cores[1].cpus.to_string(), "1");
        assert_eq!(topo.nodes[&0].to_string(), "0-3,8,10-11");
        // No node directory and no topology files: one node, one core per CPU.
        let t = tempfile::tempdir()?;
        let cpu = t.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu)?;
        std::fs::write(cpu.join("online"), "0-2\n")?;
        let topo = Topology::read(t.path())?;
        assert!(!topo.numa);
        assert_eq!(topo.cores.len(), 3);
        assert_eq!(topo.nodes[&0].to_string(), "0-2");
        Ok(())
    }

    #[test]
    fn broken_files_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        let e = Topology::read(t.path()).expect_err("no sysfs");
        assert!(e.to_string().contains("devices/system/cpu/online"), "{e}");
        fake::write(
            t.path(),
            &[
                FakeCpu::new(0, 0, 0, 0),
                FakeCpu::new(1, 0, 1, 0),
                FakeCpu::new(2, 0, 2, 0),
            ],
        )?;
        let sib = t
            .path()
            .join("devices/system/cpu/cpu1/topology/thread_siblings_list");
        std::fs::write(&sib, "0,2\n")?;
        let e = Topology::read(t.path()).expect_err("not its own sibling");
        assert!(
            e.to_string().contains("cpu1/topology/thread_siblings_list"),
            "{e}"
        );
        assert!(e.to_string().contains("not among its own siblings"), "{e}");
        std::fs::write(&sib, "1-x\n")?;
        let e = Topology::read(t.path()).expect_err("bad list");
        assert!(e.to_string().contains("\"x\" is not a number"), "{e}");
        std::fs::write(&sib, "1\n")?;
        std::fs::write(
            t.path().join("devices/system/cpu/cpu1/topology/core_id"),
            "one\n",
        )?;
        let e = Topology::read(t.path()).expect_err("bad core id");
        assert!(e.to_string().contains("core_id"), "{e}");
        std::fs::write(
            t.path().join("devices/system/cpu/cpu1/topology/core_id"),
            "1\n",
        )?;
        std::fs::write(t.path().join("devices/system/node/node0/cpulist"), "0-1\n")?;
        let e = Topology::read(t.path()).expect_err("CPU 2 in no node");
        assert!(e.to_string().contains("online CPU 2 is in no node"), "{e}");
        Ok(())
    }
}
