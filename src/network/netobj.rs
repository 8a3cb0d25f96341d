//! User-defined network objects on the [`NetworkManager`]: `network create`, `rm` and
//! `prune`, the lookup by name, id or id prefix, their bridges (`br-<12 hex of the id>`)
//! and the firewall of every bridge. A network is persisted before its bridge is made and
//! marked `removing` before it is torn down, so a crash at any point leaves a record the
//! next start either restores or finishes removing ([`NetworkManager::restore_user_networks`]).

use super::firewall::{
    bridge_owner, bridge_rules, foreign_forward_drops, isolation_rules, network_rules,
    parse_listing, plan_all,
};
use super::ipam::{Ipam, Lease};
use super::kernel::{BridgeSpec, Kernel};
use super::manager::{random_hex, NetworkManager};
use super::options::{split_vlan_parent, MacvlanOptions};
use super::usernet::{parse_create, pick_subnet, NetworkRecord, UserSpec};
use crate::error::{ApiError, ApiResult};
use berth_api::models::NetworkCreateRequest;

impl<K: Kernel> NetworkManager<K> {
    /// User networks, without those being removed.
    pub(super) fn user_records(&self) -> ApiResult<Vec<(NetworkRecord, UserSpec)>> {
        Ok(self
            .all_user_records()?
            .into_iter()
            .filter(|(_, s)| !s.removing)
            .collect())
    }

    fn all_user_records(&self) -> ApiResult<Vec<(NetworkRecord, UserSpec)>> {
        Ok(self
            .nets
            .all::<NetworkRecord>()?
            .into_iter()
            .filter_map(|(_, r)| r.user.clone().map(|s| (r, s)))
            .collect())
    }

    /// A user network by exact name, full id or unique id prefix (404 otherwise).
    pub(super) fn find_user(&self, name_or_id: &str) -> ApiResult<(NetworkRecord, UserSpec)> {
        let not_found = || ApiError::NotFound(format!("network {name_or_id} not found"));
        let all = self.user_records()?;
        if let Some(hit) = all
            .iter()
            .find(|(r, _)| r.name == name_or_id || r.id == name_or_id)
        {
            return Ok(hit.clone());
        }
        if name_or_id.is_empty() {
            return Err(not_found());
        }
        let mut by_prefix = all
            .into_iter()
            .filter(|(r, _)| r.id.starts_with(name_or_id));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(hit), None) => Ok(hit),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
                "network {name_or_id} is ambiguous"
            ))),
            _ => Err(not_found()),
        }
    }

    /// The leases of a user network.
    pub(super) fn user_ipam(&self, rec: &NetworkRecord, spec: &UserSpec) -> Ipam {
        Ipam::scoped(
            self.leases.clone(),
            spec.plan(),
            spec.ip_range,
            &rec.name,
            format!("{}/", rec.id),
            self.lease_lock.clone(),
        )
    }

    pub(super) fn user_bridge_spec(spec: &UserSpec) -> BridgeSpec {
        BridgeSpec {
            name: spec.bridge.clone(),
            gateway: spec.gateway,
            prefix_len: spec.subnet.prefix_len(),
            mtu: spec.mtu,
        }
    }

    /// `POST /networks/create`: validates, persists, makes the bridge and its rules.
    /// Returns the new network's id.
    pub async fn create_network(&self, req: &NetworkCreateRequest) -> ApiResult<String> {
        let c = parse_create(req, super::manager::MTU)?;
        let _g = self.net_lock.lock().await;
        let all = self.all_user_records()?;
        if all.iter().any(|(r, _)| r.name == c.name) {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                c.name
            )));
        }
        let mut taken = vec![self.subnet.net];
        taken.extend(all.iter().map(|(_, s)| s.subnet));
        let (subnet, gateway, ip_range, configured) = match c.pool {
            Some((net, gw, range)) => {
                if taken
                    .iter()
                    .any(|t| t.contains(&net.network()) || net.contains(&t.network()))
                {
                    return Err(ApiError::Forbidden(
                        "Pool overlaps with other one on this address space".into(),
                    ));
                }
                (net, gw, range, true)
            }
            None => {
                let routes = self.kernel.ipv4_routes().await?;
                (pick_subnet(&taken, &routes)?, None, None, false)
            }
        };
        let first_host = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let id = random_hex(64);
        if let Some(m) = &c.macvlan {
            self.check_macvlan_parent(m, &all).await?;
        }
        if let Some(o) = &c.sriov {
            // The PF must be an SR-IOV PF with VFs (the driver's error names it).
            self.sriov.free_vfs(&o.parent)?;
        }
        let bridged = c.macvlan.is_none() && c.sriov.is_none();
        let bridge = match (bridged, &c.bridge_name) {
            (false, _) => String::new(),
            (true, Some(b)) => b.clone(),
            (true, None) => format!("br-{}", &id[..12]),
        };
        if bridged && (bridge == self.cfg.bridge || all.iter().any(|(_, s)| s.bridge == bridge)) {
            return Err(ApiError::Forbidden(format!(
                "bridge name {bridge} is already in use by another network"
            )));
        }
        let spec = UserSpec {
            subnet,
            gateway: gateway.unwrap_or(first_host),
            ip_range,
            subnet_configured: configured,
            gateway_configured: gateway.is_some(),
            internal: c.internal,
            attachable: c.attachable,
            labels: c.labels,
            options: c.options,
            ipam_options: c.ipam_options,
            bridge,
            mtu: c.mtu,
            masquerade: c.masquerade,
            removing: false,
            macvlan: c.macvlan,
            sriov: c.sriov,
        };
        let rec = NetworkRecord {
            name: c.name.clone(),
            id: id.clone(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            driver: c.driver,
            user: Some(spec.clone()),
        };
        if !self.nets.put_new(&rec.name, &rec)? {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                c.name
            )));
        }
        if !spec.has_bridge() {
            return Ok(id);
        }
        let made = async {
            self.kernel
                .ensure_bridge(&Self::user_bridge_spec(&spec))
                .await?;
            self.kernel.enable_ip_forward().await?;
            self.sync_firewall().await
        }
        .await;
        if let Err(e) = made {
            tracing::warn!(network = %rec.name, error = %e, "network create failed; rolling back");
            if let Err(e2) = self.kernel.delete_link(&spec.bridge).await {
                tracing::warn!(bridge = %spec.bridge, error = %e2, "roll back the bridge");
            }
            self.nets.remove(&rec.name)?;
            if let Err(e2) = self.sync_firewall().await {
                tracing::warn!(error = %e2, "roll back the firewall");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// dockerd's checks of a macvlan parent: it exists on the host (a missing `name.vid`
    /// parent would be an 802.1Q sub-interface dockerd creates; the target kernels lack
    /// 802.1Q) and no other macvlan network uses it.
    async fn check_macvlan_parent(
        &self,
        m: &MacvlanOptions,
        all: &[(NetworkRecord, UserSpec)],
    ) -> ApiResult<()> {
        if let Some((r, _)) = all
            .iter()
            .find(|(_, s)| s.macvlan.as_ref().is_some_and(|o| o.parent == m.parent))
        {
            return Err(ApiError::Internal(format!(
                "network {} is already using parent interface {}",
                r.id, m.parent
            )));
        }
        if self.kernel.link_exists(&m.parent).await? {
            return Ok(());
        }
        if m.parent.contains('.') {
            let (link, vid) = split_vlan_parent(&m.parent)?;
            return Err(ApiError::NotImplemented(format!(
                "cannot create the 802.1Q sub-interface {} (vlan {vid} on {link}): create it \
                 on the host first and pass it as the parent",
                m.parent
            )));
        }
        Err(ApiError::Internal(format!(
            "-o parent interface was not found on the host: {}",
            m.parent
        )))
    }

    /// Whether the network has an endpoint of a running container (a veth).
    fn active_endpoints(&self, rec: &NetworkRecord, spec: &UserSpec) -> ApiResult<bool> {
        Ok(self
            .user_ipam(rec, spec)
            .all()?
            .iter()
            .any(|l: &Lease| l.veth.is_some()))
    }

    /// `DELETE /networks/{id}`: 403 for the built-in networks and for a network with
    /// active endpoints; removes bridge, rules and the leases of stopped containers.
    pub async fn remove_network(&self, name_or_id: &str) -> ApiResult<()> {
        for b in [&self.bridge_net, &self.host_net, &self.none_net] {
            if b.name == name_or_id || (!name_or_id.is_empty() && b.id.starts_with(name_or_id)) {
                return Err(ApiError::Forbidden(format!(
                    "{} is a pre-defined network and cannot be removed",
                    b.name
                )));
            }
        }
        let _g = self.net_lock.lock().await;
        let (rec, spec) = self.find_user(name_or_id)?;
        if self.active_endpoints(&rec, &spec)? {
            return Err(ApiError::Forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                rec.name, rec.id
            )));
        }
        self.teardown_network(rec, spec).await
    }

    async fn teardown_network(&self, mut rec: NetworkRecord, mut spec: UserSpec) -> ApiResult<()> {
        spec.removing = true;
        rec.user = Some(spec.clone());
        self.nets.put(&rec.name, &rec)?;
        if spec.has_bridge() {
            self.kernel.delete_link(&spec.bridge).await?;
            self.sync_firewall().await?;
        }
        let ipam = self.user_ipam(&rec, &spec);
        for l in ipam.all()? {
            ipam.release(&l.container_id)?;
        }
        self.nets.remove(&rec.name)
    }

    /// `POST /networks/prune`: removes the user networks without active endpoints that
    /// match `keep` (the filters); returns their names.
    pub async fn prune_networks(
        &self,
        keep: impl Fn(&super::NetworkResource) -> bool,
    ) -> ApiResult<Vec<String>> {
        let _g = self.net_lock.lock().await;
        let mut out = Vec::new();
        for (rec, spec) in self.user_records()? {
            let view = super::usernet::user_resource(&rec, &spec);
            if !keep(&view) || self.active_endpoints(&rec, &spec)? {
                continue;
            }
            let name = rec.name.clone();
            self.teardown_network(rec, spec).await?;
            out.push(name);
        }
        out.sort();
        Ok(out)
    }

    /// After a crash: makes every user network's bridge right and finishes removals that
    /// were cut short.
    pub(super) async fn restore_user_networks(&self) -> ApiResult<()> {
        for (rec, spec) in self.all_user_records()? {
            if spec.removing {
                tracing::info!(network = %rec.name, "finishing an interrupted network removal");
                self.teardown_network(rec, spec).await?;
            } else if spec.has_bridge() {
                self.kernel
                    .ensure_bridge(&Self::user_bridge_spec(&spec))
                    .await?;
            }
        }
        Ok(())
    }

    /// Brings berth's nft table to the rules of the default bridge and every user network
    /// (with dockerd's isolation: no traffic between two networks); rules of bridges no
    /// longer known are deleted, rules that are right stay.
    pub(crate) async fn sync_firewall(&self) -> ApiResult<()> {
        let table = &self.cfg.nft_table;
        let listing = match self.kernel.nft_list(&format!("table inet {table}")).await? {
            Some(json) => Some(parse_listing(&json)?),
            None => None,
        };
        let mut users = self.user_records()?;
        users.retain(|(_, s)| s.has_bridge());
        let mut all: Vec<&str> = vec![self.cfg.bridge.as_str()];
        all.extend(users.iter().map(|(_, s)| s.bridge.as_str()));
        let mut default_rules = bridge_rules(&self.cfg.bridge, self.subnet.net);
        default_rules.extend(isolation_rules(&self.cfg.bridge, &all));
        let mut owners = vec![(bridge_owner(&self.cfg.bridge), default_rules)];
        for (_, s) in &users {
            let mut rules = network_rules(&s.bridge, s.subnet, s.masquerade, s.internal);
            rules.extend(isolation_rules(&s.bridge, &all));
            owners.push((bridge_owner(&s.bridge), rules));
        }
        if let Some(script) = plan_all(table, listing.as_ref(), &owners, true) {
            tracing::debug!(%script, "applying nftables changes");
            self.kernel.nft_apply(&script).await?;
        }
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
}
