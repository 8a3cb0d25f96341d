//! Event filters as `GET /events` takes them (`type`, `event`, `container`, `image`,
//! `label`, …), matched the way dockerd matches them.

use super::Event;
use std::collections::HashMap;

/// Event filters as the CLI sends them (`type`, `event`, `container`, `image`, `label`, …).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// filter key → accepted values.
    pub filters: HashMap<String, Vec<String>>,
}

impl EventFilter {
    /// Whether an event passes every filter key (values of one key are OR-ed).
    pub fn matches(&self, ev: &Event) -> bool {
        self.filters.iter().all(|(key, vals)| {
            vals.iter().any(|v| match key.as_str() {
                "type" => ev.typ == *v,
                "event" => ev.action == *v || ev.action.starts_with(&format!("{v}:")),
                // dockerd's "fuzzy" match: the id or the name, exactly or by prefix.
                "container" => {
                    ev.typ == "container"
                        && (ev.actor.id.starts_with(v.as_str())
                            || ev
                                .actor
                                .attributes
                                .get("name")
                                .is_some_and(|n| n.starts_with(v.as_str())))
                }
                // The image of a container event (`image`), or an image event's id or
                // `name`, with or without its tag.
                "image" => {
                    let attr = if ev.typ == "image" { "name" } else { "image" };
                    let name = ev.actor.attributes.get(attr).map(String::as_str);
                    [Some(ev.actor.id.as_str()), name]
                        .into_iter()
                        .flatten()
                        .any(|s| s == v || strip_tag(s) == v)
                }
                "network" => {
                    ev.typ == "network"
                        && (ev.actor.id.starts_with(v.as_str())
                            || ev.actor.attributes.get("name") == Some(v))
                }
                "label" => match v.split_once('=') {
                    Some((k, val)) => ev.actor.attributes.get(k).map(String::as_str) == Some(val),
                    None => ev.actor.attributes.contains_key(v.as_str()),
                },
                "scope" => v == "local",
                _ => true,
            })
        })
    }
}

/// The filter keys dockerd accepts on `/events`.
pub const FILTER_KEYS: &[&str] = &[
    "config",
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
];

/// An image reference without its tag or digest (`bb:test` → `bb`,
/// `127.0.0.1:5000/x:1` → `127.0.0.1:5000/x`); ids and plain names are returned unchanged.
fn strip_tag(s: &str) -> &str {
    if s.starts_with("sha256:") {
        return s;
    }
    let s = s.split_once('@').map_or(s, |(n, _)| n);
    match s.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBus;
    use std::collections::BTreeMap;

    #[test]
    fn events_have_legacy_fields_and_filters_work() {
        let bus = EventBus::new();
        let mut attrs = BTreeMap::new();
        attrs.insert("name".to_string(), "web".to_string());
        attrs.insert("image".to_string(), "busybox".to_string());
        attrs.insert("exitCode".to_string(), "3".to_string());
        bus.publish("container", "die", "abc123", attrs);
        bus.publish("image", "tag", "sha256:1", BTreeMap::new());
        let past = bus.subscribe_after(None).past;
        assert_eq!(past.len(), 2);
        let json = serde_json::to_value(&past[0]).expect("json");
        assert_eq!(json["status"], "die");
        assert_eq!(json["from"], "busybox");
        assert_eq!(json["Actor"]["Attributes"]["exitCode"], "3");
        let mut f = EventFilter::default();
        f.filters.insert("container".into(), vec!["web".into()]);
        assert!(f.matches(&past[0]));
        assert!(!f.matches(&past[1]));
        f.filters.insert("event".into(), vec!["start".into()]);
        assert!(!f.matches(&past[0]));
    }

    #[test]
    fn image_filter_matches_with_and_without_tag_and_container_by_prefix() {
        let bus = EventBus::new();
        let mut attrs = BTreeMap::new();
        attrs.insert("name".to_string(), "web10".to_string());
        attrs.insert("image".to_string(), "reg:5000/bb:test".to_string());
        bus.publish("container", "start", "abc123", attrs);
        let mut img = BTreeMap::new();
        img.insert("name".to_string(), "bb:test".to_string());
        bus.publish("image", "tag", "sha256:1", img);
        let past = bus.subscribe_after(None).past;
        let check = |key: &str, val: &str| {
            let mut f = EventFilter::default();
            f.filters.insert(key.into(), vec![val.into()]);
            (f.matches(&past[0]), f.matches(&past[1]))
        };
        assert_eq!(check("image", "reg:5000/bb"), (true, false));
        assert_eq!(check("image", "reg:5000/bb:test"), (true, false));
        assert_eq!(check("image", "reg"), (false, false));
        assert_eq!(check("image", "bb"), (false, true));
        assert_eq!(check("image", "sha256:1"), (false, true));
        assert_eq!(check("container", "web1"), (true, false));
        assert_eq!(check("container", "abc"), (true, false));
        assert_eq!(check("container", "other"), (false, false));
        assert_eq!(strip_tag("bb@sha256:00"), "bb");
    }
}
