//! The container's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`, written the way
//! dockerd 20.10 (libnetwork's `etchosts` and `resolvconf`) writes them; the daemon
//! bind-mounts them into the container.

use super::types::Attachment;
use crate::error::{ApiError, ApiResult};
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Inputs of [`write_etc_files`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EtcSpec<'a> {
    /// `Config.Hostname`.
    pub hostname: &'a str,
    /// `Config.Domainname`.
    pub domainname: &'a str,
    /// The container's attachment (`None` is treated like `none` mode).
    pub attachment: Option<&'a Attachment>,
    /// `HostConfig.ExtraHosts` (`name:ip`; `host-gateway` as ip means `host_gateway`).
    pub extra_hosts: &'a [String],
    /// The address `host-gateway` stands for (the default bridge's gateway).
    pub host_gateway: Option<Ipv4Addr>,
    /// `HostConfig.Dns`.
    pub dns: &'a [String],
    /// `HostConfig.DnsSearch`.
    pub dns_search: &'a [String],
    /// `HostConfig.DnsOptions`.
    pub dns_options: &'a [String],
}

/// Paths of the written files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    /// `<dir>/hosts`.
    pub hosts: PathBuf,
    /// `<dir>/hostname`.
    pub hostname: PathBuf,
    /// `<dir>/resolv.conf`.
    pub resolv_conf: PathBuf,
}

/// Where the host's files are read from (fixed in production, temp files in tests).
struct Sources<'a> {
    hosts: &'a Path,
    resolv: &'a Path,
    resolved: &'a Path,
}

/// Writes `hostname`, `hosts` and `resolv.conf` into `dir` (created if missing), as
/// dockerd does for the container's network mode (`att`: `None` or a `container:`-mode
/// attachment are written like `none`; host mode copies the host's files unless
/// `--add-host`/`--dns*` were given). `extra_hosts` are `name:ip` (`host-gateway` as ip
/// means the default bridge's gateway).
#[allow(clippy::too_many_arguments)]
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    domainname: &str,
    att: Option<&Attachment>,
    extra_hosts: &[String],
    dns: &[String],
    dns_search: &[String],
    dns_options: &[String],
) -> ApiResult<EtcFiles> {
    let spec = EtcSpec {
        hostname,
        domainname,
        attachment: att,
        extra_hosts,
        host_gateway: att.and_then(|a| a.host_gateway),
        dns,
        dns_search,
        dns_options,
    };
    let src = Sources {
        hosts: Path::new("/etc/hosts"),
        resolv: Path::new("/etc/resolv.conf"),
        resolved: Path::new("/run/systemd/resolve/resolv.conf"),
    };
    write_from(dir, &spec, &src)
}

fn write_from(dir: &Path, spec: &EtcSpec<'_>, src: &Sources<'_>) -> ApiResult<EtcFiles> {
    let files = EtcFiles {
        hosts: dir.join("hosts"),
        hostname: dir.join("hostname"),
        resolv_conf: dir.join("resolv.conf"),
    };
    let write = |path: &Path, content: &[u8]| {
        fs::write(path, content)
            .map_err(|e| ApiError::internal(&format!("write {}", path.display()), e))
    };
    fs::create_dir_all(dir)
        .map_err(|e| ApiError::internal(&format!("create {}", dir.display()), e))?;
    let host_mode = spec.attachment.is_some_and(|a| a.network == "host");
    write(&files.hostname, format!("{}\n", spec.hostname).as_bytes())?;
    let hosts = if host_mode && spec.extra_hosts.is_empty() {
        read_or_empty(src.hosts)?
    } else {
        build_hosts(spec)?.into_bytes()
    };
    write(&files.hosts, &hosts)?;
    let overrides =
        !(spec.dns.is_empty() && spec.dns_search.is_empty() && spec.dns_options.is_empty());
    let resolv = if host_mode && !overrides {
        read_or_empty(src.resolv)?
    } else {
        let host = host_resolv(src)?;
        if overrides {
            build_resolv(&host, spec).into_bytes()
        } else {
            filter_resolv(&host).into_bytes()
        }
    };
    write(&files.resolv_conf, &resolv)?;
    Ok(files)
}

fn read_or_empty(path: &Path) -> ApiResult<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ApiError::internal(&format!("read {}", path.display()), e)),
    }
}

/// The host's resolv.conf; systemd-resolved's upstream file when `/etc/resolv.conf` only
/// points at the 127.0.0.53 stub (as dockerd does).
fn host_resolv(src: &Sources<'_>) -> ApiResult<String> {
    let main = String::from_utf8_lossy(&read_or_empty(src.resolv)?).into_owned();
    if nameservers(&main) == ["127.0.0.53"] && src.resolved.exists() {
        return Ok(String::from_utf8_lossy(&read_or_empty(src.resolved)?).into_owned());
    }
    Ok(main)
}

/// dockerd's hosts file: the fixed localhost entries, the `--add-host` records, then the
/// container's own address.
fn build_hosts(spec: &EtcSpec<'_>) -> ApiResult<String> {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for h in spec.extra_hosts {
        let (name, ip) = h.split_once(':').ok_or_else(|| {
            ApiError::BadRequest(format!("invalid extra host {h:?}: want name:ip"))
        })?;
        let ip = if ip == "host-gateway" {
            spec.host_gateway.map(|g| g.to_string()).ok_or_else(|| {
                ApiError::BadRequest("unable to derive the IP value for host-gateway".into())
            })?
        } else {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<IpAddr>().map_err(|_| {
                ApiError::BadRequest(format!("invalid IP address in add-host: {ip:?}"))
            })?;
            ip.to_string()
        };
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    if let Some(ip) = spec.attachment.and_then(|a| a.ip) {
        let mut fqdn = spec.hostname.to_string();
        if !spec.domainname.is_empty() {
            fqdn = format!("{fqdn}.{}", spec.domainname);
        }
        let names = match fqdn.split_once('.') {
            Some((short, _)) => format!("{fqdn} {short}"),
            None => fqdn.clone(),
        };
        out.push_str(&format!("{ip}\t{names}\n"));
    }
    Ok(out)
}

/// Content of a line without its `#` comment.
fn strip_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// Fields of every line that starts with `keyword`.
fn keyword_lines<'a>(content: &'a str, keyword: &str) -> Vec<Vec<&'a str>> {
    content
        .lines()
        .map(|l| strip_comment(l).split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&keyword))
        .map(|f| f[1..].to_vec())
        .collect()
}

fn nameservers(content: &str) -> Vec<&str> {
    keyword_lines(content, "nameserver")
        .into_iter()
        .filter_map(|f| f.first().copied())
        .collect()
}

fn is_localhost_ns(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("nameserver") else {
        return false;
    };
    if !rest.starts_with(char::is_whitespace) {
        return false;
    }
    let mut f = rest.split_whitespace();
    let (Some(ip), None) = (f.next(), f.next()) else {
        return false;
    };
    ip == "::1" || ip.parse::<Ipv4Addr>().is_ok_and(|a| a.octets()[0] == 127)
}

/// libnetwork's `FilterResolvDNS`: drop localhost nameservers (and the blank lines after
/// them); with none left, append Google's public resolvers.
fn filter_resolv(content: &str) -> String {
    let mut out = String::new();
    let mut eat_blank = false;
    for line in content.split_inclusive('\n') {
        if is_localhost_ns(line.trim_end_matches('\n')) {
            eat_blank = true;
            continue;
        }
        if eat_blank && line.trim().is_empty() {
            continue;
        }
        eat_blank = false;
        out.push_str(line);
    }
    if nameservers(&out).is_empty() {
        out.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
    }
    out
}

/// libnetwork's `resolvconf.Build` with the host's values for what was not overridden.
fn build_resolv(host: &str, spec: &EtcSpec<'_>) -> String {
    let last = |kw: &str| -> Vec<String> {
        keyword_lines(host, kw)
            .last()
            .map(|f| f.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    };
    let pick = |given: &[String], kw: &str| {
        if given.is_empty() {
            last(kw)
        } else {
            given.to_vec()
        }
    };
    let ns: Vec<String> = if spec.dns.is_empty() {
        nameservers(host).into_iter().map(str::to_string).collect()
    } else {
        spec.dns.to_vec()
    };
    let search = pick(spec.dns_search, "search");
    let options = pick(spec.dns_options, "options");
    let mut out = String::new();
    let search = search.join(" ");
    if !search.is_empty() && search.trim() != "." {
        out.push_str(&format!("search {search}\n"));
    }
    for n in ns {
        out.push_str(&format!("nameserver {n}\n"));
    }
    let options = options.join(" ");
    if !options.trim().is_empty() {
        out.push_str(&format!("options {options}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(network: &str, ip: Option<Ipv4Addr>) -> Attachment {
        Attachment {
            network: network.into(),
            network_id: String::new(),
            endpoint_id: String::new(),
            sandbox_key: String::new(),
            ip,
            prefix_len: 16,
            gateway: None,
            mac: String::new(),
            host_veth: None,
            host_gateway: None,
            ports: Vec::new(),
            ipam_ip: None,
            aliases: Vec::new(),
            user_network: false,
        }
    }

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new(resolv: &str, resolved: Option<&str>) -> anyhow::Result<Self> {
            let dir = tempfile::tempdir()?;
            fs::write(dir.path().join("resolv.conf"), resolv)?;
            fs::write(dir.path().join("hosts"), "127.0.0.1 myhost\n")?;
            if let Some(r) = resolved {
                fs::write(dir.path().join("resolved"), r)?;
            }
            Ok(Host { dir })
        }
        fn write(&self, spec: &EtcSpec<'_>) -> anyhow::Result<(String, String, String)> {
            let (h, r, rd) = (
                self.dir.path().join("hosts"),
                self.dir.path().join("resolv.conf"),
                self.dir.path().join("resolved"),
            );
            let src = Sources {
                hosts: &h,
                resolv: &r,
                resolved: &rd,
            };
            let out = self.dir.path().join("out");
            let f = write_from(&out, spec, &src)?;
            Ok((
                fs::read_to_string(f.hostname)?,
                fs::read_to_string(f.hosts)?,
                fs::read_to_string(f.resolv_conf)?,
            ))
        }
    }

    #[test]
    fn bridge_container_files_match_dockerd() -> anyhow::Result<()> {
        let host = Host::new(
            "# generated\nnameserver 127.0.0.53\n\nnameserver 10.0.0.2\nsearch lan\n",
            None,
        )?;
        let a = att("bridge", Some(Ipv4Addr::new(172, 17, 0, 2)));
        let extra = vec!["db:10.1.1.1".to_string(), "gw:host-gateway".to_string()];
        let spec = EtcSpec {
            hostname: "abcdef123456",
            attachment: Some(&a),
            extra_hosts: &extra,
            host_gateway: Some(Ipv4Addr::new(172, 17, 0, 1)),
            ..Default::default()
        };
        let (hn, hosts, resolv) = host.write(&spec)?;
        assert_eq!(hn, "abcdef123456\n");
        assert_eq!(
            hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n\
             10.1.1.1\tdb\n172.17.0.1\tgw\n172.17.0.2\tabcdef123456\n"
        );
        assert_eq!(resolv, "# generated\nnameserver 10.0.0.2\nsearch lan\n");
        Ok(())
    }

    #[test]
    fn only_localhost_resolvers_fall_back_to_public_ones() -> anyhow::Result<()> {
        let host = Host::new(
            "nameserver 127.0.0.1\nnameserver ::1\noptions edns0\n",
            None,
        )?;
        let (_, _, resolv) = host.write(&EtcSpec::default())?;
        assert_eq!(
            resolv,
            "options edns0\n\nnameserver 8.8.8.8\nnameserver 8.8.4.4"
        );
        Ok(())
    }

    #[test]
    fn systemd_resolved_stub_uses_the_upstream_file() -> anyhow::Result<()> {
        let host = Host::new(
            "nameserver 127.0.0.53\noptions edns0\n",
            Some("nameserver 1.1.1.1\n"),
        )?;
        let (_, _, resolv) = host.write(&EtcSpec::default())?;
        assert_eq!(resolv, "nameserver 1.1.1.1\n");
        Ok(())
    }

    #[test]
    fn dns_flags_override_the_host() -> anyhow::Result<()> {
        let host = Host::new("nameserver 10.0.0.2\nsearch lan\noptions ndots:2\n", None)?;
        let dns = vec!["9.9.9.9".to_string(), "1.1.1.1".to_string()];
        let search = vec!["a.example".to_string(), "b.example".to_string()];
        let spec = EtcSpec {
            dns: &dns,
            dns_search: &search,
            ..Default::default()
        };
        let (_, _, resolv) = host.write(&spec)?;
        assert_eq!(
            resolv,
            "search a.example b.example\nnameserver 9.9.9.9\nnameserver 1.1.1.1\noptions ndots:2\n"
        );
        let opts = vec!["timeout:1".to_string()];
        let dot = vec![".".to_string()];
        let spec = EtcSpec {
            dns_search: &dot,
            dns_options: &opts,
            ..Default::default()
        };
        let (_, _, resolv) = host.write(&spec)?;
        assert_eq!(resolv, "nameserver 10.0.0.2\noptions timeout:1\n");
        Ok(())
    }

    #[test]
    fn host_mode_copies_the_host_files() -> anyhow::Result<()> {
        let host = Host::new("nameserver 127.0.0.53\n", None)?;
        let a = att("host", None);
        let spec = EtcSpec {
            hostname: "h",
            attachment: Some(&a),
            ..Default::default()
        };
        let (_, hosts, resolv) = host.write(&spec)?;
        assert_eq!(hosts, "127.0.0.1 myhost\n");
        assert_eq!(resolv, "nameserver 127.0.0.53\n");
        let extra = vec!["x:1.2.3.4".to_string()];
        let spec = EtcSpec {
            extra_hosts: &extra,
            ..spec
        };
        let (_, hosts, _) = host.write(&spec)?;
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n") && hosts.ends_with("1.2.3.4\tx\n"));
        Ok(())
    }

    #[test]
    fn fqdn_and_bad_hosts() -> anyhow::Result<()> {
        let host = Host::new("nameserver 10.0.0.2\n", None)?;
        let a = att("bridge", Some(Ipv4Addr::new(10, 0, 0, 5)));
        let spec = EtcSpec {
            hostname: "web",
            domainname: "example.org",
            attachment: Some(&a),
            ..Default::default()
        };
        let (_, hosts, _) = host.write(&spec)?;
        assert!(
            hosts.ends_with("10.0.0.5\tweb.example.org web\n"),
            "{hosts}"
        );
        for bad in ["nocolon", "x:notanip", "gw:host-gateway"] {
            let extra = vec![bad.to_string()];
            let spec = EtcSpec {
                extra_hosts: &extra,
                ..Default::default()
            };
            assert!(
                matches!(
                    host.write(&spec).map_err(|e| e.downcast::<ApiError>()),
                    Err(Ok(ApiError::BadRequest(_)))
                ),
                "{bad}"
            );
        }
        let extra = vec!["v6:::1".to_string()];
        let spec = EtcSpec {
            extra_hosts: &extra,
            ..Default::default()
        };
        assert!(host.write(&spec)?.1.contains("::1\tv6\n"));
        Ok(())
    }
}
