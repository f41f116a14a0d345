//! Deploying one commit to an ECS service, and the worker that runs deploys.
//!
//! Every deploy is a journal record first (`pending`); this worker picks records up, one at a
//! time per ECS service, and moves each to a terminal state: `succeeded` only when ECS says our
//! deployment `COMPLETED`; otherwise `failed`, `rolled_back` or `superseded`, with the reason.
//! A restart resumes `deploying` records where they stopped (the rollout timeout counts from
//! the journaled start), so a crash never starts a second deploy of the same build.

pub mod rollout;
pub mod taskdef;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecr::types::ImageIdentifier;
use aws_sdk_ecs::types::TaskDefinitionField;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::{AppConfig, Config};
use crate::image::ImageRef;
use crate::journal::{deploy_state, millis, Deployment, DeploymentUpdate, Journal};
use crate::notify::{EventKind, Notification, Notifier};
use aws_sdk_ecs::types::ServiceDeployment;
use rollout::{evaluate, Rollout, Verdict};
use taskdef::NewRevision;

/// Why a deploy stopped short of success, as the journal and the notification say it.
#[derive(Debug)]
enum Stop {
    Failed(String),
    Superseded(String),
    /// The journal could not record a step: leave the deploy as it is; it resumes later.
    Interrupted(String),
    /// Another deploy of the service was already under way when slipway stopped: it goes
    /// first; this one stays pending and runs after it.
    Wait,
}

/// How a rollout is watched.
enum Source {
    /// DescribeServices: the service's deployments list. `allow_sd`: switch to the service
    /// deployment when the list shows it judges better.
    List { allow_sd: bool },
    /// ECS's service deployment of ours; its ARN once found.
    ServiceDeployment { arn: Option<String>, misses: u32 },
}

impl Source {
    fn list() -> Source {
        Source::List { allow_sd: true }
    }

    fn service_deployment() -> Source {
        Source::ServiceDeployment {
            arn: None,
            misses: 0,
        }
    }
}

/// The stage of a deploy whose rollback by slipway is under way.
const ROLLING_BACK: &str = "ROLLING_BACK";
/// Polls in which ECS may not list a new service deployment yet before the list is watched.
const SD_MISSES: u32 = 3;
/// Looks past the rollout timeout before a failing look counts as "did not complete".
const LAST_LOOKS: u32 = 3;

/// What one look at the rollout found.
enum Looked {
    /// Nothing to judge yet (the service deployment is not listed yet, or the watch just
    /// switched to it).
    Nothing,
    Rollout(Rollout, Option<String>),
}

/// How following one ECS deployment ended.
enum Followed {
    Ended(Rollout),
    TimedOut,
}

impl From<AwsError> for Stop {
    fn from(e: AwsError) -> Self {
        Stop::Failed(e.message)
    }
}

/// What the preflight found.
struct Preflight {
    /// The task definition the service runs now: the base of the new revision.
    current_task_definition: String,
    image: Option<String>,
    /// `current_task_definition` with its tags, when it was read during the preflight.
    base: Option<DescribedTaskDefinition>,
}

type DescribedTaskDefinition =
    aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;

pub struct Deployer {
    pub journal: Journal,
    pub ecs: aws_sdk_ecs::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    pub notifier: Notifier,
    pub wake: Arc<Notify>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Deployer {
    pub fn new(
        journal: Journal,
        aws: &crate::aws::Clients,
        clock: SharedClock,
        config: Arc<Config>,
        notifier: Notifier,
        wake: Arc<Notify>,
    ) -> Deployer {
        Deployer {
            journal,
            ecs: aws.ecs.clone(),
            ecr: aws.ecr.clone(),
            clock,
            config,
            notifier,
            wake,
            locks: Mutex::default(),
        }
    }

    /// Runs every unfinished deploy in the journal, and new ones as they are asked for.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut tasks = JoinSet::new();
        loop {
            match self.journal.unfinished_deployments().await {
                Ok(list) => {
                    for d in list {
                        if !in_flight.lock().expect("in-flight set").insert(d.id) {
                            continue;
                        }
                        let this = self.clone();
                        let in_flight = in_flight.clone();
                        let span = tracing::info_span!("deploy", deployment = d.id, app = %d.app,
                            sha = %d.sha, build = d.build_id.as_deref().unwrap_or("-"));
                        tasks.spawn(
                            async move {
                                this.drive(d.id).await;
                                in_flight.lock().expect("in-flight set").remove(&d.id);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "deploy worker: cannot read the journal"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Deploys in flight stay `deploying` in the journal and resume at the next start.
        tasks.shutdown().await;
    }

    fn lock_for(&self, service_key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock map")
            .entry(service_key.to_owned())
            .or_default()
            .clone()
    }

    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Takes one deployment to a terminal state.
    async fn drive(&self, id: i64) {
        let Ok(Some(first)) = self.journal.deployment(id).await else {
            return;
        };
        let lock = self.lock_for(&first.service_key);
        let _one_at_a_time = lock.lock().await;
        // Re-read: it may have moved on while this waited for the service.
        let d = match self.journal.deployment(id).await {
            Ok(Some(d)) if !deploy_state::is_terminal(&d.state) => d,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the deployment");
                return;
            }
        };
        let Some(app) = self.config.app(&d.app).cloned() else {
            return self
                .finish(
                    &d,
                    deploy_state::FAILED,
                    format!("app {} is no longer configured", d.app),
                )
                .await;
        };
        let in_progress = metrics::gauge!(crate::metrics::DEPLOYMENTS_IN_PROGRESS);
        in_progress.increment(1.0);
        let result = if d.state == deploy_state::PENDING {
            self.start(&d, &app).await
        } else {
            tracing::info!("resuming a deploy that was in progress");
            self.resume(&d, &app).await
        };
        in_progress.decrement(1.0);
        match result {
            Ok(()) => {}
            Err(Stop::Superseded(reason)) => {
                self.finish(&d, deploy_state::SUPERSEDED, reason).await
            }
            Err(Stop::Failed(reason)) => self.finish(&d, deploy_state::FAILED, reason).await,
            Err(Stop::Wait) => {
                tracing::info!("another deploy of this service resumes first");
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.wake.notify_one();
            }
            Err(Stop::Interrupted(reason)) => {
                tracing::error!(%reason, "deploy interrupted; it resumes from the journal");
                // Give the journal a moment before the worker picks it up again.
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.wake.notify_one();
            }
        }
    }

    async fn start(&self, d: &Deployment, app: &AppConfig) -> Result<(), Stop> {
        // After a restart, a deploy of this service that was already under way finishes first,
        // whichever of the two took the service's lock first.
        let under_way = self
            .journal
            .unfinished_deployments()
            .await
            .map_err(journal_stop)?
            .into_iter()
            .any(|o| {
                o.id != d.id && o.service_key == d.service_key && o.state == deploy_state::DEPLOYING
            });
        if under_way && d.state == deploy_state::PENDING {
            return Err(Stop::Wait);
        }
        if let Some(newer) = self
            .journal
            .newer_deployment(d)
            .await
            .map_err(journal_stop)?
        {
            return Err(Stop::Superseded(superseded_by(&newer)));
        }
        let pre = self.preflight(d, app).await?;
        let (image, from_td, to_td) = match &d.target_task_definition {
            // A rollback puts a task definition that already ran back, as it is.
            Some(target) => {
                self.update(
                    d,
                    DeploymentUpdate {
                        state: Some(deploy_state::DEPLOYING),
                        from_task_definition: Some(pre.current_task_definition.clone()),
                        to_task_definition: Some(target.clone()),
                        started: true,
                        ..Default::default()
                    },
                )
                .await?;
                (None, pre.current_task_definition.clone(), target.clone())
            }
            None => {
                let image = pre.image.clone().expect("preflight resolves the image");
                let (revision, rollback_copy) = self
                    .new_revision(
                        &pre.current_task_definition,
                        app,
                        &image,
                        &d.image_tag,
                        pre.base,
                    )
                    .await?;
                let from_td = match rollback_copy {
                    Some(copy) => {
                        let arn = self.register(copy).await?;
                        tracing::warn!(inactive = %pre.current_task_definition, copy = %arn,
                            "the running revision is deregistered; registered a copy to roll back to");
                        arn
                    }
                    None => pre.current_task_definition.clone(),
                };
                // Notes ride in the reason until the outcome replaces or extends it.
                let notes = revision.notes().join("; ");
                for note in revision.notes() {
                    tracing::warn!(%note, "a container keeps its image");
                }
                self.update(
                    d,
                    DeploymentUpdate {
                        state: Some(deploy_state::DEPLOYING),
                        image: Some(image.clone()),
                        from_task_definition: Some(from_td.clone()),
                        reason: (!notes.is_empty()).then(|| format!("note: {notes}")),
                        started: true,
                        ..Default::default()
                    },
                )
                .await?;
                let to_td = self.register(revision).await?;
                tracing::info!(task_definition = %to_td, "registered a new revision");
                self.update(
                    d,
                    DeploymentUpdate {
                        to_task_definition: Some(to_td.clone()),
                        ..Default::default()
                    },
                )
                .await?;
                (Some(image), from_td, to_td)
            }
        };
        self.notify(d, EventKind::DeployStarted, image.clone(), None);
        let (ecs_id, source) = self.update_service(app, &to_td).await?;
        self.update(
            d,
            DeploymentUpdate {
                ecs_deployment_id: Some(ecs_id.clone()),
                ..Default::default()
            },
        )
        .await?;
        let d = self.reload(d.id).await?;
        self.watch(&d, app, (&from_td, &to_td), &ecs_id, source)
            .await
    }

    /// Picks up a deploy that was `deploying` when slipway stopped. UpdateService is sent
    /// again only when it never reached ECS: the service still runs `from_td` from before this
    /// deploy started, and this deploy is still the newest for the service. Anything else that
    /// happened meanwhile (an operator's hotfix, ECS's circuit breaker, a newer deploy) is
    /// reported as it is and left alone.
    async fn resume(&self, d: &Deployment, app: &AppConfig) -> Result<(), Stop> {
        let (Some(from_td), Some(to_td)) = (&d.from_task_definition, &d.to_task_definition) else {
            // Stopped before the new revision was recorded: nothing reached ECS; start over.
            return self.start(d, app).await;
        };
        if d.stage.as_deref() == Some(ROLLING_BACK) {
            return self.resume_rollback(d, app, (from_td, to_td)).await;
        }
        if let Some(ecs_id) = &d.ecs_deployment_id {
            let d = self.reload(d.id).await?;
            return self
                .watch(&d, app, (from_td, to_td), ecs_id, Source::list())
                .await;
        }
        let service = self.describe_service(app).await?;
        let primary = rollout::primary(service.deployments());
        let started_ms = d.started_ms.unwrap_or(0);
        let created_since_start = |x: &aws_sdk_ecs::types::Deployment| {
            x.created_at()
                .is_some_and(|t| t.to_millis().unwrap_or(0) >= started_ms)
        };
        let (ecs_id, source) = match primary {
            // Our UpdateService reached ECS before slipway stopped: follow that deployment.
            Some(p) if p.task_definition() == Some(to_td.as_str()) => {
                (p.id.clone().unwrap_or_default(), Source::list())
            }
            // The service runs what it ran before this deploy, and nothing new happened to it.
            Some(p) if p.task_definition() == Some(from_td.as_str()) && !created_since_start(p) => {
                if let Some(newer) = self
                    .journal
                    .newer_deployment(d)
                    .await
                    .map_err(journal_stop)?
                {
                    return Err(Stop::Superseded(format!(
                        "{} while slipway was stopped; nothing was changed",
                        superseded_by(&newer)
                    )));
                }
                let started = self.update_service(app, to_td).await?;
                // The rollout starts now: the timeout counts from here, not from before the
                // downtime.
                self.update(
                    d,
                    DeploymentUpdate {
                        restart_clock: true,
                        ..Default::default()
                    },
                )
                .await?;
                started
            }
            // ECS (circuit breaker) put the old revision back after our update reached it.
            Some(p) if p.task_definition() == Some(from_td.as_str()) => {
                return Err(Stop::Failed(format!(
                    "ECS rolled the service back to {from_td} while slipway was stopped; \
                     nothing was changed"
                )));
            }
            Some(p) => {
                return Err(Stop::Failed(format!(
                    "replaced while slipway was stopped: the service now runs {}; nothing was \
                     changed",
                    p.task_definition().unwrap_or("an unknown task definition")
                )));
            }
            None => {
                return Err(Stop::Failed(format!(
                    "service {} has no PRIMARY deployment; nothing was changed",
                    app.service
                )));
            }
        };
        self.update(
            d,
            DeploymentUpdate {
                ecs_deployment_id: Some(ecs_id.clone()),
                ..Default::default()
            },
        )
        .await?;
        let d = self.reload(d.id).await?;
        self.watch(&d, app, (from_td, to_td), &ecs_id, source).await
    }

    async fn reload(&self, id: i64) -> Result<Deployment, Stop> {
        self.journal
            .deployment(id)
            .await
            .map_err(journal_stop)?
            .ok_or_else(|| Stop::Failed("the deployment record disappeared".into()))
    }

    /// ECR image, cluster and service, checked concurrently; with them, the task definition
    /// the journal says the service runs (the base of the new revision, when ECS agrees).
    async fn preflight(&self, d: &Deployment, app: &AppConfig) -> Result<Preflight, Stop> {
        let rollback = d.target_task_definition.is_some();
        let guess = if rollback {
            None
        } else {
            match self
                .journal
                .last_deployed_task_definition(&d.service_key)
                .await
            {
                Ok(guess) => guess,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last deployed task definition");
                    None
                }
            }
        };
        let (image, service, guessed) = tokio::join!(
            async {
                if rollback {
                    Ok(None)
                } else {
                    self.resolve_image(app, &d.image_tag).await.map(Some)
                }
            },
            self.describe_service(app),
            async {
                match &guess {
                    Some(td) => self.describe_task_definition(td).await.ok(),
                    None => None,
                }
            },
        );
        let image = image?;
        let service = service?;
        if let Some(controller) = service.deployment_controller().map(|c| c.r#type()) {
            use aws_sdk_ecs::types::DeploymentControllerType as Controller;
            if matches!(controller, Controller::CodeDeploy | Controller::External) {
                return Err(Stop::Failed(format!(
                    "service {} uses the {} deployment controller, which slipway cannot deploy \
                     with UpdateService; use the ECS controller (ECS's own blue/green: \
                     deploymentConfiguration.strategy = BLUE_GREEN, or rolling)",
                    app.service,
                    controller.as_str()
                )));
            }
        }
        let status = service.status().unwrap_or("UNKNOWN");
        if status != "ACTIVE" {
            return Err(Stop::Failed(format!(
                "service {} in cluster {} is {status}, not ACTIVE",
                app.service, app.cluster
            )));
        }
        let current = service.task_definition().ok_or_else(|| {
            Stop::Failed(format!("service {} has no task definition", app.service))
        })?;
        // Someone else changed the service since slipway's last deploy: read what it runs.
        let base = guessed.filter(|_| guess.as_deref() == Some(current));
        Ok(Preflight {
            current_task_definition: current.to_owned(),
            image,
            base,
        })
    }

    /// The image to deploy: `<repository uri>:<tag>`, or `@<digest>` with `pin_digest`.
    /// One call: the repository URI follows from the registry id ECR reports and the region.
    async fn resolve_image(&self, app: &AppConfig, tag: &str) -> Result<String, Stop> {
        let repo = &app.ecr_repository;
        let images = self
            .ecr
            .describe_images()
            .repository_name(repo)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send()
            .await
            .map_err(|e| {
                let e = AwsError::from_sdk("ECR DescribeImages", &e);
                match e.code.as_deref() {
                    Some("ImageNotFoundException") => {
                        Stop::Failed(format!("image {repo}:{tag} not found in ECR"))
                    }
                    Some("RepositoryNotFoundException") => {
                        Stop::Failed(format!("ECR repository {repo} not found"))
                    }
                    _ => Stop::from(e),
                }
            })?;
        let detail = images
            .image_details()
            .first()
            .ok_or_else(|| Stop::Failed(format!("image {repo}:{tag} not found in ECR")))?;
        let registry = detail
            .registry_id()
            .ok_or_else(|| Stop::Failed(format!("ECR did not say which registry holds {repo}")))?;
        let region = self
            .ecr
            .config()
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| Stop::Failed("no AWS region configured".into()))?;
        let uri = repository_uri(registry, &region, repo);
        let image = if app.pin_digest {
            let digest = detail.image_digest().ok_or_else(|| {
                Stop::Failed(format!("ECR did not give the digest of {repo}:{tag}"))
            })?;
            ImageRef::with_digest(&uri, digest)
        } else {
            ImageRef::with_tag(&uri, tag)
        }
        .map_err(|e| Stop::Failed(e.to_string()))?;
        Ok(image.to_string())
    }

    async fn describe_service(&self, app: &AppConfig) -> Result<aws_sdk_ecs::types::Service, Stop> {
        let out = self
            .describe_service_once(app)
            .await
            .map_err(|e| match e.code.as_deref() {
                // DescribeServices says so when the cluster is missing: no DescribeClusters.
                Some("ClusterNotFoundException") => {
                    Stop::Failed(format!("cluster {} not found", app.cluster))
                }
                _ => Stop::from(e),
            })?;
        if let Some(f) = out.failures().first() {
            return Err(Stop::Failed(format!(
                "service {} not found in cluster {} ({})",
                app.service,
                app.cluster,
                f.reason().unwrap_or("MISSING")
            )));
        }
        out.services
            .and_then(|s| s.into_iter().next())
            .ok_or_else(|| {
                Stop::Failed(format!(
                    "service {} not found in cluster {}",
                    app.service, app.cluster
                ))
            })
    }

    async fn describe_service_once(
        &self,
        app: &AppConfig,
    ) -> Result<aws_sdk_ecs::operation::describe_services::DescribeServicesOutput, AwsError> {
        self.ecs
            .describe_services()
            .cluster(&app.cluster)
            .services(&app.service)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeServices", &e))
    }

    /// The base (the task definition the service runs now, with its tags) with the new image.
    async fn new_revision(
        &self,
        current: &str,
        app: &AppConfig,
        image: &str,
        version: &str,
        base: Option<DescribedTaskDefinition>,
    ) -> Result<(NewRevision, Option<NewRevision>), Stop> {
        let out = match base {
            Some(out) => out,
            None => self.describe_task_definition(current).await?,
        };
        let td = out
            .task_definition()
            .ok_or_else(|| Stop::Failed(format!("task definition {current} not found")))?;
        let revision = NewRevision::for_containers(td, out.tags(), &app.containers, image, version)
            .map_err(|e| Stop::Failed(format!("{e} ({current})")))?;
        // A deregistered revision can't be rolled back to: a copy of it can.
        let rollback_copy =
            if td.status() == Some(&aws_sdk_ecs::types::TaskDefinitionStatus::Inactive) {
                Some(
                    NewRevision::copy_of(td, out.tags(), &app.container)
                        .map_err(|e| Stop::Failed(format!("{e} ({current})")))?,
                )
            } else {
                None
            };
        Ok((revision, rollback_copy))
    }

    /// A task definition with its tags (they come only when asked for).
    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<DescribedTaskDefinition, AwsError> {
        self.ecs
            .describe_task_definition()
            .task_definition(task_definition)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeTaskDefinition", &e))
    }

    async fn register(&self, revision: NewRevision) -> Result<String, Stop> {
        let out = revision
            .apply(self.ecs.register_task_definition())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS RegisterTaskDefinition", &e))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| Stop::Failed("RegisterTaskDefinition returned no ARN".into()))
    }

    /// Points the service at `task_definition`; returns the id of ECS's new deployment and how
    /// to watch it.
    async fn update_service(
        &self,
        app: &AppConfig,
        task_definition: &str,
    ) -> Result<(String, Source), Stop> {
        let out = self
            .ecs
            .update_service()
            .cluster(&app.cluster)
            .service(&app.service)
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS UpdateService", &e))?;
        let service = out
            .service()
            .ok_or_else(|| Stop::Failed("UpdateService returned no service".into()))?;
        // Only a PRIMARY deployment of this task definition is ours to follow.
        let id = rollout::primary(service.deployments())
            .filter(|x| x.task_definition() == Some(task_definition))
            .and_then(|x| x.id.clone())
            .ok_or_else(|| {
                Stop::Failed(format!(
                    "UpdateService returned no PRIMARY deployment of {task_definition}"
                ))
            })?;
        let source = if rollout::wants_service_deployment(service, &id) {
            Source::service_deployment()
        } else {
            Source::list()
        };
        Ok((id, source))
    }

    /// Polls ECS until deployment `ecs_id` (from `from_td` to `to_td`) ends, or `deadline`
    /// passes (then one last look decides). Records progress when `d` is given. One AWS call a
    /// poll (two at the first poll of a service deployment: finding it, then reading it).
    async fn follow(
        &self,
        d: Option<&Deployment>,
        app: &AppConfig,
        ecs_id: &str,
        (from_td, to_td): (&str, &str),
        deadline: i64,
        mut source: Source,
    ) -> Result<Followed, Stop> {
        let timing = &self.config.deploy;
        let mut delay = timing.poll_initial;
        let mut last_looks = 0;
        let mut looked_past_deadline = false;
        loop {
            let left = deadline - self.now();
            if left > 0 {
                tokio::time::sleep(delay.min(Duration::from_millis(left as u64))).await;
                delay = next_poll(delay, timing);
            } else if looked_past_deadline {
                // The last look gave no answer: look again soon.
                tokio::time::sleep(timing.poll_initial).await;
            }
            let past_deadline = deadline <= self.now();
            looked_past_deadline |= past_deadline;
            match self.look(app, ecs_id, (from_td, to_td), &mut source).await {
                Ok(Looked::Rollout(Rollout::InProgress(p), stage)) => {
                    tracing::debug!(
                        running = p.running,
                        desired = p.desired,
                        failed = p.failed,
                        stage = stage.as_deref().unwrap_or("-"),
                        "rollout in progress"
                    );
                    if let Some(d) = d {
                        self.progress(d, p, stage).await;
                    }
                    if past_deadline {
                        return Ok(Followed::TimedOut);
                    }
                    continue;
                }
                Ok(Looked::Rollout(other, _)) => {
                    if let (Some(d), Rollout::Completed(p) | Rollout::CompletedThenReplaced(p, _)) =
                        (d, &other)
                    {
                        self.progress(d, *p, None).await;
                    }
                    return Ok(Followed::Ended(other));
                }
                // Nothing to judge by yet: the watch just switched to the service deployment,
                // or ECS does not list it yet. That is no failing look, and uses up no last
                // look: it happens at most SD_MISSES times, then the deployments list judges.
                Ok(Looked::Nothing) => continue,
                Err(e) => {
                    if e.is_throttling() {
                        delay = timing.poll_max;
                    }
                    tracing::warn!(error = %e, "polling the rollout failed; will poll again");
                }
            }
            // The last look decides between success and a rollback: past the deadline a failing
            // look is tried again, a few times, never taken as the rollout's failure.
            if past_deadline {
                last_looks += 1;
                if last_looks >= LAST_LOOKS {
                    return Ok(Followed::TimedOut);
                }
            }
        }
    }

    /// One look at the rollout: ECS's service deployment where it judges better than the
    /// deployments list (see [`rollout::wants_service_deployment`]), the list otherwise and
    /// whenever the service deployment cannot be read.
    async fn look(
        &self,
        app: &AppConfig,
        ecs_id: &str,
        (from_td, to_td): (&str, &str),
        source: &mut Source,
    ) -> Result<Looked, AwsError> {
        // Why ECS's service deployment stopped, when it did: the list then decides.
        let mut stopped = None;
        if let Source::ServiceDeployment { arn, misses } = source {
            match self.read_service_deployment(app, ecs_id, arn).await {
                Ok(Some(sd)) => match rollout::evaluate_service_deployment(&sd, from_td, to_td) {
                    Verdict::Rollout(r, stage) => return Ok(Looked::Rollout(r, stage)),
                    Verdict::AskTheService(why) => {
                        tracing::info!(%why, "asking the service's deployments list");
                        stopped = Some(why);
                        *source = Source::List { allow_sd: false };
                    }
                },
                Ok(None) => {
                    *misses += 1;
                    if *misses < SD_MISSES {
                        return Ok(Looked::Nothing);
                    }
                    tracing::warn!(
                        "ECS lists no service deployment of {ecs_id}; watching the deployments list"
                    );
                    *source = Source::List { allow_sd: false };
                }
                Err(e) if e.retryable => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e,
                        "cannot read ECS's service deployments; watching the deployments list");
                    *source = Source::List { allow_sd: false };
                }
            }
        }
        let out = self.describe_service_once(app).await?;
        let Some(service) = out.services().first() else {
            return Ok(Looked::Rollout(
                Rollout::Replaced(format!("service {} disappeared", app.service)),
                None,
            ));
        };
        if matches!(source, Source::List { allow_sd: true })
            && rollout::wants_service_deployment(service, ecs_id)
        {
            tracing::info!("watching ECS's service deployment");
            *source = Source::service_deployment();
            // The list's verdict is not trusted here; the service deployment's comes next poll.
            return Ok(Looked::Nothing);
        }
        let ours_primary_without_state = rollout::primary(service.deployments())
            .is_some_and(|x| x.id.as_deref() == Some(ecs_id) && x.rollout_state.is_none());
        let verdict = evaluate(service.deployments(), ecs_id, from_td, to_td);
        Ok(match (stopped, verdict) {
            // ECS stopped ours and still runs it: it failed without a rollback by ECS.
            (Some(why), Rollout::InProgress(_) | Rollout::Completed(_))
                if ours_primary_without_state =>
            {
                Looked::Rollout(Rollout::NeedsRollback(why), None)
            }
            (_, verdict) => Looked::Rollout(verdict, None),
        })
    }

    /// Our service deployment: found once by its target revision (ListServiceDeployments),
    /// then read by ARN (DescribeServiceDeployments). `None` while ECS does not list it yet.
    async fn read_service_deployment(
        &self,
        app: &AppConfig,
        ecs_id: &str,
        arn: &mut Option<String>,
    ) -> Result<Option<ServiceDeployment>, AwsError> {
        if arn.is_none() {
            let out = self
                .ecs
                .list_service_deployments()
                .cluster(&app.cluster)
                .service(&app.service)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ECS ListServiceDeployments", &e))?;
            *arn = out
                .service_deployments()
                .iter()
                .find(|b| rollout::targets(b.target_service_revision_arn(), ecs_id))
                .and_then(|b| b.service_deployment_arn().map(str::to_owned));
            match arn {
                Some(found) => {
                    tracing::info!(service_deployment = %found, "found ECS's service deployment")
                }
                None => return Ok(None),
            }
        }
        let Some(found) = arn.as_deref() else {
            return Ok(None);
        };
        let out = self
            .ecs
            .describe_service_deployments()
            .service_deployment_arns(found)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeServiceDeployments", &e))?;
        Ok(out.service_deployments().first().cloned())
    }

    /// Best effort: progress is for people watching, not for correctness.
    async fn progress(&self, d: &Deployment, p: rollout::Progress, stage: Option<String>) {
        let update = DeploymentUpdate {
            progress: Some((p.running, p.desired, p.failed)),
            stage,
            ..Default::default()
        };
        if let Err(e) = self
            .journal
            .update_deployment(d.id, update, self.now())
            .await
        {
            tracing::warn!(error = %e, "could not journal the rollout's progress");
        }
    }

    /// Watches the rollout until it ends or `rollout_timeout` (counted from the journaled
    /// start, so a restart does not extend it).
    async fn watch(
        &self,
        d: &Deployment,
        app: &AppConfig,
        (from_td, to_td): (&str, &str),
        ecs_id: &str,
        source: Source,
    ) -> Result<(), Stop> {
        let started = d.started_ms.unwrap_or_else(|| self.now());
        let deadline = started + app.rollout_timeout.as_millis() as i64;
        tracing::info!(ecs_deployment = %ecs_id, "watching the rollout");
        match self
            .follow(Some(d), app, ecs_id, (from_td, to_td), deadline, source)
            .await?
        {
            Followed::Ended(Rollout::Completed(p)) => {
                let reason = completed(to_td, p, d.reason.as_deref());
                self.finish(d, deploy_state::SUCCEEDED, reason).await;
                Ok(())
            }
            Followed::Ended(Rollout::CompletedThenReplaced(p, note)) => {
                let note = match &d.reason {
                    Some(earlier) => format!("{note}; {earlier}"),
                    None => note,
                };
                let reason = completed(to_td, p, Some(&note));
                self.finish(d, deploy_state::SUCCEEDED, reason).await;
                Ok(())
            }
            Followed::Ended(
                Rollout::RolledBackByEcs(why)
                | Rollout::EcsRollbackFailed(why)
                | Rollout::Replaced(why),
            ) => Err(Stop::Failed(why)),
            Followed::Ended(Rollout::NeedsRollback(why)) => {
                self.roll_back(d, app, from_td, to_td, why).await
            }
            Followed::Ended(Rollout::InProgress(_)) | Followed::TimedOut => {
                let why = format!(
                    "rollout did not complete within {}s",
                    app.rollout_timeout.as_secs()
                );
                self.roll_back(d, app, from_td, to_td, why).await
            }
        }
    }

    /// Puts `from_td` back and waits for that rollout too: `rolled_back` only once ECS says
    /// the previous task definition runs again.
    async fn roll_back(
        &self,
        d: &Deployment,
        app: &AppConfig,
        from_td: &str,
        to_td: &str,
        why: String,
    ) -> Result<(), Stop> {
        tracing::warn!(reason = %why, to = %from_td, "rolling back");
        // Journaled before UpdateService: a restart from here on finishes the rollback.
        self.update(
            d,
            DeploymentUpdate {
                stage: Some(ROLLING_BACK.to_owned()),
                reason: Some(why.clone()),
                ..Default::default()
            },
        )
        .await?;
        let (rollback_id, source) = match self.update_service(app, from_td).await {
            Ok(started) => started,
            Err(Stop::Interrupted(e)) => return Err(Stop::Interrupted(e)),
            Err(Stop::Wait) => return Err(Stop::Wait),
            Err(Stop::Failed(e)) | Err(Stop::Superseded(e)) => {
                return Err(Stop::Failed(format!(
                    "{why}; rolling back to {from_td} failed: {e}"
                )))
            }
        };
        self.follow_rollback(d, app, (from_td, to_td), why, &rollback_id, source)
            .await
    }

    /// Picks up slipway's own rollback after a restart: follows it if it reached ECS, sends it
    /// again if the service still runs the failed revision, and touches nothing otherwise.
    async fn resume_rollback(
        &self,
        d: &Deployment,
        app: &AppConfig,
        (from_td, to_td): (&str, &str),
    ) -> Result<(), Stop> {
        let why = d
            .reason
            .clone()
            .unwrap_or_else(|| "the deploy was being rolled back".to_owned());
        tracing::info!(reason = %why, "resuming the rollback that was in progress");
        let service = self.describe_service(app).await?;
        let primary = rollout::primary(service.deployments());
        match primary.map(|p| (p.task_definition(), p.id.clone().unwrap_or_default())) {
            Some((Some(td), id)) if td == from_td => {
                self.follow_rollback(d, app, (from_td, to_td), why, &id, Source::list())
                    .await
            }
            Some((Some(td), _)) if td == to_td => self.roll_back(d, app, from_td, to_td, why).await,
            Some((td, _)) => Err(Stop::Failed(format!(
                "{why}; while slipway was stopped during its rollback, the service moved to {}; \
                 nothing was changed",
                td.unwrap_or("an unknown task definition")
            ))),
            None => Err(Stop::Failed(format!(
                "{why}; service {} has no PRIMARY deployment; nothing was changed",
                app.service
            ))),
        }
    }

    /// Watches slipway's rollback (ECS deployment `rollback_id`, back to `from_td`) to its end.
    async fn follow_rollback(
        &self,
        d: &Deployment,
        app: &AppConfig,
        (from_td, to_td): (&str, &str),
        why: String,
        rollback_id: &str,
        source: Source,
    ) -> Result<(), Stop> {
        let deadline = self.now() + app.rollout_timeout.as_millis() as i64;
        let followed = self
            .follow(None, app, rollback_id, (to_td, from_td), deadline, source)
            .await?;
        match followed {
            Followed::Ended(Rollout::Completed(_) | Rollout::CompletedThenReplaced(..)) => {
                self.finish(
                    d,
                    deploy_state::ROLLED_BACK,
                    format!("{why}; rolled back to {from_td}"),
                )
                .await;
                Ok(())
            }
            Followed::Ended(
                Rollout::NeedsRollback(e)
                | Rollout::RolledBackByEcs(e)
                | Rollout::EcsRollbackFailed(e)
                | Rollout::Replaced(e),
            ) => Err(Stop::Failed(format!(
                "{why}; the rollback to {from_td} failed: {e}"
            ))),
            Followed::Ended(Rollout::InProgress(_)) | Followed::TimedOut => {
                Err(Stop::Failed(format!(
                    "{why}; the rollback to {from_td} did not complete within {}s",
                    app.rollout_timeout.as_secs()
                )))
            }
        }
    }

    async fn update(&self, d: &Deployment, u: DeploymentUpdate) -> Result<(), Stop> {
        self.journal
            .update_deployment(d.id, u, self.now())
            .await
            .map_err(journal_stop)
    }

    /// Records a terminal state and says so (logs and notification).
    async fn finish(&self, d: &Deployment, state: &'static str, reason: String) {
        match state {
            deploy_state::SUCCEEDED => tracing::info!(%reason, "deploy succeeded"),
            deploy_state::SUPERSEDED => tracing::info!(%reason, "deploy superseded"),
            _ => tracing::error!(%reason, state, "deploy did not succeed"),
        }
        let update = DeploymentUpdate {
            state: Some(state),
            reason: Some(reason.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .journal
            .update_deployment(d.id, update, self.now())
            .await
        {
            tracing::error!(error = %e, "could not journal the deploy's outcome");
        }
        let now = self.journal.deployment(d.id).await.ok().flatten();
        metrics::counter!(crate::metrics::DEPLOYMENTS, "app" => d.app.clone(), "outcome" => state)
            .increment(1);
        if let Some(started) = now.as_ref().and_then(|n| n.started_ms).or(d.started_ms) {
            let secs = (self.now() - started).max(0) as f64 / 1000.0;
            metrics::histogram!(crate::metrics::DEPLOYMENT_DURATION, "app" => d.app.clone())
                .record(secs);
        }
        let image = match now {
            Some(now) => now.image,
            None => d.image.clone(),
        };
        let kind = match state {
            deploy_state::SUCCEEDED => EventKind::DeploySucceeded,
            deploy_state::ROLLED_BACK => EventKind::RolledBack,
            deploy_state::SUPERSEDED => EventKind::Superseded,
            _ => EventKind::DeployFailed,
        };
        self.notify(d, kind, image, Some(reason));
    }

    fn notify(
        &self,
        d: &Deployment,
        kind: EventKind,
        image: Option<String>,
        reason: Option<String>,
    ) {
        self.notifier.send(Notification {
            kind,
            app: d.app.clone(),
            sha: d.sha.clone(),
            image,
            reason,
            log_link: d.log_link.clone(),
            deployment: Some(d.id),
            build_id: d.build_id.clone(),
        });
    }
}

fn journal_stop(e: crate::journal::JournalError) -> Stop {
    Stop::Interrupted(format!("journal: {e}"))
}

/// An ECR repository's URI, as ECR itself forms it.
fn repository_uri(registry: &str, region: &str, repo: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("{registry}.dkr.ecr.{region}.{domain}/{repo}")
}

/// What a completed rollout says: a service scaled to zero completed without running anything.
fn completed(to_td: &str, p: rollout::Progress, note: Option<&str>) -> String {
    let mut reason = format!("rollout completed: {to_td}");
    if p.desired == 0 {
        reason.push_str("; desired count 0: no task started");
    }
    if let Some(note) = note {
        reason.push_str("; ");
        reason.push_str(note);
    }
    reason
}

/// The wait before the poll after one that waited `delay`: doubling up to `poll_max`.
fn next_poll(delay: Duration, timing: &crate::config::DeployTiming) -> Duration {
    (delay * 2).min(timing.poll_max)
}

fn superseded_by(newer: &Deployment) -> String {
    format!(
        "superseded by deployment {} of {} ({})",
        newer.id,
        short(&newer.sha),
        newer.state
    )
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: at most 4 AWS calls a minute per deploy while watching, with the default
    /// polling. A poll is one call (a test through the proxy counts them); the first poll of
    /// a service deployment adds one ListServiceDeployments.
    #[test]
    fn default_polling_makes_at_most_four_calls_a_minute() {
        let timing = crate::config::Config::parse(crate::config::MINIMAL_FOR_TESTS)
            .expect("a minimal config")
            .deploy;
        let mut at = Duration::ZERO;
        let mut delay = timing.poll_initial;
        let mut polls = vec![];
        while at < Duration::from_secs(3600) {
            at += delay;
            polls.push(at);
            delay = next_poll(delay, &timing);
        }
        for (i, start) in polls.iter().enumerate() {
            let in_a_minute = polls[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(60))
                .count();
            // The first window also pays for finding the service deployment.
            let calls = in_a_minute + usize::from(i == 0);
            assert!(
                calls <= 4,
                "{calls} calls in the minute from {start:?}: {polls:?}"
            );
        }
    }
}
