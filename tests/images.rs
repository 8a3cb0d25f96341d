//! The docker CLI against a real berthd: import, images, inspect, tag, save, rmi, load.

mod common;

use common::{busybox_rootfs_tar, Daemon};

#[test]
fn docker_cli_image_lifecycle() {
    let d = Daemon::start();
    let rootfs = d.path("rootfs.tar");
    busybox_rootfs_tar(&rootfs);
    let rootfs = rootfs.display().to_string();

    // import with a change and a message
    let out = d.ok(&["import", "-c", r#"CMD ["sh"]"#, "-m", "msg", &rootfs, "t:1"]);
    let id = out.trim().to_string();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "import printed {out:?}"
    );

    // images
    let out = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert_eq!(out.trim(), format!("t:1 {}", &id[7..19]));

    // inspect
    let out = d.ok(&["image", "inspect", "t:1"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect json");
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh");
    assert_eq!(v[0]["Comment"], "msg");
    assert_eq!(v[0]["RepoTags"][0], "t:1");
    assert_eq!(v[0]["Os"], "linux");
    let out = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.Cmd}} {{len .RootFS.Layers}}",
        &id[7..19],
    ]);
    assert_eq!(out.trim(), "[sh] 1");
    let err = d.fails(&["image", "inspect", "nonexist"]);
    assert!(err.contains("No such image: nonexist"), "{err}");

    // tag
    d.ok(&["tag", "t:1", "127.0.0.1:5000/a/b:v1"]);
    let out = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut tags: Vec<&str> = out.lines().collect();
    tags.sort();
    assert_eq!(tags, vec!["127.0.0.1:5000/a/b:v1", "t:1"]);
    let out = d.ok(&[
        "images",
        "--filter",
        "reference=t:*",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert_eq!(out.trim(), "t:1");

    // save both tags
    let archive = d.path("saved.tar");
    let archive_s = archive.display().to_string();
    d.ok(&["save", "-o", &archive_s, "t:1", "127.0.0.1:5000/a/b:v1"]);
    assert!(std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0) > 1_000_000);

    // rmi: first tag only untags, the last one deletes
    let out = d.ok(&["rmi", "127.0.0.1:5000/a/b:v1"]);
    assert_eq!(out.trim(), "Untagged: 127.0.0.1:5000/a/b:v1");
    let out = d.ok(&["rmi", "t:1"]);
    assert!(out.contains("Untagged: t:1"), "{out}");
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    let err = d.fails(&["rmi", "t:1"]);
    assert!(err.contains("No such image"), "{err}");

    // load it back
    let out = d.ok(&["load", "-i", &archive_s]);
    assert!(out.contains("Loaded image: t:1"), "{out}");
    assert!(out.contains("Loaded image: 127.0.0.1:5000/a/b:v1"), "{out}");
    let out = d.ok(&["image", "inspect", "-f", "{{.Id}}", "127.0.0.1:5000/a/b:v1"]);
    assert_eq!(out.trim(), id);

    // a broken archive is refused with a message
    std::fs::write(d.path("junk.tar"), vec![7u8; 4096]).expect("write junk");
    let err = d.fails(&["load", "-i", &d.path("junk.tar").display().to_string()]);
    assert!(err.contains("invalid"), "{err}");

    let info = d.ok(&["info", "--format", "{{.Images}}"]);
    assert_eq!(info.trim(), "1");

    // prune: dangling only keeps the tagged image, -a removes it
    d.ok(&["image", "prune", "-f"]);
    let left = d.ok(&["images", "-q"]);
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        vec![&id[7..19]; 2],
        "one row per tag"
    );
    let out = d.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains(&format!("deleted: {id}")), "{out}");
    assert_eq!(d.ok(&["info", "--format", "{{.Images}}"]).trim(), "0");
}
