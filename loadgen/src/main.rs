//! `berth-load`: runs the load generator against a Docker API socket until `--duration`
//! passes or SIGINT/SIGTERM arrives, then prints the report (a table, or JSON with `--json`).
//! Exit status: 0 when every request succeeded and no container leaked, 1 when not, 2 when
//! the run could not start.

use anyhow::{Context, Result};
use berth_load::{read_windows, Config, Mix, StopToken};
use clap::Parser;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Docker API load generator: fresh and keep-alive clients mixing ping, list, inspect and
/// create/start/rm cycles; reports every failure and the latency inside and outside windows.
#[derive(Debug, Parser)]
#[command(name = "berth-load", version)]
struct Args {
    /// The daemon's unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Fraction of the clients opening a fresh connection per request (the rest keep one).
    #[arg(long, default_value_t = 0.5)]
    fresh_fraction: f64,
    /// Stop after this many seconds (default: at SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Image of the cycle containers.
    #[arg(long, default_value = "busybox")]
    image: String,
    /// Command of the cycle containers (split on whitespace).
    #[arg(long, default_value = "sleep 1000")]
    cmd: String,
    /// HostConfig.NetworkMode of the cycle containers ("" leaves it to the daemon).
    #[arg(long, default_value = "none")]
    network: String,
    /// Op weights.
    #[arg(long, default_value = "ping=4,list=2,inspect=3,cycle=1")]
    mix: Mix,
    /// Comma-separated container ids to inspect (default: the running ones at start).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<String>>,
    /// Pause of each client between requests, ms.
    #[arg(long)]
    pause_ms: Option<u64>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// File of "start_ns end_ns" lines, read when the run ends, splitting the latencies.
    #[arg(long)]
    windows: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write every request record to this file, one JSON object a line.
    #[arg(long)]
    records: Option<PathBuf>,
    /// Runtime worker threads (1: a single-threaded runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-load: starting the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what} {s} is not a valid duration"))
}

/// Runs the load and prints the report; `Ok(passed)`.
async fn run(args: Args) -> Result<bool> {
    let mut cfg = Config::new(&args.socket);
    cfg.clients = args.clients;
    cfg.fresh_fraction = args.fresh_fraction;
    cfg.mix = args.mix;
    cfg.image = args.image;
    cfg.cmd = args.cmd.split_whitespace().map(str::to_string).collect();
    cfg.network_mode = (!args.network.is_empty()).then_some(args.network);
    cfg.inspect_ids = args.ids;
    cfg.pause = args.pause_ms.map(Duration::from_millis);
    cfg.timeout = secs(args.timeout, "--timeout")?;
    cfg.duration = args.duration.map(|d| secs(d, "--duration")).transpose()?;

    let stop = StopToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        on_signal.stop();
    });
    eprintln!(
        "berth-load: {} clients ({} fresh) against {}",
        cfg.clients,
        cfg.fresh_clients(),
        cfg.socket.display()
    );
    let run = berth_load::run(cfg, stop).await?;
    let windows = match &args.windows {
        Some(p) => read_windows(p)?,
        None => Vec::new(),
    };
    if let Some(p) = &args.records {
        let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        let mut w = std::io::BufWriter::new(f);
        for r in &run.records {
            serde_json::to_writer(&mut w, r).context("writing a record")?;
            w.write_all(b"\n").context("writing the records")?;
        }
        w.flush()
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let report = run.report(&windows);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(report.passed())
}
