//! The supervisor: one process per running machine, holding its VM and serving clients.

use super::proxy::relay;
use super::{
    MachineDir, MachineSpec, OVERLAY_SERIAL, ROOTFS_SERIAL, STORAGE_SERIAL, SUPERVISE_SUBCOMMAND,
};
use crate::attach::Outcome;
use crate::backend::{self, Disk};
use crate::network::NetworkSpec;
use crate::vm::{Vm, VmSpec};
use smolvm_protocol::{
    Body, ErrorKind, Exec, Frame, FrameReader, Incoming, Lower, Message, Mux, PROTOCOL, Ready,
    Setup, StreamSender, Upper, VersionRange, write_frame,
};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Call first thing in `main` of every binary that can run machines: when this process was
/// started as a supervisor it runs the machine and exits, never returning.
pub fn supervise_entry() {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != SUPERVISE_SUBCOMMAND) {
        return;
    }
    let dir = MachineDir::new(PathBuf::from(args.get(2).cloned().unwrap_or_default()));
    // The starter's pipe: "ready" once the machine serves, or the reason it could not.
    let ready = args
        .get(3)
        .and_then(|fd| fd.to_str()?.parse::<i32>().ok())
        // SAFETY: the starter passed us this inherited descriptor to own. It must not leak
        // into the VMM, or the starter would wait for its end of file as long as the VM runs.
        .map(|fd| unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            File::from_raw_fd(fd)
        });
    let code = match supervise(&dir, ready) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("smolvm supervisor: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn supervise(dir: &MachineDir, mut ready: Option<File>) -> Result<(), String> {
    let mut report = |msg: &str| {
        if let Some(mut r) = ready.take() {
            let _ = r.write_all(msg.as_bytes());
        }
    };
    let result = (|| {
        let lock = take_lock(dir)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // The VM is started from this (the main) thread inside block_on, as its
        // parent-death signal requires.
        rt.block_on(run(dir, &mut report))?;
        drop(lock);
        Ok(())
    })();
    if let Err(e) = &result {
        report(&format!("error: {e}"));
    }
    result
}

/// Holds the machine's lock (exclusive) and records our pid in it.
fn take_lock(dir: &MachineDir) -> Result<File, String> {
    let path = dir.file("lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // A status probe holds a shared lock for an instant: retry briefly before concluding
    // that another supervisor runs.
    for _ in 0..50 {
        // SAFETY: flock on our descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            f.set_len(0).map_err(|e| e.to_string())?;
            (&f).write_all(std::process::id().to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            return Ok(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err("the machine is already running".into())
}

async fn run(dir: &MachineDir, report: &mut dyn FnMut(&str)) -> Result<(), String> {
    let spec = dir.read_spec().map_err(|e| e.to_string())?;
    let backend = backend::select(spec.backend_kind().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut disks: Vec<Disk> = spec.rootfs.iter().cloned().collect();
    disks.push(Disk::file(OVERLAY_SERIAL, dir.overlay_disk(), false));
    disks.push(Disk::file(STORAGE_SERIAL, dir.storage_disk(), false));
    let volumes = spec
        .volumes
        .iter()
        .map(|v| smolfile::Volume::parse(v, std::path::Path::new("/")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the machine's volumes: {e}"))?;
    let (shares, mounts) =
        crate::volume::shares(&volumes, backend.share_fs()).map_err(|e| e.to_string())?;
    // The stack runs here, for the VM's life; its denials go to our log (stderr).
    let network = NetworkSpec::from_settings(&spec.network)
        .map_err(|e| format!("the machine's network: {e}"))?;
    let vm_spec = VmSpec {
        backend,
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        boot: spec.boot(),
        disks,
        shares,
        network,
    };
    let vm = Vm::boot(&vm_spec).await.map_err(|e| e.to_string())?;
    let setup = Setup {
        hostname: spec.hostname.clone(),
        lower: match spec.rootfs {
            Some(_) => Lower::Disk {
                serial: ROOTFS_SERIAL.into(),
                fstype: "squashfs".into(),
            },
            None => Lower::Bare,
        },
        upper: Upper::Disk {
            serial: OVERLAY_SERIAL.into(),
        },
        workspace: Some(STORAGE_SERIAL.into()),
        mounts,
        network: vm.network_setup(),
    };
    if let Err(e) = vm.agent().setup(setup).await {
        vm.shutdown().await;
        return Err(format!("setting up the machine's filesystems: {e}"));
    }
    if let Err(e) = run_init(&vm, &spec).await {
        vm.shutdown().await;
        return Err(e);
    }
    let socket = dir.socket().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    eprintln!(
        "smolvm supervisor: machine {} is running ({})",
        spec.name,
        vm.backend()
    );
    report("ready\n");

    let agent = vm.agent().mux().clone();
    // Clients get at most what the agent speaks: the supervisor relays their requests.
    let speaks = VersionRange {
        min: PROTOCOL.min,
        max: vm.agent().version,
    };
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<Option<StreamSender>>();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let requester = loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_client(stream, agent.clone(), speaks, stop_tx.clone()));
                }
            }
            requester = stop_rx.recv() => break requester.flatten(),
            _ = agent.closed() => {
                eprintln!("smolvm supervisor: the VM stopped unexpectedly: {}", agent.close_reason().unwrap_or_default());
                break None;
            }
            _ = term.recv() => break None,
            _ = int.recv() => break None,
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    vm.shutdown().await;
    eprintln!("smolvm supervisor: machine {} stopped", spec.name);
    if let Some(r) = requester {
        let _ = r.send(Message::Done);
        // Let the reply reach the client before the process exits.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs the machine's init commands in order, with the machine's defaults; output goes to
/// the supervisor's log.
async fn run_init(vm: &Vm, spec: &MachineSpec) -> Result<(), String> {
    for (i, line) in spec.init.iter().enumerate() {
        let exec = Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), line.clone()],
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            ..Default::default()
        };
        let stream = vm.agent().exec(exec).map_err(|e| e.to_string())?;
        match crate::attach::collect(stream).await {
            (Outcome::Exited(s), output) if s.shell_code() == 0 => {
                let _ = std::io::stderr().write_all(&output);
            }
            (outcome, output) => {
                let _ = std::io::stderr().write_all(&output);
                let why = match outcome {
                    Outcome::Exited(s) => format!("exit status {}", s.shell_code()),
                    Outcome::Failed(e) => e.message,
                    Outcome::Lost(why) => why,
                };
                return Err(format!("init command {} ({line:?}) failed: {why}", i + 1));
            }
        }
    }
    Ok(())
}

/// One client: the agent's side of the handshake, then each of its streams relayed.
async fn serve_client(
    stream: UnixStream,
    agent: Mux,
    speaks: VersionRange,
    stop: mpsc::UnboundedSender<Option<StreamSender>>,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let ready = Ready {
        protocol: speaks,
        agent_version: format!("smolvm-supervisor {}", env!("CARGO_PKG_VERSION")),
        init_us: 0,
        ready_us: 0,
    };
    if write_frame(&mut w, &Frame::control(0, Message::Ready(ready)))
        .await
        .is_err()
    {
        return;
    }
    let version = match reader.read_frame().await {
        Ok(Some(Frame {
            stream: 0,
            body: Body::Control(Message::Hello(h)),
        })) => h.version,
        _ => return,
    };
    if speaks
        .negotiate(VersionRange {
            min: version,
            max: version,
        })
        .is_none()
    {
        let msg = Message::error(
            ErrorKind::Unsupported,
            format!("protocol version {version} is not supported"),
        );
        let _ = write_frame(&mut w, &Frame::control(0, msg)).await;
        return;
    }
    if write_frame(&mut w, &Frame::control(0, Message::HelloOk { version }))
        .await
        .is_err()
    {
        return;
    }
    let (_client, mut incoming) = Mux::start(reader, w, true);
    while let Some(Incoming { stream, request }) = incoming.recv().await {
        match request {
            Message::Shutdown => {
                let _ = stop.send(Some(stream.sender()));
            }
            Message::Setup(_) => {
                let _ = stream.send(Message::error(
                    ErrorKind::InvalidRequest,
                    "the machine is already set up",
                ));
            }
            request => {
                // What ends the request in the guest if the client goes away mid-way.
                let abandon = match request {
                    Message::Exec(_) => Message::Signal {
                        signal: libc::SIGKILL,
                    },
                    _ => Message::Cancel,
                };
                match agent.open(request) {
                    Ok(agent_stream) => {
                        tokio::spawn(relay(stream, agent_stream, abandon));
                    }
                    Err(e) => {
                        let _ = stream.send(Message::error(ErrorKind::Io, e.to_string()));
                    }
                }
            }
        }
    }
}
