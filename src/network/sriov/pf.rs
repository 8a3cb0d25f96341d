//! PF-side VF configuration: MAC, port VLAN (+QoS, 802.1Q/802.1ad), spoof check, trust and
//! TX rate of VF `i` are attributes of the PF, set by `RTM_SETLINK` on the PF's ifindex
//! carrying `IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_* } }`.
//!
//! [`PfConfigurator`] is the seam: [`NetlinkPf`] talks to the kernel, [`RecordingPf`]
//! records the calls (sriov-cni's `pfMockNetlinkLib` idea). Each setting is its own
//! request, in sriov-cni's order (VLAN, MAC, rate, spoof check, trust), so a driver that
//! lacks one operation fails with an error naming exactly that one.
//!
//! Real hardware adds what no stand-in shows: drivers that apply a MAC only after a VF
//! reset, trust/spoof-check semantics, VLAN tags on the wire and the rate limiter itself.

use crate::error::{ApiError, ApiResult};
use crate::network::options::{SriovOptions, VlanProto};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate, VfInfoSpoofCheck,
    VfInfoTrust, VfInfoVlan, VfVlan, VfVlanInfo, VlanProtocol,
};
use rtnetlink::{Handle, LinkUnspec};
use std::future::Future;
use std::sync::Mutex;

/// One PF-side setting of one VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VfSetting {
    /// Administrative MAC (all zero clears it).
    Mac([u8; 6]),
    /// Port VLAN (0 clears it), priority and protocol.
    Vlan {
        /// VLAN id.
        vlan: u16,
        /// 802.1p priority.
        qos: u8,
        /// Tag protocol.
        proto: VlanProto,
    },
    /// TX rate limits in Mbit/s (0: none).
    Rate {
        /// Guaranteed minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
    /// MAC spoof check.
    SpoofCheck(bool),
    /// Trusted VF (may change its MAC, enable promiscuous mode).
    Trust(bool),
}

impl VfSetting {
    /// A short name for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            VfSetting::Mac(m) => format!("mac {}", fmt_mac(m)),
            VfSetting::Vlan { vlan, qos, proto } => {
                let p = match proto {
                    VlanProto::Dot1Q => "802.1Q",
                    VlanProto::Dot1Ad => "802.1ad",
                };
                format!("vlan {vlan} qos {qos} proto {p}")
            }
            VfSetting::Rate { min, max } => format!("min_tx_rate {min} max_tx_rate {max}"),
            VfSetting::SpoofCheck(on) => format!("spoofchk {}", if *on { "on" } else { "off" }),
            VfSetting::Trust(on) => format!("trust {}", if *on { "on" } else { "off" }),
        }
    }

    /// The setting of the same kind that restores the driver default (see
    /// [`reset_settings`]).
    pub fn undo(&self) -> VfSetting {
        match self {
            VfSetting::Mac(_) => VfSetting::Mac([0; 6]),
            VfSetting::Vlan { .. } => VfSetting::Vlan {
                vlan: 0,
                qos: 0,
                proto: VlanProto::Dot1Q,
            },
            VfSetting::Rate { .. } => VfSetting::Rate { min: 0, max: 0 },
            VfSetting::SpoofCheck(_) => VfSetting::SpoofCheck(true),
            VfSetting::Trust(_) => VfSetting::Trust(false),
        }
    }

    /// Whether `other` sets the same thing (both MACs, both VLANs, ...).
    pub fn same_kind(&self, other: &VfSetting) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// The `IFLA_VF_*` attribute for VF `vf`.
    pub fn to_vf_info(&self, vf: u32) -> VfInfo {
        match *self {
            VfSetting::Mac(m) => VfInfo::Mac(VfInfoMac::new(vf, &m)),
            VfSetting::Vlan {
                vlan,
                qos,
                proto: VlanProto::Dot1Q,
            } => VfInfo::Vlan(VfInfoVlan::new(vf, vlan.into(), qos.into())),
            VfSetting::Vlan {
                vlan,
                qos,
                proto: VlanProto::Dot1Ad,
            } => VfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
                vf,
                vlan.into(),
                qos.into(),
                VlanProtocol::Ieee8021Ad,
            ))]),
            VfSetting::Rate { min, max } => VfInfo::Rate(VfInfoRate::new(vf, min, max)),
            VfSetting::SpoofCheck(on) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)),
            VfSetting::Trust(on) => VfInfo::Trust(VfInfoTrust::new(vf, on)),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The settings a container's VF gets when it is attached, in the order they are applied.
pub fn attach_settings(opts: &SriovOptions, mac: Option<[u8; 6]>) -> Vec<VfSetting> {
    let mut out = Vec::new();
    if opts.vlan != 0 {
        out.push(VfSetting::Vlan {
            vlan: opts.vlan,
            qos: opts.vlan_qos,
            proto: opts.vlan_proto,
        });
    }
    if let Some(m) = mac {
        out.push(VfSetting::Mac(m));
    }
    if opts.min_tx_rate.is_some() || opts.max_tx_rate.is_some() {
        out.push(VfSetting::Rate {
            min: opts.min_tx_rate.unwrap_or(0),
            max: opts.max_tx_rate.unwrap_or(0),
        });
    }
    if let Some(on) = opts.spoofchk {
        out.push(VfSetting::SpoofCheck(on));
    }
    if let Some(on) = opts.trust {
        out.push(VfSetting::Trust(on));
    }
    out
}

/// What a released VF is reset to: no admin MAC, no VLAN, no rate limit, spoof check on,
/// not trusted (the kernel drivers' defaults).
pub fn reset_settings() -> Vec<VfSetting> {
    vec![
        VfSetting::Vlan {
            vlan: 0,
            qos: 0,
            proto: VlanProto::Dot1Q,
        },
        VfSetting::Mac([0; 6]),
        VfSetting::Rate { min: 0, max: 0 },
        VfSetting::SpoofCheck(true),
        VfSetting::Trust(false),
    ]
}

/// The `RTM_SETLINK` body that applies `infos` to the VFs of the PF with ifindex `pf`.
pub fn vf_message(pf: u32, infos: Vec<VfInfo>) -> LinkMessage {
    LinkUnspec::new_with_index(pf)
        .append_extra_attribute(LinkAttribute::VfInfoList(vec![LinkVfInfo(infos)]))
        .build()
}

/// PF-side operations on VFs.
pub trait PfConfigurator: Send + Sync + 'static {
    /// Applies one setting to VF `vf` of the PF netdev `pf`.
    fn apply(
        &self,
        pf: &str,
        vf: u32,
        setting: VfSetting,
    ) -> impl Future<Output = ApiResult<()>> + Send;

    /// The VF's current PF-side settings (`None`: the PF does not report them), read before
    /// berth changes anything so that a release restores them.
    fn current(
        &self,
        pf: &str,
        vf: u32,
    ) -> impl Future<Output = ApiResult<Option<Vec<VfSetting>>>> + Send;
}

/// Applies `settings` in order; the error names the PF, the VF and the setting.
pub async fn apply_all<P: PfConfigurator>(
    p: &P,
    pf: &str,
    vf: u32,
    settings: &[VfSetting],
) -> ApiResult<()> {
    for s in settings {
        p.apply(pf, vf, *s).await?;
    }
    Ok(())
}

/// [`PfConfigurator`] over rtnetlink in the namespace the handle's socket lives in.
pub struct NetlinkPf {
    handle: Handle,
}

impl NetlinkPf {
    /// Uses an existing connection.
    pub fn new(handle: Handle) -> Self {
        NetlinkPf { handle }
    }

    /// Opens a connection in the daemon's namespace (inside a tokio runtime).
    pub fn open() -> ApiResult<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ApiError::internal("open netlink", e))?;
        tokio::spawn(conn);
        Ok(NetlinkPf { handle })
    }

    /// Opens a connection in the network namespace at `path`.
    pub async fn open_in(path: &std::path::Path) -> ApiResult<Self> {
        Ok(NetlinkPf {
            handle: crate::network::netns::handle_in(path).await?,
        })
    }

    /// The ifindex of the PF netdev.
    pub async fn pf_index(&self, pf: &str) -> ApiResult<u32> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(pf.to_string())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => Err(ApiError::NotFound(format!("PF {pf} not found"))),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
                Err(ApiError::NotFound(format!("PF {pf} not found")))
            }
            Err(e) => Err(ApiError::internal(&format!("look up PF {pf}"), e)),
        }
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends one `RTM_SETLINK` with `infos` to the PF (exposed for encoding tests).
    pub async fn set_vf_info(&self, pf: &str, infos: Vec<VfInfo>, step: &str) -> ApiResult<()> {
        let index = self.pf_index(pf).await?;
        self.handle
            .link()
            .set(vf_message(index, infos))
            .execute()
            .await
            .map_err(|e| match e {
                rtnetlink::Error::NetlinkError(m) => ApiError::internal(step, m.to_io()),
                other => ApiError::internal(step, other),
            })
    }
}

impl PfConfigurator for NetlinkPf {
    async fn apply(&self, pf: &str, vf: u32, setting: VfSetting) -> ApiResult<()> {
        let step = format!("set VF {vf} {} on {pf}", setting.describe());
        self.set_vf_info(pf, vec![setting.to_vf_info(vf)], &step)
            .await
    }

    async fn current(&self, pf: &str, vf: u32) -> ApiResult<Option<Vec<VfSetting>>> {
        self.read_vf(pf, vf).await
    }
}

/// A recording [`PfConfigurator`] for tests: every call is logged as
/// `<pf> vf <i> <setting>`; `fail_on` makes calls whose text contains it fail;
/// [`RecordingPf::set_current`] scripts what [`PfConfigurator::current`] reports.
#[derive(Debug, Default)]
pub struct RecordingPf {
    calls: Mutex<Vec<String>>,
    fail_on: Mutex<Option<String>>,
    current: Mutex<Vec<(String, u32, Vec<VfSetting>)>>,
}

impl RecordingPf {
    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        if let Ok(mut c) = self.calls.lock() {
            c.clear();
        }
    }

    /// Makes [`PfConfigurator::current`] report `settings` for VF `vf` of `pf`.
    pub fn set_current(&self, pf: &str, vf: u32, settings: Vec<VfSetting>) {
        if let Ok(mut c) = self.current.lock() {
            c.retain(|(p, v, _)| !(p == pf && *v == vf));
            c.push((pf.to_string(), vf, settings));
        }
    }

    /// Makes every later call whose text contains `what` fail (`None`: none).
    pub fn fail_on(&self, what: Option<&str>) {
        if let Ok(mut f) = self.fail_on.lock() {
            *f = what.map(str::to_string);
        }
    }
}

impl PfConfigurator for RecordingPf {
    async fn apply(&self, pf: &str, vf: u32, setting: VfSetting) -> ApiResult<()> {
        let line = format!("{pf} vf {vf} {}", setting.describe());
        let fail = self
            .fail_on
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .is_some_and(|f| line.contains(&f));
        if fail {
            return Err(ApiError::Internal(format!(
                "set VF {vf} {} on {pf}: Operation not supported (injected)",
                setting.describe()
            )));
        }
        if let Ok(mut c) = self.calls.lock() {
            c.push(line);
        }
        Ok(())
    }

    async fn current(&self, pf: &str, vf: u32) -> ApiResult<Option<Vec<VfSetting>>> {
        let c = self.current.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(c.into_iter()
            .find(|(p, v, _)| p == pf && *v == vf)
            .map(|(_, _, s)| s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable;

    fn bytes(m: &LinkMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    /// struct ifinfomsg { family u8, pad u8, type u16, index i32, flags u32, change u32 }
    fn ifinfomsg(index: u32) -> Vec<u8> {
        let mut v = vec![0u8, 0, 0, 0];
        v.extend_from_slice(&index.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    }

    /// IFLA_VFINFO_LIST(22) { IFLA_VF_INFO(1) { kind: payload } }, lengths by hand.
    fn wrapped(kind: u16, payload: &[u8]) -> Vec<u8> {
        let inner = 4 + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&((inner + 8) as u16).to_le_bytes());
        v.extend_from_slice(&22u16.to_le_bytes());
        v.extend_from_slice(&((inner + 4) as u16).to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&(inner as u16).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn vf_messages_are_encoded_byte_for_byte() {
        let pf = 7;
        let vf = 3;
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x05];
        // IFLA_VF_MAC(1): struct ifla_vf_mac { u32 vf; u8 mac[32]; }
        let mut mac_payload = words(&[vf]);
        mac_payload.extend_from_slice(&mac);
        mac_payload.extend_from_slice(&[0; 26]);
        // IFLA_VF_VLAN_LIST(12) { IFLA_VF_VLAN_INFO(1) { vf, vlan, qos, be16 proto, pad } }
        let mut info = words(&[vf, 100, 5]);
        info.extend_from_slice(&[0x88, 0xa8, 0, 0]);
        let mut list = vec![20u8, 0, 1, 0];
        list.extend_from_slice(&info);
        let cases: Vec<(VfSetting, u16, Vec<u8>)> = vec![
            (VfSetting::Mac(mac), 1, mac_payload),
            (
                VfSetting::Vlan {
                    vlan: 100,
                    qos: 5,
                    proto: VlanProto::Dot1Q,
                },
                2,
                words(&[vf, 100, 5]),
            ),
            (
                VfSetting::Vlan {
                    vlan: 100,
                    qos: 5,
                    proto: VlanProto::Dot1Ad,
                },
                12,
                list,
            ),
            (
                VfSetting::Rate { min: 10, max: 1000 },
                6,
                words(&[vf, 10, 1000]),
            ),
            (VfSetting::SpoofCheck(false), 4, words(&[vf, 0])),
            (VfSetting::SpoofCheck(true), 4, words(&[vf, 1])),
            (VfSetting::Trust(true), 9, words(&[vf, 1])),
        ];
        for (setting, kind, payload) in cases {
            let msg = vf_message(pf, vec![setting.to_vf_info(vf)]);
            let mut want = ifinfomsg(pf);
            want.extend_from_slice(&wrapped(kind, &payload));
            assert_eq!(bytes(&msg), want, "{}", setting.describe());
        }
    }

    #[test]
    fn attach_and_reset_settings_follow_sriov_cni_order() {
        let opts = SriovOptions {
            parent: "pf0".into(),
            vlan: 10,
            vlan_qos: 2,
            spoofchk: Some(false),
            trust: Some(true),
            max_tx_rate: Some(500),
            ..Default::default()
        };
        let got: Vec<String> = attach_settings(&opts, Some([2, 0, 0, 0, 0, 1]))
            .iter()
            .map(VfSetting::describe)
            .collect();
        assert_eq!(
            got,
            [
                "vlan 10 qos 2 proto 802.1Q",
                "mac 02:00:00:00:00:01",
                "min_tx_rate 0 max_tx_rate 500",
                "spoofchk off",
                "trust on"
            ]
        );
        let none = SriovOptions {
            parent: "pf0".into(),
            ..Default::default()
        };
        assert!(attach_settings(&none, None).is_empty());
        let undo: Vec<VfSetting> = attach_settings(&opts, Some([2, 0, 0, 0, 0, 1]))
            .iter()
            .map(VfSetting::undo)
            .collect();
        assert_eq!(undo, reset_settings());
        let reset: Vec<String> = reset_settings().iter().map(VfSetting::describe).collect();
        assert_eq!(
            reset,
            [
                "vlan 0 qos 0 proto 802.1Q",
                "mac 00:00:00:00:00:00",
                "min_tx_rate 0 max_tx_rate 0",
                "spoofchk on",
                "trust off"
            ]
        );
    }
}
