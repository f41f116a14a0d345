//! Deploy notifications: what happened ([`Notification`]) and the one door every target is
//! reached through ([`Target`]).
//!
//! Callers hand a notification to [`Notifier::send`], which gives it to every target and
//! returns: notifications never block, fail or slow the deploy path. The notifier names no
//! target; whoever wires slipway together (`http::run`) gives it the list: the journaled
//! outboxes of Slack and the generic webhook ([`Endpoints::start`], in `outbox`), and GitHub's
//! statuses and deployments (`github::GithubSink`). Each target keeps its own journaled outbox,
//! posts it in order, retries with backoff and gives up only by age.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod message;
mod outbox;

pub use outbox::Endpoints;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BuildFailed,
    DeployStarted,
    DeploySucceeded,
    DeployFailed,
    RolledBack,
    Superseded,
    /// slipway's looks at a deploy's rollout keep failing: it decides nothing until it can see
    /// the service again (sent once per deploy).
    ServiceUnseen,
    /// A deploy of a service with ECS's own strategy (blue/green, linear, canary) is past its
    /// deadline and slipway cannot identify ECS's service deployment to roll back: it sends
    /// nothing and keeps watching (sent once per deploy).
    PastDeadline,
    /// A promotion waits for one of its app's `approvers` (issue 27).
    AwaitingApproval,
    /// An approver rejected a promotion: nothing is deployed.
    PromotionRejected,
    /// Nobody decided on a promotion within `approval_timeout_hours`: nothing is deployed.
    PromotionExpired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub kind: EventKind,
    pub app: String,
    /// The full commit SHA; messages show the 7-character short form.
    pub sha: String,
    pub image: Option<String>,
    pub reason: Option<String>,
    /// CodeBuild log deep link, when there is one.
    pub log_link: Option<String>,
    /// slipway's deployment id.
    pub deployment: Option<i64>,
    pub build_id: Option<String>,
    /// The tag whose push this deploys (`tags`, issue 27); null for a branch push. (Default:
    /// notifications journaled before tags existed have none.)
    #[serde(default)]
    pub tag: Option<String>,
    /// The promotion this is about or deploys (issue 27): its source app and deploy and its
    /// approval. (Default: none.)
    #[serde(default)]
    pub promotion: Option<PromotionNote>,
}

/// What a notification says of a promotion: where the image comes from and who decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromotionNote {
    pub id: i64,
    pub source_app: String,
    pub source_deployment: i64,
    /// `awaiting_approval`, `approved`, `rejected`, `superseded` or `expired`.
    pub approval: String,
    pub decided_by: Option<String>,
    /// When it was decided (RFC 3339, UTC).
    pub decided_at: Option<String>,
    /// When it expires if nobody decides (RFC 3339, UTC).
    pub expires_at: String,
}

impl PromotionNote {
    pub fn of(p: &crate::store::Promotion) -> PromotionNote {
        PromotionNote {
            id: p.id,
            source_app: p.source_app.clone(),
            source_deployment: p.source_deployment,
            approval: p.state.clone(),
            decided_by: p.decided_by.clone(),
            decided_at: p.decided_ms.map(crate::store::format_millis),
            expires_at: crate::store::format_millis(p.expires_ms),
        }
    }
}

/// The `action_id`s of a waiting promotion's Slack buttons (issue 27), which slipway's
/// interactivity endpoint answers.
pub const APPROVE_ACTION: &str = "slipway_approve";
pub const REJECT_ACTION: &str = "slipway_reject";

/// What [`Target::flush`] returns.
pub type Flushing<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A destination for notifications. Implementations only take the notification in (into their
/// journaled outbox) and deliver it in the background.
pub trait Target: Send + Sync + 'static {
    /// Its name in logs (`slack`, `webhook`, `github`).
    fn name(&self) -> &'static str;

    /// Takes `n` for delivery and returns at once: never blocks, never fails.
    fn notify(&self, n: &Notification);

    /// Waits until everything taken has been delivered or given up on, at most `timeout`
    /// (graceful shutdown, tests).
    fn flush(&self, timeout: Duration) -> Flushing<'_>;
}

/// Gives every notification to every target. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    targets: Arc<Vec<Arc<dyn Target>>>,
}

impl Notifier {
    pub fn new(targets: Vec<Arc<dyn Target>>) -> Notifier {
        Notifier {
            targets: Arc::new(targets),
        }
    }

    /// A notifier that discards everything.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Gives `n` to every target and returns at once.
    pub fn send(&self, n: Notification) {
        for target in self.targets.iter() {
            target.notify(&n);
        }
    }

    /// Waits until every target has delivered or given up on what it took, each at most
    /// `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        for target in self.targets.iter() {
            target.flush(timeout).await;
        }
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.targets.iter().map(|t| t.name()).collect();
        f.debug_struct("Notifier").field("targets", &names).finish()
    }
}

/// Waits until a background queue's `pending` count is 0, at most `timeout`; then logs `what`
/// with how many are still outstanding.
pub(crate) async fn drained(pending: &watch::Sender<usize>, timeout: Duration, what: &str) {
    let mut rx = pending.subscribe();
    if tokio::time::timeout(timeout, rx.wait_for(|p| *p == 0))
        .await
        .is_err()
    {
        tracing::warn!(outstanding = *pending.borrow(), "{what} after {timeout:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A target that records what it was given.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(EventKind, String)>>);

    impl Target for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn notify(&self, n: &Notification) {
            self.0.lock().unwrap().push((n.kind, n.app.clone()));
        }
        fn flush(&self, _: Duration) -> Flushing<'_> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn every_target_gets_every_notification_in_order() {
        let a = Arc::new(Recording::default());
        let b = Arc::new(Recording::default());
        let notifier = Notifier::new(vec![a.clone(), b.clone()]);
        for (kind, app) in [
            (EventKind::DeployStarted, "web"),
            (EventKind::DeployFailed, "api"),
        ] {
            notifier.send(Notification {
                kind,
                app: app.into(),
                sha: "1f2e3d4".into(),
                image: None,
                reason: None,
                log_link: None,
                deployment: None,
                build_id: None,
                tag: None,
                promotion: None,
            });
        }
        notifier.flush(Duration::from_secs(1)).await;
        let expected = vec![
            (EventKind::DeployStarted, "web".to_owned()),
            (EventKind::DeployFailed, "api".to_owned()),
        ];
        assert_eq!(*a.0.lock().unwrap(), expected);
        assert_eq!(*b.0.lock().unwrap(), expected);
        assert_eq!(
            format!("{notifier:?}"),
            r#"Notifier { targets: ["recording", "recording"] }"#
        );
        // Nothing to give to: nothing happens.
        Notifier::disabled().send(Notification {
            kind: EventKind::Superseded,
            app: "web".into(),
            sha: "1f2e3d4".into(),
            image: None,
            reason: None,
            log_link: None,
            deployment: None,
            build_id: None,
            tag: None,
            promotion: None,
        });
    }
}
