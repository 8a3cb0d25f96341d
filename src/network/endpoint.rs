//! Container endpoints on bridge networks (the default `bridge` and user-defined ones):
//! the address lease, the veth pair into the container's netns, and their removal when the
//! container stops (`detach`, the lease stays) or goes (`release`), plus the crash
//! reconcile of leftovers. Everything is idempotent: what exists and is right is reused.

use super::ipam::IN_NETNS;
use super::ipam::{Ipam, Lease};
use super::kernel::{BridgeSpec, Kernel, VethSpec};
use super::manager::{check_container_id, endpoint_id, random_hex, NetworkManager};
use super::options::{MacvlanOptions, SriovOptions};
use super::types::{format_mac, mac_for_ip, parse_mac, Attachment, NetRequest};
use super::usernet::{NetworkRecord, UserSpec};
use crate::error::{ApiError, ApiResult};
use std::collections::HashSet;
use std::path::Path;

/// One bridge network as an endpoint needs it.
pub(super) struct EpNet<'a> {
    /// Network id.
    pub id: &'a str,
    /// Network name.
    pub name: &'a str,
    /// The network's bridge (ensured before a veth is added, healing a deleted bridge).
    pub bridge: BridgeSpec,
    /// The network's leases.
    pub ipam: &'a Ipam,
    /// Whether the network is user-defined.
    pub user: bool,
    /// Interface name inside the container (`eth0` for the `NetworkMode` network).
    pub ifname: String,
    /// Joined with `docker network connect`: no default route, remembered in the lease.
    pub extra: bool,
    /// A macvlan network: the endpoint is a macvlan child of this parent in the
    /// container's netns instead of a veth on `bridge` (whose gateway it routes through).
    pub macvlan: Option<MacvlanOptions>,
    /// An sriov network: the endpoint is a VF of this PF moved into the container's netns.
    pub sriov: Option<SriovOptions>,
    /// An `--internal` network: no default route through it.
    pub internal: bool,
}

impl<K: Kernel> NetworkManager<K> {
    pub(super) async fn ensure_bridge_endpoint(
        &self,
        cid: &str,
        req: &NetRequest,
    ) -> ApiResult<Attachment> {
        if req.ip.is_some() {
            return Err(ApiError::BadRequest(
                "user specified IP address is supported on user defined networks only".into(),
            ));
        }
        if !req.aliases.is_empty() {
            return Err(ApiError::BadRequest(
                "network-scoped alias is supported only for containers in user defined networks"
                    .into(),
            ));
        }
        let ep = EpNet {
            id: &self.bridge_net.id,
            name: "bridge",
            bridge: self.bridge_spec(),
            ipam: &self.ipam,
            user: false,
            ifname: "eth0".into(),
            extra: false,
            macvlan: None,
            sriov: None,
            internal: false,
        };
        self.ensure_endpoint(cid, req, &ep).await
    }

    /// The endpoint description of a user network (`extra`: joined by `network connect`
    /// as `ifname`).
    pub(super) fn user_epnet<'a>(
        rec: &'a NetworkRecord,
        spec: &UserSpec,
        ipam: &'a Ipam,
        ifname: String,
        extra: bool,
    ) -> EpNet<'a> {
        EpNet {
            id: &rec.id,
            name: &rec.name,
            bridge: Self::user_bridge_spec(spec),
            ipam,
            user: true,
            ifname,
            extra,
            macvlan: spec.macvlan.clone(),
            sriov: spec.sriov.clone(),
            internal: spec.internal,
        }
    }

    pub(super) async fn ensure_user_endpoint(
        &self,
        cid: &str,
        name: &str,
        req: &NetRequest,
    ) -> ApiResult<Attachment> {
        let (rec, spec) = self.find_user(name)?;
        if req.ip.is_some() && !spec.subnet_configured {
            return Err(ApiError::BadRequest(
                "user specified IP address is supported only when connecting to networks with \
                 user configured subnets"
                    .into(),
            ));
        }
        let ipam = self.user_ipam(&rec, &spec);
        let ep = Self::user_epnet(&rec, &spec, &ipam, "eth0".into(), false);
        self.ensure_endpoint(cid, req, &ep).await
    }

    pub(super) fn endpoint_attachment(
        &self,
        ep: &EpNet<'_>,
        lease: &Lease,
        key: &Path,
        req: &NetRequest,
    ) -> Attachment {
        Attachment {
            network: ep.name.to_string(),
            network_id: ep.id.to_string(),
            endpoint_id: lease.endpoint_id.clone(),
            sandbox_key: key.to_string_lossy().into_owned(),
            ip: Some(lease.ip),
            prefix_len: lease.prefix_len,
            gateway: Some(ep.bridge.gateway),
            mac: lease.mac.clone(),
            host_veth: lease.host_veth().map(str::to_string),
            host_gateway: Some(self.subnet.gateway),
            ports: Vec::new(),
            ipam_ip: req.ip,
            aliases: req.aliases.clone(),
            user_network: ep.user,
        }
    }

    pub(super) async fn ensure_endpoint(
        &self,
        cid: &str,
        req: &NetRequest,
        ep: &EpNet<'_>,
    ) -> ApiResult<Attachment> {
        let want_mac = req.mac.as_deref().map(parse_mac).transpose()?;
        let path = self.netns_path(cid);
        let fresh = self.ensure_netns(&path).await?;
        let prefix_len = ep.bridge.prefix_len;
        let mut lease = ep.ipam.acquire_ip(cid, req.ip, |ip| Lease {
            container_id: cid.to_string(),
            name: req.name.clone(),
            network: ep.name.to_string(),
            ip,
            prefix_len,
            mac: format_mac(&want_mac.unwrap_or_else(|| mac_for_ip(ip))),
            endpoint_id: endpoint_id(ep.id, cid),
            veth: None,
            aliases: req.aliases.clone(),
            hosts: req.hosts_file.clone(),
            connected_as: ep.extra.then(|| ep.ifname.clone()),
            requested_ip: req.ip,
        })?;
        let mac = want_mac.unwrap_or_else(|| mac_for_ip(lease.ip));
        let mac_changed = lease.mac != format_mac(&mac);
        if lease.name != req.name
            || mac_changed
            || lease.aliases != req.aliases
            || lease.hosts != req.hosts_file
        {
            lease.name = req.name.clone();
            lease.mac = format_mac(&mac);
            lease.aliases = req.aliases.clone();
            lease.hosts = req.hosts_file.clone();
            ep.ipam.update(&lease)?;
        }
        if let Some(opts) = &ep.macvlan {
            return self
                .ensure_macvlan_link(opts, ep, lease, mac, &path, req)
                .await;
        }
        if let Some(opts) = &ep.sriov {
            return self.ensure_vf(opts, ep, lease, mac, &path, req).await;
        }
        if let (false, false, Some(v)) = (fresh, mac_changed, lease.host_veth()) {
            if self.kernel.veth_attached(v, &ep.bridge.name).await? {
                return Ok(self.endpoint_attachment(ep, &lease, &path, req));
            }
        }
        if let Some(old) = lease.veth.take() {
            if !old.starts_with(IN_NETNS) {
                self.kernel.delete_link(&old).await?;
            }
        }
        // Heals a bridge deleted behind our back since open (no-op when it is right).
        self.kernel.ensure_bridge(&ep.bridge).await?;
        let host = format!("veth{}", random_hex(7));
        let spec = VethSpec {
            host: host.clone(),
            bridge: ep.bridge.name.clone(),
            netns: path.clone(),
            ifname: ep.ifname.clone(),
            mac,
            ip: lease.ip,
            prefix_len,
            gateway: ep.bridge.gateway,
            default_route: !ep.extra,
            mtu: ep.bridge.mtu,
        };
        if let Err(e) = self.kernel.add_veth(&spec).await {
            if let Err(e2) = self.kernel.delete_link(&host).await {
                tracing::warn!(veth = %host, error = %e2, "cleanup after failed veth setup");
            }
            return Err(e);
        }
        lease.veth = Some(host);
        ep.ipam.update(&lease)?;
        Ok(self.endpoint_attachment(ep, &lease, &path, req))
    }

    /// The macvlan child of a container on a macvlan network (idempotent: the kernel side
    /// keeps a link that is right and replaces a stale one).
    async fn ensure_macvlan_link(
        &self,
        opts: &MacvlanOptions,
        ep: &EpNet<'_>,
        mut lease: Lease,
        mac: [u8; 6],
        path: &Path,
        req: &NetRequest,
    ) -> ApiResult<Attachment> {
        let gateway = (!ep.extra && !ep.internal).then_some(ep.bridge.gateway);
        super::macvlan::attach(
            self.kernel.as_ref(),
            opts,
            path.to_path_buf(),
            &ep.ifname,
            mac,
            lease.ip,
            lease.prefix_len,
            gateway,
        )
        .await?;
        let mark = format!("{IN_NETNS}{}", ep.ifname);
        if lease.veth.as_deref() != Some(mark.as_str()) {
            lease.veth = Some(mark);
            ep.ipam.update(&lease)?;
        }
        Ok(self.endpoint_attachment(ep, &lease, path, req))
    }

    /// The container's leases on user networks, with their store keys.
    pub(super) fn user_leases_of(&self, cid: &str) -> ApiResult<Vec<(String, Lease)>> {
        Ok(self
            .leases
            .all::<Lease>()?
            .into_iter()
            .filter(|(_, l)| l.container_id == cid)
            .collect())
    }

    /// Removes the netns and the veths; returns the container's leases (default bridge
    /// first, then user networks with their keys).
    async fn teardown(&self, cid: &str) -> ApiResult<(Option<Lease>, Vec<(String, Lease)>)> {
        let lease = self.ipam.get(cid)?;
        let user = self.user_leases_of(cid)?;
        self.release_vfs(cid).await?;
        self.kernel.remove_netns(&self.netns_path(cid)).await?;
        for l in lease.iter().chain(user.iter().map(|(_, l)| l)) {
            if l.veth.is_some() {
                // After the netns (no new flows from it), before the address is reused: a
                // UDP flow to a published port must not stay DNATed to a dead endpoint.
                if let Err(e) = self.kernel.flush_conntrack(l.ip).await {
                    tracing::warn!(ip = %l.ip, error = %e, "flush connection tracking");
                }
            }
        }
        let veths: Vec<String> = lease
            .iter()
            .chain(user.iter().map(|(_, l)| l))
            .filter_map(|l| l.host_veth().map(str::to_string))
            .collect();
        for v in veths {
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
        Ok((lease, user))
    }

    /// Removes the container's veth and netns but keeps its address leases (for a stopped
    /// container that keeps its IP). Idempotent.
    pub async fn detach(&self, container_id: &str) -> ApiResult<()> {
        check_container_id(container_id)?;
        let _g = self.lock(container_id).await?;
        self.unpublish_locked(container_id).await?;
        let (lease, user) = self.teardown(container_id).await?;
        if let Some(mut lease) = lease {
            if lease.veth.take().is_some() {
                self.ipam.update(&lease)?;
            }
        }
        for (key, mut l) in user {
            if l.veth.take().is_some() {
                let _g = self
                    .lease_lock
                    .lock()
                    .map_err(|_| ApiError::Internal("ipam: lock poisoned".into()))?;
                self.leases.put(&key, &l)?;
            }
        }
        self.refresh_hosts_logged();
        Ok(())
    }

    /// Removes everything of the container: veths, netns file and address leases.
    /// Idempotent (missing things are fine).
    pub async fn release(&self, container_id: &str) -> ApiResult<()> {
        check_container_id(container_id)?;
        {
            let _g = self.lock(container_id).await?;
            self.unpublish_locked(container_id).await?;
            let (_, user) = self.teardown(container_id).await?;
            self.ipam.release(container_id)?;
            let _g = self
                .lease_lock
                .lock()
                .map_err(|_| ApiError::Internal("ipam: lock poisoned".into()))?;
            for (key, _) in user {
                self.leases.remove(&key)?;
            }
        }
        self.refresh_hosts_logged();
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
        let mut gone = HashSet::new();
        let user: Vec<Lease> = self
            .leases
            .all::<Lease>()?
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        for lease in self.ipam.all()?.into_iter().chain(user) {
            if live.contains(lease.container_id.as_str()) {
                keep_veths.extend(lease.veth);
            } else {
                gone.insert(lease.container_id);
            }
        }
        for cid in gone {
            tracing::info!(container = %cid, "releasing leftover network");
            self.release(&cid).await?;
        }
        self.reconcile_vfs(&live).await;
        self.reconcile_ports(&live).await?;
        let dir = self.netns_dir();
        for name in self.kernel.list_netns(&dir).await? {
            if !live.contains(name.as_str()) {
                tracing::info!(netns = %name, "removing leftover network namespace");
                self.kernel.remove_netns(&dir.join(&name)).await?;
            }
        }
        let mut bridges = vec![self.cfg.bridge.clone()];
        bridges.extend(
            self.user_records()?
                .into_iter()
                .filter(|(_, s)| s.has_bridge())
                .map(|(_, s)| s.bridge),
        );
        for bridge in bridges {
            for port in self.kernel.bridge_ports(&bridge).await? {
                if port.starts_with("veth") && !keep_veths.contains(&port) {
                    tracing::info!(veth = %port, %bridge, "removing leftover veth");
                    self.kernel.delete_link(&port).await?;
                }
            }
        }
        self.refresh_hosts_logged();
        Ok(())
    }
}
