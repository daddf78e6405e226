//! Networking end to end: real VMs on the userspace stack, real servers, a real DNS server.
//!
//! Each VM test re-runs itself inside a private network namespace (`unshare -rn`, no root
//! needed) whose loopback also carries a few TEST-NET addresses (198.51.100.7-10). Servers
//! listen only there, the stack's "remote" destinations are those addresses, and nothing
//! can reach (or leak to) a real network. One VM runs many checks and prints `name=value`
//! lines, to keep the number of boots small.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use smolvm_net::dns;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

const INSIDE: &str = "SMOLVM_TEST_PRIVATE_NETWORK";
const TEST_NET: [&str; 4] = [
    "198.51.100.7",
    "198.51.100.8",
    "198.51.100.9",
    "198.51.100.10",
];
/// The default subnet's gateway, as the guest sees it.
const GATEWAY: &str = "192.168.127.1";
const BIG: usize = 200 * 1024 * 1024;

/// True inside the private namespace; outside, runs `test` there and checks it passed.
fn private_network(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let mut setup = String::from("ip link set lo up");
    for a in TEST_NET {
        setup.push_str(&format!(" && ip addr add {a}/32 dev lo"));
    }
    setup.push_str(" && exec \"$@\"");
    let status = Command::new("unshare")
        .args(["-rn", "sh", "-c", &setup, "sh"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("unshare (util-linux) runs");
    assert!(status.success(), "{test} failed in its private network");
    false
}

/// Deterministic bytes, `len` of them, in 64 KiB pieces.
fn pattern(len: usize, mut each: impl FnMut(&[u8])) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len());
        each(&buf[..n]);
        left -= n;
    }
}

fn sha256_hex(bytes: impl FnOnce(&mut Sha256)) -> String {
    let mut h = Sha256::new();
    bytes(&mut h);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn pattern_sha(len: usize) -> String {
    sha256_hex(|h| pattern(len, |c| h.update(c)))
}

/// An HTTP/1.0 server on `addr`: `/big` is [`BIG`] pattern bytes, anything else `body`.
fn http_server(addr: &str, body: &'static str) -> u16 {
    let listener = TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let big = line.contains(" /big ");
                let len = if big { BIG } else { body.len() };
                let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if big {
                    pattern(BIG, |c| {
                        let _ = conn.write_all(c);
                    });
                } else {
                    let _ = conn.write_all(body.as_bytes());
                }
            });
        }
    });
    port
}

/// Reads until the client half-closes, then answers `<bytes> <sha256>` and closes.
fn sink_server(addr: &str) -> u16 {
    let listener = TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let (mut n, mut h) = (0usize, Sha256::new());
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            h.update(&buf[..k]);
                        }
                    }
                }
                let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(conn, "{n} {hex}");
            });
        }
    });
    port
}

/// A DNS server on 127.0.0.1 answering A queries from `names`, NXDOMAIN otherwise.
fn dns_server(names: &[(&'static str, &'static str)]) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let names: HashMap<&str, Ipv4Addr> = names
        .iter()
        .map(|(n, a)| (*n, a.parse().unwrap()))
        .collect();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let msg = &buf[..n];
            let Ok(q) = dns::parse_query(msg) else {
                continue;
            };
            let reply = match names.get(q.name.as_str()) {
                Some(a) if q.qtype == dns::TYPE_A => dns::local_reply(msg, &q, 0, &[*a]),
                Some(_) => dns::local_reply(msg, &q, 0, &[]),
                None => dns::local_reply(msg, &q, 3, &[]),
            };
            let _ = socket.send_to(&reply, from);
        }
    });
    port
}

/// `machine run` with the stack's DNS upstream pointed at our DNS server.
fn run_net(dns_port: u16, args: &[&str], script: &str) -> (String, String, Option<i32>) {
    let dir = tempdir();
    let out = smolvm(dir.path())
        .env("SMOLVM_DNS_UPSTREAM", format!("127.0.0.1:{dns_port}"))
        .args(["machine", "run", "--cpus", "1", "--mem", "512"])
        .args(args)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    (stdout(&out), stderr(&out), out.status.code())
}

fn values(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn without_net_the_guest_has_only_loopback() {
    let dir = tempdir();
    let out = run_vm(
        dir.path(),
        &[
            "--",
            "sh",
            "-c",
            "ls /sys/class/net; timeout 5 wget -q -O- http://192.168.127.1/ 2>&1; echo rc=$?",
        ],
    );
    let text = stdout(&out);
    assert!(text.starts_with("lo\nwget:"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn net_reaches_the_host_by_name_and_relays_dns_udp_and_half_close() {
    if !private_network("net_reaches_the_host_by_name_and_relays_dns_udp_and_half_close") {
        return;
    }
    let http = http_server("127.0.0.1:0", "hello from the host\n");
    http_server("198.51.100.7:80", "named web\n");
    let sink = sink_server("127.0.0.1:0");
    let dns_port = dns_server(&[("web.test", "198.51.100.7")]);
    let script = format!(
        "timeout 10 wget -q -O- http://host.smolvm.internal:{http}/hello; echo host_rc=$?
         timeout 10 wget -q -O- http://web.test/; echo name_rc=$?
         nslookup web.test {GATEWAY}:{dns_port} | grep -c 198.51.100.7 | sed 's/^/udp_answers=/'
         timeout 5 wget -q -O- http://169.254.169.254/ 2>/dev/null; echo metadata_rc=$?
         printf half-close | nc host.smolvm.internal {sink} | sed 's/^/half_close=/'"
    );
    let (out, err, code) = run_net(dns_port, &["--net"], &script);
    let v = values(&out);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.starts_with("hello from the host\nhost_rc=0\n"),
        "{out}\n{err}"
    );
    assert!(out.contains("named web\nname_rc=0\n"), "{out}\n{err}");
    // A guest UDP socket to the host's loopback reached our DNS server and got its answer.
    assert_eq!(v["udp_answers"], "1", "{out}\n{err}");
    assert_ne!(v["metadata_rc"], "0", "{out}");
    assert!(err.contains("denied TCP 169.254.169.254:80"), "{err}");
    // The guest's nc shut its write side after sending; the reply still came back.
    assert_eq!(
        v["half_close"],
        format!("10 {}", sha256_hex(|h| h.update(b"half-close"))),
        "{out}"
    );
}

#[test]
fn allow_host_and_allow_cidr_open_only_what_they_name() {
    if !private_network("allow_host_and_allow_cidr_open_only_what_they_name") {
        return;
    }
    for a in TEST_NET {
        http_server(&format!("{a}:80"), "reached\n");
    }
    let http = http_server("127.0.0.1:0", "host\n");
    let dns_port = dns_server(&[
        ("allowed.test", "198.51.100.7"),
        ("other.test", "198.51.100.8"),
    ]);
    let script = format!(
        "timeout 10 wget -q -O- http://allowed.test/ >/dev/null 2>&1; echo allowed_name=$?
         nslookup other.test >/dev/null 2>&1; echo other_resolves=$?
         timeout 10 wget -q -O- http://198.51.100.8/ >/dev/null 2>&1; echo unlearnt_address=$?
         timeout 10 wget -q -O- http://198.51.100.9/ >/dev/null 2>&1; echo allowed_cidr=$?
         timeout 10 wget -q -O- http://198.51.100.10/ >/dev/null 2>&1; echo outside_cidr=$?
         timeout 10 wget -q -O- http://{GATEWAY}:{http}/ >/dev/null 2>&1; echo host=$?
         timeout 10 wget -q -O- http://169.254.169.254/ >/dev/null 2>&1; echo metadata=$?
         nslookup web.test {GATEWAY}:{dns_port} >/dev/null 2>&1; echo udp_to_host=$?"
    );
    let (out, err, code) = run_net(
        dns_port,
        &[
            "--allow-host",
            "allowed.test",
            "--allow-cidr",
            "198.51.100.9/32",
        ],
        &script,
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v = values(&out);
    assert_eq!(v["allowed_name"], "0", "{out}\n{err}");
    assert_eq!(v["allowed_cidr"], "0", "{out}\n{err}");
    for refused in [
        "other_resolves",
        "unlearnt_address",
        "outside_cidr",
        "host",
        "metadata",
        "udp_to_host",
    ] {
        assert_ne!(
            v[refused], "0",
            "{refused} should be refused:\n{out}\n{err}"
        );
    }
    for logged in [
        "denied DNS other.test".to_string(),
        "denied TCP 198.51.100.8:80".into(),
        "denied TCP 198.51.100.10:80".into(),
        format!("denied TCP {GATEWAY}:{http}"),
        "denied TCP 169.254.169.254:80".into(),
        format!("denied UDP {GATEWAY}:{dns_port}"),
    ] {
        assert!(err.contains(&logged), "{logged:?} not in:\n{err}");
    }
}

#[test]
fn outbound_localhost_only_reaches_the_host_and_nothing_else() {
    if !private_network("outbound_localhost_only_reaches_the_host_and_nothing_else") {
        return;
    }
    http_server("198.51.100.7:80", "remote\n");
    let http = http_server("127.0.0.1:0", "host\n");
    let dns_port = dns_server(&[("web.test", "198.51.100.7")]);
    let script = format!(
        "timeout 10 wget -q -O- http://host.smolvm.internal:{http}/; echo host=$?
         timeout 10 wget -q -O- http://198.51.100.7/ >/dev/null 2>&1; echo remote=$?
         nslookup web.test >/dev/null 2>&1; echo resolves=$?"
    );
    let (out, err, code) = run_net(dns_port, &["--outbound-localhost-only"], &script);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v = values(&out);
    assert!(out.starts_with("host\nhost=0\n"), "{out}\n{err}");
    assert_ne!(v["remote"], "0", "{out}");
    assert_ne!(v["resolves"], "0", "{out}");
    assert!(
        err.contains("denied TCP 198.51.100.7:80: --outbound-localhost-only"),
        "{err}"
    );
}

/// A free port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect_retrying(port: u16, secs: u64) -> TcpStream {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        // The forward accepts at once; the guest answering is what tells it is up.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() {
                let mut body = String::new();
                if s.read_to_string(&mut body).is_ok() && body.contains("forwarded") {
                    return s;
                }
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "the guest's httpd never answered on port {port}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn port_forwards_serve_50_concurrent_clients_and_200mb_through_the_guest_both_ways() {
    if !private_network(
        "port_forwards_serve_50_concurrent_clients_and_200mb_through_the_guest_both_ways",
    ) {
        return;
    }
    let sink = sink_server("127.0.0.1:0");
    let dns_port = dns_server(&[]);
    let (web, relay) = (free_port(), free_port());
    // The guest relays what arrives on its port 9000 to the host's sink, whose answer (byte
    // count and SHA-256 of what it got) it prints.
    let script = format!(
        "mkdir -p /www && echo forwarded > /www/index.html && httpd -p 8080 -h /www &&
         nc -l -p 9000 | nc host.smolvm.internal {sink} | sed 's/^/echo=/'"
    );
    let dir = tempdir();
    let child = smolvm(dir.path())
        .env("SMOLVM_DNS_UPSTREAM", format!("127.0.0.1:{dns_port}"))
        .args(["machine", "run", "--cpus", "1", "--mem", "512", "--net"])
        .args([
            "-p",
            &format!("{web}:8080"),
            "-p",
            &format!("127.0.0.1:{relay}:9000"),
        ])
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    connect_retrying(web, 60);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", web)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                write!(s, "GET /index.html?{i} HTTP/1.0\r\n\r\n").unwrap();
                let mut reply = String::new();
                s.read_to_string(&mut reply).unwrap();
                reply
            })
        })
        .collect();
    for c in clients {
        let reply = c.join().unwrap();
        assert!(
            reply.starts_with("HTTP/1.") && reply.ends_with("forwarded\n"),
            "{reply}"
        );
    }
    // 200 MB host -> guest (port forward) -> host (the guest's own connection), then the
    // host half-closes and the guest passes the half-close on.
    let mut s = TcpStream::connect(("127.0.0.1", relay)).unwrap();
    pattern(BIG, |c| s.write_all(c).unwrap());
    s.shutdown(Shutdown::Write).unwrap();
    let out = child.wait_with_output().unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{text}\nstderr:\n{err}"
    );
    assert_eq!(
        values(&text)["echo"],
        format!("{BIG} {}", pattern_sha(BIG)),
        "{text}\n{err}"
    );
}

#[test]
fn bad_network_flags_are_refused_with_what_to_do() {
    let dir = tempdir();
    let bad_port = run_vm(dir.path(), &["--net", "-p", "99999:80", "--", "true"]);
    assert_eq!(bad_port.status.code(), Some(2));
    assert!(
        stderr(&bad_port).contains("expected HOST:GUEST with ports 1-65535, found \"99999:80\""),
        "{}",
        stderr(&bad_port)
    );
    let bad_cidr = run_vm(dir.path(), &["--allow-cidr", "10.0.0.1/8", "--", "true"]);
    assert_eq!(bad_cidr.status.code(), Some(2));
    assert!(
        stderr(&bad_cidr).contains("did you mean \"10.0.0.0/8\""),
        "{}",
        stderr(&bad_cidr)
    );
    let bad_host = run_vm(dir.path(), &["--allow-host", "1.2.3.4", "--", "true"]);
    assert!(
        stderr(&bad_host).contains("addresses belong in allow_cidrs"),
        "{}",
        stderr(&bad_host)
    );
    let no_net = run_vm(dir.path(), &["-p", "8080:80", "--", "true"]);
    assert_eq!(no_net.status.code(), Some(125));
    assert!(stderr(&no_net).contains("add --net"), "{}", stderr(&no_net));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let in_use = run_vm(
        dir.path(),
        &["--net", "-p", &format!("{port}:80"), "--", "true"],
    );
    assert_eq!(in_use.status.code(), Some(125));
    assert!(
        stderr(&in_use).contains(&format!("cannot forward port 127.0.0.1:{port} (-p 127.0.0.1:{port}:80): it is already in use on the host")),
        "{}",
        stderr(&in_use)
    );
    // Refused before the VM boots.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let bad_subnet = smolvm(dir.path())
        .env("SMOLVM_NET_SUBNET", "8.8.8.0/24")
        .args(["machine", "run", "--net", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad_subnet.status.code(), Some(125));
    assert!(
        stderr(&bad_subnet).contains(
            "SMOLVM_NET_SUBNET=\"8.8.8.0/24\" is not a usable guest subnet: it must be a private"
        ),
        "{}",
        stderr(&bad_subnet)
    );
}

#[test]
fn packs_honour_their_network_settings_and_run_net() {
    if !private_network("packs_honour_their_network_settings_and_run_net") {
        return;
    }
    for a in TEST_NET {
        http_server(&format!("{a}:80"), "reached\n");
    }
    let dns_port = dns_server(&[]);
    let home = Home::new();
    let pack = |name: &str, smolfile: &str| {
        let file = home.dir.path().join(format!("{name}.smolfile"));
        std::fs::write(&file, smolfile).unwrap();
        let exe = home.dir.path().join(name);
        let out = home
            .smolvm()
            .args([
                "pack",
                "create",
                "-q",
                "-s",
                file.to_str().unwrap(),
                "-o",
                exe.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        exe
    };
    // The packed executable, in `home`'s world, with our DNS server upstream.
    let exe_output = |exe: &std::path::Path, args: &[&str]| {
        let mut c = Command::new(exe);
        for (k, v) in home.smolvm().get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.env("SMOLVM_DNS_UPSTREAM", format!("127.0.0.1:{dns_port}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let app = |exe: &std::path::Path, args: &[&str]| {
        let run = ["run", "--cpus", "1", "--mem", "512"];
        let out = exe_output(exe, &[&run[..], args].concat());
        (stdout(&out), stderr(&out), out.status.code())
    };
    let locked = pack(
        "locked",
        "cmd = [\"/bin/sh\"]\n[network]\nallow_cidrs = [\"198.51.100.9/32\"]\n",
    );
    let (out, err, code) = app(
        &locked,
        &[
            "--",
            "sh",
            "-c",
            "timeout 10 wget -q -O- http://198.51.100.9/; echo allowed=$?
           timeout 10 wget -q -O- http://198.51.100.8/ >/dev/null 2>&1; echo other=$?",
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.starts_with("reached\nallowed=0\n"), "{out}\n{err}");
    assert_ne!(values(&out)["other"], "0", "{out}");
    assert!(err.contains("denied TCP 198.51.100.8:80"), "{err}");
    let plain = pack("plain", "cmd = [\"/bin/sh\"]\n");
    let (out, err, code) = app(&plain, &["--", "ls", "/sys/class/net"]);
    assert_eq!((out.as_str(), code), ("lo\n", Some(0)), "{err}");
    let (out, err, code) = app(
        &plain,
        &[
            "--net",
            "--",
            "sh",
            "-c",
            "timeout 10 wget -q -O- http://198.51.100.7/",
        ],
    );
    assert_eq!((out.as_str(), code), ("reached\n", Some(0)), "{err}");

    // Started in the background, the pack keeps its allow list and forwards -p.
    let daemon = |exe: &std::path::Path, args: &[&str]| {
        let out = exe_output(exe, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let web = free_port();
    daemon(
        &locked,
        &[
            "start",
            "--cpus",
            "1",
            "--mem",
            "512",
            "-p",
            &format!("{web}:8080"),
        ],
    );
    daemon(
        &locked,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "mkdir -p /www && echo forwarded > /www/index.html && httpd -p 8080 -h /www",
        ],
    );
    connect_retrying(web, 60);
    let out = daemon(
        &locked,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "timeout 10 wget -q -O- http://198.51.100.9/; echo allowed=$?
             timeout 10 wget -q -O- http://198.51.100.8/ >/dev/null 2>&1; echo other=$?",
        ],
    );
    assert!(out.starts_with("reached\nallowed=0\n"), "{out}");
    assert_ne!(values(&out)["other"], "0", "{out}");
    daemon(&locked, &["stop"]);
    TcpListener::bind(("127.0.0.1", web)).expect("a stopped pack holds no port");
}

#[test]
fn a_machine_hosts_its_network_across_restarts_and_slow_readers_hold_no_memory() {
    if !private_network(
        "a_machine_hosts_its_network_across_restarts_and_slow_readers_hold_no_memory",
    ) {
        return;
    }
    http_server("198.51.100.9:80", "allowed\n");
    http_server("198.51.100.8:80", "other\n");
    let dns_port = dns_server(&[]);
    let home = Home::new();
    let smolvm = |args: &[&str]| {
        let mut c = home.smolvm();
        c.env("SMOLVM_DNS_UPSTREAM", format!("127.0.0.1:{dns_port}"))
            .args(args);
        c
    };
    let ok = |args: &[&str]| {
        let out = smolvm(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let exec = |script: &str| ok(&["machine", "exec", "-n", "web", "--", "sh", "-c", script]);
    let (web, slow) = (free_port(), free_port());
    ok(&[
        "machine",
        "create",
        "web",
        "--cpus",
        "1",
        "--mem",
        "512",
        "--allow-cidr",
        "198.51.100.9/32",
        "--allow-host",
        "host.smolvm.internal",
        "-p",
        &format!("{web}:8080"),
        "-p",
        &format!("{slow}:9000"),
        "--init",
        "mkdir -p /www && echo forwarded > /www/index.html && httpd -p 8080 -h /www",
    ]);
    let status = ok(&["machine", "status", "-n", "web"]);
    assert!(
        status.contains(&format!(
            "network:   outbound only to host.smolvm.internal, 198.51.100.9/32; ports {web}:8080, {slow}:9000"
        )),
        "{status}"
    );
    ok(&["machine", "start", "-n", "web"]);
    connect_retrying(web, 60);
    let out = exec(
        "timeout 10 wget -q -O- http://198.51.100.9/; echo allowed=$?
         timeout 10 wget -q -O- http://198.51.100.8/ >/dev/null 2>&1; echo other=$?",
    );
    assert!(out.starts_with("allowed\nallowed=0\n"), "{out}");
    assert_ne!(values(&out)["other"], "0", "{out}");
    let log = std::fs::read_to_string(machine_dir(&home, "web").join("supervisor.log")).unwrap();
    assert!(log.contains("denied TCP 198.51.100.8:80"), "{log}");

    // Slow readers both ways, at once: the stack (in the supervisor) must hold back the
    // sender, not buffer what the reader has not taken.
    let pid = supervisor_pid(&home, "web");
    let before = rss_kib(pid);
    const UPLOAD: usize = 64 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = listener.local_addr().unwrap().port();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let host_reader = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        wait.recv().unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let upload = smolvm(&[
        "machine",
        "exec",
        "-n",
        "web",
        "--",
        "sh",
        "-c",
        &format!(
            "dd if=/dev/zero bs=64k count={} 2>/dev/null | nc host.smolvm.internal {sink}",
            UPLOAD / 65536
        ),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let download = smolvm(&[
        "machine",
        "exec",
        "-n",
        "web",
        "--",
        "sh",
        "-c",
        "nc -l -p 9000 | (while [ ! -e /tmp/go ]; do sleep 0.2; done; wc -c)",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert!(
        wait_for(30, || exec("netstat -ltn | grep -c ':9000 ' || true")
            .trim()
            != "0"),
        "the guest's nc never listened"
    );
    let writer = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", slow)).unwrap();
        pattern(BIG, |c| s.write_all(c).unwrap());
        s.shutdown(Shutdown::Write).unwrap();
    });
    thread::sleep(Duration::from_secs(12));
    let during = rss_kib(pid);
    eprintln!("supervisor RSS: {before} KiB before, {during} KiB with both readers stalled");
    assert!(
        !writer.is_finished(),
        "200 MB went into a guest that reads nothing"
    );
    assert!(
        during < before + 16 * 1024,
        "the supervisor grew from {before} KiB to {during} KiB while its readers stalled"
    );
    go.send(()).unwrap();
    exec("touch /tmp/go");
    writer.join().unwrap();
    assert_eq!(host_reader.join().unwrap(), UPLOAD);
    let up = upload.wait_with_output().unwrap();
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let down = download.wait_with_output().unwrap();
    assert_eq!(stdout(&down).trim(), BIG.to_string(), "{}", stderr(&down));

    // The settings are the machine's: a restart forwards again, a stop frees the ports.
    ok(&["machine", "stop", "-n", "web"]);
    TcpListener::bind(("127.0.0.1", web)).expect("a stopped machine holds no port");
    ok(&["machine", "start", "-n", "web"]);
    connect_retrying(web, 60);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    ok(&[
        "machine",
        "create",
        "clash",
        "--net",
        "-p",
        &format!("{port}:80"),
    ]);
    let clash = smolvm(&["machine", "start", "-n", "clash"])
        .output()
        .unwrap();
    assert_ne!(clash.status.code(), Some(0));
    assert!(
        stderr(&clash).contains(&format!("cannot forward port 127.0.0.1:{port}")),
        "{}",
        stderr(&clash)
    );
    ok(&["machine", "delete", "-f", "web"]);
}
