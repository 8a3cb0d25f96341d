//! berth-api: the wire types shared by `berthd` and `berth-shim`.
//!
//! * [`models`]: Docker Engine API bodies (bollard-stubs, pinned to the Docker 28 schema,
//!   which still carries the legacy fields API 1.41 clients read).
//! * [`shim`]: the versioned daemon ↔ shim protocol.
//! * [`logfmt`]: the json-file log format and the attach/logs stream framing.
//! * [`stats`]: container resource samples and the stats JSON object.
//!
//! No sockets, processes or async I/O live here.

pub mod logfmt;
pub mod shim;
pub mod stats;
#[cfg(feature = "transport")]
pub mod transport;

pub use bollard_stubs::models;

/// The Docker API version berthd claims.
pub const API_VERSION: &str = "1.41";
/// The oldest Docker API version berthd accepts.
pub const MIN_API_VERSION: &str = "1.24";
