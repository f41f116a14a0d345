//! The HTTP edge: the state every handler reaches, the routes, and the server with the workers
//! behind it, wired together. One file per surface (`webhook`, `slack`, `api`); `body` holds
//! what they share. Nothing outside this module imports axum.
//!
//! `run` takes its two listeners (public and admin) and its shutdown signal from the caller,
//! so tests bind port 0 and stop it cleanly; the AWS clients and the clock are injected the
//! same way. `conn` accepts connections within limits.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

mod admin;
mod api;
mod body;
mod conn;
mod slack;
mod starting;
mod status;
mod webhook;

use crate::aws::Clients;
use crate::build::BuildStarter;
use crate::clock::SharedClock;
use crate::config::{Config, OpsTokens, ServerLimits};
use crate::deploy::Deployer;
use crate::events::{BuildResults, Consumer, Reconciler};
use crate::notify::{Notifier, Target};
use crate::store::Store;
pub use starting::answer_while_starting;

/// What every request handler can reach: one `Arc`, so a request clones a pointer, not every
/// client and handle in it (that was about 5 % of a webhook request's CPU).
pub type AppState = Arc<Shared>;

/// The state behind [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    /// The webhook secrets and the repositories each may sign for.
    pub keys: Arc<crate::webhook_keys::Keyring>,
    pub journal: Store,
    pub clock: SharedClock,
    pub build_wake: Arc<Notify>,
    pub limits: ServerLimits,
    pub ops: crate::ops::Ops,
    pub ops_tokens: Arc<OpsTokens>,
    /// Opens the status page and `/metrics` when set.
    pub read_token: crate::config::ReadToken,
    /// The status page's ECS reads, shared by the requests of a few seconds.
    pub page_cache: crate::page::StatusCache,
    /// Bounds the bytes of bodies held before their signature is checked, all requests together.
    pub body_budget: Arc<body::Budget>,
    /// Requests in flight per client behind trusted proxies.
    forwarded: Arc<conn::Forwarded>,
    /// The chat domain: what a verified slash command does.
    pub chat: crate::chat::Chat,
    /// Slack's signing secret; None disables `/chat/slack`.
    pub slack_secret: Option<Arc<crate::config::Secret>>,
    /// What `serve` found at start (credentials, queue), for `/readyz`.
    pub readiness: Arc<crate::readiness::Readiness>,
    /// Journal backups (`/api/backups`).
    pub backups: Arc<crate::backup::Backups>,
    /// This replica and its leases (`/api/replicas`, issue 26).
    pub replicas: Arc<crate::replicas::Replicas>,
}

/// Everything `run` needs from outside.
pub struct Services {
    pub config: Config,
    pub keys: crate::webhook_keys::Keyring,
    pub journal: Store,
    pub clock: SharedClock,
    pub aws: Clients,
    /// Slack's and the generic webhook's URLs (checked; their outboxes start with the server).
    pub notify: crate::notify::Endpoints,
    pub ops_tokens: OpsTokens,
    pub read_token: crate::config::ReadToken,
    pub slack_secret: Option<crate::config::Secret>,
    pub readiness: Arc<crate::readiness::Readiness>,
    /// GitHub API credentials; None: no statuses, deployments or recovery.
    pub github: Option<crate::github::Credentials>,
    /// Journal backups, on request and on `[journal] backup_to`'s schedule.
    pub backups: Arc<crate::backup::Backups>,
    /// This replica's id (`[replicas] replica_id`, the ECS task ARN, or host and pid).
    pub replica_id: String,
}

/// The public listener: what GitHub, Slack and the load balancer's health check reach.
fn public_router(state: AppState) -> Router {
    traced(
        Router::new()
            .route("/webhooks/github", post(webhook::handle))
            .route("/chat/slack", post(slack::slack))
            .route("/chat/slack/actions", post(slack::actions))
            .merge(health_routes())
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                conn::limit_forwarded,
            )),
    )
    .with_state(state)
}

/// The admin listener (`admin_listen`, loopback by default): operators only.
fn admin_router(state: AppState) -> Router {
    traced(
        Router::new()
            .merge(api::routes())
            .merge(admin_health_routes())
            // `/metrics`, the status page at `/` and `/deployments/{id}`.
            .merge(status::routes().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::read_token,
            )))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::known_host,
            ))
            .layer(axum::middleware::from_fn(admin::security_headers)),
    )
    .with_state(state)
}

/// Health on the public listener (the load balancer's check): writes nothing, and says only
/// ready or not ready, with a short generic reason.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(public_readyz))
}

/// Health on the admin listener: `/readyz` checks that the journal takes a write and says why
/// in detail.
fn admin_health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// A request id (`x-request-id`: the caller's if it is `[A-Za-z0-9._-]{1,64}`, or a new UUID)
/// on every request's span and answer, so one grep follows one request.
fn traced(router: Router<AppState>) -> Router<AppState> {
    router.layer(
        tower::ServiceBuilder::new()
            .map_request(drop_odd_request_id)
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                }),
            )
            .layer(PropagateRequestIdLayer::x_request_id()),
    )
}

/// Removes an `x-request-id` that is not `[A-Za-z0-9._-]{1,64}` (the next layer puts a UUID in
/// its place): the caller's id goes into every log line of the request, where spaces, `=` or
/// control characters could forge fields.
fn drop_odd_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let fine = |v: &[u8]| {
        (1..=64).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let headers = request.headers_mut();
    if headers
        .get_all("x-request-id")
        .iter()
        .any(|v| !fine(v.as_bytes()))
        || headers.get_all("x-request-id").iter().count() > 1
    {
        headers.remove("x-request-id");
    }
    request
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The public `/readyz`: in-memory facts only (no journal write, no AWS call), and no detail
/// (no ARNs, account ids, URLs or queue names): `{"status": "ready"}`, or 503 with
/// `{"status": "not ready", "reason": "<short generic reason>"}`.
async fn public_readyz(State(state): State<AppState>) -> Response {
    let reason = if state.journal.backpressure().is_some() {
        Some("journal busy")
    } else {
        state
            .readiness
            .facts()
            .reasons()
            .into_iter()
            .find(|r| r.severity == crate::readiness::Severity::Problem)
            .map(|r| r.public)
    };
    match reason {
        None => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": reason })),
        )
            .into_response(),
    }
}

/// The admin `/readyz`: the journal must take a write, and every reason is told in full.
async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.journal.backpressure() {
        let body = json!({ "status": "not ready", "error": why });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let now = crate::store::millis(state.clock.now());
    let facts = state.readiness.facts();
    let writable = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        state.journal.check_writable(now),
    );
    match writable.await.unwrap_or_else(|_| {
        Err(crate::store::StoreError::Busy(
            "the store did not take a write within 3 s".into(),
        ))
    }) {
        Ok(()) if !facts.problems().is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "not ready", "error": facts.problems().join("; "),
                         "warnings": facts.warnings() }),
            ),
        )
            .into_response(),
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "warnings": facts.warnings() })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readyz: journal not writable");
            // A writer that sat on this very check long enough says why itself.
            let why = state
                .journal
                .backpressure()
                .unwrap_or_else(|| format!("the store is not writable: {e}"));
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "error": why })),
            )
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

/// Serves `public` and `admin` until `shutdown` resolves, then stops accepting, finishes
/// in-flight requests, stops the workers (pending work stays in the journal) and returns.
pub async fn run(
    public: TcpListener,
    admin: TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Services {
        config,
        keys,
        journal,
        clock,
        aws,
        notify,
        ops_tokens,
        read_token,
        slack_secret,
        readiness,
        github,
        backups,
        replica_id,
    } = services;
    if slack_secret.is_some() && config.chat.slack_team_id.is_none() {
        anyhow::bail!(crate::config::SLACK_TEAM_REQUIRED);
    }
    crate::metrics::install(&config, &replica_id);
    let replicas = crate::replicas::Replicas::new(
        journal.clone(),
        clock.clone(),
        replica_id,
        config.replicas.lease,
    );
    let leases_stop = CancellationToken::new();
    let leases = tokio::spawn(replicas.clone().run(leases_stop.clone()));
    let config = Arc::new(config);
    let github = match github {
        Some(credentials) => Some(crate::github::Github::start(
            credentials,
            config.github.clone().unwrap_or_default(),
            config.clone(),
            journal.clone(),
            clock.clone(),
            replicas.clone(),
        )?),
        None => None,
    };
    let github_sink = github.as_ref().map(|g| g.sink.clone()).unwrap_or_default();
    // Every notification goes to every target, each through its own journaled outbox.
    let mut targets: Vec<Arc<dyn Target>> = notify.start(
        &config.notify,
        journal.clone(),
        clock.clone(),
        replicas.clone(),
    )?;
    if github.is_some() {
        targets.push(Arc::new(github_sink.clone()));
    }
    // A deploy's success wakes the promoter (issue 27), which works from the journal.
    let promote_wake = Arc::new(Notify::new());
    targets.push(Arc::new(crate::promote::WakeOnSuccess(
        promote_wake.clone(),
    )));
    let notifier = Notifier::new(targets);
    let limits = config.server.clone();
    let build_wake = Arc::new(Notify::new());
    let deploy_wake = Arc::new(Notify::new());
    let workers = CancellationToken::new();
    let mut worker_tasks = tokio::task::JoinSet::new();
    worker_tasks.spawn(
        BuildStarter {
            journal: journal.clone(),
            codebuild: aws.codebuild.clone(),
            clock: clock.clone(),
            wake: build_wake.clone(),
            retry: config.build.clone(),
            github: github_sink.clone(),
            replicas: replicas.clone(),
        }
        .run(workers.clone()),
    );
    let github_health = github.as_ref().map(|g| g.health.clone());
    let github_client = github
        .as_ref()
        .map(|g| g.client.clone() as Arc<dyn crate::push_filter::ChangedFilesSource>);
    if let Some(recovery) = github.and_then(|g| g.recovery) {
        let recovery = Arc::new(recovery);
        let readiness = readiness.clone();
        let replicas = replicas.clone();
        let shutdown = workers.clone();
        worker_tasks.spawn(async move {
            // One replica recovers; the others are ready without waiting for its round.
            if replicas
                .try_claim(crate::replicas::RECOVERY)
                .await
                .is_none()
            {
                tracing::info!("another replica runs delivery recovery");
                readiness.set_recovery(crate::readiness::Recovery::Done);
            }
            replicas
                .singleton(crate::replicas::RECOVERY, shutdown, |token, _| {
                    let (recovery, readiness) = (recovery.clone(), readiness.clone());
                    async move { recovery.run(token, readiness).await }
                })
                .await
        });
    }
    // Each app's ECS and ECR clients: an app with `role_arn` gets its account's (issue 27).
    let accounts = crate::accounts::Accounts::new(&aws, &config.apps);
    let deployer = Arc::new(Deployer::new(
        journal.clone(),
        &accounts,
        clock.clone(),
        config.clone(),
        notifier.clone(),
        deploy_wake.clone(),
        replicas.clone(),
    ));
    worker_tasks.spawn(deployer.clone().run(workers.clone()));
    let promoter = Arc::new(crate::promote::Promoter {
        journal: journal.clone(),
        accounts: accounts.clone(),
        clock: clock.clone(),
        config: config.clone(),
        notifier: notifier.clone(),
        deploy_wake: deploy_wake.clone(),
        wake: promote_wake,
        told: Default::default(),
    });
    // One replica makes the promotions and expires them (issue 26); approvals and tag
    // releases come through any replica (the store makes each once).
    let promoting = promoter.clone();
    worker_tasks.spawn(replicas.clone().singleton(
        crate::replicas::PROMOTE,
        workers.clone(),
        move |token, _| {
            let promoter = promoting.clone();
            async move { promoter.run(token).await }
        },
    ));
    let results = Arc::new(BuildResults {
        journal: journal.clone(),
        config: config.clone(),
        clock: clock.clone(),
        notifier: notifier.clone(),
        github: github_sink.clone(),
        deploy_wake: deploy_wake.clone(),
    });
    if let Some(queue_url) = &config.queue_url {
        worker_tasks.spawn(
            Consumer {
                sqs: aws.sqs.clone(),
                codebuild: aws.codebuild.clone(),
                queue_url: queue_url.clone(),
                results: results.clone(),
                ecs_watchers: Some(deployer.watchers.clone()),
            }
            .run(workers.clone()),
        );
    } else {
        tracing::warn!("no queue_url configured: build results come only from the reconciler");
    }
    let reconciler = Arc::new(Reconciler {
        codebuild: aws.codebuild.clone(),
        results,
    });
    worker_tasks.spawn(replicas.clone().singleton(
        crate::replicas::RECONCILE,
        workers.clone(),
        move |token, _| {
            let reconciler = reconciler.clone();
            async move { reconciler.run(token).await }
        },
    ));
    let retention = Arc::new(crate::store::Retention {
        journal: journal.clone(),
        clock: clock.clone(),
        settings: config.journal.clone(),
    });
    worker_tasks.spawn(replicas.clone().singleton(
        crate::replicas::RETENTION,
        workers.clone(),
        move |token, _| {
            let retention = retention.clone();
            async move { retention.run(token).await }
        },
    ));
    if let Some(to) = config.journal.backup_to.clone() {
        worker_tasks.spawn(backups.clone().run_schedule(to, workers.clone()));
    }
    let ops = crate::ops::Ops {
        config: config.clone(),
        journal: journal.clone(),
        accounts,
        clock: clock.clone(),
        build_wake: build_wake.clone(),
        deploy_wake: deploy_wake.clone(),
        // The compare API client comes with the `[github]` credentials (issue 11); without
        // them, a push whose payload cannot prove its changed files builds every app it reaches.
        changed_files: github_client,
        github: github_health,
        promoter,
    };
    if !ops_tokens.is_enabled() {
        tracing::info!("the ops API is disabled (SLIPWAY_OPS_TOKENS is not set)");
    }
    let chat = crate::chat::Chat {
        config: config.clone(),
        ops: ops.clone(),
    };
    let state: AppState = Arc::new(Shared {
        config,
        chat,
        forwarded: Arc::default(),
        keys: Arc::new(keys),
        journal: journal.clone(),
        clock,
        build_wake,
        limits: limits.clone(),
        ops,
        ops_tokens: Arc::new(ops_tokens),
        read_token,
        page_cache: crate::page::StatusCache::default(),
        slack_secret: slack_secret.map(Arc::new),
        body_budget: Arc::new(body::Budget::new(limits.unauthenticated_body_bytes)),
        readiness,
        backups,
        replicas: replicas.clone(),
    });
    let public_app = public_router(state.clone());
    let admin_app = admin_router(state.clone());
    let reserved = conn::reserved_router(health_routes().with_state(state));

    let addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    tracing::info!(%addr, %admin_addr, "listening");
    let graceful = GracefulShutdown::new();
    let stop = CancellationToken::new();
    let stopper = async {
        shutdown.await;
        stop.cancel();
        // The workers stop at once (their work stays in the store), so their leases go back
        // to the other replicas within seconds, not after the connections drained.
        workers.cancel();
    };
    tokio::join!(
        stopper,
        conn::serve(
            public,
            public_app,
            reserved.clone(),
            limits.clone(),
            &graceful,
            &stop
        ),
        conn::serve(admin, admin_app, reserved, limits, &graceful, &stop),
    );
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in 30 s");
    }
    workers.cancel();
    while worker_tasks.join_next().await.is_some() {}
    // Builds, deploys and the singletons go back to the other replicas now; the outboxes keep
    // theirs while they flush.
    replicas.release_work().await;
    notifier.flush(std::time::Duration::from_secs(5)).await;
    // Also what GitHub took that was not a notification (build statuses).
    github_sink.flush(std::time::Duration::from_secs(5)).await;
    leases_stop.cancel();
    let _ = leases.await;
    journal.close();
    tracing::info!("stopped");
    Ok(())
}
