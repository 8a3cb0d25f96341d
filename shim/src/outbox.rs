//! A per-client output queue. Producers that must never wait (the container's output) push
//! with [`Outbox::push`]: a client that falls more than its capacity behind is dropped.
//! Producers that may wait (an exec's output, which has no log) use [`Outbox::push_wait`].

use crate::fdio::FdIo;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use tokio::sync::Notify;

/// Default capacity of one client's queue.
pub const CLIENT_BUFFER: usize = 1024 * 1024;

/// A bounded queue of byte chunks for one client.
pub struct Outbox {
    q: RefCell<VecDeque<Vec<u8>>>,
    bytes: Cell<usize>,
    cap: usize,
    finished: Cell<bool>,
    dropped: Cell<bool>,
    data: Notify,
    space: Notify,
}

impl Outbox {
    /// A new queue holding at most `cap` bytes of live data.
    pub fn new(cap: usize) -> Rc<Self> {
        Rc::new(Self {
            q: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            cap,
            finished: Cell::new(false),
            dropped: Cell::new(false),
            data: Notify::new(),
            space: Notify::new(),
        })
    }

    /// Queues live data without waiting; drops the client (and returns false) when it would
    /// exceed the capacity.
    pub fn push(&self, data: Vec<u8>) -> bool {
        if self.is_closed() {
            return false;
        }
        if self.bytes.get() + data.len() > self.cap && self.bytes.get() > 0 {
            tracing::debug!(queued = self.bytes.get(), "client too slow: dropped");
            self.drop_client();
            return false;
        }
        self.enqueue(data);
        true
    }

    /// Queues history (replayed logs) regardless of the capacity.
    pub fn push_history(&self, data: Vec<u8>) {
        if !self.is_closed() {
            self.enqueue(data);
        }
    }

    /// Queues data, waiting while the queue is full; false when the client is gone.
    pub async fn push_wait(&self, data: Vec<u8>) -> bool {
        loop {
            if self.is_closed() {
                return false;
            }
            if self.bytes.get() == 0 || self.bytes.get() + data.len() <= self.cap {
                self.enqueue(data);
                return true;
            }
            self.space.notified().await;
        }
    }

    /// Waits until at most `limit` bytes are queued plus `more()` (output on its way into
    /// this queue), or the client is gone. Re-checked each time the writer takes a chunk.
    /// The input of an interactive client waits here: a client that sends faster than it
    /// reads the output (`docker run -i … cat < big`) is slowed down instead of being dropped.
    pub async fn wait_room(&self, limit: usize, more: impl Fn() -> usize) {
        loop {
            // Created before the check: a chunk taken in between still wakes us.
            let space = self.space.notified();
            if self.is_closed() || self.bytes.get() + more() <= limit {
                return;
            }
            space.await;
        }
    }

    fn enqueue(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.bytes.set(self.bytes.get() + data.len());
        self.q.borrow_mut().push_back(data);
        self.data.notify_one();
    }

    /// No more data will come; the writer ends after sending what is queued.
    pub fn finish(&self) {
        self.finished.set(true);
        self.data.notify_one();
        self.space.notify_waiters();
    }

    /// Drops the client: queued data is discarded and the writer ends at once.
    pub fn drop_client(&self) {
        self.dropped.set(true);
        self.q.borrow_mut().clear();
        self.bytes.set(0);
        self.data.notify_one();
        self.space.notify_waiters();
    }

    /// No more data is accepted (finished or dropped).
    pub fn is_closed(&self) -> bool {
        self.finished.get() || self.dropped.get()
    }

    /// The client was dropped.
    #[cfg(test)]
    pub fn is_dropped(&self) -> bool {
        self.dropped.get()
    }

    /// Bytes queued.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.bytes.get()
    }

    /// The next chunk to write; `None` once finished and empty, or dropped.
    pub async fn next(&self) -> Option<Vec<u8>> {
        loop {
            if self.dropped.get() {
                return None;
            }
            let front = self.q.borrow_mut().pop_front();
            if let Some(d) = front {
                self.bytes.set(self.bytes.get().saturating_sub(d.len()));
                self.space.notify_waiters();
                return Some(d);
            }
            if self.finished.get() {
                return None;
            }
            self.data.notified().await;
        }
    }
}

/// Writes everything the outbox yields to `sock`; a write error drops the client.
pub async fn pump(out: &Outbox, sock: &FdIo) -> io::Result<()> {
    while let Some(d) = out.next().await {
        if let Err(e) = sock.write_all(&d).await {
            out.drop_client();
            return Err(e);
        }
    }
    Ok(())
}

/// One HTTP/1.1 chunk of a chunked body.
pub fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }

    #[test]
    fn slow_client_is_dropped_not_waited_for() -> std::io::Result<()> {
        rt()?.block_on(async {
            let o = Outbox::new(10);
            assert!(o.push(vec![1; 6]));
            assert!(!o.push(vec![2; 6]));
            assert!(o.is_dropped());
            assert_eq!(o.next().await, None);
            assert!(!o.push(vec![3]));
        });
        Ok(())
    }

    #[test]
    fn finish_drains_then_ends_and_history_ignores_cap() -> std::io::Result<()> {
        rt()?.block_on(async {
            let o = Outbox::new(4);
            o.push_history(vec![0; 100]);
            assert!(!o.is_dropped());
            o.finish();
            assert_eq!(o.next().await.map(|d| d.len()), Some(100));
            assert_eq!(o.next().await, None);
        });
        Ok(())
    }

    #[test]
    fn push_wait_waits_for_space() -> std::io::Result<()> {
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt()?, async {
            let o = Outbox::new(4);
            assert!(o.push_wait(vec![1; 4]).await);
            let o2 = o.clone();
            let t = tokio::task::spawn_local(async move { o2.push_wait(vec![2; 4]).await });
            tokio::task::yield_now().await;
            assert_eq!(o.queued(), 4);
            assert_eq!(o.next().await, Some(vec![1; 4]));
            assert!(t.await.unwrap_or(false));
            assert_eq!(o.next().await, Some(vec![2; 4]));
        });
        Ok(())
    }

    #[test]
    fn wait_room_waits_for_the_writer() -> std::io::Result<()> {
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt()?, async {
            let o = Outbox::new(100);
            assert!(o.push(vec![1; 30]));
            assert!(o.push(vec![2; 30]));
            let o2 = o.clone();
            let t = tokio::task::spawn_local(async move { o2.wait_room(40, || 0).await });
            tokio::task::yield_now().await;
            assert!(!t.is_finished());
            assert_eq!(o.next().await, Some(vec![1; 30]));
            tokio::task::yield_now().await;
            assert!(t.is_finished());
            // A dropped client never blocks its input.
            assert!(o.push(vec![3; 30]));
            assert!(o.push(vec![4; 30]));
            o.drop_client();
            o.wait_room(0, || 0).await;
        });
        Ok(())
    }

    #[test]
    fn chunks_are_hex_sized() {
        assert_eq!(
            http_chunk(b"0123456789abcdefX"),
            b"11\r\n0123456789abcdefX\r\n"
        );
    }
}
