//! Real-kernel tests of the shim's lifecycle: create, start, log, exit record, wait, kill,
//! rotation, draining with nobody connected, start errors and shutdown after `AckExit`.

mod common;

use anyhow::{bail, Result};
use berth_api::logfmt;
use berth_api::shim::{
    ShimEvent, ShimRequest, ShimResponse, ShimStatus, WaitCondition, SHIM_PROTOCOL_VERSION,
};
use common::*;
use std::time::Duration;

fn next_exit_event(ctl: &Ctl) -> Result<berth_api::shim::ExitRecord> {
    for _ in 0..10 {
        match ctl.recv()? {
            ShimResponse::Event(ShimEvent::Exit(rec)) => return Ok(rec),
            _ => continue,
        }
    }
    bail!("no exit event")
}

#[test]
fn run_logs_exit_record_wait_and_ack() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut fx = Fixture::start(
        &["sh", "-c", "echo hi; echo err >&2; exit 3"],
        Opts::default(),
    )?;
    let pid = fx.pid()?;
    let events = fx.connect()?;
    assert_eq!(events.call(&ShimRequest::Subscribe)?, ShimResponse::Ok);
    let ctl = fx.connect()?;
    let mut wait = ctl.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::NextExit,
    })?;
    // Like `docker run` without -i: attach before start, half-close at once.
    let mut att = ctl.hand_over(&ShimRequest::Attach(berth_api::shim::AttachParams {
        stdout: true,
        stderr: true,
        stream: true,
        ..Default::default()
    }))?;
    att.shutdown(std::net::Shutdown::Write)?;
    match ctl.call(&ShimRequest::State)? {
        ShimResponse::State(s) => {
            assert_eq!(s.status, ShimStatus::Created);
            assert_eq!(s.pid, pid);
        }
        other => bail!("state: {other:?}"),
    }
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    let rec = next_exit_event(&events)?;
    assert_eq!(rec.code, 3);
    assert_eq!(rec.pid, pid);
    assert_eq!(rec.signal, None);
    // The record was on disk before the event.
    let on_disk: berth_api::shim::ExitRecord =
        serde_json::from_slice(&std::fs::read(&fx.cfg.exit_file)?)?;
    assert_eq!(on_disk, rec);
    let body = chunks(&read_all(&mut wait)?)?;
    assert_eq!(body, vec![b"{\"Error\":null,\"StatusCode\":3}\n".to_vec()]);
    let fr = frames(&read_all(&mut att)?)?;
    assert_eq!(stream_text(&fr, 1), "hi\n");
    assert_eq!(stream_text(&fr, 2), "err\n");

    assert!(eventually(Duration::from_secs(5), || fx
        .log_text()
        .lines()
        .count()
        == 2));
    let entries = logfmt::read_entries(fx.log_text().as_bytes());
    let mut got: Vec<(String, logfmt::Stream)> = entries
        .iter()
        .map(|d| (d.entry.log.clone(), d.entry.stream))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("err\n".to_string(), logfmt::Stream::Stderr),
            ("hi\n".to_string(), logfmt::Stream::Stdout),
        ]
    );
    // libcontainer's state is gone once exited.
    assert!(eventually(Duration::from_secs(5), || !fx
        .cfg
        .runtime_root
        .join(&fx.cfg.id)
        .exists()));
    // Still alive until acknowledged; then exits cleanly.
    assert!(
        fx.child
            .as_mut()
            .map(|c| c.try_wait().ok().flatten().is_none())
            == Some(true)
    );
    assert!(matches!(
        ctl.call(&ShimRequest::AckExit { pid: pid + 1 })?,
        ShimResponse::Error { .. }
    ));
    assert_eq!(ctl.call(&ShimRequest::AckExit { pid })?, ShimResponse::Ok);
    assert_eq!(fx.wait_shim_exit(Duration::from_secs(5))?, 0);
    assert!(!fx.cfg.ctl_socket.exists());
    Ok(())
}

#[test]
fn kill_sigkill_records_137_and_conflicts_after() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(&["sleep", "30"], Opts::default())?;
    let ctl = fx.connect()?;
    assert!(matches!(
        ctl.call(&ShimRequest::Kill {
            signal: 9,
            all: false
        })?,
        ShimResponse::Error { .. }
    ));
    let mut wait = ctl.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::NextExit,
    })?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    // Single-threaded: libcontainer forks execs from this process later.
    let shim_pid = fx.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{shim_pid}/status"))?;
    assert!(status.lines().any(|l| l == "Threads:\t1"), "{status}");
    eprintln!(
        "shim {}\n{}",
        status
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or(""),
        std::fs::read_to_string(format!("/proc/{shim_pid}/smaps_rollup"))?
    );
    assert_eq!(ctl.call(&ShimRequest::Pause)?, ShimResponse::Ok);
    match ctl.call(&ShimRequest::State)? {
        ShimResponse::State(s) => assert_eq!(s.status, ShimStatus::Paused),
        other => bail!("state: {other:?}"),
    }
    assert_eq!(ctl.call(&ShimRequest::Resume)?, ShimResponse::Ok);
    assert_eq!(
        ctl.call(&ShimRequest::Kill {
            signal: 9,
            all: false
        })?,
        ShimResponse::Ok
    );
    let body = chunks(&read_all(&mut wait)?)?;
    assert_eq!(
        body,
        vec![b"{\"Error\":null,\"StatusCode\":137}\n".to_vec()]
    );
    match ctl.call(&ShimRequest::State)? {
        ShimResponse::State(s) => {
            assert_eq!(s.status, ShimStatus::Exited);
            let e = s.exit.ok_or_else(|| anyhow::anyhow!("no exit"))?;
            assert_eq!((e.code, e.signal), (137, Some(9)));
        }
        other => bail!("state: {other:?}"),
    }
    match ctl.call(&ShimRequest::Kill {
        signal: 15,
        all: false,
    })? {
        ShimResponse::Error { message, .. } => {
            assert_eq!(message, format!("Container {} is not running", fx.cfg.id))
        }
        other => bail!("kill after exit: {other:?}"),
    }
    // A subscriber arriving after the exit gets it at once.
    let late = fx.connect()?;
    assert_eq!(late.call(&ShimRequest::Subscribe)?, ShimResponse::Ok);
    assert_eq!(next_exit_event(&late)?.code, 137);
    Ok(())
}

#[test]
fn log_rotation_by_rename() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 60 ]; do echo line$i; i=$((i+1)); done",
        ],
        Opts {
            max_size: Some(400),
            max_file: 3,
            ..Default::default()
        },
    )?;
    let ctl = fx.connect()?;
    let mut wait = ctl.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::NextExit,
    })?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    assert_eq!(chunks(&read_all(&mut wait)?)?.len(), 1);
    let log = fx.cfg.log.clone().ok_or_else(|| anyhow::anyhow!("log"))?;
    assert!(eventually(Duration::from_secs(5), || fx
        .log_text()
        .contains("line59")));
    let names = logfmt::rotated_names(&log.path, 3);
    let mut all = Vec::new();
    for n in &names {
        assert!(n.exists(), "{} missing", n.display());
        assert!(std::fs::metadata(n)?.len() <= 400);
        all.extend(logfmt::read_entries(std::io::BufReader::new(
            std::fs::File::open(n)?,
        )));
    }
    let mut extra = log.path.as_os_str().to_owned();
    extra.push(".3");
    assert!(!std::path::Path::new(&extra).exists());
    let nums: Vec<u32> = all
        .iter()
        .filter_map(|d| d.entry.log.trim().strip_prefix("line")?.parse().ok())
        .collect();
    assert_eq!(nums.last(), Some(&59));
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    Ok(())
}

#[test]
fn output_is_drained_while_nobody_is_connected() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &[
            "sh",
            "-c",
            "while true; do echo 0123456789012345678901234567890123456789012345678901234567890123456789; done",
        ],
        Opts::default(),
    )?;
    {
        let ctl = fx.connect()?;
        // A subscriber that never reads must not matter either.
        let idle = fx.connect()?;
        assert_eq!(idle.call(&ShimRequest::Subscribe)?, ShimResponse::Ok);
        assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
        std::mem::forget(idle);
    }
    let size = |fx: &Fixture| {
        fx.cfg
            .log
            .as_ref()
            .and_then(|l| std::fs::metadata(&l.path).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // Far more than the pipe could buffer, and still growing.
    assert!(
        eventually(Duration::from_secs(20), || size(&fx) > 4 * 1024 * 1024),
        "log stuck at {} bytes; {}",
        size(&fx),
        fx.shim_log()
    );
    let a = size(&fx);
    assert!(eventually(Duration::from_secs(10), || size(&fx) > a + 1024 * 1024));
    // The control socket still answers while the output streams in.
    let ctl = fx.connect()?;
    assert_eq!(
        ctl.call(&ShimRequest::Kill {
            signal: 9,
            all: true
        })?,
        ShimResponse::Ok
    );
    Ok(())
}

#[test]
fn missing_executable_fails_ready_with_docker_wording() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut fx = Fixture::start(&["nosuchcmd"], Opts::default())?;
    let err = fx.ready.error.clone().unwrap_or_default();
    assert!(fx.ready.pid.is_none());
    assert!(
        err.contains("exec: \"nosuchcmd\": executable file not found in $PATH"),
        "{err}"
    );
    assert_ne!(fx.wait_shim_exit(Duration::from_secs(5))?, 0);

    let fx = Fixture::start(
        &["sh"],
        Opts {
            cwd: Some("/nonexistent".into()),
            ..Default::default()
        },
    )?;
    let err = fx.ready.error.clone().unwrap_or_default();
    assert!(err.contains("no such file or directory"), "{err}");
    Ok(())
}

#[test]
fn hello_outside_the_supported_range_is_refused() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(&["sleep", "30"], Opts::default())?;
    let fd = berth_api::transport::connect(&fx.cfg.ctl_socket)?;
    let ctl = Ctl { fd };
    match ctl.call(&ShimRequest::Hello {
        version: SHIM_PROTOCOL_VERSION + 1,
    })? {
        ShimResponse::Error { message, .. } => assert!(message.contains("not supported")),
        other => bail!("unexpected {other:?}"),
    }
    let ok = fx.connect()?;
    let mut removed = ok.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::Removed,
    })?;
    assert_eq!(ok.call(&ShimRequest::Start)?, ShimResponse::Ok);
    // Removed while running: the container is killed, removed waiters are answered, the
    // shim exits, and no exit record is left behind for a container that no longer exists.
    assert_eq!(ok.call(&ShimRequest::Removed)?, ShimResponse::Ok);
    let body = chunks(&read_all(&mut removed)?)?;
    assert_eq!(body.len(), 1);
    let mut fx = fx;
    assert_eq!(fx.wait_shim_exit(Duration::from_secs(5))?, 0);
    assert!(!fx.cfg.exit_file.exists());
    Ok(())
}

#[test]
fn oom_kill_is_flagged_in_the_exit_record() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
        Opts {
            memory_limit: Some(16 * 1024 * 1024),
            ..Default::default()
        },
    )?;
    let ctl = fx.connect()?;
    let mut wait = ctl.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::NextExit,
    })?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    assert_eq!(
        chunks(&read_all(&mut wait)?)?,
        vec![b"{\"Error\":null,\"StatusCode\":137}\n".to_vec()]
    );
    let rec: berth_api::shim::ExitRecord =
        serde_json::from_slice(&std::fs::read(&fx.cfg.exit_file)?)?;
    assert!(rec.oom_killed, "{rec:?}");
    Ok(())
}

#[test]
fn exiting_shim_leaves_a_successors_control_socket() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut fx = Fixture::start(&["true"], Opts::default())?;
    let pid = fx.pid()?;
    let events = fx.connect()?;
    assert_eq!(events.call(&ShimRequest::Subscribe)?, ShimResponse::Ok);
    let ctl = fx.connect()?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    assert_eq!(next_exit_event(&events)?.code, 0);
    // The shim of the container's next run binds the same path before this one is done.
    let successor = berth_api::transport::listen(&fx.cfg.ctl_socket)?;
    assert_eq!(ctl.call(&ShimRequest::AckExit { pid })?, ShimResponse::Ok);
    assert_eq!(fx.wait_shim_exit(Duration::from_secs(5))?, 0);
    assert!(
        fx.cfg.ctl_socket.exists(),
        "the old shim removed its successor's control socket"
    );
    drop(successor);
    Ok(())
}
