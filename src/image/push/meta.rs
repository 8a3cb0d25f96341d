//! Where a layer's compressed blob is known to live, like dockerd's v2 metadata: table
//! `distribution`, diff id → the list of [`BlobSource`]s (compressed digest, size, registry
//! repository, media type) seen at pull or push time. A push asks it to find a blob already
//! in the target repository (`Layer already exists`) or in another repository of the same
//! registry (a cross-repository mount) without recompressing the layer.

use super::super::ImageStore;
use crate::error::ApiResult;
use serde::{Deserialize, Serialize};

/// Most sources kept per diff id (dockerd keeps 50 too); the oldest go first.
const MAX_SOURCES: usize = 50;

/// Media types of gzip layer blobs: the only ones a schema 2 manifest can name as
/// `application/vnd.docker.image.rootfs.diff.tar.gzip`.
pub const GZIP_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip",
];

/// One place a layer's compressed blob is known to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobSource {
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The full repository name, registry included (`127.0.0.1:5000/test/img`).
    pub repository: String,
    /// The blob's media type.
    pub media_type: String,
}

impl BlobSource {
    /// The registry part of [`BlobSource::repository`].
    pub fn registry(&self) -> &str {
        self.repository.split('/').next().unwrap_or("")
    }

    /// The repository path without the registry (`test/img`).
    pub fn path(&self) -> &str {
        self.repository
            .split_once('/')
            .map(|(_, p)| p)
            .unwrap_or("")
    }

    /// Whether a schema 2 manifest can name this blob as a gzip layer.
    pub fn is_gzip(&self) -> bool {
        GZIP_TYPES.contains(&self.media_type.as_str())
    }
}

/// `list` with `src` added as the newest entry (an equal digest+repository entry replaced),
/// at most [`MAX_SOURCES`] long.
pub fn add_source(mut list: Vec<BlobSource>, src: BlobSource) -> Vec<BlobSource> {
    list.retain(|s| !(s.digest == src.digest && s.repository == src.repository));
    list.push(src);
    if list.len() > MAX_SOURCES {
        let extra = list.len() - MAX_SOURCES;
        list.drain(..extra);
    }
    list
}

impl ImageStore {
    /// Records that the layer with `diff_id` is the blob `digest` (`size` bytes, of
    /// `media_type`) in `repository` (full name, registry included). Pull calls it for each
    /// layer of a pulled image, push for each layer it pushed, mounted or found.
    pub fn remember_blob(
        &self,
        diff_id: &str,
        digest: &str,
        size: u64,
        repository: &str,
        media_type: &str,
    ) -> ApiResult<()> {
        let _g = self.guard();
        let list = self
            .distribution
            .get::<Vec<BlobSource>>(diff_id)?
            .unwrap_or_default();
        let src = BlobSource {
            digest: digest.to_string(),
            size,
            repository: repository.to_string(),
            media_type: media_type.to_string(),
        };
        self.distribution.put(diff_id, &add_source(list, src))
    }

    /// Where the layer with `diff_id` is known to be, newest last.
    pub fn blob_sources(&self, diff_id: &str) -> ApiResult<Vec<BlobSource>> {
        Ok(self
            .distribution
            .get::<Vec<BlobSource>>(diff_id)?
            .unwrap_or_default())
    }

    /// Drops a source found to be gone (the blob is no longer in that repository).
    pub fn forget_blob(&self, diff_id: &str, digest: &str, repository: &str) -> ApiResult<()> {
        let _g = self.guard();
        let mut list = self
            .distribution
            .get::<Vec<BlobSource>>(diff_id)?
            .unwrap_or_default();
        let before = list.len();
        list.retain(|s| !(s.digest == digest && s.repository == repository));
        if list.len() == before {
            return Ok(());
        }
        if list.is_empty() {
            self.distribution.remove(diff_id)
        } else {
            self.distribution.put(diff_id, &list)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBus;
    use crate::store::Store;
    use std::sync::Arc;

    fn src(d: &str, repo: &str) -> BlobSource {
        BlobSource {
            digest: d.into(),
            size: 7,
            repository: repo.into(),
            media_type: GZIP_TYPES[0].into(),
        }
    }

    #[test]
    fn newest_last_deduplicated_and_capped() {
        let mut l = Vec::new();
        l = add_source(l, src("sha256:a", "r/x"));
        l = add_source(l, src("sha256:b", "r/x"));
        l = add_source(l, src("sha256:a", "r/x"));
        assert_eq!(l, vec![src("sha256:b", "r/x"), src("sha256:a", "r/x")]);
        for i in 0..60 {
            l = add_source(l, src(&format!("sha256:{i}"), "r/y"));
        }
        assert_eq!(l.len(), MAX_SOURCES);
        assert_eq!(l[0].digest, "sha256:10");
        assert_eq!(l[49].digest, "sha256:59");
        let s = src("sha256:z", "127.0.0.1:5000/test/img");
        assert_eq!((s.registry(), s.path()), ("127.0.0.1:5000", "test/img"));
        assert!(s.is_gzip());
        let zstd = BlobSource {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            ..s
        };
        assert!(!zstd.is_gzip());
    }

    #[test]
    fn table_survives_reopen_and_forgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            let store = Store::open(&dir.path().join("store")).expect("store");
            let images =
                ImageStore::open(&dir.path().join("image"), &store, Arc::new(EventBus::new()))
                    .expect("open");
            (store, images)
        };
        {
            let (store, images) = open();
            images
                .remember_blob("sha256:d1", "sha256:c1", 10, "reg:5000/a", GZIP_TYPES[0])
                .expect("remember");
            images
                .remember_blob("sha256:d1", "sha256:c1", 10, "reg:5000/b", GZIP_TYPES[1])
                .expect("remember");
            store.flush().expect("flush");
        }
        let (_store, images) = open();
        let got = images.blob_sources("sha256:d1").expect("sources");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].repository, "reg:5000/b");
        assert_eq!(got[1].size, 10);
        assert!(images.blob_sources("sha256:none").expect("none").is_empty());
        images
            .forget_blob("sha256:d1", "sha256:c1", "reg:5000/a")
            .expect("forget");
        let got = images.blob_sources("sha256:d1").expect("sources");
        assert_eq!(got, vec![src_b()]);
        images
            .forget_blob("sha256:d1", "sha256:c1", "reg:5000/b")
            .expect("forget");
        assert!(images
            .blob_sources("sha256:d1")
            .expect("sources")
            .is_empty());
    }

    fn src_b() -> BlobSource {
        BlobSource {
            digest: "sha256:c1".into(),
            size: 10,
            repository: "reg:5000/b".into(),
            media_type: GZIP_TYPES[1].into(),
        }
    }
}
