//! Dockerfile instructions applied to an image config (`docker import -c`, `docker commit -c`):
//! CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL, ONBUILD.

use super::config::ContainerConfig;
use crate::error::{ApiError, ApiResult};
use std::collections::BTreeMap;

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// A JSON array of strings, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s.trim()).ok()
}

/// Exec form as given, or shell form wrapped in `/bin/sh -c`.
fn command(rest: &str, shell: &Option<Vec<String>>) -> Vec<String> {
    match json_array(rest) {
        Some(v) => v,
        None => {
            let mut v = shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()]);
            v.push(rest.to_string());
            v
        }
    }
}

/// Splits on unquoted whitespace, removing quotes and backslash escapes (Dockerfile words).
fn words(s: &str) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(bad(format!(
            "unexpected end of statement while looking for matching quote: {s}"
        )));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="V 2"` pairs, or the legacy `K V…` form.
fn pairs(instr: &str, rest: &str) -> ApiResult<Vec<(String, String)>> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err(bad(format!("{instr} requires at least one argument")));
    }
    if !first.contains('=') {
        let value = rest.trim_start()[first.len()..].trim();
        if value.is_empty() && instr == "ENV" {
            return Err(bad("ENV must have two arguments".into()));
        }
        let w = words(first)?;
        return Ok(vec![(w.concat(), words(value)?.join(" "))]);
    }
    words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad(format!("{instr} names can not be blank"))),
        })
        .collect()
}

fn expose(rest: &str, ports: &mut BTreeMap<String, serde_json::Value>) -> ApiResult<()> {
    for spec in rest.split_whitespace() {
        let (range, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad(format!("invalid proto: {proto}")));
        }
        let parse = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| bad(format!("invalid containerPort: {spec}")))
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(range)?;
                (p, p)
            }
        };
        if hi < lo {
            return Err(bad(format!(
                "invalid range specified for container port: {spec}"
            )));
        }
        for p in lo..=hi {
            ports.insert(format!("{p}/{proto}"), serde_json::json!({}));
        }
    }
    Ok(())
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).is_ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>().is_ok()
        || name.starts_with("SIGRTMIN")
        || name.starts_with("SIGRTMAX")
}

/// Applies `changes` (one Dockerfile instruction each, or several separated by newlines) to
/// `config`. Unknown instructions fail with dockerd's `<instr> is not a valid change command`.
pub fn apply_changes(config: &mut ContainerConfig, changes: &[String]) -> ApiResult<()> {
    let mut cmd_set = false;
    for line in changes.iter().flat_map(|c| c.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((line, ""));
        let instr = word.to_ascii_uppercase();
        match instr.as_str() {
            "CMD" => {
                config.cmd = Some(command(rest, &config.shell));
                cmd_set = true;
            }
            "ENTRYPOINT" => {
                config.entrypoint = match json_array(rest) {
                    Some(v) if v.is_empty() => None,
                    _ if rest.is_empty() => None,
                    _ => Some(command(rest, &config.shell)),
                };
                if !cmd_set {
                    config.cmd = None;
                }
            }
            "ENV" => {
                let env = config.env.get_or_insert_with(Vec::new);
                for (k, v) in pairs(&instr, rest)? {
                    let entry = format!("{k}={v}");
                    match env
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(k.as_str()))
                    {
                        Some(e) => *e = entry,
                        None => env.push(entry),
                    }
                }
            }
            "LABEL" => {
                let labels = config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in pairs(&instr, rest)? {
                    labels.insert(k, v);
                }
            }
            "EXPOSE" => {
                if rest.is_empty() {
                    return Err(bad("EXPOSE requires at least one argument".into()));
                }
                expose(rest, config.exposed_ports.get_or_insert_with(BTreeMap::new))?;
            }
            "USER" => {
                if rest.is_empty() {
                    return Err(bad("USER requires exactly one argument".into()));
                }
                config.user = rest.to_string();
            }
            "WORKDIR" => {
                if rest.is_empty() {
                    return Err(bad("WORKDIR requires exactly one argument".into()));
                }
                let joined = if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{}/{rest}", config.working_dir.trim_matches('/'))
                };
                config.working_dir = clean_path(&joined);
            }
            "VOLUME" => {
                let list = match json_array(rest) {
                    Some(v) => v,
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                if list.is_empty() {
                    return Err(bad("VOLUME requires at least one argument".into()));
                }
                let vols = config.volumes.get_or_insert_with(BTreeMap::new);
                for v in list {
                    if v.trim().is_empty() {
                        return Err(bad("VOLUME specified can not be an empty string".into()));
                    }
                    vols.insert(v, serde_json::json!({}));
                }
            }
            "STOPSIGNAL" => {
                if !valid_signal(rest) {
                    return Err(bad(format!("Invalid signal: {rest}")));
                }
                config.stop_signal = rest.to_string();
            }
            "ONBUILD" => {
                let trigger = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match trigger.as_str() {
                    "" => return Err(bad("ONBUILD requires at least one argument".into())),
                    "ONBUILD" => {
                        return Err(bad(
                            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()
                        ))
                    }
                    "MAINTAINER" | "FROM" => {
                        return Err(bad(format!(
                            "{trigger} isn't allowed as an ONBUILD trigger"
                        )))
                    }
                    _ => config
                        .on_build
                        .get_or_insert_with(Vec::new)
                        .push(rest.to_string()),
                }
            }
            _ => {
                return Err(bad(format!(
                    "{} is not a valid change command",
                    word.to_ascii_lowercase()
                )))
            }
        }
    }
    Ok(())
}

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`).
fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(changes: &[&str]) -> ApiResult<ContainerConfig> {
        let mut c = ContainerConfig::default();
        apply_changes(
            &mut c,
            &changes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(c)
    }

    #[test]
    fn cmd_and_entrypoint_take_both_forms() -> ApiResult<()> {
        let c = apply(&[r#"CMD ["sh"]"#])?;
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        let c = apply(&["cmd echo hi there"])?;
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi there".into()])
        );
        let c = apply(&[r#"CMD ["x"]"#, "ENTRYPOINT /init"])?;
        assert_eq!(
            c.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "/init".into()])
        );
        assert_eq!(c.cmd, Some(vec!["x".to_string()]));
        let c = apply(&[r#"ENTRYPOINT ["/a","b"]"#])?;
        assert_eq!(c.entrypoint, Some(vec!["/a".into(), "b".into()]));
        assert_eq!(c.cmd, None);
        Ok(())
    }

    #[test]
    fn env_and_labels_take_both_forms() -> ApiResult<()> {
        let c = apply(&["ENV A=1 B=\"two words\"", "ENV C 3 4", "ENV A=5"])?;
        assert_eq!(
            c.env,
            Some(vec![
                "A=5".to_string(),
                "B=two words".to_string(),
                "C=3 4".to_string()
            ])
        );
        let c = apply(&["LABEL a=b \"c d\"=e", "LABEL k v"])?;
        let l = c.labels.unwrap_or_default();
        assert_eq!(l.get("a").map(String::as_str), Some("b"));
        assert_eq!(l.get("c d").map(String::as_str), Some("e"));
        assert_eq!(l.get("k").map(String::as_str), Some("v"));
        assert!(apply(&["ENV A"]).is_err());
        assert!(apply(&["ENV =x"]).is_err());
        Ok(())
    }

    #[test]
    fn other_instructions_and_errors() -> ApiResult<()> {
        let c = apply(&[
            "EXPOSE 80 53/udp 8000-8001",
            "USER 1000:1000",
            "WORKDIR /srv",
            "WORKDIR app",
            "VOLUME [\"/data\"]",
            "VOLUME /a /b",
            "STOPSIGNAL SIGINT",
            "ONBUILD RUN true",
        ])?;
        let ports: Vec<String> = c.exposed_ports.unwrap_or_default().into_keys().collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.working_dir, "/srv/app");
        assert_eq!(c.volumes.unwrap_or_default().len(), 3);
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(c.on_build, Some(vec!["RUN true".to_string()]));
        let e = apply(&["RUN echo"]).expect_err("run");
        assert_eq!(e.to_string(), "run is not a valid change command");
        assert_eq!(e.status(), 400);
        assert!(apply(&["EXPOSE http"]).is_err());
        assert!(apply(&["STOPSIGNAL NOPE"]).is_err());
        assert!(apply(&["ONBUILD ONBUILD x"]).is_err());
        assert!(apply(&["ENV A=\"unterminated"]).is_err());
        Ok(())
    }
}
