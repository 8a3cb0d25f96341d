//! Per-container egress shaping (DESIGN.md "Networking"): a rate and optional burst per
//! container (labels `berth.egress.rate` / `berth.egress.burst`, or the daemon's
//! `--default-egress-rate`), applied as a tbf root qdisc on the container's side of each
//! of its veth links, inside its network namespace. What a container sends is what its
//! `eth0` transmits, and that is the only place a qdisc shapes it (research net-mem §4.1:
//! variant A; accurate within 0.1 % of theory in §4.2).
//!
//! [`Shaper`] makes the kernel match an [`Egress`] idempotently; [`units`] parses rates and
//! sizes as tc does; [`tbf`] encodes the qdisc by hand; [`TcKernel`] is the kernel seam.
//! SR-IOV VFs are shaped by their max TX rate instead: [`units::vf_max_tx_rate_mbps`].

mod apply;
mod kernel;
pub mod tbf;
pub mod units;

#[cfg(test)]
mod fake;

pub use apply::{Change, Shaper};
pub use kernel::{NetlinkTc, ShapedLink, TcKernel};
pub use units::{default_burst, parse_burst, parse_rate, vf_max_tx_rate_mbps, Rate};

use std::collections::HashMap;

/// Container label with the egress rate (tc syntax; `0` = not shaped).
pub const LABEL_RATE: &str = "berth.egress.rate";
/// Container label with the egress burst (tc size syntax).
pub const LABEL_BURST: &str = "berth.egress.burst";

/// A container's egress limit: what its links may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// The rate (never 0: an unshaped container has no `Egress`).
    pub rate: Rate,
    /// The bucket in bytes: what may leave at line rate after a quiet spell.
    pub burst: u32,
}

impl Egress {
    /// `rate` with `burst`, or with [`default_burst`]; `None` for rate 0 (not shaped).
    /// Refuses a bucket the kernel cannot time (more than ~274 s of traffic at `rate`).
    pub fn new(rate: Rate, burst: Option<u32>) -> Result<Option<Egress>, String> {
        if rate.0 == 0 {
            return Ok(None);
        }
        let burst = burst.unwrap_or_else(|| default_burst(rate));
        if tbf::buffer_ticks(rate, burst) > u64::from(u32::MAX) {
            return Err(format!(
                "burst {} is too large for rate {rate}: the bucket may hold at most 274 s of traffic",
                units::format_size(burst)
            ));
        }
        Ok(Some(Egress { rate, burst }))
    }
}

impl std::fmt::Display for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rate {} burst {}",
            self.rate,
            units::format_size(self.burst)
        )
    }
}

/// The egress limit of a container from its rate and burst settings (label values) and
/// the daemon's default rate. An own rate wins over the default (`0`: not shaped); a burst
/// without any rate is an error. Errors name the label.
pub fn resolve(
    rate: Option<&str>,
    burst: Option<&str>,
    default_rate: Option<Rate>,
) -> Result<Option<Egress>, String> {
    let burst = burst
        .filter(|b| !b.trim().is_empty())
        .map(|b| parse_burst(b, LABEL_BURST))
        .transpose()?;
    let rate = match rate.filter(|r| !r.trim().is_empty()) {
        Some(r) => parse_rate(r, LABEL_RATE)?,
        None => match default_rate {
            Some(r) => r,
            None if burst.is_some() => {
                return Err(format!(
                    "{LABEL_BURST} needs {LABEL_RATE} (the daemon has no --default-egress-rate)"
                ))
            }
            None => return Ok(None),
        },
    };
    Egress::new(rate, burst).map_err(|e| format!("invalid {LABEL_BURST}: {e}"))
}

/// [`resolve`] from a container's labels.
pub fn from_labels(
    labels: &HashMap<String, String>,
    default_rate: Option<Rate>,
) -> Result<Option<Egress>, String> {
    resolve(
        labels.get(LABEL_RATE).map(String::as_str),
        labels.get(LABEL_BURST).map(String::as_str),
        default_rate,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rate_wins_over_the_default_and_zero_means_unshaped() {
        let d = Some(Rate(1_250_000));
        assert_eq!(
            resolve(Some("50mbit"), None, d),
            Ok(Some(Egress {
                rate: Rate(6_250_000),
                burst: 65_536
            }))
        );
        assert_eq!(
            resolve(None, Some("128kb"), d),
            Ok(Some(Egress {
                rate: Rate(1_250_000),
                burst: 131_072
            }))
        );
        assert_eq!(resolve(Some("0"), None, d), Ok(None));
        assert_eq!(resolve(None, None, None), Ok(None));
        assert_eq!(resolve(Some(""), None, None), Ok(None));
    }

    #[test]
    fn errors_name_the_label() {
        let e = resolve(None, Some("64kb"), None).expect_err("burst alone");
        assert_eq!(
            e,
            "berth.egress.burst needs berth.egress.rate (the daemon has no --default-egress-rate)"
        );
        let e = resolve(Some("fast"), None, None).expect_err("rate");
        assert!(e.starts_with("invalid berth.egress.rate \"fast\""), "{e}");
        let e = resolve(Some("8kbit"), Some("1gb"), None).expect_err("bucket");
        assert!(
            e.starts_with("invalid berth.egress.burst: burst 1024Mb is too large"),
            "{e}"
        );
    }
}
