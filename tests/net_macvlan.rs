//! Root test of `docker network create -d macvlan` end to end with the real docker CLI: a
//! veth pair stands in for the LAN (its host end is the parent, its peer sits in a "LAN"
//! namespace with an address in the subnet); containers with fixed `--ip` reach the LAN
//! and each other, the LAN reaches them, and `network rm` is refused while they exist.
//! The netkit guard removes the veth and namespace, the daemon guard the containers, even
//! when the test fails. Real hardware adds nothing here but a NIC as the parent.

mod common;
mod netkit;

use common::usernet::net_inspect;
use netkit::{ping, run, Guard};

#[test]
fn macvlan_network_containers_reach_the_lan_and_each_other() -> anyhow::Result<()> {
    let mut g = Guard::new();
    let Some(d) = common::daemon_with_image() else {
        return Ok(());
    };
    let (parent, peer) = g.veth("mp", "ml")?;
    let lan = g.ns("lan")?;
    run(&["ip", "link", "set", &peer, "netns", &lan])?;
    run(&[
        "ip",
        "-n",
        &lan,
        "addr",
        "add",
        &format!("{}/24", g.ip(1)),
        "dev",
        &peer,
    ])?;
    run(&["ip", "-n", &lan, "link", "set", &peer, "up"])?;
    run(&["ip", "link", "set", &parent, "up"])?;
    let subnet = format!("{}/24", g.ip(0));
    let gw = g.ip(1).to_string();
    let net = format!("mv{}", g.tag);
    let o_parent = format!("parent={parent}");

    // A parent that does not exist: dockerd's error, nothing created.
    let e = d.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        &subnet,
        "-o",
        "parent=nope0",
        &net,
    ]);
    assert!(
        e.contains("-o parent interface was not found on the host: nope0"),
        "{e}"
    );
    let id = d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        &subnet,
        "--gateway",
        &gw,
        "-o",
        &o_parent,
        "-o",
        "macvlan_mode=bridge",
        &net,
    ]);
    let v = net_inspect(&d, &net);
    assert_eq!(v["Driver"], "macvlan");
    assert_eq!(v["Options"]["parent"], parent.as_str());
    assert_eq!(v["Options"]["macvlan_mode"], "bridge");
    let ls = d.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(ls.contains(&format!("{net} macvlan")), "{ls}");
    // One macvlan network per parent, as in dockerd.
    let e = d.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        &o_parent,
        &format!("{net}b"),
    ]);
    assert!(
        e.contains(&format!("is already using parent interface {parent}")),
        "{e}"
    );
    assert!(e.contains(id.trim()), "{e}");

    let (ip1, ip2) = (g.ip(11).to_string(), g.ip(12).to_string());
    for (name, ip) in [("c1", &ip1), ("c2", &ip2)] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            &format!("{name}{}", g.tag),
            "--network",
            &net,
            "--ip",
            ip,
            "bb:test",
            "sleep",
            "300",
        ]);
    }
    let (c1, c2) = (format!("c1{}", g.tag), format!("c2{}", g.tag));
    let c = common::usernet::inspect(&d, &[&c1]);
    let sandbox = c["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let link = run(&[
        "nsenter",
        &format!("--net={sandbox}"),
        "ip",
        "-d",
        "link",
        "show",
        "eth0",
    ])?;
    assert!(link.contains("macvlan mode bridge"), "{link}");
    let mac = format!("02:42:0a:d6:{:02x}:0b", g.octet);
    assert!(link.contains(&mac), "{link}");
    let route = d.ok(&["exec", &c1, "ip", "route"]);
    assert!(route.contains(&format!("default via {gw}")), "{route}");
    let c = common::usernet::inspect(&d, &[&c1]);
    assert_eq!(
        c["NetworkSettings"]["Networks"][&net]["IPAddress"],
        ip1.as_str()
    );
    assert_eq!(
        c["NetworkSettings"]["Networks"][&net]["MacAddress"],
        mac.as_str()
    );

    // Containers -> LAN, container -> container, LAN -> containers.
    for (from, to) in [(&c1, &gw), (&c2, &gw), (&c1, &ip2), (&c2, &ip1)] {
        d.ok(&["exec", from, "ping", "-c1", "-W2", to]);
    }
    ping(&lan, &ip1)?;
    ping(&lan, &ip2)?;

    // `network connect` of a container on the default bridge: eth1 on the segment, no
    // default route through it; `disconnect` removes the link.
    let c3 = format!("c3{}", g.tag);
    d.ok(&["run", "-d", "--name", &c3, "bb:test", "sleep", "300"]);
    let ip3 = g.ip(13).to_string();
    d.ok(&["network", "connect", "--ip", &ip3, &net, &c3]);
    let addr = d.ok(&["exec", &c3, "ip", "-4", "addr", "show", "eth1"]);
    assert!(addr.contains(&format!("{ip3}/24")), "{addr}");
    ping(&lan, &ip3)?;
    d.ok(&["exec", &c3, "ping", "-c1", "-W2", &gw]);
    let route = d.ok(&["exec", &c3, "ip", "route"]);
    assert!(!route.contains(&format!("default via {gw}")), "{route}");
    d.ok(&["network", "disconnect", &net, &c3]);
    let links = d.ok(&["exec", &c3, "ip", "link"]);
    assert!(!links.contains("eth1"), "{links}");
    d.ok(&["rm", "-f", &c3]);

    // In use: refused; after the containers go, removed.
    let e = d.fails(&["network", "rm", &net]);
    assert!(e.contains("has active endpoints"), "{e}");
    d.ok(&["rm", "-f", &c1, &c2]);
    d.ok(&["network", "rm", &net]);
    assert!(!d.ok(&["network", "ls"]).contains(&net));
    // The parent is free again.
    d.ok(&[
        "network", "create", "-d", "macvlan", "--subnet", &subnet, "-o", &o_parent, &net,
    ]);
    d.ok(&["network", "rm", &net]);
    Ok(())
}
