//! Resolving paths inside a guest root the way a process chrooted there would see them.
//!
//! Images contain absolute symlinks (`/bin/sh -> /bin/busybox`). Followed from the agent's
//! own root they would point at the wrong file, or out of the image; here every symlink is
//! resolved relative to the root and `..` never climbs above it.

use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// The host-visible path of `path` as seen from inside `root`. Missing trailing components
/// are kept as they are (the result may not exist).
pub fn resolve(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<String> = split(path);
    pending.reverse();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(resolved.join("/")).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < MAX_SYMLINKS => {
                links += 1;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                let mut parts = split(&target);
                parts.reverse();
                pending.extend(parts);
            }
            _ => resolved.push(part),
        }
    }
    root.join(resolved.join("/"))
}

fn split(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root_and_never_escape() {
        let dir = std::env::temp_dir().join(format!("smolvm-rootpath-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/busybox"), b"").unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("/usr/bin/busybox", root.join("usr/bin/sh")).unwrap();
        symlink("../../../../../../etc", root.join("escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(resolve(&root, "/bin/sh"), root.join("usr/bin/busybox"));
        assert_eq!(
            resolve(&root, "bin/../../../etc/passwd"),
            root.join("etc/passwd")
        );
        assert_eq!(resolve(&root, "/escape/passwd"), root.join("etc/passwd"));
        assert_eq!(resolve(&root, "/no/such/file"), root.join("no/such/file"));
        // A symlink loop stops after MAX_SYMLINKS and stays inside the root.
        assert!(resolve(&root, "/loop").starts_with(&root));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
