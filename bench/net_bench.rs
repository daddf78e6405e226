//! The VM network: `cargo run --release --example net_bench [-- MB]`
//!
//! Boots one VM with `--net` and two port forwards (the binaries in the same target
//! directory: build them first with cargo build --release --workspace --bins) and measures,
//! with MB megabytes (default 100) per transfer:
//! - guest -> host TCP throughput (`head -c | nc` in the guest to a host sink);
//! - host -> guest TCP throughput (`wget -O /dev/null` in the guest from a host server);
//! - connection setup: 100 sequential guest connections to the host (`nc` in a loop; each
//!   includes a fork+exec of nc in the guest) against the same loop to a guest-local server;
//! - port-forward throughput (host -> guest port 9000) and request latency (HTTP GETs to
//!   the guest's busybox httpd through the forward, host-timed);
//! - the host stack's CPU per GB moved: user+system time of the smolvm process (where the
//!   stack runs; QEMU is a separate process) from /proc/PID/stat, as getrusage would give it
//!   for that process, over each transfer.

#[path = "common.rs"]
mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the ")" they are the 12th and 13th.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Transfer {
    bytes: usize,
    secs: f64,
    cpu: f64,
}

impl Transfer {
    fn report(&self, what: &str) {
        println!(
            "{what:<34} {:7.1} MB/s   stack CPU {:6.2} s/GB   ({} MB in {:.1} s)",
            self.bytes as f64 / self.secs / 1e6,
            self.cpu / (self.bytes as f64 / 1e9),
            self.bytes / 1_000_000,
            self.secs
        );
    }
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MB"))
        .unwrap_or(100);
    let bytes = mb * 1_000_000;
    let release: PathBuf = common::release_dir();
    let home = tempfile::tempdir().unwrap();
    let (events_tx, events) = mpsc::channel::<(&str, Instant, usize)>();

    // Guest -> host sink: reports when the first byte arrived, when EOF came, and how much.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let tx = events_tx.clone();
    thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = c.read(&mut buf).unwrap();
        let start = Instant::now();
        tx.send(("up_start", start, 0)).unwrap();
        loop {
            match c.read(&mut buf).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        tx.send(("up_end", Instant::now(), n)).unwrap();
    });
    // Host -> guest server: one HTTP response of `bytes` zeros.
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = http.local_addr().unwrap().port();
    let tx = events_tx.clone();
    thread::spawn(move || {
        let (mut c, _) = http.accept().unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        tx.send(("down_start", Instant::now(), 0)).unwrap();
        write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {bytes}\r\n\r\n").unwrap();
        let chunk = vec![0u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            c.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        c.shutdown(Shutdown::Write).unwrap();
        // The guest closes once it has read everything.
        let _ = c.read(&mut [0u8; 1]);
        tx.send(("down_end", Instant::now(), bytes)).unwrap();
    });
    // Connection setup: counts accepts.
    let acc = TcpListener::bind("127.0.0.1:0").unwrap();
    let acc_port = acc.local_addr().unwrap().port();
    let tx = events_tx.clone();
    thread::spawn(move || {
        for (i, c) in acc.incoming().enumerate() {
            drop(c);
            if i == 0 {
                tx.send(("conn_start", Instant::now(), 0)).unwrap();
            }
            if i == 100 {
                tx.send(("conn_end", Instant::now(), 100)).unwrap();
                return;
            }
        }
    });
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (web, pf) = (free(), free());
    let script = format!(
        "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www
         head -c {bytes} /dev/zero | nc host.smolvm.internal {sink_port}
         wget -q -O /dev/null http://host.smolvm.internal:{http_port}/
         for i in $(seq 101); do nc host.smolvm.internal {acc_port} </dev/null; done
         a=$(cut -d' ' -f1 /proc/uptime); for i in $(seq 100); do nc 127.0.0.1 8080 </dev/null >/dev/null; done
         b=$(cut -d' ' -f1 /proc/uptime); echo local_loop=$a,$b
         nc -l -p 9000 > /dev/null"
    );
    let mut child = Command::new(release.join("smolvm"))
        .env("XDG_RUNTIME_DIR", home.path())
        .args(["machine", "run", "--cpus", "1", "--mem", "1024", "--net"])
        .args(["-p", &format!("{web}:8080"), "-p", &format!("{pf}:9000")])
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("smolvm runs");
    let pid = child.id();
    let mut at = std::collections::HashMap::new();
    let mut cpu_at = std::collections::HashMap::new();
    while at.len() < 6 {
        let (name, t, n) = events
            .recv_timeout(Duration::from_secs(600))
            .expect("guest progress");
        cpu_at.insert(name, cpu_secs(pid));
        at.insert(name, (t, n));
    }
    let transfer = |start: &str, end: &str| Transfer {
        bytes: at[end].1,
        secs: at[end].0.duration_since(at[start].0).as_secs_f64(),
        cpu: cpu_at[end] - cpu_at[start],
    };

    // Port-forward request latency: sequential GETs, host-timed.
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", web)).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.ends_with("ok\n"), "{r}");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Port-forward throughput: the guest's nc -l may not listen yet; retry until it takes data.
    let zeros = vec![0u8; 256 * 1024];
    let (pf_secs, pf_cpu) = loop {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", pf)) else {
            continue;
        };
        let (t, c) = (Instant::now(), cpu_secs(pid));
        let mut left = bytes;
        let mut ok = true;
        while left > 0 {
            let n = left.min(zeros.len());
            if s.write_all(&zeros[..n]).is_err() {
                ok = false;
                break;
            }
            left -= n;
        }
        if !ok {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read(&mut [0u8; 1]);
        break (t.elapsed().as_secs_f64(), cpu_secs(pid) - c);
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let local: Vec<f64> = out
        .lines()
        .find_map(|l| l.strip_prefix("local_loop="))
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .expect("the guest printed its local loop time");

    println!("network benchmark; {}", common::host_conditions());
    println!("VM: 1 vCPU, 1024 MiB, qemu TCG (software emulation bounds every figure)");
    transfer("up_start", "up_end").report("guest -> host TCP (--net)");
    transfer("down_start", "down_end").report("host -> guest TCP (--net)");
    Transfer {
        bytes,
        secs: pf_secs,
        cpu: pf_cpu,
    }
    .report("host -> guest port forward");
    let conn = transfer("conn_start", "conn_end");
    println!(
        "guest connect to host, per conn      {:7.2} ms   (guest-local loop: {:.2} ms; both include nc's fork+exec)",
        conn.secs * 1000.0 / 100.0,
        (local[1] - local[0]) * 1000.0 / 100.0
    );
    println!(
        "port-forward GET round trip          median {:.2} ms, p90 {:.2} ms (host-timed, 100 sequential)",
        lat[50], lat[90]
    );
}
