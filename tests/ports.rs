//! Published ports (`-p`, `-P`, `docker port`) against the real kernel: reachable from the
//! host (localhost and a host address), from another container, from another network
//! namespace, and still while berthd is killed, restarted and upgraded (no userland proxy).

mod common;

use common::Daemon;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// A container port that answers `hello` to every connection.
const SERVE: &str = "while true; do echo hello | nc -l -p 80; done";

/// What `host:port` answers (empty when nothing does).
fn fetch(host: Ipv4Addr, port: u16) -> String {
    let addr = (host, port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.trim().to_string()
}

fn answers(host: Ipv4Addr, port: u16) -> bool {
    // The server loop needs a moment between two connections: try a few times.
    (0..20).any(|_| {
        let ok = fetch(host, port) == "hello";
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    })
}

/// A network namespace joined to the host by a veth pair: "another machine".
struct PeerNs {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
}

impl PeerNs {
    fn new(tag: u32) -> PeerNs {
        let name = format!("bpn{tag}");
        let host_if = format!("bph{tag}");
        let (a, b) = (100 + (tag % 100) as u8, (tag / 100 % 250) as u8);
        let host_ip = Ipv4Addr::new(10, a, b, 1);
        let ns = PeerNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
        };
        let peer_ip = Ipv4Addr::new(10, a, b, 2);
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        let ns_run = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend_from_slice(args);
            run(&full);
        };
        ns_run(&["addr", "add", &format!("{peer_ip}/30"), "dev", "eth0"]);
        ns_run(&["link", "set", "eth0", "up"]);
        ns_run(&["link", "set", "lo", "up"]);
        ns_run(&["route", "add", "default", "via", &host_ip.to_string()]);
        ns
    }

    /// What `host:port` answers from inside the namespace.
    fn fetch(&self, host: Ipv4Addr, port: u16) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "busybox", "nc", "-w", "2"])
            .arg(host.to_string())
            .arg(port.to_string())
            .output()
            .expect("nc in the peer namespace");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn gateway(d: &Daemon) -> Ipv4Addr {
    d.bip
        .split('/')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

#[test]
fn published_ports_answer_everywhere_and_outlive_the_daemon() {
    let Some(mut d) = common::daemon_with_image() else {
        return;
    };
    let tag = std::process::id() % 10_000;
    let port = 20_000 + tag as u16;
    let id = d.ok(&[
        "run",
        "-d",
        "-p",
        &format!("{port}:80"),
        "bb:test",
        "sh",
        "-c",
        SERVE,
    ]);
    let id = id.trim().to_string();
    assert_eq!(
        d.ok(&["port", &id]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    let ps = d.ok(&["ps", "--format", "{{.Ports}}", "-f", &format!("id={id}")]);
    assert_eq!(ps.trim(), format!("0.0.0.0:{port}->80/tcp"));
    // The host: localhost and the bridge's address.
    assert!(answers(Ipv4Addr::LOCALHOST, port), "localhost:{port}");
    let gw = gateway(&d);
    assert!(answers(gw, port), "{gw}:{port}");
    // Another container, through the host's address.
    let out = d.ok(&[
        "run",
        "--rm",
        "bb:test",
        "nc",
        "-w",
        "2",
        &gw.to_string(),
        &port.to_string(),
    ]);
    assert_eq!(out.trim(), "hello", "from another container");
    // Another machine (a namespace routed through the host).
    let peer = PeerNs::new(tag);
    common::until("the peer namespace reaches the port", || {
        peer.fetch(peer.host_ip, port) == "hello"
    });
    // A second container cannot take the port; nothing of it stays.
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "second",
        "-p",
        &format!("{port}:80"),
        "bb:test",
        "sleep",
        "100",
    ]);
    assert!(
        err.contains(&format!(
            "Bind for 0.0.0.0:{port} failed: port is already allocated"
        )),
        "{err}"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "second"])
            .trim(),
        "created"
    );
    // berthd killed: the port still answers; restarted and upgraded: still.
    d.kill9();
    assert!(answers(Ipv4Addr::LOCALHOST, port), "while berthd is down");
    common::until(
        "the peer namespace reaches the port while berthd is down",
        || peer.fetch(peer.host_ip, port) == "hello",
    );
    d.spawn();
    assert!(answers(Ipv4Addr::LOCALHOST, port), "after the restart");
    d.upgrade_ok(&["--probation-ms", "100"]);
    assert!(answers(gw, port), "after an upgrade");
    assert_eq!(
        d.ok(&["port", &id]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    // Stopped: the port is free (the other container may start); nothing forwards to it.
    d.ok(&["stop", "-t", "1", &id]);
    assert_eq!(d.ok(&["port", &id]).trim(), "");
    assert!(fetch(Ipv4Addr::LOCALHOST, port).is_empty());
    d.ok(&["start", "second"]);
    assert_eq!(
        d.ok(&["port", "second"]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    d.ok(&["rm", "-f", "second"]);
    // Started again: the same binding answers again.
    d.ok(&["start", &id]);
    assert!(
        answers(Ipv4Addr::LOCALHOST, port),
        "after a restart of the container"
    );
    d.ok(&["rm", "-f", &id]);
    let rules = Command::new("nft")
        .args(["list", "table", "inet", &d.table])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&rules.stdout);
    assert!(!text.contains("dnat"), "rules left after rm:\n{text}");
}

#[test]
fn publish_all_takes_free_ports_for_exposed_ones() {
    let Some(d) = common::daemon_with_image() else {
        return;
    };
    let id = d.ok(&[
        "run", "-d", "--expose", "80", "--expose", "7777/udp", "-P", "bb:test", "sh", "-c", SERVE,
    ]);
    let id = id.trim().to_string();
    let out = d.ok(&["port", &id]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("7777/udp -> 0.0.0.0:"), "{out}");
    assert!(lines[1].starts_with("80/tcp -> 0.0.0.0:"), "{out}");
    let port: u16 = lines[1]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u16> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*v.first()?, *v.get(1)?))
        })
        .unwrap_or((49153, 60999));
    assert!((lo..=hi).contains(&port), "{port} outside {lo}-{hi}");
    assert!(answers(Ipv4Addr::LOCALHOST, port));
    // Bad bindings are refused at create and create nothing.
    let err = d.fails(&[
        "create",
        "--name",
        "bad",
        "-p",
        "80:80/icmp",
        "bb:test",
        "true",
    ]);
    assert!(err.contains("icmp"), "{err}");
    assert!(!d.docker(&["inspect", "bad"]).status.success());
    d.ok(&["rm", "-f", &id]);
}

/// Connection-tracking entries whose replies come from `ip`.
fn tracked_flows(ip: &str) -> usize {
    let out = Command::new("conntrack")
        .args(["-L", "--reply-src", ip])
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_removed_endpoint_leaves_no_udp_flow_behind() {
    let Some(d) = common::daemon_with_image() else {
        return;
    };
    let port = 30_000 + (std::process::id() % 10_000) as u16;
    let id = d.ok(&[
        "run",
        "-d",
        "-p",
        &format!("{port}:7000/udp"),
        "bb:test",
        "sleep",
        "1000",
    ]);
    let id = id.trim().to_string();
    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]);
    let ip = ip.trim().to_string();
    // A game client's flow: datagrams from one source port, DNATed to the container.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    common::until("the flow to be tracked", || {
        let _ = sock.send_to(b"ping", ("127.0.0.1", port));
        tracked_flows(&ip) > 0
    });
    // Gone with the endpoint: the port's next owner gets the client's next datagram, not
    // the dead container's address.
    d.ok(&["rm", "-f", &id]);
    assert_eq!(
        tracked_flows(&ip),
        0,
        "flows to {ip} survived the container"
    );
}

#[test]
fn a_tcp_connection_into_a_container_survives_a_daemon_crash_and_restart() {
    let Some(mut d) = common::daemon_with_image() else {
        return;
    };
    let port = 40_000 + (std::process::id() % 9_000) as u16;
    let id = d.ok(&[
        "run",
        "-d",
        "-p",
        &format!("{port}:80"),
        "bb:test",
        "nc",
        "-l",
        "-p",
        "80",
        "-e",
        "cat",
    ]);
    let id = id.trim().to_string();
    let mut conn = None;
    common::until("the echo server to accept", || {
        conn = TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    });
    let mut conn = conn.expect("connected");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut echo = |msg: &str| -> String {
        use std::io::Write;
        conn.write_all(msg.as_bytes()).expect("write");
        let mut buf = vec![0u8; msg.len()];
        match conn.read_exact(&mut buf) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(e) => format!("read failed: {e}"),
        }
    };
    assert_eq!(echo("before\n"), "before\n");
    // The daemon crashes and comes back: it reconciles the network against the store and
    // leaves what is right alone (veth, address, rules), so the connection lives on.
    d.kill9();
    assert_eq!(echo("while down\n"), "while down\n");
    d.spawn();
    assert_eq!(echo("after restart\n"), "after restart\n");
    d.ok(&["rm", "-f", &id]);
}
