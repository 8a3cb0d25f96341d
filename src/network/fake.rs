//! A recording fake of [`Kernel`] for unit tests: keeps links, namespaces and a tiny nft
//! table model in memory and logs every mutating call.

use super::firewall::Listing;
use super::kernel::{BridgeSpec, IfStats, Kernel, VethSpec};
use super::macvlan::MacvlanSpec;
use crate::error::{ApiError, ApiResult};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// In-memory kernel state.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// Mutating calls, in order.
    pub calls: Vec<String>,
    /// Bridges and their address.
    pub bridges: BTreeMap<String, String>,
    /// Host links (veths) and their master.
    pub links: BTreeMap<String, String>,
    /// The container side of each host veth.
    pub peers: BTreeMap<String, VethSpec>,
    /// Mounted namespaces.
    pub netns: BTreeSet<PathBuf>,
    /// Whether ip_forward was set.
    pub forward: bool,
    /// The nft table, if created: chains and rules (chain, handle, comment).
    pub nft: Option<Listing>,
    /// Next rule handle.
    pub next_handle: u64,
    /// Macvlan links by (netns, ifname).
    pub macvlans: BTreeMap<(PathBuf, String), MacvlanSpec>,
    /// Parents `add_macvlan` accepts (`eth0` when empty).
    pub parents: BTreeSet<String>,
    /// Routed host subnets (`ipv4_routes`).
    pub routes: Vec<ipnet::Ipv4Net>,
    /// Make the next add_veth fail after creating the link.
    pub fail_add_veth: bool,
}

/// The fake kernel.
#[derive(Debug, Default)]
pub(crate) struct FakeKernel {
    state: Mutex<FakeState>,
}

impl FakeKernel {
    /// Locks the state (tests only; poisoning means a test already failed).
    pub fn st(&self) -> MutexGuard<'_, FakeState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A fake that takes over another's state (a daemon restart on the same kernel).
    pub fn take_over(other: &FakeKernel) -> FakeKernel {
        FakeKernel {
            state: Mutex::new(std::mem::take(&mut *other.st())),
        }
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }

    fn apply_line(st: &mut FakeState, line: &str) -> ApiResult<()> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let nft = st.nft.get_or_insert_with(Listing::default);
        match words.as_slice() {
            ["add", "table", "inet", _] => {}
            ["add", "chain", "inet", _, name, ..] => {
                if !nft.chains.iter().any(|c| c == name) {
                    nft.chains.push(name.to_string());
                }
            }
            ["delete", "rule", "inet", _, chain, "handle", h] => {
                let h: u64 = h
                    .parse()
                    .map_err(|_| ApiError::Internal("bad handle".into()))?;
                let before = nft.rules.len();
                nft.rules.retain(|r| !(r.0 == *chain && r.1 == h));
                if nft.rules.len() == before {
                    return Err(ApiError::Internal(format!("no rule {h}")));
                }
            }
            ["add", "rule", "inet", _, chain, ..] => {
                let comment = line
                    .split_once("comment \"")
                    .map(|(_, c)| c.trim_end_matches('"').to_string());
                st.next_handle += 1;
                let h = st.next_handle;
                if let Some(nft) = st.nft.as_mut() {
                    nft.rules.push((chain.to_string(), h, comment));
                }
            }
            _ => return Err(ApiError::Internal(format!("fake nft: cannot parse {line}"))),
        }
        Ok(())
    }
}

fn listing_json(l: &Listing) -> String {
    let mut items = vec![serde_json::json!({"table": {"family": "inet", "name": "t"}})];
    for c in &l.chains {
        items.push(serde_json::json!({"chain": {"name": c}}));
    }
    for (chain, handle, comment) in &l.rules {
        items.push(
            serde_json::json!({"rule": {"chain": chain, "handle": handle, "comment": comment}}),
        );
    }
    serde_json::json!({ "nftables": items }).to_string()
}

impl Kernel for FakeKernel {
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> ApiResult<()> {
        let mut st = self.st();
        let addr = format!("{}/{}", spec.gateway, spec.prefix_len);
        if st.bridges.get(&spec.name) != Some(&addr) {
            st.calls.push(format!("bridge {} {addr}", spec.name));
            st.bridges.insert(spec.name.clone(), addr);
        }
        Ok(())
    }

    async fn ipv4_routes(&self) -> ApiResult<Vec<ipnet::Ipv4Net>> {
        let st = self.st();
        let mut out = st.routes.clone();
        for addr in st.bridges.values() {
            if let Ok(n) = addr.parse::<ipnet::Ipv4Net>() {
                out.push(n.trunc());
            }
        }
        Ok(out)
    }

    async fn enable_ip_forward(&self) -> ApiResult<()> {
        self.st().forward = true;
        Ok(())
    }

    async fn bridge_ports(&self, bridge: &str) -> ApiResult<Vec<String>> {
        let st = self.st();
        Ok(st
            .links
            .iter()
            .filter(|(_, m)| *m == bridge)
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn veth_attached(&self, veth: &str, bridge: &str) -> ApiResult<bool> {
        Ok(self.st().links.get(veth).is_some_and(|m| m == bridge))
    }

    async fn add_veth(&self, spec: &VethSpec) -> ApiResult<()> {
        let mut st = self.st();
        if !st.netns.contains(&spec.netns) {
            return Err(ApiError::Internal("add_veth: no such netns".into()));
        }
        st.calls.push(format!("add_veth {} {}", spec.host, spec.ip));
        st.links.insert(spec.host.clone(), spec.bridge.clone());
        st.peers.insert(spec.host.clone(), spec.clone());
        if st.fail_add_veth {
            st.fail_add_veth = false;
            return Err(ApiError::Internal("add_veth: injected failure".into()));
        }
        Ok(())
    }

    async fn enable_port_forwarding(&self, bridge: &str, veth: Option<&str>) -> ApiResult<()> {
        self.st()
            .calls
            .push(format!("port_forwarding {bridge} {}", veth.unwrap_or("-")));
        Ok(())
    }

    async fn flush_conntrack(&self, ip: std::net::Ipv4Addr) -> ApiResult<()> {
        self.st().calls.push(format!("flush_conntrack {ip}"));
        Ok(())
    }

    async fn link_exists(&self, name: &str) -> ApiResult<bool> {
        let st = self.st();
        let parent = if st.parents.is_empty() {
            name == "eth0"
        } else {
            st.parents.contains(name)
        };
        Ok(parent || st.links.contains_key(name) || st.bridges.contains_key(name))
    }

    async fn delete_link(&self, name: &str) -> ApiResult<()> {
        let mut st = self.st();
        if st.bridges.remove(name).is_some() {
            st.calls.push(format!("delete_link {name}"));
        }
        if st.links.remove(name).is_some() {
            st.peers.remove(name);
            st.calls.push(format!("delete_link {name}"));
        }
        Ok(())
    }

    async fn interface_stats(&self, _netns: &Path) -> ApiResult<Vec<(String, IfStats)>> {
        Ok(vec![("eth0".into(), IfStats::default())])
    }

    async fn add_macvlan(&self, spec: &MacvlanSpec) -> ApiResult<()> {
        let mut st = self.st();
        let known = if st.parents.is_empty() {
            spec.parent == "eth0"
        } else {
            st.parents.contains(&spec.parent)
        };
        if !known {
            return Err(ApiError::Internal(format!(
                "-o parent interface was not found on the host: {}",
                spec.parent
            )));
        }
        if !st.netns.contains(&spec.netns) {
            return Err(ApiError::Internal("add_macvlan: no such netns".into()));
        }
        let via = spec
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        st.calls.push(format!(
            "add_macvlan {} {} {} {} {} {}/{}{via}",
            spec.parent,
            spec.mode.as_str(),
            spec.netns.display(),
            spec.ifname,
            super::sriov::pf::fmt_mac(&spec.mac),
            spec.ip,
            spec.prefix_len
        ));
        st.macvlans
            .insert((spec.netns.clone(), spec.ifname.clone()), spec.clone());
        Ok(())
    }

    async fn delete_link_in(&self, netns: &Path, ifname: &str) -> ApiResult<()> {
        let mut st = self.st();
        if st
            .macvlans
            .remove(&(netns.to_owned(), ifname.to_string()))
            .is_some()
        {
            st.calls
                .push(format!("delete_link_in {} {ifname}", netns.display()));
        }
        Ok(())
    }

    async fn prepare_netns_dir(&self, dir: &Path) -> ApiResult<()> {
        self.st().calls.push(format!("prepare {}", dir.display()));
        Ok(())
    }

    async fn netns_exists(&self, path: &Path) -> bool {
        self.st().netns.contains(path)
    }

    async fn create_netns(&self, path: &Path) -> ApiResult<()> {
        let mut st = self.st();
        st.calls.push(format!("create_netns {}", path.display()));
        st.netns.insert(path.to_owned());
        Ok(())
    }

    async fn remove_netns(&self, path: &Path) -> ApiResult<()> {
        let mut st = self.st();
        if st.netns.remove(path) {
            // Like the kernel: veths whose peer lived in the namespace vanish with it.
            let gone: Vec<String> = st
                .peers
                .iter()
                .filter(|(_, p)| p.netns == path)
                .map(|(h, _)| h.clone())
                .collect();
            for h in gone {
                st.peers.remove(&h);
                st.links.remove(&h);
            }
            st.macvlans.retain(|(ns, _), _| ns != path);
            st.calls.push(format!("remove_netns {}", path.display()));
        }
        Ok(())
    }

    async fn list_netns(&self, dir: &Path) -> ApiResult<Vec<String>> {
        let st = self.st();
        Ok(st
            .netns
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn nft_list(&self, what: &str) -> ApiResult<Option<String>> {
        let st = self.st();
        if what == "chains" {
            return Ok(Some(r#"{"nftables":[]}"#.into()));
        }
        Ok(st.nft.as_ref().map(listing_json))
    }

    async fn nft_apply(&self, script: &str) -> ApiResult<()> {
        let mut st = self.st();
        st.calls
            .push(format!("nft_apply {} lines", script.lines().count()));
        for line in script.lines() {
            Self::apply_line(&mut st, line)?;
        }
        Ok(())
    }
}
