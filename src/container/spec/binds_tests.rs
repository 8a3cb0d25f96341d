//! Tests for `binds`.

use super::*;

fn bind_kind(m: &UserMount) -> (bool, Option<String>, bool) {
    match &m.kind {
        UserMountKind::Bind {
            writable,
            propagation,
            recursive,
        } => (*writable, propagation.clone(), *recursive),
        other => panic!("not a bind: {other:?}"),
    }
}

fn tmpfs_opts(m: &UserMount) -> Vec<String> {
    match &m.kind {
        UserMountKind::Tmpfs { options } => options.clone(),
        other => panic!("not a tmpfs: {other:?}"),
    }
}

#[test]
fn binds_parse_modes() {
    let m = parse_bind("/data:/srv/data").expect("should succeed");
    assert_eq!(
        (m.dest.as_str(), m.source.as_path()),
        ("/srv/data", Path::new("/data"))
    );
    assert_eq!(bind_kind(&m), (true, None, true));
    assert!(m.create_source);

    let m = parse_bind("/a/../b/:/x/./y/:ro,rslave").expect("should succeed");
    assert_eq!(
        (m.dest.as_str(), m.source.as_path()),
        ("/x/y", Path::new("/b"))
    );
    assert_eq!(bind_kind(&m), (false, Some("rslave".into()), true));

    assert!(bind_kind(&parse_bind("/a:/b:rw,z").expect("should succeed")).0);
}

#[test]
fn binds_errors_have_dockerd_wording() {
    let e = |raw: &str| parse_bind(raw).expect_err("should fail").to_string();
    assert_eq!(e("/a:ro"), "invalid volume specification: '/a:ro'");
    assert_eq!(e(":/b"), "invalid volume specification: ':/b'");
    assert_eq!(e("/a:/b:c:d"), "invalid volume specification: '/a:/b:c:d'");
    assert_eq!(e("/a:/b:xyz"), "invalid mode: xyz");
    assert_eq!(e("/a:/b:ro,rw"), "invalid mode: ro,rw");
    assert_eq!(
        e("/a:b"),
        "invalid volume specification: '/a:b': invalid mount config for type \"bind\": \
         invalid mount path: 'b' mount path must be absolute"
    );
    assert!(e("/a:/").ends_with("destination can't be '/'"));
    assert_eq!(e("myvol:/data"), "named volumes are not supported yet");
    assert_eq!(e("/data"), "named volumes are not supported yet");
    assert_eq!(parse_bind("/a:b").expect_err("should fail").status(), 400);
}

#[test]
fn api_mounts_bind_and_tmpfs() {
    let bind = models::Mount {
        typ: Some(MountTypeEnum::BIND),
        source: Some("/src".into()),
        target: Some("/dst".into()),
        read_only: Some(true),
        bind_options: Some(models::MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RSHARED),
            non_recursive: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = from_api_mount(&bind).expect("should succeed");
    assert_eq!(bind_kind(&m), (false, Some("rshared".into()), false));
    assert!(!m.create_source);

    let tmp = models::Mount {
        typ: Some(MountTypeEnum::TMPFS),
        target: Some("/scratch".into()),
        tmpfs_options: Some(models::MountTmpfsOptions {
            size_bytes: Some(64 << 20),
            mode: Some(0o1777),
            options: None,
        }),
        ..Default::default()
    };
    let m = from_api_mount(&tmp).expect("should succeed");
    assert_eq!(
        tmpfs_opts(&m),
        vec![
            "noexec",
            "nosuid",
            "nodev",
            "rprivate",
            "mode=1777",
            "size=64m"
        ]
    );

    let bad = models::Mount {
        source: Some("x".into()),
        ..tmp.clone()
    };
    assert_eq!(
        from_api_mount(&bad).expect_err("should fail").to_string(),
        "invalid mount config for type \"tmpfs\": field Source must not be specified"
    );
    let vol = models::Mount {
        typ: Some(MountTypeEnum::VOLUME),
        target: Some("/v".into()),
        ..Default::default()
    };
    assert_eq!(from_api_mount(&vol).expect_err("should fail").status(), 400);
}

#[test]
fn tmpfs_map_merges_options() {
    let m = tmpfs_from_map("/run", "size=1m").expect("should succeed");
    assert_eq!(m.dest, "/run");
    assert_eq!(
        tmpfs_opts(&m),
        vec!["noexec", "nosuid", "nodev", "rprivate", "size=1m"]
    );
    // later flags override the defaults in their slot, later data wins
    let m = tmpfs_from_map("/run", "exec,size=1m,size=2m,ro").expect("should succeed");
    assert_eq!(
        tmpfs_opts(&m),
        vec!["nosuid", "nodev", "rprivate", "exec", "size=2m", "ro"]
    );
    assert_eq!(
        tmpfs_from_map("/run", "bogus")
            .expect_err("should fail")
            .to_string(),
        "Invalid tmpfs option [\"bogus\"]"
    );
    assert_eq!(
        tmpfs_from_map("/run", "color=red")
            .expect_err("should fail")
            .to_string(),
        "Invalid tmpfs option [\"color\" \"red\"]"
    );
    assert!(tmpfs_from_map("run", "").is_err());
}

#[test]
fn size_suffixes() {
    assert_eq!(size_with_suffix(1 << 30), "1g");
    assert_eq!(size_with_suffix(3 << 20), "3m");
    assert_eq!(size_with_suffix(2048), "2k");
    assert_eq!(size_with_suffix(1000), "1000");
}

#[test]
fn bind_sources_created_only_for_binds() {
    let dir = tempfile::tempdir().expect("should succeed");
    let missing = dir.path().join("a/b");
    let raw = format!("{}:/data", missing.display());
    prepare_source(&parse_bind(&raw).expect("should succeed")).expect("should succeed");
    assert!(missing.is_dir());

    let api = models::Mount {
        typ: Some(MountTypeEnum::BIND),
        source: Some(dir.path().join("nope").to_string_lossy().into_owned()),
        target: Some("/x".into()),
        ..Default::default()
    };
    let err =
        prepare_source(&from_api_mount(&api).expect("should succeed")).expect_err("should fail");
    assert!(
        err.to_string().contains("bind source path does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("nope").exists());
}

#[test]
fn clean_paths() {
    assert_eq!(clean("//a/./b/../c/"), "/a/c");
    assert_eq!(clean("/../.."), "/");
}
