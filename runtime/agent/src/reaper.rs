//! PID 1 duties: reap every child, and hand exit statuses to whoever spawned them.
//!
//! Orphans re-parent to PID 1, so the agent must `waitpid(-1)`. That would steal statuses
//! from a per-child waiter, so all waiting happens here: a process is spawned and registered
//! under one lock, which the reaper also holds while it reaps, so no exit can be missed.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, OnceLock};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// A raw `waitpid` status.
pub type WaitStatus = i32;

fn waiters() -> &'static Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>> {
    static W: OnceLock<Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Starts the reaper task. Must run inside the tokio runtime before anything is spawned.
pub fn start() -> io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

fn reap() {
    let mut w = waiters().lock().unwrap();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(tx) = w.remove(&pid) {
            let _ = tx.send(status);
        }
    }
}

/// Runs `start` (which creates a process and returns its pid) and returns the pid with a
/// receiver for its wait status. The reaper owns waiting: nothing else may wait for it.
pub fn spawn(
    start: impl FnOnce() -> io::Result<i32>,
) -> io::Result<(i32, oneshot::Receiver<WaitStatus>)> {
    let mut w = waiters().lock().unwrap();
    let pid = start()?;
    let (tx, rx) = oneshot::channel();
    w.insert(pid, tx);
    Ok((pid, rx))
}
