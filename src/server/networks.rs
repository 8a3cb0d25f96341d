//! HTTP handlers for `/networks`: list (with dockerd's filters), inspect, create, remove
//! and prune of networks (the built-in `bridge`, `host` and `none`, and user-defined
//! bridge networks).

use super::http::{Request, Response};
use super::Daemon;
use crate::error::{ApiError, ApiResult};
use crate::network::NetworkResource;
use berth_api::models::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

type Filters = HashMap<String, Vec<String>>;

/// Routes `/networks/...`.
pub async fn route(d: &Daemon, req: Request, segs: &[&str]) -> ApiResult<Response> {
    match (req.method.as_str(), segs) {
        ("GET", ["networks"]) => {
            let filters = super::system::parse_filters(req.q("filters"))?;
            check_keys(&filters, LIST_KEYS)?;
            let mut list = d.net.networks_with_containers()?;
            list.retain(|n| matches(n, &filters));
            for n in &mut list {
                n.containers.clear();
            }
            Ok(Response::json(200, &list))
        }
        ("GET", ["networks", id]) => Ok(Response::json(200, &d.net.inspect(id)?)),
        ("POST", ["networks", "create"]) => {
            let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
            let body: NetworkCreateRequest = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
            let id = d.net.create_network(&body).await?;
            publish(d, "create", &id, &body.name);
            Ok(Response::json(201, &json!({"Id": id, "Warning": ""})))
        }
        ("POST", ["networks", "prune"]) => {
            let filters = super::system::parse_filters(req.q("filters"))?;
            check_keys(&filters, PRUNE_KEYS)?;
            let until = match filters.get("until").and_then(|v| v.first()) {
                Some(u) => Some(parse_until(u)?),
                None => None,
            };
            let gone = d
                .net
                .prune_networks(|n| {
                    labels_match(n, &filters)
                        && until
                            .as_ref()
                            .is_none_or(|t| n.created.as_str() < t.as_str())
                })
                .await?;
            for name in &gone {
                publish(d, "destroy", name, name);
            }
            Ok(Response::json(200, &json!({ "NetworksDeleted": gone })))
        }
        ("POST", ["networks", net, "connect"]) => {
            let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
            let body: NetworkConnectRequest = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
            connect(d, net, body).await?;
            Ok(Response::empty(200))
        }
        ("POST", ["networks", net, "disconnect"]) => {
            let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
            let body: NetworkDisconnectRequest = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
            disconnect(d, net, body).await?;
            Ok(Response::empty(200))
        }
        ("DELETE", ["networks", id]) => {
            let r = d.net.inspect(id)?;
            d.net.remove_network(id).await?;
            publish(d, "destroy", &r.id, &r.name);
            Ok(Response::empty(204))
        }
        (m, _) => Err(ApiError::NotFound(format!(
            "page not found: {m} {}",
            req.path
        ))),
    }
}

/// The container of a connect/disconnect request, refused when it shares another
/// namespace (host, `container:`) or has none (`none`), as dockerd does.
fn connectable(d: &Daemon, name: Option<&str>) -> ApiResult<crate::container::record::Record> {
    let name = name.unwrap_or_default();
    let rec = d.containers.lookup(name)?;
    let mode = rec.host_config.network_mode.clone().unwrap_or_default();
    if mode == "host" || mode.starts_with("container:") {
        return Err(ApiError::Forbidden(
            "container sharing network namespace with another container or host cannot be \
             connected to any other network"
                .into(),
        ));
    }
    if mode == "none" {
        return Err(ApiError::Forbidden(
            "container cannot be connected to multiple networks with one of the networks in \
             private (none) mode"
                .into(),
        ));
    }
    Ok(rec)
}

async fn connect(d: &Daemon, net: &str, body: NetworkConnectRequest) -> ApiResult<()> {
    let rec = connectable(d, body.container.as_deref())?;
    let _g = d.containers.lock(&rec.id).await;
    let rec = d.containers.lookup(&rec.id)?;
    let ep = body.endpoint_config.unwrap_or_default();
    let ip = ep
        .ipam_config
        .as_ref()
        .and_then(|c| c.ipv4_address.as_deref())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<std::net::Ipv4Addr>()
                .map_err(|_| ApiError::BadRequest(format!("invalid IPv4 address: {s}")))
        })
        .transpose()?;
    let req = crate::network::NetRequest {
        mode: crate::network::NetMode::User(net.to_string()),
        name: rec.name.clone(),
        mac: None,
        ip,
        aliases: ep.aliases.unwrap_or_default(),
        hosts_file: Some(d.containers.paths.container_dir(&rec.id).join("hosts")),
    };
    let running = rec.state.status.is_live();
    let att = d.net.connect(&rec.id, net, &req, running).await?;
    let n = d.net.inspect(net)?;
    if let Some(att) = att {
        let v = serde_json::to_value(&att)?;
        d.containers
            .update(&rec.id, |r| r.extra_attachments.push(v))?;
    }
    publish_endpoint(d, "connect", &n.id, &n.name, &rec.id);
    Ok(())
}

async fn disconnect(d: &Daemon, net: &str, body: NetworkDisconnectRequest) -> ApiResult<()> {
    let name = body.container.unwrap_or_default();
    let rec = d.containers.lookup(&name)?;
    let _g = d.containers.lock(&rec.id).await;
    let net_name = d.net.inspect(net)?.name;
    let net_id = d.net.disconnect(&rec.id, net).await?;
    d.containers.update(&rec.id, |r| {
        let on_net = |v: &serde_json::Value| {
            v.get("network_id").and_then(|x| x.as_str()) == Some(net_id.as_str())
        };
        r.extra_attachments.retain(|v| !on_net(v));
        if r.attachment.as_ref().is_some_and(on_net) {
            r.attachment = None;
        }
    })?;
    publish_endpoint(d, "disconnect", &net_id, &net_name, &rec.id);
    Ok(())
}

fn publish_endpoint(d: &Daemon, action: &str, net_id: &str, net: &str, cid: &str) {
    let attrs = BTreeMap::from([
        ("container".to_string(), cid.to_string()),
        ("name".to_string(), net.to_string()),
        ("type".to_string(), "bridge".to_string()),
    ]);
    d.events.publish("network", action, net_id, attrs);
}

fn publish(d: &Daemon, action: &str, id: &str, name: &str) {
    let attrs = BTreeMap::from([
        ("name".to_string(), name.to_string()),
        ("type".to_string(), "bridge".to_string()),
    ]);
    d.events.publish("network", action, id, attrs);
}

const LIST_KEYS: &[&str] = &["dangling", "driver", "id", "label", "name", "scope", "type"];
const PRUNE_KEYS: &[&str] = &["label", "label!", "until"];

fn check_keys(filters: &Filters, allowed: &[&str]) -> ApiResult<()> {
    match filters.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::BadRequest(format!("Invalid filter '{k}'"))),
        None => Ok(()),
    }
}

/// `until` as RFC 3339 (a timestamp or a duration like `24h` before now).
fn parse_until(u: &str) -> ApiResult<String> {
    let bad = || ApiError::BadRequest(format!("invalid filter 'until={u}'"));
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(u) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    if let Ok(secs) = u.parse::<i64>() {
        let t = chrono::DateTime::from_timestamp(secs, 0).ok_or_else(bad)?;
        return Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    let (num, unit) = u.split_at(u.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok((chrono::Utc::now() - chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

fn label_ok(n: &NetworkResource, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => n.labels.get(k).is_some_and(|x| x == v),
        None => n.labels.contains_key(want),
    }
}

fn labels_match(n: &NetworkResource, filters: &Filters) -> bool {
    filters
        .get("label")
        .is_none_or(|vals| vals.iter().all(|v| label_ok(n, v)))
        && filters
            .get("label!")
            .is_none_or(|vals| !vals.iter().any(|v| label_ok(n, v)))
}

fn builtin(n: &NetworkResource) -> bool {
    ["bridge", "host", "none"].contains(&n.name.as_str())
}

/// dockerd's list filters: `name` (substring), `id` (prefix), `driver`, `label` (all
/// given), `type` (`custom`/`builtin`), `scope`, `dangling` (no containers, custom only).
fn matches(n: &NetworkResource, filters: &Filters) -> bool {
    filters.iter().all(|(k, vals)| match k.as_str() {
        "label" => labels_match(n, filters),
        "dangling" => vals.iter().any(|v| {
            let dangling = !builtin(n) && n.containers.is_empty();
            match v.as_str() {
                "true" | "1" => dangling,
                "false" | "0" => !dangling,
                _ => false,
            }
        }),
        _ => vals.iter().any(|v| match k.as_str() {
            "name" => n.name.contains(v.as_str()),
            "id" => n.id.starts_with(v.as_str()),
            "driver" => &n.driver == v,
            "scope" => v == "local",
            "type" => (v == "builtin") == builtin(n) && (v == "builtin" || v == "custom"),
            _ => true,
        }),
    })
}
