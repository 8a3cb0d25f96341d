//! Deterministic gzip of a layer tar for a push: a fixed header (no name, mtime 0, OS
//! "unknown" as Go's gzip writes it) and a fixed level, so the same layer always compresses
//! to the same bytes and a second push finds the same blob digest. The compressed bytes
//! leave in [`CHUNK`]-sized pieces (never the whole layer in memory) while their digest and
//! size are computed.

use crate::error::{ApiError, ApiResult};
use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// Size of the pieces handed to the uploader (one PATCH request each).
pub const CHUNK: usize = 2 << 20;

/// What was produced: `sha256:` digest and byte count of the compressed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// `sha256:<hex>` of the gzip stream.
    pub digest: String,
    /// Its length.
    pub size: u64,
}

/// Hands compressed bytes on in [`CHUNK`]s, hashing and counting them.
struct Chunker<F: FnMut(Bytes) -> io::Result<()>> {
    buf: Vec<u8>,
    send: F,
    hash: Sha256,
    size: u64,
}

impl<F: FnMut(Bytes) -> io::Result<()>> Chunker<F> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        (self.send)(Bytes::from(chunk))
    }
}

impl<F: FnMut(Bytes) -> io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        self.size += n as u64;
        if self.buf.len() >= CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts the uncompressed bytes going into the encoder (the `Pushing` progress).
struct Counter<'a, W: Write> {
    inner: W,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Gzips what `write_tar` writes, handing the result to `send` piece by piece and telling
/// `progress` how many uncompressed bytes went in so far.
pub fn compress(
    write_tar: impl FnOnce(&mut dyn Write) -> ApiResult<()>,
    send: impl FnMut(Bytes) -> io::Result<()>,
    progress: &mut dyn FnMut(u64),
) -> ApiResult<Compressed> {
    let chunker = Chunker {
        buf: Vec::with_capacity(CHUNK),
        send,
        hash: Sha256::new(),
        size: 0,
    };
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(chunker, Compression::default());
    let mut counter = Counter {
        inner: gz,
        done: 0,
        progress,
    };
    write_tar(&mut counter)?;
    let mut chunker = counter
        .inner
        .finish()
        .map_err(|e| ApiError::internal("compress layer", e))?;
    chunker
        .emit()
        .map_err(|e| ApiError::internal("compress layer", e))?;
    Ok(Compressed {
        digest: format!("sha256:{}", hex::encode(chunker.hash.finalize())),
        size: chunker.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        // Not very compressible, and more than one chunk once compressed.
        let mut v = Vec::new();
        let mut x: u32 = 1;
        for _ in 0..(3 * CHUNK) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            v.push((x >> 16) as u8);
        }
        v
    }

    fn run(data: &[u8]) -> (Compressed, Vec<Bytes>, u64) {
        let mut chunks = Vec::new();
        let mut last = 0;
        let c = compress(
            |w| {
                w.write_all(data)
                    .map_err(|e| ApiError::internal("write", e))
            },
            |b| {
                chunks.push(b);
                Ok(())
            },
            &mut |n| last = n,
        )
        .expect("compress");
        (c, chunks, last)
    }

    #[test]
    fn same_input_same_blob_and_it_round_trips() {
        let data = sample();
        let (a, chunks, progressed) = run(&data);
        let (b, _, _) = run(&data);
        assert_eq!(a, b, "compression is deterministic");
        assert_eq!(progressed, data.len() as u64);
        assert!(chunks.len() > 1 && chunks.iter().all(|c| c.len() <= CHUNK));
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all.len() as u64, a.size);
        assert_eq!(
            a.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&all)))
        );
        // Go's gzip header: no flags, mtime 0, OS unknown.
        assert_eq!(&all[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);
        let (c, _, _) = run(b"other");
        assert_ne!(c.digest, a.digest);
    }

    #[test]
    fn errors_stop_the_stream() {
        let res = compress(
            |_| Err(ApiError::Internal("tar broke".into())),
            |_| Ok(()),
            &mut |_| {},
        );
        assert!(res.is_err());
        let res = compress(
            |w| {
                w.write_all(&sample())
                    .map_err(|e| ApiError::internal("write", e))
            },
            |_| Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone")),
            &mut |_| {},
        );
        let e = res.expect_err("send failure ends compression").to_string();
        assert!(e.contains("gone"), "{e}");
    }
}
