//! `SMOLVM_TRACE=1`: a phase timeline on stderr, in milliseconds since the process started.

use std::sync::OnceLock;
use std::time::Instant;

struct Trace {
    start: Instant,
    enabled: bool,
}

fn trace() -> &'static Trace {
    static T: OnceLock<Trace> = OnceLock::new();
    T.get_or_init(|| Trace {
        start: Instant::now(),
        enabled: std::env::var_os("SMOLVM_TRACE").is_some_and(|v| v != "0" && !v.is_empty()),
    })
}

/// Fixes the time origin. Call first thing in `main`.
pub fn init() {
    trace();
}

pub fn enabled() -> bool {
    trace().enabled
}

/// Milliseconds since [`init`].
pub fn now_ms() -> f64 {
    trace().start.elapsed().as_secs_f64() * 1000.0
}

/// Records that `phase` happened now.
pub fn mark(phase: &str) {
    if enabled() {
        at(now_ms(), phase);
    }
}

/// Records a phase whose time was computed rather than observed (e.g. from guest clocks).
pub fn at(ms: f64, phase: &str) {
    if enabled() {
        eprintln!("smolvm-trace {ms:9.2} ms  {phase}");
    }
}
