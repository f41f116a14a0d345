//! The DynamoDB engine's smaller records: Slack replay keys, refused events, the GitHub outbox
//! and the last backup's outcome (`docs/dynamodb.md`).

use aws_sdk_dynamodb::types::Select;

use super::item::{get_n, get_opt_s, get_s, key, n, s, Item};
use super::items::{self, due, look, outbox_key, recent};
use super::{sdk_error, DynamoStore};
use crate::readiness::BackupOutcome;
use crate::store::{OutboxEntry, PendingBuilds, RejectedEvent, StoreError};

/// The outbox's entries in the `due` index, oldest first.
const OUTBOX: &str = due::OUTBOX;
/// Refused events in the `recent` index, newest first.
const REJECTED: &str = recent::REJECTED;

impl DynamoStore {
    /// Records the Slack request signed with `signature` at `now` (Unix seconds). True the
    /// first time; false if it was seen within `window_secs`. One conditional write: an entry
    /// older than the window counts as unseen (TTL deletes it some time after `expires`).
    pub async fn slack_first_time(
        &self,
        signature: Vec<u8>,
        now: i64,
        window_secs: i64,
    ) -> Result<bool, StoreError> {
        let item = items::slack_item(&signature, now, window_secs);
        super::put_if(
            self.client()
                .put_item()
                .table_name(self.table())
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk) OR seen_at < :oldest")
                .expression_attribute_values(":oldest", n(now - window_secs)),
        )
        .await
    }

    async fn put_item(&self, item: Item) -> Result<(), StoreError> {
        self.client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB PutItem", e))?;
        Ok(())
    }

    /// Records a refused event. Written before the message is deleted.
    pub async fn event_rejected(&self, event: RejectedEvent) -> Result<(), StoreError> {
        let id = self.take_ids(1).await?;
        let item = items::rejected_item(id, &event);
        self.put_item(item).await
    }

    /// The newest refused events first.
    pub async fn rejected_events(&self, limit: u32) -> Result<Vec<RejectedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Page by page: a page holds at most 1 MB, fewer items than asked for then.
        let mut found = Vec::new();
        let mut start = None;
        while found.len() < limit as usize {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("recent")
                .key_condition_expression("list_pk = :kind")
                .expression_attribute_values(":kind", s(REJECTED))
                .scan_index_forward(false)
                .limit((limit as usize - found.len()).min(1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                found.push(RejectedEvent {
                    message_id: get_opt_s(item, "message_id")?,
                    build_id: get_opt_s(item, "build_id")?,
                    source: get_opt_s(item, "source")?,
                    account: get_opt_s(item, "account")?,
                    reason: get_s(item, "reason")?,
                    received_ms: get_n(item, "received_ms")?,
                });
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// The `SLIPWAY_RUN` token of the build stored under this CodeBuild id, if any.
    pub async fn run_token_of(&self, build_id: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("lookup")
            .key_condition_expression("look_pk = :id")
            .expression_attribute_values(":id", s(look::build_id(build_id)))
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        match out.items().first() {
            Some(item) => get_opt_s(item, "token"),
            None => Ok(None),
        }
    }

    /// Puts a GitHub update in the outbox; it stays there until `github_posted`.
    pub async fn queue_github_update(&self, event: String, now_ms: i64) -> Result<i64, StoreError> {
        let id = self.take_ids(1).await?;
        let item = items::outbox_item(&OutboxEntry {
            id,
            event,
            created_ms: now_ms,
            attempts: 0,
        });
        self.put_item(item).await?;
        Ok(id)
    }

    /// The oldest updates in the outbox, in order (a negative `limit`: all of them).
    pub async fn github_outbox(&self, limit: i64) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries = Vec::new();
        let mut start = None;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        while entries.len() < wanted {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("due")
                .key_condition_expression("due_pk = :outbox")
                .expression_attribute_values(":outbox", s(OUTBOX))
                .limit((wanted - entries.len()).min(1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                entries.push(OutboxEntry {
                    id: get_n(item, "id")?,
                    event: get_s(item, "event")?,
                    created_ms: get_n(item, "created_ms")?,
                    attempts: get_n(item, "attempts")?,
                });
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(entries)
    }

    /// How many updates wait in the outbox.
    pub async fn github_outbox_len(&self) -> Result<i64, StoreError> {
        self.count_due(OUTBOX.to_owned()).await
    }

    /// How many items the `due` index holds under `due_pk`.
    pub(super) async fn count_due(&self, due_pk: String) -> Result<i64, StoreError> {
        self.count_partition("due", "due_pk", &due_pk).await
    }

    /// How many items `index` holds under the partition `attribute = value` (a count of the
    /// index's keys, page by page).
    pub(super) async fn count_partition(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
    ) -> Result<i64, StoreError> {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name(index)
                .key_condition_expression("#part = :part")
                .expression_attribute_names("#part", attribute)
                .expression_attribute_values(":part", s(value))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            count += i64::from(out.count());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// The update was posted, or given up on: it leaves the outbox.
    pub async fn github_posted(&self, id: i64) -> Result<(), StoreError> {
        self.client()
            .delete_item()
            .table_name(self.table())
            .set_key(Some(outbox_key(id)))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB DeleteItem", e))?;
        Ok(())
    }

    /// Posting the update failed for now; it stays first in line.
    pub async fn github_post_failed(&self, id: i64) -> Result<(), StoreError> {
        // Posted meanwhile (the condition fails): nothing to count.
        super::update_if(
            self.client()
                .update_item()
                .table_name(self.table())
                .set_key(Some(outbox_key(id)))
                .update_expression("ADD attempts :one")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":one", n(1)),
        )
        .await?;
        Ok(())
    }

    /// Keeps the last backup's outcome (`GET /api/backups`).
    pub async fn record_backup(&self, outcome: &BackupOutcome) -> Result<(), StoreError> {
        let mut item = key("meta", "last_backup");
        item.insert(
            "value".into(),
            s(serde_json::to_string(outcome).expect("an outcome serializes")),
        );
        self.put_item(item).await
    }

    /// The last backup's outcome, if one was recorded.
    pub async fn last_backup(&self) -> Result<Option<BackupOutcome>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key("meta", "last_backup")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        Ok(match out.item() {
            Some(item) => get_opt_s(item, "value")?.and_then(|v| serde_json::from_str(&v).ok()),
            None => None,
        })
    }

    /// How many builds wait for StartBuild, and for how long the oldest has (the pending
    /// builds' part of the `due` index, page by page).
    pub async fn pending_builds(&self, now_ms: i64) -> Result<PendingBuilds, StoreError> {
        let mut count = 0u64;
        let mut oldest: Option<i64> = None;
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("due")
                .key_condition_expression("due_pk = :build")
                .expression_attribute_values(":build", s(due::BUILD))
                .projection_expression("created_ms")
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                count += 1;
                let created = get_n(item, "created_ms")?;
                oldest = Some(oldest.map_or(created, |o| o.min(created)));
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(PendingBuilds {
            count,
            oldest_age_ms: oldest.map_or(0, |t| (now_ms - t).max(0)),
        })
    }
}
