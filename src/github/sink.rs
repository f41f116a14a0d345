//! Commit statuses and GitHub Deployments, fed by the same events as the notifications.
//!
//! [`GithubSink`] only enqueues; one background task puts each update in the journal's outbox
//! (so a restart or a crash while GitHub is slow or down loses none), another posts the outbox
//! in order, so GitHub sees the states of a commit in the order they happened. An update that
//! fails for a reason worth retrying (GitHub unreachable, 5xx, rate limit) stays first in line
//! and is tried again with backoff until it is older than `[github] give_up_after_hours`
//! (never by a count of attempts, which a rate limit's reset could outlast). The GitHub
//! deployment made for each slipway
//! deployment is journaled, so its later statuses (and `inactive` when a newer deploy replaces
//! it) go to the same one after a restart.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};

use super::client::{As, Client};
use super::GithubError;
use crate::clock::SharedClock;
use crate::config::{AppConfig, Config};
use crate::notify::{EventKind, Flushing, Notification, Target};
use crate::store::{millis, GithubDeployment, Store};

/// Events waiting to be posted; more are dropped (with a warning), like notifications.
const QUEUE_CAPACITY: usize = 1024;
/// GitHub rejects longer status descriptions.
const MAX_DESCRIPTION: usize = 140;
const OUTBOX_BACKOFF_INITIAL: Duration = Duration::from_secs(2);
const OUTBOX_BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildState {
    Started,
    Succeeded,
    Failed,
}

#[derive(Debug, Serialize, Deserialize)]
enum Event {
    Build {
        app: String,
        sha: String,
        state: BuildState,
        log_link: Option<String>,
        reason: Option<String>,
    },
    /// The build of this deployment succeeded (its app, commit and log come from the journal).
    BuildOfDeployment(i64),
    Deploy(Box<Notification>),
}

/// Feeds GitHub in the background. Cheap to clone; a disabled sink discards everything.
#[derive(Clone, Default)]
pub struct GithubSink {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Event>,
    pending: Arc<watch::Sender<usize>>,
}

impl std::fmt::Debug for GithubSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubSink")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl GithubSink {
    pub fn disabled() -> GithubSink {
        GithubSink::default()
    }

    /// Spawns the outbox's two tasks (keeping and posting) on the current tokio runtime.
    pub(super) fn start(
        client: Arc<Client>,
        config: Arc<Config>,
        journal: Store,
        clock: SharedClock,
        give_up_after: Duration,
        replicas: Arc<crate::replicas::Replicas>,
    ) -> GithubSink {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let pending = Arc::new(watch::Sender::new(0));
        let worker = Worker {
            client,
            config,
            journal,
            clock,
            give_up_after,
            replicas,
        };
        tokio::spawn(worker.run(rx, pending.clone()));
        GithubSink {
            inner: Some(Arc::new(Inner { tx, pending })),
        }
    }

    /// A build changed state: the commit's `slipway/build` status follows.
    pub fn build(
        &self,
        state: BuildState,
        app: &str,
        sha: &str,
        log_link: Option<&str>,
        reason: Option<&str>,
    ) {
        self.enqueue(|| Event::Build {
            app: app.to_owned(),
            sha: sha.to_owned(),
            state,
            log_link: log_link.map(str::to_owned),
            reason: reason.map(str::to_owned),
        });
    }

    /// The build behind deployment `deployment` succeeded.
    pub fn build_succeeded(&self, deployment: i64) {
        self.enqueue(|| Event::BuildOfDeployment(deployment));
    }

    /// A deploy or build notification: statuses and deployment statuses follow.
    pub fn notification(&self, n: &Notification) {
        self.enqueue(|| Event::Deploy(Box::new(n.clone())));
    }

    fn enqueue(&self, event: impl FnOnce() -> Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.pending.send_modify(|p| *p += 1);
        if let Err(e) = inner.tx.try_send(event()) {
            inner.pending.send_modify(|p| *p -= 1);
            metrics::counter!(crate::metrics::GITHUB_REQUESTS, "result" => crate::metrics::RESULT_DROPPED).increment(1);
            tracing::warn!(event = ?e.into_inner(), "GitHub queue full: dropping the update");
        }
    }

    /// Waits until everything queued has been posted or given up on, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        if let Some(inner) = &self.inner {
            crate::notify::drained(&inner.pending, timeout, "GitHub updates still unposted").await;
        }
    }
}

/// GitHub is one of the notifier's targets: deploy and build notifications become statuses
/// and deployment statuses.
impl Target for GithubSink {
    fn name(&self) -> &'static str {
        "github"
    }

    fn notify(&self, n: &Notification) {
        self.notification(n);
    }

    fn flush(&self, timeout: Duration) -> Flushing<'_> {
        Box::pin(GithubSink::flush(self, timeout))
    }
}

struct Worker {
    client: Arc<Client>,
    config: Arc<Config>,
    journal: Store,
    clock: SharedClock,
    /// An update not posted by this age is given up.
    give_up_after: Duration,
    /// One replica posts the outbox (issue 26).
    replicas: Arc<crate::replicas::Replicas>,
}

/// A commit status: what GitHub shows next to the commit.
struct Status<'a> {
    state: &'static str,
    context: String,
    description: String,
    target_url: Option<&'a str>,
}

/// Puts each update in the journal's outbox, in the order they came, and wakes the poster.
async fn keep(
    mut rx: mpsc::Receiver<Event>,
    journal: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
    pending: Arc<watch::Sender<usize>>,
) {
    while let Some(event) = rx.recv().await {
        let json = serde_json::to_string(&event).expect("GitHub updates serialize");
        let mut tries = 0;
        loop {
            let now = millis(clock.now());
            match journal.queue_github_update(json.clone(), now).await {
                Ok(_) => break,
                // The journal stalls only briefly (a slow disk): wait for it rather than drop.
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(error = %e, "GitHub outbox: cannot journal the update; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::GITHUB_REQUESTS, "result" => crate::metrics::RESULT_DROPPED)
                        .increment(1);
                    tracing::error!(error = %e, ?event, "GitHub outbox: cannot journal the update; dropping it");
                    pending.send_modify(|p| *p = p.saturating_sub(1));
                    break;
                }
            }
        }
        wake.notify_one();
    }
}

/// The pause after an update's post failed for the time `attempts + 1`: doubling from
/// [`OUTBOX_BACKOFF_INITIAL`] up to [`OUTBOX_BACKOFF_MAX`], worked out from the journaled count
/// so that a restart does not start it over.
fn outbox_backoff(attempts: i64) -> Duration {
    let doublings = attempts.clamp(0, 16) as u32;
    OUTBOX_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(OUTBOX_BACKOFF_MAX)
}

/// Whether posting again later may succeed.
fn worth_retrying(e: &GithubError) -> bool {
    match e {
        GithubError::Transport(_) | GithubError::RateLimited(_) => true,
        GithubError::Status { status, .. } => *status >= 500 || *status == 429,
        GithubError::Token(inner) => worth_retrying(inner),
        GithubError::Decode(_) | GithubError::Jwt(_) | GithubError::Client(_) => false,
    }
}

impl Worker {
    /// Counts what a restart left in the outbox, then starts keeping new updates (so none is
    /// counted twice) and posts the outbox, oldest first, forever.
    async fn run(self, rx: mpsc::Receiver<Event>, pending: Arc<watch::Sender<usize>>) {
        match self.journal.github_outbox_len().await {
            Ok(n) if n > 0 => {
                tracing::info!(updates = n, "GitHub outbox: posting what was left unposted");
                pending.send_modify(|p| *p += n as usize);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "GitHub outbox: cannot read it"),
        }
        let wake = Arc::new(Notify::new());
        tokio::spawn(keep(
            rx,
            self.journal.clone(),
            self.clock.clone(),
            wake.clone(),
            pending.clone(),
        ));
        let never = tokio_util::sync::CancellationToken::new();
        let mut claim: Option<crate::replicas::Claim> = None;
        loop {
            let held = match claim.as_ref().filter(|c| !c.is_lost()) {
                Some(c) => c.clone(),
                None => match self
                    .replicas
                    .acquire(crate::replicas::GITHUB_OUTBOX, &never)
                    .await
                {
                    Some(c) => c,
                    None => return,
                },
            };
            claim = Some(held.clone());
            let batch = match self.journal.github_outbox(32).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "GitHub outbox: cannot read it; trying again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Another replica's updates are found by looking again every poll.
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.replicas.poll()) => {}
                    _ = held.lost() => {}
                }
                continue;
            }
            for entry in batch {
                // Right before the side effect: a replica that lost the lease posts nothing.
                if !self.replicas.check(&held).await {
                    claim = None;
                    break;
                }
                let result = match serde_json::from_str::<Event>(&entry.event) {
                    Ok(event) => self.handle(event).await,
                    Err(e) => {
                        tracing::error!(error = %e, id = entry.id, "GitHub outbox: unreadable update; dropping it");
                        Ok(())
                    }
                };
                let age_ms = millis(self.clock.now()) - entry.created_ms;
                let young = u128::try_from(age_ms).unwrap_or(0) < self.give_up_after.as_millis();
                match result {
                    Err(e) if worth_retrying(&e) && young => {
                        let backoff = outbox_backoff(entry.attempts);
                        tracing::warn!(error = %e, attempts = entry.attempts + 1,
                            retry_in_secs = backoff.as_secs(),
                            "GitHub update not posted; it stays first in line");
                        if let Err(e) = self.journal.github_post_failed(entry.id).await {
                            tracing::warn!(error = %e, "GitHub outbox: cannot count the attempt");
                        }
                        self.clock.sleep(backoff).await;
                        break;
                    }
                    result => {
                        // Posted, or given up on (logged, counted and shown by the client).
                        if let Err(e) = result {
                            metrics::counter!(crate::metrics::GITHUB_REQUESTS, "result" => crate::metrics::RESULT_GIVEN_UP)
                                .increment(1);
                            tracing::warn!(error = %e, attempts = entry.attempts + 1,
                                queued_secs = age_ms / 1000, "GitHub update given up");
                        }
                        match self.journal.github_posted(entry.id).await {
                            Ok(()) => pending.send_modify(|p| *p = p.saturating_sub(1)),
                            Err(e) => {
                                // It would be posted twice: better than lost. Read again,
                                // after a pause (the journal is failing: no tight loop).
                                tracing::warn!(error = %e, "GitHub outbox: cannot remove a posted update");
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn app(&self, name: &str) -> Option<&AppConfig> {
        self.config.apps.iter().find(|a| a.name.as_str() == name)
    }

    async fn handle(&self, event: Event) -> Result<(), GithubError> {
        match event {
            Event::Build {
                app,
                sha,
                state,
                log_link,
                reason,
            } => {
                let Some(app) = self.app(&app) else {
                    return Ok(());
                };
                self.build_status(app, &sha, state, log_link.as_deref(), reason.as_deref())
                    .await
            }
            Event::BuildOfDeployment(id) => {
                let d = match self.journal.deployment(id).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, deployment = id, "GitHub: cannot read the deployment");
                        return Ok(());
                    }
                };
                let Some(app) = self.app(&d.app) else {
                    return Ok(());
                };
                self.build_status(
                    app,
                    &d.sha,
                    BuildState::Succeeded,
                    d.log_link.as_deref(),
                    None,
                )
                .await
            }
            Event::Deploy(n) => {
                let Some(app) = self.app(&n.app) else {
                    return Ok(());
                };
                if n.kind == EventKind::BuildFailed {
                    let reason = n.reason.as_deref();
                    return self
                        .build_status(
                            app,
                            &n.sha,
                            BuildState::Failed,
                            n.log_link.as_deref(),
                            reason,
                        )
                        .await;
                }
                self.deploy(app, &n).await
            }
        }
    }

    /// The build context: `slipway/build`, or `slipway/build/<app>` when several apps build
    /// from the same repository (their statuses would otherwise overwrite each other).
    fn build_context(&self, app: &AppConfig) -> String {
        let shared = self
            .config
            .apps
            .iter()
            .filter(|a| a.repository.eq_ignore_ascii_case(&app.repository))
            .count()
            > 1;
        if shared {
            format!("slipway/build/{}", app.name)
        } else {
            "slipway/build".to_owned()
        }
    }

    async fn build_status(
        &self,
        app: &AppConfig,
        sha: &str,
        state: BuildState,
        log_link: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), GithubError> {
        let (state, description) = match state {
            BuildState::Started => ("pending", "building".to_owned()),
            BuildState::Succeeded => ("success", "build succeeded".to_owned()),
            BuildState::Failed => ("failure", with_reason("build failed", reason)),
        };
        let status = Status {
            state,
            context: self.build_context(app),
            description,
            target_url: log_link,
        };
        self.post_status(&app.repository, sha, status).await
    }

    async fn post_status(
        &self,
        repository: &str,
        sha: &str,
        status: Status<'_>,
    ) -> Result<(), GithubError> {
        let mut body = json!({
            "state": status.state,
            "context": status.context,
            "description": clip(&status.description),
        });
        if let Some(url) = status.target_url {
            body["target_url"] = json!(url);
        }
        let path = format!("/repos/{repository}/statuses/{sha}");
        self.client
            .request(Method::POST, &path, Some(&body), As::Installation)
            .await
            .map(drop)
    }

    async fn deploy(&self, app: &AppConfig, n: &Notification) -> Result<(), GithubError> {
        let (status_state, deployment_state, description) = match n.kind {
            EventKind::DeployStarted => (
                "pending",
                "in_progress",
                format!("deploying {}", short(&n.sha)),
            ),
            EventKind::DeploySucceeded => {
                ("success", "success", format!("deployed {}", short(&n.sha)))
            }
            EventKind::DeployFailed => (
                "failure",
                "failure",
                with_reason("failed", n.reason.as_deref()),
            ),
            EventKind::RolledBack => (
                "failure",
                "failure",
                with_reason("rolled back", n.reason.as_deref()),
            ),
            // Superseded is not the commit's fault: "error", with slipway's reason
            // ("superseded by deployment 7 of 1f2e3d4 (...)").
            EventKind::Superseded => (
                "error",
                "error",
                n.reason.clone().unwrap_or_else(|| "superseded".to_owned()),
            ),
            // A promotion (issue 27), before any deploy: the commit status only (there is no
            // slipway deployment yet, so no GitHub deployment).
            EventKind::AwaitingApproval => (
                "pending",
                "queued",
                match &n.promotion {
                    Some(p) => format!("awaiting approval (promoted from {})", p.source_app),
                    None => "awaiting approval".to_owned(),
                },
            ),
            EventKind::PromotionRejected => (
                "error",
                "error",
                match n.promotion.as_ref().and_then(|p| p.decided_by.as_deref()) {
                    Some(who) => format!("promotion rejected by {who}"),
                    None => "promotion rejected".to_owned(),
                },
            ),
            EventKind::PromotionExpired => (
                "error",
                "error",
                with_reason("approval expired", n.reason.as_deref()),
            ),
            // The deploy is still in progress: its GitHub status stays as it is.
            EventKind::BuildFailed | EventKind::ServiceUnseen | EventKind::PastDeadline => {
                return Ok(())
            }
        };
        let page = self.deployment_page(n.deployment);
        self.post_status(
            &app.repository,
            &n.sha,
            Status {
                state: status_state,
                context: format!("slipway/deploy/{}", app.name),
                description: description.clone(),
                target_url: page.as_deref(),
            },
        )
        .await?;
        let Some(id) = n.deployment else {
            return Ok(());
        };
        let gh = self
            .github_deployment(app, id, &n.sha, n.tag.as_deref(), n.promotion.as_ref())
            .await?;
        // The deploy's page when slipway's is reachable from outside, else the build's log.
        let log_url = page.as_deref().or(n.log_link.as_deref());
        self.deployment_status(
            &gh,
            deployment_state,
            &description,
            log_url,
            app.environment_url.as_deref(),
        )
        .await?;
        self.record_state(id, deployment_state).await;
        if deployment_state == "success" {
            let replaced = self
                .journal
                .replaced_github_deployments(app.name.to_string(), id)
                .await
                .unwrap_or_default();
            for old in replaced {
                let description = format!("replaced by {}", short(&n.sha));
                self.deployment_status(&old, "inactive", &description, None, None)
                    .await?;
                self.record_state(old.deployment, "inactive").await;
            }
        }
        Ok(())
    }

    /// The deploy's page on the status page (`/deployments/{id}`), where `[server]
    /// public_url` says slipway is reached from outside.
    fn deployment_page(&self, deployment: Option<i64>) -> Option<String> {
        let base = self.config.public_url.as_ref()?;
        Some(format!("{base}/deployments/{}", deployment?))
    }

    /// The GitHub deployment for slipway deployment `id`, created the first time.
    async fn github_deployment(
        &self,
        app: &AppConfig,
        id: i64,
        sha: &str,
        tag: Option<&str>,
        promotion: Option<&crate::notify::PromotionNote>,
    ) -> Result<GithubDeployment, GithubError> {
        if let Ok(Some(existing)) = self.journal.github_deployment(id).await {
            return Ok(existing);
        }
        let body = json!({
            "ref": sha,
            "environment": app.environment,
            "auto_merge": false,
            "required_contexts": [],
            "production_environment": app.production,
            // `ref` stays the commit (a tag can be moved; the deploy is of this commit); the
            // tag a release was pushed as is in the description and the payload.
            "description": clip(&match (tag, promotion) {
                (Some(tag), _) => format!("slipway deployment {id} of {} (tag {tag})", app.name),
                // A promotion (issue 27): where the image comes from, and who approved it.
                (None, Some(p)) => format!(
                    "slipway deployment {id} of {}, promoted from {} (deployment {}), approved \
                     by {}",
                    app.name,
                    p.source_app,
                    p.source_deployment,
                    p.decided_by.as_deref().unwrap_or("?")
                ),
                (None, None) => format!("slipway deployment {id} of {}", app.name),
            }),
            "payload": { "slipway_deployment": id, "tag": tag, "promotion": promotion },
        });
        let path = format!("/repos/{}/deployments", app.repository);
        let reply = self
            .client
            .request(Method::POST, &path, Some(&body), As::Installation)
            .await?;
        let github_id = reply
            .body
            .get("id")
            .and_then(|v| v.as_i64())
            .ok_or_else(|| GithubError::Decode("the created deployment has no id".into()))?;
        let gh = GithubDeployment {
            deployment: id,
            repository: app.repository.clone(),
            github_id,
            state: "created".to_owned(),
        };
        let now = millis(self.clock.now());
        if let Err(e) = self
            .journal
            .record_github_deployment(id, app.name.to_string(), gh.clone(), now)
            .await
        {
            tracing::warn!(error = %e, deployment = id, "cannot journal the GitHub deployment");
        }
        Ok(gh)
    }

    async fn deployment_status(
        &self,
        gh: &GithubDeployment,
        state: &'static str,
        description: &str,
        log_url: Option<&str>,
        environment_url: Option<&str>,
    ) -> Result<(), GithubError> {
        // `auto_inactive` defaults to true: GitHub would mark every other deployment of the
        // environment inactive, another app's sharing its name included. slipway marks the
        // ones it replaced itself.
        let mut body = json!({
            "state": state,
            "description": clip(description),
            "auto_inactive": false,
        });
        if let Some(url) = log_url {
            body["log_url"] = json!(url);
        }
        if let Some(url) = environment_url {
            body["environment_url"] = json!(url);
        }
        let path = format!(
            "/repos/{}/deployments/{}/statuses",
            gh.repository, gh.github_id
        );
        self.client
            .request(Method::POST, &path, Some(&body), As::Installation)
            .await
            .map(drop)
    }

    async fn record_state(&self, deployment: i64, state: &'static str) {
        let now = millis(self.clock.now());
        if let Err(e) = self
            .journal
            .set_github_deployment_state(deployment, state, now)
            .await
        {
            tracing::warn!(error = %e, deployment, "cannot journal the GitHub deployment's state");
        }
    }
}

fn with_reason(what: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.trim().is_empty() => format!("{what}: {}", r.trim()),
        _ => what.to_owned(),
    }
}

/// One line, at most [`MAX_DESCRIPTION`] characters.
fn clip(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut out: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    out.push('…');
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_later_keep_an_update_in_the_outbox() {
        let status = |status| GithubError::Status {
            status,
            message: String::new(),
        };
        assert!(worth_retrying(&status(502)));
        assert!(worth_retrying(&status(429)));
        assert!(worth_retrying(&GithubError::Transport("refused".into())));
        assert!(worth_retrying(&GithubError::RateLimited(
            "GitHub answered 403: API rate limit exceeded".into()
        )));
        assert!(worth_retrying(&GithubError::Token(Box::new(status(503)))));
        assert!(!worth_retrying(&status(422)));
        assert!(!worth_retrying(&status(404)));
        assert!(!worth_retrying(&GithubError::Token(Box::new(status(401)))));
        assert!(!worth_retrying(&GithubError::Decode("not JSON".into())));
    }

    #[test]
    fn the_outbox_backoff_follows_the_journaled_attempts() {
        assert_eq!(outbox_backoff(0), OUTBOX_BACKOFF_INITIAL);
        assert_eq!(outbox_backoff(1), OUTBOX_BACKOFF_INITIAL * 2);
        assert_eq!(outbox_backoff(3), OUTBOX_BACKOFF_INITIAL * 8);
        // Capped, however many attempts a journal holds (and never a negative shift).
        assert_eq!(outbox_backoff(10), OUTBOX_BACKOFF_MAX);
        assert_eq!(outbox_backoff(i64::MAX), OUTBOX_BACKOFF_MAX);
        assert_eq!(outbox_backoff(-1), OUTBOX_BACKOFF_INITIAL);
    }

    #[test]
    fn an_update_is_kept_as_json_and_read_back_the_same() {
        let event = Event::Build {
            app: "web".into(),
            sha: "1f2e3d4".into(),
            state: BuildState::Failed,
            log_link: None,
            reason: Some("CodeBuild did not start it".into()),
        };
        let json = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{event:?}"));
    }

    #[test]
    fn production_follows_the_environment_unless_set_and_urls_are_checked() {
        let app = |settings: &str| {
            Config::parse(&format!(
                "state_dir = \"/x\"\n[[app]]\nname = \"web\"\nrepository = \"o/web\"\n\
                 codebuild_project = \"b\"\ncluster = \"c\"\nservice = \"s\"\n\
                 container = \"web\"\necr_repository = \"web\"\n{settings}\n"
            ))
        };
        let production = |settings: &str| app(settings).unwrap().apps[0].production;
        assert!(!production(""), "the environment is the app's name");
        assert!(production("environment = \"production\""));
        assert!(!production(
            "environment = \"production\"\nproduction = false"
        ));
        assert!(production("environment = \"eu\"\nproduction = true"));
        let url = app("environment_url = \"https://web.example.com/\"").unwrap();
        assert_eq!(
            url.apps[0].environment_url.as_deref(),
            Some("https://web.example.com")
        );
        let err = app("environment_url = \"web\"").unwrap_err().to_string();
        assert!(err.contains("environment_url"), "{err}");
        let public = app("[server]\npublic_url = \"https://slipway.example.com/\"").unwrap();
        assert_eq!(
            public.public_url.as_deref(),
            Some("https://slipway.example.com")
        );
    }

    #[test]
    fn descriptions_are_one_short_line() {
        assert_eq!(
            clip("rolled back:\n circuit breaker"),
            "rolled back: circuit breaker"
        );
        let long = clip(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
        assert!(long.ends_with('…'));
        assert_eq!(with_reason("failed", Some(" boom ")), "failed: boom");
        assert_eq!(with_reason("failed", Some("")), "failed");
        assert_eq!(with_reason("failed", None), "failed");
    }
}
