//! The store: slipway's durable state, behind one typed interface with two engines.
//!
//! [`Store`] is what the rest of slipway calls; nothing outside this module knows which engine
//! runs. The engines:
//! - [`sqlite`]: an embedded SQLite database, `journal.db` in `state_dir` (the journal; the
//!   default). Group commit, synced before the answer, one process.
//! - [`dynamodb`]: a DynamoDB table (and an S3 bucket for large bodies), for teams that want
//!   no disk to keep (`[store] engine = "dynamodb"`, issue 25): [`Store::open_dynamodb`].
//!
//! The rows callers see (`Deployment`, `NewDelivery`, ...) and [`StoreError`] are defined here,
//! once, for both engines. `Store` is an enum rather than a trait object: each call is a
//! `match` on two arms, no boxed futures (async functions in a `dyn` trait need them), and the
//! compiler checks that both engines have every method.

pub mod copy;
mod deliveries;
mod deployments;
pub mod dynamodb;
mod events;
mod github;
mod leases;
mod notify;
mod promotions;
mod retention;
pub mod sqlite;
mod stats;

use std::path::Path;

pub use crate::config::store::{RawStoreConfig, StoreConfig};
pub use deliveries::*;
pub use deployments::*;
pub use events::RejectedEvent;
pub use github::*;
pub use leases::*;
pub use notify::*;
pub use promotions::*;
pub use retention::*;
/// How a body is stored and keyed, as the webhook path does it (for `bench_tool floor`).
pub use sqlite::body_codec::encode as encode_body;
pub use sqlite::schema::body_digest;
pub use stats::*;

use crate::config::JournalConfig;
use crate::readiness::BackupOutcome;

/// What a store call can fail with, whichever engine runs. Callers branch on `Busy` and
/// `Unavailable` (answer 503 with `Retry-After`: nothing was stored, try again),
/// `ServerRunning` and `PayloadNotKept`; the rest are reported as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (SQLite's error, or an answer of DynamoDB's none of the below covers).
    #[error("{engine}: {source}")]
    Engine {
        engine: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("journal: cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("journal: commit failed: {0}")]
    Commit(String),
    #[error("journal: the writer has stopped")]
    Closed,
    #[error("journal: {0}")]
    Invalid(String),
    /// The writer is behind (a slow or stalled disk): try again shortly. Nothing was stored.
    #[error("journal is busy: {0}")]
    Busy(String),
    /// The store cannot take the call now (DynamoDB throttled or unreachable after the SDK's
    /// retries, or a part of an engine that is not there): try again later. Nothing was stored.
    #[error("the store is unavailable: {reason}")]
    Unavailable { reason: String },
    /// Another process holds the journal (see [`sqlite::lock`]).
    #[error("journal: {0}")]
    Locked(String),
    /// The read-only CLI was refused: `serve` holds the journal.
    #[error("slipway is running on {host}; use SLIPWAY_SERVER (or --server) with its admin URL to ask it ({holder})")]
    ServerRunning { host: String, holder: String },
    /// The store slipway is configured for is not there (the DynamoDB table was never made).
    #[error("{0}: run `slipway provision` to make it")]
    Missing(String),
    /// A fenced write was refused: this replica no longer holds the lease it wrote under
    /// (another took the work over). Nothing was written.
    #[error("lease {0} is no longer held by this replica: nothing was written")]
    Fenced(String),
    /// Retention dropped this delivery's body; its metadata is still there.
    #[error("payload no longer kept (older than the journal's keep_bodies_days)")]
    PayloadNotKept,
}

impl StoreError {
    /// Whether the call may simply be tried again later (the webhook answers 503 with
    /// `Retry-After`): nothing was stored.
    pub fn retry_later(&self) -> Option<&str> {
        match self {
            StoreError::Busy(why) => Some(why),
            StoreError::Unavailable { reason } => Some(reason),
            _ => None,
        }
    }
}

/// slipway's state, in one of two engines (see the module's documentation).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    DynamoDb(dynamodb::DynamoStore),
}

impl Store {
    /// Opens (creating if needed) the SQLite journal in `state_dir`, with the default settings.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        sqlite::SqliteStore::open(state_dir).map(Store::Sqlite)
    }

    /// Opens (creating if needed) the SQLite journal in `state_dir`, refusing at once if
    /// another process holds it.
    pub fn open_with(state_dir: &Path, settings: &JournalConfig) -> Result<Store, StoreError> {
        sqlite::SqliteStore::open_with(state_dir, settings).map(Store::Sqlite)
    }

    /// Opens (creating if needed) the SQLite journal in `state_dir`, whose lock the caller
    /// holds (`serve` waits for it).
    pub fn open_locked(
        state_dir: &Path,
        lock: sqlite::lock::JournalLock,
        settings: &JournalConfig,
    ) -> Result<Store, StoreError> {
        sqlite::SqliteStore::open_locked(state_dir, lock, settings).map(Store::Sqlite)
    }

    /// Opens an existing SQLite journal for reading only (the CLI); refused while `serve`
    /// holds it.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        sqlite::SqliteStore::open_read_only(state_dir).map(Store::Sqlite)
    }

    /// The DynamoDB engine on `table` (bodies over 350 KB to `bodies_bucket` when given),
    /// through these clients. For `serve`: makes sure the table is there and writable by
    /// writing its `created_ms` item when it has none (a table CloudFormation made has none;
    /// delivery recovery asks GitHub for nothing older). A missing table is
    /// [`StoreError::Missing`]; DynamoDB unreachable or throttling, `Unavailable`.
    pub async fn open_dynamodb(
        dynamodb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        table: &str,
        bodies_bucket: Option<&str>,
        settings: &JournalConfig,
        now_ms: i64,
    ) -> Result<Store, StoreError> {
        let mut engine = dynamodb::DynamoStore::new(dynamodb, table, settings);
        if let Some(bucket) = bodies_bucket {
            engine = engine.with_bodies_bucket(s3, bucket);
        }
        engine.ensure_created_ms(now_ms).await?;
        Ok(Store::DynamoDb(engine))
    }

    /// Opens the configured store for the CLI's reads: the SQLite journal read-only (refused
    /// while `serve` holds it), or the DynamoDB table (read while `serve` runs: DynamoDB has
    /// no single writer to stand aside for), through clients made from `aws` (the SDK's
    /// configuration from the environment, as for `serve`).
    pub fn open_configured_read_only(
        config: &crate::config::Config,
        aws: &aws_config::SdkConfig,
    ) -> Result<Store, StoreError> {
        match &config.store {
            StoreConfig::Sqlite => Store::open_read_only(&config.state_dir),
            StoreConfig::DynamoDb {
                table,
                bodies_bucket,
            } => {
                let client = aws_sdk_dynamodb::Client::new(aws);
                let mut engine = dynamodb::DynamoStore::new(client, table, &config.journal);
                if let Some(bucket) = bodies_bucket {
                    engine = engine.with_bodies_bucket(aws_sdk_s3::Client::new(aws), bucket);
                }
                Ok(Store::DynamoDb(engine))
            }
        }
    }

    /// Why the store cannot take deliveries right now, if it cannot (for `/readyz` and intake).
    pub fn backpressure(&self) -> Option<String> {
        match self {
            Store::Sqlite(s) => s.backpressure(),
            Store::DynamoDb(d) => d.backpressure(),
        }
    }

    /// Deliveries (newest first, one line per build), filtered by app and by state (a build
    /// state, a deploy state or a delivery outcome), among the newest lines: the same for
    /// both engines, on top of [`Store::recent_deliveries`].
    pub async fn find_deliveries(
        &self,
        app: Option<String>,
        state: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = self
            .recent_deliveries(limit.saturating_mul(20).max(1000))
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| app.is_none() || r.app == app)
            .filter(|r| match &state {
                None => true,
                Some(s) => {
                    r.state.as_ref() == Some(s)
                        || r.deploy_state.as_ref() == Some(s)
                        || &r.outcome == s
                }
            })
            .take(limit as usize)
            .collect())
    }

    /// Stops taking writes after the ones already queued are stored.
    pub fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close(),
            Store::DynamoDb(d) => d.close(),
        }
    }
}

/// Declares the store's async methods once: each becomes a `Store` method that calls the
/// engine's method of the same name and signature.
macro_rules! interface {
    ($(
        $(#[$doc:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::DynamoDb(d) => d.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

interface! {
    // Intake and builds.
    /// Stores a delivery and what it asks for, deduplicated by (hook, GUID) and by push; the
    /// answer comes once it is durable.
    fn admit(&self, delivery: NewDelivery, verdict: Verdict) -> (i64, Admission);
    /// Stores many deliveries in order (a bulk import; `bench_tool`).
    fn admit_all(&self, deliveries: Vec<(NewDelivery, Verdict)>) -> Vec<(i64, Admission)>;
    /// Builds whose StartBuild is due at `now_ms`, oldest first.
    fn due_builds(&self, now_ms: i64, limit: u32) -> Vec<PendingBuild>;
    /// When the next pending build is due, if one is waiting.
    fn next_due_ms(&self) -> Option<i64>;
    /// Notes that StartBuild is about to be called for build `id` (before the call).
    fn build_start_requested(&self, id: i64, now_ms: i64) -> ();
    /// Records CodeBuild's answer to StartBuild.
    fn build_started(&self, id: i64, build_id: String, build_arn: Option<String>, now_ms: i64) -> ();
    /// Schedules another StartBuild attempt.
    fn build_retry_later(&self, id: i64, reason: String, next_attempt_ms: i64, now_ms: i64) -> ();
    /// StartBuild failed for good (a redelivery retries it).
    fn build_failed_to_start(&self, id: i64, reason: String, now_ms: i64) -> ();
    /// The newest deliveries, newest first.
    fn recent_deliveries(&self, limit: u32) -> Vec<DeliverySummary>;
    /// One delivery's lines, by row.
    fn delivery_summary(&self, row: i64) -> Vec<DeliverySummary>;
    /// A delivery by row (digits) or by GitHub delivery id (the newest with that id).
    fn delivery(&self, id: &str) -> Option<DeliveryRecord>;
    /// The commits of `app` whose SHA starts with `prefix`.
    fn shas_with_prefix(&self, app: &str, prefix: &str) -> Vec<String>;

    // Builds' results and deployments.
    /// Records a build's terminal state and, for a success, the deployment it leads to (once).
    fn complete_build(&self, done: BuildCompletion, now_ms: i64) -> CompletionOutcome;
    /// Records a deploy to make (an operator's, a rollback).
    fn request_deployment(&self, d: NewDeployment, now_ms: i64) -> i64;
    fn deployment(&self, id: i64) -> Option<Deployment>;
    /// Deployments not in a terminal state, oldest first.
    fn unfinished_deployments(&self) -> Vec<Deployment>;
    /// A deployment of the same service that ranks above `d` (newer wins).
    fn newer_deployment(&self, d: &Deployment) -> Option<Deployment>;
    fn update_deployment(&self, id: i64, u: DeploymentUpdate, now_ms: i64) -> ();
    fn recent_deployments(&self, app: Option<String>, limit: u32) -> Vec<Deployment>;
    /// Builds started before `before_ms` with no result yet (for the reconciler).
    fn builds_in_flight(&self, before_ms: i64) -> Vec<InFlightBuild>;
    fn last_deployed_task_definition(&self, service_key: &str) -> Option<String>;
    fn successful_deployments(&self, app: &str) -> Vec<Deployment>;
    fn deployments_of_delivery(&self, delivery_row: i64) -> Vec<Deployment>;
    fn builds_checked(&self, rows: Vec<i64>, now_ms: i64) -> ();
    fn build_unknown_to_codebuild(&self, row: i64, now_ms: i64) -> ();

    // Events, Slack, GitHub.
    /// Records a CodeBuild or ECS event that was not acted on (before the message is deleted).
    fn event_rejected(&self, event: RejectedEvent) -> ();
    fn rejected_events(&self, limit: u32) -> Vec<RejectedEvent>;
    fn run_token_of(&self, build_id: &str) -> Option<String>;
    /// True the first time a Slack request's signature is seen within `window_secs`.
    fn slack_first_time(&self, signature: Vec<u8>, now: i64, window_secs: i64) -> bool;
    fn created_ms(&self) -> Option<i64>;
    fn github_deployment(&self, deployment: i64) -> Option<GithubDeployment>;
    fn record_github_deployment(&self, deployment: i64, app: String, d: GithubDeployment, now_ms: i64) -> ();
    fn set_github_deployment_state(&self, deployment: i64, state: &'static str, now_ms: i64) -> ();
    fn replaced_github_deployments(&self, app: String, deployment: i64) -> Vec<GithubDeployment>;
    fn delivery_recovery_state(&self, hook_id: String, delivery_id: String) -> RecoveryState;
    fn record_recovery(&self, r: NewRecovery, now_ms: i64) -> ();
    fn recoveries(&self, limit: u32) -> Vec<RecoveryRecord>;
    /// Puts a GitHub update in the outbox; it stays until `github_posted`.
    fn queue_github_update(&self, event: String, now_ms: i64) -> i64;
    fn github_outbox(&self, limit: i64) -> Vec<OutboxEntry>;
    fn github_outbox_len(&self) -> i64;
    fn github_posted(&self, id: i64) -> ();
    fn github_post_failed(&self, id: i64) -> ();

    // The notification outbox (Slack, the generic webhook).
    /// Journals `event` once for each of `targets` (name, idempotency key), all or none;
    /// returns the new entries' ids in the same order.
    fn queue_notification(&self, targets: Vec<(String, String)>, event: String, now_ms: i64) -> Vec<i64>;
    /// The oldest notification still pending for `target`.
    fn next_notification(&self, target: &'static str) -> Option<PendingNotification>;
    fn pending_notifications(&self, target: &'static str) -> u64;
    /// Its target took it (2xx): it will not be sent again.
    fn notification_sent(&self, id: i64, now_ms: i64) -> ();
    /// An attempt failed and it will be tried again: the count and the reason are kept.
    fn notification_failed(&self, id: i64, error: String, now_ms: i64) -> ();
    /// Given up after a last failed attempt, for `reason`.
    fn notification_given_up(&self, id: i64, reason: String, now_ms: i64) -> ();
    /// The most recent notifications, newest first; only those in `state` when given.
    fn notifications(&self, state: Option<String>, limit: u32) -> Vec<NotificationRecord>;
    /// Each of `targets`' outbox as of `now_ms`.
    fn notify_outbox_stats(&self, targets: &'static [&'static str], now_ms: i64) -> Vec<NotifyOutboxStats>;

    // Views, retention, backups, readiness.
    fn pending_builds(&self, now_ms: i64) -> PendingBuilds;
    fn recent_runs(&self, limit: u32) -> Vec<Run>;
    /// Drops what `settings` no longer keeps as of `now_ms`.
    fn prune(&self, now_ms: i64, settings: &JournalConfig) -> Pruned;
    fn record_backup(&self, outcome: &BackupOutcome) -> ();
    fn last_backup(&self) -> Option<BackupOutcome>;
    /// A consistent copy of the state into `dest` (SQLite's `VACUUM INTO`).
    fn snapshot_into(&self, dest: std::path::PathBuf) -> sqlite::backup::BackupSummary;
    /// Proves the store can take a durable write (for `/readyz`).
    fn check_writable(&self, now_ms: i64) -> ();

    // Leases (issue 26): replicas dividing the work.
    /// Takes the lease `name` for `holder` until `now_ms + ttl_ms` if it is free, released or
    /// expired, with a fence one above the last; None while someone holds it.
    fn claim_lease(&self, name: String, holder: String, now_ms: i64, ttl_ms: i64) -> Option<Lease>;
    /// Extends a lease its holder still has (same fence); None when it was lost.
    fn renew_lease(&self, lease: Lease, now_ms: i64, ttl_ms: i64) -> Option<Lease>;
    /// Hands a lease back at once (expiry 0), if its fence is still the one given.
    fn release_lease(&self, lease: Lease) -> ();
    /// A lease as the store has it now (a strongly consistent read).
    fn lease(&self, name: String) -> Option<Lease>;
    /// Every lease the store has, released and expired ones too, by name.
    fn leases(&self) -> Vec<Lease>;
    // Promotions (issue 27).
    /// Records a promotion once per (app, source deployment, tag), superseding the app's
    /// older promotions still waiting, in one write.
    fn create_promotion(&self, p: NewPromotion, now_ms: i64) -> PromotionCreated;
    /// Approves (making its deployment), rejects or expires a promotion that still waits.
    fn decide_promotion(&self, id: i64, decision: PromotionDecision, now_ms: i64) -> PromotionDecided;
    fn promotion(&self, id: i64) -> Option<Promotion>;
    /// Promotions newest first, of one app when given.
    fn promotions(&self, app: Option<String>, limit: u32) -> Vec<Promotion>;
    /// Every promotion still waiting for its approval, oldest first.
    fn awaiting_promotions(&self) -> Vec<Promotion>;
    /// The promotion of `source_deployment` to `app` (not a tag's), if one was made.
    fn promotion_of_source(&self, app: String, source_deployment: i64) -> Option<Promotion>;
    /// The one promotion to `app` waiting for its approval, read consistently (an approval
    /// right after the promotion was made finds it).
    fn waiting_promotion(&self, app: String) -> Option<Promotion>;
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn millis(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats store milliseconds for people (RFC 3339, UTC).
pub fn format_millis(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(crate::clock::format)
        .unwrap_or_else(|_| ms.to_string())
}
