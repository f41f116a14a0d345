//! Deliveries (what reached the webhook) and the builds they asked for: the rows callers see.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::ids::{AppName, CommitSha, DeliveryId, HookId};

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Github,
    Replay,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Replay => "replay",
        }
    }
}

/// An authentic delivery, as received.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: DeliveryId,
    pub hook_id: HookId,
    pub event: String,
    pub source: Source,
    pub actor: Option<String>,
    pub replay_of: Option<i64>,
    pub received_ms: i64,
    pub content_type: String,
    /// The headers that matter, as a JSON object.
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
}

impl NewDelivery {
    /// What a redelivery of this delivery repeats: (hook id, delivery id).
    pub fn dedup_key(&self) -> String {
        format!("{}/{}", self.hook_id, self.delivery_id)
    }
}

/// What slipway decided from the payload alone, before looking at the journal.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pong,
    Ignored(String),
    Rejected(String),
    Build(Vec<BuildRequest>),
    /// Some of the apps a push reached build; the others' paths or skip markers rule them out.
    BuildSome {
        builds: Vec<BuildRequest>,
        skipped: Vec<SkippedApp>,
    },
}

impl Verdict {
    /// The apps this verdict leaves out, and why.
    pub fn skipped(&self) -> &[SkippedApp] {
        match self {
            Verdict::BuildSome { skipped, .. } => skipped,
            _ => &[],
        }
    }
}

/// An app a push reached but does not build (monorepo paths or a skip marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedApp {
    pub app: AppName,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub app: AppName,
    pub sha: CommitSha,
    pub project: String,
    pub image_tag: String,
    pub service_key: String,
    /// The push's `before`, when it had one.
    pub before: Option<String>,
    /// When GitHub received the push (Unix seconds); None: when slipway received it.
    pub pushed_at: Option<i64>,
    /// The tag a tag push released (`refs/tags/<tag>`, issue 27); None for a branch push.
    pub tag: Option<String>,
}

/// What the journal made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Pong,
    Ignored(String),
    Rejected(String),
    /// Every build it asks for was already started.
    Duplicate,
    Accepted(Vec<AcceptedBuild>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedBuild {
    pub app: AppName,
    pub sha: CommitSha,
    pub build_row: i64,
    /// A redelivery of a delivery whose build had not started yet.
    pub retry: bool,
}

/// Build states, as stored.
pub mod build_state {
    pub const PENDING: &str = "pending";
    pub const STARTED: &str = "build_started";
    pub const SUCCEEDED: &str = "build_succeeded";
    pub const BUILD_FAILED: &str = "build_failed";
    /// StartBuild failed for good; a redelivery retries it.
    pub const FAILED: &str = "failed";
}

/// A build waiting for StartBuild.
#[derive(Debug, Clone)]
pub struct PendingBuild {
    pub id: i64,
    pub delivery_id: String,
    pub app: String,
    pub sha: String,
    pub project: String,
    pub image_tag: String,
    pub token: String,
    pub attempts: u32,
    pub start_requested: bool,
    /// The tag a tag push released (the build gets it as `SLIPWAY_TAG`).
    pub tag: Option<String>,
}

/// One line of `slipway deliveries`: a delivery and, if it asked for one, a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverySummary {
    pub row: i64,
    pub received_at: String,
    pub delivery: String,
    pub event: String,
    pub source: String,
    pub outcome: String,
    pub app: Option<String>,
    pub sha: Option<String>,
    pub state: Option<String>,
    pub build_id: Option<String>,
    pub attempts: Option<u32>,
    pub reason: Option<String>,
    pub deployment: Option<i64>,
    pub deploy_state: Option<String>,
}

/// A delivery as stored, with its payload.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub row: i64,
    pub delivery: String,
    pub hook_id: String,
    pub event: String,
    pub source: String,
    pub actor: Option<String>,
    pub replay_of: Option<i64>,
    pub received_at: String,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub outcome: String,
    pub reason: Option<String>,
    /// The raw body; None once retention dropped it (see [`DeliveryRecord::payload`]).
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

impl DeliveryRecord {
    /// The body as received, or `PayloadNotKept` once retention dropped it.
    pub fn payload(&self) -> Result<&[u8], StoreError> {
        self.body.as_deref().ok_or(StoreError::PayloadNotKept)
    }
}

/// The run token of the build `app` of the delivery with `dedup_key` (`SLIPWAY_RUN`): the same
/// in both engines, so a build started by one is found by the other after `store copy`.
pub(crate) fn token_for(dedup_key: &str, app: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{dedup_key}\n{app}").as_bytes());
    hex::encode(&digest[..16])
}
