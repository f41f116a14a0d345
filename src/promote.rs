//! Promotion (issue 27): an app with `promote_from` never builds. When its source app's deploy
//! succeeds, the image that deploy ran, by digest, is offered to it as a promotion; once
//! approved (by one of its `approvers`, or at once with `approval = "auto"`) the promotion
//! becomes a deployment of the app, run by the same deploy engine as every other deploy
//! (preflight, rollout watch, rollback, the service's lock, newer wins).
//!
//! Work comes from the journal: the [`Promoter`] looks at each source app's newest successful
//! deploy whenever a deploy succeeds ([`WakeOnSuccess`], a notification target) and every 30 s,
//! so a restart between a source's success and its promotion loses nothing; a promotion is
//! made once per source deploy (the store's key), so looking again never makes two.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecr::types::ImageIdentifier;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::promote::{Approval, PromoteConfig};
use crate::config::{AppConfig, Config};
use crate::image::ImageRef;
use crate::notify::{EventKind, Flushing, Notification, Notifier, PromotionNote, Target};
use crate::store::{
    deploy_state, millis, trigger, Deployment, NewDeployment, NewPromotion, Promotion,
    PromotionCreated, PromotionDecided, PromotionDecision, Store, StoreError,
};
use crate::webhook::Push;

/// How often the journal is looked at without a wake (a lost wake, expiries).
const LOOK_EVERY: Duration = Duration::from_secs(30);
/// A source app's newest deploys looked at for its newest success.
const SOURCE_WINDOW: u32 = 20;

/// Why an approval or a rejection was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("unknown app {0}")]
    UnknownApp(String),
    #[error("{0}")]
    NotPromoted(String),
    /// The caller is not one of the app's `approvers`: nothing changed.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NothingWaiting(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Journal(#[from] StoreError),
}

/// Who approves or rejects.
#[derive(Debug, Clone)]
pub enum Approver {
    /// An ops API token, by its name (`SLIPWAY_OPS_TOKENS`' label).
    Ops(String),
    /// A Slack user, by id (the slash command).
    Slack(String),
}

impl Approver {
    /// The name `approvers` lists.
    fn listed_as(&self) -> &str {
        match self {
            Approver::Ops(name) | Approver::Slack(name) => name,
        }
    }

    /// As journaled and shown: the token's name, or `slack:<user id>`.
    pub fn journaled(&self) -> String {
        match self {
            Approver::Ops(name) => name.clone(),
            Approver::Slack(id) => format!("slack:{id}"),
        }
    }
}

/// What a tag push releases to one promoted app: the source's deploy of the tagged commit
/// whose image is promoted, or why nothing is.
#[derive(Debug, Clone)]
pub struct TagRelease {
    pub app: String,
    pub tag: String,
    pub source: Option<Deployment>,
    pub reason: String,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

/// Wakes the [`Promoter`] when a deploy succeeds: one of the notifier's targets, so the deploy
/// engine needs to know nothing of promotions.
pub struct WakeOnSuccess(pub Arc<Notify>);

impl Target for WakeOnSuccess {
    fn name(&self) -> &'static str {
        "promote"
    }

    fn notify(&self, n: &Notification) {
        if n.kind == EventKind::DeploySucceeded {
            self.0.notify_one();
        }
    }

    fn flush(&self, _: Duration) -> Flushing<'_> {
        Box::pin(async {})
    }
}

pub struct Promoter {
    pub journal: Store,
    /// Each app's ECS and ECR clients (a source app may be in another account).
    pub accounts: crate::accounts::Accounts,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    pub notifier: Notifier,
    /// Wakes the deploy worker once an approval made a deployment.
    pub deploy_wake: Arc<Notify>,
    /// Wakes this worker ([`WakeOnSuccess`]).
    pub wake: Arc<Notify>,
    /// Why an app's newest source deploy could not be promoted, as last logged.
    pub told: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Promoter {
    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Makes the promotions the journal calls for, expires the ones past their time, until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.config.apps.iter().any(|a| a.promote.is_some()) {
            return;
        }
        loop {
            self.look().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    /// One pass: new promotions from the sources' newest successes, then the waiting ones
    /// (expired, or to approve at once).
    pub async fn look(&self) {
        for app in &self.config.apps {
            let Some(promote) = &app.promote else {
                continue;
            };
            let span = tracing::info_span!("promote", app = %app.name, from = %promote.from);
            let _enter = span.enter();
            let outcome = self.promote_newest(app, promote).await.err();
            // Said once per app and reason, not every pass: a digest that cannot be known
            // (the tag pushed again) stays so until the source deploys again.
            let mut told = self.told.lock().expect("told");
            match outcome {
                Some(e) if told.get(app.name.as_str()) != Some(&e) => {
                    tracing::warn!(error = %e, "cannot promote the source's newest deploy yet");
                    told.insert(app.name.to_string(), e);
                }
                Some(e) => tracing::debug!(error = %e, "still cannot promote it"),
                None => {
                    told.remove(app.name.as_str());
                }
            }
        }
        match self.journal.awaiting_promotions().await {
            Ok(waiting) => {
                for p in waiting {
                    self.tend(p).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the promotions waiting"),
        }
    }

    /// Offers `app` the image of its source's newest successful deploy, once. An app with
    /// `tags` is promoted only by its tags ([`Promoter::tag_release`]).
    async fn promote_newest(&self, app: &AppConfig, promote: &PromoteConfig) -> Result<(), String> {
        let Some(source) = self.config.app(promote.from.as_str()) else {
            return Ok(());
        };
        if app.tags.is_some() {
            return Ok(());
        }
        let recent = self
            .journal
            .recent_deployments(Some(source.name.to_string()), SOURCE_WINDOW)
            .await
            .map_err(|e| e.to_string())?;
        let Some(d) = recent.iter().find(|d| d.state == deploy_state::SUCCEEDED) else {
            return Ok(());
        };
        // An operator's rollback puts an older image back: not something to promote.
        if d.trigger == trigger::ROLLBACK {
            return Ok(());
        }
        if self
            .journal
            .promotion_of_source(app.name.to_string(), d.id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        let digest = self.ran_digest(source, d).await?;
        self.offer(app, promote, d, digest, None).await
    }

    /// A tag push matching promoted apps' `tags` (issue 27): for each, the source app's
    /// successful deploy of the tagged commit, whose image is promoted by digest without a
    /// build; or why there is nothing to promote. Store reads only: the promotion itself is
    /// made by [`Promoter::promote_tag`] (it asks ECS and ECR which digest ran).
    pub async fn tag_release(&self, push: &Push) -> Vec<TagRelease> {
        let Some(tag) = push.tag() else {
            return Vec::new();
        };
        if push.deleted || push.after.is_zero() || !push.tag_commit_known {
            return Vec::new();
        }
        let mut out = Vec::new();
        for app in &self.config.apps {
            let Some(promote) = &app.promote else {
                continue;
            };
            if !app.repository.eq_ignore_ascii_case(&push.repository)
                || !app.deploys_ref(&push.git_ref)
            {
                continue;
            }
            let sha = push.after.as_str();
            let found = match self
                .journal
                .successful_deployments(promote.from.as_str())
                .await
            {
                Ok(list) => list.into_iter().find(|d| d.sha == sha),
                Err(e) => {
                    out.push(TagRelease {
                        app: app.name.to_string(),
                        tag: tag.to_owned(),
                        source: None,
                        reason: format!("cannot read {}'s deploys: {e}", promote.from),
                    });
                    continue;
                }
            };
            out.push(match found {
                Some(d) => TagRelease {
                    app: app.name.to_string(),
                    tag: tag.to_owned(),
                    reason: format!(
                        "tag {tag}: promoting the image {} deployed in deployment {} (no build)",
                        promote.from, d.id
                    ),
                    source: Some(d),
                },
                None => TagRelease {
                    app: app.name.to_string(),
                    tag: tag.to_owned(),
                    source: None,
                    reason: format!(
                        "tag {tag}: {} has no successful deploy of {}, so {} has no image to \
                         promote (a promoted app never builds)",
                        promote.from,
                        short(sha),
                        app.name
                    ),
                },
            });
        }
        out
    }

    /// Makes the promotion a [`TagRelease`] found (once per source deploy and tag: a
    /// redelivered tag push makes none).
    pub async fn promote_tag(&self, release: TagRelease) {
        let (Some(app), Some(d)) = (self.config.app(&release.app), release.source) else {
            return;
        };
        let Some(promote) = &app.promote else {
            return;
        };
        let Some(source) = self.config.app(promote.from.as_str()) else {
            return;
        };
        let result = match self.ran_digest(source, &d).await {
            Ok(digest) => {
                self.offer(app, promote, &d, digest, Some(release.tag.clone()))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(app = %app.name, tag = %release.tag, error = %e,
                "cannot promote the tag's image");
        }
    }

    /// Records the promotion of `d`'s image (`digest`) to `app`, says so, and approves it at
    /// once with `approval = "auto"`.
    async fn offer(
        &self,
        app: &AppConfig,
        promote: &PromoteConfig,
        d: &Deployment,
        digest: String,
        tag: Option<String>,
    ) -> Result<(), String> {
        let now = self.now();
        let made = self
            .journal
            .create_promotion(
                NewPromotion {
                    app: app.name.to_string(),
                    source_app: d.app.clone(),
                    source_deployment: d.id,
                    sha: d.sha.clone(),
                    image_digest: digest,
                    image_tag: d.image_tag.clone(),
                    tag,
                    service_key: app.service_key(),
                    expires_ms: now + promote.timeout.as_millis() as i64,
                },
                now,
            )
            .await
            .map_err(|e| e.to_string())?;
        let PromotionCreated::New {
            promotion,
            superseded,
        } = made
        else {
            return Ok(());
        };
        tracing::info!(promotion = promotion.id, source_deployment = d.id, sha = %d.sha,
            digest = %promotion.image_digest, "promotion made");
        for old in &superseded {
            tracing::info!(promotion = old.id, "a newer promotion supersedes it");
            self.announce(old, EventKind::Superseded, old.reason.clone());
        }
        match promote.approval {
            Approval::Auto => self.approve_now(promotion, "auto".to_owned()).await,
            Approval::Manual => {
                self.announce(&promotion, EventKind::AwaitingApproval, None);
            }
        }
        Ok(())
    }

    /// A waiting promotion: expired past its time; approved if its app now approves
    /// automatically (slipway stopped between making it and approving it).
    async fn tend(&self, p: Promotion) {
        let now = self.now();
        if p.expires_ms <= now {
            let hours = self
                .config
                .app(&p.app)
                .and_then(|a| a.promote.as_ref())
                .map_or(0, |c| c.timeout.as_secs() / 3600);
            let reason = format!("nobody approved or rejected it within {hours} h");
            match self
                .journal
                .decide_promotion(p.id, PromotionDecision::Expire { reason }, now)
                .await
            {
                Ok(PromotionDecided::Done(expired)) => {
                    tracing::info!(promotion = p.id, app = %p.app, "promotion expired");
                    self.announce(
                        &expired,
                        EventKind::PromotionExpired,
                        expired.reason.clone(),
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, promotion = p.id, "cannot expire it"),
            }
            return;
        }
        let auto = self
            .config
            .app(&p.app)
            .and_then(|a| a.promote.as_ref())
            .is_some_and(|c| c.approval == Approval::Auto);
        if auto {
            self.approve_now(p, "auto".to_owned()).await;
        }
    }

    async fn approve_now(&self, p: Promotion, by: String) {
        match self.decide_one(&p, Verdict::Approve, by, None).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, promotion = p.id, "cannot approve it yet"),
        }
    }

    /// The digest of the image deploy `d` of `source` ran: the image its task definition
    /// names, by digest when it names one, else the digest ECR holds for its tag, provided
    /// the tag was not pushed again after the deploy started (never the tag as it is now).
    async fn ran_digest(&self, source: &AppConfig, d: &Deployment) -> Result<String, String> {
        let td = d
            .to_task_definition
            .as_deref()
            .ok_or_else(|| format!("deployment {} registered no task definition", d.id))?;
        let clients = self.accounts.of(source);
        let out = clients
            .ecs
            .describe_task_definition()
            .task_definition(td)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeTaskDefinition", &e).message)?;
        let image = out
            .task_definition()
            .and_then(|t| {
                t.container_definitions()
                    .iter()
                    .find(|c| c.name() == Some(source.container.as_str()))
            })
            .and_then(|c| c.image())
            .ok_or_else(|| format!("{td} has no container {} with an image", source.container))?;
        let image = ImageRef::parse(image).map_err(|e| format!("{td}: {e}"))?;
        if let Some(digest) = image.digest() {
            return Ok(digest.to_owned());
        }
        let tag = image
            .tag()
            .ok_or_else(|| format!("{td}: the image {image} names no tag or digest"))?;
        let found = clients
            .ecr
            .describe_images()
            .repository_name(&source.ecr_repository)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECR DescribeImages", &e).message)?;
        let detail = found
            .image_details()
            .first()
            .ok_or_else(|| format!("{}:{tag} is no longer in ECR", source.ecr_repository))?;
        let digest = detail
            .image_digest()
            .ok_or_else(|| format!("ECR gave no digest for {}:{tag}", source.ecr_repository))?;
        let pushed = detail.image_pushed_at().and_then(|t| t.to_millis().ok());
        if let (Some(pushed), Some(started)) = (pushed, d.started_ms) {
            if pushed > started {
                return Err(format!(
                    "{}:{tag} was pushed again after deployment {} started: which image it ran \
                     is not known, so nothing is promoted (deploy by hand)",
                    source.ecr_repository, d.id
                ));
            }
        }
        Ok(digest.to_owned())
    }

    /// Approves or rejects the promotion waiting for `app` (of commit `sha`, when given) on
    /// behalf of `who`, who must be one of the app's `approvers`.
    pub async fn decide(
        &self,
        app: &str,
        sha: Option<&str>,
        who: &Approver,
        verdict: Verdict,
    ) -> Result<Promotion, PromoteError> {
        let config = self
            .config
            .app(app)
            .ok_or_else(|| PromoteError::UnknownApp(app.to_owned()))?;
        let Some(promote) = &config.promote else {
            return Err(PromoteError::NotPromoted(format!(
                "{app} is not promoted from another app (no promote_from): nothing to approve"
            )));
        };
        let word = match verdict {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        };
        if !promote.may_approve(who.listed_as()) {
            tracing::warn!(app, who = who.listed_as(), "refused: not an approver");
            return Err(PromoteError::Forbidden(format!(
                "{} may not {word} promotions to {app}: not in its approvers",
                who.listed_as()
            )));
        }
        let sha = match sha.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) if (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(s) => {
                return Err(PromoteError::BadRequest(format!(
                    "\"{}\" is not a commit SHA (7 to 40 hex characters)",
                    s.chars().take(64).collect::<String>()
                )))
            }
            None => None,
        };
        let waiting = self.journal.waiting_promotion(app.to_owned()).await?;
        let Some(p) = waiting else {
            return Err(PromoteError::NothingWaiting(format!(
                "no promotion to {app} is awaiting approval{}",
                self.last_word(app, sha.as_deref()).await
            )));
        };
        if let Some(sha) = &sha {
            if !p.sha.starts_with(sha.as_str()) {
                return Err(PromoteError::NothingWaiting(format!(
                    "the promotion to {app} awaiting approval is of {}, not {sha}{}",
                    short(&p.sha),
                    self.last_word(app, Some(sha)).await
                )));
            }
        }
        let decided = self.decide_one(&p, verdict, who.journaled(), None).await?;
        Ok(decided)
    }

    /// What became of `app`'s promotion of `sha` (or its newest), for an error message.
    async fn last_word(&self, app: &str, sha: Option<&str>) -> String {
        let Ok(list) = self.journal.promotions(Some(app.to_owned()), 50).await else {
            return String::new();
        };
        let found = list
            .iter()
            .find(|p| sha.is_none_or(|s| p.sha.starts_with(s)));
        match found {
            Some(p) => format!(
                " (promotion {} of {} is {}{})",
                p.id,
                short(&p.sha),
                p.state,
                p.decided_by
                    .as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        }
    }

    /// Records `verdict` on `p` (approval: with its deployment) and says so.
    async fn decide_one(
        &self,
        p: &Promotion,
        verdict: Verdict,
        by: String,
        reason: Option<String>,
    ) -> Result<Promotion, PromoteError> {
        let now = self.now();
        let decision = match verdict {
            Verdict::Approve => PromotionDecision::Approve {
                by: by.clone(),
                deployment: Box::new(NewDeployment {
                    app: p.app.clone(),
                    service_key: self
                        .config
                        .app(&p.app)
                        .map_or_else(|| p.service_key.clone(), |a| a.service_key()),
                    sha: p.sha.clone(),
                    // The exact image: the deploy engine resolves a digest, never a tag.
                    image_tag: p.image_digest.clone(),
                    trigger: trigger::PROMOTION,
                    actor: Some(by.clone()),
                    build_row: None,
                    build_id: None,
                    delivery_id: None,
                    order_key: None,
                    target_task_definition: None,
                    log_link: None,
                    tag: p.tag.clone(),
                    promotion: Some(p.id),
                }),
            },
            Verdict::Reject => PromotionDecision::Reject {
                by: by.clone(),
                reason: reason.unwrap_or_else(|| format!("rejected by {by}")),
            },
        };
        match self.journal.decide_promotion(p.id, decision, now).await? {
            PromotionDecided::Done(done) => {
                match verdict {
                    Verdict::Approve => {
                        tracing::info!(promotion = done.id, app = %done.app, by = %by,
                            deployment = done.deployment, "promotion approved");
                        self.deploy_wake.notify_one();
                    }
                    Verdict::Reject => {
                        tracing::info!(promotion = done.id, app = %done.app, by = %by,
                            "promotion rejected");
                        self.announce(&done, EventKind::PromotionRejected, done.reason.clone());
                    }
                }
                Ok(done)
            }
            PromotionDecided::NotWaiting(now) => Err(PromoteError::NothingWaiting(format!(
                "promotion {} of {} to {} is {} already{}",
                now.id,
                short(&now.sha),
                now.app,
                now.state,
                now.decided_by
                    .as_deref()
                    .map(|b| format!(" (by {b})"))
                    .unwrap_or_default()
            ))),
            PromotionDecided::NotFound => Err(PromoteError::NothingWaiting(format!(
                "no promotion {}",
                p.id
            ))),
        }
    }

    fn announce(&self, p: &Promotion, kind: EventKind, reason: Option<String>) {
        self.notifier.send(Notification {
            kind,
            app: p.app.clone(),
            sha: p.sha.clone(),
            image: Some(p.image_digest.clone()),
            reason,
            log_link: None,
            deployment: None,
            build_id: None,
            tag: p.tag.clone(),
            promotion: Some(PromotionNote::of(p)),
        });
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{promotion_state, PromotionCreated};

    /// A clock the test moves.
    struct Fixed(Mutex<time::OffsetDateTime>);

    impl crate::clock::Clock for Fixed {
        fn now(&self) -> time::OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    /// A notification target that keeps what it is given.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Notification>>);

    impl Target for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn notify(&self, n: &Notification) {
            self.0.lock().unwrap().push(n.clone());
        }
        fn flush(&self, _: Duration) -> Flushing<'_> {
            Box::pin(async {})
        }
    }

    const CONFIG: &str = r#"
state_dir = "/tmp/slipway"

[[app]]
name = "web"
repository = "octo-org/web"
codebuild_project = "web-build"
cluster = "web"
service = "web"
container = "web"
ecr_repository = "web"

[[app]]
name = "web-prod"
repository = "octo-org/web"
cluster = "web"
service = "web-prod"
container = "web"
ecr_repository = "web"
promote_from = "web"
approvers = ["alice"]
approval_timeout_hours = 2
"#;

    /// No AWS call is made in these tests: clients that could not reach anything.
    fn offline_clients() -> (aws_sdk_ecs::Client, aws_sdk_ecr::Client) {
        let region = aws_sdk_ecs::config::Region::new("eu-west-1");
        let ecs = aws_sdk_ecs::Config::builder()
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .region(region.clone())
            .build();
        let ecr = aws_sdk_ecr::Config::builder()
            .behavior_version(aws_sdk_ecr::config::BehaviorVersion::latest())
            .region(region)
            .build();
        (
            aws_sdk_ecs::Client::from_conf(ecs),
            aws_sdk_ecr::Client::from_conf(ecr),
        )
    }

    /// Issue 27: a promotion nobody decides on expires after `approval_timeout_hours`, is
    /// announced as expired, and can no longer be approved.
    #[tokio::test]
    async fn a_promotion_nobody_decides_on_expires_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Store::open(dir.path()).unwrap();
        let config = Arc::new(Config::parse(CONFIG).unwrap());
        let start = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Arc::new(Fixed(Mutex::new(start)));
        let recorded = Arc::new(Recording::default());
        let (ecs, ecr) = offline_clients();
        let promoter = Promoter {
            journal: journal.clone(),
            accounts: crate::accounts::Accounts::own(ecs, ecr),
            clock: clock.clone(),
            config: config.clone(),
            notifier: Notifier::new(vec![recorded.clone()]),
            deploy_wake: Arc::default(),
            wake: Arc::default(),
            told: Default::default(),
        };
        let timeout = config
            .app("web-prod")
            .unwrap()
            .promote
            .clone()
            .unwrap()
            .timeout;
        let now = millis(start);
        let made = journal
            .create_promotion(
                NewPromotion {
                    app: "web-prod".into(),
                    source_app: "web".into(),
                    source_deployment: 1,
                    sha: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c".into(),
                    image_digest: format!("sha256:{}", "e".repeat(64)),
                    image_tag: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c".into(),
                    tag: None,
                    service_key: "web/web-prod".into(),
                    expires_ms: now + timeout.as_millis() as i64,
                },
                now,
            )
            .await
            .unwrap();
        let PromotionCreated::New { promotion, .. } = made else {
            panic!("{made:?}")
        };

        // A minute before its time: still waiting.
        *clock.0.lock().unwrap() = start + timeout - time::Duration::minutes(1);
        promoter.look().await;
        let p = journal.promotion(promotion.id).await.unwrap().unwrap();
        assert_eq!(p.state, promotion_state::AWAITING_APPROVAL);
        assert!(recorded.0.lock().unwrap().is_empty());

        // Its time has come: expired, with why, and said so.
        *clock.0.lock().unwrap() = start + timeout;
        promoter.look().await;
        let p = journal.promotion(promotion.id).await.unwrap().unwrap();
        assert_eq!(p.state, promotion_state::EXPIRED);
        assert_eq!(
            p.reason.as_deref(),
            Some("nobody approved or rejected it within 2 h")
        );
        assert_eq!(p.decided_by, None);
        let said = recorded.0.lock().unwrap().clone();
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(said[0].kind, EventKind::PromotionExpired);
        assert_eq!(
            said[0].promotion.as_ref().map(|n| n.approval.as_str()),
            Some("expired")
        );

        // alice is too late: nothing waits, nothing is deployed.
        let late = promoter
            .decide(
                "web-prod",
                None,
                &Approver::Ops("alice".into()),
                Verdict::Approve,
            )
            .await
            .unwrap_err();
        assert_eq!(
            late.to_string(),
            format!(
                "no promotion to web-prod is awaiting approval (promotion {} of 1f2e3d4 is \
                 expired)",
                promotion.id
            )
        );
        assert!(journal
            .recent_deployments(Some("web-prod".into()), 10)
            .await
            .unwrap()
            .is_empty());
    }
}
