//! The DynamoDB engine (issue 25): slipway's state in one DynamoDB table, large bodies in S3.
//! The table's design is in `docs/dynamodb.md`; `table.rs` creates it.
//!
//! `serve` opens it with [`crate::store::Store::open_dynamodb`] when `[store] engine =
//! "dynamodb"`; `slipway provision` makes the table and the bucket.

mod builds;
mod copy;
mod deliveries;
mod deployments;
mod github;
mod item;
pub(crate) mod items;
mod leases;
mod listings;
mod notify;
mod promotions;
mod records;
mod retention;
mod table;

pub(crate) use copy::{BatchWriter, BodyRow, CopyRefused, Record};
pub(crate) use items::{BuildRow, DeliveryRow, NotificationRow, RecoveryRow};
pub use table::{Drift, EXPIRES, INDEXES};

use std::sync::Arc;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::StoreError;
use crate::config::JournalConfig;

/// Where bodies over 350 KB go in the bodies bucket (`bodies/<sha256 hex>`); the bucket's
/// lifecycle rule (`slipway provision`) expires them under this prefix.
pub const BODIES_PREFIX: &str = "bodies/";

/// The DynamoDB engine's handle (cheap to clone).
#[derive(Clone)]
pub struct DynamoStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// `[journal]`'s retention, applied as DynamoDB TTL (`expires`).
    settings: JournalConfig,
    /// Where bodies over 350 KB go: an S3 client and the bucket (None: such a body is refused).
    bodies: Option<(aws_sdk_s3::Client, String)>,
    /// Ids this process has reserved from the table's counter and not handed out yet.
    ids: Arc<tokio::sync::Mutex<IdBlock>>,
}

/// How many ids one `UpdateItem` on the counter reserves: a delivery that makes no build
/// costs its transaction alone, and the counter one write in [`ID_BLOCK`] ids.
pub const ID_BLOCK: i64 = 32;

/// The ids `[next, end)`, reserved by this process (empty at start).
#[derive(Debug, Default)]
struct IdBlock {
    next: i64,
    end: i64,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.inner.table)
            .finish()
    }
}

impl DynamoStore {
    /// The engine on `table`, through `client` (its retry policy is the SDK's, set once where
    /// the client is built). The table must exist ([`DynamoStore::create_table`]).
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        settings: &JournalConfig,
    ) -> DynamoStore {
        DynamoStore {
            inner: Arc::new(Inner {
                client,
                table: table.into(),
                settings: settings.clone(),
                bodies: None,
                ids: Arc::default(),
            }),
        }
    }

    /// Keeps bodies over 350 KB in `bucket` (`[store] bodies_bucket`), one object per distinct
    /// body under `bodies/<sha256 hex>`.
    pub fn with_bodies_bucket(self, s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        DynamoStore {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                table: self.inner.table.clone(),
                settings: self.inner.settings.clone(),
                bodies: Some((s3, bucket.into())),
                ids: self.inner.ids.clone(),
            }),
        }
    }

    /// The table this engine keeps its state in.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.inner.client
    }

    /// DynamoDB queues nothing in slipway: a write is sent as it comes, so there is no queue to
    /// be full (throttling is DynamoDB's answer to a write, see [`StoreError::Unavailable`]).
    pub fn backpressure(&self) -> Option<String> {
        None
    }

    /// Nothing to stop: every write was answered before its call returned.
    pub fn close(&self) {}

    /// Writes the table's `created_ms` item unless it has one (one conditional `PutItem`):
    /// proves the table is there and takes writes, and gives a table made by something other
    /// than [`DynamoStore::create_table`] (CloudFormation) its start, which delivery recovery
    /// asks GitHub for nothing older than.
    pub async fn ensure_created_ms(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut created = item::key("meta", "created_ms");
        created.insert("value".into(), item::n(now_ms));
        match self
            .client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(created))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(match sdk_error("DynamoDB PutItem", e) {
                StoreError::Missing(_) => StoreError::Missing(format!(
                    "the DynamoDB table {} does not exist in this account and region",
                    self.table()
                )),
                other => other,
            }),
        }
    }
}

/// A call the engine cannot make as configured (a body too large for an item and no bucket
/// for it): nothing is stored, and the reason says what to configure.
fn not_configured(what: &str) -> StoreError {
    StoreError::Unavailable {
        reason: what.to_owned(),
    }
}

/// Error codes after which the same request may succeed later: DynamoDB (or S3) throttled it or had
/// a fault of its own (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>).
const RETRY_LATER_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    // A write to an item another writer's transaction holds ("OK to retry? Yes"); the SDK does
    // not retry it itself.
    "TransactionConflictException",
    // S3's, for the bodies bucket
    // (<https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html>).
    "SlowDown",
    "InternalError",
];

/// Sorts an SDK error of `operation` (`"DynamoDB PutItem"`) that the SDK's own retries did not
/// overcome: throttling, DynamoDB's faults, an endpoint that cannot be reached or a timeout
/// are `Unavailable` (the caller may try again later; nothing was written); the rest are
/// engine errors, said the way every AWS error is (`aws_error`).
fn sdk_error<E>(operation: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use crate::aws_error::Cause;
    let cause = crate::aws_error::cause(operation, &err);
    if let Cause::Service {
        code: Some(code), ..
    } = &cause
    {
        // The table (or an index) is not there: no retry helps; `provision` makes it.
        if code == "ResourceNotFoundException" {
            return StoreError::Missing(format!("{operation}: {cause}"));
        }
    }
    let retry = match &cause {
        // A 5xx is the service's own fault whatever its code (or none, as behind a proxy).
        Cause::Service { code, status, .. } => {
            *status >= 500
                || code
                    .as_deref()
                    .is_some_and(|c| RETRY_LATER_CODES.contains(&c))
        }
        Cause::CouldNotConnect(_) | Cause::TimedOut => true,
        _ => false,
    };
    if retry {
        StoreError::Unavailable {
            reason: format!("{operation}: {cause}"),
        }
    } else {
        StoreError::Engine {
            engine: "DynamoDB",
            source: format!("{operation}: {cause}").into(),
        }
    }
}

impl DynamoStore {
    /// Runs `query` page by page, following `LastEvaluatedKey` (a page holds at most 1 MB, so
    /// fewer items than asked for is not the end), and returns its items: at most `limit`, each
    /// page asking only for what is still wanted, or all of them (None).
    async fn query_items(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: Option<usize>,
    ) -> Result<Vec<item::Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut page = query.clone().set_exclusive_start_key(start);
            if let Some(limit) = limit {
                if items.len() >= limit {
                    break;
                }
                page = page.limit((limit - items.len()).min(1000) as i32);
            }
            let out = page
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            items.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        if let Some(limit) = limit {
            items.truncate(limit);
        }
        Ok(items)
    }
}

/// Sends a conditional `UpdateItem`: false when its condition failed (nothing was changed),
/// which every caller takes as "already done" or "not there".
async fn update_if(
    update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
) -> Result<bool, StoreError> {
    match update.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_error("DynamoDB UpdateItem", e)),
    }
}

/// Sends a conditional `PutItem`: false when its condition failed (nothing was written).
async fn put_if(
    put: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
) -> Result<bool, StoreError> {
    match put.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_error("DynamoDB PutItem", e)),
    }
}

/// An item that does not read as the engine wrote it.
fn malformed(what: impl std::fmt::Display) -> StoreError {
    StoreError::Engine {
        engine: "DynamoDB",
        source: format!("an item is not as slipway wrote it: {what}").into(),
    }
}

/// A request the SDK's builder refused (a required field missing: a bug in slipway).
fn bad_request(what: impl std::fmt::Display) -> StoreError {
    StoreError::Engine {
        engine: "DynamoDB",
        source: format!("cannot make the request: {what}").into(),
    }
}
