//! `POST /berth/upgrade`: berth's own endpoint behind `berthd upgrade`.

use super::http::{Request, Response};
use super::Daemon;
use crate::error::ApiError;
use std::sync::Arc;

/// `POST /berth/upgrade`: the connection goes to the master, which runs the upgrade and
/// answers on it (the worker that received it is replaced meanwhile).
pub fn upgrade(d: &Arc<Daemon>, req: &Request) -> Result<Response, ApiError> {
    let Some(out) = d.ctl.clone() else {
        return Err(ApiError::NotImplemented(
            "live upgrade needs berthd's master process".into(),
        ));
    };
    let num = |k: &str| -> Result<Option<u64>, ApiError> {
        req.q(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid {k}: {v:?}")))
            })
            .transpose()
    };
    let params = crate::ctl::UpgradeParams {
        binary: req
            .q("binary")
            .filter(|b| !b.is_empty())
            .map(str::to_string),
        fault: req.q("fault").filter(|b| !b.is_empty()).map(str::to_string),
        warmup_timeout_ms: num("warmup_timeout_ms")?,
        probation_ms: num("probation_ms")?,
    };
    if let Some(b) = &params.binary {
        if !std::path::Path::new(b).is_absolute() {
            return Err(ApiError::BadRequest(format!(
                "the new binary must be an absolute path: {b:?}"
            )));
        }
    }
    Ok(Response::Takeover {
        status: 0,
        content_type: "application/json",
        then: Box::new(move |conn| {
            Box::pin(async move {
                match conn.stream.into_std() {
                    Ok(s) => {
                        let _ = out.send((
                            crate::ctl::ToMaster::Upgrade(params),
                            vec![std::os::fd::OwnedFd::from(s)],
                        ));
                    }
                    Err(e) => tracing::warn!(error = %e, "detach the upgrade connection"),
                }
            })
        }),
    })
}
