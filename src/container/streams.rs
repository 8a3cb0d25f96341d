//! Streams bound to one container: `wait`, `attach` and `logs`. The daemon validates the
//! request, writes the response head and gives the connection to the shim (invariant 2);
//! without a shim it queues the connection for the next start or answers it itself.

use super::pending::{answer_wait, Pending};
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::server::http::{Conn, Response};
use berth_api::logfmt;
use berth_api::shim::{AttachParams, LogsParams, ShimRequest, WaitCondition};
use std::io::BufReader;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Turns a taken-over connection into an fd to pass on.
pub(super) fn conn_fd(conn: Conn) -> Option<(OwnedFd, Vec<u8>)> {
    let std = conn.stream.into_std().ok()?;
    let _ = std.set_nonblocking(false);
    Some((OwnedFd::from(std), conn.leftover))
}

/// Parses `condition=`.
pub fn parse_condition(s: Option<&str>) -> ApiResult<WaitCondition> {
    match s.unwrap_or("") {
        "" | "not-running" => Ok(WaitCondition::NotRunning),
        "next-exit" => Ok(WaitCondition::NextExit),
        "removed" => Ok(WaitCondition::Removed),
        other => Err(ApiError::BadRequest(format!(
            "invalid condition: \"{other}\""
        ))),
    }
}

/// Parses `detachKeys` (`ctrl-p,ctrl-q`, `a`, `ctrl-@`) into bytes.
pub fn parse_detach_keys(s: &str) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    for key in s.split(',').filter(|k| !k.is_empty()) {
        let k = key.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let b = match c.as_bytes() {
                [b @ b'a'..=b'z'] => b - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "Invalid detach keys ({s}) provided"
                    )))
                }
            };
            out.push(b);
        } else if k.len() == 1 {
            out.push(k.as_bytes()[0]);
        } else {
            return Err(ApiError::BadRequest(format!(
                "Invalid detach keys ({s}) provided"
            )));
        }
    }
    Ok(out)
}

impl Containers {
    /// `POST /containers/{id}/wait?condition=`.
    pub fn wait(self: &Arc<Self>, name: &str, condition: Option<&str>) -> ApiResult<Response> {
        let cond = parse_condition(condition)?;
        let rec = self.lookup(name)?;
        let gen0 = *self.exit_watch(&rec.id).borrow();
        let me = self.clone();
        let id = rec.id;
        Ok(Response::Takeover {
            status: 200,
            content_type: "application/json",
            then: Box::new(move |conn| {
                Box::pin(async move {
                    let Some((fd, _)) = conn_fd(conn) else { return };
                    me.serve_wait(&id, cond, gen0, fd).await;
                })
            }),
        })
    }

    async fn serve_wait(self: &Arc<Self>, id: &str, cond: WaitCondition, gen0: u64, fd: OwnedFd) {
        let _g = self.lock(id).await;
        let Ok(rec) = self.lookup(id) else {
            // Removed between the request and now.
            answer_wait(fd, 0, None);
            return;
        };
        let exited_since = *self.exit_watch(id).borrow() != gen0;
        if exited_since && cond != WaitCondition::Removed && !rec.state.status.is_live() {
            answer_wait(fd, rec.state.exit_code, None);
            return;
        }
        if rec.state.status.is_live() {
            // A shim hosts exactly one run: its "next exit" is the exit of that run.
            let condition = match cond {
                WaitCondition::NextExit => WaitCondition::NotRunning,
                c => c,
            };
            match self
                .hand_to_shim(id, ShimRequest::Wait { condition }, fd)
                .await
            {
                None => return,
                Some(fd) if self.waits_queue_here(id) => {
                    self.pending.push(id, Pending::Wait(condition, fd));
                    return;
                }
                Some(fd) => {
                    let rec = self.lookup(id).unwrap_or(rec);
                    answer_wait(fd, rec.state.exit_code, None);
                    return;
                }
            }
        }
        match cond {
            WaitCondition::NotRunning => answer_wait(fd, rec.state.exit_code, None),
            c => self.pending.push(id, Pending::Wait(c, fd)),
        }
    }

    /// `POST /containers/{id}/attach?stream=&stdin=&stdout=&stderr=&logs=&detachKeys=`.
    pub fn attach(
        self: &Arc<Self>,
        name: &str,
        params: AttachParams,
        upgrade: bool,
    ) -> ApiResult<Response> {
        let rec = self.lookup(name)?;
        if rec.state.status == super::record::Status::Removing {
            return Err(ApiError::Conflict(format!(
                "container {} is being removed",
                rec.id
            )));
        }
        self.event(&rec, "attach", &[]);
        let me = self.clone();
        let id = rec.id;
        Ok(Response::Takeover {
            status: if upgrade { 101 } else { 200 },
            content_type: "application/vnd.docker.raw-stream",
            then: Box::new(move |conn| {
                Box::pin(async move {
                    let Some((fd, leftover)) = conn_fd(conn) else {
                        return;
                    };
                    let mut params = params;
                    params.initial = leftover;
                    let _g = me.lock(&id).await;
                    let live = me
                        .lookup(&id)
                        .map(|r| r.state.status.is_live())
                        .unwrap_or(false);
                    if live {
                        if let Some(fd) =
                            me.hand_to_shim(&id, ShimRequest::Attach(params), fd).await
                        {
                            super::pending::close_attach(fd);
                        }
                    } else {
                        me.pending.push(&id, Pending::Attach(params, fd));
                    }
                })
            }),
        })
    }

    /// `GET /containers/{id}/logs`.
    pub fn logs(self: &Arc<Self>, name: &str, p: LogsParams, follow: bool) -> ApiResult<Response> {
        let rec = self.lookup(name)?;
        if !p.stdout && !p.stderr {
            return Err(ApiError::BadRequest(
                "Bad parameters: you must choose at least one stream".into(),
            ));
        }
        let log_type = rec
            .host_config
            .log_config
            .as_ref()
            .and_then(|l| l.typ.clone())
            .unwrap_or_default();
        if log_type == "none" {
            return Err(ApiError::BadRequest(
                "configured logging driver does not support reading".into(),
            ));
        }
        let mut p = p;
        p.raw = rec.tty();
        let id = rec.id.clone();
        if follow && rec.state.status.is_live() {
            let me = self.clone();
            return Ok(Response::Takeover {
                status: 200,
                content_type: "application/vnd.docker.raw-stream",
                then: Box::new(move |conn| {
                    Box::pin(async move {
                        let Some((fd, _)) = conn_fd(conn) else { return };
                        if let Some(fd) =
                            me.hand_to_shim(&id, ShimRequest::Logs(p.clone()), fd).await
                        {
                            // The container stopped meanwhile: send the history ourselves.
                            let body = me.read_logs(&id, &p);
                            let mut out = Vec::new();
                            if !body.is_empty() {
                                out.extend(crate::server::http::chunk(&body));
                            }
                            out.extend_from_slice(crate::server::http::LAST_CHUNK);
                            let mut f = std::fs::File::from(fd);
                            let _ = std::io::Write::write_all(&mut f, &out);
                        }
                    })
                }),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let body = me.read_logs(&id, &p);
            for part in body.chunks(64 * 1024) {
                if tx.blocking_send(part.to_vec()).is_err() {
                    return;
                }
            }
        });
        Ok(Response::Stream {
            status: 200,
            content_type: "application/vnd.docker.raw-stream",
            headers: vec![],
            rx,
            resumable: None,
        })
    }

    /// Reads and renders log history from the json-file log and its rotations.
    pub fn read_logs(&self, id: &str, p: &LogsParams) -> Vec<u8> {
        let rec = self.lookup(id).ok();
        let max_file = rec
            .as_ref()
            .and_then(|r| r.host_config.log_config.as_ref())
            .and_then(|l| l.config.as_ref())
            .and_then(|c| c.get("max-file"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(1);
        let mut entries = Vec::new();
        for path in logfmt::rotated_names(&self.paths.log_path(id), max_file.max(1)) {
            if let Ok(f) = std::fs::File::open(&path) {
                entries.extend(logfmt::read_entries(BufReader::new(f)));
            }
        }
        let filter = p.filter();
        let mut out = Vec::new();
        for d in filter.apply(entries) {
            out.extend(logfmt::render(&d, p.timestamps, p.raw));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_detach_keys_parse() -> ApiResult<()> {
        assert_eq!(parse_condition(None)?, WaitCondition::NotRunning);
        assert_eq!(parse_condition(Some("removed"))?, WaitCondition::Removed);
        assert!(parse_condition(Some("later")).is_err());
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q")?, vec![16, 17]);
        assert_eq!(parse_detach_keys("ctrl-a,x")?, vec![1, b'x']);
        assert!(parse_detach_keys("ctrl-foo").is_err());
        Ok(())
    }
}
