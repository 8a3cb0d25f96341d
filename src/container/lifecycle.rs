//! Start, stop, kill, restart, pause, rename and remove. Following each shim's events,
//! exit handling and re-adoption after a daemon restart are in [`super::monitor`].

use super::pending::{answer_wait, close_attach, Pending};
use super::record::{parse_signal, Record, Status};
use super::rootfs::Rootfs;
use super::{now_ns, Containers};
use crate::error::{ApiError, ApiResult};
use berth_api::shim::{ExitRecord, ShimRequest, WaitCondition};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

/// Exit code dockerd records for a failed start, from the runtime's message.
pub fn start_error_code(msg: &str) -> i32 {
    if msg.contains("executable file not found") || msg.contains("no such file or directory") {
        127
    } else if msg.contains("permission denied") || msg.contains("is a directory") {
        126
    } else {
        128
    }
}

/// Reads an exit record written by a shim.
pub fn read_exit_file(path: &std::path::Path) -> Option<ExitRecord> {
    let data = std::fs::read(path).ok()?;
    serde_json::from_slice(&data).ok()
}

impl Containers {
    /// `POST /containers/{id}/start`.
    pub async fn start(self: &Arc<Self>, name: &str) -> ApiResult<()> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        self.start_locked(&id, true).await
    }

    /// Starts with the op lock held; `user` marks a start asked for by a client, otherwise
    /// it is a restart by policy, counted in `RestartCount` in the same store update as its
    /// outcome (a daemon killed in between neither loses nor repeats the count).
    pub(crate) async fn start_locked(self: &Arc<Self>, id: &str, user: bool) -> ApiResult<()> {
        let rec = self.lookup(id)?;
        rec.state.check_start(id)?;
        match self.launch(&rec).await {
            Ok(pid) => {
                if let Some(e) = self.elastic.get() {
                    // libcontainer does not apply the spec's disable_oom_killer: take the
                    // container under control now rather than at the controller's next tick.
                    e.adopt_started(&rec, &self.paths.cgroup_path(id));
                }
                let rec = self.update(id, |r| {
                    r.state.started(pid, 0, now_ns());
                    if user {
                        r.state.manually_stopped = false;
                    } else {
                        r.state.restart_count += 1;
                    }
                })?;
                self.settle_cpus(id);
                self.event(&rec, "start", &[]);
                self.spawn_monitor(id.to_string());
                Ok(())
            }
            Err(e) => {
                // Like dockerd, a failed start leaves no endpoint (veth, netns, host ports).
                self.release_endpoint(id).await;
                let msg = e.to_string();
                let code = start_error_code(&msg);
                let rec = self.update(id, |r| {
                    r.state.start_failed(code, &msg, now_ns());
                    if !user {
                        r.state.restart_count += 1;
                    }
                })?;
                for p in self.pending.take(id) {
                    match p {
                        Pending::Attach(_, fd) => close_attach(fd),
                        Pending::Wait(WaitCondition::Removed, fd) => self
                            .pending
                            .push(id, Pending::Wait(WaitCondition::Removed, fd)),
                        Pending::Wait(_, fd) => answer_wait(fd, code, None),
                    }
                }
                if rec.host_config.auto_remove == Some(true) {
                    self.spawn_remove(id, "auto-remove after failed start");
                }
                Err(e)
            }
        }
    }

    /// Mounts, networks, writes the bundle, spawns the shim, hands over waiting clients
    /// and starts the container. Returns the init pid.
    async fn launch(self: &Arc<Self>, rec: &Record) -> ApiResult<i32> {
        let id = rec.id.as_str();
        if let Some(e) = self.elastic.get() {
            e.admit(rec, &self.all())?;
        }
        let t0 = std::time::Instant::now();
        let lxcfs = crate::lxcfs::wanted(self.paths.lxcfs.as_deref(), rec.config.labels.as_ref());
        let lxcfs_now = crate::lxcfs::serving_for_start(lxcfs.as_deref(), id).await;
        let rootfs = Rootfs::new(&self.paths.data_root, id);
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        let merged = rootfs.mount(&lowers)?;
        let t_mount = t0.elapsed();
        let (attachment, netns) = self.setup_network(rec).await?;
        self.apply_egress(rec, netns.as_deref(), true).await?;
        let t_net = t0.elapsed();
        let cdir = self.paths.container_dir(id);
        let etc = crate::network::write_etc_files(
            &cdir,
            rec.config.hostname.as_deref().unwrap_or(""),
            rec.config.domainname.as_deref().unwrap_or(""),
            attachment.as_ref(),
            rec.host_config.extra_hosts.as_deref().unwrap_or(&[]),
            rec.host_config.dns.as_deref().unwrap_or(&[]),
            rec.host_config.dns_search.as_deref().unwrap_or(&[]),
            rec.host_config.dns_options.as_deref().unwrap_or(&[]),
        )?;
        // Networks joined with `docker network connect` (eth1, eth2, …).
        let extra = match &netns {
            Some(_) if attachment.as_ref().is_some_and(|a| a.has_endpoint()) => {
                self.net
                    .ensure_connected(id, &rec.name, Some(cdir.join("hosts")))
                    .await?
            }
            _ => Vec::new(),
        };
        if attachment.as_ref().is_some_and(|a| a.user_network) || !extra.is_empty() {
            // Peers on user networks find each other through their hosts files.
            if let Err(e) = self.net.refresh_hosts() {
                tracing::warn!(%id, error = %e, "updating the hosts files of network peers");
            }
        }
        let att_json = attachment.as_ref().map(serde_json::to_value).transpose()?;
        let extra_json = extra
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        self.update(id, |r| {
            r.attachment = att_json;
            r.extra_attachments = extra_json;
            r.lxcfs = lxcfs.clone();
        })?;
        let bundle = self.write_bundle(
            &self.spec_cpus(rec),
            &merged,
            netns.as_deref(),
            &etc,
            lxcfs_now.as_deref(),
        )?;
        let shim_cfg = self.write_shim_config(rec, &bundle)?;
        self.retire_previous_shim(id).await;
        let _ = std::fs::remove_file(self.paths.exit_file(id));
        let t_files = t0.elapsed();
        let pid = super::spawn::spawn_shim(&self.paths.shim_binary, &shim_cfg).await?;
        let t_shim = t0.elapsed();
        let shim = self.shim(id);
        for p in self.pending.take(id) {
            let res = match p {
                Pending::Attach(params, fd) => {
                    shim.call(ShimRequest::Attach(params), Some(fd)).await
                }
                // Before Start the shim's "next exit" is the exit of the run it is about to start.
                Pending::Wait(condition, fd) => {
                    shim.call(ShimRequest::Wait { condition }, Some(fd)).await
                }
            };
            if let Err(e) = res {
                tracing::warn!(%id, error = %e, "handing a waiting client to the shim failed");
            }
        }
        shim.call(ShimRequest::Start, None).await?;
        tracing::debug!(
            %id,
            mount = ?t_mount,
            network = ?t_net - t_mount,
            files = ?t_files - t_net,
            shim_create = ?t_shim - t_files,
            handover_start = ?t0.elapsed() - t_shim,
            "container started"
        );
        Ok(pid)
    }

    /// Sets up the container's network namespace; returns the attachment and netns path.
    async fn setup_network(
        &self,
        rec: &Record,
    ) -> ApiResult<(
        Option<crate::network::Attachment>,
        Option<std::path::PathBuf>,
    )> {
        let mode_str = rec.host_config.network_mode.clone().unwrap_or_default();
        let mode = match mode_str.strip_prefix("container:") {
            Some(other) => {
                let o = self.lookup(other)?;
                if !o.state.status.is_live() {
                    return Err(ApiError::Conflict(format!(
                        "cannot join network of a non running container: {}",
                        o.id
                    )));
                }
                crate::network::NetMode::Container(
                    crate::network::netns_path(&self.paths.exec_root, &o.id)
                        .to_string_lossy()
                        .into_owned(),
                )
            }
            None => crate::network::NetMode::parse(&mode_str)?,
        };
        // The endpoint settings of the network the container runs on (`--ip`,
        // `--network-alias`), keyed by the name given in `--network`.
        let ep = rec
            .networking
            .as_ref()
            .and_then(|n| n.endpoints_config.as_ref())
            .and_then(|m| m.get(&mode_str));
        let ip = ep
            .and_then(|e| e.ipam_config.as_ref())
            .and_then(|c| c.ipv4_address.as_deref())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid IPv4 address: {s}")))
            })
            .transpose()?;
        let aliases = ep.and_then(|e| e.aliases.clone()).unwrap_or_default();
        let req = crate::network::NetRequest {
            mode,
            mac: rec.config.mac_address.clone().filter(|m| !m.is_empty()),
            name: rec.name.clone(),
            ip,
            aliases,
            hosts_file: Some(self.paths.container_dir(&rec.id).join("hosts")),
        };
        let mut att = self.net.ensure(&rec.id, &req).await?;
        let bridge = self.net.bridge_of(&att);
        if let (Some(ip), Some(veth), Some(bridge)) = (att.ip, att.host_veth.clone(), bridge) {
            let reqs =
                super::create::port_requests(&rec.host_config, rec.config.exposed_ports.as_ref())?;
            let endpoint = format!("{} ({})", rec.name, att.endpoint_id);
            att.ports = self
                .net
                .publish(&rec.id, &endpoint, &bridge, ip, Some(&veth), &reqs)
                .await?;
        }
        let netns = att.sandbox_path();
        Ok((att.into_option(), netns))
    }

    /// Like dockerd on an exit: the stopped container leaves its network (veth and netns
    /// go, the address lease stays so the next start gets the same IP). Call with the
    /// container's op lock held and the container not running.
    pub(crate) async fn release_endpoint(&self, id: &str) {
        if let Err(e) = self.net.detach(id).await {
            tracing::warn!(%id, error = %e, "release the network of a stopped container");
        }
    }

    /// [`Self::release_endpoint`] for an exit seen by the monitor: done under the op lock
    /// (after a stop or restart that holds it now), and only if no start came first.
    pub(crate) fn release_endpoint_soon(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let _bg = me.background().await;
            let _g = me.lock(&id).await;
            match me.lookup(&id) {
                Ok(r) if !r.state.status.is_live() && r.state.status != Status::Restarting => {
                    me.release_endpoint(&id).await
                }
                _ => {}
            }
        });
    }
    async fn wait_exit(
        &self,
        rx: &mut tokio::sync::watch::Receiver<u64>,
        gen0: u64,
        t: Option<Duration>,
    ) -> bool {
        let fut = rx.wait_for(|g| *g != gen0);
        match t {
            Some(t) => matches!(tokio::time::timeout(t, fut).await, Ok(Ok(_))),
            None => fut.await.is_ok(),
        }
    }

    /// SIGKILLs every process of a running container and waits (30 s at most) for the
    /// exit to be recorded; `what` names the operation in the error.
    async fn kill_and_wait(
        &self,
        rec: &Record,
        rx: &mut tokio::sync::watch::Receiver<u64>,
        gen0: u64,
        what: &str,
    ) -> ApiResult<()> {
        self.signal_container(&rec.id, libc::SIGKILL, true).await?;
        self.event(rec, "kill", &[("signal", libc::SIGKILL.to_string())]);
        if self
            .wait_exit(rx, gen0, Some(Duration::from_secs(30)))
            .await
        {
            Ok(())
        } else {
            Err(ApiError::Internal(format!(
                "{what} {}: it did not exit after SIGKILL",
                rec.id
            )))
        }
    }

    /// Removes a container in the background under its op lock (auto-remove).
    pub(crate) fn spawn_remove(self: &Arc<Self>, id: &str, why: &'static str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let _bg = me.background().await;
            let _g = me.lock(&id).await;
            if let Err(e) = me.remove_locked(&id, true).await {
                tracing::warn!(%id, error = %e, "{why}");
            }
        });
    }

    /// `POST /containers/{id}/stop?t=`.
    pub async fn stop(self: &Arc<Self>, name: &str, t: Option<i64>) -> ApiResult<()> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        self.stop_locked(&id, t).await
    }

    pub(crate) async fn stop_locked(self: &Arc<Self>, id: &str, t: Option<i64>) -> ApiResult<()> {
        let rec = self.lookup(id)?;
        if rec.state.status == Status::Restarting {
            self.update(id, |r| {
                r.state.status = Status::Exited;
                r.state.manually_stopped = true;
            })?;
            return Ok(());
        }
        if !rec.state.status.is_live() {
            return Err(ApiError::NotModified);
        }
        let rec = self.update(id, |r| r.state.manually_stopped = true)?;
        let shim = self.shim(id);
        if rec.state.status == Status::Paused {
            shim.call(ShimRequest::Resume, None).await?;
        }
        let mut rx = self.exit_watch(id);
        let gen0 = *rx.borrow();
        let sig = parse_signal(&rec.stop_signal()).unwrap_or(libc::SIGTERM);
        let timeout = t.unwrap_or_else(|| rec.stop_timeout());
        self.signal_container(id, sig, false).await?;
        self.event(&rec, "kill", &[("signal", sig.to_string())]);
        let limit = (timeout >= 0).then(|| Duration::from_secs(timeout as u64));
        if !self.wait_exit(&mut rx, gen0, limit).await {
            self.kill_and_wait(&rec, &mut rx, gen0, "cannot stop container")
                .await?;
        }
        // Out of the network before `docker stop` returns (the monitor's release waits
        // for the lock we hold, then finds nothing left to do).
        self.release_endpoint(id).await;
        self.event(&rec, "stop", &[]);
        Ok(())
    }

    /// `POST /containers/{id}/kill?signal=`.
    pub async fn kill(self: &Arc<Self>, name: &str, signal: Option<&str>) -> ApiResult<()> {
        let sig = match signal.filter(|s| !s.is_empty()) {
            Some(s) => parse_signal(s)?,
            None => libc::SIGKILL,
        };
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        let rec = self.lookup(&id)?;
        if !rec.state.status.is_live() {
            return Err(ApiError::Conflict(format!(
                "Cannot kill container: {name}: Container {id} is not running"
            )));
        }
        let mut rx = self.exit_watch(&id);
        let gen0 = *rx.borrow();
        self.update(&id, |r| r.state.manually_stopped = true)?;
        self.signal_container(&id, sig, sig == libc::SIGKILL)
            .await?;
        self.event(&rec, "kill", &[("signal", sig.to_string())]);
        if sig == libc::SIGKILL {
            self.wait_exit(&mut rx, gen0, Some(Duration::from_secs(10)))
                .await;
        }
        Ok(())
    }

    /// `POST /containers/{id}/restart?t=`.
    pub async fn restart(self: &Arc<Self>, name: &str, t: Option<i64>) -> ApiResult<()> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        match self.stop_locked(&id, t).await {
            Ok(()) | Err(ApiError::NotModified) => {}
            Err(e) => return Err(e),
        }
        self.start_locked(&id, true).await?;
        if let Ok(rec) = self.lookup(&id) {
            self.event(&rec, "restart", &[]);
        }
        Ok(())
    }

    /// `POST /containers/{id}/pause` and `/unpause`.
    pub async fn pause(self: &Arc<Self>, name: &str, pause: bool) -> ApiResult<()> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        let rec = self.lookup(&id)?;
        match (rec.state.status, pause) {
            (Status::Running, true) | (Status::Paused, false) => {}
            (Status::Paused, true) => {
                return Err(ApiError::Conflict(format!(
                    "Container {id} is already paused"
                )))
            }
            (Status::Running, false) => {
                return Err(ApiError::Conflict(format!("Container {id} is not paused")))
            }
            _ => return Err(ApiError::Conflict(format!("Container {id} is not running"))),
        }
        let req = if pause {
            ShimRequest::Pause
        } else {
            ShimRequest::Resume
        };
        self.shim(&id).call(req, None).await?;
        let rec = self.update(&id, |r| {
            r.state.status = if pause {
                Status::Paused
            } else {
                Status::Running
            }
        })?;
        self.event(&rec, if pause { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// `POST /containers/{id}/rename?name=`.
    pub async fn rename(&self, name: &str, new_name: &str) -> ApiResult<()> {
        let new = super::create::validate_name(new_name)?;
        let rec = self.lookup(name)?;
        let old = rec.name.clone();
        {
            let mut recs = self.recs();
            if let Some(other) = recs.values().find(|r| r.name == new && r.id != rec.id) {
                return Err(ApiError::Conflict(format!(
                    "Conflict. The container name \"/{new}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
            if let Some(r) = recs.get_mut(&rec.id) {
                r.name = new.clone();
            }
        }
        let rec = self.update(&rec.id, |r| r.name = new.clone())?;
        self.event(&rec, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    /// `DELETE /containers/{id}?force=`.
    pub async fn remove(self: &Arc<Self>, name: &str, force: bool) -> ApiResult<()> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        self.remove_locked(&id, force).await
    }

    pub(crate) async fn remove_locked(self: &Arc<Self>, id: &str, force: bool) -> ApiResult<()> {
        let Ok(rec) = self.lookup(id) else {
            return Ok(());
        };
        if rec.state.status.is_live() {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "You cannot remove a running container {id}. Stop the container before attempting removal or force remove"
                )));
            }
            let mut rx = self.exit_watch(id);
            let gen0 = *rx.borrow();
            let shim = self.shim(id);
            if rec.state.status == Status::Paused {
                let _ = shim.call(ShimRequest::Resume, None).await;
            }
            self.kill_and_wait(&rec, &mut rx, gen0, "cannot remove container")
                .await?;
        }
        let rec = self.update(id, |r| r.state.status = Status::Removing)?;
        let code = rec.state.exit_code;
        self.net.release(id).await?;
        Rootfs::new(&self.paths.data_root, id).remove()?;
        self.execs.forget_container(id);
        // The record goes before `wait?condition=removed` is answered (by the shim, or here
        // for waits queued before a start): `docker run --rm` returns only then, and a
        // `docker ps -a` right after it must not list the container.
        self.forget(id)?;
        self.release_cpus(id);
        let shim = self.shim(id);
        let _ = shim.call(ShimRequest::Removed, None).await;
        for p in self.pending.take(id) {
            match p {
                Pending::Attach(_, fd) => close_attach(fd),
                Pending::Wait(_, fd) => answer_wait(fd, code, None),
            }
        }
        for dir in [self.paths.container_dir(id), self.paths.shim_dir(id)] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "remove container files");
                }
            }
        }
        if let Err(e) = self.images.release_retained(&rec.image_id) {
            tracing::warn!(image = %rec.image_id, error = %e, "release a deleted image's layers");
        }
        self.event(&rec, "destroy", &[]);
        self.notify_exit(id);
        Ok(())
    }

    /// Hands a client connection to the running shim, or returns it when no shim takes it.
    pub(crate) async fn hand_to_shim(
        &self,
        id: &str,
        req: ShimRequest,
        fd: OwnedFd,
    ) -> Option<OwnedFd> {
        let keep = fd.try_clone().ok();
        match self.shim(id).call(req, Some(fd)).await {
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(%id, error = %e, "shim did not take the connection");
                keep
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_map_to_dockerd_exit_codes() {
        assert_eq!(
            start_error_code("exec: \"nosuch\": executable file not found in $PATH"),
            127
        );
        assert_eq!(
            start_error_code("chdir to cwd: no such file or directory"),
            127
        );
        assert_eq!(start_error_code("exec /x: permission denied"), 126);
        assert_eq!(start_error_code("network nonet not found"), 128);
    }
}
