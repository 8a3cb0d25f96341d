//! Several networks per container: `docker network connect` / `disconnect` on running and
//! stopped containers. A connected network is a lease marked with the interface name it
//! has inside the container (`eth1`, `eth2`, …); the default route stays on the
//! container's first network (`eth0`). A stopped container's connected networks keep their
//! leases (so their addresses) and get their veths back on its next start
//! ([`NetworkManager::ensure_connected`]).

use super::ipam::{Lease, IN_NETNS};
use super::kernel::Kernel;
use super::manager::{check_container_id, endpoint_id, NetworkManager};
use super::types::{format_mac, mac_for_ip, Attachment, NetMode, NetRequest};
use crate::error::{ApiError, ApiResult};
use std::path::PathBuf;

impl<K: Kernel> NetworkManager<K> {
    /// The first `ethN` (N ≥ 1) none of the container's connected networks uses.
    fn next_ifname(&self, cid: &str) -> ApiResult<String> {
        let used: Vec<String> = self
            .user_leases_of(cid)?
            .into_iter()
            .filter_map(|(_, l)| l.connected_as)
            .collect();
        Ok((1..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(n))
            .unwrap_or_else(|| "eth1".into()))
    }

    /// `POST /networks/{id}/connect`: joins the container to a user network (`running`:
    /// its veth is set up now; otherwise only the address is reserved). Returns the new
    /// attachment of a running container.
    pub async fn connect(
        &self,
        cid: &str,
        network: &str,
        req: &NetRequest,
        running: bool,
    ) -> ApiResult<Option<Attachment>> {
        check_container_id(cid)?;
        let _g = self.lock(cid).await?;
        let (rec, spec) = self.find_user(network)?;
        let ipam = self.user_ipam(&rec, &spec);
        if ipam.get(cid)?.is_some() {
            return Err(ApiError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                req.name, rec.name
            )));
        }
        if req.ip.is_some() && !spec.subnet_configured {
            return Err(ApiError::BadRequest(
                "user specified IP address is supported only when connecting to networks with \
                 user configured subnets"
                    .into(),
            ));
        }
        let ifname = self.next_ifname(cid)?;
        if !running {
            ipam.acquire_ip(cid, req.ip, |ip| Lease {
                container_id: cid.to_string(),
                name: req.name.clone(),
                network: rec.name.clone(),
                ip,
                prefix_len: spec.subnet.prefix_len(),
                mac: format_mac(&mac_for_ip(ip)),
                endpoint_id: endpoint_id(&rec.id, cid),
                veth: None,
                aliases: req.aliases.clone(),
                hosts: req.hosts_file.clone(),
                connected_as: Some(ifname.clone()),
                requested_ip: req.ip,
            })?;
            return Ok(None);
        }
        let ep = Self::user_epnet(&rec, &spec, &ipam, ifname, true);
        let att = self.ensure_endpoint(cid, req, &ep).await;
        if att.is_err() {
            // Nothing half-done stays: the lease goes with the failed veth.
            ipam.release(cid)?;
        }
        let att = att?;
        self.refresh_hosts_logged();
        Ok(Some(att))
    }

    /// `POST /networks/{id}/disconnect`: removes the container's endpoint (veth and lease)
    /// on a user network. Returns the network id.
    pub async fn disconnect(&self, cid: &str, network: &str) -> ApiResult<String> {
        check_container_id(cid)?;
        let _g = self.lock(cid).await?;
        let (rec, spec) = self.find_user(network)?;
        let ipam = self.user_ipam(&rec, &spec);
        let Some(lease) = ipam.get(cid)? else {
            return Err(ApiError::Forbidden(format!(
                "container {cid} is not connected to network {}",
                rec.name
            )));
        };
        if let Some(o) = &spec.sriov {
            self.sriov.release(&o.parent, cid).await?;
        } else if let Some(v) = lease.host_veth() {
            self.kernel.delete_link(v).await?;
        } else if let Some(ifname) = lease.veth.as_deref().and_then(|v| v.strip_prefix(IN_NETNS)) {
            self.kernel
                .delete_link_in(&self.netns_path(cid), ifname)
                .await?;
        }
        ipam.release(cid)?;
        self.refresh_hosts_logged();
        Ok(rec.id)
    }

    /// At a container's start, after its `NetworkMode` network: the veths of the networks
    /// it was connected to (idempotent).
    pub async fn ensure_connected(
        &self,
        cid: &str,
        name: &str,
        hosts_file: Option<PathBuf>,
    ) -> ApiResult<Vec<Attachment>> {
        check_container_id(cid)?;
        let _g = self.lock(cid).await?;
        let mut out = Vec::new();
        for (key, l) in self.user_leases_of(cid)? {
            let Some(ifname) = l.connected_as.clone() else {
                continue;
            };
            let Some((net_id, _)) = key.split_once('/') else {
                continue;
            };
            let (rec, spec) = self.find_user(net_id)?;
            let ipam = self.user_ipam(&rec, &spec);
            let req = NetRequest {
                mode: NetMode::User(rec.name.clone()),
                name: name.to_string(),
                mac: None,
                ip: l.requested_ip,
                aliases: l.aliases.clone(),
                hosts_file: hosts_file.clone(),
            };
            let ep = Self::user_epnet(&rec, &spec, &ipam, ifname, true);
            out.push(self.ensure_endpoint(cid, &req, &ep).await?);
        }
        Ok(out)
    }
}
