//! `POST /webhooks/github`: read within limits, verify, parse at the edge, journal, answer.
//!
//! The handler never waits on AWS: it commits the delivery (and the builds it asks for) to the
//! journal and wakes the build worker, which does the rest from durable state.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::Instrument;

use super::body::{declared_too_large, error, header, read_body};
use super::AppState;
use crate::ids::{DeliveryId, HookId};
use crate::store::{Admission, NewDelivery, Source, Verdict};
use crate::webhook::{
    clip, decide, hook_bound, repository_of, signature_header, skipped_json, ContentType,
    MAX_BODY_BYTES,
};

/// The headers kept with a delivery in the journal (never the signature).
fn kept_headers(headers: &HeaderMap) -> serde_json::Value {
    let mut kept = serde_json::Map::new();
    for name in [
        "x-github-event",
        "x-github-delivery",
        "x-github-hook-id",
        "x-github-hook-installation-target-id",
        "x-github-hook-installation-target-type",
        "user-agent",
        "content-type",
    ] {
        if let Some(v) = header(headers, name) {
            kept.insert(name.to_owned(), v.into());
        }
    }
    serde_json::Value::Object(kept)
}

pub(super) async fn handle(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let started = std::time::Instant::now();
    let response = handle_request(state, request).await;
    metrics::histogram!(crate::metrics::WEBHOOK_DURATION).record(started.elapsed().as_secs_f64());
    response
}

async fn handle_request(state: AppState, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if declared_too_large(&headers, MAX_BODY_BYTES) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    // Everything the headers can settle is settled before a byte of the body is read, so a
    // request that cannot be a delivery never holds any of the shared body budget.
    let Some(content_type) = ContentType::from_header(header(&headers, "content-type")) else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json or application/x-www-form-urlencoded",
        );
    };
    let signature = match signature_header(header(&headers, "x-hub-signature-256")) {
        Ok(signature) => signature,
        Err(e) => {
            tracing::warn!(reason = %e, "webhook: signature check failed");
            return error(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let Some(event) = header(&headers, "x-github-event").filter(|e| !e.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header");
    };
    let delivery_id = match header(&headers, "x-github-delivery").map(DeliveryId::parse) {
        None => return error(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery header"),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.0),
        Some(Ok(id)) => id,
    };
    let hook_id = match HookId::parse(header(&headers, "x-github-hook-id")) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.0),
    };
    let mut verifier = state.keys.verifier();
    let (body, held) = match read_body(
        body,
        MAX_BODY_BYTES,
        state.limits.body_timeout,
        &state.body_budget,
        |chunk| verifier.update(chunk),
    )
    .await
    {
        Ok(read) => read,
        Err(response) => return response,
    };
    let signed = match verifier.finish(&signature) {
        Ok(signed) => signed,
        Err(e) => {
            tracing::warn!(reason = %e, "webhook: signature check failed");
            return error(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    drop(held);
    let body = body.into_vec();
    // The secret that signed it must be one of the repository's (and the hook one of its
    // hooks, where `[[github.hook]]` names them): one repository's admin cannot sign for another.
    let repository = repository_of(content_type, &body);
    if let Err(e) = signed.check(repository.as_deref()) {
        tracing::warn!(reason = ?e.to_string(), "webhook: signed with another repository's secret; refused");
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    if let Err(why) = hook_bound(
        state.config.github.as_ref(),
        repository.as_deref(),
        &hook_id,
    ) {
        tracing::warn!(reason = ?why, "webhook: delivery from a hook not bound to its repository");
        return error(StatusCode::FORBIDDEN, &why);
    }
    let span = tracing::info_span!(
        "delivery",
        delivery = %delivery_id,
        hook = %hook_id,
        event = ?clip(event)
    );
    let delivery = NewDelivery {
        delivery_id,
        hook_id,
        event: event.to_owned(),
        source: Source::Github,
        actor: None,
        replay_of: None,
        received_ms: crate::store::millis(state.clock.now()),
        content_type: content_type.as_str().to_owned(),
        headers: kept_headers(&headers),
        body,
    };
    admit(&state, delivery, content_type).instrument(span).await
}

/// Decides, journals and answers one authentic delivery (a webhook or an operator's replay).
async fn admit(state: &AppState, delivery: NewDelivery, content_type: ContentType) -> Response {
    let github = state.ops.changed_files.as_deref();
    let verdict = decide(
        &state.config,
        &delivery.event,
        content_type,
        &delivery.body,
        github,
    )
    .await;
    let skipped = verdict.skipped().to_vec();
    let delivery_id = delivery.delivery_id.clone();
    // A tag push matching a promoted app's `tags` (issue 27): the image its source deployed,
    // promoted without a build. Read before the answer (why, if nothing is promoted); the
    // promotion is made after it (ECS and ECR say which digest ran). A redelivery makes it
    // again if slipway stopped in between (it is made once per source deploy and tag).
    let tag_released = state
        .config
        .apps
        .iter()
        .any(|a| a.promote.is_some() && a.tags.is_some());
    let releases = match (delivery.event.as_str(), &verdict) {
        ("push", Verdict::Ignored(_) | Verdict::Build(_) | Verdict::BuildSome { .. })
            if tag_released =>
        {
            match crate::webhook::payload_json(content_type, &delivery.body)
                .ok()
                .and_then(|json| crate::webhook::Push::parse(&json).ok())
            {
                Some(push) => state.ops.promoter.tag_release(&push).await,
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    let promoted: Vec<serde_json::Value> = releases
        .iter()
        .map(|r| json!({ "app": r.app, "tag": r.tag, "promoting": r.source.is_some(), "reason": r.reason }))
        .collect();
    let admission = match state.journal.admit(delivery, verdict).await {
        Ok((_, admission)) => admission,
        Err(e) if e.retry_later().is_some() => {
            let why = e.retry_later().unwrap_or_default();
            tracing::warn!(%why, "webhook: store busy or unavailable; asking GitHub to retry");
            let mut busy = error(StatusCode::SERVICE_UNAVAILABLE, &format!("busy: {why}"));
            busy.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            return busy;
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook: could not journal the delivery");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be stored; redeliver it later",
            );
        }
    };
    let promoting = releases.iter().any(|r| r.source.is_some());
    for release in releases.into_iter().filter(|r| r.source.is_some()) {
        let promoter = state.ops.promoter.clone();
        tokio::spawn(async move { promoter.promote_tag(release).await }.in_current_span());
    }
    match admission {
        Admission::Ignored(_) if promoting => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "accepted", "delivery": delivery_id, "promotions": promoted })),
        )
            .into_response(),
        Admission::Pong => {
            tracing::info!("ping");
            (StatusCode::OK, Json(json!({ "status": "pong" }))).into_response()
        }
        Admission::Ignored(reason) => {
            // Reasons quote the payload (refs, repository names): escaped.
            tracing::info!(reason = ?reason, "ignored");
            // A tag a promoted app has nothing to promote for says why.
            let reason = match promoted.first() {
                Some(p) => p["reason"].as_str().unwrap_or_default().to_owned(),
                None => reason,
            };
            (
                StatusCode::OK,
                Json(json!({ "status": "ignored", "reason": reason, "promotions": promoted })),
            )
                .into_response()
        }
        Admission::Rejected(reason) => {
            tracing::warn!(reason = ?reason, "rejected: malformed payload");
            error(StatusCode::BAD_REQUEST, &reason)
        }
        Admission::Duplicate => {
            tracing::info!("duplicate: builds already started");
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
        Admission::Accepted(builds) => {
            state.build_wake.notify_one();
            let list: Vec<_> = builds
                .iter()
                .map(|b| {
                    tracing::info!(app = %b.app, sha = %b.sha, retry = b.retry, "accepted");
                    json!({ "app": b.app, "sha": b.sha, "retry": b.retry })
                })
                .collect();
            let first = &builds[0];
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "accepted",
                    "delivery": delivery_id,
                    "app": first.app,
                    "sha": first.sha,
                    "builds": list,
                    "skipped": skipped_json(&skipped),
                    "promotions": promoted,
                })),
            )
                .into_response()
        }
    }
}
