//! berth's nftables table (`table inet <name>`, never any other table): the base chains and
//! the rules of each bridge, reconciled against the live ruleset and applied as one `nft -f`
//! transaction.
//!
//! Why a generated script and not the `nftables` JSON crate: the rules are few and static,
//! `nft -f -` applies a whole script atomically just like a JSON batch, the script is
//! readable in logs and error messages, and no extra dependency is needed. The live state
//! is read with `nft -j list` and parsed with serde_json. Every rule carries a comment that
//! names its owner (`bridge <name>: ...`) and encodes its parameters, so a rule that is
//! already right is left alone and only missing or outdated rules change.

use crate::error::{ApiError, ApiResult};
use ipnet::Ipv4Net;
use serde_json::Value;

/// The base chains of the table: (name, definition). `isolation` runs before `forward`
/// (a drop in any base chain is final), so the drops of internal networks win over the
/// accepts of other bridges; `prerouting` and `output` hold published ports' DNAT.
const BASE_CHAINS: [(&str, &str); 5] = [
    (
        "isolation",
        "type filter hook forward priority -10; policy accept;",
    ),
    (
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "output",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority filter; policy accept;",
    ),
];

/// One wanted rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Chain it lives in.
    pub chain: String,
    /// The rule's statement, in nft syntax.
    pub body: String,
    /// Identity of the rule (owner prefix plus parameters).
    pub comment: String,
}

/// The owner prefix of a bridge's rules.
pub(crate) fn bridge_owner(bridge: &str) -> String {
    format!("bridge {bridge}:")
}

/// The rules of one bridge network: masquerade of the subnet leaving through another
/// interface, and forward accepts (inbound replies, outbound and bridge-internal traffic).
pub(crate) fn bridge_rules(bridge: &str, net: Ipv4Net) -> Vec<Rule> {
    let owner = bridge_owner(bridge);
    vec![
        Rule {
            chain: "postrouting".into(),
            body: format!("ip saddr {net} oifname != \"{bridge}\" masquerade"),
            comment: format!("{owner} masquerade {net}"),
        },
        Rule {
            chain: "forward".into(),
            body: format!("oifname \"{bridge}\" ct state established,related accept"),
            comment: format!("{owner} accept replies"),
        },
        Rule {
            chain: "forward".into(),
            body: format!("iifname \"{bridge}\" accept"),
            comment: format!("{owner} accept outbound"),
        },
    ]
}

/// The rules of a user-defined bridge network: like [`bridge_rules`] without the masquerade
/// when `masquerade` is false; an `internal` network gets no masquerade and no accepts,
/// only drops of whatever enters or leaves it through another interface (dockerd's
/// `--internal`: containers talk to each other and to nothing else).
pub(crate) fn network_rules(
    bridge: &str,
    net: Ipv4Net,
    masquerade: bool,
    internal: bool,
) -> Vec<Rule> {
    let owner = bridge_owner(bridge);
    if internal {
        return vec![
            Rule {
                chain: "isolation".into(),
                body: format!("iifname \"{bridge}\" oifname != \"{bridge}\" drop"),
                comment: format!("{owner} internal drop outbound"),
            },
            Rule {
                chain: "isolation".into(),
                body: format!("oifname \"{bridge}\" iifname != \"{bridge}\" drop"),
                comment: format!("{owner} internal drop inbound"),
            },
        ];
    }
    let mut rules = bridge_rules(bridge, net);
    if !masquerade {
        rules.retain(|r| r.chain != "postrouting");
    }
    rules
}

/// dockerd's isolation between networks: drops of whatever goes from `bridge` to any of
/// the `others` (each bridge owns the drops of its outbound side, so removing a network
/// removes its own drops and, through the others' wanted lists, theirs toward it).
pub(crate) fn isolation_rules(bridge: &str, others: &[&str]) -> Vec<Rule> {
    let owner = bridge_owner(bridge);
    others
        .iter()
        .filter(|o| **o != bridge)
        .map(|o| Rule {
            chain: "isolation".into(),
            body: format!("iifname \"{bridge}\" oifname \"{o}\" drop"),
            comment: format!("{owner} isolate from {o}"),
        })
        .collect()
}

/// The owner named in a rule comment of the form `bridge <name>: ...`.
pub(crate) fn comment_bridge(comment: &str) -> Option<&str> {
    comment
        .strip_prefix("bridge ")?
        .split_once(':')
        .map(|(b, _)| b)
}

/// What exists in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Chain names.
    pub chains: Vec<String>,
    /// Rules: (chain, handle, comment).
    pub rules: Vec<(String, u64, Option<String>)>,
}

/// Parses `nft -j list table ...` output.
pub(crate) fn parse_listing(json: &str) -> ApiResult<Listing> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| ApiError::internal("parse nft -j list output", e))?;
    let mut out = Listing::default();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::Internal("parse nft -j list output: no nftables array".into()))?;
    for item in items {
        if let Some(c) = item.get("chain") {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                out.chains.push(name.to_string());
            }
        } else if let Some(r) = item.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str);
            let handle = r.get("handle").and_then(Value::as_u64);
            if let (Some(chain), Some(handle)) = (chain, handle) {
                let comment = r.get("comment").and_then(Value::as_str).map(str::to_string);
                out.rules.push((chain.to_string(), handle, comment));
            }
        }
    }
    Ok(out)
}

/// Forward chains of *other* tables whose policy is drop (`nft -j list chains` output):
/// our accepts cannot override them, so the daemon warns about each.
pub(crate) fn foreign_forward_drops(json: &str, table: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let Some(items) = v.get("nftables").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").and_then(Value::as_str) == Some("forward"))
        .filter(|c| c.get("policy").and_then(Value::as_str) == Some("drop"))
        .filter(|c| {
            !(c.get("family").and_then(Value::as_str) == Some("inet")
                && c.get("table").and_then(Value::as_str) == Some(table))
        })
        .map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            format!("{} {} {}", s("family"), s("table"), s("name"))
        })
        .collect()
}

/// The nft script that brings `table` to the wanted state for `owner`'s rules, or `None`
/// when nothing needs to change. `listing` is `None` when the table does not exist.
#[cfg(test)]
pub(crate) fn plan(
    table: &str,
    listing: Option<&Listing>,
    owner: &str,
    wanted: &[Rule],
) -> Option<String> {
    plan_all(
        table,
        listing,
        &[(owner.to_string(), wanted.to_vec())],
        false,
    )
}

/// [`plan`] for several owners at once (one transaction). With `sweep`, rules of bridges
/// that are not among the owners (networks removed while no daemon ran) are deleted too.
pub(crate) fn plan_all(
    table: &str,
    listing: Option<&Listing>,
    owners: &[(String, Vec<Rule>)],
    sweep: bool,
) -> Option<String> {
    let empty = Listing::default();
    let have = listing.unwrap_or(&empty);
    let mut script = String::new();
    if listing.is_none() {
        script.push_str(&format!("add table inet {table}\n"));
    }
    for (name, def) in BASE_CHAINS {
        if !have.chains.iter().any(|c| c == name) {
            script.push_str(&format!("add chain inet {table} {name} {{ {def} }}\n"));
        }
    }
    for (chain, handle, comment) in &have.rules {
        let Some(comment) = comment else { continue };
        let mine = owners.iter().find(|(o, _)| comment.starts_with(o.as_str()));
        let still_wanted = match mine {
            Some((_, wanted)) => wanted
                .iter()
                .any(|w| &w.chain == chain && &w.comment == comment),
            None => !(sweep && comment_bridge(comment).is_some()),
        };
        if !still_wanted {
            script.push_str(&format!(
                "delete rule inet {table} {chain} handle {handle}\n"
            ));
        }
    }
    for w in owners.iter().flat_map(|(_, w)| w) {
        let present = have
            .rules
            .iter()
            .any(|(c, _, com)| c == &w.chain && com.as_deref() == Some(w.comment.as_str()));
        if !present {
            script.push_str(&format!(
                "add rule inet {table} {} {} comment \"{}\"\n",
                w.chain, w.body, w.comment
            ));
        }
    }
    (!script.is_empty()).then_some(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> anyhow::Result<Ipv4Net> {
        Ok("10.1.2.0/24".parse()?)
    }

    #[test]
    fn fresh_table_gets_everything() -> anyhow::Result<()> {
        let rules = bridge_rules("bt1", net()?);
        let s = plan("tb", None, &bridge_owner("bt1"), &rules).unwrap_or_default();
        assert!(s.starts_with("add table inet tb\n"));
        assert!(s.contains("add chain inet tb postrouting { type nat hook postrouting"));
        assert!(s.contains(
            "add rule inet tb postrouting ip saddr 10.1.2.0/24 oifname != \"bt1\" masquerade \
             comment \"bridge bt1: masquerade 10.1.2.0/24\""
        ));
        assert_eq!(s.matches("add rule").count(), 3);
        Ok(())
    }

    #[test]
    fn right_rules_are_left_alone_and_stale_ones_replaced() -> anyhow::Result<()> {
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
          {"table":{"family":"inet","name":"tb","handle":3}},
          {"chain":{"family":"inet","table":"tb","name":"isolation","handle":12,"type":"filter","hook":"forward","prio":-10,"policy":"accept"}},
          {"chain":{"family":"inet","table":"tb","name":"prerouting","handle":10,"type":"nat","hook":"prerouting","prio":-100,"policy":"accept"}},
          {"chain":{"family":"inet","table":"tb","name":"output","handle":11,"type":"nat","hook":"output","prio":-100,"policy":"accept"}},
          {"chain":{"family":"inet","table":"tb","name":"postrouting","handle":1,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
          {"chain":{"family":"inet","table":"tb","name":"forward","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
          {"rule":{"family":"inet","table":"tb","chain":"postrouting","handle":4,"comment":"bridge bt1: masquerade 10.9.0.0/16","expr":[]}},
          {"rule":{"family":"inet","table":"tb","chain":"forward","handle":5,"comment":"bridge bt1: accept replies","expr":[]}},
          {"rule":{"family":"inet","table":"tb","chain":"forward","handle":6,"comment":"bridge bt1: accept outbound","expr":[]}},
          {"rule":{"family":"inet","table":"tb","chain":"forward","handle":7,"comment":"ports: keep me","expr":[]}},
          {"rule":{"family":"inet","table":"tb","chain":"forward","handle":8,"expr":[]}}]}"#;
        let listing = parse_listing(json)?;
        assert_eq!(
            listing.chains,
            vec![
                "isolation",
                "prerouting",
                "output",
                "postrouting",
                "forward"
            ]
        );
        assert_eq!(listing.rules.len(), 5);
        let rules = bridge_rules("bt1", net()?);
        let s = plan("tb", Some(&listing), &bridge_owner("bt1"), &rules).unwrap_or_default();
        assert_eq!(
            s,
            "delete rule inet tb postrouting handle 4\n\
             add rule inet tb postrouting ip saddr 10.1.2.0/24 oifname != \"bt1\" masquerade \
             comment \"bridge bt1: masquerade 10.1.2.0/24\"\n"
        );
        // Once applied, nothing more to do.
        let mut done = listing.clone();
        done.rules.retain(|r| r.1 != 4);
        done.rules
            .push(("postrouting".into(), 9, Some(rules[0].comment.clone())));
        assert_eq!(plan("tb", Some(&done), &bridge_owner("bt1"), &rules), None);
        // Removing a bridge removes only its rules.
        let s = plan("tb", Some(&done), &bridge_owner("bt1"), &[]).unwrap_or_default();
        assert_eq!(s.matches("delete rule").count(), 3);
        assert!(!s.contains("handle 7") && !s.contains("handle 8"));
        Ok(())
    }

    #[test]
    fn internal_and_unmasqueraded_networks_and_sweep() -> anyhow::Result<()> {
        let internal = network_rules("br-1", net()?, true, true);
        assert!(internal.iter().all(|r| r.chain == "isolation"));
        assert_eq!(internal.len(), 2);
        assert!(internal[0]
            .body
            .contains("iifname \"br-1\" oifname != \"br-1\" drop"));
        let plain = network_rules("br-2", net()?, false, false);
        assert!(plain.iter().all(|r| r.chain == "forward"));
        assert_eq!(network_rules("br-2", net()?, true, false).len(), 3);
        let mut l = Listing {
            chains: vec!["isolation".into(), "postrouting".into(), "forward".into()],
            rules: Vec::new(),
        };
        for (i, r) in network_rules("br-gone", net()?, true, false)
            .iter()
            .enumerate()
        {
            l.rules
                .push((r.chain.clone(), i as u64 + 1, Some(r.comment.clone())));
        }
        l.rules
            .push(("forward".into(), 9, Some("ports: other owner".into())));
        let owners = vec![(bridge_owner("br-1"), internal)];
        let s = plan_all("tb", Some(&l), &owners, true).unwrap_or_default();
        assert_eq!(s.matches("delete rule").count(), 3, "{s}");
        assert!(!s.contains("handle 9"));
        assert_eq!(s.matches("add rule").count(), 2);
        let s = plan_all("tb", Some(&l), &owners, false).unwrap_or_default();
        assert_eq!(s.matches("delete rule").count(), 0);
        assert_eq!(comment_bridge("bridge br-x: accept"), Some("br-x"));
        let iso = isolation_rules("br-1", &["bt0", "br-1", "br-2"]);
        assert_eq!(iso.len(), 2);
        assert_eq!(iso[0].body, "iifname \"br-1\" oifname \"bt0\" drop");
        assert_eq!(iso[1].comment, "bridge br-1: isolate from br-2");
        assert_eq!(comment_bridge("ports: x"), None);
        Ok(())
    }

    #[test]
    fn other_tables_forward_drop_is_reported() {
        let json = r#"{"nftables":[{"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","policy":"drop"}},
          {"chain":{"family":"inet","table":"tb","name":"forward","hook":"forward","policy":"drop"}},
          {"chain":{"family":"inet","table":"x","name":"fw","hook":"forward","policy":"accept"}}]}"#;
        assert_eq!(foreign_forward_drops(json, "tb"), vec!["ip filter FORWARD"]);
        assert!(foreign_forward_drops("garbage", "tb").is_empty());
    }

    #[test]
    fn garbage_listing_is_an_error() {
        assert!(parse_listing("{}").is_err());
        assert!(parse_listing("nope").is_err());
    }
}
