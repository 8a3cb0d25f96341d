//! Root tests of the network module against the real kernel: bridge, veths, namespaces,
//! nftables, pings between containers, IPAM under concurrency and across reopen.
//! Every test uses its own bridge (`bt<6 hex>`), subnet (10.213.x.0/24), table and exec
//! root, and a guard removes all of them even when the test fails.

use berthd::network::{write_etc_files, NetConfig, NetMode, NetRequest, NetworkManager};
use berthd::store::Store;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &Path, cmd: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net={}", ns.display());
    let mut full = vec!["nsenter", net.as_str()];
    full.extend_from_slice(cmd);
    run(&full)
}

fn ping(ns: &Path, ip: &str) -> anyhow::Result<()> {
    let ping = if Command::new("ping").arg("-V").output().is_ok() {
        vec!["ping"]
    } else {
        vec!["busybox", "ping"]
    };
    let mut cmd = ping;
    cmd.extend_from_slice(&["-c1", "-W2", ip]);
    in_ns(ns, &cmd).map(|_| ())
}

/// Owns everything a test creates; removes it on drop.
struct Fixture {
    tag: String,
    dir: tempfile::TempDir,
    cfg: NetConfig,
    subnet_prefix: String,
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let base = (std::process::id() as u8).wrapping_mul(37);
        let octet = base.wrapping_add(NEXT_NET.fetch_add(1, Ordering::SeqCst));
        let dir = tempfile::tempdir()?;
        let mut cfg = NetConfig::new(dir.path().join("exec"));
        cfg.bridge = format!("bt{tag}");
        cfg.nft_table = format!("berth_t{tag}");
        cfg.bip = Some(format!("10.213.{octet}.1/24"));
        Ok(Fixture {
            tag,
            subnet_prefix: format!("10.213.{octet}."),
            dir,
            cfg,
        })
    }

    /// Opens the store; retries for a while because sled releases its file lock from a
    /// background thread after the previous handle is dropped.
    async fn store(&self) -> anyhow::Result<Store> {
        let path = self.dir.path().join("store");
        let mut tries = 0;
        loop {
            match Store::open(&path) {
                Ok(s) => return Ok(s),
                Err(e) if tries < 50 && e.to_string().contains("lock") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn veths(&self) -> Vec<String> {
        run(&["ip", "-o", "link", "show", "master", &self.cfg.bridge])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let nsdir = self.cfg.exec_root.join("netns");
        if let Ok(entries) = std::fs::read_dir(&nsdir) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = nix::mount::umount2(&nsdir, nix::mount::MntFlags::MNT_DETACH);
        for v in self.veths() {
            let _ = run(&["ip", "link", "del", &v]);
        }
        let _ = run(&["ip", "link", "del", &self.cfg.bridge]);
        let _ = run(&["ip", "link", "del", &format!("bx{}", self.tag)]);
        let _ = run(&["nft", "delete", "table", "inet", &self.cfg.nft_table]);
    }
}

fn req(name: &str) -> NetRequest {
    NetRequest {
        mode: NetMode::Bridge,
        name: name.into(),
        mac: None,
        ..Default::default()
    }
}

fn cid(n: u32) -> String {
    format!("{n:064x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_containers_talk_and_release_cleans_up() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let fx = Fixture::new()?;
    let store = fx.store().await?;
    let m = NetworkManager::open(fx.cfg.clone(), &store, true).await?;
    let gw = format!("{}1", fx.subnet_prefix);

    // Bridge: up, with the gateway address.
    let br = run(&["ip", "-o", "-4", "addr", "show", "dev", &fx.cfg.bridge])?;
    assert!(br.contains(&format!("inet {gw}/24")), "{br}");
    let flags = run(&["ip", "-o", "link", "show", &fx.cfg.bridge])?;
    assert!(flags.contains(",UP"), "{flags}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim(),
        "1"
    );
    // Firewall: our table with the masquerade of the subnet.
    let table = run(&["nft", "list", "table", "inet", &fx.cfg.nft_table])?;
    let masq = format!(
        "ip saddr {}0/24 oifname != \"{}\" masquerade",
        fx.subnet_prefix, fx.cfg.bridge
    );
    assert!(table.contains(&masq), "{table}");
    assert!(
        table.contains("hook postrouting") && table.contains("hook forward"),
        "{table}"
    );

    let (c1, c2) = (cid(1), cid(2));
    let a1 = m.ensure(&c1, &req("one")).await?;
    let a2 = m.ensure(&c2, &req("two")).await?;
    let ip1 = a1.ip_string();
    let ip2 = a2.ip_string();
    assert_eq!(ip1, format!("{}2", fx.subnet_prefix));
    assert_eq!(ip2, format!("{}3", fx.subnet_prefix));
    let ns1 = a1
        .sandbox_path()
        .ok_or_else(|| anyhow::anyhow!("no netns"))?;
    let ns2 = a2
        .sandbox_path()
        .ok_or_else(|| anyhow::anyhow!("no netns"))?;
    assert_eq!(ns1, fx.cfg.exec_root.join("netns").join(&c1));

    // Host side: attached to the bridge, up, txqueuelen 0.
    let v1 = a1.host_veth.clone().unwrap_or_default();
    assert!(fx.veths().contains(&v1), "{:?}", fx.veths());
    let txq = std::fs::read_to_string(format!("/sys/class/net/{v1}/tx_queue_len"))?;
    assert_eq!(txq.trim(), "0");
    assert!(run(&["ip", "-o", "link", "show", &v1])?.contains(",UP"));
    // Container side: eth0 with address, dockerd MAC, default route; lo up.
    let eth = in_ns(&ns1, &["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(eth.contains(&format!("inet {ip1}/24")), "{eth}");
    let link = in_ns(&ns1, &["ip", "-o", "link", "show", "eth0"])?;
    assert!(
        link.contains(&a1.mac) && a1.mac.starts_with("02:42:0a:d5:"),
        "{link}"
    );
    let route = in_ns(&ns1, &["ip", "route", "show", "default"])?;
    assert!(
        route.contains(&format!("default via {gw} dev eth0")),
        "{route}"
    );
    assert!(in_ns(&ns1, &["ip", "-o", "link", "show", "lo"])?.contains("UP"));

    // Traffic: container → container, container → gateway.
    ping(&ns1, &ip2)?;
    ping(&ns2, &ip1)?;
    ping(&ns1, &gw)?;
    // Egress is masqueraded: an "outside" namespace without a route back to the container
    // subnet answers only if the source address was rewritten to the host's.
    let ext = m
        .ensure(
            &cid(3),
            &NetRequest {
                mode: NetMode::None,
                name: "ext".into(),
                mac: None,
                ..Default::default()
            },
        )
        .await?;
    let ext_ns = ext
        .sandbox_path()
        .ok_or_else(|| anyhow::anyhow!("no netns"))?;
    let uplink = format!("bx{}", fx.tag);
    let o = (rand::random::<u8>() & 0x3f) * 4;
    let (host_ip, ext_ip) = (format!("198.18.{o}.1"), format!("198.18.{o}.2"));
    let me = std::process::id().to_string();
    in_ns(
        &ext_ns,
        &[
            "ip", "link", "add", "ext0", "type", "veth", "peer", "name", &uplink, "netns", &me,
        ],
    )?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &uplink,
    ])?;
    run(&["ip", "link", "set", &uplink, "up"])?;
    in_ns(
        &ext_ns,
        &["ip", "addr", "add", &format!("{ext_ip}/30"), "dev", "ext0"],
    )?;
    in_ns(&ext_ns, &["ip", "link", "set", "ext0", "up"])?;
    ping(&ns1, &ext_ip)?;
    assert!(
        ping(&ext_ns, &ip1).is_err(),
        "outside reached the container without a route"
    );
    m.release(&cid(3)).await?;
    let _ = run(&["ip", "link", "del", &uplink]);

    let stats = m.interface_stats(&ns1).await?;
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].0, "eth0");
    assert!(
        stats[0].1.rx_packets >= 2 && stats[0].1.tx_bytes > 0,
        "{stats:?}"
    );

    // /etc files from the attachment.
    let files = write_etc_files(fx.dir.path(), "one", "", Some(&a1), &[], &[], &[], &[])?;
    let hosts = std::fs::read_to_string(&files.hosts)?;
    assert!(hosts.ends_with(&format!("{ip1}\tone\n")), "{hosts}");

    // Idempotent: nothing is recreated.
    assert_eq!(m.ensure(&c1, &req("one")).await?, a1);
    let insp = m.inspect("bridge")?;
    assert_eq!(insp.containers.len(), 2);
    assert_eq!(insp.containers[&c2].ipv4_address, format!("{ip2}/24"));

    // Release: netns file and lease gone at once, the veth shortly after (the kernel
    // destroys it with the namespace, off the caller's path); twice is fine.
    m.release(&c1).await?;
    m.release(&c1).await?;
    assert!(!ns1.exists());
    gone_soon(|| !fx.veths().contains(&v1) && run(&["ip", "link", "show", &v1]).is_err()).await?;
    assert_eq!(m.inspect("bridge")?.containers.len(), 1);
    ping(&ns2, &gw)?;
    m.release(&c2).await?;
    gone_soon(|| fx.veths().is_empty()).await?;
    assert!(std::fs::read_dir(fx.cfg.exec_root.join("netns"))?
        .next()
        .is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_is_unique_under_concurrency_and_survives_reopen() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let fx = Fixture::new()?;
    let ids: Vec<String> = (10..16).map(cid).collect();
    let (first, table_before) = {
        let store = fx.store().await?;
        let m = Arc::new(NetworkManager::open(fx.cfg.clone(), &store, true).await?);
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (m, id) = (m.clone(), id.clone());
                tokio::spawn(async move { m.ensure(&id, &req("x")).await })
            })
            .collect();
        let mut atts = Vec::new();
        for t in tasks {
            atts.push(t.await??);
        }
        let ips: HashSet<String> = atts.iter().map(|a| a.ip_string()).collect();
        assert_eq!(ips.len(), ids.len(), "duplicate addresses: {ips:?}");
        assert_eq!(fx.veths().len(), ids.len());
        let table = run(&["nft", "-a", "list", "table", "inet", &fx.cfg.nft_table])?;
        (atts[0].clone(), table)
    };
    // Reopen (daemon restart): leases, veths and firewall rules are kept as they are.
    let store = fx.store().await?;
    let m = NetworkManager::open(fx.cfg.clone(), &store, true).await?;
    let table_after = run(&["nft", "-a", "list", "table", "inet", &fx.cfg.nft_table])?;
    assert_eq!(table_before, table_after, "rules were rewritten on reopen");
    let again = m.ensure(&ids[0], &req("x")).await?;
    assert_eq!(again, first);
    assert_eq!(m.inspect("bridge")?.containers.len(), ids.len());

    // Reconcile keeps the live container and removes the rest.
    m.reconcile(&ids[..1]).await?;
    assert_eq!(
        fx.veths(),
        vec![first.host_veth.clone().unwrap_or_default()]
    );
    let left: Vec<PathBuf> = std::fs::read_dir(fx.cfg.exec_root.join("netns"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, vec![first.sandbox_path().unwrap_or_default()]);
    assert_eq!(m.inspect("bridge")?.containers.len(), 1);
    ping(&left[0], &format!("{}1", fx.subnet_prefix))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_has_only_loopback_and_host_mode_no_namespace() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let fx = Fixture::new()?;
    let store = fx.store().await?;
    let m = NetworkManager::open(fx.cfg.clone(), &store, true).await?;
    let none = NetRequest {
        mode: NetMode::None,
        name: "n".into(),
        mac: None,
        ..Default::default()
    };
    let a = m.ensure(&cid(20), &none).await?;
    let ns = a
        .sandbox_path()
        .ok_or_else(|| anyhow::anyhow!("no netns"))?;
    let links = in_ns(&ns, &["ip", "-o", "link", "show"])?;
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:") && links.contains("UP"), "{links}");
    // A second container joins the same namespace.
    let join = NetRequest {
        mode: NetMode::Container(ns.to_string_lossy().into_owned()),
        name: "j".into(),
        mac: None,
        ..Default::default()
    };
    assert_eq!(
        m.ensure(&cid(21), &join).await?.sandbox_path(),
        Some(ns.clone())
    );
    let host = NetRequest {
        mode: NetMode::Host,
        name: "h".into(),
        mac: None,
        ..Default::default()
    };
    assert_eq!(m.ensure(&cid(22), &host).await?.sandbox_path(), None);
    m.release(&cid(21)).await?;
    assert!(ns.exists());
    m.release(&cid(20)).await?;
    assert!(!ns.exists());
    Ok(())
}

/// Polls `done` for up to 5 s (veths of a released container are destroyed asynchronously).
async fn gone_soon(mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "still there after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
