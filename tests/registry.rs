//! `docker pull` and `docker login` against Debian's `docker-registry` (Distribution v2) on
//! 127.0.0.1: one plain registry, one with htpasswd basic auth. Images are put into the
//! registry with the plain upload API from this test (berth has no push yet).

mod common;

use base64::Engine;
use common::{busybox_rootfs_tar, is_root, Daemon, Launch};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A `docker-registry` for this test; killed on drop.
struct Registry {
    ip: String,
    port: u16,
    child: Child,
    auth: Option<String>,
    _dir: tempfile::TempDir,
    _extra: Option<tempfile::TempDir>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry on a free loopback port; with `user`, behind htpasswd basic auth.
    fn start(user: Option<(&str, &str)>) -> Registry {
        Registry::start_on("127.0.0.1", user)
    }

    /// Starts a registry on a free port of `ip`.
    fn start_on(ip: &str, user: Option<(&str, &str)>) -> Registry {
        Registry::start_cfg(ip, user, None)
    }

    /// Starts a registry; `extra` is more of its config (an `auth:` section) and the
    /// Authorization header this test's own uploads use.
    fn start_cfg(
        ip: &str,
        user: Option<(&str, &str)>,
        extra: Option<(String, String, tempfile::TempDir)>,
    ) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            dir.path().join("data").display()
        );
        let mut auth = None;
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            auth = Some(format!("Basic {pair}"));
        }
        let mut keep = None;
        if let Some((section, header, d)) = extra {
            cfg.push_str(&section);
            auth = Some(header);
            keep = Some(d);
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (make deps)");
        let r = Registry {
            ip: ip.to_string(),
            port,
            child,
            auth,
            _dir: dir,
            _extra: keep,
        };
        common::until("the registry listens", || {
            TcpStream::connect((ip, port)).is_ok()
        });
        r
    }

    /// Where the registry keeps a blob's bytes (its filesystem driver's layout).
    fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// One HTTP/1.1 request (`Connection: close`): status, headers (lower-case), body.
    fn http(
        &self,
        method: &str,
        target: &str,
        ctype: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut s = TcpStream::connect((self.ip.as_str(), self.port)).expect("connect registry");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host(),
            body.len()
        );
        if let Some(t) = ctype {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).expect("send head");
        s.write_all(body).expect("send body");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read response");
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head");
        let text = String::from_utf8_lossy(&resp[..split]).to_string();
        let mut lines = text.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, resp[split + 4..].to_vec())
    }

    /// Uploads a blob (POST an upload, then PUT it whole with its digest).
    fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha(data);
        let (st, h, b) = self.http("POST", &format!("/v2/{repo}/blobs/uploads/"), None, b"");
        assert_eq!(st, 202, "start upload: {}", String::from_utf8_lossy(&b));
        let loc = h
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .expect("upload location");
        let path = match loc.split_once("://") {
            Some((_, rest)) => rest[rest.find('/').expect("path")..].to_string(),
            None => loc,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let target = format!("{path}{sep}digest={}", digest.replace(':', "%3A"));
        let (st, _, b) = self.http("PUT", &target, Some("application/octet-stream"), data);
        assert_eq!(st, 201, "finish upload: {}", String::from_utf8_lossy(&b));
        digest
    }

    /// Stores a manifest under `reference` (a tag); returns its digest.
    fn put_manifest(&self, repo: &str, reference: &str, manifest: &Value) -> String {
        let body = serde_json::to_vec(manifest).expect("manifest json");
        let mt = manifest["mediaType"].as_str().expect("mediaType");
        let (st, _, b) = self.http(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(mt),
            &body,
        );
        assert_eq!(st, 201, "put manifest: {}", String::from_utf8_lossy(&b));
        sha(&body)
    }
}

/// A tar holding one file.
fn file_tar(name: &str, content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, content.as_bytes())
        .expect("tar entry");
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Layers as (uncompressed tar, blob as stored, media type).
type Layer = (Vec<u8>, Vec<u8>, &'static str);

/// Uploads `layers` and a config for them, then a manifest of `manifest_type` tagged `tag`.
fn push_image(r: &Registry, repo: &str, tag: &str, layers: &[Layer], oci: bool) -> String {
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha(&l.0)).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).expect("config");
    let config_digest = r.put_blob(repo, &config);
    let descs: Vec<Value> = layers
        .iter()
        .map(|(_, blob, mt)| {
            json!({"mediaType": mt, "size": blob.len(), "digest": r.put_blob(repo, blob)})
        })
        .collect();
    let (mt, cmt) = if oci {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    } else {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    };
    let manifest = json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": cmt, "size": config.len(), "digest": config_digest},
        "layers": descs,
    });
    r.put_manifest(repo, tag, &manifest)
}

fn busybox_layer(d: &Daemon) -> Vec<u8> {
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    std::fs::read(&tar).expect("busybox tar")
}

fn repo_digests(d: &Daemon, image: &str) -> Value {
    let out = d.ok(&["image", "inspect", image]);
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    v[0]["RepoDigests"].clone()
}

#[test]
fn pull_from_plain_registry() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let d = Daemon::start();
    let host = reg.host();
    let bb = busybox_layer(&d);
    let hello = file_tar("hello", "hello from layer 2\n");
    let bb_gz = gzip(&bb);
    let hello_gz = gzip(&hello);
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let digest = push_image(
        &reg,
        "bb",
        "1",
        &[
            (bb.clone(), bb_gz.clone(), gz),
            (hello.clone(), hello_gz, gz),
        ],
        false,
    );

    // By tag: the progress lines, then the image runs and records its digest.
    let out = d.ok(&["pull", &format!("{host}/bb:1")]);
    assert!(out.contains("1: Pulling from bb"), "{out}");
    assert!(out.contains("Pull complete"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {host}/bb:1")),
        "{out}"
    );
    let ran = d.ok(&["run", "--rm", &format!("{host}/bb:1"), "cat", "/hello"]);
    assert_eq!(ran, "hello from layer 2");
    assert_eq!(
        repo_digests(&d, &format!("{host}/bb:1")),
        json!([format!("{host}/bb@{digest}")])
    );

    // Again: nothing to fetch.
    let out = d.ok(&["pull", &format!("{host}/bb:1")]);
    assert!(
        out.contains(&format!("Status: Image is up to date for {host}/bb:1")),
        "{out}"
    );

    // By digest, after removing the image: the busybox layer is fetched again and checked.
    d.ok(&["rmi", &format!("{host}/bb:1")]);
    let by_digest = format!("{host}/bb@{digest}");
    let out = d.ok(&["pull", &by_digest]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    let ran = d.ok(&["run", "--rm", &by_digest, "cat", "/hello"]);
    assert_eq!(ran, "hello from layer 2");

    // `docker run` of an image that is not here pulls it (create → 404 → pull → create).
    d.ok(&["rmi", &by_digest]);
    let out = d.docker(&["run", "--rm", &format!("{host}/bb:1"), "cat", "/hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Unable to find image"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from layer 2"
    );

    // An OCI index: linux/amd64 is chosen (the arm64 entry is the busybox-only image);
    // uncompressed and zstd layers.
    let extra = file_tar("extra", "zstd layer\n");
    let extra_zst = zstd::encode_all(&extra[..], 3).expect("zstd");
    let amd = push_image(
        &reg,
        "multi",
        "amd64-only",
        &[
            (
                bb.clone(),
                bb_gz.clone(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            (
                hello.clone(),
                hello.clone(),
                "application/vnd.oci.image.layer.v1.tar",
            ),
            (
                extra.clone(),
                extra_zst,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        ],
        true,
    );
    let arm = push_image(
        &reg,
        "multi",
        "arm64-only",
        &[(
            bb.clone(),
            bb_gz,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )],
        true,
    );
    let size = |tag: &str| {
        let (_, h, _) = reg.http("HEAD", &format!("/v2/multi/manifests/{tag}"), None, b"");
        h.iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .expect("manifest size")
    };
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": mt, "digest": arm, "size": size("arm64-only"), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": mt, "digest": amd, "size": size("amd64-only"), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    let index_digest = reg.put_manifest("multi", "1", &index);
    let out = d.ok(&["pull", &format!("{host}/multi:1")]);
    assert!(out.contains(&format!("Digest: {index_digest}")), "{out}");
    // The busybox layer is shared with the image pulled before.
    assert!(out.contains("Already exists"), "{out}");
    let ran = d.ok(&[
        "run",
        "--rm",
        &format!("{host}/multi:1"),
        "cat",
        "/hello",
        "/extra",
    ]);
    assert_eq!(ran, "hello from layer 2\nzstd layer");

    // A missing tag: dockerd's 404 wording; an unreachable registry.
    let err = d.fails(&["pull", &format!("{host}/bb:nope")]);
    assert!(
        err.contains(&format!(
            "manifest for {host}/bb:nope not found: manifest unknown: manifest unknown"
        )),
        "{err}"
    );
    let err = d.fails(&["pull", "127.0.0.1:1/bb:1"]);
    assert!(
        err.contains(
            r#"Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#
        ),
        "{err}"
    );
}

fn write_docker_auth(d: &Daemon, host: &str, user: &str, pass: &str) {
    let dir = d.path("dc");
    std::fs::create_dir_all(&dir).expect("docker config dir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let cfg = json!({"auths": {host: {"auth": auth}}});
    std::fs::write(Path::new(&dir).join("config.json"), cfg.to_string()).expect("config.json");
}

#[test]
fn login_and_pull_with_basic_auth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(Some(("gamer", "s3cret")));
    let d = Daemon::start();
    let host = reg.host();
    let bb = busybox_layer(&d);
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let bb_gz = gzip(&bb);
    push_image(&reg, "priv/bb", "1", &[(bb, bb_gz, gz)], false);
    let image = format!("{host}/priv/bb:1");

    let err = d.fails(&["pull", &image]);
    assert!(err.contains("no basic auth credentials"), "{err}");

    let err = d.fails(&["login", "-u", "gamer", "-p", "wrong", &host]);
    assert!(err.contains("401 Unauthorized"), "{err}");
    let out = d.ok(&["login", "-u", "gamer", "-p", "s3cret", &host]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.ok(&["pull", &image]);
    assert!(
        out.contains(&format!("Downloaded newer image for {image}")),
        "{out}"
    );
    assert_eq!(d.ok(&["run", "--rm", &image, "echo", "in"]), "in");

    // Credentials gone bad after login.
    write_docker_auth(&d, &host, "gamer", "nope");
    let err = d.fails(&["pull", &format!("{host}/priv/bb:2")]);
    assert!(err.contains("unauthorized"), "{err}");
}

#[test]
fn pull_refuses_a_corrupted_layer() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let d = Daemon::start();
    let host = reg.host();
    let layer = file_tar("payload", "the real content\n");
    let blob = gzip(&layer);
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    push_image(
        &reg,
        "bad",
        "1",
        &[(layer.clone(), blob.clone(), gz)],
        false,
    );
    // The registry serves whatever is on its disk: same length, other bytes.
    let mut evil = blob.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0xff;
    std::fs::write(reg.blob_file(&sha(&blob)), &evil).expect("corrupt the blob");

    let image = format!("{host}/bad:1");
    let err = d.fails(&["pull", &image]);
    assert!(
        err.contains(&format!(
            "filesystem layer verification failed for digest {}",
            sha(&blob)
        )),
        "{err}"
    );
    // Nothing of it is visible.
    let err = d.fails(&["image", "inspect", &image]);
    assert!(err.contains("No such image"), "{err}");
    assert_eq!(d.ok(&["images", "-q"]), "");
}

/// A global IPv4 address of this host, if it has one.
fn host_ip() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(addr.split('/').next()?.to_string())
}

#[test]
fn insecure_registry_flag_allows_plain_http() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(ip) = host_ip() else {
        eprintln!("skipped: no global IPv4 address for a non-loopback registry");
        return;
    };
    let reg = Registry::start_on(&ip, None);
    let host = reg.host();
    let layer = file_tar("payload", "over plain http\n");
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    push_image(
        &reg,
        "plain",
        "1",
        &[(layer.clone(), gzip(&layer), gz)],
        false,
    );
    let image = format!("{host}/plain:1");

    // Not loopback, not listed: HTTPS, which this registry does not speak.
    let d = Daemon::start();
    let err = d.fails(&["pull", &image]);
    assert!(
        err.contains(&format!(
            "Get \"https://{host}/v2/\": http: server gave HTTP response to HTTPS client"
        )),
        "{err}"
    );
    drop(d);

    // Listed by network (CIDR): plain HTTP.
    let d = Daemon::start_with(Launch {
        env: vec![("BERTH_INSECURE_REGISTRIES".into(), format!("{ip}/32"))],
        ..Default::default()
    });
    let out = d.ok(&["pull", &image]);
    assert!(
        out.contains(&format!("Downloaded newer image for {image}")),
        "{out}"
    );
    assert_eq!(d.ok(&["create", "--name", "c1", &image, "true"]).len(), 64);
}

/// A token service for a registry with `auth: token`: RS256 JWTs signed with a self-signed
/// certificate (sent in `x5c`) that the registry trusts, given for basic credentials.
struct TokenService {
    dir: tempfile::TempDir,
    port: u16,
}

const SERVICE: &str = "berth-test";
const ISSUER: &str = "berth-test-issuer";

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenService {
    fn start(user: &str, pass: &str) -> TokenService {
        let dir = tempfile::tempdir().expect("temp dir");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=berth-test-token"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl req failed");
        let st = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(dir.path().join("cert.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.der"))
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl x509 failed");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token service");
        let port = listener.local_addr().expect("addr").port();
        let key_dir = dir.path().to_path_buf();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        // Serves until the test process ends (blocked in accept, holding nothing else).
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve_token(conn, &key_dir, &expected);
            }
        });
        TokenService { dir, port }
    }

    fn jwt(&self, repo: &str, actions: &[&str]) -> String {
        jwt(self.dir.path(), repo, actions)
    }

    /// The registry's `auth:` section.
    fn section(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.dir.path().join("cert.pem").display()
        )
    }
}

fn jwt(dir: &Path, repo: &str, actions: &[&str]) -> String {
    let der = std::fs::read(dir.join("cert.der")).expect("cert.der");
    let header = json!({"alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(der)]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let access: Vec<Value> = if repo.is_empty() {
        vec![]
    } else {
        vec![json!({"type": "repository", "name": repo, "actions": actions})]
    };
    let claims = json!({"iss": ISSUER, "sub": "gamer", "aud": SERVICE, "exp": now + 600,
        "nbf": now - 60, "iat": now - 60, "jti": format!("{now}-{}", rand_jti()), "access": access});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write signing input");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst failed");
    format!("{input}.{}", b64url(&out.stdout))
}

fn rand_jti() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// One token request: 401 unless the basic credentials match, else a token for the scope.
fn serve_token(mut conn: TcpStream, dir: &Path, expected: &str) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let authorized = text.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == expected)
    });
    let scope = target
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("scope="))
        .map(|s| {
            s.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
        .unwrap_or_default();
    let (status, body) = if !authorized {
        (
            "401 Unauthorized",
            r#"{"details":"incorrect username or password"}"#.to_string(),
        )
    } else {
        // repository:<name>:<actions>
        let parts: Vec<&str> = scope.splitn(2, ':').collect();
        let (repo, actions) = match parts.get(1).and_then(|r| r.rsplit_once(':')) {
            Some((name, acts)) => (name.to_string(), acts.split(',').collect::<Vec<_>>()),
            None => (String::new(), vec![]),
        };
        let t = jwt(dir, &repo, &actions);
        (
            "200 OK",
            json!({"token": t, "access_token": t, "expires_in": 600}).to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes())
}

#[test]
fn login_and_pull_with_bearer_token_auth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tokens = TokenService::start("gamer", "t0ken");
    let tmp = tempfile::tempdir().expect("temp dir");
    let upload = format!("Bearer {}", tokens.jwt("tok/bb", &["pull", "push"]));
    let reg = Registry::start_cfg("127.0.0.1", None, Some((tokens.section(), upload, tmp)));
    let d = Daemon::start();
    let host = reg.host();
    let layer = file_tar("secret", "behind a token\n");
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    push_image(
        &reg,
        "tok/bb",
        "1",
        &[(layer.clone(), gzip(&layer), gz)],
        false,
    );
    let image = format!("{host}/tok/bb:1");

    let err = d.fails(&["pull", &image]);
    assert!(
        err.contains("unauthorized: incorrect username or password"),
        "{err}"
    );
    let err = d.fails(&["login", "-u", "gamer", "-p", "wrong", &host]);
    assert!(
        err.contains(&format!(
            "Get \"http://{host}/v2/\": unauthorized: incorrect username or password"
        )),
        "{err}"
    );
    let out = d.ok(&["login", "-u", "gamer", "-p", "t0ken", &host]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.ok(&["pull", &image]);
    assert!(
        out.contains(&format!("Downloaded newer image for {image}")),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&d.ok(&["image", "inspect", &image])).expect("inspect json");
    assert_eq!(v[0]["RootFS"]["Layers"], json!([sha(&layer)]));
}
