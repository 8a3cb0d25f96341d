//! HTTP handlers for `/networks` (the default `bridge`, `host` and `none` networks; user
//! networks come with the network issue).

use super::http::{Request, Response};
use super::Daemon;
use crate::error::{ApiError, ApiResult};

/// Routes `/networks/...`.
pub async fn route(d: &Daemon, req: Request, segs: &[&str]) -> ApiResult<Response> {
    match (req.method.as_str(), segs) {
        ("GET", ["networks"]) => {
            let filters = super::system::parse_filters(req.q("filters"))?;
            let mut list = d.net.networks()?;
            for (k, vals) in &filters {
                list.retain(|n| {
                    vals.iter().any(|v| match k.as_str() {
                        "name" => n.name.contains(v.as_str()),
                        "id" => n.id.starts_with(v.as_str()),
                        "driver" => &n.driver == v,
                        "scope" => v == "local",
                        "type" => v == "builtin",
                        _ => true,
                    })
                });
            }
            Ok(Response::json(200, &list))
        }
        ("GET", ["networks", id]) => Ok(Response::json(200, &d.net.inspect(id)?)),
        ("POST", ["networks", "create"]) => Err(ApiError::NotImplemented(
            "user-defined networks are not supported yet".into(),
        )),
        (m, _) => Err(ApiError::NotFound(format!(
            "page not found: {m} {}",
            req.path
        ))),
    }
}
