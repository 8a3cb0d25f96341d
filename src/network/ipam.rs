//! Address management of the default bridge: one lease per container, persisted in the
//! store table `ipam` (key: container id), kept until the container's network is released.
//! A new lease takes the first free address after the gateway (wrapping around), so two
//! containers never share an address.

use super::types::Subnet;
use crate::error::{ApiError, ApiResult};
use crate::store::Table;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

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
}

/// The lease table of one subnet.
pub(crate) struct Ipam {
    table: Table,
    subnet: Subnet,
    network: String,
    lock: Mutex<()>,
}

impl Ipam {
    /// Leases of `network` on `subnet`, stored in `table`.
    pub fn new(table: Table, subnet: Subnet, network: &str) -> Self {
        Ipam {
            table,
            subnet,
            network: network.to_string(),
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> ApiResult<std::sync::MutexGuard<'_, ()>> {
        self.lock
            .lock()
            .map_err(|_| ApiError::Internal("ipam: lock poisoned".into()))
    }

    /// The container's lease, if any.
    pub fn get(&self, container_id: &str) -> ApiResult<Option<Lease>> {
        self.table.get(container_id)
    }

    /// Every lease.
    pub fn all(&self) -> ApiResult<Vec<Lease>> {
        Ok(self
            .table
            .all::<Lease>()?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The container's lease; a new one (built by `make` from the chosen address) when it
    /// has none or when its address is no longer assignable (the subnet changed).
    pub fn acquire(
        &self,
        container_id: &str,
        make: impl FnOnce(Ipv4Addr) -> Lease,
    ) -> ApiResult<Lease> {
        let _g = self.guard()?;
        if let Some(l) = self.get(container_id)? {
            if self.subnet.is_assignable(l.ip) && l.prefix_len == self.subnet.net.prefix_len() {
                return Ok(l);
            }
        }
        let used: HashSet<Ipv4Addr> = self
            .all()?
            .into_iter()
            .filter(|l| l.container_id != container_id)
            .map(|l| l.ip)
            .collect();
        let ip = self.first_free(&used).ok_or_else(|| {
            ApiError::Internal(format!(
                "no available IPv4 addresses on this network's address pools: {} ({})",
                self.network, self.subnet.net
            ))
        })?;
        let lease = make(ip);
        self.table.put(container_id, &lease)?;
        Ok(lease)
    }

    /// Rewrites an existing lease (e.g. to record its veth).
    pub fn update(&self, lease: &Lease) -> ApiResult<()> {
        let _g = self.guard()?;
        self.table.put(&lease.container_id, lease)
    }

    /// Drops the container's lease (fine when it has none).
    pub fn release(&self, container_id: &str) -> ApiResult<()> {
        let _g = self.guard()?;
        self.table.remove(container_id)
    }

    fn first_free(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.subnet.net.network()) + 1;
        let last = u32::from(self.subnet.net.broadcast()) - 1;
        let gw = u32::from(self.subnet.gateway);
        (gw + 1..=last)
            .chain(first..gw)
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
