//! Daemon configuration: dockerd's flags (clap) merged with a daemon.json file
//! (`--config-file`); a flag given on the command line wins over the file.

use crate::network::shaping::{parse_rate, Rate};
use crate::resources::cpus::{reserved_from_flag, CpuSet};
use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// Command-line flags, named as dockerd names them.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "berthd",
    version,
    about = "berth container-host daemon (Docker Engine API 1.41)"
)]
pub struct Flags {
    /// Daemon socket(s) to listen on: unix://PATH or fd:// (systemd socket activation).
    #[arg(short = 'H', long = "host", env = "BERTH_HOST")]
    pub hosts: Vec<String>,
    /// Root of persistent state (images, containers, store).
    #[arg(long, env = "BERTH_DATA_ROOT")]
    pub data_root: Option<PathBuf>,
    /// Root of runtime state (shim sockets, netns, runtime state).
    #[arg(long, env = "BERTH_EXEC_ROOT")]
    pub exec_root: Option<PathBuf>,
    /// Write the daemon's PID here.
    #[arg(short = 'p', long)]
    pub pidfile: Option<PathBuf>,
    /// daemon.json-style configuration file.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Log level: debug, info, warn, error, fatal.
    #[arg(short = 'l', long)]
    pub log_level: Option<String>,
    /// Address and prefix of the default bridge (e.g. 172.17.0.1/16).
    #[arg(long)]
    pub bip: Option<String>,
    /// Name of the default bridge device (berth: the device is created when missing).
    #[arg(short = 'b', long = "bridge")]
    pub bridge: Option<String>,
    /// Name of berth's own nftables table (inet family).
    #[arg(long, env = "BERTH_NFT_TABLE")]
    pub nft_table: Option<String>,
    /// Path of the berth-shim binary (default: beside berthd).
    #[arg(long, env = "BERTH_SHIM")]
    pub shim_binary: Option<PathBuf>,
    /// Parent cgroup of all containers (the pool).
    #[arg(long, env = "BERTH_CGROUP_PARENT")]
    pub cgroup_parent: Option<String>,
    /// Egress rate of containers without a `berth.egress.rate` label, in tc syntax
    /// (e.g. 100mbit); unset or 0: not shaped.
    #[arg(long, env = "BERTH_DEFAULT_EGRESS_RATE", value_name = "RATE")]
    pub default_egress_rate: Option<String>,
    /// Turn on the elastic-memory controller; OPTS: `pool-size=SIZE,reserve=SIZE,
    /// low-headroom=SIZE|N%,critical-headroom=SIZE|N%,interval-ms=N` (defaults: host memory
    /// minus 10% (at least 512 MiB), 10% and 3% of the pool, 100 ms).
    #[arg(long, env = "BERTH_ELASTIC_MEMORY", value_name = "OPTS", num_args = 0..=1, default_missing_value = "")]
    pub elastic_memory: Option<String>,
    /// Root of the sysfs tree the sriov network driver reads (tests: a fake tree whose
    /// VFs are veths; PF-side VF settings are then skipped).
    #[arg(long, env = "BERTH_SRIOV_SYSFS_ROOT", hide = true, value_name = "PATH")]
    pub sriov_sysfs_root: Option<PathBuf>,
    /// Bind lxcfs's `/proc` files (meminfo, cpuinfo, stat, …) into containers so they show
    /// the container's limits; PATH is lxcfs's mount point (default /var/lib/lxcfs).
    #[arg(
        long,
        env = "BERTH_LXCFS",
        value_name = "PATH",
        num_args = 0..=1,
        default_missing_value = DEFAULT_LXCFS
    )]
    pub lxcfs: Option<PathBuf>,
    /// CPUs no container gets unless it names them with --cpuset-cpus (e.g. the CPUs that
    /// serve NIC interrupts), as a list like 0-1,8-9.
    #[arg(long, env = "BERTH_RESERVED_CPUS", value_name = "LIST")]
    pub reserved_cpus: Option<String>,
    /// Root of the sysfs tree the CPU topology is read from (tests: a fake tree).
    #[arg(long, env = "BERTH_SYSFS_ROOT", hide = true, value_name = "PATH")]
    pub sysfs_root: Option<PathBuf>,
    /// A registry (`host[:port]`) or network (CIDR) reached over plain HTTP; repeatable.
    /// Loopback registries always are.
    #[arg(
        long = "insecure-registry",
        env = "BERTH_INSECURE_REGISTRIES",
        value_name = "REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// A registry mirror (`http[s]://host[:port]`) tried before Docker Hub for its images;
    /// repeatable, tried in order.
    #[arg(
        long = "registry-mirror",
        env = "BERTH_REGISTRY_MIRRORS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// A command instead of running the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `berthd <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Replace the running daemon's worker by a new binary without interrupting anything.
    Upgrade(crate::upgrade_cli::UpgradeArgs),
    /// Print what this binary supports (store format, protocols) as JSON; used by a
    /// running master before it upgrades to this binary.
    #[command(hide = true)]
    Preflight,
    /// Re-attaches lxcfs files in a running container after lxcfs restarted (run by the
    /// daemon: it must be single-threaded to enter the container's mount namespace).
    #[command(hide = true)]
    LxcfsReattach(crate::lxcfs::reattach::ReattachArgs),
}

/// lxcfs's usual mount point (`--lxcfs` without a path).
pub const DEFAULT_LXCFS: &str = "/var/lib/lxcfs";

/// daemon.json `lxcfs`: `true` (the default mount point), `false`, or a path.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum LxcfsKey {
    On(bool),
    Path(PathBuf),
}

/// The subset of daemon.json keys berth reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    hosts: Option<Vec<String>>,
    data_root: Option<PathBuf>,
    exec_root: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    log_level: Option<String>,
    bip: Option<String>,
    bridge: Option<String>,
    nft_table: Option<String>,
    shim_binary: Option<PathBuf>,
    cgroup_parent: Option<String>,
    default_egress_rate: Option<String>,
    elastic_memory: Option<crate::resources::elastic::FileElastic>,
    reserved_cpus: Option<String>,
    log_driver: Option<String>,
    log_opts: Option<HashMap<String, String>>,
    lxcfs: Option<LxcfsKey>,
    insecure_registries: Option<Vec<String>>,
    registry_mirrors: Option<Vec<String>>,
    #[serde(default)]
    debug: bool,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses.
    pub hosts: Vec<String>,
    /// Persistent root.
    pub data_root: PathBuf,
    /// Runtime root.
    pub exec_root: PathBuf,
    /// PID file.
    pub pidfile: Option<PathBuf>,
    /// tracing filter.
    pub log_level: String,
    /// Default bridge address/prefix.
    pub bip: Option<String>,
    /// Default bridge device name.
    pub bridge: String,
    /// nftables table name.
    pub nft_table: String,
    /// berth-shim binary.
    pub shim_binary: PathBuf,
    /// Container cgroup pool (absolute cgroup path).
    pub cgroup_parent: String,
    /// Default log options for containers (`max-size`, `max-file`).
    pub log_opts: HashMap<String, String>,
    /// Egress rate of containers that set none (`--default-egress-rate`); `None`: not shaped.
    pub default_egress_rate: Option<Rate>,
    /// `--sriov-sysfs-root` (`/sys`).
    pub sriov_sysfs_root: PathBuf,
    /// The elastic-memory controller's settings; `None`: off.
    pub elastic_memory: Option<crate::resources::elastic::ElasticConfig>,
    /// `--lxcfs`: lxcfs's mount point, when containers get its files.
    pub lxcfs: Option<PathBuf>,
    /// `--reserved-cpus`, checked against the online CPUs.
    pub reserved_cpus: CpuSet,
    /// `--sysfs-root` (`/sys`): where the CPU topology is read.
    pub sysfs_root: PathBuf,
    /// `--insecure-registry`: registries and networks pulled from over plain HTTP.
    pub insecure_registries: crate::image::pull::Insecure,
    /// `--registry-mirror`: mirrors of Docker Hub, in order.
    pub registry_mirrors: Vec<crate::image::pull::mirror::Mirror>,
}

impl Config {
    /// Merges flags over the optional file and fills defaults.
    pub fn load(flags: Flags) -> anyhow::Result<Self> {
        let file = match &flags.config_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("read config file {}", p.display()))?;
                serde_json::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parse config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        if let Some(d) = &file.log_driver {
            if d != "json-file" {
                bail!("log driver {d:?} is not supported (only json-file)");
            }
        }
        let hosts = if !flags.hosts.is_empty() {
            flags.hosts
        } else {
            file.hosts
                .unwrap_or_else(|| vec!["unix:///run/berth/berth.sock".into()])
        };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("/usr/bin"));
        let log_level = flags.log_level.or(file.log_level).unwrap_or_else(|| {
            if file.debug {
                "debug".into()
            } else {
                "info".into()
            }
        });
        let bridge = flags
            .bridge
            .or(file.bridge)
            .unwrap_or_else(|| "berth0".into());
        let nft_table = flags
            .nft_table
            .or(file.nft_table)
            .unwrap_or_else(|| "berth".into());
        let default_egress_rate = match flags.default_egress_rate.or(file.default_egress_rate) {
            Some(r) => {
                let rate = parse_rate(&r, "--default-egress-rate").map_err(anyhow::Error::msg)?;
                (rate.0 > 0).then_some(rate)
            }
            None => None,
        };
        let host_memory = crate::resources::elastic::config::host_memory();
        let elastic_memory = match (&flags.elastic_memory, &file.elastic_memory) {
            (Some(opts), _) => Some(
                crate::resources::elastic::ElasticConfig::parse(opts, host_memory)
                    .map_err(anyhow::Error::msg)?,
            ),
            (None, Some(f)) => crate::resources::elastic::ElasticConfig::from_file(f, host_memory)
                .map_err(anyhow::Error::msg)?,
            (None, None) => None,
        };
        let lxcfs = match (flags.lxcfs, file.lxcfs) {
            (Some(p), _) | (None, Some(LxcfsKey::Path(p))) => Some(p),
            (None, Some(LxcfsKey::On(true))) => Some(PathBuf::from(DEFAULT_LXCFS)),
            (None, Some(LxcfsKey::On(false)) | None) => None,
        };
        if let Some(p) = lxcfs.as_ref().filter(|p| !p.is_absolute()) {
            bail!("--lxcfs: {} is not an absolute path", p.display());
        }
        let sysfs_root = flags.sysfs_root.unwrap_or_else(|| "/sys".into());
        let reserved_cpus = match flags.reserved_cpus.or(file.reserved_cpus) {
            Some(list) => reserved_from_flag(&list, &sysfs_root).map_err(anyhow::Error::msg)?,
            None => CpuSet::new(),
        };
        let mut insecure = flags.insecure_registries;
        insecure.extend(file.insecure_registries.unwrap_or_default());
        let insecure_registries =
            crate::image::pull::Insecure::parse(&insecure).map_err(anyhow::Error::msg)?;
        let mut mirrors = flags.registry_mirrors;
        mirrors.extend(file.registry_mirrors.unwrap_or_default());
        let registry_mirrors =
            crate::image::pull::mirror::parse(&mirrors).map_err(anyhow::Error::msg)?;
        Ok(Config {
            hosts,
            data_root: flags
                .data_root
                .or(file.data_root)
                .unwrap_or_else(|| "/var/lib/berth".into()),
            exec_root: flags
                .exec_root
                .or(file.exec_root)
                .unwrap_or_else(|| "/run/berth".into()),
            pidfile: flags.pidfile.or(file.pidfile),
            log_level,
            bip: flags.bip.or(file.bip),
            bridge,
            nft_table,
            shim_binary: flags
                .shim_binary
                .or(file.shim_binary)
                .unwrap_or_else(|| exe_dir.join("berth-shim")),
            cgroup_parent: flags
                .cgroup_parent
                .or(file.cgroup_parent)
                .unwrap_or_else(|| "/berth".into()),
            log_opts: file.log_opts.unwrap_or_default(),
            default_egress_rate,
            sriov_sysfs_root: flags.sriov_sysfs_root.unwrap_or_else(|| "/sys".into()),
            elastic_memory,
            lxcfs,
            reserved_cpus,
            sysfs_root,
            insecure_registries,
            registry_mirrors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("daemon.json");
        std::fs::write(
            &f,
            r#"{"data-root":"/file/root","bip":"10.9.0.1/24","log-opts":{"max-size":"1m"}}"#,
        )?;
        let flags = Flags::parse_from([
            "berthd",
            "--config-file",
            f.to_str().unwrap_or_default(),
            "--data-root",
            "/flag/root",
        ]);
        let c = Config::load(flags)?;
        assert_eq!(c.data_root, PathBuf::from("/flag/root"));
        assert_eq!(c.bip.as_deref(), Some("10.9.0.1/24"));
        assert_eq!(c.exec_root, PathBuf::from("/run/berth"));
        assert_eq!(c.hosts, vec!["unix:///run/berth/berth.sock".to_string()]);
        assert_eq!(c.log_opts.get("max-size").map(String::as_str), Some("1m"));
        Ok(())
    }

    #[test]
    fn default_egress_rate_is_parsed_as_tc_does() -> anyhow::Result<()> {
        let c = Config::load(Flags::parse_from([
            "berthd",
            "--default-egress-rate",
            "100mbit",
        ]))?;
        assert_eq!(c.default_egress_rate, Some(Rate(12_500_000)));
        let c = Config::load(Flags::parse_from(["berthd", "--default-egress-rate", "0"]))?;
        assert_eq!(c.default_egress_rate, None);
        let e = Config::load(Flags::parse_from([
            "berthd",
            "--default-egress-rate",
            "100mb",
        ]))
        .expect_err("bad unit");
        assert!(e
            .to_string()
            .starts_with("invalid --default-egress-rate \"100mb\""));
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("daemon.json");
        std::fs::write(&f, r#"{"default-egress-rate":"10mbit"}"#)?;
        let flags = Flags::parse_from(["berthd", "--config-file", f.to_str().unwrap_or_default()]);
        assert_eq!(
            Config::load(flags)?.default_egress_rate,
            Some(Rate(1_250_000))
        );
        Ok(())
    }

    #[test]
    fn lxcfs_takes_an_optional_path_from_the_flag_or_the_file() -> anyhow::Result<()> {
        let load = |args: &[&str]| Config::load(Flags::parse_from(args)).map(|c| c.lxcfs);
        assert_eq!(load(&["berthd"])?, None);
        assert_eq!(
            load(&["berthd", "--lxcfs"])?,
            Some(PathBuf::from(DEFAULT_LXCFS))
        );
        assert_eq!(
            load(&["berthd", "--lxcfs", "-H", "unix:///x"])?,
            Some(PathBuf::from(DEFAULT_LXCFS))
        );
        assert_eq!(
            load(&["berthd", "--lxcfs=/run/lx"])?,
            Some(PathBuf::from("/run/lx"))
        );
        assert!(load(&["berthd", "--lxcfs=rel/dir"]).is_err());
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("daemon.json");
        let from_file = |json: &str| -> anyhow::Result<Option<PathBuf>> {
            std::fs::write(&f, json)?;
            load(&["berthd", "--config-file", f.to_str().unwrap_or_default()])
        };
        assert_eq!(
            from_file(r#"{"lxcfs":true}"#)?,
            Some(PathBuf::from(DEFAULT_LXCFS))
        );
        assert_eq!(from_file(r#"{"lxcfs":false}"#)?, None);
        assert_eq!(
            from_file(r#"{"lxcfs":"/srv/lxcfs"}"#)?,
            Some(PathBuf::from("/srv/lxcfs"))
        );
        Ok(())
    }

    #[test]
    fn unknown_file_keys_are_an_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("daemon.json");
        std::fs::write(&f, r#"{"no-such-key":1}"#)?;
        let flags = Flags::parse_from(["berthd", "--config-file", f.to_str().unwrap_or_default()]);
        assert!(Config::load(flags).is_err());
        Ok(())
    }

    #[test]
    fn reserved_cpus_come_from_the_flag_or_the_file_and_must_be_online() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sys = dir.path().join("sys");
        crate::resources::cpus::fake::write(&sys, &crate::resources::cpus::fake::uneven())?;
        let sys_arg = sys.to_str().unwrap_or_default();
        let c = Config::load(Flags::parse_from([
            "berthd",
            "--sysfs-root",
            sys_arg,
            "--reserved-cpus",
            "0-1,9",
        ]))?;
        assert_eq!(c.reserved_cpus.to_string(), "0-1,9");
        assert_eq!(c.sysfs_root, sys);
        let f = dir.path().join("daemon.json");
        std::fs::write(&f, r#"{"reserved-cpus":"8"}"#)?;
        let from_file = Flags::parse_from([
            "berthd",
            "--config-file",
            f.to_str().unwrap_or_default(),
            "--sysfs-root",
            sys_arg,
        ]);
        assert_eq!(Config::load(from_file)?.reserved_cpus.to_string(), "8");
        let e = Config::load(Flags::parse_from([
            "berthd",
            "--sysfs-root",
            sys_arg,
            "--reserved-cpus",
            "8-12",
        ]))
        .expect_err("offline CPUs");
        assert_eq!(
            e.to_string(),
            "invalid --reserved-cpus 8-12: CPU 10-12 is not online (online: 0-9)"
        );
        assert!(Config::load(Flags::parse_from(["berthd"]))?
            .reserved_cpus
            .is_empty());
        Ok(())
    }
}
