//! The read-only operator views: the status page (`/`, `/deployments/{id}`) and the Prometheus
//! scrape (`/metrics`). They read only, and belong on the private listener; with
//! `SLIPWAY_READ_TOKEN` set they need it (`admin::read_token`).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(status_page))
        .route("/deployments/{id}", get(deployment_page))
        .route("/metrics", get(metrics))
}

async fn status_page(State(state): State<AppState>) -> Response {
    // The replicas are shown when the store can say (the rest of the page does not wait on it).
    let replicas = state.replicas.view().await.ok();
    match crate::page::status(
        &state.ops,
        &state.page_cache,
        &state.journal,
        replicas.as_ref(),
    )
    .await
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => unavailable("status page", &e),
    }
}

async fn deployment_page(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::NOT_FOUND, Html("no such deployment\n")).into_response();
    };
    match crate::page::deployment(&state.journal, id).await {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html("no such deployment\n")).into_response(),
        Err(e) => unavailable("deployment page", &e),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let now = crate::store::millis(state.clock.now());
    // The store's counts (the same whichever replica reads them) come from one replica only,
    // the one holding `retention` (or, while none does, whichever is asked), so a sum over
    // the replicas counts them once.
    let shared = state.replicas.holds(crate::replicas::RETENTION)
        || !state
            .replicas
            .held_by_another(crate::replicas::RETENTION)
            .await;
    match crate::metrics::render(&state.journal, now, shared).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => unavailable("metrics", &e),
    }
}

fn unavailable(what: &str, e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "{what}: journal read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the journal could not be read\n",
    )
        .into_response()
}
