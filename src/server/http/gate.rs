//! The gate between a worker generation's connections and its handlers during a live
//! upgrade (DESIGN "Live upgrade"; research/hot-restart.md §6.5).
//!
//! * `Serving`: every request is admitted.
//! * `Quiescing`: the generation still accepts and answers reads, but a new mutation
//!   (anything but GET/HEAD) is *parked*: its connection, with the request re-encoded in
//!   front of any bytes read ahead (or, for a big upload, with its spooled body file),
//!   goes to the next generation, which answers it. The
//!   mutations already admitted finish, and so does background work (an exit to record).
//! * `Released`: the store was handed to the next generation: reads are still answered
//!   (from what this one knows; nothing changes meanwhile), mutations are parked and
//!   background work waits (for a rollback, or for ever: the next generation does it).
//! * `Held` (a successor that took the store over while the previous generation still
//!   answers reads): reads are answered; mutations and background work wait until the
//!   previous generation has frozen, so that no client reads an older state after a change.
//! * `Frozen`: nothing new is admitted; idle connections and every new request are
//!   handed over; the generation waits for the requests it admitted, then stops.
//!
//! Counters are raised before the phase is checked and the freezer changes the phase
//! before it reads them, so a request is either counted or handed over, never lost.

use super::Request;
use crate::ctl::{ParkedRequest, Resume};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{watch, Notify};

/// Largest request (head + body) that is re-encoded and handed over.
pub const MAX_PARKED: usize = 96 * 1024;

/// A generation's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal service.
    Serving,
    /// Mutations are handed over; reads are answered; background work runs.
    Quiescing,
    /// The store is handed over: reads are answered, mutations handed over, background
    /// work waits.
    Released,
    /// Took the store over: reads are answered, mutations and background work wait.
    Held,
    /// Everything is handed over.
    Frozen,
}

/// A client connection leaving this generation.
pub struct Handover {
    /// The client socket.
    pub stream: std::os::unix::net::UnixStream,
    /// Bytes to replay before reading from the socket (after `request`, if any).
    pub bytes: Vec<u8>,
    /// A response stream to continue.
    pub resume: Option<Resume>,
    /// A request to answer first, with its body file.
    pub request: Option<(ParkedRequest, OwnedFd)>,
}

/// Takes a client connection away from this generation.
pub type HandOff = Arc<dyn Fn(Handover) + Send + Sync>;

/// Shared by the accept loops, the connections and the background tasks of a worker.
pub struct Gate {
    phase: watch::Sender<Phase>,
    mutations: AtomicUsize,
    requests: AtomicUsize,
    conns: AtomicUsize,
    idle: Notify,
    handoff: OnceLock<HandOff>,
    orphaned: AtomicBool,
}

/// Holds a request (or background mutation) in the counters until dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    mutation: bool,
    request: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.mutation {
            self.gate.mutations.fetch_sub(1, Ordering::SeqCst);
        }
        if self.request {
            self.gate.requests.fetch_sub(1, Ordering::SeqCst);
        }
        self.gate.idle.notify_waiters();
    }
}

/// Counts a connection task until it ends or hands its connection over.
pub struct ConnGuard {
    gate: Arc<Gate>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gate.conns.fetch_sub(1, Ordering::SeqCst);
        self.gate.idle.notify_waiters();
    }
}

/// What to do with a request that was read.
pub enum Admission {
    /// Answer it here.
    Admit(Admitted),
    /// Hand the connection over with these bytes.
    Park(Vec<u8>),
    /// Hand the connection over with the request and its body as a file (too big to
    /// re-encode).
    ParkWhole,
}

impl Gate {
    /// A gate in the `Serving` phase with no hand-off (nothing is ever parked until
    /// [`Gate::set_handoff`] is called).
    pub fn new() -> Arc<Self> {
        Arc::new(Gate {
            phase: watch::Sender::new(Phase::Serving),
            mutations: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            idle: Notify::new(),
            handoff: OnceLock::new(),
            orphaned: AtomicBool::new(false),
        })
    }

    /// Installs where handed-over connections go.
    pub fn set_handoff(&self, f: HandOff) {
        let _ = self.handoff.set(f);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `p`.
    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    /// Follows phase changes.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The master is gone: nothing can be handed over any more. A draining generation
    /// then answers the requests it reads itself, each on a connection that closes after
    /// the response, and closes idle connections (their clients reconnect to the listen
    /// backlog, which the next master's worker serves).
    pub fn orphan(&self) {
        self.orphaned.store(true, Ordering::SeqCst);
    }

    /// Whether [`Gate::orphan`] was called.
    pub fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::SeqCst)
    }

    fn can_hand_off(&self) -> bool {
        self.handoff.get().is_some() && !self.is_orphaned()
    }

    /// Gives a connection away; returns it when there is nowhere to give it.
    pub fn hand_off(
        &self,
        stream: tokio::net::UnixStream,
        bytes: Vec<u8>,
        resume: Option<Resume>,
    ) -> Result<(), tokio::net::UnixStream> {
        self.hand_off_with(stream, bytes, resume, None)
    }

    /// [`Gate::hand_off`] with a request to answer first and its body file.
    pub fn hand_off_with(
        &self,
        stream: tokio::net::UnixStream,
        bytes: Vec<u8>,
        resume: Option<Resume>,
        request: Option<(ParkedRequest, OwnedFd)>,
    ) -> Result<(), tokio::net::UnixStream> {
        let Some(f) = self.handoff.get().filter(|_| !self.is_orphaned()) else {
            return Err(stream);
        };
        match stream.into_std() {
            Ok(stream) => {
                f(Handover {
                    stream,
                    bytes,
                    resume,
                    request,
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot detach a connection for hand-over");
                Ok(())
            }
        }
    }

    /// Decides about a request that was read completely (a mutation waits while the
    /// generation is `Held`).
    pub async fn admit(self: &Arc<Self>, req: &Request) -> Admission {
        let mutation = !matches!(req.method.as_str(), "GET" | "HEAD");
        if mutation && self.phase() == Phase::Held {
            let _ = self.watch().wait_for(|p| *p != Phase::Held).await;
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        if mutation {
            self.mutations.fetch_add(1, Ordering::SeqCst);
        }
        let admitted = Admitted {
            gate: self.clone(),
            mutation,
            request: true,
        };
        let park = match self.phase() {
            Phase::Serving => false,
            Phase::Quiescing | Phase::Released => mutation,
            Phase::Held => false,
            Phase::Frozen => true,
        };
        if park && self.can_hand_off() {
            drop(admitted);
            // One too big to re-encode (an image upload) goes over with its body file.
            return match req.encode() {
                Some(bytes) => Admission::Park(bytes),
                None => Admission::ParkWhole,
            };
        }
        Admission::Admit(admitted)
    }

    /// Admits a background mutation (an exit to record, a restart to apply) while the
    /// generation owns the store and may change it (`None`: the work waits, or is left to
    /// the next generation). While quiescing they still run: an admitted `stop` waits for
    /// the exit its monitor records.
    pub fn begin_internal(self: &Arc<Self>) -> Option<Admitted> {
        self.mutations.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted {
            gate: self.clone(),
            mutation: true,
            request: false,
        };
        matches!(self.phase(), Phase::Serving | Phase::Quiescing).then_some(admitted)
    }

    /// Counts a connection task (a frozen generation waits until each one has ended or
    /// handed its connection over, so that `Frozen` follows the last hand-over).
    pub fn enter_conn(self: &Arc<Self>) -> ConnGuard {
        self.conns.fetch_add(1, Ordering::SeqCst);
        ConnGuard { gate: self.clone() }
    }

    /// Waits until no admitted mutation is left.
    pub async fn mutations_done(&self) {
        self.wait_zero(&self.mutations).await
    }

    /// Waits until no admitted request or mutation and no connection task is left.
    pub async fn all_done(&self) {
        self.wait_zero(&self.mutations).await;
        self.wait_zero(&self.requests).await;
        self.wait_zero(&self.conns).await;
    }

    async fn wait_zero(&self, counter: &AtomicUsize) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if counter.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req(method: &str) -> Request {
        Request {
            method: method.into(),
            path: "/containers/create".into(),
            raw_target: "/v1.41/containers/create?name=x".into(),
            api_version: Some("1.41".into()),
            query: HashMap::new(),
            headers: HashMap::from([("host".to_string(), "docker".to_string())]),
            body: super::super::Body::Mem(b"{}".to_vec()),
        }
    }

    #[tokio::test]
    async fn quiescing_parks_mutations_and_waits_for_admitted_ones() {
        let gate = Gate::new();
        gate.set_handoff(Arc::new(|_| {}));
        let Admission::Admit(running) = gate.admit(&req("POST")).await else {
            panic!("serving must admit");
        };
        gate.set_phase(Phase::Quiescing);
        assert!(matches!(gate.admit(&req("GET")).await, Admission::Admit(_)));
        match gate.admit(&req("POST")).await {
            Admission::Park(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                assert!(text.starts_with("POST /v1.41/containers/create?name=x HTTP/1.1\r\n"));
                assert!(text.contains("content-length: 2\r\n"));
                assert!(text.ends_with("\r\n\r\n{}"));
            }
            _ => panic!("a small mutation must be parked re-encoded while quiescing"),
        }
        let internal = gate.begin_internal();
        assert!(internal.is_some());
        drop(internal);
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.mutations_done().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(running);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .expect("mutations_done after the last admitted mutation ended");
        gate.set_phase(Phase::Frozen);
        assert!(matches!(gate.admit(&req("GET")).await, Admission::Park(_)));
        assert!(gate.begin_internal().is_none());
    }

    #[tokio::test]
    async fn an_orphaned_gate_parks_nothing() {
        let gate = Gate::new();
        gate.set_handoff(Arc::new(|_| {}));
        gate.set_phase(Phase::Frozen);
        assert!(matches!(gate.admit(&req("GET")).await, Admission::Park(_)));
        gate.orphan();
        assert!(matches!(
            gate.admit(&req("POST")).await,
            Admission::Admit(_)
        ));
    }

    #[tokio::test]
    async fn without_a_hand_off_nothing_is_parked() {
        let gate = Gate::new();
        gate.set_phase(Phase::Frozen);
        assert!(matches!(
            gate.admit(&req("POST")).await,
            Admission::Admit(_)
        ));
    }

    #[tokio::test]
    async fn a_released_generation_answers_reads_and_parks_the_rest() {
        let gate = Gate::new();
        gate.set_handoff(Arc::new(|_| {}));
        gate.set_phase(Phase::Released);
        assert!(matches!(gate.admit(&req("GET")).await, Admission::Admit(_)));
        assert!(matches!(gate.admit(&req("POST")).await, Admission::Park(_)));
        assert!(gate.begin_internal().is_none());
    }

    #[tokio::test]
    async fn a_held_successor_answers_reads_and_holds_mutations_until_serving() {
        let gate = Gate::new();
        gate.set_handoff(Arc::new(|_| {}));
        gate.set_phase(Phase::Held);
        assert!(matches!(gate.admit(&req("GET")).await, Admission::Admit(_)));
        assert!(gate.begin_internal().is_none());
        let held = {
            let gate = gate.clone();
            tokio::spawn(
                async move { matches!(gate.admit(&req("POST")).await, Admission::Admit(_)) },
            )
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!held.is_finished(), "a mutation ran while held");
        gate.set_phase(Phase::Serving);
        let admitted = tokio::time::timeout(std::time::Duration::from_secs(5), held)
            .await
            .ok()
            .and_then(Result::ok);
        assert_eq!(
            admitted,
            Some(true),
            "the held mutation is answered here once serving"
        );
        assert!(gate.begin_internal().is_some());
    }
}
