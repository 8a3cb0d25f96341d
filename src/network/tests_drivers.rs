//! Unit tests of macvlan and sriov user networks on [`NetworkManager`] against the
//! recording fake kernel: macvlan create (parent checks, no bridge, no rules), endpoints as
//! macvlan children in the container's netns, connect/disconnect, `network rm`; sriov
//! create refusals (a fake sysfs root). VF attach needs real netdevs: see
//! tests/net_sriov_docker.rs.

use super::fake::FakeKernel;
use super::*;
use crate::error::ApiError;
use crate::store::Store;
use berth_api::models::NetworkCreateRequest;
use std::net::Ipv4Addr;

fn create_req(json: &str) -> anyhow::Result<NetworkCreateRequest> {
    Ok(serde_json::from_str(json)?)
}

fn req(net: &str, name: &str, ip: Option<Ipv4Addr>) -> NetRequest {
    NetRequest {
        mode: NetMode::User(net.into()),
        name: name.into(),
        ip,
        ..Default::default()
    }
}

const MV: &str = r#"{"Name":"mv","Driver":"macvlan","IPAM":{"Config":[{"Subnet":"10.8.0.0/24","Gateway":"10.8.0.254"}]},"Options":{"parent":"eth0","macvlan_mode":"private"}}"#;

#[tokio::test]
async fn macvlan_network_create_endpoints_and_remove() -> anyhow::Result<()> {
    let e = super::tests::env()?;
    let m = NetworkManager::open_with(e.cfg.clone(), &e.store, FakeKernel::default()).await?;
    let bridges = m.kernel().st().bridges.clone();
    let nft = format!("{:?}", m.kernel().st().nft);

    // Refusals change nothing: a missing parent, a bad mode, no parent.
    let missing = m
        .create_network(&create_req(&MV.replace("\"eth0\"", "\"nope9\""))?)
        .await
        .err();
    assert_eq!(
        missing,
        Some(ApiError::Internal(
            "-o parent interface was not found on the host: nope9".into()
        ))
    );
    let vlan = m
        .create_network(&create_req(&MV.replace("\"eth0\"", "\"eth0.10\""))?)
        .await;
    assert!(matches!(vlan, Err(ApiError::NotImplemented(_))));
    let mode = m
        .create_network(&create_req(&MV.replace("private", "bogus"))?)
        .await
        .err();
    assert_eq!(
        mode.map(|e| e.to_string()).as_deref(),
        Some("requested macvlan mode 'bogus' is not valid, 'bridge' mode is the macvlan driver default")
    );
    assert!(m.networks()?.iter().all(|n| n.name != "mv"));

    let id = m.create_network(&create_req(MV)?).await?;
    // No bridge, no firewall change.
    assert_eq!(m.kernel().st().bridges, bridges);
    assert_eq!(format!("{:?}", m.kernel().st().nft), nft);
    let view = m.inspect("mv")?;
    assert_eq!(view.driver, "macvlan");
    assert_eq!(view.options["parent"], "eth0");
    assert_eq!(view.options["macvlan_mode"], "private");
    // dockerd allows one macvlan network per parent.
    let again = m
        .create_network(&create_req(
            &MV.replace("\"mv\"", "\"mv2\"").replace("10.8.0", "10.9.0"),
        )?)
        .await
        .err();
    assert_eq!(
        again,
        Some(ApiError::Internal(format!(
            "network {id} is already using parent interface eth0"
        )))
    );

    // A container gets a macvlan child as eth0 with the lease's address, MAC and route.
    m.kernel().clear_calls();
    let a = m
        .ensure("ca", &req("mv", "a", Some(Ipv4Addr::new(10, 8, 0, 9))))
        .await?;
    assert_eq!(a.ip, Some(Ipv4Addr::new(10, 8, 0, 9)));
    assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 8, 0, 254)));
    assert_eq!(a.host_veth, None);
    let ns = m.netns_path("ca");
    let calls = m.kernel().st().calls.clone();
    assert!(calls.contains(&format!(
        "add_macvlan eth0 private {} eth0 02:42:0a:08:00:09 10.8.0.9/24 via 10.8.0.254",
        ns.display()
    )));
    assert!(!calls.iter().any(|c| c.starts_with("add_veth")));
    // Idempotent: a second ensure keeps the same endpoint.
    let again = m
        .ensure("ca", &req("mv", "a", Some(Ipv4Addr::new(10, 8, 0, 9))))
        .await?;
    assert_eq!(again.endpoint_id, a.endpoint_id);
    assert_eq!(m.kernel().st().macvlans.len(), 1);

    // In use: rm refused.
    let busy = m.remove_network("mv").await.err();
    assert!(matches!(busy, Some(ApiError::Forbidden(e)) if e.contains("has active endpoints")));

    // connect/disconnect of a container on the default bridge: eth1, no default route.
    m.ensure(
        "cb",
        &NetRequest {
            name: "b".into(),
            ..Default::default()
        },
    )
    .await?;
    let b = m.connect("cb", "mv", &req("mv", "b", None), true).await?;
    assert!(b.is_some());
    let nsb = m.netns_path("cb");
    assert!(m
        .kernel()
        .st()
        .macvlans
        .get(&(nsb.clone(), "eth1".to_string()))
        .is_some_and(|s| s.gateway.is_none()));
    m.disconnect("cb", "mv").await?;
    assert!(!m
        .kernel()
        .st()
        .macvlans
        .contains_key(&(nsb, "eth1".to_string())));

    // Stop keeps the lease and drops the link; rm of the container frees the network.
    m.detach("ca").await?;
    assert!(m.kernel().st().macvlans.is_empty());
    let back = m
        .ensure("ca", &req("mv", "a", Some(Ipv4Addr::new(10, 8, 0, 9))))
        .await?;
    assert_eq!(back.ip, a.ip);
    m.release("ca").await?;
    m.release("cb").await?;
    m.remove_network(&id[..6]).await?;
    assert!(m.networks()?.iter().all(|n| n.name != "mv"));
    assert_eq!(m.kernel().st().bridges, bridges);
    Ok(())
}

#[tokio::test]
async fn sriov_network_create_refusals_change_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store"))?;
    let mut cfg = NetConfig::new(dir.path().join("exec"));
    cfg.bridge = "bt0".into();
    cfg.bip = Some("10.5.0.1/24".into());
    cfg.nft_table = "tb".into();
    // A sysfs tree where eth0 exists but is no SR-IOV PF.
    cfg.sriov_sysfs_root = dir.path().join("sys");
    std::fs::create_dir_all(dir.path().join("sys/class/net/eth0/device"))?;
    let m = NetworkManager::open_with(cfg, &store, FakeKernel::default()).await?;
    let before = m.networks()?.len();
    m.kernel().clear_calls();
    let cases = [
        (r#"{"Name":"s","Driver":"sriov"}"#, "-o parent is required"),
        (
            r#"{"Name":"s","Driver":"sriov","Options":{"parent":"eth0","color":"red"}}"#,
            "unknown sriov option",
        ),
        (
            r#"{"Name":"s","Driver":"sriov","Options":{"parent":"eth0","vlan":"5000"}}"#,
            "vlan id must be between 0-4094",
        ),
        (
            r#"{"Name":"s","Driver":"sriov","Options":{"parent":"eth9"}}"#,
            "-o parent interface was not found on the host: eth9",
        ),
        (
            r#"{"Name":"s","Driver":"sriov","Options":{"parent":"eth0"}}"#,
            "interface eth0 is not an SR-IOV physical function",
        ),
    ];
    for (json, want) in cases {
        let e = m.create_network(&create_req(json)?).await.err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(want), "{json}: {msg}");
    }
    assert_eq!(m.networks()?.len(), before);
    assert!(m.kernel().st().calls.is_empty());
    Ok(())
}
