//! CodeBuild completion events, delivered by EventBridge through SQS, and the reconciler that
//! asks CodeBuild directly when an event never comes.
//!
//! A message is deleted only once its outcome is committed to the journal, and, when it leads
//! to a deploy, only once that deploy has ended (its visibility is extended meanwhile). If
//! slipway dies, the message comes back and the journal makes the retry join the same deploy.

pub mod codebuild;
pub mod ecs;
pub mod trust;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::Message;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::{AppConfig, Config};
use crate::ids::CommitSha;
use crate::notify::{EventKind, Notification, Notifier};
use crate::store::{
    deploy_state, millis, trigger, BuildCompletion, CompletionOutcome, NewDeployment, Store,
    StoreError,
};
use codebuild::{build_id_from_arn, parse_event, BuildStatus};

/// Turns a build's terminal state into journal records, notifications and deploys. Shared by
/// the SQS consumer and the reconciler, so both paths behave the same.
pub struct BuildResults {
    pub journal: Store,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub notifier: Notifier,
    /// The `slipway/build` status of a build whose deploy starts (not a notification).
    pub github: crate::github::GithubSink,
    pub deploy_wake: Arc<Notify>,
}

/// A terminal build state, wherever it was learned.
#[derive(Debug, Clone)]
pub struct BuildResult {
    pub build_id: String,
    pub status: BuildStatus,
    pub commit: Option<String>,
    pub log_link: Option<String>,
    /// The build's `SLIPWAY_RUN` environment variable, when it has one.
    pub run_token: Option<String>,
}

impl BuildResults {
    /// Records the result; returns the deployment it leads to, if any.
    pub async fn record(
        &self,
        app: &AppConfig,
        result: BuildResult,
    ) -> Result<Option<i64>, StoreError> {
        if !result.status.is_terminal() {
            return Ok(None);
        }
        let foreign = if app.deploy_foreign_builds {
            match result.commit.as_deref().map(CommitSha::parse) {
                Some(Ok(sha)) => Some(NewDeployment {
                    app: app.name.to_string(),
                    service_key: app.service_key(),
                    image_tag: app.tag_for(&sha),
                    sha: sha.to_string(),
                    trigger: trigger::FOREIGN_BUILD,
                    actor: None,
                    build_row: None,
                    build_id: Some(result.build_id.clone()),
                    delivery_id: None,
                    order_key: None,
                    target_task_definition: None,
                    log_link: result.log_link.clone(),
                    tag: None,
                    promotion: None,
                }),
                _ => {
                    tracing::warn!(
                        "a build slipway did not start has no commit SHA; not deploying it"
                    );
                    None
                }
            }
        } else {
            None
        };
        let done = BuildCompletion {
            build_id: result.build_id.clone(),
            succeeded: result.status.is_success(),
            status: result.status.as_str().to_owned(),
            log_link: result.log_link.clone(),
            foreign,
            run_token: result.run_token.clone(),
        };
        let outcome = self
            .journal
            .complete_build(done, millis(self.clock.now()))
            .await?;
        match outcome {
            CompletionOutcome::Foreign => {
                tracing::info!(
                    "build was not started by slipway and deploy_foreign_builds is off; not deploying"
                );
                Ok(None)
            }
            CompletionOutcome::Failed {
                app: name,
                sha,
                first_time,
            } => {
                if first_time {
                    tracing::warn!(
                        status = result.status.as_str(),
                        "build did not succeed; nothing deployed"
                    );
                    self.notifier.send(Notification {
                        kind: EventKind::BuildFailed,
                        app: name,
                        sha,
                        image: None,
                        reason: Some(format!("build {}", result.status.as_str())),
                        log_link: result.log_link,
                        deployment: None,
                        build_id: Some(result.build_id),
                        tag: None,
                        promotion: None,
                    });
                }
                Ok(None)
            }
            CompletionOutcome::Deploy {
                deployment,
                created,
            } => {
                if created {
                    tracing::info!(deployment, "build succeeded; deploy requested");
                    self.github.build_succeeded(deployment);
                    self.deploy_wake.notify_one();
                }
                Ok(Some(deployment))
            }
        }
    }
}

/// Long-polls the queue and hands each message its own task.
pub struct Consumer {
    pub sqs: aws_sdk_sqs::Client,
    /// Confirms every final status (`BatchGetBuilds`) before anything is recorded.
    pub codebuild: aws_sdk_codebuild::Client,
    pub queue_url: String,
    pub results: Arc<BuildResults>,
    /// The deploys' watched rollouts, woken by ECS's deployment events (`ecs`).
    pub ecs_watchers: Option<Arc<crate::deploy::watchers::Watchers>>,
}

/// The consumer with where its events must come from.
struct Running {
    consumer: Consumer,
    origin: trust::Origin,
}

impl std::ops::Deref for Running {
    type Target = Consumer;
    fn deref(&self) -> &Consumer {
        &self.consumer
    }
}

impl Consumer {
    pub async fn run(self, shutdown: CancellationToken) {
        let origin = trust::Origin::new(
            &self.queue_url,
            self.sqs.config().region().map(|r| r.as_ref()),
        );
        if origin.account.is_none() {
            tracing::warn!(queue = %self.queue_url, "the queue URL shows no account; events are checked for source and region only");
        }
        let this = Arc::new(Running {
            consumer: self,
            origin,
        });
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        tracing::info!(queue = %this.queue_url, "consuming CodeBuild events");
        loop {
            while tasks.try_join_next().is_some() {}
            let visibility = this.results.config.events.visibility_timeout.as_secs() as i32;
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = this.sqs
                    .receive_message()
                    .queue_url(&this.queue_url)
                    .wait_time_seconds(20)
                    .max_number_of_messages(10)
                    .visibility_timeout(visibility)
                    .send() => r,
            };
            // The messages' visibility timeout runs from here.
            let received_at = tokio::time::Instant::now();
            let messages = match received {
                Ok(out) => {
                    failures = 0;
                    let messages = out.messages.unwrap_or_default();
                    metrics::counter!("slipway_sqs_messages_received_total")
                        .increment(messages.len() as u64);
                    messages
                }
                Err(e) => {
                    let e = AwsError::from_sdk("SQS ReceiveMessage", &e);
                    failures += 1;
                    let wait = Duration::from_millis(500 * 2u64.pow(failures.min(6)));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot receive events");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            for message in messages {
                let span =
                    tracing::info_span!("event", message = message.message_id().unwrap_or("-"));
                let this = this.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(
                    async move { this.handle(message, received_at, shutdown).await }
                        .instrument(span),
                );
            }
        }
        // Messages still being handled come back after their visibility timeout; the journal
        // makes that retry continue where this one stopped.
        tasks.shutdown().await;
    }
}

impl Running {
    async fn handle(
        &self,
        message: Message,
        received_at: tokio::time::Instant,
        shutdown: CancellationToken,
    ) {
        let Some(receipt) = message.receipt_handle().map(str::to_owned) else {
            return;
        };
        let body = message.body().unwrap_or("");
        if ecs::is_ecs_deployment_event(body) {
            return self.handle_ecs(&message, &receipt, body).await;
        }
        let event = match parse_event(body) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "cannot parse the message; leaving it to the queue's redrive policy");
                return;
            }
        };
        let build_id = build_id_from_arn(&event.build_arn).to_owned();
        // What the event says is anyone's who may send to the queue: logged escaped and short.
        let span = tracing::info_span!(
            "build",
            build = ?crate::webhook::clip(&build_id),
            status = ?crate::webhook::clip(event.status.as_str())
        );
        async {
            let reject = |reason: String| self.reject(&message, &event, &receipt, reason);
            if let Err(reason) = self.origin.check(&event) {
                return reject(reason).await;
            }
            let Some(app) = self.results.config.app_for_project(&event.project).cloned() else {
                tracing::info!(project = ?crate::webhook::clip(&event.project), "no app builds in this project; ignoring the event");
                return self.delete(&receipt).await;
            };
            if !event.status.is_terminal() {
                // IN_PROGRESS, or a status this version does not know: nothing to record (the
                // reconciler settles a build whose final event never comes).
                return self.delete(&receipt).await;
            }
            // Every final status, not only SUCCEEDED: a forged FAILED for a build that
            // succeeded would otherwise mark it failed, notify and post a failure status.
            let confirmed = match self.confirmed(&app, &event).await {
                Err(e) => {
                    // Not deleted: it comes back and CodeBuild is asked again.
                    return tracing::warn!(error = %e, "cannot confirm the build with CodeBuild");
                }
                Ok(Err(reason)) => return reject(reason).await,
                Ok(Ok(confirmed)) => confirmed,
            };
            // What the build is (commit, log link, run) as CodeBuild says, not as the event does.
            let result = BuildResult {
                build_id: build_id.clone(),
                status: event.status.clone(),
                commit: confirmed.commit,
                log_link: confirmed.log_link,
                run_token: confirmed.run_token,
            };
            match self.results.record(&app, result).await {
                Err(e) => {
                    // Not deleted: it comes back and is recorded then.
                    tracing::error!(error = %e, "cannot journal the build result");
                }
                Ok(None) if event.status.is_success() => {
                    // Succeeded, confirmed, yet nothing to deploy: a foreign build the app
                    // does not accept, or one without a commit to deploy.
                    let reason = if app.deploy_foreign_builds {
                        "a build slipway did not start, and CodeBuild shows no commit SHA for it"
                    } else {
                        "a build slipway did not start, and deploy_foreign_builds is off"
                    };
                    reject(reason.into()).await
                }
                Ok(None) => self.delete(&receipt).await,
                Ok(Some(deployment)) => {
                    if self
                        .wait_for(deployment, &receipt, received_at, &shutdown)
                        .await
                    {
                        self.delete(&receipt).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// CodeBuild's view of a build whose final status an event announced: Ok(Err(reason)) when
    /// the event is not to be acted on.
    async fn confirmed(
        &self,
        app: &AppConfig,
        event: &codebuild::BuildStateChange,
    ) -> Result<Result<trust::Confirmed, String>, anyhow::Error> {
        let confirmed = match trust::confirm(&self.codebuild, event).await? {
            trust::Confirmation::Rejected(reason) => return Ok(Err(reason)),
            trust::Confirmation::Confirmed(c) => c,
        };
        let mine = self.results.journal.run_token_of(event.build_id()).await?;
        match (&mine, &confirmed.run_token) {
            (Some(token), Some(run)) if token == run => {}
            (Some(_), _) => {
                return Ok(Err(
                    "the build does not carry the SLIPWAY_RUN slipway started it with".into(),
                ))
            }
            // Not journaled under this id: either slipway's answer to StartBuild was lost
            // (the journal finds the build by its SLIPWAY_RUN) or a foreign build, deployed
            // only when the app allows it.
            (None, _) => {
                if event.status.is_success()
                    && confirmed.run_token.is_none()
                    && !app.deploy_foreign_builds
                {
                    return Ok(Err(
                        "a build slipway did not start, and deploy_foreign_builds is off".into(),
                    ));
                }
            }
        }
        Ok(Ok(confirmed))
    }

    /// Journals why the message is not acted on, then deletes it. If the journal cannot take
    /// the record, the message stays and is judged again when it comes back.
    async fn reject(
        &self,
        message: &Message,
        event: &codebuild::BuildStateChange,
        receipt: &str,
        reason: String,
    ) {
        tracing::warn!(
            reason = ?reason,
            source = ?crate::webhook::clip(&event.source),
            account = ?crate::webhook::clip(&event.account),
            "event rejected; not deploying"
        );
        let record = crate::store::RejectedEvent {
            message_id: message.message_id().map(str::to_owned),
            build_id: Some(event.build_id().to_owned()),
            source: Some(event.source.clone()),
            account: Some(event.account.clone()),
            reason,
            received_ms: millis(self.results.clock.now()),
        };
        match self.results.journal.event_rejected(record).await {
            Ok(()) => self.delete(receipt).await,
            Err(e) => tracing::error!(error = %e, "cannot journal the rejected event"),
        }
    }

    /// Keeps the message invisible until the deploy ends. False if slipway is stopping.
    /// Its visibility timeout runs from `received_at`, not from when the build was confirmed
    /// and recorded: the first extension is due a third of it after the receive.
    async fn wait_for(
        &self,
        deployment: i64,
        receipt: &str,
        received_at: tokio::time::Instant,
        shutdown: &CancellationToken,
    ) -> bool {
        let visibility = self.results.config.events.visibility_timeout;
        let extend_every = visibility / 3;
        let mut last_extended = received_at;
        loop {
            match self.results.journal.deployment(deployment).await {
                Ok(Some(d)) if deploy_state::is_terminal(&d.state) => return true,
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the deployment"),
            }
            if last_extended.elapsed() >= extend_every {
                last_extended = tokio::time::Instant::now();
                let r = self
                    .sqs
                    .change_message_visibility()
                    .queue_url(&self.queue_url)
                    .receipt_handle(receipt)
                    .visibility_timeout(visibility.as_secs() as i32)
                    .send()
                    .await;
                if let Err(e) = r {
                    let e = AwsError::from_sdk("SQS ChangeMessageVisibility", &e);
                    tracing::warn!(error = %e, "cannot extend the message's visibility");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn delete(&self, receipt: &str) {
        let r = self
            .sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await;
        if let Err(e) = r {
            let e = AwsError::from_sdk("SQS DeleteMessage", &e);
            tracing::warn!(error = %e, "cannot delete the message; it will come back and be recognised");
        }
    }
}

/// Asks CodeBuild about builds whose completion event never arrived.
pub struct Reconciler {
    pub codebuild: aws_sdk_codebuild::Client,
    pub results: Arc<BuildResults>,
}

impl Reconciler {
    pub async fn run(&self, shutdown: CancellationToken) {
        let after = self.results.config.events.reconcile_after;
        let every = (after / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "reconciler: pass failed; will try again");
            }
        }
    }

    /// One pass: every build in flight for longer than `reconcile_after`.
    pub async fn pass(&self) -> anyhow::Result<()> {
        let now = millis(self.results.clock.now());
        let before = now - self.results.config.events.reconcile_after.as_millis() as i64;
        let stale = self.results.journal.builds_in_flight(before).await?;
        if stale.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = stale.iter().map(|b| b.build_id.clone()).collect();
        let out = self
            .codebuild
            .batch_get_builds()
            .set_ids(Some(ids))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CodeBuild BatchGetBuilds", &e))?;
        let now = millis(self.results.clock.now());
        for missing in out.builds_not_found() {
            if let Some(mine) = stale.iter().find(|b| b.build_id == *missing) {
                tracing::warn!(build = %missing, "reconciler: CodeBuild does not know this build");
                self.results
                    .journal
                    .build_unknown_to_codebuild(mine.build_row, now)
                    .await?;
            }
        }
        self.results
            .journal
            .builds_checked(stale.iter().map(|b| b.build_row).collect(), now)
            .await?;
        for build in out.builds() {
            let Some(id) = build.id() else { continue };
            let Some(mine) = stale.iter().find(|b| b.build_id == id) else {
                continue;
            };
            let Some(app) = self.results.config.app(&mine.app).cloned() else {
                continue;
            };
            let status = BuildStatus::parse(build.build_status().map(|s| s.as_str()).unwrap_or(""));
            if !status.is_terminal() {
                continue;
            }
            let span = tracing::info_span!("build", build = %id, status = status.as_str());
            async {
                tracing::info!(
                    "reconciler: no event arrived for this build; CodeBuild says it ended"
                );
                let result = BuildResult {
                    build_id: id.to_owned(),
                    status,
                    commit: build
                        .resolved_source_version()
                        .or(build.source_version())
                        .map(str::to_owned),
                    log_link: build.logs().and_then(|l| l.deep_link()).map(str::to_owned),
                    run_token: build
                        .environment()
                        .and_then(|e| {
                            e.environment_variables()
                                .iter()
                                .find(|v| v.name() == "SLIPWAY_RUN")
                        })
                        .map(|v| v.value().to_owned()),
                };
                if let Err(e) = self.results.record(&app, result).await {
                    tracing::error!(error = %e, "reconciler: cannot journal the build result");
                }
            }
            .instrument(span)
            .await;
        }
        Ok(())
    }
}
