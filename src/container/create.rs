//! `POST /containers/create`: validation, the image's defaults merged into the config,
//! HostConfig defaults as dockerd fills them, and the new record.

use super::record::{Record, State};
use super::{new_id, now_ns, Containers};
use crate::error::{ApiError, ApiResult};
use berth_api::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, RestartPolicy};
use std::collections::HashMap;

/// What an image contributes to a new container's config.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    /// `Env`.
    pub env: Vec<String>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
    /// `Labels`.
    pub labels: HashMap<String, String>,
    /// `ExposedPorts`.
    pub exposed_ports: Vec<String>,
    /// `Volumes`.
    pub volumes: Vec<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// Checks a container name as dockerd does.
pub fn validate_name(name: &str) -> ApiResult<String> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let mut chars = n.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {
            n.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
        _ => false,
    };
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    Ok(n.to_string())
}

/// Merges environment lists: `base` first, entries of `over` replace same-named ones.
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let key = |s: &str| s.split('=').next().unwrap_or("").to_string();
    let mut out: Vec<String> = base.to_vec();
    for e in over {
        let k = key(e);
        if let Some(slot) = out.iter_mut().find(|x| key(x) == k) {
            *slot = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// Fills the container config from the image as dockerd's `merge` does.
pub fn merge_config(body: &mut ContainerCreateBody, img: &ImageDefaults) {
    body.env = Some(merge_env(&img.env, body.env.as_deref().unwrap_or(&[])));
    let ep_given = body.entrypoint.as_ref().is_some_and(|e| !e.is_empty());
    if !ep_given {
        body.entrypoint = img.entrypoint.clone().filter(|e| !e.is_empty());
        if body.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            body.cmd = img.cmd.clone();
        }
    }
    if body.working_dir.as_deref().unwrap_or("").is_empty() {
        body.working_dir = Some(img.working_dir.clone());
    }
    if body.user.as_deref().unwrap_or("").is_empty() {
        body.user = Some(img.user.clone());
    }
    let mut labels = img.labels.clone();
    labels.extend(body.labels.take().unwrap_or_default());
    body.labels = Some(labels);
    let mut ports = img.exposed_ports.clone();
    for p in body.exposed_ports.take().unwrap_or_default() {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    body.exposed_ports = (!ports.is_empty()).then_some(ports);
    let mut vols = img.volumes.clone();
    for v in body.volumes.take().unwrap_or_default() {
        if !vols.contains(&v) {
            vols.push(v);
        }
    }
    body.volumes = (!vols.is_empty()).then_some(vols);
    if body.stop_signal.as_deref().unwrap_or("").is_empty() {
        body.stop_signal = img.stop_signal.clone();
    }
}

/// The host ports a container asks for (`-p`, and `-P` over `exposed`).
pub fn port_requests(
    hc: &HostConfig,
    exposed: Option<&Vec<String>>,
) -> ApiResult<Vec<crate::network::ports::PortRequest>> {
    let bindings = serde_json::to_value(&hc.port_bindings)?;
    crate::network::ports::requests(
        Some(&bindings),
        hc.publish_all_ports == Some(true),
        exposed.map(Vec::as_slice).unwrap_or(&[]),
    )
}

/// Validates HostConfig and fills dockerd's defaults.
pub fn fill_host_config(hc: &mut HostConfig, log_opts: &HashMap<String, String>) -> ApiResult<()> {
    if hc.network_mode.as_deref().unwrap_or("").is_empty() {
        hc.network_mode = Some("default".into());
    }
    let policy = hc.restart_policy.get_or_insert_with(RestartPolicy::default);
    let name = policy
        .name
        .as_ref()
        .map(|n| n.to_string())
        .unwrap_or_default();
    match name.as_str() {
        "" | "no" | "always" | "unless-stopped" => {
            if policy.maximum_retry_count.unwrap_or(0) != 0 {
                return Err(ApiError::BadRequest(format!(
                    "maximum retry count cannot be used with restart policy '{name}'"
                )));
            }
        }
        "on-failure" => {
            if policy.maximum_retry_count.unwrap_or(0) < 0 {
                return Err(ApiError::BadRequest(
                    "maximum retry count cannot be negative".into(),
                ));
            }
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid restart policy '{other}'"
            )))
        }
    }
    if name.is_empty() {
        policy.name = "no".parse().ok();
    }
    policy.maximum_retry_count.get_or_insert(0);
    if hc.auto_remove == Some(true) && !matches!(name.as_str(), "" | "no") {
        return Err(ApiError::BadRequest(
            "conflicting options: cannot specify both --restart and --rm".into(),
        ));
    }
    let log = hc
        .log_config
        .get_or_insert_with(HostConfigLogConfig::default);
    let typ = log.typ.clone().unwrap_or_default();
    if typ.is_empty() {
        log.typ = Some("json-file".into());
        let mut cfg = log_opts.clone();
        cfg.extend(log.config.take().unwrap_or_default());
        log.config = Some(cfg);
    } else if typ != "json-file" && typ != "none" {
        return Err(ApiError::BadRequest(format!(
            "logger: no log driver named '{typ}' is registered"
        )));
    }
    let cfg = log.config.get_or_insert_with(HashMap::new);
    for k in cfg.keys() {
        if !matches!(
            k.as_str(),
            "max-size" | "max-file" | "labels" | "env" | "compress" | "tag"
        ) {
            return Err(ApiError::BadRequest(format!(
                "unknown log opt '{k}' for json-file log driver"
            )));
        }
    }
    if let Some(s) = cfg.get("max-size") {
        parse_size(s).map_err(|_| ApiError::BadRequest(format!("invalid max-size {s:?}")))?;
    }
    if let Some(n) = cfg.get("max-file") {
        match n.parse::<u32>() {
            Ok(v) if v >= 1 => {}
            _ => return Err(ApiError::BadRequest(format!("invalid max-file {n:?}"))),
        }
    }
    if hc.shm_size.unwrap_or(0) <= 0 {
        hc.shm_size = Some(64 * 1024 * 1024);
    }
    if hc.runtime.as_deref().unwrap_or("").is_empty() {
        hc.runtime = Some("runc".into());
    }
    Ok(())
}

/// Parses a size like `10m`, `1g`, `512k`, `1024` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b');
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1024u64),
        Some('m') => (&t[..t.len() - 1], 1024 * 1024),
        Some('g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    if n < 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((n * mul as f64) as u64)
}

impl Containers {
    /// Creates a container; returns its record and dockerd's warnings for the response.
    pub fn create(
        &self,
        name: Option<&str>,
        mut body: ContainerCreateBody,
        image: (String, ImageDefaults),
    ) -> ApiResult<(Record, Vec<String>)> {
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => Some(validate_name(n)?),
            None => None,
        };
        let mut hc = body.host_config.take().unwrap_or_default();
        fill_host_config(&mut hc, &self.paths.log_opts)?;
        // dockerd's resource checks against the host, before anything exists.
        // Another container's exclusive cores are named before dockerd's availability
        // check: that message says more (and with a fake topology the host has fewer CPUs).
        if let Some(list) = hc.cpuset_cpus.as_deref().filter(|l| !l.is_empty()) {
            self.check_cpuset_update("", list)?;
        }
        let warnings = super::spec::verify::verify(&mut hc, super::spec::HostInfo::get())?;
        let networking = body.networking_config.take();
        // dockerd's validateContainerConfig: a stop signal it cannot parse is refused (400).
        if let Some(sig) = body.stop_signal.as_deref().filter(|s| !s.is_empty()) {
            super::record::parse_signal(sig)?;
        }
        let own_labels = body.labels.clone().unwrap_or_default();
        merge_config(&mut body, &image.1);
        // Bad port bindings are refused at create, as dockerd does (400).
        port_requests(&hc, body.exposed_ports.as_ref())?;
        super::egress::validate_create(
            body.labels.as_ref().unwrap_or(&own_labels),
            &own_labels,
            hc.network_mode.as_deref().unwrap_or(""),
            self.egress.default_rate,
        )?;
        crate::resources::elastic::validate_create(
            body.labels.as_ref(),
            hc.memory.unwrap_or(0),
            self.elastic.get().is_some(),
        )?;
        let has_cmd = body.entrypoint.as_ref().is_some_and(|e| !e.is_empty())
            || body.cmd.as_ref().is_some_and(|c| !c.is_empty());
        if !has_cmd {
            return Err(ApiError::BadRequest("No command specified".into()));
        }
        let id = new_id();
        if body.hostname.as_deref().unwrap_or("").is_empty() {
            // dockerd: a host-network container is named like the host, others by their id.
            body.hostname = Some(if hc.network_mode.as_deref() == Some("host") {
                nix::unistd::gethostname()
                    .map_err(|e| ApiError::internal("read the host's hostname", e))?
                    .to_string_lossy()
                    .into_owned()
            } else {
                id[..12].to_string()
            });
        }
        let name = match name {
            Some(n) => n,
            None => {
                let taken: std::collections::HashSet<String> =
                    self.recs().values().map(|r| r.name.clone()).collect();
                let base = generate_name(&id);
                if taken.contains(&base) {
                    format!("{base}_{}", &id[..6])
                } else {
                    base
                }
            }
        };
        let labels = body.labels.clone().unwrap_or_default();
        let cpus = self.claim_cpus(&id, &labels, &own_labels, &mut hc)?;
        let rec = Record {
            id: id.clone(),
            name: name.clone(),
            created_ns: now_ns(),
            image_id: image.0,
            config: body,
            host_config: hc,
            networking,
            state: State::default(),
            attachment: None,
            extra_attachments: Vec::new(),
            lxcfs: None,
            exec_ids: Vec::new(),
            elastic: None,
        };
        {
            // Name uniqueness is checked and claimed under the records lock.
            let mut recs = self.recs();
            if let Some(other) = recs.values().find(|r| r.name == name) {
                return Err(ApiError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
            recs.insert(id.clone(), rec.clone());
        }
        if let Err(e) = self.table.put(&id, &rec) {
            self.recs().remove(&id);
            return Err(e);
        }
        cpus.keep();
        super::rootfs::Rootfs::new(&self.paths.data_root, &id).prepare()?;
        let dir = self.paths.container_dir(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(&format!("create {}", dir.display()), e))?;
        self.event(&rec, "create", &[]);
        Ok((rec, warnings))
    }
}

/// A dockerd-style random name (`adjective_surname`).
pub fn generate_name(id: &str) -> String {
    const LEFT: &[&str] = &[
        "admiring",
        "brave",
        "clever",
        "dazzling",
        "eager",
        "focused",
        "gallant",
        "happy",
        "jolly",
        "keen",
        "loving",
        "modest",
        "nifty",
        "optimistic",
        "quirky",
        "relaxed",
        "serene",
        "tender",
        "upbeat",
        "vibrant",
        "wizardly",
        "youthful",
        "zealous",
    ];
    const RIGHT: &[&str] = &[
        "albattani",
        "babbage",
        "curie",
        "darwin",
        "euclid",
        "fermat",
        "galileo",
        "hopper",
        "jennings",
        "kepler",
        "lovelace",
        "mccarthy",
        "noether",
        "pascal",
        "ritchie",
        "shannon",
        "thompson",
        "turing",
        "wozniak",
        "yalow",
        "zuse",
    ];
    let b = hex::decode(&id[..8.min(id.len())]).unwrap_or_else(|_| vec![0; 4]);
    let l = LEFT[b.first().copied().unwrap_or(0) as usize % LEFT.len()];
    let r = RIGHT[b.get(1).copied().unwrap_or(0) as usize % RIGHT.len()];
    format!("{l}_{r}{}", b.get(2).copied().unwrap_or(0) % 10)
}

/// Reads the defaults a new container takes from an image's config (via its JSON form,
/// which has dockerd's field names).
pub fn image_defaults(img: &crate::image::ImageRecord) -> ImageDefaults {
    let v = serde_json::to_value(img.container_config()).unwrap_or_default();
    let strs = |k: &str| -> Option<Vec<String>> {
        v.get(k)?.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
    };
    let keys = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|o| o.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    ImageDefaults {
        env: strs("Env").unwrap_or_default(),
        cmd: strs("Cmd"),
        entrypoint: strs("Entrypoint"),
        working_dir: s("WorkingDir"),
        user: s("User"),
        labels: v
            .get("Labels")
            .and_then(|o| o.as_object())
            .map(|o| {
                o.iter()
                    .map(|(k, x)| (k.clone(), x.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        exposed_ports: keys("ExposedPorts"),
        volumes: keys("Volumes"),
        stop_signal: Some(s("StopSignal")).filter(|x| !x.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockerd_rules() {
        assert_eq!(validate_name("/web-1").ok().as_deref(), Some("web-1"));
        assert!(validate_name("a").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        let e = validate_name("bad/name").expect_err("slash");
        assert!(e
            .to_string()
            .starts_with("Invalid container name (bad/name)"));
    }

    #[test]
    fn config_takes_image_defaults_unless_overridden() {
        let img = ImageDefaults {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cmd: Some(vec!["sh".into()]),
            entrypoint: None,
            working_dir: "/srv".into(),
            labels: HashMap::from([("x".to_string(), "1".to_string())]),
            stop_signal: Some("SIGUSR1".into()),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            env: Some(vec!["A=2".into(), "B".into()]),
            ..Default::default()
        };
        merge_config(&mut body, &img);
        assert_eq!(
            body.env,
            Some(vec!["PATH=/bin".into(), "A=2".into(), "B".into()])
        );
        assert_eq!(body.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGUSR1"));
        let mut body = ContainerCreateBody {
            entrypoint: Some(vec!["/bin/echo".into()]),
            ..Default::default()
        };
        merge_config(&mut body, &img);
        assert_eq!(
            body.cmd, None,
            "an overridden entrypoint drops the image's Cmd"
        );
    }

    #[test]
    fn host_config_defaults_and_conflicts() -> ApiResult<()> {
        let mut hc = HostConfig::default();
        fill_host_config(
            &mut hc,
            &HashMap::from([("max-size".to_string(), "1m".to_string())]),
        )?;
        assert_eq!(hc.network_mode.as_deref(), Some("default"));
        assert_eq!(hc.shm_size, Some(67108864));
        let log = hc.log_config.clone().unwrap_or_default();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(
            log.config
                .unwrap_or_default()
                .get("max-size")
                .map(String::as_str),
            Some("1m")
        );
        let mut hc = HostConfig {
            auto_remove: Some(true),
            restart_policy: Some(RestartPolicy {
                name: "always".parse().ok(),
                maximum_retry_count: Some(0),
            }),
            ..Default::default()
        };
        assert!(fill_host_config(&mut hc, &HashMap::new()).is_err());
        assert_eq!(parse_size("1m"), Ok(1048576));
        assert_eq!(parse_size("10k"), Ok(10240));
        assert!(parse_size("x").is_err());
        Ok(())
    }
}
