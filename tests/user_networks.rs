//! User-defined networks through the real docker CLI: `docker network create/ls/inspect/
//! rm/prune` with their bridges and nft rules, containers on them with `--ip` and
//! `--network-alias`, addresses kept across restarts and a daemon kill -9, distinct
//! addresses for parallel runs, and dockerd's error messages.
//!
//! Subnets come from the test daemon's tag (`10.A.B.1/24` as `--bip` gives user networks
//! `10.A.(128+B).x/26`), so daemons running in parallel never collide.

mod common;
use common::{is_root, Daemon};
use serde_json::Value;
use std::process::Command;

/// Four /26 subnets of this daemon's own.
fn subnets(d: &Daemon) -> Vec<String> {
    let gw = d.bip.split('/').next().expect("bip address");
    let o: Vec<u32> = gw.split('.').map(|x| x.parse().expect("octet")).collect();
    (0..4)
        .map(|i| format!("10.{}.{}.{}/26", o[1], 128 + o[2] % 128, i * 64))
        .collect()
}

/// `a.b.c.` + (offset of the subnet + n).
fn addr(subnet: &str, n: u32) -> String {
    let base = subnet.split('/').next().expect("subnet address");
    let (pre, last) = base.rsplit_once('.').expect("dotted quad");
    format!("{pre}.{}", last.parse::<u32>().expect("octet") + n)
}

fn inspect(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&d.ok(&all)).expect("inspect json");
    v[0].clone()
}

fn net_inspect(d: &Daemon, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&d.ok(&["network", "inspect", name])).expect("network inspect json");
    v[0].clone()
}

fn ip_addr_of(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", dev])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(dev: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn nft_table(d: &Daemon) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", &d.table])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the user networks' bridges even when the test fails (they live in the host
/// namespace; the test daemon's own cleanup removes only its default bridge). Declared
/// before the daemon, so it runs after the daemon is gone.
#[derive(Default)]
struct Bridges(std::cell::RefCell<Vec<String>>);

impl Bridges {
    /// Records the bridge of network `id` (returns its name).
    fn add(&self, id: &str) -> String {
        let br = format!("br-{}", &id[..12.min(id.len())]);
        self.0.borrow_mut().push(br.clone());
        br
    }
}

impl Drop for Bridges {
    fn drop(&mut self) {
        for br in self.0.borrow().iter() {
            let _ = Command::new("ip")
                .args(["link", "del", br])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[test]
fn network_objects_bridges_rules_and_errors() {
    if !is_root() {
        return;
    }
    let bridges = Bridges::default();
    let mut d = Daemon::start();
    let s = subnets(&d);
    let id = d.ok(&[
        "network",
        "create",
        "--subnet",
        &s[0],
        "--gateway",
        &addr(&s[0], 62),
        "--ip-range",
        &format!("{}/27", addr(&s[0], 32)),
        "--label",
        "team=red",
        "--attachable",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "un1",
    ]);
    assert_eq!(id.len(), 64, "{id}");
    let br = bridges.add(&id);
    assert!(
        ip_addr_of(&br).contains(&format!("{}/26", addr(&s[0], 62))),
        "{}",
        ip_addr_of(&br)
    );
    let n = net_inspect(&d, "un1");
    assert_eq!(n["Name"], "un1");
    assert_eq!(n["Id"], id.as_str());
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Scope"], "local");
    assert_eq!(n["Attachable"], true);
    assert_eq!(n["Internal"], false);
    assert_eq!(n["IPAM"]["Driver"], "default");
    assert_eq!(n["IPAM"]["Options"], serde_json::json!({}));
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], s[0].as_str());
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], addr(&s[0], 62).as_str());
    assert_eq!(
        n["IPAM"]["Config"][0]["IPRange"],
        format!("{}/27", addr(&s[0], 32)).as_str()
    );
    assert_eq!(n["Labels"]["team"], "red");
    assert_eq!(n["Options"]["com.docker.network.driver.mtu"], "1400");
    assert_eq!(n["Containers"], serde_json::json!({}));
    let rules = nft_table(&d);
    assert!(
        rules.contains(&format!("ip saddr {} oifname != \"{br}\" masquerade", s[0])),
        "{rules}"
    );

    // An internal network: no masquerade, drops in the isolation chain.
    let internal = d.ok(&["network", "create", "--internal", "--subnet", &s[1], "un2"]);
    let br2 = bridges.add(&internal);
    let rules = nft_table(&d);
    assert!(
        !rules.contains(&format!("oifname != \"{br2}\" masquerade")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("iifname \"{br2}\" oifname != \"{br2}\" drop")),
        "{rules}"
    );

    // ls and its filters.
    let names = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    for want in ["bridge", "host", "none", "un1", "un2"] {
        assert!(names.lines().any(|l| l == want), "{names}");
    }
    let custom = d.ok(&[
        "network",
        "ls",
        "-f",
        "type=custom",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(custom.lines().collect::<Vec<_>>(), vec!["un1", "un2"]);
    let red = d.ok(&[
        "network",
        "ls",
        "-f",
        "label=team=red",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(red, "un1");
    let builtin = d.ok(&["network", "ls", "-f", "type=builtin", "-q"]);
    assert_eq!(builtin.lines().count(), 3);

    // dockerd's errors.
    let e = d.fails(&["network", "create", "--subnet", &s[2], "un1"]);
    assert!(e.contains("network with name un1 already exists"), "{e}");
    let e = d.fails(&["network", "create", "--subnet", &s[0], "un3"]);
    assert!(
        e.contains("Pool overlaps with other one on this address space"),
        "{e}"
    );
    let e = d.fails(&["network", "rm", "bridge"]);
    assert!(
        e.contains("bridge is a pre-defined network and cannot be removed"),
        "{e}"
    );
    let e = d.fails(&["network", "inspect", "nosuch"]);
    assert!(e.contains("network nosuch not found"), "{e}");
    let e = d.fails(&["network", "create", "--subnet", "nope", "un3"]);
    assert!(e.contains("invalid CIDR address: nope"), "{e}");

    // Survives a daemon kill -9 (bridge, rules, record).
    d.kill9();
    d.spawn();
    assert_eq!(net_inspect(&d, "un1")["Id"], id.as_str());
    assert!(link_exists(&br));

    // rm removes bridge and rules; prune the rest.
    d.ok(&["network", "rm", "un1"]);
    assert!(!link_exists(&br));
    assert!(!nft_table(&d).contains(&br));
    let out = d.ok(&["network", "prune", "-f"]);
    assert!(
        out.contains("Deleted Networks:") && out.contains("un2"),
        "{out}"
    );
    assert!(!link_exists(&br2));
    assert!(!nft_table(&d).contains(&br2));
    assert_eq!(d.ok(&["network", "ls", "-q"]).lines().count(), 3);
}

#[test]
fn containers_on_a_user_network() {
    if !is_root() {
        return;
    }
    let bridges = Bridges::default();
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let s = subnets(&d);
    let net_id = d.ok(&["network", "create", "--subnet", &s[0], "app"]);
    bridges.add(&net_id);
    bridges.add(&d.ok(&["network", "create", "--subnet", &s[1], "other"]));
    bridges.add(&d.ok(&["network", "create", "plain", "--subnet", &s[2]]));
    let fixed = addr(&s[0], 20);
    let a = d.ok(&[
        "run",
        "-d",
        "--name",
        "ca",
        "--network",
        "app",
        "--ip",
        &fixed,
        "--network-alias",
        "web",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let b = d.ok(&[
        "run",
        "-d",
        "--name",
        "cb",
        "--network",
        "app",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let ia = inspect(&d, &["ca"]);
    let ep = &ia["NetworkSettings"]["Networks"]["app"];
    assert_eq!(ep["IPAddress"], fixed.as_str());
    assert_eq!(ep["IPPrefixLen"], 26);
    assert_eq!(ep["Gateway"], addr(&s[0], 1).as_str());
    assert_eq!(ep["NetworkID"], net_id.as_str());
    assert_eq!(ep["IPAMConfig"]["IPv4Address"], fixed.as_str());
    assert_eq!(ep["Aliases"], serde_json::json!(["web", &a[..12]]));
    assert_eq!(
        ep["MacAddress"].as_str().map(|m| m.starts_with("02:42:")),
        Some(true)
    );
    assert_eq!(
        ia["NetworkSettings"]["IPAddress"], "",
        "legacy fields are for bridge only"
    );
    let ib = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.app.IPAddress}}",
        "cb",
    ]);
    assert_eq!(ib, addr(&s[0], 2));
    // They reach each other and the gateway.
    d.ok(&["exec", "cb", "ping", "-c1", "-W2", &fixed]);
    d.ok(&["exec", "ca", "ping", "-c1", "-W2", &addr(&s[0], 1)]);
    let n = net_inspect(&d, "app");
    assert_eq!(n["Containers"][&a]["Name"], "ca");
    assert_eq!(
        n["Containers"][&a]["IPv4Address"],
        format!("{fixed}/26").as_str()
    );
    assert!(n["Containers"][&b].is_object());

    // dockerd's errors.
    let e = d.fails(&[
        "run",
        "--rm",
        "--network",
        "app",
        "--ip",
        &fixed,
        "bb:test",
        "true",
    ]);
    assert!(e.contains("Address already in use"), "{e}");
    let e = d.fails(&[
        "run",
        "--rm",
        "--network",
        "app",
        "--ip",
        "10.255.255.5",
        "bb:test",
        "true",
    ]);
    assert!(
        e.contains("does not belong to any of this network's subnets"),
        "{e}"
    );
    let e = d.fails(&["run", "--rm", "--network", "nosuchnet", "bb:test", "true"]);
    assert!(e.contains("network nosuchnet not found"), "{e}");
    let e = d.fails(&["network", "rm", "app"]);
    assert!(
        e.contains(&format!("network app id {net_id} has active endpoints")),
        "{e}"
    );

    // The address survives a restart, a stop/start and a daemon kill -9.
    d.ok(&["restart", "-t", "0", "cb"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.app.IPAddress}}",
            "cb"
        ]),
        addr(&s[0], 2)
    );
    d.ok(&["stop", "-t", "0", "ca"]);
    // While a is stopped its address stays reserved.
    let c = d.ok(&["run", "-d", "--network", "app", "bb:test", "sleep", "1000"]);
    let ic = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.app.IPAddress}}",
        &c,
    ]);
    assert_ne!(ic, fixed);
    d.ok(&["start", "ca"]);
    d.kill9();
    d.spawn();
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.app.IPAddress}}",
            "ca"
        ]),
        fixed
    );
    d.ok(&["exec", "cb", "ping", "-c1", "-W2", &fixed]);

    // Parallel runs never share an address.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut cmd = d.cmd(&[
                "run",
                "-d",
                "--network",
                "other",
                "bb:test",
                "sleep",
                "1000",
            ]);
            std::thread::spawn(move || cmd.output().expect("docker run"))
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ip = d.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.other.IPAddress}}",
            &id,
        ]);
        assert!(ips.insert(ip.clone()), "{ip} given twice");
    }
    assert_eq!(ips.len(), 8);

    // Removing the containers frees the network.
    let all = d.ok(&["ps", "-aq"]);
    for id in all.split_whitespace() {
        d.ok(&["rm", "-f", id]);
    }
    assert_eq!(net_inspect(&d, "app")["Containers"], serde_json::json!({}));
    d.ok(&["network", "rm", "app", "other", "plain"]);
    assert_eq!(d.ok(&["network", "ls", "-q"]).lines().count(), 3);
}

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
