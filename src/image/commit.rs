//! `docker commit`, image side: a container's layer tar becomes the top layer of a new
//! image built on the container's image, with dockerd's config merge and history entry.

use super::config::{now_rfc3339, ContainerConfig, History, ImageConfigFile};
use super::reference::Reference;
use super::ImageStore;
use crate::error::{ApiError, ApiResult};
use std::io::Read;

/// What a commit records besides the layer.
pub struct CommitInfo<'a> {
    /// The container's image (`sha256:<hex>`).
    pub parent_image: &'a str,
    /// The container's full id.
    pub container_id: &'a str,
    /// The container's own config (dockerd's `ContainerConfig`).
    pub container_config: ContainerConfig,
    /// The new image's config (request body with `changes` applied, merged with the
    /// container's config).
    pub config: ContainerConfig,
    /// `-m`.
    pub comment: &'a str,
    /// `-a`.
    pub author: &'a str,
    /// `name[:tag]` to tag the result with, if any.
    pub repo_tag: Option<&'a str>,
}

/// dockerd's `merge(userConf, imageConf)`: fields the user left empty come from the
/// container's config; Env, ExposedPorts, Volumes and Labels are combined (user wins).
pub fn merge_config(user: &mut ContainerConfig, container: &ContainerConfig) {
    if user.user.is_empty() {
        user.user = container.user.clone();
    }
    if let Some(cports) = &container.exposed_ports {
        let ports = user.exposed_ports.get_or_insert_with(Default::default);
        for (k, v) in cports {
            ports.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if let Some(cenv) = &container.env {
        let env = user.env.get_or_insert_with(Vec::new);
        for e in cenv {
            let key = e.split('=').next().unwrap_or("");
            if !env.iter().any(|u| u.split('=').next().unwrap_or("") == key) {
                env.push(e.clone());
            }
        }
    }
    if let Some(clabels) = &container.labels {
        let labels = user.labels.get_or_insert_with(Default::default);
        for (k, v) in clabels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if user.entrypoint.as_ref().is_none_or(|e| e.is_empty()) {
        if user.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            user.cmd = container.cmd.clone();
        }
        user.entrypoint = container.entrypoint.clone();
    }
    if user.healthcheck.is_none() {
        user.healthcheck = container.healthcheck.clone();
    }
    if user.working_dir.is_empty() {
        user.working_dir = container.working_dir.clone();
    }
    if let Some(cvols) = &container.volumes {
        let vols = user.volumes.get_or_insert_with(Default::default);
        for (k, v) in cvols {
            vols.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if user.on_build.as_ref().is_none_or(|o| o.is_empty()) {
        user.on_build = container.on_build.clone();
    }
    if user.stop_signal.is_empty() {
        user.stop_signal = container.stop_signal.clone();
    }
    if user.shell.is_none() {
        user.shell = container.shell.clone();
    }
}

impl ImageStore {
    /// Registers `layer` (the container's changes as a layer tar) on top of the parent
    /// image's layers and stores the new image. Returns its id `sha256:<hex>`.
    pub fn commit_container(
        &self,
        layer: &mut dyn Read,
        info: CommitInfo<'_>,
    ) -> ApiResult<String> {
        let reference = match info.repo_tag.filter(|s| !s.is_empty()) {
            Some(s) => {
                let r = Reference::parse_with_default_tag(s)?;
                if r.digest.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "cannot commit to digest reference {s:?}"
                    )));
                }
                Some(r)
            }
            None => None,
        };
        let parent = self.resolve(info.parent_image)?;
        let layer = self
            .layers
            .register(layer, parent.layers.last().map(String::as_str), None)?;
        let created = now_rfc3339();
        let mut file: ImageConfigFile = parent.config.clone();
        let created_by = info
            .container_config
            .cmd
            .clone()
            .unwrap_or_default()
            .join(" ");
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        file.author = opt(info.author);
        file.comment = opt(info.comment);
        file.config = Some(info.config);
        file.container = Some(info.container_id.to_string());
        file.container_config = Some(info.container_config);
        file.created = Some(created.clone());
        file.docker_version = Some(env!("CARGO_PKG_VERSION").to_string());
        file.history.push(History {
            created: Some(created),
            created_by: opt(&created_by),
            author: opt(info.author),
            comment: opt(info.comment),
            empty_layer: None,
        });
        file.rootfs.diff_ids.push(layer.diff_id.clone());
        let mut chains = parent.layers.clone();
        chains.push(layer.chain_id.clone());
        let bytes = serde_json::to_vec(&file)?;
        let (id, _) = self.commit_image(&bytes, &chains)?;
        if let Some(r) = reference {
            self.set_ref(&r, &id)?;
            self.event("tag", &id, &r.familiar());
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_config_wins_and_container_fills_the_rest() {
        let mut user = ContainerConfig {
            env: Some(vec!["A=1".into(), "B=user".into()]),
            cmd: Some(vec!["cat".into(), "/f".into()]),
            ..Default::default()
        };
        let container = ContainerConfig {
            env: Some(vec!["B=ctr".into(), "PATH=/bin".into()]),
            cmd: Some(vec!["sleep".into(), "1".into()]),
            working_dir: "/srv".into(),
            user: "1000".into(),
            ..Default::default()
        };
        merge_config(&mut user, &container);
        assert_eq!(
            user.env,
            Some(vec!["A=1".into(), "B=user".into(), "PATH=/bin".into()])
        );
        assert_eq!(user.cmd, Some(vec!["cat".into(), "/f".into()]));
        assert_eq!(user.working_dir, "/srv");
        assert_eq!(user.user, "1000");
        let mut empty = ContainerConfig::default();
        merge_config(&mut empty, &container);
        assert_eq!(empty.cmd, container.cmd);
    }
}
