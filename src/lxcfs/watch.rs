//! The lxcfs watcher: a worker task that notices when lxcfs's mount changes and repairs the
//! running containers' files.
//!
//! Once a second it reads `/proc/self/mountinfo` for the lxcfs mount at `--lxcfs` and
//! checks that it answers (inotify reports nothing there; `poll(2)` on the file would wake
//! on mount-table changes, but an lxcfs that died without unmounting changes nothing: a
//! timer sees both, and one small file a second is cheap). When the result changes — lxcfs
//! restarted (a new mount: the id, or the device while containers hold the old one), came
//! up after containers started without it, or went away — after a container started
//! without the files, and at the worker's start (a previous generation may have missed a
//! restart), it checks every running container whose record names this lxcfs:
//! a target whose device differs from lxcfs's (stale mount answering `ENOTCONN`, or no
//! mount at all) is re-attached by [`super::reattach`] in a helper process. Containers are
//! repaired one by one; one that fails is logged and retried 10 s later (then 20 s, 40 s,
//! … up to 5 min), the others are not held up. State lives in the container records only,
//! so a new worker generation takes over the watching after a live upgrade.

use super::{device_of, probe, reattach, source, targets_for, MountKey};
use crate::container::record::Record;
use crate::container::spec::mounts::user_destinations;
use crate::container::Containers;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the mount is looked at.
const POLL: Duration = Duration::from_secs(1);
/// When a pass left a container unrepaired, the next attempt; doubled after each failing
/// pass up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(10);
/// The longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Time limit of one helper process.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

static REPAIRS: AtomicU64 = AtomicU64::new(0);
/// How long a container that started without lxcfs's files is looked for among the running
/// ones (its start may still be under way when lxcfs serves again).
const PENDING_FOR: Duration = Duration::from_secs(60);
/// Containers that started without lxcfs's files, and when: they are checked as soon as
/// lxcfs serves (it may come back under the same mount key, unseen in between).
static PENDING: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<String, Instant>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Notes that container `id` is starting without lxcfs's files (lxcfs did not serve).
pub fn request_check(id: &str) {
    pending().insert(id.to_string(), Instant::now());
}

/// Containers repaired by this worker so far.
pub fn repairs() -> u64 {
    REPAIRS.load(Ordering::Relaxed)
}

/// Starts watching lxcfs at `root` on the current runtime.
pub fn spawn(containers: Arc<Containers>, root: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(containers, root))
}

async fn run(containers: Arc<Containers>, root: PathBuf) {
    // `None`: not looked yet, so the first look checks every container.
    let mut last: Option<Option<MountKey>> = None;
    let (mut retry_at, mut backoff): (Option<Instant>, Duration) = (None, RETRY);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = root.clone();
        let now = blocking(move || probe(&r)).await.and_then(|now| now);
        let id = now.as_ref().ok().cloned();
        let changed = last.as_ref() != Some(&id);
        if changed {
            match &now {
                Ok(m) => {
                    tracing::info!(root = %root.display(), mount_id = m.id, dev = %m.dev, "lxcfs serves")
                }
                Err(e) => tracing::warn!(
                    "lxcfs is not mounted at {}: {e}; containers lack its files until it is",
                    root.display()
                ),
            }
        }
        let serves = id.is_some();
        last = Some(id);
        let retry = retry_at.is_some_and(|t| Instant::now() >= t);
        let wanted = !pending().is_empty();
        if !serves || !(changed || retry || wanted) {
            continue;
        }
        let _bg = containers.background().await;
        if changed {
            backoff = RETRY;
        }
        let failed = pass(&containers, &root).await;
        retry_at = (failed > 0).then(|| Instant::now() + backoff);
        backoff = if failed > 0 {
            (backoff * 2).min(RETRY_MAX)
        } else {
            RETRY
        };
    }
}

/// Checks and repairs every running container on this lxcfs; returns how many failed.
async fn pass(containers: &Containers, root: &Path) -> usize {
    let recs: Vec<Record> = containers
        .all()
        .into_iter()
        .filter(|r| r.state.status.is_live() && r.state.pid > 0)
        .filter(|r| r.lxcfs.as_deref() == Some(root))
        .collect();
    {
        let mut p = pending();
        for r in &recs {
            p.remove(&r.id);
        }
        p.retain(|_, since| since.elapsed() < PENDING_FOR);
    }
    let mut failed = 0;
    for rec in recs {
        let r = root.to_path_buf();
        let (id, pid) = (rec.id.clone(), rec.state.pid);
        let stale = match blocking(move || stale_targets(&rec, &r)).await {
            Ok(Ok(stale)) if stale.is_empty() => continue,
            Ok(Ok(stale)) => stale,
            Ok(Err(e)) => {
                tracing::debug!(%id, pid, "lxcfs check skipped: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!(%id, "lxcfs check: {e}");
                failed += 1;
                continue;
            }
        };
        match run_helper(pid, root, &stale).await {
            Ok(()) => {
                let total = REPAIRS.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%id, pid, targets = ?stale, repairs = total, "lxcfs files re-attached");
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(%id, pid, targets = ?stale, "re-attach lxcfs files failed: {e}");
            }
        }
    }
    failed
}

/// Runs `f` on a blocking thread (it stats FUSE files: a hung lxcfs must not hold up the
/// runtime), giving up on it after [`HELPER_TIMEOUT`].
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(HELPER_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("task failed: {e}")),
        Err(_) => Err(format!("no answer in {HELPER_TIMEOUT:?} (lxcfs hangs?)")),
    }
}

/// The targets of a running container that do not show lxcfs's files at `root`. `Err`
/// when the record's pid is no longer the container's (it exited meanwhile).
fn stale_targets(rec: &Record, root: &Path) -> Result<Vec<&'static str>, String> {
    let pid = rec.state.pid;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    if !cgroup.contains(&rec.id) {
        return Err(format!("process {pid} is not in the container's cgroup"));
    }
    let dests = user_destinations(&rec.host_config);
    Ok(targets_for(dests.iter().map(String::as_str))
        .into_iter()
        .filter(|t| {
            // A file this lxcfs does not provide was not bound at start either.
            device_of(&source(root, t)).is_some_and(|want| {
                device_of(Path::new(&format!("/proc/{pid}/root{t}"))) != Some(want)
            })
        })
        .collect())
}

/// Runs `berthd lxcfs-reattach` (this very binary, also after an upgrade replaced it on
/// disk) and waits for it.
async fn run_helper(pid: i32, root: &Path, targets: &[&str]) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.args(reattach::command_args(pid, root, targets))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .kill_on_drop(true);
    let out = tokio::time::timeout(HELPER_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("the helper did not finish in {HELPER_TIMEOUT:?}"))?
        .map_err(|e| format!("run the helper: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    // One log line: anyhow's "Error: " and any backtrace left out.
    let err = String::from_utf8_lossy(&out.stderr);
    let msg: Vec<&str> = err
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Stack backtrace"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = msg.join(" ");
    Err(format!(
        "{} ({})",
        msg.strip_prefix("Error: ").unwrap_or(&msg),
        out.status
    ))
}
