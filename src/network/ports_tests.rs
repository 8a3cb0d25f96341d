//! Tests of published-port requests, allocation and rules.

use super::*;
use crate::store::Store;
use std::collections::HashSet;
use std::sync::Mutex;

/// A host where the ports in `busy` are taken by other processes.
#[derive(Default)]
struct FakeHost {
    busy: Mutex<HashSet<(Proto, u16)>>,
}

impl HostProbe for FakeHost {
    fn free(&self, proto: Proto, _ip: Option<Ipv4Addr>, port: u16) -> bool {
        !self
            .busy
            .lock()
            .map(|b| b.contains(&(proto, port)))
            .unwrap_or(true)
    }
}

fn alloc(dir: &std::path::Path) -> anyhow::Result<PortAllocator> {
    let store = Store::open(dir)?;
    Ok(PortAllocator::new(store.table("ports")?, (40000, 40002)))
}

fn req(port: u16, proto: Proto, ip: Option<&str>, hp: Option<(u16, u16)>) -> PortRequest {
    PortRequest {
        container_port: port,
        proto,
        host_ip: ip.and_then(|i| i.parse().ok()),
        host_ports: hp,
    }
}

#[test]
fn requests_follow_the_cli_encoding_and_publish_all() -> anyhow::Result<()> {
    let pb = serde_json::json!({
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "9090"}],
        "27015/udp": [{"HostIp": "", "HostPort": "27015-27020"}],
        "22/tcp": [{"HostIp": "", "HostPort": ""}]
    });
    let exposed = vec!["80/tcp".to_string(), "443/tcp".to_string()];
    let r = requests(Some(&pb), true, &exposed)?;
    assert_eq!(
        r,
        vec![
            req(22, Proto::Tcp, None, None),
            req(80, Proto::Tcp, None, Some((8080, 8080))),
            req(80, Proto::Tcp, Some("127.0.0.1"), Some((9090, 9090))),
            req(443, Proto::Tcp, None, None),
            req(27015, Proto::Udp, None, Some((27015, 27020))),
        ]
    );
    // Without -P, the exposed-only port is not published.
    assert_eq!(requests(Some(&pb), false, &exposed)?.len(), 4);
    for bad in [
        serde_json::json!({"80/icmp": [{"HostPort": "1"}]}),
        serde_json::json!({"x/tcp": [{"HostPort": "1"}]}),
        serde_json::json!({"80/tcp": [{"HostPort": "90-80"}]}),
        serde_json::json!({"80/tcp": [{"HostIp": "nope", "HostPort": "1"}]}),
        serde_json::json!({"80/tcp": "8080"}),
    ] {
        let e = requests(Some(&bad), false, &[]).expect_err("refused");
        assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e}");
    }
    Ok(())
}

#[test]
fn host_ports_are_held_once_and_survive_a_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = FakeHost::default();
    {
        let a = alloc(dir.path())?;
        let got = a.allocate(
            "c1",
            "c1 (e1)",
            &[req(80, Proto::Tcp, None, Some((8080, 8080)))],
            &host,
        )?;
        assert_eq!(got[0].host_port, 8080);
        // Asking again changes nothing.
        let again = a.allocate(
            "c1",
            "c1 (e1)",
            &[req(80, Proto::Tcp, None, Some((8080, 8080)))],
            &host,
        )?;
        assert_eq!(again, got);
        // Another container: dockerd's error, nothing taken.
        let e = a
            .allocate(
                "c2",
                "c2 (e2)",
                &[
                    req(81, Proto::Tcp, None, Some((9000, 9000))),
                    req(80, Proto::Tcp, Some("10.0.0.1"), Some((8080, 8080))),
                ],
                &host,
            )
            .expect_err("in use");
        assert_eq!(
            e.to_string(),
            "driver failed programming external connectivity on endpoint c2 (e2): Bind for 10.0.0.1:8080 failed: port is already allocated"
        );
        assert!(a.held("c2")?.is_empty());
        // UDP on the same number is another port.
        assert_eq!(
            a.allocate(
                "c2",
                "c2",
                &[req(80, Proto::Udp, None, Some((8080, 8080)))],
                &host
            )?
            .len(),
            1
        );
    }
    // A restarted daemon knows who holds what.
    let a = alloc(dir.path())?;
    assert_eq!(a.held("c1")?[0].host_port, 8080);
    a.release("c1")?;
    assert!(a.held("c1")?.is_empty());
    assert_eq!(
        a.allocate(
            "c3",
            "c3",
            &[req(80, Proto::Tcp, None, Some((8080, 8080)))],
            &host
        )?[0]
            .host_port,
        8080
    );
    Ok(())
}

#[test]
fn dynamic_ports_and_ranges_skip_busy_ones_and_run_out_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = alloc(dir.path())?;
    let host = FakeHost::default();
    host.busy
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .insert((Proto::Tcp, 40000));
    let got = a.allocate(
        "c1",
        "c1",
        &[
            req(1, Proto::Tcp, None, None),
            req(2, Proto::Tcp, None, None),
        ],
        &host,
    )?;
    assert_eq!(
        got.iter().map(|b| b.host_port).collect::<Vec<_>>(),
        vec![40001, 40002]
    );
    let e = a
        .allocate("c2", "c2", &[req(1, Proto::Tcp, None, None)], &host)
        .expect_err("full");
    assert!(
        e.to_string()
            .ends_with("Bind for 0.0.0.0:40000-40002 failed: all ports in the range are allocated"),
        "{e}"
    );
    let got = a.allocate(
        "c3",
        "c3",
        &[req(5, Proto::Udp, None, Some((7000, 7005)))],
        &host,
    )?;
    assert_eq!(got[0].host_port, 7000);
    Ok(())
}

#[test]
fn concurrent_allocations_never_share_a_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let a = std::sync::Arc::new(PortAllocator::new(store.table("ports")?, (41000, 41099)));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                a.allocate(
                    &format!("c{i}"),
                    "x",
                    &[
                        req(80, Proto::Tcp, None, None),
                        req(81, Proto::Tcp, None, None),
                    ],
                    &FakeHost::default(),
                )
            })
        })
        .collect();
    let mut ports = HashSet::new();
    for h in handles {
        let got = h.join().map_err(|_| anyhow::anyhow!("thread"))??;
        for b in got {
            assert!(
                ports.insert(b.host_port),
                "port {} given twice",
                b.host_port
            );
        }
    }
    assert_eq!(ports.len(), 32);
    Ok(())
}

#[test]
fn rules_forward_from_outside_the_host_and_hairpin() {
    let b = PortBinding {
        container_port: 80,
        proto: Proto::Tcp,
        host_ip: None,
        host_port: 8080,
    };
    let u = PortBinding {
        container_port: 27015,
        proto: Proto::Udp,
        host_ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
        host_port: 27015,
    };
    let ip = Ipv4Addr::new(10, 1, 2, 3);
    let rules = port_rules("0123456789abcdef", "bt1", ip, &[b, u]);
    let text: Vec<String> = rules
        .iter()
        .map(|r| format!("{}: {} # {}", r.chain, r.body, r.comment))
        .collect();
    assert_eq!(
        text,
        vec![
            "prerouting: fib daddr type local tcp dport 8080 dnat ip to 10.1.2.3:80 # ports 0123456789ab: dnat 0.0.0.0:8080/tcp to 10.1.2.3:80",
            "output: fib daddr type local tcp dport 8080 dnat ip to 10.1.2.3:80 # ports 0123456789ab: dnat 0.0.0.0:8080/tcp to 10.1.2.3:80",
            "postrouting: iifname \"bt1\" oifname \"bt1\" ip daddr 10.1.2.3 tcp dport 80 ct status dnat masquerade # ports 0123456789ab: hairpin 10.1.2.3:80/tcp",
            "forward: ip daddr 10.1.2.3 oifname \"bt1\" tcp dport 80 accept # ports 0123456789ab: accept 10.1.2.3:80/tcp",
            "prerouting: fib daddr type local ip daddr 127.0.0.1 udp dport 27015 dnat ip to 10.1.2.3:27015 # ports 0123456789ab: dnat 127.0.0.1:27015/udp to 10.1.2.3:27015",
            "output: fib daddr type local ip daddr 127.0.0.1 udp dport 27015 dnat ip to 10.1.2.3:27015 # ports 0123456789ab: dnat 127.0.0.1:27015/udp to 10.1.2.3:27015",
            "postrouting: iifname \"bt1\" oifname \"bt1\" ip daddr 10.1.2.3 udp dport 27015 ct status dnat masquerade # ports 0123456789ab: hairpin 10.1.2.3:27015/udp",
            "forward: ip daddr 10.1.2.3 oifname \"bt1\" udp dport 27015 accept # ports 0123456789ab: accept 10.1.2.3:27015/udp",
            "postrouting: ip saddr 127.0.0.0/8 oifname \"bt1\" masquerade # ports 0123456789ab: localhost masquerade",
        ]
    );
}

#[test]
fn ports_json_lists_exposed_and_bound_ports_like_dockerd() {
    let b = PortBinding {
        container_port: 80,
        proto: Proto::Tcp,
        host_ip: None,
        host_port: 8080,
    };
    let v = ports_json(&["80/tcp".into(), "443/tcp".into()], &[b]);
    assert_eq!(
        v,
        serde_json::json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "443/tcp": null})
    );
}
