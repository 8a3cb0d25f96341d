//! The kernel calls shaping needs, behind [`TcKernel`] so that [`super::Shaper`]'s
//! decisions (what to install, change, leave alone or remove) are unit-tested against a
//! recording fake; [`NetlinkTc`] is the real implementation (rtnetlink inside the
//! container's network namespace).

use super::tbf::{parse_root, RootQdisc};
use crate::error::{ApiError, ApiResult};
use crate::network::netns;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::tc::TcMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use std::future::Future;
use std::path::Path;

/// A link inside a container's namespace that berth shapes, with its root qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapedLink {
    /// Interface index (inside the namespace).
    pub index: i32,
    /// Interface name (`eth0`).
    pub name: String,
    /// The root qdisc, if the dump showed one.
    pub root: Option<RootQdisc>,
}

/// Kernel operations of egress shaping, all inside the network namespace at `netns`.
pub trait TcKernel: Send + Sync + 'static {
    /// The container's links on bridge-type networks (its veth ends) and their root qdisc.
    fn links(&self, netns: &Path) -> impl Future<Output = ApiResult<Vec<ShapedLink>>> + Send;
    /// Sends `RTM_NEWQDISC` with `NLM_F_CREATE | NLM_F_REPLACE` (`tc qdisc replace`).
    fn replace_qdisc(
        &self,
        netns: &Path,
        msg: TcMessage,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Sends `RTM_DELQDISC` (`tc qdisc del`); a qdisc that is gone already is fine.
    fn delete_qdisc(
        &self,
        netns: &Path,
        msg: TcMessage,
    ) -> impl Future<Output = ApiResult<()>> + Send;
}

/// [`TcKernel`] through rtnetlink, one socket per call opened inside the namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkTc;

fn nl_err(step: &str, e: rtnetlink::Error) -> ApiError {
    match e {
        rtnetlink::Error::NetlinkError(m) => ApiError::internal(step, m.to_io()),
        other => ApiError::internal(step, other),
    }
}

fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn name_of(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Sends one qdisc request and waits for the kernel's acknowledgement.
async fn send(
    h: &mut rtnetlink::Handle,
    body: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(body);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut resp = h.request(req)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(err) = m.payload {
            return Err(rtnetlink::Error::NetlinkError(err));
        }
    }
    Ok(())
}

impl TcKernel for NetlinkTc {
    async fn links(&self, netns: &Path) -> ApiResult<Vec<ShapedLink>> {
        let step = format!("list the links in {}", netns.display());
        let h = netns::handle_in(netns).await?;
        let links: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(&step, e))?;
        // One dump of every qdisc: a dump per link would cost a round trip each.
        let qdiscs: Vec<TcMessage> = h
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(&format!("list the qdiscs in {}", netns.display()), e))?;
        let mut out = Vec::new();
        for l in links.iter().filter(|l| is_veth(l)) {
            let index = l.header.index as i32;
            let root = qdiscs
                .iter()
                .filter(|q| q.header.index == index)
                .find_map(parse_root);
            out.push(ShapedLink {
                index,
                name: name_of(l).unwrap_or_default(),
                root,
            });
        }
        Ok(out)
    }

    async fn replace_qdisc(&self, netns: &Path, msg: TcMessage) -> ApiResult<()> {
        let step = format!(
            "install the egress qdisc on link {} in {}",
            msg.header.index,
            netns.display()
        );
        let mut h = netns::handle_in(netns).await?;
        send(
            &mut h,
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|e| nl_err(&step, e))
    }

    async fn delete_qdisc(&self, netns: &Path, msg: TcMessage) -> ApiResult<()> {
        let step = format!(
            "remove the egress qdisc of link {} in {}",
            msg.header.index,
            netns.display()
        );
        let mut h = netns::handle_in(netns).await?;
        match send(&mut h, RouteNetlinkMessage::DelQueueDiscipline(msg), 0).await {
            Ok(()) => Ok(()),
            // ENOENT: no such qdisc (any more); ENODEV: the link is gone.
            Err(rtnetlink::Error::NetlinkError(m))
                if matches!(m.raw_code().abs(), libc::ENOENT | libc::ENODEV) =>
            {
                Ok(())
            }
            Err(e) => Err(nl_err(&step, e)),
        }
    }
}
