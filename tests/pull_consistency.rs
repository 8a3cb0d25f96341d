//! Pulls caught in the middle (through a proxy that holds one blob's response part-way):
//! a layer is unpacked while its blob downloads; two concurrent pulls of one image fetch
//! each blob once; a pull cut by kill -9 of the daemon leaves no image, and the next pull
//! completes reusing what was committed; prune removes layers a cut pull left behind.

mod common;
#[path = "registry_util/proxy.rs"]
mod proxy;
#[allow(dead_code)]
mod registry_util;

use common::{busybox_rootfs_tar, is_root, until, Daemon};
use proxy::Proxy;
use registry_util::{gzip, push_image, sha, Registry};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

const GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Deterministic incompressible bytes (xorshift), so tests need no /dev/urandom reads.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar of files `(name, bytes)`.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

/// An image of busybox plus a big layer (`/first` 2 MiB, `/second` 6 MiB) in `repo:1`.
/// Returns the big layer's blob digest and the sha256 of `/second`.
struct Fixture {
    reg: Registry,
    big_blob: String,
    small_blob: String,
    second_sha: String,
}

fn fixture(d: &Daemon, repo: &str) -> Fixture {
    let reg = Registry::start(None);
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    let bb = std::fs::read(&tar).expect("busybox tar");
    let first = noise(2 << 20, 7);
    let second = noise(6 << 20, 11);
    let big = tar_of(&[("first", &first), ("second", &second)]);
    let (bb_gz, big_gz) = (gzip(&bb), gzip(&big));
    let (small_blob, big_blob) = (sha(&bb_gz), sha(&big_gz));
    push_image(
        &reg,
        repo,
        "1",
        &[(bb, bb_gz, GZ), (big, big_gz, GZ)],
        false,
    );
    Fixture {
        reg,
        big_blob,
        small_blob,
        second_sha: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&second)),
    }
}

/// A `docker pull` running in the background, its output lines collected.
struct Pull {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Pull {
    fn start(d: &Daemon, image: &str) -> Pull {
        let mut child = d
            .cmd(&["pull", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker pull");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().expect("lines").push(line);
                }
            });
        }
        Pull { child, lines }
    }

    fn has(&self, text: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(text))
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits for the CLI to exit; its success and output.
    fn finish(mut self) -> (bool, String) {
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        // The reader threads end with the pipes.
        until("the pull output is read", || {
            self.child.stdout.is_none() && Arc::strong_count(&self.lines) == 1
        });
        (ok, self.output())
    }
}

impl Drop for Pull {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_dir(d: &Daemon) -> PathBuf {
    d.path("d/image")
}

/// Files `name` of layer work directories under the image store's `tmp/`.
fn work_files(d: &Daemon, name: &str) -> Vec<(PathBuf, u64)> {
    let tmp = image_dir(d).join("tmp");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let p = e.path().join("diff").join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            out.push((p, m.len()));
        }
    }
    out
}

fn layer_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("layers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_string()
}

#[test]
fn a_layer_is_unpacked_while_its_blob_downloads() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let f = fixture(&d, "stream");
    let p = Proxy::start(&f.reg.host());
    // The big blob is held after 4 MiB: `/first` (2 MiB, the first entry) is complete in
    // what passed, `/second` is not.
    p.hold(&f.big_blob, 4 << 20);
    let image = format!("{}/stream:1", p.host());
    let pull = Pull::start(&d, &image);
    until("the big blob is held part-way", || p.holding());
    until(
        "/first is unpacked while the blob is still downloading",
        || {
            work_files(&d, "first")
                .iter()
                .any(|(_, len)| *len == 2 << 20)
        },
    );
    assert!(
        d.docker(&["image", "inspect", &image]).status.code() != Some(0),
        "no image before the pull ends"
    );
    p.open();
    let (ok, out) = pull.finish();
    assert!(ok, "pull failed: {out}");
    let sum = d.ok(&["run", "--rm", &image, "sha256sum", "/second"]);
    assert!(sum.starts_with(&f.second_sha), "{sum}");
    assert!(
        work_files(&d, "first").is_empty(),
        "work directory left behind"
    );
}

#[test]
fn two_concurrent_pulls_fetch_each_blob_once() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let f = fixture(&d, "twice");
    let p = Proxy::start(&f.reg.host());
    p.hold(&f.big_blob, 1 << 20);
    let image = format!("{}/twice:1", p.host());
    let one = Pull::start(&d, &image);
    until("the first pull is inside the big blob", || p.holding());
    let two = Pull::start(&d, &image);
    // The second pull found the big layer missing (it is still being fetched) and joined
    // the fetch rather than starting its own.
    until("the second pull lists the big layer", || {
        two.has(&format!("{}: Pulling fs layer", short(&f.big_blob)))
    });
    until("the second pull waits on the shared fetch", || {
        two.has(&format!("{}: Waiting", short(&f.big_blob)))
    });
    p.open();
    let (ok1, out1) = one.finish();
    let (ok2, out2) = two.finish();
    assert!(ok1 && ok2, "pulls failed:\n{out1}\n---\n{out2}");
    assert_eq!(
        p.count(&format!("blobs/{}", f.big_blob)),
        1,
        "big blob fetched once"
    );
    assert_eq!(
        p.count(&format!("blobs/{}", f.small_blob)),
        1,
        "busybox blob fetched once"
    );
    let ids: Vec<String> = (0..2)
        .map(|_| d.ok(&["image", "inspect", "-f", "{{.Id}}", &image]))
        .collect();
    assert_eq!(ids[0], ids[1]);
    let sum = d.ok(&["run", "--rm", &image, "sha256sum", "/second"]);
    assert!(sum.starts_with(&f.second_sha), "{sum}");
}

/// Starts a pull of `repo:1`, kills the daemon (master and workers) with SIGKILL once the
/// busybox layer is committed and the big blob is half through, and starts the daemon
/// again. Returns the busybox layer's chain id.
fn cut_by_kill9(d: &mut Daemon, f: &Fixture, repo: &str) -> String {
    let p = Proxy::start(&f.reg.host());
    p.hold(&f.big_blob, 3 << 20);
    let image = format!("{}/{repo}:1", p.host());
    let pull = Pull::start(d, &image);
    // The busybox layer's chain id is its diff id.
    let bb_chain = sha(&std::fs::read(d.path("busybox.tar")).expect("busybox tar"));
    let bb_dir = image_dir(d).join("layers").join(short_hex(&bb_chain));
    until(
        "the busybox layer is committed and the big blob held",
        || bb_dir.join("layer.json").exists() && p.holding(),
    );
    for w in d.worker_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    d.kill9();
    let (ok, out) = pull.finish();
    assert!(!ok, "the pull cannot have succeeded: {out}");
    drop(p);
    d.spawn();
    // No image, no reference; the half layer is not a layer.
    assert_eq!(d.ok(&["images", "-q", "--no-trunc"]), "");
    let err = d.fails(&["image", "inspect", &image]);
    assert!(err.contains("No such image"), "{err}");
    assert_eq!(layer_dirs(&image_dir(d)), vec![short_hex(&bb_chain)]);
    bb_chain
}

#[test]
fn a_pull_cut_by_kill9_leaves_no_image_and_the_next_pull_completes() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut d = Daemon::start();
    let f = fixture(&d, "cut");
    cut_by_kill9(&mut d, &f, "cut");

    // The next pull completes, reusing the committed layer.
    let p = Proxy::start(&f.reg.host());
    let image = format!("{}/cut:1", p.host());
    let out = d.ok(&["pull", &image]);
    assert!(
        out.contains(&format!("{}: Already exists", short(&f.small_blob))),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: Pull complete", short(&f.big_blob))),
        "{out}"
    );
    assert_eq!(p.count(&format!("blobs/{}", f.small_blob)), 0);
    let sum = d.ok(&["run", "--rm", &image, "sha256sum", "/second"]);
    assert!(sum.starts_with(&f.second_sha), "{sum}");

    // rmi removes both layers; nothing is left.
    d.ok(&["rmi", &image]);
    assert!(layer_dirs(&image_dir(&d)).is_empty());
}

#[test]
fn prune_removes_the_layers_a_pull_cut_by_kill9_left() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut d = Daemon::start();
    let f = fixture(&d, "orphan");
    let bb_chain = cut_by_kill9(&mut d, &f, "orphan");
    let out = d.ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {bb_chain}")), "{out}");
    assert!(layer_dirs(&image_dir(&d)).is_empty());
}

#[test]
fn a_failed_pull_leaves_no_layers() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let f = fixture(&d, "failed");
    // The big blob is corrupted in the registry's storage: its digest no longer matches.
    let blob = f.reg.blob_file(&f.big_blob);
    let mut bytes = std::fs::read(&blob).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).expect("corrupt blob");
    // Held until the busybox layer is committed, so the failure comes after it.
    let p = Proxy::start(&f.reg.host());
    p.hold(&f.big_blob, 1 << 20);
    let image = format!("{}/failed:1", p.host());
    let pull = Pull::start(&d, &image);
    let bb_chain = sha(&std::fs::read(d.path("busybox.tar")).expect("busybox tar"));
    let bb_dir = image_dir(&d).join("layers").join(short_hex(&bb_chain));
    until(
        "the busybox layer is committed and the big blob held",
        || bb_dir.join("layer.json").exists() && p.holding(),
    );
    p.open();
    let (ok, err) = pull.finish();
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "filesystem layer verification failed for digest {}",
            f.big_blob
        )),
        "{err}"
    );
    assert_eq!(d.ok(&["images", "-q"]), "");
    assert!(
        layer_dirs(&image_dir(&d)).is_empty(),
        "{:?}",
        layer_dirs(&image_dir(&d))
    );
    until("no work directories are left", || {
        std::fs::read_dir(image_dir(&d).join("tmp"))
            .map(|r| r.count() == 0)
            .unwrap_or(true)
    });
}

fn short_hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

fn blob_files(d: &Daemon) -> usize {
    std::fs::read_dir(image_dir(d).join("blobs/sha256"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[test]
fn pulled_images_share_layers_and_rmi_removes_what_nothing_uses() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let reg = Registry::start(None);
    let tar = d.path("busybox.tar");
    busybox_rootfs_tar(&tar);
    let bb = std::fs::read(&tar).expect("busybox tar");
    let one = tar_of(&[("one", b"1\n")]);
    let two = tar_of(&[("two", b"2\n")]);
    let bb_gz = gzip(&bb);
    push_image(
        &reg,
        "a",
        "1",
        &[
            (bb.clone(), bb_gz.clone(), GZ),
            (one.clone(), gzip(&one), GZ),
        ],
        false,
    );
    push_image(
        &reg,
        "b",
        "1",
        &[
            (bb.clone(), bb_gz.clone(), GZ),
            (two.clone(), gzip(&two), GZ),
        ],
        false,
    );
    let (a, b) = (format!("{}/a:1", reg.host()), format!("{}/b:1", reg.host()));
    d.ok(&["pull", &a]);
    let out = d.ok(&["pull", &b]);
    assert!(
        out.contains(&format!("{}: Already exists", short(&sha(&bb_gz)))),
        "the busybox layer is shared: {out}"
    );
    assert_eq!(layer_dirs(&image_dir(&d)).len(), 3, "busybox + one + two");
    assert_eq!(blob_files(&d), 2, "two configs");
    d.ok(&["run", "--rm", &a, "cat", "/one"]);
    d.ok(&["run", "--rm", &b, "cat", "/two"]);

    // rmi a: its own layer and config go, the shared one stays for b.
    let out = d.ok(&["rmi", &a]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("Deleted: ")).count(),
        2,
        "{out}"
    );
    assert_eq!(layer_dirs(&image_dir(&d)).len(), 2);
    assert_eq!(blob_files(&d), 1);
    assert_eq!(d.ok(&["run", "--rm", &b, "cat", "/two"]), "2");

    // rmi of the last tag removes the rest.
    d.ok(&["tag", &b, "kept:1"]);
    d.ok(&["rmi", &b]);
    assert_eq!(layer_dirs(&image_dir(&d)).len(), 2, "kept:1 still names it");
    d.ok(&["rmi", "kept:1"]);
    assert!(layer_dirs(&image_dir(&d)).is_empty());
    assert_eq!(blob_files(&d), 0);
    // prune -a removes an unused pulled image with its layers and config.
    d.ok(&["pull", &b]);
    assert_eq!(layer_dirs(&image_dir(&d)).len(), 2);
    let out = d.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(layer_dirs(&image_dir(&d)).is_empty());
    assert_eq!(blob_files(&d), 0);
}
