//! User-defined networks through the real docker CLI: `docker network create/ls/inspect/
//! rm/prune` with their bridges and nft rules, containers on them with `--ip` and
//! `--network-alias`, addresses kept across restarts and a daemon kill -9, distinct
//! addresses for parallel runs, and dockerd's error messages. Names and `network connect`
//! are in `user_networks_multi.rs`.

mod common;
use common::usernet::*;
use common::{is_root, Daemon};

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
    // Networks are isolated from each other (and from the default bridge), as in dockerd.
    let any_other = ips.iter().next().cloned().unwrap_or_default();
    let out = d.docker(&["exec", "ca", "ping", "-c1", "-W1", &any_other]);
    assert!(!out.status.success(), "app reached other ({any_other})");
    let out = d.docker(&["run", "--rm", "bb:test", "ping", "-c1", "-W1", &fixed]);
    assert!(!out.status.success(), "the default bridge reached app");

    // Removing the containers frees the network.
    let all = d.ok(&["ps", "-aq"]);
    for id in all.split_whitespace() {
        d.ok(&["rm", "-f", id]);
    }
    assert_eq!(net_inspect(&d, "app")["Containers"], serde_json::json!({}));
    d.ok(&["network", "rm", "app", "other", "plain"]);
    assert_eq!(d.ok(&["network", "ls", "-q"]).lines().count(), 3);
}
