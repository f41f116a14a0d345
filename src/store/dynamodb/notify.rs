//! The notification outbox in DynamoDB (`docs/dynamodb.md`): one item per notification and
//! target, `notify#<id>`. While it is pending it sits in the `due` index under
//! `notify#<target>` (in id order: the target's line); every entry is in the `recent` index
//! under `notify`, newest first, for the ops API. An entry that is done (sent or given up)
//! leaves the `due` index and expires (TTL) after `[journal] keep_ignored_days`, as the SQLite
//! engine prunes it.

use aws_sdk_dynamodb::types::TransactWriteItem;

use super::item::{get_n, get_opt_n, get_opt_s, get_s, n, s, Item};
use super::items::{self, due, notify_key, recent, NotificationRow};
use super::table::EXPIRES;
use super::{sdk_error, DynamoStore};
use crate::store::format_millis;
use crate::store::notify::*;
use crate::store::StoreError;

/// A target's line in the `due` index.
fn line(target: &str) -> String {
    due::notify(target)
}

fn pending_from(item: &Item) -> Result<PendingNotification, StoreError> {
    Ok(PendingNotification {
        id: get_n(item, "id")?,
        event: get_s(item, "event")?,
        idempotency_key: get_s(item, "idempotency_key")?,
        created_ms: get_n(item, "created_ms")?,
        attempts: get_n(item, "attempts")?,
    })
}

fn record_from(item: &Item) -> Result<NotificationRecord, StoreError> {
    let event = get_s(item, "event")?;
    Ok(NotificationRecord {
        id: get_n(item, "id")?,
        target: get_s(item, "target")?,
        state: get_s(item, "state")?,
        notification: serde_json::from_str(&event).unwrap_or(serde_json::Value::String(event)),
        idempotency_key: get_s(item, "idempotency_key")?,
        attempts: get_n(item, "attempts")?,
        created_at: format_millis(get_n(item, "created_ms")?),
        last_attempt_at: get_opt_n(item, "last_attempt_ms")?.map(format_millis),
        last_error: get_opt_s(item, "last_error")?,
        done_at: get_opt_n(item, "done_ms")?.map(format_millis),
    })
}

impl DynamoStore {
    /// Journals `event` once for each of `targets` (name, idempotency key) in one transaction
    /// (all or none); the new entries' ids in the same order.
    pub async fn queue_notification(
        &self,
        targets: Vec<(String, String)>,
        event: String,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.take_ids(targets.len() as i64).await?;
        let mut ids = Vec::with_capacity(targets.len());
        let mut writes: Vec<TransactWriteItem> = Vec::with_capacity(targets.len());
        for (i, (target, idempotency_key)) in targets.into_iter().enumerate() {
            let id = first + i as i64;
            let item = items::notification_item(
                &NotificationRow {
                    id,
                    target,
                    event: event.clone(),
                    idempotency_key,
                    state: notify_state::PENDING.to_owned(),
                    created_ms: now_ms,
                    attempts: 0,
                    last_attempt_ms: None,
                    last_error: None,
                    done_ms: None,
                },
                self.inner.settings.keep_ignored_days,
            );
            writes.push(self.put(item, Some("attribute_not_exists(pk)"), None)?);
            ids.push(id);
        }
        if self.transact(writes).await? {
            Ok(ids)
        } else {
            // The ids are fresh from the counter: an existing item under one is a broken table.
            Err(StoreError::Invalid(format!(
                "notification ids {first}.. are already taken in the table"
            )))
        }
    }

    /// The oldest notification still pending for `target`.
    pub async fn next_notification(
        &self,
        target: &'static str,
    ) -> Result<Option<PendingNotification>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("due")
            .key_condition_expression("due_pk = :line")
            .expression_attribute_values(":line", s(line(target)))
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        out.items().first().map(pending_from).transpose()
    }

    /// How many notifications wait for `target` (a count of its line).
    pub async fn pending_notifications(&self, target: &'static str) -> Result<u64, StoreError> {
        Ok(self.count_due(line(target)).await?.max(0) as u64)
    }

    /// Ends a pending entry (`sent` or `given_up`): it leaves its target's line and expires
    /// after `keep_ignored_days`. An entry no longer pending is left as it is.
    async fn finish_notification(
        &self,
        id: i64,
        state: &'static str,
        error: Option<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let expires = items::notification_expiry(now_ms, self.inner.settings.keep_ignored_days);
        let mut update = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(notify_key(id)))
            .condition_expression("#st = :pending")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":pending", s(notify_state::PENDING))
            .expression_attribute_values(":state", s(state))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires", n(expires));
        let mut set =
            format!("#st = :state, last_attempt_ms = :now, done_ms = :now, {EXPIRES} = :expires");
        if let Some(error) = error {
            set.push_str(", last_error = :error");
            update = update.expression_attribute_values(":error", s(error));
        }
        // Done already (or never there: the condition fails): nothing changes, as in the
        // SQLite engine.
        super::update_if(
            update.update_expression(format!("SET {set} ADD attempts :one REMOVE due_pk, due_sk")),
        )
        .await?;
        Ok(())
    }

    /// Its target took it (2xx): it will not be sent again.
    pub async fn notification_sent(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.finish_notification(id, notify_state::SENT, None, now_ms)
            .await
    }

    /// Given up after a last failed attempt, for `reason`.
    pub async fn notification_given_up(
        &self,
        id: i64,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.finish_notification(id, notify_state::GIVEN_UP, Some(reason), now_ms)
            .await
    }

    /// An attempt failed and it will be tried again: the count and the reason are kept.
    pub async fn notification_failed(
        &self,
        id: i64,
        error: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // No longer pending (the condition fails): nothing to count.
        super::update_if(
            self.client()
                .update_item()
                .table_name(self.table())
                .set_key(Some(notify_key(id)))
                .condition_expression("#st = :pending")
                .update_expression(
                    "SET last_attempt_ms = :now, last_error = :error ADD attempts :one",
                )
                .expression_attribute_names("#st", "state")
                .expression_attribute_values(":pending", s(notify_state::PENDING))
                .expression_attribute_values(":now", n(now_ms))
                .expression_attribute_values(":error", s(error))
                .expression_attribute_values(":one", n(1)),
        )
        .await?;
        Ok(())
    }

    /// The most recent notifications, newest first; only those in `state` when given (a
    /// filter within the `notify` partition of `recent`, page by page until `limit`).
    pub async fn notifications(
        &self,
        state: Option<String>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        while found.len() < limit as usize {
            let mut query = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("recent")
                .key_condition_expression("list_pk = :notify")
                .expression_attribute_values(":notify", s(recent::NOTIFY))
                .scan_index_forward(false)
                .set_exclusive_start_key(start);
            if let Some(state) = &state {
                query = query
                    .filter_expression("#st = :state")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_values(":state", s(state.clone()));
            } else {
                query = query.limit(limit.min(1000) as i32);
            }
            let out = query
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                if found.len() < limit as usize {
                    found.push(record_from(item)?);
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// Each of `targets`' outbox as of `now_ms`: how many wait, and the oldest one's age (the
    /// first of its line: ids increase with time).
    pub async fn notify_outbox_stats(
        &self,
        targets: &'static [&'static str],
        now_ms: i64,
    ) -> Result<Vec<NotifyOutboxStats>, StoreError> {
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            let pending = self.pending_notifications(target).await?;
            let oldest = match self.next_notification(target).await? {
                Some(p) => (now_ms - p.created_ms).max(0),
                None => 0,
            };
            out.push(NotifyOutboxStats {
                target: (*target).to_owned(),
                pending,
                oldest_pending_age_ms: oldest,
            });
        }
        Ok(out)
    }
}
