//! Running a command: spawn it in the guest root with pipes or a PTY, stream its output with
//! backpressure, feed its stdin, forward signals and resizes, enforce the timeout, and report
//! how it ended only after all of its output has been sent.

use crate::fdio::{FdStream, owned};
use crate::reaper::{self, WaitStatus};
use crate::{sys, user};
use smolvm_protocol::{
    Channel, ErrorKind, ErrorReply, Event, Exec, ExitStatus, Message, Stream, StreamReceiver,
    StreamSender, TtySize,
};
use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
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

fn cstring(s: &str, what: &str) -> Result<CString, ErrorReply> {
    CString::new(s).map_err(|_| {
        error(
            ErrorKind::InvalidRequest,
            format!("{what} contains a NUL byte"),
        )
    })
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

    // Everything the child needs after fork is prepared here: the pre-exec hook may not allocate.
    let root_c = cstring(&root.to_string_lossy(), "root")?;
    let mut prefixes = Vec::new();
    let mut acc = String::new();
    for part in workdir.split('/').filter(|p| !p.is_empty()) {
        acc.push('/');
        acc.push_str(part);
        prefixes.push(cstring(&acc, "working directory")?);
    }
    let workdir_c = cstring(&workdir, "working directory")?;
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.uid, user.gid);

    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(env.iter().filter_map(|kv| kv.split_once('=')));

    let mut process = Process {
        pid: 0,
        exit: oneshot::channel().1,
        stdin: None,
        outputs: vec![],
        pty: None,
    };
    let tty = req.tty;
    if let Some(size) = tty {
        let (master, slave) =
            openpty(size).map_err(|e| error(ErrorKind::Io, format!("allocating a PTY: {e}")))?;
        // The terminal is the process's stdin even when the host sends none, as with `docker run -t`.
        cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err)?));
        cmd.stdout(Stdio::from(slave.try_clone().map_err(io_err)?));
        cmd.stderr(Stdio::from(slave));
        process.pty = Some(master.as_raw_fd());
        let (r, w) = tokio::io::split(FdStream::new(master).map_err(io_err)?);
        process.outputs.push((Channel::Stdout, Box::new(r)));
        process.stdin = Some(Box::new(w));
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }

    // SAFETY: the hook only makes async-signal-safe syscalls on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            let ok = |r: libc::c_int| {
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            ok(libc::chroot(root_c.as_ptr()))?;
            ok(libc::chdir(c"/".as_ptr()))?;
            for p in &prefixes {
                libc::mkdir(p.as_ptr(), 0o755);
            }
            ok(libc::chdir(workdir_c.as_ptr()))?;
            ok(libc::setsid())?;
            if tty.is_some() {
                ok(libc::ioctl(1, libc::TIOCSCTTY, 0))?;
            }
            ok(libc::setgroups(groups.len(), groups.as_ptr()))?;
            ok(libc::setgid(gid))?;
            ok(libc::setuid(uid))?;
            Ok(())
        });
    }

    let (mut child, exit) =
        reaper::spawn(&mut cmd).map_err(|e| spawn_error(program, &workdir, e))?;
    process.pid = child.id() as i32;
    process.exit = exit;
    if tty.is_none() {
        if let Some(stdin) = child.stdin.take() {
            process.stdin = Some(Box::new(
                FdStream::new(OwnedFd::from(stdin)).map_err(io_err)?,
            ));
        }
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        process.outputs.push((
            Channel::Stdout,
            Box::new(FdStream::new(OwnedFd::from(out)).map_err(io_err)?),
        ));
        process.outputs.push((
            Channel::Stderr,
            Box::new(FdStream::new(OwnedFd::from(err)).map_err(io_err)?),
        ));
    }
    // `cmd` still holds the parent's copies of the PTY slave: drop them so the master sees
    // EOF when the process and its children are gone.
    drop(cmd);
    Ok(process)
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
