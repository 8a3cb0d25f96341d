//! Devices: the device-cgroup rules dockerd starts from, `--device` mappings,
//! `--device-cgroup-rule`, and every host device for `--privileged`.

use crate::error::{ApiError, ApiResult};
use berth_api::models;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Builds one device-cgroup rule.
pub fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// dockerd's `DefaultLinuxSpec` rules: deny everything, allow null/zero/urandom/random/tty and
/// console, deny fuse. (libcontainer appends the runc defaults: mknod, ptmx, pts, tun.)
pub fn default_rules() -> Vec<LinuxDeviceCgroup> {
    let c = Some(LinuxDeviceType::C);
    let mut v = vec![rule(false, None, None, None, "rwm")];
    for (major, minor) in [(1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1)] {
        v.push(rule(true, c, Some(major), Some(minor), "rwm"));
    }
    v.push(rule(false, c, Some(10), Some(229), "rwm"));
    v
}

/// The single rule a privileged container gets: everything.
pub fn privileged_rules() -> Vec<LinuxDeviceCgroup> {
    vec![rule(true, None, None, None, "rwm")]
}

/// A device node on the host as a spec device at `container_path`; `None` if not a device.
fn device_from_path(host: &Path, container_path: &Path) -> std::io::Result<Option<LinuxDevice>> {
    let md = std::fs::symlink_metadata(host)?;
    let ft = md.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let mut d = LinuxDevice::default();
    d.set_path(container_path.to_path_buf());
    d.set_typ(typ);
    d.set_major(libc::major(md.rdev()) as i64);
    d.set_minor(libc::minor(md.rdev()) as i64);
    d.set_file_mode(Some(md.permissions().mode() & 0o7777));
    d.set_uid(Some(md.uid()));
    d.set_gid(Some(md.gid()));
    Ok(Some(d))
}

fn allow_rule(d: &LinuxDevice, access: &str) -> LinuxDeviceCgroup {
    rule(
        true,
        Some(d.typ()),
        Some(d.major()),
        Some(d.minor()),
        access,
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 16 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(ft) if ft.is_dir() => walk(&p, out, depth + 1),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
}

/// One `--device HOST[:CONTAINER[:PERMS]]` mapping (dockerd's `DevicesFromPath`): a device
/// node, or a directory whose device nodes are all added under the container path.
pub fn from_mapping(
    m: &models::DeviceMapping,
) -> ApiResult<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let host = m.path_on_host.clone().unwrap_or_default();
    let in_ctr = m
        .path_in_container
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| host.clone());
    let perms = m
        .cgroup_permissions
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "rwm".into());
    if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) || perms.len() > 3 {
        return Err(ApiError::BadRequest(format!(
            "invalid device mode: {perms}"
        )));
    }
    let gather = |e: String| {
        ApiError::BadRequest(format!(
            "error gathering device information while adding custom device {host:?}: {e}"
        ))
    };
    let resolved = std::fs::canonicalize(&host).map_err(|e| gather(e.to_string()))?;
    match device_from_path(&resolved, Path::new(&in_ctr)) {
        Ok(Some(d)) => {
            let r = allow_rule(&d, &perms);
            return Ok((vec![d], vec![r]));
        }
        Ok(None) => {}
        Err(e) => return Err(gather(e.to_string())),
    }
    let mut devs = Vec::new();
    let mut rules = Vec::new();
    if resolved.is_dir() {
        let mut files = Vec::new();
        walk(&resolved, &mut files, 0);
        files.sort();
        for f in files {
            let Ok(rel) = f.strip_prefix(&resolved) else {
                continue;
            };
            if let Ok(Some(d)) = device_from_path(&f, &Path::new(&in_ctr).join(rel)) {
                rules.push(allow_rule(&d, &perms));
                devs.push(d);
            }
        }
    }
    if devs.is_empty() {
        return Err(gather("not a device node".into()));
    }
    Ok((devs, rules))
}

/// Parses `--device-cgroup-rule` entries (`c 1:3 rwm`, `b *:* m`, `a *:* rwm`).
pub fn parse_cgroup_rule(raw: &str) -> ApiResult<LinuxDeviceCgroup> {
    let bad = || ApiError::BadRequest(format!("invalid device cgroup format '{raw}'"));
    let parts: Vec<&str> = raw.split(' ').collect();
    let [t, nums, access] = parts.as_slice() else {
        return Err(bad());
    };
    let typ = match *t {
        "a" => LinuxDeviceType::A,
        "b" => LinuxDeviceType::B,
        "c" => LinuxDeviceType::C,
        _ => return Err(bad()),
    };
    let (maj, min) = nums.split_once(':').ok_or_else(bad)?;
    let num = |s: &str| -> ApiResult<Option<i64>> {
        if s == "*" {
            return Ok(None);
        }
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map(Some).map_err(|_| bad())
    };
    if access.is_empty()
        || access.len() > 3
        || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
    {
        return Err(bad());
    }
    Ok(rule(true, Some(typ), num(maj)?, num(min)?, access))
}

/// Every device node under the host's `dev` directory, for privileged containers (runc's
/// `HostDevices`: skips `pts`, `shm`, `fd`, `mqueue` and the `console`).
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    collect_host(dev, dev, &mut out, 0);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn collect_host(root: &Path, dir: &Path, out: &mut Vec<LinuxDevice>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if !matches!(
                name.as_ref(),
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                collect_host(root, &p, out, depth + 1);
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        if let Ok(Some(d)) = device_from_path(&p, &Path::new("/dev").join(rel)) {
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_deny_all_then_allow_basics() {
        let r = default_rules();
        assert_eq!(r[0].to_string(), "a *:* rwm");
        assert!(!r[0].allow());
        let allowed: Vec<String> = r
            .iter()
            .filter(|x| x.allow())
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            allowed,
            [
                "c 1:5 rwm",
                "c 1:3 rwm",
                "c 1:9 rwm",
                "c 1:8 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm"
            ]
        );
        assert_eq!(
            r.last().map(|x| (x.allow(), x.to_string())),
            Some((false, "c 10:229 rwm".into()))
        );
        assert!(privileged_rules()[0].allow());
    }

    #[test]
    fn device_mapping_stats_the_host_node() {
        let m = models::DeviceMapping {
            path_on_host: Some("/dev/null".into()),
            path_in_container: Some("/dev/xnull".into()),
            cgroup_permissions: Some("rw".into()),
        };
        let (devs, rules) = from_mapping(&m).expect("should succeed");
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].path(), Path::new("/dev/xnull"));
        assert_eq!(
            (devs[0].typ(), devs[0].major(), devs[0].minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(rules[0].to_string(), "c 1:3 rw");
        assert!(rules[0].allow());
    }

    #[test]
    fn device_mapping_errors() {
        let dir = tempfile::tempdir().expect("should succeed");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("should succeed");
        let m = |p: &Path| models::DeviceMapping {
            path_on_host: Some(p.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let err = from_mapping(&m(&file))
            .expect_err("should fail")
            .to_string();
        assert!(
            err.starts_with("error gathering device information while adding custom device"),
            "{err}"
        );
        assert!(err.ends_with("not a device node"), "{err}");
        assert!(from_mapping(&m(Path::new("/nonexistent/dev"))).is_err());
        let bad_perm = models::DeviceMapping {
            cgroup_permissions: Some("rwx".into()),
            ..m(Path::new("/dev/null"))
        };
        assert_eq!(
            from_mapping(&bad_perm).expect_err("should fail").status(),
            400
        );
    }

    #[test]
    fn cgroup_rules_parse() {
        assert_eq!(
            parse_cgroup_rule("c 1:3 rwm")
                .expect("should succeed")
                .to_string(),
            "c 1:3 rwm"
        );
        assert_eq!(
            parse_cgroup_rule("b *:* m")
                .expect("should succeed")
                .to_string(),
            "b *:* m"
        );
        assert_eq!(
            parse_cgroup_rule("c 189:* rw")
                .expect("should succeed")
                .to_string(),
            "c 189:* rw"
        );
        for bad in ["x 1:3 rwm", "c 1:3", "c 1-3 rwm", "c 1:3 rwx", "c a:3 r"] {
            let err = parse_cgroup_rule(bad).expect_err("should fail");
            assert_eq!(
                err.to_string(),
                format!("invalid device cgroup format '{bad}'")
            );
        }
    }

    #[test]
    fn host_devices_include_null_and_skip_pts() {
        let devs = host_devices(Path::new("/dev"));
        assert!(devs
            .iter()
            .any(|d| d.path() == Path::new("/dev/null") && d.major() == 1 && d.minor() == 3));
        assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
        assert!(!devs.iter().any(|d| d.path() == Path::new("/dev/console")));
    }
}
