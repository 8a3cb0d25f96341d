//! The JSON-message stream of pulls and pushes (what the CLI draws its progress bars from):
//! one JSON object a line.

use serde_json::Value;
use tokio::sync::mpsc::Sender;

/// The JSON message line for the stream.
pub fn message(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Sends one message. A client that went away does not stop the work (the image is still
/// wanted, the push still finishes).
pub async fn say(tx: &Sender<Vec<u8>>, v: Value) {
    let _ = tx.send(message(&v)).await;
}

/// The first 12 hex digits of a digest (the layer ids of the progress stream).
pub fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}
