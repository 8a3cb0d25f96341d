//! System endpoints: `_ping`, `/version`, `/info`, and the time and filter arguments
//! shared by the listing endpoints.

use super::http::{Request, Response};
use super::Daemon;
use crate::error::{ApiError, ApiResult};
use serde_json::json;

/// `HEAD|GET /_ping`.
pub fn ping(req: &Request) -> Response {
    let mut r = Response::text(200, "OK");
    if let Response::Full { headers, .. } = &mut r {
        headers.push((
            "Cache-Control".into(),
            "no-cache, no-store, must-revalidate".into(),
        ));
        headers.push(("Pragma".into(), "no-cache".into()));
    }
    let _ = req;
    r
}

/// A fresh daemon id in dockerd's format (12 groups of 4 base32 characters).
pub fn new_daemon_id() -> String {
    use rand::Rng;
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| {
            (0..4)
                .map(|_| ALPHA[rng.gen_range(0..ALPHA.len())] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(":")
}

fn uname() -> (String, String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
            u.nodename().to_string_lossy().into_owned(),
        ),
        Err(_) => ("unknown".into(), "x86_64".into(), "localhost".into()),
    }
}

fn go_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("PRETTY_NAME"), get("VERSION_ID"))
}

const BUILD_TIME: &str = "2026-11-23T00:00:00.000000000+00:00";

/// `GET /version`.
pub fn version(_d: &Daemon) -> ApiResult<Response> {
    let (kernel, machine, _) = uname();
    let v = env!("CARGO_PKG_VERSION");
    let details = json!({
        "ApiVersion": berth_api::API_VERSION, "Arch": go_arch(&machine), "BuildTime": BUILD_TIME,
        "Experimental": "false", "GitCommit": "berth", "GoVersion": "rust",
        "KernelVersion": kernel, "MinAPIVersion": berth_api::MIN_API_VERSION, "Os": "linux"
    });
    Ok(Response::json(
        200,
        &json!({
            "Platform": {"Name": "berth"},
            "Components": [
                {"Name": "Engine", "Version": v, "Details": details},
                {"Name": "berth-shim", "Version": v, "Details": {"ShimProtocol": berth_api::shim::SHIM_PROTOCOL_VERSION.to_string()}}
            ],
            "Version": v, "ApiVersion": berth_api::API_VERSION, "MinAPIVersion": berth_api::MIN_API_VERSION,
            "GitCommit": "berth", "GoVersion": "rust", "Os": "linux", "Arch": go_arch(&machine),
            "KernelVersion": kernel, "BuildTime": BUILD_TIME
        }),
    ))
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// dockerd's `Warnings` of `GET /info` for the cgroup features this host lacks.
fn cgroup_warnings(host: &crate::container::spec::HostInfo) -> Vec<&'static str> {
    let c = &host.cgroups;
    if host.cgroup_v2 {
        return Vec::new();
    }
    [
        (c.memory_limit, "WARNING: No memory limit support"),
        (c.swap_limit, "WARNING: No swap limit support"),
        (c.oom_kill_disable, "WARNING: No oom kill disable support"),
        (c.cpu_cfs, "WARNING: No cpu cfs quota support"),
        (c.cpu_cfs, "WARNING: No cpu cfs period support"),
        (c.cpu_shares, "WARNING: No cpu shares support"),
        (c.cpuset, "WARNING: No cpuset support"),
        (c.blkio_weight, "WARNING: No blkio weight support"),
        (
            c.blkio_weight_device,
            "WARNING: No blkio weight_device support",
        ),
        (
            c.blkio_read_bps,
            "WARNING: No blkio throttle.read_bps_device support",
        ),
        (
            c.blkio_write_bps,
            "WARNING: No blkio throttle.write_bps_device support",
        ),
        (
            c.blkio_read_iops,
            "WARNING: No blkio throttle.read_iops_device support",
        ),
        (
            c.blkio_write_iops,
            "WARNING: No blkio throttle.write_iops_device support",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, w)| w)
    .collect()
}

/// `GET /info`.
pub fn info(d: &Daemon) -> ApiResult<Response> {
    let (kernel, machine, hostname) = uname();
    let (os_name, os_version) = os_release();
    let c = d.counts();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let host = crate::container::spec::HostInfo::get();
    let cg = &host.cgroups;
    let warnings = cgroup_warnings(host);
    Ok(Response::json(
        200,
        &json!({
            "ID": d.id, "Containers": c.containers, "ContainersRunning": c.running,
            "ContainersPaused": c.paused, "ContainersStopped": c.stopped, "Images": c.images,
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Native Overlay Diff", "true"], ["userxattr", "false"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Authorization": null, "Log": ["json-file"]},
            "MemoryLimit": cg.memory_limit, "SwapLimit": cg.swap_limit, "KernelMemory": false, "KernelMemoryTCP": false,
            "CpuCfsPeriod": cg.cpu_cfs, "CpuCfsQuota": cg.cpu_cfs, "CPUShares": cg.cpu_shares, "CPUSet": cg.cpuset, "PidsLimit": cg.pids,
            "IPv4Forwarding": true, "BridgeNfIptables": false, "BridgeNfIp6tables": false,
            "Debug": false, "NFd": 0, "OomKillDisable": cg.oom_kill_disable, "NGoroutines": 0,
            "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": if host.cgroup_v2 { "2" } else { "1" },
            "NEventsListener": 0, "KernelVersion": kernel, "OperatingSystem": os_name, "OSVersion": os_version,
            "OSType": "linux", "Architecture": machine, "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [],
                "InsecureRegistryCIDRs": d.config.insecure_registries.cidrs(),
                "IndexConfigs": index_configs(&d.config.insecure_registries),
                "Mirrors": d.config.registry_mirrors.iter().map(|m| m.url.clone()).collect::<Vec<_>>()},
            "NCPU": ncpu, "MemTotal": mem_total(), "GenericResources": null,
            "DockerRootDir": d.config.data_root, "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": hostname, "Labels": [], "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": {"berth": {"path": d.config.shim_binary}}, "DefaultRuntime": "berth",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
            "LiveRestoreEnabled": true, "Isolation": "", "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "libcontainer-0.7", "Expected": "libcontainer-0.7"},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": ["name=seccomp,profile=default"],
            "Warnings": (!warnings.is_empty()).then_some(warnings)
        }),
    ))
}

/// Parses Docker's time arguments: unix seconds with optional fraction, RFC3339, or a
/// duration relative to now is already converted by the CLI. Returns ns since epoch.
pub fn parse_time_arg(s: &str) -> ApiResult<i64> {
    if let Some(ns) = berth_api::logfmt::parse_rfc3339(s) {
        return Ok(ns);
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid time value {s:?}")))?;
    let mut frac = frac.to_string();
    frac.truncate(9);
    while frac.len() < 9 {
        frac.push('0');
    }
    let nanos: i64 = frac
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid time value {s:?}")))?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// Parses `filters` in either the map-of-bool or the list form.
pub fn parse_filters(
    raw: Option<&str>,
) -> ApiResult<std::collections::HashMap<String, Vec<String>>> {
    let mut out = std::collections::HashMap::new();
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(out);
    };
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid filter: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("invalid filter: not an object".into()))?;
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, b)| b.as_bool().unwrap_or(true))
                .map(|(s, _)| s.clone())
                .collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid filter value for {k:?}"
                )))
            }
        };
        out.insert(k.clone(), list);
    }
    Ok(out)
}

/// `/info` `RegistryConfig.IndexConfigs`: Docker Hub, and each `--insecure-registry` name.
fn index_configs(insecure: &crate::image::pull::Insecure) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "docker.io".into(),
        json!({"Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true}),
    );
    for h in insecure.hosts() {
        m.insert(
            h.clone(),
            json!({"Name": h, "Mirrors": [], "Secure": false, "Official": false}),
        );
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_args_accept_unix_fractions_and_rfc3339() -> ApiResult<()> {
        assert_eq!(
            parse_time_arg("1795424400.000000000")?,
            1_795_424_400_000_000_000
        );
        assert_eq!(parse_time_arg("12.5")?, 12_500_000_000);
        assert_eq!(parse_time_arg("1970-01-01T00:00:01Z")?, 1_000_000_000);
        assert!(parse_time_arg("yesterday").is_err());
        Ok(())
    }

    #[test]
    fn filters_accept_both_forms() -> ApiResult<()> {
        let f = parse_filters(Some(r#"{"status":{"exited":true},"name":["a","b"]}"#))?;
        assert_eq!(f["status"], vec!["exited"]);
        assert_eq!(f["name"], vec!["a", "b"]);
        assert!(parse_filters(Some("{bad")).is_err());
        assert!(parse_filters(None)?.is_empty());
        Ok(())
    }

    #[test]
    fn daemon_ids_look_like_dockerd_ones() {
        let id = new_daemon_id();
        assert_eq!(id.len(), 12 * 4 + 11);
        assert_eq!(id.split(':').count(), 12);
    }
}
