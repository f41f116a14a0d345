//! The notification outbox (issue 24): each Slack or generic-webhook notification, one row per
//! target, journaled before anything is sent. A row is `pending` until its target answered 2xx
//! (`sent`) or it was given up (`given_up`); the rows that are done stay for the ops API and
//! the status page until retention prunes them. The store knows targets only by name and
//! notifications only as JSON. The rows, for both engines.

use serde::{Deserialize, Serialize};

/// `notify_outbox.state`.
pub mod notify_state {
    pub const PENDING: &str = "pending";
    pub const SENT: &str = "sent";
    pub const GIVEN_UP: &str = "given_up";
    pub const ALL: &[&str] = &[PENDING, SENT, GIVEN_UP];
}

/// A notification waiting for its target, as the target's worker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotification {
    pub id: i64,
    /// The notification, as JSON (notify's own format).
    pub event: String,
    /// Sent with every attempt, so a receiver that knows it can drop a repeat.
    pub idempotency_key: String,
    pub created_ms: i64,
    /// Failed attempts so far (journaled, so a restart does not start the backoff over).
    pub attempts: i64,
}

/// A notification as the ops API and the status page show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotificationRecord {
    pub id: i64,
    pub target: String,
    /// pending | sent | given_up
    pub state: String,
    /// The notification (kind, app, sha, reason, ...).
    pub notification: serde_json::Value,
    pub idempotency_key: String,
    pub attempts: i64,
    pub created_at: String,
    pub last_attempt_at: Option<String>,
    /// Why the last attempt failed, or why it was given up.
    pub last_error: Option<String>,
    /// When it was sent or given up.
    pub done_at: Option<String>,
}

/// One target's outbox, for `/metrics` (plain numbers: the store knows nothing of metrics).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifyOutboxStats {
    pub target: String,
    pub pending: u64,
    /// Age of the oldest pending notification; 0 when none waits.
    pub oldest_pending_age_ms: i64,
}
