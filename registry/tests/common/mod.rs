//! Helpers for the integration tests: small shortcuts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smolvm_registry::testutil::TestRegistry;
use smolvm_registry::{BlobCache, Config, Event, Progress, PullOptions, Puller};

/// Counts download starts, so a test can prove a pull fetched nothing.
#[derive(Default)]
pub struct Counter {
    pub started: AtomicU64,
    pub cached: AtomicU64,
    pub bytes_events: AtomicU64,
}

impl Counter {
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

impl Progress for Counter {
    fn event(&self, event: &Event<'_>) {
        let counter = match event {
            Event::Started { .. } => &self.started,
            Event::Cached { .. } => &self.cached,
            Event::Progress { .. } => &self.bytes_events,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A puller for `registry` (its config written under `dir`) with a cache in `dir/cache`.
pub fn puller(registry: &TestRegistry, dir: &Path, options: PullOptions) -> Puller {
    let config = registry.write_config(&dir.join("config.toml"));
    puller_with(config, dir, options)
}

/// A puller with `config` and a cache in `dir/cache`.
pub fn puller_with(config: Config, dir: &Path, options: PullOptions) -> Puller {
    Puller::new(
        config,
        BlobCache::open(&dir.join("cache")).unwrap(),
        options,
    )
}

pub fn counter() -> Arc<Counter> {
    Arc::new(Counter::default())
}

/// Every file name under the cache's blob directory.
pub fn blob_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("cache/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
