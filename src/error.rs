//! The one error type every request path returns, and its mapping to Docker's HTTP status
//! codes and `{"message": ...}` bodies (the only place statuses are chosen).

use thiserror::Error;

/// An API failure, classified the way dockerd's errdefs classify them.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 403: refused (e.g. removing a network with endpoints).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object.
    #[error("{0}")]
    NotFound(String),
    /// 409: the object's state forbids the request.
    #[error("{0}")]
    Conflict(String),
    /// 304: nothing to do (start on a running container, stop on a stopped one).
    #[error("not modified")]
    NotModified,
    /// 501: not implemented by berth.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: something failed inside the daemon; the message says which step.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status dockerd uses for this class.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::NotModified => 304,
            ApiError::NotImplemented(_) => 501,
            ApiError::Internal(_) => 500,
        }
    }

    /// `No such container: X`.
    pub fn no_such_container(name: &str) -> Self {
        ApiError::NotFound(format!("No such container: {name}"))
    }

    /// Wraps a lower-level failure with the step that failed.
    pub fn internal(step: &str, err: impl std::fmt::Display) -> Self {
        ApiError::Internal(format!("{step}: {err}"))
    }
}

impl From<sled::Error> for ApiError {
    fn from(e: sled::Error) -> Self {
        ApiError::internal("state store", e)
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::internal("encode state", e)
    }
}

/// Shorthand for request-path results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_dockerd() {
        assert_eq!(ApiError::no_such_container("x").status(), 404);
        assert_eq!(
            ApiError::no_such_container("x").to_string(),
            "No such container: x"
        );
        assert_eq!(ApiError::Conflict("c".into()).status(), 409);
        assert_eq!(ApiError::NotModified.status(), 304);
        assert_eq!(
            ApiError::internal("mount rootfs", "EPERM").to_string(),
            "mount rootfs: EPERM"
        );
    }
}
