//! A TCP proxy in front of a test registry that can cut or stall the response stream, and
//! records every request head it forwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to the registry's responses.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Close the first connection whose responses pass this many bytes in total; later
    /// connections pass.
    CutOnceAfter(u64),
    /// Stop forwarding (but keep the connection open) after this many response bytes on
    /// the first connection that gets there; later connections pass.
    StallOnceAfter(u64),
    /// Once this many response bytes passed in total, every connection stalls: no attempt
    /// makes progress any more.
    StallAlwaysAfter(u64),
}

/// A running proxy; stops when dropped (it must be dropped inside the Tokio runtime it
/// was started in).
pub struct Proxy {
    /// `127.0.0.1:<port>` to use instead of the registry's host.
    pub host: String,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    fault: Fault,
    fired: AtomicBool,
    sent: AtomicU64,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts forwarding connections to `upstream` (`host:port`), applying `fault`.
    pub async fn start(upstream: &str, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            fault,
            fired: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            requests: requests.clone(),
        });
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(relay(client, server, shared.clone()));
            }
        });
        Proxy {
            host,
            requests,
            task,
        }
    }

    /// The request heads seen so far (request line and headers, lowercase).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let sniff = shared.clone();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0; 16 * 1024];
        let mut pending = String::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.push_str(&String::from_utf8_lossy(&buf[..n]).to_lowercase());
            while let Some(end) = pending.find("\r\n\r\n") {
                sniff
                    .requests
                    .lock()
                    .unwrap()
                    .push(pending[..end].to_owned());
                pending.drain(..end + 4);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut sent = 0;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent += n as u64;
        let total_sent = shared.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let total = match shared.fault {
            Fault::StallAlwaysAfter(_) => total_sent,
            _ => sent,
        };
        let limit = match shared.fault {
            Fault::None => None,
            Fault::CutOnceAfter(limit) | Fault::StallOnceAfter(limit) => {
                (!shared.fired.load(Ordering::Relaxed)).then_some(limit)
            }
            Fault::StallAlwaysAfter(limit) => Some(limit),
        };
        match limit {
            Some(limit) if total > limit => {
                shared.fired.store(true, Ordering::Relaxed);
                let keep = n.saturating_sub((total - limit) as usize);
                let _ = client_write.write_all(&buf[..keep]).await;
                if let Fault::CutOnceAfter(_) = shared.fault {
                    break;
                }
                // Stall: hold the connection open without sending until the client gives up.
                let mut sink = vec![0; 1024];
                while matches!(server_read.read(&mut sink).await, Ok(n) if n > 0) {}
                std::future::pending::<()>().await;
            }
            _ => {
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    upstream.abort();
}
