//! Choosing the whole cores of an exclusive allocation (pure: no I/O, no state).
//!
//! A core is free when none of its threads is reserved (`--reserved-cpus`), held
//! exclusively by another container, or named by another container's `--cpuset-cpus`.
//! An allocation always takes every online thread of each core it takes, so a game server
//! never shares a core's execution units with a neighbour.
//!
//! **Node choice: best fit.** When one NUMA node has enough free cores, the allocation
//! comes from the node with the *fewest* free cores that still fits. This keeps the nodes
//! with the most free cores whole for later, bigger requests (first fit or "most free"
//! would fragment every node a little and soon force large servers to span nodes, paying
//! remote memory latency). Only when no node fits does an allocation span nodes: it takes
//! all free cores of the nodes with the most free cores (so it spans as few nodes as
//! possible) and the rest from the best-fitting remaining node.
//!
//! **Core choice: from the top.** Within a node, cores are taken from the highest-numbered
//! down, and ties between nodes go to the higher node id: CPU 0 and its neighbours, where
//! the kernel, interrupts and system services run unless told otherwise, stay with the
//! shared containers. The result is deterministic for a given state.

use super::cpulist::CpuSet;
use super::topology::{Core, Topology};
use std::collections::BTreeMap;
use thiserror::Error;

/// CPUs that other parties have, which a new allocation must not take.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    /// The host.
    pub topo: &'a Topology,
    /// `--reserved-cpus`.
    pub reserved: &'a CpuSet,
    /// Exclusive cores of other containers.
    pub held: &'a CpuSet,
    /// CPUs other containers name with `--cpuset-cpus`.
    pub pinned: &'a CpuSet,
}

/// The cores given to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// All threads of the cores.
    pub cpus: CpuSet,
    /// Their NUMA nodes.
    pub nodes: CpuSet,
    /// How many cores.
    pub cores: usize,
}

/// Why an allocation cannot be made; the message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    /// Zero cores asked for.
    #[error("the number of exclusive cores must be at least 1")]
    Zero,
    /// Fewer free cores than asked for.
    #[error(
        "not enough free CPU cores: {wanted} wanted, {free} of {total} free \
         ({reserved} reserved with --reserved-cpus, {held} held exclusively by other \
         containers, {pinned} in other containers' --cpuset-cpus)"
    )]
    NotEnough {
        /// Cores asked for.
        wanted: usize,
        /// Free cores.
        free: usize,
        /// Online cores.
        total: usize,
        /// Cores with a reserved thread.
        reserved: usize,
        /// Cores held by other containers.
        held: usize,
        /// Other cores named by other containers' cpusets.
        pinned: usize,
    },
    /// The allocation would leave the shared containers without a CPU.
    #[error(
        "it would leave no CPU for the containers without exclusive cores \
         (online: {online}, reserved: {reserved}, held exclusively: {held}, asked for: {asked})"
    )]
    NoSharedLeft {
        /// Online CPUs.
        online: String,
        /// Reserved CPUs.
        reserved: String,
        /// Held CPUs.
        held: String,
        /// The cores this allocation would take.
        asked: String,
    },
}

fn or_none(s: &CpuSet) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.to_string()
    }
}

/// Chooses `n` whole free cores (see the module documentation for the policy).
pub fn allocate(pool: Pool<'_>, n: usize) -> Result<Grant, AllocError> {
    if n == 0 {
        return Err(AllocError::Zero);
    }
    let topo = pool.topo;
    let (mut reserved, mut held, mut pinned) = (0, 0, 0);
    // Free cores per node, highest first.
    let mut free: BTreeMap<u32, Vec<&Core>> = BTreeMap::new();
    for core in topo.cores.iter().rev() {
        if core.cpus.overlaps(pool.reserved) {
            reserved += 1;
        } else if core.cpus.overlaps(pool.held) {
            held += 1;
        } else if core.cpus.overlaps(pool.pinned) {
            pinned += 1;
        } else {
            free.entry(core.node).or_default().push(core);
        }
    }
    let total_free: usize = free.values().map(Vec::len).sum();
    if total_free < n {
        return Err(AllocError::NotEnough {
            wanted: n,
            free: total_free,
            total: topo.cores.len(),
            reserved,
            held,
            pinned,
        });
    }
    let mut taken: Vec<&Core> = Vec::new();
    let mut left = n;
    while left > 0 {
        // Best fit among the nodes that can give the rest; else the biggest node whole.
        let fit = free
            .iter()
            .filter(|(_, cores)| cores.len() >= left)
            .min_by_key(|(id, cores)| (cores.len(), std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        let node = match fit {
            Some(id) => id,
            None => match free
                .iter()
                .max_by_key(|(id, cores)| (cores.len(), **id))
                .map(|(id, _)| *id)
            {
                Some(id) => id,
                None => break,
            },
        };
        let cores = free.remove(&node).unwrap_or_default();
        let k = left.min(cores.len());
        taken.extend(cores.into_iter().take(k));
        left -= k;
    }
    let cpus = taken
        .iter()
        .fold(CpuSet::new(), |acc, c| acc.union(&c.cpus));
    let shared = topo
        .online
        .difference(pool.reserved)
        .difference(pool.held)
        .difference(&cpus);
    if shared.is_empty() {
        return Err(AllocError::NoSharedLeft {
            online: or_none(&topo.online),
            reserved: or_none(pool.reserved),
            held: or_none(pool.held),
            asked: or_none(&cpus),
        });
    }
    Ok(Grant {
        nodes: topo.nodes_of(&cpus),
        cores: taken.len(),
        cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    fn topo(cpus: &[fake::FakeCpu]) -> Topology {
        let t = tempfile::tempdir().expect("tmp");
        fake::write(t.path(), cpus).expect("fake tree");
        Topology::read(t.path()).expect("read")
    }

    fn list(s: &str) -> CpuSet {
        CpuSet::parse(s).expect("list")
    }

    fn alloc(
        t: &Topology,
        reserved: &str,
        held: &str,
        pinned: &str,
        n: usize,
    ) -> Result<Grant, AllocError> {
        allocate(
            Pool {
                topo: t,
                reserved: &list(reserved),
                held: &list(held),
                pinned: &list(pinned),
            },
            n,
        )
    }

    #[test]
    fn whole_cores_from_one_node_from_the_top() -> Result<(), AllocError> {
        let t = topo(&fake::two_by_four_by_two());
        let g = alloc(&t, "", "", "", 1)?;
        assert_eq!(g.cpus.to_string(), "7,15", "the top core, both threads");
        assert_eq!(g.nodes.to_string(), "1");
        let g = alloc(&t, "", "", "", 3)?;
        assert_eq!(g.cpus.to_string(), "5-7,13-15");
        assert_eq!((g.cores, g.nodes.to_string()), (3, "1".to_string()));
        let g = alloc(&t, "", "", "", 4)?;
        assert_eq!(g.cpus.to_string(), "4-7,12-15", "a whole node");
        Ok(())
    }

    #[test]
    fn prefers_the_node_that_fits_best() -> Result<(), AllocError> {
        let t = topo(&fake::two_by_four_by_two());
        // Node 1 has one free core left, node 0 four: one core comes from node 1.
        let g = alloc(&t, "", "4-6,12-14", "", 1)?;
        assert_eq!(g.cpus.to_string(), "7,15");
        // Two cores do not fit node 1: node 0, not split across both.
        let g = alloc(&t, "", "4-6,12-14", "", 2)?;
        assert_eq!(g.cpus.to_string(), "2-3,10-11");
        assert_eq!(g.nodes.to_string(), "0");
        // Node 0 with 2 free (reserved 0 and 1's threads), node 1 with 3: 2 from node 0.
        let g = alloc(&t, "0,9", "", "4", 2)?;
        assert_eq!(g.cpus.to_string(), "2-3,10-11");
        Ok(())
    }

    #[test]
    fn spans_nodes_when_none_fits() -> Result<(), AllocError> {
        let t = topo(&fake::two_by_four_by_two());
        let g = alloc(&t, "", "", "", 6)?;
        assert_eq!(g.cores, 6);
        assert_eq!(g.cpus.len(), 12);
        assert_eq!(g.nodes.to_string(), "0-1");
        assert_eq!(
            g.cpus.to_string(),
            "2-7,10-15",
            "node 1 whole, two from node 0"
        );
        // Uneven: node 0 has 3 cores, node 1 one, node 2 two. Five cores: node 0 whole
        // (most free), then the best fit for two: node 2, leaving node 1 whole.
        let u = topo(&fake::uneven());
        let g = alloc(&u, "", "", "", 4)?;
        assert_eq!(
            g.nodes.to_string(),
            "0-1",
            "3 + 1: node 1 fits the rest exactly"
        );
        let g = alloc(&u, "", "", "", 5)?;
        assert_eq!(g.cpus.to_string(), "0-5,8-9");
        assert_eq!(g.nodes.to_string(), "0,2");
        Ok(())
    }

    #[test]
    fn uneven_topology_best_fit_and_whole_cores() -> Result<(), AllocError> {
        let u = topo(&fake::uneven());
        // One core: node 1 (one free core) fits best.
        assert_eq!(alloc(&u, "", "", "", 1)?.cpus.to_string(), "6-7");
        // Two: node 2 (two cores without SMT) fits best.
        assert_eq!(alloc(&u, "", "", "", 2)?.cpus.to_string(), "8-9");
        // Three: only node 0.
        assert_eq!(alloc(&u, "", "", "", 3)?.cpus.to_string(), "0-5");
        // A reserved thread takes its whole core out: node 0 has 2 free, node 2 two.
        let g = alloc(&u, "1", "8", "", 2)?;
        assert_eq!(
            g.cpus.to_string(),
            "2-5",
            "node 0 fits, node 2 has one left"
        );
        Ok(())
    }

    #[test]
    fn reserved_held_and_pinned_are_never_given() -> Result<(), AllocError> {
        let t = topo(&fake::two_by_four_by_two());
        let (reserved, held, pinned) = ("0,8", "7,15", "13");
        for n in 1..=5 {
            let g = alloc(&t, reserved, held, pinned, n)?;
            for taken in [reserved, held, pinned] {
                assert!(!g.cpus.overlaps(&list(taken)), "{n}: {} ∩ {taken}", g.cpus);
            }
            for core in &t.cores {
                let part = core.cpus.intersection(&g.cpus);
                assert!(part.is_empty() || part == core.cpus, "{n}: half a core");
            }
        }
        let e = alloc(&t, reserved, held, pinned, 6).expect_err("5 free");
        assert_eq!(
            e,
            AllocError::NotEnough {
                wanted: 6,
                free: 5,
                total: 8,
                reserved: 1,
                held: 1,
                pinned: 1
            }
        );
        assert!(e.to_string().contains("6 wanted, 5 of 8 free"), "{e}");
        assert_eq!(alloc(&t, "", "", "", 0), Err(AllocError::Zero));
        Ok(())
    }

    #[test]
    fn returned_cores_are_given_again() -> Result<(), AllocError> {
        let t = topo(&fake::two_by_four_by_two());
        let a = alloc(&t, "", "", "", 4)?;
        let b = alloc(&t, "", &a.cpus.to_string(), "", 3)?;
        assert!(!a.cpus.overlaps(&b.cpus));
        let held = a.cpus.union(&b.cpus);
        assert!(
            alloc(&t, "", &held.to_string(), "", 2).is_err(),
            "one core left"
        );
        // `a` returned: its node is free again and takes a 4-core request whole.
        let c = alloc(&t, "", &b.cpus.to_string(), "", 4)?;
        assert_eq!(c.cpus, a.cpus);
        Ok(())
    }

    #[test]
    fn never_leaves_the_shared_containers_without_a_cpu() -> Result<(), AllocError> {
        // Two single-thread cores, as on the test host.
        let two = topo(&[
            fake::FakeCpu::new(0, 0, 0, 0),
            fake::FakeCpu::new(1, 0, 1, 0),
        ]);
        assert_eq!(alloc(&two, "", "", "", 1)?.cpus.to_string(), "1");
        let e = alloc(&two, "", "1", "", 1).expect_err("nothing left");
        assert!(matches!(e, AllocError::NoSharedLeft { .. }), "{e}");
        assert!(
            e.to_string().contains("held exclusively: 1, asked for: 0"),
            "{e}"
        );
        let e = alloc(&two, "0", "", "", 1).expect_err("reserved 0, 1 would go");
        assert!(e.to_string().contains("no CPU for the containers"), "{e}");
        let e = alloc(&two, "", "", "", 2).expect_err("both cores");
        assert!(matches!(e, AllocError::NoSharedLeft { .. }), "{e}");
        Ok(())
    }
}
