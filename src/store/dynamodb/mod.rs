//! The DynamoDB engine (issue 25): slipway's state in one DynamoDB table, large bodies in S3.
//! The table's design is in `docs/dynamodb.md`.
//!
//! Not complete in this version: the methods listed in [`pending`] answer
//! [`StoreError::Unavailable`] naming themselves, and `serve` refuses `engine = "dynamodb"`
//! ([`NOT_COMPLETE`]) until none is left, so no deployment can run on half an engine.

mod pending;

use super::StoreError;

/// Why `serve` refuses `[store] engine = "dynamodb"` in this version.
pub const NOT_COMPLETE: &str = "the DynamoDB engine is not complete in this version: \
     deliveries, builds, deployments, the GitHub outbox and retention are not all stored in \
     DynamoDB yet; use engine = \"sqlite\" (the default)";

/// The DynamoDB engine's handle (cheap to clone).
#[derive(Clone, Debug)]
pub struct DynamoStore {
    table: String,
}

impl DynamoStore {
    /// The table this engine keeps its state in.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// DynamoDB queues nothing in slipway: a write is sent as it comes, so there is no queue to
    /// be full (throttling is DynamoDB's answer to a write, see [`StoreError::Unavailable`]).
    pub fn backpressure(&self) -> Option<String> {
        None
    }

    /// Nothing to stop: every write was answered before its call returned.
    pub fn close(&self) {}
}

/// The error a method of the engine that is not there yet answers.
fn not_complete(method: &str) -> StoreError {
    StoreError::Unavailable {
        reason: format!(
            "the DynamoDB engine is not complete in this version: {method} is not implemented"
        ),
    }
}
