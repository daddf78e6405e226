//! Running a command: spawn it in the guest root with pipes or a PTY, stream its output with
//! backpressure, feed its stdin, forward signals and resizes, enforce the timeout, and report
//! how it ended only after all of its output has been sent.

use crate::fdio::{FdStream, owned};
use crate::reaper::{self, WaitStatus};
use crate::{spawn, sys, user};
use smolvm_protocol::{
    Channel, ErrorKind, ErrorReply, Event, Exec, ExitStatus, Message, Stream, StreamReceiver,
    StreamSender, TtySize,
};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After the process exits, output still arriving is forwarded; once a stream has been idle
/// this long it is closed, so a background child holding stdout open cannot hang the exec.
const AFTER_EXIT_IDLE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 128 * 1024;

pub async fn run(stream: Stream, req: Exec, root: &Path) {
    let (tx, rx) = stream.split();
    match start(&req, root) {
        Ok(process) => supervise(tx, rx, &req, process).await,
        Err(reply) => {
            let _ = tx.send(Message::Error(reply));
        }
    }
}

struct Process {
    pid: i32,
    exit: oneshot::Receiver<WaitStatus>,
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    outputs: Vec<(Channel, Box<dyn AsyncRead + Send + Unpin>)>,
    /// The PTY master, for resizes; kept alive by the halves above.
    pty: Option<RawFd>,
}

fn error(kind: ErrorKind, message: String) -> ErrorReply {
    ErrorReply { kind, message }
}

fn start(req: &Exec, root: &Path) -> Result<Process, ErrorReply> {
    let Some(program) = req.argv.first() else {
        return Err(error(ErrorKind::InvalidRequest, "empty command".into()));
    };
    let user = user::resolve(root, req.user.as_deref())
        .map_err(|m| error(ErrorKind::InvalidRequest, m))?;
    let env = environment(req, &user.home);
    let workdir = req.workdir.clone().unwrap_or_else(|| "/".into());
    if !workdir.starts_with('/') {
        return Err(error(
            ErrorKind::InvalidRequest,
            format!("working directory {workdir:?} must be an absolute path"),
        ));
    }

    let mut process = Process {
        pid: 0,
        exit: oneshot::channel().1,
        stdin: None,
        outputs: vec![],
        pty: None,
    };
    // The descriptors the child gets as 0, 1, 2; ours are closed once it has started.
    let child_stdio: [OwnedFd; 3];
    if let Some(size) = req.tty {
        let (master, slave) =
            openpty(size).map_err(|e| error(ErrorKind::Io, format!("allocating a PTY: {e}")))?;
        // The terminal is the process's stdin even when the host sends none, as with `docker run -t`.
        child_stdio = [
            slave.try_clone().map_err(io_err)?,
            slave.try_clone().map_err(io_err)?,
            slave,
        ];
        process.pty = Some(master.as_raw_fd());
        let (r, w) = tokio::io::split(FdStream::new(master).map_err(io_err)?);
        process.outputs.push((Channel::Stdout, Box::new(r)));
        process.stdin = Some(Box::new(w));
    } else {
        let stdin = if req.stdin {
            let (r, w) = pipe().map_err(io_err)?;
            process.stdin = Some(Box::new(FdStream::new(w).map_err(io_err)?));
            r
        } else {
            std::fs::File::open("/dev/null").map_err(io_err)?.into()
        };
        let (out_r, out_w) = pipe().map_err(io_err)?;
        let (err_r, err_w) = pipe().map_err(io_err)?;
        process.outputs.push((
            Channel::Stdout,
            Box::new(FdStream::new(out_r).map_err(io_err)?),
        ));
        process.outputs.push((
            Channel::Stderr,
            Box::new(FdStream::new(err_r).map_err(io_err)?),
        ));
        child_stdio = [stdin, out_w, err_w];
    }
    let plan = spawn::Plan::new(&spawn::Spec {
        root: &root.to_string_lossy(),
        workdir: &workdir,
        argv: &req.argv,
        env: &env,
        stdio: [
            child_stdio[0].as_raw_fd(),
            child_stdio[1].as_raw_fd(),
            child_stdio[2].as_raw_fd(),
        ],
        controlling_tty: req.tty.is_some(),
        uid: user.uid,
        gid: user.gid,
        groups: &user.groups,
    })
    .map_err(|e| error(ErrorKind::InvalidRequest, e.to_string()))?;
    let (pid, exit) =
        reaper::spawn(|| spawn::spawn(plan)).map_err(|e| spawn_error(program, &workdir, e))?;
    process.pid = pid;
    process.exit = exit;
    // Our copies of the child's ends: closed, so the pipes and the PTY see end of file when
    // the process and its children are gone.
    drop(child_stdio);
    Ok(process)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(fds[0])?, owned(fds[1])?))
}

fn io_err(e: io::Error) -> ErrorReply {
    error(ErrorKind::Io, e.to_string())
}

fn spawn_error(program: &str, workdir: &str, e: io::Error) -> ErrorReply {
    match e.raw_os_error() {
        Some(libc::ENOENT) if !program.contains('/') => error(
            ErrorKind::NotFound,
            format!("{program}: command not found in PATH"),
        ),
        Some(libc::ENOENT) => error(
            ErrorKind::NotFound,
            format!("{program}: no such file or directory"),
        ),
        Some(libc::EACCES) => error(
            ErrorKind::PermissionDenied,
            format!(
                "{program}: permission denied (not executable, or {workdir} is not accessible)"
            ),
        ),
        Some(libc::ENOEXEC) => error(
            ErrorKind::PermissionDenied,
            format!("{program}: exec format error"),
        ),
        _ => error(ErrorKind::Io, format!("starting {program}: {e}")),
    }
}

/// The request's environment, completed with what a login would provide.
fn environment(req: &Exec, home: &str) -> Vec<String> {
    let mut env = req.env.clone();
    let has = |env: &[String], key: &str| {
        env.iter()
            .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if req.tty.is_some() && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !has(&env, "HOSTNAME")
        && let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname")
    {
        env.push(format!("HOSTNAME={}", h.trim()));
    }
    env
}

fn openpty(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = winsize(size);
    // SAFETY: valid out-pointers and winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let (master, slave) = (owned(master)?, owned(slave)?);
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: setting a flag on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

fn winsize(size: TtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

async fn supervise(tx: StreamSender, rx: StreamReceiver, req: &Exec, process: Process) {
    let Process {
        pid,
        mut exit,
        stdin,
        outputs,
        pty,
    } = process;
    let _ = tx.send(Message::Started { pid: pid as u32 });
    let (exited_tx, exited_rx) = watch::channel(false);
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(ch, r)| tokio::spawn(pump(r, tx.clone(), ch, exited_rx.clone())))
        .collect();
    let input = tokio::spawn(input(rx, stdin, pid, pty));

    let deadline = req
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let status = loop {
        tokio::select! {
            s = &mut exit => break s.unwrap_or(0),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() && !timed_out => {
                timed_out = true;
                sys::kill(-pid, libc::SIGKILL);
            }
        }
    };
    let _ = exited_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    input.abort();
    let mut result = ExitStatus {
        timed_out,
        ..Default::default()
    };
    if libc::WIFEXITED(status) {
        result.code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        result.signal = Some(libc::WTERMSIG(status));
    }
    let _ = tx.send(Message::Exit(result));
}

/// Copies one output of the process to the host, waiting for credit (so a slow host slows
/// the process instead of filling memory).
async fn pump(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    tx: StreamSender,
    channel: Channel,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = if *exited.borrow() {
            match tokio::time::timeout(AFTER_EXIT_IDLE, r.read(&mut buf)).await {
                Ok(res) => res,
                Err(_idle) => break,
            }
        } else {
            tokio::select! {
                res = r.read(&mut buf) => res,
                _ = exited.changed() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send_data(channel, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send_eof(channel);
}

/// Feeds stdin and handles control messages. Stdin data is queued (credit returned only once
/// written), so a process that does not read its stdin still receives signals and resizes.
async fn input(
    mut rx: StreamReceiver,
    mut stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pid: i32,
    pty: Option<RawFd>,
) {
    rx.manual_credit();
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut offset = 0;
    let mut eof = false;
    loop {
        let writable = stdin.is_some() && !pending.is_empty();
        tokio::select! {
            ev = rx.recv() => match ev {
                None => return,
                Some(Event::Data(Channel::Stdin, data)) => {
                    if stdin.is_some() { pending.push_back(data) } else { rx.credit(Channel::Stdin, data.len()) }
                }
                Some(Event::Eof(Channel::Stdin)) => eof = true,
                Some(Event::Control(Message::Resize(size))) => {
                    if let Some(fd) = pty {
                        // SAFETY: TIOCSWINSZ on the live PTY master with a valid winsize.
                        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &winsize(size)) };
                    }
                }
                Some(Event::Control(Message::Signal { signal })) => {
                    // SIGKILL cancels the whole command; other signals go to the process, as
                    // `docker kill -s` does.
                    sys::kill(if signal == libc::SIGKILL { -pid } else { pid }, signal);
                }
                Some(_) => {}
            },
            written = async {
                let w = stdin.as_mut().expect("checked writable");
                w.write(&pending[0][offset..]).await
            }, if writable => match written {
                Ok(n) if n > 0 => {
                    offset += n;
                    if offset == pending[0].len() {
                        rx.credit(Channel::Stdin, offset);
                        pending.pop_front();
                        offset = 0;
                    }
                }
                // The process closed its stdin: discard what is queued and what comes.
                _ => {
                    stdin = None;
                    let queued: usize = pending.drain(..).map(|d| d.len()).sum();
                    rx.credit(Channel::Stdin, queued - offset);
                    offset = 0;
                }
            },
        }
        if eof && pending.is_empty() && pty.is_none() {
            // Closing the pipe is how the process sees end of input.
            if let Some(mut w) = stdin.take() {
                let _ = w.shutdown().await;
            }
        }
    }
}
