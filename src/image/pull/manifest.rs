//! Manifest GETs with a size limit. oci-client reads a manifest whole before its size can be
//! looked at, so a hostile registry could make the daemon hold any amount of memory; this
//! GET streams the body and stops at the limit (a `Content-Length` over it is refused before
//! any byte is read). It carries the credentials the client's `auth` step settled on: the
//! bearer token it returned, or basic credentials.

use super::registry::Scheme;
use base64::Engine;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use std::time::Duration;

/// Why a manifest GET failed.
#[derive(Debug)]
pub(super) enum GetError {
    /// The request or the registry's answer, as oci-client would report it.
    Registry(OciDistributionError),
    /// The body is over the limit.
    TooLarge,
}

impl From<reqwest::Error> for GetError {
    fn from(e: reqwest::Error) -> Self {
        GetError::Registry(e.into())
    }
}

/// Manifest GETs at one registry endpoint.
pub(super) struct ManifestGet {
    http: reqwest::Client,
    scheme: &'static str,
    authorization: Option<String>,
}

impl ManifestGet {
    /// For `scheme`, with the token `auth` produced (if any) or `auth`'s basic credentials.
    pub fn new(
        scheme: Scheme,
        auth: &RegistryAuth,
        token: Option<String>,
    ) -> Result<Self, OciDistributionError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(scheme == Scheme::HttpsAnyCert)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()?;
        let authorization = match (token, auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
            _ => None,
        };
        Ok(ManifestGet {
            http,
            scheme: if scheme == Scheme::Http {
                "http"
            } else {
                "https"
            },
            authorization,
        })
    }

    /// GETs the manifest `oref` names, accepting `accept`, reading at most `limit` bytes.
    /// Returns the body and the `Docker-Content-Digest` header, if any.
    pub async fn get(
        &self,
        oref: &oci_client::Reference,
        accept: &[&str],
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), GetError> {
        let target = oref
            .digest()
            .or(oref.tag())
            .unwrap_or(crate::image::reference::DEFAULT_TAG);
        let url = format!(
            "{}://{}/v2/{}/manifests/{target}",
            self.scheme,
            oref.resolve_registry(),
            oref.repository()
        );
        let mut req = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, accept.join(", "));
        if let Some(a) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let mut res = req.send().await?;
        let status = res.status();
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if res.content_length().is_some_and(|n| n > limit) {
            return Err(GetError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(GetError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        answer(status, body, &url).map(|b| (b, digest))
    }
}

/// The body of a 200, else the error oci-client would give for that answer.
fn answer(status: reqwest::StatusCode, body: Vec<u8>, url: &str) -> Result<Vec<u8>, GetError> {
    let url = url.to_string();
    let e = match status {
        reqwest::StatusCode::OK => return Ok(body),
        reqwest::StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(&body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message: String::from_utf8_lossy(&body).to_string(),
            },
        },
        s => OciDistributionError::ServerError {
            code: s.as_u16(),
            url,
            message: String::from_utf8_lossy(&body).to_string(),
        },
    };
    Err(GetError::Registry(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_like_oci_client() {
        let ok = answer(reqwest::StatusCode::OK, b"{}".to_vec(), "u");
        assert!(matches!(ok, Ok(b) if b == b"{}"));
        let unknown = answer(
            reqwest::StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
            "u",
        );
        assert!(matches!(
            unknown,
            Err(GetError::Registry(
                OciDistributionError::RegistryError { .. }
            ))
        ));
        let denied = answer(reqwest::StatusCode::UNAUTHORIZED, Vec::new(), "u");
        assert!(matches!(
            denied,
            Err(GetError::Registry(
                OciDistributionError::UnauthorizedError { .. }
            ))
        ));
        let broken = answer(reqwest::StatusCode::BAD_GATEWAY, b"x".to_vec(), "u");
        assert!(matches!(
            broken,
            Err(GetError::Registry(OciDistributionError::ServerError {
                code: 502,
                ..
            }))
        ));
    }

    #[test]
    fn credentials_follow_the_auth_step() {
        let basic = RegistryAuth::Basic("u".into(), "p".into());
        let g = ManifestGet::new(Scheme::Http, &basic, None).expect("client");
        assert_eq!(g.authorization.as_deref(), Some("Basic dTpw"));
        assert_eq!(g.scheme, "http");
        let g = ManifestGet::new(Scheme::HttpsAnyCert, &basic, Some("tok".into())).expect("client");
        assert_eq!(g.authorization.as_deref(), Some("Bearer tok"));
        assert_eq!(g.scheme, "https");
        let g = ManifestGet::new(Scheme::Https, &RegistryAuth::Anonymous, None).expect("client");
        assert_eq!(g.authorization, None);
    }
}
