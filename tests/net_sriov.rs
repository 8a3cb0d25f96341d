//! Root tests of the SR-IOV driver's attach/release/reconcile against the real kernel, with
//! veth devices standing in for VF netdevs: a temporary sysfs tree gives a PF `virtfnN`
//! links whose `net/<name>/ifindex` name real veths of the host namespace; the PF-side
//! settings go to the recording configurator (a veth has no `ndo_set_vf_*`; the netlink
//! encoding is tested in net_drivers.rs); containers are plain namespaces.
//!
//! What real hardware adds and these tests cannot show: the PF driver applying the settings
//! (VLAN tags on the wire, the rate limiter, spoof check), VF netdevs re-registered after a
//! reset, and a VF returning to the host namespace when its namespace dies (a veth is
//! deleted instead, which the last test uses to show that a vanished VF still gets its lease
//! and PF settings cleaned up).

mod netkit;

use berthd::network::options::{SriovOptions, VlanProto};
use berthd::network::sriov::{
    LeaseState, RecordingPf, SriovDriver, SysfsRoot, VfRequest, VfSetting,
};
use berthd::store::Store;
use netkit::{fake_sysfs, is_root, netns_path, ping, run, Guard};
use std::fs;
use std::sync::Arc;

struct Setup {
    g: Guard,
    dir: tempfile::TempDir,
    pf: String,
    vfs: Vec<String>,
}

impl Setup {
    /// `n` VF stand-ins `sv<tag><i>` (their peers `sp<tag><i>` stay in the host).
    fn new(n: usize) -> anyhow::Result<Self> {
        let mut g = Guard::new();
        let mut vfs = Vec::new();
        for i in 0..n {
            let (vf, _) = g.veth(&format!("sv{i}x"), &format!("sp{i}x"))?;
            vfs.push(vf);
        }
        let dir = tempfile::tempdir()?;
        let pf = format!("pf{}", g.tag);
        fake_sysfs(&dir.path().join("sys"), &pf, &vfs)?;
        for i in 0..n {
            fs::create_dir_all(dir.path().join(format!("irq/{}", 60 + i)))?;
        }
        Ok(Setup { g, dir, pf, vfs })
    }

    async fn store(&self) -> anyhow::Result<Store> {
        let path = self.dir.path().join("store");
        for _ in 0..50 {
            match Store::open(&path) {
                Ok(s) => return Ok(s),
                Err(e) if e.to_string().contains("lock") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Store::open(&path)?)
    }

    fn driver(&self, store: &Store) -> anyhow::Result<SriovDriver<RecordingPf>> {
        Ok(SriovDriver::new(
            SysfsRoot::new(self.dir.path().join("sys")),
            self.dir.path().join("irq"),
            store,
            RecordingPf::default(),
        )?)
    }

    fn opts(&self) -> SriovOptions {
        SriovOptions {
            parent: self.pf.clone(),
            ..Default::default()
        }
    }

    fn req(&self, ns: &str, host: u8) -> VfRequest {
        VfRequest {
            container: ns.to_string(),
            netns: netns_path(ns),
            ifname: "eth0".into(),
            mac: Some([0x02, 0x42, 10, 214, self.g.octet, host]),
            ip: self.g.ip(host),
            prefix_len: 24,
            gateway: Some(self.g.ip(1)),
            mtu: None,
        }
    }
}

fn in_host(name: &str) -> bool {
    run(&["ip", "link", "show", name]).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vf_is_configured_moved_in_and_given_back() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut s = Setup::new(2)?;
    let store = s.store().await?;
    let d = s.driver(&store)?;
    let c1 = s.g.ns("sc1")?;
    // The LAN: the stand-in's peer holds the gateway address in its own namespace.
    let lan = s.g.ns("sl")?;
    let peer0 = s.vfs[0].replacen("sv0x", "sp0x", 1);
    run(&["ip", "link", "set", &peer0, "netns", &lan])?;
    let gw = format!("{}/24", s.g.ip(1));
    run(&["ip", "-n", &lan, "addr", "add", &gw, "dev", &peer0])?;
    run(&["ip", "-n", &lan, "link", "set", &peer0, "up"])?;
    let orig_mac = fs::read_to_string(format!("/sys/class/net/{}/address", s.vfs[0]))?;

    let mut opts = s.opts();
    opts.vlan = 100;
    opts.spoofchk = Some(false);
    opts.trust = Some(true);
    opts.max_tx_rate = Some(1000);
    opts.rps_cpus = Some(vec![0, 1]);
    opts.irq_cpus = Some(vec![1]);
    // Before berth, the PF reported VLAN 7 and an admin MAC for VF 0: release restores
    // those; the settings it does not report go back to the driver defaults.
    d.pf().set_current(
        &s.pf,
        0,
        vec![
            VfSetting::Vlan {
                vlan: 7,
                qos: 1,
                proto: VlanProto::Dot1Q,
            },
            VfSetting::Mac([2, 0x11, 0x22, 0x33, 0x44, 0x55]),
        ],
    );
    let lease = d.attach(&opts, &s.req(&c1, 11)).await?;
    assert_eq!((lease.index, lease.state), (0, LeaseState::Attached));
    assert_eq!(lease.pci, "0000:af:06.0");
    let pf = &s.pf;
    assert_eq!(
        d.pf().calls(),
        [
            format!("{pf} vf 0 vlan 100 qos 0 proto 802.1Q"),
            format!("{pf} vf 0 mac 02:42:0a:d6:{:02x}:0b", s.g.octet),
            format!("{pf} vf 0 min_tx_rate 0 max_tx_rate 1000"),
            format!("{pf} vf 0 spoofchk off"),
            format!("{pf} vf 0 trust on"),
        ]
    );
    // Moved: gone from the host, eth0 inside with address, MAC and default route.
    assert!(!in_host(&s.vfs[0]));
    let link = run(&["ip", "-n", &c1, "link", "show", "eth0"])?;
    assert!(
        link.contains(&format!("02:42:0a:d6:{:02x}:0b", s.g.octet)),
        "{link}"
    );
    let addr = run(&["ip", "-n", &c1, "addr", "show", "eth0"])?;
    assert!(addr.contains(&format!("{}/24", s.g.ip(11))), "{addr}");
    let route = run(&["ip", "-n", &c1, "route", "show", "default"])?;
    assert!(route.contains(&format!("via {}", s.g.ip(1))), "{route}");
    ping(&lan, &s.g.ip(11).to_string())?;
    ping(&c1, &s.g.ip(1).to_string())?;
    // Tuning went to the fake tree (RPS before the move, IRQ affinity of its MSI vector).
    let sys = s.dir.path().join("sys");
    let rps = fs::read_to_string(
        sys.join("class/net")
            .join(&s.vfs[0])
            .join("queues/rx-0/rps_cpus"),
    )?;
    assert_eq!(rps, "3");
    let irq = fs::read_to_string(s.dir.path().join("irq/60/smp_affinity_list"))?;
    assert_eq!(irq, "1");

    // Attaching again is a no-op that keeps the same VF and address.
    d.pf().clear();
    let again = d.attach(&opts, &s.req(&c1, 11)).await?;
    assert_eq!(again.index, 0);
    assert_eq!(d.registry().all()?.len(), 1);
    ping(&lan, &s.g.ip(11).to_string())?;
    assert_eq!(d.free_vfs(pf)?.len(), 1);

    // Release: home under its name and MAC, PF settings undone, VF free.
    d.pf().clear();
    assert!(d.release(pf, &c1).await?);
    assert!(!d.release(pf, &c1).await?);
    assert!(in_host(&s.vfs[0]));
    assert!(run(&["ip", "-n", &c1, "link", "show", "eth0"]).is_err());
    let mac = fs::read_to_string(format!("/sys/class/net/{}/address", s.vfs[0]))?;
    assert_eq!(mac, orig_mac);
    assert_eq!(
        d.pf().calls(),
        [
            format!("{pf} vf 0 vlan 7 qos 1 proto 802.1Q"),
            format!("{pf} vf 0 mac 02:11:22:33:44:55"),
            format!("{pf} vf 0 min_tx_rate 0 max_tx_rate 0"),
            format!("{pf} vf 0 spoofchk on"),
            format!("{pf} vf 0 trust off"),
        ]
    );
    assert!(d.registry().all()?.is_empty());
    assert_eq!(d.free_vfs(pf)?.len(), 2);

    // A PF step that fails undoes the attach: the settings applied before it are reset,
    // the VF stays home and free.
    d.pf().clear();
    d.pf().fail_on(Some("trust"));
    let e = d.attach(&opts, &s.req(&c1, 11)).await;
    assert!(e.is_err_and(|e| e.to_string().contains("trust on")));
    assert!(in_host(&s.vfs[0]));
    assert!(d.registry().all()?.is_empty());
    let calls = d.pf().calls();
    assert_eq!(calls.len(), 8, "{calls:?}");
    assert_eq!(calls[4], format!("{pf} vf 0 vlan 7 qos 1 proto 802.1Q"));
    assert_eq!(calls[7], format!("{pf} vf 0 spoofchk on"));
    d.pf().fail_on(None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attaches_never_share_a_vf() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut s = Setup::new(3)?;
    let store = s.store().await?;
    let d = Arc::new(s.driver(&store)?);
    let mut names = Vec::new();
    for i in 0..6 {
        names.push(s.g.ns(&format!("cc{i}"))?);
    }
    let opts = Arc::new(s.opts());
    let mut tasks = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (d, opts, req) = (d.clone(), opts.clone(), s.req(n, 20 + i as u8));
        tasks.push(tokio::spawn(async move { d.attach(&opts, &req).await }));
    }
    let mut won = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await? {
            Ok(l) => won.push(l.index),
            Err(e) => {
                assert!(e.to_string().contains("no free VF"), "{e}");
                refused += 1;
            }
        }
    }
    won.sort_unstable();
    assert_eq!(won, [0, 1, 2]);
    assert_eq!(refused, 3);
    for vf in &s.vfs {
        assert!(!in_host(vf), "{vf} still in the host");
    }
    // Each holder has exactly its VF inside.
    for l in d.registry().all()? {
        let ns = l
            .netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let ns = ns.unwrap_or_default();
        run(&["ip", "-n", &ns, "link", "show", "eth0"])?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_after_a_restart_recovers_vfs_of_dead_containers() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut s = Setup::new(3)?;
    let live = s.g.ns("rl")?;
    let dead = s.g.ns("rd")?;
    let gone = s.g.ns("rg")?;
    {
        let store = s.store().await?;
        let d = s.driver(&store)?;
        let mut opts = s.opts();
        opts.trust = Some(true);
        for (i, n) in [&live, &dead, &gone].iter().enumerate() {
            d.attach(&opts, &s.req(n, 30 + i as u8)).await?;
        }
        // The daemon "crashes" here: nothing is released.
    }
    // The container `gone` disappeared with its namespace; a veth stand-in is deleted with
    // it (a real VF would come back to the host, as `dev%d` on a name clash).
    run(&["ip", "netns", "del", &gone])?;
    s.g.netns.retain(|n| n != &gone);

    let store = s.store().await?;
    let d = s.driver(&store)?;
    assert_eq!(d.registry().all()?.len(), 3);
    // A lease on a VF that sysfs no longer lists (its PF lost VFs) is freed as well.
    let mut ghost = d.registry().all()?[0].clone();
    ghost.index = 9;
    ghost.pci = "0000:af:06.9".into();
    ghost.container = "ghost".into();
    ghost.netns = s.dir.path().join("no-such-netns");
    ghost.ifindex = 999_999;
    ghost.host_ifname = "ghostvf".into();
    assert!(d.registry().try_take(&ghost)?);
    let pf = s.pf.clone();
    let report = d.reconcile(|c| c == live.as_str()).await?;
    let mut released = report.released.clone();
    released.sort();
    assert_eq!(
        released,
        [format!("{pf}/1"), format!("{pf}/2"), format!("{pf}/9")]
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // The dead container's VF is home under its own name; the live one's is untouched.
    assert!(in_host(&s.vfs[1]));
    assert!(run(&["ip", "-n", &dead, "link", "show", "eth0"]).is_err());
    assert!(!in_host(&s.vfs[0]));
    run(&["ip", "-n", &live, "link", "show", "eth0"])?;
    let left = d.registry().all()?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container, live);
    // Both freed VFs had their admin MAC and trust setting undone on the PF.
    let mut calls = d.pf().calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            format!("{pf} vf 1 mac 00:00:00:00:00:00"),
            format!("{pf} vf 1 trust off"),
            format!("{pf} vf 2 mac 00:00:00:00:00:00"),
            format!("{pf} vf 2 trust off"),
            format!("{pf} vf 9 mac 00:00:00:00:00:00"),
            format!("{pf} vf 9 trust off")
        ]
    );
    // Reconcile again: nothing to do.
    let again = d.reconcile(|c| c == live.as_str()).await?;
    assert!(again.released.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_attach_resumes_on_the_same_vf() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut s = Setup::new(2)?;
    let store = s.store().await?;
    let d = s.driver(&store)?;
    let c = s.g.ns("ri")?;
    let mut lease = d.attach(&s.opts(), &s.req(&c, 40)).await?;
    // A crash after the move but before the lease said "attached", with the address not
    // yet configured.
    lease.state = LeaseState::Allocated;
    d.registry().update(&lease)?;
    run(&["ip", "-n", &c, "addr", "flush", "dev", "eth0"])?;
    let again = d.attach(&s.opts(), &s.req(&c, 40)).await?;
    assert_eq!((again.index, again.state), (0, LeaseState::Attached));
    let addr = run(&["ip", "-n", &c, "addr", "show", "eth0"])?;
    assert!(addr.contains(&format!("{}/24", s.g.ip(40))), "{addr}");
    assert_eq!(d.registry().all()?.len(), 1);
    assert_eq!(d.free_vfs(&s.pf)?.len(), 1);
    // The container comes back with another namespace: its VF follows it.
    let moved = s.g.ns("rj")?;
    let mut req = s.req(&c, 40);
    req.netns = netns_path(&moved);
    let l = d.attach(&s.opts(), &req).await?;
    assert_eq!((l.index, l.netns), (0, netns_path(&moved)));
    assert!(run(&["ip", "-n", &c, "link", "show", "eth0"]).is_err());
    let addr = run(&["ip", "-n", &moved, "addr", "show", "eth0"])?;
    assert!(addr.contains(&format!("{}/24", s.g.ip(40))), "{addr}");
    // A repeat that fails keeps the VF with the container (its release gives it back).
    d.pf().fail_on(Some("trust"));
    let mut opts = s.opts();
    opts.trust = Some(true);
    assert!(d.attach(&opts, &req).await.is_err());
    assert_eq!(d.registry().all()?.len(), 1);
    run(&["ip", "-n", &moved, "link", "show", "eth0"])?;
    d.pf().fail_on(None);
    assert!(d.release(&s.pf, &c).await?);
    assert!(in_host(&s.vfs[0]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vf_that_came_back_renamed_is_found_by_pci_address() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let mut s = Setup::new(1)?;
    let store = s.store().await?;
    let d = s.driver(&store)?;
    let c = s.g.ns("rp")?;
    let orig_mac = fs::read_to_string(format!("/sys/class/net/{}/address", s.vfs[0]))?;
    d.attach(&s.opts(), &s.req(&c, 50)).await?;
    // What hardware does when the namespace dies and the driver re-registers the VF: it
    // reappears in the host under another name and ifindex, at the same PCI address.
    // Stand-in: the namespace (and the veth) go away, a new veth takes the VF's sysfs slot.
    run(&["ip", "netns", "del", &c])?;
    s.g.netns.retain(|n| n != &c);
    let (renamed, _) = s.g.veth("dv", "dq")?;
    let vf_net = s.dir.path().join("sys/bus/pci/devices/0000:af:06.0/net");
    fs::remove_dir_all(vf_net.join(&s.vfs[0]))?;
    fs::create_dir_all(vf_net.join(&renamed))?;
    let ifindex = fs::read_to_string(format!("/sys/class/net/{renamed}/ifindex"))?;
    fs::write(vf_net.join(&renamed).join("ifindex"), ifindex)?;

    assert!(d.release(&s.pf, &c).await?);
    // It has its own name back (and its MAC), and is free.
    assert!(in_host(&s.vfs[0]));
    assert!(!in_host(&renamed));
    let mac = fs::read_to_string(format!("/sys/class/net/{}/address", s.vfs[0]))?;
    assert_eq!(mac, orig_mac);
    assert!(d.registry().all()?.is_empty());
    Ok(())
}
