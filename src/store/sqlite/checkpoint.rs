//! WAL checkpoints off the writer's hot path (issue 13).
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses `wal_autocheckpoint`, on
//! the writer thread: every so often one group commit also copies thousands of pages into the
//! database file and syncs it, and every delivery in that group waits for it. Instead the writer
//! turns automatic checkpoints off and this thread, on its own connection, runs passive
//! checkpoints after commits. A passive checkpoint never blocks the writer and never loses
//! anything: what it has not copied yet stays in the synced WAL.
//!
//! The WAL only starts over from its beginning when a write transaction begins after a
//! checkpoint copied all of it. Under continuous load that moment may never come, so when the
//! WAL has grown past [`WAL_RESTART_FRAMES`] this thread catches up with the commits made
//! during its pass, then asks the writer to copy the last few frames itself, between two groups
//! (see [`Checkpointer::writer_turn`]); its next transaction then rewinds the WAL.
//!
//! After a second without commits the WAL file is emptied, so a burst leaves no large file
//! behind.
//!
//! Measured under `scripts/bench-intake.sh` (about 11,000 deliveries/s): every delivery waiting
//! while the writer finishes a checkpoint (2–10 ms: it copies what came since the last pass and
//! syncs `journal.db`), and the checkpointer's large syncs of `journal.db` sharing the disk with
//! the WAL's, were most of the requests over 10 ms. Hence short passes (5 ms of commits each,
//! so each `journal.db` sync is small) and a rare restart (every 256 MB of WAL, not 32 MB).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// WAL frames (pages) past which the writer is asked to finish a checkpoint (about 256 MB).
/// Only sustained load gets there: a journal with pauses between commits starts its WAL over
/// whenever a pass has copied all of it.
pub(crate) const WAL_RESTART_FRAMES: i64 = 65536;
/// The longest the checkpointer waits between two passes while the writer is busy.
const PASS_EVERY: Duration = Duration::from_millis(5);
/// Most passes in a row the checkpointer makes to catch up before the writer's turn.
const CATCH_UP_PASSES: usize = 8;
/// Frames left to copy that count as caught up.
const CATCH_UP_FRAMES: i64 = 64;
/// The WAL file is truncated back to this size after it restarted (bytes): above the restart
/// point, so that under sustained load the file is rewritten in place, never regrown.
pub(crate) const WAL_SIZE_LIMIT: i64 = (WAL_RESTART_FRAMES + 16384) * 4096;

/// The writer's side: wakes the checkpointer after commits and finishes a checkpoint when asked.
pub(crate) struct Checkpointer {
    wake: mpsc::SyncSender<()>,
    restart: Arc<AtomicBool>,
}

/// What a `PRAGMA wal_checkpoint` answered: (busy, frames in the WAL, frames copied).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

impl Checkpointer {
    /// Starts the checkpoint thread for the journal at `path`. It stops when the returned
    /// value (owned by the writer) is dropped.
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = super::open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let restart = Arc::new(AtomicBool::new(false));
        let asked = restart.clone();
        thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || run(conn, woken, asked))
            .map_err(|e| StoreError::Invalid(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer { wake, restart })
    }

    /// After a commit: there are new frames to copy.
    pub(crate) fn committed(&self) {
        let _ = self.wake.try_send(());
    }

    /// Before a group: if the WAL has grown too long, copy its last frames on the writer's own
    /// connection so that the next transaction starts the WAL over. A few ms at most: the
    /// checkpoint thread has copied all but the frames of the last few commits.
    pub(crate) fn writer_turn(&self, conn: &Connection) {
        if self.restart.swap(false, Ordering::AcqRel) {
            if let Err(e) = checkpoint(conn) {
                tracing::warn!(error = %e, "journal: checkpoint failed; will try again");
            }
        }
    }
}

/// After this long without a commit, the WAL file is emptied (`TRUNCATE`): a burst leaves no
/// large WAL file behind on disk.
const IDLE_TRUNCATE_AFTER: Duration = Duration::from_secs(1);
/// The most a truncation waits for a reader or the writer (then it tries again when idle).
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

/// Copies the whole WAL and empties the file; true if it did.
pub(super) fn truncate(conn: &Connection) -> bool {
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(busy) => busy == 0,
        Err(e) => {
            tracing::debug!(error = %e, "journal: WAL not truncated; will try again when idle");
            false
        }
    }
}

fn run(conn: Connection, woken: mpsc::Receiver<()>, restart: Arc<AtomicBool>) {
    // A truncation blocks the writer while it waits: never long.
    if let Err(e) = conn.busy_timeout(TRUNCATE_WAIT) {
        tracing::warn!(error = %e, "journal: cannot set the checkpointer's busy timeout");
    }
    // Whether the WAL file may hold frames since it was last emptied.
    let mut written = true;
    loop {
        match woken.recv_timeout(IDLE_TRUNCATE_AFTER) {
            Ok(()) => written = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if written {
                    written = !truncate(&conn);
                }
                continue;
            }
            // The writer has stopped (its side is dropped).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        match checkpoint(&conn) {
            Ok((_, frames, _)) if frames > WAL_RESTART_FRAMES => {
                // Copy what was committed during that pass too, so that the writer's own
                // checkpoint (which every waiting delivery waits for) has only the last one or
                // two commits left to copy.
                for _ in 0..CATCH_UP_PASSES {
                    match checkpoint(&conn) {
                        Ok((_, frames, copied)) if frames - copied > CATCH_UP_FRAMES => {}
                        _ => break,
                    }
                }
                restart.store(true, Ordering::Release)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "journal: checkpoint failed; will try again"),
        }
        // Let commits accumulate: one pass copies a page once however often it changed.
        thread::sleep(PASS_EVERY);
    }
}
