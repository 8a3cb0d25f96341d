//! A recording fake of [`TcKernel`]: links per namespace with their root qdisc, which a
//! replace sets from the message's own bytes (as the kernel would read them back).

use super::kernel::{ShapedLink, TcKernel};
use super::tbf::{parse_root, RootQdisc};
use crate::error::{ApiError, ApiResult};
use rtnetlink::packet_core::{Emitable, Parseable};
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    links: BTreeMap<(PathBuf, i32), ShapedLink>,
    calls: Vec<String>,
    fail: Option<String>,
}

/// The fake.
#[derive(Debug, Default)]
pub(crate) struct FakeTc {
    st: Mutex<State>,
}

impl FakeTc {
    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a veth link (no qdisc) to a namespace.
    pub fn add_link(&self, netns: &str, index: i32, name: &str) {
        self.st().links.insert(
            (PathBuf::from(netns), index),
            ShapedLink {
                index,
                name: name.into(),
                root: None,
            },
        );
    }

    /// Puts somebody else's root qdisc on a link.
    pub fn set_foreign_root(&self, netns: &str, index: i32, kind: &str) {
        if let Some(l) = self.st().links.get_mut(&(PathBuf::from(netns), index)) {
            l.root = Some(RootQdisc {
                handle: TcHandle { major: 1, minor: 0 },
                kind: kind.into(),
                tbf: None,
            });
        }
    }

    /// The mutating calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.st().calls.clone()
    }

    /// The root qdisc of a link.
    pub fn root(&self, netns: &str, index: i32) -> Option<RootQdisc> {
        self.st()
            .links
            .get(&(PathBuf::from(netns), index))
            .and_then(|l| l.root.clone())
    }

    /// Makes the next mutating call fail with `msg`.
    pub fn fail_next(&self, msg: &str) {
        self.st().fail = Some(msg.into());
    }
}

impl TcKernel for FakeTc {
    async fn links(&self, netns: &Path) -> ApiResult<Vec<ShapedLink>> {
        Ok(self
            .st()
            .links
            .iter()
            .filter(|((ns, _), _)| ns == netns)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn replace_qdisc(&self, netns: &Path, msg: TcMessage) -> ApiResult<()> {
        let mut st = self.st();
        if let Some(f) = st.fail.take() {
            return Err(ApiError::Internal(f));
        }
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        let parsed =
            TcMessage::parse(&bytes[..]).map_err(|e| ApiError::internal("fake: parse", e))?;
        let root = parse_root(&parsed)
            .ok_or_else(|| ApiError::Internal("fake: not a root qdisc".into()))?;
        let index = msg.header.index;
        st.calls.push(format!(
            "replace {} {index} {} {}",
            netns.display(),
            root.kind,
            root.tbf.map(|t| t.rate).unwrap_or(0)
        ));
        let link = st
            .links
            .get_mut(&(netns.to_owned(), index))
            .ok_or_else(|| ApiError::Internal("fake: No such device".into()))?;
        link.root = Some(root);
        Ok(())
    }

    async fn delete_qdisc(&self, netns: &Path, msg: TcMessage) -> ApiResult<()> {
        let mut st = self.st();
        if let Some(f) = st.fail.take() {
            return Err(ApiError::Internal(f));
        }
        let index = msg.header.index;
        st.calls.push(format!("delete {} {index}", netns.display()));
        if let Some(l) = st.links.get_mut(&(netns.to_owned(), index)) {
            if l.root
                .as_ref()
                .is_some_and(|r| r.handle == msg.header.handle)
            {
                l.root = None;
            }
        }
        Ok(())
    }
}
