//! Pull throughput into a verified cache over loopback, next to curl's raw throughput for
//! the same blob.
//!
//! `cargo run --release -p smolvm-registry --features test-registry --example pull_bench`
//!
//! Starts a local `docker-registry`, pushes a ~100 MB image (4 layers of pseudo-random
//! data), pulls it into an empty cache three times and prints MB/s (goal: >= 450 MB/s).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use smolvm_registry::{BlobCache, Config, Event, PullOptions, Puller, Reference};

const TOTAL: usize = 100 << 20;
const LAYERS: usize = 4;
const RUNS: usize = 3;

fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "machine: {} cores, {}; {}",
        shell("nproc"),
        shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        shell("date -u +%Y-%m-%dT%H:%MZ")
    );
    let registry = TestRegistry::start(Security::Plain)?;
    let image = testutil::random_layers(TOTAL, LAYERS, 0x5eed)?;
    let started = Instant::now();
    let pushed = testutil::push_image(&registry, "bench:1", &image, Format::Oci).await?;
    let bytes: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "push: {mb:.1} MB in {LAYERS} layers, {:.0} MB/s",
        mb / started.elapsed().as_secs_f64()
    );

    let reference = Reference::parse(&pushed.reference, None)?;
    let mut rates = Vec::new();
    for run in 1..=RUNS {
        let dir = tempfile::tempdir()?;
        let puller = Puller::new(
            Config::load(&dir.path().join("config.toml"))?,
            BlobCache::open(dir.path())?,
            PullOptions::default(),
        );
        let started = Instant::now();
        let pulled = puller
            .pull(&reference, Arc::new(|_: &Event<'_>| {}))
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(pulled.transfer.blobs_downloaded as usize, LAYERS + 1);
        rates.push(mb / seconds);
        println!(
            "pull {run}: {mb:.1} MB in {:.0} ms = {:.0} MB/s (streamed to files, sha256-verified, fsynced)",
            seconds * 1e3,
            mb / seconds
        );
    }
    rates.sort_by(f64::total_cmp);
    println!("pull median: {:.0} MB/s (goal >= 450)", rates[RUNS / 2]);

    let url = format!(
        "http://{}/v2/bench/blobs/{}",
        registry.host(),
        pushed.layers[0]
    );
    let scratch = tempfile::tempdir()?;
    for (what, target) in [
        ("/dev/null", "/dev/null".to_owned()),
        ("a file", scratch.path().join("blob").display().to_string()),
    ] {
        let speed = shell(&format!(
            "curl -s -o {target} -w '%{{speed_download}}' {url}"
        ));
        let rate = speed.parse::<f64>().map(|b| b / 1e6).unwrap_or(f64::NAN);
        println!(
            "curl, one {:.1} MB layer to {what}: {rate:.0} MB/s",
            image.layers[0].data.len() as f64 / 1e6
        );
    }
    Ok(())
}
