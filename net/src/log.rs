//! Where the network reports what it refused and what failed: the VM's log file (a machine's)
//! or stderr (an ephemeral run). Denials are always reported, since they are what a user
//! looks for when a guest cannot reach something; every line at most once a second.

use crate::policy::Denied;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPEAT_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    file: Option<PathBuf>,
    recent: Mutex<HashMap<String, Instant>>,
}

impl Log {
    /// Appends to `file`, or writes to stderr when `None`.
    pub fn new(file: Option<PathBuf>) -> Log {
        Log {
            inner: Arc::new(Inner {
                file,
                recent: Mutex::default(),
            }),
        }
    }

    /// A refused destination or name, e.g. `TCP 1.2.3.4:443`.
    pub fn denied(&self, what: &str, why: Denied) {
        self.line(&format!("denied {what}: {why}"));
    }

    /// Anything else worth a line: an unreachable upstream resolver, a failed relay.
    pub fn note(&self, text: &str) {
        self.line(text);
    }

    fn line(&self, text: &str) {
        let now = Instant::now();
        {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
            if recent.contains_key(text) {
                return;
            }
            recent.insert(text.to_string(), now);
        }
        let line = format!("smolvm: net: {text}\n");
        match &self.inner.file {
            Some(path) => {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_repeats_at_most_once_a_second() {
        let dir = std::env::temp_dir().join(format!("smolvm-net-log-{}", std::process::id()));
        let log = Log::new(Some(dir.clone()));
        for _ in 0..3 {
            log.denied("TCP 203.0.113.1:80", Denied::NotAllowed);
        }
        log.denied("TCP 203.0.113.2:80", Denied::Metadata);
        let text = std::fs::read_to_string(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "smolvm: net: denied TCP 203.0.113.1:80: not in --allow-cidr and not resolved from an --allow-host name",
                "smolvm: net: denied TCP 203.0.113.2:80: the cloud metadata range 169.254.0.0/16 is refused unless allowed with --allow-cidr",
            ]
        );
    }
}
