//! Reading a VF's PF-side settings back (`RTM_GETLINK` on the PF with
//! `IFLA_EXT_MASK = RTEXT_FILTER_VF`; the answer carries `IFLA_VFINFO_LIST`), so that a
//! release restores what the VF had before berth touched it, as sriov-cni does, instead of
//! the driver defaults.
//!
//! A PF without VFs (or a veth standing in for one) answers without a VF list: nothing is
//! known and the defaults are restored. Real hardware adds: drivers that report spoof check
//! as "unsupported" (-1, read here as off) and VLAN lists only for 802.1ad-capable NICs.

use super::pf::{NetlinkPf, VfSetting};
use crate::error::{ApiError, ApiResult};
use crate::network::options::VlanProto;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, VfInfo, VfVlan, VlanProtocol,
};
use rtnetlink::packet_route::AddressFamily;

/// The settings VF `vf` has according to a PF's `RTM_GETLINK` answer (`None`: the answer
/// lists no such VF), in the order [`super::pf::attach_settings`] applies them.
pub fn vf_settings_of(msg: &LinkMessage, vf: u32) -> Option<Vec<VfSetting>> {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::VfInfoList(l) => Some(l),
        _ => None,
    })?;
    let entry = infos.iter().find(|e| {
        e.0.iter()
            .any(|i| matches!(i, VfInfo::Mac(m) if m.vf_id == vf))
    })?;
    let mut vlan = None;
    let mut vlan_list = None;
    let mut out = Vec::new();
    for i in &entry.0 {
        match i {
            VfInfo::Vlan(v) => {
                vlan = Some(VfSetting::Vlan {
                    vlan: v.vlan_id as u16,
                    qos: v.qos as u8,
                    proto: VlanProto::Dot1Q,
                })
            }
            VfInfo::VlanList(l) => {
                vlan_list = l.iter().find_map(|x| match x {
                    VfVlan::Info(v) => Some(VfSetting::Vlan {
                        vlan: v.vlan_id as u16,
                        qos: v.qos as u8,
                        proto: if v.protocol == VlanProtocol::Ieee8021Ad {
                            VlanProto::Dot1Ad
                        } else {
                            VlanProto::Dot1Q
                        },
                    }),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    out.extend(vlan_list.or(vlan));
    for i in &entry.0 {
        match i {
            VfInfo::Mac(m) => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&m.mac[..6]);
                out.push(VfSetting::Mac(mac));
            }
            VfInfo::Rate(r) => out.push(VfSetting::Rate {
                min: r.min_tx_rate,
                max: r.max_tx_rate,
            }),
            VfInfo::SpoofCheck(s) => out.push(VfSetting::SpoofCheck(s.enabled)),
            VfInfo::Trust(t) => out.push(VfSetting::Trust(t.enabled)),
            _ => {}
        }
    }
    Some(out)
}

impl NetlinkPf {
    /// The current PF-side settings of VF `vf` of `pf` (`None`: the PF reports no such VF).
    pub async fn read_vf(&self, pf: &str, vf: u32) -> ApiResult<Option<Vec<VfSetting>>> {
        let msg = self
            .handle()
            .link()
            .get()
            .match_name(pf.to_string())
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::Vf])
            .execute()
            .try_next()
            .await
            .map_err(|e| ApiError::internal(&format!("read VF {vf} settings of {pf}"), e))?
            .ok_or_else(|| ApiError::NotFound(format!("PF {pf} not found")))?;
        Ok(vf_settings_of(&msg, vf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{
        LinkVfInfo, VfInfoMac, VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfVlanInfo,
    };

    fn entry(vf: u32, vlan: Vec<VfInfo>) -> LinkVfInfo {
        let mut infos = vec![
            VfInfo::Mac(VfInfoMac::new(vf, &[2, 0, 0, 0, 0, vf as u8])),
            VfInfo::Rate(VfInfoRate::new(vf, 0, 100 * vf)),
            VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, vf % 2 == 0)),
            VfInfo::Trust(VfInfoTrust::new(vf, vf == 1)),
        ];
        infos.splice(1..1, vlan);
        LinkVfInfo(infos)
    }

    #[test]
    fn a_pf_answer_is_read_per_vf() {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::NumVf(2));
        msg.attributes.push(LinkAttribute::VfInfoList(vec![
            entry(0, vec![VfInfo::Vlan(VfInfoVlan::new(0, 7, 1))]),
            entry(
                1,
                vec![
                    VfInfo::Vlan(VfInfoVlan::new(1, 9, 0)),
                    VfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
                        1,
                        9,
                        0,
                        VlanProtocol::Ieee8021Ad,
                    ))]),
                ],
            ),
        ]));
        let got: Vec<String> = vf_settings_of(&msg, 1)
            .unwrap_or_default()
            .iter()
            .map(VfSetting::describe)
            .collect();
        assert_eq!(
            got,
            [
                "vlan 9 qos 0 proto 802.1ad",
                "mac 02:00:00:00:00:01",
                "min_tx_rate 0 max_tx_rate 100",
                "spoofchk off",
                "trust on"
            ]
        );
        let vf0 = vf_settings_of(&msg, 0).unwrap_or_default();
        assert_eq!(vf0[0].describe(), "vlan 7 qos 1 proto 802.1Q");
        assert_eq!(vf_settings_of(&msg, 2), None);
        assert_eq!(vf_settings_of(&LinkMessage::default(), 0), None);
    }
}
