//! Publishing a container's ports on the host (see [`super::ports`]): the manager takes the
//! host ports, writes the forwarding rules into berth's table and removes both when the
//! container leaves its network. The rules stay in the kernel while berthd is down, so a
//! published port keeps answering through daemon crashes, restarts and upgrades.

use super::firewall::parse_listing;
use super::kernel::Kernel;
use super::manager::{check_container_id, NetworkManager};
use super::ports::{port_rules, ports_owner, BindProbe, PortBinding, PortRequest};
use crate::error::ApiResult;
use std::collections::HashSet;
use std::net::Ipv4Addr;

impl<K: Kernel> NetworkManager<K> {
    /// Takes the host ports `reqs` ask for and forwards them to the container at `ip` on
    /// `bridge` (`veth`: its host side, put in hairpin mode). Idempotent; on a failure
    /// nothing stays taken. `endpoint` names the container in errors as dockerd does:
    /// `name (endpoint id)`.
    pub async fn publish(
        &self,
        container_id: &str,
        endpoint: &str,
        bridge: &str,
        ip: Ipv4Addr,
        veth: Option<&str>,
        reqs: &[PortRequest],
    ) -> ApiResult<Vec<PortBinding>> {
        check_container_id(container_id)?;
        let _g = self.lock(container_id).await?;
        if reqs.is_empty() {
            self.unpublish_locked(container_id).await?;
            return Ok(Vec::new());
        }
        let bindings = self
            .ports
            .allocate(container_id, endpoint, reqs, &BindProbe)?;
        let owner = ports_owner(container_id);
        let res = async {
            self.kernel().enable_port_forwarding(bridge, veth).await?;
            let rules = port_rules(container_id, bridge, ip, &bindings);
            self.apply_rules(&owner, &rules).await
        }
        .await;
        if let Err(e) = res {
            let _ = self.unpublish_locked(container_id).await;
            return Err(e);
        }
        Ok(bindings)
    }

    /// The bridge device of the network an attachment is on (`None`: not a bridge network).
    pub fn bridge_of(&self, att: &super::Attachment) -> Option<String> {
        if att.network == "bridge" {
            return Some(self.config().bridge.clone());
        }
        self.find_user(&att.network_id)
            .ok()
            .filter(|(_, s)| s.has_bridge())
            .map(|(_, s)| s.bridge)
    }

    /// The host ports `container_id` holds.
    pub fn published(&self, container_id: &str) -> ApiResult<Vec<PortBinding>> {
        self.ports.held(container_id)
    }

    /// Removes the container's forwarding rules and frees its host ports (the caller holds
    /// the container's network lock).
    pub(super) async fn unpublish_locked(&self, container_id: &str) -> ApiResult<()> {
        if self.ports.held(container_id)?.is_empty() {
            return Ok(());
        }
        self.apply_rules(&ports_owner(container_id), &[]).await?;
        self.ports.release(container_id)
    }

    /// Drops the host ports and rules of containers that are gone (not in `known`): what a
    /// crash between a removal and its clean-up left.
    pub(super) async fn reconcile_ports(&self, known: &HashSet<&str>) -> ApiResult<()> {
        let mut gone: HashSet<String> = HashSet::new();
        for (c, _) in self.ports.all()? {
            if !known.contains(c.as_str()) {
                gone.insert(c);
            }
        }
        let table = &self.config().nft_table;
        if let Some(json) = self
            .kernel()
            .nft_list(&format!("table inet {table}"))
            .await?
        {
            let known12: HashSet<&str> = known.iter().map(|c| &c[..c.len().min(12)]).collect();
            for (_, _, comment) in parse_listing(&json)?.rules {
                let id = comment
                    .as_deref()
                    .and_then(|c| c.strip_prefix("ports "))
                    .and_then(|c| c.split_once(':'))
                    .map(|(id, _)| id.to_string());
                if let Some(id) = id.filter(|id| !known12.contains(id.as_str())) {
                    gone.insert(id);
                }
            }
        }
        for c in gone {
            tracing::info!(container = %c, "removing leftover published ports");
            self.apply_rules(&ports_owner(&c), &[]).await?;
            self.ports.release(&c)?;
        }
        Ok(())
    }
}
