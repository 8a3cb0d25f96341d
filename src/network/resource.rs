//! The `GET /networks` and `GET /networks/{id}` bodies, field for field in dockerd's order
//! (`docker network inspect` prints the server's JSON as is).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One network as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResource {
    /// Network name.
    #[serde(rename = "Name")]
    pub name: String,
    /// 64-hex id.
    #[serde(rename = "Id")]
    pub id: String,
    /// RFC 3339 creation time (nanoseconds).
    #[serde(rename = "Created")]
    pub created: String,
    /// Always `local`.
    #[serde(rename = "Scope")]
    pub scope: String,
    /// `bridge`, `host` or `null`.
    #[serde(rename = "Driver")]
    pub driver: String,
    /// Always false for now.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Address management.
    #[serde(rename = "IPAM")]
    pub ipam: IpamInfo,
    /// `--internal`.
    #[serde(rename = "Internal")]
    pub internal: bool,
    /// `--attachable`.
    #[serde(rename = "Attachable")]
    pub attachable: bool,
    /// Swarm ingress (always false).
    #[serde(rename = "Ingress")]
    pub ingress: bool,
    /// `{"Network": ""}`.
    #[serde(rename = "ConfigFrom")]
    pub config_from: BTreeMap<String, String>,
    /// `--config-only`.
    #[serde(rename = "ConfigOnly")]
    pub config_only: bool,
    /// Endpoints by container id (empty in the list, as dockerd 20.10).
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, EndpointResource>,
    /// Driver options.
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
    /// Labels.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
}

/// `IPAM` of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamInfo {
    /// Always `default`.
    #[serde(rename = "Driver")]
    pub driver: String,
    /// `null` for the built-in networks.
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    /// Subnets.
    #[serde(rename = "Config")]
    pub config: Vec<IpamConfig>,
}

/// One IPAM pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// `172.17.0.0/16`.
    #[serde(rename = "Subnet")]
    pub subnet: String,
    /// `--ip-range`, when given.
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Only shown when configured explicitly.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// One container's endpoint in `Containers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointResource {
    /// Container name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// MAC address.
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    /// `ip/prefix`.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// Always empty.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

impl NetworkResource {
    /// A built-in network with empty maps.
    pub(crate) fn builtin(name: &str, id: &str, created: &str, driver: &str) -> Self {
        NetworkResource {
            name: name.into(),
            id: id.into(),
            created: created.into(),
            scope: "local".into(),
            driver: driver.into(),
            enable_ipv6: false,
            ipam: IpamInfo {
                driver: "default".into(),
                options: None,
                config: Vec::new(),
            },
            internal: false,
            attachable: false,
            ingress: false,
            config_from: BTreeMap::from([("Network".to_string(), String::new())]),
            config_only: false,
            containers: BTreeMap::new(),
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// dockerd's options of the default bridge.
pub(crate) fn default_bridge_options(bridge: &str, mtu: u32) -> BTreeMap<String, String> {
    let p = "com.docker.network";
    BTreeMap::from([
        (format!("{p}.bridge.default_bridge"), "true".to_string()),
        (format!("{p}.bridge.enable_icc"), "true".to_string()),
        (
            format!("{p}.bridge.enable_ip_masquerade"),
            "true".to_string(),
        ),
        (
            format!("{p}.bridge.host_binding_ipv4"),
            "0.0.0.0".to_string(),
        ),
        (format!("{p}.bridge.name"), bridge.to_string()),
        (format!("{p}.driver.mtu"), mtu.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_dockerd_order() -> anyhow::Result<()> {
        let mut n = NetworkResource::builtin("bridge", "ab", "2026-01-01T00:00:00Z", "bridge");
        n.ipam.config.push(IpamConfig {
            subnet: "172.17.0.0/16".into(),
            ip_range: None,
            gateway: None,
        });
        n.options = default_bridge_options("berth0", 1500);
        let s = serde_json::to_string(&n)?;
        let want = r#"{"Name":"bridge","Id":"ab","Created":"2026-01-01T00:00:00Z","Scope":"local","Driver":"bridge","EnableIPv6":false,"IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"172.17.0.0/16"}]},"Internal":false,"Attachable":false,"Ingress":false,"ConfigFrom":{"Network":""},"ConfigOnly":false,"Containers":{},"Options":{"com.docker.network.bridge.default_bridge":"true","com.docker.network.bridge.enable_icc":"true","com.docker.network.bridge.enable_ip_masquerade":"true","com.docker.network.bridge.host_binding_ipv4":"0.0.0.0","com.docker.network.bridge.name":"berth0","com.docker.network.driver.mtu":"1500"},"Labels":{}}"#;
        assert_eq!(s, want);
        let back: NetworkResource = serde_json::from_str(&s)?;
        assert_eq!(back, n);
        Ok(())
    }
}
