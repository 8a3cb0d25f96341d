//! Raw API requests with `curl --unix-socket`, for what the docker CLI cannot send
//! (hostile archives, exact status codes and bodies).

use super::Daemon;
use std::path::Path;
use std::process::Command;

/// `curl` over the daemon's socket: (status, body).
pub fn curl(d: &Daemon, method: &str, target: &str, body: Option<&Path>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--unix-socket")
        .arg(&d.sock)
        .arg(format!("http://x/v1.41{target}"));
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/x-tar", "--data-binary"])
            .arg(format!("@{}", b.display()));
    }
    let out = c.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
