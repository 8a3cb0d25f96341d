//! `POST /auth` (`docker login`): the credentials are checked against the registry's
//! `/v2/` endpoint, with HTTP basic auth or, when the registry answers with a bearer
//! challenge, by asking its token service for a token. Nothing is stored: the CLI keeps the
//! credentials and sends them with every pull (`X-Registry-Auth`).

use super::registry::{Insecure, Scheme};
use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use std::time::Duration;

/// The body of `POST /auth`.
#[derive(Debug, Default, Deserialize)]
pub struct LoginRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    serveraddress: String,
}

/// `host[:port]` of a login server address (`https://index.docker.io/v1/` is Docker Hub).
fn registry_of(address: &str) -> String {
    let a = address
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = a.split('/').next().unwrap_or(a).to_ascii_lowercase();
    match host.as_str() {
        "" | "docker.io" | "index.docker.io" => "registry-1.docker.io".into(),
        _ => host,
    }
}

/// `key="value"` pairs of a `Bearer …` challenge.
fn challenge_params(h: &str) -> Option<Vec<(String, String)>> {
    let rest = h
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| h.trim().strip_prefix("bearer "))?;
    let mut out = Vec::new();
    let mut s = rest;
    while let Some((k, v)) = s.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let v = v.trim_start();
        let (val, next) = match v.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((val, next)) => (val.to_string(), next),
                None => (q.to_string(), ""),
            },
            None => match v.split_once(',') {
                Some((val, next)) => (val.to_string(), next),
                None => (v.to_string(), ""),
            },
        };
        out.push((k, val));
        s = next;
    }
    Some(out)
}

/// Checks the credentials; `Ok` is dockerd's `Login Succeeded`.
pub async fn login(req: &LoginRequest, insecure: &Insecure) -> ApiResult<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = registry_of(&req.serveraddress);
    // An insecure registry is tried over HTTPS with any certificate, then plain HTTP.
    let schemes = super::registry::schemes(&registry, insecure);
    let mut attempt = 0;
    let (client, url, res) = loop {
        let scheme = schemes[attempt];
        let url = format!(
            "{}://{registry}/v2/",
            if scheme == Scheme::Http {
                "http"
            } else {
                "https"
            }
        );
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(scheme == Scheme::HttpsAnyCert)
            .build()
            .map_err(|e| ApiError::internal("create registry client", e))?;
        match client
            .get(&url)
            .basic_auth(&req.username, Some(&req.password))
            .send()
            .await
        {
            Ok(res) => break (client, url, res),
            Err(e) if (e.is_connect() || e.is_timeout()) && attempt + 1 < schemes.len() => {
                attempt += 1;
            }
            Err(e) => return Err(ApiError::Internal(format!("Get \"{url}\": {e}"))),
        }
    };
    let net = |e: reqwest::Error| ApiError::Internal(format!("Get \"{url}\": {e}"));
    let failed = |status: reqwest::StatusCode, url: &str| {
        ApiError::Internal(format!(
            "login attempt to {url} failed with status: {status}"
        ))
    };
    if res.status().is_success() {
        return Ok(());
    }
    let bearer = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(challenge_params);
    let Some(params) = bearer.filter(|_| res.status() == reqwest::StatusCode::UNAUTHORIZED) else {
        return Err(failed(res.status(), &url));
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let realm = get("realm").ok_or_else(|| failed(res.status(), &url))?;
    let mut query = vec![("account", req.username.clone())];
    if let Some(s) = get("service") {
        query.push(("service", s));
    }
    let tok = client
        .get(&realm)
        .query(&query)
        .basic_auth(&req.username, Some(&req.password))
        .send()
        .await
        .map_err(net)?;
    if tok.status().is_success() {
        return Ok(());
    }
    if tok.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(failed(tok.status(), &realm));
    }
    let body = tok.text().await.unwrap_or_default();
    Err(ApiError::Internal(format!(
        "Get \"{url}\": unauthorized: {}",
        super::registry::token_error_text(&body)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_and_challenges() {
        assert_eq!(registry_of("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(
            registry_of("https://index.docker.io/v1/"),
            "registry-1.docker.io"
        );
        assert_eq!(registry_of("http://Reg.lan:5000/v2/"), "reg.lan:5000");
        let p = challenge_params(
            r#"Bearer realm="https://auth.x/token",service="reg.x",scope="a:b:pull""#,
        )
        .expect("bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.x/token".into()));
        assert_eq!(p[1], ("service".into(), "reg.x".into()));
        assert_eq!(p[2], ("scope".into(), "a:b:pull".into()));
        assert!(challenge_params(r#"Basic realm="x""#).is_none());
    }
}
