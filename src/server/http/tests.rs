//! Tests of the HTTP layer: target parsing, chunk encoding, keep-alive and chunked bodies.

use super::*;
use tokio::io::AsyncReadExt;

#[test]
fn targets_lose_the_version_prefix_and_decode_queries() {
    let (p, v, q) = split_target(
        "/v1.41/containers/json?all=1&filters=%7B%22name%22%3A%7B%22a%22%3Atrue%7D%7D&x=a+b&x=c",
    );
    assert_eq!(p, "/containers/json");
    assert_eq!(v.as_deref(), Some("1.41"));
    assert_eq!(q["all"], vec!["1"]);
    assert_eq!(q["filters"], vec![r#"{"name":{"a":true}}"#]);
    assert_eq!(q["x"], vec!["a b", "c"]);
    let (p, v, _) = split_target("/_ping");
    assert_eq!((p.as_str(), v), ("/_ping", None));
    let (p, _, _) = split_target("/images/127.0.0.1%3A5000%2Fa/json");
    assert_eq!(p, "/images/127.0.0.1:5000/a/json");
}

#[test]
fn chunks_are_hex_sized() {
    assert_eq!(chunk(b"hello"), b"5\r\nhello\r\n");
    assert_eq!(chunk(&[0u8; 26])[..4], *b"1a\r\n");
}

struct Echo;
impl Handler for Echo {
    fn handle(&self, req: Request) -> futures::future::BoxFuture<'_, Response> {
        Box::pin(async move {
            let body = req.body.bytes().unwrap_or_default();
            Response::json(
                200,
                &serde_json::json!({"path": req.path, "len": body.len()}),
            )
        })
    }
}

#[tokio::test]
async fn keep_alive_and_chunked_bodies_work_on_one_connection() -> anyhow::Result<()> {
    let (a, mut b) = UnixStream::pair()?;
    let server = tokio::spawn(async move {
        {
            let g = super::Gate::new();
            let guard = g.enter_conn();
            serve_conn(a, &Echo, &g, Vec::new(), guard).await
        }
    });
    b.write_all(b"POST /v1.41/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n2\r\nab\r\n0\r\n\r\n").await?;
    let text = responses(&mut b, 2).await?;
    assert!(text.contains(r#"{"path":"/a","len":3}"#), "{text}");
    assert!(text.contains(r#"{"path":"/b","len":6}"#), "{text}");
    assert!(text.contains("Api-Version: 1.41"));
    drop(b);
    server.await?;
    Ok(())
}

/// Reads from `b` until `n` responses (each with `"len"`) arrived.
async fn responses(b: &mut UnixStream, n: usize) -> anyhow::Result<String> {
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("\"len\"").count() != n {
        let n = b.read(&mut tmp).await?;
        anyhow::ensure!(n > 0, "server closed early");
        got.extend_from_slice(&tmp[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_big_upload_is_handed_over_whole_and_answered_by_the_next_generation(
) -> anyhow::Result<()> {
    // The old generation closed its store: a mutation too big to re-encode (6 MiB, spooled
    // to a file) goes over with its body file, and the request after it as bytes.
    let old = super::Gate::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    old.set_handoff(Arc::new(move |h: gate::Handover| {
        let _ = tx.send(h);
    }));
    old.set_phase(Phase::Released);
    let (a, mut b) = UnixStream::pair()?;
    let g = old.clone();
    let server = tokio::spawn(async move {
        let guard = g.enter_conn();
        serve_conn(a, &Echo, &g, Vec::new(), guard).await
    });
    let body = vec![7u8; 6 << 20];
    let mut req = format!(
        "POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let writer = tokio::spawn(async move {
        b.write_all(&req).await?;
        anyhow::Ok(b)
    });
    let h = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing handed over"))?;
    server.await?;
    let mut b = writer.await??;
    let (parked, file) = h
        .request
        .ok_or_else(|| anyhow::anyhow!("no parked request"))?;
    assert_eq!(parked.method, "POST");
    assert_eq!(parked.raw_target, "/v1.41/images/load?quiet=1");
    assert!(parked.keep_alive);
    // The next generation answers both on the same connection.
    let next = super::Gate::new();
    let stream = UnixStream::from_std(h.stream)?;
    let (bytes, g) = (h.bytes, next.clone());
    tokio::spawn(async move {
        let guard = g.enter_conn();
        let file = std::fs::File::from(file);
        serve_parked(stream, &Echo, &g, parked, file, bytes, guard).await
    });
    let text = responses(&mut b, 2).await?;
    assert!(
        text.contains(r#"{"path":"/images/load","len":6291456}"#),
        "{text}"
    );
    assert!(text.contains(r#"{"path":"/next","len":0}"#), "{text}");
    Ok(())
}
