//! cgroup and inspect helpers of the resource tests (`tests/resources*.rs`,
//! `tests/resource_limits.rs`): a container's v1 cgroup files under the daemon's pool, a
//! process's cgroup, `docker inspect` as JSON, a detached `docker run` and a raw create.

use super::Daemon;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `/sys/fs/cgroup/<ctrl>/<pool>/<id>/<file>` of the container `name`.
pub fn cg_path(d: &Daemon, ctrl: &str, name: &str, file: &str) -> PathBuf {
    let id = d.ok(&["inspect", "-f", "{{.Id}}", name]);
    Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(d.cgroup.trim_start_matches('/'))
        .join(id)
        .join(file)
}

/// The trimmed contents of a cgroup file of the container `name`.
pub fn cg(d: &Daemon, ctrl: &str, name: &str, file: &str) -> String {
    let p = cg_path(d, ctrl, name, file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// `docker inspect <name>` parsed (the single object).
pub fn inspect(d: &Daemon, name: &str) -> Value {
    let text = d.ok(&["inspect", name]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("inspect {text}: {e}"));
    v[0].clone()
}

/// `docker run -d --name <name> <flags> bb:test <cmd...>`; returns the CLI's stderr (warnings).
pub fn run_d(d: &Daemon, name: &str, flags: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(flags);
    args.push("bb:test");
    args.extend_from_slice(cmd);
    let out = d.docker(&args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        super::tail(&d.log(), 30)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn pid_of(d: &Daemon, name: &str) -> i32 {
    d.ok(&["inspect", "-f", "{{.State.Pid}}", name])
        .parse()
        .expect("a pid")
}

/// The cgroup path of `pid` in the v1 hierarchy holding `ctrl` (`None`: no such process).
pub fn proc_cgroup(pid: i32, ctrl: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctls, path) = (p.next()?, p.next()?, p.next()?);
        ctls.split(',').any(|c| c == ctrl).then(|| path.to_string())
    })
}

/// A whole-disk block device of the host and its `major:minor`.
pub fn block_device() -> Option<(String, String)> {
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("zram") || name.starts_with("ram") {
            continue;
        }
        let dev = format!("/dev/{name}");
        let majmin = std::fs::read_to_string(e.path().join("dev")).ok()?;
        if Path::new(&dev).exists() {
            return Some((dev, majmin.trim().to_string()));
        }
    }
    None
}

/// `POST /containers/create` on a raw connection: status and body.
pub fn raw_create(d: &Daemon, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.sock).expect("connect");
    let req = format!(
        "POST /v1.41/containers/create HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // A chunked body: keep the JSON object.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => body[a..=b].to_string(),
        _ => body,
    };
    (status, body)
}
