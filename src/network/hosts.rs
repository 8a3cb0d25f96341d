//! Name resolution between containers on user-defined networks, without a daemon in the
//! resolution path.
//!
//! **Deviation from dockerd.** dockerd answers container names, network aliases and short
//! ids from an embedded DNS server at 127.0.0.11 that runs inside the daemon; it stops
//! answering whenever the daemon is down, restarting or being upgraded, which berth must
//! not allow. berth instead keeps a section of each container's `/etc/hosts` (the file it
//! writes and bind-mounts, see `etc.rs`) up to date with the addresses, names, aliases and
//! short ids of every running peer on the user networks it shares. The file is rewritten
//! in place (same inode, so the bind mount inside the container sees the change) whenever a
//! container joins or leaves a network, starts or stops. Lookups go through libc's `files`
//! source and keep working while berthd is killed, restarted or upgraded. What this does
//! not give: DNS queries for those names (`nslookup` asks a server; `getent`, `ping`, and
//! every resolver that honours `/etc/hosts` work), and round-robin answers for an alias
//! shared by several containers (each gets its own line; the first one wins).

use super::ipam::Lease;
use super::kernel::Kernel;
use super::manager::NetworkManager;
use crate::error::{ApiError, ApiResult};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::Path;

/// The line that starts berth's peers section (everything after it is rewritten).
pub(crate) const MARK: &str = "# berth: peers on user-defined networks";

/// Replaces the peers section of the hosts file at `path` with `lines` (no section when
/// empty), in place. A missing file is fine (the container is not started yet; its own
/// start writes it and refreshes again). Returns whether the file changed.
pub(crate) fn rewrite_peers(path: &Path, lines: &[String]) -> ApiResult<bool> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ApiError::internal(&format!("read {}", path.display()), e)),
    };
    let base = match old.find(&format!("\n{MARK}\n")) {
        Some(i) => &old[..=i],
        None if old.starts_with(&format!("{MARK}\n")) => "",
        None => old.as_str(),
    };
    let mut new = base.to_string();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    if !lines.is_empty() {
        new.push_str(MARK);
        new.push('\n');
        for l in lines {
            new.push_str(l);
            new.push('\n');
        }
    }
    if new == old {
        return Ok(false);
    }
    // fs::write truncates and writes the same inode: the container's bind mount sees it.
    std::fs::write(path, new)
        .map_err(|e| ApiError::internal(&format!("write {}", path.display()), e))?;
    Ok(true)
}

/// The hosts line of one endpoint: address, name, aliases and short id.
fn host_line(l: &Lease) -> String {
    let mut names: Vec<&str> = vec![l.name.as_str()];
    names.extend(l.aliases.iter().map(String::as_str));
    let short = &l.container_id[..12.min(l.container_id.len())];
    names.push(short);
    let mut seen = BTreeSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(*n));
    format!("{}\t{}", l.ip, names.join(" "))
}

/// The peers section of every running container on user networks, by container id:
/// (hosts file, lines).
pub(crate) fn peer_sections(
    leases: &[(String, Lease)],
) -> BTreeMap<String, (std::path::PathBuf, Vec<String>)> {
    // network id -> running endpoints
    let mut by_net: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for (key, l) in leases.iter().filter(|(_, l)| l.veth.is_some()) {
        if let Some((net, _)) = key.split_once('/') {
            by_net.entry(net).or_default().push(l);
        }
    }
    let mut out: BTreeMap<String, (std::path::PathBuf, Vec<String>)> = BTreeMap::new();
    for members in by_net.values() {
        for m in members {
            let Some(path) = &m.hosts else { continue };
            let entry = out
                .entry(m.container_id.clone())
                .or_insert_with(|| (path.clone(), Vec::new()));
            for p in members.iter().filter(|p| p.container_id != m.container_id) {
                let line = host_line(p);
                if !entry.1.contains(&line) {
                    entry.1.push(line);
                }
            }
        }
    }
    out
}

impl<K: Kernel> NetworkManager<K> {
    /// Brings the peers section of every running container's hosts file on user networks
    /// up to date (only files whose content changes are written).
    pub fn refresh_hosts(&self) -> ApiResult<()> {
        let _g = self
            .hosts_lock
            .lock()
            .map_err(|_| ApiError::Internal("hosts lock poisoned".into()))?;
        let leases = self.leases.all::<Lease>()?;
        // Every running container gets an entry, so a section whose peers all left empties.
        for (path, lines) in peer_sections(&leases).values() {
            rewrite_peers(path, lines)?;
        }
        Ok(())
    }

    /// [`Self::refresh_hosts`], logging a failure (a stale peer list must not fail the
    /// container operation that triggered it).
    pub(super) fn refresh_hosts_logged(&self) {
        if let Err(e) = self.refresh_hosts() {
            tracing::warn!(error = %e, "updating the containers' hosts files");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::MetadataExt;

    fn lease(cid: &str, name: &str, ip: u8, hosts: &Path, up: bool) -> Lease {
        Lease {
            container_id: format!("{cid:0<64}"),
            name: name.into(),
            network: "n".into(),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            prefix_len: 24,
            mac: String::new(),
            endpoint_id: String::new(),
            veth: up.then(|| "veth1".to_string()),
            aliases: vec!["al".into()],
            hosts: Some(hosts.to_path_buf()),
            connected_as: None,
            requested_ip: None,
        }
    }

    #[test]
    fn sections_are_rewritten_in_place() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (ha, hb, hc) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        for h in [&ha, &hb, &hc] {
            std::fs::write(h, "127.0.0.1\tlocalhost\n10.0.0.9\tself\n")?;
        }
        let ino = std::fs::metadata(&ha)?.ino();
        let leases = vec![
            ("n1/a".to_string(), lease("a", "web", 2, &ha, true)),
            ("n1/b".to_string(), lease("b", "db", 3, &hb, true)),
            ("n2/c".to_string(), lease("c", "lone", 4, &hc, true)),
            ("n1/d".to_string(), lease("d", "stopped", 5, &hc, false)),
        ];
        let s = peer_sections(&leases);
        let (path, lines) = &s[&format!("{:0<64}", "a")];
        assert_eq!(path, &ha);
        assert_eq!(lines, &vec![format!("10.0.0.3\tdb al b{}", "0".repeat(11))]);
        assert!(s[&format!("{:0<64}", "c")].1.is_empty());
        assert!(rewrite_peers(&ha, lines)?);
        assert!(
            !rewrite_peers(&ha, lines)?,
            "unchanged content is not rewritten"
        );
        let text = std::fs::read_to_string(&ha)?;
        assert_eq!(
            text,
            format!("127.0.0.1\tlocalhost\n10.0.0.9\tself\n{MARK}\n10.0.0.3\tdb al b00000000000\n")
        );
        assert_eq!(std::fs::metadata(&ha)?.ino(), ino, "same inode");
        assert!(rewrite_peers(&ha, &[])?);
        assert_eq!(
            std::fs::read_to_string(&ha)?,
            "127.0.0.1\tlocalhost\n10.0.0.9\tself\n"
        );
        assert!(!rewrite_peers(&dir.path().join("missing"), lines)?);
        Ok(())
    }
}
