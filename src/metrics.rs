//! Prometheus metrics: the recorder behind the `metrics` facade, the gauges computed at scrape
//! time, the AWS call counter, and the text a scrape gets.
//!
//! Every part of slipway emits with `metrics::counter!`/`histogram!`/`gauge!` where the event
//! happens; this module only installs the recorder and renders. Every metric slipway knows is
//! described and registered at zero when the recorder is installed, so the first scrape is
//! complete (a counter that has not moved yet reads 0 rather than being absent).

use std::sync::OnceLock;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;
use crate::store::deploy_state;
use crate::store::{Store, StoreError};

// `metrics` reads the journal's plain numbers (`pending_builds`, `notify_outbox_stats`) and the
// configuration; nothing below it imports `metrics`, and the modules that emit name only the
// constants here (no circle: see `tests_imports`).

pub const DELIVERIES: &str = "slipway_deliveries_total";
pub const WEBHOOK_DURATION: &str = "slipway_webhook_request_duration_seconds";
pub const JOURNAL_COMMIT_DURATION: &str = "slipway_journal_commit_duration_seconds";
pub const BUILD_START_RETRIES: &str = "slipway_build_start_retries_total";
pub const DEPLOYMENTS: &str = "slipway_deployments_total";
pub const DEPLOYMENT_DURATION: &str = "slipway_deployment_duration_seconds";
pub const DEPLOYMENTS_IN_PROGRESS: &str = "slipway_deployments_in_progress";
pub const SQS_MESSAGES: &str = "slipway_sqs_messages_received_total";
pub const NOTIFICATIONS_DROPPED: &str = "slipway_notifications_dropped_total";
pub const AWS_CALLS: &str = "slipway_aws_calls_total";
pub const GITHUB_REQUESTS: &str = "slipway_github_requests_total";
/// Delivery recovery rounds that stopped before the end of the window (issue 24), by hook.
pub const GITHUB_RECOVERY_STOPPED_EARLY: &str = "slipway_github_recovery_stopped_early_total";
/// Attempts at Slack and generic-webhook notifications (issue 24), by target and result.
pub const NOTIFICATIONS: &str = "slipway_notifications_total";
/// Notifications journaled and not yet sent or given up, by target (read at scrape time).
pub const NOTIFICATIONS_PENDING: &str = "slipway_notifications_pending";
/// Age of the oldest pending notification, by target (read at scrape time).
pub const OLDEST_PENDING_NOTIFICATION_AGE: &str = "slipway_oldest_pending_notification_age_seconds";
/// Journal backups (issue 21), by result.
pub const BACKUPS: &str = "slipway_backups_total";
pub const BUILDS_PENDING: &str = "slipway_builds_pending";
/// Leases this replica took (issue 26).
pub const LEASES_TAKEN: &str = "slipway_leases_taken_total";
/// Leases this replica lost before handing them back (not renewed in time, or taken over).
pub const LEASES_LOST: &str = "slipway_leases_lost_total";
pub const OLDEST_PENDING_BUILD_AGE: &str = "slipway_oldest_pending_build_age_seconds";

/// Request-sized latencies (webhook handling, a journal commit).
const FAST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Rollout-sized latencies (a deployment, from start to its end).
const ROLLOUT_BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
];

/// What a webhook delivery can come to (the journal's `deliveries.outcome`).
const DELIVERY_OUTCOMES: &[&str] = &["accepted", "duplicate", "ignored", "rejected", "pong"];
/// How a deployment can end.
const DEPLOYMENT_OUTCOMES: &[&str] = &[
    deploy_state::SUCCEEDED,
    deploy_state::FAILED,
    deploy_state::ROLLED_BACK,
    deploy_state::SUPERSEDED,
];
/// `result` of `slipway_github_requests_total` and `slipway_aws_calls_total`.
pub const RESULT_OK: &str = "ok";
pub const RESULT_ERROR: &str = "error";
/// `result` of `slipway_github_requests_total` for an update that never reached GitHub:
/// dropped before it was journaled (queue full, journal failing), or given up (too old, or
/// refused for good).
pub const RESULT_DROPPED: &str = "dropped";
pub const RESULT_GIVEN_UP: &str = "given_up";

/// `target` of the notification metrics: every HTTP notification target (fixed, whether
/// configured or not).
pub const NOTIFY_TARGETS: &[&str] = &["slack", "webhook"];
/// `result` of `slipway_notifications_total`: the target took it (2xx); an attempt failed and
/// it stays first in line; it was given up (too old, or refused for good).
pub const NOTIFY_SENT: &str = "sent";
pub const NOTIFY_FAILED: &str = "failed";
pub const NOTIFY_GIVEN_UP: &str = "given_up";
const NOTIFY_RESULTS: &[&str] = &[NOTIFY_SENT, NOTIFY_FAILED, NOTIFY_GIVEN_UP];

/// `slipway_aws_calls_total` series present from the first scrape (`service` is the SDK's
/// service name, lowercased).
const WATCHED_AWS_CALLS: &[(&str, &str)] = &[
    ("codebuild", "StartBuild"),
    ("sqs", "ReceiveMessage"),
    ("ecs", "DescribeServices"),
    ("ecs", "UpdateService"),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process (later calls return the same handle),
/// describes every metric and registers each at zero, for the apps in `config`.
pub fn install(config: &Config, replica: &str) -> &'static PrometheusHandle {
    let handle = HANDLE.get_or_init(|| {
        // Every series carries the replica it comes from (issue 26).
        let recorder = PrometheusBuilder::new()
            .add_global_label("replica", replica)
            .set_buckets_for_metric(Matcher::Full(WEBHOOK_DURATION.to_owned()), FAST_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(JOURNAL_COMMIT_DURATION.to_owned()),
                    FAST_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(DEPLOYMENT_DURATION.to_owned()),
                    ROLLOUT_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Another recorder was installed first (an embedding program): metrics go there.
            tracing::warn!(error = %e, "a metrics recorder is already installed");
        }
        describe();
        handle
    });
    register_zero(config);
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DELIVERIES,
        "Webhook deliveries received, by what came of them."
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        "Time to answer a webhook delivery, in seconds."
    );
    describe_histogram!(
        JOURNAL_COMMIT_DURATION,
        "Time for a journal write to become durable, in seconds."
    );
    describe_counter!(
        BUILD_START_RETRIES,
        "CodeBuild StartBuild attempts that failed and were scheduled again."
    );
    describe_counter!(DEPLOYMENTS, "Deployments that ended, by app and outcome.");
    describe_histogram!(
        DEPLOYMENT_DURATION,
        "Time from a deployment's start to its end, in seconds."
    );
    describe_gauge!(DEPLOYMENTS_IN_PROGRESS, "Deployments rolling out now.");
    describe_counter!(SQS_MESSAGES, "Build-result messages received from SQS.");
    describe_counter!(
        NOTIFICATIONS_DROPPED,
        "Notifications dropped before they were journaled (queue full or journal failing)."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Slack and generic-webhook notification attempts, by target and result (sent, failed: \
         tried again later, given_up: too old or refused for good)."
    );
    describe_gauge!(
        NOTIFICATIONS_PENDING,
        "Notifications journaled and not yet sent or given up, by target."
    );
    describe_gauge!(
        OLDEST_PENDING_NOTIFICATION_AGE,
        "Age of the oldest pending notification, by target, in seconds (0 when none)."
    );
    describe_counter!(
        AWS_CALLS,
        "AWS API calls (after the SDK's retries), by service, operation and result."
    );
    describe_counter!(
        GITHUB_REQUESTS,
        "GitHub API requests and updates, by result (ok, error: a request failed; dropped: an \
         update never journaled; given_up: an update too old or refused for good)."
    );
    describe_counter!(
        GITHUB_RECOVERY_STOPPED_EARLY,
        "Delivery recovery rounds that stopped paging before the end of the window, by hook."
    );
    describe_counter!(BACKUPS, "Journal backups taken, by result (ok, error).");
    describe_gauge!(BUILDS_PENDING, "Builds waiting for CodeBuild StartBuild.");
    describe_counter!(
        LEASES_TAKEN,
        "Leases this replica took (builds, a service's deploys, an outbox, ...)."
    );
    describe_counter!(
        LEASES_LOST,
        "Leases this replica lost before handing them back (not renewed in time, or another \
         replica took them)."
    );
    describe_gauge!(
        OLDEST_PENDING_BUILD_AGE,
        "Age of the oldest build waiting for StartBuild, in seconds (0 when none)."
    );
}

/// Registers the series whose labels are known in advance, so they read 0 before they happen.
/// Adding 0 to a counter (or registering a histogram) never changes a value already there.
fn register_zero(config: &Config) {
    for outcome in DELIVERY_OUTCOMES {
        metrics::counter!(DELIVERIES, "outcome" => *outcome).increment(0);
    }
    for name in [
        BUILD_START_RETRIES,
        SQS_MESSAGES,
        NOTIFICATIONS_DROPPED,
        LEASES_TAKEN,
        LEASES_LOST,
    ] {
        metrics::counter!(name).increment(0);
    }
    for result in [RESULT_OK, RESULT_ERROR] {
        metrics::counter!(GITHUB_REQUESTS, "result" => result).increment(0);
        metrics::counter!(BACKUPS, "result" => result).increment(0);
    }
    for result in [RESULT_DROPPED, RESULT_GIVEN_UP] {
        metrics::counter!(GITHUB_REQUESTS, "result" => result).increment(0);
    }
    for hook in config.github.iter().flat_map(|g| &g.hooks) {
        metrics::counter!(GITHUB_RECOVERY_STOPPED_EARLY, "hook" => hook.id.to_string())
            .increment(0);
    }
    for target in NOTIFY_TARGETS {
        for result in NOTIFY_RESULTS {
            metrics::counter!(NOTIFICATIONS, "target" => *target, "result" => *result).increment(0);
        }
        metrics::gauge!(NOTIFICATIONS_PENDING, "target" => *target).increment(0.0);
        metrics::gauge!(OLDEST_PENDING_NOTIFICATION_AGE, "target" => *target).increment(0.0);
    }
    // The calls an alert would watch; other operations appear with their first call.
    for (service, operation) in WATCHED_AWS_CALLS {
        for result in [RESULT_OK, RESULT_ERROR] {
            metrics::counter!(AWS_CALLS, "service" => *service, "operation" => *operation, "result" => result)
                .increment(0);
        }
    }
    for app in &config.apps {
        let app = app.name.to_string();
        for outcome in DEPLOYMENT_OUTCOMES {
            metrics::counter!(DEPLOYMENTS, "app" => app.clone(), "outcome" => *outcome)
                .increment(0);
        }
        let _ = metrics::histogram!(DEPLOYMENT_DURATION, "app" => app);
    }
    let _ = metrics::histogram!(WEBHOOK_DURATION);
    let _ = metrics::histogram!(JOURNAL_COMMIT_DURATION);
    metrics::gauge!(DEPLOYMENTS_IN_PROGRESS).increment(0.0);
    metrics::gauge!(BUILDS_PENDING).increment(0.0);
    metrics::gauge!(OLDEST_PENDING_BUILD_AGE).increment(0.0);
}

/// The gauges read from the store at scrape time: the same on every replica (issue 26), so
/// only one replica reports them.
const SHARED: &[&str] = &[
    BUILDS_PENDING,
    OLDEST_PENDING_BUILD_AGE,
    NOTIFICATIONS_PENDING,
    OLDEST_PENDING_NOTIFICATION_AGE,
];

/// The text of a scrape: the scrape-time gauges read from the journal (when `shared`: this
/// replica reports the store's counts), then everything.
pub async fn render(journal: &Store, now_ms: i64, shared: bool) -> Result<String, StoreError> {
    let Some(handle) = HANDLE.get() else {
        return Ok(String::new());
    };
    if !shared {
        handle.run_upkeep();
        return Ok(without_shared(&handle.render()));
    }
    let pending = journal.pending_builds(now_ms).await?;
    metrics::gauge!(BUILDS_PENDING).set(pending.count as f64);
    metrics::gauge!(OLDEST_PENDING_BUILD_AGE).set(pending.oldest_age_ms as f64 / 1000.0);
    for outbox in journal.notify_outbox_stats(NOTIFY_TARGETS, now_ms).await? {
        metrics::gauge!(NOTIFICATIONS_PENDING, "target" => outbox.target.clone())
            .set(outbox.pending as f64);
        metrics::gauge!(OLDEST_PENDING_NOTIFICATION_AGE, "target" => outbox.target)
            .set(outbox.oldest_pending_age_ms as f64 / 1000.0);
    }
    handle.run_upkeep();
    Ok(handle.render())
}

/// `text` without the store's gauges (their samples, `# HELP` and `# TYPE` lines).
fn without_shared(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        let name = name.split(['{', ' ']).next().unwrap_or("");
        if !SHARED.contains(&name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Counts every AWS call once it is over (after the SDK's own retries):
/// `slipway_aws_calls_total{service, operation, result}`. Registered on every client in
/// `aws::Clients`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsCallCounter;

impl Intercept for AwsCallCounter {
    fn name(&self) -> &'static str {
        "slipway::metrics::AwsCallCounter"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_ascii_lowercase(), m.name().to_owned()))
            .unwrap_or_else(|| ("unknown".to_owned(), "unknown".to_owned()));
        let result = match context.output_or_error() {
            Some(Ok(_)) => RESULT_OK,
            _ => RESULT_ERROR,
        };
        metrics::counter!(AWS_CALLS, "service" => service, "operation" => operation, "result" => result)
            .increment(1);
        Ok(())
    }
}
