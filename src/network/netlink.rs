//! The real [`Kernel`]: rtnetlink for links, addresses and routes, bind-mounted netns
//! files, `/proc/sys` for forwarding and the `nft` binary for the firewall.

use super::kernel::{BridgeSpec, IfStats, Kernel, VethSpec};
use super::macvlan::MacvlanSpec;
use super::netns;
use crate::error::{ApiError, ApiResult};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

/// Kernel operations through netlink in the daemon's own network namespace.
pub struct NetlinkKernel {
    handle: Handle,
    /// The kernel runs one dump at a time per netlink socket (a second one gets EBUSY),
    /// so dumps on the shared socket take turns.
    dump_lock: tokio::sync::Mutex<()>,
}

impl NetlinkKernel {
    /// Opens a netlink connection; must be called inside a tokio runtime.
    pub fn new() -> ApiResult<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ApiError::internal("open netlink", e))?;
        tokio::spawn(conn);
        Ok(NetlinkKernel {
            handle,
            dump_lock: tokio::sync::Mutex::new(()),
        })
    }
}

/// The positive errno of a netlink failure (0 when it is not a kernel error).
fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

pub(crate) fn nl_err(step: &str, e: rtnetlink::Error) -> ApiError {
    match e {
        rtnetlink::Error::NetlinkError(m) => ApiError::internal(step, m.to_io()),
        other => ApiError::internal(step, other),
    }
}

/// Puts `ip/prefix_len` on link `index` of the namespace `h` works in and, with `gateway`,
/// the default route through it (both replaced if present). `step` leads the errors.
pub(crate) async fn add_address_and_route(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    step: &str,
) -> ApiResult<()> {
    h.address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| nl_err(&format!("{step}: add address {ip}"), e))?;
    if let Some(gw) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(&format!("{step}: add default route via {gw}"), e))?;
    }
    Ok(())
}

/// Looks a link up by name; `None` when there is none.
async fn link_by_name(h: &Handle, name: &str) -> ApiResult<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if errno(&e) == ENODEV => Ok(None),
        Err(e) => Err(nl_err(&format!("look up link {name}"), e)),
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_master(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn is_bridge(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// Parses `/proc/net/route` (destination and mask as little-endian hex) into the routed
/// subnets, leaving out the default route.
pub(crate) fn parse_proc_routes(text: &str) -> Vec<ipnet::Ipv4Net> {
    // The kernel prints the network-order words as host (little-endian) integers.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| v.to_le_bytes());
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dst, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u8::try_from(u32::from_be_bytes(mask).count_ones()).ok()?;
            (prefix > 0)
                .then(|| ipnet::Ipv4Net::new(Ipv4Addr::from(dst), prefix).ok())
                .flatten()
        })
        .collect()
}

fn ipv4_of(a: &AddressMessage) -> Option<Ipv4Addr> {
    if a.header.family != AddressFamily::Inet {
        return None;
    }
    let pick = |want_local: bool| {
        a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(IpAddr::V4(ip)) if want_local => Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if !want_local => Some(*ip),
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}

async fn set_up(h: &Handle, index: u32, what: &str) -> ApiResult<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("set {what} up"), e))
}

impl Kernel for NetlinkKernel {
    async fn ipv4_routes(&self) -> ApiResult<Vec<ipnet::Ipv4Net>> {
        let text = tokio::fs::read_to_string("/proc/net/route")
            .await
            .map_err(|e| ApiError::internal("read /proc/net/route", e))?;
        Ok(parse_proc_routes(&text))
    }

    async fn ensure_bridge(&self, spec: &BridgeSpec) -> ApiResult<()> {
        let h = &self.handle;
        let name = spec.name.as_str();
        let link = match link_by_name(h, name).await? {
            Some(l) => l,
            None => {
                let mut mac = [0x02, 0x42, 0, 0, 0, 0];
                rand::Rng::fill(&mut rand::thread_rng(), &mut mac[2..]);
                let msg = LinkBridge::new(name)
                    .mtu(spec.mtu)
                    .address(mac.to_vec())
                    .build();
                match h.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == EEXIST => {}
                    Err(e) => return Err(nl_err(&format!("create bridge {name}"), e)),
                }
                link_by_name(h, name).await?.ok_or_else(|| {
                    ApiError::Internal(format!("create bridge {name}: it vanished"))
                })?
            }
        };
        if !is_bridge(&link) {
            return Err(ApiError::Internal(format!(
                "device {name} exists and is not a bridge"
            )));
        }
        let index = link.header.index;
        let dump = self.dump_lock.lock().await;
        let addrs: Vec<AddressMessage> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(&format!("list addresses of {name}"), e))?;
        drop(dump);
        let mut have = false;
        for a in addrs {
            let Some(ip) = ipv4_of(&a) else { continue };
            if ip == spec.gateway && a.header.prefix_len == spec.prefix_len {
                have = true;
                continue;
            }
            // dockerd replaces a bridge address that does not match its configuration.
            tracing::info!(bridge = name, %ip, "removing stale bridge address");
            h.address()
                .del(a)
                .execute()
                .await
                .map_err(|e| nl_err(&format!("remove address {ip} from {name}"), e))?;
        }
        if !have {
            match h
                .address()
                .add(index, IpAddr::V4(spec.gateway), spec.prefix_len)
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == EEXIST => {}
                Err(e) => return Err(nl_err(&format!("add address to {name}"), e)),
            }
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            set_up(h, index, name).await?;
        }
        Ok(())
    }

    async fn enable_ip_forward(&self) -> ApiResult<()> {
        let path = "/proc/sys/net/ipv4/ip_forward";
        let cur = std::fs::read_to_string(path).map_err(|e| ApiError::internal(path, e))?;
        if cur.trim() != "1" {
            std::fs::write(path, "1").map_err(|e| ApiError::internal("enable ip_forward", e))?;
        }
        Ok(())
    }

    async fn enable_port_forwarding(&self, bridge: &str, veth: Option<&str>) -> ApiResult<()> {
        let mut files = vec![format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")];
        files.extend(veth.map(|v| format!("/sys/class/net/{v}/brport/hairpin_mode")));
        for f in files {
            if std::fs::read_to_string(&f)
                .map(|c| c.trim() == "1")
                .unwrap_or(false)
            {
                continue;
            }
            std::fs::write(&f, "1")
                .map_err(|e| ApiError::internal(&format!("write 1 to {f}"), e))?;
        }
        Ok(())
    }

    async fn flush_conntrack(&self, ip: Ipv4Addr) -> ApiResult<()> {
        let out = tokio::process::Command::new("conntrack")
            .args(["-D", "--reply-src", &ip.to_string()])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| ApiError::internal("run conntrack", e))?;
        let text = String::from_utf8_lossy(&out.stderr);
        // Exit status 1 with "0 flow entries have been deleted" is not a failure.
        if out.status.success() || text.contains("flow entries have been deleted") {
            return Ok(());
        }
        Err(ApiError::Internal(format!(
            "flush the connection tracking entries of {ip}: {}",
            text.trim()
        )))
    }

    async fn bridge_ports(&self, bridge: &str) -> ApiResult<Vec<String>> {
        let Some(br) = link_by_name(&self.handle, bridge).await? else {
            return Ok(Vec::new());
        };
        let _dump = self.dump_lock.lock().await;
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list links", e))?;
        Ok(links
            .iter()
            .filter(|l| link_master(l) == Some(br.header.index))
            .filter_map(|l| link_name(l).map(str::to_string))
            .collect())
    }

    async fn veth_attached(&self, veth: &str, bridge: &str) -> ApiResult<bool> {
        let (Some(v), Some(b)) = (
            link_by_name(&self.handle, veth).await?,
            link_by_name(&self.handle, bridge).await?,
        ) else {
            return Ok(false);
        };
        Ok(link_master(&v) == Some(b.header.index) && v.header.flags.contains(LinkFlags::Up))
    }

    async fn add_veth(&self, spec: &VethSpec) -> ApiResult<()> {
        let step = format!("create veth {} for {}", spec.host, spec.netns.display());
        let ns = File::open(&spec.netns).map_err(|e| ApiError::internal(&step, e))?;
        let inner = netns::handle_in(&spec.netns).await?;
        if let Some(stale) = link_by_name(&inner, &spec.ifname).await? {
            inner
                .link()
                .del(stale.header.index)
                .execute()
                .await
                .map_err(|e| nl_err(&format!("{step}: remove stale {}", spec.ifname), e))?;
        }
        let bridge = link_by_name(&self.handle, &spec.bridge)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("{step}: bridge {} is gone", spec.bridge)))?;
        // The peer is created directly inside the namespace under its final name, which is
        // what "create, move, rename" amounts to, in one request.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.ifname.clone())
            .txqueuelen(0)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host.clone())
            .txqueuelen(0)
            .mtu(spec.mtu)
            .controller(bridge.header.index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(&step, e))?;
        drop(ns);
        let eth = link_by_name(&inner, &spec.ifname)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("{step}: {} missing", spec.ifname)))?;
        let idx = eth.header.index;
        set_up(&inner, idx, &spec.ifname).await?;
        let gateway = spec.default_route.then_some(spec.gateway);
        add_address_and_route(&inner, idx, spec.ip, spec.prefix_len, gateway, &step).await
    }

    async fn link_exists(&self, name: &str) -> ApiResult<bool> {
        Ok(link_by_name(&self.handle, name).await?.is_some())
    }

    async fn delete_link(&self, name: &str) -> ApiResult<()> {
        let Some(l) = link_by_name(&self.handle, name).await? else {
            return Ok(());
        };
        match self.handle.link().del(l.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == ENODEV => Ok(()),
            Err(e) => Err(nl_err(&format!("delete link {name}"), e)),
        }
    }

    async fn interface_stats(&self, netns: &Path) -> ApiResult<Vec<(String, IfStats)>> {
        let inner = netns::handle_in(netns).await?;
        let links: Vec<LinkMessage> = inner
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list links", e))?;
        let mut out = Vec::new();
        for l in &links {
            let Some(name) = link_name(l) else { continue };
            if name == "lo" {
                continue;
            }
            let s = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Stats64(s) => Some(IfStats {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    rx_errors: s.rx_errors,
                    rx_dropped: s.rx_dropped,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                    tx_errors: s.tx_errors,
                    tx_dropped: s.tx_dropped,
                }),
                _ => None,
            });
            out.push((name.to_string(), s.unwrap_or_default()));
        }
        Ok(out)
    }

    async fn add_macvlan(&self, spec: &MacvlanSpec) -> ApiResult<()> {
        super::macvlan::nl::add(&self.handle, spec).await
    }

    async fn delete_link_in(&self, netns: &Path, ifname: &str) -> ApiResult<()> {
        super::macvlan::nl::delete_in(netns, ifname).await
    }

    async fn prepare_netns_dir(&self, dir: &Path) -> ApiResult<()> {
        netns::prepare_dir(dir)
    }

    async fn netns_exists(&self, path: &Path) -> bool {
        netns::exists(path)
    }

    async fn create_netns(&self, path: &Path) -> ApiResult<()> {
        netns::create(path).await?;
        let inner = netns::handle_in(path).await?;
        let lo = link_by_name(&inner, "lo")
            .await?
            .ok_or_else(|| ApiError::Internal(format!("{}: no lo", path.display())))?;
        set_up(&inner, lo.header.index, "lo").await
    }

    async fn remove_netns(&self, path: &Path) -> ApiResult<()> {
        netns::remove(path)
    }

    async fn list_netns(&self, dir: &Path) -> ApiResult<Vec<String>> {
        netns::list(dir)
    }

    async fn nft_list(&self, what: &str) -> ApiResult<Option<String>> {
        let out = tokio::process::Command::new("nft")
            .arg("-j")
            .arg("list")
            .args(what.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| ApiError::internal("run nft", e))?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        Err(ApiError::Internal(format!(
            "nft list {what}: {}",
            err.trim()
        )))
    }

    async fn nft_apply(&self, script: &str) -> ApiResult<()> {
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ApiError::internal("run nft", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| ApiError::internal("write nft script", e))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| ApiError::internal("run nft", e))?;
        if !out.status.success() {
            return Err(ApiError::Internal(format!(
                "apply nftables rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod route_tests {
    #[test]
    fn proc_routes_parse() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            br0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let got: Vec<String> = super::parse_proc_routes(text)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, vec!["192.0.2.0/24", "172.18.0.0/16"]);
    }
}
