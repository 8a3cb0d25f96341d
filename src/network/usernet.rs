//! User-defined networks as values: the persisted record (table `networks`, key: the
//! network name, next to the built-in `bridge`, `host` and `none`), the validation of a
//! `POST /networks/create` body into a [`UserSpec`], dockerd's choice of a free subnet from
//! its default pools, and the API view of a user network.
//!
//! Drivers: `bridge` (a Linux bridge with its firewall) and `macvlan` (no bridge, no
//! rules: each container gets a macvlan child of the network's parent interface, see
//! [`UserSpec::macvlan`]) and `sriov` (the same with a VF per container, see
//! [`UserSpec::sriov`]).

use super::options::{MacvlanOptions, SriovOptions};
use super::resource::{IpamConfig, IpamInfo, NetworkResource};
use super::types::Subnet;
use crate::error::{ApiError, ApiResult};
use berth_api::models::NetworkCreateRequest;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `-o com.docker.network.bridge.name`.
pub(crate) const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// `-o com.docker.network.driver.mtu`.
pub(crate) const OPT_MTU: &str = "com.docker.network.driver.mtu";
/// `-o com.docker.network.bridge.enable_ip_masquerade`.
pub(crate) const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";

/// A network's persisted identity; `user` is set for user-defined networks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NetworkRecord {
    pub name: String,
    pub id: String,
    pub created: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSpec>,
}

/// The configuration of a user-defined bridge network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserSpec {
    /// The subnet (given with `--subnet` or chosen from the default pools).
    pub subnet: Ipv4Net,
    /// The bridge's address.
    pub gateway: Ipv4Addr,
    /// `--ip-range`: where dynamic addresses come from.
    pub ip_range: Option<Ipv4Net>,
    /// Whether `--subnet` was given (`--ip` needs it, and inspect shows only then a
    /// `Gateway` the user chose).
    pub subnet_configured: bool,
    /// Whether `--gateway` was given.
    pub gateway_configured: bool,
    /// `--internal`.
    pub internal: bool,
    /// `--attachable`.
    pub attachable: bool,
    /// `--label`.
    pub labels: BTreeMap<String, String>,
    /// `-o` as given (shown in inspect).
    pub options: BTreeMap<String, String>,
    /// `--ipam-opt`.
    pub ipam_options: BTreeMap<String, String>,
    /// Linux bridge device (`br-<12 hex of the id>` unless `-o ...bridge.name`).
    pub bridge: String,
    /// MTU of the bridge and the veths.
    pub mtu: u32,
    /// Masquerade traffic leaving the host (`enable_ip_masquerade`, default true).
    pub masquerade: bool,
    /// Set while `network rm` tears the network down; a crash restart finishes the job.
    #[serde(default)]
    pub removing: bool,
    /// The `macvlan` driver's options; `None` for a bridge network. A macvlan network has
    /// no bridge (`bridge` is empty) and no firewall rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MacvlanOptions>,
    /// The `sriov` driver's options; like macvlan, no bridge and no rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SriovOptions>,
}

impl UserSpec {
    /// Whether the network has a Linux bridge (and firewall rules) of its own.
    pub fn has_bridge(&self) -> bool {
        self.macvlan.is_none() && self.sriov.is_none()
    }

    /// The address plan as the IPAM and the bridge need it.
    pub fn plan(&self) -> Subnet {
        Subnet {
            gateway: self.gateway,
            net: self.subnet,
        }
    }
}

/// Names dockerd accepts for networks (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn parse_net(what: &str, s: &str) -> ApiResult<Ipv4Net> {
    if s.contains(':') {
        return Err(ApiError::NotImplemented(format!(
            "IPv6 pools are not supported yet: {s}"
        )));
    }
    s.parse::<Ipv4Net>()
        .map_err(|_| ApiError::BadRequest(format!("invalid CIDR address: {s}")))
        .and_then(|n| {
            if n.prefix_len() > 30 {
                Err(ApiError::BadRequest(format!(
                    "invalid {what} {s}: the prefix must be /30 or shorter"
                )))
            } else {
                Ok(n)
            }
        })
}

/// dockerd's default local address pools: 172.17-31.0.0/16, then 192.168.0.0/16 cut in /20s.
pub(crate) fn default_pools() -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = (17..=31u8)
        .filter_map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).ok())
        .collect();
    out.extend((0..16u8).filter_map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).ok()));
    out
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first default pool that overlaps neither a subnet in `taken` (other networks) nor a
/// host route.
pub(crate) fn pick_subnet(taken: &[Ipv4Net], routes: &[Ipv4Net]) -> ApiResult<Ipv4Net> {
    default_pools()
        .into_iter()
        .find(|p| !taken.iter().chain(routes).any(|t| overlaps(p, t)))
        .ok_or_else(|| {
            ApiError::Forbidden(
                "could not find an available, non-overlapping IPv4 address pool among the \
                 defaults to assign to the network"
                    .into(),
            )
        })
}

/// A validated create request (what [`UserSpec`] needs besides the subnet choice).
#[derive(Debug, Clone)]
pub(crate) struct CreateSpec {
    pub name: String,
    pub driver: String,
    /// `(subnet, gateway, ip_range)` when `--subnet` was given.
    pub pool: Option<(Ipv4Net, Option<Ipv4Addr>, Option<Ipv4Net>)>,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub ipam_options: BTreeMap<String, String>,
    pub bridge_name: Option<String>,
    pub mtu: u32,
    pub masquerade: bool,
    /// The driver options of a `macvlan` network.
    pub macvlan: Option<MacvlanOptions>,
    /// The driver options of an `sriov` network.
    pub sriov: Option<SriovOptions>,
}

/// Validates a `POST /networks/create` body like dockerd 20.10 (errors and codes).
pub(crate) fn parse_create(req: &NetworkCreateRequest, default_mtu: u32) -> ApiResult<CreateSpec> {
    let name = req.name.clone();
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "network name must not be empty".into(),
        ));
    }
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "invalid network name \"{name}\", only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    if ["bridge", "host", "none", "default"].contains(&name.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "operation is not permitted on predefined {name} network "
        )));
    }
    let driver = req
        .driver
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or("bridge".into());
    if !["bridge", "macvlan", "sriov"].contains(&driver.as_str()) {
        return Err(ApiError::NotFound(format!("plugin \"{driver}\" not found")));
    }
    if req.enable_ipv6 == Some(true) {
        return Err(ApiError::NotImplemented(
            "IPv6 networks are not supported yet".into(),
        ));
    }
    if req.config_only == Some(true) || req.config_from.is_some() || req.ingress == Some(true) {
        return Err(ApiError::NotImplemented(
            "config-only, config-from and ingress networks are not supported".into(),
        ));
    }
    let ipam = req.ipam.clone().unwrap_or_default();
    if let Some(d) = ipam
        .driver
        .as_deref()
        .filter(|d| !d.is_empty() && *d != "default")
    {
        return Err(ApiError::NotFound(format!("plugin \"{d}\" not found")));
    }
    let configs = ipam.config.unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::NotImplemented(
            "more than one IPv4 subnet per network is not supported yet".into(),
        ));
    }
    let pool = match configs.first() {
        None => None,
        Some(c) => {
            let Some(sub) = c.subnet.as_deref().filter(|s| !s.is_empty()) else {
                if c.gateway.as_deref().is_some_and(|g| !g.is_empty())
                    || c.ip_range.as_deref().is_some_and(|r| !r.is_empty())
                {
                    return Err(ApiError::BadRequest(
                        "gateway and ip-range need a subnet (--subnet)".into(),
                    ));
                }
                return parse_rest(req, name, driver, None, ipam.options, default_mtu);
            };
            let net = parse_net("subnet", sub)?;
            if net.trunc() != net {
                return Err(ApiError::BadRequest(format!(
                    "invalid subnet {sub}: it has host bits set (use {})",
                    net.trunc()
                )));
            }
            let gw = match c.gateway.as_deref().filter(|g| !g.is_empty()) {
                None => None,
                Some(g) => {
                    let ip: Ipv4Addr = g.parse().map_err(|_| {
                        ApiError::BadRequest(format!("invalid gateway address {g}"))
                    })?;
                    if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                        return Err(ApiError::Forbidden(format!(
                            "failed to allocate gateway ({ip}): Invalid address {ip}: It does not belong to any of this network's subnets"
                        )));
                    }
                    Some(ip)
                }
            };
            let range = match c.ip_range.as_deref().filter(|r| !r.is_empty()) {
                None => None,
                Some(r) => {
                    let rn = parse_net("ip-range", r)?.trunc();
                    if !net.contains(&rn) {
                        return Err(ApiError::Forbidden(format!(
                            "Invalid ip range {r}: it is not within subnet {net}"
                        )));
                    }
                    Some(rn)
                }
            };
            Some((net, gw, range))
        }
    };
    parse_rest(req, name, driver, pool, ipam.options, default_mtu)
}

fn parse_rest(
    req: &NetworkCreateRequest,
    name: String,
    driver: String,
    pool: Option<(Ipv4Net, Option<Ipv4Addr>, Option<Ipv4Net>)>,
    ipam_options: Option<std::collections::HashMap<String, String>>,
    default_mtu: u32,
) -> ApiResult<CreateSpec> {
    let options: BTreeMap<String, String> = req
        .options
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let bad =
        |k: &str, v: &str| ApiError::BadRequest(format!("invalid value {v:?} for option {k}"));
    let bridge_name = match options.get(OPT_BRIDGE_NAME) {
        None => None,
        Some(b) => {
            let ok = !b.is_empty()
                && b.len() <= 15
                && b.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(bad(OPT_BRIDGE_NAME, b));
            }
            Some(b.clone())
        }
    };
    let mtu = match options.get(OPT_MTU) {
        None => default_mtu,
        Some(v) => match v.parse::<u32>() {
            Ok(m) if (68..=65535).contains(&m) => m,
            _ => return Err(bad(OPT_MTU, v)),
        },
    };
    let masquerade = match options.get(OPT_MASQUERADE) {
        None => true,
        Some(v) => v.parse::<bool>().map_err(|_| bad(OPT_MASQUERADE, v))?,
    };
    let macvlan = if driver == "macvlan" {
        Some(super::options::parse_macvlan_options(&options)?)
    } else {
        None
    };
    let sriov = if driver == "sriov" {
        Some(super::options::parse_sriov_options(&options)?)
    } else {
        None
    };
    Ok(CreateSpec {
        name,
        driver,
        pool,
        internal: req.internal.unwrap_or(false),
        attachable: req.attachable.unwrap_or(false),
        labels: req.labels.clone().unwrap_or_default().into_iter().collect(),
        options,
        ipam_options: ipam_options.unwrap_or_default().into_iter().collect(),
        bridge_name,
        mtu,
        masquerade,
        macvlan,
        sriov,
    })
}

/// The API view of a user network (without `Containers`, which the caller fills).
pub(crate) fn user_resource(rec: &NetworkRecord, spec: &UserSpec) -> NetworkResource {
    let mut r = NetworkResource::builtin(&rec.name, &rec.id, &rec.created, &rec.driver);
    r.ipam = IpamInfo {
        driver: "default".into(),
        options: Some(spec.ipam_options.clone()),
        config: vec![IpamConfig {
            subnet: spec.subnet.to_string(),
            ip_range: spec.ip_range.map(|n| n.to_string()),
            // dockerd 20.10 keeps the IPAM config as given: a gateway appears when it was
            // given or when the whole pool was chosen by the daemon.
            gateway: (spec.gateway_configured || !spec.subnet_configured)
                .then(|| spec.gateway.to_string()),
        }],
    };
    r.internal = spec.internal;
    r.attachable = spec.attachable;
    r.options = spec.options.clone();
    r.labels = spec.labels.clone();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> anyhow::Result<NetworkCreateRequest> {
        Ok(serde_json::from_str(json)?)
    }

    #[test]
    fn pools_skip_taken_and_routed_subnets() -> anyhow::Result<()> {
        let taken = vec!["172.17.0.0/16".parse()?];
        assert_eq!(pick_subnet(&taken, &[])?.to_string(), "172.18.0.0/16");
        let routes = vec!["172.18.5.0/24".parse()?, "172.16.0.0/12".parse()?];
        assert_eq!(pick_subnet(&taken, &routes)?.to_string(), "192.168.0.0/20");
        let all: Vec<Ipv4Net> = vec!["172.16.0.0/12".parse()?, "192.168.0.0/16".parse()?];
        assert!(matches!(
            pick_subnet(&all, &[]),
            Err(ApiError::Forbidden(_))
        ));
        assert_eq!(default_pools().len(), 31);
        Ok(())
    }

    #[test]
    fn create_bodies_are_validated_like_dockerd() -> anyhow::Result<()> {
        let ok = parse_create(
            &req(
                r#"{"Name":"n1","Driver":"bridge","IPAM":{"Driver":"default","Config":[{"Subnet":"10.9.0.0/24","Gateway":"10.9.0.254","IPRange":"10.9.0.128/25"}]},"Internal":true,"Options":{"com.docker.network.driver.mtu":"1400","com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"mybr"},"Labels":{"a":"b"}}"#,
            )?,
            1500,
        )?;
        assert_eq!(
            ok.pool,
            Some((
                "10.9.0.0/24".parse()?,
                Some(Ipv4Addr::new(10, 9, 0, 254)),
                Some("10.9.0.128/25".parse()?)
            ))
        );
        assert!(ok.internal && !ok.masquerade);
        assert_eq!((ok.mtu, ok.bridge_name.as_deref()), (1400, Some("mybr")));
        let auto = parse_create(&req(r#"{"Name":"n2"}"#)?, 1500)?;
        assert_eq!((auto.pool, auto.mtu, auto.masquerade), (None, 1500, true));
        let cases = [
            (
                r#"{"Name":"bridge"}"#,
                "operation is not permitted on predefined bridge network ",
            ),
            (r#"{"Name":"-x"}"#, "invalid network name"),
            (
                r#"{"Name":"n","IPAM":{"Config":[{"Subnet":"nope"}]}}"#,
                "invalid CIDR address: nope",
            ),
            (
                r#"{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.0/24","Gateway":"10.1.0.1"}]}}"#,
                "failed to allocate gateway (10.1.0.1)",
            ),
            (
                r#"{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.0/24","IPRange":"10.1.0.0/25"}]}}"#,
                "Invalid ip range",
            ),
            (
                r#"{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.1/24"}]}}"#,
                "host bits",
            ),
            (
                r#"{"Name":"n","Options":{"com.docker.network.driver.mtu":"x"}}"#,
                "invalid value",
            ),
            (
                r#"{"Name":"n","Driver":"overlay"}"#,
                "plugin \"overlay\" not found",
            ),
        ];
        for (body, want) in cases {
            let err = parse_create(&req(body)?, 1500).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(want)),
                "{body}: {err:?}"
            );
        }
        Ok(())
    }
}
