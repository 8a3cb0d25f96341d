//! The only module that calls libcontainer: create and start the init, exec tenants, kill
//! every process, pause/resume and delete; plus turning libcontainer's errors into the
//! wording the docker CLI maps to exit codes (127 for not found, 126 for permission).

use crate::stdio::ChildIo;
use anyhow::{Context, Result};
use berth_api::shim::{ExecParams, ShimConfig};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::{LinuxCapabilities, Process, Spec};
use libcontainer::syscall::syscall::SyscallType;
use std::path::{Path, PathBuf};

/// Every capability name in kernel order, for `exec --privileged` (which gets those the shim
/// holds).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The error of a failed create/exec, with the parts of its chain joined by ": ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Rewrites libcontainer's text the way runc words the same failures, so the CLI's
/// substring checks (`executable file not found`, `no such file or directory`,
/// `permission denied`) see them.
pub fn docker_message(chain: &str, arg0: &str) -> String {
    let lower_errno = chain
        .replace("No such file or directory", "no such file or directory")
        .replace("Permission denied", "permission denied")
        .replace("Is a directory", "is a directory");
    let body = if chain.contains("not found in $PATH") {
        format!("exec: \"{arg0}\": executable file not found in $PATH")
    } else if chain.contains("does not have correct permissions") {
        format!("exec: \"{arg0}\": permission denied")
    } else {
        lower_errno
    };
    format!("unable to start container process: {body}")
}

/// Exit code Docker records for an exec that could not start.
pub fn exec_failure_code(message: &str) -> i32 {
    if message.contains("executable file not found") {
        127
    } else {
        126
    }
}

/// libcontainer reports a failed `chdir` as a bare "failed to unix syscall" (the errno stays
/// in the container's init). After a failure, look at the cwd in the rootfs ourselves and
/// word it as runc does; `None` when the cwd looks fine or lies under a mount.
pub fn diagnose_cwd(spec: &Spec, bundle: &Path, cwd: &Path) -> Option<String> {
    let root = spec.root().as_ref()?.path();
    let root = if root.is_absolute() {
        root.clone()
    } else {
        bundle.join(root)
    };
    let rel = cwd.strip_prefix("/").ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    let under_mount = spec.mounts().as_ref().is_some_and(|ms| {
        ms.iter()
            .any(|m| m.destination() != Path::new("/") && cwd.starts_with(m.destination()))
    });
    if under_mount {
        return None;
    }
    let what = match std::fs::metadata(root.join(rel)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such file or directory",
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "permission denied",
        Ok(m) if !m.is_dir() => "not a directory",
        _ => return None,
    };
    Some(format!(
        "error during container init: error changing to cwd: chdir to cwd ({:?}) set in config.json failed: {what}",
        cwd.display().to_string()
    ))
}

/// The message for a failed create/exec: the cwd diagnosis when libcontainer lost the errno.
fn failure(chain: String, spec: &Spec, bundle: &Path, cwd: &Path, arg0: &str) -> String {
    if chain.contains("failed to unix syscall") {
        if let Some(d) = diagnose_cwd(spec, bundle, cwd) {
            return format!("unable to start container process: {d}");
        }
    }
    docker_message(&chain, arg0)
}

/// The OCI spec of the bundle.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).with_context(|| format!("load OCI spec {}", path.display()))
}

/// The spec's `linux.cgroupsPath`.
pub fn cgroups_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux().as_ref().and_then(|l| l.cgroups_path().clone())
}

fn first_arg(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .and_then(|a| a.first().cloned())
        .unwrap_or_default()
}

/// Removes libcontainer state left by an earlier run of this container id.
fn clear_stale(cfg: &ShimConfig) {
    let dir = cfg.runtime_root.join(&cfg.id);
    if !dir.exists() {
        return;
    }
    tracing::warn!(dir = %dir.display(), "removing stale runtime state");
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            let _ = c.refresh_status();
            if let Err(e) = c.delete(true) {
                tracing::warn!(error = %e, "delete stale container");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Creates the container (init blocked in "created") from the bundle.
/// On failure returns the message for `ShimReady.error`.
pub fn create_init(
    cfg: &ShimConfig,
    io: Option<ChildIo>,
    console: Option<&Path>,
) -> Result<Container, String> {
    let spec = load_spec(&cfg.bundle).map_err(|e| format!("{e:#}"))?;
    std::fs::create_dir_all(&cfg.runtime_root)
        .map_err(|e| format!("create runtime root {}: {e}", cfg.runtime_root.display()))?;
    clear_stale(cfg);
    let mut b = ContainerBuilder::new(cfg.id.clone(), SyscallType::default())
        .with_root_path(&cfg.runtime_root)
        .map_err(|e| error_chain(&e))?
        .with_console_socket(console);
    if let Some(io) = io {
        b = b
            .with_stdin(io.stdin)
            .with_stdout(io.stdout)
            .with_stderr(io.stderr);
    }
    let mut container = b
        .as_init(&cfg.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| {
            let cwd = spec
                .process()
                .as_ref()
                .map(|p| p.cwd().clone())
                .unwrap_or_default();
            failure(error_chain(&e), &spec, &cfg.bundle, &cwd, &first_arg(&spec))
        })?;
    // What libcontainer leaves out of the cgroup, before the init runs.
    if let Err(e) = crate::cgfix::apply(&spec, Path::new("/sys/fs/cgroup")) {
        let _ = container.delete(true);
        return Err(format!("unable to apply cgroup configuration: {e}"));
    }
    Ok(container)
}

/// The process description of an exec, derived from the init's process.
pub fn exec_process(spec: &Spec, p: &ExecParams) -> Result<Process> {
    let mut proc = spec.process().clone().unwrap_or_default();
    proc.set_args(Some(p.args.clone()));
    if !p.env.is_empty() {
        proc.set_env(Some(p.env.clone()));
    }
    if !p.cwd.is_empty() {
        proc.set_cwd(PathBuf::from(&p.cwd));
    }
    proc.set_terminal(Some(p.tty));
    proc.set_console_size(None);
    proc.set_oom_score_adj(None);
    let user = proc.user_mut();
    user.set_uid(p.uid);
    user.set_gid(p.gid);
    user.set_additional_gids(if p.additional_gids.is_empty() {
        None
    } else {
        Some(p.additional_gids.clone())
    });
    if p.privileged {
        let all = crate::exec_seccomp::held_capabilities(ALL_CAPS)?;
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(all.clone()))
            .set_effective(Some(all.clone()))
            .set_permitted(Some(all))
            .set_inheritable(None)
            .set_ambient(None);
        proc.set_capabilities(Some(caps));
    }
    Ok(proc)
}

/// Runs an exec in the container; returns its host pid once it runs (libcontainer waits
/// for the exec to succeed). `process_json` is a scratch path for the process description.
pub fn exec(
    cfg: &ShimConfig,
    p: &ExecParams,
    io: ChildIo,
    console: Option<&Path>,
    process_json: &Path,
) -> Result<i32, String> {
    let spec = load_spec(&cfg.bundle).map_err(|e| format!("{e:#}"))?;
    let mut proc = exec_process(&spec, p).map_err(|e| format!("{e:#}"))?;
    let confine = crate::exec_seccomp::prepare(&spec, &mut proc);
    let data = serde_json::to_vec(&proc).map_err(|e| format!("encode process: {e}"))?;
    std::fs::write(process_json, data)
        .map_err(|e| format!("write {}: {e}", process_json.display()))?;
    let arg0 = p.args.first().cloned().unwrap_or_default();
    let mut builder = ContainerBuilder::new(cfg.id.clone(), SyscallType::default());
    if let Some(executor) = confine {
        builder = builder.with_executor(executor);
    }
    let res = builder
        .with_root_path(&cfg.runtime_root)
        .map_err(|e| error_chain(&e))?
        .with_console_socket(console)
        .with_stdin(io.stdin)
        .with_stdout(io.stdout)
        .with_stderr(io.stderr)
        .as_tenant()
        .with_process(Some(process_json))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(process_json);
    res.map(|pid| pid.as_raw())
        .map_err(|e| failure(error_chain(&e), &spec, &cfg.bundle, proc.cwd(), &arg0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_the_words_the_cli_looks_for() {
        let m = docker_message("failed: executable 'nosuch' not found in $PATH", "nosuch");
        assert!(
            m.contains("exec: \"nosuch\": executable file not found in $PATH"),
            "{m}"
        );
        assert_eq!(exec_failure_code(&m), 127);
        let m = docker_message("chdir: ENOENT: No such file or directory", "sh");
        assert!(m.contains("no such file or directory"), "{m}");
        let m = docker_message(
            "executable '/etc/passwd' at path '\"/etc/passwd\"' does not have correct permissions",
            "/etc/passwd",
        );
        assert!(
            m.ends_with("exec: \"/etc/passwd\": permission denied"),
            "{m}"
        );
        assert_eq!(exec_failure_code(&m), 126);
    }

    #[test]
    fn missing_cwd_is_diagnosed_in_the_rootfs() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("rootfs/srv"))?;
        std::fs::write(dir.path().join("rootfs/file"), "")?;
        let mut spec = Spec::default();
        spec.set_mounts(None);
        let d = diagnose_cwd(&spec, dir.path(), Path::new("/nope"));
        assert!(d.is_some_and(|d| d.ends_with("failed: no such file or directory")));
        let d = diagnose_cwd(&spec, dir.path(), Path::new("/file"));
        assert!(d.is_some_and(|d| d.ends_with("not a directory")));
        assert_eq!(diagnose_cwd(&spec, dir.path(), Path::new("/srv")), None);
        let m = failure(
            "x: failed to unix syscall".into(),
            &spec,
            dir.path(),
            Path::new("/nope"),
            "sh",
        );
        assert!(m.contains("chdir to cwd (\"/nope\")"), "{m}");
        assert_eq!(exec_failure_code(&m), 126);
        Ok(())
    }

    #[test]
    fn exec_process_overrides_the_init_process() -> Result<()> {
        let spec = Spec::default();
        let p = ExecParams {
            args: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec!["A=1".into()],
            cwd: "/tmp".into(),
            uid: 5,
            gid: 6,
            additional_gids: vec![7],
            tty: true,
            privileged: true,
            ..Default::default()
        };
        let proc = exec_process(&spec, &p)?;
        assert_eq!(proc.args().as_deref(), Some(&p.args[..]));
        assert_eq!(proc.env().as_deref(), Some(&p.env[..]));
        assert_eq!(proc.cwd(), Path::new("/tmp"));
        assert_eq!(proc.terminal(), Some(true));
        assert_eq!((proc.user().uid(), proc.user().gid()), (5, 6));
        let caps = proc.capabilities().clone().unwrap_or_default();
        assert_eq!(
            caps.bounding().clone(),
            Some(crate::exec_seccomp::held_capabilities(ALL_CAPS)?)
        );
        Ok(())
    }
}
