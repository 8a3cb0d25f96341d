//! Published ports (`-p [ip:]host:container[/proto]`, port ranges, `-P`): what a container
//! asks for (`HostConfig.PortBindings`, `PublishAllPorts`, `ExposedPorts`), the host ports
//! it gets (persisted in the store so that no two containers hold one and a restarted
//! daemon knows them), and the nftables rules that forward them.
//!
//! No userland proxy: the forwarding lives in the kernel and keeps working while berthd is
//! down. Per binding, in berth's own table: DNAT in `prerouting` (traffic from outside and
//! from containers, hairpin included) and in `output` (the host's own processes, localhost
//! included) for destinations that are local addresses, masquerade in `postrouting` of
//! flows that come from the bridge and go back into it (other containers and the container
//! itself reaching a host address) and of localhost-originated ones, and an accept in
//! `forward`. The bridge needs
//! `route_localnet` (localhost DNAT) and its ports `hairpin_mode` (a container reaching its
//! own published port); the manager sets both.
//!
//! Unlike dockerd 20.10 with an IPv6-capable host, no `::` binding is listed: containers
//! have no IPv6 address, so only IPv4 is forwarded.

use super::firewall::Rule;
use crate::error::{ApiError, ApiResult};
use crate::store::Table;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    fn parse(s: &str) -> ApiResult<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            other => Err(ApiError::BadRequest(format!(
                "invalid proto '{other}': only tcp, udp and sctp are supported"
            ))),
        }
    }

    /// The name as the API and nft write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// `80/tcp` → (80, tcp).
pub fn parse_port_key(key: &str) -> ApiResult<(u16, Proto)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let port: u16 =
        port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid port specification: \"{key}\""))
        })?;
    Ok((port, Proto::parse(proto)?))
}

/// One host binding a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    /// The container's port.
    pub container_port: u16,
    /// Its protocol.
    pub proto: Proto,
    /// `HostIp`; `None` for all addresses.
    pub host_ip: Option<Ipv4Addr>,
    /// `HostPort` as a range (`8080` is 8080..=8080); `None` for any free port.
    pub host_ports: Option<(u16, u16)>,
}

fn parse_host_port(s: &str) -> ApiResult<Option<(u16, u16)>> {
    let bad = || ApiError::BadRequest(format!("invalid port specification: \"{s}\""));
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// The requests in `HostConfig`: every `PortBindings` entry, plus, with `PublishAllPorts`,
/// each exposed port that has no binding (bound to a free port on all addresses).
pub fn requests(
    port_bindings: Option<&Value>,
    publish_all: bool,
    exposed: &[String],
) -> ApiResult<Vec<PortRequest>> {
    let mut out = Vec::new();
    let mut bound = Vec::new();
    if let Some(Value::Object(map)) = port_bindings {
        for (key, list) in map {
            let (container_port, proto) = parse_port_key(key)?;
            bound.push((container_port, proto));
            let entries = match list {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "invalid port binding for {key}: want a list"
                    )))
                }
            };
            for e in entries {
                let ip = e.get("HostIp").and_then(Value::as_str).unwrap_or("");
                let host_ip = match ip {
                    "" | "0.0.0.0" => None,
                    ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid IP address in port binding: {ip}"))
                    })?),
                };
                let hp = e.get("HostPort").and_then(Value::as_str).unwrap_or("");
                out.push(PortRequest {
                    container_port,
                    proto,
                    host_ip,
                    host_ports: parse_host_port(hp)?,
                });
            }
        }
    }
    if publish_all {
        for key in exposed {
            let (container_port, proto) = parse_port_key(key)?;
            if !bound.contains(&(container_port, proto)) {
                out.push(PortRequest {
                    container_port,
                    proto,
                    host_ip: None,
                    host_ports: None,
                });
            }
        }
    }
    out.sort_by_key(|r| (r.container_port, r.proto, r.host_ip, r.host_ports));
    Ok(out)
}

/// A host port a container holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The container's port.
    pub container_port: u16,
    /// Its protocol.
    pub proto: Proto,
    /// The host address (`None`: all).
    pub host_ip: Option<Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
}

impl PortBinding {
    fn key(&self) -> String {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        format!("{}/{ip}/{}", self.proto.as_str(), self.host_port)
    }

    /// `0.0.0.0:8080` as dockerd's errors write it.
    fn host_addr(&self) -> String {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        format!("{ip}:{}", self.host_port)
    }
}

/// Who holds a host port (the store value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    container: String,
    binding: PortBinding,
}

/// Whether another process on the host listens on the port (a bind that fails).
pub trait HostProbe: Send + Sync {
    /// `true` when `ip:port/proto` can be bound right now.
    fn free(&self, proto: Proto, ip: Option<Ipv4Addr>, port: u16) -> bool;
}

/// Probes by binding a socket and closing it at once (SCTP: not probed).
pub struct BindProbe;

impl HostProbe for BindProbe {
    fn free(&self, proto: Proto, ip: Option<Ipv4Addr>, port: u16) -> bool {
        let addr = (ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
        match proto {
            Proto::Tcp => std::net::TcpListener::bind(addr).is_ok(),
            Proto::Udp => std::net::UdpSocket::bind(addr).is_ok(),
            Proto::Sctp => true,
        }
    }
}

/// Host ports of every container, persisted in the store (table `ports`, one entry per
/// held `proto/ip/port`).
pub struct PortAllocator {
    table: Table,
    /// One allocation at a time: `0.0.0.0` and a specific address are different keys, so
    /// the store's compare-and-swap alone cannot keep them apart.
    lock: std::sync::Mutex<()>,
    /// Range for ports asked as "any free port" (the kernel's ephemeral range).
    dynamic: (u16, u16),
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), dockerd's choice for
/// dynamic host ports; 49153-60999 when unreadable.
pub fn ephemeral_range() -> (u16, u16) {
    let parse = |s: String| -> Option<(u16, u16)> {
        let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
        let (a, b) = (it.next()??, it.next()??);
        (a > 0 && a <= b).then_some((a, b))
    };
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(parse)
        .unwrap_or((49153, 60999))
}

impl PortAllocator {
    /// An allocator over `table` choosing dynamic ports in `dynamic`.
    pub fn new(table: Table, dynamic: (u16, u16)) -> Self {
        PortAllocator {
            table,
            lock: std::sync::Mutex::new(()),
            dynamic,
        }
    }

    /// Every binding held, with its container.
    pub fn all(&self) -> ApiResult<Vec<(String, PortBinding)>> {
        Ok(self
            .table
            .all::<Holder>()?
            .into_iter()
            .map(|(_, h)| (h.container, h.binding))
            .collect())
    }

    /// The bindings `container` holds, in request order.
    pub fn held(&self, container: &str) -> ApiResult<Vec<PortBinding>> {
        let mut v: Vec<PortBinding> = self
            .all()?
            .into_iter()
            .filter(|(c, _)| c == container)
            .map(|(_, b)| b)
            .collect();
        v.sort_by_key(|b| (b.container_port, b.proto, b.host_ip, b.host_port));
        Ok(v)
    }

    fn conflicts(&self, container: &str, b: &PortBinding) -> ApiResult<bool> {
        // 0.0.0.0 covers every address: it conflicts with any address on the same port.
        Ok(self.all()?.iter().any(|(c, h)| {
            c != container
                && h.proto == b.proto
                && h.host_port == b.host_port
                && (h.host_ip.is_none() || b.host_ip.is_none() || h.host_ip == b.host_ip)
        }))
    }

    /// Takes the host ports `reqs` ask for, for `container` (`endpoint` names it in errors:
    /// `name (endpoint id)`). Idempotent: bindings it already holds are kept. On a
    /// conflict nothing is taken and dockerd's error comes back.
    pub fn allocate(
        &self,
        container: &str,
        endpoint: &str,
        reqs: &[PortRequest],
        probe: &dyn HostProbe,
    ) -> ApiResult<Vec<PortBinding>> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.held(container)?;
        if !held.is_empty() && covers(&held, reqs) {
            return Ok(held);
        }
        self.release(container)?;
        let mut taken: Vec<PortBinding> = Vec::new();
        let res = (|| {
            for r in reqs {
                let b = self.take_one(container, r, probe, &taken)?;
                taken.push(b);
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = self.release(container);
            let msg = match e {
                ApiError::Conflict(m) | ApiError::Internal(m) => m,
                other => return Err(other),
            };
            return Err(ApiError::Internal(format!(
                "driver failed programming external connectivity on endpoint {endpoint}: {msg}"
            )));
        }
        Ok(taken)
    }

    fn take_one(
        &self,
        container: &str,
        r: &PortRequest,
        probe: &dyn HostProbe,
        taken: &[PortBinding],
    ) -> ApiResult<PortBinding> {
        let (lo, hi) = r.host_ports.unwrap_or(self.dynamic);
        let mut last = None;
        for port in lo..=hi {
            let b = PortBinding {
                container_port: r.container_port,
                proto: r.proto,
                host_ip: r.host_ip,
                host_port: port,
            };
            let mine = taken.iter().any(|t| {
                t.proto == b.proto
                    && t.host_port == port
                    && (t.host_ip.is_none() || b.host_ip.is_none() || t.host_ip == b.host_ip)
            });
            if mine || self.conflicts(container, &b)? || !probe.free(b.proto, b.host_ip, port) {
                last = Some(b);
                continue;
            }
            let holder = Holder {
                container: container.to_string(),
                binding: b.clone(),
            };
            if self.table.put_new(&b.key(), &holder)? {
                return Ok(b);
            }
            last = Some(b);
        }
        Err(match (r.host_ports, last) {
            (Some((a, z)), Some(b)) if a == z => ApiError::Conflict(format!(
                "Bind for {} failed: port is already allocated",
                b.host_addr()
            )),
            _ => ApiError::Conflict(format!(
                "Bind for {}:{} failed: all ports in the range are allocated",
                r.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                match r.host_ports {
                    Some((a, z)) => format!("{a}-{z}"),
                    None => format!("{}-{}", self.dynamic.0, self.dynamic.1),
                }
            )),
        })
    }

    /// Frees every host port of `container`.
    pub fn release(&self, container: &str) -> ApiResult<()> {
        for (key, h) in self.table.all::<Holder>()? {
            if h.container == container {
                self.table.remove(&key)?;
            }
        }
        Ok(())
    }
}

/// Whether `held` is exactly what `reqs` ask for (each request satisfied once).
fn covers(held: &[PortBinding], reqs: &[PortRequest]) -> bool {
    held.len() == reqs.len()
        && reqs.iter().zip(held).all(|(r, b)| {
            r.container_port == b.container_port
                && r.proto == b.proto
                && r.host_ip == b.host_ip
                && r.host_ports
                    .is_none_or(|(a, z)| (a..=z).contains(&b.host_port))
        })
}

/// The owner prefix of a container's port rules.
pub(crate) fn ports_owner(container: &str) -> String {
    format!("ports {}:", &container[..container.len().min(12)])
}

/// The nft rules forwarding `bindings` to `ip` on `bridge` (see the module documentation).
pub(crate) fn port_rules(
    container: &str,
    bridge: &str,
    ip: Ipv4Addr,
    bindings: &[PortBinding],
) -> Vec<Rule> {
    let owner = ports_owner(container);
    let mut out = Vec::new();
    for b in bindings {
        let p = b.proto.as_str();
        let (hp, cp) = (b.host_port, b.container_port);
        let daddr = match b.host_ip {
            Some(h) => format!("ip daddr {h} "),
            None => String::new(),
        };
        let id = format!("{}:{hp}/{p}", b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
        for chain in ["prerouting", "output"] {
            out.push(Rule {
                chain: chain.into(),
                body: format!("fib daddr type local {daddr}{p} dport {hp} dnat ip to {ip}:{cp}"),
                comment: format!("{owner} dnat {id} to {ip}:{cp}"),
            });
        }
        // From the bridge back into it (another container, or this one, through a host
        // address): the reply must come back through the host to be un-NATed.
        out.push(Rule {
            chain: "postrouting".into(),
            body: format!(
                "iifname \"{bridge}\" oifname \"{bridge}\" ip daddr {ip} {p} dport {cp} ct status dnat masquerade"
            ),
            comment: format!("{owner} hairpin {ip}:{cp}/{p}"),
        });
        out.push(Rule {
            chain: "forward".into(),
            body: format!("ip daddr {ip} oifname \"{bridge}\" {p} dport {cp} accept"),
            comment: format!("{owner} accept {ip}:{cp}/{p}"),
        });
    }
    if !bindings.is_empty() {
        // Localhost DNATed to the bridge (with `route_localnet`) must leave with an address
        // the container can answer.
        out.push(Rule {
            chain: "postrouting".into(),
            body: format!("ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade"),
            comment: format!("{owner} localhost masquerade"),
        });
    }
    out.dedup_by(|a, b| a.chain == b.chain && a.comment == b.comment);
    out
}

/// `NetworkSettings.Ports`: each exposed or bound port, with its host bindings or `null`.
pub fn ports_json(exposed: &[String], bindings: &[PortBinding]) -> Value {
    let mut m = Map::new();
    for key in exposed {
        if let Ok((port, proto)) = parse_port_key(key) {
            m.insert(format!("{port}/{}", proto.as_str()), Value::Null);
        }
    }
    for b in bindings {
        let key = format!("{}/{}", b.container_port, b.proto.as_str());
        let entry = json!({
            "HostIp": b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
            "HostPort": b.host_port.to_string(),
        });
        match m.get_mut(&key) {
            Some(Value::Array(a)) => a.push(entry),
            _ => {
                m.insert(key, Value::Array(vec![entry]));
            }
        }
    }
    Value::Object(m)
}

#[cfg(test)]
#[path = "ports_tests.rs"]
mod tests;
