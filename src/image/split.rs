//! Tar-split records: while a layer is unpacked, every byte of the uncompressed tar stream
//! except the contents of the regular files we write is recorded (headers, padding, the
//! trailer); file contents are recorded as references to the unpacked file. From the record
//! and the unpacked `diff/` directory `save` re-creates the exact original tar, so its sha256
//! is the layer's diff id, without keeping a second copy of every layer.
//!
//! Format (gzip-compressed): a sequence of records, `R <u32 len> <bytes>` for raw bytes and
//! `F <u64 size> <u32 len> <path>` for file contents, closed by `E <u64 total length>`.

use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;

/// Raw bytes are flushed into a record once this many have accumulated.
const RAW_FLUSH: usize = 1 << 20;

/// Writes a tar-split record file.
pub struct SplitWriter {
    out: flate2::write::GzEncoder<BufWriter<File>>,
    raw: Vec<u8>,
    total: u64,
}

impl SplitWriter {
    /// Creates the record file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let f = File::create(path)?;
        Ok(SplitWriter {
            out: flate2::write::GzEncoder::new(BufWriter::new(f), flate2::Compression::fast()),
            raw: Vec::new(),
            total: 0,
        })
    }

    /// Records raw stream bytes.
    pub fn raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.raw.extend_from_slice(data);
        self.total += data.len() as u64;
        if self.raw.len() >= RAW_FLUSH {
            self.flush_raw()?;
        }
        Ok(())
    }

    fn flush_raw(&mut self) -> io::Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        self.out.write_all(b"R")?;
        self.out.write_all(&(self.raw.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.raw)?;
        self.raw.clear();
        Ok(())
    }

    /// Records that the next `size` stream bytes are the contents of `path` (relative to
    /// the layer's `diff/`).
    pub fn file(&mut self, path: &[u8], size: u64) -> io::Result<()> {
        self.flush_raw()?;
        self.out.write_all(b"F")?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&(path.len() as u32).to_le_bytes())?;
        self.out.write_all(path)?;
        self.total += size;
        Ok(())
    }

    /// Writes the end record and syncs the file.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush_raw()?;
        self.out.write_all(b"E")?;
        self.out.write_all(&self.total.to_le_bytes())?;
        let buf = self.out.finish()?;
        let f = buf.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }
}

enum Record {
    Raw(Vec<u8>),
    File(Vec<u8>, u64),
    End(u64),
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt tar-split record: {msg}"),
    )
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn next_record(r: &mut impl Read, want_raw: bool) -> io::Result<Record> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    match tag[0] {
        b'R' => {
            let n = read_u32(r)? as usize;
            if want_raw {
                let mut v = vec![0u8; n];
                r.read_exact(&mut v)?;
                Ok(Record::Raw(v))
            } else {
                io::copy(&mut r.take(n as u64), &mut io::sink())?;
                Ok(Record::Raw(Vec::with_capacity(0)))
            }
        }
        b'F' => {
            let size = read_u64(r)?;
            let n = read_u32(r)? as usize;
            if n > 64 * 1024 {
                return Err(bad("path too long"));
            }
            let mut p = vec![0u8; n];
            r.read_exact(&mut p)?;
            Ok(Record::File(p, size))
        }
        b'E' => Ok(Record::End(read_u64(r)?)),
        _ => Err(bad("unknown record")),
    }
}

fn open_records(split: &Path) -> io::Result<impl Read> {
    Ok(BufReader::new(flate2::read::GzDecoder::new(
        BufReader::new(File::open(split)?),
    )))
}

/// The length of the tar the record describes (reads only the record).
pub fn tar_len(split: &Path) -> io::Result<u64> {
    let mut r = open_records(split)?;
    loop {
        if let Record::End(total) = next_record(&mut r, false)? {
            return Ok(total);
        }
    }
}

/// Re-creates the tar into `out`; returns `sha256:<hex>` of what was written.
pub fn write_tar(diff: &Path, split: &Path, out: &mut dyn Write) -> io::Result<String> {
    let mut r = open_records(split)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match next_record(&mut r, true)? {
            Record::Raw(v) => {
                h.update(&v);
                out.write_all(&v)?;
            }
            Record::File(p, size) => {
                let path = diff.join(std::ffi::OsStr::from_bytes(&p));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                let mut f = f.take(size);
                let mut left = size;
                while left > 0 {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Err(bad(&format!("{} is shorter than recorded", path.display())));
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                    left -= n as u64;
                }
            }
            Record::End(_) => return Ok(format!("sha256:{}", hex::encode(h.finalize()))),
        }
    }
}

/// Hashes the stream and feeds the tar-split recorder, leaving out file contents that are
/// recorded by reference.
pub(super) struct TeeState {
    pub(super) hasher: Sha256,
    pub(super) pos: u64,
    pub(super) exclude: Option<(u64, u64)>,
    pub(super) split: Option<SplitWriter>,
    pub(super) split_err: Option<io::Error>,
}

impl TeeState {
    fn observe(&mut self, data: &[u8]) {
        self.hasher.update(data);
        let (start, end) = (self.pos, self.pos + data.len() as u64);
        self.pos = end;
        let Some(split) = &mut self.split else { return };
        let res = match self.exclude {
            Some((xs, xe)) if xs < end && xe > start => {
                let a = (xs.max(start) - start) as usize;
                let b = (xe.min(end) - start) as usize;
                split.raw(&data[..a]).and_then(|_| split.raw(&data[b..]))
            }
            _ => split.raw(data),
        };
        if let Err(e) = res {
            self.split_err.get_or_insert(e);
        }
    }

    /// Records the next `size` bytes at `start` as the contents of `path`, if nothing of
    /// them has been read yet.
    pub(super) fn begin_file(&mut self, start: u64, size: u64, path: &[u8]) -> bool {
        if self.pos != start {
            return false;
        }
        let Some(split) = &mut self.split else {
            return false;
        };
        match split.file(path, size) {
            Ok(()) => {
                self.exclude = Some((start, start + size));
                true
            }
            Err(e) => {
                self.split_err.get_or_insert(e);
                false
            }
        }
    }
}

pub(super) struct Tee<R> {
    pub(super) inner: R,
    pub(super) st: Rc<RefCell<TeeState>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.st.borrow_mut().observe(&buf[..n]);
        Ok(n)
    }
}
