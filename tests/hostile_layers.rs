//! The hostile tarball corpus (tests/hostile_util) through every way a tar reaches berthd,
//! with the real docker CLI: as the layer of a `docker load` archive (docker-save and OCI
//! layout), as the load archive itself, through `docker import`, as a `docker cp` upload
//! into a running container, and as a layer pulled from a local `docker-registry` (digests
//! right, so only the extractor stands in the way). Each entry is either refused with the
//! extractor's error and leaves no image, layer or temp file, or accepted with its hostile
//! part neutralised inside the layer or container root; the host sentinel never changes.
//!
//! Device nodes: berth skips character and block devices in layers and uploads (dockerd as
//! root would create them); a container gets only the devices its runtime config gives it.

mod common;
mod hostile_util;
#[allow(dead_code)]
mod registry_util;

use common::{is_root, Daemon};
use hostile_util::{
    archive, assert_no_temp, config_for, corpus, hex, image_dir, Case, Expect, Sentinel,
};
use registry_util::{gzip, push_image, sha, Registry};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The unpacked root of the one-layer image whose layer is `tar`.
fn layer_root(d: &Daemon, tar: &[u8]) -> PathBuf {
    image_dir(d)
        .join("layers")
        .join(sha(tar).trim_start_matches("sha256:"))
        .join("diff")
}

/// Runs `docker args`; checks the outcome against `expect` (`root` is where an accepted
/// entry ended up) and that the host and the store's tmp are clean.
fn check(d: &Daemon, s: &Sentinel, c: &Case, how: &str, args: &[&str], root: &Path, image: &str) {
    let what = format!("{how} {} ({})", c.name, c.what);
    let out = d.docker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match &c.layer {
        Expect::Refused(msg) => {
            assert!(!out.status.success(), "{what}: accepted");
            assert!(
                stderr.contains(msg),
                "{what}: error {stderr:?} lacks {msg:?}"
            );
            assert!(
                !root.exists(),
                "{what}: layer {} left behind",
                root.display()
            );
            let ids = d.ok(&["images", "-q", image]);
            assert!(ids.is_empty(), "{what}: image {image} exists");
        }
        Expect::Accepted(f) => {
            assert!(out.status.success(), "{what}: refused: {stderr}");
            if let Err(e) = f(root) {
                panic!("{what}: {e}");
            }
        }
    }
    s.assert_untouched(&what);
    assert_no_temp(d, &what);
}

fn start() -> Option<(Daemon, Sentinel, Vec<Case>)> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let s = Sentinel::new();
    let c = corpus(&s);
    Some((Daemon::start(), s, c))
}

#[test]
fn corpus_as_docker_save_layers() {
    let Some((d, s, cases)) = start() else { return };
    for c in &cases {
        let cfg = config_for(&[&c.tar]);
        let (lh, ch) = (hex(&sha(&c.tar)), hex(&sha(&cfg)));
        let tag = format!("hostile-{}:save", c.name);
        let manifest = json!([{"Config": format!("{ch}.json"), "RepoTags": [tag],
            "Layers": [format!("{lh}/layer.tar")]}]);
        let t = archive(&[
            (format!("{ch}.json"), cfg),
            (format!("{lh}/layer.tar"), c.tar.clone()),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ]);
        let file = d.path("save.tar");
        std::fs::write(&file, t).expect("write");
        let args = ["load", "-i", file.to_str().expect("utf8")];
        check(
            &d,
            &s,
            c,
            "load (docker-save)",
            &args,
            &layer_root(&d, &c.tar),
            &tag,
        );
    }
}

#[test]
fn corpus_as_oci_layout_layers() {
    let Some((d, s, cases)) = start() else { return };
    for c in &cases {
        let cfg = config_for(&[&c.tar]);
        let tag = format!("hostile-{}:oci", c.name);
        let manifest = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(&cfg), "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha(&c.tar), "size": c.tar.len()}]});
        let m = manifest.to_string().into_bytes();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&m), "size": m.len(),
            "annotations": {"io.containerd.image.name": tag}}]});
        let t = archive(&[
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index.to_string().into_bytes()),
            (format!("blobs/sha256/{}", hex(&sha(&m))), m.clone()),
            (format!("blobs/sha256/{}", hex(&sha(&cfg))), cfg),
            (format!("blobs/sha256/{}", hex(&sha(&c.tar))), c.tar.clone()),
        ]);
        let file = d.path("oci.tar");
        std::fs::write(&file, t).expect("write");
        let args = ["load", "-i", file.to_str().expect("utf8")];
        check(
            &d,
            &s,
            c,
            "load (OCI)",
            &args,
            &layer_root(&d, &c.tar),
            &tag,
        );
    }
}

#[test]
fn corpus_as_the_load_archive_itself() {
    let Some((d, s, cases)) = start() else { return };
    for c in &cases {
        let file = d.path("outer.tar");
        std::fs::write(&file, &c.tar).expect("write");
        let what = format!("load of the bare {} tar", c.name);
        let err = d.fails(&["load", "-i", file.to_str().expect("utf8")]);
        assert!(
            err.contains("invalid archive") || err.contains("unpack"),
            "{what}: {err}"
        );
        s.assert_untouched(&what);
        assert_no_temp(&d, &what);
    }
    assert!(d.ok(&["images", "-q"]).is_empty());
}

#[test]
fn corpus_through_docker_import() {
    let Some((d, s, cases)) = start() else { return };
    for c in &cases {
        let file = d.path("import.tar");
        std::fs::write(&file, &c.tar).expect("write");
        let tag = format!("hostile-{}:import", c.name);
        let args = ["import", file.to_str().expect("utf8"), &tag];
        check(&d, &s, c, "import", &args, &layer_root(&d, &c.tar), &tag);
    }
}

#[test]
fn corpus_as_layers_pulled_from_a_registry() {
    let Some((d, s, cases)) = start() else { return };
    let reg = Registry::start(None);
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    for c in &cases {
        push_image(
            &reg,
            "hostile",
            c.name,
            &[(c.tar.clone(), gzip(&c.tar), gz)],
            false,
        );
        let image = format!("{}/hostile:{}", reg.host(), c.name);
        check(
            &d,
            &s,
            c,
            "pull",
            &["pull", &image],
            &layer_root(&d, &c.tar),
            &image,
        );
    }
}

#[test]
fn corpus_through_docker_cp_into_a_running_container() {
    let Some((d, s, cases)) = start() else { return };
    d.import_busybox("bb:test");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "cphostile",
        "bb:test",
        "sleep",
        "1000",
    ]);
    let merged = d.ok(&[
        "inspect",
        "-f",
        "{{.GraphDriver.Data.MergedDir}}",
        "cphostile",
    ]);
    for c in &cases {
        let dir = format!("/case-{}", c.name);
        d.ok(&["exec", "cphostile", "mkdir", &dir]);
        let file = d.path("cp.tar");
        std::fs::write(&file, &c.tar).expect("write");
        let target = format!("/containers/cphostile/archive?path={dir}");
        let (code, body) = common::rawapi::curl(&d, "PUT", &target, Some(&file));
        let what = format!("cp {} ({})", c.name, c.what);
        let root = Path::new(&merged).join(dir.trim_start_matches('/'));
        match c.cp.as_ref().unwrap_or(&c.layer) {
            Expect::Refused(msg) => {
                assert_eq!(code, 400, "{what}: {body}");
                assert!(body.contains(msg), "{what}: {body}");
            }
            Expect::Accepted(f) => {
                assert_eq!(code, 200, "{what}: {body}");
                if let Err(e) = f(&root) {
                    panic!("{what}: {e}");
                }
            }
        }
        s.assert_untouched(&what);
    }
    d.ok(&["rm", "-f", "cphostile"]);
}
