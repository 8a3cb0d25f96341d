//! Root tests of the macvlan and sriov drivers' kernel side against the real kernel: real
//! network namespaces (made with `ip netns add`, no daemon needed), veth pairs, macvlan
//! links, pings; and the netlink encoding of SR-IOV VF settings against the kernel's
//! validation on a veth "PF" (the VF attach/release tests are in net_sriov.rs).
//! Every name carries a per-test tag and a guard removes everything even when a test fails.

mod netkit;

use berthd::network::macvlan::MacvlanSpec;
use berthd::network::options::MacvlanMode;
use berthd::network::sriov::{NetlinkPf, PfConfigurator, VfSetting};
use berthd::network::{Kernel, NetlinkKernel};
use netkit::{is_root, netns_path, ping, run, Guard};

fn macvlan(g: &Guard, parent: &str, mode: MacvlanMode, ns: &str, host: u8) -> MacvlanSpec {
    MacvlanSpec {
        parent: parent.into(),
        mode,
        netns: netns_path(ns),
        ifname: "eth0".into(),
        mac: [0x02, 0x42, 10, 214, g.octet, host],
        ip: g.ip(host),
        prefix_len: 24,
        gateway: Some(g.ip(1)),
        mtu: None,
    }
}

/// A "LAN" namespace holding the peer of a host veth `parent` with the subnet's .1.
fn lan(g: &mut Guard) -> anyhow::Result<(String, String)> {
    let (parent, peer) = g.veth("mp", "ml")?;
    let lan = g.ns("lan")?;
    run(&["ip", "link", "set", &peer, "netns", &lan])?;
    let gw = format!("{}/24", g.ip(1));
    run(&["ip", "-n", &lan, "addr", "add", &gw, "dev", &peer])?;
    run(&["ip", "-n", &lan, "link", "set", &peer, "up"])?;
    Ok((parent, lan))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_containers_get_fixed_addresses_on_the_parent_segment() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut g = Guard::new();
    let (parent, lan) = lan(&mut g)?;
    let c1 = g.ns("mc1")?;
    let c2 = g.ns("mc2")?;
    let k = NetlinkKernel::new()?;
    let s1 = macvlan(&g, &parent, MacvlanMode::Bridge, &c1, 11);
    let s2 = macvlan(&g, &parent, MacvlanMode::Bridge, &c2, 12);
    k.add_macvlan(&s1).await?;
    k.add_macvlan(&s2).await?;
    // Repeating the call keeps what is right (same link, same ifindex); a different MAC
    // replaces the link.
    let ifindex = |ns: &str| {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            "/sys/class/net/eth0/ifindex",
        ])
    };
    let before = ifindex(&c1)?;
    k.add_macvlan(&s1).await?;
    assert_eq!(ifindex(&c1)?, before);
    let mut other_mac = s1.clone();
    other_mac.mac[5] ^= 0x80;
    k.add_macvlan(&other_mac).await?;
    assert_ne!(ifindex(&c1)?, before);
    k.add_macvlan(&s1).await?;

    let link = run(&["ip", "-n", &c1, "-d", "link", "show", "eth0"])?;
    assert!(link.contains("macvlan mode bridge"), "{link}");
    assert!(
        link.contains(&format!("02:42:0a:d6:{:02x}:0b", g.octet)),
        "{link}"
    );
    assert!(link.contains("UP"), "{link}");
    let route = run(&["ip", "-n", &c1, "route", "show", "default"])?;
    assert!(
        route.contains(&format!("via {} dev eth0", g.ip(1))),
        "{route}"
    );

    ping(&lan, &g.ip(11).to_string())?;
    ping(&lan, &g.ip(12).to_string())?;
    ping(&c1, &g.ip(12).to_string())?;
    ping(&c2, &g.ip(11).to_string())?;
    ping(&c1, &g.ip(1).to_string())?;
    // The LAN learnt the container's own MAC, not the parent's.
    let neigh = run(&["ip", "-n", &lan, "neigh", "show", &g.ip(11).to_string()])?;
    assert!(
        neigh.contains(&format!("02:42:0a:d6:{:02x}:0b", g.octet)),
        "{neigh}"
    );

    // A missing parent is refused with dockerd's words and creates nothing.
    let mut bad = macvlan(&g, "nope", MacvlanMode::Bridge, &c1, 13);
    bad.ifname = "eth1".into();
    let e = k.add_macvlan(&bad).await.err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("-o parent interface was not found on the host: nope")
    );
    assert!(run(&["ip", "-n", &c1, "link", "show", "eth1"]).is_err());

    k.delete_link_in(&s1.netns, "eth0").await?;
    k.delete_link_in(&s1.netns, "eth0").await?;
    assert!(run(&["ip", "-n", &c1, "link", "show", "eth0"]).is_err());
    assert!(ping(&lan, &g.ip(11).to_string()).is_err());
    ping(&lan, &g.ip(12).to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_private_mode_isolates_children() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut g = Guard::new();
    let (parent, lan) = lan(&mut g)?;
    let c1 = g.ns("mp1")?;
    let c2 = g.ns("mp2")?;
    let k = NetlinkKernel::new()?;
    k.add_macvlan(&macvlan(&g, &parent, MacvlanMode::Private, &c1, 21))
        .await?;
    k.add_macvlan(&macvlan(&g, &parent, MacvlanMode::Private, &c2, 22))
        .await?;
    let link = run(&["ip", "-n", &c1, "-d", "link", "show", "eth0"])?;
    assert!(link.contains("macvlan mode private"), "{link}");
    ping(&lan, &g.ip(21).to_string())?;
    ping(&lan, &g.ip(22).to_string())?;
    assert!(
        ping(&c1, &g.ip(22).to_string()).is_err(),
        "private children reached each other"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vf_settings_pass_the_kernels_validation_on_a_veth_pf() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut g = Guard::new();
    let ns = g.ns("pf")?;
    run(&[
        "ip", "-n", &ns, "link", "add", "vpf", "type", "veth", "peer", "name", "vpeer",
    ])?;
    let pf = NetlinkPf::open_in(&netns_path(&ns)).await?;
    // Well-formed: the kernel validates the nested attributes, then finds that veth has no
    // ndo_set_vf_* and answers EOPNOTSUPP. A real PF driver would apply them here.
    let settings = [
        VfSetting::Mac([2, 0, 0, 0, 0, 1]),
        VfSetting::Vlan {
            vlan: 100,
            qos: 3,
            proto: berthd::network::options::VlanProto::Dot1Q,
        },
        VfSetting::Vlan {
            vlan: 100,
            qos: 3,
            proto: berthd::network::options::VlanProto::Dot1Ad,
        },
        VfSetting::Rate { min: 0, max: 1000 },
        VfSetting::SpoofCheck(false),
        VfSetting::Trust(true),
    ];
    for s in settings {
        let e = pf.apply("vpf", 0, s).await.err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("os error 95"), "{}: {e}", s.describe());
        assert!(e.contains("set VF 0"), "{e}");
    }
    // Malformed: an 8-byte IFLA_VF_MAC fails the kernel's length policy with ERANGE.
    let short = rtnetlink::packet_route::link::VfInfo::Other(
        rtnetlink::packet_core::DefaultNla::new(1, vec![0; 8]),
    );
    let e = pf
        .set_vf_info("vpf", vec![short], "short mac")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("os error 34"), "{e}");
    // Reading back: the kernel answers the VF-filtered dump, and a veth lists no VFs.
    assert_eq!(pf.read_vf("vpf", 0).await?, None);
    // No such PF.
    assert!(pf.apply("nope", 0, VfSetting::Trust(true)).await.is_err());
    assert!(pf.read_vf("nope", 0).await.is_err());
    Ok(())
}
