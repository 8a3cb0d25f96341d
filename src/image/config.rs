//! Image configuration JSON: the OCI/Docker image config file (`architecture`, `config`,
//! `rootfs`, `history`, …) and the container-config object inside it, serialized the way
//! dockerd's Go structs serialize (every non-`omitempty` field present, `null` for unset
//! lists and maps) so inspect output matches dockerd's.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A set of keys serialized as `{"k":{}}` (ports, volumes).
pub type KeySet = BTreeMap<String, serde_json::Value>;

/// The container configuration stored in an image (Go's `container.Config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// Hostname.
    #[serde(default, deserialize_with = "null_default")]
    pub hostname: String,
    /// Domain name.
    #[serde(default, deserialize_with = "null_default")]
    pub domainname: String,
    /// User (`uid[:gid]` or name).
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// Attach stdin.
    #[serde(default, deserialize_with = "null_default")]
    pub attach_stdin: bool,
    /// Attach stdout.
    #[serde(default, deserialize_with = "null_default")]
    pub attach_stdout: bool,
    /// Attach stderr.
    #[serde(default, deserialize_with = "null_default")]
    pub attach_stderr: bool,
    /// Exposed ports (`80/tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<KeySet>,
    /// Allocate a TTY.
    #[serde(default, deserialize_with = "null_default")]
    pub tty: bool,
    /// Keep stdin open.
    #[serde(default, deserialize_with = "null_default")]
    pub open_stdin: bool,
    /// Close stdin after one attach.
    #[serde(default, deserialize_with = "null_default")]
    pub stdin_once: bool,
    /// Environment, `K=V`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Default command.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Health check, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// Windows-only flag, kept verbatim.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub args_escaped: bool,
    /// Image name (legacy).
    #[serde(default, deserialize_with = "null_default")]
    pub image: String,
    /// Anonymous volumes.
    #[serde(default)]
    pub volumes: Option<KeySet>,
    /// Working directory.
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Network disabled.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub network_disabled: bool,
    /// MAC address (legacy).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
    /// ONBUILD triggers.
    #[serde(default)]
    pub on_build: Option<Vec<String>>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Stop timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// Shell for shell-form commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command that created the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether the step created no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

/// The `rootfs` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub typ: String,
    /// Uncompressed layer digests, bottom first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

/// An image config file (the blob whose digest is the image id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// CPU architecture (`amd64`).
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// Architecture variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment (set by import and commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Container defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// Id of the container the image was committed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Config of that container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_config: Option<ContainerConfig>,
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Version of the engine that built it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    /// Layer history.
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<History>,
    /// Operating system (`linux`).
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    /// The layers.
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfigFile {
    /// The container defaults (empty when the image has none).
    pub fn container_defaults(&self) -> ContainerConfig {
        self.config.clone().unwrap_or_default()
    }

    /// Creation time as unix seconds (0 when missing or unparsable).
    pub fn created_unix(&self) -> i64 {
        self.created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|t| t.timestamp())
            .unwrap_or(0)
    }

    /// Creation time in nanoseconds, for ordering.
    pub fn created_nanos(&self) -> i64 {
        self.created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or(0)
    }
}

/// The current time in dockerd's RFC 3339 nanosecond format.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Go's zero `time.Time`, as dockerd prints an unset time.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_config_serializes_like_go() -> anyhow::Result<()> {
        let c = ContainerConfig {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let v = serde_json::to_value(&c)?;
        assert_eq!(v["Cmd"][0], "sh");
        assert!(v["Env"].is_null());
        assert!(v.get("Env").is_some());
        assert!(v.get("ExposedPorts").is_none());
        assert!(v.get("StopSignal").is_none());
        assert_eq!(v["WorkingDir"], "");
        let parsed: ContainerConfig = serde_json::from_str(
            r#"{"User":null,"Env":["A=1"],"ExposedPorts":{"80/tcp":{}},"Unknown":1}"#,
        )?;
        assert_eq!(parsed.env, Some(vec!["A=1".to_string()]));
        assert!(parsed
            .exposed_ports
            .is_some_and(|p| p.contains_key("80/tcp")));
        Ok(())
    }

    #[test]
    fn config_files_parse_created_times() -> anyhow::Result<()> {
        let f: ImageConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","created":"2026-11-23T09:23:09.69149349Z","rootfs":{"type":"layers","diff_ids":["sha256:ab"]},"history":null}"#,
        )?;
        assert_eq!(f.created_unix(), 1795425789);
        assert_eq!(f.rootfs.diff_ids.len(), 1);
        Ok(())
    }
}
