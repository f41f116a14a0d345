//! The ops API: JSON over HTTP for operators and chat bots, behind bearer tokens.

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::ops::OpsError;
use crate::webhook::{payload_json, ContentType};

/// An API error: `{"error": "<message>", "code": "<stable_code>"}` with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        let status = match &e {
            OpsError::UnknownApp(_) | OpsError::NotFound(_) | OpsError::NoImage(_) => {
                StatusCode::NOT_FOUND
            }
            OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpsError::Conflict(_) => StatusCode::CONFLICT,
            OpsError::Aws(_) => StatusCode::BAD_GATEWAY,
            OpsError::Forbidden(_) => StatusCode::FORBIDDEN,
            OpsError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "ops request failed");
        }
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Who is calling: the label of the bearer token that matched.
pub struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.ops_tokens.is_enabled() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "ops_disabled",
                "the ops API is disabled: set SLIPWAY_OPS_TOKENS to enable it",
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token",
            ));
        };
        match state.ops_tokens.check(presented) {
            Some(label) => Ok(Operator(label)),
            None => {
                tracing::warn!("ops API: a request with a wrong token");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid bearer token",
                ))
            }
        }
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/apps", get(apps))
        .route("/api/replicas", get(replicas))
        .route("/api/apps/{app}/deploy", post(deploy))
        .route("/api/apps/{app}/rollback", post(rollback))
        .route("/api/apps/{app}/approve", post(approve))
        .route("/api/apps/{app}/reject", post(reject))
        .route("/api/promotions", get(promotions))
        .route("/api/deliveries", get(deliveries))
        .route("/api/deliveries/{id}", get(delivery))
        .route("/api/deliveries/{id}/replay", post(replay))
        .route(
            "/api/replay",
            post(replay_payload).layer(DefaultBodyLimit::max(crate::webhook::MAX_BODY_BYTES)),
        )
        .route("/api/deployments", get(deployments))
        .route("/api/deployments/{id}", get(deployment))
        .route("/api/github/recoveries", get(github_recoveries))
        .route("/api/notifications", get(notifications))
        .route("/api/backups", get(last_backup).post(take_backup))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A file path on this host or s3://bucket/key; default: a stamped copy at `backup_to`.
    to: Option<String>,
}

/// Takes a consistent backup of the journal now (issue 21; `slipway backup` while serving).
async fn take_backup(
    Operator(who): Operator,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: BackupBody = parse(&body)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let to = state.backups.target(body.to.as_deref()).map_err(bad)?;
    tracing::info!(operator = %who, to = %to, "backup requested");
    match state.backups.take(&to).await {
        Ok(taken) => Ok(Json(json!({ "backup": taken }))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "backup_failed",
            e.to_string(),
        )),
    }
}

/// The last backup's outcome and the schedule.
async fn last_backup(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let last = state.backups.last().await.map_err(OpsError::from)?;
    Ok(Json(
        json!({ "last": last, "schedule": state.backups.schedule() }),
    ))
}

async fn apps(_: Operator, State(state): State<AppState>) -> Json<serde_json::Value> {
    // The replicas' view is best effort here (`/api/replicas` says why when it fails).
    let replicas = state.replicas.view().await.ok();
    Json(json!({
        "apps": state.ops.status().await,
        "github": state.ops.github_status(),
        "replica": state.replicas.id(),
        "replicas": replicas.map(|v| v.replicas),
    }))
}

/// The live replicas and the leases each holds (issue 26).
async fn replicas(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = state.replicas.view().await.map_err(OpsError::from)?;
    Ok(Json(json!({
        "replica": state.replicas.id(),
        "lease_secs": state.replicas.period().as_secs(),
        "replicas": view.replicas,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveriesQuery {
    limit: Option<u32>,
}

/// Failed deliveries slipway asked GitHub to redeliver (actor `github-recovery`), newest first.
async fn github_recoveries(
    _: Operator,
    State(state): State<AppState>,
    Query(q): Query<RecoveriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = limit(&ListQuery {
        app: None,
        state: None,
        limit: q.limit,
    })?;
    let rows = state
        .journal
        .recoveries(limit)
        .await
        .map_err(OpsError::from)?;
    Ok(Json(json!({ "recoveries": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// Slack and generic-webhook notifications (issue 24), newest first: pending ones with their
/// attempts and last error, sent ones, and given-up ones with the reason.
async fn notifications(
    _: Operator,
    State(state): State<AppState>,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::store::notify_state;
    let limit = limit(&ListQuery {
        app: None,
        state: None,
        limit: q.limit,
    })?;
    if let Some(s) = &q.state {
        if !notify_state::ALL.contains(&s.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("state must be one of {}", notify_state::ALL.join(", ")),
            ));
        }
    }
    let rows = state
        .journal
        .notifications(q.state, limit)
        .await
        .map_err(OpsError::from)?;
    Ok(Json(json!({ "notifications": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    sha: String,
}

async fn deploy(
    Operator(who): Operator,
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: DeployBody = parse(&body)?;
    let id = state.ops.deploy_sha(&app, &body.sha, &who).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "deployment": id, "app": app })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<String>,
}

async fn rollback(
    Operator(who): Operator,
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RollbackBody = parse(&body)?;
    let id = state.ops.rollback(&app, body.to.as_deref(), &who).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "deployment": id, "app": app })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    app: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

fn limit(q: &ListQuery) -> Result<u32, ApiError> {
    match q.limit {
        None => Ok(50),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be between 1 and 1000",
        )),
    }
}

fn known_app(state: &AppState, app: &Option<String>) -> Result<(), ApiError> {
    match app {
        Some(a) if state.config.app(a).is_none() => Err(OpsError::UnknownApp(a.clone()).into()),
        _ => Ok(()),
    }
}

async fn deliveries(
    _: Operator,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_app(&state, &q.app)?;
    let rows = state
        .journal
        .find_deliveries(q.app.clone(), q.state.clone(), limit(&q)?)
        .await
        .map_err(OpsError::from)?;
    Ok(Json(json!({ "deliveries": rows })))
}

async fn delivery(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = state
        .journal
        .delivery(&id)
        .await
        .map_err(OpsError::from)?
        .ok_or_else(|| OpsError::NotFound(format!("no delivery {id}")))?;
    let builds: Vec<_> = state
        .journal
        .delivery_summary(record.row)
        .await
        .map_err(OpsError::from)?
        .into_iter()
        .filter(|r| r.app.is_some())
        .collect();
    let deployments = state
        .journal
        .deployments_of_delivery(record.row)
        .await
        .map_err(OpsError::from)?;
    // Null once retention dropped the body.
    let payload = record
        .body
        .as_deref()
        .map_or(serde_json::Value::Null, |body| {
            payload_json(
                ContentType::from_header(Some(&record.content_type)).unwrap_or(ContentType::Json),
                body,
            )
            .ok()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned().into())
        });
    let mut v = serde_json::to_value(&record).expect("serializable");
    v["builds"] = serde_json::to_value(builds).expect("serializable");
    v["deployments"] = serde_json::to_value(deployments).expect("serializable");
    v["payload"] = payload;
    Ok(Json(v))
}

async fn replay(
    Operator(who): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let replayed = state.ops.replay(&id, &who).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "replay": replayed })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayPayload {
    #[serde(default = "push")]
    event: String,
    payload: serde_json::Value,
}

fn push() -> String {
    "push".into()
}

async fn replay_payload(
    Operator(who): Operator,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ReplayPayload = parse(&body)?;
    let payload = serde_json::to_vec(&body.payload).expect("serializable");
    let replayed = state.ops.replay_payload(&body.event, payload, &who).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "replay": replayed })),
    )
        .into_response())
}

async fn deployments(
    _: Operator,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_app(&state, &q.app)?;
    let rows = state
        .journal
        .recent_deployments(q.app.clone(), limit(&q)?)
        .await
        .map_err(OpsError::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for d in &rows {
        // A promotion's deploy says where its image comes from and who approved it.
        out.push(match d.promotion {
            Some(_) => state.ops.deployment(d.id).await?,
            None => state.ops.deployment_json(d),
        });
    }
    Ok(Json(json!({ "deployments": out })))
}

async fn deployment(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("\"{id}\" is not a deployment id"),
        )
    })?;
    Ok(Json(state.ops.deployment(id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// The commit whose promotion is meant (7 to 40 hex characters); default: the one waiting.
    sha: Option<String>,
}

/// Approves the promotion waiting for `app` (issue 27): 200 with the promotion and the
/// deployment it made; 403 for a token not among the app's `approvers` (nothing changes).
async fn approve(
    Operator(who): Operator,
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(who, state, app, body, crate::promote::Verdict::Approve).await
}

/// Rejects the promotion waiting for `app`: nothing is deployed.
async fn reject(
    Operator(who): Operator,
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(who, state, app, body, crate::promote::Verdict::Reject).await
}

async fn decide(
    who: String,
    state: AppState,
    app: String,
    body: Bytes,
    verdict: crate::promote::Verdict,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: DecisionBody = parse(&body)?;
    let approver = crate::promote::Approver::Ops(who);
    let p = state
        .ops
        .decide_promotion(&app, body.sha.as_deref(), &approver, verdict)
        .await?;
    Ok(Json(
        json!({ "status": p.state, "promotion": p, "deployment": p.deployment, "app": app }),
    ))
}

/// Promotions, newest first (of one app with `?app=`): waiting, approved (with the deployment
/// they made), rejected, superseded, expired; who decided and when.
async fn promotions(
    _: Operator,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_app(&state, &q.app)?;
    let rows = state
        .journal
        .promotions(q.app.clone(), limit(&q)?)
        .await
        .map_err(OpsError::from)?;
    Ok(Json(json!({ "promotions": rows })))
}
