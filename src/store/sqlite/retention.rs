//! Retention (issue 13): old bodies are dropped and old ignored deliveries deleted, in small
//! batches that each hold the writer for a few milliseconds, giving the disk back as they go
//! (`auto_vacuum = INCREMENTAL`).
//!
//! Never pruned: a delivery whose build has not finished, or whose build's deployment has not
//! finished (or not begun). Accepted deliveries keep their row forever (dedup keys, history);
//! only their body goes.

use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::{SqliteStore, StoreError};
use crate::config::JournalConfig;
use crate::store::retention::*;

/// Rows one batch selects at most.
const BATCH: i64 = 200;
/// How long one batch may hold the writer: half of it deleting rows, the rest giving free
/// pages back to the file system.
const BATCH_BUDGET: Duration = Duration::from_millis(4);
/// Free pages given back per step of a batch's vacuum (each step is timed).
const VACUUM_STEP: i64 = 64;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// One batch's work, and whether there is more to do.
struct Batch {
    pruned: Pruned,
    more: bool,
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

fn release_body(c: &Connection, body_id: Option<i64>) -> Result<(), StoreError> {
    let Some(body_id) = body_id else {
        return Ok(());
    };
    c.prepare_cached("UPDATE bodies SET refs = refs - 1 WHERE id = ?1")?
        .execute([body_id])?;
    c.prepare_cached("DELETE FROM bodies WHERE id = ?1 AND refs <= 0")?
        .execute([body_id])?;
    Ok(())
}

/// Gives up to `pages` free pages back to the file system. The pragma frees one page per
/// step, so it is stepped to the end (`execute_batch` would step it once: one page).
fn incremental_vacuum(c: &Connection, pages: i64) -> Result<(), StoreError> {
    let mut stmt = c.prepare_cached(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// One batch: deletes what is due and drops old bodies for half of `BATCH_BUDGET`, then gives
/// free pages back for the rest of it. `more` when it stopped on its budget or its row limit.
fn prune_batch(c: &Connection, now_ms: i64, settings: &JournalConfig) -> Result<Batch, StoreError> {
    let started = Instant::now();
    let rows_until = BATCH_BUDGET / 2;
    let mut pruned = Pruned::default();
    let mut more = false;
    let ignored_before = now_ms - settings.keep_ignored_days as i64 * DAY_MS;
    let doomed: Vec<(i64, Option<i64>)> = c
        .prepare_cached(&disposable_sql())?
        .query_map(params![ignored_before, BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    more |= doomed.len() as i64 == BATCH;
    // Notifications that are done (sent or given up) go with the ignored deliveries; pending
    // ones are never pruned.
    let notes = c
        .prepare_cached(
            "DELETE FROM notify_outbox WHERE id IN (SELECT id FROM notify_outbox
                 WHERE state != 'pending' AND done_ms < ?1 ORDER BY done_ms LIMIT ?2)",
        )?
        .execute(params![ignored_before, BATCH])?;
    more |= notes as i64 == BATCH;
    pruned.notifications_deleted += notes as u64;
    for (n, (id, body_id)) in doomed.into_iter().enumerate() {
        // At least one row per batch, so a slow selection still makes progress.
        if n > 0 && started.elapsed() >= rows_until {
            more = true;
            break;
        }
        // A replay of it outlives it; the link goes with the original.
        c.prepare_cached("UPDATE deliveries SET replay_of = NULL WHERE replay_of = ?1")?
            .execute([id])?;
        c.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
            .execute([id])?;
        release_body(c, body_id)?;
        pruned.deliveries_deleted += 1;
    }
    if !more || pruned.deliveries_deleted == 0 {
        let bodies_before = now_ms - settings.keep_bodies_days as i64 * DAY_MS;
        let old: Vec<(i64, Option<i64>)> = c
            .prepare_cached(&old_bodies_sql())?
            .query_map(params![bodies_before, BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        more |= old.len() as i64 == BATCH;
        for (n, (id, body_id)) in old.into_iter().enumerate() {
            if n > 0 && started.elapsed() >= rows_until {
                more = true;
                break;
            }
            c.prepare_cached("UPDATE deliveries SET body_id = NULL WHERE id = ?1")?
                .execute([id])?;
            release_body(c, body_id)?;
            pruned.bodies_dropped += 1;
        }
    }
    // Give free pages back (this batch's, or any left from before), a timed step at a time.
    let free_before: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let mut last_free = i64::MAX;
    loop {
        let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        // Done, or nothing more to give (a journal not in incremental vacuum mode).
        if free == 0 || free >= last_free {
            break;
        }
        last_free = free;
        if started.elapsed() >= BATCH_BUDGET {
            more = true;
            break;
        }
        incremental_vacuum(c, VACUUM_STEP)?;
    }
    let free_after: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    pruned.pages_reclaimed = (free_before - free_after).max(0) as u64;
    Ok(Batch { pruned, more })
}

impl SqliteStore {
    /// Prunes what `settings` no longer keeps as of `now_ms` and gives the space back, batch
    /// by batch: each batch is its own turn on the writer (a few ms), and after each the
    /// pruner waits as long as the batch took, so intake always has at least half the writer.
    pub async fn prune(&self, now_ms: i64, settings: &JournalConfig) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        loop {
            let s = settings.clone();
            let started = Instant::now();
            let batch = self.write(move |c| prune_batch(c, now_ms, &s)).await?;
            total.add(batch.pruned);
            if !batch.more {
                return Ok(total);
            }
            // Let deliveries waiting for the writer go first.
            tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))).await;
        }
    }
}
