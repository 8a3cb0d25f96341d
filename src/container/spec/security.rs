//! `HostConfig.SecurityOpt`: `no-new-privileges[:bool]`, `seccomp=unconfined|<json>`,
//! `apparmor=`/`label=` (accepted and ignored: berth has no LSM support), parsed like dockerd's
//! `parseSecurityOpt`, with its error wording.

use crate::error::{ApiError, ApiResult};

/// What the security options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    /// Set `no_new_privileges`.
    pub no_new_privileges: bool,
    /// `None`: the default profile; `Some("unconfined")`; or an inline JSON profile.
    pub seccomp: Option<String>,
}

/// Go's `%q` for the strings that reach these messages.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses `SecurityOpt`; a malformed entry is a 400 `invalid --security-opt 1: "x"` (no
/// separator) or `invalid --security-opt 2: "x"` (unknown key or bad value), as dockerd says.
pub fn parse(opts: &[String]) -> ApiResult<SecurityOpts> {
    let mut out = SecurityOpts::default();
    for opt in opts {
        if opt == "no-new-privileges" {
            out.no_new_privileges = true;
            continue;
        }
        if opt == "disable" {
            continue;
        }
        let kv = if opt.contains('=') {
            opt.split_once('=')
        } else {
            opt.split_once(':')
        };
        let Some((k, v)) = kv else {
            return Err(ApiError::BadRequest(format!(
                "invalid --security-opt 1: {}",
                go_quote(opt)
            )));
        };
        let two = || ApiError::BadRequest(format!("invalid --security-opt 2: {}", go_quote(opt)));
        match k {
            "label" | "apparmor" => {}
            "seccomp" => out.seccomp = Some(v.to_string()),
            "no-new-privileges" => out.no_new_privileges = parse_bool(v).ok_or_else(two)?,
            _ => return Err(two()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_the_known_forms() {
        assert_eq!(parse(&[]).expect("should succeed"), SecurityOpts::default());
        assert!(
            parse(&s(&["no-new-privileges"]))
                .expect("should succeed")
                .no_new_privileges
        );
        assert!(
            parse(&s(&["no-new-privileges:true"]))
                .expect("should succeed")
                .no_new_privileges
        );
        assert!(
            parse(&s(&["no-new-privileges=1"]))
                .expect("should succeed")
                .no_new_privileges
        );
        assert!(
            !parse(&s(&["no-new-privileges", "no-new-privileges=false"]))
                .expect("should succeed")
                .no_new_privileges
        );
        assert_eq!(
            parse(&s(&["seccomp=unconfined"]))
                .expect("should succeed")
                .seccomp
                .as_deref(),
            Some("unconfined")
        );
        assert_eq!(
            parse(&s(&["seccomp:unconfined"]))
                .expect("should succeed")
                .seccomp
                .as_deref(),
            Some("unconfined")
        );
        let json = r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","x":"a=b"}"#;
        assert_eq!(
            parse(&s(&[json]))
                .expect("should succeed")
                .seccomp
                .as_deref(),
            Some(r#"{"defaultAction":"SCMP_ACT_ALLOW","x":"a=b"}"#)
        );
        assert_eq!(
            parse(&s(&["apparmor=unconfined", "label=disable", "disable"]))
                .expect("should succeed"),
            SecurityOpts::default()
        );
    }

    #[test]
    fn errors_match_dockerd() {
        let e = |o: &str| parse(&s(&[o])).expect_err("should fail");
        assert_eq!(
            e("label").to_string(),
            r#"invalid --security-opt 1: "label""#
        );
        assert_eq!(
            e("unknown=something").to_string(),
            r#"invalid --security-opt 2: "unknown=something""#
        );
        assert_eq!(
            e("no-new-privileges=maybe").to_string(),
            r#"invalid --security-opt 2: "no-new-privileges=maybe""#
        );
        assert_eq!(e("x\"y").to_string(), r#"invalid --security-opt 1: "x\"y""#);
        assert_eq!(e("bogus").status(), 400);
    }
}
