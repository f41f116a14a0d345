//! The journal's side of backups (issue 21): a consistent copy taken while slipway serves, the
//! checks a backup passes before it may replace a journal, and the replacement itself.
//!
//! The copy is SQLite's `VACUUM INTO` on a connection of its own: it reads one snapshot (a read
//! transaction in WAL mode), so it holds every write committed before it began and none after,
//! and the writer goes on meanwhile (WAL readers never block it; the WAL only grows until the
//! copy ends). A file-level copy of `journal.db` and its `-wal` taken at different moments, as
//! a volume backup does, is not consistent.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::lock::JournalLock;
use super::{schema, SqliteStore, StoreError};

/// What a backup holds, as read from the file itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    pub schema_version: i64,
    pub bytes: u64,
    pub deliveries: i64,
    pub deployments: i64,
}

/// The `meta` key holding the last backup's outcome (JSON).
const LAST_BACKUP: &str = "last_backup";

impl SqliteStore {
    /// Keeps the last backup's outcome (it outlives restarts: `GET /api/backups`).
    pub async fn record_backup(
        &self,
        outcome: &crate::readiness::BackupOutcome,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_string(outcome).expect("an outcome serializes");
        self.write(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [LAST_BACKUP, &value],
            )?;
            Ok(())
        })
        .await
    }

    /// The last backup's outcome, if one was recorded.
    pub async fn last_backup(&self) -> Result<Option<crate::readiness::BackupOutcome>, StoreError> {
        self.read(|c| {
            Ok(schema::meta_value(c, LAST_BACKUP)?.and_then(|v| serde_json::from_str(&v).ok()))
        })
        .await
    }

    /// Copies the journal as it is now into `dest` (which must not exist), synced, owner-only.
    pub async fn snapshot_into(&self, dest: PathBuf) -> Result<BackupSummary, StoreError> {
        let source = self.path().to_owned();
        tokio::task::spawn_blocking(move || snapshot(&source, &dest))
            .await
            .map_err(|e| StoreError::Invalid(format!("backup task failed: {e}")))?
    }
}

fn snapshot(source: &Path, dest: &Path) -> Result<BackupSummary, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source: std::io::Error| StoreError::Create {
        path: dest.to_owned(),
        source,
    };
    // VACUUM INTO writes into an empty file: create it private first.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io)?;
    let conn = super::open(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let copied = conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()]);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(dest);
        return Err(e.into());
    }
    // VACUUM INTO does not sync what it wrote.
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    summarize(dest)
}

fn summarize(path: &Path) -> Result<BackupSummary, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let count = |table: &str| -> Result<i64, StoreError> {
        Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok(BackupSummary {
        schema_version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        deliveries: count("deliveries")?,
        deployments: count("deployments")?,
    })
}

/// Why `path` cannot replace a journal, if it cannot: not an SQLite database, damaged
/// (`PRAGMA integrity_check`), a schema this release does not know and cannot use, or tables
/// missing for its schema version.
pub fn check_backup(path: &Path) -> Result<BackupSummary, StoreError> {
    let unusable = |why: String| StoreError::Invalid(format!("the backup is not usable: {why}"));
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| unusable(format!("it is not an SQLite database ({e})")))?;
    if integrity != ["ok"] {
        return Err(unusable(format!(
            "PRAGMA integrity_check found damage: {}",
            integrity
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = schema::MIGRATIONS.len() as i64;
    if version < 1 {
        return Err(unusable(
            "it holds no slipway journal (schema version 0)".to_owned(),
        ));
    }
    if version > known {
        if let Some(why) = schema::newer_journal_refusal(&conn, version, known)? {
            return Err(unusable(why));
        }
    }
    // The tables a journal at that version has (at most this release's).
    let mut expected = Connection::open_in_memory()?;
    schema::migrate_with(
        &mut expected,
        schema::MIGRATIONS,
        version.min(known) as usize,
    )?;
    let tables = |c: &Connection| -> Result<Vec<String>, StoreError> {
        let mut stmt = c.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    };
    let present = tables(&conn)?;
    let missing: Vec<String> = tables(&expected)?
        .into_iter()
        .filter(|t| !present.contains(t))
        .collect();
    if !missing.is_empty() {
        return Err(unusable(format!(
            "tables of schema version {version} are missing: {}",
            missing.join(", ")
        )));
    }
    drop(conn);
    summarize(path)
}

/// Replaces the journal in `state_dir` with `candidate` (checked with [`check_backup`]), under
/// the exclusive lock the caller holds. The journal it replaces, checkpointed into one file, is
/// kept aside as `journal.db.before-restore-<stamp>`; its path is returned (None: there was
/// none).
pub fn put_in_place(
    state_dir: &Path,
    _lock: &JournalLock,
    candidate: &Path,
    stamp: &str,
) -> Result<Option<PathBuf>, StoreError> {
    let journal = state_dir.join("journal.db");
    let moved = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| StoreError::Create {
            path: to.to_owned(),
            source,
        })
    };
    let aside = if journal.exists() {
        // Everything the WAL holds goes into the file first, so the file alone is the journal.
        let conn = super::open(&journal, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        drop(conn);
        let aside = state_dir.join(format!("journal.db.before-restore-{stamp}"));
        moved(&journal, &aside)?;
        Some(aside)
    } else {
        None
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(state_dir.join(format!("journal.db{suffix}")));
    }
    moved(candidate, &journal)?;
    super::private(&journal, 0o600)?;
    // The renames are durable once the directory is synced.
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Create {
            path: state_dir.to_owned(),
            source,
        })?;
    Ok(aside)
}
