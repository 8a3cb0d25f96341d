//! cgroup v1 settings of the spec that libcontainer 0.7 leaves out, written by the shim while
//! the init waits in "created": `memory.oom_control` (libcontainer hands libcgroups a fixed
//! `disable_oom_killer: false`) and the per-device block I/O weights (its v1 blkio controller
//! never writes them). On cgroup v2 libcontainer writes per-device weights itself and there is
//! no OOM-killer switch (the daemon refuses `--oom-kill-disable` there).

use libcontainer::oci_spec::runtime::Spec;
use std::path::Path;

/// Writes `data` to an existing cgroup file, naming the file in the error.
fn write(path: &Path, data: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()))
        .map_err(|e| format!("write {data:?} to {}: {e}", path.display()))
}

/// Applies the settings to the container's groups under the v1 mount `cgroup_root` (normally
/// `/sys/fs/cgroup`); a no-op on v2.
pub fn apply(spec: &Spec, cgroup_root: &Path) -> Result<(), String> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return Ok(());
    }
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    let Some(cg) = linux.cgroups_path().as_ref() else {
        return Ok(());
    };
    let rel = cg.strip_prefix("/").unwrap_or(cg);
    let Some(res) = linux.resources().as_ref() else {
        return Ok(());
    };
    let oom_off = res
        .memory()
        .as_ref()
        .and_then(|m| m.disable_oom_killer())
        .unwrap_or(false);
    if oom_off {
        write(
            &cgroup_root
                .join("memory")
                .join(rel)
                .join("memory.oom_control"),
            "1",
        )?;
    }
    let devices = res
        .block_io()
        .as_ref()
        .and_then(|b| b.weight_device().clone())
        .unwrap_or_default();
    let dir = cgroup_root.join("blkio").join(rel);
    // CFQ's file where it exists, else BFQ's (which only child groups have), as runc does.
    let file = if dir.join("blkio.weight_device").exists() {
        dir.join("blkio.weight_device")
    } else {
        dir.join("blkio.bfq.weight_device")
    };
    for d in devices {
        if let Some(w) = d.weight() {
            write(&file, &format!("{}:{} {w}", d.major(), d.minor()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
        LinuxWeightDeviceBuilder, SpecBuilder,
    };

    fn spec(oom_off: Option<bool>, weights: &[(i64, i64, u16)]) -> Spec {
        let mut mem = LinuxMemoryBuilder::default();
        if let Some(o) = oom_off {
            mem = mem.disable_oom_killer(o);
        }
        let devs: Vec<_> = weights
            .iter()
            .map(|(maj, min, w)| {
                LinuxWeightDeviceBuilder::default()
                    .major(*maj)
                    .minor(*min)
                    .weight(*w)
                    .build()
                    .expect("weight device")
            })
            .collect();
        let res = LinuxResourcesBuilder::default()
            .memory(mem.build().expect("memory"))
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight_device(devs)
                    .build()
                    .expect("blkio"),
            )
            .build()
            .expect("resources");
        let linux = LinuxBuilder::default()
            .cgroups_path("/pool/c1")
            .resources(res)
            .build()
            .expect("linux");
        SpecBuilder::default().linux(linux).build().expect("spec")
    }

    #[test]
    fn oom_switch_and_bfq_weights_on_v1() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let mem = root.path().join("memory/pool/c1");
        let blk = root.path().join("blkio/pool/c1");
        std::fs::create_dir_all(&mem)?;
        std::fs::create_dir_all(&blk)?;
        std::fs::write(mem.join("memory.oom_control"), "")?;
        std::fs::write(blk.join("blkio.bfq.weight_device"), "")?;
        apply(&spec(Some(true), &[(7, 3, 200)]), root.path()).map_err(std::io::Error::other)?;
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.oom_control"))?,
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(blk.join("blkio.bfq.weight_device"))?,
            "7:3 200"
        );
        // CFQ's file wins where it exists; nothing asked, nothing written.
        std::fs::write(blk.join("blkio.weight_device"), "")?;
        std::fs::write(mem.join("memory.oom_control"), "untouched")?;
        apply(&spec(Some(false), &[(8, 0, 500)]), root.path()).map_err(std::io::Error::other)?;
        assert_eq!(
            std::fs::read_to_string(blk.join("blkio.weight_device"))?,
            "8:0 500"
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.oom_control"))?,
            "untouched"
        );
        // A file the kernel lacks is an error naming it.
        std::fs::remove_file(mem.join("memory.oom_control"))?;
        let e = apply(&spec(Some(true), &[]), root.path()).expect_err("no oom_control");
        assert!(e.contains("memory.oom_control"), "{e}");
        Ok(())
    }

    #[test]
    fn nothing_on_v2() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::write(root.path().join("cgroup.controllers"), "memory io\n")?;
        assert!(apply(&spec(Some(true), &[(7, 3, 200)]), root.path()).is_ok());
        Ok(())
    }
}
