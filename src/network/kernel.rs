//! The kernel operations the network module needs, behind a trait so that the manager's
//! logic (IPAM, idempotent ensure/release, reconcile) is unit-tested against a recording
//! fake; [`crate::network::NetlinkKernel`] is the real implementation.

use super::macvlan::MacvlanSpec;
use crate::error::ApiResult;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The bridge the default network lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Device name.
    pub name: String,
    /// The bridge's address (the containers' gateway).
    pub gateway: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    /// MTU of the bridge and of the veth pairs.
    pub mtu: u32,
}

/// One container's veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Host side name (`veth` + 7 hex), attached to `bridge`, `txqueuelen 0`, up.
    pub host: String,
    /// Bridge to attach the host side to.
    pub bridge: String,
    /// Network namespace the container side goes into.
    pub netns: PathBuf,
    /// Name of the container side inside the netns (`eth0`).
    pub ifname: String,
    /// MAC address of the container side.
    pub mac: [u8; 6],
    /// Address of the container side.
    pub ip: Ipv4Addr,
    /// Prefix length of `ip`.
    pub prefix_len: u8,
    /// The network's gateway.
    pub gateway: Ipv4Addr,
    /// Whether the container's default route goes via `gateway` (only on the first network
    /// of a container; further networks add just their connected subnet).
    pub default_route: bool,
    /// MTU of both ends.
    pub mtu: u32,
}

/// Traffic counters of one interface (the fields `docker stats` reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// Kernel operations used by [`crate::network::NetworkManager`]. Every operation is
/// idempotent where the description says "ensure", and deleting something missing is not
/// an error.
pub trait Kernel: Send + Sync + 'static {
    /// Ensures the bridge exists, is up and has exactly `gateway/prefix_len` as IPv4 address.
    fn ensure_bridge(&self, spec: &BridgeSpec) -> impl Future<Output = ApiResult<()>> + Send;
    /// Sets `net.ipv4.ip_forward=1`.
    fn enable_ip_forward(&self) -> impl Future<Output = ApiResult<()>> + Send;
    /// Names of the links attached to `bridge` (empty when the bridge is missing).
    fn bridge_ports(&self, bridge: &str) -> impl Future<Output = ApiResult<Vec<String>>> + Send;
    /// Whether `veth` exists, is up and is attached to `bridge`.
    fn veth_attached(
        &self,
        veth: &str,
        bridge: &str,
    ) -> impl Future<Output = ApiResult<bool>> + Send;
    /// Creates the veth pair described by `spec` and configures the container side inside
    /// its netns (address, up, default route). Removes a stale `spec.ifname` there first.
    fn add_veth(&self, spec: &VethSpec) -> impl Future<Output = ApiResult<()>> + Send;
    /// Lets published ports reach a container on `bridge`: `route_localnet` on the bridge
    /// (localhost DNAT) and, for `veth`, the bridge port's `hairpin_mode` (the container
    /// reaching its own published port).
    fn enable_port_forwarding(
        &self,
        bridge: &str,
        veth: Option<&str>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Forgets the connection-tracking entries whose replies come from `ip` (an endpoint
    /// that went away): otherwise a UDP flow DNATed to a published port keeps going to the
    /// dead container instead of the port's next owner.
    fn flush_conntrack(&self, ip: Ipv4Addr) -> impl Future<Output = ApiResult<()>> + Send;
    /// Destinations of the host's IPv4 routes in the main table, without the default route
    /// (a new network's subnet must not overlap any of them).
    fn ipv4_routes(&self) -> impl Future<Output = ApiResult<Vec<ipnet::Ipv4Net>>> + Send;
    /// Whether a link of that name exists in the host namespace.
    fn link_exists(&self, name: &str) -> impl Future<Output = ApiResult<bool>> + Send;
    /// Deletes a link of the host namespace (its veth peer goes with it).
    fn delete_link(&self, name: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// Counters of every interface but `lo` inside a netns.
    fn interface_stats(
        &self,
        netns: &Path,
    ) -> impl Future<Output = ApiResult<Vec<(String, IfStats)>>> + Send;

    /// Creates the macvlan link described by `spec` directly inside its netns and configures
    /// it there (MAC, address, up, default route). Replaces a stale `spec.ifname` there. A
    /// missing parent fails with dockerd's message (a 500, as in dockerd).
    fn add_macvlan(&self, spec: &MacvlanSpec) -> impl Future<Output = ApiResult<()>> + Send;
    /// Deletes the link `ifname` inside the netns at `netns` (nothing to do when either is
    /// gone).
    fn delete_link_in(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;

    /// Prepares the directory holding netns files (a private bind mount of itself).
    fn prepare_netns_dir(&self, dir: &Path) -> impl Future<Output = ApiResult<()>> + Send;
    /// Whether `path` is a mounted network namespace.
    fn netns_exists(&self, path: &Path) -> impl Future<Output = bool> + Send;
    /// Creates a network namespace bound at `path` with `lo` up.
    fn create_netns(&self, path: &Path) -> impl Future<Output = ApiResult<()>> + Send;
    /// Unmounts and removes a netns file.
    fn remove_netns(&self, path: &Path) -> impl Future<Output = ApiResult<()>> + Send;
    /// File names in the netns directory.
    fn list_netns(&self, dir: &Path) -> impl Future<Output = ApiResult<Vec<String>>> + Send;

    /// Runs `nft -j list <what>`; `None` when the object does not exist.
    fn nft_list(&self, what: &str) -> impl Future<Output = ApiResult<Option<String>>> + Send;
    /// Applies an nft script as one transaction (`nft -f -`).
    fn nft_apply(&self, script: &str) -> impl Future<Output = ApiResult<()>> + Send;
}
