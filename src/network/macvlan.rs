//! The `macvlan` driver's kernel side: a macvlan link on a parent interface, created
//! directly inside a container's namespace as `eth0`/`ethN` (one `RTM_NEWLINK` carrying
//! `IFLA_LINK` = the parent in the host and `IFLA_NET_NS_FD` = the container), with a fixed
//! address and MAC, up, and a default route via the network's gateway. The container gets
//! its own MAC on the parent's L2 segment, so its address is routable on the LAN.
//!
//! Like dockerd's driver, the host itself cannot reach its macvlan children through the
//! parent (the kernel does not deliver between a parent and its children); a host-side
//! macvlan "shim" with a /32 route is the usual remedy. VLAN parents (`eth0.10`) need
//! 802.1Q, absent on the test kernels; on such a kernel the caller creates the
//! sub-interface first and passes it as the parent. Real hardware adds nothing beyond a
//! NIC's MAC filter limit (many children put the parent in promiscuous mode).

use super::kernel::Kernel;
use super::options::{MacvlanMode, MacvlanOptions};
use crate::error::{ApiError, ApiResult};
use rtnetlink::packet_route::link::MacVlanMode;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// One container's macvlan link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanSpec {
    /// Parent interface in the host namespace.
    pub parent: String,
    /// Macvlan mode.
    pub mode: MacvlanMode,
    /// The container's network namespace.
    pub netns: PathBuf,
    /// Name inside it (`eth0`, `ethN`).
    pub ifname: String,
    /// The container's MAC.
    pub mac: [u8; 6],
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Prefix length of `ip`.
    pub prefix_len: u8,
    /// Default route via this address (`None`: none through this link).
    pub gateway: Option<Ipv4Addr>,
    /// MTU (`None`: the parent's).
    pub mtu: Option<u32>,
}

/// The kernel's constant for a mode.
pub fn kernel_mode(mode: MacvlanMode) -> MacVlanMode {
    match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

/// Gives a container its macvlan link on the network described by `opts` (idempotent: a
/// stale link of the same name in the namespace is replaced).
#[allow(clippy::too_many_arguments)]
pub async fn attach<K: Kernel>(
    k: &K,
    opts: &MacvlanOptions,
    netns: PathBuf,
    ifname: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
) -> ApiResult<MacvlanSpec> {
    if !(1..=32).contains(&prefix_len) {
        return Err(ApiError::BadRequest(format!(
            "invalid prefix length /{prefix_len} for {ip}"
        )));
    }
    if mac[0] & 1 == 1 {
        return Err(ApiError::BadRequest(format!(
            "invalid MAC address {}: it is a multicast address",
            super::sriov::pf::fmt_mac(&mac)
        )));
    }
    let spec = MacvlanSpec {
        parent: opts.parent.clone(),
        mode: opts.mode,
        netns,
        ifname: ifname.to_string(),
        mac,
        ip,
        prefix_len,
        gateway,
        mtu: None,
    };
    k.add_macvlan(&spec).await?;
    Ok(spec)
}

/// Removes a container's macvlan link (nothing to do when it or the namespace is gone;
/// removing the namespace removes the link too).
pub async fn detach<K: Kernel>(k: &K, spec: &MacvlanSpec) -> ApiResult<()> {
    k.delete_link_in(&spec.netns, &spec.ifname).await
}

/// The netlink implementation behind [`Kernel::add_macvlan`].
pub(crate) mod nl {
    use super::*;
    use crate::network::netns;
    use crate::network::sriov::attach::{find_link, link_mac, nl_err};
    use rtnetlink::packet_route::link::{
        InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkInfo, LinkMessage,
    };
    use rtnetlink::{Handle, LinkMacVlan, LinkUnspec};
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    pub(crate) async fn add(host: &Handle, spec: &MacvlanSpec) -> ApiResult<()> {
        let step = format!(
            "create macvlan {} on {} in {}",
            spec.ifname,
            spec.parent,
            spec.netns.display()
        );
        let parent = find_link(host, None, Some(&spec.parent))
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "-o parent interface was not found on the host: {}",
                    spec.parent
                ))
            })?;
        let ns = File::open(&spec.netns).map_err(|e| ApiError::internal(&step, e))?;
        let inner = netns::handle_in(&spec.netns).await?;
        // What is already right is kept (invariant 5): a macvlan of that name, mode and MAC
        // on this parent. Anything else of that name is replaced.
        let existing = find_link(&inner, None, Some(&spec.ifname)).await?;
        let keep = existing
            .as_ref()
            .filter(|l| is_same_macvlan(l, spec, parent.header.index))
            .map(|l| l.header.index);
        if let (Some(stale), None) = (&existing, keep) {
            inner
                .link()
                .del(stale.header.index)
                .execute()
                .await
                .map_err(|e| nl_err(&format!("{step}: remove stale {}", spec.ifname), e))?;
        }
        let idx = match keep {
            Some(idx) => idx,
            None => {
                let mut msg =
                    LinkMacVlan::new(&spec.ifname, parent.header.index, kernel_mode(spec.mode))
                        .address(spec.mac.to_vec())
                        .setns_by_fd(ns.as_raw_fd());
                if let Some(mtu) = spec.mtu {
                    msg = msg.mtu(mtu);
                }
                host.link()
                    .add(msg.build())
                    .execute()
                    .await
                    .map_err(|e| nl_err(&step, e))?;
                find_link(&inner, None, Some(&spec.ifname))
                    .await?
                    .ok_or_else(|| ApiError::Internal(format!("{step}: the link vanished")))?
                    .header
                    .index
            }
        };
        drop(ns);
        inner
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(&format!("{step}: set up"), e))?;
        crate::network::netlink::add_address_and_route(
            &inner,
            idx,
            spec.ip,
            spec.prefix_len,
            spec.gateway,
            &step,
        )
        .await
    }

    /// Whether `l` is a macvlan on `parent` with the spec's mode and MAC.
    fn is_same_macvlan(l: &LinkMessage, spec: &MacvlanSpec, parent: u32) -> bool {
        let mut kind = false;
        let mut mode = None;
        let mut link = None;
        for a in &l.attributes {
            match a {
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(InfoKind::MacVlan) => kind = true,
                            LinkInfo::Data(InfoData::MacVlan(d)) => {
                                mode = d.iter().find_map(|x| match x {
                                    InfoMacVlan::Mode(m) => Some(*m),
                                    _ => None,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                LinkAttribute::Link(i) => link = Some(*i),
                _ => {}
            }
        }
        kind && mode == Some(kernel_mode(spec.mode))
            && link == Some(parent)
            && link_mac(l) == Some(spec.mac)
    }

    pub(crate) async fn delete_in(netns_path: &Path, ifname: &str) -> ApiResult<()> {
        if !netns::exists(netns_path) {
            return Ok(());
        }
        let inner = netns::handle_in(netns_path).await?;
        let Some(l) = find_link(&inner, None, Some(ifname)).await? else {
            return Ok(());
        };
        match inner.link().del(l.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
            Err(e) => Err(nl_err(
                &format!("delete {ifname} in {}", netns_path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::fake::FakeKernel;

    #[tokio::test]
    async fn attach_and_detach_go_through_the_kernel_trait() -> anyhow::Result<()> {
        let k = FakeKernel::default();
        let ns = PathBuf::from("/run/berth/netns/c1");
        k.create_netns(&ns).await?;
        k.clear_calls();
        let opts = MacvlanOptions {
            parent: "eth0".into(),
            mode: MacvlanMode::Bridge,
        };
        let mac = [2, 0x42, 10, 0, 0, 5];
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let gw = Some(Ipv4Addr::new(10, 0, 0, 1));
        let spec = attach(&k, &opts, ns.clone(), "eth0", mac, ip, 24, gw).await?;
        assert_eq!(
            k.st().calls,
            ["add_macvlan eth0 bridge /run/berth/netns/c1 eth0 02:42:0a:00:00:05 10.0.0.5/24 via 10.0.0.1"]
        );
        // Bad input changes nothing.
        let multicast = [1, 0, 0, 0, 0, 1];
        assert!(attach(&k, &opts, ns.clone(), "eth1", multicast, ip, 24, gw)
            .await
            .is_err());
        assert!(attach(&k, &opts, ns.clone(), "eth1", mac, ip, 33, gw)
            .await
            .is_err());
        // A parent that does not exist is refused by the kernel side with dockerd's words.
        let missing = MacvlanOptions {
            parent: "nope0".into(),
            mode: MacvlanMode::Vepa,
        };
        let e = attach(&k, &missing, ns.clone(), "eth1", mac, ip, 24, gw).await;
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("-o parent interface was not found on the host: nope0")
        );
        assert_eq!(k.st().calls.len(), 1);
        detach(&k, &spec).await?;
        detach(&k, &spec).await?;
        assert_eq!(k.st().calls[1], "delete_link_in /run/berth/netns/c1 eth0");
        assert_eq!(k.st().calls.len(), 2);
        assert!(k.st().macvlans.is_empty());
        Ok(())
    }
}
