//! [`NetworkManager`]: sets up the default bridge, the user networks' bridges and the
//! firewall when the daemon starts, and gives each container its network (idempotently)
//! when it starts. Endpoints are in `endpoint.rs`, user network objects in `netobj.rs`.

use super::firewall::{parse_listing, plan_all, Rule};
use super::ipam::{Ipam, Lease};
use super::kernel::{BridgeSpec, IfStats, Kernel};
use super::netlink::NetlinkKernel;
use super::ports::{ephemeral_range, PortAllocator};
use super::resource::{default_bridge_options, EndpointResource, IpamConfig, NetworkResource};
use super::types::{netns_path, Attachment, NetConfig, NetMode, NetRequest, Subnet};
use super::usernet::NetworkRecord;
use crate::error::{ApiError, ApiResult};
use crate::store::{Store, Table};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// MTU of the default bridge and its veths (dockerd's default `--mtu`).
pub(crate) const MTU: u32 = 1500;
/// Default `--bip`.
const DEFAULT_BIP: &str = "172.17.0.1/16";

/// The daemon's network manager; see the module documentation.
pub struct NetworkManager<K: Kernel = NetlinkKernel> {
    pub(super) kernel: Arc<K>,
    pub(super) cfg: NetConfig,
    pub(super) subnet: Subnet,
    pub(super) ipam: Ipam,
    pub(super) bridge_net: NetworkRecord,
    pub(super) host_net: NetworkRecord,
    pub(super) none_net: NetworkRecord,
    /// Table `networks`: built-in and user network records by name.
    pub(super) nets: Table,
    /// Table `leases`: user networks' leases, key `<network id>/<container id>`.
    pub(super) leases: Table,
    /// Shared by every user network's [`Ipam`].
    pub(super) lease_lock: Arc<Mutex<()>>,
    /// Serializes network create/remove.
    pub(super) net_lock: tokio::sync::Mutex<()>,
    /// Serializes rewrites of the containers' hosts files.
    pub(super) hosts_lock: Mutex<()>,
    pub(super) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Host ports held by containers (`-p`, `-P`).
    pub(super) ports: PortAllocator,
    pub(super) sriov: super::sriov::SriovDriver<super::sriovnet::VfPf>,
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

pub(super) fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

pub(super) fn endpoint_id(network_id: &str, container_id: &str) -> String {
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
        user: None,
    };
    table.put_new(name, &fresh)?;
    table
        .get(name)?
        .ok_or_else(|| ApiError::Internal(format!("network {name}: record vanished")))
}

fn endpoint_resource(l: Lease) -> EndpointResource {
    EndpointResource {
        name: l.name,
        endpoint_id: l.endpoint_id,
        mac_address: l.mac,
        ipv4_address: format!("{}/{}", l.ip, l.prefix_len),
        ipv6_address: String::new(),
    }
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
            nets,
            leases: store.table("leases")?,
            lease_lock: Arc::new(Mutex::new(())),
            net_lock: tokio::sync::Mutex::new(()),
            hosts_lock: Mutex::new(()),
            ports: PortAllocator::new(store.table("ports")?, ephemeral_range()),
            kernel: Arc::new(kernel),
            sriov: super::sriovnet::open_driver(&cfg.sriov_sysfs_root, store)?,
            cfg,
            subnet,
            locks: Mutex::new(HashMap::new()),
        };
        if verify {
            mgr.kernel.ensure_bridge(&mgr.bridge_spec()).await?;
            mgr.restore_user_networks().await?;
            mgr.kernel.enable_ip_forward().await?;
            mgr.sync_firewall().await?;
            mgr.kernel.prepare_netns_dir(&mgr.netns_dir()).await?;
        }
        Ok(mgr)
    }

    pub(super) fn bridge_spec(&self) -> BridgeSpec {
        BridgeSpec {
            name: self.cfg.bridge.clone(),
            gateway: self.subnet.gateway,
            prefix_len: self.subnet.net.prefix_len(),
            mtu: MTU,
        }
    }

    /// Brings `owner`'s rules in berth's table to `wanted` (only what differs changes).
    pub(super) async fn apply_rules(&self, owner: &str, wanted: &[Rule]) -> ApiResult<()> {
        let table = &self.cfg.nft_table;
        let listing = match self.kernel.nft_list(&format!("table inet {table}")).await? {
            Some(json) => Some(parse_listing(&json)?),
            None => None,
        };
        let owners = [(owner.to_string(), wanted.to_vec())];
        if let Some(script) = plan_all(table, listing.as_ref(), &owners, false) {
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
            ipam_ip: None,
            aliases: Vec::new(),
            user_network: false,
        }
    }

    pub(super) async fn ensure_netns(&self, path: &Path) -> ApiResult<bool> {
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
                    ipam_ip: None,
                    aliases: Vec::new(),
                    user_network: false,
                })
            }
            NetMode::Bridge => self.ensure_bridge_endpoint(container_id, req).await,
            NetMode::User(name) => self.ensure_user_endpoint(container_id, name, req).await,
        }
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
            ip_range: None,
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
                r.containers
                    .insert(l.container_id.clone(), endpoint_resource(l));
            }
        }
        Ok(r)
    }

    pub(super) fn resources(&self, with_containers: bool) -> ApiResult<Vec<NetworkResource>> {
        let plain =
            |n: &NetworkRecord| NetworkResource::builtin(&n.name, &n.id, &n.created, &n.driver);
        let mut out = vec![
            self.bridge_resource(with_containers)?,
            plain(&self.host_net),
            plain(&self.none_net),
        ];
        for (rec, spec) in self.user_records()? {
            let mut r = super::usernet::user_resource(&rec, &spec);
            if with_containers {
                for l in self.user_ipam(&rec, &spec).all()? {
                    if l.veth.is_some() {
                        r.containers
                            .insert(l.container_id.clone(), endpoint_resource(l));
                    }
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// `GET /networks`: every network (`Containers` empty, as dockerd lists them).
    pub fn networks(&self) -> ApiResult<Vec<NetworkResource>> {
        self.resources(false)
    }

    /// Every network with its `Containers` (for the `dangling` filter).
    pub fn networks_with_containers(&self) -> ApiResult<Vec<NetworkResource>> {
        self.resources(true)
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
