//! Copying files and directories in and out of the guest root (`copy_out`, `copy_in`).
//!
//! Guest paths are resolved inside the root the way a process chrooted there sees them
//! ([`rootpath::resolve`]), so symlinks in the image never lead outside it. What arrives is
//! staged next to its destination and renamed into place only once complete
//! ([`transfer::fs`]); a `cancel` from the host, or a lost connection, leaves the
//! destination untouched.

use crate::rootpath;
use smolvm_protocol::transfer::{self, PumpError, fs};
use smolvm_protocol::{
    Channel, CopyIn, CopyKind, CopyOut, Copying, ErrorKind, ErrorReply, Message, Stream,
    StreamReceiver, StreamSender,
};
use std::io;
use std::path::{Path, PathBuf};

/// Serves a `copy_out`: `copying`, the data on stdout, eof, then `done` (or `error`).
pub async fn copy_out(stream: Stream, req: CopyOut, root: &Path) {
    let (tx, mut rx) = stream.split();
    let reply = match send(&tx, &mut rx, &req, root).await {
        Ok(()) => Message::Done,
        Err(e) => Message::Error(e),
    };
    let _ = tx.send(reply);
}

async fn send(
    tx: &StreamSender,
    rx: &mut StreamReceiver,
    req: &CopyOut,
    root: &Path,
) -> Result<(), ErrorReply> {
    let src = guest_path(root, &req.path)?;
    let (kind, mode, size) = fs::describe(&src).map_err(|e| io_error(root, e))?;
    if kind == CopyKind::Dir && !req.recursive {
        return Err(error(
            ErrorKind::InvalidRequest,
            format!("{} is a directory: copy it with -r", req.path),
        ));
    }
    tx.send(Message::Copying(Copying { kind, mode, size }))
        .map_err(|e| error(ErrorKind::Io, e.to_string()))?;
    let snapshot = req.snapshot;
    transfer::send_from(
        tx,
        rx,
        Channel::Stdout,
        move |w| {
            if snapshot && kind == CopyKind::Dir {
                fs::send_snapshot(&src, w)
            } else {
                fs::send(&src, kind, w)
            }
        },
        |_| {},
    )
    .await
    .map_err(|e| pump_error(root, e))
}

/// Serves a `copy_in`: receives the data from stdin up to eof, puts it in place, `done`.
pub async fn copy_in(stream: Stream, req: CopyIn, root: &Path) {
    let (tx, mut rx) = stream.split();
    let reply = match receive(&mut rx, req, root).await {
        Ok(()) => Message::Done,
        Err(e) => Message::Error(e),
    };
    let _ = tx.send(reply);
}

async fn receive(rx: &mut StreamReceiver, req: CopyIn, root: &Path) -> Result<(), ErrorReply> {
    let dst = guest_path(root, &req.path)?;
    let CopyIn {
        name,
        kind,
        mode,
        size,
        ..
    } = req;
    let staged = transfer::receive_into(
        rx,
        Channel::Stdin,
        move |r| {
            let target = fs::target(&dst, &name)?;
            match kind {
                CopyKind::File => fs::receive_file(&target, mode, size, r),
                CopyKind::Dir => fs::receive_dir(&target, mode, r),
            }
        },
        |_| {},
    )
    .await
    .map_err(|e| pump_error(root, e))?;
    tokio::task::spawn_blocking(move || staged.commit())
        .await
        .map_err(|e| error(ErrorKind::Io, e.to_string()))?
        .map_err(|e| io_error(root, e))
}

/// Where an absolute guest path is, seen from the agent.
fn guest_path(root: &Path, path: &str) -> Result<PathBuf, ErrorReply> {
    if !path.starts_with('/') {
        return Err(error(
            ErrorKind::InvalidRequest,
            format!("the path in the VM must be absolute: {path:?}"),
        ));
    }
    Ok(rootpath::resolve(root, path))
}

fn pump_error(root: &Path, e: PumpError) -> ErrorReply {
    match e {
        PumpError::Local(e) => io_error(root, e),
        PumpError::Control(m) if *m == Message::Cancel => {
            error(ErrorKind::Io, "the host cancelled the copy")
        }
        PumpError::Control(m) => error(
            ErrorKind::InvalidRequest,
            format!("unexpected message during a copy: {m:?}"),
        ),
        PumpError::Closed(e) => error(ErrorKind::Io, e.to_string()),
    }
}

/// An error for the host, with paths as the guest sees them (without the agent's root).
fn io_error(root: &Path, e: io::Error) -> ErrorReply {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::InvalidInput => ErrorKind::InvalidRequest,
        _ => ErrorKind::Io,
    };
    let message = e.to_string().replace(&format!("{}/", root.display()), "/");
    error(kind, message)
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}
