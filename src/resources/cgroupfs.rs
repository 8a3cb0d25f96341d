//! The cgroup filesystem, v1 and v2, behind one small type.
//!
//! [`Cgroups`] names a mount root (`/sys/fs/cgroup`, or a fake tree in tests) and the
//! hierarchy version; every read and write of a cgroup file goes through it, so the same
//! code drives a cgroup v1 host (one directory per controller) and a cgroup v2 host (one
//! unified directory) and is unit-tested against temporary trees of either shape.
//!
//! Why not cgroups-rs (named in DESIGN.md): it discovers hierarchies from
//! `/proc/self/mountinfo`, so its v2 path cannot be pointed at a fake tree; it lacks the
//! files berth needs (`memory.events`, `cgroup.kill`, the hybrid unified tree), writes
//! `memory.swap.max` for v2 swappiness, and spawns a thread per event registration. The files
//! themselves are a stable kernel ABI; this module is the whole of what berth needs.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A failed cgroup file operation; says which file and what was written.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// Reading a cgroup file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file held something that is not what the kernel writes there.
    #[error("parse {path}: unexpected {text:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its contents.
        text: String,
    },
}

impl CgroupError {
    /// The errno of an I/O failure (EBUSY when the kernel refuses a memory limit under usage).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CgroupError::Read { source, .. }
            | CgroupError::Write { source, .. }
            | CgroupError::Create { source, .. } => source.raw_os_error(),
            CgroupError::Parse { .. } => None,
        }
    }
}

/// Result of a cgroup operation.
pub type CgResult<T> = Result<T, CgroupError>;

/// Which cgroup hierarchy the host mounts at the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (`<root>/memory/...`, `<root>/cpu/...`).
    V1,
    /// The unified hierarchy (`<root>/...`).
    V2,
}

/// The cgroup mount this daemon drives.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    root: PathBuf,
}

impl Cgroups {
    /// The host's cgroup mount: v2 when `/sys/fs/cgroup` is the unified hierarchy.
    pub fn detect() -> Self {
        Self::at(PathBuf::from("/sys/fs/cgroup"))
    }

    /// The tree mounted at `root`, its version detected from `cgroup.controllers`.
    pub fn at(root: PathBuf) -> Self {
        let version = if root.join("cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        };
        Cgroups { version, root }
    }

    /// A tree of a given version at `root` (tests).
    pub fn new(version: Version, root: PathBuf) -> Self {
        Cgroups { version, root }
    }

    /// The hierarchy version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The mount root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the cgroup `path` (absolute, e.g. `/berth/<id>`) for `controller`
    /// (v1; ignored on v2).
    pub fn dir(&self, controller: &str, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        match self.version {
            Version::V1 => self.root.join(controller).join(rel),
            Version::V2 => self.root.join(rel),
        }
    }

    /// `<dir>/<file>`.
    pub fn file(&self, controller: &str, path: &str, file: &str) -> PathBuf {
        self.dir(controller, path).join(file)
    }

    /// Whether the controller's file exists for the group.
    pub fn has(&self, controller: &str, path: &str, file: &str) -> bool {
        self.file(controller, path, file).exists()
    }

    /// A cgroup file's contents.
    pub fn read(&self, controller: &str, path: &str, file: &str) -> CgResult<String> {
        let p = self.file(controller, path, file);
        std::fs::read_to_string(&p).map_err(|source| CgroupError::Read { path: p, source })
    }

    /// A file holding one number; `max` (v2) reads as `u64::MAX`.
    pub fn read_u64(&self, controller: &str, path: &str, file: &str) -> CgResult<u64> {
        let text = self.read(controller, path, file)?;
        parse_u64(&text).ok_or_else(|| CgroupError::Parse {
            path: self.file(controller, path, file),
            text,
        })
    }

    /// Writes `value` to a cgroup file (the kernel takes it in one write).
    pub fn write(&self, controller: &str, path: &str, file: &str, value: &str) -> CgResult<()> {
        let p = self.file(controller, path, file);
        std::fs::write(&p, value).map_err(|source| CgroupError::Write {
            path: p,
            value: value.to_string(),
            source,
        })
    }

    /// The `key value` lines of a flat-keyed file (`memory.stat`, `memory.events`).
    pub fn read_keyed(
        &self,
        controller: &str,
        path: &str,
        file: &str,
    ) -> CgResult<Vec<(String, u64)>> {
        Ok(parse_keyed(&self.read(controller, path, file)?))
    }

    /// Creates the group in the hierarchies of `controllers` (v1) or once (v2).
    pub fn create(&self, controllers: &[&str], path: &str) -> CgResult<()> {
        let dirs: Vec<PathBuf> = match self.version {
            Version::V1 => controllers.iter().map(|c| self.dir(c, path)).collect(),
            Version::V2 => vec![self.dir("", path)],
        };
        for d in dirs {
            std::fs::create_dir_all(&d)
                .map_err(|source| CgroupError::Create { path: d, source })?;
        }
        Ok(())
    }

    /// Pids in the group (v1: read from the `pids` hierarchy, else `memory`).
    pub fn procs(&self, path: &str) -> Vec<i32> {
        let candidates = match self.version {
            Version::V1 => vec![
                self.file("pids", path, "cgroup.procs"),
                self.file("memory", path, "cgroup.procs"),
            ],
            Version::V2 => vec![self.file("", path, "cgroup.procs")],
        };
        candidates
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// One number, or `max` as `u64::MAX`; v1's "unlimited" (a huge page-aligned value) stays
/// as it is.
pub fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return Some(u64::MAX);
    }
    t.parse().ok()
}

/// `key value` lines.
pub fn parse_keyed(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// The value of `key` in a keyed file's lines.
pub fn keyed(lines: &[(String, u64)], key: &str) -> Option<u64> {
    lines.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_version() {
        let v1 = Cgroups::new(Version::V1, "/r".into());
        assert_eq!(
            v1.file("memory", "/pool/c", "memory.limit_in_bytes"),
            PathBuf::from("/r/memory/pool/c/memory.limit_in_bytes")
        );
        let v2 = Cgroups::new(Version::V2, "/r".into());
        assert_eq!(
            v2.file("memory", "/pool/c", "memory.max"),
            PathBuf::from("/r/pool/c/memory.max")
        );
    }

    #[test]
    fn detects_the_version_from_the_root() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        assert_eq!(Cgroups::at(t.path().into()).version(), Version::V1);
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n")?;
        assert_eq!(Cgroups::at(t.path().into()).version(), Version::V2);
        Ok(())
    }

    #[test]
    fn reads_numbers_keyed_files_and_reports_the_file_on_errors() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let cg = Cgroups::new(Version::V2, t.path().into());
        cg.create(&[], "/p/c").map_err(std::io::Error::other)?;
        std::fs::write(cg.file("", "/p/c", "memory.max"), "max\n")?;
        std::fs::write(cg.file("", "/p/c", "memory.current"), "4096\n")?;
        std::fs::write(
            cg.file("", "/p/c", "memory.events"),
            "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\n",
        )?;
        assert_eq!(cg.read_u64("", "/p/c", "memory.max").ok(), Some(u64::MAX));
        assert_eq!(cg.read_u64("", "/p/c", "memory.current").ok(), Some(4096));
        let ev = cg
            .read_keyed("", "/p/c", "memory.events")
            .map_err(std::io::Error::other)?;
        assert_eq!(keyed(&ev, "oom_kill"), Some(1));
        assert_eq!(keyed(&ev, "high"), Some(3));
        let e = cg
            .read_u64("", "/p/c", "memory.low")
            .expect_err("missing file");
        assert!(e.to_string().contains("memory.low"), "{e}");
        std::fs::write(cg.file("", "/p/c", "memory.low"), "lots\n")?;
        let e = cg
            .read_u64("", "/p/c", "memory.low")
            .expect_err("not a number");
        assert!(e.to_string().contains("lots"), "{e}");
        let e = cg
            .write("", "/nope", "memory.max", "1")
            .expect_err("no group");
        assert!(e.to_string().contains("\"1\""), "{e}");
        Ok(())
    }

    #[test]
    fn procs_read_from_pids_then_memory_on_v1() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let cg = Cgroups::new(Version::V1, t.path().into());
        cg.create(&["memory"], "/p/c")
            .map_err(std::io::Error::other)?;
        std::fs::write(cg.file("memory", "/p/c", "cgroup.procs"), "12\n13\n")?;
        assert_eq!(cg.procs("/p/c"), vec![12, 13]);
        assert!(cg.procs("/p/none").is_empty());
        Ok(())
    }
}
