//! What operators can do besides pushing: deploy a commit by SHA, roll back, replay a stored
//! delivery or a saved payload, and see what runs. The HTTP API, the chat command and the CLI
//! all come here, and everything here goes through the same journal and deploy engine as a
//! push: same checks, same per-service lock, same notifications.

use std::sync::Arc;

use aws_sdk_ecr::types::{ImageIdentifier, ListImagesFilter, TagStatus};
use serde::Serialize;
use tokio::sync::Notify;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::{AppConfig, Config};
use crate::ids::{CommitSha, DeliveryId, HookId};
use crate::store::{
    deploy_state, millis, trigger, Admission, Deployment, NewDelivery, NewDeployment, Source,
    Store, StoreError, Verdict,
};
use crate::webhook::{decide, ContentType};

/// An operator's request that cannot be carried out, with a stable code for scripts.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("unknown app {0}")]
    UnknownApp(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoImage(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Aws(String),
    /// The caller may not do this (not among the app's `approvers`): nothing changed.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Journal(#[from] StoreError),
}

impl From<crate::promote::PromoteError> for OpsError {
    fn from(e: crate::promote::PromoteError) -> Self {
        use crate::promote::PromoteError as P;
        match e {
            P::UnknownApp(app) => OpsError::UnknownApp(app),
            P::NotPromoted(m) | P::NothingWaiting(m) => OpsError::Conflict(m),
            P::Forbidden(m) => OpsError::Forbidden(m),
            P::BadRequest(m) => OpsError::BadRequest(m),
            P::Journal(e) => OpsError::Journal(e),
        }
    }
}

impl OpsError {
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::UnknownApp(_) => "unknown_app",
            OpsError::BadRequest(_) => "bad_request",
            OpsError::NotFound(_) => "not_found",
            OpsError::NoImage(_) => "no_image",
            OpsError::Conflict(_) => "conflict",
            OpsError::Aws(_) => "aws_error",
            OpsError::Forbidden(_) => "forbidden",
            OpsError::Journal(_) => "journal_unavailable",
        }
    }
}

impl From<AwsError> for OpsError {
    fn from(e: AwsError) -> Self {
        OpsError::Aws(e.message)
    }
}

/// What an app runs now.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub app: String,
    pub cluster: String,
    pub service: String,
    /// The AWS account the service is in when it is not slipway's own (`role_arn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub task_definition: Option<String>,
    pub image: Option<String>,
    pub commit: Option<String>,
    pub last_deployment: Option<Deployment>,
    pub error: Option<String>,
}

/// What a replay started.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub delivery: String,
    pub row: i64,
    pub replay_of: Option<i64>,
    pub builds: Vec<serde_json::Value>,
    /// Apps the payload reaches that do not build, and why: a replay is judged by the same
    /// `paths`, `paths_ignore` and skip markers as a push.
    pub skipped: Vec<serde_json::Value>,
}

#[derive(Clone)]
pub struct Ops {
    pub config: Arc<Config>,
    pub journal: Store,
    /// Each app's ECS and ECR clients (an app with `role_arn`: its account's, issue 27).
    pub accounts: crate::accounts::Accounts,
    pub clock: SharedClock,
    pub build_wake: Arc<Notify>,
    pub deploy_wake: Arc<Notify>,
    /// GitHub's compare API, when `[github]` credentials are configured: the full list of a
    /// push's changed files when its payload cannot prove them (monorepo filters).
    pub changed_files: Option<Arc<dyn crate::push_filter::ChangedFilesSource>>,
    /// How GitHub calls are going; None when GitHub is not configured.
    pub github: Option<Arc<crate::github::Health>>,
    /// Promotions' approvals (issue 27).
    pub promoter: Arc<crate::promote::Promoter>,
}

impl Ops {
    /// GitHub's health for `slipway status`; None when GitHub is not configured.
    pub fn github_status(&self) -> Option<crate::github::HealthReport> {
        self.github.as_ref().map(|h| h.report())
    }

    fn app(&self, name: &str) -> Result<&AppConfig, OpsError> {
        self.config
            .app(name)
            .ok_or_else(|| OpsError::UnknownApp(name.to_owned()))
    }

    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Deploys commit `sha` (7 to 40 hex characters) of `app`: resolves it to a full SHA and
    /// an image tag that exists in ECR, then asks the deploy engine. Returns the deployment id.
    pub async fn deploy_sha(&self, app: &str, sha: &str, actor: &str) -> Result<i64, OpsError> {
        let app = self.app(app)?.clone();
        let sha = sha.trim();
        if !(7..=40).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpsError::BadRequest(format!(
                "\"{}\" is not a commit SHA (7 to 40 hex characters)",
                sha.chars().take(64).collect::<String>()
            )));
        }
        if self.config.images_elsewhere(&app) {
            // Its images are in another account's registry, found through a promotion's
            // source deploy; by tag its own account's registry would be searched.
            return Err(OpsError::BadRequest(format!(
                "{}'s images are held in another account's registry: deploy a commit to it by \
                 promotion (deploy {} and approve), or roll it back to a revision it ran",
                app.name,
                self.config.builder_of(&app).name
            )));
        }
        let full = self.resolve_sha(&app, &sha.to_ascii_lowercase()).await?;
        let tag = app.tag_for(&full);
        let found = self
            .accounts
            .of(&app)
            .ecr
            .describe_images()
            .repository_name(&app.ecr_repository)
            .image_ids(ImageIdentifier::builder().image_tag(&tag).build())
            .send()
            .await;
        if let Err(e) = found {
            let e = AwsError::from_sdk("ECR DescribeImages", &e);
            return Err(match e.code.as_deref() {
                Some("ImageNotFoundException") | Some("RepositoryNotFoundException") => {
                    OpsError::NoImage(format!(
                        "no image for {} in {}",
                        full.short(),
                        app.ecr_repository
                    ))
                }
                _ => e.into(),
            });
        }
        let id = self
            .journal
            .request_deployment(
                NewDeployment {
                    app: app.name.to_string(),
                    service_key: app.service_key(),
                    sha: full.to_string(),
                    image_tag: tag,
                    trigger: trigger::OPERATOR,
                    actor: Some(actor.to_owned()),
                    build_row: None,
                    build_id: None,
                    delivery_id: None,
                    order_key: None,
                    target_task_definition: None,
                    log_link: None,
                    tag: None,
                    promotion: None,
                },
                self.now(),
            )
            .await?;
        tracing::info!(deployment = id, app = %app.name, sha = %full, actor, "deploy requested by an operator");
        self.deploy_wake.notify_one();
        Ok(id)
    }

    /// A full SHA from a full or abbreviated one: the journal's commits of this app and the
    /// repository's image tags are searched; more than one match is ambiguous.
    async fn resolve_sha(&self, app: &AppConfig, sha: &str) -> Result<CommitSha, OpsError> {
        if sha.len() == 40 {
            return CommitSha::parse(sha).map_err(|e| OpsError::BadRequest(e.0));
        }
        let mut candidates = self
            .journal
            .shas_with_prefix(app.name.as_str(), sha)
            .await?;
        if app.image_tag == "{sha}" {
            candidates.extend(self.ecr_tags_with_prefix(app, sha).await?);
        }
        candidates.sort();
        candidates.dedup();
        match candidates.as_slice() {
            [] => Err(OpsError::NoImage(format!(
                "no image for {sha} in {}",
                app.ecr_repository
            ))),
            [one] => CommitSha::parse(one).map_err(|e| OpsError::BadRequest(e.0)),
            many => Err(OpsError::Conflict(format!(
                "{sha} is ambiguous: {}",
                many.iter().map(|s| &s[..12]).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    async fn ecr_tags_with_prefix(
        &self,
        app: &AppConfig,
        prefix: &str,
    ) -> Result<Vec<String>, OpsError> {
        let mut found = Vec::new();
        let mut pages = self
            .accounts
            .of(app)
            .ecr
            .list_images()
            .repository_name(&app.ecr_repository)
            .filter(
                ListImagesFilter::builder()
                    .tag_status(TagStatus::Tagged)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let e = AwsError::from_sdk("ECR ListImages", &e);
                    if e.code.as_deref() == Some("RepositoryNotFoundException") {
                        return Ok(found);
                    }
                    return Err(e.into());
                }
            };
            for id in page.image_ids() {
                if let Some(tag) = id.image_tag() {
                    if tag.starts_with(prefix) && CommitSha::parse(tag).is_ok() {
                        found.push(tag.to_owned());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Puts back the task definition of an earlier successful deployment: by default the
    /// newest one that is not what the service runs now; or the one `to` names (a deployment
    /// id or a commit SHA).
    pub async fn rollback(
        &self,
        app: &str,
        to: Option<&str>,
        actor: &str,
    ) -> Result<i64, OpsError> {
        let app = self.app(app)?.clone();
        let candidates = self
            .journal
            .successful_deployments(app.name.as_str())
            .await?;
        let target = match to.map(str::trim).filter(|t| !t.is_empty()) {
            Some(to) => {
                let by_id = to.parse::<i64>().ok();
                let lower = to.to_ascii_lowercase();
                candidates
                    .into_iter()
                    .find(|d| {
                        Some(d.id) == by_id || (lower.len() >= 7 && d.sha.starts_with(&lower))
                    })
                    .ok_or_else(|| {
                        OpsError::Conflict(format!(
                            "nothing to roll back to: no successful deployment of {} matches {to}",
                            app.name
                        ))
                    })?
            }
            None => {
                // Go back from what runs now: to the newest success older than the first
                // deploy that put the running task definition there (so a second rollback
                // goes further back, not forward again).
                let running = self.running_task_definition(&app).await?;
                let anchor = candidates
                    .iter()
                    .filter(|d| d.to_task_definition.as_deref() == Some(running.as_str()))
                    .map(|d| d.id)
                    .min()
                    .unwrap_or(i64::MAX);
                candidates
                    .into_iter()
                    .find(|d| {
                        d.id < anchor && d.to_task_definition.as_deref() != Some(running.as_str())
                    })
                    .ok_or_else(|| {
                        OpsError::Conflict(format!(
                            "nothing to roll back to: {} has no successful deployment before the one running now",
                            app.name
                        ))
                    })?
            }
        };
        let id = self
            .journal
            .request_deployment(
                NewDeployment {
                    app: app.name.to_string(),
                    service_key: app.service_key(),
                    sha: target.sha.clone(),
                    image_tag: target.image_tag.clone(),
                    trigger: trigger::ROLLBACK,
                    actor: Some(actor.to_owned()),
                    build_row: None,
                    build_id: None,
                    delivery_id: None,
                    order_key: None,
                    target_task_definition: target.to_task_definition.clone(),
                    log_link: None,
                    tag: None,
                    promotion: None,
                },
                self.now(),
            )
            .await?;
        tracing::info!(deployment = id, app = %app.name, to = target.id, actor, "rollback requested");
        self.deploy_wake.notify_one();
        Ok(id)
    }

    async fn running_task_definition(&self, app: &AppConfig) -> Result<String, OpsError> {
        let out = self
            .accounts
            .of(app)
            .ecs
            .describe_services()
            .cluster(&app.cluster)
            .services(&app.service)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeServices", &e))?;
        out.services()
            .first()
            .and_then(|s| s.task_definition())
            .map(str::to_owned)
            .ok_or_else(|| {
                OpsError::Aws(format!(
                    "service {} not found in cluster {}",
                    app.service, app.cluster
                ))
            })
    }

    /// What every app runs now, from ECS, with its last deployment from the journal.
    pub async fn status(&self) -> Vec<AppStatus> {
        let mut out = Vec::new();
        for app in &self.config.apps {
            out.push(self.app_status(app).await);
        }
        out
    }

    pub async fn app_status(&self, app: &AppConfig) -> AppStatus {
        let last = self
            .journal
            .recent_deployments(Some(app.name.to_string()), 1)
            .await
            .ok()
            .and_then(|mut v| v.pop());
        let mut status = AppStatus {
            app: app.name.to_string(),
            cluster: app.cluster.clone(),
            service: app.service.clone(),
            account: app.role.as_ref().map(|r| r.account.clone()),
            task_definition: None,
            image: None,
            commit: None,
            last_deployment: last,
            error: None,
        };
        let running = match self.running_task_definition(app).await {
            Ok(td) => td,
            Err(e) => {
                status.error = Some(e.to_string());
                return status;
            }
        };
        let described = self
            .accounts
            .of(app)
            .ecs
            .describe_task_definition()
            .task_definition(&running)
            .send()
            .await;
        match described {
            Ok(out) => {
                status.image = out
                    .task_definition()
                    .and_then(|td| {
                        td.container_definitions()
                            .iter()
                            .find(|c| c.name() == Some(app.container.as_str()))
                    })
                    .and_then(|c| c.image())
                    .map(str::to_owned);
            }
            Err(e) => {
                status.error = Some(AwsError::from_sdk("ECS DescribeTaskDefinition", &e).message)
            }
        }
        // The commit: the newest successful deployment that put this task definition there.
        if let Ok(done) = self.journal.successful_deployments(app.name.as_str()).await {
            status.commit = done
                .into_iter()
                .find(|d| d.to_task_definition.as_deref() == Some(running.as_str()))
                .map(|d| d.sha);
        }
        status.task_definition = Some(running);
        status
    }

    /// Runs a stored delivery through the pipeline again, as a new run linked to the original.
    pub async fn replay(&self, id: &str, actor: &str) -> Result<Replayed, OpsError> {
        let original = self
            .journal
            .delivery(id)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no delivery {id}")))?;
        let content_type =
            ContentType::from_header(Some(&original.content_type)).unwrap_or(ContentType::Json);
        // Retention may have dropped the body (409 "payload no longer kept").
        let body = original
            .payload()
            .map_err(|e| OpsError::Conflict(e.to_string()))?
            .to_vec();
        self.admit_replay(
            original.event,
            content_type,
            body,
            Some(original.row),
            actor,
        )
        .await
    }

    /// Submits a payload saved by hand (e.g. from GitHub's Recent Deliveries page).
    pub async fn replay_payload(
        &self,
        event: &str,
        payload: Vec<u8>,
        actor: &str,
    ) -> Result<Replayed, OpsError> {
        if event.is_empty() || event.len() > 64 {
            return Err(OpsError::BadRequest(
                "event must be a GitHub event name".into(),
            ));
        }
        self.admit_replay(event.to_owned(), ContentType::Json, payload, None, actor)
            .await
    }

    async fn admit_replay(
        &self,
        event: String,
        content_type: ContentType,
        body: Vec<u8>,
        replay_of: Option<i64>,
        actor: &str,
    ) -> Result<Replayed, OpsError> {
        let github = self.changed_files.as_deref();
        let verdict = decide(&self.config, &event, content_type, &body, github).await;
        match &verdict {
            Verdict::Build(_) | Verdict::BuildSome { .. } => {}
            Verdict::Ignored(reason) => {
                return Err(OpsError::Conflict(format!(
                    "it would be ignored (replays follow the same rules as pushes): {reason}"
                )))
            }
            Verdict::Rejected(reason) => {
                return Err(OpsError::Conflict(format!(
                    "it would be rejected: {reason}"
                )))
            }
            Verdict::Pong => {
                return Err(OpsError::Conflict("it is a ping: nothing to build".into()))
            }
        }
        let delivery_id = DeliveryId::generate();
        let delivery = NewDelivery {
            delivery_id: delivery_id.clone(),
            hook_id: HookId::parse(Some("replay")).expect("valid hook id"),
            event,
            source: Source::Replay,
            actor: Some(actor.to_owned()),
            replay_of,
            received_ms: self.now(),
            content_type: content_type.as_str().to_owned(),
            headers: serde_json::json!({}),
            body,
        };
        let skipped = crate::webhook::skipped_json(verdict.skipped());
        let (row, admission) = self.journal.admit(delivery, verdict).await?;
        let Admission::Accepted(builds) = admission else {
            return Err(OpsError::Conflict("the replay was not accepted".into()));
        };
        self.build_wake.notify_one();
        tracing::info!(delivery = %delivery_id, replay_of, actor, "replay accepted");
        Ok(Replayed {
            delivery: delivery_id.to_string(),
            row,
            replay_of,
            builds: builds
                .iter()
                .map(|b| serde_json::json!({ "app": b.app, "sha": b.sha }))
                .collect(),
            skipped,
        })
    }

    /// A deployment with, while it is in flight, how long it has been running.
    pub async fn deployment(&self, id: i64) -> Result<serde_json::Value, OpsError> {
        let d = self
            .journal
            .deployment(id)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no deployment {id}")))?;
        let mut v = self.deployment_json(&d);
        // A promotion's deploy (issue 27): where its image comes from, and its approval.
        if let Some(p) = d.promotion {
            if let Some(p) = self.journal.promotion(p).await? {
                v["promoted"] = serde_json::to_value(crate::notify::PromotionNote::of(&p))
                    .expect("serializable");
            }
        }
        Ok(v)
    }

    pub fn deployment_json(&self, d: &Deployment) -> serde_json::Value {
        let mut v = serde_json::to_value(d).expect("serializable");
        let end = d.finished_ms.unwrap_or_else(|| self.now());
        v["elapsed_secs"] = d.started_ms.map(|s| ((end - s) / 1000).max(0)).into();
        v["finished"] = deploy_state::is_terminal(&d.state).into();
        v
    }

    /// Approves or rejects the promotion waiting for `app` (issue 27); `who` must be one of
    /// its `approvers`.
    pub async fn decide_promotion(
        &self,
        app: &str,
        sha: Option<&str>,
        who: &crate::promote::Approver,
        verdict: crate::promote::Verdict,
    ) -> Result<crate::store::Promotion, OpsError> {
        Ok(self.promoter.decide(app, sha, who, verdict).await?)
    }
}
