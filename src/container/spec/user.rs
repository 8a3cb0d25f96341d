//! Resolving `Config.User` and `HostConfig.GroupAdd` against the container's own
//! `/etc/passwd` and `/etc/group`, and creating the working directory, without ever following a
//! symlink out of the root filesystem.
//!
//! Paths are resolved like a chroot would: absolute symlink targets start again at the rootfs,
//! `..` never climbs above it. The container is not running while this happens, so nothing
//! races with the walk.

use crate::error::{ApiError, ApiResult};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Largest passwd/group file we read.
const MAX_DB_FILE: u64 = 16 << 20;
/// Symlinks followed while resolving one path (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;
/// Largest uid/gid dockerd (runc's user package) accepts.
const MAX_ID: u64 = 2_147_483_647;

/// Resolves `path` (taken as absolute inside `root`) to a host path inside `root`, following
/// symlinks with `root` as `/`. Missing trailing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let mut host = root.to_path_buf();
        host.extend(cur.iter());
        host.push(&part);
        match std::fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    cur.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => cur.push(part),
        }
    }
    let mut host = root.to_path_buf();
    host.extend(cur.iter());
    Ok(host)
}

/// Reads a small regular file at `path` inside `root`; `None` when it does not exist.
fn read_in_root(root: &Path, path: &str) -> ApiResult<Option<String>> {
    let step =
        |e: std::io::Error| ApiError::internal(&format!("read {path} in container rootfs"), e);
    let host = resolve_in_root(root, Path::new(path)).map_err(step)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&host);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(step(e)),
    };
    let md = file.metadata().map_err(step)?;
    if !md.is_file() {
        return Ok(None);
    }
    let mut buf = String::new();
    (&mut file)
        .take(MAX_DB_FILE)
        .read_to_string(&mut buf)
        .map_err(step)?;
    Ok(Some(buf))
}

/// One `/etc/passwd` entry.
struct PasswdEntry {
    name: String,
    uid: u64,
    gid: u64,
    home: String,
}

/// One `/etc/group` entry.
struct GroupEntry {
    name: String,
    gid: u64,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn range_checked(v: u64) -> ApiResult<u32> {
    if v > MAX_ID {
        return Err(ApiError::BadRequest(
            "uids and gids must be in range 0-2147483647".into(),
        ));
    }
    Ok(v as u32)
}

/// Resolves a Docker `User` string (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) against
/// the rootfs's passwd and group files, as runc's `GetExecUser` does. Returns
/// `(uid, gid, additional_gids)` where `additional_gids` is `[gid, supplementary...]` as dockerd
/// puts it in the spec (supplementary groups only when no group was given explicitly).
pub fn resolve_user(rootfs: &Path, user: &str) -> ApiResult<(u32, u32, Vec<u32>)> {
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let group_arg = group_arg.filter(|g| !g.is_empty());
    let uid_num: Option<u64> = user_arg.parse().ok();
    let passwd = read_in_root(rootfs, "/etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();

    let (mut uid, mut gid, mut name): (u64, u64, Option<String>) = (0, 0, None);
    match find_passwd(&passwd, user_arg) {
        Some(p) => {
            uid = p.uid;
            gid = p.gid;
            name = Some(p.name.clone());
        }
        None if !user_arg.is_empty() => match uid_num {
            Some(n) => uid = n,
            None => {
                return Err(ApiError::BadRequest(format!(
                    "unable to find user {user_arg}: no matching entries in passwd file"
                )))
            }
        },
        None => {}
    }
    let uid = range_checked(uid)?;

    let mut sgids = Vec::new();
    if group_arg.is_some() || name.is_some() {
        let groups = read_in_root(rootfs, "/etc/group")?
            .map(|t| parse_group(&t))
            .unwrap_or_default();
        match group_arg {
            Some(g) => {
                let gid_num: Option<u64> = g.parse().ok();
                match groups
                    .iter()
                    .find(|e| e.name == g || gid_num == Some(e.gid))
                {
                    Some(e) => gid = e.gid,
                    None => match gid_num {
                        Some(n) => gid = n,
                        None => {
                            return Err(ApiError::BadRequest(format!(
                                "unable to find group {g}: no matching entries in group file"
                            )))
                        }
                    },
                }
            }
            None => {
                if let Some(n) = &name {
                    for e in groups.iter().filter(|e| e.members.iter().any(|m| m == n)) {
                        sgids.push(range_checked(e.gid)?);
                    }
                }
            }
        }
    }
    let gid = range_checked(gid)?;
    let mut additional = vec![gid];
    additional.extend(sgids);
    Ok((uid, gid, additional))
}

/// The passwd entry a `User` string's user part names (root for an empty one).
fn find_passwd<'a>(passwd: &'a [PasswdEntry], user_arg: &str) -> Option<&'a PasswdEntry> {
    let uid_num: Option<u64> = user_arg.parse().ok();
    passwd.iter().find(|p| {
        if user_arg.is_empty() {
            p.uid == 0
        } else {
            p.name == user_arg || uid_num == Some(p.uid)
        }
    })
}

/// The `HOME` a process of this Docker `User` gets when its environment has none: its passwd
/// entry's home directory, or `/` (as runc sets it for dockerd).
pub fn user_home(rootfs: &Path, user: &str) -> ApiResult<String> {
    let user_arg = user.split_once(':').map_or(user, |(u, _)| u);
    let passwd = read_in_root(rootfs, "/etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    Ok(find_passwd(&passwd, user_arg)
        .map(|p| p.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string()))
}

/// Resolves `HostConfig.GroupAdd` entries (names or numbers) against the rootfs's group file.
pub fn resolve_group_add(rootfs: &Path, groups: &[String]) -> ApiResult<Vec<u32>> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let db = read_in_root(rootfs, "/etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let num: Option<u64> = g.parse().ok();
        let gid = match db.iter().find(|e| &e.name == g || num == Some(e.gid)) {
            Some(e) => e.gid,
            None => num.ok_or_else(|| ApiError::BadRequest(format!("Unable to find group {g}")))?,
        };
        out.push(range_checked(gid)?);
    }
    Ok(out)
}

/// Creates `dir` (absolute, inside the rootfs) and any missing parents, chowning only the
/// directories it creates to `uid:gid` (dockerd's `MkdirAllAndChownNew`). Symlinks met on the
/// way are followed inside the rootfs. An existing non-directory is an error.
pub fn mkdir_in_root(rootfs: &Path, dir: &str, uid: u32, gid: u32) -> ApiResult<()> {
    ensure_dir(rootfs, Path::new(dir), uid, gid, 0)
}

fn ensure_dir(rootfs: &Path, dir: &Path, uid: u32, gid: u32, depth: u32) -> ApiResult<()> {
    let step = |e: std::io::Error| {
        ApiError::internal(&format!("create working directory {}", dir.display()), e)
    };
    if depth > 256 {
        return Err(step(std::io::Error::other("path too deep")));
    }
    let not_dir = || {
        ApiError::BadRequest(format!(
            "Cannot mkdir: {} is not a directory",
            dir.display()
        ))
    };
    let host = resolve_in_root(rootfs, dir).map_err(step)?;
    match std::fs::symlink_metadata(&host) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(not_dir()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(not_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `host` has every existing component resolved; make its parent, then it.
            let in_root = Path::new("/").join(host.strip_prefix(rootfs).map_err(|_| step(e))?);
            if let Some(parent) = in_root.parent().filter(|p| *p != Path::new("/")) {
                ensure_dir(rootfs, parent, uid, gid, depth + 1)?;
            }
            std::fs::create_dir(&host).map_err(step)?;
            std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).map_err(step)
        }
        Err(e) => Err(step(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        # comment\n\
        broken line\n";
    const GROUP: &str =
        "root:x:0:root\nwheel:x:10:root,alice\nalice:x:1000:\naudio:x:29:alice\nstaff:x:50:\n";

    fn fake_rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("should succeed");
        std::fs::create_dir_all(dir.path().join("etc")).expect("should succeed");
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).expect("should succeed");
        std::fs::write(dir.path().join("etc/group"), GROUP).expect("should succeed");
        dir
    }

    #[test]
    fn empty_user_is_root_with_its_groups() {
        let r = fake_rootfs();
        assert_eq!(
            resolve_user(r.path(), "").expect("should succeed"),
            (0, 0, vec![0, 0, 10])
        );
    }

    #[test]
    fn by_name_and_by_uid() {
        let r = fake_rootfs();
        assert_eq!(
            resolve_user(r.path(), "alice").expect("should succeed"),
            (1000, 1000, vec![1000, 10, 29])
        );
        assert_eq!(
            resolve_user(r.path(), "1000").expect("should succeed"),
            (1000, 1000, vec![1000, 10, 29])
        );
        // unknown numeric uid: taken as is, gid 0
        assert_eq!(
            resolve_user(r.path(), "4242").expect("should succeed"),
            (4242, 0, vec![0])
        );
    }

    #[test]
    fn explicit_group_forms() {
        let r = fake_rootfs();
        assert_eq!(
            resolve_user(r.path(), "alice:staff").expect("should succeed"),
            (1000, 50, vec![50])
        );
        assert_eq!(
            resolve_user(r.path(), "1000:10").expect("should succeed"),
            (1000, 10, vec![10])
        );
        assert_eq!(
            resolve_user(r.path(), "5:777").expect("should succeed"),
            (5, 777, vec![777])
        );
        let err = resolve_user(r.path(), "alice:nogroup").expect_err("should fail");
        assert_eq!(
            err.to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn unknown_name_has_dockerd_wording() {
        let r = fake_rootfs();
        let err = resolve_user(r.path(), "nobody").expect_err("should fail");
        assert_eq!(
            err.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(err.status(), 400);
        assert!(resolve_user(r.path(), "99999999999").is_err());
    }

    #[test]
    fn missing_passwd_allows_numeric_only() {
        let dir = tempfile::tempdir().expect("should succeed");
        assert_eq!(
            resolve_user(dir.path(), "").expect("should succeed"),
            (0, 0, vec![0])
        );
        assert_eq!(
            resolve_user(dir.path(), "12:34").expect("should succeed"),
            (12, 34, vec![34])
        );
        assert!(resolve_user(dir.path(), "alice").is_err());
    }

    #[test]
    fn symlinked_passwd_never_leaves_rootfs() {
        let outside = tempfile::tempdir().expect("should succeed");
        let host_passwd = outside.path().join("passwd");
        std::fs::write(&host_passwd, "nobody:x:65534:65534::/:/bin/false\n")
            .expect("should succeed");
        let r = tempfile::tempdir().expect("should succeed");
        std::fs::create_dir_all(r.path().join("etc")).expect("should succeed");
        // absolute target: resolved inside the rootfs, where it does not exist
        symlink(&host_passwd, r.path().join("etc/passwd")).expect("should succeed");
        let err = resolve_user(r.path(), "nobody").expect_err("should fail");
        assert!(err.to_string().contains("no matching entries"), "{err}");
        // relative target climbing out: clamped at the rootfs root
        std::fs::remove_file(r.path().join("etc/passwd")).expect("should succeed");
        let rel = PathBuf::from("../".repeat(40))
            .join(host_passwd.strip_prefix("/").expect("should succeed"));
        symlink(&rel, r.path().join("etc/passwd")).expect("should succeed");
        assert!(resolve_user(r.path(), "nobody").is_err());
        // a symlink that stays inside works
        std::fs::remove_file(r.path().join("etc/passwd")).expect("should succeed");
        std::fs::write(
            r.path().join("etc/passwd.real"),
            "nobody:x:65534:65534::/:/bin/false\n",
        )
        .expect("should succeed");
        symlink("/etc/passwd.real", r.path().join("etc/passwd")).expect("should succeed");
        assert_eq!(
            resolve_user(r.path(), "nobody").expect("should succeed"),
            (65534, 65534, vec![65534])
        );
    }

    #[test]
    fn symlinked_etc_dir_is_resolved_in_root() {
        let outside = tempfile::tempdir().expect("should succeed");
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n")
            .expect("should succeed");
        let r = tempfile::tempdir().expect("should succeed");
        symlink(outside.path(), r.path().join("etc")).expect("should succeed");
        assert!(resolve_user(r.path(), "evil").is_err());
    }

    #[test]
    fn home_from_passwd_or_slash() -> ApiResult<()> {
        let root = fake_rootfs();
        assert_eq!(user_home(root.path(), "")?, "/root");
        assert_eq!(user_home(root.path(), "alice:wheel")?, "/home/alice");
        assert_eq!(user_home(root.path(), "1000")?, "/home/alice");
        assert_eq!(user_home(root.path(), "1234")?, "/");
        let bare = tempfile::tempdir().map_err(|e| ApiError::internal("tempdir", e))?;
        assert_eq!(user_home(bare.path(), "")?, "/");
        Ok(())
    }

    #[test]
    fn group_add_by_name_and_number() {
        let r = fake_rootfs();
        let g = resolve_group_add(r.path(), &["audio".into(), "4000".into(), "10".into()])
            .expect("should succeed");
        assert_eq!(g, vec![29, 4000, 10]);
        let err = resolve_group_add(r.path(), &["nope".into()]).expect_err("should fail");
        assert_eq!(err.to_string(), "Unable to find group nope");
    }

    #[test]
    fn working_dir_created_inside_root_and_chowned() {
        let r = fake_rootfs();
        let outside = tempfile::tempdir().expect("should succeed");
        symlink(outside.path(), r.path().join("escape")).expect("should succeed");
        mkdir_in_root(r.path(), "/escape/work/dir", 1000, 1000).expect("should succeed");
        // the symlink was resolved inside the rootfs: nothing created outside
        assert_eq!(
            std::fs::read_dir(outside.path())
                .expect("should succeed")
                .count(),
            0
        );
        let made = r
            .path()
            .join(outside.path().strip_prefix("/").expect("should succeed"))
            .join("work/dir");
        let md = std::fs::metadata(&made).expect("should succeed");
        assert!(md.is_dir());
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        // existing dirs are left alone
        mkdir_in_root(r.path(), "/etc", 1000, 1000).expect("should succeed");
        assert_eq!(
            std::fs::metadata(r.path().join("etc"))
                .expect("should succeed")
                .uid(),
            0
        );
        let err = mkdir_in_root(r.path(), "/etc/passwd/x", 0, 0).expect_err("should fail");
        assert_eq!(err.status(), 400);
    }
}
