//! Builders for test tarballs: raw entries (hostile names allowed), a busybox rootfs,
//! docker-archive and OCI-layout archives.

use crate::events::EventBus;
use crate::image::blobs::digest_of;
use crate::image::ImageStore;
use crate::store::Store;
use std::io::Write;
use std::sync::Arc;

/// One raw tar entry.
pub enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let n = name.as_bytes();
    // Written by hand: set_path refuses the hostile names this corpus needs.
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A tar of raw entries, names and link targets unchecked.
pub fn raw_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let res = match e {
            E::File(n, data) => {
                let mut h = header(n, tar::EntryType::Regular, data.len() as u64, 0o644);
                h.set_cksum();
                b.append(&h, *data)
            }
            E::Dir(n) => {
                let mut h = header(n, tar::EntryType::Directory, 0, 0o755);
                h.set_cksum();
                b.append(&h, std::io::empty())
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(n, kind, 0, 0o777);
                let t = t.as_bytes();
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                h.set_cksum();
                b.append(&h, std::io::empty())
            }
            E::Char(n) => {
                let mut h = header(n, tar::EntryType::Char, 0, 0o666);
                let _ = h.set_device_major(1);
                let _ = h.set_device_minor(3);
                h.set_cksum();
                b.append(&h, std::io::empty())
            }
        };
        res.expect("append test entry");
    }
    b.into_inner().expect("finish test tar")
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Makes sure /bin/busybox exists (installing busybox-static when it does not).
pub fn busybox() -> Vec<u8> {
    if !std::path::Path::new("/bin/busybox").exists() {
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status();
    }
    std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)")
}

/// A small root filesystem: bin/busybox with a few applet links, etc/hostname.
pub fn rootfs_tar() -> Vec<u8> {
    let bb = busybox();
    raw_tar(&[
        E::Dir("./"),
        E::Dir("./bin/"),
        E::File("./bin/busybox", &bb),
        E::Symlink("./bin/sh", "busybox"),
        E::Symlink("./bin/ls", "busybox"),
        E::Hardlink("./bin/cat", "./bin/busybox"),
        E::Dir("./etc/"),
        E::File("./etc/hostname", b"berth\n"),
        E::File("./etc/motd", b"hello\n"),
    ])
}

/// A second layer: deletes etc/motd, adds etc/layer2.
pub fn layer2_tar() -> Vec<u8> {
    raw_tar(&[
        E::Dir("etc/"),
        E::File("etc/.wh.motd", b""),
        E::File("etc/layer2", b"two\n"),
    ])
}

/// An image config for `layers` (uncompressed tars).
pub fn config_for(layers: &[&[u8]], cmd: &str, created: &str) -> Vec<u8> {
    let diffs: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin"], "Labels": {"a": "1"}},
        "rootfs": {"type": "layers", "diff_ids": diffs},
        "history": [{"created": created, "created_by": "test"}],
    }))
    .expect("config json")
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).expect("append");
}

/// A docker-archive (dockerd 20.10 layout) with one image; `gz` compresses the layers.
pub fn docker_archive(config: &[u8], layers: &[&[u8]], tags: &[&str], gz: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = format!("{i:064x}");
        let data = if gz { gzip(l) } else { l.to_vec() };
        add(&mut b, &format!("{dir}/VERSION"), b"1.0");
        add(&mut b, &format!("{dir}/layer.tar"), &data);
        paths.push(format!("{dir}/layer.tar"));
    }
    let cfg_name = format!("{}.json", &digest_of(config)[7..]);
    add(&mut b, &cfg_name, config);
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": tags, "Layers": paths}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    b.into_inner().expect("finish")
}

/// An OCI layout (gzip layers) with one image named by annotations.
pub fn oci_layout(config: &[u8], layers: &[&[u8]], name: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut descs = Vec::new();
    for l in layers {
        let data = gzip(l);
        let d = digest_of(&data);
        add(&mut b, &format!("blobs/sha256/{}", &d[7..]), &data);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": data.len()}));
    }
    let cd = digest_of(config);
    add(&mut b, &format!("blobs/sha256/{}", &cd[7..]), config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .expect("json");
    let md = digest_of(&manifest);
    add(&mut b, &format!("blobs/sha256/{}", &md[7..]), &manifest);
    let mut ann = serde_json::Map::new();
    if let Some(n) = name {
        ann.insert("io.containerd.image.name".into(), n.into());
        ann.insert("org.opencontainers.image.ref.name".into(), "latest".into());
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": manifest.len(), "annotations": ann}]});
    add(
        &mut b,
        "index.json",
        &serde_json::to_vec(&index).expect("json"),
    );
    b.into_inner().expect("finish")
}

/// A store in a temp dir, with its event bus.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub events: Arc<EventBus>,
    pub images: ImageStore,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let events = Arc::new(EventBus::new());
        let images =
            ImageStore::open(&dir.path().join("image"), &store, events.clone()).expect("open");
        TestStore {
            dir,
            events,
            images,
        }
    }

    /// Actions of the image events so far.
    pub fn actions(&self) -> Vec<String> {
        self.events
            .subscribe_after(None)
            .past
            .into_iter()
            .map(|e| e.action)
            .collect()
    }

    /// Loads `archive`, returning the progress lines.
    pub fn load(&self, archive: &[u8]) -> crate::error::ApiResult<Vec<String>> {
        let mut lines = Vec::new();
        self.images
            .load(&mut std::io::Cursor::new(archive), &mut |l| lines.push(l))?;
        Ok(lines)
    }
}
