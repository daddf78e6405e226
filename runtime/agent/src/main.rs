//! smolvm-agent: PID 1 of every smolvm microVM.
//!
//! It mounts the basic filesystems, connects to the host over virtio-serial (QEMU) or vsock
//! (libkrun), answers the protocol handshake, and then serves requests: set up the root
//! filesystem, run commands, shut down. It must never exit (the kernel panics when PID 1
//! does): on a fatal error it says why on the console and powers the VM off.

mod copy;
mod disk;
mod exec;
mod fdio;
mod init;
mod net;
mod reaper;
mod rootpath;
mod setup;
mod spawn;
mod sys;
mod transport;
mod user;

use smolvm_protocol::{
    ErrorKind, Frame, FrameReader, Hello, Incoming, Message, Mux, PROTOCOL, Ready, Stream,
    write_frame,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() {
    let init_us = sys::boottime_us();
    if std::process::id() != 1 {
        eprintln!(
            "smolvm-agent runs as PID 1 inside a smolvm microVM; it is not meant to be started by hand"
        );
        std::process::exit(2);
    }
    if let Err(e) = init::early_mounts() {
        fatal(&format!("early mounts failed: {e}"));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&format!("starting the runtime: {e}")),
    };
    let reason = rt.block_on(serve(init_us));
    // The host is gone (or asked us to stop): nothing in this VM can be reached any more.
    if let Some(reason) = reason {
        eprintln!("smolvm-agent: {reason}; powering off");
    }
    sys::power_off();
}

fn fatal(msg: &str) -> ! {
    eprintln!("smolvm-agent: fatal: {msg}");
    sys::power_off();
}

/// Shared by request handlers.
#[derive(Default)]
struct State {
    /// The root commands run in, once `setup` has built it.
    root: Mutex<Option<setup::Root>>,
}

/// Serves the host until the connection ends. Returns why, if it was not a requested shutdown.
async fn serve(init_us: u64) -> Option<String> {
    if let Err(e) = reaper::start() {
        return Some(format!("installing the SIGCHLD handler: {e}"));
    }
    let channel = match transport::connect().await {
        Ok(c) => c,
        Err(e) => return Some(format!("connecting to the host: {e}")),
    };
    let (r, mut w) = tokio::io::split(channel);
    let mut reader = FrameReader::new(r);

    let ready = Ready {
        protocol: PROTOCOL,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        init_us,
        ready_us: sys::boottime_us(),
    };
    if let Err(e) = write_frame(&mut w, &Frame::control(0, Message::Ready(ready))).await {
        return Some(format!("sending ready: {e}"));
    }
    let hello = match reader.read_frame().await {
        Ok(Some(Frame {
            stream: 0,
            body: smolvm_protocol::Body::Control(Message::Hello(h)),
        })) => h,
        Ok(other) => return Some(format!("expected hello from the host, got {other:?}")),
        Err(e) => return Some(format!("reading hello: {e}")),
    };
    let Hello {
        version,
        unix_time_ns,
    } = hello;
    if PROTOCOL
        .negotiate(smolvm_protocol::VersionRange {
            min: version,
            max: version,
        })
        .is_none()
    {
        let _ = write_frame(
            &mut w,
            &Frame::control(
                0,
                Message::error(
                    ErrorKind::Unsupported,
                    format!("protocol version {version} is not supported"),
                ),
            ),
        )
        .await;
        return Some(format!(
            "host asked for unsupported protocol version {version}"
        ));
    }
    if let Err(e) = sys::set_clock(unix_time_ns) {
        eprintln!("smolvm-agent: setting the clock: {e}");
    }
    if let Err(e) = write_frame(&mut w, &Frame::control(0, Message::HelloOk { version })).await {
        return Some(format!("sending hello_ok: {e}"));
    }

    let (mux, mut incoming) = Mux::start(reader, w, true);
    let state = Arc::new(State::default());
    loop {
        tokio::select! {
            inc = incoming.recv() => match inc {
                Some(inc) => handle(inc, state.clone(), mux.clone()),
                None => break,
            },
            _ = mux.closed() => break,
        }
    }
    mux.close_reason()
}

/// The root that `setup` built; without one, says so on `stream` (which it ends).
fn command_root(state: &State, stream: &Stream) -> Option<std::path::PathBuf> {
    let root = state.root.lock().unwrap().as_ref().map(|r| r.path.clone());
    if root.is_none() {
        let _ = stream.send(Message::error(
            ErrorKind::InvalidRequest,
            "the root filesystem is not set up yet (send setup first)",
        ));
    }
    root
}

fn handle(inc: Incoming, state: Arc<State>, mux: Mux) {
    let Incoming { stream, request } = inc;
    tokio::spawn(async move {
        match request {
            Message::Ping => {
                let _ = stream.send(Message::Pong);
            }
            Message::Setup(setup) => {
                let reply = if state.root.lock().unwrap().is_some() {
                    Message::error(
                        ErrorKind::InvalidRequest,
                        "the root filesystem is already set up",
                    )
                } else {
                    match setup::apply(&setup) {
                        Ok(root) => {
                            *state.root.lock().unwrap() = Some(root);
                            Message::Done
                        }
                        Err(e) => Message::error(
                            ErrorKind::Io,
                            format!("setting up the root filesystem: {e}"),
                        ),
                    }
                };
                let _ = stream.send(reply);
            }
            Message::Exec(req) => {
                if let Some(root) = command_root(&state, &stream) {
                    exec::run(stream, req, &root).await;
                }
            }
            Message::CopyOut(req) => {
                if let Some(root) = command_root(&state, &stream) {
                    copy::copy_out(stream, req, &root).await;
                }
            }
            Message::CopyIn(req) => {
                if let Some(root) = command_root(&state, &stream) {
                    copy::copy_in(stream, req, &root).await;
                }
            }
            Message::Shutdown => {
                let persistent = state
                    .root
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|r| r.persistent.clone())
                    .unwrap_or_default();
                // Processes get a moment to exit cleanly only when there is data to keep.
                let grace = if persistent.is_empty() {
                    Duration::ZERO
                } else {
                    Duration::from_secs(3)
                };
                tokio::task::spawn_blocking(move || sys::quiesce(grace, &persistent))
                    .await
                    .ok();
                let _ = stream.send(Message::Done);
                mux.close("shutdown requested");
                // Give the writer a moment to put `done` on the wire before the reset.
                tokio::time::sleep(Duration::from_millis(5)).await;
                sys::power_off();
            }
            other => {
                let _ = stream.send(Message::error(
                    ErrorKind::Unsupported,
                    format!(
                        "unsupported request: {}",
                        serde_json::to_string(&other).unwrap_or_default()
                    ),
                ));
            }
        }
    });
}
