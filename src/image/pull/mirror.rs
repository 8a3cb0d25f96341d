//! `--registry-mirror`: registries tried, in order, before Docker Hub for images of
//! `docker.io`. A mirror is a URL (`http://` or `https://`, host and port, nothing after);
//! `http://` ones are spoken to over plain HTTP. A mirror that fails (unreachable, refusing,
//! missing the image) is skipped for the next one and finally for Docker Hub, as dockerd does.

/// One mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// As `/info` shows it: `scheme://host[:port]/`.
    pub url: String,
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP (`http://`).
    pub plain: bool,
}

/// Parses `--registry-mirror` values (and daemon.json `registry-mirrors`) with dockerd's
/// checks and messages.
pub fn parse(list: &[String]) -> Result<Vec<Mirror>, String> {
    let mut out: Vec<Mirror> = Vec::new();
    for raw in list {
        let v = raw.trim();
        let (scheme, rest) = match v.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => {
                return Err(format!(
                    "invalid mirror: unsupported scheme \"\" in \"{v}\""
                ))
            }
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "invalid mirror: unsupported scheme \"{scheme}\" in \"{v}\""
            ));
        }
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.contains(['/', '?', '#']) {
            return Err(format!(
                "invalid mirror: path, query, or fragment at end of the URI \"{v}\""
            ));
        }
        if host.is_empty() || host.contains('@') || host.contains(char::is_whitespace) {
            return Err(format!("invalid mirror: \"{v}\" is not a valid URI"));
        }
        let m = Mirror {
            url: format!("{scheme}://{host}/"),
            host: host.to_ascii_lowercase(),
            plain: scheme == "http",
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Vec<Mirror>, String> {
        parse(&[s.to_string()])
    }

    #[test]
    fn mirrors_are_checked_like_dockerd() {
        let m = one("http://127.0.0.1:5000").expect("valid");
        assert_eq!(m[0].url, "http://127.0.0.1:5000/");
        assert_eq!(m[0].host, "127.0.0.1:5000");
        assert!(m[0].plain);
        let m = one("https://Mirror.example.com/").expect("valid");
        assert_eq!(m[0].url, "https://Mirror.example.com/");
        assert_eq!(m[0].host, "mirror.example.com");
        assert!(!m[0].plain);
        assert_eq!(
            one("ftp://x").expect_err("refused"),
            "invalid mirror: unsupported scheme \"ftp\" in \"ftp://x\""
        );
        assert_eq!(
            one("127.0.0.1:5000").expect_err("refused"),
            "invalid mirror: unsupported scheme \"\" in \"127.0.0.1:5000\""
        );
        assert_eq!(
            one("http://m/v2/").expect_err("refused"),
            "invalid mirror: path, query, or fragment at end of the URI \"http://m/v2/\""
        );
        let two = parse(&["http://a:1".into(), "http://a:1/".into()]).expect("valid");
        assert_eq!(two.len(), 1, "duplicates collapse");
    }
}
