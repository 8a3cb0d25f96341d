//! `docker exec`: exec records (create, start, inspect, resize). The process itself runs
//! under the container's shim, which serves its stream and records its exit code.

use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::server::http::Response;
use crate::store::{Store, Table};
use berth_api::models::ExecConfig;
use berth_api::shim::{ExecParams, ShimRequest, ShimResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRecord {
    /// 64-hex id.
    pub id: String,
    /// Container id.
    pub container_id: String,
    /// The create body.
    pub config: ExecConfig,
    /// Started once.
    pub started: bool,
    /// Still running (as last known).
    pub running: bool,
    /// Exit code once known.
    pub exit_code: Option<i32>,
    /// Host pid.
    pub pid: i32,
}

/// Exec records, persisted so `docker exec` inspection survives a daemon restart.
pub struct Execs {
    table: Table,
    map: Mutex<HashMap<String, ExecRecord>>,
}

impl Execs {
    /// Loads the exec table.
    pub fn open(store: &Store) -> ApiResult<Self> {
        let table = store.table("execs")?;
        let map = table.all::<ExecRecord>()?.into_iter().collect();
        Ok(Execs {
            table,
            map: Mutex::new(map),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExecRecord>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks an exec up (404 `No such exec instance: X`).
    pub fn get(&self, id: &str) -> ApiResult<ExecRecord> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("No such exec instance: {id}")))
    }

    fn put(&self, rec: ExecRecord) {
        let _ = self.table.put(&rec.id, &rec);
        self.map().insert(rec.id.clone(), rec);
    }

    /// Records an exit code reported by the shim.
    pub fn finished(&self, id: &str, code: i32) {
        let rec = self.map().get(id).cloned();
        if let Some(mut r) = rec {
            r.running = false;
            r.exit_code = Some(code);
            self.put(r);
        }
    }

    /// Drops every exec of a removed container.
    pub fn forget_container(&self, container_id: &str) {
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|r| r.container_id == container_id)
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            let _ = self.table.remove(&id);
            self.map().remove(&id);
        }
    }
}

/// The command as dockerd puts it in `exec_create: …`/`exec_start: …` actions: the
/// entrypoint, a space, then the arguments joined by spaces (so `ls` alone gives `ls `).
pub fn event_command(cmd: &[String]) -> String {
    match cmd.split_first() {
        Some((entry, args)) => format!("{entry} {}", args.join(" ")),
        None => String::new(),
    }
}

impl Containers {
    /// `POST /containers/{id}/exec`.
    pub fn exec_create(&self, name: &str, cfg: ExecConfig) -> ApiResult<String> {
        let rec = self.lookup(name)?;
        match rec.state.status {
            super::record::Status::Running => {}
            super::record::Status::Paused => {
                return Err(ApiError::Conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    rec.id
                )))
            }
            _ => {
                return Err(ApiError::Conflict(format!(
                    "Container {} is not running",
                    rec.id
                )))
            }
        }
        if cfg.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(ApiError::BadRequest("No exec command specified".into()));
        }
        let id = super::new_id();
        let cmd = event_command(cfg.cmd.as_deref().unwrap_or_default());
        self.execs.put(ExecRecord {
            id: id.clone(),
            container_id: rec.id.clone(),
            config: cfg,
            started: false,
            running: false,
            exit_code: None,
            pid: 0,
        });
        self.update(&rec.id, |r| r.exec_ids.push(id.clone()))?;
        self.event(
            &rec,
            &format!("exec_create: {cmd}"),
            &[("execID", id.clone())],
        );
        Ok(id)
    }

    fn exec_params(&self, ex: &ExecRecord) -> ApiResult<ExecParams> {
        let rec = self.lookup(&ex.container_id)?;
        let c = &ex.config;
        let rootfs = super::rootfs::Rootfs::new(&self.paths.data_root, &rec.id).merged();
        let user = c
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| rec.config.user.clone())
            .unwrap_or_default();
        let (uid, gid, additional_gids) = super::spec::resolve_user(&rootfs, &user)?;
        let mut env = super::create::merge_env(
            rec.config.env.as_deref().unwrap_or(&[]),
            c.env.as_deref().unwrap_or(&[]),
        );
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let env = super::spec::process::with_home(env, &super::spec::user_home(&rootfs, &user)?);
        let cwd = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| rec.config.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        Ok(ExecParams {
            exec_id: ex.id.clone(),
            args: c.cmd.clone().unwrap_or_default(),
            env,
            cwd,
            uid,
            gid,
            additional_gids,
            tty: c.tty.unwrap_or(false),
            attach_stdin: c.attach_stdin.unwrap_or(false),
            attach_stdout: c.attach_stdout.unwrap_or(false),
            attach_stderr: c.attach_stderr.unwrap_or(false),
            detach: false,
            privileged: c.privileged.unwrap_or(false)
                || rec.host_config.privileged.unwrap_or(false),
            detach_keys: super::streams::parse_detach_keys(c.detach_keys.as_deref().unwrap_or(""))?,
            initial: Vec::new(),
        })
    }

    /// `POST /exec/{id}/start`.
    pub fn exec_start(
        self: &Arc<Self>,
        exec_id: &str,
        detach: bool,
        upgrade: bool,
    ) -> ApiResult<Response> {
        let ex = self.execs.get(exec_id)?;
        if ex.started {
            return Err(ApiError::Conflict(format!(
                "Exec command {exec_id} has already run"
            )));
        }
        let rec = self.lookup(&ex.container_id)?;
        if !rec.state.status.is_live() {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let mut params = match self.exec_params(&ex) {
            Ok(p) => p,
            Err(e) if !detach => return Ok(self.exec_failed_in_stream(&ex, upgrade, &e)),
            Err(e) => return Err(e),
        };
        let mut started = ex.clone();
        started.started = true;
        started.running = true;
        self.execs.put(started);
        let cmd = event_command(ex.config.cmd.as_deref().unwrap_or_default());
        self.event(
            &rec,
            &format!("exec_start: {cmd}"),
            &[("execID", ex.id.clone())],
        );
        let me = self.clone();
        let cid = rec.id.clone();
        let eid = ex.id.clone();
        if detach {
            params.detach = true;
            let me2 = me.clone();
            return Ok(Response::Takeover {
                status: 200,
                content_type: "application/json",
                then: Box::new(move |conn| {
                    Box::pin(async move {
                        let res = me2.shim(&cid).call(ShimRequest::Exec(params), None).await;
                        me2.exec_started(&eid, res);
                        let mut s = conn.stream;
                        let _ = tokio::io::AsyncWriteExt::write_all(
                            &mut s,
                            crate::server::http::LAST_CHUNK,
                        )
                        .await;
                    })
                }),
            });
        }
        Ok(Response::Takeover {
            status: if upgrade { 101 } else { 200 },
            content_type: "application/vnd.docker.raw-stream",
            then: Box::new(move |conn| {
                Box::pin(async move {
                    let Ok(std) = conn.stream.into_std() else {
                        return;
                    };
                    let _ = std.set_nonblocking(false);
                    params.initial = conn.leftover;
                    let fd = std::os::fd::OwnedFd::from(std);
                    let res = me
                        .shim(&cid)
                        .call(ShimRequest::Exec(params), Some(fd))
                        .await;
                    me.exec_started(&eid, res);
                })
            }),
        })
    }

    /// dockerd hijacks an attached exec start before it prepares the process: an error from
    /// that step (e.g. `-u` naming an unknown user) is written into the stream, followed by
    /// `\r\n`, and the exec ends with 126, which `docker exec` exits with.
    fn exec_failed_in_stream(&self, ex: &ExecRecord, upgrade: bool, e: &ApiError) -> Response {
        let mut failed = ex.clone();
        failed.started = true;
        failed.running = false;
        failed.exit_code = Some(126);
        self.execs.put(failed);
        let text = format!("{e}\r\n");
        let tty = ex.config.tty.unwrap_or(false);
        let data = if tty {
            text.into_bytes()
        } else {
            berth_api::logfmt::frame(berth_api::logfmt::Stream::Stdout, text.as_bytes())
        };
        Response::Takeover {
            status: if upgrade { 101 } else { 200 },
            content_type: "application/vnd.docker.raw-stream",
            then: Box::new(move |conn| {
                Box::pin(async move {
                    let mut s = conn.stream;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, &data).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                })
            }),
        }
    }

    fn exec_started(&self, exec_id: &str, res: ApiResult<ShimResponse>) {
        let Ok(mut ex) = self.execs.get(exec_id) else {
            return;
        };
        match res {
            Ok(ShimResponse::ExecStarted { pid }) => ex.pid = pid,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%exec_id, error = %e, "exec start failed");
                ex.running = false;
                // The shim records the same code; this answer may reach inspect first.
                ex.exit_code = Some(if e.to_string().contains("executable file not found") {
                    127
                } else {
                    126
                });
            }
        }
        self.execs.put(ex);
    }

    /// `GET /exec/{id}/json`.
    pub async fn exec_inspect(&self, exec_id: &str) -> ApiResult<serde_json::Value> {
        let mut ex = self.execs.get(exec_id)?;
        if ex.running {
            if let Ok(ShimResponse::ExecState(st)) = self
                .shim(&ex.container_id)
                .call(
                    ShimRequest::ExecState {
                        exec_id: exec_id.to_string(),
                    },
                    None,
                )
                .await
            {
                ex.running = st.running;
                ex.pid = st.pid;
                if st.exit_code.is_some() {
                    ex.exit_code = st.exit_code;
                    self.execs.put(ex.clone());
                }
            }
        }
        let c = &ex.config;
        let cmd = c.cmd.clone().unwrap_or_default();
        Ok(serde_json::json!({
            "ID": ex.id,
            "Running": ex.running,
            "ExitCode": ex.exit_code.unwrap_or(0),
            "ProcessConfig": {
                "tty": c.tty.unwrap_or(false),
                "entrypoint": cmd.first().cloned().unwrap_or_default(),
                "arguments": cmd.iter().skip(1).cloned().collect::<Vec<_>>(),
                "privileged": c.privileged.unwrap_or(false),
                "user": c.user.clone().unwrap_or_default(),
            },
            "OpenStdin": c.attach_stdin.unwrap_or(false),
            "OpenStderr": c.attach_stderr.unwrap_or(false),
            "OpenStdout": c.attach_stdout.unwrap_or(false),
            "CanRemove": false,
            "ContainerID": ex.container_id,
            "DetachKeys": c.detach_keys.clone().unwrap_or_default(),
            "Pid": ex.pid,
        }))
    }

    /// `POST /exec/{id}/resize`.
    pub async fn exec_resize(&self, exec_id: &str, h: u16, w: u16) -> ApiResult<()> {
        let ex = self.execs.get(exec_id)?;
        self.shim(&ex.container_id)
            .call(
                ShimRequest::Resize {
                    exec_id: Some(exec_id.to_string()),
                    height: h,
                    width: w,
                },
                None,
            )
            .await?;
        Ok(())
    }
}
