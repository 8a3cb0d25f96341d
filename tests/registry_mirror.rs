//! `--registry-mirror`: Docker Hub images come from the mirrors first (a dead mirror is
//! skipped for the next), and are recorded under their Docker Hub names. `docker pull -a`:
//! every tag of a repository.

mod common;
#[allow(dead_code)]
mod registry_util;

use common::{busybox_rootfs_tar, is_root, Daemon, Launch};
use registry_util::{file_tar, gzip, push_image, Registry};
use serde_json::Value;

const GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[test]
fn docker_hub_images_come_from_the_first_working_mirror() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    // A port nothing listens on: the first mirror is refused, the second serves.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mirrors = format!("http://127.0.0.1:{dead},http://{}", reg.host());
    let d = Daemon::start_with(Launch {
        env: vec![("BERTH_REGISTRY_MIRRORS".into(), mirrors)],
        ..Launch::default()
    });
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    let bb = std::fs::read(&tar).expect("busybox tar");
    let hello = file_tar("hello", "from the mirror\n");
    let digest = push_image(
        &reg,
        "library/mirrored",
        "1",
        &[
            (bb.clone(), gzip(&bb), GZ),
            (hello.clone(), gzip(&hello), GZ),
        ],
        false,
    );

    let info = d.ok(&["info", "--format", "{{json .RegistryConfig.Mirrors}}"]);
    let info: Value = serde_json::from_str(&info).expect("mirrors json");
    assert_eq!(
        info,
        serde_json::json!([
            format!("http://127.0.0.1:{dead}/"),
            format!("http://{}/", reg.host())
        ])
    );

    let out = d.ok(&["pull", "mirrored:1"]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(
        out.contains("Status: Downloaded newer image for mirrored:1"),
        "{out}"
    );
    let listed = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(listed, "mirrored:1");
    let rd = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        "mirrored:1",
    ]);
    assert_eq!(rd, format!("[\"mirrored@{digest}\"]"));
    let ran = d.ok(&["run", "--rm", "mirrored:1", "cat", "/hello"]);
    assert_eq!(ran, "from the mirror");
    // By digest, through the Docker Hub name.
    d.ok(&["rmi", "mirrored:1"]);
    let out = d.ok(&["pull", &format!("mirrored@{digest}")]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");

    // Not on any mirror: Docker Hub is tried last (unreachable here), the pull fails and
    // nothing is recorded.
    let err = d.fails(&["pull", "not-mirrored:1"]);
    assert!(!err.is_empty());
    assert!(d
        .fails(&["image", "inspect", "not-mirrored:1"])
        .contains("No such image"));
    // A name of another registry never goes to a mirror.
    let err = d.fails(&["pull", &format!("127.0.0.1:{dead}/library/mirrored:1")]);
    assert!(
        err.contains("connection refused") || err.contains("Connection refused"),
        "{err}"
    );
}

#[test]
fn an_invalid_mirror_stops_the_daemon_with_dockerds_message() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--registry-mirror", "ftp://mirror.example", "--data-root"])
        .arg(tmp.path().join("d"))
        .arg("--exec-root")
        .arg(tmp.path().join("x"))
        .arg("-H")
        .arg(format!("unix://{}", tmp.path().join("s.sock").display()))
        .output()
        .expect("run berthd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid mirror: unsupported scheme \"ftp\" in \"ftp://mirror.example\""),
        "{err}"
    );
    assert!(!tmp.path().join("d").exists(), "nothing was created");
}

#[test]
fn pull_all_tags_pulls_every_tag_of_the_repository() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start(None);
    let d = Daemon::start();
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    let bb = std::fs::read(&tar).expect("busybox tar");
    let mut digests = Vec::new();
    for tag in ["1", "2", "3"] {
        let f = file_tar("tag", &format!("{tag}\n"));
        let layers = [(bb.clone(), gzip(&bb), GZ), (f.clone(), gzip(&f), GZ)];
        digests.push(push_image(&reg, "many", tag, &layers, false));
    }
    let repo = format!("{}/many", reg.host());
    let out = d.ok(&["pull", "-a", &repo]);
    for (tag, digest) in ["1", "2", "3"].iter().zip(&digests) {
        assert!(out.contains(&format!("{tag}: Pulling from many")), "{out}");
        assert!(out.contains(&format!("Digest: {digest}")), "{out}");
        let ran = d.ok(&["run", "--rm", &format!("{repo}:{tag}"), "cat", "/tag"]);
        assert_eq!(ran, *tag);
    }
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {repo}")),
        "{out}"
    );
    let again = d.ok(&["pull", "-a", &repo]);
    assert!(
        again.contains(&format!("Status: Image is up to date for {repo}")),
        "{again}"
    );
    let err = d.fails(&["pull", "-a", &format!("{}/nothing", reg.host())]);
    assert!(
        err.contains("name unknown") || err.contains("not found"),
        "{err}"
    );
}
