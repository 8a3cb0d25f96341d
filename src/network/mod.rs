//! Container networking (DESIGN.md "Networking"): the default `bridge` network (a Linux
//! bridge, persisted IPAM, a veth per container, masquerade in berth's own nftables table),
//! user-defined bridge networks (`docker network create`, each with its own bridge, IPAM
//! and rules), the `host` and `none` networks, `container:<id>` sharing, the `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf` files dockerd writes for a container, published
//! ports ([`ports`]) and per-container egress shaping ([`shaping`]).
//!
//! [`NetworkManager`] is the entry point; the daemon holds one behind an `Arc`. Kernel work
//! goes through the [`Kernel`] trait ([`NetlinkKernel`] in production, a recording fake in
//! unit tests). [`macvlan`] and [`sriov`] hold the kernel side of those two drivers and
//! [`options`] their `-o` options.

mod connect;
mod endpoint;
mod etc;
mod firewall;
mod hosts;
mod ipam;
mod kernel;
pub mod macvlan;
mod manager;
mod netlink;
mod netns;
mod netobj;
pub mod options;
pub mod ports;
mod publish;
mod resource;
pub mod shaping;
pub mod sriov;
mod sriovnet;
mod types;
mod usernet;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_drivers;
#[cfg(test)]
mod tests_user;

pub use etc::{write_etc_files, EtcFiles};
pub use ipam::Lease;
pub use kernel::{BridgeSpec, IfStats, Kernel, VethSpec};
pub use manager::NetworkManager;
pub use netlink::NetlinkKernel;
pub use resource::{EndpointResource, IpamConfig, IpamInfo, NetworkResource};
pub use types::{netns_path, Attachment, NetConfig, NetMode, NetRequest, Subnet};
