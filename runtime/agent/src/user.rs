//! Resolving `--user` specs against the guest root's `/etc/passwd` and `/etc/group`,
//! the way docker does.

use crate::rootpath;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(rootpath::resolve(root, file)).unwrap_or_default()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    read(root, "/etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
            })
        })
        .collect()
}

/// (name, gid, members) for each group.
fn groups(root: &Path) -> Vec<(String, u32, Vec<String>)> {
    read(root, "/etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `name`, `uid`, `name:group` or `uid:gid` (any mix). `None` means root.
pub fn resolve(root: &Path, spec: Option<&str>) -> Result<User, String> {
    let spec = spec.unwrap_or("0").trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(format!(
            "invalid user {spec:?}: expected NAME, UID, NAME:GROUP or UID:GID"
        ));
    }
    let users = passwd(root);
    let entry = users.iter().find(|e| e.name == user_part);
    let (uid, mut gid, home, name) = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
        (None, Ok(uid)) => match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), Some(e.name.clone())),
            // A numeric uid with no passwd entry is allowed, as in docker: gid 0, home /.
            None => (uid, 0, "/".to_string(), None),
        },
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user_part}: no matching entries in the image's /etc/passwd"
            ));
        }
    };
    let all_groups = groups(root);
    if let Some(g) = group_part {
        gid = match (all_groups.iter().find(|(n, _, _)| n == g), g.parse::<u32>()) {
            (Some((_, gid, _)), _) => *gid,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => {
                return Err(format!(
                    "unable to find group {g}: no matching entries in the image's /etc/group"
                ));
            }
        };
    }
    let mut supplementary = vec![gid];
    if let Some(name) = name {
        for (_, g, members) in &all_groups {
            if members.contains(&name) && !supplementary.contains(g) {
                supplementary.push(*g);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "smolvm-user-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_the_forms_docker_accepts() {
        let r = root();
        assert_eq!(
            resolve(&r, None).unwrap(),
            User {
                uid: 0,
                gid: 0,
                groups: vec![0],
                home: "/root".into()
            }
        );
        assert_eq!(
            resolve(&r, Some("app")).unwrap(),
            User {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve(&r, Some("1000")).unwrap().home, "/home/app");
        assert_eq!(resolve(&r, Some("app:staff")).unwrap().gid, 50);
        assert_eq!(resolve(&r, Some("1000:77")).unwrap().gid, 77);
        assert_eq!(
            resolve(&r, Some("4242")).unwrap(),
            User {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: "/".into()
            }
        );
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let r = root();
        assert_eq!(
            resolve(&r, Some("nobody")).unwrap_err(),
            "unable to find user nobody: no matching entries in the image's /etc/passwd"
        );
        assert!(
            resolve(&r, Some("app:nogroup"))
                .unwrap_err()
                .contains("unable to find group nogroup")
        );
        assert!(
            resolve(&r, Some(":1"))
                .unwrap_err()
                .contains("invalid user")
        );
    }
}
