//! `POST /chat/slack`: read within limits, check Slack's signature and replays, parse the form,
//! and hand the command to [`crate::chat`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::body::{declared_too_large, header, read_body};
use super::AppState;
use crate::chat::{
    check_headers, verify, Command, ResponseUrl, SlashCommand, MAX_BODY_BYTES, REPLAY_WINDOW_SECS,
};
use crate::webhook::{clip, ContentType};

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

fn ephemeral(text: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "response_type": "ephemeral", "text": text.into() })),
    )
        .into_response()
}

/// A Slack request's body, once its signature, freshness, first arrival and content type are
/// checked (the slash command and interactivity are signed the same way); else the answer.
async fn verified(state: &AppState, request: axum::extract::Request) -> Result<Vec<u8>, Response> {
    let Some(secret) = state.slack_secret.clone() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "chat_disabled",
            "the Slack command is disabled: set SLIPWAY_SLACK_SIGNING_SECRET to enable it",
        ));
    };
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if declared_too_large(&headers, MAX_BODY_BYTES) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    // Slack's timestamp and signature are checked before a byte of the body is read: a request
    // without them (or a stale one) never holds any of the shared body budget.
    if let Err(e) = check_headers(
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        state.clock.now().unix_timestamp(),
    ) {
        tracing::warn!(reason = %e, "chat: Slack signature check failed");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &e.to_string(),
        ));
    }
    let body = match read_body(
        body,
        MAX_BODY_BYTES,
        state.limits.body_timeout,
        &state.body_budget,
        |_| {},
    )
    .await
    {
        Ok((body, _held)) => body.into_vec(),
        Err(response) => return Err(response),
    };
    if let Err(e) = verify(
        secret.expose(),
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        &body,
        state.clock.now().unix_timestamp(),
    ) {
        tracing::warn!(reason = %e, "chat: Slack signature check failed");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &e.to_string(),
        ));
    }
    // A signed request is good for 5 minutes: refuse the same one a second time, also after a
    // restart. The key is the signature's bytes, so the same request with its hex re-cased
    // is the same request.
    let signature = header(&headers, "x-slack-signature")
        .and_then(|v| crate::webhook::signature_bytes(v, "v0="))
        .unwrap_or_default();
    match state
        .journal
        .slack_first_time(
            signature,
            state.clock.now().unix_timestamp(),
            REPLAY_WINDOW_SECS,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("chat: a Slack request was sent again; refused");
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this request was already received",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "chat: could not record the Slack request");
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "slipway could not record the request; try again",
            ));
        }
    }
    if ContentType::from_header(header(&headers, "content-type")) != Some(ContentType::Form) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    Ok(body)
}

/// The fields of Slack's `block_actions` payload slipway uses (api.slack.com, "Interactivity:
/// block_actions payloads": the form field `payload` holds the JSON; `team.id`, `user.id`,
/// `actions[].action_id` and `value`, `response_url`).
#[derive(Debug, serde::Deserialize)]
struct BlockActions {
    #[serde(rename = "type")]
    kind: String,
    team: IdOnly,
    user: IdOnly,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: String,
}

#[derive(Debug, serde::Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Debug, serde::Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

use crate::notify::{APPROVE_ACTION, REJECT_ACTION};

/// `POST /chat/slack/actions`: Slack's interactivity endpoint (issue 27), signed exactly like
/// the slash command and from the configured workspace only. A press of a promotion's button
/// approves or rejects it as its user (one of the app's `approvers`, or told they are not).
pub(super) async fn actions(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let body = match verified(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let payload = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(k, _)| k == "payload"))
        .map(|(_, v)| v);
    let Some(payload) = payload else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "form body has no payload field",
        );
    };
    let de = &mut serde_json::Deserializer::from_str(&payload);
    let p: BlockActions = match serde_path_to_error::deserialize(de) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid payload: {e}"),
            )
        }
    };
    if !state.chat.allows_team(&p.team.id) {
        tracing::warn!(team_id = ?clip(&p.team.id), "chat: an action from another Slack workspace; refused");
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this Slack workspace may not use slipway",
        );
    }
    let action = p.actions.first();
    let approve = match action.map(|a| a.action_id.as_str()) {
        _ if p.kind != "block_actions" => None,
        Some(APPROVE_ACTION) => Some(true),
        Some(REJECT_ACTION) => Some(false),
        _ => None,
    };
    let (Some(approve), Some(action)) = (approve, action) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not an action slipway knows",
        );
    };
    tracing::info!(user_id = ?clip(&p.user.id), team_id = ?clip(&p.team.id),
        action = ?clip(&action.action_id), value = ?clip(&action.value), "chat: button pressed");
    let text = state.chat.press(&p.user.id, approve, &action.value).await;
    // Slack shows the answer to a button through `response_url` (the HTTP answer only
    // acknowledges); the same text is in the answer for whoever else reads it.
    if let Some(url) = ResponseUrl::parse(&p.response_url) {
        let text = text.clone();
        tokio::spawn(async move { url.post_ephemeral(&text).await });
    }
    (
        StatusCode::OK,
        Json(json!({ "response_type": "ephemeral", "replace_original": false, "text": text })),
    )
        .into_response()
}

pub(super) async fn slack(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let body = match verified(&state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let form: SlashCommand = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid form body: {e}"),
            )
        }
    };
    if !state.chat.allows_team(&form.team_id) {
        tracing::warn!(team_id = ?clip(&form.team_id), "chat: a command from another Slack workspace; refused");
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this Slack workspace may not use slipway",
        );
    }
    if form.user_id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "missing user_id");
    }
    let command = Command::parse(&form.text);
    // Every value is the sender's: logged escaped (`?`), so no text can write a line of its own.
    tracing::info!(
        user_id = ?clip(&form.user_id),
        user_name = ?clip(&form.user_name),
        team_id = ?clip(&form.team_id),
        channel_id = ?clip(&form.channel_id),
        command = command.name(),
        text = ?form.text.chars().take(200).collect::<String>(),
        "chat: slash command"
    );
    let reply_to = if form.response_url.is_empty() {
        None
    } else {
        let parsed = ResponseUrl::parse(&form.response_url);
        if parsed.is_none() {
            tracing::warn!(
                user_id = ?clip(&form.user_id),
                "chat: response_url is not an https URL (or local http); outcomes will not be posted"
            );
        }
        parsed
    };
    ephemeral(state.chat.run(form, command, reply_to).await)
}
