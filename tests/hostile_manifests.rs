//! Malformed and oversized manifests, indexes and configs through `docker pull` and `docker
//! load` (docker-save and OCI layout), with the real docker CLI. Each must fail with an
//! error naming the step and leave no image, no layer directory and no temp file.
//!
//! The pulls use a canned registry served from this test (`/v2/`, manifests and blobs from
//! a table), because Debian's `docker-registry` refuses to store most of these manifests;
//! what it does store (oversized config, wrong diff id, blobs altered on its disk, a list
//! without linux/amd64) is pulled from it as well, and tests/hostile_layers.rs pulls
//! hostile layers from it.

mod common;
mod hostile_util;
#[allow(dead_code)]
mod registry_util;

use common::{is_root, Daemon};
use hostile_util::{assert_no_temp, config_for, image_dir, sha, Tar};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Path → (content type, body).
type Routes = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

/// A registry answering from a table; the listener thread ends with the test process.
struct Canned {
    port: u16,
    routes: Routes,
}

fn serve(mut c: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        // A TLS ClientHello (berth tries HTTPS first on insecure registries): a plain-HTTP
        // server drops it, as Go's does after its 400.
        if head.first() == Some(&0x16) {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let found = routes.lock().map(|r| r.get(path).cloned()).unwrap_or(None);
    let (status, ctype, body) = match found {
        _ if path == "/v2/" => ("200 OK", "application/json".to_string(), b"{}".to_vec()),
        Some((t, b)) => ("200 OK", t, b),
        None => (
            "404 Not Found",
            "application/json".to_string(),
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        sha(&body)
    );
    c.write_all(head.as_bytes())?;
    if method != "HEAD" {
        c.write_all(&body)?;
    }
    Ok(())
}

impl Canned {
    fn start() -> Canned {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let routes: Routes = Arc::default();
        let r = routes.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || serve(c, &r));
            }
        });
        Canned { port, routes }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn put(&self, path: String, ctype: &str, body: Vec<u8>) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path, (ctype.to_string(), body));
    }

    /// A blob; returns its digest.
    fn blob(&self, data: &[u8]) -> String {
        let d = sha(data);
        self.put(
            format!("/v2/x/blobs/{d}"),
            "application/octet-stream",
            data.to_vec(),
        );
        d
    }

    /// A manifest under `tag` and its digest; returns the digest.
    fn manifest(&self, tag: &str, ctype: &str, body: Vec<u8>) -> String {
        let d = sha(&body);
        self.put(format!("/v2/x/manifests/{d}"), ctype, body.clone());
        self.put(format!("/v2/x/manifests/{tag}"), ctype, body);
        d
    }
}

fn desc(mt: &str, data: &[u8]) -> Value {
    json!({"mediaType": mt, "size": data.len(), "digest": sha(data)})
}

fn image_manifest(config: &Value, layers: &[Value]) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": V2, "config": config,
        "layers": layers}),
    )
    .expect("json")
}

/// Nothing left: no image, no layer, no temp file.
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

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn malformed_manifests_and_configs_fail_the_pull_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let reg = Canned::start();
    let l1 = Tar::default().file("one", b"1").done();
    let l2 = Tar::default().file("two", b"2").done();
    let cfg = config_for(&[&l1, &l2]);
    reg.blob(&cfg);
    let (g1, g2) = (gz(&l1), gz(&l2));
    reg.blob(&g1);
    reg.blob(&g2);
    let cdesc = desc("application/vnd.docker.container.image.v1+json", &cfg);
    let good = image_manifest(&cdesc, &[desc(GZ, &g1), desc(GZ, &g2)]);
    let good_digest = reg.manifest("good-child", V2, good.clone());
    let big_cfg = {
        let mut v: Value = serde_json::from_slice(&cfg).expect("cfg");
        v["comment"] = json!("x".repeat(9 << 20));
        serde_json::to_vec(&v).expect("json")
    };
    reg.blob(&big_cfg);
    let huge = {
        let mut v: Value = serde_json::from_slice(&good).expect("m");
        v["annotations"] = json!({"pad": "y".repeat(5 << 20)});
        serde_json::to_vec(&v).expect("json")
    };
    let wrong_l2 = Tar::default().file("two", b"not two").done();
    let cfg_wrong = config_for(&[&l1, &wrong_l2]);
    reg.blob(&cfg_wrong);
    let bad_blob = b"not the config".to_vec();
    let bad_digest = sha(b"something else");
    reg.put(
        format!("/v2/x/blobs/{bad_digest}"),
        "application/octet-stream",
        bad_blob,
    );
    let mut lying = desc(GZ, &g2);
    lying["size"] = json!(10);
    let index = |m: Vec<Value>| {
        serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": LIST, "manifests": m}))
        .expect("json")
    };
    let plat = |arch: &str, os: &str, digest: &str, mt: &str| {
        json!({"mediaType": mt,
        "size": 1, "digest": digest, "platform": {"architecture": arch, "os": os}})
    };
    let inner_index = reg.manifest(
        "inner",
        OCI_INDEX,
        serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [plat("amd64", "linux", &good_digest, OCI)]}))
        .expect("json"),
    );
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "badjson",
            V2,
            br#"{"schemaVersion": 2, "config": "#.to_vec(),
            "invalid manifest",
        ),
        ("huge", V2, huge, "is larger than 4194304 bytes"),
        (
            "schema1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion": 1, "name": "x", "tag": "schema1", "fsLayers": []}"#.to_vec(),
            "unsupported manifest schema version 1",
        ),
        (
            "mediatype",
            V2,
            serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "text/html", "config": cdesc, "layers": []}))
            .expect("json"),
            "unsupported manifest media type",
        ),
        (
            "bigconfig",
            V2,
            image_manifest(
                &desc("application/vnd.docker.container.image.v1+json", &big_cfg),
                &[desc(GZ, &g1), desc(GZ, &g2)],
            ),
            "is larger than 8388608 bytes",
        ),
        (
            "configdigest",
            V2,
            image_manifest(
                &json!({"mediaType": "x", "size": 14,
            "digest": bad_digest}),
                &[],
            ),
            "verification failed",
        ),
        (
            "count",
            V2,
            image_manifest(&cdesc, &[desc(GZ, &g1)]),
            "layers length mismatch",
        ),
        (
            "diffid",
            V2,
            image_manifest(&desc("x", &cfg_wrong), &[desc(GZ, &g1), desc(GZ, &g2)]),
            "invalid diffID",
        ),
        (
            "lyingsize",
            V2,
            image_manifest(&cdesc, &[desc(GZ, &g1), lying]),
            "larger than its manifest says",
        ),
        (
            "noarch",
            LIST,
            index(vec![
                plat("arm64", "linux", &good_digest, V2),
                plat("amd64", "windows", &good_digest, V2),
            ]),
            "no matching manifest for linux/amd64 in the manifest list entries",
        ),
        (
            "nested",
            LIST,
            index(vec![plat("amd64", "linux", &inner_index, OCI_INDEX)]),
            "an index inside an index",
        ),
        (
            "dotdot",
            V2,
            image_manifest(
                &json!({"mediaType": "x", "size": 1,
            "digest": "sha256:../../../../etc/passwd"}),
                &[],
            ),
            "invalid manifest: digest",
        ),
        (
            "dotdotindex",
            LIST,
            index(vec![plat("amd64", "linux", "sha256:../../x", V2)]),
            "invalid manifest list: digest",
        ),
    ];
    for (tag, ctype, body, msg) in cases {
        reg.manifest(tag, ctype, body);
        let image = format!("{}/x:{tag}", reg.host());
        let err = d.fails(&["pull", &image]);
        assert!(err.contains(msg), "pull {tag}: {err:?} lacks {msg:?}");
        assert_nothing_left(&d, &format!("pull {tag}"));
    }
    // The well-formed image pulls: the failures above are the manifests', not the setup's.
    reg.manifest("good", V2, good);
    d.ok(&["pull", &format!("{}/x:good", reg.host())]);
}

#[test]
fn bad_images_in_a_real_registry_fail_the_pull_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let reg = registry_util::Registry::start(None);
    let l1 = Tar::default().file("one", b"1").done();
    let l2 = Tar::default().file("two", b"2").done();
    let (g1, g2) = (gz(&l1), gz(&l2));
    let cfg = config_for(&[&l1, &l2]);
    let layers = [
        json!({"mediaType": GZ, "size": g1.len(), "digest": reg.put_blob("r", &g1)}),
        json!({"mediaType": GZ, "size": g2.len(), "digest": reg.put_blob("r", &g2)}),
    ];
    let image = |config: &[u8]| {
        let c = json!({"mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(), "digest": reg.put_blob("r", config)});
        json!({"schemaVersion": 2, "mediaType": V2, "config": c, "layers": layers})
    };
    let mut big: Value = serde_json::from_slice(&cfg).expect("cfg");
    big["comment"] = json!("x".repeat(9 << 20));
    let big = serde_json::to_vec(&big).expect("json");
    reg.put_manifest("r", "bigconfig", &image(&big));
    let other = Tar::default().file("two", b"other").done();
    reg.put_manifest("r", "diffid", &image(&config_for(&[&l1, &other])));
    // Blobs altered on the registry's disk after upload: it serves them as they are.
    let tampered_cfg = config_for(&[&l1, &l1, &l2]);
    let m = image(&tampered_cfg);
    reg.put_manifest("r", "configdigest", &m);
    std::fs::write(reg.blob_file(&sha(&tampered_cfg)), &cfg).expect("tamper config");
    let g3 = gz(&Tar::default().file("three", b"3").done());
    let l3 = json!({"mediaType": GZ, "size": g3.len(), "digest": reg.put_blob("r", &g3)});
    let mut m = image(&config_for(&[
        &l1,
        &Tar::default().file("three", b"3").done(),
    ]));
    m["layers"] = json!([layers[0], l3]);
    reg.put_manifest("r", "layerdigest", &m);
    std::fs::write(reg.blob_file(&sha(&g3)), &g2).expect("tamper layer");
    let good = image(&cfg);
    let good_digest = reg.put_manifest("r", "good", &good);
    let body = serde_json::to_vec(&good).expect("json");
    let list = json!({"schemaVersion": 2, "mediaType": LIST, "manifests": [
        {"mediaType": V2, "size": body.len(), "digest": good_digest,
         "platform": {"architecture": "arm64", "os": "linux"}}]});
    reg.put_manifest("r", "noarch", &list);
    for (tag, msg) in [
        ("bigconfig", "is larger than 8388608 bytes"),
        ("diffid", "invalid diffID"),
        ("configdigest", "blob verification failed"),
        ("layerdigest", "filesystem layer verification failed"),
        (
            "noarch",
            "no matching manifest for linux/amd64 in the manifest list entries",
        ),
    ] {
        let err = d.fails(&["pull", &format!("{}/r:{tag}", reg.host())]);
        assert!(err.contains(msg), "pull {tag}: {err:?} lacks {msg:?}");
        assert_nothing_left(&d, &format!("pull {tag}"));
    }
    d.ok(&["pull", &format!("{}/r:good", reg.host())]);
}

/// Answers `/v2/` with 200 and every other request with a 200 whose chunked body never
/// ends (no `Content-Length` to refuse up front); drops TLS hellos.
fn endless_manifests(c: TcpStream) {
    let mut c = c;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            head.extend_from_slice(&buf[..n]);
            if head.first() == Some(&0x16) {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        head.clear();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
        if path == "/v2/" {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            continue;
        }
        let _ = c.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.distribution.manifest.v2+json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let chunk = [b' '; 65536];
        loop {
            if c.write_all(b"10000\r\n").is_err()
                || c.write_all(&chunk).is_err()
                || c.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
    }
}

#[test]
fn an_endless_manifest_is_cut_at_the_limit() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || endless_manifests(c));
        }
    });
    let d = Daemon::start();
    let mut child = d
        .cmd(&["pull", &format!("127.0.0.1:{port}/endless:1")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker pull");
    // The old reader kept reading (and holding) for ever; the pull must end on its own.
    common::until("the pull of an endless manifest ends", || {
        child.try_wait().ok().flatten().is_some()
    });
    let out = child.wait_with_output().expect("pull output");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest for 127.0.0.1:") && err.contains("is larger than 4194304 bytes"),
        "{err}"
    );
    assert_nothing_left(&d, "endless manifest");
}
