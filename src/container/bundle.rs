//! Writing what a shim needs before it starts: the OCI bundle (`config.json` from
//! [`super::spec`]) and the shim's own `config.json` ([`berth_api::shim::ShimConfig`]).

use super::record::Record;
use super::spec::{EtcPaths, SpecInput};
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::network::EtcFiles;
use berth_api::shim::{LogConfig, ShimConfig, SHIM_PROTOCOL_VERSION};
use std::path::{Path, PathBuf};

/// Static init binaries used for `--init`, in order of preference.
const INIT_BINARIES: &[&str] = &[
    "/usr/bin/tini-static",
    "/usr/bin/docker-init",
    "/usr/bin/tini",
];

/// The container's Config in the spec builder's type.
pub fn spec_config(rec: &Record) -> ApiResult<berth_api::models::ContainerConfig> {
    let v = serde_json::to_value(&rec.config)?;
    Ok(serde_json::from_value(v)?)
}

/// Parses json-file `max-size` / `max-file` from the container's LogConfig.
pub fn log_config(rec: &Record, path: PathBuf) -> ApiResult<Option<LogConfig>> {
    let lc = rec.host_config.log_config.clone().unwrap_or_default();
    if lc.typ.as_deref() == Some("none") {
        return Ok(None);
    }
    let cfg = lc.config.unwrap_or_default();
    let max_size = match cfg.get("max-size") {
        Some(s) => Some(
            super::create::parse_size(s)
                .map_err(|_| ApiError::BadRequest(format!("invalid max-size {s:?}")))?,
        ),
        None => None,
    };
    let max_file = match cfg.get("max-file") {
        Some(n) => n
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("invalid max-file {n:?}")))?
            .max(1),
        None => 1,
    };
    Ok(Some(LogConfig {
        path,
        max_size: max_size.filter(|s| *s > 0),
        max_file,
    }))
}

fn write_file(path: &Path, data: &[u8]) -> ApiResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::internal(&format!("create {}", dir.display()), e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .map_err(|e| ApiError::internal(&format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| ApiError::internal(&format!("rename {}", path.display()), e))
}

impl Containers {
    /// Writes `<container-dir>/bundle/config.json`; returns the bundle directory.
    pub(crate) fn write_bundle(
        &self,
        rec: &Record,
        rootfs: &Path,
        netns: Option<&Path>,
        etc: &EtcFiles,
        lxcfs: Option<&Path>,
    ) -> ApiResult<PathBuf> {
        let config = spec_config(rec)?;
        let init = INIT_BINARIES.iter().map(Path::new).find(|p| p.exists());
        let input = SpecInput {
            id: &rec.id,
            rootfs,
            config: &config,
            host_config: &rec.host_config,
            netns,
            etc: Some(EtcPaths {
                resolv_conf: Some(&etc.resolv_conf),
                hostname: Some(&etc.hostname),
                hosts: Some(&etc.hosts),
            }),
            cgroup_path: self.paths.cgroup_path(&rec.id),
            init_binary: init,
            shm_dir: None,
            lxcfs,
        };
        let mut spec = super::spec::build(&input)?;
        if let Some(e) = self.elastic.get() {
            e.adjust_spec(rec, &mut spec);
        }
        let bundle = self.paths.container_dir(&rec.id).join("bundle");
        let data = serde_json::to_vec_pretty(&spec)?;
        write_file(&bundle.join("config.json"), &data)?;
        Ok(bundle)
    }

    /// Writes `<shim-dir>/config.json`; returns its path.
    pub(crate) fn write_shim_config(&self, rec: &Record, bundle: &Path) -> ApiResult<PathBuf> {
        let id = &rec.id;
        let dir = self.paths.shim_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(&format!("create {}", dir.display()), e))?;
        std::fs::create_dir_all(self.paths.runtime_root())
            .map_err(|e| ApiError::internal("create runtime root", e))?;
        let cfg = ShimConfig {
            version: SHIM_PROTOCOL_VERSION,
            id: id.clone(),
            bundle: bundle.to_path_buf(),
            runtime_root: self.paths.runtime_root(),
            ctl_socket: self.paths.ctl_socket(id),
            exit_file: self.paths.exit_file(id),
            log: log_config(rec, self.paths.log_path(id))?,
            tty: rec.tty(),
            open_stdin: rec.config.open_stdin.unwrap_or(false),
            stdin_once: rec.config.stdin_once.unwrap_or(false),
            shim_log: dir.join("shim.log"),
        };
        let path = dir.join("config.json");
        write_file(&path, &serde_json::to_vec_pretty(&cfg)?)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_become_shim_log_config() -> ApiResult<()> {
        let mut r = super::super::record::tests_support::record();
        let mut hc = berth_api::models::HostConfig::default();
        super::super::create::fill_host_config(
            &mut hc,
            &std::collections::HashMap::from([
                ("max-size".to_string(), "1k".to_string()),
                ("max-file".to_string(), "3".to_string()),
            ]),
        )?;
        r.host_config = hc;
        let lc =
            log_config(&r, PathBuf::from("/x/log"))?.ok_or(ApiError::Internal("none".into()))?;
        assert_eq!(lc.max_size, Some(1024));
        assert_eq!(lc.max_file, 3);
        Ok(())
    }
}
