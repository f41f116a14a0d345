//! Deploying one commit to an ECS service, and the worker that runs deploys.
//!
//! Every deploy is a journal record first (`pending`); this worker picks records up, one at a
//! time per ECS service, and moves each to a terminal state: `succeeded` only when ECS says our
//! deployment `COMPLETED`; otherwise `failed`, `rolled_back` or `superseded`, with the reason.
//! A restart resumes `deploying` records where they stopped (the rollout timeout counts from
//! the journaled start), so a crash never starts a second deploy of the same build.

pub mod deadline;
pub mod rollout;
pub mod service_deployment;
pub mod taskdef;
pub mod watchers;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecr::types::ImageIdentifier;
use aws_sdk_ecs::types::{DeploymentStrategy, ServiceDeploymentStatus, TaskDefinitionField};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::{AppConfig, Config};
use crate::image::ImageRef;
use crate::notify::{EventKind, Notification, Notifier};
use crate::store::{deploy_state, millis, Deployment, DeploymentUpdate, Store, StoreError};
use rollout::{evaluate, Earlier, Rollout, Verdict};
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
    /// This replica no longer holds the service's lease (issue 26): it does and writes
    /// nothing more for the deploy; the replica that took the lease resumes it.
    Lost,
}

tokio::task_local! {
    /// The service lease the deploy being driven runs under (see [`Deployer::drive`]).
    static DRIVING: crate::replicas::Claim;
}

/// How a rollout is watched.
enum Source {
    /// DescribeServices: the service's deployments list. `allow_sd`: switch to the service
    /// deployment when the list shows it judges better; `known`: its ARN, when journaled.
    List {
        allow_sd: bool,
        known: Option<String>,
    },
    /// ECS's service deployment of ours: its ARN once found and confirmed; `named`: the one
    /// ECS named (`currentServiceDeployment`), still to be confirmed.
    ServiceDeployment {
        arn: Option<String>,
        named: Option<String>,
        misses: u32,
    },
}

impl Source {
    fn list(known: Option<String>) -> Source {
        Source::List {
            allow_sd: true,
            known,
        }
    }

    fn service_deployment(arn: Option<String>, named: Option<String>) -> Source {
        Source::ServiceDeployment {
            arn,
            named,
            misses: 0,
        }
    }

    /// Our service deployment's ARN, when the last verdict came from it.
    fn watched_service_deployment(&self) -> Option<String> {
        match self {
            Source::ServiceDeployment { arn, .. } => arn.clone(),
            Source::List { .. } => None,
        }
    }
}

/// What a watch follows: a rollout to `to_td` from the revisions in `earlier`, started at
/// `started_ms`.
#[derive(Clone, Copy)]
struct Target<'a> {
    earlier: Earlier<'a>,
    to_td: &'a str,
    started_ms: i64,
}

/// The stage of a deploy whose rollback by slipway is under way.
const ROLLING_BACK: &str = "ROLLING_BACK";
/// Polls in which ECS may not list a new service deployment yet before the list is watched.
const SD_MISSES: u32 = 3;
/// Failing looks in a row (each with the SDK's retries) before the deploy says it cannot see
/// the service; past the deadline the first failing look says so.
const FAILING_LOOKS: u32 = 3;
/// The stage of a deploy whose service deployment slipway asked ECS to roll back.
const ROLLBACK_REQUESTED: &str = "ROLLBACK_REQUESTED";
/// How often, past the deadline, slipway looks again for a service deployment it could not
/// identify (ListServiceDeployments and DescribeServiceRevisions: two calls).
const IDENTIFY_EVERY_MS: i64 = 5 * 60 * 1000;

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
    /// Past the deadline, a successful look showed ours still open; `open_sd`: our service
    /// deployment, when it is what showed it.
    TimedOut {
        open_sd: Option<String>,
    },
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
    /// How long the rollout may take, from the service's deployment strategy.
    deadline: deadline::Deadline,
}

type DescribedTaskDefinition =
    aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;

pub struct Deployer {
    pub journal: Store,
    /// Each app's ECS and ECR clients: its own account's through its role (issue 27).
    accounts: crate::accounts::Accounts,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    pub notifier: Notifier,
    pub wake: Arc<Notify>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deploys whose "cannot see the service" was notified (once each).
    unseen_told: Mutex<HashSet<i64>>,
    /// Deploys past their deadline with no service deployment to roll back, notified (once
    /// each).
    past_deadline_told: Mutex<HashSet<i64>>,
    /// The rollouts being watched, for ECS's deployment events to wake.
    pub watchers: Arc<watchers::Watchers>,
    /// Each service's deploys are driven under its lease (issue 26).
    replicas: Arc<crate::replicas::Replicas>,
    /// What the notifications of a promotion's deploy say of it (issue 27), by deployment.
    promotions: Mutex<HashMap<i64, crate::notify::PromotionNote>>,
}

impl Deployer {
    pub fn new(
        journal: Store,
        accounts: &crate::accounts::Accounts,
        clock: SharedClock,
        config: Arc<Config>,
        notifier: Notifier,
        wake: Arc<Notify>,
        replicas: Arc<crate::replicas::Replicas>,
    ) -> Deployer {
        // Every ECS and ECR call of a deploy is refused before it is sent once the deploy's
        // lease no longer counts as held here (a replica waking from a pause acts on nothing).
        let accounts = accounts.map(
            |ecs| {
                aws_sdk_ecs::Client::from_conf(
                    ecs.config().to_builder().interceptor(LeaseGuard).build(),
                )
            },
            |ecr| {
                aws_sdk_ecr::Client::from_conf(
                    ecr.config().to_builder().interceptor(LeaseGuard).build(),
                )
            },
        );
        Deployer {
            journal,
            accounts,
            clock,
            config,
            notifier,
            wake,
            locks: Mutex::default(),
            unseen_told: Mutex::default(),
            past_deadline_told: Mutex::default(),
            watchers: Arc::default(),
            replicas,
            promotions: Mutex::default(),
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

    /// The ECS client of `app`'s account.
    fn ecs(&self, app: &AppConfig) -> &aws_sdk_ecs::Client {
        &self.accounts.of(app).ecs
    }

    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Takes one deployment to a terminal state, under its service's lease: a replica that
    /// cannot take the lease leaves the deploy to the one that holds it; one that loses it
    /// midway stops at once (the next holder resumes from the store).
    async fn drive(&self, id: i64) {
        let Ok(Some(first)) = self.journal.deployment(id).await else {
            return;
        };
        let lock = self.lock_for(&first.service_key);
        let _one_at_a_time = lock.lock().await;
        let lease = crate::replicas::deploy(&first.service_key);
        let Some(claim) = self.replicas.try_claim(&lease).await else {
            tracing::debug!(lease, "another replica deploys this service now");
            // Looked at again after a poll (the deploy stays in this worker's in-flight set
            // until then), to take it over if that replica dies.
            return tokio::time::sleep(self.replicas.poll()).await;
        };
        let run = DRIVING.scope(claim.clone(), self.drive_held(id));
        if claim.while_held(run).await.is_none() {
            tracing::warn!(
                lease,
                "the service's lease was lost: this replica stops the deploy"
            );
        }
        self.replicas.release(claim).await;
    }

    async fn drive_held(&self, id: i64) {
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
        if let Some(p) = d.promotion {
            if let Ok(Some(p)) = self.journal.promotion(p).await {
                let note = crate::notify::PromotionNote::of(&p);
                self.promotions
                    .lock()
                    .expect("promotions")
                    .insert(d.id, note);
            }
        }
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
            Err(Stop::Lost) => {
                tracing::warn!("the service's lease is no longer this replica's: stopping here");
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
                let (to_td, note) = self.usable_target(app, target).await?;
                self.update_with_deadline(
                    d,
                    DeploymentUpdate {
                        state: Some(deploy_state::DEPLOYING),
                        from_task_definition: Some(pre.current_task_definition.clone()),
                        to_task_definition: Some(to_td.clone()),
                        reason: note,
                        started: true,
                        ..Default::default()
                    },
                    &pre.deadline,
                )
                .await?;
                (None, pre.current_task_definition.clone(), to_td)
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
                let (from_td, from_original) = match rollback_copy {
                    Some(copy) => {
                        let arn = self.register(app, copy).await?;
                        tracing::warn!(inactive = %pre.current_task_definition, copy = %arn,
                            "the running revision is deregistered; registered a copy to roll back to");
                        (arn, Some(pre.current_task_definition.clone()))
                    }
                    None => (pre.current_task_definition.clone(), None),
                };
                // Notes ride in the reason until the outcome replaces or extends it.
                let notes = revision.notes().join("; ");
                for note in revision.notes() {
                    tracing::warn!(%note, "a container keeps its image");
                }
                self.update_with_deadline(
                    d,
                    DeploymentUpdate {
                        state: Some(deploy_state::DEPLOYING),
                        image: Some(image.clone()),
                        from_task_definition: Some(from_td.clone()),
                        from_original,
                        reason: (!notes.is_empty()).then(|| format!("note: {notes}")),
                        started: true,
                        ..Default::default()
                    },
                    &pre.deadline,
                )
                .await?;
                let to_td = self.register(app, revision).await?;
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
                .watch(
                    &d,
                    app,
                    (from_td, to_td),
                    ecs_id,
                    Source::list(d.service_deployment_arn.clone()),
                )
                .await;
        }
        let service = self.describe_service(app).await?;
        let primary = rollout::primary(service.deployments());
        let started_ms = d.started_ms.unwrap_or(0);
        // Whether anything happened to the service since the deploy started: a deployment
        // created or updated since (ECS's rollback makes the deployment it goes back to
        // IN_PROGRESS again, keeping its old `createdAt`, so `updatedAt` says it), or any
        // deployment of our revision at all.
        let since_start = |t: Option<&aws_smithy_types::DateTime>| {
            t.is_some_and(|t| t.to_millis().unwrap_or(0) >= started_ms)
        };
        let touched = service.deployments().iter().any(|x| {
            since_start(x.created_at())
                || since_start(x.updated_at())
                || x.task_definition() == Some(to_td.as_str())
        });
        let ours = service
            .deployments()
            .iter()
            .find(|x| x.task_definition() == Some(to_td.as_str()))
            .and_then(|x| x.id.clone());
        let earlier = Self::earlier(d, from_td);
        let (ecs_id, source) = match primary {
            // Our UpdateService reached ECS before slipway stopped: follow that deployment.
            Some(p) if p.task_definition() == Some(to_td.as_str()) => {
                (p.id.clone().unwrap_or_default(), Source::list(None))
            }
            // It reached ECS, which is rolling it back or has: reported once ECS's rollback
            // ends, and nothing starts on top of it until then.
            Some(p) if ours.is_some() && earlier_has(&earlier, p.task_definition()) => {
                (ours.clone().unwrap_or_default(), Source::list(None))
            }
            // The service runs what it ran before this deploy, and nothing happened to it.
            Some(p) if p.task_definition() == Some(from_td.as_str()) && !touched => {
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
                let deadline =
                    deadline::for_service(service.deployment_configuration(), app.rollout_timeout);
                self.update_with_deadline(
                    d,
                    DeploymentUpdate {
                        restart_clock: true,
                        ..Default::default()
                    },
                    &deadline,
                )
                .await?;
                started
            }
            // ECS (circuit breaker) put the old revision back after our update reached it.
            Some(p) if earlier_has(&earlier, p.task_definition()) => {
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
        // An app in another account (issue 27): its role first, so a refusal reads as itself.
        self.accounts
            .of(app)
            .check_role()
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let source = match d.promotion {
            Some(id) if !rollback => self.promoted_from(id).await?,
            _ => None,
        };
        if let Some(source) = &source {
            let here = self
                .accounts
                .of(app)
                .ecr
                .config()
                .region()
                .map(|r| r.to_string());
            if here.as_deref() != Some(source.region.as_str()) {
                return Err(Stop::Failed(format!(
                    "the image to promote is in region {}, this app's ECR calls go to {}: a \
                     promotion to another region is not supported",
                    source.region,
                    here.as_deref().unwrap_or("no region")
                )));
            }
        }
        let (image, service, guessed) = tokio::join!(
            async {
                if rollback {
                    Ok(None)
                } else {
                    self.resolve_image(app, &d.image_tag, source.as_ref())
                        .await
                        .map(Some)
                }
            },
            self.describe_service(app),
            async {
                match &guess {
                    Some(td) => self.describe_task_definition(app, td).await.ok(),
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
            deadline: deadline::for_service(
                service.deployment_configuration(),
                app.rollout_timeout,
            ),
        })
    }

    /// Where a promotion's image is: the registry and repository of the image its source
    /// deploy ran, so the promoted app deploys exactly that image, in whichever account holds
    /// it (None: the source's image is not an ECR image, or the records are gone; the app's
    /// own `ecr_repository` is looked in).
    async fn promoted_from(&self, promotion: i64) -> Result<Option<SourceImage>, Stop> {
        let unread = |e: crate::store::StoreError| {
            Stop::Interrupted(format!("cannot read where the image to promote is: {e}"))
        };
        let Some(p) = self.journal.promotion(promotion).await.map_err(unread)? else {
            return Ok(None);
        };
        let source = self
            .journal
            .deployment(p.source_deployment)
            .await
            .map_err(unread)?;
        Ok(source
            .and_then(|d| d.image)
            .and_then(|image| SourceImage::of(&image)))
    }

    /// The image to deploy: `<repository uri>:<tag>`, or `@<digest>` with `pin_digest`.
    /// One call: the repository URI follows from the registry id ECR reports and the region.
    /// A promotion's deploy names the image by its digest (`sha256:…` in place of the tag, a
    /// character no tag has): that exact image, `<repository uri>@<digest>`, or a failure;
    /// looked for where its source deploy's image is (`source`), through this app's account.
    async fn resolve_image(
        &self,
        app: &AppConfig,
        tag: &str,
        source: Option<&SourceImage>,
    ) -> Result<String, Stop> {
        let repo = source.map_or(app.ecr_repository.as_str(), |s| s.repository.as_str());
        let registry_id = source.map(|s| s.registry.clone());
        let by_digest = tag.starts_with("sha256:");
        let id = if by_digest {
            ImageIdentifier::builder().image_digest(tag).build()
        } else {
            ImageIdentifier::builder().image_tag(tag).build()
        };
        let clients = self.accounts.of(app);
        let images = clients
            .ecr
            .describe_images()
            .set_registry_id(registry_id.clone())
            .repository_name(repo)
            .image_ids(id)
            .send()
            .await
            .map_err(|e| {
                let e = AwsError::from_sdk("ECR DescribeImages", &e);
                // Another account's repository that this app's account cannot read: AWS
                // answers AccessDenied, or, hiding it, that there is no such repository.
                let foreign = match (clients.account(), &registry_id) {
                    (Some(account), Some(registry)) if account != registry => Some((
                        format!("account {account} (app {}'s role_arn)", app.name),
                        format!("account {account}"),
                    )),
                    (None, Some(_)) if self.config.images_elsewhere(app) => Some((
                        format!("slipway's own account (app {})", app.name),
                        "slipway's account".to_owned(),
                    )),
                    _ => None,
                };
                let refused = matches!(
                    e.code.as_deref(),
                    Some("AccessDeniedException" | "RepositoryNotFoundException")
                ) || e.message.contains("access denied");
                match (foreign, e.code.as_deref()) {
                    (Some((who, grantee)), _) if refused => Stop::Failed(format!(
                        "{who} cannot see the image {repo}@{tag} in account {registry}'s \
                         registry ({}): the repository {repo} needs a repository policy letting \
                         {grantee} pull it (ecr:BatchGetImage, ecr:GetDownloadUrlForLayer, \
                         ecr:BatchCheckLayerAvailability) and describe it (ecr:DescribeImages); \
                         `slipway provision --policy` prints it",
                        e.message,
                        registry = registry_id.as_deref().unwrap_or_default(),
                    )),
                    (_, Some("ImageNotFoundException")) if by_digest => Stop::Failed(format!(
                        "image {repo}@{tag} not found in ECR: the image to promote is not in \
                         the repository its source deploy ran it from"
                    )),
                    (_, Some("ImageNotFoundException")) => {
                        Stop::Failed(format!("image {repo}:{tag} not found in ECR"))
                    }
                    (_, Some("RepositoryNotFoundException")) => {
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
        let region = clients
            .ecr
            .config()
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| Stop::Failed("no AWS region configured".into()))?;
        let uri = repository_uri(registry, &region, repo);
        let image = if by_digest {
            ImageRef::with_digest(&uri, tag)
        } else if app.pin_digest {
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
        self.ecs(app)
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
            None => self.describe_task_definition(app, current).await?,
        };
        let td = out
            .task_definition()
            .ok_or_else(|| Stop::Failed(format!("task definition {current} not found")))?;
        let revision = NewRevision::for_containers(td, out.tags(), &app.containers, image, version)
            .map_err(|e| Stop::Failed(format!("{e} ({current})")))?;
        // A deregistered revision (INACTIVE, DELETE_IN_PROGRESS) can't be rolled back to: a
        // copy of it can.
        let rollback_copy = if !is_active(td) {
            Some(
                NewRevision::copy_of(td, out.tags(), &app.container)
                    .map_err(|e| Stop::Failed(format!("{e} ({current})")))?,
            )
        } else {
            None
        };
        Ok((revision, rollback_copy))
    }

    /// The revision a rollback can put back: `target` itself while it is ACTIVE; otherwise
    /// (INACTIVE, DELETE_IN_PROGRESS: ECS refuses UpdateService to them) an exact copy,
    /// registered now, with a note saying so.
    async fn usable_target(
        &self,
        app: &AppConfig,
        target: &str,
    ) -> Result<(String, Option<String>), Stop> {
        let out = self.describe_task_definition(app, target).await?;
        let td = out
            .task_definition()
            .ok_or_else(|| Stop::Failed(format!("task definition {target} not found")))?;
        if is_active(td) {
            return Ok((target.to_owned(), None));
        }
        let status = td.status().map_or("UNKNOWN", |s| s.as_str()).to_owned();
        let copy = NewRevision::copy_of(td, out.tags(), &app.container)
            .map_err(|e| Stop::Failed(format!("{e} ({target})")))?;
        let arn = self.register(app, copy).await?;
        tracing::warn!(target, %status, copy = %arn, "the rollback target is deregistered; \
            registered a copy to roll back to");
        Ok((
            arn.clone(),
            Some(format!(
                "note: {target} is {status}; rolled back to its copy {arn}"
            )),
        ))
    }

    /// A task definition with its tags (they come only when asked for).
    async fn describe_task_definition(
        &self,
        app: &AppConfig,
        task_definition: &str,
    ) -> Result<DescribedTaskDefinition, AwsError> {
        self.ecs(app)
            .describe_task_definition()
            .task_definition(task_definition)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeTaskDefinition", &e))
    }

    async fn register(&self, app: &AppConfig, revision: NewRevision) -> Result<String, Stop> {
        self.still_held().await?;
        let out = revision
            .apply(self.ecs(app).register_task_definition())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS RegisterTaskDefinition", &e))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| Stop::Failed("RegisterTaskDefinition returned no ARN".into()))
    }

    /// Points the service at `task_definition`; returns the id of ECS's new deployment (when
    /// the answer shows it PRIMARY) and how to watch it. An answer without a PRIMARY deployment
    /// of `task_definition` still means ECS took the update: the watch finds it.
    async fn update_service(
        &self,
        app: &AppConfig,
        task_definition: &str,
    ) -> Result<(String, Source), Stop> {
        self.still_held().await?;
        let out = self
            .ecs(app)
            .update_service()
            .cluster(&app.cluster)
            .service(&app.service)
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS UpdateService", &e))?;
        let Some(service) = out.service() else {
            tracing::warn!("UpdateService returned no service; the watch looks for the deployment");
            return Ok((String::new(), Source::list(None)));
        };
        // Only a PRIMARY deployment of this task definition is ours to follow.
        let id = rollout::primary(service.deployments())
            .filter(|x| x.task_definition() == Some(task_definition))
            .and_then(|x| x.id.clone())
            .unwrap_or_default();
        if id.is_empty() {
            tracing::warn!(
                task_definition,
                "UpdateService's answer shows no PRIMARY deployment of it; the watch looks for it"
            );
        }
        let named = service.current_service_deployment().map(str::to_owned);
        let source = if rollout::wants_service_deployment(service, &id) {
            Source::service_deployment(None, named)
        } else {
            Source::list(None)
        };
        Ok((id, source))
    }

    /// Polls ECS until deployment `ecs_id` (to `target.to_td`) ends, or a look past `deadline`
    /// shows it still open. A failing look decides nothing: it is tried again with backoff, and
    /// while looks fail the deploy says "cannot see the service" (journal and one
    /// notification). Records progress when `d` is given. One AWS call a poll (two at the
    /// first poll of a service deployment: finding it, then reading it).
    /// `strategy`: ECS's own strategy of the service as the last look at it saw it (`None`: a
    /// rolling update).
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        d: Option<&Deployment>,
        app: &AppConfig,
        ecs_id: &mut String,
        target: Target<'_>,
        deadline: i64,
        source: &mut Source,
        strategy: &mut Option<DeploymentStrategy>,
    ) -> Result<Followed, Stop> {
        let timing = &self.config.deploy;
        let mut delay = timing.poll_initial;
        let mut looked_past_deadline = false;
        let mut failing = 0;
        let mut unseen = false;
        // ECS's events for this deployment wake the watch: it looks at once.
        let mut woken_by = (!ecs_id.is_empty()).then(|| self.watchers.watch(ecs_id));
        loop {
            let left = deadline - self.now();
            // While ECS's events arrive, polling is only the fallback for a lost one.
            let mut wait = match &woken_by {
                Some(r) if r.events_arrive() => delay.max(timing.poll_with_events),
                _ => delay,
            };
            if left > 0 {
                wait = wait.min(Duration::from_millis(left as u64));
            }
            if left > 0 || looked_past_deadline {
                // Past the deadline only a look that succeeds decides: look again, backing off.
                match &woken_by {
                    Some(r) => tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = r.watch.wake.notified() => {
                            tracing::info!("ECS's deployment event: looking now");
                        }
                    },
                    None => tokio::time::sleep(wait).await,
                }
                delay = next_poll(delay, timing);
            }
            let past_deadline = deadline <= self.now();
            looked_past_deadline |= past_deadline;
            let looked = self
                .look(d, app, ecs_id, target, past_deadline, source, strategy)
                .await;
            if woken_by.is_none() && !ecs_id.is_empty() {
                woken_by = Some(self.watchers.watch(ecs_id));
            }
            if looked.is_ok() {
                failing = 0;
                if unseen {
                    unseen = false;
                    if let Some(d) = d {
                        self.record_unseen(d, String::new()).await;
                    }
                }
            }
            match looked {
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
                        return Ok(Followed::TimedOut {
                            open_sd: source.watched_service_deployment(),
                        });
                    }
                }
                // ECS is rolling ours back: nothing is sent on top of it, deadline or not.
                Ok(Looked::Rollout(Rollout::EcsRollingBack(p), stage)) => {
                    tracing::info!("ECS is rolling the deployment back");
                    if let Some(d) = d {
                        let stage = stage.unwrap_or_else(|| "ROLLBACK_IN_PROGRESS".to_owned());
                        self.progress(d, p, Some(stage)).await;
                    }
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
                // or ECS does not list it yet, or shows no deployment of ours yet.
                Ok(Looked::Nothing) => {}
                Err(e) => {
                    if e.is_throttling() {
                        delay = timing.poll_max;
                    }
                    failing += 1;
                    tracing::warn!(error = %e, failing, "looking at the rollout failed; will look again");
                    if let Some(d) = d.filter(|_| past_deadline || failing >= FAILING_LOOKS) {
                        if !unseen {
                            unseen = true;
                            self.record_unseen(d, format!("cannot see the service: {e}"))
                                .await;
                        }
                    }
                }
            }
        }
    }

    /// Says on the deployment that slipway cannot see the service (`""` clears it); the first
    /// time for this deploy, a notification says so too.
    async fn record_unseen(&self, d: &Deployment, why: String) {
        let first = !why.is_empty() && self.unseen_told.lock().expect("unseen set").insert(d.id);
        if !why.is_empty() {
            tracing::warn!(reason = %why, "nothing is decided until slipway sees the service");
        }
        let update = DeploymentUpdate {
            unseen: Some(why.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .journal
            .update_deployment(d.id, fenced(update), self.now())
            .await
        {
            tracing::warn!(error = %e, "could not journal that the service cannot be seen");
        }
        if first {
            self.notify(d, EventKind::ServiceUnseen, d.image.clone(), Some(why));
        }
    }

    /// One look at the rollout: ECS's service deployment where it judges better than the
    /// deployments list (see [`rollout::wants_service_deployment`]), the list otherwise and
    /// whenever the service deployment cannot be read.
    #[allow(clippy::too_many_arguments)]
    async fn look(
        &self,
        d: Option<&Deployment>,
        app: &AppConfig,
        ecs_id: &mut String,
        target: Target<'_>,
        past_deadline: bool,
        source: &mut Source,
        strategy: &mut Option<DeploymentStrategy>,
    ) -> Result<Looked, AwsError> {
        let (from_td, to_td) = (target.earlier.from_td, target.to_td);
        // Why ECS's service deployment stopped, when it did: the list then decides.
        let mut stopped = None;
        if let Source::ServiceDeployment { arn, named, misses } = source {
            let read = match arn {
                Some(found) => service_deployment::describe(self.ecs(app), found).await,
                None => {
                    let wanted = service_deployment::Wanted {
                        cluster: &app.cluster,
                        service: &app.service,
                        named: named.as_deref(),
                        started_ms: target.started_ms,
                        to_td,
                    };
                    match service_deployment::find(self.ecs(app), &wanted).await {
                        Ok(Some(found)) => {
                            tracing::info!(service_deployment = %found.arn,
                                "found ECS's service deployment");
                            *arn = Some(found.arn.clone());
                            if let Some(d) = d {
                                let update = DeploymentUpdate {
                                    service_deployment_arn: Some(found.arn),
                                    ..Default::default()
                                };
                                if let Err(e) = self
                                    .journal
                                    .update_deployment(d.id, fenced(update), self.now())
                                    .await
                                {
                                    tracing::warn!(error = %e,
                                        "could not journal the service deployment");
                                }
                            }
                            match found.read {
                                Some(sd) => Ok(Some(sd)),
                                // Read at the next poll: one call a poll.
                                None => return Ok(Looked::Nothing),
                            }
                        }
                        other => other.map(|_| None),
                    }
                }
            };
            match read {
                Ok(Some(sd)) => match rollout::evaluate_service_deployment(&sd, from_td, to_td) {
                    Verdict::Rollout(r, stage) => return Ok(Looked::Rollout(r, stage)),
                    Verdict::AskTheService(why) => {
                        tracing::info!(%why, "asking the service's deployments list");
                        stopped = Some(why);
                        *source = Source::List {
                            allow_sd: false,
                            known: None,
                        };
                    }
                },
                Ok(None) => {
                    *misses += 1;
                    if *misses < SD_MISSES {
                        return Ok(Looked::Nothing);
                    }
                    tracing::warn!(
                        "ECS lists no service deployment of {to_td}; watching the deployments list"
                    );
                    *source = Source::List {
                        allow_sd: false,
                        known: None,
                    };
                }
                Err(e) if e.retryable => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e,
                        "cannot read ECS's service deployments; watching the deployments list");
                    *source = Source::List {
                        allow_sd: false,
                        known: None,
                    };
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
        *strategy = rollout::ecs_strategy(service);
        if ecs_id.is_empty() {
            // UpdateService's answer named no deployment of ours: find it in the list.
            let ours = rollout::primary(service.deployments())
                .filter(|x| x.task_definition() == Some(to_td))
                .or_else(|| {
                    service
                        .deployments()
                        .iter()
                        .find(|x| x.task_definition() == Some(to_td))
                })
                .and_then(|x| x.id.clone());
            match ours {
                Some(id) => {
                    tracing::info!(ecs_deployment = %id, "found ECS's deployment of this deploy");
                    *ecs_id = id.clone();
                    if let Some(d) = d {
                        let update = DeploymentUpdate {
                            ecs_deployment_id: Some(id),
                            ..Default::default()
                        };
                        if let Err(e) = self
                            .journal
                            .update_deployment(d.id, fenced(update), self.now())
                            .await
                        {
                            tracing::warn!(error = %e, "could not journal the ECS deployment");
                        }
                    }
                }
                None if past_deadline => {
                    return Ok(Looked::Rollout(
                        Rollout::Replaced(format!(
                            "ECS shows no deployment of {to_td} (the service runs {}); nothing \
                             was changed",
                            service
                                .task_definition()
                                .unwrap_or("an unknown task definition")
                        )),
                        None,
                    ))
                }
                None => return Ok(Looked::Nothing),
            }
        }
        if let Source::List {
            allow_sd: true,
            known,
        } = source
        {
            if rollout::wants_service_deployment(service, ecs_id) {
                tracing::info!("watching ECS's service deployment");
                let named = service.current_service_deployment().map(str::to_owned);
                *source = Source::service_deployment(known.take(), named);
                // The list's verdict is not trusted here; the service deployment's comes next poll.
                return Ok(Looked::Nothing);
            }
        }
        let ours_primary_without_state = rollout::primary(service.deployments())
            .is_some_and(|x| x.id.as_deref() == Some(ecs_id.as_str()) && x.rollout_state.is_none());
        let verdict = evaluate(service.deployments(), ecs_id, target.earlier, to_td);
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

    /// Best effort: progress is for people watching, not for correctness.
    async fn progress(&self, d: &Deployment, p: rollout::Progress, stage: Option<String>) {
        let update = DeploymentUpdate {
            progress: Some((p.running, p.desired, p.failed)),
            stage,
            ..Default::default()
        };
        if let Err(e) = self
            .journal
            .update_deployment(d.id, fenced(update), self.now())
            .await
        {
            tracing::warn!(error = %e, "could not journal the rollout's progress");
        }
    }

    /// The deploy's deadline (ms) and why: as journaled when the rollout started (from the
    /// service's strategy, see [`deadline`]), else `rollout_timeout` from the journaled start,
    /// so a restart does not extend it.
    fn deadline_of(&self, d: &Deployment, app: &AppConfig) -> (i64, String) {
        let started = d.started_ms.unwrap_or_else(|| self.now());
        match (d.deadline_ms, &d.deadline_why) {
            (Some(at), Some(why)) => (at, why.clone()),
            _ => (
                started + app.rollout_timeout.as_millis() as i64,
                format!("rollout_timeout_secs = {}", app.rollout_timeout.as_secs()),
            ),
        }
    }

    fn earlier<'a>(d: &'a Deployment, from_td: &'a str) -> Earlier<'a> {
        Earlier {
            from_td,
            original: d.from_original.as_deref(),
        }
    }

    /// Watches the rollout until it ends or a look past the deadline shows it still open:
    /// then ECS rolls back its own service deployment (StopServiceDeployment), or, for a
    /// rolling update, slipway puts `from_td` back. A service with ECS's own strategy never
    /// gets UpdateService(from_td): without a service deployment of ours to stop, slipway says
    /// why (the deploy's reason, one notification) and sends nothing.
    async fn watch(
        &self,
        d: &Deployment,
        app: &AppConfig,
        (from_td, to_td): (&str, &str),
        ecs_id: &str,
        mut source: Source,
    ) -> Result<(), Stop> {
        let (deadline, deadline_why) = self.deadline_of(d, app);
        let started = d.started_ms.unwrap_or_else(|| self.now());
        let target = Target {
            earlier: Self::earlier(d, from_td),
            to_td,
            started_ms: started,
        };
        let mut ecs_id = ecs_id.to_owned();
        tracing::info!(ecs_deployment = %ecs_id, deadline = %deadline_why, "watching the rollout");
        let late = || {
            format!(
                "rollout did not complete within {}s ({deadline_why})",
                // To the nearest second: journals written before the start and the deadline
                // shared one clock reading have a deadline a few milliseconds short.
                ((deadline - started).max(0) + 500) / 1000
            )
        };
        // Set once slipway asked ECS to roll its service deployment back, journaled before the
        // request: after a restart, ECS's rollback is still the one slipway asked for.
        let mut stop_requested: Option<String> = d
            .rollback_requested_ms
            .map(|_| d.reason.clone().unwrap_or_else(late));
        // Whether ECS took that request in this run (after a restart it is sent again while the
        // service deployment is still open: ECS had not acted on it).
        let mut stop_sent = false;
        // ECS's own strategy of the service, as the last look saw it; `None`: a rolling update.
        let mut strategy: Option<DeploymentStrategy> = None;
        // When, past the deadline, slipway may look again for a service deployment it lost.
        let mut identify_at = 0;
        loop {
            let followed = self
                .follow(
                    Some(d),
                    app,
                    &mut ecs_id,
                    target,
                    deadline,
                    &mut source,
                    &mut strategy,
                )
                .await?;
            // Where a rolling update is rolled back by slipway: why, and whether the rollout
            // failed (else it is still open past the deadline).
            let (why, failed) = match followed {
                Followed::Ended(Rollout::Completed(p)) => {
                    let reason = completed(to_td, p, d.reason.as_deref());
                    self.finish(d, deploy_state::SUCCEEDED, reason).await;
                    return Ok(());
                }
                Followed::Ended(Rollout::CompletedThenReplaced(p, note)) => {
                    let note = match &d.reason {
                        Some(earlier) => format!("{note}; {earlier}"),
                        None => note,
                    };
                    let reason = completed(to_td, p, Some(&note));
                    self.finish(d, deploy_state::SUCCEEDED, reason).await;
                    return Ok(());
                }
                Followed::Ended(Rollout::RolledBackByEcs(ecs_why)) => {
                    return match &stop_requested {
                        Some(why) => {
                            self.finish(
                                d,
                                deploy_state::ROLLED_BACK,
                                format!("{why}; ECS rolled its service deployment back: {ecs_why}"),
                            )
                            .await;
                            Ok(())
                        }
                        None => Err(Stop::Failed(ecs_why)),
                    };
                }
                Followed::Ended(Rollout::EcsRollbackFailed(e)) => {
                    return match &stop_requested {
                        Some(why) => Err(Stop::Failed(format!("{why}; {e}"))),
                        None => Err(Stop::Failed(e)),
                    };
                }
                Followed::Ended(Rollout::Replaced(why)) => return Err(Stop::Failed(why)),
                Followed::TimedOut { open_sd: Some(arn) } => {
                    if !stop_sent {
                        let why = stop_requested.clone().unwrap_or_else(late);
                        stop_requested = Some(why.clone());
                        stop_sent = self.request_ecs_rollback(d, app, &arn, &why).await?;
                    }
                    // ECS takes a moment to show the rollback: look again after a poll's wait.
                    tokio::time::sleep(self.config.deploy.poll_max).await;
                    continue;
                }
                Followed::Ended(Rollout::NeedsRollback(why)) => (why, true),
                Followed::Ended(Rollout::InProgress(_) | Rollout::EcsRollingBack(_))
                | Followed::TimedOut { open_sd: None } => (late(), false),
            };
            let Some(ecs_strategy) = strategy.clone() else {
                return self.roll_back(d, app, from_td, to_td, why).await;
            };
            // ECS's own strategy, and the watch lost its service deployment (ECS named none
            // and listed none while the watch looked, or it could not be read): only ECS rolls
            // back, never an UpdateService over its service deployment. Look for it once more;
            // without it, nothing is sent.
            let now = self.now();
            if failed || now >= identify_at {
                identify_at = now + IDENTIFY_EVERY_MS;
                match self.identify_service_deployment(d, app, target).await {
                    Ok((arn, open)) => {
                        source = Source::service_deployment(Some(arn.clone()), None);
                        if open && !stop_sent {
                            let why = stop_requested.clone().unwrap_or(why);
                            stop_requested = Some(why.clone());
                            stop_sent = self.request_ecs_rollback(d, app, &arn, &why).await?;
                        }
                    }
                    Err(not_found) => {
                        let said = format!(
                            "{why}; {not_found}: nothing was sent to ECS (on a {} service only \
                             ECS rolls back)",
                            ecs_strategy.as_str()
                        );
                        if failed {
                            return Err(Stop::Failed(said));
                        }
                        self.record_past_deadline(
                            d,
                            format!("{said}; watching until ECS ends the rollout"),
                        )
                        .await;
                    }
                }
            }
            tokio::time::sleep(self.config.deploy.poll_max).await;
        }
    }

    /// ECS's service deployment of this rollout, when the watch lost it: the service
    /// deployments ECS lists as created since the deploy's start, kept only once its target
    /// revision runs `to_td` (as [`service_deployment::find`] confirms them). `(arn, open)`:
    /// `open` while it is PENDING or IN_PROGRESS (ECS can be asked to roll it back); otherwise
    /// ECS is rolling it back or has ended it, and the watch follows it. Err: why there is
    /// none to roll back.
    async fn identify_service_deployment(
        &self,
        d: &Deployment,
        app: &AppConfig,
        target: Target<'_>,
    ) -> Result<(String, bool), String> {
        let to_td = target.to_td;
        let wanted = service_deployment::Wanted {
            cluster: &app.cluster,
            service: &app.service,
            named: None,
            started_ms: target.started_ms,
            to_td,
        };
        let found = match service_deployment::find(self.ecs(app), &wanted).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(format!(
                    "ECS lists no service deployment of {to_td} created since the deploy started"
                ))
            }
            Err(e) => return Err(format!("cannot list ECS's service deployments ({e})")),
        };
        let read = match found.read {
            Some(sd) => Some(sd),
            None => service_deployment::describe(self.ecs(app), &found.arn)
                .await
                .map_err(|e| format!("cannot read ECS's service deployment {} ({e})", found.arn))?,
        };
        let status = read.as_ref().and_then(|sd| sd.status()).cloned();
        tracing::info!(service_deployment = %found.arn,
            status = status.as_ref().map_or("-", |s| s.as_str()),
            "identified ECS's service deployment");
        self.update(
            d,
            DeploymentUpdate {
                service_deployment_arn: Some(found.arn.clone()),
                ..Default::default()
            },
        )
        .await
        .map_err(|_| "cannot journal ECS's service deployment".to_owned())?;
        use ServiceDeploymentStatus as S;
        match status {
            Some(S::Pending | S::InProgress) => Ok((found.arn, true)),
            Some(
                S::RollbackRequested
                | S::RollbackInProgress
                | S::RollbackSuccessful
                | S::RollbackFailed
                | S::Successful,
            ) => Ok((found.arn, false)),
            other => Err(format!(
                "ECS's service deployment {} of {to_td} is {}",
                found.arn,
                other.as_ref().map_or("of unknown status", |s| s.as_str())
            )),
        }
    }

    /// Says on the deployment why a deploy past its deadline is not rolled back (its reason);
    /// the first time for this deploy, a notification says so too.
    async fn record_past_deadline(&self, d: &Deployment, why: String) {
        let first = self
            .past_deadline_told
            .lock()
            .expect("past-deadline set")
            .insert(d.id);
        if first {
            tracing::warn!(reason = %why, "past the deadline with no rollback; nothing sent");
        }
        let update = DeploymentUpdate {
            reason: Some(why.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .journal
            .update_deployment(d.id, fenced(update), self.now())
            .await
        {
            tracing::warn!(error = %e, "could not journal why nothing was rolled back");
        }
        if first {
            self.notify(d, EventKind::PastDeadline, d.image.clone(), Some(why));
        }
    }

    /// Past the deadline, ECS's open service deployment is stopped with a rollback by ECS
    /// (StopServiceDeployment, `ROLLBACK`): never an UpdateService on top of it. Whether ECS
    /// took the request; a failure that may pass is tried again after the next look, one that
    /// will not (no permission) fails the deploy and leaves the service deployment to ECS.
    async fn request_ecs_rollback(
        &self,
        d: &Deployment,
        app: &AppConfig,
        arn: &str,
        why: &str,
    ) -> Result<bool, Stop> {
        tracing::warn!(reason = %why, service_deployment = %arn,
            "asking ECS to roll its service deployment back");
        self.update(
            d,
            DeploymentUpdate {
                reason: Some(why.to_owned()),
                stage: Some(ROLLBACK_REQUESTED.to_owned()),
                rollback_requested: true,
                ..Default::default()
            },
        )
        .await?;
        self.still_held().await?;
        match service_deployment::stop_and_roll_back(self.ecs(app), arn).await {
            Ok(()) => Ok(true),
            Err(e) if e.retryable || e.code.as_deref() == Some("ConflictException") => {
                // Retryable, or ECS's deployment moved on meanwhile: the next look says how.
                tracing::warn!(error = %e, "StopServiceDeployment failed; looking again");
                Ok(false)
            }
            Err(e) => Err(Stop::Failed(format!(
                "{why}; ECS refused to roll its service deployment back ({e}); nothing else \
                 was sent: the service deployment is left to ECS"
            ))),
        }
    }

    /// Puts `from_td` back and waits for that rollout too: `rolled_back` only once ECS says
    /// the previous task definition runs again. Rolling updates only: a service with ECS's own
    /// strategy is rolled back by ECS (see [`Self::watch`]).
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
            Err(Stop::Lost) => return Err(Stop::Lost),
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
                self.follow_rollback(d, app, (from_td, to_td), why, &id, Source::list(None))
                    .await
            }
            // Never an UpdateService over ECS's own strategy's service deployment.
            Some((Some(td), _)) if td == to_td => match rollout::ecs_strategy(&service) {
                None => self.roll_back(d, app, from_td, to_td, why).await,
                Some(strategy) => Err(Stop::Failed(format!(
                    "{why}; service {} now deploys with ECS's {} strategy, which only ECS rolls \
                     back; nothing was sent",
                    app.service,
                    strategy.as_str()
                ))),
            },
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
        mut source: Source,
    ) -> Result<(), Stop> {
        let started_ms = self.now();
        let deadline = started_ms + app.rollout_timeout.as_millis() as i64;
        let target = Target {
            earlier: Earlier::only(to_td),
            to_td: from_td,
            started_ms,
        };
        let mut rollback_id = rollback_id.to_owned();
        let followed = self
            .follow(
                None,
                app,
                &mut rollback_id,
                target,
                deadline,
                &mut source,
                &mut None,
            )
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
            Followed::Ended(Rollout::InProgress(_) | Rollout::EcsRollingBack(_))
            | Followed::TimedOut { .. } => Err(Stop::Failed(format!(
                "{why}; the rollback to {from_td} did not complete within {}s",
                app.rollout_timeout.as_secs()
            ))),
        }
    }

    async fn update(&self, d: &Deployment, u: DeploymentUpdate) -> Result<(), Stop> {
        self.update_at(d, u, self.now()).await
    }

    /// [`Self::update`] with the rollout's deadline, both as of one clock reading: the
    /// deadline is exactly `deadline.after` past the start `u` journals.
    async fn update_with_deadline(
        &self,
        d: &Deployment,
        mut u: DeploymentUpdate,
        deadline: &deadline::Deadline,
    ) -> Result<(), Stop> {
        let now = self.now();
        u.deadline = Some(deadline_at(now, deadline));
        self.update_at(d, u, now).await
    }

    async fn update_at(&self, d: &Deployment, u: DeploymentUpdate, now: i64) -> Result<(), Stop> {
        if DRIVING.try_with(|c| c.held_here()) == Ok(false) {
            return Err(Stop::Lost);
        }
        self.journal
            .update_deployment(d.id, fenced(u), now)
            .await
            .map_err(journal_stop)
    }

    /// Right before a side effect on ECS: still this replica's deploy? (Its lease counted as
    /// held here and carrying its fence in the store.)
    async fn still_held(&self) -> Result<(), Stop> {
        let Ok(claim) = DRIVING.try_with(Clone::clone) else {
            return Ok(());
        };
        if self.replicas.check(&claim).await {
            Ok(())
        } else {
            Err(Stop::Lost)
        }
    }

    /// Records a terminal state and says so (logs and notification).
    async fn finish(&self, d: &Deployment, state: &'static str, reason: String) {
        match state {
            deploy_state::SUCCEEDED => tracing::info!(%reason, "deploy succeeded"),
            deploy_state::SUPERSEDED => tracing::info!(%reason, "deploy superseded"),
            _ => tracing::error!(%reason, state, "deploy did not succeed"),
        }
        let update = fenced(DeploymentUpdate {
            state: Some(state),
            reason: Some(reason.clone()),
            ..Default::default()
        });
        match self
            .journal
            .update_deployment(d.id, fenced(update), self.now())
            .await
        {
            Ok(()) => {}
            // Another replica has the deploy now: the outcome is its to record and tell.
            Err(StoreError::Fenced(lease)) => {
                return tracing::warn!(lease, "the outcome was not recorded: the lease was lost")
            }
            Err(e) => tracing::error!(error = %e, "could not journal the deploy's outcome"),
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
        self.promotions.lock().expect("promotions").remove(&d.id);
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
            tag: d.tag.clone(),
            promotion: self
                .promotions
                .lock()
                .expect("promotions")
                .get(&d.id)
                .cloned(),
        });
    }
}

/// Whether ECS still takes UpdateService to this revision (not INACTIVE or DELETE_IN_PROGRESS).
fn is_active(td: &aws_sdk_ecs::types::TaskDefinition) -> bool {
    matches!(
        td.status(),
        None | Some(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
    )
}

/// Whether `td` is one of the revisions the service ran before the deploy.
fn earlier_has(earlier: &Earlier<'_>, td: Option<&str>) -> bool {
    td.is_some_and(|td| td == earlier.from_td || Some(td) == earlier.original)
}

fn journal_stop(e: crate::store::StoreError) -> Stop {
    match e {
        StoreError::Fenced(_) => Stop::Lost,
        e => Stop::Interrupted(format!("journal: {e}")),
    }
}

/// Refuses an AWS call made for a deploy whose service lease no longer counts as held here.
#[derive(Debug)]
struct LeaseGuard;

impl aws_smithy_runtime_api::client::interceptors::Intercept for LeaseGuard {
    fn name(&self) -> &'static str {
        "slipway::deploy::LeaseGuard"
    }

    fn read_before_execution(
        &self,
        _: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        match DRIVING.try_with(|c| c.held_here()) {
            Ok(false) => Err("this replica no longer holds the deploy's service lease".into()),
            _ => Ok(()),
        }
    }
}

/// `u`, conditional on the lease of the deploy being driven (when there is one).
fn fenced(mut u: DeploymentUpdate) -> DeploymentUpdate {
    u.fence = DRIVING.try_with(|c| c.fence()).ok();
    u
}

/// The registry and repository of an ECR image reference
/// (`<registry id>.dkr.ecr.<region>.<domain>/<repository>…`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceImage {
    registry: String,
    repository: String,
    /// The registry's region (`dkr.ecr.<region>.…` or `dkr.ecr-fips.<region>.…`).
    region: String,
}

impl SourceImage {
    fn of(image: &str) -> Option<SourceImage> {
        let image = ImageRef::parse(image).ok()?;
        let host = image.registry()?;
        let (registry, rest) = host.split_once('.')?;
        let ecr = registry.len() == 12
            && registry.bytes().all(|b| b.is_ascii_digit())
            && (rest.starts_with("dkr.ecr.") || rest.starts_with("dkr.ecr-fips."));
        let region = rest.split('.').nth(2)?;
        ecr.then(|| SourceImage {
            registry: registry.to_owned(),
            repository: image.repository().to_owned(),
            region: region.to_owned(),
        })
    }
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

/// The journaled deadline of a rollout that starts at `start_ms`.
fn deadline_at(start_ms: i64, deadline: &deadline::Deadline) -> (i64, String) {
    tracing::info!(secs = deadline.after.as_secs(), why = %deadline.why, "rollout deadline");
    (
        start_ms + deadline.after.as_millis() as i64,
        format!("{}s: {}", deadline.after.as_secs(), deadline.why),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: at most 4 AWS calls a minute per deploy while watching, with the default
    /// polling. A poll is one call (a test through the proxy counts them); the first poll of
    /// a service deployment adds one call (DescribeServiceRevisions confirming the one ECS
    /// named; when ECS names none, the listing is read at the next poll instead).
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
