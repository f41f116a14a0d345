//! The DynamoDB side of `slipway store copy` (`docs/dynamodb.md`, "Moving over"): a fresh
//! table is checked, marked (`meta/copy`) before the first item, filled with `BatchWriteItem`
//! (25 items a request, unprocessed items sent again), and handed its id counter last; then
//! each kind is counted through its index partition, never a Scan.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};

use super::item::{get_opt_n, get_opt_s, get_s, key, n, s, Item};
use super::items::{self, due, recent, BuildRow, DeliveryRow, NotificationRow, RecoveryRow};
use super::{bad_request, sdk_error, Drift, DynamoStore};
use crate::store::{trigger, Deployment, GithubDeployment, OutboxEntry, RejectedEvent, StoreError};

/// Most items one `BatchWriteItem` takes.
const BATCH: usize = 25;

/// The `meta` item a copy writes before anything else.
fn copy_marker() -> Item {
    key("meta", "copy")
}

/// Why a table cannot take a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyRefused {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The partitions of the `recent` index a fresh table has nothing in.
const RECENT_KINDS: [&str; 6] = [
    recent::DELIVERY,
    recent::BUILD,
    recent::DEPLOYMENT,
    recent::REJECTED,
    recent::RECOVERY,
    recent::NOTIFY,
];

impl DynamoStore {
    /// Refuses a table that is missing, that the engine cannot use, or that holds anything but
    /// what `slipway provision` puts in a new table: a copy is written without conditions,
    /// into a fresh table only.
    pub async fn check_copy_target(&self, provision_hint: &str) -> Result<(), CopyRefused> {
        let table = self.table();
        let Some(drift) = self.table_drift().await? else {
            return Err(CopyRefused::Refused(format!(
                "the DynamoDB table {table} does not exist: make it with `{provision_hint}`, \
                 then copy"
            )));
        };
        if let Some(bad) = drift.iter().find(|d| !d.is_repairable()) {
            return Err(CopyRefused::Refused(format!(
                "the DynamoDB table {table} is not one slipway can use ({bad})"
            )));
        }
        // Without an index the copied items would not be found (and not counted).
        if let Some(missing) = drift.iter().find(|d| matches!(d, Drift::MissingIndex(_))) {
            return Err(CopyRefused::Refused(format!(
                "the DynamoDB table {table} is not ready ({missing}): `{provision_hint}` \
                 repairs it"
            )));
        }
        if let Some(marker) = self.get(copy_marker()).await? {
            let from = get_opt_s(&marker, "source")?.unwrap_or_default();
            return Err(CopyRefused::Refused(
                match get_opt_n(&marker, "finished_ms")? {
                    Some(_) => format!(
                        "the DynamoDB table {table} already holds a copy of {from}; a copy \
                         goes into a fresh table only"
                    ),
                    None => format!(
                        "a copy of {from} into the DynamoDB table {table} was started and did \
                         not finish; a copy cannot be resumed: delete the table, run \
                         `{provision_hint}` and copy again"
                    ),
                },
            ));
        }
        let mut holds = Vec::new();
        if let Some(counter) = self.get(key("counter", "ids")).await? {
            holds.push(format!(
                "ids handed out up to {}",
                get_opt_n(&counter, "n")?.unwrap_or(0)
            ));
        }
        for kind in RECENT_KINDS {
            let out = self
                .client()
                .query()
                .table_name(table)
                .index_name("recent")
                .key_condition_expression("list_pk = :kind")
                .expression_attribute_values(":kind", s(kind))
                .limit(1)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            if !out.items().is_empty() {
                holds.push(format!("{kind} items"));
            }
        }
        if self.count_due(due::OUTBOX.to_owned()).await? > 0 {
            holds.push("GitHub outbox entries".to_owned());
        }
        if holds.is_empty() {
            return Ok(());
        }
        Err(CopyRefused::Refused(format!(
            "the DynamoDB table {table} is not empty (it holds {}): a copy goes into a fresh \
             table only (delete it and run `{provision_hint}`, or name another table)",
            holds.join(", ")
        )))
    }

    /// One item by its key, read consistently (also promotions').
    pub(super) async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        Ok(out.item().cloned())
    }

    /// Marks the table as being copied into, before any other item: a copy that stops half
    /// way leaves a table the next attempt refuses. False if another copy marked it first.
    pub async fn begin_copy(&self, source: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut marker = copy_marker();
        marker.insert("source".into(), s(source));
        marker.insert("started_ms".into(), n(now_ms));
        super::put_if(
            self.client()
                .put_item()
                .table_name(self.table())
                .set_item(Some(marker))
                .condition_expression("attribute_not_exists(pk)"),
        )
        .await
    }

    /// Ends a copy: the id counter (above every copied id: the next id the engine hands out is
    /// new to every kind) and the journal's creation time, then the marker says it finished.
    pub async fn finish_copy(
        &self,
        last_id: i64,
        created_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut writer = BatchWriter::new(self);
        let mut counter = key("counter", "ids");
        counter.insert("n".into(), n(last_id));
        writer.put(counter).await?;
        if let Some(created) = created_ms {
            let mut item = key("meta", "created_ms");
            item.insert("value".into(), n(created));
            writer.put(item).await?;
        }
        writer.flush().await?;
        self.client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(copy_marker()))
            .update_expression("SET finished_ms = :now")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB UpdateItem", e))?;
        Ok(())
    }

    async fn count_recent(&self, list_pk: &str) -> Result<i64, StoreError> {
        self.count_partition("recent", "list_pk", list_pk).await
    }

    /// How many records of each kind the table holds, counted through the index partition
    /// that lists them (`Select COUNT`): deliveries, kept bodies, builds, deployments, GitHub
    /// outbox entries, notifications, refused events, GitHub deployments (of `apps`),
    /// recoveries; and of the Slack `signatures`, how many it holds (in no index: read by key).
    pub async fn copied_counts(
        &self,
        apps: &[String],
        signatures: &[Vec<u8>],
    ) -> Result<[i64; 11], StoreError> {
        let mut github = 0;
        for app in apps {
            github += self.count_recent(&recent::github(app)).await?;
        }
        let keys = signatures.iter().map(|sig| items::slack_key(sig)).collect();
        Ok([
            self.count_recent(recent::DELIVERY).await?,
            self.count_due(due::BODIES.to_owned()).await?,
            self.count_recent(recent::BUILD).await?,
            self.count_recent(recent::DEPLOYMENT).await?,
            self.count_due(due::OUTBOX.to_owned()).await?,
            self.count_recent(recent::NOTIFY).await?,
            self.count_recent(recent::REJECTED).await?,
            github,
            self.count_recent(recent::RECOVERY).await?,
            self.batch_get(keys).await?.len() as i64,
            self.count_recent(recent::PROMOTION).await?,
        ])
    }
}

/// Puts items with `BatchWriteItem`, [`BATCH`] a request, sending again what DynamoDB leaves
/// unprocessed (with a growing pause, as the API reference asks). An item whose key is already
/// waiting replaces it: one request may not name a key twice.
pub struct BatchWriter<'a> {
    store: &'a DynamoStore,
    waiting: Vec<Item>,
    keys: HashMap<(String, String), usize>,
    /// Items written so far.
    pub written: u64,
}

impl<'a> BatchWriter<'a> {
    pub fn new(store: &'a DynamoStore) -> BatchWriter<'a> {
        BatchWriter {
            store,
            waiting: Vec::with_capacity(BATCH),
            keys: HashMap::new(),
            written: 0,
        }
    }

    pub async fn put(&mut self, item: Item) -> Result<(), StoreError> {
        let id = (get_s(&item, "pk")?, get_s(&item, "sk")?);
        if let Some(&at) = self.keys.get(&id) {
            self.waiting[at] = item;
            return Ok(());
        }
        self.keys.insert(id, self.waiting.len());
        self.waiting.push(item);
        if self.waiting.len() == BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what waits.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let count = self.waiting.len() as u64;
        let mut requests = self
            .waiting
            .drain(..)
            .map(|item| {
                Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .map_err(bad_request)?,
                    )
                    .build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.keys.clear();
        let table = self.store.table().to_owned();
        let mut pause = Duration::from_millis(50);
        loop {
            let out = self
                .store
                .client()
                .batch_write_item()
                .request_items(&table, requests)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB BatchWriteItem", e))?;
            requests = out
                .unprocessed_items()
                .and_then(|u| u.get(&table))
                .cloned()
                .unwrap_or_default();
            if requests.is_empty() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        self.written += count;
        Ok(())
    }
}

/// A delivery's body as the journal stores it.
pub struct BodyRow {
    pub encoding: String,
    pub stored: Vec<u8>,
    /// SHA-256 of the body as received (the bodies bucket's key).
    pub digest: Vec<u8>,
}

/// One record of the journal, in its current state.
pub enum Record {
    /// A delivery and (still kept) its body.
    Delivery(Box<DeliveryRow>, Option<BodyRow>),
    /// A build, and whether it is its push's build (the one the push key names).
    Build(Box<BuildRow>, bool),
    /// A deployment with its push's time and the commit that push followed.
    Deployment(Box<Deployment>, Option<i64>, Option<String>),
    Outbox(OutboxEntry),
    Notification(NotificationRow),
    Rejected(i64, RejectedEvent),
    /// A Slack signature and when it was seen (Unix seconds).
    Slack(Vec<u8>, i64),
    /// A GitHub deployment of an app, created and updated then.
    Github(String, GithubDeployment, i64, i64),
    Recovery(RecoveryRow),
    /// A promotion (issue 27).
    Promotion(Box<crate::store::Promotion>),
}

impl BatchWriter<'_> {
    /// Puts the items of `record`, built by the engine's own builders ([`items`]), with those
    /// SQLite keeps in indexes instead of rows: a build's delivery key, push key (when it is
    /// its push's build) and commit; a deployment's commit and a foreign build's marker. A
    /// body over 350 KB goes to the bodies bucket first, as intake does. `slack_window_secs`:
    /// how long a Slack signature is remembered.
    pub async fn record(
        &mut self,
        record: Record,
        slack_window_secs: i64,
    ) -> Result<(), StoreError> {
        let days = self.store.inner.settings.keep_ignored_days;
        match record {
            Record::Delivery(d, body) => {
                self.put(items::delivery_item(&d, days)).await?;
                if let Some(body) = body {
                    let stored = self.store.stored_body(&body.digest, body.stored).await?;
                    let expires = items::delivery_expiry(&d.outcome, d.received_ms, days);
                    self.put(items::body_item(d.row, &body.encoding, stored, expires))
                        .await?;
                }
                Ok(())
            }
            Record::Build(b, push_build) => {
                self.put(items::build_item(&b)).await?;
                self.put(items::delivery_key_item(&b.dedup_key, &b.app, b.id))
                    .await?;
                if push_build {
                    let push = items::PushOf {
                        app: &b.app,
                        sha: &b.sha,
                        before: b.before_sha.as_deref(),
                        tag: b.tag.as_deref(),
                    };
                    self.put(items::push_key_item(&push, b.id)).await?;
                }
                self.put(items::commit_item(&b.app, &b.sha)).await
            }
            Record::Deployment(d, pushed_at, before_sha) => {
                self.put(items::deployment_item(&d, pushed_at, before_sha.as_deref()))
                    .await?;
                if d.trigger == trigger::FOREIGN_BUILD {
                    if let Some(build_id) = &d.build_id {
                        self.put(items::foreign_marker_item(build_id, d.id)).await?;
                    }
                }
                self.put(items::commit_item(&d.app, &d.sha)).await
            }
            Record::Outbox(e) => self.put(items::outbox_item(&e)).await,
            Record::Notification(r) => self.put(items::notification_item(&r, days)).await,
            Record::Rejected(id, e) => self.put(items::rejected_item(id, &e)).await,
            Record::Slack(signature, seen_at) => {
                self.put(items::slack_item(&signature, seen_at, slack_window_secs))
                    .await
            }
            Record::Github(app, g, created_ms, updated_ms) => {
                self.put(items::github_item(&app, &g, created_ms, updated_ms))
                    .await
            }
            Record::Recovery(r) => self.put(items::recovery_item(&r)).await,
            Record::Promotion(p) => {
                for item in super::promotions::promotion_items(&p) {
                    self.put(item).await?;
                }
                Ok(())
            }
        }
    }
}
