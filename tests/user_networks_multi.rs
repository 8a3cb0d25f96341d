//! Containers on several user networks and by name: `docker network connect/disconnect`
//! on running and stopped containers (eth1…, default route on the first network), and
//! names, aliases and short ids resolving between peers through their hosts files, also
//! while berthd is killed or upgraded.

mod common;
use common::usernet::*;
use common::{is_root, Daemon};
use std::process::Command;

#[test]
fn names_resolve_between_peers_without_the_daemon() {
    if !is_root() {
        return;
    }
    let bridges = Bridges::default();
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let s = subnets(&d);
    bridges.add(&d.ok(&["network", "create", "--subnet", &s[3], "names"]));
    let a = d.ok(&[
        "run",
        "-d",
        "--name",
        "alpha",
        "--network",
        "names",
        "--network-alias",
        "db",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let b = d.ok(&[
        "run",
        "-d",
        "--name",
        "beta",
        "--network",
        "names",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let ping = |d: &Daemon, from: &str, to: &str| {
        d.ok(&["exec", from, "ping", "-c1", "-W1", to]);
    };
    // Both directions, by name, alias and short id (the first container learns of the
    // second after it started).
    ping(&d, "beta", "alpha");
    ping(&d, "beta", "db");
    ping(&d, "beta", &a[..12]);
    ping(&d, "alpha", "beta");
    ping(&d, "alpha", &b[..12]);
    // A container on the default bridge is not a peer.
    let out = d.docker(&["run", "--rm", "bb:test", "ping", "-c1", "-W1", "alpha"]);
    assert!(!out.status.success());

    // With the daemon killed, names still resolve (nothing of the daemon is asked): ping
    // from inside beta's namespaces while no berthd runs.
    let beta_pid = d.ok(&["inspect", "-f", "{{.State.Pid}}", "beta"]);
    d.kill9();
    let hosts_b = d.path(&format!("d/containers/{b}/hosts"));
    let text = std::fs::read_to_string(&hosts_b).expect("hosts of beta");
    assert!(text.contains("alpha db"), "{text}");
    for name in ["alpha", "db", &a[..12]] {
        let out = Command::new("nsenter")
            .args(["-t", &beta_pid, "-m", "-n", "/bin/ping", "-c1", "-W1", name])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{name} did not resolve with the daemon down: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    d.spawn();
    ping(&d, "beta", "alpha");
    ping(&d, "alpha", "beta");

    // And across a live upgrade of the worker.
    d.upgrade_ok(&[]);
    ping(&d, "beta", "db");
    let gamma = d.ok(&[
        "run",
        "-d",
        "--name",
        "gamma",
        "--network",
        "names",
        "bb:test",
        "sleep",
        "1000",
    ]);
    ping(&d, "alpha", "gamma");
    ping(&d, "gamma", &a[..12]);
    d.ok(&["rm", "-f", &gamma]);
    let out = d.docker(&["exec", "alpha", "ping", "-c1", "-W1", "gamma"]);
    assert!(
        !out.status.success(),
        "gamma still resolves after its removal"
    );

    // A peer that stops leaves the others' hosts files; one that starts again comes back.
    d.ok(&["stop", "-t", "0", "beta"]);
    let out = d.docker(&["exec", "alpha", "ping", "-c1", "-W1", "beta"]);
    assert!(
        !out.status.success(),
        "beta still resolves after it stopped"
    );
    d.ok(&["start", "beta"]);
    ping(&d, "alpha", "beta");
}

#[test]
fn connect_and_disconnect_running_and_stopped_containers() {
    if !is_root() {
        return;
    }
    let bridges = Bridges::default();
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let s = subnets(&d);
    bridges.add(&d.ok(&["network", "create", "--subnet", &s[0], "front"]));
    bridges.add(&d.ok(&["network", "create", "--subnet", &s[1], "back"]));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "app",
        "--network",
        "front",
        "bb:test",
        "sleep",
        "1000",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "db1",
        "--network",
        "back",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let fixed = addr(&s[1], 30);
    d.ok(&[
        "network", "connect", "--ip", &fixed, "--alias", "api", "back", "app",
    ]);
    let v = inspect(&d, &["app"]);
    let nets = &v["NetworkSettings"]["Networks"];
    assert_eq!(nets["back"]["IPAddress"], fixed.as_str(), "{nets}");
    assert_eq!(
        nets["front"]["IPAddress"],
        addr(&s[0], 2).as_str(),
        "{nets}"
    );
    assert_eq!(nets["back"]["Aliases"][0], "api");
    let ifs = d.ok(&["exec", "app", "ip", "-o", "-4", "addr"]);
    assert!(ifs.contains("eth1") && ifs.contains(&fixed), "{ifs}");
    // The default route stays on the first network.
    let routes = d.ok(&["exec", "app", "ip", "route"]);
    let defaults: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("default"))
        .collect();
    assert_eq!(defaults.len(), 1, "{routes}");
    assert!(
        defaults[0].contains(&addr(&s[0], 1)) && defaults[0].contains("eth0"),
        "{routes}"
    );
    assert!(routes.contains(&format!("{} dev eth1", s[1])), "{routes}");
    // Peers on the new network reach it by address, name and alias.
    d.ok(&["exec", "db1", "ping", "-c1", "-W1", &fixed]);
    d.ok(&["exec", "db1", "ping", "-c1", "-W1", "app"]);
    d.ok(&["exec", "db1", "ping", "-c1", "-W1", "api"]);
    let n = net_inspect(&d, "back");
    assert_eq!(n["Containers"].as_object().map(|m| m.len()), Some(2));

    let e = d.fails(&["network", "connect", "back", "app"]);
    assert!(
        e.contains("endpoint with name app already exists in network back"),
        "{e}"
    );

    // Disconnect: the interface, the address and the name go.
    d.ok(&["network", "disconnect", "back", "app"]);
    let ifs = d.ok(&["exec", "app", "ip", "-o", "-4", "addr"]);
    assert!(!ifs.contains("eth1"), "{ifs}");
    let out = d.docker(&["exec", "db1", "ping", "-c1", "-W1", "app"]);
    assert!(!out.status.success(), "app still resolves on back");
    assert!(inspect(&d, &["app"])["NetworkSettings"]["Networks"]["back"].is_null());
    let e = d.fails(&["network", "disconnect", "back", "app"]);
    assert!(e.contains("is not connected to network back"), "{e}");

    // A stopped container: connected now, interface at its next start, kept across a
    // daemon kill -9.
    d.ok(&["stop", "-t", "0", "app"]);
    d.ok(&["network", "connect", "back", "app"]);
    d.ok(&["start", "app"]);
    let ip = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.back.IPAddress}}",
        "app",
    ]);
    assert!(!ip.is_empty());
    let ifs = d.ok(&["exec", "app", "ip", "-o", "-4", "addr"]);
    assert!(ifs.contains("eth1") && ifs.contains(&ip), "{ifs}");
    d.kill9();
    d.spawn();
    d.ok(&["restart", "-t", "0", "app"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.back.IPAddress}}",
            "app"
        ]),
        ip
    );
    d.ok(&["exec", "db1", "ping", "-c1", "-W1", "app"]);
    let e = d.fails(&["network", "connect", "back", "nosuchctr"]);
    assert!(e.contains("No such container: nosuchctr"), "{e}");
}
