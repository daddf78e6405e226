//! Copying files and directories between this host and a VM (the engine of `smolvm machine cp`).
//!
//! Both directions stream over one agent stream with the protocol's flow control, so memory
//! stays bounded whatever the size. The receiving side stages the copy next to its
//! destination and renames it into place only once it is complete and synced; a failure, or
//! dropping the future, leaves the old destination as it was and no temporary behind (see
//! [`smolvm_protocol::transfer::fs`], which also extracts what the guest sends without
//! trusting it).
//!
//! Destinations follow `cp`: an existing directory receives the copy inside it under the
//! source's name; anything else is the copy's own path, replaced if it exists (a directory
//! only by a directory).

use crate::agent::AgentClient;
use smolvm_protocol::transfer::{self, PumpError, fs};
use smolvm_protocol::{
    COPY_VERSION, Channel, CopyIn, CopyKind, CopyOut, Copying, ErrorReply, Event, Message,
    MuxError, StreamReceiver, StreamSender,
};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How far a copy has got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes sent or received so far (file contents, or the directory's tar stream).
    pub bytes: u64,
    /// The file's size; unknown for a directory.
    pub total: Option<u64>,
}

/// What a finished copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub kind: CopyKind,
    /// Bytes transferred (file contents, or the directory's tar stream).
    pub bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Error)]
pub enum CopyError {
    /// Reading the source or writing the destination on this host failed.
    #[error("{source}")]
    Host { path: PathBuf, source: io::Error },
    /// The agent refused or failed the copy (a missing path, a full disk ...).
    #[error("in the VM: {}", .reply.message)]
    Guest { path: String, reply: ErrorReply },
    /// A directory was named without `recursive`.
    #[error("{path} is a directory: copy it with -r")]
    IsDirectory { path: String },
    #[error(
        "the connection to the VM closed during the copy ({0}); the destination was left as it was"
    )]
    Connection(#[from] MuxError),
    #[error("unexpected reply from the guest agent during the copy: {0}")]
    Unexpected(String),
    /// The VM runs an agent from before copies existed.
    #[error(
        "the VM's agent speaks protocol version {version}, copying needs {COPY_VERSION}: recreate the machine with current guest assets (./scripts/setup)"
    )]
    AgentTooOld { version: u32 },
}

fn check_version(client: &AgentClient) -> Result<(), CopyError> {
    if client.version < COPY_VERSION {
        return Err(CopyError::AgentTooOld {
            version: client.version,
        });
    }
    Ok(())
}

/// Copies `src` on this host to `guest_dst` (an absolute path) in the VM. A directory needs
/// `recursive`. `progress` is called as data goes out.
pub async fn upload(
    client: &AgentClient,
    src: &Path,
    guest_dst: &str,
    recursive: bool,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<CopyReport, CopyError> {
    check_version(client)?;
    let start = Instant::now();
    let host = |source| CopyError::Host {
        path: src.to_path_buf(),
        source,
    };
    let (kind, mode, size) = fs::describe(src).map_err(host)?;
    if kind == CopyKind::Dir && !recursive {
        return Err(CopyError::IsDirectory {
            path: src.display().to_string(),
        });
    }
    let name = std::path::absolute(src)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let stream = client.mux().open(Message::CopyIn(CopyIn {
        path: guest_dst.to_string(),
        name,
        kind,
        mode,
        size,
    }))?;
    let (tx, mut rx) = stream.split();
    let guard = CancelOnDrop(Some(tx.clone()));
    let mut bytes = 0;
    let source = src.to_path_buf();
    transfer::send_from(
        &tx,
        &mut rx,
        Channel::Stdin,
        move |w| fs::send(&source, kind, w),
        |n| {
            bytes += n;
            progress(Progress { bytes, total: size });
        },
    )
    .await
    .map_err(|e| pump_error(e, guest_dst, src))?;
    finished(&mut rx, guest_dst).await?;
    guard.disarm();
    Ok(CopyReport {
        kind,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Copies `guest_src` (an absolute path) in the VM to `host_dst` on this host. A directory
/// needs `recursive`. `progress` is called as data comes in.
pub async fn download(
    client: &AgentClient,
    guest_src: &str,
    host_dst: &Path,
    recursive: bool,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<CopyReport, CopyError> {
    let start = Instant::now();
    let (mut rx, guard, info) = open_copy_out(
        client,
        CopyOut {
            path: guest_src.to_string(),
            recursive,
            snapshot: false,
        },
    )
    .await?;
    let name = Path::new(guest_src)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dst = host_dst.to_path_buf();
    let mut bytes = 0;
    let staged = transfer::receive_into(
        &mut rx,
        Channel::Stdout,
        move |r| {
            let target = fs::target(&dst, &name)?;
            match info.kind {
                CopyKind::File => fs::receive_file(&target, info.mode, info.size, r),
                CopyKind::Dir => fs::receive_dir(&target, info.mode, r),
            }
        },
        |n| {
            bytes += n;
            progress(Progress {
                bytes,
                total: info.size,
            });
        },
    )
    .await
    .map_err(|e| pump_error(e, guest_src, host_dst))?;
    // Only the agent's `done` says the guest sent everything without an error.
    let done = finished(&mut rx, guest_src).await;
    guard.disarm();
    let path = host_dst.to_path_buf();
    tokio::task::spawn_blocking(move || {
        done?;
        staged
            .commit()
            .map_err(|source| CopyError::Host { path, source })
    })
    .await
    .map_err(|e| CopyError::Unexpected(e.to_string()))??;
    Ok(CopyReport {
        kind: info.kind,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Writes the guest's whole root filesystem, as a tar stream, to `out` (created; removed
/// again if the snapshot fails): what lies on the root's own filesystem, with owners,
/// modes and special files, for building a root filesystem image from a machine.
pub async fn snapshot_root(
    client: &AgentClient,
    out: &Path,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<CopyReport, CopyError> {
    let start = Instant::now();
    let (mut rx, guard, _) = open_copy_out(
        client,
        CopyOut {
            path: "/".into(),
            recursive: true,
            snapshot: true,
        },
    )
    .await?;
    let path = out.to_path_buf();
    let mut bytes = 0;
    let received = transfer::receive_into(
        &mut rx,
        Channel::Stdout,
        move |r| {
            let mut f = std::fs::File::create(&path)?;
            io::copy(r, &mut f)?;
            f.sync_all()
        },
        |n| {
            bytes += n;
            progress(Progress { bytes, total: None });
        },
    )
    .await
    .map_err(|e| pump_error(e, "/", out));
    let result = match received {
        Ok(()) => finished(&mut rx, "/").await,
        Err(e) => Err(e),
    };
    guard.disarm();
    if let Err(e) = result {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(CopyReport {
        kind: CopyKind::Dir,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Sends a `copy_out` and waits for the agent's `copying`: the stream to read the data
/// from, a guard that cancels the copy unless disarmed, and what is coming.
async fn open_copy_out(
    client: &AgentClient,
    req: CopyOut,
) -> Result<(StreamReceiver, CancelOnDrop, Copying), CopyError> {
    check_version(client)?;
    let path = req.path.clone();
    let (tx, mut rx) = client.mux().open(Message::CopyOut(req))?.split();
    let guard = CancelOnDrop(Some(tx));
    match rx.recv().await {
        Some(Event::Control(Message::Copying(info))) => Ok((rx, guard, info)),
        Some(Event::Control(Message::Error(reply))) => Err(CopyError::Guest { path, reply }),
        Some(other) => Err(CopyError::Unexpected(format!("{other:?}"))),
        None => Err(closed()),
    }
}

/// Waits for the agent's verdict that ends a copy stream.
async fn finished(rx: &mut StreamReceiver, guest_path: &str) -> Result<(), CopyError> {
    loop {
        match rx.recv().await {
            Some(Event::Control(Message::Done)) => return Ok(()),
            Some(Event::Control(Message::Error(reply))) => {
                return Err(CopyError::Guest {
                    path: guest_path.to_string(),
                    reply,
                });
            }
            Some(Event::Control(m)) => return Err(CopyError::Unexpected(format!("{m:?}"))),
            Some(_) => {}
            None => return Err(closed()),
        }
    }
}

fn pump_error(e: PumpError, guest_path: &str, host_path: &Path) -> CopyError {
    match e {
        PumpError::Control(m) => match *m {
            Message::Error(reply) => CopyError::Guest {
                path: guest_path.to_string(),
                reply,
            },
            m => CopyError::Unexpected(format!("{m:?}")),
        },
        PumpError::Local(source) => CopyError::Host {
            path: host_path.to_path_buf(),
            source,
        },
        PumpError::Closed(e) => CopyError::Connection(e),
    }
}

fn closed() -> CopyError {
    CopyError::Connection(MuxError::Closed(
        "the stream ended before the agent's answer".into(),
    ))
}

/// Tells the agent to abandon the copy unless it completed: a dropped upload or download
/// future (Ctrl-C, a timeout) must not leave the agent waiting or staging forever.
struct CancelOnDrop(Option<StreamSender>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Message::Cancel);
        }
    }
}
