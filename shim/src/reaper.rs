//! Reaping: on SIGCHLD, `waitpid(-1, WNOHANG)` until nothing is left; the init's exit is
//! recorded (exit file first, then events, waiters and streams), exec exits are stored, and
//! re-parented orphans are simply reaped.

use crate::exit::{self, Reaped};
use crate::state::Shim;
use berth_api::shim::{ExitRecord, ShimEvent, ShimStatus};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use tokio::signal::unix::Signal;

/// How long the output may keep flowing after the init exited before streams are ended
/// anyway (a process outside the pid namespace may hold the pipes open).
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Reaps on every SIGCHLD until the signal stream ends.
pub async fn run(shim: Rc<Shim>, mut sigchld: Signal) {
    loop {
        reap_all(&shim);
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Reaps every exited child now.
pub fn reap_all(shim: &Rc<Shim>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return,
            Ok(st) => {
                if let Some(r) = exit::reaped(st) {
                    handle(shim, r);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

fn handle(shim: &Rc<Shim>, r: Reaped) {
    if r.pid == shim.init_pid {
        init_exited(shim, r);
        return;
    }
    let exec_id = shim.exec_pids.borrow_mut().remove(&r.pid);
    match exec_id {
        Some(id) => exec_exited(shim, &id, r.code),
        None => tracing::debug!(pid = r.pid, "reaped an orphan"),
    }
}

/// Records an exec's exit code and tells subscribers.
pub fn exec_exited(shim: &Rc<Shim>, exec_id: &str, code: i32) {
    if let Some(e) = shim.execs.borrow_mut().get_mut(exec_id) {
        e.running = false;
        e.exit_code = Some(code);
    }
    tracing::info!(exec_id, code, "exec exited");
    shim.publish(ShimEvent::ExecExit {
        exec_id: exec_id.to_string(),
        code,
    });
    shim.bump();
}

fn init_exited(shim: &Rc<Shim>, r: Reaped) {
    let finished_at_ns = exit::now_ns();
    if shim.life.borrow().exit.is_some() {
        return;
    }
    let oom_killed = shim
        .cgroups_path
        .as_deref()
        .is_some_and(|p| exit::oom_killed(Path::new("/sys/fs/cgroup"), p));
    let rec = ExitRecord {
        code: r.code,
        signal: r.signal,
        oom_killed,
        finished_at_ns,
        pid: r.pid,
    };
    let removed = shim.life.borrow().removed;
    if !removed {
        if let Err(e) = exit::write_record(&shim.cfg.exit_file, &rec) {
            tracing::error!(error = %e, path = %shim.cfg.exit_file.display(), "write exit record");
        }
    }
    tracing::info!(code = rec.code, signal = ?rec.signal, oom_killed, "container exited");
    {
        let mut life = shim.life.borrow_mut();
        life.status = ShimStatus::Exited;
        life.exit = Some(rec.clone());
    }
    shim.stdin.borrow_mut().take();
    if oom_killed {
        shim.publish(ShimEvent::Oom);
    }
    shim.publish(ShimEvent::Exit(rec));
    shim.bump();
    delete_container(shim);
    tokio::task::spawn_local(finish_output(shim.clone()));
}

/// Deletes libcontainer's state and cgroup (kills what is left first).
pub fn delete_container(shim: &Shim) {
    let taken = shim.container.borrow_mut().take();
    if let Some(mut c) = taken {
        let _ = c.refresh_status();
        if let Err(e) = c.delete(true) {
            tracing::warn!(error = %e, "delete container state");
        }
    }
}

/// Ends every client stream once the output readers hit end of stream (or after
/// [`DRAIN_GRACE`]).
async fn finish_output(shim: Rc<Shim>) {
    let mut rx = shim.changed.subscribe();
    let deadline = tokio::time::sleep(DRAIN_GRACE);
    tokio::pin!(deadline);
    loop {
        if shim.life.borrow().readers_left == 0 {
            break;
        }
        tokio::select! {
            _ = &mut deadline => {
                tracing::warn!("container output still open after the init exited; ending streams");
                break;
            }
            r = rx.changed() => if r.is_err() { break },
        }
    }
    shim.life.borrow_mut().output_done = true;
    shim.hub.borrow_mut().finish_all();
    shim.bump();
}
