//! Client side of the shim protocol: one short connection per request (hello, request,
//! response), hand-overs of client connections with their fd, and long-lived event
//! subscriptions. Blocking socket calls run on tokio's blocking pool with a deadline.

use crate::error::{ApiError, ApiResult};
use berth_api::shim::{ShimErrorKind, ShimEvent, ShimRequest, ShimResponse, SHIM_PROTOCOL_VERSION};
use berth_api::transport;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long one request may take before the shim counts as unresponsive.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to the shim of one container.
#[derive(Debug, Clone)]
pub struct ShimClient {
    ctl: PathBuf,
}

/// Maps a shim error to the API error of the same class.
pub fn shim_error(kind: ShimErrorKind, message: String) -> ApiError {
    match kind {
        ShimErrorKind::Conflict => ApiError::Conflict(message),
        ShimErrorKind::NotFound => ApiError::NotFound(message),
        ShimErrorKind::InvalidArgument => ApiError::BadRequest(message),
        ShimErrorKind::Internal => ApiError::Internal(message),
    }
}

fn hello(sock: &OwnedFd) -> std::io::Result<()> {
    transport::send(
        sock.as_fd(),
        &ShimRequest::Hello {
            version: SHIM_PROTOCOL_VERSION,
        },
        &[],
    )?;
    match transport::recv::<ShimResponse>(sock.as_fd())? {
        Some((ShimResponse::Hello { .. }, _)) => Ok(()),
        Some((ShimResponse::Error { message, .. }, _)) => Err(std::io::Error::other(message)),
        Some((other, _)) => Err(std::io::Error::other(format!(
            "unexpected hello answer {other:?}"
        ))),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "shim closed the connection during hello",
        )),
    }
}

impl ShimClient {
    /// A client for the shim listening on `ctl`.
    pub fn new(ctl: &Path) -> Self {
        ShimClient {
            ctl: ctl.to_path_buf(),
        }
    }

    /// The control socket path.
    pub fn path(&self) -> &Path {
        &self.ctl
    }

    fn call_blocking(
        ctl: &Path,
        req: &ShimRequest,
        fd: Option<&OwnedFd>,
    ) -> std::io::Result<ShimResponse> {
        let sock = transport::connect(ctl)?;
        let tv = nix::sys::time::TimeVal::new(CALL_TIMEOUT.as_secs() as i64, 0);
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
        hello(&sock)?;
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        transport::send(sock.as_fd(), req, &fds)?;
        match transport::recv::<ShimResponse>(sock.as_fd())? {
            Some((resp, _)) => Ok(resp),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "shim closed the connection",
            )),
        }
    }

    /// Sends one request (with an optional fd) and returns the shim's answer; a shim
    /// `Error` answer becomes the matching [`ApiError`].
    pub async fn call(&self, req: ShimRequest, fd: Option<OwnedFd>) -> ApiResult<ShimResponse> {
        let ctl = self.ctl.clone();
        let what = format!("{req:?}").chars().take(40).collect::<String>();
        let resp =
            tokio::task::spawn_blocking(move || Self::call_blocking(&ctl, &req, fd.as_ref()))
                .await
                .map_err(|e| ApiError::internal("shim request task", e))?
                .map_err(|e| ApiError::internal(&format!("shim request {what}"), e))?;
        match resp {
            ShimResponse::Error { kind, message } => Err(shim_error(kind, message)),
            other => Ok(other),
        }
    }

    /// Whether a shim answers on the socket.
    pub async fn alive(&self) -> bool {
        matches!(
            self.call(ShimRequest::State, None).await,
            Ok(ShimResponse::State(_))
        )
    }

    /// Opens an event subscription.
    pub async fn subscribe(&self) -> ApiResult<Subscription> {
        let ctl = self.ctl.clone();
        let sock = tokio::task::spawn_blocking(move || -> std::io::Result<OwnedFd> {
            let sock = transport::connect(&ctl)?;
            hello(&sock)?;
            transport::send(sock.as_fd(), &ShimRequest::Subscribe, &[])?;
            match transport::recv::<ShimResponse>(sock.as_fd())? {
                Some((ShimResponse::Ok, _)) => {}
                Some((ShimResponse::Event(_), _)) => {
                    return Err(std::io::Error::other("event before subscribe ack"))
                }
                Some((other, _)) => {
                    return Err(std::io::Error::other(format!(
                        "subscribe refused: {other:?}"
                    )))
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "shim closed",
                    ))
                }
            }
            Ok(sock)
        })
        .await
        .map_err(|e| ApiError::internal("shim subscribe task", e))?
        .map_err(|e| ApiError::internal("subscribe to shim", e))?;
        nix::fcntl::fcntl(
            sock.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| ApiError::internal("subscription nonblocking", e))?;
        // SAFETY: `sock` is an OwnedFd: its fd stays open and the same until the AsyncFd drops it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(sock) }
            .map_err(|e| ApiError::internal("register subscription", e.into_parts().1))?;
        Ok(Subscription { fd })
    }
}

/// A subscribed connection: events in, acknowledgements out.
pub struct Subscription {
    fd: AsyncFd<OwnedFd>,
}

impl Subscription {
    /// The next event; `None` when the shim closed the connection (it exited or died).
    pub async fn next(&mut self) -> Option<ShimEvent> {
        loop {
            let mut guard = self.fd.readable().await.ok()?;
            match guard.try_io(|fd| transport::recv::<ShimResponse>(fd.get_ref().as_fd())) {
                Ok(Ok(Some((ShimResponse::Event(ev), _)))) => return Some(ev),
                Ok(Ok(Some((other, _)))) => {
                    tracing::debug!(?other, "ignoring non-event on subscription");
                }
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "shim subscription failed");
                    return None;
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a request on the subscription (used for `AckExit`).
    pub fn send(&self, req: &ShimRequest) -> ApiResult<()> {
        transport::send(self.fd.get_ref().as_fd(), req, &[])
            .map_err(|e| ApiError::internal("send on shim subscription", e))
    }
}
