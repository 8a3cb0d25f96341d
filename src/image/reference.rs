//! Image references as dockerd normalizes them: `busybox` → `docker.io/library/busybox:latest`,
//! `repo@sha256:<hex>` digests, and the familiar form shown to users (`busybox:latest`,
//! `127.0.0.1:5000/a/b:v1`).

use crate::error::{ApiError, ApiResult};

/// The default registry of short names.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The tag a name without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalized reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Fully qualified repository name (`docker.io/library/busybox`).
    pub name: String,
    /// Tag, if one was given.
    pub tag: Option<String>,
    /// Digest (`sha256:<hex>`), if one was given.
    pub digest: Option<String>,
}

fn bad(msg: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid reference format{msg}"))
}

/// Whether `s` is a lower-case hex string.
pub fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is `sha256:` followed by 64 lower-case hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && is_hex(h))
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok || i >= b.len() {
            return false;
        }
        if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let host = match d.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return false,
        None => d,
    };
    if host.starts_with('[') && host.ends_with(']') {
        return host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Reference {
    /// Parses and normalizes a reference (`ParseNormalizedNamed`).
    pub fn parse(s: &str) -> ApiResult<Reference> {
        if s.is_empty() {
            return Err(bad(""));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_digest(d) {
                    return Err(bad(""));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(bad(""));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        if name.len() == 64 && is_hex(name) {
            return Err(ApiError::BadRequest(format!(
                "invalid repository name ({name}), cannot specify 64-byte hexadecimal strings"
            )));
        }
        let (domain, path) = match name.split_once('/') {
            Some((d, p))
                if d.contains('.')
                    || d.contains(':')
                    || d == "localhost"
                    || d.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (d.to_string(), p.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(": repository name must be lowercase"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !valid_domain(&domain) || !path.split('/').all(valid_component) {
            return Err(bad(""));
        }
        let full = format!("{domain}/{path}");
        if full.len() > 255 {
            return Err(bad(
                ": repository name must not be more than 255 characters",
            ));
        }
        Ok(Reference {
            name: full,
            tag,
            digest,
        })
    }

    /// Like [`Reference::parse`], adding `:latest` when neither tag nor digest was given.
    pub fn parse_with_default_tag(s: &str) -> ApiResult<Reference> {
        let mut r = Reference::parse(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// Whether only a name was given.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The store key: `name:tag`, or `name@digest` when a digest is present.
    pub fn key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.name),
            (None, Some(t)) => format!("{}:{t}", self.name),
            (None, None) => self.name.clone(),
        }
    }

    /// The familiar repository name (`busybox`, `user/app`, `127.0.0.1:5000/a/b`).
    pub fn familiar_name(&self) -> String {
        familiar_name(&self.name)
    }

    /// The familiar string (`busybox:latest`, `busybox@sha256:…`).
    pub fn familiar(&self) -> String {
        familiar(&self.key())
    }
}

/// Strips `docker.io/` and `library/` from a fully qualified name.
pub fn familiar_name(name: &str) -> String {
    match name.strip_prefix("docker.io/") {
        Some(rest) => match rest.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short.to_string(),
            _ => rest.to_string(),
        },
        None => name.to_string(),
    }
}

/// The familiar form of a store key (`docker.io/library/busybox:latest` → `busybox:latest`).
pub fn familiar(key: &str) -> String {
    let split = key
        .find('@')
        .or_else(|| {
            let slash = key.rfind('/').map(|i| i + 1).unwrap_or(0);
            key[slash..].rfind(':').map(|i| slash + i)
        })
        .unwrap_or(key.len());
    format!("{}{}", familiar_name(&key[..split]), &key[split..])
}

/// Go's `path.Match`: `*` and `?` never match `/`; `[...]` classes with ranges and `^`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            let lo = p[i];
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                if lo <= c && c <= p[i + 2] {
                    matched = true;
                }
                i += 3;
            } else {
                if lo == c {
                    matched = true;
                }
                i += 1;
            }
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != '/')
                .any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some('[') => match (
                n.first(),
                class(&p[1..], n.first().copied().unwrap_or('\0')),
            ) {
                (Some(&c), Some((true, len))) if c != '/' => go(&p[1 + len..], &n[1..]),
                _ => false,
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalize_like_dockerd() -> ApiResult<()> {
        let r = Reference::parse_with_default_tag("busybox")?;
        assert_eq!(r.key(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        let r = Reference::parse("user/app:v1")?;
        assert_eq!(r.key(), "docker.io/user/app:v1");
        assert_eq!(r.familiar(), "user/app:v1");
        let r = Reference::parse("127.0.0.1:5000/a/b:v1")?;
        assert_eq!(r.name, "127.0.0.1:5000/a/b");
        assert_eq!(r.familiar(), "127.0.0.1:5000/a/b:v1");
        let r = Reference::parse("localhost/x")?;
        assert_eq!(r.name, "localhost/x");
        assert!(r.is_name_only());
        let r = Reference::parse("index.docker.io/library/alpine:3")?;
        assert_eq!(r.familiar(), "alpine:3");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}"))?;
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.familiar(), format!("busybox@{d}"));
        Ok(())
    }

    #[test]
    fn bad_references_are_refused() {
        for s in [
            "",
            "Busybox",
            "a//b",
            "a:",
            "a:-x",
            "-a",
            "a@sha256:12",
            "a..b",
            "x/",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} should fail");
        }
        let e = Reference::parse(&"a".repeat(64)).expect_err("hex");
        assert!(e.to_string().contains("64-byte hexadecimal"));
        let e = Reference::parse("Busybox").expect_err("upper");
        assert_eq!(
            e.to_string(),
            "invalid reference format: repository name must be lowercase"
        );
    }

    #[test]
    fn familiar_forms_strip_default_domain() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/library/a/b:1"), "library/a/b:1");
        assert_eq!(familiar("docker.io/u/a:1"), "u/a:1");
        assert_eq!(familiar("127.0.0.1:5000/a:1"), "127.0.0.1:5000/a:1");
        assert_eq!(familiar_name("quay.io/x/y"), "quay.io/x/y");
    }

    #[test]
    fn globs_follow_go_path_match() {
        assert!(glob_match("busy*", "busybox:latest"));
        assert!(glob_match("*:1", "rsbb:1"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("*/*", "a/b"));
        assert!(glob_match("b?sy[a-z]ox", "busybox"));
        assert!(!glob_match("b[^u]sybox", "busybox"));
        assert!(glob_match("a\\*", "a*"));
        assert!(!glob_match("abc", "abcd"));
    }
}
