//! Confinement of exec processes that libcontainer 0.7 leaves out.
//!
//! When libcontainer adapts the init's spec for a tenant (an exec) it keeps only the
//! namespaces, cgroup path, personality and time offsets of `linux`: the seccomp profile is
//! lost, so `docker exec` would run unfiltered. [`prepare`] puts it back: the exec runs with
//! [`SeccompExecutor`], which loads the container's filter in the exec'd process right before
//! `execve`. Without `no_new_privileges` loading a filter needs `CAP_SYS_ADMIN`, which the
//! process has already dropped by then; so the process is started with `CAP_SYS_ADMIN` and
//! `CAP_SETPCAP` added to its effective and permitted sets, and the executor drops back to the
//! real capabilities right after the filter is in place (the order runc uses: filter first,
//! then drop). `docker exec --privileged` gets every capability the shim itself holds.

use anyhow::{Context, Result};
use libcontainer::capabilities::drop_privileges;
use libcontainer::oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec,
};
use libcontainer::seccomp::initialize_seccomp;
use libcontainer::syscall::syscall::create_syscall;
use libcontainer::workload::default::get_executor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use std::collections::HashMap;

/// Runs the default executor after loading the container's seccomp filter (and dropping the
/// capabilities that were only lent for loading it).
#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    drop_to: Option<LinuxCapabilities>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match initialize_seccomp(&self.seccomp) {
            Ok(None) => {}
            Ok(Some(fd)) => {
                let _ = nix::unistd::close(fd);
                return Err(ExecutorError::Other(
                    "seccomp notify listeners are not supported for exec".into(),
                ));
            }
            Err(e) => {
                return Err(ExecutorError::Other(format!(
                    "load the container's seccomp filter: {e}"
                )))
            }
        }
        if let Some(caps) = &self.drop_to {
            drop_privileges(caps, create_syscall().as_ref()).map_err(|e| {
                ExecutorError::Other(format!("drop capabilities after seccomp: {e}"))
            })?;
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        get_executor().setup_envs(envs)
    }
}

/// Adjusts an exec process for the container's seccomp profile: returns the executor that
/// loads it, or `None` when the container runs unconfined.
pub fn prepare(spec: &Spec, proc: &mut Process) -> Option<SeccompExecutor> {
    let seccomp = spec.linux().as_ref()?.seccomp().clone()?;
    if proc.no_new_privileges() == Some(true) {
        return Some(SeccompExecutor {
            seccomp,
            drop_to: None,
        });
    }
    let target = proc.capabilities().clone().unwrap_or_default();
    let lend = |set: &Option<Capabilities>| {
        set.clone().map(|mut s| {
            s.insert(Capability::SysAdmin);
            s.insert(Capability::Setpcap);
            s
        })
    };
    let mut lent = target.clone();
    lent.set_effective(lend(target.effective()))
        .set_permitted(lend(target.permitted()));
    proc.set_capabilities(Some(lent));
    Some(SeccompExecutor {
        seccomp,
        drop_to: Some(target),
    })
}

/// Every capability the shim holds (`CapEff` of its own status), by spec name: what
/// `exec --privileged` may be given. `names[i]` must be capability number `i`.
pub fn held_capabilities(names: &[&str]) -> Result<Capabilities> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let held = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    let names: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 64 && held & (1u64 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    serde_json::from_value(serde_json::json!(names)).context("capability names")
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{Linux, LinuxSeccompAction};

    fn spec_with_seccomp() -> Spec {
        let mut sc = LinuxSeccomp::default();
        sc.set_default_action(LinuxSeccompAction::ScmpActErrno);
        let mut linux = Linux::default();
        linux.set_seccomp(Some(sc));
        let mut spec = Spec::default();
        spec.set_linux(Some(linux));
        spec
    }

    fn caps(v: &[Capability]) -> Capabilities {
        v.iter().copied().collect()
    }

    #[test]
    fn lends_admin_caps_only_while_loading() {
        let spec = spec_with_seccomp();
        let mut proc = Process::default();
        proc.set_no_new_privileges(None);
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(caps(&[Capability::Chown])))
            .set_effective(Some(caps(&[Capability::Chown])))
            .set_permitted(Some(caps(&[Capability::Chown])))
            .set_inheritable(None)
            .set_ambient(None);
        proc.set_capabilities(Some(c.clone()));
        let ex = prepare(&spec, &mut proc).expect("confined");
        assert_eq!(ex.drop_to.as_ref(), Some(&c));
        let lent = proc.capabilities().clone().expect("caps");
        let eff = lent.effective().clone().expect("effective");
        assert!(eff.contains(&Capability::SysAdmin) && eff.contains(&Capability::Setpcap));
        assert_eq!(lent.bounding(), c.bounding(), "bounding is never widened");
    }

    #[test]
    fn no_new_privileges_needs_no_lending_and_unconfined_needs_nothing() {
        let spec = spec_with_seccomp();
        let mut proc = Process::default();
        proc.set_no_new_privileges(Some(true));
        let before = proc.capabilities().clone();
        let ex = prepare(&spec, &mut proc).expect("confined");
        assert!(ex.drop_to.is_none());
        assert_eq!(proc.capabilities(), &before);
        let mut unconfined = Spec::default();
        unconfined.set_linux(Some(Linux::default()));
        assert!(prepare(&unconfined, &mut Process::default()).is_none());
    }

    #[test]
    fn privileged_exec_gets_only_held_caps() -> Result<()> {
        let all = held_capabilities(&["CAP_CHOWN", "CAP_DAC_OVERRIDE"])?;
        assert!(all.len() <= 2);
        Ok(())
    }
}
