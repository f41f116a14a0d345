//! What both listeners answer while `serve` is starting (waiting for the journal lock, opening
//! the journal, checking AWS): `/healthz` 200 (the process is alive), `/readyz` 503 with what
//! it is waiting for, anything else 503 with `Retry-After`. A load balancer keeps sending
//! traffic to the task being replaced, and a person asking sees why this one is not ready.
//!
//! Each connection serves one request (no keep-alive), so when startup ends no connection goes
//! on being answered by this router: the next one reaches the real server on the same listener.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// Connections served at once while starting (health checks and the odd early request).
const MAX_CONNECTIONS: usize = 64;

/// Answers on `public` and `admin` until `stop` is cancelled. The listeners stay open for the
/// server that follows.
pub async fn answer_while_starting(
    public: &TcpListener,
    admin: &TcpListener,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .fallback(starting)
        .with_state(readiness);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::join!(
        accept(public, app.clone(), slots.clone(), &stop),
        accept(admin, app, slots, &stop),
    );
}

async fn accept(
    listener: &TcpListener,
    app: Router,
    slots: Arc<Semaphore>,
    stop: &CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false);
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
}

fn why(readiness: &Readiness) -> String {
    readiness
        .facts()
        .starting
        .unwrap_or_else(|| "slipway is starting".to_owned())
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> Response {
    let body = json!({ "status": "not ready", "error": why(&readiness) });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn starting(State(readiness): State<Arc<Readiness>>) -> Response {
    let body = json!({ "error": format!("slipway is not serving yet: {}", why(&readiness)) });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert("retry-after", "5".parse().expect("static header"));
    response
}
