//! The crash-consistent metadata store (invariant 5): one sled database under the data
//! root, one tree per kind of object, JSON values. Big or append-only data (layers, logs,
//! exit records) are files elsewhere.

use crate::error::{ApiError, ApiResult};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// On-disk format version of the store; a worker refuses a store newer than it knows.
pub const FORMAT_VERSION: u32 = 1;

/// The daemon's metadata database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

/// One typed collection in the store.
#[derive(Clone)]
pub struct Table {
    tree: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store at `dir` and checks its format version.
    pub fn open(dir: &Path) -> ApiResult<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(1024 * 1024)
            .open()
            .map_err(|e| ApiError::internal(&format!("open store {}", dir.display()), e))?;
        let store = Store { db };
        match store.db.get("format_version")? {
            Some(v) => {
                let found: u32 = serde_json::from_slice(&v)?;
                if found > FORMAT_VERSION {
                    return Err(ApiError::Internal(format!(
                        "store format {found} is newer than this berthd ({FORMAT_VERSION})"
                    )));
                }
            }
            None => {
                store
                    .db
                    .insert("format_version", serde_json::to_vec(&FORMAT_VERSION)?)?;
            }
        }
        Ok(store)
    }

    /// [`Store::open`], waiting up to 10 s while another process (a previous worker
    /// generation that is still exiting) holds the database's lock.
    pub async fn open_waiting(dir: &Path) -> anyhow::Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let d = dir.to_path_buf();
            let r = tokio::task::spawn_blocking(move || Store::open(&d))
                .await
                .map_err(|e| anyhow::anyhow!("open store task: {e}"))?;
            match r {
                Ok(s) => return Ok(s),
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                Err(e) => return Err(anyhow::anyhow!("open store: {e}")),
            }
        }
    }

    /// A named collection.
    pub fn table(&self, name: &str) -> ApiResult<Table> {
        Ok(Table {
            tree: self.db.open_tree(name)?,
        })
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> ApiResult<()> {
        self.db.flush()?;
        Ok(())
    }
}

impl Table {
    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<T>> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes one value and flushes it (metadata changes are rare and must survive a crash).
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> ApiResult<()> {
        self.tree.insert(key, serde_json::to_vec(value)?)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Writes only if the key is absent; returns false when it was taken.
    pub fn put_new<T: Serialize>(&self, key: &str, value: &T) -> ApiResult<bool> {
        let res = self.tree.compare_and_swap(
            key,
            None as Option<&[u8]>,
            Some(serde_json::to_vec(value)?),
        )?;
        self.tree.flush()?;
        Ok(res.is_ok())
    }

    /// Removes one value.
    pub fn remove(&self, key: &str) -> ApiResult<()> {
        self.tree.remove(key)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Every value, in key order; entries that fail to decode are skipped and logged.
    pub fn all<T: DeserializeOwned>(&self) -> ApiResult<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice(&v) {
                Ok(t) => out.push((key, t)),
                Err(e) => tracing::warn!(%key, error = %e, "skipping undecodable store entry"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopen_and_put_new_refuses_duplicates() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let s = Store::open(dir.path())?;
            let t = s.table("t")?;
            t.put("a", &1u32)?;
            assert!(t.put_new("b", &2u32)?);
            assert!(!t.put_new("b", &3u32)?);
        }
        let s = Store::open(dir.path())?;
        let t = s.table("t")?;
        assert_eq!(t.get::<u32>("b")?, Some(2));
        assert_eq!(t.all::<u32>()?.len(), 2);
        t.remove("a")?;
        assert_eq!(t.get::<u32>("a")?, None);
        Ok(())
    }
}
