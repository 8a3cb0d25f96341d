//! Routes requests to handlers, checks the API version, and maps [`ApiError`] to
//! Docker's status codes and `{"message": ...}` bodies (the only place that does).

use super::http::{Handler, Request, Response};
use super::{containers, events, images, networks, system, Daemon};
use crate::error::ApiError;
use std::sync::Arc;

/// The request router.
pub struct Router {
    d: Arc<Daemon>,
}

/// Converts a handler result into a response.
pub fn reply(r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(ApiError::NotModified) => Response::empty(304),
        Err(e) => Response::error(e.status(), &e.to_string()),
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Refuses versions outside [MIN_API_VERSION, API_VERSION] with dockerd's wording.
pub fn check_version(v: &str) -> Result<(), ApiError> {
    let max = parse_version(berth_api::API_VERSION).unwrap_or((1, 41));
    let min = parse_version(berth_api::MIN_API_VERSION).unwrap_or((1, 24));
    let Some(got) = parse_version(v) else {
        return Err(ApiError::BadRequest(format!("invalid API version {v:?}")));
    };
    if got > max {
        return Err(ApiError::BadRequest(format!(
            "client version {v} is too new. Maximum supported API version is {}",
            berth_api::API_VERSION
        )));
    }
    if got < min {
        return Err(ApiError::BadRequest(format!(
            "client version {v} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
            berth_api::MIN_API_VERSION
        )));
    }
    Ok(())
}

impl Router {
    /// A router over the daemon.
    pub fn new(d: Arc<Daemon>) -> Self {
        Router { d }
    }

    /// The daemon behind the router.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.d
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        if let Some(v) = &req.api_version {
            check_version(v)?;
        }
        let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let d = &self.d;
        match (req.method.as_str(), segs.as_slice()) {
            ("GET" | "HEAD", ["_ping"]) => Ok(system::ping(&req)),
            ("GET", ["version"]) => system::version(d),
            ("GET", ["info"]) => system::info(d),
            ("GET", ["system", "df"]) => super::df::df(d).await,
            ("GET", ["events"]) => events::events(d, &req),
            ("POST", ["auth"]) => images::auth(d, req).await,
            ("POST", ["berth", "upgrade"]) => super::upgrade::upgrade(d, &req),
            ("POST", ["berth", "containers", id, "egress"]) => {
                let id = id.to_string();
                containers::set_egress(d, req, &id).await
            }
            ("POST", ["commit"]) => containers::commit(d, req).await,
            (_, ["images", _, ..]) => images::route(d, req).await,
            (_, ["containers", ..]) => {
                let segs: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                containers::route(d, req, &segs).await
            }
            (_, ["exec", ..]) => {
                let segs: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                containers::route_exec(d, req, &segs).await
            }
            (_, ["networks", ..]) => {
                let segs: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                networks::route(d, req, &segs).await
            }
            (m, _) => Err(ApiError::NotFound(format!(
                "page not found: {m} {}",
                req.path
            ))),
        }
    }
}

impl Handler for Router {
    fn handle(&self, req: Request) -> futures::future::BoxFuture<'_, Response> {
        Box::pin(async move {
            let method = req.method.clone();
            let path = req.path.clone();
            let resp = reply(self.route(req).await);
            if let Response::Full { status, .. } = &resp {
                tracing::debug!(%method, %path, status, "request");
            }
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_bounds_use_dockerd_wording() {
        assert!(check_version("1.41").is_ok());
        assert!(check_version("1.24").is_ok());
        let e = check_version("1.52").expect_err("too new");
        assert_eq!(
            e.to_string(),
            "client version 1.52 is too new. Maximum supported API version is 1.41"
        );
        let e = check_version("1.11").expect_err("too old");
        assert!(e
            .to_string()
            .starts_with("client version 1.11 is too old. Minimum supported API version is 1.24"));
        assert_eq!(reply(Err(ApiError::NotModified)).status_code(), 304);
    }
}
