//! GitHub records (issue 11): the GitHub deployment behind each slipway deployment, the
//! deliveries slipway asked GitHub to redeliver, and the outbox of GitHub updates.

use serde::{Deserialize, Serialize};

/// A GitHub deployment slipway created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubDeployment {
    /// slipway's deployment id.
    pub deployment: i64,
    pub repository: String,
    pub github_id: i64,
    pub state: String,
}

/// What the journal knows of a delivery GitHub lists as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryState {
    /// slipway received it: nothing to recover.
    Held,
    /// Never seen, never asked for.
    Unknown,
    /// slipway asked GitHub for it (`requested`: GitHub accepted the request).
    Asked {
        /// The failed attempt slipway last asked about.
        attempt_id: i64,
        requested: bool,
        requests: i64,
    },
}

/// A redelivery slipway asked for, or tried to.
#[derive(Debug, Clone)]
pub struct NewRecovery {
    pub hook_id: String,
    pub delivery_id: String,
    pub attempt_id: i64,
    pub event: String,
    pub status_code: Option<i64>,
    pub delivered_ms: i64,
    pub actor: String,
    /// `requested` or `failed`.
    pub outcome: String,
    pub reason: Option<String>,
}

/// A recovery as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryRecord {
    pub id: i64,
    pub hook_id: String,
    pub delivery: String,
    pub attempt_id: i64,
    pub event: String,
    pub status_code: Option<i64>,
    pub delivered_at: String,
    pub actor: String,
    pub outcome: String,
    pub reason: Option<String>,
    /// How many times slipway asked for it.
    pub requests: i64,
    pub requested_at: String,
}

/// A GitHub update waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    /// The update, as JSON (the GitHub sink's own format).
    pub event: String,
    pub created_ms: i64,
    pub attempts: i64,
}
