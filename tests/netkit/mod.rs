//! Shared scaffolding of the driver tests (net_drivers, net_sriov): commands, pings, and a
//! guard that owns the namespaces and host links a test creates and removes them on drop.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
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
