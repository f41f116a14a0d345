//! The build worker: takes pending builds from the journal and starts them in CodeBuild.
//!
//! Retryable failures (throttling, 5xx, timeouts, AWS unreachable) keep the build pending with
//! its next attempt scheduled in the journal, so a restart resumes the schedule. Permanent
//! failures mark it `failed` with AWS's words.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_codebuild::types::{EnvironmentVariable, EnvironmentVariableType, SortOrderType};
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aws::AwsError;
use crate::clock::SharedClock;
use crate::config::BuildRetry;
use crate::github::BuildState;
use crate::replicas::Claim;
use crate::store::{millis, PendingBuild, Store};

/// Most StartBuild calls in flight at once.
const MAX_IN_FLIGHT: usize = 4;
/// Due builds read from the journal at once (one query per batch, not per build).
const BATCH: u32 = 64;

/// Stops the worker hammering a CodeBuild that fails every call (unreachable, throttling):
/// after `MAX_IN_FLIGHT` retryable failures in a row it pauses all starts for a backoff that
/// grows with the streak (with jitter), so thousands of pending builds cost a few calls per
/// pause, not a busy core. Any success closes it again.
#[derive(Debug, Default)]
pub struct Breaker {
    streak: u32,
}

impl Breaker {
    pub fn success(&mut self) {
        self.streak = 0;
    }

    /// Records a retryable failure; returns how long to pause every start, if at all.
    pub fn failure(&mut self, retry: &BuildRetry) -> Option<Duration> {
        self.streak += 1;
        let trips = self.streak / MAX_IN_FLIGHT as u32;
        self.streak
            .is_multiple_of(MAX_IN_FLIGHT as u32)
            .then(|| backoff(retry, trips - 1))
    }
}

pub struct BuildStarter {
    pub journal: Store,
    pub codebuild: aws_sdk_codebuild::Client,
    pub clock: SharedClock,
    pub wake: Arc<Notify>,
    pub retry: BuildRetry,
    /// The commit's `slipway/build` status goes pending when the build starts.
    pub github: crate::github::GithubSink,
    /// Starts run on the replica holding the `builds` lease (issue 26).
    pub replicas: Arc<crate::replicas::Replicas>,
}

/// The delay before attempt number `attempts + 1`: capped exponential, with jitter.
pub fn backoff(retry: &BuildRetry, attempts: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(retry.initial)
        .with_max_delay(retry.max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts.min(64) as usize)
        .unwrap_or(retry.max)
        .min(retry.max)
}

/// The environment a build gets from slipway (`SLIPWAY_TAG` only for a tag push's build).
pub fn build_environment(build: &PendingBuild) -> Vec<EnvironmentVariable> {
    [
        ("IMAGE_TAG", Some(build.image_tag.as_str())),
        ("SLIPWAY_COMMIT", Some(build.sha.as_str())),
        ("SLIPWAY_DELIVERY", Some(build.delivery_id.as_str())),
        ("SLIPWAY_RUN", Some(build.token.as_str())),
        ("SLIPWAY_TAG", build.tag.as_deref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .map(|(name, value)| {
        EnvironmentVariable::builder()
            .name(name)
            .value(value)
            .r#type(EnvironmentVariableType::Plaintext)
            .build()
            .expect("name and value are set")
    })
    .collect()
}

/// How one start attempt ended, for the breaker.
enum Attempt {
    /// CodeBuild answered with a build.
    Done,
    /// A retryable failure: the build stays pending.
    Retry,
    /// Anything else (a permanent failure, the journal unavailable).
    Other,
}

impl BuildStarter {
    /// Starts due builds while this replica holds the `builds` lease, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let replicas = this.replicas.clone();
        replicas
            .singleton(crate::replicas::BUILDS, shutdown, move |token, claim| {
                this.clone().run_held(token, claim)
            })
            .await
    }

    async fn run_held(self: Arc<Self>, shutdown: CancellationToken, claim: Claim) {
        let this = self;
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut tasks = JoinSet::new();
        // Due builds read in one batch, started as slots free up.
        let mut queue: VecDeque<PendingBuild> = VecDeque::new();
        let mut breaker = Breaker::default();
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            let now = millis(this.clock.now());
            let paused = paused_until.is_some_and(|t| t > tokio::time::Instant::now());
            if !paused && queue.is_empty() && tasks.len() < MAX_IN_FLIGHT {
                match this.journal.due_builds(now, BATCH).await {
                    Ok(due) => queue.extend(due),
                    Err(e) => tracing::error!(error = %e, "build worker: cannot read the journal"),
                }
            }
            while !paused && tasks.len() < MAX_IN_FLIGHT {
                let Some(build) = queue.pop_front() else {
                    break;
                };
                if !in_flight.lock().expect("in-flight set").insert(build.id) {
                    continue;
                }
                let this = this.clone();
                let in_flight = in_flight.clone();
                let claim = claim.clone();
                let span = tracing::info_span!("build", delivery = %build.delivery_id,
                    app = %build.app, sha = %build.sha, run = build.id);
                tasks.spawn(
                    async move {
                        let id = build.id;
                        let started = this.start_one(build, &claim).await;
                        in_flight.lock().expect("in-flight set").remove(&id);
                        started
                    }
                    .instrument(span),
                );
            }
            let wait = if let Some(until) = paused_until.filter(|_| paused) {
                until - tokio::time::Instant::now()
            } else if !queue.is_empty() {
                Duration::from_secs(30) // a slot frees up first
            } else {
                // Another replica may have taken a push: looked for every poll (issue 26).
                let idle = this.replicas.poll().min(Duration::from_secs(30));
                match this.journal.next_due_ms().await {
                    Ok(Some(due)) => {
                        Duration::from_millis((due - now).clamp(100, 30_000) as u64).min(idle)
                    }
                    Ok(None) => idle,
                    Err(_) => Duration::from_secs(1),
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.wake.notified(), if !paused => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                    Ok(Attempt::Retry) => {
                        if let Some(pause) = breaker.failure(&this.retry) {
                            tracing::warn!(pause_ms = pause.as_millis() as u64,
                                "StartBuild keeps failing; pausing all starts");
                            paused_until = Some(tokio::time::Instant::now() + pause);
                            // Re-read after the pause: the schedule may have moved.
                            queue.clear();
                        }
                    }
                    Ok(Attempt::Done) => breaker.success(),
                    Ok(Attempt::Other) | Err(_) => {}
                },
            }
        }
        // Let calls already sent to CodeBuild record their answer; anything else stays
        // pending in the journal for the next start.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
    }

    async fn start_one(&self, build: PendingBuild, claim: &Claim) -> Attempt {
        if build.start_requested {
            // A previous attempt may have reached CodeBuild before slipway stopped.
            match self.find_started(&build).await {
                Ok(Some((id, arn))) => {
                    tracing::info!(build_id = %id, "found the build a previous attempt started");
                    return self.started(&build, id, arn).await;
                }
                Ok(None) => {}
                Err(e) => {
                    return self.failed_attempt(&build, e).await;
                }
            }
        }
        if let Err(e) = self
            .journal
            .build_start_requested(build.id, self.now())
            .await
        {
            // Without this record a crash could start the build twice; try again later.
            tracing::error!(error = %e, "cannot journal the start; not calling StartBuild yet");
            return Attempt::Other;
        }
        // Right before the side effect: a replica that lost the lease starts nothing.
        if !self.replicas.check(claim).await {
            tracing::warn!("the builds lease is no longer this replica's: not calling StartBuild");
            return Attempt::Other;
        }
        let result = self
            .codebuild
            .start_build()
            .project_name(&build.project)
            .source_version(&build.sha)
            .set_environment_variables_override(Some(build_environment(&build)))
            .idempotency_token(&build.token)
            // The journaled schedule is StartBuild's only retry layer: SDK retries under it
            // would hold each attempt for seconds and keep a failing CodeBuild busy.
            .customize()
            .config_override(
                aws_sdk_codebuild::config::Builder::default()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        match result {
            Ok(out) => {
                let (id, arn) = out.build_value.map(|b| (b.id, b.arn)).unwrap_or_default();
                let Some(id) = id else {
                    let e = AwsError {
                        retryable: true,
                        code: None,
                        message: "StartBuild: the answer has no build id".into(),
                    };
                    return self.failed_attempt(&build, e).await;
                };
                tracing::info!(build_id = %id, "build started");
                self.started(&build, id, arn).await
            }
            Err(e) => {
                self.failed_attempt(&build, AwsError::from_sdk("CodeBuild StartBuild", &e))
                    .await
            }
        }
    }

    /// CodeBuild has the build: the journal records its id, and GitHub shows it started.
    async fn started(&self, build: &PendingBuild, id: String, arn: Option<String>) -> Attempt {
        self.github
            .build(BuildState::Started, &build.app, &build.sha, None, None);
        self.record(
            self.journal
                .build_started(build.id, id, arn, self.now())
                .await,
        );
        Attempt::Done
    }

    async fn failed_attempt(&self, build: &PendingBuild, e: AwsError) -> Attempt {
        if e.retryable {
            metrics::counter!("slipway_build_start_retries_total").increment(1);
            let delay = backoff(&self.retry, build.attempts);
            tracing::warn!(error = %e, attempt = build.attempts + 1, retry_in_ms = delay.as_millis() as u64,
                "StartBuild failed; will retry");
            let next = self.now() + delay.as_millis() as i64;
            self.record(
                self.journal
                    .build_retry_later(build.id, e.message, next, self.now())
                    .await,
            );
            Attempt::Retry
        } else {
            tracing::error!(error = %e, "StartBuild failed for good");
            self.github.build(
                BuildState::Failed,
                &build.app,
                &build.sha,
                None,
                // Short: a status may be public; the journal and the log have CodeBuild's words.
                Some("CodeBuild did not start it"),
            );
            self.record(
                self.journal
                    .build_failed_to_start(build.id, e.message, self.now())
                    .await,
            );
            Attempt::Other
        }
    }

    /// Looks among the project's recent builds for one carrying this run's `SLIPWAY_RUN`.
    async fn find_started(
        &self,
        build: &PendingBuild,
    ) -> Result<Option<(String, Option<String>)>, AwsError> {
        let ids = self
            .codebuild
            .list_builds_for_project()
            .project_name(&build.project)
            .sort_order(SortOrderType::Descending)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CodeBuild ListBuildsForProject", &e))?
            .ids
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(None);
        }
        let builds = self
            .codebuild
            .batch_get_builds()
            .set_ids(Some(ids.into_iter().take(100).collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CodeBuild BatchGetBuilds", &e))?
            .builds
            .unwrap_or_default();
        Ok(builds.into_iter().find_map(|b| {
            let vars = b.environment.as_ref()?.environment_variables.as_ref()?;
            vars.iter()
                .any(|v| v.name == "SLIPWAY_RUN" && v.value == build.token)
                .then(|| (b.id.clone().unwrap_or_default(), b.arn.clone()))
                .filter(|(id, _)| !id.is_empty())
        }))
    }

    fn now(&self) -> i64 {
        millis(self.clock.now())
    }

    fn record(&self, result: Result<(), crate::store::StoreError>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "build worker: could not journal the outcome");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_pauses_after_a_run_of_failures_and_longer_each_time() {
        let retry = BuildRetry {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        let mut breaker = Breaker::default();
        for _ in 0..MAX_IN_FLIGHT - 1 {
            assert_eq!(breaker.failure(&retry), None);
        }
        let first = breaker
            .failure(&retry)
            .expect("pauses after a full round of failures");
        for _ in 0..MAX_IN_FLIGHT * 5 - 1 {
            breaker.failure(&retry);
        }
        let later = breaker.failure(&retry).expect("pauses again");
        assert!(later > first, "{later:?} > {first:?}");
        breaker.success();
        assert_eq!(breaker.failure(&retry), None, "a success closes it");
    }
}
