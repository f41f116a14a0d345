//! The notification outbox in SQLite (`notify_outbox`; the rows are `store::notify`'s).

use rusqlite::{params, OptionalExtension};

use super::{SqliteStore, StoreError};
use crate::store::format_millis;
use crate::store::notify::*;

impl SqliteStore {
    /// Journals `event` once for each of `targets` (name, idempotency key), in one transaction;
    /// returns the new rows' ids in the same order.
    pub async fn queue_notification(
        &self,
        targets: Vec<(String, String)>,
        event: String,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.write(move |c| {
            let mut ids = Vec::with_capacity(targets.len());
            let mut insert = c.prepare_cached(
                "INSERT INTO notify_outbox (target, event, idempotency_key, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (target, key) in &targets {
                insert.execute(params![target, event, key, now_ms])?;
                ids.push(c.last_insert_rowid());
            }
            Ok(ids)
        })
        .await
    }

    /// The oldest notification still pending for `target`.
    pub async fn next_notification(
        &self,
        target: &'static str,
    ) -> Result<Option<PendingNotification>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, event, idempotency_key, created_ms, attempts FROM notify_outbox
                 WHERE target = ?1 AND state = 'pending' ORDER BY id LIMIT 1",
            )?
            .query_row([target], |r| {
                Ok(PendingNotification {
                    id: r.get(0)?,
                    event: r.get(1)?,
                    idempotency_key: r.get(2)?,
                    created_ms: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })
            .optional()?)
        })
        .await
    }

    /// How many notifications wait for `target`.
    pub async fn pending_notifications(&self, target: &'static str) -> Result<u64, StoreError> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM notify_outbox WHERE target = ?1 AND state = 'pending'",
                [target],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    /// Its target took it (2xx): it will not be sent again.
    pub async fn notification_sent(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE notify_outbox SET state = 'sent', attempts = attempts + 1,
                     last_attempt_ms = ?2, done_ms = ?2
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// An attempt failed and it will be tried again: the count and the reason are kept.
    pub async fn notification_failed(
        &self,
        id: i64,
        error: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE notify_outbox SET attempts = attempts + 1, last_attempt_ms = ?2,
                     last_error = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now_ms, error],
            )?;
            Ok(())
        })
        .await
    }

    /// Given up after a last failed attempt, for `reason`.
    pub async fn notification_given_up(
        &self,
        id: i64,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE notify_outbox SET state = 'given_up', attempts = attempts + 1,
                     last_attempt_ms = ?2, last_error = ?3, done_ms = ?2
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now_ms, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// The most recent notifications, newest first; only those in `state` when given.
    pub async fn notifications(
        &self,
        state: Option<String>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, target, state, event, idempotency_key, attempts, created_ms,
                        last_attempt_ms, last_error, done_ms
                 FROM notify_outbox WHERE ?1 IS NULL OR state = ?1
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![state, limit], |r| {
                    let event: String = r.get(3)?;
                    Ok(NotificationRecord {
                        id: r.get(0)?,
                        target: r.get(1)?,
                        state: r.get(2)?,
                        notification: serde_json::from_str(&event)
                            .unwrap_or(serde_json::Value::String(event)),
                        idempotency_key: r.get(4)?,
                        attempts: r.get(5)?,
                        created_at: format_millis(r.get(6)?),
                        last_attempt_at: r.get::<_, Option<i64>>(7)?.map(format_millis),
                        last_error: r.get(8)?,
                        done_at: r.get::<_, Option<i64>>(9)?.map(format_millis),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Each of `targets`' outbox as of `now_ms`.
    pub async fn notify_outbox_stats(
        &self,
        targets: &'static [&'static str],
        now_ms: i64,
    ) -> Result<Vec<NotifyOutboxStats>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT COUNT(*), MIN(created_ms) FROM notify_outbox
                 WHERE target = ?1 AND state = 'pending'",
            )?;
            let mut out = Vec::with_capacity(targets.len());
            for target in targets {
                let (pending, oldest): (i64, Option<i64>) =
                    stmt.query_row([target], |r| Ok((r.get(0)?, r.get(1)?)))?;
                out.push(NotifyOutboxStats {
                    target: (*target).to_owned(),
                    pending: pending as u64,
                    oldest_pending_age_ms: oldest.map_or(0, |o| (now_ms - o).max(0)),
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_is_pending_per_target_until_sent_or_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteStore::open(dir.path()).unwrap();
        let ids = j
            .queue_notification(
                vec![
                    ("slack".into(), "k1".into()),
                    ("webhook".into(), "k2".into()),
                ],
                r#"{"kind":"deploy_failed","app":"web"}"#.into(),
                1_000,
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
        let slack = j.next_notification("slack").await.unwrap().unwrap();
        assert_eq!((slack.id, slack.attempts), (ids[0], 0));
        assert_eq!(slack.idempotency_key, "k1");

        j.notification_failed(ids[0], "HTTP 503".into(), 2_000)
            .await
            .unwrap();
        let again = j.next_notification("slack").await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (ids[0], 1));
        j.notification_sent(ids[0], 3_000).await.unwrap();
        assert!(j.next_notification("slack").await.unwrap().is_none());
        // Marking it again changes nothing: a sent row is never pending again.
        j.notification_given_up(ids[0], "late".into(), 4_000)
            .await
            .unwrap();

        j.notification_given_up(ids[1], "too old: HTTP 500".into(), 5_000)
            .await
            .unwrap();
        let rows = j.notifications(None, 10).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].target, "webhook");
        assert_eq!(rows[0].state, notify_state::GIVEN_UP);
        assert_eq!(rows[0].last_error.as_deref(), Some("too old: HTTP 500"));
        assert_eq!(rows[1].state, notify_state::SENT);
        assert_eq!(rows[1].attempts, 2);
        assert_eq!(rows[1].last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(rows[1].notification["app"], "web");
        let given_up = j
            .notifications(Some(notify_state::GIVEN_UP.into()), 10)
            .await
            .unwrap();
        assert_eq!(given_up.len(), 1);
        assert_eq!(given_up[0].id, ids[1]);
    }

    #[tokio::test]
    async fn stats_count_what_waits_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteStore::open(dir.path()).unwrap();
        j.queue_notification(vec![("slack".into(), "a".into())], "{}".into(), 1_000)
            .await
            .unwrap();
        j.queue_notification(vec![("slack".into(), "b".into())], "{}".into(), 4_000)
            .await
            .unwrap();
        let stats = j
            .notify_outbox_stats(&["slack", "webhook"], 10_000)
            .await
            .unwrap();
        assert_eq!(stats[0].target, "slack");
        assert_eq!(
            (stats[0].pending, stats[0].oldest_pending_age_ms),
            (2, 9_000)
        );
        assert_eq!((stats[1].pending, stats[1].oldest_pending_age_ms), (0, 0));
        assert_eq!(j.pending_notifications("slack").await.unwrap(), 2);
    }
}
