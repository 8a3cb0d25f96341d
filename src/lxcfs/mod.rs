//! lxcfs support (`--lxcfs`): lxcfs's FUSE files are bind-mounted over the container's
//! `/proc/meminfo`, `/proc/cpuinfo`, … so that tools reading them see the container's
//! memory limit and CPUs instead of the host's (lxcfs answers each read from the cgroups of
//! the reading process).
//!
//! This module decides which containers get the files ([`wanted`], the `berth.lxcfs=false`
//! label opts out), which files ([`targets_for`]) and whether lxcfs is usable ([`probe`],
//! from `/proc/self/mountinfo`). [`watch`] repairs running containers after lxcfs
//! restarted (their binds then answer `ENOTCONN`) through the single-threaded helper in
//! [`reattach`].

pub mod reattach;
mod sys;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The container paths lxcfs virtualises; each is bound from the same relative path under
/// the lxcfs mount point, when lxcfs provides it.
pub const TARGETS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/sys/devices/system/cpu/online",
];

/// Container label that opts a container out (`berth.lxcfs=false`).
pub const OPT_OUT_LABEL: &str = "berth.lxcfs";

/// The lxcfs file bound at `target` (one of [`TARGETS`]).
pub fn source(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

/// The lxcfs mount point a container should get its files from: the daemon's `--lxcfs`,
/// unless the container's labels opt out (`berth.lxcfs=false`, or `0`/`no`/`off`).
pub fn wanted(root: Option<&Path>, labels: Option<&HashMap<String, String>>) -> Option<PathBuf> {
    let opted_out = labels.and_then(|l| l.get(OPT_OUT_LABEL)).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    });
    root.filter(|_| !opted_out).map(Path::to_path_buf)
}

/// [`TARGETS`] minus those the container mounts something over itself: a target equal to or
/// below one of `user_dests` (cleaned absolute container paths) is left to that mount.
pub fn targets_for<'a>(user_dests: impl IntoIterator<Item = &'a str> + Clone) -> Vec<&'static str> {
    TARGETS
        .iter()
        .copied()
        .filter(|t| {
            !user_dests.clone().into_iter().any(|d| {
                let d = d.trim_end_matches('/');
                d.is_empty() || *t == d || t.strip_prefix(d).is_some_and(|r| r.starts_with('/'))
            })
        })
        .collect()
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id (unique while mounted; a remount at the same place gets a new one).
    pub id: u64,
    /// Id of the parent mount.
    pub parent: u64,
    /// `major:minor` of the filesystem (a new lxcfs has a new one while the old one is
    /// still held by containers).
    pub dev: String,
    /// Mount point, unescaped.
    pub mount_point: PathBuf,
    /// Filesystem type (`fuse.lxcfs` for lxcfs).
    pub fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|o| {
            std::str::from_utf8(o)
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        });
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let dev = f.next()?.to_string();
            let mount_point = PathBuf::from(unescape(f.nth(1)?));
            // Optional fields up to the `-` separator, then the filesystem type.
            let fstype = f.skip_while(|x| *x != "-").nth(1)?.to_string();
            Some(MountEntry {
                id,
                parent,
                dev,
                mount_point,
                fstype,
            })
        })
        .collect()
}

/// The top-most mount at `path` (the one no other mount at `path` is stacked on).
pub fn top_mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let at: Vec<&MountEntry> = entries.iter().filter(|e| e.mount_point == path).collect();
    at.iter()
        .rev()
        .find(|e| !at.iter().any(|o| o.parent == e.id))
        .copied()
}

/// What tells one lxcfs mount from the next: the kernel reuses a freed mount id at once,
/// and a device number once no container holds the old mount, but not both while a repair
/// is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountKey {
    /// Mount id.
    pub id: u64,
    /// `major:minor`.
    pub dev: String,
}

/// The lxcfs mount at `root` according to a mountinfo text, or why it is not there.
pub fn lxcfs_mount(mountinfo: &str, root: &Path) -> Result<MountKey, String> {
    let entries = parse_mountinfo(mountinfo);
    match top_mount_at(&entries, root) {
        None => Err("nothing is mounted there".into()),
        Some(e) if e.fstype == "fuse.lxcfs" => Ok(MountKey {
            id: e.id,
            dev: e.dev.clone(),
        }),
        Some(e) => Err(format!("the filesystem mounted there is {}", e.fstype)),
    }
}

/// `root` as mountinfo spells it: its parent resolved (symlinks, `..`), the last component
/// kept as is (resolving it would ask lxcfs, which may be gone).
fn mount_point_of(root: &Path) -> PathBuf {
    match (root.parent(), root.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or_else(|_| root.to_path_buf()),
        _ => root.to_path_buf(),
    }
}

/// Whether lxcfs serves at `root` now: its mount, or why it cannot be used (the error
/// reads well after "lxcfs is not mounted at ROOT: ").
pub fn probe(root: &Path) -> Result<MountKey, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let id = lxcfs_mount(&text, &mount_point_of(root))?;
    // A killed lxcfs leaves its mount behind, answering ENOTCONN.
    std::fs::metadata(root.join("proc")).map_err(|e| format!("lxcfs does not answer ({e})"))?;
    Ok(id)
}

/// `root` if lxcfs serves there for the start of container `id`. If not, the container
/// starts without its files — a game server that is up with the host's numbers in
/// `/proc/meminfo` beats one that is down — with a warning, and the watcher attaches them
/// once lxcfs serves. The probe runs on a blocking thread, for 5 s at most (a hung lxcfs).
pub async fn serving_for_start(root: Option<&Path>, id: &str) -> Option<PathBuf> {
    let root = root?.to_path_buf();
    let r = root.clone();
    let probed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::task::spawn_blocking(move || probe(&r)),
    )
    .await;
    let res = match probed {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => Err(format!("probe task: {e}")),
        Err(_) => Err("lxcfs does not answer (5 s)".into()),
    };
    match res {
        Ok(_) => Some(root),
        Err(e) => {
            tracing::warn!(
                %id,
                "lxcfs is not mounted at {}: {e}; starting without its files",
                root.display()
            );
            watch::request_check(id);
            None
        }
    }
}

/// The device of the filesystem `path` is on (`None` when it cannot be read, e.g. an lxcfs
/// that went away).
pub fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
27 1 0:25 / /var/lib rw,relatime shared:1 - ext4 /dev/vda rw
43 27 0:41 / /var/lib/lxcfs rw,nosuid,nodev,relatime shared:30 - fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other
50 27 0:45 / /var/lib/my\\040lxcfs rw,nosuid,nodev,relatime - fuse.lxcfs lxcfs rw,allow_other
60 27 0:46 / /srv/x rw - tmpfs tmpfs rw
61 60 0:47 / /srv/x rw,nosuid,nodev - fuse.lxcfs lxcfs rw
70 27 0:48 / /srv/y rw - fuse.lxcfs lxcfs rw
71 70 0:49 / /srv/y rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes_and_optional_fields() {
        let e = parse_mountinfo(MOUNTINFO);
        assert_eq!(e.len(), 8, "the garbage line is skipped");
        assert_eq!(
            e[2],
            MountEntry {
                id: 43,
                parent: 27,
                dev: "0:41".into(),
                mount_point: PathBuf::from("/var/lib/lxcfs"),
                fstype: "fuse.lxcfs".into(),
            }
        );
        assert_eq!(e[3].mount_point, PathBuf::from("/var/lib/my lxcfs"));
        assert_eq!(e[4].fstype, "tmpfs", "no optional fields");
        assert_eq!(unescape(r"a\011b\134c\12"), "a\tb\\c\\12");
    }

    #[test]
    fn the_top_mount_decides_whether_lxcfs_is_there() {
        let id = |p: &str| lxcfs_mount(MOUNTINFO, Path::new(p)).map(|k| k.id);
        assert_eq!(id("/var/lib/lxcfs"), Ok(43));
        assert_eq!(id("/var/lib/my lxcfs"), Ok(50));
        assert_eq!(id("/srv/x"), Ok(61), "lxcfs stacked on a tmpfs");
        assert_eq!(
            lxcfs_mount(MOUNTINFO, Path::new("/srv/x")).map(|k| k.dev),
            Ok("0:47".to_string())
        );
        assert_eq!(
            id("/srv/y"),
            Err("the filesystem mounted there is tmpfs".into()),
            "a tmpfs hides lxcfs"
        );
        assert_eq!(
            id("/var/lib/lxcfs/proc"),
            Err("nothing is mounted there".into())
        );
        assert_eq!(id("/nowhere"), Err("nothing is mounted there".into()));
    }

    #[test]
    fn a_directory_without_lxcfs_is_not_usable() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let e = probe(dir.path()).expect_err("a plain directory");
        assert_eq!(e, "nothing is mounted there");
        Ok(())
    }

    #[test]
    fn the_label_opts_out_and_user_mounts_take_precedence() {
        let root = Path::new("/var/lib/lxcfs");
        let labels = |v: &str| HashMap::from([(OPT_OUT_LABEL.to_string(), v.to_string())]);
        assert_eq!(wanted(Some(root), None), Some(root.to_path_buf()));
        assert_eq!(wanted(None, None), None);
        assert_eq!(wanted(Some(root), Some(&labels("false"))), None);
        assert_eq!(wanted(Some(root), Some(&labels("FALSE"))), None);
        assert_eq!(wanted(Some(root), Some(&labels("0"))), None);
        assert_eq!(
            wanted(Some(root), Some(&labels("true"))),
            Some(root.to_path_buf())
        );
        assert_eq!(targets_for([]), TARGETS);
        let t = targets_for(["/proc/meminfo", "/sys/devices", "/procfoo", "/data"]);
        assert!(!t.contains(&"/proc/meminfo"));
        assert!(!t.contains(&"/sys/devices/system/cpu/online"));
        assert!(t.contains(&"/proc/cpuinfo"));
        assert_eq!(t.len(), TARGETS.len() - 2);
        assert_eq!(targets_for(["/proc/"]), ["/sys/devices/system/cpu/online"]);
        assert_eq!(
            source(root, "/proc/meminfo"),
            PathBuf::from("/var/lib/lxcfs/proc/meminfo")
        );
    }
}
