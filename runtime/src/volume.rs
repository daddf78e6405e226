//! Volumes (`-v HOST:GUEST[:ro]`, Smolfile `[dev].volumes`): host directories shared live
//! with the guest. The VMM serves each as a [`Share`]; the agent mounts it as a [`Mount`].

use crate::backend::Share;
use smolfile::Volume;
use smolvm_protocol::{Mount, ShareFs};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error(
        "volume {spec}: the host directory {} does not exist; create it (mkdir -p {0}) or fix the path", path.display()
    )]
    HostMissing { spec: String, path: PathBuf },
    #[error(
        "volume {spec}: {} is not a directory; a volume shares a whole directory, so give the directory that holds it", path.display()
    )]
    NotADirectory { spec: String, path: PathBuf },
    #[error("volume {spec}: cannot use the host directory {}: {source}", path.display())]
    Host {
        spec: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses a `-v HOST:GUEST[:ro|:rw]` flag: a relative host path starts at the current
/// directory (in a Smolfile, at the Smolfile's).
pub fn parse_flag(spec: &str) -> Result<Volume, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("finding the current directory: {e}"))?;
    Volume::parse(spec, &cwd)
}

/// Checks each volume's host directory and turns the volumes into what the VMM serves
/// (`shares`, for [`crate::VmSpec::shares`]) and what the agent mounts (`mounts`, for
/// [`smolvm_protocol::Setup::mounts`]), for a backend that serves them as `fs`
/// ([`crate::backend::Backend::share_fs`]).
///
/// Host paths are made canonical, so the VMM gets an absolute path without symlinks. Mounts
/// come out parents first, so `/a/b` is never hidden by a later `/a`.
pub fn shares(volumes: &[Volume], fs: ShareFs) -> Result<(Vec<Share>, Vec<Mount>), VolumeError> {
    let mut shares = Vec::with_capacity(volumes.len());
    let mut mounts = Vec::with_capacity(volumes.len());
    for (i, v) in volumes.iter().enumerate() {
        let spec = format!("{}:{}", v.host_spec, v.guest);
        let host_path = v.host.canonicalize().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                VolumeError::HostMissing {
                    spec: spec.clone(),
                    path: v.host.clone(),
                }
            } else {
                VolumeError::Host {
                    spec: spec.clone(),
                    path: v.host.clone(),
                    source,
                }
            }
        })?;
        if !host_path.is_dir() {
            return Err(VolumeError::NotADirectory {
                spec,
                path: v.host.clone(),
            });
        }
        let tag = format!("smolvm.vol{i}");
        shares.push(Share {
            tag: tag.clone(),
            host_path,
            read_only: v.read_only,
        });
        mounts.push(Mount {
            tag,
            guest_path: v.guest.clone(),
            read_only: v.read_only,
            fs,
        });
    }
    mounts.sort_by_key(|m| m.guest_path.split('/').filter(|c| !c.is_empty()).count());
    Ok((shares, mounts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn volume(spec: &str, base: &Path) -> Volume {
        Volume::parse(spec, base).unwrap()
    }

    #[test]
    fn shares_and_mounts_pair_up_by_tag_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        let vols = [
            volume("./a/b:/srv/inner:ro", dir.path()),
            volume("link:/srv", dir.path()),
        ];
        let (shares, mounts) = shares(&vols, ShareFs::NineP).unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(
            shares,
            [
                Share {
                    tag: "smolvm.vol0".into(),
                    host_path: real.join("a/b"),
                    read_only: true
                },
                // The symlink is resolved: the VMM is given the real directory.
                Share {
                    tag: "smolvm.vol1".into(),
                    host_path: real.join("a"),
                    read_only: false
                },
            ]
        );
        assert_eq!(
            mounts,
            [
                Mount {
                    tag: "smolvm.vol1".into(),
                    guest_path: "/srv".into(),
                    read_only: false,
                    fs: ShareFs::NineP
                },
                Mount {
                    tag: "smolvm.vol0".into(),
                    guest_path: "/srv/inner".into(),
                    read_only: true,
                    fs: ShareFs::NineP
                },
            ]
        );
        let (_, mounts) = super::shares(&vols[..1], ShareFs::Virtiofs).unwrap();
        assert_eq!(mounts[0].fs, ShareFs::Virtiofs);
    }

    #[test]
    fn a_missing_host_directory_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = shares(&[volume("./nope:/data", dir.path())], ShareFs::NineP).unwrap_err();
        let missing = dir.path().join("nope");
        assert_eq!(
            err.to_string(),
            format!(
                "volume ./nope:/data: the host directory {0} does not exist; create it (mkdir -p {0}) or fix the path",
                missing.display()
            )
        );
    }

    #[test]
    fn a_file_is_not_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = shares(&[volume("f:/data:ro", dir.path())], ShareFs::NineP).unwrap_err();
        assert!(
            matches!(&err, VolumeError::NotADirectory { spec, path } if spec == "f:/data" && *path == dir.path().join("f")),
            "{err}"
        );
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
