//! What a load run does: the socket, the clients, the op mix and the container cycle.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The Docker API version prefix of every request path.
pub const API_PREFIX: &str = "/v1.41";

/// Relative weights of the operations a client picks from before each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// `GET /_ping`.
    pub ping: u32,
    /// `GET /containers/json?all=1`.
    pub list: u32,
    /// `GET /containers/{id}/json` on a random id of [`Config::inspect_ids`] or of the
    /// containers running when the run starts.
    pub inspect: u32,
    /// create + start + force-delete of one container (three recorded requests).
    pub cycle: u32,
}

impl Default for Mix {
    /// `ping=4,list=2,inspect=3,cycle=1`.
    fn default() -> Self {
        Mix {
            ping: 4,
            list: 2,
            inspect: 3,
            cycle: 1,
        }
    }
}

impl Mix {
    /// The sum of the weights.
    pub fn total(&self) -> u32 {
        self.ping + self.list + self.inspect + self.cycle
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    /// Parses `ping=4,list=2,inspect=3,cycle=1`; weights left out are 0.
    fn from_str(s: &str) -> Result<Self> {
        let mut mix = Mix {
            ping: 0,
            list: 0,
            inspect: 0,
            cycle: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("mix entry {part:?}: expected op=weight"))?;
            let weight: u32 = value
                .trim()
                .parse()
                .with_context(|| format!("mix entry {part:?}: weight is not a number"))?;
            match key.trim() {
                "ping" => mix.ping = weight,
                "list" => mix.list = weight,
                "inspect" => mix.inspect = weight,
                "cycle" => mix.cycle = weight,
                other => {
                    bail!("mix entry {part:?}: unknown op {other:?} (ping, list, inspect, cycle)")
                }
            }
        }
        if mix.total() == 0 {
            bail!("mix {s:?}: all weights are 0");
        }
        Ok(mix)
    }
}

/// A load run's configuration. `Config::new(socket)` gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The daemon's unix socket.
    pub socket: PathBuf,
    /// Concurrent clients (default 32).
    pub clients: usize,
    /// Fraction of the clients that open a fresh connection per request; the rest keep one
    /// connection alive (default 0.5). Rounded to the nearest client count.
    pub fresh_fraction: f64,
    /// Operation weights.
    pub mix: Mix,
    /// Pause of each client between two requests (cycles count as one), default none.
    pub pause: Option<Duration>,
    /// Stop after this long (default: only when the stop token is triggered).
    pub duration: Option<Duration>,
    /// Per-request timeout (default 30 s).
    pub timeout: Duration,
    /// Image of the cycle containers (default `busybox`).
    pub image: String,
    /// Command of the cycle containers (default `sleep 1000`).
    pub cmd: Vec<String>,
    /// `HostConfig.NetworkMode` of the cycle containers (default `none`); `None` leaves it out.
    pub network_mode: Option<String>,
    /// Ids (or names) for inspect; `None`: the running containers listed at start.
    pub inspect_ids: Option<Vec<String>>,
    /// Wait of a client after a failed request before its next one (default 10 ms), so that
    /// a dead daemon (every connect refused at once) does not turn the clients into busy
    /// loops. Every failed request is still recorded.
    pub failure_backoff: Duration,
    /// Attempts at deleting a cycle container before it is reported leaked (default 20; a
    /// failed attempt is recorded and retried after a growing pause of up to 1 s).
    pub delete_attempts: u32,
}

impl Config {
    /// The defaults against `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Config {
            socket: socket.into(),
            clients: 32,
            fresh_fraction: 0.5,
            mix: Mix::default(),
            pause: None,
            duration: None,
            timeout: Duration::from_secs(30),
            image: "busybox".to_string(),
            cmd: vec!["sleep".to_string(), "1000".to_string()],
            network_mode: Some("none".to_string()),
            inspect_ids: None,
            failure_backoff: Duration::from_millis(10),
            delete_attempts: 20,
        }
    }

    /// How many clients use a fresh connection per request.
    pub fn fresh_clients(&self) -> usize {
        let f = self.fresh_fraction.clamp(0.0, 1.0);
        // Bounded by `clients`, so the conversion back is exact.
        ((self.clients as f64) * f).round() as usize
    }

    /// Checks the values make a run possible.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("clients must be at least 1");
        }
        if self.mix.total() == 0 {
            bail!("the op mix has no weight");
        }
        if self.timeout.is_zero() {
            bail!("the request timeout must be positive");
        }
        if self.delete_attempts == 0 {
            bail!("delete_attempts must be at least 1");
        }
        Ok(())
    }

    /// The JSON body of the cycle's create request.
    pub(crate) fn create_body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({
            "Image": self.image,
            "Cmd": self.cmd,
            "Labels": { "berth-load": "1" },
        });
        if let Some(mode) = &self.network_mode {
            body["HostConfig"] = serde_json::json!({ "NetworkMode": mode });
        }
        body.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        let m: Mix = "ping=4, list=2,inspect=3,cycle=1".parse().expect("parses");
        assert_eq!(m, Mix::default());
        let m: Mix = "ping=1".parse().expect("parses");
        assert_eq!((m.ping, m.list, m.inspect, m.cycle), (1, 0, 0, 0));
        assert!("ping=0".parse::<Mix>().is_err());
        assert!("pong=1".parse::<Mix>().is_err());
        assert!("ping".parse::<Mix>().is_err());
    }

    #[test]
    fn fresh_split_rounds() {
        let mut c = Config::new("/x");
        assert_eq!(c.fresh_clients(), 16);
        c.clients = 3;
        c.fresh_fraction = 0.5;
        assert_eq!(c.fresh_clients(), 2);
        c.fresh_fraction = 0.0;
        assert_eq!(c.fresh_clients(), 0);
    }
}
