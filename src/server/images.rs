//! Image endpoints: list, inspect, history, tag, remove, load, pull, push and import
//! (`images/create` with `fromImage` / `fromSrc`), save (`images/get`). Image names contain slashes and colons, so routes are
//! matched on the `/images/` prefix and a known suffix (`/json`, `/tag`, `/push`, `/history`,
//! `/get`) rather than by segment.
//!
//! Blocking store work runs on `spawn_blocking`. The in-use check for `rmi` is the one
//! installed with [`crate::image::ImageStore::set_in_use_checker`] (the container module
//! installs it; until then no image is in use).

use super::http::{Request, Response};
use super::system::parse_filters;
use super::Daemon;
use crate::error::{ApiError, ApiResult};
use crate::image::progress::message;
use crate::image::pull;
use crate::image::push;
use crate::image::reference::Reference;
use crate::image::ImageStore;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;

/// Runs `f` on the blocking pool with the image store.
async fn blocking<T, F>(d: &Daemon, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&ImageStore) -> ApiResult<T> + Send + 'static,
{
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || f(&images))
        .await
        .map_err(|e| ApiError::internal("image task", e))?
}

/// Routes a request whose path starts with `/images`.
pub async fn route(d: &Arc<Daemon>, req: Request) -> ApiResult<Response> {
    let Some(rest) = req.path.strip_prefix("/images/").map(str::to_string) else {
        return Err(ApiError::NotFound(format!(
            "page not found: {} {}",
            req.method, req.path
        )));
    };
    let method = req.method.clone();
    match (method.as_str(), rest.as_str()) {
        ("GET", "json") => list(d, &req).await,
        ("POST", "load") => load(d, req).await,
        ("POST", "create") => create(d, req).await,
        ("GET", "get") => save(d, req.q_all("names")).await,
        ("POST", "prune") => prune(d, &req).await,
        ("DELETE", name) if !name.is_empty() => remove(d, &req, name.to_string()).await,
        (m, r) => {
            let (name, action) = match r.rsplit_once('/') {
                Some((n, a)) if !n.is_empty() => (n.to_string(), a),
                _ => {
                    return Err(ApiError::NotFound(format!(
                        "page not found: {m} {}",
                        req.path
                    )))
                }
            };
            match (m, action) {
                ("GET", "json") => {
                    let v = blocking(d, move |s| s.inspect(&name)).await?;
                    Ok(Response::json(200, &v))
                }
                ("GET", "history") => {
                    let v = blocking(d, move |s| s.history(&name)).await?;
                    Ok(Response::json(200, &v))
                }
                ("POST", "tag") => {
                    let repo = req.q("repo").unwrap_or("").to_string();
                    let tag = req.q("tag").unwrap_or("").to_string();
                    blocking(d, move |s| s.tag(&name, &repo, &tag)).await?;
                    Ok(Response::empty(201))
                }
                ("GET", "get") => save(d, vec![name]).await,
                ("POST", "push") => push(d, &req, &name).await,
                _ => Err(ApiError::NotFound(format!(
                    "page not found: {m} {}",
                    req.path
                ))),
            }
        }
    }
}

/// `GET /images/json?all=&filters=` (and the legacy `filter=` reference).
async fn list(d: &Daemon, req: &Request) -> ApiResult<Response> {
    let all = req.q_bool("all", false);
    let mut filters = parse_filters(req.q("filters"))?;
    if let Some(r) = req.q("filter").filter(|s| !s.is_empty()) {
        filters
            .entry("reference".into())
            .or_default()
            .push(r.to_string());
    }
    let v = blocking(d, move |s| s.list(all, &filters)).await?;
    Ok(Response::json(200, &v))
}

/// `DELETE /images/{name}?force=&noprune=`.
async fn remove(d: &Daemon, req: &Request, name: String) -> ApiResult<Response> {
    let force = req.q_bool("force", false);
    let noprune = req.q_bool("noprune", false);
    let v = blocking(d, move |s| {
        let check = s.in_use_checker();
        s.remove(&name, force, noprune, &*check)
    })
    .await?;
    Ok(Response::json(200, &v))
}

/// `POST /images/prune?filters=`: only the `dangling` filter is supported.
async fn prune(d: &Daemon, req: &Request) -> ApiResult<Response> {
    let filters = parse_filters(req.q("filters"))?;
    let mut all = false;
    for (k, vals) in &filters {
        match k.as_str() {
            "dangling" => all = vals.iter().any(|v| matches!(v.as_str(), "false" | "0")),
            other => {
                return Err(ApiError::NotImplemented(format!(
                    "image prune filter '{other}' is not supported yet"
                )))
            }
        }
    }
    let (deleted, reclaimed) = blocking(d, move |s| {
        let check = s.in_use_checker();
        s.prune(all, &*check)
    })
    .await?;
    let deleted = if deleted.is_empty() {
        serde_json::Value::Null
    } else {
        json!(deleted)
    };
    Ok(Response::json(
        200,
        &json!({"ImagesDeleted": deleted, "SpaceReclaimed": reclaimed}),
    ))
}

/// `POST /images/load`: 200 and a JSON-message stream; a failure ends the stream with an
/// `errorDetail` message, as dockerd does.
async fn load(d: &Daemon, req: Request) -> ApiResult<Response> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let images = d.images.clone();
    let mut body = req.body.reader();
    tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let res = images.load(&mut body, &mut |msg| {
            let _ = progress_tx.blocking_send(message(&json!({ "stream": msg })));
        });
        if let Err(e) = res {
            tracing::info!(error = %e, "image load failed");
            let msg = e.to_string();
            let _ = tx.blocking_send(message(
                &json!({"errorDetail": {"message": msg}, "error": msg}),
            ));
        }
    });
    Ok(Response::Stream {
        status: 200,
        content_type: "application/json",
        headers: vec![],
        rx,
        resumable: None,
    })
}

/// `POST /images/create?fromImage=&tag=`: pull. Registry errors found before the first
/// progress line (unknown manifest, refused credentials, unreachable registry) are plain
/// error responses; later ones end the stream with an `errorDetail`, as dockerd does.
async fn pull(d: &Daemon, req: &Request, from: &str) -> ApiResult<Response> {
    let tag = req.q("tag").unwrap_or("");
    let auth = pull::decode_auth(req.header("x-registry-auth"));
    if tag.is_empty() {
        // The CLI always names a tag, except for `docker pull -a`.
        let repo = Reference::parse(from)?;
        if repo.is_name_only() {
            return pull_all_tags(d, repo, auth).await;
        }
    }
    let full = if tag.is_empty() {
        from.to_string()
    } else if tag.contains(':') {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let reference = Reference::parse_with_default_tag(&full)?;
    let plan = pull::prepare(
        reference,
        auth,
        &d.config.insecure_registries,
        &d.config.registry_mirrors,
    )
    .await?;
    let images = d.images.clone();
    Ok(progress_stream("pull", move |tx| {
        pull::run(images, plan, tx)
    }))
}

/// `docker pull -a`: the tags are listed before the stream starts (an unknown repository is
/// a plain error), then pulled one after the other.
async fn pull_all_tags(
    d: &Daemon,
    repo: Reference,
    auth: oci_client::secrets::RegistryAuth,
) -> ApiResult<Response> {
    let (insecure, mirrors) = (
        d.config.insecure_registries.clone(),
        d.config.registry_mirrors.clone(),
    );
    let tags = pull::list_tags(&repo, &auth, &insecure, &mirrors).await?;
    let images = d.images.clone();
    Ok(progress_stream("pull", move |tx| {
        pull::run_all_tags(images, repo, tags, auth, insecure, mirrors, tx)
    }))
}

/// The JSON-message stream of a pull or push (`what`); an error ends it with an
/// `errorDetail`.
fn progress_stream<F, Fut>(what: &'static str, work: F) -> Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let fut = work(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::info!(error = %e, what, "image transfer failed");
            let msg = e.to_string();
            let _ = tx
                .send(message(
                    &json!({"errorDetail": {"message": msg}, "error": msg}),
                ))
                .await;
        }
    });
    Response::Stream {
        status: 200,
        content_type: "application/json",
        headers: vec![],
        rx,
        resumable: None,
    }
}

/// `POST /images/{name}/push?tag=`: push to a registry. Only a malformed name or tag is a
/// plain error; like dockerd, everything else (an unknown image included) ends the stream
/// with an `errorDetail` after `The push refers to repository […]`.
async fn push(d: &Daemon, req: &Request, name: &str) -> ApiResult<Response> {
    let mut reference = Reference::parse(name)?;
    let tag = req.q("tag").unwrap_or("");
    if !tag.is_empty() {
        Reference::parse(&format!("{}:{tag}", reference.name))
            .map_err(|_| ApiError::BadRequest("invalid tag format".into()))?;
        reference.tag = Some(tag.to_string());
    }
    let auth = pull::decode_auth(req.header("x-registry-auth"));
    let insecure = d.config.insecure_registries.clone();
    let images = d.images.clone();
    Ok(progress_stream("push", move |tx| {
        push::run(images, reference, auth, insecure, tx)
    }))
}

/// `POST /auth` (`docker login`): 200 `Login Succeeded` when the registry accepts the
/// credentials.
pub async fn auth(d: &Daemon, req: Request) -> ApiResult<Response> {
    let bytes = req.body.bytes().map_err(ApiError::BadRequest)?;
    let body: pull::login::LoginRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid auth config: {e}")))?;
    pull::login::login(&body, &d.config.insecure_registries).await?;
    Ok(Response::json(
        200,
        &json!({"IdentityToken": "", "Status": "Login Succeeded"}),
    ))
}

/// `POST /images/create`: pull with `fromImage`, import with `fromSrc=-`.
async fn create(d: &Daemon, req: Request) -> ApiResult<Response> {
    if let Some(from) = req.q("fromImage").filter(|s| !s.is_empty()) {
        return pull(d, &req, from).await;
    }
    match req.q("fromSrc") {
        Some("-") => {}
        Some(src) if !src.is_empty() => {
            return Err(ApiError::Internal(format!(
                "import from {src:?}: only fromSrc=- (the request body) is supported"
            )))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "fromImage or fromSrc is required".into(),
            ))
        }
    }
    let repo = req.q("repo").unwrap_or("").to_string();
    let tag = req.q("tag").unwrap_or("").to_string();
    let reference = match (repo.is_empty(), tag.is_empty()) {
        (true, _) => None,
        (false, true) => Some(repo),
        (false, false) => Some(format!("{repo}:{tag}")),
    };
    let changes = req.q_all("changes");
    let message = req.q("message").unwrap_or("").to_string();
    let mut body = req.body.reader();
    let id = blocking(d, move |s| {
        s.import(&mut body, reference.as_deref(), &changes, &message)
    })
    .await?;
    Ok(Response::json(200, &json!({ "status": id })))
}

/// Sends written bytes to the response stream in large chunks.
pub(super) struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl ChanWriter {
    /// A writer feeding `tx`.
    pub(super) fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Self {
        ChanWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// `GET /images/get?names=…` and `GET /images/{name}/get`: names are resolved before the
/// first byte, so unknown names get a normal 404.
async fn save(d: &Daemon, names: Vec<String>) -> ApiResult<Response> {
    if names.is_empty() {
        return Err(ApiError::BadRequest("no image names given".into()));
    }
    let plan = blocking(d, move |s| s.prepare_save(&names)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChanWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = images
            .save(&plan, &mut w)
            .and_then(|_| w.flush().map_err(|e| ApiError::internal("send archive", e)))
        {
            // The status is already sent: the client sees a cut archive.
            tracing::warn!(error = %e, "image save failed mid-stream");
        }
    });
    Ok(Response::Stream {
        status: 200,
        content_type: "application/x-tar",
        headers: vec![],
        rx,
        resumable: None,
    })
}
