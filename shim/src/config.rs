//! The shim's command line and its [`ShimConfig`] file.

use anyhow::{bail, Context, Result};
use berth_api::shim::{ShimConfig, SHIM_PROTOCOL_MIN, SHIM_PROTOCOL_VERSION};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The parsed command line: `berth-shim --config <path>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// Path of the `ShimConfig` JSON file.
    pub config: PathBuf,
}

/// Parses `argv` (program name first).
pub fn parse_args<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Args> {
    let mut it = argv.into_iter().skip(1);
    let mut config = None;
    while let Some(arg) = it.next() {
        if arg == "--config" {
            config = Some(PathBuf::from(it.next().context("--config needs a path")?));
        } else if let Some(p) = arg.to_str().and_then(|s| s.strip_prefix("--config=")) {
            config = Some(PathBuf::from(p));
        } else {
            bail!("unknown argument {arg:?}");
        }
    }
    let config = config.context("usage: berth-shim --config <shim-dir>/config.json")?;
    Ok(Args { config })
}

/// Reads and checks the config file the daemon wrote.
pub fn load(path: &Path) -> Result<ShimConfig> {
    let data =
        std::fs::read(path).with_context(|| format!("read shim config {}", path.display()))?;
    let cfg: ShimConfig = serde_json::from_slice(&data)
        .with_context(|| format!("parse shim config {}", path.display()))?;
    if !(SHIM_PROTOCOL_MIN..=SHIM_PROTOCOL_VERSION).contains(&cfg.version) {
        bail!(
            "shim config version {} not supported (supported {}..={})",
            cfg.version,
            SHIM_PROTOCOL_MIN,
            SHIM_PROTOCOL_VERSION
        );
    }
    if cfg.id.is_empty() {
        bail!("shim config has an empty container id");
    }
    Ok(cfg)
}

/// The directory that holds the control socket (the shim's own directory).
pub fn shim_dir(cfg: &ShimConfig) -> PathBuf {
    cfg.ctl_socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn config_flag_forms() -> Result<()> {
        let a = parse_args(argv(&["berth-shim", "--config", "/x/config.json"]))?;
        assert_eq!(a.config, PathBuf::from("/x/config.json"));
        let a = parse_args(argv(&["berth-shim", "--config=/y.json"]))?;
        assert_eq!(a.config, PathBuf::from("/y.json"));
        assert!(parse_args(argv(&["berth-shim"])).is_err());
        assert!(parse_args(argv(&["berth-shim", "--bogus"])).is_err());
        Ok(())
    }

    #[test]
    fn load_rejects_bad_versions() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cfg = ShimConfig {
            version: SHIM_PROTOCOL_VERSION,
            id: "c1".into(),
            bundle: "/b".into(),
            runtime_root: "/r".into(),
            ctl_socket: dir.path().join("ctl"),
            exit_file: "/e".into(),
            log: None,
            tty: false,
            open_stdin: false,
            stdin_once: false,
            shim_log: "/l".into(),
        };
        let p = dir.path().join("config.json");
        std::fs::write(&p, serde_json::to_vec(&cfg)?)?;
        assert_eq!(load(&p)?, cfg);
        assert_eq!(shim_dir(&cfg), dir.path());
        cfg.version = SHIM_PROTOCOL_VERSION + 1;
        std::fs::write(&p, serde_json::to_vec(&cfg)?)?;
        assert!(load(&p).is_err());
        Ok(())
    }
}
