//! The corpus itself: each hostile tarball, what it tries and what must become of it.

use super::{header, Sentinel, Tar};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Checks the root an accepted entry was unpacked into.
pub type Check = Box<dyn Fn(&Path) -> Result<(), String>>;

/// What an entry point must do with a corpus entry.
pub enum Expect {
    /// Fail, the error containing this text.
    Refused(&'static str),
    /// Succeed; the check reads the resulting root (layer `diff/` or container root).
    Accepted(Check),
}

/// One hostile tarball.
pub struct Case {
    pub name: &'static str,
    /// What it tries.
    pub what: &'static str,
    pub tar: Vec<u8>,
    /// As an image layer (load, import, pull).
    pub layer: Expect,
    /// As a `docker cp` upload when it differs (`.wh.` names are plain files there).
    pub cp: Option<Expect>,
}

fn lstat(root: &Path, rel: &str) -> Result<std::fs::Metadata, String> {
    std::fs::symlink_metadata(root.join(rel)).map_err(|e| format!("{rel}: {e}"))
}

/// `rel` is a regular file holding `data`.
pub fn is_file(root: &Path, rel: &str, data: &[u8]) -> Result<(), String> {
    let m = lstat(root, rel)?;
    if !m.is_file() {
        return Err(format!("{rel} is not a regular file"));
    }
    let got = std::fs::read(root.join(rel)).map_err(|e| e.to_string())?;
    (got == data)
        .then_some(())
        .ok_or(format!("{rel}: content {got:?}"))
}

/// `rel` is a symlink to `target` (kept, not followed).
pub fn is_symlink(root: &Path, rel: &str, target: &str) -> Result<(), String> {
    let m = lstat(root, rel)?;
    if !m.file_type().is_symlink() {
        return Err(format!("{rel} is not a symlink"));
    }
    let t = std::fs::read_link(root.join(rel)).map_err(|e| e.to_string())?;
    (t == Path::new(target))
        .then_some(())
        .ok_or(format!("{rel} -> {t:?}"))
}

/// Nothing at `rel`.
pub fn absent(root: &Path, rel: &str) -> Result<(), String> {
    match std::fs::symlink_metadata(root.join(rel)) {
        Err(_) => Ok(()),
        Ok(m) => Err(format!("{rel} exists ({:o})", m.mode())),
    }
}

fn accept(f: impl Fn(&Path) -> Result<(), String> + 'static) -> Expect {
    Expect::Accepted(Box::new(f))
}

/// The corpus, aimed at `s`.
pub fn corpus(s: &Sentinel) -> Vec<Case> {
    let (abs, rel) = (s.abs(), s.rel());
    let up = "../".repeat(12);
    let mut v = Vec::new();
    let mut add = |name, what, tar: Tar, layer, cp| {
        v.push(Case {
            name,
            what,
            tar: tar.done(),
            layer,
            cp,
        })
    };
    let r = rel.clone();
    add(
        "dotdot",
        "`../` climbs out of the root",
        Tar::default().file(&format!("{up}{rel}/dotdot"), b"1"),
        accept(move |root| is_file(root, &format!("{r}/dotdot"), b"1")),
        None,
    );
    let r = rel.clone();
    add(
        "nested-dotdot",
        "`a/../../…` climbs out after a real component",
        Tar::default()
            .dir("a/")
            .file(&format!("a/../../{up}{rel}/nested"), b"2"),
        accept(move |root| is_file(root, &format!("{r}/nested"), b"2")),
        None,
    );
    let r = rel.clone();
    add(
        "absolute",
        "an absolute name on the host",
        Tar::default().file(&format!("{abs}/abs"), b"3"),
        accept(move |root| is_file(root, &format!("{r}/abs"), b"3")),
        None,
    );
    add(
        "symlink-abs-write",
        "a file written through a symlink to a host directory",
        Tar::default().symlink("l", &abs).file("l/through", b"x"),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "symlink-dotdot-write",
        "a file written through a symlink to `../../..`",
        Tar::default()
            .symlink("u", &format!("{up}{rel}"))
            .file("u/through", b"x"),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "symlink-chain-write",
        "a file written through a chain of symlinks",
        Tar::default()
            .symlink("c1", "c2")
            .symlink("c2", "c3")
            .symlink("c3", &abs)
            .file("c1/x", b"x"),
        Expect::Refused("symlink"),
        None,
    );
    let a = abs.clone();
    add(
        "symlink-kept",
        "a symlink to a host file, nothing through it",
        Tar::default().symlink("to-secret", &format!("{abs}/secret")),
        accept(move |root| is_symlink(root, "to-secret", &format!("{a}/secret"))),
        None,
    );
    add(
        "hardlink-abs",
        "a hardlink to an absolute host file",
        Tar::default().hardlink("h", &format!("{abs}/secret")),
        Expect::Refused("not in the archive"),
        None,
    );
    add(
        "hardlink-dotdot",
        "a hardlink to `../…/secret`",
        Tar::default().hardlink("h", &format!("{up}{rel}/secret")),
        Expect::Refused("not in the archive"),
        None,
    );
    add(
        "hardlink-via-symlink-dir",
        "a hardlink through a symlinked directory",
        Tar::default().symlink("o", &abs).hardlink("h", "o/secret"),
        Expect::Refused("symlink"),
        None,
    );
    let a = abs.clone();
    add(
        "hardlink-to-symlink",
        "a hardlink to a symlink that points out",
        Tar::default()
            .symlink("s", &format!("{abs}/secret"))
            .hardlink("h", "s"),
        accept(move |root| is_symlink(root, "h", &format!("{a}/secret"))),
        None,
    );
    add(
        "dir-swapped-for-symlink",
        "dir `a`, then symlink `a` to the host, then `a/file`",
        Tar::default()
            .dir("a/")
            .symlink("a", &format!("{abs}/sub"))
            .file("a/file", b"x"),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "symlink-then-dir",
        "symlink `s` to the host, then a directory `s/` and `s/f`",
        Tar::default()
            .symlink("s", &abs)
            .dir("s/")
            .file("s/f", b"d"),
        accept(|root| {
            lstat(root, "s")?
                .is_dir()
                .then_some(())
                .ok_or("s is no directory".to_string())?;
            is_file(root, "s/f", b"d")
        }),
        None,
    );
    add(
        "overlay-xattrs",
        "PAX xattrs for overlayfs (redirect, opaque, origin) on a file",
        Tar::default().pax(
            &[
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.trusted.overlay.origin", b"x"),
                ("SCHILY.xattr.user.kept", b"1"),
            ],
            "x",
            b"e",
        ),
        accept(|root| {
            is_file(root, "x", b"e")?;
            let names: Vec<_> = xattr::list(root.join("x"))
                .map_err(|e| e.to_string())?
                .collect();
            let bad: Vec<_> = names
                .iter()
                .filter(|n| n.to_string_lossy().contains("overlay"))
                .collect();
            bad.is_empty()
                .then_some(())
                .ok_or(format!("x has {bad:?}"))?;
            // The PAX header was read: its ordinary xattr is there.
            let kept = xattr::get(root.join("x"), "user.kept").map_err(|e| e.to_string())?;
            (kept.as_deref() == Some(&b"1"[..]))
                .then_some(())
                .ok_or("user.kept missing".into())
        }),
        None,
    );
    add(
        "whiteout-through-symlink",
        "a whiteout `l/.wh.secret` under a symlink to the host (would delete the secret)",
        Tar::default().symlink("l", &abs).file("l/.wh.secret", b""),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "opaque-through-symlink",
        "an opaque whiteout under a symlink to the host (would mark a host dir)",
        Tar::default()
            .symlink("l", &abs)
            .file("l/.wh..wh..opq", b""),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "hardlink-into-symlink-dir",
        "a hardlink created under a symlink to the host",
        Tar::default()
            .file("f", b"f")
            .symlink("o", &abs)
            .hardlink("o/h", "f"),
        Expect::Refused("symlink"),
        None,
    );
    add(
        "devices",
        "character and block device nodes",
        Tar::default()
            .device("mem", b'3', (1, 1))
            .device("sda", b'4', (8, 0))
            .file("ok", b"ok"),
        accept(|root| {
            absent(root, "mem")?;
            absent(root, "sda")?;
            is_file(root, "ok", b"ok")
        }),
        None,
    );
    add(
        "fifo",
        "a named pipe",
        Tar::default().entry(b"pipe", b'6', b"", b"", 0o600),
        accept(|root| {
            let m = lstat(root, "pipe")?;
            m.file_type()
                .is_fifo()
                .then_some(())
                .ok_or("pipe is not a fifo".into())
        }),
        None,
    );
    add(
        "setuid",
        "a setuid-root file (allowed, like dockerd)",
        Tar::default().entry(b"su", b'0', b"", b"#!", 0o4755),
        accept(|root| {
            let m = lstat(root, "su")?;
            (m.mode() & 0o7777 == 0o4755 && m.uid() == 0)
                .then_some(())
                .ok_or(format!("su mode {:o} uid {}", m.mode(), m.uid()))
        }),
        None,
    );
    add(
        "whiteout-dotdot",
        "a whiteout `.wh...` naming the layer's parent",
        Tar::default().file(".wh...", b""),
        Expect::Refused("invalid whiteout"),
        Some(accept(|root| is_file(root, ".wh...", b""))),
    );
    add(
        "whiteout-dot",
        "a whiteout `d/.wh..` naming its own directory",
        Tar::default()
            .dir("d/")
            .file("d/keep", b"k")
            .file("d/.wh..", b""),
        Expect::Refused("invalid whiteout"),
        Some(accept(|root| is_file(root, "d/.wh..", b""))),
    );
    add(
        "whiteout-dir-dotdot",
        "an entry `dir/.wh.../..`",
        Tar::default().dir("w/").file("w/.wh.../..", b"z"),
        accept(|root| is_file(root, "w", b"z")),
        None,
    );
    add(
        "opaque",
        "an opaque whiteout",
        Tar::default()
            .dir("o/")
            .file("o/.wh..wh..opq", b"")
            .file("o/keep", b"k"),
        accept(|root| {
            absent(root, "o/.wh..wh..opq")?;
            let x =
                xattr::get(root.join("o"), "trusted.overlay.opaque").map_err(|e| e.to_string())?;
            (x.as_deref() == Some(&b"y"[..]))
                .then_some(())
                .ok_or("o is not opaque".into())
        }),
        Some(accept(|root| is_file(root, "o/.wh..wh..opq", b""))),
    );
    let r = rel.clone();
    add(
        "pax-long-path",
        "a PAX path that climbs out",
        Tar::default().pax_file(
            &format!("{}{}{up}{rel}/pax", "p/".repeat(60), "../".repeat(60)),
            b"4",
        ),
        accept(move |root| is_file(root, &format!("{r}/pax",), b"4")),
        None,
    );
    let r = rel.clone();
    add(
        "gnu-longname",
        "a GNU long name that climbs out",
        Tar::default()
            .gnu_long(b'L', &format!("{}{up}{rel}/gnu", "../".repeat(40)))
            .file("short", b"5"),
        accept(move |root| is_file(root, &format!("{r}/gnu"), b"5")),
        None,
    );
    add(
        "gnu-longlink",
        "a GNU long hardlink target outside",
        Tar::default()
            .gnu_long(b'K', &format!("{}{up}{rel}/secret", "../".repeat(40)))
            .hardlink("gl", "short"),
        Expect::Refused("not in the archive"),
        None,
    );
    let mut truncated = Tar::default();
    truncated
        .0
        .extend_from_slice(&header(b"big", b'0', b"", (1 << 33) - 1, 0o644, (0, 0)));
    truncated.0.extend_from_slice(&[7u8; 4096]);
    v.push(Case {
        name: "truncated",
        what: "an 8 GiB file with 4 KiB of data",
        tar: truncated.0,
        layer: Expect::Refused("invalid tar stream"),
        cp: None,
    });
    let mut add = |name, what, tar: Tar, layer| {
        v.push(Case {
            name,
            what,
            tar: tar.done(),
            layer,
            cp: None,
        })
    };
    add(
        "nul-and-latin1",
        "a name with a NUL inside and a non-UTF-8 name",
        Tar::default()
            .entry(b"cut\0/../../../etc/x", b'0', b"", b"6", 0o644)
            .entry(b"caf\xe9", b'0', b"", b"7", 0o644),
        accept(|root| {
            is_file(root, "cut", b"6")?;
            let m = std::fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")));
            m.map(|_| ()).map_err(|e| format!("caf\\xe9: {e}"))
        }),
    );
    add(
        "empty-and-dot",
        "entries named `` and `.` that are files",
        Tar::default()
            .file("", b"8")
            .file(".", b"9")
            .file("./", b"a")
            .file("after", b"b"),
        accept(|root| {
            lstat(root, "")?
                .is_dir()
                .then_some(())
                .ok_or("root is no directory".to_string())?;
            is_file(root, "after", b"b")
        }),
    );
    let deep = "d/".repeat(400);
    add(
        "deep",
        "400 nested directories",
        Tar::default().pax_file(&format!("{deep}f"), b"c"),
        accept(move |root| is_file(root, &format!("{deep}f"), b"c")),
    );
    v
}
