//! Moving a VF netdev between the host and a container's network namespace.
//!
//! In: one `RTM_SETLINK` on the host side moves the (down) netdev into the namespace and
//! renames it there (`IFLA_NET_NS_FD` + `IFLA_IFNAME`: the new name is only checked in the
//! target, so neither side sees a clash); then, inside, MAC, MTU, address, up and the
//! default route. Out: inside, down and one `RTM_SETLINK` that moves it back under its
//! original host name; then its original MAC.
//!
//! Both directions are idempotent: they find the device where it is (by ifindex, which a
//! move keeps unless the target namespace uses it already, then by name) and do only what
//! is missing. Real hardware adds: VF netdevs re-registered by a driver reset (new ifindex;
//! the caller then finds the VF again by PCI address), and physical netdevs returning to
//! the host namespace (as `dev%d` on a name clash) when a namespace dies.

use crate::error::{ApiError, ApiResult};
use crate::network::netns;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// How a VF netdev is set up inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfNetdev {
    /// Name in the host namespace.
    pub host_ifname: String,
    /// Ifindex in the host namespace.
    pub ifindex: u32,
    /// The container's namespace.
    pub netns: PathBuf,
    /// Name inside it (`eth0`, `ethN`).
    pub ifname: String,
    /// MAC to give the netdev (`None`: keep the driver's).
    pub mac: Option<[u8; 6]>,
    /// MTU (`None`: keep).
    pub mtu: Option<u32>,
    /// IPv4 address and prefix length.
    pub ip: Ipv4Addr,
    /// Prefix length of `ip`.
    pub prefix_len: u8,
    /// Default route via this gateway (`None`: no default route).
    pub gateway: Option<Ipv4Addr>,
}

pub(crate) use crate::network::netlink::nl_err;

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

/// The link with `index` (or, failing that, named `name`) in the handle's namespace.
pub(crate) async fn find_link(
    h: &Handle,
    index: Option<u32>,
    name: Option<&str>,
) -> ApiResult<Option<LinkMessage>> {
    if let Some(i) = index {
        match h.link().get().match_index(i).execute().try_next().await {
            Ok(Some(l)) if name.is_none() || link_name(&l).as_deref() == name => {
                return Ok(Some(l))
            }
            Ok(_) => {}
            Err(e) if errno(&e) == libc::ENODEV => {}
            Err(e) => return Err(nl_err(&format!("look up link {i}"), e)),
        }
    }
    if let Some(n) = name {
        match h.link().get().match_name(n).execute().try_next().await {
            Ok(l) => return Ok(l),
            Err(e) if errno(&e) == libc::ENODEV => {}
            Err(e) => return Err(nl_err(&format!("look up link {n}"), e)),
        }
    }
    Ok(None)
}

/// The name of a link.
pub(crate) fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The MAC of a link.
pub(crate) fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(m);
            Some(out)
        }
        _ => None,
    })
}

async fn set_down(h: &Handle, index: u32, step: &str) -> ApiResult<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("{step}: set down"), e))
}

/// Moves the VF netdev into `spec.netns` as `spec.ifname` and configures it there. Works
/// from any intermediate state a crash can leave (still in the host, already moved).
pub async fn move_in(host: &Handle, spec: &VfNetdev) -> ApiResult<()> {
    let step = format!(
        "move VF netdev {} into {} as {}",
        spec.host_ifname,
        spec.netns.display(),
        spec.ifname
    );
    let inner = netns::handle_in(&spec.netns).await?;
    // The host first: a device of the same name inside the namespace must not be taken for
    // the VF while the VF is still at home.
    let index = match find_link(host, Some(spec.ifindex), Some(&spec.host_ifname)).await? {
        Some(dev) => {
            let ns = File::open(&spec.netns).map_err(|e| ApiError::internal(&step, e))?;
            set_down(host, dev.header.index, &step).await?;
            host.link()
                .set(
                    LinkUnspec::new_with_index(dev.header.index)
                        .name(spec.ifname.clone())
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| nl_err(&step, e))?;
            find_link(&inner, Some(dev.header.index), Some(&spec.ifname))
                .await?
                .ok_or_else(|| ApiError::Internal(format!("{step}: it vanished after the move")))?
                .header
                .index
        }
        None => {
            find_link(&inner, Some(spec.ifindex), Some(&spec.ifname))
                .await?
                .ok_or_else(|| {
                    ApiError::Internal(format!(
                    "{step}: the netdev is neither in the host namespace nor in the container's"
                ))
                })?
                .header
                .index
        }
    };
    let mut set = LinkUnspec::new_with_index(index);
    if let Some(mac) = spec.mac {
        set = set.address(mac.to_vec());
    }
    if let Some(mtu) = spec.mtu {
        set = set.mtu(mtu);
    }
    inner
        .link()
        .set(set.up().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("{step}: set MAC/MTU and up"), e))?;
    crate::network::netlink::add_address_and_route(
        &inner,
        index,
        spec.ip,
        spec.prefix_len,
        spec.gateway,
        &step,
    )
    .await
}

/// Where a VF netdev was found by [`move_out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovedOut {
    /// It was in the container's namespace and is back in the host's.
    Moved,
    /// It was already in the host namespace (renamed back if needed).
    AlreadyHome,
    /// Neither namespace has it (a stand-in deleted with its namespace, or a driver that
    /// re-registered it: the caller looks for it by PCI address).
    Missing,
}

/// Gives the VF netdev back to the host namespace under `host_ifname`, with `orig_mac`.
/// `netns` may be gone already.
pub async fn move_out(
    host: &Handle,
    netns_path: &Path,
    ifname: &str,
    ifindex: u32,
    host_ifname: &str,
    orig_mac: Option<[u8; 6]>,
) -> ApiResult<MovedOut> {
    let step = format!(
        "move VF netdev {ifname} out of {} as {host_ifname}",
        netns_path.display()
    );
    let mut result = MovedOut::Missing;
    if netns::exists(netns_path) {
        let inner = netns::handle_in(netns_path).await?;
        if let Some(dev) = find_link(&inner, Some(ifindex), Some(ifname)).await? {
            let home = File::open("/proc/self/ns/net").map_err(|e| ApiError::internal(&step, e))?;
            set_down(&inner, dev.header.index, &step).await?;
            inner
                .link()
                .set(
                    LinkUnspec::new_with_index(dev.header.index)
                        .name(host_ifname.to_string())
                        .setns_by_fd(home.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| nl_err(&step, e))?;
            result = MovedOut::Moved;
        }
    }
    // By ifindex alone first: a VF that came home by itself may carry another name.
    let found = match find_link(host, Some(ifindex), None).await? {
        Some(d) => Some(d),
        None => find_link(host, None, Some(host_ifname)).await?,
    };
    let Some(dev) = found else {
        return Ok(result);
    };
    if result == MovedOut::Missing {
        result = MovedOut::AlreadyHome;
    }
    let index = dev.header.index;
    let mut set = LinkUnspec::new_with_index(index);
    let mut change = false;
    if link_name(&dev).as_deref() != Some(host_ifname) {
        set_down(host, index, &step).await?;
        set = set.name(host_ifname.to_string());
        change = true;
    }
    if let Some(mac) = orig_mac {
        if link_mac(&dev) != Some(mac) {
            set = set.address(mac.to_vec());
            change = true;
        }
    }
    if change {
        host.link()
            .set(set.build())
            .execute()
            .await
            .map_err(|e| nl_err(&format!("{step}: restore name and MAC"), e))?;
    }
    Ok(result)
}
