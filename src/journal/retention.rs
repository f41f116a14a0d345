//! Retention (issue 13): old bodies are dropped and old ignored deliveries deleted, in small
//! batches that each hold the writer for a few milliseconds, giving the disk back as they go
//! (`auto_vacuum = INCREMENTAL`).
//!
//! Never pruned: a delivery whose build has not finished, or whose build's deployment has not
//! finished (or not begun). Accepted deliveries keep their row forever (dedup keys, history);
//! only their body goes.

use std::time::Duration;

use rusqlite::{params, Connection};
use tokio_util::sync::CancellationToken;

use super::{Journal, JournalError};
use crate::clock::SharedClock;
use crate::config::JournalConfig;

/// Rows one batch touches at most.
const BATCH: i64 = 100;
/// Free pages one batch gives back to the file system at most.
const VACUUM_PAGES: i64 = 512;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// What a pruning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Deliveries whose body was dropped (the row stays).
    pub bodies_dropped: u64,
    /// Ignored, ping and duplicate deliveries deleted.
    pub deliveries_deleted: u64,
}

/// Delivery outcomes that are deleted whole after `keep_ignored_days`.
const DISPOSABLE: &str = "'ignored', 'pong', 'duplicate'";

/// A delivery is tied while one of its builds, or that build's deployment, is not finished.
const TIED: &str = "EXISTS (SELECT 1 FROM builds b WHERE b.delivery = d.id AND (
        b.state IN ('pending', 'build_started')
        OR (b.state = 'build_succeeded'
            AND NOT EXISTS (SELECT 1 FROM deployments dp WHERE dp.build_row = b.id))
        OR EXISTS (SELECT 1 FROM deployments dp WHERE dp.build_row = b.id
                   AND dp.state IN ('pending', 'deploying'))))";

/// Ignored, ping and duplicate deliveries received before ?1, at most ?2.
pub(crate) fn disposable_sql() -> String {
    format!(
        "SELECT d.id, d.body_id FROM deliveries d
         WHERE d.outcome IN ({DISPOSABLE}) AND d.received_ms < ?1 AND NOT {TIED}
         LIMIT ?2"
    )
}

/// Deliveries received before ?1 that still hold a body, oldest first, at most ?2.
pub(crate) fn old_bodies_sql() -> String {
    format!(
        "SELECT d.id, d.body_id FROM deliveries d
         WHERE d.body_id IS NOT NULL AND d.received_ms < ?1 AND NOT {TIED}
         ORDER BY d.received_ms LIMIT ?2"
    )
}

fn release_body(c: &Connection, body_id: Option<i64>) -> Result<(), JournalError> {
    let Some(body_id) = body_id else {
        return Ok(());
    };
    c.prepare_cached("UPDATE bodies SET refs = refs - 1 WHERE id = ?1")?
        .execute([body_id])?;
    c.prepare_cached("DELETE FROM bodies WHERE id = ?1 AND refs <= 0")?
        .execute([body_id])?;
    Ok(())
}

/// One batch: at most `BATCH` deliveries deleted and `BATCH` bodies dropped.
fn prune_batch(
    c: &Connection,
    now_ms: i64,
    settings: &JournalConfig,
) -> Result<Pruned, JournalError> {
    let mut pruned = Pruned::default();
    let ignored_before = now_ms - settings.keep_ignored_days as i64 * DAY_MS;
    let doomed: Vec<(i64, Option<i64>)> = c
        .prepare_cached(&disposable_sql())?
        .query_map(params![ignored_before, BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, body_id) in doomed {
        // A replay of it outlives it; the link goes with the original.
        c.prepare_cached("UPDATE deliveries SET replay_of = NULL WHERE replay_of = ?1")?
            .execute([id])?;
        c.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
            .execute([id])?;
        release_body(c, body_id)?;
        pruned.deliveries_deleted += 1;
    }
    let bodies_before = now_ms - settings.keep_bodies_days as i64 * DAY_MS;
    let old: Vec<(i64, Option<i64>)> = c
        .prepare_cached(&old_bodies_sql())?
        .query_map(params![bodies_before, BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, body_id) in old {
        c.prepare_cached("UPDATE deliveries SET body_id = NULL WHERE id = ?1")?
            .execute([id])?;
        release_body(c, body_id)?;
        pruned.bodies_dropped += 1;
    }
    if pruned != Pruned::default() {
        c.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
    }
    Ok(pruned)
}

impl Journal {
    /// Prunes what `settings` no longer keeps as of `now_ms`, batch by batch, each batch its
    /// own short turn on the writer so intake never waits behind a long delete.
    pub async fn prune(
        &self,
        now_ms: i64,
        settings: &JournalConfig,
    ) -> Result<Pruned, JournalError> {
        let mut total = Pruned::default();
        loop {
            let s = settings.clone();
            let batch = self.write(move |c| prune_batch(c, now_ms, &s)).await?;
            total.bodies_dropped += batch.bodies_dropped;
            total.deliveries_deleted += batch.deliveries_deleted;
            if batch.bodies_dropped < BATCH as u64 && batch.deliveries_deleted < BATCH as u64 {
                return Ok(total);
            }
            // Let deliveries waiting for the writer go first.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The background pruning worker.
pub struct Retention {
    pub journal: Journal,
    pub clock: SharedClock,
    pub settings: JournalConfig,
}

impl Retention {
    pub async fn run(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.prune_interval_secs);
        loop {
            let now = super::millis(self.clock.now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                pruned = self.journal.prune(now, &self.settings) => match pruned {
                    Ok(p) if p != Pruned::default() => tracing::info!(
                        bodies_dropped = p.bodies_dropped,
                        deliveries_deleted = p.deliveries_deleted,
                        "journal: pruned"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "journal: pruning failed; will try again"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
