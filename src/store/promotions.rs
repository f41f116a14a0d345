//! Promotions (issue 27): an image one app's deploy ran, offered to the app promoted from it,
//! waiting for its approval (`awaiting_approval`) and then deployed, or rejected, superseded
//! by a newer one, or expired.

use serde::{Deserialize, Serialize};

/// Promotion states, as stored.
pub mod promotion_state {
    pub const AWAITING_APPROVAL: &str = "awaiting_approval";
    /// Approved (by a person, or `auto`): its deployment was made in the same write.
    pub const APPROVED: &str = "approved";
    pub const REJECTED: &str = "rejected";
    /// A newer promotion to the same app came while this one waited.
    pub const SUPERSEDED: &str = "superseded";
    /// Nobody decided within `approval_timeout_hours`.
    pub const EXPIRED: &str = "expired";
}

/// One promotion: what is offered to `app`, from which deploy of which app, and what became
/// of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Promotion {
    pub id: i64,
    /// The app the image is promoted to.
    pub app: String,
    /// The app whose deploy ran the image, and that deploy.
    pub source_app: String,
    pub source_deployment: i64,
    pub sha: String,
    /// The image's digest (`sha256:<64 hex>`), as the source deploy ran it.
    pub image_digest: String,
    /// The source's image tag (the new revision's `Version` tag).
    pub image_tag: String,
    /// The tag whose push released it (a tag promotion), if any.
    pub tag: Option<String>,
    pub service_key: String,
    pub state: String,
    pub reason: Option<String>,
    /// Who approved or rejected it (an ops API token's name, `slack:<user id>`, or `auto`),
    /// and when.
    pub decided_by: Option<String>,
    pub decided_ms: Option<i64>,
    /// When it expires if nobody decides.
    pub expires_ms: i64,
    /// The deployment its approval made.
    pub deployment: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A promotion to make.
#[derive(Debug, Clone)]
pub struct NewPromotion {
    pub app: String,
    pub source_app: String,
    pub source_deployment: i64,
    pub sha: String,
    pub image_digest: String,
    pub image_tag: String,
    pub tag: Option<String>,
    pub service_key: String,
    pub expires_ms: i64,
}

/// What the store made of a new promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionCreated {
    /// Made now; the older promotions to the same app that were still waiting are superseded
    /// by it (in the same write).
    New {
        promotion: Promotion,
        superseded: Vec<Promotion>,
    },
    /// That deploy (and tag) was promoted to that app before: nothing changed.
    Exists(Promotion),
}

/// What a person (or `auto`, or the clock) decided.
#[derive(Debug, Clone)]
pub enum PromotionDecision {
    /// Deploy it: `deployment` is recorded (linked to the promotion) in the same write.
    Approve {
        by: String,
        deployment: Box<super::NewDeployment>,
    },
    Reject {
        by: String,
        reason: String,
    },
    /// Nobody decided in time.
    Expire {
        reason: String,
    },
}

/// What became of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionDecided {
    /// Recorded; the promotion as it is now (`deployment` set for an approval).
    Done(Promotion),
    /// The promotion no longer waits (decided, superseded or expired before): nothing changed.
    NotWaiting(Promotion),
    NotFound,
}
