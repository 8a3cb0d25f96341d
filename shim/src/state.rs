//! The shim's shared state. Everything runs on one thread, so plain `RefCell`s suffice; no
//! borrow is ever held across an `.await`.

use crate::fdio::FdIo;
use crate::hub::Hub;
use berth_api::shim::{ExitRecord, ShimConfig, ShimEvent, ShimState, ShimStatus};
use libcontainer::container::Container;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use tokio::sync::{mpsc, watch};

/// A message for a process's stdin pump.
#[derive(Debug)]
pub enum StdinMsg {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Close the stdin pipe (end of input).
    Close,
}

/// Lifecycle facts about the container.
#[derive(Debug, Clone)]
pub struct Life {
    /// Lifecycle status.
    pub status: ShimStatus,
    /// When `Start` succeeded.
    pub started_at_ns: Option<i64>,
    /// The exit, once the init was reaped.
    pub exit: Option<ExitRecord>,
    /// The daemon acknowledged the exit.
    pub acked: bool,
    /// The daemon said the container was removed.
    pub removed: bool,
    /// All of the container's output has been read and delivered to the hub.
    pub output_done: bool,
    /// Output readers still running.
    pub readers_left: usize,
}

/// One exec.
pub struct ExecEntry {
    /// Host pid (0 when it never started).
    pub pid: i32,
    /// Still running.
    pub running: bool,
    /// Exit code once finished.
    pub exit_code: Option<i32>,
    /// Its pty master, for resize.
    pub pty: Option<Rc<FdIo>>,
}

/// The state shared by every task of the shim.
pub struct Shim {
    /// The daemon's configuration.
    pub cfg: ShimConfig,
    /// Host pid of the container's init.
    pub init_pid: i32,
    /// The spec's `linux.cgroupsPath` (for the OOM flag).
    pub cgroups_path: Option<std::path::PathBuf>,
    /// libcontainer's handle (taken when deleted).
    pub container: RefCell<Option<Container>>,
    /// Lifecycle facts.
    pub life: RefCell<Life>,
    /// Output fan-out.
    pub hub: RefCell<Hub>,
    /// The container's stdin pump (pipe or pty); `None` when stdin is closed or absent.
    pub stdin: RefCell<Option<mpsc::Sender<StdinMsg>>>,
    /// The container's pty master.
    pub pty: Option<Rc<FdIo>>,
    /// The container's output sources (pipes or the pty master), for input backpressure.
    pub outputs: Vec<(Rc<FdIo>, berth_api::logfmt::Stream)>,
    /// Execs by id.
    pub execs: RefCell<HashMap<String, ExecEntry>>,
    /// Exec ids by pid (running execs only).
    pub exec_pids: RefCell<HashMap<i32, String>>,
    /// Event subscribers.
    pub subscribers: RefCell<Vec<mpsc::UnboundedSender<ShimEvent>>>,
    /// Bumped on every state change worth re-checking.
    pub changed: watch::Sender<u64>,
    /// Handed-over streams still open.
    pub streams: Cell<usize>,
}

/// Counts one open handed-over stream while alive.
pub struct StreamGuard {
    shim: Rc<Shim>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shim
            .streams
            .set(self.shim.streams.get().saturating_sub(1));
        self.shim.bump();
    }
}

impl Shim {
    /// Wakes everything waiting on a state change.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sends an event to every subscriber (closed ones are forgotten).
    pub fn publish(&self, ev: ShimEvent) {
        self.subscribers
            .borrow_mut()
            .retain(|s| s.send(ev.clone()).is_ok());
    }

    /// Registers an open handed-over stream.
    pub fn stream_guard(self: &Rc<Self>) -> StreamGuard {
        self.streams.set(self.streams.get() + 1);
        StreamGuard { shim: self.clone() }
    }

    /// The state the daemon asks for.
    pub fn state(&self) -> ShimState {
        let life = self.life.borrow();
        ShimState {
            pid: self.init_pid,
            status: life.status,
            started_at_ns: life.started_at_ns,
            exit: life.exit.clone(),
        }
    }

    /// The status right now.
    pub fn status(&self) -> ShimStatus {
        self.life.borrow().status
    }

    /// Docker's conflict message for a container that does not run.
    pub fn not_running(&self) -> String {
        format!("Container {} is not running", self.cfg.id)
    }

    /// The shim has nothing left to do: the exit was acknowledged and every stream ended.
    pub fn done(&self) -> bool {
        let life = self.life.borrow();
        life.acked && life.output_done && self.streams.get() == 0
    }
}
