//! `docker push` against Debian's `docker-registry` (Distribution v2) through the real
//! docker CLI: a multi-layer image pushed, pushed again (nothing uploaded), mounted into
//! another repository by a second daemon that only pulled it, pulled back to the same image
//! id; htpasswd credentials; unknown names. The registry's access log counts the uploads.

mod common;
#[allow(dead_code)]
mod registry_util;

use common::{is_root, Daemon};
use registry_util::{Registry, TokenService};
use serde_json::Value;

/// Upload sessions the registry opened for `repo` (mount requests not counted).
fn uploads(reg: &Registry, repo: &str) -> usize {
    let needle = format!("\"POST /v2/{repo}/blobs/uploads/");
    reg.log()
        .lines()
        .filter(|l| l.contains(&needle) && !l.contains("mount="))
        .count()
}

/// Mount requests the registry got for `repo`.
fn mounts(reg: &Registry, repo: &str) -> usize {
    let needle = format!("\"POST /v2/{repo}/blobs/uploads/?");
    reg.log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("mount="))
        .count()
}

fn count(out: &str, status: &str) -> usize {
    out.lines()
        .filter(|l| l.split_once(": ").is_some_and(|(_, s)| s == status))
        .count()
}

/// The digest and size of the `<tag>: digest: … size: …` line.
fn digest_line(out: &str, tag: &str) -> (String, usize) {
    let prefix = format!("{tag}: digest: ");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no digest line for {tag}: {out}"));
    let (d, size) = line.split_once(" size: ").expect("size");
    (d.to_string(), size.parse().expect("size number"))
}

fn inspect(d: &Daemon, image: &str) -> Value {
    let out = d.ok(&["image", "inspect", image]);
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    v[0].clone()
}

/// A three-layer image: busybox, then two committed container changes.
fn three_layers(d: &Daemon, name: &str) {
    d.import_busybox("pushbase:1");
    d.ok(&[
        "run",
        "--name",
        "pl1",
        "pushbase:1",
        "sh",
        "-c",
        "echo one > /one",
    ]);
    d.ok(&["commit", "pl1", "pushmid:1"]);
    d.ok(&[
        "run",
        "--name",
        "pl2",
        "pushmid:1",
        "sh",
        "-c",
        "echo two > /two",
    ]);
    d.ok(&["commit", "pl2", name]);
    d.ok(&["rm", "pl1", "pl2"]);
}

#[test]
fn push_repush_mount_and_pull_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let host = reg.host();
    let d = Daemon::start();
    let image = format!("{host}/test/img:v1");
    three_layers(&d, &image);
    let id = inspect(&d, &image)["Id"].as_str().expect("id").to_string();

    let out = d.ok(&["push", &image]);
    assert!(
        out.starts_with(&format!("The push refers to repository [{host}/test/img]")),
        "{out}"
    );
    assert_eq!(count(&out, "Preparing"), 3, "{out}");
    assert_eq!(count(&out, "Waiting"), 0, "five uploads at a time: {out}");
    assert_eq!(count(&out, "Pushed"), 3, "{out}");
    let (digest, size) = digest_line(&out, "v1");
    assert!(size > 400, "{out}");
    // Three layers and the config.
    assert_eq!(uploads(&reg, "test/img"), 4, "{}", reg.log());
    // The version check is not repeated before every request of an anonymous push.
    let pings = reg.log().matches("\"GET /v2/ HTTP").count();
    assert!(pings <= 2, "{}", reg.log());
    let repo_digests = inspect(&d, &image)["RepoDigests"].clone();
    assert_eq!(
        repo_digests,
        serde_json::json!([format!("{host}/test/img@{digest}")])
    );
    let events = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until(),
        "--filter",
        "event=push",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(events, format!("image push {image} {host}/test/img"));

    // Again, and under a second tag: nothing is uploaded, same manifest.
    let out = d.ok(&["push", &image]);
    assert_eq!(count(&out, "Layer already exists"), 3, "{out}");
    assert_eq!(count(&out, "Pushed"), 0, "{out}");
    assert_eq!(digest_line(&out, "v1"), (digest.clone(), size));
    d.ok(&["tag", &image, &format!("{host}/test/img:v2")]);
    let out = d.ok(&["push", &format!("{host}/test/img:v2")]);
    assert_eq!(count(&out, "Layer already exists"), 3, "{out}");
    assert_eq!(digest_line(&out, "v2").0, digest);
    // All tags of the repository.
    let out = d.ok(&["push", "--all-tags", &format!("{host}/test/img")]);
    assert_eq!(digest_line(&out, "v1").0, digest, "{out}");
    assert_eq!(digest_line(&out, "v2").0, digest, "{out}");
    assert_eq!(uploads(&reg, "test/img"), 4, "{}", reg.log());

    // A second daemon pulls it (same image id, it runs) and pushes it to another
    // repository: the layers are mounted, only the config is uploaded.
    let d2 = Daemon::start();
    let out = d2.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(inspect(&d2, &image)["Id"], id.as_str());
    assert_eq!(
        d2.ok(&["run", "--rm", &image, "cat", "/one", "/two"]),
        "one\ntwo"
    );
    let other = format!("{host}/other/img:1");
    d2.ok(&["tag", &image, &other]);
    let out = d2.ok(&["push", &other]);
    assert_eq!(count(&out, "Mounted from test/img"), 3, "{out}");
    assert_eq!(digest_line(&out, "1").0, digest, "same manifest: {out}");
    assert_eq!(mounts(&reg, "other/img"), 3, "{}", reg.log());
    assert_eq!(uploads(&reg, "other/img"), 1, "{}", reg.log());

    // Removed and pulled back on the first daemon: the same image.
    d.ok(&["rmi", "-f", &id]);
    assert!(d.docker(&["image", "inspect", &image]).status.code() != Some(0));
    d.ok(&["pull", &image]);
    assert_eq!(inspect(&d, &image)["Id"], id.as_str());
    assert_eq!(d.ok(&["run", "--rm", &image, "cat", "/two"]), "two");
}

fn until() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    (now + 1).to_string()
}

#[test]
fn push_with_basic_auth_and_unknown_names() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(Some(("gamer", "s3cret")));
    let host = reg.host();
    let d = Daemon::start();
    let image = format!("{host}/priv/bb:1");
    d.import_busybox(&image);

    let out = d.docker(&["push", &image]);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains(&format!("The push refers to repository [{host}/priv/bb]")),
        "{stdout}"
    );
    assert_eq!(stderr.trim(), "no basic auth credentials", "{stderr}");

    d.ok(&["login", "-u", "gamer", "-p", "s3cret", &host]);
    let out = d.ok(&["push", &image]);
    assert_eq!(count(&out, "Pushed"), 1, "{out}");
    digest_line(&out, "1");

    // Credentials gone bad: the registry's own refusal.
    let dir = d.path("dc");
    let bad = base64_pair("gamer", "nope");
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {host.as_str(): {"auth": bad}}}).to_string(),
    )
    .expect("config.json");
    d.ok(&["tag", &image, &format!("{host}/priv/bb2:1")]);
    let err = d.fails(&["push", &format!("{host}/priv/bb2:1")]);
    assert!(
        err.contains("unauthorized: authentication required"),
        "{err}"
    );

    // Unknown names: dockerd's errors, after the first line.
    let out = d.docker(&["push", &format!("{host}/nope/img:v1")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("The push refers to repository [{host}/nope/img]")),
        "{out:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("An image does not exist locally with the tag: {host}/nope/img")
    );
    let err = d.fails(&["push", &format!("{host}/priv/bb:2")]);
    assert_eq!(err.trim(), format!("tag does not exist: {host}/priv/bb:2"));
    // No registry there: the connection error, worded as Go's net package.
    d.ok(&["tag", &image, "127.0.0.1:1/x/y:1"]);
    let err = d.fails(&["push", "127.0.0.1:1/x/y:1"]);
    assert_eq!(
        err.trim(),
        "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
    );
    let err = d.fails(&["push", "nosuchimage"]);
    assert_eq!(
        err.trim(),
        "An image does not exist locally with the tag: nosuchimage"
    );
}

fn base64_pair(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// The raw JSON messages of `POST /images/{name}/push?tag=`.
fn raw_push(d: &Daemon, name: &str, tag: &str) -> Vec<Value> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&d.sock)
        .args(["-X", "POST", "-H", "X-Registry-Auth: e30="])
        .arg(format!("http://berth/v1.41/images/{name}/push?tag={tag}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn seven_layers_wait_for_five_slots_and_stream_progress() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let host = reg.host();
    let d = Daemon::start();
    d.import_busybox("many:0");
    for i in 1..7 {
        let c = format!("many{i}");
        let script = format!("echo {i} > /f{i}");
        d.ok(&[
            "run",
            "--name",
            &c,
            &format!("many:{}", i - 1),
            "sh",
            "-c",
            &script,
        ]);
        d.ok(&["commit", &c, &format!("many:{i}")]);
        d.ok(&["rm", &c]);
    }
    d.ok(&["tag", "many:6", &format!("{host}/many/img:1")]);
    let msgs = raw_push(&d, &format!("{host}/many/img"), "1");
    let status = |s: &str| msgs.iter().filter(|m| m["status"] == s).count();
    assert_eq!(
        msgs[0]["status"],
        format!("The push refers to repository [{host}/many/img]")
    );
    assert_eq!(status("Preparing"), 7, "{msgs:?}");
    assert_eq!(status("Waiting"), 2, "{msgs:?}");
    assert_eq!(status("Pushed"), 7, "{msgs:?}");
    // The busybox layer's progress, in bytes of its tar, up to the whole of it.
    let pushing: Vec<&Value> = msgs.iter().filter(|m| m["status"] == "Pushing").collect();
    let last = pushing
        .iter()
        .rfind(|m| m["progressDetail"]["total"].as_u64() > Some(1 << 20))
        .unwrap_or_else(|| panic!("no progress for the big layer: {msgs:?}"));
    assert_eq!(
        last["progressDetail"]["current"],
        last["progressDetail"]["total"]
    );
    assert!(last["id"].as_str().is_some_and(|id| id.len() == 12));
    let aux = &msgs.last().expect("messages")["aux"];
    assert_eq!(aux["Tag"], "1");
    let digest = aux["Digest"].as_str().expect("digest");
    let size = aux["Size"].as_u64().expect("size");
    assert!(
        msgs.iter()
            .any(|m| m["status"] == format!("1: digest: {digest} size: {size}")),
        "{msgs:?}"
    );
    // The registry stored exactly that manifest (manifests are blobs in its storage).
    let body = std::fs::read(reg.blob_file(digest)).expect("manifest blob");
    assert_eq!(body.len() as u64, size);
    let m: Value = serde_json::from_slice(&body).expect("manifest");
    assert_eq!(m["layers"].as_array().map(|l| l.len()), Some(7));
}

#[test]
fn push_with_bearer_token_auth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tokens = TokenService::start("gamer", "t0ken");
    let tmp = tempfile::tempdir().expect("temp dir");
    let upload = format!("Bearer {}", tokens.jwt("tok/bb", &["pull", "push"]));
    let reg = Registry::start_cfg("127.0.0.1", None, Some((tokens.section(), upload, tmp)));
    let host = reg.host();
    let d = Daemon::start();
    let image = format!("{host}/tok/bb:1");
    d.import_busybox(&image);

    let out = d.docker(&["push", &image]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": Preparing"), "{stdout}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "unauthorized: incorrect username or password"
    );
    d.ok(&["login", "-u", "gamer", "-p", "t0ken", &host]);
    let out = d.ok(&["push", &image]);
    assert_eq!(count(&out, "Pushed"), 1, "{out}");
    let (digest, _) = digest_line(&out, "1");
    let out = d.ok(&["push", &image]);
    assert_eq!(count(&out, "Layer already exists"), 1, "{out}");
    assert_eq!(digest_line(&out, "1").0, digest);
}

/// A TCP proxy in front of `upstream` that cuts the first `drops` connections starting an
/// upload (`POST …/blobs/uploads/`) after reading their request, forwarding all else.
fn flaky_proxy(upstream: String, drops: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(drops));
    // Serves until the test process ends (blocked in accept, holding nothing else).
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (upstream, left) = (upstream.clone(), left.clone());
            std::thread::spawn(move || {
                let mut client = conn;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                if line.starts_with("POST ") && line.contains("/blobs/uploads/") {
                    let cut = left
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |n| n.checked_sub(1),
                        )
                        .is_ok();
                    if cut {
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                if server.write_all(&head).is_err() {
                    return;
                }
                let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    port
}

#[test]
fn a_cut_upload_is_retried_after_a_countdown() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let port = flaky_proxy(reg.host(), 1);
    let d = Daemon::start();
    let image = format!("127.0.0.1:{port}/flaky/img:1");
    d.import_busybox(&image);
    let out = d.ok(&["push", &image]);
    let retries: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(": Retrying in ").map(|(_, r)| r))
        .collect();
    assert_eq!(
        retries,
        [
            "5 seconds",
            "4 seconds",
            "3 seconds",
            "2 seconds",
            "1 second"
        ],
        "{out}"
    );
    assert_eq!(count(&out, "Pushed"), 1, "{out}");
    let (digest, _) = digest_line(&out, "1");
    assert!(reg.blob_file(&digest).exists(), "{out}");
}
