//! Raw-API tests: error bodies, version negotiation, the 101 upgrade, multiplexed stream
//! framing, raw tty streams, half-close and the early `wait` head.

mod common;
use common::{is_root, Daemon};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn raw(d: &Daemon, req: &str) -> String {
    let mut s = UnixStream::connect(&d.sock).expect("connect");
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(d: &Daemon, path: &str) -> String {
    raw(
        d,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// Reads a response head (up to the blank line) from a stream.
fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn errors_are_json_with_dockerd_status_and_wording() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    let r = get(&d, "/v1.41/containers/nope/json");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.contains("Content-Type: application/json\r\n"), "{r}");
    assert!(
        r.contains(r#"{"message":"No such container: nope"}"#),
        "{r}"
    );
    let r = get(&d, "/v1.52/version");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("client version 1.52 is too new. Maximum supported API version is 1.41"));
    let r = raw(&d, "POST /v1.41/containers/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{bad}");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(&d, "HEAD /_ping HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("Api-Version: 1.41"), "{r}");
    assert!(!r.contains("\r\n\r\nOK"), "HEAD has no body: {r}");
    let r = get(&d, "/_ping");
    assert!(r.ends_with("\r\n\r\nOK"), "{r}");
    let r = raw(&d, "GARBAGE\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[test]
fn attach_upgrades_and_frames_stdout_and_stderr() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let id = d.ok(&[
        "create",
        "bb:test",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 4",
    ]);
    // Attach before start, with a half-close right after the 101 (no stdin).
    let mut a = UnixStream::connect(&d.sock).expect("connect");
    write!(a, "POST /v1.41/containers/{id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n").expect("attach");
    let head = read_head(&mut a);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Content-Type: application/vnd.docker.raw-stream"),
        "{head}"
    );
    a.shutdown(std::net::Shutdown::Write).expect("half-close");
    // The wait head must arrive before start.
    let mut w = UnixStream::connect(&d.sock).expect("connect");
    write!(w, "POST /v1.41/containers/{id}/wait?condition=next-exit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").expect("wait");
    w.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = read_head(&mut w);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    d.ok(&["start", &id]);
    a.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut stream = Vec::new();
    a.read_to_end(&mut stream).expect("read attach stream");
    // Frames: [stream, 0, 0, 0, len BE] + payload; order between streams may vary.
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 8 <= stream.len() {
        let len = u32::from_be_bytes([stream[i + 4], stream[i + 5], stream[i + 6], stream[i + 7]])
            as usize;
        frames.push((
            stream[i],
            String::from_utf8_lossy(&stream[i + 8..i + 8 + len]).into_owned(),
        ));
        i += 8 + len;
    }
    assert_eq!(i, stream.len(), "stream is whole frames: {stream:?}");
    assert!(frames.contains(&(1, "out\n".into())), "{frames:?}");
    assert!(frames.contains(&(2, "err\n".into())), "{frames:?}");
    let mut body = String::new();
    let _ = w.read_to_string(&mut body);
    assert!(body.contains(r#"{"Error":null,"StatusCode":4}"#), "{body}");
}

#[test]
fn tty_containers_stream_raw_bytes() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let id = d.ok(&["create", "-t", "bb:test", "sh", "-c", "echo tty-out"]);
    let mut a = UnixStream::connect(&d.sock).expect("connect");
    write!(a, "POST /v1.41/containers/{id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n").expect("attach");
    let head = read_head(&mut a);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    d.ok(&["start", &id]);
    a.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = a.read_to_end(&mut out);
    assert_eq!(String::from_utf8_lossy(&out), "tty-out\r\n");
    // Logs of a tty container are raw too.
    let logs = get(
        &d,
        &format!("/v1.41/containers/{id}/logs?stdout=1&stderr=1"),
    );
    assert!(logs.contains("tty-out\r\n"), "{logs}");
    assert!(
        !logs.contains('\u{1}'),
        "no frame header in tty logs: {logs:?}"
    );
}
