use sha2::{Digest, Sha256};
use smolvm_protocol::mux::INITIAL_WINDOW;
use smolvm_protocol::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, duplex};

/// A host mux and an agent mux joined by an in-memory pipe with a small buffer, so the pipe
/// itself exerts backpressure like a real channel.
fn pair() -> (Mux, tokio::sync::mpsc::UnboundedReceiver<Incoming>) {
    let (a, b) = duplex(64 * 1024);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let (host, _) = Mux::start(FrameReader::new(ar), aw, false);
    let (_agent, incoming) = Mux::start(FrameReader::new(br), bw, true);
    (host, incoming)
}

fn pattern(len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x1234_5678u32;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(100_003);
        left -= n;
        Some(
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_arrive_intact() {
    const LEN: usize = 100 * 1024 * 1024;
    let (host, mut incoming) = pair();
    let mut stream = host.open(Message::Ping).unwrap();
    let agent = tokio::spawn(async move {
        let inc = incoming.recv().await.unwrap();
        assert_eq!(inc.request, Message::Ping);
        let mut want = Sha256::new();
        for chunk in pattern(LEN) {
            want.update(&chunk);
            inc.stream.send_data(Channel::Stdout, &chunk).await.unwrap();
        }
        inc.stream.send_eof(Channel::Stdout).unwrap();
        inc.stream.send(Message::Pong).unwrap();
        want.finalize()
    });
    let mut got = Sha256::new();
    let mut n = 0;
    loop {
        match stream.recv().await.unwrap() {
            Event::Data(Channel::Stdout, d) => {
                n += d.len();
                got.update(&d);
            }
            Event::Eof(Channel::Stdout) => {}
            Event::Control(Message::Pong) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n, LEN);
    assert_eq!(got.finalize(), agent.await.unwrap());
    // The stream ended with `pong`: nothing more arrives.
    assert!(stream.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_stalls_the_sender_at_the_window() {
    let (host, mut incoming) = pair();
    let mut stream = host.open(Message::Ping).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    tokio::spawn(async move {
        let inc = incoming.recv().await.unwrap();
        for chunk in pattern(64 * 1024 * 1024) {
            for piece in chunk.chunks(4096) {
                inc.stream.send_data(Channel::Stdout, piece).await.unwrap();
                sent2.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    assert!(
        stalled_at <= INITIAL_WINDOW as u64,
        "sender ran ahead to {stalled_at}"
    );
    assert!(
        stalled_at >= INITIAL_WINDOW as u64 - 4096,
        "sender stopped early at {stalled_at}"
    );
    // Reading releases it.
    let mut read = 0u64;
    while read < 8 * 1024 * 1024 {
        if let Event::Data(_, d) = stream.recv().await.unwrap() {
            read += d.len() as u64;
        }
    }
    assert!(sent.load(Ordering::SeqCst) > stalled_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_independent() {
    let (host, mut incoming) = pair();
    // Stream A floods and is never read; stream B must still complete.
    let _a = host.open(Message::Ping).unwrap();
    let mut b = host.open(Message::Ping).unwrap();
    tokio::spawn(async move {
        let a = incoming.recv().await.unwrap();
        let b = incoming.recv().await.unwrap();
        tokio::spawn(async move {
            let _ = a
                .stream
                .send_data(Channel::Stdout, &vec![0; 16 * 1024 * 1024])
                .await;
        });
        b.stream
            .send_data(Channel::Stderr, b"through")
            .await
            .unwrap();
        b.stream.send(Message::Pong).unwrap();
    });
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(
            b.recv().await,
            Some(Event::Data(Channel::Stderr, b"through".to_vec()))
        );
        assert_eq!(b.recv().await, Some(Event::Control(Message::Pong)));
    })
    .await;
    assert!(r.is_ok(), "stream B was blocked behind stream A");
}

#[tokio::test]
async fn many_concurrent_streams_get_their_own_data() {
    let (host, mut incoming) = pair();
    tokio::spawn(async move {
        while let Some(inc) = incoming.recv().await {
            tokio::spawn(async move {
                let id = inc.stream.id().to_string();
                for _ in 0..50 {
                    inc.stream
                        .send_data(Channel::Stdout, id.as_bytes())
                        .await
                        .unwrap();
                }
                inc.stream.send(Message::Pong).unwrap();
            });
        }
    });
    let mut tasks = vec![];
    for _ in 0..64 {
        let mut s = host.open(Message::Ping).unwrap();
        tasks.push(tokio::spawn(async move {
            let id = s.id().to_string();
            let mut got = Vec::new();
            while let Some(ev) = s.recv().await {
                match ev {
                    Event::Data(_, d) => got.extend(d),
                    Event::Control(Message::Pong) => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, id.repeat(50).into_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_peer_that_ignores_the_window_is_disconnected() {
    let (a, mut b) = duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    let (host, _) = Mux::start(FrameReader::new(ar), aw, false);
    let mut stream = host.open(Message::Ping).unwrap();
    // A raw peer sends more than the window on stream 1 without waiting for credit.
    let chunk = vec![1u8; MAX_PAYLOAD];
    let writer = tokio::spawn(async move {
        for _ in 0..(INITIAL_WINDOW as usize / MAX_PAYLOAD + 1) {
            let f = Frame {
                stream: 1,
                body: Body::Data(Channel::Stdout, chunk.clone()),
            };
            if b.write_all(&f.to_bytes()).await.is_err() {
                break;
            }
        }
        b
    });
    while stream.recv().await.is_some() {}
    host.closed().await;
    let reason = host.close_reason().unwrap();
    assert!(reason.contains("beyond its window"), "{reason}");
    assert!(matches!(host.open(Message::Ping), Err(MuxError::Closed(_))));
    drop(writer);
}

#[tokio::test]
async fn a_malformed_frame_closes_the_connection_with_the_reason() {
    let (a, mut b) = duplex(1 << 16);
    let (ar, aw) = tokio::io::split(a);
    let (host, _) = Mux::start(FrameReader::new(ar), aw, false);
    let mut stream = host.open(Message::Ping).unwrap();
    b.write_all(&[0, 0, 0, 6, 0x55, 0, 0, 0, 0, 1])
        .await
        .unwrap();
    assert!(stream.recv().await.is_none());
    assert_eq!(host.close_reason().unwrap(), "unknown frame kind 0x55");
}

#[tokio::test]
async fn peer_hang_up_wakes_waiting_senders() {
    let (a, b) = duplex(1 << 16);
    let (ar, aw) = tokio::io::split(a);
    let (host, _) = Mux::start(FrameReader::new(ar), aw, false);
    let s = host.open(Message::Ping).unwrap();
    let sender = tokio::spawn(async move { s.send_data(Channel::Stdin, &vec![0; 8 << 20]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(b);
    let r = tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("sender stayed blocked");
    assert!(matches!(r.unwrap(), Err(MuxError::Closed(_))));
}
