//! Request bodies: `Content-Length` and chunked transfer encoding, kept in memory up to
//! a limit and spooled to an unlinked temp file beyond it.

use super::{Body, MAX_HEAD, MEM_BODY};
use bytes::{Buf, BytesMut};
use std::io::Write as _;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// Reads more bytes from the socket into `buf`.
pub(super) async fn fill(stream: &mut UnixStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

/// Accumulates body bytes in memory, switching to a temp file past [`MEM_BODY`].
struct Sink {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
}

impl Sink {
    fn new() -> Self {
        Sink {
            mem: Vec::new(),
            file: None,
        }
    }
    fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            return f.write_all(data);
        }
        self.mem.extend_from_slice(data);
        if self.mem.len() > MEM_BODY {
            let mut f = tempfile::tempfile()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        Ok(())
    }
    fn finish(self) -> Body {
        match self.file {
            Some(f) => Body::File(f),
            None => Body::Mem(self.mem),
        }
    }
}

pub(super) async fn read_sized(
    stream: &mut UnixStream,
    buf: &mut BytesMut,
    len: usize,
) -> std::io::Result<Body> {
    let mut sink = Sink::new();
    let mut left = len;
    while left > 0 {
        if buf.is_empty() && fill(stream, buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        let n = left.min(buf.len());
        sink.push(&buf[..n])?;
        buf.advance(n);
        left -= n;
    }
    Ok(sink.finish())
}

async fn read_line(stream: &mut UnixStream, buf: &mut BytesMut) -> std::io::Result<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.advance(pos + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "chunk line too long",
            ));
        }
        if fill(stream, buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
    }
}

pub(super) async fn read_chunked(
    stream: &mut UnixStream,
    buf: &mut BytesMut,
) -> std::io::Result<Body> {
    let mut sink = Sink::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad chunk size {size_str:?}"),
            )
        })?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if read_line(stream, buf).await?.is_empty() {
                    return Ok(sink.finish());
                }
            }
        }
        let mut left = size;
        while left > 0 {
            if buf.is_empty() && fill(stream, buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body cut short",
                ));
            }
            let n = left.min(buf.len());
            sink.push(&buf[..n])?;
            buf.advance(n);
            left -= n;
        }
        let crlf = read_line(stream, buf).await?;
        if !crlf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "missing CRLF after chunk",
            ));
        }
    }
}
