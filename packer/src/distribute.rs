//! Packs in OCI registries: [`push_pack`] uploads a `.smolmachine` as an OCI artifact,
//! [`pull_pack`] brings it back byte for byte. docs/DISTRIBUTION.md describes the layout.
//!
//! A pack becomes one OCI image manifest with `artifactType` [`ARTIFACT_TYPE`]: its config
//! blob is the pack's manifest JSON, byte for byte ([`CONFIG_MEDIA_TYPE`]), and each section
//! is a layer of its own ([`section_media_type`]), so a section that did not change between
//! two pushes is neither uploaded nor downloaded again. A tag names an OCI image index with
//! one entry per guest platform; a push merges its platform into the index the tag holds.
//!
//! The `.smolmachine` is rebuilt from those pieces: every section at its manifest offset,
//! zeros between, the manifest after the last section, and the footer computed from the
//! manifest. A push checks that the file is laid out that way and records its size and
//! SHA-256 in annotations ([`PACK_SIZE`], [`PACK_DIGEST`]); a pull checks the rebuilt file
//! against them before it is renamed into place.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use smolvm_registry::{
    Blob, Config, Digest, Platform, Progress, Puller, Pushed, Reference, RegistryError, Transfer,
};
use thiserror::Error;

use crate::format::{
    ALIGN, Compression, FOOTER_LEN, Footer, FormatError, Manifest, Pack, SectionEntry, SectionKind,
};

/// `artifactType` of a pack's manifest (and of the index entries and indexes we write).
pub const ARTIFACT_TYPE: &str = "application/vnd.smolvm.machine.v1";
/// Media type of the config blob: the pack's manifest JSON, exactly as in the file.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.smolvm.machine.config.v1+json";
/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Annotation: the `.smolmachine` file's size in bytes (decimal).
pub const PACK_SIZE: &str = "dev.smolvm.pack.size";
/// Annotation: the `.smolmachine` file's SHA-256 (`sha256:…`).
pub const PACK_DIGEST: &str = "dev.smolvm.pack.digest";
/// Annotation: the guest platform (`linux/amd64`).
pub const PLATFORM: &str = "dev.smolvm.platform";
/// Annotation: the version of smolvm that wrote the pack.
pub const VERSION: &str = "dev.smolvm.version";
/// Annotation: a human-readable name (the file name; the section kind on layers).
pub const TITLE: &str = "org.opencontainers.image.title";
/// Annotation: when the pack was made (the pack's own `created`, not the push time).
pub const CREATED: &str = "org.opencontainers.image.created";

/// The layer media type of a section: `application/vnd.smolvm.machine.section.<kind>.v1`,
/// with `+zstd` when the section is stored zstd-compressed.
pub fn section_media_type(kind: SectionKind, compression: Compression) -> String {
    let suffix = match compression {
        Compression::None => "",
        Compression::Zstd => "+zstd",
    };
    format!(
        "application/vnd.smolvm.machine.section.{}.v1{suffix}",
        kind.as_str()
    )
}

/// Why a push or pull of a pack failed.
#[derive(Debug, Error)]
pub enum DistributeError {
    /// Talking to the registry or writing the blob cache failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local pack is not valid.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The pack's guest platform is not an OCI platform.
    #[error("{}: guest platform {value:?} is invalid: {detail}", path.display())]
    Platform {
        /// The file.
        path: PathBuf,
        /// The platform it names.
        value: String,
        /// Why it is invalid.
        detail: String,
    },
    /// Pushes go to a tag.
    #[error("cannot push to {reference}: it names a digest; push to a tag (NAME:TAG) instead")]
    NeedsTag {
        /// The reference as given.
        reference: String,
    },
    /// The file holds bytes that the artifact cannot carry.
    #[error("cannot push {}: {detail}; pack it again with smolvm pack create", path.display())]
    NotReconstructible {
        /// The file.
        path: PathBuf,
        /// What is unusual about it.
        detail: String,
    },
    /// The tag holds something that is not an index of smolvm packs: a push does not
    /// overwrite it.
    #[error("{reference} holds {detail}, not smolvm packs; push to another tag")]
    ForeignTag {
        /// The tag.
        reference: String,
        /// What it holds.
        detail: String,
    },
    /// The artifact's manifest and config disagree, or lack what a pull needs.
    #[error("{reference} is not a usable smolvm pack artifact: {detail}")]
    BadArtifact {
        /// The reference.
        reference: String,
        /// What is wrong.
        detail: String,
    },
    /// The rebuilt file is not the one that was pushed.
    #[error(
        "the pack rebuilt from {reference} is {found} ({found_size} bytes) but was pushed as {expected} ({expected_size} bytes); nothing was written"
    )]
    Mismatch {
        /// The reference.
        reference: String,
        /// The pushed file's digest (annotation).
        expected: String,
        /// Its size.
        expected_size: u64,
        /// What was rebuilt.
        found: Digest,
        /// Its size.
        found_size: u64,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DistributeError {
    let path = path.to_path_buf();
    move |source| DistributeError::Io {
        action,
        path,
        source,
    }
}

/// What [`push_pack`] did.
#[derive(Debug, Clone)]
pub struct PushedPack {
    /// The tag pushed to.
    pub reference: Reference,
    /// The index the tag now points to.
    pub index_digest: Digest,
    /// This platform's artifact manifest.
    pub manifest_digest: Digest,
    /// The `.smolmachine`'s digest and size.
    pub pack_digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its guest platform.
    pub platform: String,
    /// Blobs (config and sections) uploaded.
    pub blobs_uploaded: u64,
    /// Blobs the registry had already.
    pub blobs_present: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// What [`pull_pack`] produced.
#[derive(Debug, Clone)]
pub struct PulledPack {
    /// The reference pulled.
    pub reference: Reference,
    /// The `.smolmachine` file, verified: ready for `Pack::open`.
    pub path: PathBuf,
    /// Its SHA-256.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The artifact manifest pulled (this platform's).
    pub manifest_digest: Digest,
    /// The index the reference named, if it named one.
    pub index_digest: Option<Digest>,
    /// The guest platform.
    pub platform: String,
    /// What the pull transferred (blobs already in the cache count as cached).
    pub transfer: Transfer,
}

/// Where a pack's pieces are in its file.
struct Layout {
    /// Absolute offset of the payload in the file (0 for a sidecar).
    payload_start: u64,
    payload_len: u64,
    manifest: Vec<u8>,
    manifest_offset: u64,
    footer: [u8; FOOTER_LEN],
    /// Sections by offset.
    sections: Vec<SectionEntry>,
}

impl Layout {
    /// The layout of a validated pack, refusing what a pull could not rebuild: anything but
    /// zeros between sections, or bytes between the manifest and the footer.
    fn of(pack: &Pack) -> Result<Layout, DistributeError> {
        let path = pack.path();
        let mut file = File::open(path).map_err(io_error("open", path))?;
        let file_len = file.metadata().map_err(io_error("read", path))?.len();
        let mut footer = [0; FOOTER_LEN];
        read_at(&mut file, file_len - FOOTER_LEN as u64, &mut footer)
            .map_err(io_error("read", path))?;
        let parsed = Footer::from_file_end(&footer).map_err(|source| DistributeError::Format {
            path: path.to_path_buf(),
            source,
        })?;
        let payload_len = file_len - pack.payload_start();
        if parsed.manifest_offset + parsed.manifest_len + FOOTER_LEN as u64 != payload_len {
            return Err(DistributeError::NotReconstructible {
                path: path.to_path_buf(),
                detail: "there are bytes between its manifest and its footer".into(),
            });
        }
        let mut manifest = vec![0; parsed.manifest_len as usize];
        read_at(
            &mut file,
            pack.payload_start() + parsed.manifest_offset,
            &mut manifest,
        )
        .map_err(io_error("read", path))?;
        let mut sections = pack.manifest().sections.clone();
        sections.sort_by_key(|s| s.offset);
        Ok(Layout {
            payload_start: pack.payload_start(),
            payload_len,
            manifest,
            manifest_offset: parsed.manifest_offset,
            footer,
            sections,
        })
    }

    /// The gaps before each section and before the manifest, as `(from, to)` payload
    /// offsets.
    fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let ends = std::iter::once(0).chain(self.sections.iter().map(|s| s.offset + s.length));
        let starts = self
            .sections
            .iter()
            .map(|s| s.offset)
            .chain(std::iter::once(self.manifest_offset));
        ends.zip(starts)
    }
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Reads the payload once: checks that the gaps are zeros and that every section has the
/// digest its manifest gives, and returns the payload's digest.
fn scan(layout: &Layout, path: &Path) -> Result<Digest, DistributeError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    file.seek(SeekFrom::Start(layout.payload_start))
        .map_err(io_error("read", path))?;
    let mut whole = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut copy = |len: u64, section: Option<&mut Sha256>, zeros: bool| -> io::Result<bool> {
        let mut section = section;
        let mut left = len;
        let mut all_zero = true;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])?;
            whole.update(&buf[..n]);
            if let Some(h) = section.as_deref_mut() {
                h.update(&buf[..n]);
            }
            if zeros {
                all_zero &= buf[..n].iter().all(|&b| b == 0);
            }
            left -= n as u64;
        }
        Ok(all_zero)
    };
    let gaps: Vec<_> = layout.gaps().collect();
    for (i, (from, to)) in gaps.iter().enumerate() {
        if !copy(to - from, None, true).map_err(io_error("read", path))? {
            return Err(DistributeError::NotReconstructible {
                path: path.to_path_buf(),
                detail: format!("the bytes between payload offsets {from} and {to} are not zero"),
            });
        }
        let Some(section) = layout.sections.get(i) else {
            break;
        };
        let mut hasher = Sha256::new();
        copy(section.length, Some(&mut hasher), false).map_err(io_error("read", path))?;
        let found = Digest::from_hasher(hasher).to_string();
        if found != section.sha256 {
            return Err(DistributeError::Format {
                path: path.to_path_buf(),
                source: FormatError::SectionCorrupt {
                    kind: section.kind,
                    expected: section.sha256.clone(),
                    found,
                },
            });
        }
    }
    whole.update(&layout.manifest);
    whole.update(layout.footer);
    Ok(Digest::from_hasher(whole))
}

fn blob_digest(text: &str) -> Digest {
    Digest::parse(text).expect("the pack reader checked every digest")
}

/// Pushes the pack at `file` (a `.smolmachine`, or an executable with a pack appended:
/// its payload is pushed) to the tag `reference`, merging its guest platform into the
/// index the tag holds. Blobs the registry has are not uploaded again.
pub async fn push_pack(
    config: &Config,
    file: &Path,
    reference: &Reference,
    progress: Arc<dyn Progress>,
) -> Result<PushedPack, DistributeError> {
    let Some(tag) = reference.tag().filter(|_| reference.digest().is_none()) else {
        return Err(DistributeError::NeedsTag {
            reference: reference.to_string(),
        });
    };
    let pack = Pack::open(file).map_err(|source| DistributeError::Format {
        path: file.to_path_buf(),
        source,
    })?;
    let layout = Layout::of(&pack)?;
    let (layout, pack_digest) = {
        let path = file.to_path_buf();
        tokio::task::spawn_blocking(move || scan(&layout, &path).map(|d| (layout, d)))
            .await
            .expect("reading a pack does not panic")?
    };
    let manifest = pack.manifest();
    let platform =
        Platform::parse(&manifest.platform).map_err(|detail| DistributeError::Platform {
            path: file.to_path_buf(),
            value: manifest.platform.clone(),
            detail: detail.to_string(),
        })?;

    let pusher = smolvm_registry::Pusher::connect(config, reference).await?;
    let mut blobs = vec![(
        Blob::bytes(layout.manifest.clone()),
        CONFIG_MEDIA_TYPE.to_string(),
        None,
    )];
    for s in &manifest.sections {
        let blob = Blob::file_range(
            file.to_path_buf(),
            layout.payload_start + s.offset,
            s.length,
            blob_digest(&s.sha256),
        );
        blobs.push((
            blob,
            section_media_type(s.kind, s.compression),
            Some(s.kind),
        ));
    }
    let (mut uploaded, mut present, mut bytes) = (0, 0, 0);
    for (blob, _, _) in &blobs {
        match pusher.push_blob(blob, progress.clone()).await? {
            Pushed::Uploaded => {
                uploaded += 1;
                bytes += blob.size;
            }
            Pushed::Present => present += 1,
        }
    }
    let descriptor = |(blob, media_type, kind): &(Blob, String, Option<SectionKind>)| {
        let mut d = json!({
            "mediaType": media_type,
            "digest": blob.digest.as_str(),
            "size": blob.size,
        });
        if let Some(kind) = kind {
            d["annotations"] = json!({ TITLE: kind.as_str() });
        }
        d
    };
    let title = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(&blobs[0]),
        "layers": blobs[1..].iter().map(descriptor).collect::<Vec<_>>(),
        "annotations": {
            TITLE: title,
            CREATED: manifest.created,
            VERSION: manifest.smolvm_version,
            PLATFORM: manifest.platform,
            PACK_SIZE: layout.payload_len.to_string(),
            PACK_DIGEST: pack_digest.as_str(),
        },
    });
    let artifact = serde_json::to_vec(&artifact).expect("JSON values serialise");
    let artifact_size = artifact.len();
    let manifest_digest = pusher
        .push_manifest(artifact.into(), MANIFEST_MEDIA_TYPE, None)
        .await?;

    let mut entry = json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "digest": manifest_digest.as_str(),
        "size": artifact_size,
        "platform": { "os": platform.os, "architecture": platform.architecture },
    });
    if let Some(variant) = &platform.variant {
        entry["platform"]["variant"] = json!(variant);
    }
    let existing = pusher.fetch_manifest(tag).await?;
    let index = merge_index(reference, existing.as_ref().map(|(_, b)| &b[..]), entry)?;
    let index_digest = pusher
        .push_manifest(
            serde_json::to_vec(&index)
                .expect("JSON values serialise")
                .into(),
            INDEX_MEDIA_TYPE,
            Some(tag),
        )
        .await?;
    Ok(PushedPack {
        reference: reference.clone(),
        index_digest,
        manifest_digest,
        pack_digest,
        size: layout.payload_len,
        platform: manifest.platform.clone(),
        blobs_uploaded: uploaded,
        blobs_present: present,
        bytes_uploaded: bytes,
    })
}

/// The index a tag gets: the one it holds (`existing`) with `entry` replacing the entry of
/// the same platform, or a new one. Entries are kept sorted by platform, so the result does
/// not depend on the order platforms were pushed in.
fn merge_index(
    reference: &Reference,
    existing: Option<&[u8]>,
    entry: Value,
) -> Result<Value, DistributeError> {
    let foreign = |detail: &str| DistributeError::ForeignTag {
        reference: reference.to_string(),
        detail: detail.to_owned(),
    };
    let mut index = match existing {
        None => json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "manifests": [],
        }),
        Some(bytes) => {
            let index: Value = serde_json::from_slice(bytes)
                .map_err(|_| foreign("a manifest that is not JSON"))?;
            if index["mediaType"] != INDEX_MEDIA_TYPE || !index["manifests"].is_array() {
                return Err(foreign("a single manifest (not an index)"));
            }
            index
        }
    };
    let platform_key = |e: &Value| {
        let p = &e["platform"];
        format!("{}/{}/{}", p["os"], p["architecture"], p["variant"])
    };
    let manifests = index["manifests"].as_array_mut().expect("checked above");
    if manifests.iter().any(|e| e["artifactType"] != ARTIFACT_TYPE) {
        return Err(foreign(
            "an index with entries of other artifact types or images",
        ));
    }
    let key = platform_key(&entry);
    manifests.retain(|e| platform_key(e) != key);
    manifests.push(entry);
    manifests.sort_by_key(platform_key);
    Ok(index)
}

/// Pulls the pack `reference` names (for `puller`'s platform) and rebuilds its
/// `.smolmachine` byte for byte: at `dest`, or with `None` in the cache as
/// `<cache>/packs/<sha256 hex>.smolmachine` (kept there and reused by the next pull of the
/// same pack). Every blob is verified as it enters the cache, the rebuilt file against the
/// pushed file's digest and size, and then as a pack; the file appears only once all of that
/// passed (temp file, fsync, rename).
///
/// This is what `smolvm pack pull`, `pack run REF` and `machine create --from REF` call.
pub async fn pull_pack(
    puller: &Puller,
    reference: &Reference,
    dest: Option<&Path>,
    progress: Arc<dyn Progress>,
) -> Result<PulledPack, DistributeError> {
    let pulled = puller
        .pull_artifact(reference, Some(ARTIFACT_TYPE), progress)
        .await?;
    let bad = |detail: String| DistributeError::BadArtifact {
        reference: reference.to_string(),
        detail,
    };
    let annotations = pulled.manifest.annotations().clone().unwrap_or_default();
    let annotation = |key: &str| {
        annotations
            .get(key)
            .cloned()
            .ok_or_else(|| bad(format!("its manifest has no {key} annotation")))
    };
    let size: u64 = annotation(PACK_SIZE)?
        .parse()
        .map_err(|_| bad(format!("{PACK_SIZE} is not a number")))?;
    let expected = annotation(PACK_DIGEST)?;
    let digest = Digest::parse(&expected).map_err(|e| bad(format!("{PACK_DIGEST}: {e}")))?;
    if pulled.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(bad(format!(
            "its config has media type {}, expected {CONFIG_MEDIA_TYPE}",
            pulled.config.media_type
        )));
    }
    let manifest_bytes = puller
        .cache()
        .read_verified(&pulled.config.digest)
        .map_err(RegistryError::from)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| bad(format!("its config is not a pack manifest: {e}")))?;
    let layout = pulled_layout(&manifest, manifest_bytes, size, &pulled.layers).map_err(bad)?;

    let path = match dest {
        Some(dest) => dest.to_path_buf(),
        None => {
            let dir = puller.cache().root().join("packs");
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
            dir.join(format!("{}.smolmachine", digest.hex()))
        }
    };
    let reuse = dest.is_none() && std::fs::metadata(&path).is_ok_and(|m| m.len() == size);
    if !reuse {
        let blobs: Vec<_> = (manifest.sections.iter().map(|s| s.kind))
            .zip(pulled.layers.iter().map(|l| l.path.clone()))
            .collect();
        let (path, reference, digest) = (path.clone(), reference.to_string(), digest.clone());
        tokio::task::spawn_blocking(move || assemble(&layout, &blobs, &path, &reference, &digest))
            .await
            .expect("assembling a pack does not panic")?;
    }
    Ok(PulledPack {
        reference: reference.clone(),
        path,
        digest,
        size,
        manifest_digest: pulled.manifest_digest,
        index_digest: pulled.index_digest,
        platform: manifest.platform,
        transfer: pulled.transfer,
    })
}

/// The layout of the pack an artifact describes, after checking that its layers are the
/// manifest's sections in order and that the file is small enough to be only those.
fn pulled_layout(
    manifest: &Manifest,
    manifest_bytes: Vec<u8>,
    size: u64,
    layers: &[smolvm_registry::Layer],
) -> Result<Layout, String> {
    if layers.len() != manifest.sections.len() {
        return Err(format!(
            "{} layers for {} sections",
            layers.len(),
            manifest.sections.len()
        ));
    }
    for (layer, s) in layers.iter().zip(&manifest.sections) {
        let media_type = section_media_type(s.kind, s.compression);
        if layer.digest.as_str() != s.sha256
            || layer.size != s.length
            || layer.media_type != media_type
        {
            return Err(format!(
                "layer {} ({}, {} bytes) is not section {} ({media_type}, {}, {} bytes)",
                layer.digest,
                layer.media_type,
                layer.size,
                s.kind.as_str(),
                s.sha256,
                s.length
            ));
        }
    }
    let manifest_len = manifest_bytes.len() as u64;
    let manifest_offset = size
        .checked_sub(manifest_len + FOOTER_LEN as u64)
        .ok_or_else(|| format!("its size {size} cannot hold its manifest and footer"))?;
    let mut layout = Layout {
        payload_start: 0,
        payload_len: size,
        manifest_offset,
        footer: Footer {
            manifest_sha256: Sha256::digest(&manifest_bytes).into(),
            manifest_offset,
            manifest_len,
            payload_len: size,
            version: manifest.format_version,
        }
        .to_bytes(),
        manifest: manifest_bytes,
        sections: manifest.sections.clone(),
    };
    layout.sections.sort_by_key(|s| s.offset);
    // Sections in order without overlap, each gap shorter than the alignment: the size
    // annotation cannot make a pull write more than the blobs and a few pages of zeros.
    for (from, to) in layout.gaps() {
        if to < from || to - from >= ALIGN {
            return Err(format!(
                "its layout has a gap from payload offset {from} to {to} (size {size})"
            ));
        }
    }
    Ok(layout)
}

/// Writes the pack of `layout` from its section blobs (in manifest order, like the
/// layers) to a temp file next to `dest`, checks its digest and that it opens as a pack,
/// then moves it into place durably.
fn assemble(
    layout: &Layout,
    blobs: &[(SectionKind, PathBuf)],
    dest: &Path,
    reference: &str,
    expected: &Digest,
) -> Result<(), DistributeError> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".smolvm-pull-")
        .tempfile_in(dir)
        .map_err(io_error("create a temp file in", dir))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_error("create a temp file in", dir))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut found_size = 0u64;
    let mut put = |bytes: &[u8]| -> io::Result<()> {
        hasher.update(bytes);
        found_size += bytes.len() as u64;
        out.write_all(bytes)
    };
    let zeros = [0u8; ALIGN as usize];
    let mut buf = vec![0; 1 << 20];
    let gaps: Vec<_> = layout.gaps().collect();
    let result = (|| -> io::Result<()> {
        for (i, (from, to)) in gaps.iter().enumerate() {
            put(&zeros[..(to - from) as usize])?;
            let Some(section) = layout.sections.get(i) else {
                break;
            };
            let (_, blob) = blobs
                .iter()
                .find(|(kind, _)| *kind == section.kind)
                .expect("pulled_layout paired every section with its layer");
            let mut blob = File::open(blob)?;
            loop {
                match blob.read(&mut buf)? {
                    0 => break,
                    n => put(&buf[..n])?,
                }
            }
        }
        put(&layout.manifest)?;
        put(&layout.footer)
    })();
    result
        .and_then(|()| out.flush())
        .map_err(io_error("write", dest))?;
    drop(out);
    let found = Digest::from_hasher(hasher);
    if &found != expected || found_size != layout.payload_len {
        return Err(DistributeError::Mismatch {
            reference: reference.to_owned(),
            expected: expected.to_string(),
            expected_size: layout.payload_len,
            found,
            found_size,
        });
    }
    Pack::open(tmp.path()).map_err(|source| DistributeError::Format {
        path: dest.to_path_buf(),
        source,
    })?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io_error("set permissions of", dest))?;
    tmp.as_file().sync_all().map_err(io_error("sync", dest))?;
    tmp.persist(dest)
        .map_err(|e| io_error("rename into", dest)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the directory of", dest))
}
