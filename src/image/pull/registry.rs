//! The registry side of a pull: which registries are plain HTTP (`--insecure-registry`,
//! loopback), the credentials of `X-Registry-Auth`, the oci-client [`Client`] for one pull,
//! and registry errors worded as dockerd words them.

use crate::error::ApiError;
use base64::Engine;
use ipnet::IpNet;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// Registries reached over plain HTTP: `--insecure-registry` entries (`host[:port]` or a
/// CIDR the registry's address is in) and, always, loopback (`localhost`, `127.0.0.0/8`,
/// `::1`), as dockerd does.
#[derive(Debug, Clone, Default)]
pub struct Insecure {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

/// The host part of `host[:port]` (brackets of an IPv6 literal removed).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    }
}

impl Insecure {
    /// Parses `--insecure-registry` values (and daemon.json `insecure-registries`).
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let mut out = Insecure::default();
        for raw in list {
            let e = raw.trim();
            if e.contains("://") {
                return Err(format!("insecure registry {e} should not contain '://'"));
            }
            if let Ok(net) = e.parse::<IpNet>() {
                out.nets.push(net);
            } else if e.is_empty() || e.contains('/') {
                return Err(format!("insecure registry {e:?} is not valid"));
            } else {
                out.hosts.push(e.to_ascii_lowercase());
            }
        }
        Ok(out)
    }

    /// `/info` `RegistryConfig.InsecureRegistryCIDRs` (loopback first, as dockerd lists it).
    pub fn cidrs(&self) -> Vec<String> {
        let mut v = vec!["127.0.0.0/8".to_string()];
        v.extend(self.nets.iter().map(|n| n.to_string()));
        v
    }

    /// The registries listed by name.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Whether `registry` (`host[:port]`) is pulled from over plain HTTP.
    pub fn allows(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        let host = host_of(&registry);
        if self.hosts.iter().any(|h| *h == registry || h == host) || host == "localhost" {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || self.nets.iter().any(|n| n.contains(&ip)),
            Err(_) => false,
        }
    }
}

/// The JSON of `X-Registry-Auth` (the fields a pull uses).
#[derive(Debug, Default, Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    registrytoken: String,
}

/// Credentials from `X-Registry-Auth` (base64url JSON). Like dockerd, a header that does not
/// decode means no credentials.
pub fn decode_auth(header: Option<&str>) -> RegistryAuth {
    let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return RegistryAuth::Anonymous;
    };
    let engines = [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let Some(json) = engines.iter().find_map(|e| e.decode(h).ok()) else {
        return RegistryAuth::Anonymous;
    };
    let cfg: AuthConfig = serde_json::from_slice(&json).unwrap_or_default();
    if !cfg.registrytoken.is_empty() {
        return RegistryAuth::Bearer(cfg.registrytoken);
    }
    if !cfg.username.is_empty() {
        return RegistryAuth::Basic(cfg.username, cfg.password);
    }
    let pair = base64::engine::general_purpose::STANDARD
        .decode(cfg.auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    match pair.as_deref().and_then(|p| p.split_once(':')) {
        Some((u, p)) if !u.is_empty() => RegistryAuth::Basic(u.to_string(), p.to_string()),
        _ => RegistryAuth::Anonymous,
    }
}

/// A client for one pull from `registry` (plain HTTP when `insecure` allows it).
pub fn client(registry: &str, insecure: &Insecure) -> Client {
    client_plain(insecure.allows(registry))
}

/// A client speaking plain HTTP or HTTPS.
pub fn client_plain(plain: bool) -> Client {
    client_with(if plain { Scheme::Http } else { Scheme::Https })
}

/// How a client reaches its registry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// HTTPS with the certificate checked.
    Https,
    /// HTTPS with any certificate (an insecure registry's first try, as dockerd does).
    HttpsAnyCert,
    /// Plain HTTP.
    Http,
}

/// The schemes to try for `registry`, in order: an insecure registry (loopback or
/// `--insecure-registry`) over HTTPS with any certificate, then plain HTTP when that gets
/// no answer; any other over HTTPS with its certificate checked (dockerd's order).
pub fn schemes(registry: &str, insecure: &Insecure) -> Vec<Scheme> {
    if insecure.allows(registry) {
        vec![Scheme::HttpsAnyCert, Scheme::Http]
    } else {
        vec![Scheme::Https]
    }
}

/// A client for `scheme`.
pub fn client_with(scheme: Scheme) -> Client {
    // reqwest is built without a TLS provider of its own: ring is installed once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = match scheme {
        Scheme::Http => ClientProtocol::Http,
        Scheme::Https | Scheme::HttpsAnyCert => ClientProtocol::Https,
    };
    Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: scheme == Scheme::HttpsAnyCert,
        connect_timeout: Some(Duration::from_secs(30)),
        // A registry that stops answering fails the pull instead of holding it for ever;
        // an insecure registry's HTTPS try gives up like dockerd's TLS handshake (10 s).
        read_timeout: Some(Duration::from_secs(if scheme == Scheme::HttpsAnyCert {
            10
        } else {
            60
        })),
        // Index selection is ours (linux/<host arch>), never the library's.
        platform_resolver: None,
        ..Default::default()
    })
}

/// Whether a request failed before any HTTP answer (refused, TLS handshake, timeout): the
/// case in which dockerd tries an insecure registry's next endpoint (plain HTTP).
pub fn unreachable(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() || r.is_request())
}

/// `manifest unknown: manifest unknown` (the code as text, then the message), per error.
pub fn envelope_text(envelope: &OciEnvelope) -> String {
    envelope
        .errors
        .iter()
        .map(|e| {
            let code = serde_json::to_value(&e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into())
                .to_ascii_lowercase()
                .replace('_', " ");
            if e.message.is_empty() {
                code
            } else {
                format!("{code}: {}", e.message)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a token service's refusal says: its `details`, or its errors' messages, or the
/// body itself.
pub fn token_error_text(body: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return body.trim().to_string(),
    };
    if let Some(d) = v["details"].as_str() {
        return d.to_string();
    }
    let msgs: Vec<&str> = v["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    if msgs.is_empty() {
        body.trim().to_string()
    } else {
        msgs.join(", ")
    }
}

/// The error and its causes, joined like Go's wrapped errors.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// A transport error as Go's net package words it (`dial tcp 127.0.0.1:1: connect:
/// connection refused`) when it is a failed connect, else the error chain.
/// A refused server certificate as Go's crypto/x509 words it (what dockerd prints).
fn x509_text(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "x509: certificate has expired or is not yet valid".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "x509: certificate is not valid for this host".into()
        }
        C::Revoked => "x509: certificate has been revoked".into(),
        // Unknown issuer, a self-signed (CA) certificate used by the server, bad signature.
        _ => "x509: certificate signed by unknown authority".into(),
    }
}

fn request_error(r: &reqwest::Error) -> String {
    if r.is_timeout() {
        return "i/o timeout".into();
    }
    let mut cur: Option<&dyn std::error::Error> = Some(r);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            // TLS spoken to a plain-HTTP server: rustls reads a non-TLS record.
            if text.to_ascii_lowercase().contains("invalidcontenttype") {
                return "http: server gave HTTP response to HTTPS client".into();
            }
            // io::Error's source() skips the error it wraps: look at that one too.
            let mut inner: Option<&(dyn std::error::Error + 'static)> = io
                .get_ref()
                .map(|x| x as &(dyn std::error::Error + 'static));
            while let Some(x) = inner {
                if let Some(rustls::Error::InvalidCertificate(c)) =
                    x.downcast_ref::<rustls::Error>()
                {
                    return x509_text(c);
                }
                inner = match x.downcast_ref::<std::io::Error>() {
                    Some(io) => io
                        .get_ref()
                        .map(|y| y as &(dyn std::error::Error + 'static)),
                    None => x.source(),
                };
            }
            if io.kind() == std::io::ErrorKind::InvalidData {
                return format!("tls: {text}");
            }
            if r.is_connect() {
                let text = text
                    .split(" (os error")
                    .next()
                    .unwrap_or(&text)
                    .to_lowercase();
                let addr = r
                    .url()
                    .map(|u| {
                        let port = u.port_or_known_default().unwrap_or(0);
                        format!("{}:{port}", u.host_str().unwrap_or(""))
                    })
                    .unwrap_or_default();
                return format!("dial tcp {addr}: connect: {text}");
            }
        }
        cur = e.source();
    }
    chain(r)
}

/// What a registry step failed with, as dockerd says it. `manifest_of` is the familiar
/// reference when the step fetched its manifest (an unknown manifest or repository is then
/// a 404 `manifest for … not found: …`); `anonymous` tells a 401 without credentials
/// (`no basic auth credentials`) from one with wrong ones.
pub fn registry_error(
    e: OciDistributionError,
    step: &str,
    manifest_of: Option<&str>,
    anonymous: bool,
) -> ApiError {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::RegistryError { envelope, url } => {
            let text = envelope_text(&envelope);
            let unknown = envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown));
            match manifest_of {
                Some(r) if unknown => {
                    ApiError::NotFound(format!("manifest for {r} not found: {text}"))
                }
                _ => ApiError::Internal(format!("{step} \"{url}\": {text}")),
            }
        }
        OciDistributionError::ImageManifestNotFoundError(m) => match manifest_of {
            Some(r) => {
                ApiError::NotFound(format!("manifest for {r} not found: manifest unknown: {m}"))
            }
            None => ApiError::Internal(format!("{step}: {m}")),
        },
        OciDistributionError::UnauthorizedError { url } => {
            let why = if anonymous {
                "no basic auth credentials"
            } else {
                "unauthorized: authentication required"
            };
            ApiError::Internal(format!("{step} \"{url}\": {why}"))
        }
        OciDistributionError::AuthenticationFailure(m) => {
            ApiError::Internal(format!("unauthorized: {}", token_error_text(&m)))
        }
        OciDistributionError::RequestError(r) => {
            let url = r.url().map(|u| u.to_string()).unwrap_or_default();
            ApiError::Internal(format!("{step} \"{url}\": {}", request_error(&r)))
        }
        OciDistributionError::ServerError { url, code, message } => ApiError::Internal(format!(
            "{step} \"{url}\": received unexpected HTTP status: {code} {}",
            message.trim()
        )),
        other => ApiError::Internal(format!("{step}: {}", chain(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_are_plain_http() {
        let i =
            Insecure::parse(&["reg.lan:5000".into(), "10.9.0.0/16".into()]).expect("valid list");
        assert!(i.allows("127.0.0.1:5000"));
        assert!(i.allows("127.3.4.5"));
        assert!(i.allows("localhost:5000"));
        assert!(i.allows("[::1]:5000"));
        assert!(i.allows("reg.lan:5000"));
        assert!(i.allows("10.9.3.4:443"));
        assert!(!i.allows("reg.lan:5001"));
        assert!(!i.allows("10.8.0.1:5000"));
        assert!(!i.allows("index.docker.io"));
        assert!(Insecure::parse(&["http://x".into()]).is_err());
    }

    #[test]
    fn auth_header_forms() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE.encode(s);
        assert!(matches!(decode_auth(None), RegistryAuth::Anonymous));
        assert!(matches!(decode_auth(Some("e30=")), RegistryAuth::Anonymous));
        assert!(matches!(decode_auth(Some("!!")), RegistryAuth::Anonymous));
        match decode_auth(Some(&b64(r#"{"username":"u","password":"p?>"}"#))) {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("u", "p?>")),
            other => panic!("{other:?}"),
        }
        let pair = base64::engine::general_purpose::STANDARD.encode("a:b:c");
        match decode_auth(Some(&b64(&format!(r#"{{"auth":"{pair}"}}"#)))) {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("a", "b:c")),
            other => panic!("{other:?}"),
        }
        match decode_auth(Some(&b64(r#"{"registrytoken":"tok"}"#))) {
            RegistryAuth::Bearer(t) => assert_eq!(t, "tok"),
            other => panic!("{other:?}"),
        }
    }
}
