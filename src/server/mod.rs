//! The API server: the daemon's shared state, the accept loops and the router.

pub mod containers;
pub mod df;
pub mod events;
pub mod http;
pub mod images;
pub mod networks;
pub mod router;
pub mod system;
pub mod upgrade;

use crate::config::Config;
use crate::container::{Containers, Paths};
use crate::events::EventBus;
use crate::image::ImageStore;
use crate::network::{NetConfig, NetworkManager};
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;

/// Everything a handler can reach.
pub struct Daemon {
    /// Effective configuration.
    pub config: Config,
    /// Metadata store.
    pub store: Store,
    /// Event bus.
    pub events: Arc<EventBus>,
    /// Daemon id (stable across restarts).
    pub id: String,
    /// The local image store.
    pub images: Arc<ImageStore>,
    /// Networking.
    pub net: Arc<NetworkManager>,
    /// Containers.
    pub containers: Arc<Containers>,
    /// This generation's gate (live upgrade).
    pub gate: Arc<http::Gate>,
    /// The control channel to the master, when there is one.
    pub ctl: Option<crate::worker::CtlOut>,
}

/// Object counts for `/info`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// All containers.
    pub containers: usize,
    /// Running ones.
    pub running: usize,
    /// Paused ones.
    pub paused: usize,
    /// Stopped ones.
    pub stopped: usize,
    /// Images.
    pub images: usize,
}

impl Daemon {
    /// Object counts for `/info` (containers and images are wired in by their modules).
    pub fn counts(&self) -> Counts {
        let (containers, running, paused, stopped) = self.containers.counts();
        Counts {
            containers,
            running,
            paused,
            stopped,
            images: self.images.count(),
        }
    }

    /// Opens the store and builds the shared state.
    pub async fn open(
        config: Config,
        gate: Arc<http::Gate>,
        ctl: Option<crate::worker::CtlOut>,
        clean_takeover: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let t0 = std::time::Instant::now();
        for d in [&config.data_root, &config.exec_root] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let store = Store::open_waiting(&config.data_root.join("store")).await?;
        let meta = store.table("meta")?;
        let id = match meta.get::<String>("daemon_id")? {
            Some(id) => id,
            None => {
                let id = crate::server::system::new_daemon_id();
                meta.put("daemon_id", &id)?;
                id
            }
        };
        let t_store = t0.elapsed();
        let events = Arc::new(EventBus::open(&config.exec_root.join("events")));
        let images = Arc::new(
            ImageStore::open(&config.data_root.join("image"), &store, events.clone())
                .context("open image store")?,
        );
        let net = Arc::new(
            NetworkManager::open(
                NetConfig {
                    bridge: config.bridge.clone(),
                    bip: config.bip.clone(),
                    nft_table: config.nft_table.clone(),
                    exec_root: config.exec_root.clone(),
                    sriov_sysfs_root: config.sriov_sysfs_root.clone(),
                },
                &store,
                !clean_takeover,
            )
            .await
            .context("set up networking")?,
        );
        let t_net = t0.elapsed();
        // The host's cgroup features, read once: create and start check resources against them.
        let host = crate::container::spec::HostInfo::get();
        tracing::debug!(cgroup_v2 = host.cgroup_v2, cgroups = ?host.cgroups, ncpu = host.ncpu, "host features");
        let paths = Paths {
            data_root: config.data_root.clone(),
            exec_root: config.exec_root.clone(),
            shim_binary: config.shim_binary.clone(),
            cgroup_parent: config.cgroup_parent.clone(),
            log_opts: config.log_opts.clone(),
            lxcfs: config.lxcfs.clone(),
        };
        let cpus = crate::resources::cpus::Topology::read(&config.sysfs_root)
            .map_err(anyhow::Error::from)
            .and_then(|topo| {
                Ok(crate::resources::cpus::CpuManager::open(
                    &store,
                    topo,
                    config.reserved_cpus.clone(),
                )?)
            })
            .context("set up CPU placement")?;
        let containers = Containers::open(
            &store,
            paths,
            events.clone(),
            images.clone(),
            net.clone(),
            gate.clone(),
            crate::container::egress::EgressPolicy {
                shaper: Default::default(),
                default_rate: config.default_egress_rate,
            },
            crate::container::cpus::CpuPolicy::new(cpus, crate::resources::Cgroups::detect()),
        )
        .context("open container records")?;
        if let Some(cfg) = &config.elastic_memory {
            let mem = crate::resources::elastic::cgmem::CgroupMemory::new(
                crate::resources::Cgroups::detect(),
            );
            let e =
                crate::resources::elastic::Elastic::open(cfg.clone(), mem, &config.cgroup_parent)?;
            let _ = containers.elastic.set(Arc::new(e));
        }
        tracing::debug!(store = ?t_store, net = ?t_net, all = ?t0.elapsed(), "daemon state opened");
        let weak = Arc::downgrade(&containers);
        images.set_in_use_checker(Arc::new(move |image_id: &str| {
            weak.upgrade().and_then(|c| c.image_user(image_id))
        }));
        Ok(Arc::new(Daemon {
            config,
            store,
            events,
            id,
            images,
            net,
            containers,
            gate,
            ctl,
        }))
    }
}

/// Sets up logging to stderr (`BERTH_LOG` overrides the level).
pub fn init_tracing(level: &str) {
    let level = match level {
        "fatal" => "error",
        l => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},sled=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// glibc gives every thread its own malloc arena; a daemon that is idle most of the time
/// does not need more than two, and each costs resident memory.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
