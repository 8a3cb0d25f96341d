//! The tbf qdisc as netlink bytes: netlink-packet-route has no typed tbf options, so the
//! `RTM_NEWQDISC` message is assembled here (`TCA_KIND "tbf"`, `TCA_OPTIONS` holding
//! `TCA_TBF_PARMS` (a `struct tc_tbf_qopt`), `TCA_TBF_RATE64` for rates of 2³² B/s and up,
//! and `TCA_TBF_BURST`), and the kernel's answer to a qdisc dump is read back to tell
//! whether what is installed is already what is wanted.
//!
//! The ratespec says `linklayer ethernet`, so the kernel needs no rate table; with
//! `TCA_TBF_BURST` it computes the bucket size itself. The `buffer` field is still filled
//! with the value the kernel derives (its own fixed-point arithmetic, replicated in
//! [`buffer_ticks`]) because a dump reports that, not the burst.

use super::units::Rate;
use super::Egress;
use rtnetlink::packet_core::{DefaultNla, Nla, NlasIterator};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption};

/// `TCA_TBF_PARMS`.
pub const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`.
pub const TCA_TBF_RATE64: u16 = 4;
/// `TCA_TBF_BURST`.
pub const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: the kernel computes packet times without a rate table.
pub const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `TCA_OPTIONS`, as a dump of a qdisc the crate does not know wraps the options in.
const TCA_OPTIONS: u16 = 2;
/// The attribute type bits of an NLA kind (without the nested / byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `sizeof(struct tc_tbf_qopt)`.
pub const QOPT_LEN: usize = 36;
/// The kernel's scheduler tick is 2^6 ns (`PSCHED_SHIFT`).
const PSCHED_SHIFT: u32 = 6;

/// The handle of berth's root qdisc (`be7:` in `tc qdisc show`): how berth tells its own
/// qdisc from one somebody else installed.
pub const BERTH_HANDLE: TcHandle = TcHandle {
    major: 0x0be7,
    minor: 0,
};

/// How long a full queue takes to drain at the configured rate: tbf's `latency`, as the CNI
/// bandwidth plugin sets it. Measured on the 2-core test host under load: with 10 ms TCP
/// lost up to 1 % of the rate to tail drops (10⁴–10⁵ retransmits in 10 s at 50 Mbit/s);
/// with 25 ms it stayed at what the rate allows, with next to no retransmits. The queue
/// only fills while a container sends above its rate.
pub const LATENCY_MS: u64 = 25;

/// tbf's parameters as the kernel holds and dumps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    /// Bytes per second.
    pub rate: u64,
    /// Queue limit in bytes.
    pub limit: u32,
    /// Bucket size in scheduler ticks (64 ns).
    pub buffer: u32,
}

impl TbfParams {
    /// What the kernel holds after berth installed `e`.
    pub fn of(e: &Egress) -> Self {
        let limit = e.rate.0.saturating_mul(LATENCY_MS) / 1000 + u64::from(e.burst);
        TbfParams {
            rate: e.rate.0,
            limit: limit.min(u64::from(u32::MAX)) as u32,
            buffer: buffer_ticks(e.rate, e.burst).min(u64::from(u32::MAX)) as u32,
        }
    }

    /// Whether a dumped qdisc carries these parameters (the bucket may differ by one tick
    /// of rounding).
    pub fn matches(&self, got: &TbfParams) -> bool {
        self.rate == got.rate && self.limit == got.limit && self.buffer.abs_diff(got.buffer) <= 1
    }
}

/// `psched_ratecfg_precompute__`: the kernel's (mult, shift) for a rate in bytes/s, so
/// that `len * mult >> shift` is the time in ns to send `len` bytes.
fn ratecfg(rate: u64) -> (u64, u32) {
    let (mut mult, mut shift, mut factor) = (1u64, 0u32, 1_000_000_000u64);
    if rate == 0 {
        return (mult, shift);
    }
    loop {
        mult = factor / rate;
        if mult & (1 << 31) != 0 || factor & (1 << 63) != 0 {
            return (mult, shift);
        }
        factor <<= 1;
        shift += 1;
    }
}

/// The bucket of `burst` bytes at `rate` in scheduler ticks, computed like the kernel
/// (`PSCHED_NS2TICKS(psched_l2t_ns(rate, burst))`).
pub fn buffer_ticks(rate: Rate, burst: u32) -> u64 {
    let (mult, shift) = ratecfg(rate.0);
    let ns = (u128::from(burst) * u128::from(mult)) >> shift;
    (ns >> PSCHED_SHIFT).min(u128::from(u64::MAX)) as u64
}

/// A `struct tc_ratespec` for an Ethernet link (12 bytes, host byte order).
fn ratespec(rate: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[1] = TC_LINKLAYER_ETHERNET;
    let r32 = u32::try_from(rate).unwrap_or(u32::MAX);
    b[8..12].copy_from_slice(&r32.to_ne_bytes());
    b
}

/// `struct tc_tbf_qopt`: rate, no peak rate, limit, buffer, mtu 0.
pub fn qopt(p: &TbfParams) -> [u8; QOPT_LEN] {
    let mut b = [0u8; QOPT_LEN];
    b[0..12].copy_from_slice(&ratespec(p.rate));
    // peakrate (12..24) stays zero: no peak rate.
    b[24..28].copy_from_slice(&p.limit.to_ne_bytes());
    b[28..32].copy_from_slice(&p.buffer.to_ne_bytes());
    // mtu (32..36) is only used with a peak rate.
    b
}

/// The `RTM_NEWQDISC` body that installs berth's tbf as the root qdisc of link `index`.
/// Sent with `NLM_F_CREATE | NLM_F_REPLACE`: it changes berth's qdisc in place when it is
/// there, and otherwise grafts the new one over whatever was the root, in one step.
pub fn new_qdisc_message(index: i32, e: &Egress) -> TcMessage {
    let p = TbfParams::of(e);
    let mut opts = vec![TcOption::Other(DefaultNla::new(
        TCA_TBF_PARMS,
        qopt(&p).to_vec(),
    ))];
    if p.rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            p.rate.to_ne_bytes().to_vec(),
        )));
    }
    opts.push(TcOption::Other(DefaultNla::new(
        TCA_TBF_BURST,
        e.burst.to_ne_bytes().to_vec(),
    )));
    root_message(
        index,
        vec![TcAttribute::Kind("tbf".into()), TcAttribute::Options(opts)],
    )
}

/// The `RTM_DELQDISC` body that removes berth's root qdisc from link `index`.
pub fn del_qdisc_message(index: i32) -> TcMessage {
    root_message(index, Vec::new())
}

fn root_message(index: i32, attributes: Vec<TcAttribute>) -> TcMessage {
    TcMessage::from_parts(
        TcHeader {
            index,
            handle: BERTH_HANDLE,
            parent: TcHandle::ROOT,
            ..TcHeader::default()
        },
        attributes,
    )
}

/// A link's root qdisc as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    /// Its handle.
    pub handle: TcHandle,
    /// Its kind (`tbf`, `noqueue`, …).
    pub kind: String,
    /// tbf's parameters, when it is a tbf.
    pub tbf: Option<TbfParams>,
}

impl RootQdisc {
    /// Whether this is the qdisc berth installs.
    pub fn is_berths(&self) -> bool {
        self.handle == BERTH_HANDLE && self.kind == "tbf"
    }
}

fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// The root qdisc described by one message of a qdisc dump; `None` for a non-root one.
pub fn parse_root(msg: &TcMessage) -> Option<RootQdisc> {
    if msg.header.parent != TcHandle::ROOT {
        return None;
    }
    let mut kind = String::new();
    let mut raw: Vec<(u16, Vec<u8>)> = Vec::new();
    for a in &msg.attributes {
        match a {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(opts) => {
                for o in opts {
                    let TcOption::Other(nla) = o else { continue };
                    let value = value_of(nla);
                    if nla.kind() & NLA_TYPE_MASK == TCA_OPTIONS {
                        // The crate keeps an unknown kind's options as one wrapped NLA.
                        for inner in NlasIterator::new(&value[..]).flatten() {
                            raw.push((inner.kind() & NLA_TYPE_MASK, inner.value().to_vec()));
                        }
                    } else {
                        raw.push((nla.kind() & NLA_TYPE_MASK, value));
                    }
                }
            }
            _ => {}
        }
    }
    let tbf = (kind == "tbf").then(|| tbf_params(&raw)).flatten();
    Some(RootQdisc {
        handle: msg.header.handle,
        kind,
        tbf,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// tbf's parameters from its dumped options (`TCA_TBF_PARMS`, `TCA_TBF_RATE64`).
pub fn tbf_params(raw: &[(u16, Vec<u8>)]) -> Option<TbfParams> {
    let parms = raw.iter().find(|(k, _)| *k == TCA_TBF_PARMS)?.1.as_slice();
    if parms.len() < QOPT_LEN {
        return None;
    }
    let rate64 = raw
        .iter()
        .find(|(k, v)| *k == TCA_TBF_RATE64 && v.len() == 8)
        .and_then(|(_, v)| Some(u64::from_ne_bytes(v.as_slice().try_into().ok()?)));
    let rate32 = u64::from(u32_at(parms, 8)?);
    Some(TbfParams {
        rate: rate64.map_or(rate32, |r| r.max(rate32)),
        limit: u32_at(parms, 24)?,
        buffer: u32_at(parms, 28)?,
    })
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};

    fn bytes(m: &TcMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn egress(rate: u64, burst: u32) -> Egress {
        Egress {
            rate: Rate(rate),
            burst,
        }
    }

    #[test]
    fn the_kernels_fixed_point_is_replicated() {
        // 50 Mbit/s: 160 ns per byte, mult 160 << 24.
        assert_eq!(ratecfg(6_250_000), (160 << 24, 24));
        // 64 KiB at 50 Mbit/s: 10.48576 ms = 163840 ticks of 64 ns.
        assert_eq!(buffer_ticks(Rate(6_250_000), 65_536), 163_840);
        // 1514 bytes at 10 Mbit/s: 1.2112 ms.
        assert_eq!(buffer_ticks(Rate(1_250_000), 1514), 1_211_200 / 64);
    }

    #[test]
    fn tbf_at_50mbit_is_encoded_byte_by_byte() {
        let m = new_qdisc_message(7, &egress(6_250_000, 65_536));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // struct tcmsg: family, pad, pad16, ifindex 7, handle 0be7:0, parent root, info
            0, 0, 0, 0,  7, 0, 0, 0,  0x00, 0x00, 0xe7, 0x0b,  0xff, 0xff, 0xff, 0xff,  0, 0, 0, 0,
            // TCA_KIND "tbf"
            8, 0, 1, 0,  b't', b'b', b'f', 0,
            // TCA_OPTIONS, 52 bytes
            52, 0, 2, 0,
            // TCA_TBF_PARMS, 40 bytes: struct tc_tbf_qopt
            40, 0, 1, 0,
            // rate: cell_log 0, linklayer ethernet, overhead 0, cell_align 0, mpu 0, 6250000 B/s
            0, 1, 0, 0,  0, 0, 0, 0,  0x10, 0x5e, 0x5f, 0x00,
            // peakrate: none
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            // limit 156250 (25 ms) + 65536 = 221786, buffer 163840 ticks, mtu 0
            0x5a, 0x62, 0x03, 0x00,  0x00, 0x80, 0x02, 0x00,  0, 0, 0, 0,
            // TCA_TBF_BURST 65536
            8, 0, 6, 0,  0x00, 0x00, 0x01, 0x00,
        ];
        assert_eq!(bytes(&m), want);
    }

    #[test]
    fn rates_beyond_32_bits_carry_rate64() {
        // 40 Gbit/s = 5e9 B/s.
        let m = new_qdisc_message(3, &egress(5_000_000_000, 10_000_000));
        let b = bytes(&m);
        // The ratespec's 32-bit rate saturates.
        let parms = &b[20 + 8 + 4 + 4..];
        assert_eq!(&parms[8..12], &[0xff, 0xff, 0xff, 0xff]);
        // TCA_TBF_RATE64 follows the 40-byte TCA_TBF_PARMS.
        let r64 = &b[20 + 8 + 4 + 40..][..12];
        assert_eq!(&r64[..4], &[12, 0, 4, 0]);
        assert_eq!(&r64[4..], &5_000_000_000u64.to_le_bytes());
        assert_eq!(&b[b.len() - 8..], &[8, 0, 6, 0, 0x80, 0x96, 0x98, 0x00]);
    }

    #[test]
    fn delete_names_berths_root_handle() {
        let b = bytes(&del_qdisc_message(9));
        assert_eq!(
            b,
            vec![0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0xe7, 0x0b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
        );
    }

    /// What the kernel sends back for a dump: the options wrapped in TCA_OPTIONS, parsed
    /// by the crate as one opaque NLA (kind "tbf" is unknown to it).
    #[test]
    fn a_dumped_tbf_is_read_back() {
        let e = egress(6_250_000, 65_536);
        let sent = bytes(&new_qdisc_message(7, &e));
        let parsed = TcMessage::parse(&sent[..]).expect("parse");
        let root = parse_root(&parsed).expect("root");
        assert!(root.is_berths());
        assert_eq!(root.tbf, Some(TbfParams::of(&e)));
        assert!(TbfParams::of(&e).matches(&TbfParams {
            buffer: TbfParams::of(&e).buffer + 1,
            ..TbfParams::of(&e)
        }));
        assert!(!TbfParams::of(&e).matches(&TbfParams::of(&egress(6_250_001, 65_536))));
        // A non-root qdisc is not a root.
        let mut child = parsed.clone();
        child.header.parent = TcHandle {
            major: 0x0be7,
            minor: 1,
        };
        assert_eq!(parse_root(&child), None);
        // noqueue, the default of a veth with txqueuelen 0, is nobody's.
        let noq = TcMessage::from_parts(
            TcHeader {
                parent: TcHandle::ROOT,
                ..TcHeader::default()
            },
            vec![TcAttribute::Kind("noqueue".into())],
        );
        let root = parse_root(&noq).expect("root");
        assert!(!root.is_berths());
        assert_eq!(root.tbf, None);
    }
}
