//! The catalogue of named machines: a SQLite database (WAL, busy timeout) beside the
//! machines' directories.
//!
//! ```text
//! <data>/machines.db          one row per machine: name, source, image, lifecycle times
//! <data>/machines.db.lock     flock'd while a process opens the database and sets it up
//! <data>/machines/<name>/     the machine's directory (see MachineDir)
//! ```
//!
//! The database answers "which machines exist" and "what do they hold on to"; a machine's
//! directory says how to boot it, and its lock says whether it runs. A name is claimed by
//! inserting its row (the primary key settles races between concurrent `create`s); the row
//! is marked ready once the directory is complete, so a create that was killed half-way
//! shows as incomplete and is cleaned up by `delete`, never booted.

use super::{MachineDir, Status};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

const MAX_NAME: usize = 64;
/// Schema version, kept in `PRAGMA user_version`.
const SCHEMA: i64 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "invalid machine name {name:?}: {why} (names are ASCII letters, digits, '-' and '_', start with a letter or digit, and are at most {MAX_NAME} characters)"
    )]
    BadName { name: String, why: &'static str },
    #[error(
        "a machine named {0:?} already exists; pick another name or `smolvm machine delete {0}` first"
    )]
    Exists(String),
    #[error("no machine named {0:?}; `smolvm machine ls` lists them")]
    NotFound(String),
    #[error(
        "machine database {path} was written by a newer smolvm (schema {found}, this one knows {SCHEMA}); upgrade smolvm"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("machine database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the data directory: set HOME, XDG_DATA_HOME or SMOLVM_DATA_DIR")]
    NoDataDir,
}

/// Checks a machine name against the rule in [`StoreError::BadName`].
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::BadName {
            name: name.to_string(),
            why,
        })
    };
    match name.chars().next() {
        None => return bad("it is empty"),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return bad("it must start with a letter or digit");
        }
        _ => {}
    }
    if name.len() > MAX_NAME {
        return bad("it is too long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad("it holds a character other than letters, digits, '-' and '_'");
    }
    Ok(())
}

/// smolvm's data directory: `$SMOLVM_DATA_DIR`, else `$XDG_DATA_HOME/smolvm`, else
/// `~/.local/share/smolvm`.
pub fn data_dir() -> Result<PathBuf, StoreError> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("SMOLVM_DATA_DIR")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("smolvm")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/smolvm")))
        .ok_or(StoreError::NoDataDir)
}

/// Opens `path` (creating it) and waits for an exclusive lock on it, held until the file
/// is closed.
fn lock_exclusive(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    smolvm_pack_format::cache::flock(&f, libc::LOCK_EX).map_err(io)?;
    Ok(f)
}

/// What the catalogue knows about one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineRecord {
    pub name: String,
    /// What it was created from: `bare`, an image reference, or a pack file.
    pub source: String,
    /// The image manifest digest its root filesystem comes from, if any (kept by `prune`).
    pub image_digest: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub last_started: Option<u64>,
    pub last_stopped: Option<u64>,
    /// False while `create` is filling its directory (or after it was killed doing so).
    pub ready: bool,
}

pub struct MachineStore {
    conn: Connection,
    root: PathBuf,
    db: PathBuf,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MachineStore {
    /// Opens (creating if needed) the catalogue under `root`.
    pub fn open(root: &Path) -> Result<MachineStore, StoreError> {
        let machines = root.join("machines");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&machines)
                .map_err(|source| StoreError::Io {
                    path: machines.clone(),
                    source,
                })?;
        }
        let db = root.join("machines.db");
        let err = |source| StoreError::Db {
            path: db.clone(),
            source,
        };
        // Switching a new database to WAL and creating its table are not covered by the
        // busy timeout (SQLite answers "locked" at once), so concurrent first opens take
        // turns under a lock file; later statements wait on the busy timeout as usual.
        let _setup = lock_exclusive(&root.join("machines.db.lock"))?;
        let conn = Connection::open(&db).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA {
            return Err(StoreError::NewerSchema {
                path: db,
                found: version,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS machines (
                 name          TEXT PRIMARY KEY NOT NULL,
                 source        TEXT NOT NULL,
                 image_digest  TEXT,
                 created_at    INTEGER NOT NULL,
                 last_started  INTEGER,
                 last_stopped  INTEGER,
                 ready         INTEGER NOT NULL DEFAULT 0
             ) STRICT;
             PRAGMA user_version = 1;",
        )
        .map_err(err)?;
        Ok(MachineStore {
            conn,
            root: root.to_path_buf(),
            db,
        })
    }

    /// The catalogue in [`data_dir`].
    pub fn open_default() -> Result<MachineStore, StoreError> {
        MachineStore::open(&data_dir()?)
    }

    fn db_err(&self) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = self.db.clone();
        move |source| StoreError::Db { path, source }
    }

    /// The directory of machine `name` (which must be valid).
    pub fn dir(&self, name: &str) -> MachineDir {
        MachineDir::new(self.root.join("machines").join(name))
    }

    /// Claims `name` for a new machine (not ready yet) and returns its directory.
    pub fn reserve(
        &self,
        name: &str,
        source: &str,
        image_digest: Option<&str>,
    ) -> Result<MachineDir, StoreError> {
        validate_name(name)?;
        let inserted = self.conn.execute(
            "INSERT INTO machines (name, source, image_digest, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![name, source, image_digest, now() as i64],
        );
        match inserted.map_err(self.db_err())? {
            0 => Err(StoreError::Exists(name.to_string())),
            _ => Ok(self.dir(name)),
        }
    }

    /// Marks a reserved machine complete.
    pub fn mark_ready(&self, name: &str) -> Result<(), StoreError> {
        self.update(name, "UPDATE machines SET ready = 1 WHERE name = ?1")
    }

    pub fn record_started(&self, name: &str) -> Result<(), StoreError> {
        self.update_time(name, "last_started")
    }

    pub fn record_stopped(&self, name: &str) -> Result<(), StoreError> {
        self.update_time(name, "last_stopped")
    }

    fn update_time(&self, name: &str, column: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                &format!("UPDATE machines SET {column} = ?2 WHERE name = ?1"),
                params![name, now() as i64],
            )
            .map_err(self.db_err())?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        Ok(())
    }

    fn update(&self, name: &str, sql: &str) -> Result<(), StoreError> {
        match self
            .conn
            .execute(sql, params![name])
            .map_err(self.db_err())?
        {
            0 => Err(StoreError::NotFound(name.to_string())),
            _ => Ok(()),
        }
    }

    pub fn get(&self, name: &str) -> Result<MachineRecord, StoreError> {
        validate_name(name)?;
        self.conn
            .query_row(
                "SELECT name, source, image_digest, created_at, last_started, last_stopped, ready
                 FROM machines WHERE name = ?1",
                params![name],
                record,
            )
            .optional()
            .map_err(self.db_err())?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    /// Every machine, by name.
    pub fn list(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, source, image_digest, created_at, last_started, last_stopped, ready
                 FROM machines ORDER BY name",
            )
            .map_err(self.db_err())?;
        let rows = stmt.query_map([], record).map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    /// Forgets machine `name` (its directory must be gone already).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.update(name, "DELETE FROM machines WHERE name = ?1")
    }

    /// The status of a machine: its supervisor's lock decides.
    pub fn status(&self, name: &str) -> Status {
        self.dir(name).status()
    }
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<MachineRecord> {
    let time = |v: Option<i64>| v.map(|t| t.max(0) as u64);
    Ok(MachineRecord {
        name: r.get(0)?,
        source: r.get(1)?,
        image_digest: r.get(2)?,
        created_at: r.get::<_, i64>(3)?.max(0) as u64,
        last_started: time(r.get(4)?),
        last_stopped: time(r.get(5)?),
        ready: r.get::<_, i64>(6)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule_and_errors_state_it() {
        for ok in ["default", "a", "web-1", "db_2", "9lives", &"x".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("-x", "start with"),
            ("_x", "start with"),
            ("a/b", "character other"),
            ("..", "start with"),
            ("a b", "character other"),
            ("é", "start with"),
            (&"x".repeat(65), "too long"),
        ] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("at most 64 characters"), "{e}");
        }
    }

    #[test]
    fn a_name_is_claimed_once_and_records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MachineStore::open(tmp.path()).unwrap();
        let dir = store
            .reserve("web", "image alpine:3.20", Some("sha256:ab"))
            .unwrap();
        assert_eq!(dir.path(), tmp.path().join("machines/web"));
        let again = MachineStore::open(tmp.path()).unwrap();
        let e = again.reserve("web", "bare", None).unwrap_err();
        assert!(matches!(e, StoreError::Exists(_)), "{e}");
        assert!(e.to_string().contains("smolvm machine delete web"));
        assert!(!store.get("web").unwrap().ready);
        store.mark_ready("web").unwrap();
        store.record_started("web").unwrap();
        let r = again.get("web").unwrap();
        assert!(r.ready && r.last_started.is_some() && r.last_stopped.is_none());
        assert_eq!(r.image_digest.as_deref(), Some("sha256:ab"));
        assert_eq!(r.source, "image alpine:3.20");
        store.reserve("a-first", "bare", None).unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a-first", "web"]);
        store.remove("web").unwrap();
        assert!(matches!(store.get("web"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove("web"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.reserve("../etc", "bare", None),
            Err(StoreError::BadName { .. })
        ));
    }

    #[test]
    fn concurrent_creates_of_one_name_have_one_winner() {
        let tmp = tempfile::tempdir().unwrap();
        MachineStore::open(tmp.path()).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let root = tmp.path();
                    s.spawn(move || {
                        let store = MachineStore::open(root).unwrap();
                        store.reserve(&format!("m{i}"), "bare", None).unwrap();
                        usize::from(store.reserve("same", &format!("try {i}"), None).is_ok())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        let store = MachineStore::open(tmp.path()).unwrap();
        assert_eq!(store.list().unwrap().len(), 17);
    }

    /// Run as a child process by the test below: opens the catalogue in `$STORE_ROOT` and
    /// claims `$STORE_NAME` once `$STORE_ROOT/go` exists; does nothing when run by the
    /// harness itself.
    #[test]
    fn open_and_reserve_in_a_child() {
        let (Some(root), Some(name)) = (
            std::env::var_os("STORE_ROOT"),
            std::env::var("STORE_NAME").ok(),
        ) else {
            return;
        };
        // All children start together, when the parent creates `go`.
        let go = Path::new(&root).join("go");
        while !go.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        MachineStore::open(Path::new(&root))
            .and_then(|store| store.reserve(&name, "bare", None))
            .unwrap();
    }

    #[test]
    fn first_opens_of_a_new_catalogue_race_without_locked_errors() {
        // Sixteen `machine create` processes on a new data directory all set the database
        // up at once; without turns, some got "database is locked" despite the busy timeout.
        // (Threads of one process do not show it: SQLite shares locks within a process.)
        let exe = std::env::current_exe().unwrap();
        for _ in 0..30 {
            let tmp = tempfile::tempdir().unwrap();
            let children: Vec<_> = (0..16)
                .map(|i| {
                    std::process::Command::new(&exe)
                        .args([
                            "--exact",
                            "machine::store::tests::open_and_reserve_in_a_child",
                        ])
                        .args(["--test-threads", "1", "--nocapture"])
                        .env("STORE_ROOT", tmp.path())
                        .env("STORE_NAME", format!("m{i}"))
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            std::fs::write(tmp.path().join("go"), "").unwrap();
            for c in children {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let store = MachineStore::open(tmp.path()).unwrap();
            assert_eq!(store.list().unwrap().len(), 16);
        }
    }

    #[test]
    fn a_database_from_a_newer_smolvm_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        MachineStore::open(tmp.path()).unwrap();
        let conn = Connection::open(tmp.path().join("machines.db")).unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
        drop(conn);
        let e = MachineStore::open(tmp.path()).err().unwrap().to_string();
        assert!(
            e.contains("schema 7") && e.contains("upgrade smolvm"),
            "{e}"
        );
    }
}
