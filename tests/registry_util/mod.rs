//! Test helpers for tests/registry.rs: Debian's `docker-registry` started on a free port
//! (plain, htpasswd or token auth) and filled with the Distribution upload API, and a small
//! token service signing RS256 JWTs with openssl.

use crate::common;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A `docker-registry` for this test; killed on drop.
pub struct Registry {
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
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        Registry::start_on("127.0.0.1", user)
    }

    /// Starts a registry on a free port of `ip`.
    pub fn start_on(ip: &str, user: Option<(&str, &str)>) -> Registry {
        Registry::start_cfg(ip, user, None)
    }

    /// Starts a registry; `extra` is more of its config (an `auth:` section) and the
    /// Authorization header this test's own uploads use.
    pub fn start_cfg(
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
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's output so far (its access log: one line per request).
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// One HTTP/1.1 request (`Connection: close`): status, headers (lower-case), body.
    pub fn http(
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
    pub fn put_blob(&self, repo: &str, data: &[u8]) -> String {
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
    pub fn put_manifest(&self, repo: &str, reference: &str, manifest: &Value) -> String {
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
pub fn file_tar(name: &str, content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, content.as_bytes())
        .expect("tar entry");
    b.into_inner().expect("tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Layers as (uncompressed tar, blob as stored, media type).
pub type Layer = (Vec<u8>, Vec<u8>, &'static str);

/// Uploads `layers` and a config for them, then a manifest of `manifest_type` tagged `tag`.
pub fn push_image(r: &Registry, repo: &str, tag: &str, layers: &[Layer], oci: bool) -> String {
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

/// A global IPv4 address of this host, if it has one.
pub fn host_ip() -> Option<String> {
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

/// A token service for a registry with `auth: token`: RS256 JWTs signed with a self-signed
/// certificate (sent in `x5c`) that the registry trusts, given for basic credentials.
pub struct TokenService {
    dir: tempfile::TempDir,
    port: u16,
}

pub const SERVICE: &str = "berth-test";
pub const ISSUER: &str = "berth-test-issuer";

pub fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenService {
    pub fn start(user: &str, pass: &str) -> TokenService {
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

    pub fn jwt(&self, repo: &str, actions: &[&str]) -> String {
        jwt(self.dir.path(), repo, actions)
    }

    /// The registry's `auth:` section.
    pub fn section(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.dir.path().join("cert.pem").display()
        )
    }
}

pub fn jwt(dir: &Path, repo: &str, actions: &[&str]) -> String {
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

pub fn rand_jti() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// One token request: 401 unless the basic credentials match, else a token for the scope.
pub fn serve_token(mut conn: TcpStream, dir: &Path, expected: &str) -> std::io::Result<()> {
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
