//! Progress display for pulls, pushes and builds: bars on a terminal, nothing otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use smolvm_registry::Event;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

pub struct PullProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl PullProgress {
    /// Bars on stderr when it is a terminal and `quiet` is off; otherwise silent.
    pub fn new(quiet: bool) -> PullProgress {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        PullProgress {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// A spinner for a step without a byte count (building the root filesystem).
    pub fn spinner(&self, message: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn bar(&self, digest: &str, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap();
        bars.entry(digest.to_string())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(digest));
                bar
            })
            .clone()
    }
}

impl smolvm_registry::Progress for PullProgress {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Started { digest, size } => {
                self.bar(digest.as_str(), *size);
            }
            Event::Progress { digest, done, size } => {
                self.bar(digest.as_str(), *size).set_position(*done)
            }
            Event::Finished { digest } => {
                if let Some(bar) = self.bars.lock().unwrap().get(digest.as_str()) {
                    bar.finish();
                }
            }
            Event::Retrying {
                what,
                attempt,
                delay,
                reason,
            } => {
                let _ = self.multi.println(format!(
                    "retrying {what} (attempt {attempt}, in {delay:?}): {reason}"
                ));
            }
            Event::Cached { .. } => {}
        }
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`.
pub fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// A byte-count bar for one transfer (a spinner when the total is unknown) on a terminal;
/// hidden otherwise or with `quiet`.
pub fn transfer_bar(label: &str, total: Option<u64>, quiet: bool) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = if total.is_some() {
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{spinner} {prefix} {bytes} {bytes_per_sec}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}
