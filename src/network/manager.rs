//! [`NetworkManager`]: sets up the default bridge and the firewall when the daemon starts,
//! and gives each container its network (idempotently) when it starts.

use super::firewall::Rule;
use super::firewall::{bridge_owner, bridge_rules, foreign_forward_drops, parse_listing, plan};
use super::ipam::{Ipam, Lease};
use super::kernel::{BridgeSpec, IfStats, Kernel, VethSpec};
use super::netlink::NetlinkKernel;
use super::ports::{ephemeral_range, PortAllocator};
use super::resource::{default_bridge_options, EndpointResource, IpamConfig, NetworkResource};
use super::types::{format_mac, mac_for_ip, parse_mac, Attachment, NetConfig, NetMode};
use super::types::{netns_path, NetRequest, Subnet};
use crate::error::{ApiError, ApiResult};
use crate::store::{Store, Table};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// MTU of the default bridge and its veths (dockerd's default `--mtu`).
pub(crate) const MTU: u32 = 1500;
/// Default `--bip`.
const DEFAULT_BIP: &str = "172.17.0.1/16";

/// A built-in network's persisted identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkRecord {
    name: String,
    id: String,
    created: String,
    driver: String,
}

/// The daemon's network manager; see the module documentation.
pub struct NetworkManager<K: Kernel = NetlinkKernel> {
    kernel: Arc<K>,
    cfg: NetConfig,
    subnet: Subnet,
    ipam: Ipam,
    bridge_net: NetworkRecord,
    host_net: NetworkRecord,
    none_net: NetworkRecord,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Host ports held by containers (`-p`, `-P`).
    pub(super) ports: PortAllocator,
}

impl NetworkManager<NetlinkKernel> {
    /// Opens the manager on the real kernel: ensures the bridge (up, gateway address),
    /// `ip_forward`, berth's nftables table and the netns directory; leaves alone whatever
    /// is already right.
    /// `verify`: check the bridge and the firewall against the kernel (skipped on a clean
    /// take-over from the previous generation, which left them right).
    pub async fn open(cfg: NetConfig, store: &Store, verify: bool) -> ApiResult<Self> {
        let kernel = NetlinkKernel::new()?;
        Self::open_checked(cfg, store, kernel, verify).await
    }
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn endpoint_id(network_id: &str, container_id: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "endpoint/{network_id}/{container_id}"
    )))
}

fn load_record(table: &Table, name: &str, driver: &str) -> ApiResult<NetworkRecord> {
    let fresh = NetworkRecord {
        name: name.into(),
        id: random_hex(64),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        driver: driver.into(),
    };
    table.put_new(name, &fresh)?;
    table
        .get(name)?
        .ok_or_else(|| ApiError::Internal(format!("network {name}: record vanished")))
}

pub(super) fn check_container_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("invalid container id {id:?}")))
    }
}

impl<K: Kernel> NetworkManager<K> {
    /// [`NetworkManager::open`] with another [`Kernel`] (tests use a fake).
    pub async fn open_with(cfg: NetConfig, store: &Store, kernel: K) -> ApiResult<Self> {
        Self::open_checked(cfg, store, kernel, true).await
    }

    async fn open_checked(
        cfg: NetConfig,
        store: &Store,
        kernel: K,
        verify: bool,
    ) -> ApiResult<Self> {
        cfg.validate()?;
        let subnet = Subnet::parse_bip(cfg.bip.as_deref().unwrap_or(DEFAULT_BIP))?;
        let nets = store.table("networks")?;
        let mgr = NetworkManager {
            bridge_net: load_record(&nets, "bridge", "bridge")?,
            host_net: load_record(&nets, "host", "host")?,
            none_net: load_record(&nets, "none", "null")?,
            ipam: Ipam::new(store.table("ipam")?, subnet, "bridge"),
            ports: PortAllocator::new(store.table("ports")?, ephemeral_range()),
            kernel: Arc::new(kernel),
            cfg,
            subnet,
            locks: Mutex::new(HashMap::new()),
        };
        if verify {
            mgr.kernel.ensure_bridge(&mgr.bridge_spec()).await?;
            mgr.kernel.enable_ip_forward().await?;
            mgr.sync_firewall().await?;
            mgr.kernel.prepare_netns_dir(&mgr.netns_dir()).await?;
        }
        Ok(mgr)
    }

    fn bridge_spec(&self) -> BridgeSpec {
        BridgeSpec {
            name: self.cfg.bridge.clone(),
            gateway: self.subnet.gateway,
            prefix_len: self.subnet.net.prefix_len(),
            mtu: MTU,
        }
    }

    pub(crate) async fn sync_firewall(&self) -> ApiResult<()> {
        let table = &self.cfg.nft_table;
        let owner = bridge_owner(&self.cfg.bridge);
        self.apply_rules(&owner, &bridge_rules(&self.cfg.bridge, self.subnet.net))
            .await?;
        if let Ok(Some(chains)) = self.kernel.nft_list("chains").await {
            for chain in foreign_forward_drops(&chains, table) {
                tracing::warn!(
                    %chain,
                    "forward chain with policy drop in another table: container traffic \
                     may be dropped there (berth cannot override it; add an accept for {})",
                    self.cfg.bridge
                );
            }
        }
        Ok(())
    }

    /// Brings `owner`'s rules in berth's table to `wanted` (only what differs changes).
    pub(super) async fn apply_rules(&self, owner: &str, wanted: &[Rule]) -> ApiResult<()> {
        let table = &self.cfg.nft_table;
        let listing = match self.kernel.nft_list(&format!("table inet {table}")).await? {
            Some(json) => Some(parse_listing(&json)?),
            None => None,
        };
        if let Some(script) = plan(table, listing.as_ref(), owner, wanted) {
            tracing::debug!(%script, "applying nftables changes");
            self.kernel.nft_apply(&script).await?;
        }
        Ok(())
    }

    /// The kernel implementation (tests inspect their fake through it).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The configuration the manager was opened with.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The default bridge's subnet and gateway (`host-gateway` in `--add-host`).
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Directory of the netns files.
    pub fn netns_dir(&self) -> PathBuf {
        self.cfg.exec_root.join("netns")
    }

    /// Where a container's network namespace is (or would be) bound.
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        netns_path(&self.cfg.exec_root, container_id)
    }

    pub(super) async fn lock(
        &self,
        container_id: &str,
    ) -> ApiResult<tokio::sync::OwnedMutexGuard<()>> {
        let m = {
            let mut map = self
                .locks
                .lock()
                .map_err(|_| ApiError::Internal("network lock poisoned".into()))?;
            map.entry(container_id.to_string()).or_default().clone()
        };
        Ok(m.lock_owned().await)
    }

    fn plain_attachment(&self, net: &NetworkRecord, cid: &str, key: Option<&Path>) -> Attachment {
        Attachment {
            network: net.name.clone(),
            network_id: net.id.clone(),
            endpoint_id: endpoint_id(&net.id, cid),
            sandbox_key: key
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ip: None,
            prefix_len: 0,
            gateway: None,
            mac: String::new(),
            host_veth: None,
            host_gateway: Some(self.subnet.gateway),
            ports: Vec::new(),
        }
    }

    fn bridge_attachment(&self, lease: &Lease, key: &Path) -> Attachment {
        Attachment {
            network: "bridge".into(),
            network_id: self.bridge_net.id.clone(),
            endpoint_id: lease.endpoint_id.clone(),
            sandbox_key: key.to_string_lossy().into_owned(),
            ip: Some(lease.ip),
            prefix_len: lease.prefix_len,
            gateway: Some(self.subnet.gateway),
            mac: lease.mac.clone(),
            host_veth: lease.veth.clone(),
            host_gateway: Some(self.subnet.gateway),
            ports: Vec::new(),
        }
    }

    async fn ensure_netns(&self, path: &Path) -> ApiResult<bool> {
        if self.kernel.netns_exists(path).await {
            return Ok(false);
        }
        self.kernel.create_netns(path).await?;
        Ok(true)
    }

    /// Gives the container its network (idempotent: what exists and is right is reused).
    pub async fn ensure(&self, container_id: &str, req: &NetRequest) -> ApiResult<Attachment> {
        check_container_id(container_id)?;
        let _g = self.lock(container_id).await?;
        match &req.mode {
            NetMode::Host => Ok(self.plain_attachment(&self.host_net, container_id, None)),
            NetMode::None => {
                let path = self.netns_path(container_id);
                self.ensure_netns(&path).await?;
                Ok(self.plain_attachment(&self.none_net, container_id, Some(&path)))
            }
            NetMode::Container(path) => {
                let path = PathBuf::from(path);
                if !self.kernel.netns_exists(&path).await {
                    return Err(ApiError::Conflict(format!(
                        "cannot join network namespace {}: it does not exist",
                        path.display()
                    )));
                }
                Ok(Attachment {
                    network: String::new(),
                    network_id: String::new(),
                    endpoint_id: String::new(),
                    sandbox_key: path.to_string_lossy().into_owned(),
                    ip: None,
                    prefix_len: 0,
                    gateway: None,
                    mac: String::new(),
                    host_veth: None,
                    host_gateway: Some(self.subnet.gateway),
                    ports: Vec::new(),
                })
            }
            NetMode::Bridge => self.ensure_bridge_endpoint(container_id, req).await,
        }
    }

    async fn ensure_bridge_endpoint(&self, cid: &str, req: &NetRequest) -> ApiResult<Attachment> {
        let want_mac = req.mac.as_deref().map(parse_mac).transpose()?;
        let path = self.netns_path(cid);
        let fresh = self.ensure_netns(&path).await?;
        let prefix_len = self.subnet.net.prefix_len();
        let mut lease = self.ipam.acquire(cid, |ip| Lease {
            container_id: cid.to_string(),
            name: req.name.clone(),
            network: "bridge".into(),
            ip,
            prefix_len,
            mac: format_mac(&want_mac.unwrap_or_else(|| mac_for_ip(ip))),
            endpoint_id: endpoint_id(&self.bridge_net.id, cid),
            veth: None,
        })?;
        let mac = want_mac.unwrap_or_else(|| mac_for_ip(lease.ip));
        let mac_changed = lease.mac != format_mac(&mac);
        if lease.name != req.name || mac_changed {
            lease.name = req.name.clone();
            lease.mac = format_mac(&mac);
            self.ipam.update(&lease)?;
        }
        if let (false, false, Some(v)) = (fresh, mac_changed, &lease.veth) {
            if self.kernel.veth_attached(v, &self.cfg.bridge).await? {
                return Ok(self.bridge_attachment(&lease, &path));
            }
        }
        if let Some(old) = lease.veth.take() {
            self.kernel.delete_link(&old).await?;
        }
        // Heals a bridge deleted behind our back since open (no-op when it is right).
        self.kernel.ensure_bridge(&self.bridge_spec()).await?;
        let host = format!("veth{}", random_hex(7));
        let spec = VethSpec {
            host: host.clone(),
            bridge: self.cfg.bridge.clone(),
            netns: path.clone(),
            ifname: "eth0".into(),
            mac,
            ip: lease.ip,
            prefix_len,
            gateway: self.subnet.gateway,
            mtu: MTU,
        };
        if let Err(e) = self.kernel.add_veth(&spec).await {
            if let Err(e2) = self.kernel.delete_link(&host).await {
                tracing::warn!(veth = %host, error = %e2, "cleanup after failed veth setup");
            }
            return Err(e);
        }
        lease.veth = Some(host);
        self.ipam.update(&lease)?;
        Ok(self.bridge_attachment(&lease, &path))
    }

    async fn teardown(&self, cid: &str) -> ApiResult<Option<Lease>> {
        let lease = self.ipam.get(cid)?;
        self.kernel.remove_netns(&self.netns_path(cid)).await?;
        if let Some(l) = lease.as_ref().filter(|l| l.veth.is_some()) {
            // After the netns (no new flows from it), before the address can be reused.
            if let Err(e) = self.kernel.flush_conntrack(l.ip).await {
                tracing::warn!(ip = %l.ip, error = %e, "flush connection tracking");
            }
        }
        if let Some(v) = lease.as_ref().and_then(|l| l.veth.clone()) {
            // Deleting a veth waits ~25 ms for the kernel's RCU grace period. With the netns
            // file gone the kernel destroys the namespace, and the veth pair with it, on its
            // own; the explicit delete (for a netns still held by some process) runs off the
            // caller's path. `reconcile` removes any veth a crash leaves behind.
            let kernel = self.kernel.clone();
            tokio::spawn(async move {
                if let Err(e) = kernel.delete_link(&v).await {
                    tracing::debug!(veth = %v, error = %e, "delete veth");
                }
            });
        }
        Ok(lease)
    }

    /// Removes the container's veth and netns but keeps its address lease (for a stopped
    /// container that keeps its IP). Idempotent.
    pub async fn detach(&self, container_id: &str) -> ApiResult<()> {
        check_container_id(container_id)?;
        let _g = self.lock(container_id).await?;
        self.unpublish_locked(container_id).await?;
        if let Some(mut lease) = self.teardown(container_id).await? {
            if lease.veth.take().is_some() {
                self.ipam.update(&lease)?;
            }
        }
        Ok(())
    }

    /// Removes everything of the container: veth, netns file and address lease.
    /// Idempotent (missing things are fine).
    pub async fn release(&self, container_id: &str) -> ApiResult<()> {
        check_container_id(container_id)?;
        {
            let _g = self.lock(container_id).await?;
            self.unpublish_locked(container_id).await?;
            self.teardown(container_id).await?;
            self.ipam.release(container_id)?;
        }
        if let Ok(mut map) = self.locks.lock() {
            map.remove(container_id);
        }
        Ok(())
    }

    /// Removes the netns files, veths and leases of containers not in `live` (leftovers
    /// of a crash); keeps everything of live containers as it is.
    pub async fn reconcile(&self, live: &[String]) -> ApiResult<()> {
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut keep_veths = HashSet::new();
        for lease in self.ipam.all()? {
            if live.contains(lease.container_id.as_str()) {
                keep_veths.extend(lease.veth);
            } else {
                tracing::info!(container = %lease.container_id, "releasing leftover network");
                self.release(&lease.container_id).await?;
            }
        }
        self.reconcile_ports(&live).await?;
        let dir = self.netns_dir();
        for name in self.kernel.list_netns(&dir).await? {
            if !live.contains(name.as_str()) {
                tracing::info!(netns = %name, "removing leftover network namespace");
                self.kernel.remove_netns(&dir.join(&name)).await?;
            }
        }
        for port in self.kernel.bridge_ports(&self.cfg.bridge).await? {
            if port.starts_with("veth") && !keep_veths.contains(&port) {
                tracing::info!(veth = %port, "removing leftover veth");
                self.kernel.delete_link(&port).await?;
            }
        }
        Ok(())
    }

    /// Traffic counters of the interfaces (but `lo`) in a network namespace.
    pub async fn interface_stats(&self, netns: &Path) -> ApiResult<Vec<(String, IfStats)>> {
        self.kernel.interface_stats(netns).await
    }

    fn bridge_resource(&self, with_containers: bool) -> ApiResult<NetworkResource> {
        let n = &self.bridge_net;
        let mut r = NetworkResource::builtin(&n.name, &n.id, &n.created, &n.driver);
        r.ipam.config.push(IpamConfig {
            subnet: self.subnet.net.to_string(),
            // dockerd shows the gateway of the default bridge only when --bip sets it.
            gateway: self
                .cfg
                .bip
                .is_some()
                .then(|| self.subnet.gateway.to_string()),
        });
        r.options = default_bridge_options(&self.cfg.bridge, MTU);
        if with_containers {
            for l in self.ipam.all()?.into_iter().filter(|l| l.veth.is_some()) {
                let ep = EndpointResource {
                    name: l.name,
                    endpoint_id: l.endpoint_id,
                    mac_address: l.mac,
                    ipv4_address: format!("{}/{}", l.ip, l.prefix_len),
                    ipv6_address: String::new(),
                };
                r.containers.insert(l.container_id, ep);
            }
        }
        Ok(r)
    }

    fn resources(&self, with_containers: bool) -> ApiResult<Vec<NetworkResource>> {
        let plain =
            |n: &NetworkRecord| NetworkResource::builtin(&n.name, &n.id, &n.created, &n.driver);
        Ok(vec![
            self.bridge_resource(with_containers)?,
            plain(&self.host_net),
            plain(&self.none_net),
        ])
    }

    /// `GET /networks`: the built-in networks (`Containers` empty, as dockerd lists them).
    pub fn networks(&self) -> ApiResult<Vec<NetworkResource>> {
        self.resources(false)
    }

    /// `GET /networks/{id}`: by exact name, full id or unique id prefix; 404
    /// `network <x> not found` otherwise.
    pub fn inspect(&self, name_or_id: &str) -> ApiResult<NetworkResource> {
        let not_found = || ApiError::NotFound(format!("network {name_or_id} not found"));
        if name_or_id.is_empty() {
            return Err(not_found());
        }
        let all = self.resources(true)?;
        if let Some(r) = all
            .iter()
            .find(|r| r.name == name_or_id || r.id == name_or_id)
        {
            return Ok(r.clone());
        }
        let mut by_prefix = all.into_iter().filter(|r| r.id.starts_with(name_or_id));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(r), None) => Ok(r),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
                "network {name_or_id} is ambiguous"
            ))),
            _ => Err(not_found()),
        }
    }

    /// The gateway of the default bridge (what `host-gateway` resolves to).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway
    }
}
