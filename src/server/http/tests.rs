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
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("\"len\"").count() != 2 {
        let n = b.read(&mut tmp).await?;
        anyhow::ensure!(n > 0, "server closed early");
        got.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(r#"{"path":"/a","len":3}"#), "{text}");
    assert!(text.contains(r#"{"path":"/b","len":6}"#), "{text}");
    assert!(text.contains("Api-Version: 1.41"));
    drop(b);
    server.await?;
    Ok(())
}
