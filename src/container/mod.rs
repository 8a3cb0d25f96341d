//! Containers: lifecycle, records and OCI spec generation.
//!
//! [`Containers`] owns the container records (write-through to the store), serialises
//! lifecycle operations per container, spawns shims and follows their events. Streams
//! bound to one container (attach, wait, `logs -f`, exec) are handed to the shim
//! (invariant 2); while no shim exists yet (created containers) they wait in
//! [`pending`] and are handed over at start.

pub mod archive;
pub mod bundle;
pub mod changes;
pub mod chroot;
pub mod commit;
pub mod cpus;
pub mod create;
pub mod egress;
pub mod exec;
pub mod lifecycle;
pub mod monitor;
pub mod orphan;
pub mod pending;
pub mod prune;
pub mod reaped;
pub mod record;
pub mod rootfs;
pub mod spawn;
pub mod spec;
pub mod stats;
pub mod streams;
pub mod top;
pub mod update;
pub mod update_verify;
pub mod view;

use crate::error::{ApiError, ApiResult};
use crate::events::EventBus;
use crate::image::ImageStore;
use crate::network::NetworkManager;
use crate::server::http::gate::{Admitted, Gate};
use crate::shimclient::ShimClient;
use crate::store::{Store, Table};
use record::Record;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Filesystem locations the container module uses.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent root.
    pub data_root: PathBuf,
    /// Runtime root.
    pub exec_root: PathBuf,
    /// berth-shim binary.
    pub shim_binary: PathBuf,
    /// Parent cgroup of all containers.
    pub cgroup_parent: String,
    /// Default json-file options.
    pub log_opts: HashMap<String, String>,
    /// `--lxcfs`: lxcfs's mount point, when containers get its files.
    pub lxcfs: Option<PathBuf>,
}

impl Paths {
    /// `<data-root>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.data_root.join("containers").join(id)
    }
    /// The json-file log.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(format!("{id}-json.log"))
    }
    /// The exit record written by the shim.
    pub fn exit_file(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("exit.json")
    }
    /// `<exec-root>/shims/<id>`.
    pub fn shim_dir(&self, id: &str) -> PathBuf {
        self.exec_root.join("shims").join(id)
    }
    /// The shim's control socket.
    pub fn ctl_socket(&self, id: &str) -> PathBuf {
        self.shim_dir(id).join("ctl")
    }
    /// libcontainer's state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.exec_root.join("rt")
    }
    /// The container's cgroup path.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("{}/{id}", self.cgroup_parent.trim_end_matches('/'))
    }
}

/// The container manager.
pub struct Containers {
    table: Table,
    recs: Mutex<HashMap<String, Record>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    exits: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
    pending: pending::PendingTable,
    orphans: orphan::Orphans,
    /// Exec records.
    pub execs: exec::Execs,
    /// Locations.
    pub paths: Paths,
    /// Event bus.
    pub events: Arc<EventBus>,
    /// Image store.
    pub images: Arc<ImageStore>,
    /// Network manager.
    pub net: Arc<NetworkManager>,
    /// This generation's gate: background mutations run only while it serves.
    pub gate: Arc<Gate>,
    /// Egress shaping: the shaper and the daemon's default rate.
    pub egress: egress::EgressPolicy,
    /// The elastic-memory controller, when the daemon runs one.
    pub elastic: std::sync::OnceLock<Arc<crate::resources::elastic::Elastic>>,
    /// CPU placement: reserved, exclusive and shared CPUs.
    pub cpus: cpus::CpuPolicy,
}

/// Current wall-clock time in ns since the epoch.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// A fresh 64-hex id.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Containers {
    /// Loads every record from the store.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: &Store,
        paths: Paths,
        events: Arc<EventBus>,
        images: Arc<ImageStore>,
        net: Arc<NetworkManager>,
        gate: Arc<Gate>,
        egress: egress::EgressPolicy,
        cpus: cpus::CpuPolicy,
    ) -> ApiResult<Arc<Self>> {
        let table = store.table("containers")?;
        let recs: HashMap<String, Record> = table.all::<Record>()?.into_iter().collect();
        Ok(Arc::new(Containers {
            execs: exec::Execs::open(store)?,
            table,
            recs: Mutex::new(recs),
            op_locks: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            pending: pending::PendingTable::default(),
            orphans: orphan::Orphans::default(),
            paths,
            events,
            images,
            net,
            gate,
            egress,
            elastic: std::sync::OnceLock::new(),
            cpus,
        }))
    }

    /// Waits until this generation may change state in the background (an exit to
    /// record, a restart or removal to apply) and holds the permission until dropped. A
    /// generation that is handing over never gets it: the work is left to the next one
    /// (the shim keeps an unacknowledged exit).
    pub(crate) async fn background(&self) -> Admitted {
        let mut phase = self.gate.watch();
        loop {
            if let Some(a) = self.gate.begin_internal() {
                return a;
            }
            if phase.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn recs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.recs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds a container by full id, name (with or without `/`) or unique id prefix.
    pub fn lookup(&self, name_or_id: &str) -> ApiResult<Record> {
        let recs = self.recs();
        if let Some(r) = recs.get(name_or_id) {
            return Ok(r.clone());
        }
        let name = name_or_id.trim_start_matches('/');
        if let Some(r) = recs.values().find(|r| r.name == name) {
            return Ok(r.clone());
        }
        if !name_or_id.is_empty() && name_or_id.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut found = recs.values().filter(|r| r.id.starts_with(name_or_id));
            if let Some(first) = found.next() {
                if found.next().is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "multiple IDs found with provided prefix: {name_or_id}"
                    )));
                }
                return Ok(first.clone());
            }
        }
        Err(ApiError::no_such_container(name_or_id))
    }

    /// A snapshot of every record.
    pub fn all(&self) -> Vec<Record> {
        self.recs().values().cloned().collect()
    }

    /// What `f` takes out of each record, under the records' lock (no clone of them).
    pub fn scan<T>(&self, f: impl FnMut(&Record) -> Option<T>) -> Vec<T> {
        self.recs().values().filter_map(f).collect()
    }

    /// Persists a record (store first, then memory).
    pub fn save(&self, rec: &Record) -> ApiResult<()> {
        self.table.put(&rec.id, rec)?;
        self.recs().insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    /// Applies `f` to the current record and persists the result.
    pub fn update<F: FnOnce(&mut Record)>(&self, id: &str, f: F) -> ApiResult<Record> {
        let mut rec = self
            .recs()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::no_such_container(id))?;
        f(&mut rec);
        self.save(&rec)?;
        Ok(rec)
    }

    fn forget(&self, id: &str) -> ApiResult<()> {
        self.table.remove(id)?;
        self.recs().remove(id);
        if let Ok(mut l) = self.op_locks.lock() {
            l.remove(id);
        }
        Ok(())
    }

    /// The lifecycle lock of one container (start/stop/kill/remove run one at a time).
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// A receiver that changes on every recorded exit of the container.
    pub fn exit_watch(&self, id: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        exits
            .entry(id.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    fn notify_exit(&self, id: &str) {
        let exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = exits.get(id) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// The shim client of a container.
    pub fn shim(&self, id: &str) -> ShimClient {
        ShimClient::new(&self.paths.ctl_socket(id))
    }

    /// Publishes a container event with dockerd's attributes (name, image, labels).
    pub fn event(&self, rec: &Record, action: &str, extra: &[(&str, String)]) {
        let mut attrs: BTreeMap<String, String> = rec
            .config
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        attrs.insert("name".into(), rec.name.clone());
        attrs.insert("image".into(), rec.config.image.clone().unwrap_or_default());
        for (k, v) in extra {
            attrs.insert((*k).to_string(), v.clone());
        }
        self.events.publish("container", action, &rec.id, attrs);
    }

    /// Counts for `/info`: (all, running, paused, stopped).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let recs = self.recs();
        let running = recs
            .values()
            .filter(|r| r.state.status == record::Status::Running)
            .count();
        let paused = recs
            .values()
            .filter(|r| r.state.status == record::Status::Paused)
            .count();
        (recs.len(), running, paused, recs.len() - running - paused)
    }

    /// The container using an image, if any: (id, running) — for `rmi`.
    pub fn image_user(&self, image_id: &str) -> Option<(String, bool)> {
        let recs = self.recs();
        let mut users: Vec<&Record> = recs.values().filter(|r| r.image_id == image_id).collect();
        users.sort_by_key(|r| !r.state.status.is_live());
        users
            .first()
            .map(|r| (r.id.clone(), r.state.status.is_live()))
    }
}
