//! CPUs for game servers: reserved CPUs, exclusive whole cores, and the shared rest.
//!
//! - `--reserved-cpus LIST` (e.g. the CPUs that serve NIC interrupts, DESIGN "Networking")
//!   are given to no container unless it names them with `--cpuset-cpus`.
//! - `--label berth.cpus.exclusive=N` gives a container N whole physical cores of its own,
//!   on one NUMA node when possible ([`alloc`] explains the choice), kept in the store
//!   ([`manager`]) from create to removal.
//! - Every other container without a cpuset of its own shares what is left: online minus
//!   reserved minus every exclusive core.
//!
//! [`cpulist`] reads and writes the kernel's CPU lists, [`topology`] reads cores and nodes
//! from sysfs under a configurable root, [`fake`] writes fake sysfs trees for tests.

pub mod alloc;
pub mod cpulist;
pub mod fake;
pub mod manager;
pub mod topology;

pub use cpulist::CpuSet;
pub use manager::{check_reserved, Allocation, CpuManager};
pub use topology::Topology;

use std::path::Path;

/// The label that asks for exclusive cores.
pub const LABEL_EXCLUSIVE: &str = "berth.cpus.exclusive";

/// Parses `--reserved-cpus` and checks it against the CPUs online under `sysfs_root`.
pub fn reserved_from_flag(text: &str, sysfs_root: &Path) -> Result<CpuSet, String> {
    let reserved = CpuSet::parse(text).map_err(|e| format!("invalid --reserved-cpus: {e}"))?;
    if reserved.is_empty() {
        return Ok(reserved);
    }
    let online = topology::read_online(sysfs_root)
        .map_err(|e| format!("check --reserved-cpus {reserved}: {e}"))?;
    check_reserved(&reserved, &online)?;
    Ok(reserved)
}

/// The number of cores a `berth.cpus.exclusive` value asks for.
pub fn parse_exclusive(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 && value.trim().bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!(
            "invalid {LABEL_EXCLUSIVE} value {value:?}: want a positive whole number of cores"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_values() {
        assert_eq!(parse_exclusive("2"), Ok(2));
        assert_eq!(parse_exclusive(" 1 "), Ok(1));
        for bad in ["0", "-1", "+1", "1.5", "two", "", "99999999999999999999999"] {
            let e = parse_exclusive(bad).expect_err(bad);
            assert!(e.contains("want a positive whole number of cores"), "{e}");
        }
    }

    #[test]
    fn reserved_flag_is_parsed_and_checked_against_sysfs() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        fake::write(t.path(), &fake::two_by_four_by_two())?;
        assert_eq!(
            reserved_from_flag("0,8", t.path()).map(|s| s.to_string()),
            Ok("0,8".to_string())
        );
        let e = reserved_from_flag("0-16", t.path()).expect_err("16 offline");
        assert!(e.contains("CPU 16 is not online (online: 0-15)"), "{e}");
        let e = reserved_from_flag("0-x", t.path()).expect_err("syntax");
        assert!(
            e.starts_with("invalid --reserved-cpus: invalid CPU list"),
            "{e}"
        );
        let e = reserved_from_flag("1", &t.path().join("none")).expect_err("no sysfs");
        assert!(e.contains("devices/system/cpu/online"), "{e}");
        assert!(reserved_from_flag("", &t.path().join("none"))
            .map_err(std::io::Error::other)?
            .is_empty());
        Ok(())
    }
}
