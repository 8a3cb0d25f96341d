//! Egress shaping of containers ([`crate::network::shaping`]): the labels
//! `berth.egress.rate` / `berth.egress.burst` checked at create, the limit applied when a
//! container's network is up and again after a daemon crash, and the berth endpoint that
//! changes it while the container runs.
//!
//! The labels are the one place the setting lives: the endpoint rewrites them in the
//! container's record, so `docker inspect` (`Config.Labels`), `docker ps --filter label=`
//! and every later start and daemon restart see the value in force.

use super::record::Record;
use super::Containers;
use crate::error::{ApiError, ApiResult};
use crate::network::shaping::{self, Egress, Rate, Shaper, LABEL_BURST, LABEL_RATE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The daemon's shaping state: the kernel seam and `--default-egress-rate`.
#[derive(Debug, Default)]
pub struct EgressPolicy {
    /// Applies limits to network namespaces.
    pub shaper: Shaper,
    /// Rate of containers without their own (`None`: not shaped).
    pub default_rate: Option<Rate>,
}

/// Body of `POST /berth/containers/{id}/egress`, and its answer (the limit in force).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EgressUpdate {
    /// tc rate (`50mbit`); empty: remove the container's shaping.
    pub rate: String,
    /// tc size (`64kb`); empty: the default burst for the rate.
    pub burst: String,
}

/// The network mode's name when it gives the container no link of its own to shape.
fn linkless_mode(network_mode: &str) -> Option<&'static str> {
    match network_mode {
        "host" => Some("host"),
        "none" => Some("none"),
        m if m.starts_with("container:") => Some("container"),
        _ => None,
    }
}

fn conflict_message(mode: &str) -> String {
    format!(
        "conflicting options: {LABEL_RATE}/{LABEL_BURST} and the {mode} network mode \
         (the container has no network link of its own to shape)"
    )
}

/// Checks a new container's egress labels: the values must parse (400 otherwise), and a
/// container without its own link (host, none, container:) must not ask for shaping
/// itself. `own_labels` are the labels the client gave (an image's labels do not count
/// for the conflict: such a container is simply not shaped).
pub fn validate_create(
    labels: &HashMap<String, String>,
    own_labels: &HashMap<String, String>,
    network_mode: &str,
    default_rate: Option<Rate>,
) -> ApiResult<()> {
    if let Some(mode) = linkless_mode(network_mode) {
        if own_labels.contains_key(LABEL_RATE) || own_labels.contains_key(LABEL_BURST) {
            return Err(ApiError::BadRequest(conflict_message(mode)));
        }
        return Ok(());
    }
    shaping::from_labels(labels, default_rate).map_err(ApiError::BadRequest)?;
    Ok(())
}

/// A container's labels after an egress update: the rate and burst given, or for an empty
/// rate no shaping (no rate label, or `0` where a daemon default would apply otherwise).
fn updated_labels(
    mut labels: HashMap<String, String>,
    upd: &EgressUpdate,
    default_rate: Option<Rate>,
) -> ApiResult<HashMap<String, String>> {
    let (rate, burst) = (upd.rate.trim(), upd.burst.trim());
    labels.remove(LABEL_BURST);
    if rate.is_empty() {
        if !burst.is_empty() {
            return Err(ApiError::BadRequest(
                "a burst needs a rate: set Rate as well".into(),
            ));
        }
        if default_rate.is_some() {
            labels.insert(LABEL_RATE.into(), "0".into());
        } else {
            labels.remove(LABEL_RATE);
        }
    } else {
        labels.insert(LABEL_RATE.into(), rate.into());
        if !burst.is_empty() {
            labels.insert(LABEL_BURST.into(), burst.into());
        }
    }
    Ok(labels)
}

fn answer(e: Option<&Egress>) -> EgressUpdate {
    match e {
        Some(e) => EgressUpdate {
            rate: e.rate.to_string(),
            burst: shaping::units::format_size(e.burst),
        },
        None => EgressUpdate::default(),
    }
}

impl Containers {
    /// The limit a container's labels and the daemon default ask for; `None` for a
    /// container without its own link or without shaping.
    fn wanted_egress(&self, rec: &Record) -> ApiResult<Option<Egress>> {
        let mode = rec.host_config.network_mode.as_deref().unwrap_or("");
        if linkless_mode(mode).is_some() {
            return Ok(None);
        }
        let labels = rec.config.labels.clone().unwrap_or_default();
        shaping::from_labels(&labels, self.egress.default_rate).map_err(ApiError::BadRequest)
    }

    /// Applies the container's egress limit to the links in its network namespace `netns`
    /// (idempotent). Called once its network is set up. `at_start`: the links are the ones
    /// the start just set up (or kept, unchanged since this daemon applied the same
    /// labels), so an unshaped container costs no kernel call.
    pub(crate) async fn apply_egress(
        &self,
        rec: &Record,
        netns: Option<&Path>,
        at_start: bool,
    ) -> ApiResult<()> {
        let mode = rec.host_config.network_mode.as_deref().unwrap_or("");
        let Some(netns) = netns.filter(|_| linkless_mode(mode).is_none()) else {
            return Ok(());
        };
        let want = self.wanted_egress(rec)?;
        if want.is_none() && at_start {
            return Ok(());
        }
        // A VF is limited by the PF (its max TX rate), not by a qdisc (a real VF is no
        // veth, so the shaper below leaves it alone).
        self.net
            .set_vf_egress(&rec.id, want.as_ref().map(|e| e.rate))
            .await
            .map_err(|e| ApiError::Internal(format!("apply egress shaping to VFs: {e}")))?;
        self.egress
            .shaper
            .apply(netns, want.as_ref())
            .await
            .map_err(|e| ApiError::Internal(format!("apply egress shaping: {e}")))?;
        Ok(())
    }

    /// After a daemon crash: puts every running container's limit back where the kernel
    /// lost or changed it (nothing is sent where it is right), in the background.
    pub(crate) fn reapply_egress_soon(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut checked = 0;
            for rec in me.all() {
                let _g = me.lock(&rec.id).await;
                let Ok(rec) = me.lookup(&rec.id) else {
                    continue;
                };
                if !rec.state.status.is_live() {
                    continue;
                }
                let netns = me.net.netns_path(&rec.id);
                match me.apply_egress(&rec, Some(&netns), false).await {
                    Ok(()) => checked += 1,
                    Err(e) => {
                        tracing::warn!(id = %rec.id, error = %e, "re-applying egress shaping")
                    }
                }
            }
            tracing::info!(containers = checked, "egress shaping re-applied");
        });
    }

    /// `POST /berth/containers/{id}/egress`: changes a running container's egress limit
    /// (empty `Rate`: no shaping). The kernel is changed first, then the labels, so a
    /// failure leaves the container as it was. Returns the limit now in force.
    pub async fn set_egress(&self, name: &str, upd: EgressUpdate) -> ApiResult<EgressUpdate> {
        let id = self.lookup(name)?.id;
        let _g = self.lock(&id).await;
        let rec = self.lookup(&id)?;
        if !rec.state.status.is_live() {
            return Err(ApiError::Conflict(format!("Container {id} is not running")));
        }
        let mode = rec.host_config.network_mode.as_deref().unwrap_or("");
        if let Some(mode) = linkless_mode(mode) {
            return Err(ApiError::BadRequest(conflict_message(mode)));
        }
        let labels = updated_labels(
            rec.config.labels.clone().unwrap_or_default(),
            &upd,
            self.egress.default_rate,
        )?;
        let want = shaping::from_labels(&labels, self.egress.default_rate)
            .map_err(ApiError::BadRequest)?;
        let netns = self.net.netns_path(&id);
        self.egress
            .shaper
            .apply(&netns, want.as_ref())
            .await
            .map_err(|e| ApiError::Internal(format!("apply egress shaping: {e}")))?;
        let rec = self.update(&id, |r| r.config.labels = Some(labels))?;
        self.event(&rec, "update", &[]);
        Ok(answer(want.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn create_refuses_bad_values_and_linkless_modes() {
        let l = labels(&[(LABEL_RATE, "50mbit"), (LABEL_BURST, "128kb")]);
        assert!(validate_create(&l, &l, "default", None).is_ok());
        assert!(validate_create(&l, &l, "bridge", None).is_ok());
        let bad = labels(&[(LABEL_RATE, "50mb")]);
        let e = validate_create(&bad, &bad, "default", None).expect_err("bad unit");
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .starts_with("invalid berth.egress.rate \"50mb\""),
            "{e}"
        );
        for mode in ["host", "none", "container:abc"] {
            let e = validate_create(&l, &l, mode, None).expect_err(mode);
            assert_eq!(e.status(), 400);
            assert!(e.to_string().starts_with("conflicting options: "), "{e}");
        }
        // An image's label on a host-network container: not shaped, not refused.
        assert!(validate_create(&l, &HashMap::new(), "host", None).is_ok());
        // The daemon default alone never makes a create fail.
        assert!(
            validate_create(&HashMap::new(), &HashMap::new(), "host", Some(Rate(1000))).is_ok()
        );
        let burst_only = labels(&[(LABEL_BURST, "128kb")]);
        assert!(validate_create(&burst_only, &burst_only, "default", None).is_err());
        assert!(validate_create(&burst_only, &burst_only, "default", Some(Rate(1000))).is_ok());
    }

    #[test]
    fn an_update_rewrites_only_the_egress_labels() -> ApiResult<()> {
        let start = labels(&[
            ("app", "game"),
            (LABEL_RATE, "10mbit"),
            (LABEL_BURST, "1mb"),
        ]);
        let upd = |rate: &str, burst: &str| EgressUpdate {
            rate: rate.into(),
            burst: burst.into(),
        };
        assert_eq!(
            updated_labels(start.clone(), &upd(" 50mbit ", ""), None)?,
            labels(&[("app", "game"), (LABEL_RATE, "50mbit")]),
            "a new rate without a burst drops the old burst"
        );
        assert_eq!(
            updated_labels(start.clone(), &upd("50mbit", "128kb"), None)?,
            labels(&[
                ("app", "game"),
                (LABEL_RATE, "50mbit"),
                (LABEL_BURST, "128kb")
            ])
        );
        assert_eq!(
            updated_labels(start.clone(), &upd("", ""), None)?,
            labels(&[("app", "game")])
        );
        assert_eq!(
            updated_labels(start.clone(), &upd("", ""), Some(Rate(1000)))?,
            labels(&[("app", "game"), (LABEL_RATE, "0")]),
            "under a daemon default, no shaping is rate 0"
        );
        let e = updated_labels(start, &upd("", "64kb"), None).expect_err("burst alone");
        assert_eq!(e.status(), 400);
        Ok(())
    }

    #[test]
    fn the_answer_prints_the_limit_as_tc_does() {
        let e = Egress {
            rate: Rate(6_250_000),
            burst: 65_536,
        };
        assert_eq!(
            answer(Some(&e)),
            EgressUpdate {
                rate: "50Mbit".into(),
                burst: "64Kb".into()
            }
        );
        assert_eq!(answer(None), EgressUpdate::default());
    }
}
