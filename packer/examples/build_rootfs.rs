//! Builds a root filesystem image from layer files, as `smolvm machine run --image` does.
//!
//!     cargo run --release -p smolvm-pack --example build_rootfs -- OUT.sqfs LAYER [LAYER...]
//!
//! Layers are tar, tar.gz or tar.zst files, bottom first. Prints the build summary.

use smolvm_pack::rootfs::{BuildOptions, Layer, build_rootfs};
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(out), layers) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: build_rootfs OUT.sqfs LAYER [LAYER...]");
        std::process::exit(2);
    };
    if layers.is_empty() {
        eprintln!("usage: build_rootfs OUT.sqfs LAYER [LAYER...]");
        std::process::exit(2);
    }
    // The compression is detected from the content; the media type only has to be a layer's.
    let layers: Vec<Layer> = layers
        .iter()
        .map(|p| Layer::new(p, "application/vnd.oci.image.layer.v1.tar"))
        .collect();
    match build_rootfs(&layers, &out, &BuildOptions::default()) {
        Ok(s) => println!(
            "{} entries, {} inodes, {} file bytes -> {} image bytes in {:.3} s",
            s.entries,
            s.inodes,
            s.file_bytes,
            s.image_bytes,
            s.elapsed.as_secs_f64()
        ),
        Err(e) => {
            eprintln!("build_rootfs: {e}");
            std::process::exit(1);
        }
    }
}
