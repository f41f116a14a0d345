//! The HTTP edge: the state every handler reaches, the routes, and the server with the workers
//! behind it, wired together. One file per surface (`webhook`, `slack`, `api`); `body` holds
//! what they share. Nothing outside this module imports axum.
//!
//! `run` takes its listener and its shutdown signal from the caller, so tests bind port 0 and
//! stop it cleanly; the AWS clients and the clock are injected the same way.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

mod api;
mod body;
mod slack;
mod webhook;

use crate::aws::Clients;
use crate::build::BuildStarter;
use crate::clock::SharedClock;
use crate::config::{Config, OpsTokens, ServerLimits, WebhookSecrets};
use crate::deploy::Deployer;
use crate::events::{BuildResults, Consumer, Reconciler};
use crate::journal::Journal;
use crate::notify::Notifier;

/// Webhook bodies read at once: bounds the memory unauthenticated requests can take.
const MAX_BODY_READS: usize = 16;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub secrets: Arc<WebhookSecrets>,
    pub journal: Journal,
    pub clock: SharedClock,
    pub build_wake: Arc<Notify>,
    pub limits: ServerLimits,
    pub ops: crate::ops::Ops,
    pub ops_tokens: Arc<OpsTokens>,
    /// Bounds the webhook bodies read at once (each up to 25 MiB, before the signature check).
    pub body_reads: Arc<Semaphore>,
    /// Slack requests already handled (replay protection).
    pub slack_seen: Arc<crate::chat::SeenRequests>,
    /// The chat domain: what a verified slash command does.
    pub chat: crate::chat::Chat,
    /// Slack's signing secret; None disables `/chat/slack`.
    pub slack_secret: Option<Arc<crate::config::Secret>>,
}

/// Everything `run` needs from outside.
pub struct Services {
    pub config: Config,
    pub secrets: WebhookSecrets,
    pub journal: Journal,
    pub clock: SharedClock,
    pub aws: Clients,
    pub notifier: Notifier,
    pub ops_tokens: OpsTokens,
    pub slack_secret: Option<crate::config::Secret>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/github", post(webhook::handle))
        .route("/chat/slack", post(slack::slack))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api::routes())
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.journal.backpressure() {
        let body = json!({ "status": "not ready", "error": why });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let now = crate::journal::millis(state.clock.now());
    let writable = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        state.journal.check_writable(now),
    );
    match writable
        .await
        .unwrap_or_else(|_| Err(crate::journal::JournalError::Busy("".into())))
    {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readyz: journal not writable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "error": "journal is not writable" })),
            )
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

/// Serves until `shutdown` resolves, then stops accepting, finishes in-flight requests, stops
/// the workers (pending work stays in the journal) and returns.
pub async fn run(
    listener: TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Services {
        config,
        secrets,
        journal,
        clock,
        aws,
        notifier,
        ops_tokens,
        slack_secret,
    } = services;
    let config = Arc::new(config);
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
        }
        .run(workers.clone()),
    );
    let deployer = Arc::new(Deployer::new(
        journal.clone(),
        &aws,
        clock.clone(),
        config.clone(),
        notifier.clone(),
        deploy_wake.clone(),
    ));
    worker_tasks.spawn(deployer.clone().run(workers.clone()));
    let results = Arc::new(BuildResults {
        journal: journal.clone(),
        config: config.clone(),
        clock: clock.clone(),
        notifier: notifier.clone(),
        deploy_wake: deploy_wake.clone(),
    });
    if let Some(queue_url) = &config.queue_url {
        worker_tasks.spawn(
            Consumer {
                sqs: aws.sqs.clone(),
                queue_url: queue_url.clone(),
                results: results.clone(),
            }
            .run(workers.clone()),
        );
    } else {
        tracing::warn!("no queue_url configured: build results come only from the reconciler");
    }
    worker_tasks.spawn(
        Reconciler {
            codebuild: aws.codebuild.clone(),
            results,
        }
        .run(workers.clone()),
    );

    worker_tasks.spawn(
        crate::journal::Retention {
            journal: journal.clone(),
            clock: clock.clone(),
            settings: config.journal.clone(),
        }
        .run(workers.clone()),
    );
    let ops = crate::ops::Ops {
        config: config.clone(),
        journal: journal.clone(),
        aws: aws.clone(),
        clock: clock.clone(),
        build_wake: build_wake.clone(),
        deploy_wake: deploy_wake.clone(),
    };
    if !ops_tokens.is_enabled() {
        tracing::info!("the ops API is disabled (SLIPWAY_OPS_TOKENS is not set)");
    }
    let chat = crate::chat::Chat {
        config: config.clone(),
        ops: ops.clone(),
    };
    let state = AppState {
        config,
        chat,
        secrets: Arc::new(secrets),
        journal: journal.clone(),
        clock,
        build_wake,
        limits: limits.clone(),
        ops,
        ops_tokens: Arc::new(ops_tokens),
        slack_secret: slack_secret.map(Arc::new),
        body_reads: Arc::new(Semaphore::new(MAX_BODY_READS)),
        slack_seen: Arc::default(),
    };
    let app = router(state);

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in 30 s");
    }
    workers.cancel();
    while worker_tasks.join_next().await.is_some() {}
    notifier.flush(std::time::Duration::from_secs(5)).await;
    journal.close();
    tracing::info!("stopped");
    Ok(())
}
