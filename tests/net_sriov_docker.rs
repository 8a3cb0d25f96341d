//! Root test of `docker network create -d sriov` end to end with the real docker CLI. The
//! daemon reads a fake sysfs tree (`BERTH_SRIOV_SYSFS_ROOT`) describing a PF with two VFs
//! whose netdevs are real veths of the host; their peers sit on a bridge in a "LAN"
//! namespace holding the gateway, so the containers' traffic really flows through the
//! "VFs". With a fake sysfs root the daemon skips the PF-side VF settings (`-o vlan`: a
//! veth PF answers EOPNOTSUPP). Real hardware adds what this cannot show: the PF tagging
//! VLAN 10 and enforcing spoof check and rates, VF netdevs re-registered after a reset, a
//! VF coming back to the host by itself when its namespace dies.
//! The guards remove veths, namespaces, containers and the tree even when the test fails.

mod common;
mod netkit;

use common::usernet::{inspect, link_exists, net_inspect};
use common::{Daemon, Launch};
use netkit::{fake_sysfs, ping, run, Guard};

/// A "LAN" namespace with a bridge holding the gateway (.1), `n` veths standing in for the
/// VFs of PF `pf<tag>` (their peers on that bridge) and the fake sysfs tree describing them.
struct Lan {
    g: Guard,
    lan: String,
    pf: String,
    vfs: Vec<String>,
    dir: tempfile::TempDir,
}

fn lan_with_vfs(n: usize) -> anyhow::Result<Lan> {
    let mut g = Guard::new();
    let lan = g.ns("slan")?;
    run(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"])?;
    let gw = format!("{}/24", g.ip(1));
    run(&["ip", "-n", &lan, "addr", "add", &gw, "dev", "br0"])?;
    run(&["ip", "-n", &lan, "link", "set", "br0", "up"])?;
    let mut vfs = Vec::new();
    for i in 0..n {
        let (vf, peer) = g.veth(&format!("sv{i}x"), &format!("sp{i}x"))?;
        run(&["ip", "link", "set", &peer, "netns", &lan])?;
        run(&[
            "ip", "-n", &lan, "link", "set", &peer, "master", "br0", "up",
        ])?;
        vfs.push(vf);
    }
    let dir = tempfile::tempdir()?;
    let pf = format!("pf{}", g.tag);
    fake_sysfs(&dir.path().join("sys"), &pf, &vfs)?;
    Ok(Lan {
        g,
        lan,
        pf,
        vfs,
        dir,
    })
}

/// A daemon reading the fake sysfs tree, with the busybox image.
fn daemon(l: &Lan) -> Daemon {
    let sys = l.dir.path().join("sys").to_string_lossy().into_owned();
    let d = Daemon::start_with(Launch {
        env: vec![("BERTH_SRIOV_SYSFS_ROOT".into(), sys)],
        ..Default::default()
    });
    d.import_busybox("bb:test");
    d
}

#[test]
fn sriov_network_gives_each_container_its_own_vf() -> anyhow::Result<()> {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let l = lan_with_vfs(2)?;
    let d = daemon(&l);
    let (g, lan, pf, vfs) = (&l.g, &l.lan, &l.pf, &l.vfs);

    let net = format!("sr{}", g.tag);
    let (subnet, gw) = (format!("{}/24", g.ip(0)), g.ip(1).to_string());
    let e = d.fails(&[
        "network",
        "create",
        "-d",
        "sriov",
        "--subnet",
        &subnet,
        "-o",
        "parent=nope0",
        &net,
    ]);
    assert!(e.contains("nope0"), "{e}");
    d.ok(&[
        "network",
        "create",
        "-d",
        "sriov",
        "--subnet",
        &subnet,
        "--gateway",
        &gw,
        "-o",
        &format!("parent={pf}"),
        "-o",
        "vlan=10",
        &net,
    ]);
    let v = net_inspect(&d, &net);
    assert_eq!(v["Driver"], "sriov");
    assert_eq!(v["Options"]["vlan"], "10");

    let names: Vec<String> = (1..=3).map(|i| format!("c{i}{}", g.tag)).collect();
    let ips: Vec<String> = (11..=13).map(|h| g.ip(h).to_string()).collect();
    for i in 0..2 {
        d.ok(&[
            "run",
            "-d",
            "--name",
            &names[i],
            "--network",
            &net,
            "--ip",
            &ips[i],
            "bb:test",
            "sleep",
            "300",
        ]);
    }
    // Each container holds one VF: both left the host.
    assert!(
        vfs.iter().all(|vf| !link_exists(vf)),
        "VFs still in the host"
    );
    for i in 0..2 {
        let addr = d.ok(&["exec", &names[i], "ip", "-4", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("{}/24", ips[i])), "{addr}");
        let route = d.ok(&["exec", &names[i], "ip", "route"]);
        assert!(route.contains(&format!("default via {gw}")), "{route}");
        d.ok(&["exec", &names[i], "ping", "-c1", "-W2", &gw]);
        ping(lan, &ips[i])?;
    }
    d.ok(&["exec", &names[0], "ping", "-c1", "-W2", &ips[1]]);

    // A third container on a 2-VF PF: the driver's error; nothing is taken.
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        &names[2],
        "--network",
        &net,
        "--ip",
        &ips[2],
        "bb:test",
        "sleep",
        "300",
    ]);
    assert!(
        e.contains(&format!(
            "no free VF on {pf}: all 2 virtual functions are in use"
        )),
        "{e}"
    );
    let c3 = inspect(&d, &[&names[2]]);
    assert_eq!(c3["State"]["Running"], false);
    d.ok(&["rm", &names[2]]);
    for name in &names[..2] {
        d.ok(&["exec", name, "ping", "-c1", "-W2", &gw]);
    }

    // rm gives the VF back under its original name; the network is busy until the last.
    d.ok(&["rm", "-f", &names[0]]);
    common::until("one VF back in the host", || {
        vfs.iter().filter(|vf| link_exists(vf)).count() == 1
    });
    let e = d.fails(&["network", "rm", &net]);
    assert!(e.contains("has active endpoints"), "{e}");
    // The freed VF serves a new container. With `berth.egress.rate` its max TX rate is
    // set on the PF (50mbit: 50 Mbit/s), which this emulated PF logs instead of applying,
    // like the network's VLAN; the release puts the rate back (0: none).
    let rate = ["--label", "berth.egress.rate=50mbit"];
    let mut args = vec!["run", "-d", "--name", &names[2], "--network", &net];
    args.extend(rate);
    args.extend(["bb:test", "sleep", "300"]);
    d.ok(&args);
    assert!(vfs.iter().all(|vf| !link_exists(vf)));
    let log = d.log();
    assert!(
        log.contains("vlan 10 qos 0 proto 802.1Q"),
        "{}",
        common::tail(&log, 30)
    );
    assert!(
        log.contains("min_tx_rate 0 max_tx_rate 50"),
        "{}",
        common::tail(&log, 30)
    );
    d.ok(&["rm", "-f", &names[1], &names[2]]);
    common::until("both VFs back in the host", || {
        vfs.iter().all(|vf| link_exists(vf))
    });
    let log = d.log();
    assert!(
        log.contains("min_tx_rate 0 max_tx_rate 0"),
        "{}",
        common::tail(&log, 30)
    );
    d.ok(&["network", "rm", &net]);
    Ok(())
}

#[test]
fn sriov_vfs_survive_a_daemon_crash_and_come_back_from_containers_that_died_meanwhile(
) -> anyhow::Result<()> {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let l = lan_with_vfs(2)?;
    let mut d = daemon(&l);
    let (g, vfs) = (&l.g, &l.vfs);
    let net = format!("sr{}", g.tag);
    let (subnet, gw) = (format!("{}/24", g.ip(0)), g.ip(1).to_string());
    let parent = format!("parent={}", l.pf);
    d.ok(&[
        "network", "create", "-d", "sriov", "--subnet", &subnet, "-o", &parent, &net,
    ]);
    let (c1, c2) = (format!("k1{}", g.tag), format!("k2{}", g.tag));
    for c in [&c1, &c2] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            &net,
            "bb:test",
            "sleep",
            "300",
        ]);
    }
    assert!(vfs.iter().all(|vf| !common::usernet::link_exists(vf)));
    let pid2 = inspect(&d, &[&c2])["State"]["Pid"].as_i64().unwrap_or(0);
    assert!(pid2 > 0);

    // Crash; c2 dies while no daemon runs; the restart reconciles.
    d.kill9();
    run(&["kill", "-9", &pid2.to_string()])?;
    d.spawn();
    common::until("c2's VF back in the host", || {
        vfs.iter().filter(|vf| link_exists(vf)).count() == 1
    });
    // The live container kept its VF where it was and still reaches the LAN.
    assert_eq!(inspect(&d, &[&c1])["State"]["Running"], true);
    d.ok(&["exec", &c1, "ping", "-c1", "-W2", &gw]);
    d.ok(&["rm", "-f", &c1, &c2]);
    common::until("both VFs back in the host", || {
        vfs.iter().all(|vf| link_exists(vf))
    });
    d.ok(&["network", "rm", &net]);
    Ok(())
}
