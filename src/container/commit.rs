//! `docker commit` (`POST /commit`), container side: the container's overlay upper dir
//! is written as a layer tar the way dockerd's overlay2 driver exports it (a 0:0
//! character device becomes a `.wh.<name>` entry, an opaque directory gets a
//! `.wh..wh..opq` entry, a file's further names are hardlink entries and its
//! `security.capability` goes in a PAX header), paused meanwhile when asked, and handed to
//! the image store.

use super::changes::{changes, DELETED};
use super::record::Status;
use super::rootfs::Rootfs;
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::image::changes::apply_changes;
use crate::image::commit::{merge_config, CommitInfo};
use crate::image::config::ContainerConfig;
use std::collections::HashMap;
use std::io::{Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `POST /commit` asks for besides the container.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `repo` and `tag` joined (`name[:tag]`), if given.
    pub repo_tag: Option<String>,
    /// `comment` (`-m`).
    pub comment: String,
    /// `author` (`-a`).
    pub author: String,
    /// `pause` (default true).
    pub pause: bool,
    /// `changes` (`-c`), Dockerfile instructions.
    pub changes: Vec<String>,
    /// The request body's config, if any.
    pub config: Option<ContainerConfig>,
}

/// The file-capabilities attribute (`setcap`).
const CAPABILITY: &str = "security.capability";

fn tar_err(e: std::io::Error) -> ApiError {
    ApiError::internal("write commit layer", e)
}

/// Writes the layer tar of `upper` over `lowers` (topmost first) to `out`.
pub fn write_layer(out: &mut dyn Write, upper: &Path, lowers: &[PathBuf]) -> ApiResult<()> {
    let mut tb = tar::Builder::new(out);
    tb.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for c in changes(upper, lowers)? {
        let rel = c.path.trim_start_matches('/');
        let src = upper.join(rel);
        let md = std::fs::symlink_metadata(&src).map_err(tar_err)?;
        if md.file_type().is_socket() {
            continue;
        }
        if c.kind == DELETED && md.file_type().is_char_device() && md.rdev() == 0 {
            let p = Path::new(rel);
            let name = p
                .file_name()
                .ok_or_else(|| ApiError::Internal(format!("bad whiteout path {rel:?}")))?;
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(name);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o600);
            h.set_mtime(md.mtime().max(0) as u64);
            tb.append_data(&mut h, p.with_file_name(wh), std::io::empty())
                .map_err(tar_err)?;
            continue;
        }
        // A second name of a file already written is a hardlink entry, as in dockerd's
        // layers (the content is not repeated, and the link survives the round trip).
        if md.is_file() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                let mut h = tar::Header::new_gnu();
                h.set_metadata(&md);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tb.append_link(&mut h, rel, first).map_err(tar_err)?;
                continue;
            }
            links.insert((md.dev(), md.ino()), PathBuf::from(rel));
        }
        // dockerd carries one extended attribute into layers: file capabilities.
        if let Ok(Some(cap)) = xattr::get(&src, CAPABILITY) {
            let key = format!("SCHILY.xattr.{CAPABILITY}");
            tb.append_pax_extensions([(key.as_str(), cap.as_slice())])
                .map_err(tar_err)?;
        }
        tb.append_path_with_name(&src, rel).map_err(tar_err)?;
        let opaque = md.is_dir()
            && xattr::get(&src, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
        if opaque {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o600);
            h.set_mtime(md.mtime().max(0) as u64);
            tb.append_data(
                &mut h,
                Path::new(rel).join(".wh..wh..opq"),
                std::io::empty(),
            )
            .map_err(tar_err)?;
        }
    }
    tb.finish().map_err(tar_err)?;
    Ok(())
}

impl Containers {
    /// `POST /commit`: a new image from container `name`'s changes. Returns its id.
    pub async fn commit(self: &Arc<Self>, name: &str, opts: CommitOptions) -> ApiResult<String> {
        let rec = self.lookup(name)?;
        let mut config = opts.config.clone().unwrap_or_default();
        apply_changes(&mut config, &opts.changes)?;
        let cconf: ContainerConfig = serde_json::to_value(&rec.config)
            .and_then(serde_json::from_value)
            .map_err(|e| ApiError::internal("read container config", e))?;
        merge_config(&mut config, &cconf);
        let paused = opts.pause
            && rec.state.status == Status::Running
            && self.pause(&rec.id, true).await.is_ok();
        let r = self.commit_paused(&rec, config, cconf, &opts).await;
        // dockerd announces the commit before it unpauses the container.
        if let Ok(id) = &r {
            let mut extra = vec![("comment", opts.comment.clone()), ("imageID", id.clone())];
            if let Some(t) = &opts.repo_tag {
                extra.push(("imageRef", t.clone()));
            }
            self.event(&rec, "commit", &extra);
        }
        if paused {
            if let Err(e) = self.pause(&rec.id, false).await {
                tracing::warn!(container = %rec.id, error = %e, "unpause after commit failed");
            }
        }
        let id = r?;
        Ok(id)
    }

    async fn commit_paused(
        &self,
        rec: &super::record::Record,
        config: ContainerConfig,
        cconf: ContainerConfig,
        opts: &CommitOptions,
    ) -> ApiResult<String> {
        let upper = Rootfs::new(&self.paths.data_root, &rec.id).upper();
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        let images = self.images.clone();
        let (rec, opts) = (rec.clone(), opts.clone());
        tokio::task::spawn_blocking(move || {
            let mut tmp = tempfile::tempfile_in(images.root())
                .map_err(|e| ApiError::internal("create commit layer file", e))?;
            write_layer(&mut tmp, &upper, &lowers)?;
            tmp.rewind()
                .map_err(|e| ApiError::internal("rewind commit layer file", e))?;
            let mut rd = std::io::BufReader::new(tmp);
            images.commit_container(
                &mut rd,
                CommitInfo {
                    parent_image: &rec.image_id,
                    container_id: &rec.id,
                    container_config: cconf,
                    config,
                    comment: &opts.comment,
                    author: &opts.author,
                    repo_tag: opts.repo_tag.as_deref(),
                },
            )
        })
        .await
        .map_err(|e| ApiError::internal("commit task", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn whiteouts_and_opaque_dirs_become_wh_entries() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("etc"))?;
        fs::create_dir_all(lower.join("opq"))?;
        fs::write(lower.join("etc/gone"), "x")?;
        fs::write(lower.join("opq/old"), "x")?;
        fs::create_dir_all(upper.join("etc"))?;
        fs::create_dir_all(upper.join("opq"))?;
        xattr::set(upper.join("opq"), "trusted.overlay.opaque", b"y")?;
        fs::write(upper.join("opq/fresh"), "new")?;
        fs::write(upper.join("etc/hosts"), "")?;
        nix::sys::stat::mknod(
            &upper.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )?;
        let mut buf = Vec::new();
        write_layer(&mut buf, &upper, &[lower])?;
        let mut ar = tar::Archive::new(&buf[..]);
        let mut got = Vec::new();
        for e in ar.entries()? {
            let e = e?;
            got.push((e.path()?.display().to_string(), e.header().entry_type()));
        }
        use tar::EntryType::{Directory, Regular};
        let want = vec![
            ("etc".to_string(), Directory),
            ("etc/.wh.gone".to_string(), Regular),
            ("opq".to_string(), Directory),
            ("opq/.wh..wh..opq".to_string(), Regular),
            ("opq/fresh".to_string(), Regular),
        ];
        assert_eq!(got, want);
        Ok(())
    }
}
