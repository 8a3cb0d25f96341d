//! A minimal HTTP/1.1 client over one unix-socket stream: writes one request, reads one
//! response (Content-Length, chunked, or until EOF) and tells whether the connection can carry
//! another. Buffers are owned by [`Http`] and reused across requests and connections.

use crate::record::IoKind;
use std::io::Write as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response (headers + body) accepted, to bound memory on a broken server.
const MAX_RESPONSE: usize = 64 << 20;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The connection failed after connect.
    Io {
        io: IoKind,
        errno: i32,
        received: bool,
        msg: String,
    },
    /// The bytes were not a valid HTTP/1.x response.
    Malformed(String),
}

/// A complete response; its body is in [`Http::body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilEof,
}

/// Reusable request/response buffers.
#[derive(Debug, Default)]
pub(crate) struct Http {
    out: Vec<u8>,
    rbuf: Vec<u8>,
    /// The last response's body (decoded when chunked).
    pub body: Vec<u8>,
}

impl Http {
    /// Sends `method path` (with `body` as JSON when given) and reads the response.
    /// `close` asks the server to close the connection after it.
    pub async fn exchange<S>(
        &mut self,
        stream: &mut S,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        close: bool,
    ) -> Result<Response, Fail>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.out.clear();
        self.rbuf.clear();
        self.body.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth-load\r\n"
        );
        if let Some(b) = body {
            let _ = write!(
                self.out,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        } else if method != "GET" && method != "HEAD" {
            self.out.extend_from_slice(b"Content-Length: 0\r\n");
        }
        if close {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            self.out.extend_from_slice(b);
        }
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| io_fail(&e, false, "writing the request"))?;

        let (status, hdr_len, framing, keep_alive) = loop {
            if !self.rbuf.is_empty() {
                if let Some(head) = parse_head(&self.rbuf)? {
                    break head;
                }
            }
            self.fill(stream, "reading the response head").await?;
        };
        let mut reusable = keep_alive && !close;
        match framing {
            Framing::None => reusable &= self.rbuf.len() == hdr_len,
            Framing::Length(n) => {
                if n > MAX_RESPONSE {
                    return Err(Fail::Malformed(format!("Content-Length {n} is too large")));
                }
                while self.rbuf.len() < hdr_len + n {
                    self.fill(stream, "reading the response body").await?;
                }
                self.body
                    .extend_from_slice(&self.rbuf[hdr_len..hdr_len + n]);
                reusable &= self.rbuf.len() == hdr_len + n;
            }
            Framing::Chunked => {
                let end = self.read_chunked(stream, hdr_len).await?;
                reusable &= self.rbuf.len() == end;
            }
            Framing::UntilEof => {
                reusable = false;
                loop {
                    self.rbuf.reserve(16 << 10);
                    match stream.read_buf(&mut self.rbuf).await {
                        Ok(0) => break,
                        Ok(_) if self.rbuf.len() > MAX_RESPONSE => {
                            return Err(Fail::Malformed("response body is too large".into()))
                        }
                        Ok(_) => {}
                        Err(e) => return Err(io_fail(&e, true, "reading the response body")),
                    }
                }
                self.body.extend_from_slice(&self.rbuf[hdr_len..]);
            }
        }
        Ok(Response { status, reusable })
    }

    /// Decodes a chunked body starting at `pos` into `self.body`; returns the end offset.
    async fn read_chunked<S>(&mut self, stream: &mut S, mut pos: usize) -> Result<usize, Fail>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            let line_end = self.line_end(stream, pos).await?;
            let size = parse_chunk_size(&self.rbuf[pos..line_end])?;
            pos = line_end + 2;
            if size == 0 {
                // Trailer lines up to and including the empty line.
                loop {
                    let end = self.line_end(stream, pos).await?;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Ok(pos);
                    }
                }
            }
            if self.body.len() + size > MAX_RESPONSE {
                return Err(Fail::Malformed("chunked body is too large".into()));
            }
            while self.rbuf.len() < pos + size + 2 {
                self.fill(stream, "reading a response chunk").await?;
            }
            self.body.extend_from_slice(&self.rbuf[pos..pos + size]);
            if &self.rbuf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(Fail::Malformed("chunk not followed by CRLF".into()));
            }
            pos += size + 2;
        }
    }

    /// The offset of the next CRLF at or after `from`, reading more as needed.
    async fn line_end<S>(&mut self, stream: &mut S, from: usize) -> Result<usize, Fail>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            if let Some(i) = self.rbuf[from..].windows(2).position(|w| w == b"\r\n") {
                return Ok(from + i);
            }
            if self.rbuf.len() - from > 4096 {
                return Err(Fail::Malformed("chunk header line too long".into()));
            }
            self.fill(stream, "reading a chunk header").await?;
        }
    }

    /// Reads more of the response into `rbuf`; EOF is a failure.
    async fn fill<S>(&mut self, stream: &mut S, step: &str) -> Result<(), Fail>
    where
        S: AsyncRead + Unpin,
    {
        let received = !self.rbuf.is_empty();
        if self.rbuf.len() > MAX_RESPONSE {
            return Err(Fail::Malformed("response is too large".into()));
        }
        self.rbuf.reserve(16 << 10);
        match stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(Fail::Io {
                io: IoKind::Eof,
                errno: 0,
                received,
                msg: format!(
                    "{step}: connection closed by the server after {} response bytes",
                    self.rbuf.len()
                ),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(io_fail(&e, received, step)),
        }
    }
}

/// Parses the status line and headers; `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, Framing, bool)>, Fail> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Fail::Malformed(format!("bad response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| Fail::Malformed(format!("bad Content-Length {value:?}")))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(',').map(str::trim) {
                if t.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilEof
    };
    Ok(Some((status, len, framing, keep_alive)))
}

/// Parses a chunk-size line (hex, optional `;extensions`).
fn parse_chunk_size(line: &[u8]) -> Result<usize, Fail> {
    let text = std::str::from_utf8(line).unwrap_or("");
    let hex = text.split(';').next().unwrap_or("").trim();
    usize::from_str_radix(hex, 16)
        .map_err(|_| Fail::Malformed(format!("bad chunk size line {text:?}")))
}

/// Classifies an I/O error after connect.
fn io_fail(e: &std::io::Error, received: bool, step: &str) -> Fail {
    let errno = e.raw_os_error().unwrap_or(0);
    let io = match errno {
        libc::ECONNRESET => IoKind::Reset,
        libc::EPIPE => IoKind::BrokenPipe,
        _ if e.kind() == std::io::ErrorKind::UnexpectedEof => IoKind::Eof,
        _ => IoKind::Other,
    };
    Fail::Io {
        io,
        errno,
        received,
        msg: format!("{step}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Runs one exchange against a peer that answers `reply` (in pieces) and then closes
    /// (`close_after`) or stays open.
    async fn exchange(
        reply: &'static [u8],
        close_after: bool,
    ) -> (Result<Response, Fail>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let _ = b.read(&mut req).await;
            for piece in reply.chunks(7) {
                let _ = b.write_all(piece).await;
                tokio::task::yield_now().await;
            }
            if close_after {
                drop(b);
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        let mut http = Http::default();
        let r = http
            .exchange(&mut a, "GET", "/v1.41/_ping", None, false)
            .await;
        let _ = server.await;
        (r, http.body)
    }

    #[tokio::test]
    async fn content_length_and_chunked_and_eof_bodies() {
        let (r, body) = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", false).await;
        assert_eq!(
            r.ok(),
            Some(Response {
                status: 200,
                reusable: true
            })
        );
        assert_eq!(body, b"OK");

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nB\r\n, chunked!!\r\n0\r\nX-T: 1\r\n\r\n";
        let (r, body) = exchange(chunked, false).await;
        assert_eq!(
            r.ok(),
            Some(Response {
                status: 200,
                reusable: true
            })
        );
        assert_eq!(body, b"hello, chunked!!");

        let (r, body) = exchange(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
            true,
        )
        .await;
        assert_eq!(
            r.ok(),
            Some(Response {
                status: 200,
                reusable: false
            })
        );
        assert_eq!(body, b"all of it");

        let (r, _) = exchange(
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(
            r.ok(),
            Some(Response {
                status: 204,
                reusable: false
            })
        );
    }

    #[tokio::test]
    async fn truncated_and_malformed_responses_fail() {
        let (r, _) = exchange(b"", true).await;
        assert!(
            matches!(
                r,
                Err(Fail::Io {
                    io: IoKind::Eof,
                    received: false,
                    ..
                })
            ),
            "{r:?}"
        );
        let (r, _) = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nOK", true).await;
        assert!(
            matches!(
                r,
                Err(Fail::Io {
                    io: IoKind::Eof,
                    received: true,
                    ..
                })
            ),
            "{r:?}"
        );
        let (r, _) = exchange(b"NOT HTTP AT ALL\r\n\r\n", true).await;
        assert!(matches!(r, Err(Fail::Malformed(_))), "{r:?}");
    }
}
