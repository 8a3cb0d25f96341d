//! The value types of the network module: daemon configuration, the per-container request
//! and the attachment the daemon stores with a container.

use crate::error::{ApiError, ApiResult};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Daemon-level network configuration (`--bridge`, `--bip`, `--nft-table`, exec root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of the default bridge device (`berth0`).
    pub bridge: String,
    /// Gateway address and prefix of the default bridge (`172.17.0.1/16` when `None`).
    pub bip: Option<String>,
    /// Name of berth's own nftables table (family `inet`).
    pub nft_table: String,
    /// Runtime root; network namespaces live in `<exec_root>/netns/<container id>`.
    pub exec_root: PathBuf,
    /// Root of the sysfs tree the `sriov` driver reads VFs from (`/sys`; tests: a fake).
    pub sriov_sysfs_root: PathBuf,
}

impl NetConfig {
    /// The defaults: bridge `berth0`, 172.17.0.1/16, table `berth`.
    pub fn new(exec_root: PathBuf) -> Self {
        NetConfig {
            bridge: "berth0".into(),
            bip: None,
            nft_table: "berth".into(),
            exec_root,
            sriov_sysfs_root: "/sys".into(),
        }
    }

    /// Checks the names so that they are valid interface and nftables identifiers.
    pub(crate) fn validate(&self) -> ApiResult<()> {
        let b = &self.bridge;
        let ok_bridge = !b.is_empty()
            && b.len() <= 15
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok_bridge {
            return Err(ApiError::BadRequest(format!(
                "invalid bridge name {b:?}: use 1-15 characters of [A-Za-z0-9_.-]"
            )));
        }
        let t = &self.nft_table;
        let ok_table = t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && t.len() <= 64
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_table {
            return Err(ApiError::BadRequest(format!(
                "invalid nftables table name {t:?}: use a letter then [A-Za-z0-9_]"
            )));
        }
        Ok(())
    }
}

/// The default bridge's address plan: the gateway and the subnet it sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The bridge's own address, the containers' default gateway.
    pub gateway: Ipv4Addr,
    /// The network (`172.17.0.0/16`).
    pub net: Ipv4Net,
}

impl Subnet {
    /// Parses a `--bip` value such as `172.17.0.1/16`.
    pub fn parse_bip(bip: &str) -> ApiResult<Self> {
        let bad = |why: &str| ApiError::BadRequest(format!("invalid --bip {bip:?}: {why}"));
        let with_prefix: Ipv4Net = bip
            .parse()
            .map_err(|_| bad("want an IPv4 address with a prefix, e.g. 172.17.0.1/16"))?;
        if with_prefix.prefix_len() == 0 || with_prefix.prefix_len() > 30 {
            return Err(bad("the prefix must be between /1 and /30"));
        }
        let net = with_prefix.trunc();
        let gateway = with_prefix.addr();
        if gateway == net.network() || gateway == net.broadcast() {
            return Err(bad("the address must be a host address of the subnet"));
        }
        Ok(Subnet { gateway, net })
    }

    /// Whether `ip` can be given to a container (inside, not network/broadcast/gateway).
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip)
            && ip != self.net.network()
            && ip != self.net.broadcast()
            && ip != self.gateway
    }
}

/// How a container is networked (`HostConfig.NetworkMode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetMode {
    /// The default bridge network (`default`, `bridge` or empty).
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// A namespace with only `lo`.
    None,
    /// Another container's namespace. [`NetMode::parse`] yields the name or id given after
    /// `container:`; the daemon replaces it with that container's netns path (see
    /// [`crate::network::NetworkManager::netns_path`]) before calling `ensure`.
    Container(String),
    /// A user-defined network by name, id or unique id prefix (404 `network <x> not
    /// found` from [`crate::network::NetworkManager::ensure`] when there is none).
    User(String),
}

impl NetMode {
    /// Parses `HostConfig.NetworkMode`; any other name is a user-defined network.
    pub fn parse(mode: &str) -> ApiResult<NetMode> {
        match mode {
            "" | "default" | "bridge" => Ok(NetMode::Bridge),
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            _ => match mode.strip_prefix("container:") {
                Some("") => Err(ApiError::BadRequest(
                    "invalid network mode: container: needs a container name or id".into(),
                )),
                Some(other) => Ok(NetMode::Container(other.to_string())),
                None => Ok(NetMode::User(mode.to_string())),
            },
        }
    }
}

/// What a container asks of the network module when it is started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetRequest {
    /// The network mode.
    pub mode: NetMode,
    /// The container's name without the leading `/` (for `network inspect`).
    pub name: String,
    /// `--mac-address`; default `02:42:` + the four IPv4 bytes.
    pub mac: Option<String>,
    /// `--ip` (user-defined networks with a configured subnet only).
    pub ip: Option<Ipv4Addr>,
    /// `--network-alias`.
    pub aliases: Vec<String>,
    /// The container's hosts file (bind-mounted as `/etc/hosts`): on user networks berth
    /// keeps the names of its peers in it.
    pub hosts_file: Option<PathBuf>,
}

/// A container's network attachment; the daemon stores it with the container and fills
/// `NetworkSettings` from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Network name: `bridge`, `host` or `none`; empty for `container:` mode (dockerd lists
    /// no networks for such a container).
    pub network: String,
    /// The network's 64-hex id (empty for `container:` mode).
    pub network_id: String,
    /// The endpoint's 64-hex id (empty for `container:` mode).
    pub endpoint_id: String,
    /// Path of the network namespace (`SandboxKey`); empty for host mode.
    pub sandbox_key: String,
    /// The container's IPv4 address (bridge only).
    pub ip: Option<Ipv4Addr>,
    /// Prefix length of `ip` (0 without an address).
    pub prefix_len: u8,
    /// Default gateway (bridge only).
    pub gateway: Option<Ipv4Addr>,
    /// MAC address of `eth0`, `aa:bb:cc:dd:ee:ff` (bridge only; empty otherwise).
    pub mac: String,
    /// Host side of the veth pair (bridge only).
    pub host_veth: Option<String>,
    /// What `host-gateway` in `--add-host` stands for: the default bridge's gateway.
    #[serde(default)]
    pub host_gateway: Option<Ipv4Addr>,
    /// Host ports published to this endpoint (`-p`, `-P`).
    #[serde(default)]
    pub ports: Vec<super::ports::PortBinding>,
    /// `--ip` as configured (`IPAMConfig.IPv4Address`).
    #[serde(default)]
    pub ipam_ip: Option<Ipv4Addr>,
    /// `--network-alias` as configured (inspect adds the short id on user networks).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Whether the network is user-defined (names resolve between its containers).
    #[serde(default)]
    pub user_network: bool,
}

impl Attachment {
    /// The netns path to put in the OCI spec (`None` for host mode: no new namespace).
    pub fn sandbox_path(&self) -> Option<PathBuf> {
        (!self.sandbox_key.is_empty()).then(|| PathBuf::from(&self.sandbox_key))
    }

    /// The attachment worth storing with the container: `None` for `container:` mode,
    /// which has no network of its own.
    pub fn into_option(self) -> Option<Attachment> {
        (!self.network.is_empty()).then_some(self)
    }

    /// Whether the container has an endpoint on a network (every mode but `container:`).
    pub fn has_endpoint(&self) -> bool {
        !self.endpoint_id.is_empty()
    }

    /// `IPAddress` as the API shows it (empty without an address).
    pub fn ip_string(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// `Gateway` as the API shows it (empty without a gateway).
    pub fn gateway_string(&self) -> String {
        self.gateway.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

/// Where the network namespace of `container_id` is bound: `<exec_root>/netns/<id>`.
pub fn netns_path(exec_root: &Path, container_id: &str) -> PathBuf {
    exec_root.join("netns").join(container_id)
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`) into bytes.
pub(crate) fn parse_mac(mac: &str) -> ApiResult<[u8; 6]> {
    let bad = || ApiError::BadRequest(format!("invalid MAC address: {mac}"));
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (slot, part) in out.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Formats MAC bytes as dockerd does (lower-case, colons).
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// dockerd's generated MAC: `02:42:` followed by the four bytes of the IPv4 address.
pub(crate) fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_dockerd() -> anyhow::Result<()> {
        assert_eq!(NetMode::parse("default")?, NetMode::Bridge);
        assert_eq!(NetMode::parse("bridge")?, NetMode::Bridge);
        assert_eq!(NetMode::parse("")?, NetMode::Bridge);
        assert_eq!(NetMode::parse("host")?, NetMode::Host);
        assert_eq!(NetMode::parse("none")?, NetMode::None);
        assert_eq!(
            NetMode::parse("container:abc")?,
            NetMode::Container("abc".into())
        );
        assert_eq!(NetMode::parse("nonet")?, NetMode::User("nonet".into()));
        assert!(matches!(
            NetMode::parse("container:"),
            Err(ApiError::BadRequest(_))
        ));
        Ok(())
    }

    #[test]
    fn bip_is_validated() -> anyhow::Result<()> {
        let s = Subnet::parse_bip("172.17.0.1/16")?;
        assert_eq!(s.gateway, Ipv4Addr::new(172, 17, 0, 1));
        assert_eq!(s.net.to_string(), "172.17.0.0/16");
        assert!(s.is_assignable(Ipv4Addr::new(172, 17, 0, 2)));
        assert!(!s.is_assignable(Ipv4Addr::new(172, 17, 0, 1)));
        assert!(!s.is_assignable(Ipv4Addr::new(172, 17, 255, 255)));
        assert!(!s.is_assignable(Ipv4Addr::new(172, 18, 0, 2)));
        for bad in [
            "172.17.0.0/16",
            "10.0.0.255/24",
            "10.0.0.1",
            "10.0.0.1/31",
            "x/8",
        ] {
            assert!(Subnet::parse_bip(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn macs_round_trip() -> anyhow::Result<()> {
        let m = mac_for_ip(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(format_mac(&m), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:AC:11:00:02")?, m);
        assert_eq!(parse_mac("02-42-ac-11-00-02")?, m);
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:0g",
            "0242ac110002",
            "02:42:ac:11:00:002",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn names_are_validated() {
        let mut c = NetConfig::new("/run/berth".into());
        assert!(c.validate().is_ok());
        c.bridge = "a-very-long-bridge-name".into();
        assert!(c.validate().is_err());
        c.bridge = "br\"0".into();
        assert!(c.validate().is_err());
        c.bridge = "berth0".into();
        c.nft_table = "1berth".into();
        assert!(c.validate().is_err());
        c.nft_table = "ber th".into();
        assert!(c.validate().is_err());
    }
}
