//! Helpers of the user-network tests (`tests/user_networks*.rs`): per-daemon subnets that
//! cannot collide with other test daemons (`10.A.B.1/24` as `--bip` gives `10.A.(128+B).x/26`),
//! inspect shortcuts, host-side checks of bridges and nft rules, and a guard that deletes the
//! user networks' bridges even when a test fails.

use super::Daemon;
use serde_json::Value;
use std::process::Command;

/// Four /26 subnets of this daemon's own.
pub fn subnets(d: &Daemon) -> Vec<String> {
    let gw = d.bip.split('/').next().expect("bip address");
    let o: Vec<u32> = gw.split('.').map(|x| x.parse().expect("octet")).collect();
    (0..4)
        .map(|i| format!("10.{}.{}.{}/26", o[1], 128 + o[2] % 128, i * 64))
        .collect()
}

/// `a.b.c.` + (offset of the subnet + n).
pub fn addr(subnet: &str, n: u32) -> String {
    let base = subnet.split('/').next().expect("subnet address");
    let (pre, last) = base.rsplit_once('.').expect("dotted quad");
    format!("{pre}.{}", last.parse::<u32>().expect("octet") + n)
}

pub fn inspect(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&d.ok(&all)).expect("inspect json");
    v[0].clone()
}

pub fn net_inspect(d: &Daemon, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&d.ok(&["network", "inspect", name])).expect("network inspect json");
    v[0].clone()
}

pub fn ip_addr_of(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", dev])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn link_exists(dev: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn nft_table(d: &Daemon) -> String {
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
pub struct Bridges(std::cell::RefCell<Vec<String>>);

impl Bridges {
    /// Records the bridge of network `id` (returns its name).
    pub fn add(&self, id: &str) -> String {
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
