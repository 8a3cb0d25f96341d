//! `GET /containers/{id}/stats`: the daemon validates the request, writes the response head
//! and hands the connection to the container's shim, which streams the objects (invariant 2:
//! a `docker stats` stream survives daemon upgrades). Without a shim that takes it (the
//! container does not run, or its shim predates the `Stats` request) the daemon answers with
//! one object itself.

use super::streams::conn_fd;
use super::Containers;
use crate::error::ApiResult;
use crate::server::http::{chunk, Response, LAST_CHUNK};
use berth_api::shim::{ShimRequest, StatsParams};
use berth_api::stats::{to_json, to_line, Source};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

impl Containers {
    /// `GET /containers/{id}/stats?stream=&one-shot=`.
    pub fn stats(
        self: &Arc<Self>,
        name: &str,
        stream: bool,
        one_shot: bool,
    ) -> ApiResult<Response> {
        let rec = self.lookup(name)?;
        let me = self.clone();
        let id = rec.id.clone();
        let params = StatsParams {
            name: rec.name.trim_start_matches('/').to_string(),
            stream,
            one_shot,
        };
        Ok(Response::Takeover {
            status: 200,
            content_type: "application/json",
            then: Box::new(move |conn| {
                Box::pin(async move {
                    let Some((fd, _)) = conn_fd(conn) else { return };
                    let live = me
                        .lookup(&id)
                        .map(|r| r.state.status.is_live())
                        .unwrap_or(false);
                    let fd = if live {
                        match me
                            .hand_to_shim(&id, ShimRequest::Stats(params.clone()), fd)
                            .await
                        {
                            None => return,
                            Some(fd) => fd,
                        }
                    } else {
                        fd
                    };
                    // Answer here: one sample of a running container, zeros otherwise.
                    let rec = me.lookup(&id).ok();
                    let pid = rec
                        .as_ref()
                        .filter(|r| r.state.status.is_live())
                        .map(|r| r.state.pid);
                    let src =
                        Source::new(Path::new("/sys/fs/cgroup"), me.paths.cgroup_path(&id), pid);
                    let name = params.name;
                    let body = tokio::task::spawn_blocking(move || {
                        let cur = pid.map(|_| src.sample());
                        to_line(&to_json(&name, &id, cur.as_ref(), None))
                    })
                    .await
                    .unwrap_or_default();
                    let mut out = chunk(&body);
                    out.extend_from_slice(LAST_CHUNK);
                    let mut f = std::fs::File::from(fd);
                    if let Err(e) = f.write_all(&out) {
                        tracing::debug!(error = %e, "write stats answer");
                    }
                })
            }),
        })
    }
}
