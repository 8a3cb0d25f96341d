//! Seccomp: Docker's profile format (the built-in default and `--security-opt seccomp=<json>`),
//! filtered for this host (architecture, kernel version, the container's capabilities) and
//! converted into the spec's `linux.seccomp`.

mod default;

pub use default::default_profile;

use crate::error::{ApiError, ApiResult};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

/// A seccomp profile in Docker's JSON format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for syscalls no rule matches.
    pub default_action: Option<LinuxSeccompAction>,
    /// Errno for the default action when it is `SCMP_ACT_ERRNO`.
    pub default_errno_ret: Option<u32>,
    /// Legacy flat architecture list (exclusive with `archMap`).
    pub architectures: Option<Vec<String>>,
    /// Native architecture → the sub-architectures to add with it.
    pub arch_map: Option<Vec<ArchMap>>,
    /// The rules.
    pub syscalls: Option<Vec<Syscall>>,
    /// Filter flags.
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    /// Notify listener socket.
    pub listener_path: Option<String>,
    /// Notify listener metadata.
    pub listener_metadata: Option<String>,
}

/// One `archMap` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// `SCMP_ARCH_*` of the native architecture.
    pub architecture: String,
    /// Extra `SCMP_ARCH_*` to allow with it.
    pub sub_architectures: Option<Vec<String>>,
}

/// One rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscall {
    /// Legacy single name (exclusive with `names`).
    pub name: Option<String>,
    /// Syscall names.
    pub names: Option<Vec<String>>,
    /// What to do when it matches.
    pub action: Option<LinuxSeccompAction>,
    /// Errno for `SCMP_ACT_ERRNO`.
    pub errno_ret: Option<u32>,
    /// Argument conditions (all must hold).
    pub args: Option<Vec<Arg>>,
    /// Free text.
    pub comment: Option<String>,
    /// Only when all of these hold.
    pub includes: Option<Filter>,
    /// Not when any of these holds.
    pub excludes: Option<Filter>,
}

/// An argument condition, runc's reading: for `SCMP_CMP_MASKED_EQ`, `value` is the mask and
/// `valueTwo` the value the masked argument must equal.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    /// Argument index.
    pub index: usize,
    /// First operand.
    pub value: u64,
    /// Second operand.
    #[serde(default)]
    pub value_two: u64,
    /// Comparison.
    pub op: LinuxSeccompOperator,
}

/// `includes` / `excludes` conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Go architecture names (`amd64`, `arm64`, ...).
    pub arches: Option<Vec<String>>,
    /// Capability names (`CAP_SYS_ADMIN`).
    pub caps: Option<Vec<String>>,
    /// Minimum kernel version, `major.minor`.
    pub min_kernel: Option<String>,
}

/// What the profile is filtered against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The container's bounding capabilities (`CAP_*` names).
    pub caps: &'a [String],
    /// Go name of the host architecture (`amd64`).
    pub go_arch: &'a str,
    /// `SCMP_ARCH_*` of the host architecture.
    pub native: &'a str,
    /// Host kernel version (major, minor).
    pub kernel: (u32, u32),
}

/// Go architecture name and seccomp architecture of the machine berthd was built for.
pub fn native_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "x86" => ("386", "SCMP_ARCH_X86"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "arm" => ("arm", "SCMP_ARCH_ARM"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
        "loongarch64" => ("loong64", "SCMP_ARCH_LOONGARCH64"),
        _ => ("", "SCMP_ARCH_NATIVE"),
    }
}

/// Parses `major.minor[...]` into a comparable pair.
pub fn parse_kernel(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Parses a profile sent inline with `--security-opt seccomp=<json>`.
pub fn parse_profile(json: &str) -> ApiResult<Profile> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::BadRequest(format!("Decoding seccomp profile failed: {e}")))
}

fn arch(name: &str) -> ApiResult<Arch> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        ApiError::BadRequest(format!("seccomp profile: unknown architecture {name:?}"))
    })
}

fn filter_holds(f: &Filter, t: &Target, all_caps: bool) -> ApiResult<Option<bool>> {
    let mut checks = Vec::new();
    if let Some(a) = f.arches.as_ref().filter(|a| !a.is_empty()) {
        checks.push(a.iter().any(|x| x == t.go_arch));
    }
    if let Some(c) = f.caps.as_ref().filter(|c| !c.is_empty()) {
        let has = |cap: &String| t.caps.contains(cap);
        checks.push(if all_caps {
            c.iter().all(has)
        } else {
            c.iter().any(has)
        });
    }
    if let Some(k) = f.min_kernel.as_ref().filter(|k| !k.is_empty()) {
        let want = parse_kernel(k).ok_or_else(|| {
            ApiError::BadRequest(format!("seccomp profile: invalid minKernel {k:?}"))
        })?;
        checks.push(t.kernel >= want);
    }
    if checks.is_empty() {
        return Ok(None);
    }
    Ok(Some(if all_caps {
        checks.iter().all(|c| *c)
    } else {
        checks.iter().any(|c| *c)
    }))
}

/// Converts a Docker profile for this host. Rules whose `excludes` match or whose `includes`
/// do not are dropped, as dockerd does.
///
/// libcontainer 0.7 hands `value` to libseccomp as the datum and `valueTwo` as the mask for
/// `SCMP_CMP_MASKED_EQ` (the reverse of runc), so the two are swapped here to keep Docker's
/// meaning: `(arg & mask) == datum`.
pub fn to_oci(p: &Profile, t: &Target) -> ApiResult<LinuxSeccomp> {
    let mut out = LinuxSeccomp::default();
    let default_action = p.default_action.ok_or_else(|| {
        ApiError::BadRequest("Decoding seccomp profile failed: missing defaultAction".into())
    })?;
    out.set_default_action(default_action);
    out.set_default_errno_ret(p.default_errno_ret);

    let flat = p.architectures.clone().unwrap_or_default();
    let map = p.arch_map.clone().unwrap_or_default();
    if !flat.is_empty() && !map.is_empty() {
        return Err(ApiError::BadRequest(
            "'architectures' and 'archMap' were specified in the seccomp profile, use either 'architectures' or 'archMap'"
                .into(),
        ));
    }
    let mut arches = Vec::new();
    for a in &flat {
        arches.push(arch(a)?);
    }
    for m in map.iter().filter(|m| m.architecture == t.native) {
        arches.push(arch(&m.architecture)?);
        for s in m.sub_architectures.as_deref().unwrap_or_default() {
            arches.push(arch(s)?);
        }
    }
    out.set_architectures((!arches.is_empty()).then_some(arches));
    out.set_flags(p.flags.clone().filter(|f| !f.is_empty()));
    out.set_listener_path(p.listener_path.clone().map(Into::into));
    out.set_listener_metadata(p.listener_metadata.clone());

    let mut rules = Vec::new();
    for call in p.syscalls.as_deref().unwrap_or_default() {
        let names = match (&call.name, &call.names) {
            (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => {
                return Err(ApiError::BadRequest(
                    "'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'".into(),
                ))
            }
            (Some(n), _) if !n.is_empty() => vec![n.clone()],
            (_, Some(ns)) => ns.clone(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            continue;
        }
        if let Some(ex) = &call.excludes {
            if filter_holds(ex, t, false)? == Some(true) {
                continue;
            }
        }
        if let Some(inc) = &call.includes {
            if filter_holds(inc, t, true)? == Some(false) {
                continue;
            }
        }
        let action = call.action.ok_or_else(|| {
            ApiError::BadRequest(format!("seccomp profile: rule for {names:?} has no action"))
        })?;
        let mut rule = LinuxSyscall::default();
        rule.set_names(names);
        rule.set_action(action);
        rule.set_errno_ret(call.errno_ret);
        let mut args: Vec<LinuxSeccompArg> = Vec::new();
        for a in call.args.as_deref().unwrap_or_default() {
            let b = LinuxSeccompArgBuilder::default().index(a.index).op(a.op);
            let b = if a.op == LinuxSeccompOperator::ScmpCmpMaskedEq {
                b.value(a.value_two).value_two(a.value)
            } else if a.value_two != 0 {
                b.value(a.value).value_two(a.value_two)
            } else {
                b.value(a.value)
            };
            args.push(
                b.build()
                    .map_err(|e| ApiError::internal("build seccomp rule", e))?,
            );
        }
        rule.set_args((!args.is_empty()).then_some(args));
        rules.push(rule);
    }
    out.set_syscalls(Some(rules));
    Ok(out)
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
