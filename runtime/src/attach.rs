//! Connecting a running command to this process's stdio: output to stdout/stderr, stdin
//! (with `-i`) to the command, signals and terminal resizes forwarded, raw mode with `-t`.

use crate::terminal::{self, RawMode};
use crate::trace;
use smolvm_protocol::{Channel, ErrorReply, Event, ExitStatus, Message, Stream, StreamSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

/// How an attached command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Exited(ExitStatus),
    /// The agent could not start it (not found, not executable, bad user ...).
    Failed(ErrorReply),
    /// The connection to the VM broke before the command ended.
    Lost(String),
}

/// Forwards I/O until the command ends. `stdin`: forward our stdin. `tty`: the command runs
/// on a PTY; our terminal goes raw and resizes are forwarded.
pub async fn attach(stream: Stream, stdin: bool, tty: bool) -> Outcome {
    let (tx, mut rx) = stream.split();
    let _raw = if tty && terminal::is_tty(0) {
        RawMode::enable(0).ok()
    } else {
        None
    };
    let stdin_task = stdin.then(|| tokio::spawn(forward_stdin(tx.clone())));
    let signals = tokio::spawn(forward_signals(tx.clone(), tty));
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let mut first_output = true;
    let outcome = loop {
        let Some(ev) = rx.recv().await else {
            break Outcome::Lost(
                "the connection to the VM closed before the command finished".into(),
            );
        };
        match ev {
            Event::Data(ch, data) => {
                if first_output {
                    trace::mark("first output");
                    first_output = false;
                }
                let w: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) = if ch == Channel::Stderr {
                    &mut err
                } else {
                    &mut out
                };
                // A closed stdout (`smolvm ... | head`) is not an error for the command: keep
                // draining so it can finish, as a local pipeline would.
                if w.write_all(&data).await.is_ok() {
                    let _ = w.flush().await;
                }
            }
            Event::Eof(_) => {}
            Event::Control(Message::Started { .. }) => trace::mark("exec started"),
            Event::Control(Message::Exit(status)) => {
                trace::mark("exit received");
                break Outcome::Exited(status);
            }
            Event::Control(Message::Error(e)) => break Outcome::Failed(e),
            Event::Control(_) => {}
        }
    };
    signals.abort();
    if let Some(t) = stdin_task {
        t.abort();
    }
    outcome
}

async fn forward_stdin(tx: StreamSender) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send_data(Channel::Stdin, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send_eof(Channel::Stdin);
}

/// Signals sent to us reach the command; with a PTY, window changes become resizes.
async fn forward_signals(tx: StreamSender, tty: bool) {
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ];
    let mut streams = Vec::new();
    for k in kinds {
        if let Ok(s) = signal(k) {
            streams.push((k, s));
        }
    }
    let mut winch = if tty {
        signal(SignalKind::window_change()).ok()
    } else {
        None
    };
    loop {
        let recv_any = futures_select(&mut streams);
        tokio::select! {
            k = recv_any => {
                if tx.send(Message::Signal { signal: k.as_raw_value() }).is_err() { return; }
            }
            Some(_) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Some(size) = terminal::size(0)
                    && tx.send(Message::Resize(size)).is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Waits for whichever signal stream fires first.
async fn futures_select(streams: &mut [(SignalKind, tokio::signal::unix::Signal)]) -> SignalKind {
    std::future::poll_fn(|cx| {
        for (k, s) in streams.iter_mut() {
            if let std::task::Poll::Ready(Some(())) = s.poll_recv(cx) {
                return std::task::Poll::Ready(*k);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Runs a command's stream to the end without a terminal, collecting its stdout and stderr
/// (interleaved as they arrive): for init commands and health checks.
pub async fn collect(stream: Stream) -> (Outcome, Vec<u8>) {
    let (_tx, mut rx) = stream.split();
    let mut output = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Data(_, data) => output.extend_from_slice(&data),
            Event::Control(Message::Exit(status)) => return (Outcome::Exited(status), output),
            Event::Control(Message::Error(e)) => return (Outcome::Failed(e), output),
            _ => {}
        }
    }
    (
        Outcome::Lost("the connection to the VM closed before the command finished".into()),
        output,
    )
}

/// Says on stderr why a command did not simply exit (it could not start, timed out, or the
/// VM failed), as every smolvm front end reports it.
pub fn report(outcome: &Outcome, timeout: Option<std::time::Duration>) {
    match outcome {
        Outcome::Exited(s) if s.timed_out => {
            eprintln!(
                "smolvm: command timed out after {:?} and was killed",
                timeout.unwrap_or_default()
            );
        }
        Outcome::Exited(_) => {}
        Outcome::Failed(e) => eprintln!("smolvm: {}", e.message),
        Outcome::Lost(why) => eprintln!("smolvm: error: {why}"),
    }
}

/// `-e KEY=VALUE`, or `-e KEY` to pass this process's value, as docker does; with `-t`,
/// the terminal type comes along unless given.
pub fn env_flags(flags: &[String], tty: bool) -> Result<Vec<String>, String> {
    let mut env = Vec::new();
    for spec in flags {
        let entry = if spec.contains('=') {
            spec.clone()
        } else {
            format!("{spec}={}", std::env::var(spec).unwrap_or_default())
        };
        smolfile::parse_env(&entry).map_err(|e| format!("-e: {e}"))?;
        env.push(entry);
    }
    if tty
        && !env.iter().any(|kv| kv.starts_with("TERM="))
        && let Ok(term) = std::env::var("TERM")
    {
        env.push(format!("TERM={term}"));
    }
    Ok(env)
}

/// `-it` needs a terminal to read keys from, as with docker.
pub fn check_tty_flags(interactive: bool, tty: bool) -> Result<(), String> {
    if tty && interactive && !terminal::is_tty(0) {
        return Err("the input device is not a TTY: drop -t, or run from a terminal".into());
    }
    Ok(())
}

/// The PTY size to ask for with `-t`: our terminal's, or 24x80.
pub fn tty_size(tty: bool) -> Option<smolvm_protocol::TtySize> {
    tty.then(|| terminal::size(0).unwrap_or(smolvm_protocol::TtySize { rows: 24, cols: 80 }))
}

/// Exit status of smolvm itself when the command could not run or the VM failed, as
/// `docker run` uses 125 for its own errors.
pub const EXIT_SMOLVM_ERROR: i32 = 125;
/// Exit status when `--timeout` killed the command, as coreutils `timeout` uses.
pub const EXIT_TIMED_OUT: i32 = 124;

impl Outcome {
    /// The exit status smolvm should end with, so scripts see what they would locally.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(s) if s.timed_out => EXIT_TIMED_OUT,
            Outcome::Exited(s) => s.shell_code(),
            Outcome::Failed(e) => e.kind.exit_code(),
            Outcome::Lost(_) => EXIT_SMOLVM_ERROR,
        }
    }
}
