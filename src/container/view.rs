//! The JSON views of a container: `GET /containers/{id}/json` (inspect) and the elements
//! of `GET /containers/json` (list), with dockerd's field order, defaults and filters.

use super::record::{status_string, Record, Status};
use super::{now_ns, Containers};
use crate::error::{ApiError, ApiResult};
use berth_api::logfmt::rfc3339_nano;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// dockerd's HostConfig with every field at its zero value, in dockerd's order.
const HOST_CONFIG_TEMPLATE: &str = r#"{"Binds":null,"ContainerIDFile":"","LogConfig":{"Type":"json-file","Config":{}},"NetworkMode":"default","PortBindings":{},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":false,"VolumeDriver":"","VolumesFrom":null,"CapAdd":null,"CapDrop":null,"CgroupnsMode":"host","Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"private","Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"Tmpfs":null,"UTSMode":"","UsernsMode":"","ShmSize":67108864,"Runtime":"runc","ConsoleSize":[0,0],"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,"DeviceRequests":null,"KernelMemory":0,"KernelMemoryTCP":0,"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":null,"OomKillDisable":false,"PidsLimit":null,"Ulimits":null,"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":["/proc/asound","/proc/acpi","/proc/kcore","/proc/keys","/proc/latency_stats","/proc/timer_list","/proc/timer_stats","/proc/sched_debug","/proc/scsi","/sys/firmware"],"ReadonlyPaths":["/proc/bus","/proc/fs","/proc/irq","/proc/sys","/proc/sysrq-trigger"]}"#;

const NEVER: &str = "0001-01-01T00:00:00Z";

fn time_or_never(ns: i64) -> String {
    if ns == 0 {
        NEVER.into()
    } else {
        rfc3339_nano(ns)
    }
}

/// A map rendered with sorted keys (Go's encoding/json order).
fn sorted<V: serde::Serialize>(m: &Option<HashMap<String, V>>) -> Value {
    match m {
        Some(m) => {
            serde_json::to_value(m.iter().collect::<BTreeMap<_, _>>()).unwrap_or(Value::Null)
        }
        None => Value::Null,
    }
}

fn ports_obj(list: &Option<Vec<String>>) -> Value {
    match list {
        Some(l) if !l.is_empty() => {
            let mut m = Map::new();
            let mut l = l.clone();
            l.sort();
            for p in l {
                m.insert(p, json!({}));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

/// The HostConfig as dockerd shows it.
pub fn host_config_json(rec: &Record) -> Value {
    let mut base: Map<String, Value> =
        serde_json::from_str(HOST_CONFIG_TEMPLATE).unwrap_or_default();
    if let Ok(Value::Object(set)) = serde_json::to_value(&rec.host_config) {
        for (k, v) in set {
            if k == "Tmpfs" || k == "LogConfig" || k == "Sysctls" || k == "StorageOpt" {
                // maps: keep Go's sorted order
                let sorted_v = match v {
                    Value::Object(o) => {
                        let b: BTreeMap<String, Value> = o.into_iter().collect();
                        serde_json::to_value(b).unwrap_or(Value::Null)
                    }
                    other => other,
                };
                base.insert(k, sorted_v);
                continue;
            }
            base.insert(k, v);
        }
    }
    if rec.host_config.privileged == Some(true) {
        base.insert("MaskedPaths".into(), Value::Null);
        base.insert("ReadonlyPaths".into(), Value::Null);
    }
    Value::Object(base)
}

/// `Config` as dockerd shows it.
pub fn config_json(rec: &Record) -> Value {
    let c = &rec.config;
    json!({
        "Hostname": c.hostname.clone().unwrap_or_default(),
        "Domainname": c.domainname.clone().unwrap_or_default(),
        "User": c.user.clone().unwrap_or_default(),
        "AttachStdin": c.attach_stdin.unwrap_or(false),
        "AttachStdout": c.attach_stdout.unwrap_or(false),
        "AttachStderr": c.attach_stderr.unwrap_or(false),
        "ExposedPorts": ports_obj(&c.exposed_ports),
        "Tty": c.tty.unwrap_or(false),
        "OpenStdin": c.open_stdin.unwrap_or(false),
        "StdinOnce": c.stdin_once.unwrap_or(false),
        "Env": c.env.clone().unwrap_or_default(),
        "Cmd": c.cmd.clone(),
        "Image": c.image.clone().unwrap_or_default(),
        "Volumes": ports_obj(&c.volumes),
        "WorkingDir": c.working_dir.clone().unwrap_or_default(),
        "Entrypoint": c.entrypoint.clone(),
        "OnBuild": c.on_build.clone(),
        "Labels": sorted(&c.labels),
        "StopSignal": c.stop_signal.clone(),
        "StopTimeout": c.stop_timeout,
    })
    .as_object()
    .map(|o| {
        let mut o = o.clone();
        if c.stop_signal.is_none() {
            o.shift_remove("StopSignal");
        }
        if c.stop_timeout.is_none() {
            o.shift_remove("StopTimeout");
        }
        Value::Object(o)
    })
    .unwrap_or(Value::Null)
}

fn endpoint_json(att: &crate::network::Attachment, aliases: Value) -> Value {
    let ipam = match att.ipam_ip {
        Some(ip) => json!({"IPv4Address": ip.to_string()}),
        None => Value::Null,
    };
    json!({
        "IPAMConfig": ipam, "Links": null, "Aliases": aliases,
        "NetworkID": att.network_id, "EndpointID": att.endpoint_id,
        "Gateway": att.gateway_string(), "IPAddress": att.ip_string(), "IPPrefixLen": att.prefix_len,
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "MacAddress": att.mac, "DriverOpts": null
    })
}

fn attachment(rec: &Record) -> Option<crate::network::Attachment> {
    rec.attachment
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// `NetworkSettings` (inspect shape).
pub fn network_settings(rec: &Record) -> Value {
    let att = attachment(rec);
    let mode = rec.host_config.network_mode.clone().unwrap_or_default();
    let net_name = if mode == "default" || mode.is_empty() {
        "bridge".to_string()
    } else {
        mode.clone()
    };
    let mut networks = Map::new();
    let mut legacy = json!({"EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": ""});
    let mut sandbox_key = String::new();
    if let Some(a) = &att {
        sandbox_key = a.sandbox_key.clone();
        if a.has_endpoint() && rec.state.status.is_live() {
            // dockerd adds the short id to the aliases on user-defined networks.
            let aliases = if a.user_network {
                let mut al = a.aliases.clone();
                al.push(rec.short_id().to_string());
                json!(al)
            } else {
                Value::Null
            };
            let key = if a.user_network {
                a.network.clone()
            } else {
                net_name.clone()
            };
            networks.insert(key, endpoint_json(a, aliases));
            if net_name == "bridge" {
                legacy = json!({"EndpointID": a.endpoint_id, "Gateway": a.gateway_string(), "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0, "IPAddress": a.ip_string(), "IPPrefixLen": a.prefix_len,
                    "IPv6Gateway": "", "MacAddress": a.mac});
            }
        }
    }
    if rec.state.status.is_live() {
        for a in rec
            .extra_attachments
            .iter()
            .filter_map(|v| serde_json::from_value::<crate::network::Attachment>(v.clone()).ok())
        {
            let mut al = a.aliases.clone();
            al.push(rec.short_id().to_string());
            networks.insert(a.network.clone(), endpoint_json(&a, json!(al)));
        }
    }
    if networks.is_empty() && !mode.starts_with("container:") {
        networks.insert(net_name, json!({
            "IPAMConfig": null, "Links": null, "Aliases": null, "NetworkID": "", "EndpointID": "",
            "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": null
        }));
    }
    // dockerd lists ports only while the container has its sandbox (running).
    let ports = match &att {
        Some(a) if rec.state.status.is_live() => crate::network::ports::ports_json(
            rec.config.exposed_ports.as_deref().unwrap_or(&[]),
            &a.ports,
        ),
        _ => json!({}),
    };
    let mut out = json!({
        "Bridge": "", "SandboxID": if sandbox_key.is_empty() { String::new() } else { rec.id.clone() },
        "HairpinMode": false, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports, "SandboxKey": sandbox_key,
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
    });
    if let (Some(o), Some(l)) = (out.as_object_mut(), legacy.as_object()) {
        for (k, v) in l {
            o.insert(k.clone(), v.clone());
        }
        o.insert("Networks".into(), Value::Object(networks));
    }
    out
}

/// `Ports` of `GET /containers/json`: each published binding, then each exposed port
/// without one (a running container only, as dockerd).
fn summary_ports(rec: &Record) -> Vec<Value> {
    let mut out = Vec::new();
    let Some(a) = attachment(rec).filter(|_| rec.state.status.is_live()) else {
        return out;
    };
    for b in &a.ports {
        out.push(json!({
            "IP": b.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED).to_string(),
            "PrivatePort": b.container_port, "PublicPort": b.host_port, "Type": b.proto.as_str(),
        }));
    }
    for p in rec.config.exposed_ports.as_deref().unwrap_or(&[]) {
        if let Ok((n, proto)) = crate::network::ports::parse_port_key(p) {
            if !a
                .ports
                .iter()
                .any(|b| b.container_port == n && b.proto == proto)
            {
                out.push(json!({"PrivatePort": n, "Type": proto.as_str()}));
            }
        }
    }
    out
}

fn mounts_json(rec: &Record) -> Value {
    let mut out = Vec::new();
    for b in rec.host_config.binds.clone().unwrap_or_default() {
        let parts: Vec<&str> = b.split(':').collect();
        if parts.len() < 2 || !parts[0].starts_with('/') {
            continue;
        }
        let mode = parts.get(2).copied().unwrap_or("");
        let rw = !mode.split(',').any(|m| m == "ro");
        out.push(
            json!({"Type": "bind", "Source": parts[0], "Destination": parts[1], "Mode": mode,
            "RW": rw, "Propagation": "rprivate"}),
        );
    }
    if let Some(t) = &rec.host_config.tmpfs {
        let mut keys: Vec<&String> = t.keys().collect();
        keys.sort();
        for dst in keys {
            out.push(json!({"Type": "tmpfs", "Source": "", "Destination": dst, "Mode": "", "RW": true, "Propagation": ""}));
        }
    }
    Value::Array(out)
}

/// The shell-style command line of `docker ps`.
pub fn command_string(rec: &Record) -> String {
    let mut args = rec.config.entrypoint.clone().unwrap_or_default();
    args.extend(rec.config.cmd.clone().unwrap_or_default());
    args.iter()
        .map(|a| {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Containers {
    /// `GET /containers/{id}/json`.
    pub fn inspect(&self, name: &str) -> ApiResult<Value> {
        let rec = self.lookup(name)?;
        let st = &rec.state;
        let mut args = rec.config.entrypoint.clone().unwrap_or_default();
        args.extend(rec.config.cmd.clone().unwrap_or_default());
        let path = if args.is_empty() {
            String::new()
        } else {
            args.remove(0)
        };
        let cdir = self.paths.container_dir(&rec.id);
        let rootfs = super::rootfs::Rootfs::new(&self.paths.data_root, &rec.id);
        let lower = self
            .images
            .layer_dirs(&rec.image_id)
            .map(|l| {
                l.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default();
        // Like dockerd, only execs that have not finished are listed.
        let running: Vec<&String> = rec
            .exec_ids
            .iter()
            .filter(|e| self.execs.get(e).map(|x| x.running).unwrap_or(false))
            .collect();
        let execs = if running.is_empty() {
            Value::Null
        } else {
            json!(running)
        };
        Ok(json!({
            "Id": rec.id, "Created": rfc3339_nano(rec.created_ns), "Path": path, "Args": args,
            "State": {
                "Status": st.status.as_str(), "Running": st.status.is_live(),
                "Paused": st.status == Status::Paused, "Restarting": st.status == Status::Restarting,
                "OOMKilled": st.oom_killed, "Dead": st.status == Status::Dead, "Pid": st.pid,
                "ExitCode": st.exit_code, "Error": st.error,
                "StartedAt": time_or_never(st.started_at_ns), "FinishedAt": time_or_never(st.finished_at_ns)
            },
            "Image": rec.image_id,
            "ResolvConfPath": cdir.join("resolv.conf"), "HostnamePath": cdir.join("hostname"),
            "HostsPath": cdir.join("hosts"), "LogPath": self.paths.log_path(&rec.id),
            "Name": format!("/{}", rec.name), "RestartCount": st.restart_count, "Driver": "overlay2",
            "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
            "ExecIDs": execs,
            "HostConfig": host_config_json(&rec),
            "GraphDriver": {"Data": {"LowerDir": lower, "MergedDir": rootfs.merged(),
                "UpperDir": rootfs.upper(), "WorkDir": rootfs.work()}, "Name": "overlay2"},
            "Mounts": mounts_json(&rec),
            "Config": config_json(&rec),
            "NetworkSettings": network_settings(&rec),
            "BerthElasticMemory": crate::resources::elastic::inspect_json(&rec, self.elastic.get().map(|e| (e.as_ref(), self.paths.cgroup_path(&rec.id)))),
        }))
    }

    /// One element of `GET /containers/json`.
    pub fn summary(&self, rec: &Record) -> Value {
        let ns = network_settings(rec);
        let networks = ns.get("Networks").cloned().unwrap_or(json!({}));
        let ports = summary_ports(rec);
        // dockerd shows the image id once the name no longer points at the container's image
        // (retagged, or deleted with rmi -f).
        let mut image = rec.config.image.clone().unwrap_or_default();
        if image != rec.image_id
            && self.images.id_of(&image).ok().flatten().as_deref() != Some(&rec.image_id)
        {
            image = rec.image_id.clone();
        }
        json!({
            "Id": rec.id, "Names": [format!("/{}", rec.name)],
            "Image": image, "ImageID": rec.image_id,
            "Command": command_string(rec), "Created": rec.created_ns / 1_000_000_000,
            "Ports": ports, "Labels": sorted(&rec.config.labels).as_object().cloned().unwrap_or_default(),
            "State": rec.state.status.as_str(), "Status": status_string(&rec.state, now_ns()),
            "HostConfig": {"NetworkMode": rec.host_config.network_mode.clone().unwrap_or_default()},
            "NetworkSettings": {"Networks": networks},
            "Mounts": mounts_json(rec),
        })
    }

    /// `GET /containers/json?all=&limit=&filters=`.
    pub fn list(
        &self,
        all: bool,
        limit: Option<usize>,
        filters: &HashMap<String, Vec<String>>,
    ) -> ApiResult<Vec<Value>> {
        for key in filters.keys() {
            if !matches!(
                key.as_str(),
                "id" | "name"
                    | "label"
                    | "status"
                    | "ancestor"
                    | "exited"
                    | "before"
                    | "since"
                    | "network"
                    | "volume"
                    | "health"
                    | "is-task"
                    | "publish"
                    | "expose"
            ) {
                return Err(ApiError::BadRequest(format!("invalid filter '{key}'")));
            }
        }
        if let Some(sts) = filters.get("status") {
            for s in sts {
                if !matches!(
                    s.as_str(),
                    "created"
                        | "restarting"
                        | "running"
                        | "removing"
                        | "paused"
                        | "exited"
                        | "dead"
                ) {
                    return Err(ApiError::BadRequest(format!("Invalid filter 'status={s}'")));
                }
            }
        }
        let mut recs = self.all();
        recs.sort_by_key(|r| std::cmp::Reverse(r.created_ns));
        let created_of = |name: &str| self.lookup(name).ok().map(|r| r.created_ns);
        let before = filters
            .get("before")
            .and_then(|v| v.first())
            .and_then(|n| created_of(n));
        let since = filters
            .get("since")
            .and_then(|v| v.first())
            .and_then(|n| created_of(n));
        let any_all = !all && (filters.contains_key("status") || filters.contains_key("exited"));
        let mut out = Vec::new();
        for rec in recs {
            if !(all
                || any_all
                || limit.is_some()
                || rec.state.status.is_live()
                || rec.state.status == Status::Restarting)
            {
                continue;
            }
            if !self.matches(&rec, filters) {
                continue;
            }
            if before.is_some_and(|b| rec.created_ns >= b)
                || since.is_some_and(|s| rec.created_ns <= s)
            {
                continue;
            }
            out.push(self.summary(&rec));
            if limit.is_some_and(|l| l > 0 && out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }

    fn matches(&self, rec: &Record, filters: &HashMap<String, Vec<String>>) -> bool {
        filters.iter().all(|(k, vals)| {
            if vals.is_empty() {
                return true;
            }
            match k.as_str() {
                "id" => vals.iter().any(|v| rec.id.starts_with(v.as_str())),
                "name" => vals.iter().any(|v| {
                    let v = v.trim_start_matches('/');
                    rec.name.contains(v)
                }),
                "status" => vals.iter().any(|v| v == rec.state.status.as_str()),
                "exited" => vals.iter().any(|v| {
                    rec.state.status == Status::Exited
                        && v.parse::<i32>().ok() == Some(rec.state.exit_code)
                }),
                "label" => vals.iter().all(|v| {
                    let labels = rec.config.labels.clone().unwrap_or_default();
                    match v.split_once('=') {
                        Some((lk, lv)) => labels.get(lk).map(String::as_str) == Some(lv),
                        None => labels.contains_key(v.as_str()),
                    }
                }),
                "ancestor" => vals.iter().any(|v| {
                    rec.config.image.as_deref() == Some(v.as_str())
                        || self
                            .images
                            .resolve(v)
                            .map(|i| i.id == rec.image_id)
                            .unwrap_or(false)
                }),
                "network" => vals.iter().any(|v| {
                    let mode = rec.host_config.network_mode.clone().unwrap_or_default();
                    let mode = if mode == "default" {
                        "bridge".to_string()
                    } else {
                        mode
                    };
                    &mode == v
                }),
                _ => true,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_config_template_is_valid_json_in_dockerd_order() {
        let m: Map<String, Value> = serde_json::from_str(HOST_CONFIG_TEMPLATE).unwrap_or_default();
        assert_eq!(m.keys().next().map(String::as_str), Some("Binds"));
        assert!(m.contains_key("MaskedPaths"));
        assert_eq!(m.len(), 66);
    }

    #[test]
    fn commands_are_quoted_like_docker_ps() {
        let mut r = super::super::record::tests_support::record();
        r.config.cmd = Some(vec![
            "sh".into(),
            "-c".into(),
            "while true; do echo x; done".into(),
        ]);
        assert_eq!(command_string(&r), "sh -c 'while true; do echo x; done'");
    }
}
