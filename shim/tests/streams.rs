//! Real-kernel tests of the handed-over streams: attach (framed with stdin, raw tty with
//! detach keys), exec (exit code before end of stream, start failures) and logs --follow.

mod common;

use anyhow::{bail, Result};
use berth_api::logfmt;
use berth_api::shim::{
    AttachParams, ExecParams, LogsParams, ShimRequest, ShimResponse, ShimStatus, WaitCondition,
};
use common::*;
use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

#[test]
fn attach_framed_with_early_stdin_and_stdin_once() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &["cat"],
        Opts {
            open_stdin: true,
            stdin_once: true,
            ..Default::default()
        },
    )?;
    let ctl = fx.connect()?;
    let mut att = ctl.hand_over(&ShimRequest::Attach(AttachParams {
        stdin: true,
        stdout: true,
        stderr: true,
        stream: true,
        initial: b"early\n".to_vec(),
        ..Default::default()
    }))?;
    let mut wait = ctl.hand_over(&ShimRequest::Wait {
        condition: WaitCondition::NextExit,
    })?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    att.write_all(b"more\n")?;
    att.shutdown(Shutdown::Write)?;
    let out = read_all(&mut att)?;
    let fr = frames(&out)?;
    assert_eq!(stream_text(&fr, 1), "early\nmore\n");
    assert_eq!(stream_text(&fr, 2), "");
    assert_eq!(
        chunks(&read_all(&mut wait)?)?,
        vec![b"{\"Error\":null,\"StatusCode\":0}\n".to_vec()]
    );
    // The log has the same lines, and a late attach with logs=1 replays them.
    let mut replay = ctl.hand_over(&ShimRequest::Attach(AttachParams {
        stdout: true,
        stderr: true,
        logs: true,
        stream: true,
        ..Default::default()
    }))?;
    let fr = frames(&read_all(&mut replay)?)?;
    assert_eq!(stream_text(&fr, 1), "early\nmore\n");
    Ok(())
}

#[test]
fn tty_attach_is_raw_and_detach_keys_close_only_the_client() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &["cat"],
        Opts {
            tty: true,
            open_stdin: true,
            ..Default::default()
        },
    )?;
    let ctl = fx.connect()?;
    let mut att = ctl.hand_over(&ShimRequest::Attach(AttachParams {
        stdin: true,
        stdout: true,
        stderr: true,
        stream: true,
        ..Default::default()
    }))?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    assert_eq!(
        ctl.call(&ShimRequest::Resize {
            exec_id: None,
            height: 40,
            width: 120
        })?,
        ShimResponse::Ok
    );
    att.write_all(b"ping\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("ping\r\n") {
        let n = std::io::Read::read(&mut att, &mut buf)?;
        if n == 0 {
            bail!("closed early: {:?}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
    }
    // Raw bytes: no multiplexing header.
    assert_eq!(got[0], b'p');
    att.write_all(b"\x10\x11")?;
    let _ = read_all(&mut att)?; // the shim closes the detached client
    match ctl.call(&ShimRequest::State)? {
        ShimResponse::State(s) => assert_eq!(s.status, ShimStatus::Running),
        other => bail!("state {other:?}"),
    }
    let text = fx.log_text();
    assert!(
        text.contains(r#""log":"ping\r\n","stream":"stdout""#),
        "{text}"
    );
    assert_eq!(
        ctl.call(&ShimRequest::Kill {
            signal: 9,
            all: false
        })?,
        ShimResponse::Ok
    );
    Ok(())
}

#[test]
fn exec_exit_code_is_recorded_before_end_of_stream() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(&["sleep", "30"], Opts::default())?;
    let ctl = fx.connect()?;
    let exec = |id: &str, args: &[&str], tty: bool| ExecParams {
        exec_id: id.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        tty,
        attach_stdin: true,
        attach_stdout: true,
        attach_stderr: true,
        ..Default::default()
    };
    assert!(matches!(
        ctl.call(&ShimRequest::Exec(ExecParams {
            detach: true,
            ..exec("e0", &["true"], false)
        }))?,
        ShimResponse::Error { .. }
    ));
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);

    let mut s = ctl.hand_over(&ShimRequest::Exec(exec(
        "e1",
        &["sh", "-c", "read x; echo got-$x; echo oops >&2; exit 7"],
        false,
    )))?;
    s.write_all(b"input\n")?;
    s.shutdown(Shutdown::Write)?;
    let fr = frames(&read_all(&mut s)?)?;
    assert_eq!(stream_text(&fr, 1), "got-input\n");
    assert_eq!(stream_text(&fr, 2), "oops\n");
    match ctl.call(&ShimRequest::ExecState {
        exec_id: "e1".into(),
    })? {
        ShimResponse::ExecState(st) => {
            assert_eq!((st.running, st.exit_code), (false, Some(7)));
            assert!(st.pid > 0);
        }
        other => bail!("exec state {other:?}"),
    }

    let mut s = ctl.hand_over(&ShimRequest::Exec(exec(
        "e2",
        &["sh", "-c", "exit 4"],
        true,
    )))?;
    let _ = read_all(&mut s)?;
    match ctl.call(&ShimRequest::ExecState {
        exec_id: "e2".into(),
    })? {
        ShimResponse::ExecState(st) => assert_eq!(st.exit_code, Some(4)),
        other => bail!("exec state {other:?}"),
    }

    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_read_timeout(Some(Duration::from_secs(10)))?;
    let resp = ctl.call_fds(
        &ShimRequest::Exec(exec("e3", &["nosuchcmd"], false)),
        &[std::os::fd::AsRawFd::as_raw_fd(&theirs)],
    )?;
    drop(theirs);
    assert!(matches!(resp, ShimResponse::Error { .. }), "{resp:?}");
    let fr = frames(&read_all(&mut ours)?)?;
    let msg = stream_text(&fr, 1);
    assert!(msg.contains("executable file not found in $PATH"), "{msg}");
    match ctl.call(&ShimRequest::ExecState {
        exec_id: "e3".into(),
    })? {
        ShimResponse::ExecState(st) => assert_eq!((st.running, st.exit_code), (false, Some(127))),
        other => bail!("exec state {other:?}"),
    }
    assert!(matches!(
        ctl.call(&ShimRequest::ExecState {
            exec_id: "nope".into()
        })?,
        ShimResponse::Error { .. }
    ));
    assert_eq!(
        ctl.call(&ShimRequest::Kill {
            signal: 9,
            all: false
        })?,
        ShimResponse::Ok
    );
    Ok(())
}

#[test]
fn logs_follow_history_then_live_without_gap() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let fx = Fixture::start(
        &[
            "sh",
            "-c",
            "echo a; echo b >&2; sleep 1; echo c; sleep 0.3; echo d",
        ],
        Opts::default(),
    )?;
    let ctl = fx.connect()?;
    assert_eq!(ctl.call(&ShimRequest::Start)?, ShimResponse::Ok);
    assert!(eventually(Duration::from_secs(5), || fx
        .log_text()
        .lines()
        .count()
        >= 2));
    let mut follow = ctl.hand_over(&ShimRequest::Logs(LogsParams {
        stdout: true,
        stderr: true,
        timestamps: true,
        ..Default::default()
    }))?;
    let body = chunks(&read_all(&mut follow)?)?;
    let mut lines = Vec::new();
    for c in &body {
        let fr = frames(c)?;
        assert_eq!(fr.len(), 1, "one frame per chunk");
        let text = String::from_utf8_lossy(&fr[0].1).into_owned();
        let (ts, rest) = text.split_once(' ').unwrap_or(("", ""));
        assert!(logfmt::parse_rfc3339(ts).is_some(), "{text}");
        lines.push((fr[0].0, rest.to_string()));
    }
    lines.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        lines,
        vec![
            (1, "a\n".to_string()),
            (2, "b\n".to_string()),
            (1, "c\n".to_string()),
            (1, "d\n".to_string())
        ]
    );
    // After the exit, a follow with tail=1 on stdout only ends at once.
    let mut tail = ctl.hand_over(&ShimRequest::Logs(LogsParams {
        stdout: true,
        tail: Some(1),
        ..Default::default()
    }))?;
    let body = chunks(&read_all(&mut tail)?)?;
    assert_eq!(body, vec![logfmt::frame(logfmt::Stream::Stdout, b"d\n")]);
    Ok(())
}
