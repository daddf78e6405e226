//! Getting an image ready to boot: resolve the reference, pull, build its root filesystem.

use crate::progress::PullProgress;
use anyhow::Context;
use smolvm_pack::image::{ImageStore, LocalImage};
use smolvm_registry::{BlobCache, Config, Platform, PullOptions, PullPolicy, Puller};
use std::sync::Arc;

/// `--pull`: when to ask the registry what a tag points to.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Pull {
    /// Every time (blobs still come from the cache when present)
    Always,
    /// Only when the image is not cached yet
    Missing,
    /// Never: the image must be cached
    Never,
}

impl From<Pull> for PullPolicy {
    fn from(p: Pull) -> Self {
        match p {
            Pull::Always => PullPolicy::Always,
            Pull::Missing => PullPolicy::Missing,
            Pull::Never => PullPolicy::Never,
        }
    }
}

/// The flags of every command that may pull an image or a pack.
#[derive(clap::Args)]
pub struct FetchArgs {
    /// Platform to take from a multi-platform image or pack index (default: this host's, linux/amd64)
    #[arg(long, value_name = "OS/ARCH", value_parser = smolfile::Platform::parse)]
    pub platform: Option<smolfile::Platform>,
    /// When to ask the registry what a tag points to
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: Pull,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

/// The image a merged workload names (pulled as `fetch` says), or `None` for the bare VM.
pub fn prepare_for(
    rt: &tokio::runtime::Runtime,
    workload: &smolfile::Effective,
    fetch: &FetchArgs,
) -> anyhow::Result<Option<LocalImage>> {
    workload
        .image
        .as_deref()
        .map(|reference| {
            rt.block_on(prepare(
                reference,
                workload.platform.clone(),
                fetch.pull,
                fetch.quiet,
            ))
        })
        .transpose()
}

/// Pulls `reference` as `pull` says and returns its root filesystem, built if needed.
pub async fn prepare(
    reference: &str,
    platform: Option<Platform>,
    pull: Pull,
    quiet: bool,
) -> anyhow::Result<LocalImage> {
    let config = Config::load_default()?;
    let reference = config.parse_reference(reference)?;
    let mut options = PullOptions {
        policy: pull.into(),
        ..Default::default()
    };
    if let Some(p) = platform {
        options.platform = p;
    }
    let puller = Puller::new(config, BlobCache::open_default()?, options);
    let store = ImageStore::open_default()?;
    let progress = Arc::new(PullProgress::new(quiet));
    let spinner = std::sync::Mutex::new(None);
    let building = || {
        *spinner.lock().unwrap() =
            Some(progress.spinner(&format!("building the root filesystem of {reference}")));
    };
    let image = store
        .ensure(&puller, &reference, progress.clone(), &building)
        .await
        .with_context(|| format!("preparing the image {reference}"))?;
    if let Some(s) = spinner.lock().unwrap().take() {
        s.finish_and_clear();
    }
    smolvm_runtime::trace::mark(if image.built.is_some() {
        "image pulled and built"
    } else {
        "image ready (cached)"
    });
    Ok(image)
}
