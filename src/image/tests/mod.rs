//! Tests of the image store: hostile tar corpus, whiteouts, tar-split round trips, load
//! (docker-archive and OCI), import, save round trip, tag and rmi semantics, list filters.

mod extract;
mod store;
mod util;
