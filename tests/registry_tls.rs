//! A registry that speaks only HTTPS with a self-signed certificate: an insecure registry
//! (loopback, or `--insecure-registry`) is tried over HTTPS first with any certificate and
//! pulled from that way, as dockerd does; a registry that is not insecure must present a
//! certificate the host trusts.

mod common;
#[allow(dead_code)]
mod registry_util;

use common::{busybox_rootfs_tar, is_root, until, Daemon, Launch};
use registry_util::{file_tar, gzip, host_ip, push_image, Registry};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

const GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A `docker-registry` serving `storage` over HTTPS on `ip`; killed on drop.
struct TlsRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRegistry {
    fn start(ip: &str, storage: &std::path::Path) -> TlsRegistry {
        TlsRegistry::start_auth(ip, storage, None)
    }

    /// With `user`, behind htpasswd basic auth.
    fn start_auth(ip: &str, storage: &std::path::Path, user: Option<(&str, &str)>) -> TlsRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut auth = String::new();
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            );
        }
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=berth-test"])
            .arg("-addext")
            .arg(format!("subjectAltName=IP:{ip}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            storage.display(),
            cert.display(),
            key.display()
        ) + &auth;
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        until("the TLS registry listens", || {
            TcpStream::connect((ip, port)).is_ok()
        });
        TlsRegistry {
            child,
            host: format!("{ip}:{port}"),
            _dir: dir,
        }
    }
}

/// The plain registry's storage root (its filesystem driver's `rootdirectory`).
fn storage_of(reg: &Registry, digest: &str) -> std::path::PathBuf {
    // rootdirectory/docker/registry/v2/blobs/sha256/xx/<hex>/data
    reg.blob_file(digest)
        .ancestors()
        .nth(8)
        .expect("storage root")
        .to_path_buf()
}

/// An image `tls/img:1` uploaded through a plain registry; returns it and its storage.
fn seeded(d: &Daemon) -> (Registry, std::path::PathBuf, String) {
    let reg = Registry::start(None);
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    let bb = std::fs::read(&tar).expect("busybox tar");
    let f = file_tar("proto", "https\n");
    let bb_gz = gzip(&bb);
    let digest = push_image(
        &reg,
        "tls/img",
        "1",
        &[(bb.clone(), bb_gz.clone(), GZ), (f.clone(), gzip(&f), GZ)],
        false,
    );
    let storage = storage_of(&reg, &registry_util::sha(&bb_gz));
    (reg, storage, digest)
}

#[test]
fn a_loopback_registry_with_a_self_signed_certificate_is_pulled_over_https() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let (_plain, storage, digest) = seeded(&d);
    let tls = TlsRegistry::start("127.0.0.1", &storage);
    let image = format!("{}/tls/img:1", tls.host);
    let out = d.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(d.ok(&["run", "--rm", &image, "cat", "/proto"]), "https");
    // Push goes the same way (its blobs are already in the registry: only the manifest).
    let again = format!("{}/tls/img:2", tls.host);
    d.ok(&["tag", &image, &again]);
    let out = d.ok(&["push", &again]);
    assert!(out.contains("Layer already exists"), "{out}");
    assert!(out.contains("2: digest: sha256:"), "{out}");
}

#[test]
fn a_registry_that_is_not_insecure_needs_a_trusted_certificate() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(ip) = host_ip() else {
        eprintln!("skipped: no global address");
        return;
    };
    let d = Daemon::start();
    let (_plain, storage, digest) = seeded(&d);
    let tls = TlsRegistry::start(&ip, &storage);
    let image = format!("{}/tls/img:1", tls.host);
    let err = d.fails(&["pull", &image]);
    assert!(
        err.contains(&format!(
            "Get \"https://{}/v2/\": x509: certificate signed by unknown authority",
            tls.host
        )),
        "{err}"
    );
    assert!(d
        .fails(&["image", "inspect", &image])
        .contains("No such image"));

    // Marked insecure, it is pulled over HTTPS without checking the certificate.
    let d2 = Daemon::start_with(Launch {
        env: vec![("BERTH_INSECURE_REGISTRIES".into(), tls.host.clone())],
        ..Launch::default()
    });
    let out = d2.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
}

#[test]
fn login_to_a_self_signed_loopback_registry_goes_over_https() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let (_plain, storage, digest) = seeded(&d);
    let tls = TlsRegistry::start_auth("127.0.0.1", &storage, Some(("ann", "secret")));
    let image = format!("{}/tls/img:1", tls.host);
    let err = d.fails(&["pull", &image]);
    assert!(err.contains("no basic auth credentials"), "{err}");
    let bad = d.fails(&["login", "-u", "ann", "-p", "wrong", &tls.host]);
    assert!(bad.contains("401 Unauthorized"), "{bad}");
    let out = d.ok(&["login", "-u", "ann", "-p", "secret", &tls.host]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
}
