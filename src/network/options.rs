//! Driver options of the `macvlan` and `sriov` network drivers, as `docker network create
//! -d <driver> -o key=value` passes them, parsed and validated before anything is created.
//!
//! `macvlan` takes dockerd's options (`parent`, `macvlan_mode`) and, like dockerd, ignores
//! keys it does not know; its refusals carry dockerd's words and, like dockerd's (plain
//! driver errors), answer 500. `sriov` takes the settings sriov-cni knows under the same meaning
//! (`vlan`, `vlan_qos`, `vlan_proto`, `spoofchk`, `trust`, `min_tx_rate`, `max_tx_rate`)
//! plus berth's tuning options (`rps_cpus`, `irq_cpus`); it is berth's own driver, so an
//! unknown key is refused rather than silently dropped.

use crate::error::{ApiError, ApiResult};
use std::collections::BTreeMap;

/// Mode of a macvlan link (`-o macvlan_mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// Children of one parent talk to each other directly (dockerd's default).
    Bridge,
    /// Children cannot talk to each other at all.
    Private,
    /// Traffic between children hairpins through the external switch.
    Vepa,
    /// The single child takes over the parent.
    Passthru,
}

impl MacvlanMode {
    /// The name dockerd uses for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

/// Parsed options of a macvlan network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacvlanOptions {
    /// `-o parent=`: the host interface, possibly `name.vid` (an 802.1Q sub-interface that
    /// dockerd creates on demand; see [`split_vlan_parent`]).
    pub parent: String,
    /// `-o macvlan_mode=` (bridge when absent or empty, as in dockerd).
    pub mode: MacvlanMode,
}

/// Parses `-o` options of a macvlan network with dockerd's messages and statuses. Unknown
/// keys are ignored, as dockerd's macvlan driver does. An empty parent is refused (400):
/// dockerd would make a dummy link its parent, and the target kernels lack dummy links.
pub fn parse_macvlan_options(opts: &BTreeMap<String, String>) -> ApiResult<MacvlanOptions> {
    let mode = match opts.get("macvlan_mode").map(String::as_str) {
        None | Some("") | Some("bridge") => MacvlanMode::Bridge,
        Some("private") => MacvlanMode::Private,
        Some("vepa") => MacvlanMode::Vepa,
        Some("passthru") => MacvlanMode::Passthru,
        Some(other) => {
            return Err(ApiError::Internal(format!(
                "requested macvlan mode '{other}' is not valid, 'bridge' mode is the macvlan driver default"
            )))
        }
    };
    let parent = opts.get("parent").cloned().unwrap_or_default();
    if parent.is_empty() {
        // dockerd would create a dummy parent and make the network internal; this kernel
        // family has no dummy links on the test hosts, so berth asks for a parent.
        return Err(ApiError::BadRequest(
            "-o parent is required for a macvlan network (e.g. -o parent=eth0)".into(),
        ));
    }
    if parent == "lo" {
        return Err(ApiError::Internal(
            "loopback interface is not a valid macvlan parent link".into(),
        ));
    }
    check_ifname(&parent, "-o parent")?;
    Ok(MacvlanOptions { parent, mode })
}

/// Splits `eth0.10` into (`eth0`, 10) with dockerd's messages (500s, as in dockerd), for a
/// parent that does not exist as named (dockerd then creates that 802.1Q sub-interface).
pub fn split_vlan_parent(parent: &str) -> ApiResult<(String, u16)> {
    let parts: Vec<&str> = parent.split('.').collect();
    let [link, vid] = parts.as_slice() else {
        return Err(ApiError::Internal(
            "required interface name format is: name.vlan_id, ex. eth0.10 for vlan 10 on link eth0"
                .into(),
        ));
    };
    let vid: i64 = vid.parse().map_err(|_| {
        ApiError::Internal(format!(
            "unable to parse a valid vlan id from: {vid} (ex. eth0.10 for vlan 10)"
        ))
    })?;
    if !(1..=4094).contains(&vid) {
        return Err(ApiError::Internal(format!(
            "vlan id must be between 1-4094, received: {vid}"
        )));
    }
    Ok((link.to_string(), vid as u16))
}

/// Checks a kernel interface name (1-15 bytes, no `/`, `:` or white space).
fn check_ifname(name: &str, what: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what}: invalid interface name {name:?}"
        )))
    }
}

/// VLAN protocol of a VF's port VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum VlanProto {
    /// 802.1Q (`IFLA_VF_VLAN`).
    #[default]
    Dot1Q,
    /// 802.1ad (`IFLA_VF_VLAN_LIST` with protocol 0x88a8).
    Dot1Ad,
}

/// Parsed options of an sriov network.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SriovOptions {
    /// `parent`: the PF netdev whose VFs the network hands out.
    pub parent: String,
    /// `vlan`: port VLAN the PF tags the VF's traffic with (0 or absent: none).
    pub vlan: u16,
    /// `vlan_qos`: 802.1p priority of that VLAN (0-7).
    pub vlan_qos: u8,
    /// `vlan_proto`: `802.1q` (default) or `802.1ad`.
    pub vlan_proto: VlanProto,
    /// `spoofchk=on|off` (driver default when absent).
    pub spoofchk: Option<bool>,
    /// `trust=on|off` (driver default when absent).
    pub trust: Option<bool>,
    /// `min_tx_rate` in Mbit/s.
    pub min_tx_rate: Option<u32>,
    /// `max_tx_rate` in Mbit/s (the VF's hardware egress limit).
    pub max_tx_rate: Option<u32>,
    /// `rps_cpus`: CPUs that process the VF's receive queues (a list such as `0-1,4`).
    pub rps_cpus: Option<Vec<u32>>,
    /// `irq_cpus`: CPUs the VF's MSI interrupts are pinned to.
    pub irq_cpus: Option<Vec<u32>>,
}

fn on_off(key: &str, v: &str) -> ApiResult<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "invalid value {v:?} for sriov option {key}: want on or off"
        ))),
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str, range: &str) -> ApiResult<T> {
    v.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid value {v:?} for sriov option {key}: want {range}"
        ))
    })
}

/// Parses a CPU list such as `0-3,6` (the kernel's `cpulist` format) into sorted, distinct
/// CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| format!("bad CPU {a:?} in {s:?}"))?;
        let b: u32 = b.parse().map_err(|_| format!("bad CPU {b:?} in {s:?}"))?;
        if a > b || b >= 4096 {
            return Err(format!("bad CPU range {part:?} in {s:?}"));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Parses `-o` options of an sriov network; an unknown key or a bad value is refused.
pub fn parse_sriov_options(opts: &BTreeMap<String, String>) -> ApiResult<SriovOptions> {
    let mut o = SriovOptions::default();
    for (key, v) in opts {
        match key.as_str() {
            "parent" => o.parent = v.clone(),
            "vlan" => {
                o.vlan = number(key, v, "a VLAN id between 0 and 4094")?;
                if o.vlan > 4094 {
                    return Err(ApiError::BadRequest(format!(
                        "vlan id must be between 0-4094, received: {v}"
                    )));
                }
            }
            "vlan_qos" => {
                o.vlan_qos = number(key, v, "a priority between 0 and 7")?;
                if o.vlan_qos > 7 {
                    return Err(ApiError::BadRequest(format!(
                        "invalid value {v:?} for sriov option vlan_qos: want a priority between 0 and 7"
                    )));
                }
            }
            "vlan_proto" => {
                o.vlan_proto = match v.to_ascii_lowercase().as_str() {
                    "802.1q" => VlanProto::Dot1Q,
                    "802.1ad" => VlanProto::Dot1Ad,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "invalid value {v:?} for sriov option vlan_proto: want 802.1q or 802.1ad"
                        )))
                    }
                }
            }
            "spoofchk" => o.spoofchk = Some(on_off(key, v)?),
            "trust" => o.trust = Some(on_off(key, v)?),
            "min_tx_rate" => o.min_tx_rate = Some(number(key, v, "a rate in Mbit/s")?),
            "max_tx_rate" => o.max_tx_rate = Some(number(key, v, "a rate in Mbit/s")?),
            "rps_cpus" | "irq_cpus" => {
                let cpus = parse_cpu_list(v).map_err(|e| {
                    ApiError::BadRequest(format!("invalid value for sriov option {key}: {e}"))
                })?;
                if key == "rps_cpus" {
                    o.rps_cpus = Some(cpus);
                } else {
                    o.irq_cpus = Some(cpus);
                }
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown sriov option {key:?} (known: parent, vlan, vlan_qos, vlan_proto, spoofchk, trust, min_tx_rate, max_tx_rate, rps_cpus, irq_cpus)"
                )))
            }
        }
    }
    if o.parent.is_empty() {
        return Err(ApiError::BadRequest(
            "-o parent is required for an sriov network: the PF interface whose VFs it uses".into(),
        ));
    }
    check_ifname(&o.parent, "-o parent")?;
    if (o.vlan_qos != 0 || o.vlan_proto != VlanProto::Dot1Q) && o.vlan == 0 {
        return Err(ApiError::BadRequest(
            "sriov options vlan_qos and vlan_proto need a vlan".into(),
        ));
    }
    if let (Some(min), Some(max)) = (o.min_tx_rate, o.max_tx_rate) {
        if max != 0 && min > max {
            return Err(ApiError::BadRequest(format!(
                "sriov option min_tx_rate ({min}) must not exceed max_tx_rate ({max})"
            )));
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn bad(r: ApiResult<impl std::fmt::Debug>) -> String {
        match r {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// dockerd's macvlan driver answers its refusals with plain errors: 500.
    fn err500(r: ApiResult<impl std::fmt::Debug>) -> String {
        match r {
            Err(ApiError::Internal(m)) => m,
            other => panic!("expected a 500, got {other:?}"),
        }
    }

    #[test]
    fn macvlan_modes_and_dockerd_messages() {
        let o =
            parse_macvlan_options(&opts(&[("parent", "eth0")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.mode, MacvlanMode::Bridge);
        for m in ["bridge", "private", "vepa", "passthru"] {
            let o = parse_macvlan_options(&opts(&[("parent", "eth0"), ("macvlan_mode", m)]));
            assert_eq!(o.map(|o| o.mode.as_str()), Ok(m));
        }
        let e = err500(parse_macvlan_options(&opts(&[
            ("parent", "eth0"),
            ("macvlan_mode", "l2"),
        ])));
        assert_eq!(
            e,
            "requested macvlan mode 'l2' is not valid, 'bridge' mode is the macvlan driver default"
        );
        // Unknown keys are ignored, like dockerd.
        assert!(parse_macvlan_options(&opts(&[("parent", "eth0"), ("foo", "1")])).is_ok());
        assert!(bad(parse_macvlan_options(&opts(&[]))).contains("-o parent is required"));
        assert_eq!(
            err500(parse_macvlan_options(&opts(&[("parent", "lo")]))),
            "loopback interface is not a valid macvlan parent link"
        );
        assert!(bad(parse_macvlan_options(&opts(&[("parent", "a/b")]))).contains("invalid"));
        assert!(bad(parse_macvlan_options(&opts(&[(
            "parent",
            "x".repeat(16).as_str()
        )])))
        .contains("invalid interface name"));
    }

    #[test]
    fn vlan_parents_split_like_dockerd() {
        assert_eq!(split_vlan_parent("eth0.10"), Ok(("eth0".into(), 10)));
        assert_eq!(
            err500(split_vlan_parent("eth0")),
            "required interface name format is: name.vlan_id, ex. eth0.10 for vlan 10 on link eth0"
        );
        assert_eq!(
            err500(split_vlan_parent("eth0.x")),
            "unable to parse a valid vlan id from: x (ex. eth0.10 for vlan 10)"
        );
        assert_eq!(
            err500(split_vlan_parent("eth0.4095")),
            "vlan id must be between 1-4094, received: 4095"
        );
        assert_eq!(
            err500(split_vlan_parent("eth0.0")),
            "vlan id must be between 1-4094, received: 0"
        );
    }

    #[test]
    fn sriov_options_parse_and_refuse_bad_values() {
        let o = parse_sriov_options(&opts(&[
            ("parent", "enp175s0f1"),
            ("vlan", "100"),
            ("vlan_qos", "5"),
            ("vlan_proto", "802.1ad"),
            ("spoofchk", "off"),
            ("trust", "on"),
            ("max_tx_rate", "1000"),
            ("min_tx_rate", "100"),
            ("rps_cpus", "0-1,3"),
            ("irq_cpus", "2"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.parent, "enp175s0f1");
        assert_eq!(
            (o.vlan, o.vlan_qos, o.vlan_proto),
            (100, 5, VlanProto::Dot1Ad)
        );
        assert_eq!((o.spoofchk, o.trust), (Some(false), Some(true)));
        assert_eq!((o.min_tx_rate, o.max_tx_rate), (Some(100), Some(1000)));
        assert_eq!(o.rps_cpus, Some(vec![0, 1, 3]));
        assert_eq!(o.irq_cpus, Some(vec![2]));

        let p = |kv: &[(&str, &str)]| {
            let mut all = vec![("parent", "pf0")];
            all.extend_from_slice(kv);
            parse_sriov_options(&opts(&all))
        };
        assert_eq!(
            bad(p(&[("spoofchk", "yes")])),
            "invalid value \"yes\" for sriov option spoofchk: want on or off"
        );
        assert_eq!(
            bad(p(&[("vlan", "4095")])),
            "vlan id must be between 0-4094, received: 4095"
        );
        assert!(bad(p(&[("vlan", "-1")])).contains("want a VLAN id"));
        assert!(bad(p(&[("vlan_qos", "8"), ("vlan", "1")])).contains("between 0 and 7"));
        assert!(bad(p(&[("vlan_qos", "3")])).contains("need a vlan"));
        assert!(bad(p(&[("max_tx_rate", "fast")])).contains("Mbit/s"));
        assert!(bad(p(&[("min_tx_rate", "200"), ("max_tx_rate", "100")])).contains("exceed"));
        assert!(bad(p(&[("rps_cpus", "3-1")])).contains("bad CPU range"));
        assert!(bad(p(&[("irq_cpus", "a")])).contains("bad CPU"));
        assert!(bad(p(&[("mtu", "9000")])).contains("unknown sriov option \"mtu\""));
        assert!(bad(parse_sriov_options(&opts(&[("vlan", "1")]))).contains("-o parent"));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("4,0-2,1"), Ok(vec![0, 1, 2, 4]));
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("1-").is_err());
        assert!(parse_cpu_list("5000").is_err());
    }
}
