//! CodeBuild events slipway refused to believe (see `events::trust`).

/// An SQS message that was not acted on, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedEvent {
    pub message_id: Option<String>,
    pub build_id: Option<String>,
    pub source: Option<String>,
    pub account: Option<String>,
    pub reason: String,
    pub received_ms: i64,
}
