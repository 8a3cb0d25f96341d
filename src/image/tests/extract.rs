//! Hostile tarballs, whiteouts and tar-split round trips.

use super::util::{gzip, raw_tar, rootfs_tar, E};
use crate::image::blobs::digest_of;
use crate::image::extract::{extract, Extracted, Mode};
use crate::image::split::{tar_len, write_tar};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A sandbox: `outside/` holds a canary file that must never change; `dest/` is the layer.
struct Sandbox {
    _dir: tempfile::TempDir,
    outside: PathBuf,
    dest: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        let dest = dir.path().join("dest");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::create_dir(&dest).expect("mkdir");
        std::fs::write(outside.join("secret"), b"canary").expect("write");
        Sandbox {
            _dir: dir,
            outside,
            dest,
        }
    }

    fn run(&self, tar: &[u8]) -> crate::error::ApiResult<Extracted> {
        extract(
            &mut std::io::Cursor::new(tar),
            &self.dest,
            Mode::Layer,
            None,
        )
    }

    /// Nothing but the canary outside the layer, and the canary intact with one link.
    fn assert_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .expect("read outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secret")],
            "outside changed"
        );
        let secret = self.outside.join("secret");
        assert_eq!(std::fs::read(&secret).expect("read"), b"canary");
        assert_eq!(std::fs::metadata(&secret).expect("stat").nlink(), 1);
        let parent = self.outside.parent().expect("parent");
        let mut top: Vec<_> = std::fs::read_dir(parent)
            .expect("read sandbox")
            .map(|e| e.expect("entry").file_name())
            .collect();
        top.sort();
        assert_eq!(top, vec!["dest", "outside"]);
    }
}

#[test]
fn dotdot_and_absolute_paths_stay_inside() {
    let sb = Sandbox::new();
    let t = raw_tar(&[
        E::File("../x", b"1"),
        E::File("/abs", b"2"),
        E::File("a/../../../y", b"3"),
    ]);
    sb.run(&t).expect("extract");
    assert_eq!(std::fs::read(sb.dest.join("x")).expect("x"), b"1");
    assert_eq!(std::fs::read(sb.dest.join("abs")).expect("abs"), b"2");
    assert_eq!(std::fs::read(sb.dest.join("y")).expect("y"), b"3");
    sb.assert_untouched();
}

#[test]
fn writes_through_symlinks_are_refused() {
    let cases: Vec<(String, String)> = vec![
        ("/".to_string(), "a/etc/passwd".to_string()),
        ("../outside".to_string(), "a/pwned".to_string()),
        ("PLACEHOLDER".to_string(), "a/pwned".to_string()),
    ];
    for (target, through) in cases {
        let sb = Sandbox::new();
        let target = if target == "PLACEHOLDER" {
            sb.outside.display().to_string()
        } else {
            target
        };
        let t = raw_tar(&[E::Symlink("a", &target), E::File(&through, b"owned")]);
        let err = sb.run(&t).expect_err("must refuse");
        assert_eq!(err.status(), 400, "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(
            std::fs::read_link(sb.dest.join("a")).expect("link"),
            Path::new(&target)
        );
        sb.assert_untouched();
    }
    // A symlink dir created first, then a directory entry and a file through it.
    let sb = Sandbox::new();
    let t = raw_tar(&[
        E::Symlink("d", "../outside"),
        E::Dir("d/sub/"),
        E::File("d/sub/f", b"x"),
    ]);
    assert!(sb.run(&t).is_err());
    sb.assert_untouched();
}

#[test]
fn a_file_replacing_a_symlink_never_writes_through_it() {
    let sb = Sandbox::new();
    let t = raw_tar(&[
        E::Symlink("s", "../outside/secret"),
        E::File("s", b"replaced"),
    ]);
    sb.run(&t).expect("extract");
    assert_eq!(std::fs::read(sb.dest.join("s")).expect("s"), b"replaced");
    assert!(!std::fs::symlink_metadata(sb.dest.join("s"))
        .expect("stat")
        .file_type()
        .is_symlink());
    sb.assert_untouched();
}

#[test]
fn hardlinks_must_stay_inside_the_layer() {
    for target in ["/etc/passwd", "../outside/secret", "etc/passwd"] {
        let sb = Sandbox::new();
        let t = raw_tar(&[E::Hardlink("h", target)]);
        let err = sb.run(&t).expect_err("must refuse");
        assert!(err.to_string().contains("not in the archive"), "{err}");
        assert!(std::fs::symlink_metadata(sb.dest.join("h")).is_err());
        sb.assert_untouched();
    }
    // Through a symlinked parent: refused as well.
    let sb = Sandbox::new();
    let t = raw_tar(&[E::Symlink("o", "../outside"), E::Hardlink("h", "o/secret")]);
    assert!(sb.run(&t).is_err());
    sb.assert_untouched();
    // Inside the layer: fine, and the link shares the inode.
    let sb = Sandbox::new();
    let t = raw_tar(&[E::File("f", b"data"), E::Hardlink("g", "/f")]);
    sb.run(&t).expect("extract");
    let (f, g) = (
        std::fs::metadata(sb.dest.join("f")),
        std::fs::metadata(sb.dest.join("g")),
    );
    assert_eq!(f.expect("f").ino(), g.expect("g").ino());
}

#[test]
fn device_nodes_are_skipped() {
    let sb = Sandbox::new();
    let t = raw_tar(&[E::Char("dev/null"), E::File("ok", b"1")]);
    sb.run(&t).expect("extract");
    assert!(std::fs::symlink_metadata(sb.dest.join("dev/null")).is_err());
    assert!(sb.dest.join("ok").exists());
    sb.assert_untouched();
}

#[test]
fn whiteouts_become_overlay_whiteouts() -> anyhow::Result<()> {
    let sb = Sandbox::new();
    let t = raw_tar(&[
        E::Dir("etc/"),
        E::File("etc/.wh.motd", b""),
        E::Dir("var/cache/"),
        E::File("var/cache/.wh..wh..opq", b""),
        E::File("var/cache/new", b"n"),
    ]);
    sb.run(&t)?;
    let m = std::fs::symlink_metadata(sb.dest.join("etc/motd"))?;
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(std::fs::symlink_metadata(sb.dest.join("etc/.wh.motd")).is_err());
    let opq = xattr::get(sb.dest.join("var/cache"), "trusted.overlay.opaque")?;
    assert_eq!(opq.as_deref(), Some(&b"y"[..]));
    assert!(std::fs::symlink_metadata(sb.dest.join("var/cache/.wh..wh..opq")).is_err());
    assert!(sb.dest.join("var/cache/new").exists());
    Ok(())
}

#[test]
fn metadata_is_preserved() -> anyhow::Result<()> {
    let sb = Sandbox::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("d/f")?;
    h.set_size(2);
    h.set_mode(0o4750);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, &b"hi"[..])?;
    let mut h = tar::Header::new_gnu();
    h.set_path("d/")?;
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o711);
    h.set_size(0);
    h.set_mtime(1_500_000_000);
    h.set_cksum();
    b.append(&h, std::io::empty())?;
    sb.run(&b.into_inner()?)?;
    let m = std::fs::metadata(sb.dest.join("d/f"))?;
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o4750, 1234, 5678, 1_600_000_000)
    );
    let d = std::fs::metadata(sb.dest.join("d"))?;
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o711, 1_500_000_000));
    Ok(())
}

/// Extracts with a tar-split record and re-creates the exact uncompressed tar.
fn round_trip(input: &[u8], uncompressed: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("diff");
    std::fs::create_dir(&dest)?;
    let split = dir.path().join("split");
    let ex = extract(
        &mut std::io::Cursor::new(input),
        &dest,
        Mode::Layer,
        Some(&split),
    )?;
    assert!(ex.split_ok);
    assert_eq!(ex.diff_id, digest_of(uncompressed));
    assert_eq!(tar_len(&split)?, uncompressed.len() as u64);
    let mut out = Vec::new();
    let d = write_tar(&dest, &split, &mut out)?;
    assert_eq!(d, ex.diff_id);
    assert!(out == uncompressed, "re-created tar differs");
    // The record holds headers, not contents.
    assert!(std::fs::metadata(&split)?.len() < 64 * 1024);
    Ok(())
}

#[test]
fn tar_split_recreates_plain_gzip_and_long_name_tars() -> anyhow::Result<()> {
    let rootfs = rootfs_tar();
    round_trip(&rootfs, &rootfs)?;
    round_trip(&gzip(&rootfs), &rootfs)?;
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/file", "d".repeat(150));
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o600);
    b.append_data(&mut h, &long, &b"abc"[..])?;
    let long2 = format!("{}/other", "e".repeat(120));
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    b.append_data(&mut h, &long2, &b"z"[..])?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "lnk", &long2)?;
    let t = b.into_inner()?;
    round_trip(&t, &t)
}

#[test]
fn duplicate_entries_mark_the_split_unusable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let t = raw_tar(&[E::File("f", b"one"), E::File("f", b"two")]);
    let ex = extract(
        &mut std::io::Cursor::new(&t),
        dir.path(),
        Mode::Layer,
        Some(&dir.path().join("s")),
    )?;
    assert!(!ex.split_ok);
    assert_eq!(std::fs::read(dir.path().join("f"))?, b"two");
    Ok(())
}

#[test]
fn garbage_is_a_bad_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = vec![0x42u8; 2000];
    let err = extract(
        &mut std::io::Cursor::new(&junk),
        dir.path(),
        Mode::Layer,
        None,
    )
    .expect_err("junk");
    assert_eq!(err.status(), 400, "{err}");
}

#[test]
fn cp_mode_keeps_wh_names_modes_and_dir_kinds() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let s = Sandbox::new();
    let cp = |no_overwrite: bool, chown: Option<(u32, u32)>, tar: &[u8]| {
        extract(
            &mut std::io::Cursor::new(tar),
            &s.dest,
            Mode::Cp {
                no_overwrite_dir_non_dir: no_overwrite,
                chown,
            },
            None,
        )
    };
    cp(
        false,
        Some((1234, 4321)),
        &raw_tar(&[
            E::Dir("d"),
            E::File("d/.wh.f", b"plain"),
            E::File("x", b"1"),
        ]),
    )?;
    // `.wh.` is an ordinary name for `docker cp`, not a whiteout.
    assert_eq!(std::fs::read(s.dest.join("d/.wh.f"))?, b"plain");
    let md = std::fs::metadata(s.dest.join("x"))?;
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 4321, 0o644)
    );
    // noOverwriteDirNonDir refuses swapping kinds both ways and changes nothing.
    let e = cp(true, None, &raw_tar(&[E::File("d", b"file")])).expect_err("dir kept");
    assert!(e.to_string().contains("cannot overwrite directory"), "{e}");
    let e = cp(true, None, &raw_tar(&[E::Dir("x")])).expect_err("file kept");
    assert!(
        e.to_string().contains("cannot overwrite non-directory"),
        "{e}"
    );
    assert!(s.dest.join("d").is_dir() && s.dest.join("x").is_file());
    // Without it, a file replaces a directory like dockerd's untar.
    cp(false, None, &raw_tar(&[E::File("d", b"file")]))?;
    assert_eq!(std::fs::read(s.dest.join("d"))?, b"file");
    s.assert_untouched();
    Ok(())
}

#[test]
fn whiteouts_naming_the_directory_or_its_parent_are_refused() {
    for name in [".wh...", "d/.wh..", "d/.wh..."] {
        let sb = Sandbox::new();
        let t = raw_tar(&[E::Dir("d/"), E::File("d/keep", b"k"), E::File(name, b"")]);
        let err = sb.run(&t).expect_err(name);
        assert_eq!(err.status(), 400, "{name}: {err}");
        assert!(
            err.to_string().contains("invalid whiteout"),
            "{name}: {err}"
        );
        assert_eq!(std::fs::read(sb.dest.join("d/keep")).expect("keep"), b"k");
        sb.assert_untouched();
    }
}
