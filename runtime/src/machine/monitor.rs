//! `machine monitor`: watch a machine's health and apply its restart policy, in the
//! foreground, reporting each transition.
//!
//! The check is the machine's `[health]` command (success = exit 0 within its timeout),
//! else an agent ping through the supervisor. A machine is unhealthy after `retries`
//! failures in a row, not counting failures within `startup_grace` of its start. A stop the
//! user asked for (`machine stop`, recorded in the catalogue) is respected by every policy;
//! `always` also starts a machine that was stopped when the monitor began.

use super::{HealthCheck, MachineDir, MachineError, MachineStore, RestartPolicy, Status};
use crate::attach::{Outcome, collect};
use smolvm_protocol::Exec;
use std::path::Path;
use std::time::{Duration, Instant};

/// Ping interval when the machine has no `[health]` section.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What the monitor observed or did; the caller prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Started,
    Healthy,
    /// One failed check (the count so far, the reason).
    CheckFailed(u32, String),
    Unhealthy(String),
    /// The VM stopped without being asked to.
    Died,
    /// Restarting after this wait.
    Restarting(Duration),
    /// The user stopped the machine: the monitor leaves it stopped.
    StoppedByUser,
    /// `max_retries` restarts in a row did not make it healthy.
    GaveUp(u32),
}

/// Why the monitor ended.
#[derive(Debug, PartialEq, Eq)]
pub enum MonitorEnd {
    /// The policy says not to restart a machine that stopped or is unhealthy.
    PolicyStop,
    GaveUp,
}

struct Check {
    exec: Option<Vec<String>>,
    interval: Duration,
    timeout: Duration,
    grace: Duration,
    retries: u32,
}

impl Check {
    fn new(h: Option<&HealthCheck>) -> Check {
        match h {
            Some(h) => Check {
                exec: Some(h.exec.clone()),
                interval: Duration::from_millis(h.interval_ms.max(100)),
                timeout: Duration::from_millis(h.timeout_ms.max(100)),
                grace: Duration::from_millis(h.startup_grace_ms),
                retries: h.retries.max(1),
            },
            None => Check {
                exec: None,
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                grace: Duration::ZERO,
                retries: 3,
            },
        }
    }

    /// One check: Ok when healthy, else why not.
    async fn run(&self, dir: &MachineDir, env: &[String]) -> Result<(), String> {
        let attempt = async {
            let client = dir.connect().await.map_err(|e| e.to_string())?;
            let Some(argv) = &self.exec else {
                return client.ping().await.map_err(|e| e.to_string());
            };
            let exec = Exec {
                argv: argv.clone(),
                env: env.to_vec(),
                timeout_ms: Some(self.timeout.as_millis() as u64),
                ..Default::default()
            };
            let stream = client.exec(exec).map_err(|e| e.to_string())?;
            match collect(stream).await {
                (Outcome::Exited(s), _) if s.shell_code() == 0 => Ok(()),
                (Outcome::Exited(s), out) if s.timed_out => Err(format!(
                    "the check took longer than {:?}{}",
                    self.timeout,
                    tail(&out)
                )),
                (Outcome::Exited(s), out) => Err(format!(
                    "the check exited with {}{}",
                    s.shell_code(),
                    tail(&out)
                )),
                (Outcome::Failed(e), _) => Err(e.message),
                (Outcome::Lost(why), _) => Err(why),
            }
        };
        // The guest enforces the timeout; this bounds a supervisor that stopped answering.
        tokio::time::timeout(self.timeout + Duration::from_secs(5), attempt)
            .await
            .unwrap_or_else(|_| Err("the machine did not answer".into()))
    }
}

fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let last = text.trim().lines().last().unwrap_or("").trim();
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}

/// Whether the last lifecycle event was a `machine stop`.
fn stopped_by_user(store: &MachineStore, name: &str) -> bool {
    store
        .get(name)
        .map(|r| match (r.last_started, r.last_stopped) {
            (Some(started), Some(stopped)) => stopped >= started,
            (None, Some(_)) => true,
            _ => false,
        })
        .unwrap_or(false)
}

/// Watches machine `name` until its policy says to stop watching (or forever, for the
/// restarting policies). `exe` runs supervisors.
pub async fn monitor(
    store: &MachineStore,
    name: &str,
    exe: &Path,
    report: &mut dyn FnMut(Transition),
) -> Result<MonitorEnd, MachineError> {
    let dir = store.dir(name);
    let spec = dir.read_spec()?;
    let policy = spec.restart.clone();
    let check = Check::new(spec.health.as_ref());
    let start = |report: &mut dyn FnMut(Transition)| -> Result<Instant, MachineError> {
        match dir.start(exe) {
            Ok(()) | Err(MachineError::AlreadyRunning) => {}
            Err(e) => return Err(e),
        }
        let _ = store.record_started(name);
        report(Transition::Started);
        Ok(Instant::now())
    };

    let mut started_at = Instant::now();
    if dir.status() == Status::Stopped {
        if policy.policy == "always" || (!stopped_by_user(store, name) && policy.restarts()) {
            started_at = start(report)?;
        } else {
            report(Transition::StoppedByUser);
            return Ok(MonitorEnd::PolicyStop);
        }
    }
    let mut failures = 0u32;
    let mut restarts = 0u32;
    let mut healthy = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::time::sleep(check.interval).await;
        let failure = if dir.status() == Status::Stopped {
            if stopped_by_user(store, name) {
                report(Transition::StoppedByUser);
                return Ok(MonitorEnd::PolicyStop);
            }
            report(Transition::Died);
            Some(true)
        } else {
            match check.run(&dir, &spec.env).await {
                Ok(()) => {
                    if !healthy {
                        report(Transition::Healthy);
                    }
                    (healthy, failures, restarts, backoff) = (true, 0, 0, FIRST_BACKOFF);
                    None
                }
                Err(_) if started_at.elapsed() < check.grace => None,
                Err(why) => {
                    failures += 1;
                    report(Transition::CheckFailed(failures, why.clone()));
                    if failures >= check.retries {
                        report(Transition::Unhealthy(why));
                        Some(false)
                    } else {
                        None
                    }
                }
            }
        };
        let Some(died) = failure else { continue };
        healthy = false;
        failures = 0;
        if !policy.restarts() {
            if died {
                return Ok(MonitorEnd::PolicyStop);
            }
            continue; // `never`: keep reporting, leave the machine as it is
        }
        if let Some(max) = policy.max_retries
            && restarts >= max
        {
            report(Transition::GaveUp(restarts));
            return Ok(MonitorEnd::GaveUp);
        }
        report(Transition::Restarting(backoff));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(policy.max_backoff_ms.max(1000)));
        restarts += 1;
        if !died {
            dir.stop(Duration::from_secs(30)).await?;
        }
        started_at = start(report)?;
    }
}

impl RestartPolicy {
    /// Every policy but `never` restarts a machine that died or is unhealthy.
    pub fn restarts(&self) -> bool {
        self.policy != "never"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_take_the_health_section_or_fall_back_to_a_ping() {
        let ping = Check::new(None);
        assert!(ping.exec.is_none());
        assert_eq!(ping.interval, DEFAULT_INTERVAL);
        let h = HealthCheck {
            exec: vec!["true".into()],
            interval_ms: 0,
            timeout_ms: 2000,
            startup_grace_ms: 500,
            retries: 0,
        };
        let c = Check::new(Some(&h));
        // A zero interval or retry count would spin or never fail: both are clamped.
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.retries, 1);
        assert_eq!(c.grace, Duration::from_millis(500));
        assert_eq!(tail(b"line one\nthe reason\n"), ": the reason");
        assert_eq!(tail(b""), "");
    }

    #[test]
    fn only_never_leaves_a_failed_machine_alone() {
        let mut p = RestartPolicy::default();
        assert_eq!(p.policy, "never");
        assert!(!p.restarts());
        for name in ["always", "on-failure", "unless-stopped"] {
            p.policy = name.into();
            assert!(p.restarts(), "{name}");
        }
    }
}
