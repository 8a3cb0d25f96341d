//! `docker import`: a root filesystem tarball (plain or gzip) becomes a one-layer image
//! whose config is built from `changes` (Dockerfile instructions).

use super::changes::apply_changes;
use super::config::{now_rfc3339, ContainerConfig, History, ImageConfigFile, RootFs};
use super::reference::Reference;
use super::{host_arch, ImageStore};
use crate::error::{ApiError, ApiResult};
use std::io::Read;

impl ImageStore {
    /// Imports a rootfs tarball; tags it `repo_tag` (`name[:tag]`) when given. `message`
    /// becomes the comment (default `Imported from -`). Returns the id `sha256:<hex>`.
    pub fn import(
        &self,
        src: &mut dyn Read,
        repo_tag: Option<&str>,
        changes: &[String],
        message: &str,
    ) -> ApiResult<String> {
        let reference = match repo_tag.filter(|s| !s.is_empty()) {
            Some(s) => {
                let r = Reference::parse_with_default_tag(s)?;
                if r.digest.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "cannot import digest reference {s:?}"
                    )));
                }
                Some(r)
            }
            None => None,
        };
        let mut config = ContainerConfig::default();
        apply_changes(&mut config, changes)?;
        let layer = self.layers.register(src, None, None)?;
        let created = now_rfc3339();
        let msg = if message.is_empty() {
            "Imported from -".to_string()
        } else {
            message.to_string()
        };
        let file = ImageConfigFile {
            architecture: host_arch().to_string(),
            comment: Some(msg.clone()),
            config: Some(config),
            container_config: Some(ContainerConfig::default()),
            created: Some(created.clone()),
            docker_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            history: vec![History {
                created: Some(created),
                comment: Some(msg),
                ..Default::default()
            }],
            os: "linux".into(),
            rootfs: RootFs {
                typ: "layers".into(),
                diff_ids: vec![layer.diff_id.clone()],
            },
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&file)?;
        let (id, _) = self.commit_image(&bytes, std::slice::from_ref(&layer.chain_id))?;
        // dockerd tags first (a `tag` event, and no `untag` for an image the name is taken
        // from), then announces the import.
        if let Some(r) = reference {
            self.set_ref(&r, &id)?;
            self.event("tag", &id, &r.familiar());
        }
        self.event("import", &id, &id);
        Ok(id)
    }
}
