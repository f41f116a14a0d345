//! The SQLite engine: slipway's state in an embedded SQLite database, `journal.db` in
//! `state_dir` (the journal).
//!
//! All writes go through one writer thread that commits them in groups: every request that
//! arrives while a commit is being synced joins the next transaction, so concurrent webhook
//! deliveries share one fsync (group commit). A write's future resolves only after the
//! transaction holding it is committed and synced (`journal_mode=WAL`, `synchronous=FULL`).
//! Reads use a separate connection and never wait for the writer.
//!
//! The rest of slipway calls this engine through [`crate::store::Store`]; only the store
//! module, the backup commands (a copy of the file) and startup (the state_dir lock) know it.

pub mod backup;
pub(super) mod body_codec;
mod bulk;
mod checkpoint;
mod deliveries;
mod deployments;
mod events;
mod github;
mod leases;
pub mod lock;
mod notify;
mod promotions;
mod retention;
pub(super) mod schema;
mod slack;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction};

/// What `slipway store copy` reads the journal's rows with: the same queries and row mapping
/// the engine's own reads use.
pub(crate) use deliveries::BUILDS_OF_DELIVERY;
pub(crate) use deployments::{from_row as deployment_from_row, COLUMNS as DEPLOYMENT_COLUMNS};
use tokio::sync::oneshot;

use super::{format_millis, Admission, NewDelivery, StoreError, Verdict};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Engine {
            engine: "journal",
            source: Box::new(e),
        }
    }
}

impl From<lock::LockError> for StoreError {
    fn from(e: lock::LockError) -> StoreError {
        StoreError::Locked(e.to_string())
    }
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write run once, in its own savepoint. It gets None when its group's transaction was lost
/// before its turn.
type OnceJob = Box<dyn FnOnce(Option<&mut Transaction<'_>>) -> Completion + Send>;

/// A write that may be run again (an admission): consecutive ones share one savepoint, and are
/// run again one savepoint each only if one of them failed. A savepoint copies every page a
/// write touches first, so one per delivery was a large part of the writer's time.
trait RepeatableJob: Send {
    /// Runs the write and keeps its outcome; false if it failed (its changes must be undone).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the group's commit is known.
    fn complete(self: Box<Self>, committed: Result<(), String>);
}

enum Job {
    Once(OnceJob),
    Repeatable(Box<dyn RepeatableJob>),
}

struct Repeatable<R, F> {
    write: F,
    outcome: Option<Result<R, StoreError>>,
    done: oneshot::Sender<Result<R, StoreError>>,
}

impl<R, F> RepeatableJob for Repeatable<R, F>
where
    R: Send + 'static,
    F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let outcome = (self.write)(conn);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn complete(self: Box<Self>, committed: Result<(), String>) {
        let result = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StoreError::Commit(
                "the transaction was rolled back before this write ran".into(),
            )),
            (Err(e), _) => Err(StoreError::Commit(e)),
        };
        let _ = self.done.send(result);
    }
}

/// Most jobs one transaction takes; the rest wait for the next.
const MAX_GROUP: usize = 512;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    reader: Mutex<Connection>,
    path: PathBuf,
    /// Deliveries waiting for the writer, bounded: a permit per delivery until its write runs.
    admissions: Arc<tokio::sync::Semaphore>,
    max_admissions: usize,
    /// When the writer took its current group (ms since `epoch`), or -1 while it waits for work.
    busy_since: Arc<AtomicI64>,
    epoch: Instant,
    /// Held while the journal is open: exclusive for writing, shared for reading only.
    _lock: Option<lock::JournalLock>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Sets `path`'s permission bits to `mode`.
fn private(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        StoreError::Create {
            path: path.to_owned(),
            source,
        }
    })
}

/// Creates `path` if needed (0600 from the start) and makes it 0600 if it existed.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        if file.exists() {
            private(&file, 0o600)?;
        }
    }
    Ok(())
}

/// Process-wide SQLite settings, made once before the first connection: no memory statistics
/// (they take a global mutex on every allocation, and slipway never reads them).
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called before any connection exists in this process (the journal opens the
        // first one); if SQLite was initialized already the call fails harmlessly (MISUSE).
        let rc =
            unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0) };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "journal: SQLite was initialized already; memory statistics stay on"
            );
        }
    });
}

/// Opens a connection. Each connection is used by one thread at a time (the writer and the
/// checkpointer own theirs, the reader sits behind a mutex), so SQLite's own per-connection
/// mutex is left out (`NO_MUTEX`, as rusqlite's default flags do).
fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    configure_sqlite();
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    body_codec::register(&conn)?;
    Ok(conn)
}

/// How long the writer may sit on one group before the journal counts as stalled.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// Creates `state_dir` if needed, owner-only whatever the umask (the journal holds private
/// repositories' payloads).
fn prepare_state_dir(state_dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Create {
        path: state_dir.to_owned(),
        source,
    })?;
    private(state_dir, 0o700)
}

/// While this file exists in `state_dir`, the writer takes no new group: a documented way to
/// make the journal's disk "stall" on purpose (backpressure tests, drills). Remove it to resume.
pub const HOLD_FILE: &str = "journal.hold";

impl SqliteStore {
    /// Opens (creating if needed) the journal in `state_dir`, with the default settings.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(state_dir, &crate::config::JournalConfig::default())
    }

    /// Opens (creating if needed) the journal in `state_dir`, refusing at once if another
    /// process holds it.
    pub fn open_with(
        state_dir: &Path,
        settings: &crate::config::JournalConfig,
    ) -> Result<SqliteStore, StoreError> {
        let lock = lock::JournalLock::try_exclusive(state_dir, &lock::Holder::this_process(None))?;
        SqliteStore::open_locked(state_dir, lock, settings)
    }

    /// Opens (creating if needed) the journal in `state_dir`, whose lock the caller holds
    /// (`serve` waits for it, see [`lock::JournalLock::wait_exclusive`]).
    pub fn open_locked(
        state_dir: &Path,
        lock: lock::JournalLock,
        settings: &crate::config::JournalConfig,
    ) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_known_version(state_dir, lock, settings, schema::MIGRATIONS.len())
    }

    /// Opens the journal as a release that knows the first `known` migrations would (the real
    /// open passes all of them; a test passes one fewer to be the previous release).
    pub(crate) fn open_with_known_version(
        state_dir: &Path,
        lock: lock::JournalLock,
        settings: &crate::config::JournalConfig,
        known: usize,
    ) -> Result<SqliteStore, StoreError> {
        prepare_state_dir(state_dir)?;
        let lock_path = lock.path().to_owned();
        let path = state_dir.join("journal.db");
        // SQLite gives the -wal and -shm files the database file's mode, so creating it 0600
        // first keeps all three private.
        for file in [&lock_path, &path] {
            create_private(file)?;
        }
        let mut writer = open(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        schema::incremental_vacuum(&writer)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        // Each write runs in a savepoint: keep its undo pages in memory, not in a temp file.
        writer.pragma_update(None, "temp_store", "MEMORY")?;
        // The intake indexes' pages stay cached however long the history (16 MB, not 2).
        writer.pragma_update(None, "cache_size", -16 * 1024)?;
        // Checkpoints run on their own thread (checkpoint.rs), not inside a group commit.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(None, "journal_size_limit", checkpoint::WAL_SIZE_LIMIT)?;
        schema::migrate_known(&mut writer, known)?;
        // The journal's exclusive lock is held: no other process lives, so none holds a lease
        // (issue 26). A crashed slipway's leases would otherwise delay the restarted one's
        // builds and deploys by a lease period.
        let has_leases = writer
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if has_leases {
            writer.execute("UPDATE leases SET expires_ms = 0 WHERE expires_ms > 0", [])?;
        }
        // Copy what the WAL holds (a migration's rewritten tables, or the writes before a
        // crash) now, before anything waits for the writer: left to the checkpointer's first
        // idle truncation, a large copy would hold the write lock while deliveries wait.
        checkpoint::truncate(&writer);
        let checkpointer = checkpoint::Checkpointer::start(&path)?;
        let reader = open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let epoch = Instant::now();
        let busy_since = Arc::new(AtomicI64::new(-1));
        let writer_state = WriterState {
            checkpointer,
            hold: state_dir.join(HOLD_FILE),
            busy_since: busy_since.clone(),
            epoch,
        };
        thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_loop(writer, rx, writer_state))
            .map_err(|e| StoreError::Invalid(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(tx)),
                reader: Mutex::new(reader),
                path,
                admissions: Arc::new(tokio::sync::Semaphore::new(settings.max_queued_deliveries)),
                max_admissions: settings.max_queued_deliveries,
                busy_since,
                epoch,
                _lock: Some(lock),
            }),
        })
    }

    /// Opens an existing journal for reading only (the CLI), under a shared lock: refused while
    /// `serve` holds the journal (its answers are the ones to trust then, and the journal may be
    /// on another host's disk: SQLite's WAL is for one host only).
    pub fn open_read_only(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = state_dir.join("journal.db");
        if !path.exists() {
            return Err(StoreError::Invalid(format!(
                "no journal at {} (has slipway run with this state_dir?)",
                path.display()
            )));
        }
        let lock = match lock::JournalLock::try_shared(state_dir) {
            Ok(lock) => lock,
            Err(lock::LockError::Held(holder)) => {
                return Err(StoreError::ServerRunning {
                    host: holder
                        .as_ref()
                        .map(|h| h.host.clone())
                        .unwrap_or_else(|| "this state_dir".to_owned()),
                    holder: match holder {
                        Some(h) => h.to_string(),
                        None => "it has not said who it is yet".to_owned(),
                    },
                })
            }
            Err(e) => return Err(e.into()),
        };
        let reader = open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(None),
                reader: Mutex::new(reader),
                path,
                admissions: Arc::new(tokio::sync::Semaphore::new(0)),
                max_admissions: 0,
                busy_since: Arc::new(AtomicI64::new(-1)),
                epoch: Instant::now(),
                _lock: Some(lock),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in the next group transaction; resolves once that transaction is durable.
    /// If `f` fails, its changes are rolled back alone (a savepoint); the group commits.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<R, StoreError>>();
        let job: OnceJob = Box::new(move |tx: Option<&mut Transaction<'_>>| {
            let Some(tx) = tx else {
                return Box::new(move |_: Result<(), String>| {
                    let _ = done_tx.send(Err(StoreError::Commit(
                        "the transaction was rolled back before this write ran".into(),
                    )));
                }) as Completion;
            };
            let outcome = in_savepoint(tx, f);
            Box::new(move |committed: Result<(), String>| {
                let result = match (committed, outcome) {
                    (Ok(()), outcome) => outcome,
                    (Err(e), _) => Err(StoreError::Commit(e)),
                };
                let _ = done_tx.send(result);
            })
        });
        self.send(Job::Once(job))?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`SqliteStore::write`], for a write that may be run more than once: it must do the same
    /// thing each time (its changes are undone between runs). Consecutive such writes share one
    /// savepoint; if one fails, they are all undone and run again, one savepoint each, so a
    /// failing write still fails alone.
    pub(crate) async fn write_repeatable<R, F>(&self, write: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, done_rx) = oneshot::channel::<Result<R, StoreError>>();
        self.send(Job::Repeatable(Box::new(Repeatable {
            write,
            outcome: None,
            done,
        })))?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let guard = self.inner.writer.lock().expect("journal writer lock");
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)
    }

    /// Runs a read on the reader connection, off the async runtime.
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader.lock().expect("journal reader lock");
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("read task failed: {e}")))?
    }

    /// Proves the journal can take a durable write (for `/readyz`).
    pub async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('ready_check', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [now_ms.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    /// Why the journal cannot take deliveries right now, if it cannot: too many waiting for
    /// the writer, or the writer stuck on one group (a stalled disk). For `/readyz` and intake.
    pub fn backpressure(&self) -> Option<String> {
        let inner = &self.inner;
        let since = inner.busy_since.load(Ordering::Acquire);
        if since >= 0 {
            let now = inner.epoch.elapsed().as_millis() as i64;
            let stuck = Duration::from_millis((now - since).max(0) as u64);
            if stuck >= STALLED_AFTER {
                return Some(format!(
                    "the journal writer has not committed for {} s (slow or stalled disk)",
                    stuck.as_secs()
                ));
            }
        }
        if inner.max_admissions > 0 && inner.admissions.available_permits() == 0 {
            return Some(format!(
                "{} deliveries are waiting for the journal writer (the most it queues)",
                inner.max_admissions
            ));
        }
        None
    }

    /// Takes a place in the bounded queue of deliveries waiting for the writer.
    fn admission_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        if let Some(why) = self.backpressure() {
            return Err(StoreError::Busy(why));
        }
        self.inner
            .admissions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                StoreError::Busy(format!(
                    "{} deliveries are waiting for the journal writer (the most it queues)",
                    self.inner.max_admissions
                ))
            })
    }

    /// Stops the writer after the jobs already queued are committed.
    pub fn close(&self) {
        self.inner
            .writer
            .lock()
            .expect("journal writer lock")
            .take();
    }
}

/// Runs `f` in a savepoint of `tx`: if it fails, its changes are undone and the rest of the
/// group's stay. The savepoint statements are prepared once per connection, not per write.
fn in_savepoint<R>(
    tx: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    exec(tx, "SAVEPOINT journal_write")?;
    let outcome = f(tx).and_then(|value| exec(tx, "RELEASE journal_write").map(|()| value));
    if outcome.is_err() && !tx.is_autocommit() {
        let _ = exec(tx, "ROLLBACK TO journal_write");
        let _ = exec(tx, "RELEASE journal_write");
    }
    outcome
}

/// Runs a statement without parameters or rows (a savepoint's), prepared once per connection.
fn exec(tx: &Connection, sql: &str) -> Result<(), StoreError> {
    tx.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs consecutive repeatable writes in one savepoint; if one fails, undoes them all and runs
/// each again in a savepoint of its own. A write that never ran (the transaction was lost)
/// keeps no outcome and is answered with an error.
fn run_repeatable(tx: &Connection, run: &mut [Box<dyn RepeatableJob>]) {
    if exec(tx, "SAVEPOINT journal_writes").is_err() {
        return;
    }
    let all_ok = run.iter_mut().all(|job| job.run(tx));
    if tx.is_autocommit() {
        return;
    }
    if all_ok && exec(tx, "RELEASE journal_writes").is_ok() {
        return;
    }
    let _ = exec(tx, "ROLLBACK TO journal_writes");
    let _ = exec(tx, "RELEASE journal_writes");
    for job in run.iter_mut() {
        if tx.is_autocommit() {
            return;
        }
        let _ = in_savepoint(tx, |conn| {
            if job.run(conn) {
                Ok(())
            } else {
                Err(StoreError::Invalid("undone".into()))
            }
        });
    }
}

struct WriterState {
    checkpointer: checkpoint::Checkpointer,
    hold: PathBuf,
    busy_since: Arc<AtomicI64>,
    epoch: Instant,
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>, state: WriterState) {
    while let Ok(first) = rx.recv() {
        state
            .busy_since
            .store(state.epoch.elapsed().as_millis() as i64, Ordering::Release);
        while state.hold.exists() {
            thread::sleep(Duration::from_millis(50));
        }
        state.checkpointer.writer_turn(&conn);
        let started = Instant::now();
        let mut jobs = Vec::with_capacity(16);
        jobs.push(first);
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // IMMEDIATE: take the write lock first, waiting (busy timeout) while the checkpointer's
        // truncation holds it. A deferred group that read first would be refused at once when
        // it then asked for the lock (SQLite does not wait for a read upgrading to a write).
        let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "journal: cannot begin a transaction");
                let message = e.to_string();
                for job in jobs {
                    match job {
                        Job::Once(job) => job(None)(Err(message.clone())),
                        Job::Repeatable(job) => job.complete(Err(message.clone())),
                    }
                }
                state.busy_since.store(-1, Ordering::Release);
                continue;
            }
        };
        let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
        let mut lost = false;
        let mut jobs = jobs.into_iter().peekable();
        while let Some(job) = jobs.next() {
            match job {
                Job::Once(job) => {
                    if lost {
                        completions.push(job(None));
                        continue;
                    }
                    completions.push(job(Some(&mut tx)));
                }
                Job::Repeatable(first) => {
                    let mut run = vec![first];
                    while let Some(Job::Repeatable(next)) =
                        jobs.next_if(|job| matches!(job, Job::Repeatable(_)))
                    {
                        run.push(next);
                    }
                    if !lost {
                        run_repeatable(&tx, &mut run);
                    }
                    for job in run {
                        completions.push(Box::new(move |committed| job.complete(committed)));
                    }
                }
            }
            // SQLite rolls the whole transaction back by itself on some errors (full disk,
            // I/O): later writes must not run outside it, each committing on its own.
            lost = lost || tx.is_autocommit();
        }
        let committed = if lost {
            tracing::error!("journal: the transaction was rolled back by SQLite");
            drop(tx);
            Err("the transaction was rolled back".to_owned())
        } else {
            tx.commit().map_err(|e| e.to_string())
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, "journal: commit failed");
        }
        metrics::histogram!("slipway_journal_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        state.busy_since.store(-1, Ordering::Release);
        state.checkpointer.committed();
        for done in completions {
            done(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_compat;
#[cfg(test)]
mod tests_speed;
