//! The `sriov` network driver's kernel side: each container gets a virtual function (VF) of
//! a physical NIC (the PF, `-o parent=`), configured on the PF (MAC, port VLAN, spoof check,
//! trust, TX rate), optionally tuned (RPS, IRQ affinity) and moved into the container's
//! namespace as `eth0`/`ethN`; on release it goes back home under its original name and
//! the PF settings are undone.
//!
//! - [`sysfs`]: VF discovery under a configurable sysfs root.
//! - [`registry`]: who holds which VF, in the store (no VF is ever given twice, across
//!   threads, restarts and live upgrades).
//! - [`pf`]: PF-side settings over netlink behind [`PfConfigurator`] (+ a recording fake).
//! - [`readback`]: the VF's settings before berth changed them (restored on release).
//! - [`attach`]: moving the VF netdev in and out of a namespace.
//! - [`tuning`]: `rps_cpus` and `irq_cpus`.
//! - [`driver`]: [`SriovDriver`], the operations the network manager calls.
//!
//! Without SR-IOV hardware (the test hosts have no `PCI_IOV`, no netdevsim) the tests use a
//! temporary sysfs tree whose `virtfnN/net/<name>` entries name real veth devices, the
//! recording PF configurator, and the real kernel for every netdev move. The netlink
//! encoding of VF settings is checked byte by byte and against the kernel's validation (a
//! veth "PF" answers a well-formed request with EOPNOTSUPP, a malformed one with ERANGE).
//! What only hardware shows is listed in each module's documentation.

pub mod attach;
pub mod driver;
pub mod pf;
pub mod readback;
pub mod registry;
pub mod sysfs;
pub mod tuning;

pub use driver::{ReconcileReport, SriovDriver, VfRequest};
pub use pf::{NetlinkPf, PfConfigurator, RecordingPf, VfSetting};
pub use registry::{LeaseState, Registry, VfLease};
pub use sysfs::SysfsRoot;
