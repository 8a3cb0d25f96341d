//! Block I/O weights against the real kernel: `--blkio-weight` reaches CFQ's or BFQ's weight
//! file where the kernel has a weight policy and is refused with a clear 400 where it has none
//! (nothing created); `--blkio-weight-device` reaches the cgroup for a BFQ-scheduled disk (a
//! loop device of the test) and is refused for a disk whose scheduler has no weights.

mod common;

use common::cgroups::{block_device, cg, cg_path, inspect, raw_create, run_d};
use common::{daemon_with_image, Daemon};
use serde_json::{json, Value};
use std::path::Path;
use std::path::PathBuf;

/// No container and no container directory exists (a refused create left nothing behind).
fn nothing_left(d: &Daemon) {
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    let dirs = std::fs::read_dir(d.path("d/containers"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "container directories left behind");
}

/// The kernel has a proportional weight policy: CFQ's `blkio.weight` at the root, or BFQ
/// (registered when the root has `blkio.bfq.*` files; its weight files are in child groups).
fn kernel_has_blkio_weight() -> bool {
    let root = Path::new("/sys/fs/cgroup/blkio");
    root.join("blkio.weight").exists()
        || std::fs::read_dir(root).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("blkio.bfq."))
        })
}

/// A loop device over a file of the test, scheduled by BFQ; detached (scheduler restored) on
/// drop.
struct BfqLoop {
    dev: String,
}

impl BfqLoop {
    fn new(d: &Daemon) -> Option<BfqLoop> {
        let img = d.path("loop.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(4 << 20))
            .ok()?;
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dev.is_empty() {
            return None;
        }
        let l = BfqLoop { dev };
        std::fs::write(l.scheduler(), "bfq").ok()?;
        Some(l)
    }

    fn scheduler(&self) -> PathBuf {
        let name = self.dev.trim_start_matches("/dev/");
        PathBuf::from(format!("/sys/block/{name}/queue/scheduler"))
    }

    fn majmin(&self) -> String {
        let name = self.dev.trim_start_matches("/dev/");
        std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for BfqLoop {
    fn drop(&mut self) {
        let _ = std::fs::write(self.scheduler(), "none");
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

#[test]
fn blkio_weights_apply_or_are_refused_clearly() {
    let Some(d) = daemon_with_image() else { return };
    if !kernel_has_blkio_weight() {
        const MSG: &str = "Error response from daemon: Your kernel does not support Block I/O weight or the cgroup is not mounted";
        for verb in ["create", "run"] {
            let out = d.docker(&[
                verb,
                "--name",
                "bw",
                "--blkio-weight",
                "300",
                "bb:test",
                "true",
            ]);
            assert_eq!(out.status.code(), Some(125), "docker {verb}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(MSG), "docker {verb}: {err}");
            nothing_left(&d);
        }
        let (status, body) = raw_create(
            &d,
            r#"{"Image":"bb:test","Cmd":["true"],"HostConfig":{"BlkioWeight":300}}"#,
        );
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(
            v["message"],
            "Your kernel does not support Block I/O weight or the cgroup is not mounted"
        );
        nothing_left(&d);
        return;
    }
    // The weight reaches CFQ's or BFQ's file.
    run_d(&d, "bw", &["--blkio-weight", "300"], &["sleep", "300"]);
    let file = if cg_path(&d, "blkio", "bw", "blkio.weight").exists() {
        "blkio.weight"
    } else {
        "blkio.bfq.weight"
    };
    let w = cg(&d, "blkio", "bw", file);
    assert!(w == "300" || w == "default 300", "{file}: {w}");
    assert_eq!(inspect(&d, "bw")["HostConfig"]["BlkioWeight"], 300);
    let e = d.fails(&["create", "--blkio-weight", "5", "bb:test", "true"]);
    assert!(
        e.contains("Range of blkio weight is from 10 to 1000"),
        "{e}"
    );

    // A per-device weight on a disk whose scheduler has no weights: a clear 400 at create,
    // nothing left behind (the kernel would refuse the write with EOPNOTSUPP).
    if let Some((dev, _)) = block_device() {
        let name = dev.trim_start_matches("/dev/");
        let sched = std::fs::read_to_string(format!("/sys/block/{name}/queue/scheduler"))
            .unwrap_or_default();
        if !sched.contains("[bfq]") && !sched.contains("[cfq]") {
            d.ok(&["rm", "-f", "bw"]);
            let e = d.fails(&[
                "run",
                "--blkio-weight-device",
                &format!("{dev}:300"),
                "bb:test",
                "true",
            ]);
            assert!(
                e.contains(&format!("Error response from daemon: Your kernel does not support Block I/O weight_device for {dev}: its I/O scheduler is ")),
                "{e}"
            );
            nothing_left(&d);
        }
    }
    let e = d.fails(&[
        "create",
        "--blkio-weight-device",
        "/dev/null:300",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("/dev/null is not a block device"), "{e}");

    // On a BFQ-scheduled disk the per-device weight reaches the cgroup.
    let Some(lo) = BfqLoop::new(&d) else {
        eprintln!("no loop device: per-device weight not exercised");
        return;
    };
    run_d(
        &d,
        "bwd",
        &["--blkio-weight-device", &format!("{}:200", lo.dev)],
        &["sleep", "300"],
    );
    let file = if cg_path(&d, "blkio", "bwd", "blkio.weight_device").exists() {
        "blkio.weight_device"
    } else {
        "blkio.bfq.weight_device"
    };
    let rows = cg(&d, "blkio", "bwd", file);
    assert!(
        rows.lines().any(|l| l == format!("{} 200", lo.majmin())),
        "{file}: {rows}"
    );
    assert_eq!(
        inspect(&d, "bwd")["HostConfig"]["BlkioWeightDevice"],
        json!([{"Path": lo.dev, "Weight": 200}])
    );
    d.ok(&["rm", "-f", "bwd"]);
}
