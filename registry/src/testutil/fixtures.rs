//! Fixture images, built deterministically from Debian packages and hand-written layers.
//!
//! Package-based layers (busybox, python) are built once per machine and kept in
//! [`fixture_cache_dir`], keyed by the exact `.deb` file names (which carry the versions).
//! Python comes from a handful of `.deb`s extracted with `dpkg-deb -x` rather than
//! `debootstrap --variant=minbase`: ~10 MB to download instead of ~40 MB, seconds instead
//! of minutes, and no root needed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::layer::{LayerBlob, LayerBuilder, MEDIA_TAR_GZIP};
use super::server::run;
use crate::digest::Digest;
use crate::fsutil;

/// Bump when a builder's output changes, so cached layers are rebuilt.
const BUILDER_VERSION: &str = "1";
const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP: &[u8] = b"root:x:0:\nuser:x:1000:\n";
/// The Debian packages that make a Python with a working `import json`: the interpreter,
/// its pure-Python stdlib, and the shared libraries the interpreter links.
const PYTHON_PACKAGES: [&str; 6] = [
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
];

/// An image ready to push: layers plus the `config` section of its image config.
#[derive(Debug, Clone)]
pub struct Image {
    /// OCI architecture (`amd64`).
    pub architecture: String,
    /// The image config's `config` object: Env, Entrypoint, Cmd, WorkingDir, User, ...
    pub config: Value,
    /// Layers, bottom first.
    pub layers: Vec<LayerBlob>,
}

impl Image {
    /// The image config blob (diff_ids filled in from the layers).
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("JSON values serialise")
    }
}

/// `$SMOLVM_FIXTURE_CACHE`, else `$XDG_CACHE_HOME/smolvm-test-fixtures` or
/// `~/.cache/smolvm-test-fixtures`: downloaded `.deb`s and built layers.
pub fn fixture_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SMOLVM_FIXTURE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = fsutil::xdg_dir("XDG_CACHE_HOME", ".cache").unwrap_or_else(std::env::temp_dir);
    base.join("smolvm-test-fixtures")
}

/// busybox from Debian's `busybox-static`, one gzip layer: `/bin/busybox`, a symlink per
/// applet, `/etc/passwd` with `user` (1000:1000), `/tmp` (1777), `/home/user`. Config: User
/// `user`, WorkingDir `/home/user`, Env `PATH` and `GREETING=hello`, Entrypoint
/// `["/bin/busybox"]`, Cmd `["sh"]` (so `run -- echo hi` runs `busybox echo hi`).
pub fn busybox() -> io::Result<Image> {
    let layer = cached_layer("busybox", &["busybox-static"], |root| {
        let busybox = root.join("bin/busybox");
        let list = run(
            Command::new(&busybox).arg("--list-full"),
            "the extracted busybox",
        )?;
        let mut applets: Vec<String> = String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| !l.is_empty() && *l != "bin/busybox")
            .map(str::to_owned)
            .collect();
        applets.sort();
        let mut layer = LayerBuilder::new();
        for dir in [
            "bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var",
        ] {
            layer.dir(dir, 0o755)?;
        }
        layer.dir("root", 0o700)?.dir("tmp", 0o1777)?;
        layer.dir_owned("home/user", 0o755, 1000)?;
        layer.file("bin/busybox", 0o755, &std::fs::read(&busybox)?)?;
        for applet in &applets {
            layer.symlink(applet, "/bin/busybox")?;
        }
        layer
            .file("etc/passwd", 0o644, PASSWD)?
            .file("etc/group", 0o644, GROUP)?;
        layer.finish(true)
    })?;
    Ok(Image {
        architecture: "amd64".into(),
        config: json!({
            "User": "user",
            "WorkingDir": "/home/user",
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["sh"],
            "Labels": { "org.smolvm.fixture": "busybox" },
        }),
        layers: vec![layer],
    })
}

/// Python 3.11 from Debian packages ([`PYTHON_PACKAGES`]), one gzip layer with
/// `/usr/bin/python3`; `python3 -c 'import json'` works. Docs and man pages are left out.
pub fn python() -> io::Result<Image> {
    let layer = cached_layer("python", &PYTHON_PACKAGES, |root| {
        for docs in ["usr/share/doc", "usr/share/man", "usr/share/lintian"] {
            let _ = std::fs::remove_dir_all(root.join(docs));
        }
        std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3"))?;
        for dir in ["tmp", "etc"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::write(root.join("etc/passwd"), PASSWD)?;
        let mut layer = LayerBuilder::new();
        layer.tree(root)?;
        layer.finish(true)
    })?;
    Ok(Image {
        architecture: "amd64".into(),
        config: json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "WorkingDir": "/",
        }),
        layers: vec![layer],
    })
}

/// Three layers that exercise what flattening must get right. Final tree:
/// - `a/keep` ("keep\n") with hard link `a/link`; `a/gone` deleted by a whiteout in layer 2;
///   `a/added` with hard link `a/added-link` (layer 2).
/// - `opaque/` made opaque in layer 2: `old1`, `old2` hidden, only `new` remains.
/// - `bin/su-like`: mode 04755 (setuid), root-owned.
/// - `data/secret`: mode 0600 owned by 1000:1000; `data/link` -> `../a/keep` (layer 3).
///
/// Layers 1 and 3 are gzip, layer 2 plain tar, so both layer media types are covered.
pub fn multilayer() -> io::Result<Image> {
    let mut one = LayerBuilder::new();
    one.dir("a", 0o755)?
        .file("a/keep", 0o644, b"keep\n")?
        .file("a/gone", 0o644, b"gone\n")?
        .hardlink("a/link", "a/keep")?
        .dir("opaque", 0o755)?
        .file("opaque/old1", 0o644, b"old1\n")?
        .file("opaque/old2", 0o644, b"old2\n")?
        .dir("bin", 0o755)?
        .file("bin/su-like", 0o4755, b"#!/bin/sh\nid\n")?
        .dir("etc", 0o755)?
        .file("etc/passwd", 0o644, PASSWD)?;
    let mut two = LayerBuilder::new();
    two.whiteout("a/gone")?
        .file("a/added", 0o644, b"added\n")?
        .hardlink("a/added-link", "a/added")?
        .opaque("opaque")?
        .file("opaque/new", 0o644, b"new\n")?;
    let mut three = LayerBuilder::new();
    three
        .dir("data", 0o755)?
        .file_owned("data/secret", 0o600, 1000, b"secret\n")?
        .symlink("data/link", "../a/keep")?;
    Ok(Image {
        architecture: "amd64".into(),
        config: json!({ "Cmd": ["/bin/su-like"], "Env": ["PATH=/bin"] }),
        layers: vec![one.finish(true)?, two.finish(false)?, three.finish(true)?],
    })
}

/// A stand-in for another architecture in a multi-platform index: one tiny layer with a
/// `README` and a config naming `architecture`. It cannot run (no binaries); only
/// platform selection looks at it.
pub fn fake_platform(architecture: &str) -> io::Result<Image> {
    let mut layer = LayerBuilder::new();
    let readme = format!("fixture stand-in for linux/{architecture}; not runnable\n");
    layer.file("README", 0o644, readme.as_bytes())?;
    Ok(Image {
        architecture: architecture.into(),
        config: json!({ "Cmd": ["/README"] }),
        layers: vec![layer.finish(true)?],
    })
}

/// `count` uncompressed layers of about `total / count` bytes of pseudo-random data
/// (xorshift from `seed`, so incompressible and reproducible), each one file in a tar.
pub fn random_layers(total: usize, count: usize, seed: u64) -> io::Result<Image> {
    let mut state = seed | 1;
    let layers = (0..count)
        .map(|i| {
            let mut data = Vec::with_capacity(total / count + 8);
            while data.len() < total / count {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.extend_from_slice(&state.to_le_bytes());
            }
            let mut layer = LayerBuilder::new();
            layer.file(&format!("data-{i}.bin"), 0o644, &data)?;
            layer.finish(false)
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Image {
        architecture: "amd64".into(),
        config: json!({ "Cmd": ["/bin/true"] }),
        layers,
    })
}

/// The layer `name` built by `build` from the extracted `packages`, cached on disk under
/// a key made of the `.deb` file names.
fn cached_layer(
    name: &str,
    packages: &[&str],
    build: impl FnOnce(&Path) -> io::Result<LayerBlob>,
) -> io::Result<LayerBlob> {
    let debs = download_debs(packages)?;
    let key_text: Vec<String> = debs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let key = Digest::of(format!("{BUILDER_VERSION}\n{}", key_text.join("\n")).as_bytes());
    let dir = fixture_cache_dir().join("layers");
    let data_path = dir.join(format!("{name}-{}.tar.gz", &key.hex()[..16]));
    let diff_path = data_path.with_extension("diffid");
    if let (Ok(data), Ok(diff)) = (
        std::fs::read(&data_path),
        std::fs::read_to_string(&diff_path),
    ) {
        let diff_id = Digest::parse(diff.trim()).map_err(io::Error::other)?;
        return Ok(LayerBlob {
            data,
            media_type: MEDIA_TAR_GZIP,
            diff_id,
        });
    }
    let root = tempfile::tempdir()?;
    for deb in &debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()),
            "dpkg-deb",
        )?;
    }
    let layer = build(root.path())?;
    fsutil::create_dir_all(&dir, 0o755)?;
    fsutil::write_atomic(&diff_path, layer.diff_id.as_str().as_bytes(), 0o644)?;
    fsutil::write_atomic(&data_path, &layer.data, 0o644)?;
    Ok(layer)
}

/// The candidate `.deb` of each package, downloaded once into the fixture cache.
fn download_debs(packages: &[&str]) -> io::Result<Vec<PathBuf>> {
    let show = run(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(packages),
        "apt-cache (run apt-get update first)",
    )?;
    let show = String::from_utf8_lossy(&show);
    let dir = fixture_cache_dir().join("debs");
    fsutil::create_dir_all(&dir, 0o755)?;
    packages
        .iter()
        .map(|package| {
            let file = show
                .split("\n\n")
                .find(|record| record.lines().any(|l| l == format!("Package: {package}")))
                .and_then(|record| record.lines().find_map(|l| l.strip_prefix("Filename: ")))
                .and_then(|f| f.rsplit('/').next())
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "apt-cache knows no package {package}: run apt-get update"
                    ))
                })?;
            let path = dir.join(file);
            if !path.exists() {
                // A private directory per download: a half-downloaded file never gets the
                // final name. apt-get spells an epoch `%3a` in the name it saves.
                let temp = tempfile::tempdir_in(&dir)?;
                run(
                    Command::new("apt-get")
                        .args(["download", "-q", package])
                        .current_dir(temp.path()),
                    "apt-get download",
                )?;
                let saved = std::fs::read_dir(temp.path())?.next().ok_or_else(|| {
                    io::Error::other(format!("apt-get download {package} saved no file"))
                })??;
                std::fs::rename(saved.path(), &path)?;
            }
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::layer::MEDIA_TAR;

    #[test]
    fn handmade_fixtures_are_deterministic() {
        let a = multilayer().unwrap();
        let b = multilayer().unwrap();
        assert_eq!(a.config_json(), b.config_json());
        assert_eq!(a.layers.len(), 3);
        assert_eq!(
            a.layers.iter().map(|l| l.media_type).collect::<Vec<_>>(),
            [MEDIA_TAR_GZIP, MEDIA_TAR, MEDIA_TAR_GZIP]
        );
        let r = random_layers(1 << 16, 2, 7).unwrap();
        assert_eq!(r.layers.len(), 2);
        assert!(r.layers[0].data.len() > 1 << 15);
        assert_ne!(r.layers[0].data, r.layers[1].data);
        assert_eq!(
            random_layers(1 << 16, 2, 7).unwrap().layers[1].data,
            r.layers[1].data
        );
    }
}
