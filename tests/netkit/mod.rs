//! Shared scaffolding of the driver tests (net_drivers, net_sriov): commands, pings, and a
//! guard that owns the namespaces and host links a test creates and removes them on drop.

#![allow(dead_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

static NEXT: AtomicU8 = AtomicU8::new(0);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn run(cmd: &[&str]) -> anyhow::Result<String> {
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

pub fn ping(ns: &str, ip: &str) -> anyhow::Result<()> {
    let ping: &[&str] = if Command::new("ping").arg("-V").output().is_ok() {
        &["ping"]
    } else {
        &["busybox", "ping"]
    };
    let mut cmd = vec!["ip", "netns", "exec", ns];
    cmd.extend_from_slice(ping);
    cmd.extend_from_slice(&["-c1", "-W2", ip]);
    run(&cmd).map(|_| ())
}

/// Owns the namespaces and host links a test creates; removes them on drop.
pub struct Guard {
    pub tag: String,
    /// Third octet of the test's subnet 10.214.<octet>.0/24.
    pub octet: u8,
    pub netns: Vec<String>,
    pub links: Vec<String>,
}

impl Guard {
    pub fn new() -> Self {
        let tag = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
        let octet = (std::process::id() as u8)
            .wrapping_mul(37)
            .wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst));
        Guard {
            tag,
            octet,
            netns: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.octet, host)
    }

    /// Creates a namespace `<prefix><tag>` with `lo` up; returns its name.
    pub fn ns(&mut self, prefix: &str) -> anyhow::Result<String> {
        let name = format!("{prefix}{}", self.tag);
        run(&["ip", "netns", "add", &name])?;
        self.netns.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Creates a veth pair in the host namespace, both ends up; returns the names.
    pub fn veth(&mut self, a: &str, b: &str) -> anyhow::Result<(String, String)> {
        let (a, b) = (format!("{a}{}", self.tag), format!("{b}{}", self.tag));
        run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        self.links.push(a.clone());
        run(&["ip", "link", "set", &a, "up"])?;
        Ok((a, b))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = run(&["ip", "link", "del", l]);
        }
        for n in &self.netns {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// A fake sysfs tree under `root` for PF `pf` whose VFs are the host links `vfs`.
pub fn fake_sysfs(root: &Path, pf: &str, vfs: &[String]) -> anyhow::Result<()> {
    let pci = root.join("bus/pci/devices");
    let pf_pci = pci.join("0000:af:00.1");
    fs::create_dir_all(&pf_pci)?;
    fs::create_dir_all(root.join("class/net").join(pf))?;
    symlink(&pf_pci, root.join("class/net").join(pf).join("device"))?;
    fs::write(pf_pci.join("sriov_numvfs"), format!("{}\n", vfs.len()))?;
    for (i, name) in vfs.iter().enumerate() {
        let ifindex = fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
        let vf = pci.join(format!("0000:af:06.{i}"));
        fs::create_dir_all(vf.join("net").join(name))?;
        fs::write(vf.join("net").join(name).join("ifindex"), ifindex)?;
        fs::create_dir_all(vf.join("msi_irqs"))?;
        fs::write(vf.join("msi_irqs").join((60 + i).to_string()), "msix\n")?;
        symlink(
            format!("../0000:af:06.{i}"),
            pf_pci.join(format!("virtfn{i}")),
        )?;
        // The netdev's own sysfs directory with one receive queue (for rps_cpus).
        fs::create_dir_all(root.join("class/net").join(name).join("queues/rx-0"))?;
    }
    Ok(())
}
