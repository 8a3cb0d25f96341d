//! Unit tests of user-defined networks on [`NetworkManager`] against the recording fake
//! kernel: create/inspect/rm/prune, endpoints with `--ip`, and crash recovery.

use super::fake::FakeKernel;
use super::tests::env;
use super::*;
use crate::error::ApiError;
use berth_api::models::NetworkCreateRequest;
use std::net::Ipv4Addr;

fn create_req(json: &str) -> anyhow::Result<NetworkCreateRequest> {
    Ok(serde_json::from_str(json)?)
}

fn user_req(net: &str, name: &str, ip: Option<Ipv4Addr>) -> NetRequest {
    NetRequest {
        mode: NetMode::User(net.into()),
        name: name.into(),
        ip,
        aliases: vec!["al".into()],
        ..Default::default()
    }
}

fn comments(m: &NetworkManager<FakeKernel>) -> Vec<String> {
    let st = m.kernel().st();
    let nft = st.nft.clone().unwrap_or_default();
    nft.rules.iter().filter_map(|r| r.2.clone()).collect()
}

#[tokio::test]
async fn create_inspect_endpoints_and_remove() -> anyhow::Result<()> {
    let e = env()?;
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, FakeKernel::default()).await?;
    let id = m
        .create_network(&create_req(
            r#"{"Name":"n1","IPAM":{"Config":[{"Subnet":"10.7.0.0/24"}]},"Labels":{"a":"b"}}"#,
        )?)
        .await?;
    let br = format!("br-{}", &id[..12]);
    assert_eq!(
        m.kernel().st().bridges.get(&br).map(String::as_str),
        Some("10.7.0.1/24")
    );
    assert!(comments(&m).contains(&format!("bridge {br}: masquerade 10.7.0.0/24")));
    let dup = m
        .create_network(&create_req(r#"{"Name":"n1"}"#)?)
        .await
        .err();
    assert_eq!(
        dup,
        Some(ApiError::Conflict(
            "network with name n1 already exists".into()
        ))
    );
    let overlap = m
        .create_network(&create_req(
            r#"{"Name":"n2","IPAM":{"Config":[{"Subnet":"10.7.0.128/25"}]}}"#,
        )?)
        .await
        .err();
    assert!(matches!(overlap, Some(ApiError::Forbidden(m)) if m.contains("Pool overlaps")));
    let overlap_default = m
        .create_network(&create_req(
            r#"{"Name":"n2","IPAM":{"Config":[{"Subnet":"10.5.0.0/16"}]}}"#,
        )?)
        .await;
    assert!(overlap_default.is_err());

    // Endpoints: dynamic, fixed, in use, outside.
    let a = m.ensure("ca", &user_req("n1", "a", None)).await?;
    assert_eq!(a.ip, Some(Ipv4Addr::new(10, 7, 0, 2)));
    assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 7, 0, 1)));
    assert!(a.user_network && a.network == "n1" && a.network_id == id);
    let b = m
        .ensure(
            "cb",
            &user_req(&id[..5], "b", Some(Ipv4Addr::new(10, 7, 0, 50))),
        )
        .await?;
    assert_eq!(b.ip, Some(Ipv4Addr::new(10, 7, 0, 50)));
    assert_eq!(b.ipam_ip, Some(Ipv4Addr::new(10, 7, 0, 50)));
    let used = m
        .ensure(
            "cc",
            &user_req("n1", "c", Some(Ipv4Addr::new(10, 7, 0, 50))),
        )
        .await
        .err();
    assert_eq!(
        used,
        Some(ApiError::Forbidden("Address already in use".into()))
    );
    let nonet = m.ensure("cc", &user_req("nope", "c", None)).await.err();
    assert_eq!(
        nonet,
        Some(ApiError::NotFound("network nope not found".into()))
    );
    let on_default = m
        .ensure(
            "cc",
            &NetRequest {
                ip: Some(Ipv4Addr::new(10, 5, 0, 9)),
                ..Default::default()
            },
        )
        .await
        .err();
    assert!(
        matches!(on_default, Some(ApiError::BadRequest(m)) if m.contains("user defined networks only"))
    );
    let r = m.inspect("n1")?;
    assert_eq!(r.containers.len(), 2);
    assert_eq!(r.containers["cb"].ipv4_address, "10.7.0.50/24");
    assert_eq!(r.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(
        r.ipam.config[0].gateway, None,
        "gateway not given, not shown"
    );

    // Busy network cannot go; predefined never.
    let busy = m.remove_network("n1").await.err();
    assert!(matches!(busy, Some(ApiError::Forbidden(m)) if m.ends_with("has active endpoints")));
    let pre = m.remove_network("bridge").await.err();
    assert_eq!(
        pre,
        Some(ApiError::Forbidden(
            "bridge is a pre-defined network and cannot be removed".into()
        ))
    );
    // A stopped container keeps its address; a removed one frees it.
    m.detach("ca").await?;
    assert_eq!(m.ensure("ca", &user_req("n1", "a", None)).await?.ip, a.ip);
    m.release("ca").await?;
    m.release("cb").await?;
    assert!(m.inspect("n1")?.containers.is_empty());
    m.remove_network("n1").await?;
    assert!(!m.kernel().st().bridges.contains_key(&br));
    assert!(comments(&m).iter().all(|c| !c.contains(&br)));
    assert!(matches!(m.inspect("n1"), Err(ApiError::NotFound(_))));
    Ok(())
}

#[tokio::test]
async fn automatic_subnets_skip_routes_and_internal_networks_are_closed() -> anyhow::Result<()> {
    let e = env()?;
    let fake = FakeKernel::default();
    fake.st().routes = vec!["172.17.0.0/16".parse()?, "172.18.3.0/24".parse()?];
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, fake).await?;
    m.create_network(&create_req(r#"{"Name":"auto1"}"#)?)
        .await?;
    m.create_network(&create_req(r#"{"Name":"auto2","Internal":true}"#)?)
        .await?;
    let a1 = m.inspect("auto1")?;
    assert_eq!(a1.ipam.config[0].subnet, "172.19.0.0/16");
    assert_eq!(a1.ipam.config[0].gateway.as_deref(), Some("172.19.0.1"));
    let a2 = m.inspect("auto2")?;
    assert_eq!(a2.ipam.config[0].subnet, "172.20.0.0/16");
    assert!(a2.internal);
    let br2 = format!("br-{}", &a2.id[..12]);
    let c = comments(&m);
    assert!(c.contains(&format!("bridge {br2}: internal drop outbound")));
    assert!(!c
        .iter()
        .any(|x| x.contains(&br2) && x.contains("masquerade")));
    // --ip needs a configured subnet.
    let err = m
        .ensure("c1", &user_req("auto1", "c1", Some("172.19.0.9".parse()?)))
        .await
        .err();
    assert!(matches!(err, Some(ApiError::BadRequest(m)) if m.contains("user configured subnets")));
    // Prune takes both (no endpoints).
    let gone = m.prune_networks(|_| true).await?;
    assert_eq!(gone, vec!["auto1", "auto2"]);
    assert_eq!(m.networks()?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn restart_restores_bridges_and_finishes_removals() -> anyhow::Result<()> {
    let e = env()?;
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, FakeKernel::default()).await?;
    let keep = m
        .create_network(&create_req(
            r#"{"Name":"keep","IPAM":{"Config":[{"Subnet":"10.8.0.0/24"}]}}"#,
        )?)
        .await?;
    let gone = m
        .create_network(&create_req(
            r#"{"Name":"gone","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}"#,
        )?)
        .await?;
    let ip = m.ensure("c1", &user_req("keep", "c1", None)).await?.ip;
    // A crash in the middle of `rm gone`: the record says removing, the bridge is still up;
    // and someone deleted the bridge of `keep`.
    let mut rec: super::usernet::NetworkRecord = m
        .nets
        .get("gone")?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    if let Some(u) = rec.user.as_mut() {
        u.removing = true;
    }
    m.nets.put("gone", &rec)?;
    let (br_keep, br_gone) = (format!("br-{}", &keep[..12]), format!("br-{}", &gone[..12]));
    m.kernel().st().bridges.remove(&br_keep);
    let fake = FakeKernel::take_over(m.kernel());
    drop(m);
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, fake).await?;
    {
        let st = m.kernel().st();
        assert_eq!(
            st.bridges.get(&br_keep).map(String::as_str),
            Some("10.8.0.1/24")
        );
        assert!(!st.bridges.contains_key(&br_gone));
    }
    let c = comments(&m);
    assert!(c.iter().any(|x| x.contains(&br_keep)));
    assert!(!c.iter().any(|x| x.contains(&br_gone)));
    assert!(matches!(m.inspect("gone"), Err(ApiError::NotFound(_))));
    // The running container keeps its endpoint and address; nothing is re-created.
    m.kernel().clear_calls();
    assert_eq!(m.ensure("c1", &user_req("keep", "c1", None)).await?.ip, ip);
    assert!(
        m.kernel().st().calls.is_empty(),
        "{:?}",
        m.kernel().st().calls
    );
    // Reconcile with no live containers releases the lease.
    m.reconcile(&[]).await?;
    assert!(m.inspect("keep")?.containers.is_empty());
    Ok(())
}

#[tokio::test]
async fn connect_adds_interfaces_without_default_route_and_restores_them() -> anyhow::Result<()> {
    let e = env()?;
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, FakeKernel::default()).await?;
    for (name, sub) in [
        ("a", "10.7.0.0/24"),
        ("b", "10.8.0.0/24"),
        ("c", "10.9.0.0/24"),
    ] {
        m.create_network(&create_req(&format!(
            r#"{{"Name":"{name}","IPAM":{{"Config":[{{"Subnet":"{sub}"}}]}}}}"#
        ))?)
        .await?;
    }
    m.ensure("c1", &user_req("a", "c1", None)).await?;
    let b = m
        .connect(
            "c1",
            "b",
            &user_req("b", "c1", Some("10.8.0.9".parse()?)),
            true,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("no attachment"))?;
    assert_eq!(b.ip, Some(Ipv4Addr::new(10, 8, 0, 9)));
    let again = m
        .connect("c1", "b", &user_req("b", "c1", None), true)
        .await
        .err();
    assert_eq!(
        again,
        Some(ApiError::Forbidden(
            "endpoint with name c1 already exists in network b".into()
        ))
    );
    // Stopped-style connect: address reserved, no veth yet.
    assert!(m
        .connect("c1", "c", &user_req("c", "c1", None), false)
        .await?
        .is_none());
    {
        let st = m.kernel().st();
        let mut ifs: Vec<(String, bool)> = st
            .peers
            .values()
            .map(|p| (p.ifname.clone(), p.default_route))
            .collect();
        ifs.sort();
        assert_eq!(ifs, vec![("eth0".into(), true), ("eth1".into(), false)]);
    }
    // The next start brings eth1 and eth2 (idempotent for the one that exists).
    m.kernel().clear_calls();
    let extra = m.ensure_connected("c1", "c1", None).await?;
    assert_eq!(extra.len(), 2);
    assert_eq!(
        m.kernel().st().calls.len(),
        1,
        "{:?}",
        m.kernel().st().calls
    );
    let names: Vec<String> = m
        .kernel()
        .st()
        .peers
        .values()
        .map(|p| p.ifname.clone())
        .collect();
    assert!(names.contains(&"eth2".to_string()), "{names:?}");
    // Disconnect: veth and lease go; a second time is an error.
    m.disconnect("c1", "b").await?;
    assert!(m.inspect("b")?.containers.is_empty());
    let not = m.disconnect("c1", "b").await.err();
    assert!(
        matches!(not, Some(ApiError::Forbidden(m)) if m.contains("is not connected to network b"))
    );
    // Stop keeps the connected lease; removal drops everything.
    m.detach("c1").await?;
    assert_eq!(m.ensure_connected("c1", "c1", None).await?.len(), 1);
    m.release("c1").await?;
    assert!(m.inspect("c")?.containers.is_empty() && m.inspect("a")?.containers.is_empty());
    Ok(())
}
