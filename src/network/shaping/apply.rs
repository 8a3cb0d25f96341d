//! [`Shaper`]: makes the qdiscs of a container's links match its [`Egress`], touching
//! only what differs. The same limit applied twice sends nothing the second time; a new
//! limit changes berth's qdisc in place (no moment without shaping); removing the limit
//! deletes only berth's own qdisc.

use super::kernel::{NetlinkTc, ShapedLink, TcKernel};
use super::tbf::{del_qdisc_message, new_qdisc_message, TbfParams};
use super::Egress;
use crate::error::ApiResult;
use std::path::Path;

/// What [`Shaper::apply`] did to one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Already right: nothing sent.
    Kept(String),
    /// berth's qdisc installed or changed.
    Set(String),
    /// berth's qdisc removed.
    Removed(String),
}

/// Applies egress limits through a [`TcKernel`].
#[derive(Debug, Default)]
pub struct Shaper<K: TcKernel = NetlinkTc> {
    kernel: K,
}

impl<K: TcKernel> Shaper<K> {
    /// A shaper over `kernel`.
    pub fn new(kernel: K) -> Self {
        Shaper { kernel }
    }

    /// The kernel implementation (tests inspect their fake through it).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Makes every veth link in the namespace at `netns` carry `want` (or, for `None`, no
    /// qdisc of berth's). Idempotent; returns what it did per link.
    pub async fn apply(&self, netns: &Path, want: Option<&Egress>) -> ApiResult<Vec<Change>> {
        let mut done = Vec::new();
        for link in self.kernel.links(netns).await? {
            done.push(self.apply_link(netns, &link, want).await?);
        }
        Ok(done)
    }

    async fn apply_link(
        &self,
        netns: &Path,
        link: &ShapedLink,
        want: Option<&Egress>,
    ) -> ApiResult<Change> {
        let ours = link.root.as_ref().filter(|r| r.is_berths());
        let Some(e) = want else {
            if ours.is_some() {
                self.kernel
                    .delete_qdisc(netns, del_qdisc_message(link.index))
                    .await?;
                return Ok(Change::Removed(link.name.clone()));
            }
            return Ok(Change::Kept(link.name.clone()));
        };
        let params = TbfParams::of(e);
        if ours
            .and_then(|r| r.tbf.as_ref())
            .is_some_and(|got| params.matches(got))
        {
            return Ok(Change::Kept(link.name.clone()));
        }
        self.kernel
            .replace_qdisc(netns, new_qdisc_message(link.index, e))
            .await?;
        tracing::debug!(link = %link.name, netns = %netns.display(), egress = %e, "egress shaping set");
        Ok(Change::Set(link.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTc;
    use super::super::units::Rate;
    use super::*;

    fn egress(mbit: u64) -> Egress {
        Egress {
            rate: Rate(mbit * 125_000),
            burst: 65_536,
        }
    }

    fn shaper() -> Shaper<FakeTc> {
        let k = FakeTc::default();
        k.add_link("/ns/a", 2, "eth0");
        Shaper::new(k)
    }

    #[tokio::test]
    async fn the_same_limit_twice_sends_nothing_the_second_time() -> ApiResult<()> {
        let s = shaper();
        let ns = Path::new("/ns/a");
        assert_eq!(
            s.apply(ns, Some(&egress(50))).await?,
            vec![Change::Set("eth0".into())]
        );
        assert_eq!(s.kernel().calls(), vec!["replace /ns/a 2 tbf 6250000"]);
        assert_eq!(
            s.apply(ns, Some(&egress(50))).await?,
            vec![Change::Kept("eth0".into())]
        );
        assert_eq!(
            s.kernel().calls().len(),
            1,
            "nothing sent for the same limit"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_new_rate_replaces_in_one_request_and_none_removes() -> ApiResult<()> {
        let s = shaper();
        let ns = Path::new("/ns/a");
        s.apply(ns, Some(&egress(50))).await?;
        s.apply(ns, Some(&egress(200))).await?;
        let root = s.kernel().root("/ns/a", 2).expect("root qdisc");
        assert!(root.is_berths());
        assert_eq!(root.tbf.map(|t| t.rate), Some(25_000_000));
        // A change in place: no delete in between (never a moment without shaping).
        assert_eq!(
            s.kernel().calls(),
            vec![
                "replace /ns/a 2 tbf 6250000",
                "replace /ns/a 2 tbf 25000000"
            ]
        );
        let burst = Egress {
            burst: 131_072,
            ..egress(200)
        };
        assert_eq!(
            s.apply(ns, Some(&burst)).await?,
            vec![Change::Set("eth0".into())],
            "a new burst alone is a change"
        );
        assert_eq!(
            s.apply(ns, None).await?,
            vec![Change::Removed("eth0".into())]
        );
        assert_eq!(s.apply(ns, None).await?, vec![Change::Kept("eth0".into())]);
        assert_eq!(
            s.kernel().calls().last().map(String::as_str),
            Some("delete /ns/a 2")
        );
        assert_eq!(s.kernel().calls().len(), 4);
        Ok(())
    }

    #[tokio::test]
    async fn a_foreign_root_qdisc_is_replaced_but_never_removed() -> ApiResult<()> {
        let s = shaper();
        let ns = Path::new("/ns/a");
        s.kernel().set_foreign_root("/ns/a", 2, "htb");
        assert_eq!(s.apply(ns, None).await?, vec![Change::Kept("eth0".into())]);
        assert!(s.kernel().calls().is_empty());
        s.apply(ns, Some(&egress(10))).await?;
        assert_eq!(s.kernel().calls(), vec!["replace /ns/a 2 tbf 1250000"]);
        Ok(())
    }

    #[tokio::test]
    async fn every_veth_of_the_container_is_shaped() -> ApiResult<()> {
        let s = shaper();
        s.kernel().add_link("/ns/a", 5, "eth1");
        s.kernel().add_link("/ns/b", 2, "eth0");
        let done = s.apply(Path::new("/ns/a"), Some(&egress(10))).await?;
        assert_eq!(
            done,
            vec![Change::Set("eth0".into()), Change::Set("eth1".into())]
        );
        assert_eq!(
            s.kernel().calls(),
            vec!["replace /ns/a 2 tbf 1250000", "replace /ns/a 5 tbf 1250000"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn kernel_failures_are_reported() {
        let s = shaper();
        s.kernel()
            .fail_next("install: Invalid argument (os error 22)");
        let e = s
            .apply(Path::new("/ns/a"), Some(&egress(10)))
            .await
            .expect_err("failure");
        assert!(e.to_string().contains("Invalid argument"), "{e}");
    }
}
