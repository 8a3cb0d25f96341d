//! The hostile tarball corpus shared by tests/hostile_layers.rs (and the archives it is
//! wrapped in): every entry built in code from raw headers, each aimed at a host sentinel
//! directory unique to the test process, with what must become of it inside the layer or
//! container root when it is accepted.

#![allow(dead_code)]

mod corpus;
#[allow(unused_imports)]
pub use corpus::*;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// A raw tar stream: headers written byte by byte, so any name, type or size is possible.
#[derive(Default)]
pub struct Tar(pub Vec<u8>);

fn octal(field: &mut [u8], v: u64) {
    let n = field.len() - 1;
    let s = format!("{:0n$o}", v);
    field[..n].copy_from_slice(s.as_bytes());
}

/// One ustar header; `name` and `link` are cut to 100 bytes.
pub fn header(
    name: &[u8],
    kind: u8,
    link: &[u8],
    size: u64,
    mode: u32,
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], dev.0 as u64);
    octal(&mut h[337..345], dev.1 as u64);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

impl Tar {
    pub fn entry(mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8], mode: u32) -> Tar {
        self.0
            .extend_from_slice(&header(name, kind, link, data.len() as u64, mode, (0, 0)));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Tar {
        self.entry(name.as_bytes(), b'0', b"", data, 0o644)
    }
    pub fn dir(self, name: &str) -> Tar {
        self.entry(name.as_bytes(), b'5', b"", b"", 0o755)
    }
    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), b"", 0o777)
    }
    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), b"", 0o644)
    }
    pub fn device(mut self, name: &str, kind: u8, dev: (u32, u32)) -> Tar {
        self.0
            .extend_from_slice(&header(name.as_bytes(), kind, b"", 0, 0o666, dev));
        self
    }
    /// A PAX extended header (`x`) with one `path` record, then a file entry.
    pub fn pax_file(self, path: &str, data: &[u8]) -> Tar {
        self.pax(&[("path", path.as_bytes())], "pax-short-name", data)
    }
    /// A PAX extended header (`x`) with `records`, then the file `name`.
    pub fn pax(self, records: &[(&str, &[u8])], name: &str, data: &[u8]) -> Tar {
        let mut body = Vec::new();
        for (k, v) in records {
            let rec_len = k.len() + v.len() + 3;
            let mut len = rec_len + 1;
            while format!("{len}").len() + rec_len != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.entry(b"PaxHeaders/x", b'x', b"", &body, 0o644)
            .file(name, data)
    }
    /// A GNU `././@LongLink` record of `kind` (`L` name, `K` link target).
    pub fn gnu_long(self, kind: u8, value: &str) -> Tar {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.entry(b"././@LongLink", kind, b"", &v, 0o644)
    }
    /// The end-of-archive marker.
    pub fn done(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// What one host path looked like (no symlink followed).
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub content: Vec<u8>,
}

/// A host directory the corpus aims at: `secret` (0640, "canary") and `sub/` (0750).
pub struct Sentinel {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, Stat>,
}

impl Sentinel {
    pub fn new() -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-hostile-{}-", std::process::id()))
            .tempdir_in("/tmp")
            .expect("sentinel dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"canary").expect("secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::set_permissions(
            dir.path().join("sub"),
            std::fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        let mut s = Sentinel {
            dir,
            before: BTreeMap::new(),
        };
        s.before = s.snapshot();
        s
    }

    /// The sentinel's absolute path.
    pub fn abs(&self) -> String {
        self.dir.path().to_str().expect("utf8").to_string()
    }

    /// The sentinel's path without its leading `/` (where escapes land inside a root).
    pub fn rel(&self) -> String {
        self.abs().trim_start_matches('/').to_string()
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, Stat> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.dir.path().to_path_buf()];
        while let Some(p) = todo.pop() {
            let m = std::fs::symlink_metadata(&p).expect("stat sentinel");
            let content = if m.is_file() {
                std::fs::read(&p).expect("read")
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("link")
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                for e in std::fs::read_dir(&p).expect("ls sentinel") {
                    todo.push(e.expect("entry").path());
                }
            }
            let st = Stat {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: m.nlink(),
                content,
            };
            out.insert(p, st);
        }
        out
    }

    /// Panics naming `what` when anything in the sentinel was created, removed, written,
    /// chmod'ed, chown'ed or linked.
    pub fn assert_untouched(&self, what: &str) {
        let now = self.snapshot();
        assert!(
            now == self.before,
            "{what}: the host sentinel changed:\nbefore {:?}\nafter {:?}",
            self.before,
            now
        );
    }
}

/// `<data-root>/image` of a test daemon.
pub fn image_dir(d: &crate::common::Daemon) -> PathBuf {
    d.path("d/image")
}

/// No work directory or download left in the image store's `tmp/`.
pub fn assert_no_temp(d: &crate::common::Daemon, what: &str) {
    let left: Vec<_> = std::fs::read_dir(image_dir(d).join("tmp"))
        .expect("ls tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "{what}: left in tmp: {left:?}");
}

/// `sha256:<hex>` of `data`.
pub fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The hex part of a digest.
pub fn hex(d: &str) -> String {
    d.trim_start_matches("sha256:").to_string()
}

/// An image config for one layer per tar in `tars`.
pub fn config_for(tars: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ids}});
    serde_json::to_vec(&cfg).expect("config")
}

/// A well-formed transport tar of `(name, data)` files.
pub fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).expect("entry");
    }
    b.into_inner().expect("tar")
}
