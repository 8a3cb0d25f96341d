//! HTTP handlers for `/containers/...` and `/exec/...`.

use super::http::{Request, Response};
use super::Daemon;
use crate::container::archive::PutOptions;
use crate::container::commit::CommitOptions;
use crate::container::prune::PruneFilters;
use crate::container::streams::parse_detach_keys;
use crate::container::update::UpdateRequest;
use crate::error::{ApiError, ApiResult};
use berth_api::models::{ContainerCreateBody, ExecConfig};
use berth_api::shim::{AttachParams, LogsParams};
use serde_json::json;

fn json_body<T: serde::de::DeserializeOwned + Default>(req: Request) -> ApiResult<T> {
    let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

fn q_i64(req: &Request, key: &str) -> ApiResult<Option<i64>> {
    match req.q(key).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid value for {key}: {v:?}"))),
    }
}

fn is_upgrade(req: &Request) -> bool {
    req.header("upgrade").is_some()
        || req
            .header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
}

/// The header `HEAD|GET …/archive` answer with the path's stat.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

/// `path` of the archive API; dockerd refuses an empty one.
fn archive_path_param(req: &Request) -> ApiResult<String> {
    match req.q("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(ApiError::BadRequest("Path cannot be empty".into())),
    }
}

/// Routes `/containers/...`.
pub async fn route(d: &Daemon, req: Request, segs: &[&str]) -> ApiResult<Response> {
    let c = &d.containers;
    let method = req.method.clone();
    match (method.as_str(), segs) {
        ("POST", ["containers", "create"]) => create(d, req).await,
        ("GET", ["containers", "json"]) => {
            let filters = super::system::parse_filters(req.q("filters"))?;
            let limit = q_i64(&req, "limit")?.filter(|l| *l > 0).map(|l| l as usize);
            Ok(Response::json(
                200,
                &c.list(req.q_bool("all", false), limit, &filters)?,
            ))
        }
        ("POST", ["containers", "prune"]) => {
            let filters = super::system::parse_filters(req.q("filters"))?;
            let f = PruneFilters::parse(&filters, crate::container::now_ns())?;
            let (deleted, reclaimed) = c.prune(&f).await?;
            // dockerd answers `null` when nothing was removed.
            let deleted = (!deleted.is_empty()).then_some(deleted);
            Ok(Response::json(
                200,
                &json!({"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}),
            ))
        }
        ("GET", ["containers", id, "json"]) => Ok(Response::json(200, &c.inspect(id)?)),
        ("POST", ["containers", id, "start"]) => {
            c.start(id).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "stop"]) => {
            c.stop(id, q_i64(&req, "t")?).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "restart"]) => {
            c.restart(id, q_i64(&req, "t")?).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "kill"]) => {
            c.kill(id, req.q("signal")).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "pause"]) => {
            c.pause(id, true).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "unpause"]) => {
            c.pause(id, false).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "update"]) => {
            let id = id.to_string();
            let version = req.api_version.clone();
            let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
            let upd = UpdateRequest::parse(&bytes, version.as_deref())?;
            let warnings = c.update_container(&id, upd).await?;
            // dockerd answers `null` when there is nothing to warn about.
            let warnings = (!warnings.is_empty()).then_some(warnings);
            Ok(Response::json(200, &json!({ "Warnings": warnings })))
        }
        ("POST", ["containers", id, "rename"]) => {
            let name = req.q("name").unwrap_or("");
            c.rename(id, name).await?;
            Ok(Response::empty(204))
        }
        ("POST", ["containers", id, "resize"]) => {
            let h = q_i64(&req, "h")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            let w = q_i64(&req, "w")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            c.resize(id, h, w).await?;
            Ok(Response::empty(200))
        }
        ("GET", ["containers", id, "stats"]) => c.stats(
            id,
            req.q_bool("stream", true),
            req.q_bool("one-shot", false),
        ),
        ("POST", ["containers", id, "wait"]) => c.wait(id, req.q("condition")),
        ("POST", ["containers", id, "attach"]) => {
            let params = AttachParams {
                stdin: req.q_bool("stdin", false),
                stdout: req.q_bool("stdout", false),
                stderr: req.q_bool("stderr", false),
                logs: req.q_bool("logs", false),
                stream: req.q_bool("stream", false),
                detach_keys: parse_detach_keys(req.q("detachKeys").unwrap_or(""))?,
                initial: Vec::new(),
            };
            c.attach(id, params, is_upgrade(&req))
        }
        ("GET", ["containers", id, "logs"]) => {
            let tail = match req.q("tail").unwrap_or("all") {
                "all" | "" => None,
                n => match n.parse::<i64>() {
                    Ok(v) if v >= 0 => Some(v as usize),
                    Ok(_) => None,
                    Err(_) => {
                        return Err(ApiError::BadRequest(format!(
                            "invalid value for tail: {n:?}"
                        )))
                    }
                },
            };
            let since = req
                .q("since")
                .filter(|s| !s.is_empty() && *s != "0")
                .map(super::system::parse_time_arg)
                .transpose()?;
            let until = req
                .q("until")
                .filter(|s| !s.is_empty() && *s != "0")
                .map(super::system::parse_time_arg)
                .transpose()?;
            let p = LogsParams {
                stdout: req.q_bool("stdout", false),
                stderr: req.q_bool("stderr", false),
                timestamps: req.q_bool("timestamps", false),
                tail,
                since_ns: since,
                until_ns: until,
                raw: false,
            };
            c.logs(id, p, req.q_bool("follow", false))
        }
        ("GET", ["containers", id, "top"]) => {
            Ok(Response::json(200, &c.top(id, req.q("ps_args")).await?))
        }
        ("POST", ["containers", id, "exec"]) => {
            let id = id.to_string();
            let cfg: ExecConfig = json_body(req)?;
            let exec_id = c.exec_create(&id, cfg)?;
            Ok(Response::json(201, &json!({"Id": exec_id})))
        }
        ("HEAD", ["containers", id, "archive"]) => {
            let path = archive_path_param(&req)?;
            let stat = c.stat_path(id, &path).await?;
            let mut resp = Response::empty(200);
            if let Response::Full { headers, .. } = &mut resp {
                headers.push((STAT_HEADER.into(), stat.header()));
            }
            Ok(resp)
        }
        ("GET", ["containers", id, "archive"]) => {
            let path = archive_path_param(&req)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
            let out = Box::new(super::images::ChanWriter::new(tx));
            let stat = c.archive_path(id, &path, out).await?;
            Ok(Response::Stream {
                status: 200,
                content_type: "application/x-tar",
                headers: vec![(STAT_HEADER.into(), stat.header())],
                rx,
                resumable: None,
            })
        }
        ("PUT", ["containers", id, "archive"]) => {
            let id = id.to_string();
            let path = archive_path_param(&req)?;
            let opts = PutOptions {
                no_overwrite_dir_non_dir: req.q_bool("noOverwriteDirNonDir", false),
                copy_uid_gid: req.q_bool("copyUIDGID", false),
            };
            c.extract_to(&id, &path, opts, req.body.reader()).await?;
            Ok(Response::empty(200))
        }
        ("GET", ["containers", id, "changes"]) => Ok(Response::json(200, &c.changes(id).await?)),
        ("GET", ["containers", id, "export"]) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
            c.export(id, Box::new(super::images::ChanWriter::new(tx)))
                .await?;
            Ok(Response::Stream {
                status: 200,
                content_type: "application/x-tar",
                headers: vec![],
                rx,
                resumable: None,
            })
        }
        ("DELETE", ["containers", id]) => {
            c.remove(id, req.q_bool("force", false)).await?;
            Ok(Response::empty(204))
        }
        (m, _) => Err(ApiError::NotFound(format!(
            "page not found: {m} {}",
            req.path
        ))),
    }
}

async fn create(d: &Daemon, req: Request) -> ApiResult<Response> {
    let name = req.q("name").map(str::to_string);
    let body: ContainerCreateBody = json_body(req)?;
    let image_ref = body.image.clone().unwrap_or_default();
    if image_ref.is_empty() {
        return Err(ApiError::BadRequest(
            "Config cannot be empty in order to create a container".into(),
        ));
    }
    let img = d.images.resolve(&image_ref)?;
    let defaults = crate::container::create::image_defaults(&img);
    let (rec, warnings) = d
        .containers
        .create(name.as_deref(), body, (img.id.clone(), defaults))?;
    Ok(Response::json(
        201,
        &json!({"Id": rec.id, "Warnings": warnings}),
    ))
}

/// `POST /berth/containers/{id}/egress` with `{"Rate": "50mbit", "Burst": "64kb"}`:
/// changes a running container's egress limit; answers the limit now in force.
pub async fn set_egress(d: &Daemon, req: Request, id: &str) -> ApiResult<Response> {
    let upd: crate::container::egress::EgressUpdate = json_body(req)?;
    Ok(Response::json(
        200,
        &d.containers.set_egress(id, upd).await?,
    ))
}

/// Routes `/exec/...`.
pub async fn route_exec(d: &Daemon, req: Request, segs: &[&str]) -> ApiResult<Response> {
    let c = &d.containers;
    let method = req.method.clone();
    match (method.as_str(), segs) {
        ("POST", ["exec", id, "start"]) => {
            let id = id.to_string();
            let upgrade = is_upgrade(&req);
            let body: serde_json::Value = json_body(req)?;
            let detach = body
                .get("Detach")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            c.exec_start(&id, detach, upgrade)
        }
        ("POST", ["exec", id, "resize"]) => {
            let h = q_i64(&req, "h")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            let w = q_i64(&req, "w")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            c.exec_resize(id, h, w).await?;
            Ok(Response::empty(200))
        }
        ("GET", ["exec", id, "json"]) => Ok(Response::json(200, &c.exec_inspect(id).await?)),
        (m, _) => Err(ApiError::NotFound(format!(
            "page not found: {m} {}",
            req.path
        ))),
    }
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=`.
pub async fn commit(d: &Daemon, req: Request) -> ApiResult<Response> {
    let name = req.q("container").unwrap_or("").to_string();
    let repo = req.q("repo").unwrap_or("");
    let tag = req.q("tag").unwrap_or("");
    let repo_tag = match (repo.is_empty(), tag.is_empty()) {
        (true, _) => None,
        (false, true) => Some(repo.to_string()),
        (false, false) => Some(format!("{repo}:{tag}")),
    };
    let opts = CommitOptions {
        repo_tag,
        comment: req.q("comment").unwrap_or("").to_string(),
        author: req.q("author").unwrap_or("").to_string(),
        pause: req.q_bool("pause", true),
        changes: req.q_all("changes"),
        config: None,
    };
    let config: Option<crate::image::config::ContainerConfig> = json_body(req)?;
    let id = d
        .containers
        .commit(&name, CommitOptions { config, ..opts })
        .await?;
    Ok(Response::json(201, &json!({ "Id": id })))
}
