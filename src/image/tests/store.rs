//! Store operations end to end on a temp data root.

use super::util::{config_for, docker_archive, layer2_tar, oci_layout, rootfs_tar, TestStore};
use crate::error::ApiResult;
use crate::image::blobs::digest_of;
use crate::image::layers::chain_id;
use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;

fn none(_: &str) -> Option<(String, bool)> {
    None
}

fn untagged(list: &[serde_json::Value]) -> Vec<String> {
    list.iter()
        .filter_map(|v| v["Untagged"].as_str().map(str::to_string))
        .collect()
}

fn deleted(list: &[serde_json::Value]) -> Vec<String> {
    list.iter()
        .filter_map(|v| v["Deleted"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn import_applies_changes_and_tags() -> ApiResult<()> {
    let ts = TestStore::new();
    let rootfs = rootfs_tar();
    let id = ts.images.import(
        &mut std::io::Cursor::new(&rootfs),
        Some("t:1"),
        &[r#"CMD ["sh"]"#.to_string(), "ENV A=1".to_string()],
        "",
    )?;
    assert!(crate::image::reference::is_digest(&id));
    let rec = ts.images.resolve("t:1")?;
    assert_eq!(rec.id, id);
    let c = rec.container_config();
    assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(c.env, Some(vec!["A=1".to_string()]));
    assert_eq!(
        rec.config.history[0].comment.as_deref(),
        Some("Imported from -")
    );
    assert_eq!(rec.config.rootfs.diff_ids, vec![digest_of(&rootfs)]);
    // Resolution by short id, with and without sha256:.
    assert_eq!(ts.images.resolve(&id[7..19])?.id, id);
    assert_eq!(ts.images.resolve(&id[..19])?.id, id);
    let dirs = ts.images.layer_dirs(&id)?;
    assert_eq!(dirs.len(), 1);
    assert_eq!(
        std::fs::read(dirs[0].join("etc/hostname")).unwrap_or_default(),
        b"berth\n"
    );
    assert!(dirs[0].join("bin/busybox").is_file());
    let inspect = ts.images.inspect("t:1")?;
    assert_eq!(inspect["RepoTags"][0], "t:1");
    assert_eq!(inspect["Config"]["Cmd"][0], "sh");
    assert_eq!(inspect["Comment"], "Imported from -");
    assert_eq!(inspect["GraphDriver"]["Name"], "overlay2");
    assert!(inspect["Metadata"]["LastTagTime"]
        .as_str()
        .is_some_and(|t| t.starts_with("20")));
    let e = ts.images.inspect("nonexist").expect_err("404");
    assert_eq!(
        e.to_string(),
        "no such image: nonexist: No such image: nonexist:latest"
    );
    assert_eq!(
        ts.images.resolve("nope:2").expect_err("404").to_string(),
        "No such image: nope:2"
    );
    let e = ts.images.import(
        &mut std::io::Cursor::new(&rootfs),
        None,
        &["RUN x".into()],
        "",
    );
    assert_eq!(
        e.expect_err("bad change").to_string(),
        "run is not a valid change command"
    );
    assert_eq!(ts.images.count(), 1);
    assert!(ts.actions().contains(&"import".to_string()));
    Ok(())
}

#[test]
fn docker_archive_loads_with_layers_whiteouts_and_tags() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg = config_for(&[&l1, &l2], "sh", "2026-01-01T00:00:00Z");
    let lines = ts.load(&docker_archive(
        &cfg,
        &[&l1, &l2],
        &["busybox:latest", "127.0.0.1:5000/a/b:v1"],
        true,
    ))?;
    assert_eq!(
        lines,
        vec![
            "Loaded image: busybox:latest\n",
            "Loaded image: 127.0.0.1:5000/a/b:v1\n"
        ]
    );
    let id = digest_of(&cfg);
    assert_eq!(ts.images.resolve("busybox")?.id, id);
    assert_eq!(
        ts.images.resolve("docker.io/library/busybox:latest")?.id,
        id
    );
    let dirs = ts.images.layer_dirs(&id)?;
    assert_eq!(dirs.len(), 2);
    let c1 = chain_id(None, &digest_of(&l1));
    let c2 = chain_id(Some(&c1), &digest_of(&l2));
    assert!(dirs[0].ends_with(format!("layers/{}/diff", &c2[7..])));
    assert!(dirs[1].ends_with(format!("layers/{}/diff", &c1[7..])));
    assert!(std::fs::symlink_metadata(dirs[0].join("etc/motd"))
        .is_ok_and(|m| m.file_type().is_char_device()));
    // Loading again reuses everything; an untagged image reports its id.
    let cfg2 = config_for(&[&l1], "true", "2026-01-02T00:00:00Z");
    let lines = ts.load(&docker_archive(&cfg2, &[&l1], &[], false))?;
    assert_eq!(
        lines,
        vec![format!("Loaded image ID: {}\n", digest_of(&cfg2))]
    );
    assert_eq!(ts.images.layer_dirs(&digest_of(&cfg2))?[0], dirs[1]);
    // A tag that moves untags the old image.
    let lines = ts.load(&docker_archive(&cfg2, &[&l1], &["busybox:latest"], false))?;
    assert!(
        lines[0].contains("already exists, renaming the old one"),
        "{lines:?}"
    );
    assert_eq!(ts.images.resolve("busybox")?.id, digest_of(&cfg2));
    assert!(ts.actions().iter().filter(|a| *a == "load").count() >= 3);
    Ok(())
}

#[test]
fn bad_archives_are_refused() {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg = config_for(&[&l1], "sh", "2026-01-01T00:00:00Z");
    let e = ts
        .load(&docker_archive(&cfg, &[&l2], &["x:1"], false))
        .expect_err("diff mismatch");
    assert!(e.to_string().contains("invalid diffID"), "{e}");
    let e = ts
        .load(&docker_archive(&cfg, &[&l1, &l2], &[], false))
        .expect_err("count");
    assert!(e.to_string().contains("layers length mismatch"), "{e}");
    let e = ts
        .load(&docker_archive(&cfg, &[&l1], &["Bad:1"], false))
        .expect_err("tag");
    assert_eq!(e.status(), 400);
    let e = ts
        .load(&super::util::raw_tar(&[super::util::E::File("x", b"y")]))
        .expect_err("empty");
    assert!(e.to_string().contains("manifest.json"), "{e}");
    assert_eq!(ts.images.count(), 0);
}

#[test]
fn oci_layouts_load_by_annotation() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg = config_for(&[&l1, &l2], "sh", "2026-01-01T00:00:00Z");
    let lines = ts.load(&oci_layout(
        &cfg,
        &[&l1, &l2],
        Some("docker.io/library/bb:oci"),
    ))?;
    assert_eq!(lines, vec!["Loaded image: bb:oci\n"]);
    assert_eq!(ts.images.resolve("bb:oci")?.id, digest_of(&cfg));
    let cfg2 = config_for(&[&l1], "x", "2026-01-01T00:00:00Z");
    let lines = ts.load(&oci_layout(&cfg2, &[&l1], None))?;
    assert_eq!(
        lines,
        vec![format!("Loaded image ID: {}\n", digest_of(&cfg2))]
    );
    Ok(())
}

#[test]
fn save_then_load_round_trips() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg = config_for(&[&l1, &l2], "sh", "2026-01-01T00:00:00Z");
    ts.load(&docker_archive(&cfg, &[&l1, &l2], &["rt:1"], true))?;
    let id = ts
        .images
        .import(&mut std::io::Cursor::new(&l1), Some("imp:2"), &[], "m")?;
    ts.images.tag("rt:1", "127.0.0.1:5000/rs/bb", "v1")?;
    let plan = ts.images.prepare_save(&[
        "rt".to_string(),
        "imp:2".to_string(),
        "127.0.0.1:5000/rs/bb:v1".to_string(),
    ])?;
    let mut archive = Vec::new();
    ts.images.save(&plan, &mut archive)?;
    assert!(ts.images.prepare_save(&["nope".to_string()]).is_err());
    // A fresh store loads it back with the same ids and tags.
    let other = TestStore::new();
    let mut lines = other.load(&archive)?;
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "Loaded image: 127.0.0.1:5000/rs/bb:v1\n",
            "Loaded image: imp:2\n",
            "Loaded image: rt:1\n"
        ]
    );
    assert_eq!(other.images.resolve("rt:1")?.id, digest_of(&cfg));
    assert_eq!(other.images.resolve("imp:2")?.id, id);
    // The archive has dockerd's files.
    let mut names = Vec::new();
    for e in tar::Archive::new(std::io::Cursor::new(&archive))
        .entries()
        .map_err(|e| crate::error::ApiError::internal("t", e))?
    {
        let e = e.map_err(|e| crate::error::ApiError::internal("t", e))?;
        names.push(
            e.path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        );
    }
    assert!(names.contains(&"manifest.json".to_string()));
    assert!(names.contains(&"repositories".to_string()));
    assert!(names.contains(&format!("{}.json", &digest_of(&cfg)[7..])));
    assert_eq!(
        names.iter().filter(|n| n.ends_with("/layer.tar")).count(),
        2,
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with("/VERSION")));
    Ok(())
}

#[test]
fn rmi_untags_conflicts_and_deletes_like_dockerd() -> ApiResult<()> {
    let ts = TestStore::new();
    let l1 = rootfs_tar();
    let id = ts
        .images
        .import(&mut std::io::Cursor::new(&l1), Some("rsbb:1"), &[], "")?;
    ts.images.tag("rsbb:1", "rsbb", "2")?;
    let short = &id[7..19];
    let cid = "d463b6910b7e0000000000000000000000000000000000000000000000000000".to_string();
    let stopped = |_: &str| Some((cid.clone(), false));
    let running = |_: &str| Some((cid.clone(), true));
    // One of two tags: only untagged, even when in use.
    let out = ts.images.remove("rsbb:2", false, false, &stopped)?;
    assert_eq!(untagged(&out), vec!["rsbb:2"]);
    assert!(deleted(&out).is_empty());
    // Last tag, in use: must force.
    let e = ts
        .images
        .remove("rsbb:1", false, false, &stopped)
        .expect_err("conflict");
    assert_eq!(e.status(), 409);
    assert_eq!(e.to_string(), format!("conflict: unable to remove repository reference \"rsbb:1\" (must force) - container d463b6910b7e is using its referenced image {short}"));
    // By id: stopped must be forced, running cannot be.
    let e = ts
        .images
        .remove(short, false, false, &stopped)
        .expect_err("conflict");
    assert_eq!(e.to_string(), format!("conflict: unable to delete {short} (must be forced) - image is being used by stopped container d463b6910b7e"));
    let e = ts
        .images
        .remove(short, true, false, &running)
        .expect_err("conflict");
    assert_eq!(e.to_string(), format!("conflict: unable to delete {short} (cannot be forced) - image is being used by running container d463b6910b7e"));
    // Forced by tag with a running container: only the tag goes.
    let out = ts.images.remove("rsbb:1", true, false, &running)?;
    assert_eq!(untagged(&out), vec!["rsbb:1"]);
    assert!(deleted(&out).is_empty());
    assert!(ts.images.resolve(&id).is_ok());
    // Unused now: by id deletes the image and its layer.
    let layer_dir = ts.images.layer_dirs(&id)?[0].clone();
    let out = ts.images.remove(&id, false, false, &none)?;
    assert_eq!(deleted(&out), vec![id.clone(), digest_of(&l1)]);
    assert!(!layer_dir.exists());
    assert_eq!(ts.images.count(), 0);
    assert!(ts
        .images
        .remove("rsbb:1", false, false, &none)
        .is_err_and(|e| e.status() == 404));
    let acts = ts.actions();
    assert!(acts.contains(&"untag".to_string()) && acts.contains(&"delete".to_string()));
    Ok(())
}

#[test]
fn rmi_keeps_shared_layers_and_refuses_multi_repo_ids() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg_a = config_for(&[&l1], "a", "2026-01-01T00:00:00Z");
    let cfg_b = config_for(&[&l1, &l2], "b", "2026-01-02T00:00:00Z");
    ts.load(&docker_archive(&cfg_a, &[&l1], &["a:1", "other:1"], false))?;
    ts.load(&docker_archive(&cfg_b, &[&l1, &l2], &["b:1"], false))?;
    let a = digest_of(&cfg_a);
    let e = ts
        .images
        .remove(&a, false, false, &none)
        .expect_err("multi repo");
    assert_eq!(e.to_string(), format!("conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories", &a[7..19]));
    let out = ts.images.remove(&a, true, false, &none)?;
    let mut u = untagged(&out);
    u.sort();
    assert_eq!(u, vec!["a:1", "other:1"]);
    // The bottom layer is still used by b:1.
    assert_eq!(deleted(&out), vec![a.clone()]);
    assert!(ts
        .images
        .layer_dirs(&digest_of(&cfg_b))?
        .iter()
        .all(|d| d.exists()));
    Ok(())
}

#[test]
fn rmi_forced_past_a_stopped_container_keeps_its_layers_until_released() -> ApiResult<()> {
    let ts = TestStore::new();
    let l1 = rootfs_tar();
    let id = ts
        .images
        .import(&mut std::io::Cursor::new(&l1), Some("solo:1"), &[], "")?;
    let cid = "d463b6910b7e0000000000000000000000000000000000000000000000000000".to_string();
    let stopped = |_: &str| Some((cid.clone(), false));
    let out = ts.images.remove("solo:1", true, false, &stopped)?;
    assert_eq!(untagged(&out), vec!["solo:1"]);
    assert_eq!(deleted(&out), vec![id.clone()]);
    assert_eq!(ts.images.count(), 0);
    assert!(ts.images.resolve(&id).is_err_and(|e| e.status() == 404));
    // The container still finds its layers.
    let dirs = ts.images.layer_dirs(&id)?;
    assert!(dirs.iter().all(|d| d.exists()));
    // Still used: nothing is released.
    let user = cid.clone();
    ts.images
        .set_in_use_checker(std::sync::Arc::new(move |_: &str| {
            Some((user.clone(), false))
        }));
    ts.images.release_retained(&id)?;
    assert!(dirs.iter().all(|d| d.exists()));
    // The last user is gone: the layers go too.
    ts.images.set_in_use_checker(std::sync::Arc::new(none));
    ts.images.release_retained(&id)?;
    assert!(dirs.iter().all(|d| !d.exists()));
    assert!(ts.images.layer_dirs(&id).is_err());
    Ok(())
}

#[test]
fn list_filters_work() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let old = config_for(&[&l1], "a", "2026-01-01T00:00:00Z");
    let new = config_for(&[&l1, &l2], "b", "2026-01-02T00:00:00Z");
    ts.load(&docker_archive(&old, &[&l1], &["busybox:old"], false))?;
    ts.load(&docker_archive(&new, &[&l1, &l2], &[], false))?;
    let f = |k: &str, v: &str| HashMap::from([(k.to_string(), vec![v.to_string()])]);
    let all = ts.images.list(false, &HashMap::new())?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, digest_of(&new), "newest first");
    assert_eq!(all[0].repo_tags, Some(vec!["<none>:<none>".to_string()]));
    assert_eq!(all[1].repo_tags, Some(vec!["busybox:old".to_string()]));
    assert_eq!(all[1].repo_digests, None);
    let j = serde_json::to_value(&all[1]).map_err(crate::error::ApiError::from)?;
    assert_eq!(j["Containers"], -1);
    assert_eq!(j["SharedSize"], -1);
    assert_eq!(j["Labels"]["a"], "1");
    assert!(j["RepoDigests"].is_null());
    assert_eq!(ts.images.list(false, &f("dangling", "true"))?.len(), 1);
    assert_eq!(
        ts.images.list(false, &f("dangling", "false"))?[0].id,
        digest_of(&old)
    );
    assert_eq!(ts.images.list(false, &f("reference", "busy*"))?.len(), 1);
    assert_eq!(
        ts.images.list(false, &f("reference", "busybox:o*"))?.len(),
        1
    );
    assert_eq!(ts.images.list(false, &f("reference", "nope*"))?.len(), 0);
    assert_eq!(ts.images.list(false, &f("label", "a=1"))?.len(), 2);
    assert_eq!(ts.images.list(false, &f("label", "a=2"))?.len(), 0);
    assert_eq!(
        ts.images.list(false, &f("before", &digest_of(&new)))?[0].id,
        digest_of(&old)
    );
    assert_eq!(
        ts.images.list(false, &f("since", "busybox:old"))?[0].id,
        digest_of(&new)
    );
    assert!(ts
        .images
        .list(false, &f("bogus", "x"))
        .is_err_and(|e| e.to_string() == "Invalid filter 'bogus'"));
    let hist = ts.images.history("busybox:old")?;
    assert_eq!(hist[0]["Id"], digest_of(&old));
    assert_eq!(hist[0]["CreatedBy"], "test");
    Ok(())
}

/// Unmounts on drop, so a failed assertion never leaves a mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn layer_dirs_stack_as_an_overlayfs_root() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let cfg = config_for(&[&l1, &l2], "sh", "2026-01-01T00:00:00Z");
    ts.load(&docker_archive(&cfg, &[&l1, &l2], &["ov:1"], false))?;
    let dirs = ts.images.layer_dirs(&digest_of(&cfg))?;
    let lower = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let merged = ts.dir.path().join("merged");
    std::fs::create_dir(&merged).map_err(|e| crate::error::ApiError::internal("mkdir", e))?;
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lower}").as_str()),
    )
    .map_err(|e| crate::error::ApiError::internal("mount overlay", e))?;
    let _m = Mounted(merged.clone());
    assert!(merged.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(merged.join("bin/sh")).ok(),
        Some("busybox".into())
    );
    assert!(
        std::fs::symlink_metadata(merged.join("etc/motd")).is_err(),
        "whiteout must hide motd"
    );
    assert_eq!(
        std::fs::read(merged.join("etc/layer2")).ok(),
        Some(b"two\n".to_vec())
    );
    assert_eq!(
        std::fs::read(merged.join("etc/hostname")).ok(),
        Some(b"berth\n".to_vec())
    );
    Ok(())
}

#[test]
fn prune_removes_dangling_then_unused_images() -> ApiResult<()> {
    let ts = TestStore::new();
    let (l1, l2) = (rootfs_tar(), layer2_tar());
    let tagged = config_for(&[&l1], "a", "2026-01-01T00:00:00Z");
    let dangling = config_for(&[&l1, &l2], "b", "2026-01-02T00:00:00Z");
    ts.load(&docker_archive(&tagged, &[&l1], &["keep:1"], false))?;
    ts.load(&docker_archive(&dangling, &[&l1, &l2], &[], false))?;
    let (out, freed) = ts.images.prune(false, &none)?;
    assert_eq!(deleted(&out)[0], digest_of(&dangling));
    assert_eq!(deleted(&out).len(), 2, "image and its top layer");
    assert!(freed > 0);
    assert!(ts.images.resolve("keep:1").is_ok());
    let used = |_: &str| Some(("c".repeat(64), false));
    assert!(ts.images.prune(true, &used)?.0.is_empty());
    let (out, _) = ts.images.prune(true, &none)?;
    assert_eq!(untagged(&out), vec!["keep:1"]);
    assert_eq!(ts.images.count(), 0);
    Ok(())
}
