//! Rates and sizes written the way `tc(8)` reads them, the default burst, and the
//! conversion of a rate into an SR-IOV VF's max TX rate.
//!
//! tc's rules (iproute2 `get_rate64` / `get_size`), followed exactly apart from `/cell`:
//! * a rate is a decimal number with a case-insensitive suffix; a bare number or `bit` is
//!   bits per second, `kbit`/`mbit`/`gbit`/`tbit` are powers of 1000 bits, `kibit`/`mibit`/
//!   `gibit`/`tibit` powers of 1024 bits, and `bps`, `kbps`, `mbps`, `gbps`, `tbps`,
//!   `kibps`… are **bytes** per second (so `200mbps` is 1.6 Gbit/s, as in tc);
//! * a size is bytes when bare or with `b`; `k`/`kb`, `m`/`mb`, `g`/`gb` are KiB, MiB and
//!   GiB; `kbit`, `mbit` and `gbit` are 1024-based bits.

use std::fmt;

/// Rate suffixes and their factor in bits per second (matched case-insensitively, like tc).
const RATE_SUFFIXES: &[(&str, f64)] = &[
    ("", 1.0),
    ("bit", 1.0),
    ("kibit", 1024.0),
    ("kbit", 1e3),
    ("mibit", 1024.0 * 1024.0),
    ("mbit", 1e6),
    ("gibit", 1024.0 * 1024.0 * 1024.0),
    ("gbit", 1e9),
    ("tibit", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("tbit", 1e12),
    ("bps", 8.0),
    ("kibps", 8.0 * 1024.0),
    ("kbps", 8e3),
    ("mibps", 8.0 * 1024.0 * 1024.0),
    ("mbps", 8e6),
    ("gibps", 8.0 * 1024.0 * 1024.0 * 1024.0),
    ("gbps", 8e9),
    ("tibps", 8.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("tbps", 8e12),
];

/// Size suffixes and their factor in bytes.
const SIZE_SUFFIXES: &[(&str, f64)] = &[
    ("", 1.0),
    ("b", 1.0),
    ("k", 1024.0),
    ("kb", 1024.0),
    ("m", 1024.0 * 1024.0),
    ("mb", 1024.0 * 1024.0),
    ("g", 1024.0 * 1024.0 * 1024.0),
    ("gb", 1024.0 * 1024.0 * 1024.0),
    ("kbit", 1024.0 / 8.0),
    ("mbit", 1024.0 * 1024.0 / 8.0),
    ("gbit", 1024.0 * 1024.0 * 1024.0 / 8.0),
];

/// The smallest rate berth shapes to: 8 kbit/s (1000 bytes/s). Below it the token bucket's
/// time values leave the kernel's 32-bit range for any useful burst.
pub const MIN_RATE_BYTES: u64 = 1000;

/// The largest rate: 10 Tbit/s, far beyond any link (it keeps the arithmetic exact).
pub const MAX_RATE_BYTES: u64 = 1_250_000_000_000;

/// The default burst's floor: 64 KiB, one GSO super-packet, so tbf never has to split one in
/// software (research net-mem §4.3).
pub const MIN_DEFAULT_BURST: u32 = 64 * 1024;

/// A burst must hold one full-size frame: 1500 bytes of MTU plus the 14-byte Ethernet
/// header tc counts; tbf drops larger packets that it cannot segment.
pub const MIN_BURST: u32 = 1514;

/// A rate in bytes per second (what the kernel's ratespec holds); 0 means "not shaped".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    /// Bits per second.
    pub fn bits(self) -> u64 {
        self.0.saturating_mul(8)
    }
}

impl fmt::Display for Rate {
    /// Like tc prints a rate: `50Mbit`, `1500Kbit`, `8bit`; exact values only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits();
        for (unit, div) in [("Tbit", 1_000_000_000_000u64), ("Gbit", 1_000_000_000)] {
            if bits >= div && bits % div == 0 {
                return write!(f, "{}{unit}", bits / div);
            }
        }
        for (unit, div) in [("Mbit", 1_000_000u64), ("Kbit", 1000)] {
            if bits >= div && bits % div == 0 {
                return write!(f, "{}{unit}", bits / div);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// Splits `s` into its decimal number (digits, one optional `.`, an optional exponent) and
/// the rest; `None` when there is no number.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut digits = 0;
    let mut dot = false;
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot => dot = true,
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    // An exponent only when digits follow (`1e6bit`), so that no suffix is eaten.
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > start {
            i = j;
        }
    }
    let n: f64 = s[..i].parse().ok()?;
    Some((n, &s[i..]))
}

fn scaled(s: &str, table: &[(&str, f64)]) -> Option<f64> {
    let (n, suffix) = split_number(s)?;
    let (_, factor) = table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(suffix))?;
    let v = n * factor;
    v.is_finite().then_some(v)
}

/// Parses a rate as tc does (`50mbit`, `10Mbit`, `1.5gbit`, `100kbps`, `2000000`). `0`
/// means "not shaped". `what` names the value in the error (e.g. the label).
pub fn parse_rate(s: &str, what: &str) -> Result<Rate, String> {
    let bad = |why: &str| format!("invalid {what} {s:?}: {why}");
    let bits = scaled(s.trim(), RATE_SUFFIXES).ok_or_else(|| {
        bad("want a number with a tc rate unit, e.g. 50mbit, 500kbit, 1gbit (bit), or 10mbps (bytes per second)")
    })?;
    // tc truncates to whole bytes per second.
    let bytes = (bits / 8.0).floor();
    if bytes == 0.0 && bits == 0.0 {
        return Ok(Rate(0));
    }
    if bytes < MIN_RATE_BYTES as f64 {
        return Err(bad("the smallest rate is 8kbit"));
    }
    if bytes > MAX_RATE_BYTES as f64 {
        return Err(bad("the rate is too large"));
    }
    Ok(Rate(bytes as u64))
}

/// Parses a burst size as tc does (`64kb`, `1mb`, `1514`, `512kbit`). At least one
/// full-size frame ([`MIN_BURST`]) and at most 4 GiB - 1 (the kernel's field is 32 bits).
pub fn parse_burst(s: &str, what: &str) -> Result<u32, String> {
    let bad = |why: &str| format!("invalid {what} {s:?}: {why}");
    let bytes = scaled(s.trim(), SIZE_SUFFIXES)
        .ok_or_else(|| bad("want a size in bytes with an optional unit, e.g. 64kb, 1mb, 1514"))?
        .floor();
    if bytes < MIN_BURST as f64 {
        return Err(bad(&format!(
            "a burst must hold one full-size frame ({MIN_BURST} bytes)"
        )));
    }
    if bytes > u32::MAX as f64 {
        return Err(bad("a burst must be below 4gb"));
    }
    Ok(bytes as u32)
}

/// The burst used when none is configured: max(64 KiB, 10 ms at `rate`), at most 4 GiB - 1.
/// 64 KiB avoids software GSO splits (research net-mem §4.3); 10 ms lets the link catch up
/// after the sender was held off the CPU for that long, which kept 200 Mbit/s at what the
/// rate allows on the loaded 2-core test host (64 KiB alone: up to 0.4 % less). The credit
/// is only earned by idle time, so the long-run rate is unchanged; over a 1 s window it
/// allows at most 1 % more.
pub fn default_burst(rate: Rate) -> u32 {
    let ten_ms = rate.0 / 100;
    ten_ms.clamp(u64::from(MIN_DEFAULT_BURST), u64::from(u32::MAX)) as u32
}

/// The value an SR-IOV VF's max TX rate takes for `rate` (`IFLA_VF_RATE`, in Mbit/s):
/// rounded to the nearest Mbit/s but at least 1, since 0 there means "unlimited"; 0 for an
/// unshaped rate. The VF's limit counts the same Ethernet frames tc does.
pub fn vf_max_tx_rate_mbps(rate: Rate) -> Result<u32, String> {
    if rate.0 == 0 {
        return Ok(0);
    }
    let mbps = (rate.bits() + 500_000) / 1_000_000;
    u32::try_from(mbps.max(1)).map_err(|_| format!("rate {rate} is too large for a VF"))
}

/// Formats a byte count the way tc prints a burst (`64Kb`, `1Mb`, `1514b`).
pub fn format_size(bytes: u32) -> String {
    let b = u64::from(bytes);
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{}Mb", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{}Kb", b >> 10)
    } else {
        format!("{b}b")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> u64 {
        match parse_rate(s, "rate") {
            Ok(r) => r.0,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn rates_follow_tc_units() {
        assert_eq!(rate("50mbit"), 6_250_000);
        assert_eq!(rate("10Mbit"), 1_250_000);
        assert_eq!(rate("200MBIT"), 25_000_000);
        assert_eq!(rate("1gbit"), 125_000_000);
        assert_eq!(rate("1.5gbit"), 187_500_000);
        assert_eq!(rate("500kbit"), 62_500);
        assert_eq!(rate("1mibit"), 131_072);
        // tc: `bps` is BYTES per second, case-insensitively.
        assert_eq!(rate("200mbps"), 200_000_000);
        assert_eq!(rate("200MBps"), 200_000_000);
        assert_eq!(rate("10kbps"), 10_000);
        assert_eq!(rate("1mibps"), 1024 * 1024);
        // A bare number and `bit` are bits per second.
        assert_eq!(rate("8000000"), 1_000_000);
        assert_eq!(rate("8000000bit"), 1_000_000);
        assert_eq!(rate("1e6bit"), 125_000);
        assert_eq!(rate(" 50mbit "), 6_250_000);
        assert_eq!(rate("0"), 0);
        assert_eq!(rate("0mbit"), 0);
        assert_eq!(rate("1tbit"), 125_000_000_000);
        assert_eq!(rate("10tbit"), MAX_RATE_BYTES);
    }

    #[test]
    fn bad_rates_are_refused_with_the_reason() {
        for s in [
            "",
            "mbit",
            "fast",
            "50 mbit",
            "50mbits",
            "50m",
            "-5mbit",
            "0x10",
            "inf",
            "nan",
            "1.2.3mbit",
            "50mbit/8",
            "1e400bit",
        ] {
            let e = parse_rate(s, "berth.egress.rate").expect_err(s);
            assert!(
                e.starts_with(&format!("invalid berth.egress.rate {s:?}: ")),
                "{e}"
            );
        }
        let e = parse_rate("1kbit", "rate").expect_err("too small");
        assert!(e.contains("the smallest rate is 8kbit"), "{e}");
        assert!(parse_rate("8kbit", "rate").is_ok());
        assert!(parse_rate("100tbit", "rate").is_err());
    }

    #[test]
    fn sizes_follow_tc_units() {
        let size = |s: &str| parse_burst(s, "burst").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(size("64kb"), 65_536);
        assert_eq!(size("64K"), 65_536);
        assert_eq!(size("1mb"), 1_048_576);
        assert_eq!(size("1M"), 1_048_576);
        assert_eq!(size("1g"), 1 << 30);
        assert_eq!(size("1514"), 1514);
        assert_eq!(size("1514b"), 1514);
        assert_eq!(size("512kbit"), 65_536);
        assert_eq!(size("1mbit"), 131_072);
        assert_eq!(size("1.5kb"), 1536);
        let e = parse_burst("1kb", "berth.egress.burst").expect_err("small");
        assert!(e.contains("one full-size frame (1514 bytes)"), "{e}");
        assert!(parse_burst("4gb", "b")
            .expect_err("big")
            .contains("below 4gb"));
        for s in ["", "kb", "64kib", "64 kb", "-64kb", "64kb/8", "big"] {
            assert!(parse_burst(s, "b").is_err(), "{s}");
        }
    }

    #[test]
    fn default_burst_is_64k_or_ten_ms() {
        assert_eq!(default_burst(Rate(1_250_000)), 65_536);
        assert_eq!(default_burst(Rate(6_250_000)), 65_536);
        // 200 Mbit/s: 10 ms is 250 kB.
        assert_eq!(default_burst(Rate(25_000_000)), 250_000);
        assert_eq!(default_burst(Rate(125_000_000)), 1_250_000);
        assert_eq!(default_burst(Rate(MAX_RATE_BYTES)), u32::MAX);
    }

    #[test]
    fn vf_rate_is_whole_mbit_and_never_unlimited_by_rounding() {
        assert_eq!(vf_max_tx_rate_mbps(Rate(6_250_000)), Ok(50));
        assert_eq!(vf_max_tx_rate_mbps(Rate(1000)), Ok(1));
        assert_eq!(vf_max_tx_rate_mbps(Rate(187_500)), Ok(2)); // 1.5 Mbit/s
        assert_eq!(vf_max_tx_rate_mbps(Rate(0)), Ok(0));
        assert_eq!(vf_max_tx_rate_mbps(Rate(1_250_000_000)), Ok(10_000));
    }

    #[test]
    fn display_matches_tc() {
        assert_eq!(Rate(6_250_000).to_string(), "50Mbit");
        assert_eq!(Rate(125_000_000).to_string(), "1Gbit");
        assert_eq!(Rate(187_500).to_string(), "1500Kbit");
        assert_eq!(Rate(1001).to_string(), "8008bit");
        assert_eq!(format_size(65_536), "64Kb");
        assert_eq!(format_size(1 << 20), "1Mb");
        assert_eq!(format_size(1514), "1514b");
    }
}
