//! Address management: one lease per container and network, persisted in the store (the
//! default bridge in table `ipam`, key: container id; user networks in table `leases`, key
//! `<network id>/<container id>`), kept until the container leaves the network.
//! A new lease takes the first free address after the gateway (wrapping around; within
//! `--ip-range` when the network has one), or the address the container asked for, so two
//! containers never share an address.

use super::types::Subnet;
use crate::error::{ApiError, ApiResult};
use crate::store::Table;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// One container's address on a bridge network, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Owner container.
    pub container_id: String,
    /// Container name (for `network inspect`).
    pub name: String,
    /// Network name (`bridge`).
    pub network: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    /// MAC address of the container's `eth0`.
    pub mac: String,
    /// Endpoint id (64 hex).
    pub endpoint_id: String,
    /// Host side of the veth pair, once it has been set up.
    pub veth: Option<String>,
    /// `--network-alias` (user networks: peers find the container by them).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The container's hosts file, kept up to date with its peers (user networks).
    #[serde(default)]
    pub hosts: Option<std::path::PathBuf>,
    /// Set for a network joined with `docker network connect` (not the container's
    /// `NetworkMode`): its interface name (`eth1`, `eth2`, …) inside the container.
    #[serde(default)]
    pub connected_as: Option<String>,
    /// `--ip` given at connect (kept for the container's next start).
    #[serde(default)]
    pub requested_ip: Option<Ipv4Addr>,
}

/// What [`Lease::veth`] holds for an endpoint whose link lives only in the container's
/// netns (a macvlan child): this prefix and the interface name. `:` cannot occur in a link
/// name, so the value never names a host link.
pub(crate) const IN_NETNS: &str = "netns:";

impl Lease {
    /// The host side of the endpoint's veth (`None`: no endpoint, or one that lives only in
    /// the container's netns).
    pub fn host_veth(&self) -> Option<&str> {
        self.veth.as_deref().filter(|v| !v.starts_with(IN_NETNS))
    }
}

/// The lease table of one subnet.
pub(crate) struct Ipam {
    table: Table,
    subnet: Subnet,
    range: Option<Ipv4Net>,
    prefix: String,
    network: String,
    lock: Arc<Mutex<()>>,
}

impl Ipam {
    /// Leases of `network` on `subnet`, stored in `table`.
    pub fn new(table: Table, subnet: Subnet, network: &str) -> Self {
        Ipam {
            table,
            subnet,
            range: None,
            prefix: String::new(),
            network: network.to_string(),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The leases of one user network: keys `<prefix><container id>` in a table shared by
    /// all user networks, `range` limiting dynamic addresses, `lock` shared by every
    /// [`Ipam`] built for the same table (so concurrent acquires never race).
    pub fn scoped(
        table: Table,
        subnet: Subnet,
        range: Option<Ipv4Net>,
        network: &str,
        prefix: String,
        lock: Arc<Mutex<()>>,
    ) -> Self {
        Ipam {
            table,
            subnet,
            range,
            prefix,
            network: network.to_string(),
            lock,
        }
    }

    fn guard(&self) -> ApiResult<std::sync::MutexGuard<'_, ()>> {
        self.lock
            .lock()
            .map_err(|_| ApiError::Internal("ipam: lock poisoned".into()))
    }

    /// The container's lease, if any.
    pub fn get(&self, container_id: &str) -> ApiResult<Option<Lease>> {
        self.table.get(&format!("{}{container_id}", self.prefix))
    }

    /// Every lease.
    pub fn all(&self) -> ApiResult<Vec<Lease>> {
        Ok(self
            .table
            .all::<Lease>()?
            .into_iter()
            .filter(|(k, _)| k.starts_with(&self.prefix))
            .map(|(_, l)| l)
            .collect())
    }

    /// The container's lease; a new one (built by `make` from the chosen address) when it
    /// has none or when its address is no longer assignable (the subnet changed).
    #[cfg(test)]
    pub fn acquire(
        &self,
        container_id: &str,
        make: impl FnOnce(Ipv4Addr) -> Lease,
    ) -> ApiResult<Lease> {
        self.acquire_ip(container_id, None, make)
    }

    /// [`Ipam::acquire`], with the address the container asked for (`--ip`): dockerd's
    /// 400 `Invalid address ...` outside the subnet, 403 `Address already in use` when
    /// another container (or the gateway) has it.
    pub fn acquire_ip(
        &self,
        container_id: &str,
        want: Option<Ipv4Addr>,
        make: impl FnOnce(Ipv4Addr) -> Lease,
    ) -> ApiResult<Lease> {
        let _g = self.guard()?;
        if let Some(l) = self.get(container_id)? {
            let right = want.is_none_or(|w| w == l.ip);
            if right
                && self.subnet.is_assignable(l.ip)
                && l.prefix_len == self.subnet.net.prefix_len()
            {
                return Ok(l);
            }
        }
        let used: HashSet<Ipv4Addr> = self
            .all()?
            .into_iter()
            .filter(|l| l.container_id != container_id)
            .map(|l| l.ip)
            .collect();
        let ip = match want {
            Some(ip) => {
                let net = self.subnet.net;
                if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                    return Err(ApiError::BadRequest(format!(
                        "Invalid address {ip}: It does not belong to any of this network's subnets"
                    )));
                }
                if ip == self.subnet.gateway || used.contains(&ip) {
                    return Err(ApiError::Forbidden("Address already in use".into()));
                }
                ip
            }
            None => self.first_free(&used).ok_or_else(|| {
                ApiError::Internal(format!(
                    "no available IPv4 addresses on this network's address pools: {} ({})",
                    self.network, self.subnet.net
                ))
            })?,
        };
        let lease = make(ip);
        self.table
            .put(&format!("{}{container_id}", self.prefix), &lease)?;
        Ok(lease)
    }

    /// Rewrites an existing lease (e.g. to record its veth).
    pub fn update(&self, lease: &Lease) -> ApiResult<()> {
        let _g = self.guard()?;
        self.table
            .put(&format!("{}{}", self.prefix, lease.container_id), lease)
    }

    /// Drops the container's lease (fine when it has none).
    pub fn release(&self, container_id: &str) -> ApiResult<()> {
        let _g = self.guard()?;
        self.table.remove(&format!("{}{container_id}", self.prefix))
    }

    fn first_free(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let pool = self.range.unwrap_or(self.subnet.net);
        let first = u32::from(pool.network()).max(u32::from(self.subnet.net.network()) + 1);
        let last = u32::from(pool.broadcast()).min(u32::from(self.subnet.net.broadcast()) - 1);
        let gw = u32::from(self.subnet.gateway).clamp(first.saturating_sub(1), last);
        (gw + 1..=last)
            .chain(first..=gw)
            .map(Ipv4Addr::from)
            .find(|ip| self.subnet.is_assignable(*ip) && !used.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn lease(cid: &str, ip: Ipv4Addr) -> Lease {
        Lease {
            container_id: cid.into(),
            name: format!("n-{cid}"),
            network: "bridge".into(),
            ip,
            prefix_len: 29,
            mac: String::new(),
            endpoint_id: String::new(),
            veth: None,
            aliases: Vec::new(),
            hosts: None,
            connected_as: None,
            requested_ip: None,
        }
    }

    #[test]
    fn allocates_in_order_reuses_and_exhausts() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        // 10.0.0.0/29: hosts .1-.6, gateway .3 → order .4 .5 .6 .1 .2
        let ipam = Ipam::new(
            store.table("ipam")?,
            Subnet::parse_bip("10.0.0.3/29")?,
            "bridge",
        );
        let mut got = Vec::new();
        for i in 0..5 {
            let l = ipam.acquire(&format!("c{i}"), |ip| lease(&format!("c{i}"), ip))?;
            got.push(l.ip.octets()[3]);
        }
        assert_eq!(got, vec![4, 5, 6, 1, 2]);
        // Same container → same lease.
        assert_eq!(
            ipam.acquire("c0", |ip| lease("c0", ip))?.ip,
            Ipv4Addr::new(10, 0, 0, 4)
        );
        let err = ipam.acquire("c9", |ip| lease("c9", ip)).err();
        assert!(matches!(err, Some(ApiError::Internal(m)) if m.contains("no available IPv4")));
        ipam.release("c1")?;
        ipam.release("c1")?;
        assert_eq!(
            ipam.acquire("c9", |ip| lease("c9", ip))?.ip,
            Ipv4Addr::new(10, 0, 0, 5)
        );
        assert_eq!(ipam.all()?.len(), 5);
        Ok(())
    }

    #[test]
    fn lease_outside_a_changed_subnet_is_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let table = store.table("ipam")?;
        table.put("c0", &lease("c0", Ipv4Addr::new(192, 168, 9, 9)))?;
        let ipam = Ipam::new(table, Subnet::parse_bip("10.0.0.1/29")?, "bridge");
        assert_eq!(
            ipam.acquire("c0", |ip| lease("c0", ip))?.ip,
            Ipv4Addr::new(10, 0, 0, 2)
        );
        Ok(())
    }

    #[test]
    fn requested_addresses_ranges_and_scopes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let lock = Arc::new(Mutex::new(()));
        let subnet = Subnet::parse_bip("10.5.0.1/24")?;
        let range: Ipv4Net = "10.5.0.128/25".parse()?;
        let a = Ipam::scoped(
            store.table("leases")?,
            subnet,
            Some(range),
            "a",
            "na/".into(),
            lock.clone(),
        );
        let b = Ipam::scoped(
            store.table("leases")?,
            subnet,
            None,
            "b",
            "nb/".into(),
            lock,
        );
        assert_eq!(a.acquire("c0", |ip| lease("c0", ip))?.ip.octets()[3], 128);
        assert_eq!(a.acquire("c1", |ip| lease("c1", ip))?.ip.octets()[3], 129);
        // --ip inside the subnet but outside the range is fine.
        let l = a.acquire_ip("c2", Some(Ipv4Addr::new(10, 5, 0, 9)), |ip| lease("c2", ip))?;
        assert_eq!(l.ip, Ipv4Addr::new(10, 5, 0, 9));
        let taken = a.acquire_ip("c3", Some(Ipv4Addr::new(10, 5, 0, 9)), |ip| lease("c3", ip));
        assert_eq!(
            taken.err(),
            Some(ApiError::Forbidden("Address already in use".into()))
        );
        let gw = a.acquire_ip("c3", Some(Ipv4Addr::new(10, 5, 0, 1)), |ip| lease("c3", ip));
        assert!(matches!(gw, Err(ApiError::Forbidden(_))));
        let out = a.acquire_ip("c3", Some(Ipv4Addr::new(10, 6, 0, 9)), |ip| lease("c3", ip));
        assert!(
            matches!(out, Err(ApiError::BadRequest(m)) if m.starts_with("Invalid address 10.6.0.9"))
        );
        // Another network on the same table has its own leases.
        assert_eq!(b.acquire("c0", |ip| lease("c0", ip))?.ip.octets()[3], 2);
        assert_eq!(a.all()?.len(), 3);
        assert_eq!(b.all()?.len(), 1);
        b.release("c0")?;
        assert_eq!(a.all()?.len(), 3);
        Ok(())
    }

    #[test]
    fn concurrent_acquires_get_distinct_addresses() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let ipam = std::sync::Arc::new(Ipam::new(
            store.table("ipam")?,
            Subnet::parse_bip("10.0.0.1/24")?,
            "bridge",
        ));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    let cid = format!("c{i}");
                    ipam.acquire(&cid, |ip| lease(&cid, ip)).map(|l| l.ip)
                })
            })
            .collect();
        let mut ips = HashSet::new();
        for t in threads {
            let ip = t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
            assert!(ips.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(ips.len(), 16);
        Ok(())
    }
}
