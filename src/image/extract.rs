//! Hostile-input-safe tar extraction, written on the `tar` crate's entry reader (never its
//! `unpack`).
//!
//! * Paths are cleaned lexically: absolute paths lose their `/`, `..` never climbs above the
//!   destination.
//! * No symlink is ever followed: every parent component of an entry must be a real
//!   directory inside the destination (created when missing); an entry whose parent is a
//!   symlink or a file is refused. Files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//!   metadata is set with the no-follow variants. The destination is a fresh private temp
//!   directory nobody else writes to, so checking each component before use is race-free;
//!   `docker cp` into a live container ([`Mode::Cp`]) runs this in a thread chrooted to the
//!   container root (`container::chroot`), so even a racing container process cannot
//!   make a path lead outside.
//! * Hardlinks must point to an existing non-directory inside the destination.
//! * Character and block devices are skipped; overlay whiteouts are made by us:
//!   `.wh.<name>` becomes a 0:0 character device `<name>`, `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory (layers only).
//! * gzip input is detected by its magic bytes; the diff id is the sha256 of the
//!   uncompressed stream, read to its very end.

use super::split::{SplitWriter, Tee, TeeState};
use crate::error::{ApiError, ApiResult};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;

use super::extract_mode::check_kind;
pub use super::extract_mode::Mode;

/// The result of an extraction.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// `sha256:<hex>` of the uncompressed stream.
    pub diff_id: String,
    /// Bytes of regular-file content written.
    pub size: u64,
    /// Whether the tar-split record is complete (false: the layer cannot be saved exactly).
    pub split_ok: bool,
}

fn bad(entry: &[u8], msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!(
        "unpack: entry {:?}: {msg}",
        String::from_utf8_lossy(entry)
    ))
}

fn fs_err(step: &str, path: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("unpack: {step} {}: {e}", path.display()))
}

fn stream_err(e: io::Error) -> ApiError {
    ApiError::BadRequest(format!("unpack: invalid tar stream: {e}"))
}

/// Cleans an entry path into components that stay inside the destination.
pub fn clean(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

/// Walks `comps` below `root`, requiring each to be a real directory; creates missing ones
/// (mode 0755) when `create`.
fn ensure_dirs(root: &Path, comps: &[Vec<u8>], create: bool, entry: &[u8]) -> ApiResult<PathBuf> {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(OsStr::from_bytes(c));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(
                    entry,
                    format!(
                        "{:?} is a symlink; refusing to follow it",
                        p.strip_prefix(root).unwrap_or(&p)
                    ),
                ))
            }
            Ok(_) => {
                return Err(bad(
                    entry,
                    format!(
                        "{:?} is not a directory",
                        p.strip_prefix(root).unwrap_or(&p)
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(|e| fs_err("create directory", &p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .map_err(|e| fs_err("chmod", &p, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad(
                    entry,
                    format!(
                        "{:?} is not in the archive",
                        p.strip_prefix(root).unwrap_or(&p)
                    ),
                ))
            }
            Err(e) => return Err(fs_err("stat", &p, e)),
        }
    }
    Ok(p)
}

/// Ownership, times and xattrs from the header and PAX records.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn read_meta<R: Read>(e: &mut tar::Entry<R>) -> ApiResult<Meta> {
    let h = e.header();
    // Empty numeric fields (seen in hand-made archives) count as zero.
    let mut m = Meta {
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    if let Some(exts) = e.pax_extensions().map_err(stream_err)? {
        for ext in exts {
            let ext = ext.map_err(stream_err)?;
            let (Ok(k), v) = (ext.key(), ext.value_bytes()) else {
                continue;
            };
            let num = || {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
            };
            match k {
                "uid" => m.uid = num().unwrap_or(m.uid as i64) as u64,
                "gid" => m.gid = num().unwrap_or(m.gid as i64) as u64,
                "mtime" => m.mtime = num().unwrap_or(m.mtime),
                _ => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        // Never let a layer set overlayfs' own attributes.
                        if name == "security.capability" || name.starts_with("user.") {
                            m.xattrs.push((name.to_string(), v.to_vec()));
                        }
                    }
                }
            }
        }
    }
    Ok(m)
}

fn set_mtime(p: &Path, secs: i64) -> ApiResult<()> {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| fs_err("set times", p, e))
}

fn apply_meta(p: &Path, m: &Meta, symlink: bool, mode: Mode) -> ApiResult<()> {
    if mode.owners() {
        let (uid, gid) = match mode {
            Mode::Cp {
                chown: Some(owner), ..
            } => owner,
            _ => (
                u32::try_from(m.uid).map_err(|_| fs_err("chown", p, "uid out of range"))?,
                u32::try_from(m.gid).map_err(|_| fs_err("chown", p, "gid out of range"))?,
            ),
        };
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| fs_err("chown", p, e))?;
        for (k, v) in &m.xattrs {
            if let Err(e) = xattr::set(p, k, v) {
                tracing::debug!(path = %p.display(), xattr = %k, error = %e, "xattr not applied");
            }
        }
    }
    if !symlink {
        let bits = if mode.owners() {
            m.mode & 0o7777
        } else {
            (m.mode & 0o777) | 0o600
        };
        fs::set_permissions(p, fs::Permissions::from_mode(bits))
            .map_err(|e| fs_err("chmod", p, e))?;
    }
    Ok(())
}

/// Removes whatever is at `p` (not following links); keeps a directory when `keep_dir`.
fn clear(p: &Path, keep_dir: bool) -> ApiResult<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(p).map_err(|e| fs_err("remove", p, e))?;
        }
        Ok(_) => fs::remove_file(p).map_err(|e| fs_err("remove", p, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fs_err("stat", p, e)),
    }
    Ok(false)
}

struct State {
    root: PathBuf,
    mode: Mode,
    tee: Rc<RefCell<TeeState>>,
    dir_times: Vec<(PathBuf, i64)>,
    by_ref: HashSet<Vec<u8>>,
    split_ok: bool,
    size: u64,
}

impl State {
    /// A path is about to be replaced: file contents recorded by reference at or below it
    /// would change, so the tar-split record becomes unusable.
    fn replacing(&mut self, rel: &[u8]) {
        if self.by_ref.is_empty() {
            return;
        }
        let prefix = [rel, b"/"].concat();
        if self
            .by_ref
            .iter()
            .any(|p| p == rel || p.starts_with(&prefix))
        {
            self.split_ok = false;
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>) -> ApiResult<()> {
        let raw = e.path_bytes().into_owned();
        let kind = e.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean(&raw);
        let Some((name, parents)) = comps.split_last() else {
            // The root itself: only its metadata matters.
            if kind.is_dir() && self.mode == Mode::Layer {
                let m = read_meta(e)?;
                apply_meta(&self.root, &m, false, self.mode)?;
                self.dir_times.push((self.root.clone(), m.mtime));
            }
            return Ok(());
        };
        let rel = comps.join(&b'/');
        if self.mode == Mode::Layer {
            if let Some(target) = name.strip_prefix(b".wh.") {
                // `.wh..` and `.wh...` would name the directory itself or its parent.
                if target == b"." || target == b".." {
                    return Err(bad(&raw, "invalid whiteout name"));
                }
                let dir = ensure_dirs(&self.root, parents, true, &raw)?;
                if target == b".wh..opq" {
                    xattr::set(&dir, "trusted.overlay.opaque", b"y")
                        .map_err(|e| fs_err("mark opaque", &dir, e))?;
                } else if !target.starts_with(b".wh.") && !target.is_empty() {
                    let p = dir.join(OsStr::from_bytes(target));
                    let mut t = parents.to_vec();
                    t.push(target.to_vec());
                    let trel = t.join(&b'/');
                    self.replacing(&trel);
                    clear(&p, false)?;
                    nix::sys::stat::mknod(
                        &p,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|err| fs_err("create whiteout", &p, err))?;
                }
                return Ok(());
            }
        }
        let dir = ensure_dirs(&self.root, parents, true, &raw)?;
        let p = dir.join(OsStr::from_bytes(name));
        let m = read_meta(e)?;
        check_kind(&p, kind == EntryType::Directory, self.mode, &self.root)?;
        match kind {
            EntryType::Directory => {
                self.replacing(&rel);
                if !clear(&p, true)? {
                    fs::create_dir(&p).map_err(|err| fs_err("create directory", &p, err))?;
                }
                apply_meta(&p, &m, false, self.mode)?;
                self.dir_times.push((p, m.mtime));
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.replacing(&rel);
                clear(&p, false)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|err| fs_err("create file", &p, err))?;
                if kind != EntryType::GNUSparse && e.size() > 0 {
                    let start = e.raw_file_position();
                    if self.tee.borrow_mut().begin_file(start, e.size(), &rel) {
                        self.by_ref.insert(rel.clone());
                    }
                }
                self.size += io::copy(e, &mut f).map_err(stream_err)?;
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(&raw, "symlink without target"))?
                    .into_owned();
                self.replacing(&rel);
                clear(&p, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &p)
                    .map_err(|err| fs_err("create symlink", &p, err))?;
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(&raw, "hardlink without target"))?
                    .into_owned();
                let tcomps = clean(&target);
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(bad(&raw, "hardlink to the root"));
                };
                let tdir = ensure_dirs(&self.root, tparents, false, &raw)?;
                let tp = tdir.join(OsStr::from_bytes(tname));
                match fs::symlink_metadata(&tp) {
                    Ok(tm) if !tm.file_type().is_dir() => {}
                    Ok(_) => return Err(bad(&raw, "hardlink to a directory")),
                    Err(_) => {
                        return Err(bad(
                            &raw,
                            format!(
                                "hardlink target {:?} is not in the archive",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                }
                if tp == p {
                    return Ok(());
                }
                self.replacing(&rel);
                clear(&p, false)?;
                // linkat without AT_SYMLINK_FOLLOW: links the entry itself, never a target.
                fs::hard_link(&tp, &p).map_err(|err| fs_err("create hardlink", &p, err))?;
                return Ok(());
            }
            EntryType::Fifo => {
                self.replacing(&rel);
                clear(&p, false)?;
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|err| fs_err("create fifo", &p, err))?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::debug!(entry = %String::from_utf8_lossy(&raw), "skipping device node");
                return Ok(());
            }
            _ => {
                tracing::debug!(entry = %String::from_utf8_lossy(&raw), ?kind, "skipping entry of unsupported type");
                return Ok(());
            }
        }
        let symlink = kind == EntryType::Symlink;
        apply_meta(&p, &m, symlink, self.mode)?;
        set_mtime(&p, m.mtime)
    }
}

/// Unpacks the (optionally gzip-compressed) tar `src` into the existing directory `dest`,
/// recording a tar-split file at `split` when given.
pub fn extract(
    src: &mut dyn Read,
    dest: &Path,
    mode: Mode,
    split: Option<&Path>,
) -> ApiResult<Extracted> {
    let mut br = BufReader::with_capacity(64 * 1024, src);
    let head = br.fill_buf().map_err(stream_err)?;
    let zstd = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let decoded: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if zstd {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(br)
                .map_err(|e| ApiError::BadRequest(format!("unpack: zstd: {e}")))?,
        )
    } else {
        Box::new(br)
    };
    let split = match split {
        Some(p) => Some(SplitWriter::create(p).map_err(|e| fs_err("create", p, e))?),
        None => None,
    };
    let tee = Rc::new(RefCell::new(TeeState {
        hasher: Sha256::new(),
        pos: 0,
        exclude: None,
        split,
        split_err: None,
    }));
    let mut ar = tar::Archive::new(Tee {
        inner: decoded,
        st: tee.clone(),
    });
    let mut st = State {
        root: dest.to_path_buf(),
        mode,
        tee: tee.clone(),
        dir_times: Vec::new(),
        by_ref: HashSet::new(),
        split_ok: true,
        size: 0,
    };
    for entry in ar.entries().map_err(stream_err)? {
        let mut e = entry.map_err(stream_err)?;
        st.entry(&mut e)?;
    }
    // The diff id covers the whole stream, trailer and padding included.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(stream_err)?;
    drop(rest);
    let State {
        dir_times,
        split_ok,
        size,
        tee: own_ref,
        ..
    } = st;
    drop(own_ref);
    for (p, t) in dir_times.iter().rev() {
        set_mtime(p, *t)?;
    }
    let state = Rc::try_unwrap(tee)
        .map_err(|_| ApiError::Internal("unpack: stream still borrowed".into()))?
        .into_inner();
    let mut split_ok = split_ok && state.split_err.is_none();
    if let Some(w) = state.split {
        if let Err(e) = w.finish() {
            tracing::warn!(error = %e, "tar-split record not written");
            split_ok = false;
        }
    }
    Ok(Extracted {
        diff_id: format!("sha256:{}", hex::encode(state.hasher.finalize())),
        size,
        split_ok,
    })
}
