//! Working-set trimming: after a start or an exec, the shim drops the pages of code it
//! ran once (libcontainer's create, start and tenant paths), then does so once more when
//! things have settled, so that a shim idling for weeks beside its container keeps only
//! what its event loop touches resident. See [`crate::sys::trim_readonly_file_pages`].

use std::cell::Cell;
use std::time::Duration;

/// How long after the last start or exec the settled trim runs.
const SETTLE: Duration = Duration::from_secs(1);

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Trims now and schedules one more trim [`SETTLE`] later (at most one pending).
/// Must run inside the shim's `LocalSet`.
pub fn after_one_off_work() {
    crate::sys::trim_readonly_file_pages();
    if PENDING.with(|p| p.replace(true)) {
        return;
    }
    tokio::task::spawn_local(async {
        tokio::time::sleep(SETTLE).await;
        PENDING.with(|p| p.set(false));
        let bytes = crate::sys::trim_readonly_file_pages();
        tracing::debug!(bytes, "trimmed the working set");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_settled_trim_is_pending_at_a_time() -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            after_one_off_work();
            assert!(PENDING.with(Cell::get));
            after_one_off_work();
            tokio::time::sleep(SETTLE * 2).await;
            assert!(
                !PENDING.with(Cell::get),
                "the settled trim ran and cleared the flag"
            );
        });
        Ok(())
    }
}
