//! A throwaway `docker-registry serve` on `127.0.0.1:<free port>`, storage in a temp dir,
//! killed on drop.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::digest::Digest;

/// How long the registry may take to report its port (it needs ~50 ms).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The account the authenticated variants accept.
pub const USERNAME: &str = "smolvm";
/// Its password.
pub const PASSWORD: &str = "fixture-secret-8d1e";

/// Which kind of registry to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain HTTP, anonymous.
    Plain,
    /// Plain HTTP with basic auth ([`USERNAME`]/[`PASSWORD`], bcrypt htpasswd).
    BasicAuth,
    /// HTTPS with a generated test CA and a leaf for `IP:127.0.0.1`, plus basic auth.
    TlsBasicAuth,
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
    security: Security,
    log: Arc<Mutex<String>>,
}

impl TestRegistry {
    /// Starts a registry; the error says which tool is missing or what the registry logged.
    pub fn start(security: Security) -> io::Result<TestRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("smolvm-registry-")
            .tempdir()?;
        let root = dir.path();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: smolvm-test\n",
            root.join("storage").display()
        );
        if security == Security::TlsBasicAuth {
            make_certificates(root)?;
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("leaf.pem").display(),
                root.join("leaf.key").display()
            );
        }
        if security != Security::Plain {
            let htpasswd = run(
                Command::new("htpasswd").args(["-Bbn", USERNAME, PASSWORD]),
                "htpasswd (apt-get install apache2-utils)",
            )?;
            std::fs::write(root.join("htpasswd"), htpasswd)?;
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: smolvm-test\n    path: {}\n",
                root.join("htpasswd").display()
            );
        }
        std::fs::write(root.join("config.yml"), yaml)?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(root.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start docker-registry (apt-get install docker-registry): {e}"),
                )
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Keeps draining the log so the registry never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr: String = addr
                        .chars()
                        .take_while(|c| !matches!(c, ',' | '"' | ' '))
                        .collect();
                    let _ = port_tx.send(addr);
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let host = loop {
            match port_rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => break addr,
                Err(_) if Instant::now() < deadline && child.try_wait()?.is_none() => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = log.lock().expect("log lock").clone();
                    return Err(io::Error::other(format!(
                        "docker-registry did not report a listening address; its log:\n{log}"
                    )));
                }
            }
        };
        Ok(TestRegistry {
            child,
            dir,
            host,
            security,
            log,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The variant this registry runs as.
    pub fn security(&self) -> Security {
        self.security
    }

    /// The registry's storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding blob `digest` inside the registry's storage, for tampering.
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Username and password, for the variants with auth.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        (self.security != Security::Plain).then_some((USERNAME, PASSWORD))
    }

    /// The test CA's certificate (PEM), for the TLS variant.
    pub fn ca_file(&self) -> Option<PathBuf> {
        (self.security == Security::TlsBasicAuth).then(|| self.dir.path().join("ca.pem"))
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The `[registries."<host>"]` table that reaches this registry (credentials, CA).
    pub fn config_table(&self) -> String {
        let mut table = format!("[registries.\"{}\"]\n", self.host);
        if let Some((username, password)) = self.credentials() {
            table += &format!("username = \"{username}\"\npassword = \"{password}\"\n");
        }
        if let Some(ca) = self.ca_file() {
            table += &format!("ca_file = \"{}\"\n", ca.display());
        }
        table
    }

    /// Writes a config file with [`TestRegistry::config_table`] at `path` (0600) and loads it.
    pub fn write_config(&self, path: &Path) -> Config {
        crate::fsutil::write_atomic(path, self.config_table().as_bytes(), 0o600)
            .expect("write the test config");
        Config::load(path).expect("the test config is valid")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a leaf for `IP:127.0.0.1` signed by it: rustls refuses a self-signed leaf
/// used as its own trust root.
fn make_certificates(dir: &Path) -> io::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let path = |name: &str| dir.join(name).display().to_string();
    run(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.pem"),
                "-days",
                "3",
                "-subj",
                "/CN=smolvm test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
        "openssl",
    )?;
    run(
        Command::new("openssl").arg("req").args(ec).args([
            "-keyout",
            &path("leaf.key"),
            "-out",
            &path("leaf.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ]),
        "openssl",
    )?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    run(
        Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &path("leaf.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-out",
            &path("leaf.pem"),
            "-days",
            "3",
            "-extfile",
            &path("leaf.ext"),
        ]),
        "openssl",
    )?;
    Ok(())
}

/// Runs `command`, returning its stdout; `tool` names what to install when it is missing.
pub(crate) fn run(command: &mut Command, tool: &str) -> io::Result<Vec<u8>> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{tool} failed ({}): {:?}\n{}",
            output.status,
            command,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output.stdout)
}
