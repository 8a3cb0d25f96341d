//! The persisted container record and its lifecycle state machine.

use crate::error::{ApiError, ApiResult};
use berth_api::models::{ContainerCreateBody, HostConfig, NetworkingConfig};
use serde::{Deserialize, Serialize};

/// Docker's container states (`State.Status`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started (or start failed).
    Created,
    /// The init runs.
    Running,
    /// Frozen.
    Paused,
    /// Waiting for a restart-policy restart.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Removal failed half-way.
    Dead,
}

impl Status {
    /// The string in `State.Status` and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Whether a shim holds a live init.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

/// The mutable runtime state of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Lifecycle status.
    pub status: Status,
    /// Init pid (0 when not running).
    pub pid: i32,
    /// Last exit code.
    pub exit_code: i32,
    /// Last error (start failure).
    pub error: String,
    /// Last start, ns since epoch (0 = never).
    pub started_at_ns: i64,
    /// Last exit, ns since epoch (0 = never).
    pub finished_at_ns: i64,
    /// The last exit was an OOM kill.
    pub oom_killed: bool,
    /// Restarts done by the restart policy.
    pub restart_count: i64,
    /// Stopped by the user (for `unless-stopped` and daemon start-up).
    pub manually_stopped: bool,
    /// Pid of the shim holding the container (0 = none).
    pub shim_pid: i32,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at_ns: 0,
            finished_at_ns: 0,
            oom_killed: false,
            restart_count: 0,
            manually_stopped: false,
            shim_pid: 0,
        }
    }
}

impl State {
    /// Checks that a start is allowed (304 when already running).
    pub fn check_start(&self, id: &str) -> ApiResult<()> {
        match self.status {
            Status::Running => Err(ApiError::NotModified),
            Status::Paused => Err(ApiError::Conflict(
                "cannot start a paused container, try unpause instead".into(),
            )),
            Status::Removing | Status::Dead => Err(ApiError::Conflict(format!(
                "container {id} is marked for removal and cannot be started"
            ))),
            _ => Ok(()),
        }
    }

    /// Records a successful start.
    pub fn started(&mut self, pid: i32, shim_pid: i32, now_ns: i64) {
        self.status = Status::Running;
        self.pid = pid;
        self.shim_pid = shim_pid;
        self.started_at_ns = now_ns;
        self.error.clear();
        self.exit_code = 0;
        self.oom_killed = false;
    }

    /// Records an exit.
    pub fn exited(&mut self, code: i32, oom: bool, at_ns: i64) {
        self.status = Status::Exited;
        self.pid = 0;
        self.shim_pid = 0;
        self.exit_code = code;
        self.oom_killed = oom;
        self.finished_at_ns = at_ns;
    }

    /// Records a failed start (the container stays created/exited with the error).
    pub fn start_failed(&mut self, code: i32, error: &str, at_ns: i64) {
        self.status = if self.started_at_ns == 0 {
            Status::Created
        } else {
            Status::Exited
        };
        self.pid = 0;
        self.exit_code = code;
        self.error = error.to_string();
        self.finished_at_ns = at_ns;
    }
}

/// Everything berth persists about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// 64-hex id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// Creation time, ns since epoch.
    pub created_ns: i64,
    /// Image id (`sha256:…`).
    pub image_id: String,
    /// The container's Config (the create body merged with the image defaults); its
    /// HostConfig and NetworkingConfig are kept apart below.
    pub config: ContainerCreateBody,
    /// HostConfig with defaults filled.
    pub host_config: HostConfig,
    /// Endpoint settings requested at create.
    pub networking: Option<NetworkingConfig>,
    /// Runtime state.
    pub state: State,
    /// The network attachment once set up (opaque to this module).
    pub attachment: Option<serde_json::Value>,
    /// Attachments of the networks joined with `docker network connect` (opaque here).
    #[serde(default)]
    pub extra_attachments: Vec<serde_json::Value>,
    /// Exec ids that belong to this container.
    #[serde(default)]
    pub exec_ids: Vec<String>,
    /// The elastic-memory controller's last action on this container.
    #[serde(default)]
    pub elastic: Option<crate::resources::elastic::ElasticStatus>,
    /// The lxcfs mount point whose files this run of the container gets (`--lxcfs`, not
    /// opted out): bound at start when lxcfs served, re-attached by the lxcfs watcher after
    /// lxcfs (re)appeared. Set at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxcfs: Option<std::path::PathBuf>,
}

impl Record {
    /// The 12-hex short id.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// `Config.Tty`.
    pub fn tty(&self) -> bool {
        self.config.tty.unwrap_or(false)
    }

    /// The restart policy name and retry limit.
    pub fn restart_policy(&self) -> (String, i64) {
        let p = self.host_config.restart_policy.as_ref();
        let name = p
            .and_then(|p| p.name.as_ref())
            .map(|n| n.to_string())
            .unwrap_or_default();
        let max = p.and_then(|p| p.maximum_retry_count).unwrap_or(0);
        (if name.is_empty() { "no".into() } else { name }, max)
    }

    /// Whether the restart policy restarts the container after this exit.
    pub fn should_restart(&self, exit_code: i32) -> bool {
        if self.state.manually_stopped || self.host_config.auto_remove == Some(true) {
            return false;
        }
        let (name, max) = self.restart_policy();
        match name.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => exit_code != 0 && (max <= 0 || self.state.restart_count < max),
            _ => false,
        }
    }

    /// The stop signal (`Config.StopSignal`, default SIGTERM).
    pub fn stop_signal(&self) -> String {
        self.config
            .stop_signal
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "SIGTERM".into())
    }

    /// The stop timeout in seconds (`Config.StopTimeout`, default 10).
    pub fn stop_timeout(&self) -> i64 {
        self.config.stop_timeout.unwrap_or(10)
    }
}

/// Parses a signal given as a name (`TERM`, `SIGTERM`, `sigkill`) or a number.
pub fn parse_signal(s: &str) -> ApiResult<i32> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(ApiError::BadRequest(format!("Invalid signal: {s}")));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN+") {
        if let Ok(n) = rest.parse::<i32>() {
            return Ok(libc::SIGRTMIN() + n);
        }
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| ApiError::BadRequest(format!("Invalid signal: {s}")))
}

/// Docker's `HumanDuration` (go-units), used in `Status` strings.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let m = s / 60;
    if m == 1 {
        return "About a minute".into();
    }
    if m < 60 {
        return format!("{m} minutes");
    }
    let h = (s as f64 / 3600.0).round() as i64;
    if h == 1 {
        return "About an hour".into();
    }
    if h < 48 {
        return format!("{h} hours");
    }
    if h < 24 * 7 * 2 {
        return format!("{} days", h / 24);
    }
    if h < 24 * 30 * 2 {
        return format!("{} weeks", h / 24 / 7);
    }
    if h < 24 * 365 * 2 {
        return format!("{} months", h / 24 / 30);
    }
    format!("{} years", h / 24 / 365)
}

/// The `Status` column of `docker ps` (moby's `State.String()`).
pub fn status_string(st: &State, now_ns: i64) -> String {
    let ago = |t: i64| human_duration((now_ns - t) / 1_000_000_000);
    match st.status {
        Status::Running => format!("Up {}", ago(st.started_at_ns)),
        Status::Paused => format!("Up {} (Paused)", ago(st.started_at_ns)),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            st.exit_code,
            ago(st.finished_at_ns)
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
        Status::Created => "Created".into(),
        Status::Exited => {
            if st.finished_at_ns == 0 {
                "Created".into()
            } else {
                format!("Exited ({}) {} ago", st.exit_code, ago(st.finished_at_ns))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() -> ApiResult<()> {
        assert_eq!(parse_signal("TERM")?, 15);
        assert_eq!(parse_signal("SIGKILL")?, 9);
        assert_eq!(parse_signal("usr1")?, 10);
        assert_eq!(parse_signal("15")?, 15);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        Ok(())
    }

    #[test]
    fn human_durations_match_go_units() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(300), "5 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }

    #[test]
    fn state_machine_guards_and_status_strings() {
        let mut st = State::default();
        assert!(st.check_start("x").is_ok());
        assert_eq!(status_string(&st, 0), "Created");
        st.started(10, 9, 1_000_000_000);
        assert_eq!(st.check_start("x"), Err(ApiError::NotModified));
        assert_eq!(status_string(&st, 6_000_000_000), "Up 5 seconds");
        st.exited(3, false, 2_000_000_000);
        assert_eq!(
            status_string(&st, 4_000_000_000),
            "Exited (3) 2 seconds ago"
        );
        assert!(st.check_start("x").is_ok());
        st.status = Status::Paused;
        assert!(matches!(st.check_start("x"), Err(ApiError::Conflict(_))));
    }

    fn rec(policy: &str, max: i64) -> Record {
        let hc = HostConfig {
            restart_policy: Some(berth_api::models::RestartPolicy {
                name: policy.parse().ok(),
                maximum_retry_count: Some(max),
            }),
            ..Default::default()
        };
        Record {
            id: "a".repeat(64),
            name: "n".into(),
            created_ns: 0,
            image_id: String::new(),
            config: ContainerCreateBody::default(),
            host_config: hc,
            networking: None,
            state: State::default(),
            attachment: None,
            extra_attachments: Vec::new(),
            lxcfs: None,
            exec_ids: vec![],
            elastic: None,
        }
    }

    #[test]
    fn restart_policies_decide_like_dockerd() {
        assert!(!rec("no", 0).should_restart(1));
        assert!(rec("always", 0).should_restart(0));
        let mut r = rec("on-failure", 2);
        assert!(!r.should_restart(0));
        assert!(r.should_restart(1));
        r.state.restart_count = 2;
        assert!(!r.should_restart(1));
        let mut r = rec("unless-stopped", 0);
        r.state.manually_stopped = true;
        assert!(!r.should_restart(1));
    }
}

/// Builders shared by unit tests of the container module.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// A created record with empty config.
    pub fn record() -> Record {
        Record {
            id: "ab".repeat(32),
            name: "test".into(),
            created_ns: 0,
            image_id: "sha256:00".into(),
            config: ContainerCreateBody::default(),
            host_config: HostConfig::default(),
            networking: None,
            state: State::default(),
            attachment: None,
            extra_attachments: Vec::new(),
            lxcfs: None,
            exec_ids: vec![],
            elastic: None,
        }
    }
}
