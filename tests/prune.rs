//! `docker container prune` through the real docker CLI and the raw API (root).

mod common;
use common::daemon_with_image;
use common::rawapi::curl;

#[test]
fn container_prune_removes_stopped_containers_by_filter() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "prrun", "bb:test", "sleep", "1000"]);
    let db = d.ok(&[
        "create", "--name", "prdb", "--label", "tier=db", "bb:test", "true",
    ]);
    d.ok(&[
        "run",
        "--name",
        "prexit",
        "bb:test",
        "sh",
        "-c",
        "echo 123456789 > /tmp/f",
    ]);
    let exited = d.ok(&["inspect", "-f", "{{.Id}}", "prexit"]);
    let err = d.fails(&["container", "prune", "-f", "--filter", "foo=bar"]);
    assert!(err.contains("invalid filter 'foo'"), "{err}");
    let out = d.ok(&["container", "prune", "-f", "--filter", "label=tier=db"]);
    assert_eq!(
        out,
        format!("Deleted Containers:\n{db}\n\nTotal reclaimed space: 0B")
    );
    // Everything is younger than an hour.
    let out = d.ok(&["container", "prune", "-f", "--filter", "until=1h"]);
    assert_eq!(out, "Total reclaimed space: 0B");
    let (code, body) = curl(&d, "POST", "/containers/prune", None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ContainersDeleted"], serde_json::json!([exited]));
    assert_eq!(v["SpaceReclaimed"], 10, "{body}");
    let (_, body) = curl(&d, "POST", "/containers/prune", None);
    assert_eq!(
        body.trim(),
        r#"{"ContainersDeleted":null,"SpaceReclaimed":0}"#
    );
    assert_eq!(d.ok(&["ps", "-a", "--format", "{{.Names}}"]), "prrun");
    d.ok(&["rm", "-f", "prrun"]);
}
