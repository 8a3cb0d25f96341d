//! `berthd upgrade` (ask the running master for a live upgrade and print its report) and
//! `berthd preflight` (what this binary supports, read by a master before an upgrade).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::time::Duration;

/// `berthd upgrade` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    /// The new berthd binary (default: the binary the master runs, e.g. after a package
    /// upgrade replaced it on disk).
    #[arg(long)]
    pub binary: Option<std::path::PathBuf>,
    /// The daemon's socket.
    #[arg(
        short = 'H',
        long = "host",
        env = "BERTH_HOST",
        default_value = "unix:///run/berth/berth.sock"
    )]
    pub host: String,
    /// Inject a named fault into the new generation (`POINT:ACTION`; tests).
    #[arg(long, hide = true)]
    pub fault: Option<String>,
    /// Warm-up time limit in milliseconds.
    #[arg(long, hide = true)]
    pub warmup_timeout_ms: Option<u64>,
    /// Probation in milliseconds before the upgrade commits.
    #[arg(long, hide = true)]
    pub probation_ms: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `berthd preflight` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Preflight {
    /// berthd version.
    pub version: String,
    /// Newest store format it reads (it reads every older one).
    pub store_format: u32,
    /// Shim protocol versions it speaks.
    pub shim_protocol: (u32, u32),
    /// Master–worker control protocol.
    pub ctl_protocol: u32,
}

/// `berthd preflight`.
pub fn preflight() -> anyhow::Result<()> {
    crate::worker::fault("preflight");
    let p = Preflight {
        version: env!("CARGO_PKG_VERSION").into(),
        store_format: crate::store::FORMAT_VERSION,
        shim_protocol: (
            berth_api::shim::SHIM_PROTOCOL_MIN,
            berth_api::shim::SHIM_PROTOCOL_VERSION,
        ),
        ctl_protocol: crate::ctl::CTL_PROTOCOL_VERSION,
    };
    println!("{}", serde_json::to_string(&p)?);
    Ok(())
}

/// `berthd upgrade`: exits non-zero when the upgrade was rolled back.
pub fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let path = args
        .host
        .strip_prefix("unix://")
        .unwrap_or(&args.host)
        .to_string();
    let mut query = Vec::new();
    if let Some(b) = &args.binary {
        let abs = std::fs::canonicalize(b).with_context(|| format!("find {}", b.display()))?;
        query.push(format!("binary={}", encode(&abs.to_string_lossy())));
    }
    if let Some(f) = &args.fault {
        query.push(format!("fault={}", encode(f)));
    }
    if let Some(t) = args.warmup_timeout_ms {
        query.push(format!("warmup_timeout_ms={t}"));
    }
    if let Some(t) = args.probation_ms {
        query.push(format!("probation_ms={t}"));
    }
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connect to {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(900)))?;
    write!(
        s,
        "POST /berth/upgrade?{} HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        query.join("&")
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .context("read the upgrade report")?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the daemon's answer is not HTTP")?;
    let report: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    if args.json {
        println!("{report}");
    } else if status == 200 {
        println!(
            "upgrade committed: generation {} running {} (freeze+cut-over {:.1} ms, mutations held {:.1} ms, {} connections handed over)",
            report["Generation"],
            report["Binary"].as_str().unwrap_or(""),
            report["FreezeCutoverMs"].as_f64().unwrap_or(0.0),
            report["QuiesceMs"].as_f64().unwrap_or(0.0),
            report["ConnsHandedOver"],
        );
    }
    if status != 200 {
        let msg = report["message"].as_str().unwrap_or(body.trim());
        bail!("{msg}");
    }
    Ok(())
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
