//! The container process: its argv (with the optional `--init`), environment and rlimits.

use crate::error::{ApiError, ApiResult};
use berth_api::models;
use oci_spec::runtime::{
    Box as ConsoleBox, BoxBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
};

/// The `PATH` dockerd gives a container whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where `--init` puts the init binary inside the container.
pub const INIT_PATH: &str = "/sbin/docker-init";

/// Applies `overrides` on top of `defaults` the way dockerd's `ReplaceOrAppendEnvValues` does:
/// `KEY=value` replaces the same key in place or is appended; a bare `KEY` unsets it.
fn replace_or_append(mut defaults: Vec<String>, overrides: &[String]) -> Vec<String> {
    let key = |e: &str| {
        e.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| e.to_string())
    };
    let mut removed = vec![false; defaults.len()];
    for o in overrides {
        let k = key(o);
        let pos = defaults.iter().position(|d| key(d) == k);
        match (o.contains('='), pos) {
            (false, Some(i)) => removed[i] = true,
            (false, None) => {}
            (true, Some(i)) => {
                defaults[i] = o.clone();
                removed[i] = false;
            }
            (true, None) => {
                defaults.push(o.clone());
                removed.push(false);
            }
        }
    }
    defaults
        .into_iter()
        .zip(removed)
        .filter(|(_, r)| !r)
        .map(|(e, _)| e)
        .collect()
}

/// Merges an image's environment with the container's: image entries first, each overridden
/// in place by the container's entry of the same key, new keys appended; `PATH` gets dockerd's
/// default (in front) when neither sets it.
pub fn merge_env(image_env: &[String], container_env: &[String]) -> Vec<String> {
    let mut env = replace_or_append(image_env.to_vec(), container_env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env
}

/// The environment the process gets (dockerd's `CreateDaemonEnvironment`): default `PATH`,
/// `HOSTNAME`, `TERM=xterm` with a tty, then `Config.Env` on top; `HOME=home` is appended when
/// none is set, as runc does.
pub fn daemon_env(config: &models::ContainerConfig, hostname: &str, home: &str) -> Vec<String> {
    let mut base = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    if config.tty.unwrap_or(false) {
        base.push("TERM=xterm".to_string());
    }
    with_home(
        replace_or_append(base, config.env.as_deref().unwrap_or_default()),
        home,
    )
}

/// Appends `HOME=home` unless `env` already has a non-empty `HOME`.
pub fn with_home(mut env: Vec<String>, home: &str) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("HOME=") && e.len() > 5) {
        env.retain(|e| e != "HOME=");
        env.push(format!("HOME={home}"));
    }
    env
}

/// `Entrypoint` followed by `Cmd`; a container with neither is refused with dockerd's
/// `No command specified` (400).
pub fn process_args(config: &models::ContainerConfig) -> ApiResult<Vec<String>> {
    let mut args: Vec<String> = config.entrypoint.clone().unwrap_or_default();
    args.extend(config.cmd.clone().unwrap_or_default());
    if args.is_empty() {
        return Err(ApiError::BadRequest("No command specified".into()));
    }
    Ok(args)
}

/// The initial size of the container's tty from `HostConfig.ConsoleSize` (`[height, width]`,
/// which the CLI fills from its terminal): `None` without a tty or when the CLI sent `[0,0]`.
/// The shim applies it to the pty before the process starts, so the first `stty size` in the
/// container already sees it (the CLI's `resize` only comes after the start).
pub fn console_size(
    config: &models::ContainerConfig,
    host_config: &models::HostConfig,
) -> Option<ConsoleBox> {
    if !config.tty.unwrap_or(false) {
        return None;
    }
    let size = host_config.console_size.as_deref()?;
    let (h, w) = (*size.first()?, *size.get(1)?);
    if h == 0 && w == 0 {
        return None;
    }
    BoxBuilder::default()
        .height(u64::try_from(h).ok()?)
        .width(u64::try_from(w).ok()?)
        .build()
        .ok()
}

/// Converts `HostConfig.Ulimits` into spec rlimits (`nofile` → `RLIMIT_NOFILE`). Negative
/// values mean unlimited, as Go's `uint64(-1)` does for dockerd.
pub fn rlimits(ulimits: &[models::ResourcesUlimits]) -> ApiResult<Vec<PosixRlimit>> {
    let mut out = Vec::with_capacity(ulimits.len());
    for u in ulimits {
        let name = u.name.clone().unwrap_or_default();
        let typ: PosixRlimitType = serde_json::from_value(serde_json::Value::String(format!(
            "RLIMIT_{}",
            name.to_ascii_uppercase()
        )))
        .map_err(|_| ApiError::BadRequest(format!("invalid ulimit type: {name}")))?;
        let soft = u.soft.unwrap_or(0);
        let hard = u.hard.unwrap_or(0);
        if soft >= 0 && hard >= 0 && soft > hard {
            return Err(ApiError::BadRequest(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
        let r = PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft as u64)
            .hard(hard as u64)
            .build()
            .map_err(|e| ApiError::internal("build rlimit", e))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merge_env_overrides_in_place_and_adds_path() {
        let img = s(&["PATH=/img/bin", "A=1", "B=2"]);
        let got = merge_env(&img, &s(&["B=3", "C=4", "A"]));
        assert_eq!(got, s(&["PATH=/img/bin", "B=3", "C=4"]));
        let no_path = merge_env(&s(&["A=1"]), &s(&["A=2"]));
        assert_eq!(no_path, s(&[&format!("PATH={DEFAULT_PATH}"), "A=2"]));
        // values may contain '='
        assert_eq!(
            merge_env(&s(&["PATH=/x"]), &s(&["Q=a=b"])),
            s(&["PATH=/x", "Q=a=b"])
        );
    }

    #[test]
    fn daemon_env_adds_hostname_and_term() {
        let cfg = models::ContainerConfig {
            tty: Some(true),
            env: Some(s(&["PATH=/mine", "X=1"])),
            ..Default::default()
        };
        assert_eq!(
            daemon_env(&cfg, "abc", "/root"),
            s(&[
                "PATH=/mine",
                "HOSTNAME=abc",
                "TERM=xterm",
                "X=1",
                "HOME=/root"
            ])
        );
        let plain = models::ContainerConfig::default();
        assert_eq!(
            daemon_env(&plain, "h", "/"),
            s(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h", "HOME=/"])
        );
        let own_home = models::ContainerConfig {
            env: Some(s(&["HOME=/data"])),
            ..Default::default()
        };
        assert!(daemon_env(&own_home, "h", "/root").ends_with(&s(&["HOME=/data"])));
        let empty_home = models::ContainerConfig {
            env: Some(s(&["HOME="])),
            ..Default::default()
        };
        assert!(daemon_env(&empty_home, "h", "/root").ends_with(&s(&["HOME=/root"])));
    }

    #[test]
    fn args_join_entrypoint_and_cmd() {
        let cfg = models::ContainerConfig {
            entrypoint: Some(s(&["/bin/sh", "-c"])),
            cmd: Some(s(&["echo hi"])),
            ..Default::default()
        };
        assert_eq!(
            process_args(&cfg).expect("should succeed"),
            s(&["/bin/sh", "-c", "echo hi"])
        );
        let err = process_args(&models::ContainerConfig::default()).expect_err("should fail");
        assert_eq!(err, ApiError::BadRequest("No command specified".into()));
    }

    #[test]
    fn console_size_only_with_a_tty_and_a_size() {
        let tty = models::ContainerConfig {
            tty: Some(true),
            ..Default::default()
        };
        let hc = |v: Vec<usize>| models::HostConfig {
            console_size: Some(v),
            ..Default::default()
        };
        let b = console_size(&tty, &hc(vec![37, 111])).expect("a size");
        assert_eq!((b.height(), b.width()), (37, 111));
        assert!(console_size(&tty, &hc(vec![0, 0])).is_none());
        assert!(console_size(&tty, &hc(vec![5])).is_none());
        assert!(console_size(&tty, &models::HostConfig::default()).is_none());
        assert!(console_size(&models::ContainerConfig::default(), &hc(vec![37, 111])).is_none());
    }

    #[test]
    fn ulimits_convert() {
        let u = |n: &str, s: i64, h: i64| models::ResourcesUlimits {
            name: Some(n.into()),
            soft: Some(s),
            hard: Some(h),
        };
        let r = rlimits(&[u("nofile", 1024, 2048), u("core", -1, -1)]).expect("should succeed");
        assert_eq!(r[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((r[0].soft(), r[0].hard()), (1024, 2048));
        assert_eq!(r[1].typ(), PosixRlimitType::RlimitCore);
        assert_eq!(r[1].soft(), u64::MAX);
        assert!(rlimits(&[u("bogus", 1, 1)])
            .expect_err("should fail")
            .to_string()
            .contains("invalid ulimit type"));
        assert_eq!(
            rlimits(&[u("nproc", 5, 4)])
                .expect_err("should fail")
                .status(),
            400
        );
    }
}
