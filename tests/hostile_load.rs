//! Malformed and oversized `docker load` archives (docker-save `manifest.json` and OCI
//! layouts), with the real docker CLI: each fails with an error naming the step and leaves
//! no image, no layer directory and no temp file; an archive of 100000 tiny entries loads
//! in reasonable time.

mod common;
mod hostile_util;

use common::{is_root, Daemon};
use hostile_util::{archive, assert_no_temp, config_for, hex, image_dir, sha, Tar};
use serde_json::{json, Value};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Archive files.
type Files = Vec<(String, Vec<u8>)>;

fn blob(files: &mut Files, data: &[u8]) -> String {
    files.push((format!("blobs/sha256/{}", hex(&sha(data))), data.to_vec()));
    sha(data)
}

fn desc(mt: &str, data: &[u8]) -> Value {
    json!({"mediaType": mt, "size": data.len(), "digest": sha(data)})
}

/// A docker-save archive of one image with `layers`; `edit` may change the manifest.
fn save(cfg: &[u8], layers: &[&[u8]], edit: impl FnOnce(&mut Value)) -> Files {
    let mut files = vec![(format!("{}.json", hex(&sha(cfg))), cfg.to_vec())];
    let mut names = Vec::new();
    for l in layers {
        let n = format!("{}/layer.tar", hex(&sha(l)));
        files.push((n.clone(), l.to_vec()));
        names.push(n);
    }
    let mut m = json!([{"Config": format!("{}.json", hex(&sha(cfg))),
        "RepoTags": ["bad:save"], "Layers": names}]);
    edit(&mut m);
    files.push(("manifest.json".into(), m.to_string().into_bytes()));
    files
}

/// An OCI layout whose index.json lists `top` (already among `files`).
fn oci(mut files: Files, top: Value) -> Files {
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    files.push(("index.json".into(), index.to_string().into_bytes()));
    files
}

/// An OCI image manifest blob for `cfg` and `layers`, as `edit` changes it.
fn oci_manifest(
    files: &mut Files,
    cfg: &[u8],
    layers: &[&[u8]],
    edit: impl FnOnce(&mut Value),
) -> Value {
    blob(files, cfg);
    let mut descs = Vec::new();
    for l in layers {
        blob(files, l);
        descs.push(desc(LAYER, l));
    }
    let mut m = json!({"schemaVersion": 2, "mediaType": OCI,
        "config": desc("application/vnd.oci.image.config.v1+json", cfg), "layers": descs});
    edit(&mut m);
    let body = m.to_string().into_bytes();
    blob(files, &body);
    let mut d = desc(OCI, &body);
    d["annotations"] = json!({"io.containerd.image.name": "bad:oci"});
    d
}

fn assert_nothing_left(d: &Daemon, what: &str) {
    assert!(
        d.ok(&["images", "-qa"]).is_empty(),
        "{what}: an image was left"
    );
    let layers: Vec<_> = std::fs::read_dir(image_dir(d).join("layers"))
        .expect("ls layers")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(layers.is_empty(), "{what}: layers left: {layers:?}");
    assert_no_temp(d, what);
}

fn load(d: &Daemon, files: &Files) -> std::process::Output {
    let f = d.path("in.tar");
    std::fs::write(&f, archive(files)).expect("write");
    d.docker(&["load", "-i", f.to_str().expect("utf8")])
}

/// Runs `c`, failing the test (after killing it) when it takes more than 20 s.
fn within_20s(mut c: std::process::Command, what: &str) -> std::process::Output {
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!("{what}: docker load hung");
        }
    }
}

#[test]
fn malformed_load_archives_fail_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let l1 = Tar::default().file("one", b"1").done();
    let l2 = Tar::default().file("two", b"2").done();
    let cfg = config_for(&[&l1, &l2]);
    let other = Tar::default().file("two", b"other").done();
    let cfg_wrong = config_for(&[&l1, &other]);
    let mut big_cfg: Value = serde_json::from_slice(&cfg).expect("cfg");
    big_cfg["comment"] = json!("x".repeat(9 << 20));
    let big_cfg = serde_json::to_vec(&big_cfg).expect("json");
    let both: [&[u8]; 2] = [&l1, &l2];
    let mut cases: Vec<(&str, Files, &str)> = vec![
        (
            "invalid manifest.json",
            {
                let mut f = save(&cfg, &both, |_| {});
                f.pop();
                f.push(("manifest.json".into(), b"[{\"Config\": ".to_vec()));
                f
            },
            "invalid archive: manifest.json",
        ),
        (
            "oversized config",
            save(&big_cfg, &both, |_| {}),
            "is too large",
        ),
        (
            "config digest mismatch",
            {
                let mut f = save(&cfg, &both, |_| {});
                f[0].1 = cfg_wrong.clone();
                f
            },
            "has digest",
        ),
        (
            "layer count",
            save(&cfg, &[&l1], |_| {}),
            "layers length mismatch",
        ),
        (
            "diff id mismatch",
            save(&cfg_wrong, &both, |_| {}),
            "invalid diffID",
        ),
        (
            "layer path ../../etc/passwd",
            save(&cfg, &both, |m| {
                m[0]["Layers"][1] = json!("../../../../../../etc/passwd");
            }),
            "invalid archive: open ../../../../../../etc/passwd",
        ),
    ];
    let mut files = Vec::new();
    let top = oci_manifest(&mut files, &cfg, &both, |_| {});
    let mut index_files = files.clone();
    let mut level = top.clone();
    for _ in 0..6 {
        let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [level]})
            .to_string()
            .into_bytes();
        blob(&mut index_files, &body);
        level = desc(OCI_INDEX, &body);
    }
    cases.push((
        "indexes nested 6 deep",
        oci(index_files, level),
        "nested too deeply",
    ));
    let mut f = files.clone();
    let arm = {
        let mut t = top.clone();
        t["platform"] = json!({"architecture": "arm64", "os": "linux"});
        t
    };
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [arm]})
        .to_string()
        .into_bytes();
    blob(&mut f, &body);
    cases.push((
        "index without linux/amd64",
        oci(f, desc(OCI_INDEX, &body)),
        "no manifest for linux/amd64",
    ));
    let mut f = files.clone();
    let m = oci_manifest(&mut f, &cfg, &both, |m| {
        m["layers"][1]["digest"] = json!("sha256:../../../../etc/passwd");
    });
    cases.push(("digest with ../", oci(f, m), "invalid digest"));
    let mut f = files.clone();
    let m = oci_manifest(&mut f, &cfg, &both, |m| m["schemaVersion"] = json!(1));
    cases.push((
        "schemaVersion 1",
        oci(f, m),
        "unsupported manifest schema version 1",
    ));
    let mut f = files.clone();
    let m = oci_manifest(&mut f, &cfg, &both, |m| m["mediaType"] = json!("text/html"));
    cases.push((
        "wrong mediaType",
        oci(f, m),
        "unsupported manifest media type",
    ));
    let mut f = files.clone();
    let m = oci_manifest(&mut f, &cfg, &both, |m| m["layers"][1]["size"] = json!(3));
    cases.push(("layer size that lies", oci(f, m), "its descriptor says 3"));
    let mut f = files.clone();
    let pad =
        json!({"schemaVersion": 2, "manifests": [top], "annotations": {"p": "z".repeat(5 << 20)}});
    f.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    f.push(("index.json".into(), pad.to_string().into_bytes()));
    cases.push(("oversized index.json", f, "is too large"));
    for (what, files, msg) in &cases {
        let out = load(&d, files);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: loaded");
        assert!(err.contains(msg), "{what}: {err:?} lacks {msg:?}");
        assert_nothing_left(&d, what);
    }
    // A layer path resolved through a symlink member of the archive stays inside it.
    let mut t = Tar::default().symlink("etc-link", "/etc");
    for (n, data) in save(&cfg, &both, |m| {
        m[0]["Layers"][1] = json!("etc-link/passwd")
    }) {
        t = t.file(&n, &data);
    }
    let f = d.path("link.tar");
    std::fs::write(&f, t.done()).expect("write");
    let err = d.fails(&["load", "-i", f.to_str().expect("utf8")]);
    assert!(
        err.contains("invalid archive: open etc-link/passwd"),
        "{err}"
    );
    assert_nothing_left(&d, "layer path through a symlink");
    // Members that are fifos (the loader must not block opening them) or directories.
    for (member, kind) in [
        ("manifest.json", b'6'),
        ("config", b'6'),
        ("layer", b'6'),
        ("layer", b'5'),
    ] {
        let mut t = Tar::default();
        for (n, data) in save(&cfg, &both, |_| {}) {
            let replaced = match member {
                "config" => n.ends_with(".json") && n != "manifest.json",
                "layer" => n.ends_with("layer.tar") && n.starts_with(&hex(&sha(&l2))),
                _ => n == member,
            };
            t = if replaced {
                t.entry(n.as_bytes(), kind, b"", b"", 0o644)
            } else {
                t.file(&n, &data)
            };
        }
        let f = d.path("fifo.tar");
        std::fs::write(&f, t.done()).expect("write");
        let what = format!("{member} as type {}", kind as char);
        let out = within_20s(
            d.docker_cmd(&["load", "-i", f.to_str().expect("utf8")]),
            &what,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: loaded");
        assert!(err.contains("invalid archive"), "{what}: {err}");
        assert_nothing_left(&d, &what);
    }
    // The same images, well-formed, load.
    assert!(load(&d, &save(&cfg, &both, |_| {})).status.success());
    assert!(load(&d, &oci(files, top)).status.success());
}

#[test]
fn an_archive_of_100000_entries_loads_in_reasonable_time() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let l1 = Tar::default().file("one", b"1").done();
    let cfg = config_for(&[&l1]);
    let mut t = Tar::default().dir("junk/");
    for i in 0..100_000 {
        t = t.file(&format!("junk/{i}"), b"");
    }
    for (n, data) in save(&cfg, &[&l1], |_| {}) {
        t = t.file(&n, &data);
    }
    let f = d.path("many.tar");
    std::fs::write(&f, t.done()).expect("write");
    let t0 = std::time::Instant::now();
    d.ok(&["load", "-i", f.to_str().expect("utf8")]);
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    eprintln!("100000 entries loaded in {took:?}");
    assert_no_temp(&d, "load of 100000 entries");
}
