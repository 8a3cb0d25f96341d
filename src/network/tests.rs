//! Unit tests of [`NetworkManager`] against the recording fake kernel.

use super::fake::FakeKernel;
use super::ports;
use super::*;
use crate::error::ApiError;
use crate::store::Store;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// A store and a configuration in a temporary directory (shared by the network unit
/// tests).
pub(super) struct Env {
    pub(super) _dir: tempfile::TempDir,
    pub(super) store: Store,
    pub(super) cfg: NetConfig,
}

/// [`Env`] with bridge `bt0`, 10.5.0.1/24 and table `tb`.
pub(super) fn env() -> anyhow::Result<Env> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store"))?;
    let mut cfg = NetConfig::new(dir.path().join("exec"));
    cfg.bridge = "bt0".into();
    cfg.bip = Some("10.5.0.1/24".into());
    cfg.nft_table = "tb".into();
    Ok(Env {
        _dir: dir,
        store,
        cfg,
    })
}

async fn open(e: &Env) -> anyhow::Result<NetworkManager<FakeKernel>> {
    Ok(NetworkManager::open_with(e.cfg.clone(), &e.store, FakeKernel::default()).await?)
}

fn bridge_req(name: &str) -> NetRequest {
    NetRequest {
        mode: NetMode::Bridge,
        name: name.into(),
        mac: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn open_sets_up_bridge_forwarding_and_firewall_once() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    {
        let st = m.kernel().st();
        assert_eq!(
            st.bridges.get("bt0").map(String::as_str),
            Some("10.5.0.1/24")
        );
        assert!(st.forward);
        let nft = st.nft.clone().unwrap_or_default();
        assert_eq!(
            nft.chains,
            vec![
                "isolation",
                "prerouting",
                "output",
                "postrouting",
                "forward"
            ]
        );
        let comments: Vec<_> = nft.rules.iter().filter_map(|r| r.2.clone()).collect();
        assert_eq!(
            comments,
            vec![
                "bridge bt0: masquerade 10.5.0.0/24",
                "bridge bt0: accept replies",
                "bridge bt0: accept outbound"
            ]
        );
    }
    // A second sync on the same kernel changes nothing.
    m.kernel().clear_calls();
    m.sync_firewall().await?;
    assert!(
        m.kernel().st().calls.is_empty(),
        "{:?}",
        m.kernel().st().calls
    );
    // Ids are stable across reopen.
    let id = m.inspect("bridge")?.id;
    drop(m);
    let m2 = open(&e).await?;
    assert_eq!(m2.inspect("bridge")?.id, id);
    assert_eq!(id.len(), 64);
    Ok(())
}

#[tokio::test]
async fn ensure_is_idempotent_and_release_cleans_up() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    m.kernel().clear_calls();
    let a = m.ensure("c1", &bridge_req("web")).await?;
    assert_eq!(a.network, "bridge");
    assert_eq!(a.ip, Some(Ipv4Addr::new(10, 5, 0, 2)));
    assert_eq!(a.prefix_len, 24);
    assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 5, 0, 1)));
    assert_eq!(a.mac, "02:42:0a:05:00:02");
    assert_eq!(a.sandbox_path(), Some(m.netns_path("c1")));
    assert_eq!(a.host_gateway, a.gateway);
    assert_eq!(a.endpoint_id.len(), 64);
    let veth = a.host_veth.clone().unwrap_or_default();
    assert!(veth.len() == 11 && veth.starts_with("veth"), "{veth}");
    {
        let st = m.kernel().st();
        let peer = st.peers.get(&veth).cloned();
        let peer = peer.ok_or_else(|| anyhow::anyhow!("no peer"))?;
        assert_eq!(peer.ifname, "eth0");
        assert_eq!(peer.bridge, "bt0");
        assert_eq!(peer.mac, [2, 0x42, 10, 5, 0, 2]);
        assert_eq!(st.calls.len(), 2, "{:?}", st.calls);
    }
    // Same again: nothing is recreated.
    m.kernel().clear_calls();
    assert_eq!(m.ensure("c1", &bridge_req("web")).await?, a);
    assert!(m.kernel().st().calls.is_empty());
    // Second container gets the next address.
    let b = m.ensure("c2", &bridge_req("db")).await?;
    assert_eq!(b.ip, Some(Ipv4Addr::new(10, 5, 0, 3)));
    let insp = m.inspect("bridge")?;
    assert_eq!(insp.containers.len(), 2);
    assert_eq!(insp.containers["c2"].name, "db");
    assert_eq!(insp.containers["c2"].ipv4_address, "10.5.0.3/24");
    assert!(m.networks()?.iter().all(|n| n.containers.is_empty()));
    // Release removes veth, netns, lease; twice is fine.
    m.release("c1").await?;
    m.release("c1").await?;
    {
        let st = m.kernel().st();
        assert!(!st.links.contains_key(&veth));
        assert!(!st.netns.contains(&m.netns_path("c1")));
    }
    assert_eq!(m.inspect("bridge")?.containers.len(), 1);
    // The freed address is handed out again.
    let c = m.ensure("c3", &bridge_req("x")).await?;
    assert_eq!(c.ip, Some(Ipv4Addr::new(10, 5, 0, 2)));
    Ok(())
}

#[tokio::test]
async fn vanished_veth_is_rebuilt_with_the_same_address() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let a = m.ensure("c1", &bridge_req("web")).await?;
    let old = a.host_veth.clone().unwrap_or_default();
    m.kernel().st().links.remove(&old);
    let b = m.ensure("c1", &bridge_req("web")).await?;
    assert_eq!(b.ip, a.ip);
    assert_ne!(b.host_veth, a.host_veth);
    // Detach keeps the lease; ensure after it rebuilds with the same address.
    m.detach("c1").await?;
    assert!(!m.kernel().st().netns.contains(&m.netns_path("c1")));
    assert!(m.inspect("bridge")?.containers.is_empty());
    let c = m.ensure("c1", &bridge_req("web")).await?;
    assert_eq!(c.ip, a.ip);
    Ok(())
}

#[tokio::test]
async fn mac_override_and_bad_mac() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let mut req = bridge_req("m");
    req.mac = Some("12:34:56:78:9A:BC".into());
    let a = m.ensure("c1", &req).await?;
    assert_eq!(a.mac, "12:34:56:78:9a:bc");
    req.mac = Some("zz".into());
    assert!(matches!(
        m.ensure("c2", &req).await,
        Err(ApiError::BadRequest(_))
    ));
    assert!(matches!(
        m.ensure("../x", &bridge_req("x")).await,
        Err(ApiError::BadRequest(_))
    ));
    Ok(())
}

#[tokio::test]
async fn failed_veth_setup_is_cleaned_up() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    m.kernel().st().fail_add_veth = true;
    assert!(m.ensure("c1", &bridge_req("x")).await.is_err());
    assert!(m.kernel().st().links.is_empty());
    let a = m.ensure("c1", &bridge_req("x")).await?;
    assert!(a.host_veth.is_some());
    Ok(())
}

#[tokio::test]
async fn host_none_and_container_modes() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let h = m
        .ensure(
            "h",
            &NetRequest {
                mode: NetMode::Host,
                name: "h".into(),
                mac: None,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(
        (h.network.as_str(), h.sandbox_path(), h.ip),
        ("host", None, None)
    );
    assert!(h.has_endpoint() && h.ip_string().is_empty() && h.mac.is_empty());
    assert_eq!(h.host_gateway, Some(Ipv4Addr::new(10, 5, 0, 1)));
    assert_eq!(h.network_id, m.inspect("host")?.id);
    let n = m
        .ensure(
            "n",
            &NetRequest {
                mode: NetMode::None,
                name: "n".into(),
                mac: None,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(n.network, "none");
    assert_eq!(n.sandbox_path(), Some(m.netns_path("n")));
    assert!(m.kernel().st().links.is_empty());
    let path = m.netns_path("n").to_string_lossy().into_owned();
    let req = NetRequest {
        mode: NetMode::Container(path.clone()),
        name: "s".into(),
        mac: None,
        ..Default::default()
    };
    let s = m.ensure("s", &req).await?;
    assert_eq!(s.sandbox_path(), Some(m.netns_path("n")));
    assert!(!s.has_endpoint());
    assert_eq!(s.clone().into_option(), None);
    assert_eq!(n.clone().into_option(), Some(n.clone()));
    // Releasing the sharer leaves the owner's namespace alone.
    m.release("s").await?;
    assert!(m.kernel().st().netns.contains(&m.netns_path("n")));
    m.release("n").await?;
    assert!(matches!(
        m.ensure("s", &req).await,
        Err(ApiError::Conflict(_))
    ));
    Ok(())
}

#[tokio::test]
async fn reconcile_removes_only_dead_containers_things() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let live = m.ensure("live", &bridge_req("a")).await?;
    let dead = m.ensure("dead", &bridge_req("b")).await?;
    m.ensure(
        "deadnone",
        &NetRequest {
            mode: NetMode::None,
            name: "c".into(),
            mac: None,
            ..Default::default()
        },
    )
    .await?;
    // A stray veth on our bridge and one on another bridge.
    m.kernel()
        .st()
        .links
        .insert("vethdeadbee".into(), "bt0".into());
    m.kernel()
        .st()
        .links
        .insert("vethother00".into(), "other".into());
    m.kernel().clear_calls();
    m.reconcile(&["live".to_string()]).await?;
    let st = m.kernel().st();
    let lv = live.host_veth.clone().unwrap_or_default();
    assert!(st.links.contains_key(&lv));
    assert!(st.links.contains_key("vethother00"));
    assert!(!st.links.contains_key("vethdeadbee"));
    assert!(!st
        .links
        .contains_key(&dead.host_veth.clone().unwrap_or_default()));
    let ns: Vec<_> = st.netns.iter().cloned().collect();
    assert_eq!(ns, vec![m.netns_path("live")]);
    assert!(!st
        .calls
        .iter()
        .any(|c| c.contains("add_veth") || c.contains("create_netns")));
    drop(st);
    assert_eq!(m.inspect("bridge")?.containers.len(), 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_ensures_get_distinct_addresses() -> anyhow::Result<()> {
    let e = env()?;
    let m = Arc::new(open(&e).await?);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move { m.ensure(&format!("c{i}"), &bridge_req("x")).await })
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for t in tasks {
        let a = t.await??;
        assert!(ips.insert(a.ip), "duplicate {:?}", a.ip);
    }
    assert_eq!(ips.len(), 12);
    Ok(())
}

#[tokio::test]
async fn inspect_lookup_rules() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let none = m.inspect("none")?;
    assert_eq!(none.driver, "null");
    assert_eq!(m.inspect(&none.id)?.name, "none");
    assert_eq!(m.inspect(&none.id[..12])?.name, "none");
    let bridge = m.inspect("bridge")?;
    assert_eq!(bridge.ipam.config[0].subnet, "10.5.0.0/24");
    assert_eq!(bridge.options["com.docker.network.bridge.name"], "bt0");
    assert_eq!(
        bridge.options["com.docker.network.bridge.default_bridge"],
        "true"
    );
    let err = m.inspect("nosuch").err();
    assert_eq!(
        err,
        Some(ApiError::NotFound("network nosuch not found".into()))
    );
    assert!(m.inspect("").is_err());
    let names: Vec<_> = m.networks()?.into_iter().map(|n| n.name).collect();
    assert_eq!(names, vec!["bridge", "host", "none"]);
    Ok(())
}

#[tokio::test]
async fn published_ports_get_rules_and_go_with_the_endpoint() -> anyhow::Result<()> {
    let e = env()?;
    let m = open(&e).await?;
    let id = "c0ffee00c0ffee00";
    let att = m.ensure(id, &bridge_req("web")).await?;
    let ip = att.ip.ok_or_else(|| anyhow::anyhow!("no ip"))?;
    let reqs = ports::requests(
        Some(&serde_json::json!({"80/tcp": [{"HostIp": "", "HostPort": "18080"}]})),
        false,
        &[],
    )?;
    let veth = att.host_veth.clone();
    let got = m
        .publish(id, "web (ep)", "bt0", ip, veth.as_deref(), &reqs)
        .await?;
    assert_eq!(got[0].host_port, 18080);
    let owned = |m: &NetworkManager<FakeKernel>| {
        let st = m.kernel().st();
        st.nft
            .as_ref()
            .map(|n| {
                n.rules
                    .iter()
                    .filter(|r| {
                        r.2.as_deref()
                            .is_some_and(|c| c.starts_with("ports c0ffee00c0ff:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        owned(&m),
        5,
        "dnat x2, hairpin, accept, localhost masquerade"
    );
    assert!(m
        .kernel()
        .st()
        .calls
        .iter()
        .any(|c| c.starts_with("port_forwarding bt0 veth")));
    // Publishing again changes nothing.
    let calls = m.kernel().st().calls.len();
    m.publish(id, "web (ep)", "bt0", ip, veth.as_deref(), &reqs)
        .await?;
    assert_eq!(m.published(id)?, got);
    assert!(!m.kernel().st().calls[calls..]
        .iter()
        .any(|c| c.starts_with("nft_apply")));
    // Another container cannot take the port.
    let other = m.ensure("beef0000beef0000", &bridge_req("b")).await?;
    let err = m
        .publish(
            "beef0000beef0000",
            "b (e2)",
            "bt0",
            other.ip.unwrap_or(ip),
            None,
            &reqs,
        )
        .await
        .expect_err("port in use");
    assert!(
        err.to_string().contains("port is already allocated"),
        "{err}"
    );
    // The endpoint goes: rules and port too.
    m.detach(id).await?;
    assert_eq!(owned(&m), 0);
    assert!(m.published(id)?.is_empty());
    let flushed = format!("flush_conntrack {ip}");
    assert!(m.kernel().st().calls.contains(&flushed));
    // Leftovers of a removed container are reconciled away.
    m.publish(id, "web (ep)", "bt0", ip, None, &reqs).await?;
    m.reconcile(&["beef0000beef0000".to_string()]).await?;
    assert_eq!(owned(&m), 0);
    assert!(m.published(id)?.is_empty());
    Ok(())
}
