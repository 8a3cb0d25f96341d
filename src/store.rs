//! The crash-consistent metadata store (invariant 5): one sled database under the data
//! root, one tree per kind of object, JSON values. Big or append-only data (layers, logs,
//! exit records) are files elsewhere.
//!
//! One process writes it at a time (sled locks the database). During a live upgrade the
//! serving generation [`Store::release`]s it once its mutations are quiesced: it keeps
//! answering reads from an in-memory copy of every table while the next generation opens
//! the database, and [`Store::reacquire`]s it if that generation fails before serving.

use crate::error::{ApiError, ApiResult};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// On-disk format version of the store; a worker refuses a store newer than it knows.
pub const FORMAT_VERSION: u32 = 1;

/// The daemon's metadata database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: RwLock<State>,
}

enum State {
    /// This process holds the database.
    Open {
        db: sled::Db,
        trees: HashMap<String, sled::Tree>,
    },
    /// Handed to the next generation: the tables as they were, read-only.
    Released {
        tables: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    },
}

/// One typed collection in the store.
#[derive(Clone)]
pub struct Table {
    store: Store,
    name: Arc<str>,
}

fn released_error() -> ApiError {
    ApiError::Internal(
        "write to the state store: it was handed over to the next worker generation".into(),
    )
}

fn open_db(dir: &Path) -> ApiResult<sled::Db> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(1024 * 1024)
        .open()
        .map_err(|e| ApiError::internal(&format!("open store {}", dir.display()), e))?;
    match db.get("format_version")? {
        Some(v) => {
            let found: u32 = serde_json::from_slice(&v)?;
            if found > FORMAT_VERSION {
                return Err(ApiError::Internal(format!(
                    "store format {found} is newer than this berthd ({FORMAT_VERSION})"
                )));
            }
        }
        None => {
            db.insert("format_version", serde_json::to_vec(&FORMAT_VERSION)?)?;
        }
    }
    Ok(db)
}

/// [`open_db`], waiting up to 10 s while another process (a generation that is still
/// leaving or handing the database over) holds its lock.
async fn open_db_waiting(dir: &Path) -> anyhow::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let d = dir.to_path_buf();
        let r = tokio::task::spawn_blocking(move || open_db(&d))
            .await
            .map_err(|e| anyhow::anyhow!("open store task: {e}"))?;
        match r {
            Ok(db) => return Ok(db),
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("open store: {e}")),
        }
    }
}

impl Store {
    fn new(dir: &Path, db: sled::Db) -> Self {
        Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: RwLock::new(State::Open {
                    db,
                    trees: HashMap::new(),
                }),
            }),
        }
    }

    /// Opens (or creates) the store at `dir` and checks its format version.
    pub fn open(dir: &Path) -> ApiResult<Self> {
        Ok(Store::new(dir, open_db(dir)?))
    }

    /// [`Store::open`], waiting up to 10 s while another process (a previous worker
    /// generation that is still exiting) holds the database's lock.
    pub async fn open_waiting(dir: &Path) -> anyhow::Result<Self> {
        Ok(Store::new(dir, open_db_waiting(dir).await?))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A named collection.
    pub fn table(&self, name: &str) -> ApiResult<Table> {
        if let State::Open { db, trees } = &mut *self.write() {
            if !trees.contains_key(name) {
                trees.insert(name.to_string(), db.open_tree(name)?);
            }
        }
        Ok(Table {
            store: self.clone(),
            name: name.into(),
        })
    }

    /// Waits until everything written so far is on disk (nothing to do once released).
    pub fn flush(&self) -> ApiResult<()> {
        if let State::Open { db, .. } = &*self.read() {
            db.flush()?;
        }
        Ok(())
    }

    /// Whether the database was handed over ([`Store::release`]).
    pub fn is_released(&self) -> bool {
        matches!(&*self.read(), State::Released { .. })
    }

    /// Flushes the database, keeps a read-only copy of every table and closes it, so that
    /// another process can open it. Writes fail from now on; reads answer from the copy.
    /// The caller makes sure nothing writes any more (the mutations are quiesced).
    pub fn release(&self) -> ApiResult<()> {
        let mut st = self.write();
        let State::Open { db, trees } = &*st else {
            return Ok(());
        };
        db.flush()?;
        let mut tables = HashMap::new();
        for (name, tree) in trees {
            let mut t = BTreeMap::new();
            for item in tree.iter() {
                let (k, v) = item?;
                t.insert(k.to_vec(), v.to_vec());
            }
            tables.insert(name.clone(), t);
        }
        // Dropping the last handles closes the database and frees its lock.
        *st = State::Released { tables };
        Ok(())
    }

    /// Opens the database again after a [`Store::release`] (the next generation failed
    /// before it served), waiting while the failed one's lock lingers.
    pub async fn reacquire(&self) -> anyhow::Result<()> {
        if !self.is_released() {
            return Ok(());
        }
        let db = open_db_waiting(&self.inner.dir).await?;
        let mut st = self.write();
        let names: Vec<String> = match &*st {
            State::Released { tables } => tables.keys().cloned().collect(),
            State::Open { .. } => return Ok(()),
        };
        let mut trees = HashMap::new();
        for name in names {
            let tree = db
                .open_tree(&name)
                .map_err(|e| anyhow::anyhow!("reopen table {name}: {e}"))?;
            trees.insert(name, tree);
        }
        *st = State::Open { db, trees };
        Ok(())
    }
}

impl Table {
    /// Runs `f` on the open tree, or fails once the store was released.
    fn tree<T>(&self, f: impl FnOnce(&sled::Tree) -> ApiResult<T>) -> ApiResult<T> {
        match &*self.store.read() {
            State::Open { trees, .. } => match trees.get(&*self.name) {
                Some(t) => f(t),
                None => Err(ApiError::Internal(format!(
                    "state store: table {} is not open",
                    self.name
                ))),
            },
            State::Released { .. } => Err(released_error()),
        }
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<T>> {
        let raw = match &*self.store.read() {
            State::Open { trees, .. } => match trees.get(&*self.name) {
                Some(t) => t.get(key)?.map(|v| v.to_vec()),
                None => None,
            },
            State::Released { tables } => tables
                .get(&*self.name)
                .and_then(|t| t.get(key.as_bytes()))
                .cloned(),
        };
        match raw {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes one value and flushes it (metadata changes are rare and must survive a crash).
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> ApiResult<()> {
        let v = serde_json::to_vec(value)?;
        self.tree(|t| {
            t.insert(key, v)?;
            t.flush()?;
            Ok(())
        })
    }

    /// Writes only if the key is absent; returns false when it was taken.
    pub fn put_new<T: Serialize>(&self, key: &str, value: &T) -> ApiResult<bool> {
        let v = serde_json::to_vec(value)?;
        self.tree(|t| {
            let res = t.compare_and_swap(key, None as Option<&[u8]>, Some(v))?;
            t.flush()?;
            Ok(res.is_ok())
        })
    }

    /// Removes one value.
    pub fn remove(&self, key: &str) -> ApiResult<()> {
        self.tree(|t| {
            t.remove(key)?;
            t.flush()?;
            Ok(())
        })
    }

    /// Every value, in key order; entries that fail to decode are skipped and logged.
    pub fn all<T: DeserializeOwned>(&self) -> ApiResult<Vec<(String, T)>> {
        let mut raw = Vec::new();
        match &*self.store.read() {
            State::Open { trees, .. } => {
                if let Some(t) = trees.get(&*self.name) {
                    for item in t.iter() {
                        let (k, v) = item?;
                        raw.push((k.to_vec(), v.to_vec()));
                    }
                }
            }
            State::Released { tables } => {
                if let Some(t) = tables.get(&*self.name) {
                    raw.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        for (k, v) in raw {
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

    #[tokio::test]
    async fn a_released_store_answers_reads_and_lets_another_open_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path())?;
        let t = s.table("t")?;
        t.put("a", &1u32)?;
        t.put("b", &2u32)?;
        // Held: a second open fails on the lock.
        assert!(Store::open(dir.path()).is_err());
        s.release()?;
        assert!(s.is_released());
        assert_eq!(t.get::<u32>("a")?, Some(1));
        assert_eq!(t.all::<u32>()?.len(), 2);
        let err = t
            .put("c", &3u32)
            .expect_err("a released store refuses writes");
        assert!(err.to_string().contains("handed over"), "{err}");
        assert!(t.remove("a").is_err());
        {
            // The next generation opens it and writes.
            let next = Store::open_waiting(dir.path()).await?;
            next.table("t")?.put("c", &3u32)?;
            // Meanwhile this one cannot take it back.
            let again =
                tokio::time::timeout(std::time::Duration::from_millis(50), s.reacquire()).await;
            assert!(
                again.is_err(),
                "reacquired while the next generation held it"
            );
        }
        // The next generation failed: this one takes the store back, with its writes.
        s.reacquire().await?;
        assert!(!s.is_released());
        assert_eq!(t.get::<u32>("c")?, Some(3));
        t.put("d", &4u32)?;
        assert_eq!(t.all::<u32>()?.len(), 4);
        Ok(())
    }
}
