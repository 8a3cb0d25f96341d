//! `docker pull` and `docker login` against Debian's `docker-registry` (Distribution v2):
//! plain on 127.0.0.1, with htpasswd basic auth, with token auth, and plain on the host's
//! global address (`--insecure-registry`). Images are put into the registry with the upload
//! API from the test (berth has no push yet).

mod common;
mod registry_util;

use base64::Engine;
use common::{busybox_rootfs_tar, is_root, Daemon, Launch};
use registry_util::{file_tar, gzip, host_ip, push_image, sha, Registry, TokenService};
use serde_json::{json, Value};
use std::path::Path;

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
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 1;
    let events = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until.to_string(),
        "--filter",
        "event=pull",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(events, format!("image pull {host}/bb:1"));
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
    let arm_only = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [index["manifests"][0].clone()],
    });
    reg.put_manifest("multi", "arm", &arm_only);
    let err = d.fails(&["pull", &format!("{host}/multi:arm")]);
    assert!(
        err.contains("no matching manifest for linux/amd64 in the manifest list entries"),
        "{err}"
    );
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

    // More layers than downloads run at once (3): all arrive, in order.
    let mut many = vec![(bb.clone(), gzip(&bb), gz)];
    for i in 0..5 {
        let t = file_tar(&format!("f{i}"), &format!("{i}\n"));
        many.push((t.clone(), gzip(&t), gz));
    }
    push_image(&reg, "many", "1", &many, false);
    let image = format!("{host}/many:1");
    d.ok(&["pull", &image]);
    let ran = d.ok(&[
        "run", "--rm", &image, "cat", "/f0", "/f1", "/f2", "/f3", "/f4",
    ]);
    assert_eq!(ran, "0\n1\n2\n3\n4");

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
    let cidrs = d.ok(&[
        "info",
        "--format",
        "{{json .RegistryConfig.InsecureRegistryCIDRs}}",
    ]);
    assert_eq!(cidrs, format!(r#"["127.0.0.0/8","{ip}/32"]"#));
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
