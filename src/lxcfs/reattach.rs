//! `berthd lxcfs-reattach --pid PID --root ROOT --target T…`: puts fresh lxcfs files over
//! stale ones in a running container's mount namespace.
//!
//! After lxcfs restarted, the container's binds point into the dead FUSE connection and
//! answer `ENOTCONN`. For each target this clones the new file into a detached mount
//! (`open_tree`, in the daemon's namespace, where ROOT is visible), then enters the
//! container's mount namespace (`setns(CLONE_NEWNS)`, which the kernel refuses to
//! multi-threaded callers: hence a process of its own, started before any thread exists),
//! lazily unmounts the stale bind (nothing when there was none) and attaches the clone
//! (`move_mount`). Exit status 0 when every target was re-attached; failures are listed
//! on stderr.

use super::sys;
use anyhow::{bail, Context};
use nix::mount::{umount2, MntFlags};
use nix::sched::CloneFlags;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `lxcfs-reattach` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReattachArgs {
    /// A process in the container (its init).
    #[arg(long)]
    pub pid: i32,
    /// lxcfs's mount point.
    #[arg(long)]
    pub root: PathBuf,
    /// Container paths to re-attach (each one of the lxcfs targets).
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
}

/// The command line of the helper for `pid` (to run as `/proc/self/exe` of the daemon).
pub fn command_args(pid: i32, root: &Path, targets: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "lxcfs-reattach".into(),
        "--pid".into(),
        pid.to_string().into(),
        "--root".into(),
        root.as_os_str().to_owned(),
    ];
    for t in targets {
        args.push("--target".into());
        args.push((*t).into());
    }
    args
}

/// Runs the helper (single-threaded: called from `main` before anything else).
pub fn run(args: ReattachArgs) -> anyhow::Result<()> {
    for t in &args.targets {
        if !super::TARGETS.contains(&t.as_str()) {
            bail!("{t} is not an lxcfs target");
        }
    }
    let ns_path = format!("/proc/{}/ns/mnt", args.pid);
    let ns = std::fs::File::open(&ns_path).with_context(|| format!("open {ns_path}"))?;
    let (theirs, ours) = (
        ns.metadata().with_context(|| format!("stat {ns_path}"))?,
        std::fs::metadata("/proc/self/ns/mnt").context("stat /proc/self/ns/mnt")?,
    );
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!(
            "process {} is in the daemon's own mount namespace: not a container",
            args.pid
        );
    }
    // Clone every file while ROOT is still visible.
    let mut clones: Vec<(&str, OwnedFd)> = Vec::new();
    for t in &args.targets {
        let src = super::source(&args.root, t);
        let fd =
            sys::open_tree_clone(&src).with_context(|| format!("open_tree {}", src.display()))?;
        clones.push((t.as_str(), fd));
    }
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNS)
        .with_context(|| format!("enter the mount namespace of process {}", args.pid))?;
    let mut failed = Vec::new();
    for (target, fd) in &clones {
        let t = Path::new(target);
        match umount2(t, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            // EINVAL: nothing was mounted there (started while lxcfs was away).
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => {
                failed.push(format!("unmount the stale {target}: {e}"));
                continue;
            }
        }
        if let Err(e) = sys::move_mount_to(fd.as_fd(), t) {
            failed.push(format!("attach {target}: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
