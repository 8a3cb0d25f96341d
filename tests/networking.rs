//! Default networking through the real docker CLI: `docker run` on the default bridge gets
//! an address from `--bip`'s subnet, reaches the gateway and other containers, shows
//! dockerd's `NetworkSettings`, `docker network ls`/`inspect`, keeps its IP across
//! `docker restart`, stop/start and a daemon kill -9, and leaves through the masquerade.

mod common;
use common::{is_root, Daemon};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// `docker inspect` of one object, parsed.
fn inspect(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&d.ok(&all)).expect("inspect json");
    v[0].clone()
}

fn ip_of(d: &Daemon, name: &str) -> String {
    d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
}

/// The gateway (bridge address) and the `a.b.c.` prefix of the test daemon's `--bip`.
fn bip_parts(d: &Daemon) -> (String, String) {
    let gw = d.bip.split('/').next().expect("bip address").to_string();
    let prefix = gw.rsplit_once('.').expect("dotted quad").0.to_string() + ".";
    (gw, prefix)
}

fn ping(d: &Daemon, from: &str, ip: &str) {
    d.ok(&["exec", from, "ping", "-c1", "-W2", ip]);
}

/// dockerd's MAC for an IPv4 address: 02:42 followed by the four address bytes.
fn mac_for(ip: &str) -> String {
    let bytes: Vec<String> = ip
        .split('.')
        .map(|b| format!("{:02x}", b.parse::<u8>().expect("octet")))
        .collect();
    format!("02:42:{}", bytes.join(":"))
}

/// Ports (veths) on the test bridge.
fn bridge_ports(d: &Daemon) -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &d.bridge])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn default_bridge_addresses_inspect_and_reachability() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let (gw, prefix) = bip_parts(&d);
    let subnet = format!("{prefix}0/24");
    let a = d.ok(&["run", "-d", "--name", "na", "bb:test", "sleep", "1000"]);
    let b = d.ok(&["run", "-d", "--name", "nb", "bb:test", "sleep", "1000"]);
    let (ip_a, ip_b) = (ip_of(&d, "na"), ip_of(&d, "nb"));
    for ip in [&ip_a, &ip_b] {
        assert!(ip.starts_with(&prefix) && *ip != gw, "{ip} not in {subnet}");
    }
    assert_ne!(ip_a, ip_b);

    // docker inspect: the legacy top-level fields and Networks.bridge, as dockerd shows them.
    let bridge = inspect(&d, &["--type", "network", "bridge"]);
    let net_id = bridge["Id"].as_str().expect("network id").to_string();
    let c = inspect(&d, &["na"]);
    assert_eq!(c["HostConfig"]["NetworkMode"], "default");
    let ns = &c["NetworkSettings"];
    assert_eq!(ns["IPAddress"], ip_a.as_str());
    assert_eq!(ns["Gateway"], gw.as_str());
    assert_eq!(ns["IPPrefixLen"], 24);
    assert_eq!(ns["MacAddress"], mac_for(&ip_a).as_str());
    assert_eq!(ns["Bridge"], "");
    let ep = &ns["Networks"]["bridge"];
    assert_eq!(ep["IPAddress"], ip_a.as_str());
    assert_eq!(ep["Gateway"], gw.as_str());
    assert_eq!(ep["IPPrefixLen"], 24);
    assert_eq!(ep["MacAddress"], mac_for(&ip_a).as_str());
    assert_eq!(ep["NetworkID"], net_id.as_str());
    assert_eq!(ep["EndpointID"], ns["EndpointID"]);
    assert_eq!(ep["EndpointID"].as_str().map(str::len), Some(64));
    assert!(ep["IPAMConfig"].is_null() && ep["Aliases"].is_null() && ep["Links"].is_null());
    assert!(ns["SandboxKey"].as_str().is_some_and(|k| k.contains(&a)));

    // Inside: eth0 with that address, default route via the gateway, /etc/hosts entry.
    let addr = d.ok(&["exec", "na", "ip", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{ip_a}/24")), "{addr}");
    let route = d.ok(&["exec", "na", "ip", "route"]);
    assert!(
        route.contains(&format!("default via {gw} dev eth0")),
        "{route}"
    );
    let hosts = d.ok(&["exec", "na", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip_a}\t{}", &a[..12])), "{hosts}");
    ping(&d, "na", &gw);
    ping(&d, "na", &ip_b);
    ping(&d, "nb", &ip_a);

    // docker network ls / inspect.
    let ls = d.ok(&[
        "network",
        "ls",
        "--format",
        "{{.Name}} {{.Driver}} {{.Scope}}",
    ]);
    let mut rows: Vec<&str> = ls.lines().collect();
    rows.sort();
    assert_eq!(
        rows,
        ["bridge bridge local", "host host local", "none null local"]
    );
    assert_eq!(
        bridge["IPAM"]["Config"],
        serde_json::json!([{"Subnet": subnet, "Gateway": gw}])
    );
    assert_eq!(
        bridge["Options"]["com.docker.network.bridge.name"],
        d.bridge.as_str()
    );
    assert_eq!(
        bridge["Options"]["com.docker.network.bridge.default_bridge"],
        "true"
    );
    let members = &bridge["Containers"];
    assert_eq!(members.as_object().map(|m| m.len()), Some(2));
    assert_eq!(members[&a]["Name"], "na");
    assert_eq!(members[&a]["IPv4Address"], format!("{ip_a}/24").as_str());
    assert_eq!(members[&a]["MacAddress"], mac_for(&ip_a).as_str());
    assert_eq!(members[&a]["EndpointID"], ep["EndpointID"]);
    assert_eq!(members[&b]["Name"], "nb");
    assert_eq!(bridge_ports(&d), 2);

    // A stopped container leaves the network (like dockerd) but gets its IP back on start.
    d.ok(&["stop", "-t", "0", "nb"]);
    assert_eq!(ip_of(&d, "nb"), "");
    let bridge = inspect(&d, &["--type", "network", "bridge"]);
    assert!(bridge["Containers"].get(&b).is_none(), "{bridge}");
    assert_eq!(bridge_ports(&d), 1);
    let c = d.ok(&["run", "-d", "--name", "nc", "bb:test", "sleep", "1000"]);
    let ip_c = ip_of(&d, "nc");
    assert!(
        ip_c != ip_a && ip_c != ip_b,
        "c got a leased address {ip_c}"
    );
    d.ok(&["start", "nb"]);
    assert_eq!(ip_of(&d, "nb"), ip_b);
    ping(&d, "na", &ip_b);
    ping(&d, "nb", &ip_c);

    // docker restart keeps the address and the MAC.
    d.ok(&["restart", "-t", "0", "na"]);
    assert_eq!(ip_of(&d, "na"), ip_a);
    let c2 = inspect(&d, &["na"]);
    assert_eq!(c2["NetworkSettings"]["MacAddress"], mac_for(&ip_a).as_str());
    ping(&d, "nb", &ip_a);
    let bridge = inspect(&d, &["--type", "network", "bridge"]);
    assert_eq!(bridge["Containers"].as_object().map(|m| m.len()), Some(3));
    assert!(bridge["Containers"].get(&c).is_some());
    assert_eq!(bridge_ports(&d), 3);
}

/// A TCP socket seen by `ss`: state and peer address.
type Conn = (String, String);

/// A network namespace standing for "the outside": a veth from the host with a /30 and no
/// route back to the container subnet. Removed on drop.
struct Outside {
    ns: String,
    host_ip: String,
    peer_ip: String,
}

impl Outside {
    fn new() -> Outside {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let (x, y) = (rand::random::<u8>(), rand::random::<u8>() & 0xfc);
        let o = Outside {
            ns: format!("bo{tag}"),
            host_ip: format!("198.18.{x}.{}", y + 1),
            peer_ip: format!("198.18.{x}.{}", y + 2),
        };
        let host = format!("bo{tag}h");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), o.ns.clone()],
            vec![
                "link".into(),
                "add".into(),
                host.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "eth0".into(),
                "netns".into(),
                o.ns.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", o.host_ip),
                "dev".into(),
                host.clone(),
            ],
            vec!["link".into(), "set".into(), host.clone(), "up".into()],
            vec![
                "-n".into(),
                o.ns.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/30", o.peer_ip),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "-n".into(),
                o.ns.clone(),
                "link".into(),
                "set".into(),
                "eth0".into(),
                "up".into(),
            ],
        ];
        for s in steps {
            let out = Command::new("ip").args(&s).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {s:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Never send anything unless the peer is really behind our own veth.
        let route = Command::new("ip")
            .args(["route", "get", &o.peer_ip])
            .output()
            .expect("ip route get");
        let route = String::from_utf8_lossy(&route.stdout).into_owned();
        assert!(route.contains(&format!("dev {host}")), "{route}");
        o
    }

    fn run(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[test]
fn addresses_survive_daemon_kill9_and_outbound_is_masqueraded() {
    if !is_root() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox("bb:test");
    let (_, prefix) = bip_parts(&d);
    d.ok(&["run", "-d", "--name", "na", "bb:test", "sleep", "1000"]);
    d.ok(&["run", "-d", "--name", "nb", "bb:test", "sleep", "1000"]);
    let (ip_a, ip_b) = (ip_of(&d, "na"), ip_of(&d, "nb"));
    let table_name = d.table.clone();
    let table = || {
        let out = Command::new("nft")
            .args(["-a", "list", "table", "inet", &table_name])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = table();
    let masq = format!(
        "ip saddr {prefix}0/24 oifname != \"{}\" masquerade",
        d.bridge
    );
    assert!(before.contains("type nat hook postrouting"), "{before}");
    assert!(before.contains(&masq), "{before}");

    // kill -9 of the daemon; b's container exits while no daemon runs.
    let pid_b = d.ok(&["inspect", "-f", "{{.State.Pid}}", "nb"]);
    d.kill9();
    let _ = Command::new("kill").args(["-9", &pid_b]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid_b}")).exists() {
        assert!(Instant::now() < deadline, "container of b did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.spawn();
    assert_eq!(ip_of(&d, "na"), ip_a);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "nb"
        ]),
        "exited 137"
    );
    // The persisted leases keep new containers off a's and b's addresses.
    d.ok(&["run", "-d", "--name", "nc", "bb:test", "sleep", "1000"]);
    let ip_c = ip_of(&d, "nc");
    assert!(ip_c.starts_with(&prefix) && ip_c != ip_a && ip_c != ip_b);
    d.ok(&["start", "nb"]);
    assert_eq!(ip_of(&d, "nb"), ip_b);
    ping(&d, "nc", &ip_a);
    ping(&d, "na", &ip_b);
    d.ok(&["restart", "-t", "0", "na"]);
    assert_eq!(ip_of(&d, "na"), ip_a);
    ping(&d, "nb", &ip_a);
    // The restarted daemon kept its rules as they were (same handles): nothing flushed,
    // re-created or added twice.
    assert_eq!(table(), before);

    // Outbound: the outside has no route to the container subnet, so a TCP exchange only
    // works when the host rewrote the source to its own address on that link.
    let out = Outside::new();
    let ns = out.ns.clone();
    let listener = std::thread::spawn(move || {
        Command::new("ip")
            // stdin stays open a while: at EOF busybox nc may close the connection before
            // it has read what the client sent.
            .args([
                "netns",
                "exec",
                &ns,
                "timeout",
                "15",
                "sh",
                "-c",
                "sleep 4 | busybox nc -l -p 9999",
            ])
            .output()
            .expect("nc -l")
    });
    // The connections (or the listener) on port 9999 seen from the outside, with their
    // peer addresses (`[::ffff:198.18.1.1]:40000` → `198.18.1.1`).
    let conns = || -> Vec<Conn> {
        let socks = String::from_utf8_lossy(&out.run(&["ss", "-tanH"]).stdout).into_owned();
        socks
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() >= 5 && cols[3].ends_with(":9999"))
                    .then(|| (cols[0].to_string(), cols[4].to_string()))
            })
            .map(|(state, p)| {
                let host = p.rsplit_once(':').map_or(p.as_str(), |(h, _)| h);
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim_start_matches("::ffff:");
                (state, host.to_string())
            })
            .collect()
    };
    let wait_until = |what: &str, ok: &dyn Fn(&[Conn]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let c = conns();
            if ok(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "{what}: {c:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_until("listener not up", &|c| c.iter().any(|(s, _)| s == "LISTEN"));
    // The client keeps the connection open for a while, so it can be looked at.
    let script = format!("(echo hello-out; sleep 2) | nc {} 9999", out.peer_ip);
    d.ok(&["exec", "-d", "na", "sh", "-c", &script]);
    // ESTAB, or TIME-WAIT once the listener (stdin at EOF) has closed its side.
    let seen = wait_until("no connection from the container", &|c| {
        c.iter().any(|(s, _)| s != "LISTEN")
    });
    let peers: Vec<&String> = seen
        .iter()
        .filter(|(s, _)| s != "LISTEN")
        .map(|(_, p)| p)
        .collect();
    assert!(
        peers.iter().all(|p| **p == out.host_ip),
        "peer not masqueraded to {}: {peers:?}",
        out.host_ip
    );
    let got = listener.join().expect("listener");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello-out");
}
