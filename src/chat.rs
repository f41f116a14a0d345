//! `POST /chat/slack`: the `/slipway` slash command.
//!
//! Slack signs every request with the app's signing secret (`SLIPWAY_SLACK_SIGNING_SECRET`);
//! the route is off (404) without it. A verified command is answered within Slack's 3 seconds
//! with an ephemeral message; deploys and rollbacks are then followed to the end in the
//! background and their outcome is posted to the command's `response_url`.
//!
//! Everything goes through [`crate::ops::Ops`], with the Slack user as the actor, so chat
//! deploys take the same checks, lock and journal as any other.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::task::JoinHandle;

use crate::config::AppConfig;
use crate::journal::deploy_state;
use crate::ops::{AppStatus, Ops, OpsError};
use crate::server::AppState;
use crate::webhook::{header, ContentType};

/// Slash command bodies are small.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests whose timestamp is further than this from now are refused (replay protection).
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;
/// Slack waits 3 s for the answer; work that takes longer answers through `response_url`.
const ANSWER_WITHIN: Duration = Duration::from_millis(2500);
/// How often a deployment started from chat is looked at.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Added to the app's rollout timeout: a deploy may wait for the service's lock first.
const FOLLOW_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Slack's `response_url` works for 30 minutes.
const RESPONSE_URL_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Each POST to `response_url`, connect to end of body.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per message, the first included.
const POST_ATTEMPTS: usize = 3;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// `v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<body>` with `secret`, as Slack sends it in
/// `X-Slack-Signature`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Missing,
    #[error("malformed X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Malformed,
    #[error("request timestamp is more than 5 minutes from now")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks Slack's `X-Slack-Signature` (`signature`) over `X-Slack-Request-Timestamp`
/// (`timestamp`) and the raw body, in constant time; `now` is the current Unix time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SignatureError::Malformed);
    }
    let sent_at: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    let presented =
        crate::webhook::signature_bytes(signature, "v0=").ok_or(SignatureError::Malformed)?;
    if (now - sent_at).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    mac(secret, timestamp, body)
        .verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// What the text after the slash command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Deploy {
        app: String,
        sha: String,
    },
    Rollback {
        app: String,
        to: Option<String>,
    },
    Status {
        app: Option<String>,
    },
    Help,
    /// A known command with the wrong arguments: its usage line.
    Usage(&'static str),
    /// Not a command slipway knows (the first word, shortened).
    Unknown(String),
}

const DEPLOY_USAGE: &str = "deploy <app> <sha>";
const ROLLBACK_USAGE: &str = "rollback <app> [deployment id or sha]";
const STATUS_USAGE: &str = "status [app]";

impl Command {
    pub fn parse(text: &str) -> Command {
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((first, args)) = words.split_first() else {
            return Command::Help;
        };
        let owned = |s: &&str| (*s).to_owned();
        match (first.to_ascii_lowercase().as_str(), args) {
            ("help", _) => Command::Help,
            ("deploy", [app, sha]) => Command::Deploy {
                app: owned(app),
                sha: owned(sha),
            },
            ("deploy", _) => Command::Usage(DEPLOY_USAGE),
            ("rollback", [app]) => Command::Rollback {
                app: owned(app),
                to: None,
            },
            ("rollback", [app, to]) => Command::Rollback {
                app: owned(app),
                to: Some(owned(to)),
            },
            ("rollback", _) => Command::Usage(ROLLBACK_USAGE),
            ("status", []) => Command::Status { app: None },
            ("status", [app]) => Command::Status {
                app: Some(owned(app)),
            },
            ("status", _) => Command::Usage(STATUS_USAGE),
            _ => Command::Unknown(first.chars().take(32).collect()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::Status { .. } => "status",
            Command::Help => "help",
            Command::Usage(_) => "usage",
            Command::Unknown(_) => "unknown",
        }
    }
}

/// The fields of Slack's slash command payload slipway uses; the others are ignored.
#[derive(Debug, Default, Deserialize)]
struct SlashCommand {
    #[serde(default)]
    text: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    user_name: String,
    #[serde(default)]
    response_url: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    team_id: String,
    #[serde(default)]
    channel_id: String,
}

impl SlashCommand {
    /// Who is acting, as journaled: `slack:<user_id>` (ids are unique and cannot be edited),
    /// with the display name after it for people: `slack:U123(ada)`.
    fn actor(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(64)
                .collect()
        };
        let (id, name) = (clean(&self.user_id), clean(&self.user_name));
        match (id.is_empty(), name.is_empty()) {
            (true, _) => "slack:unknown".to_owned(),
            (false, true) => format!("slack:{id}"),
            (false, false) => format!("slack:{id}({name})"),
        }
    }

    /// `<@U123>` when the user id looks like one, for mentions.
    fn mention(&self) -> Option<String> {
        let id = self.user_id.as_str();
        let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| format!("<@{id}>"))
    }

    /// The slash command as the user typed it (`/slipway`), for help text.
    fn slash(&self) -> &str {
        let c = self.command.as_str();
        let ok = c.len() > 1
            && c.len() <= 32
            && c.starts_with('/')
            && c[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            c
        } else {
            "/slipway"
        }
    }
}

/// A `response_url` slipway may post to. The URL lets anyone post into the channel, so it is
/// never logged or shown by `Debug`.
#[derive(Clone)]
pub struct ResponseUrl(Url);

impl fmt::Debug for ResponseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseUrl([redacted])")
    }
}

impl ResponseUrl {
    /// Any `https://` URL (Slack's are `https://hooks.slack.com/…`), or plain `http://` to this
    /// machine (`127.0.0.1`, `localhost`, `[::1]`) for local testing. Nothing else.
    pub fn parse(value: &str) -> Option<ResponseUrl> {
        let url = Url::parse(value.trim()).ok()?;
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let ok = match url.scheme() {
            "https" => !host.is_empty(),
            "http" => matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
            _ => false,
        };
        ok.then_some(ResponseUrl(url))
    }
}

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

/// Text from outside (app names, SHAs, error messages) made safe for Slack's markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text shown in backticks: escaped, without backticks of its own, shortened.
fn code(s: &str) -> String {
    escape(&s.replace('`', "'").chars().take(64).collect::<String>())
}

fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

pub async fn slack(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let Some(secret) = state.slack_secret.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "chat_disabled",
            "the Slack command is disabled: set SLIPWAY_SLACK_SIGNING_SECRET to enable it",
        );
    };
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let declared = header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let body =
        match crate::webhook::read_body(body, MAX_BODY_BYTES, state.limits.body_timeout).await {
            Ok(body) => body,
            Err(response) => return response,
        };
    if let Err(e) = verify(
        secret.expose(),
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        &body,
        state.clock.now().unix_timestamp(),
    ) {
        tracing::warn!(reason = %e, "chat: Slack signature check failed");
        return error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
    }
    // A signed request is good for 5 minutes: refuse the same one a second time.
    let seen_key = format!(
        "{}:{}",
        header(&headers, "x-slack-request-timestamp").unwrap_or(""),
        header(&headers, "x-slack-signature").unwrap_or("")
    );
    if !state
        .slack_seen
        .first_time(seen_key, state.clock.now().unix_timestamp())
    {
        tracing::warn!("chat: a Slack request was sent again; refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request was already received",
        );
    }
    if ContentType::from_header(header(&headers, "content-type")) != Some(ContentType::Form) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "content type must be application/x-www-form-urlencoded",
        );
    }
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
    if form.user_id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "missing user_id");
    }
    let command = Command::parse(&form.text);
    tracing::info!(
        user_id = %form.user_id,
        user_name = %form.user_name,
        team_id = %form.team_id,
        channel_id = %form.channel_id,
        command = command.name(),
        text = %form.text.chars().take(200).collect::<String>(),
        "chat: slash command"
    );
    let reply_to = if form.response_url.is_empty() {
        None
    } else {
        let parsed = ResponseUrl::parse(&form.response_url);
        if parsed.is_none() {
            tracing::warn!(
                user_id = %form.user_id,
                "chat: response_url is not an https URL (or local http); outcomes will not be posted"
            );
        }
        parsed
    };
    run(state, form, command, reply_to).await
}

async fn run(
    state: AppState,
    form: SlashCommand,
    command: Command,
    reply_to: Option<ResponseUrl>,
) -> Response {
    match command {
        Command::Help => ephemeral(help(&state, &form)),
        Command::Usage(usage) => ephemeral(format!(
            "Usage: `{} {usage}`. Try `{} help`.",
            form.slash(),
            form.slash()
        )),
        Command::Unknown(word) => ephemeral(format!(
            "Sorry, unknown command `{}`.\n{}",
            code(&word),
            help(&state, &form)
        )),
        Command::Status { app } => {
            let apps = match app {
                None => state.config.apps.clone(),
                Some(name) => match state.config.app(&name) {
                    Some(app) => vec![app.clone()],
                    None => return ephemeral(unknown_app(&state, &name)),
                },
            };
            let ops = state.ops.clone();
            let work = tokio::spawn(async move {
                let mut lines = Vec::new();
                for app in &apps {
                    lines.push(status_line(&ops.app_status(app).await));
                }
                if lines.is_empty() {
                    "No apps are configured.".to_owned()
                } else {
                    lines.join("\n")
                }
            });
            ephemeral(answer_within(work, reply_to).await)
        }
        Command::Deploy { app, sha } => {
            let typed = sha.clone();
            let start = move |ops: Ops, app: String, actor: String| async move {
                ops.deploy_sha(&app, &sha, &actor).await
            };
            let announce = move |app: &AppConfig, id: i64, d: Option<&Value>| {
                let sha = d.and_then(|d| d["sha"].as_str()).unwrap_or(&typed);
                format!(
                    "Deploying `{}` to *{}* (deployment {id}).",
                    code(short_sha(sha)),
                    escape(app.name.as_str()),
                )
            };
            change(&state, &form, &app, reply_to, "deploy", start, announce).await
        }
        Command::Rollback { app, to } => {
            let start = move |ops: Ops, app: String, actor: String| async move {
                ops.rollback(&app, to.as_deref(), &actor).await
            };
            let announce = |app: &AppConfig, id: i64, d: Option<&Value>| {
                let target = d
                    .map(|d| {
                        format!(
                            " to `{}`",
                            code(short_sha(d["sha"].as_str().unwrap_or_default()))
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "Rolling back *{}*{target} (deployment {id}).",
                    escape(app.name.as_str()),
                )
            };
            change(&state, &form, &app, reply_to, "roll back", start, announce).await
        }
    }
}

/// Deploy and rollback from chat: checks the user may change `app`, starts the change through
/// the ops engine, answers within Slack's patience (`announce` says what started), and follows
/// the deployment to `response_url`.
async fn change<F>(
    state: &AppState,
    form: &SlashCommand,
    app: &str,
    reply_to: Option<ResponseUrl>,
    what: &'static str,
    start: impl FnOnce(Ops, String, String) -> F + Send + 'static,
    announce: impl FnOnce(&AppConfig, i64, Option<&Value>) -> String + Send + 'static,
) -> Response
where
    F: std::future::Future<Output = Result<i64, OpsError>> + Send,
{
    let app = match may_change(state, form, app) {
        Ok(app) => app,
        Err(text) => return ephemeral(text),
    };
    let (ops, actor, mention) = (state.ops.clone(), form.actor(), form.mention());
    let follow_to = reply_to.clone();
    let work = tokio::spawn(async move {
        match start(ops.clone(), app.name.to_string(), actor).await {
            Ok(id) => {
                let record = ops.deployment(id).await.ok();
                let head = announce(&app, id, record.as_ref());
                let tail = follow(&ops, &app, id, follow_to, mention);
                format!("{head} {tail}")
            }
            Err(e) => failed(what, app.name.as_str(), &e),
        }
    });
    ephemeral(answer_within(work, reply_to).await)
}

fn app_names(state: &AppState) -> String {
    let names: Vec<String> = state
        .config
        .apps
        .iter()
        .map(|a| format!("*{}*", escape(a.name.as_str())))
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn help(state: &AppState, form: &SlashCommand) -> String {
    let c = form.slash();
    format!(
        "*slipway* deploys from chat:\n\
         • `{c} {DEPLOY_USAGE}`: deploy a commit (7 to 40 hex characters) that has an image\n\
         • `{c} {ROLLBACK_USAGE}`: put back an earlier successful deployment (by default the last one before what runs now)\n\
         • `{c} {STATUS_USAGE}`: what runs now\n\
         • `{c} help`: this message\n\
         Apps: {}",
        app_names(state)
    )
}

fn unknown_app(state: &AppState, name: &str) -> String {
    format!(
        "Sorry, {}. Apps: {}.",
        escape(&OpsError::UnknownApp(name.chars().take(64).collect()).to_string()),
        app_names(state)
    )
}

/// The app, if it exists and this user may deploy and roll it back; otherwise the answer.
fn may_change(state: &AppState, form: &SlashCommand, name: &str) -> Result<AppConfig, String> {
    let Some(app) = state.config.app(name) else {
        return Err(unknown_app(state, name));
    };
    if let Some(users) = &app.slack_users {
        if !users.iter().any(|u| u == &form.user_id) {
            tracing::warn!(
                user_id = %form.user_id,
                user_name = %form.user_name,
                app = %app.name,
                "chat: user not allowed to change this app"
            );
            let who = form.mention().unwrap_or_else(|| "there".to_owned());
            return Err(format!(
                "Sorry {who}, you're not on the list of people who can deploy {}.",
                escape(app.name.as_str())
            ));
        }
    }
    Ok(app.clone())
}

fn failed(what: &str, app: &str, e: &OpsError) -> String {
    if matches!(e, OpsError::Aws(_) | OpsError::Journal(_)) {
        tracing::error!(app, error = %e, "chat: {what} failed");
    } else {
        tracing::info!(app, error = %e, "chat: {what} refused");
    }
    format!(
        "Couldn't {what} *{}*: {}",
        escape(app),
        escape(&e.to_string())
    )
}

fn status_line(s: &AppStatus) -> String {
    let name = escape(&s.app);
    if let Some(e) = &s.error {
        return format!("• *{name}*: couldn't read the service: {}", escape(e));
    }
    let running = match (&s.commit, &s.image) {
        (Some(sha), _) => format!("runs `{}`", code(short_sha(sha))),
        (None, Some(image)) => format!(
            "runs image `{}` (not deployed by slipway)",
            code(image.rsplit('/').next().unwrap_or(image))
        ),
        (None, None) => "runs an unknown image".to_owned(),
    };
    let td = s
        .task_definition
        .as_deref()
        .map(|td| {
            format!(
                " (task definition `{}`)",
                code(td.rsplit('/').next().unwrap_or(td))
            )
        })
        .unwrap_or_default();
    let last = match &s.last_deployment {
        Some(d) => format!(
            "; last deployment {} of `{}`: {}",
            d.id,
            code(short_sha(&d.sha)),
            escape(&d.state)
        ),
        None => "; no deployments yet".to_owned(),
    };
    format!("• *{name}* {running}{td}{last}")
}

/// The answer of `work` if it comes within Slack's patience; otherwise "working on it", and
/// the answer goes to `reply_to` when it comes.
async fn answer_within(mut work: JoinHandle<String>, reply_to: Option<ResponseUrl>) -> String {
    match tokio::time::timeout(ANSWER_WITHIN, &mut work).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "chat: command task failed");
            "Sorry, something went wrong; the server log says more.".to_owned()
        }
        Err(_) => match reply_to {
            Some(url) => {
                tokio::spawn(async move {
                    if let Ok(text) = work.await {
                        post(&url, &json!({ "response_type": "ephemeral", "text": text })).await;
                    }
                });
                "Working on it; I'll answer here in a moment.".to_owned()
            }
            None => {
                "Working on it, but Slack gave me no way to answer later: check `slipway deployments`."
                    .to_owned()
            }
        },
    }
}

/// Starts following deployment `id` (when there is somewhere to report to); returns how the
/// user will hear of the outcome.
fn follow(
    ops: &Ops,
    app: &AppConfig,
    id: i64,
    reply_to: Option<ResponseUrl>,
    mention: Option<String>,
) -> &'static str {
    let Some(url) = reply_to else {
        return "Follow it with `slipway deployments`.";
    };
    let limit = (app.rollout_timeout + FOLLOW_MARGIN).min(RESPONSE_URL_LIFETIME);
    tokio::spawn(watch(ops.clone(), id, limit, url, mention));
    "I'll post the outcome here."
}

async fn watch(ops: Ops, id: i64, limit: Duration, url: ResponseUrl, mention: Option<String>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: Option<Value> = None;
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        match ops.deployment(id).await {
            Ok(d) => {
                if deploy_state::is_terminal(d["state"].as_str().unwrap_or_default()) {
                    let text = outcome(&d, mention.as_deref());
                    tracing::info!(deployment = id, state = %d["state"], "chat: deployment finished");
                    post(
                        &url,
                        &json!({ "response_type": "in_channel", "text": text }),
                    )
                    .await;
                    return;
                }
                last = Some(d);
            }
            Err(e) => {
                tracing::warn!(deployment = id, error = %e, "chat: could not read the deployment")
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let state = last
                .as_ref()
                .and_then(|d| d["state"].as_str())
                .unwrap_or("unknown")
                .to_owned();
            tracing::warn!(
                deployment = id,
                state,
                "chat: stopped following a deployment"
            );
            let text = format!(
                "Deployment {id} is still {} after {} minutes; I've stopped watching it. `slipway deployments` shows how it ends.",
                escape(&state),
                limit.as_secs() / 60
            );
            post(
                &url,
                &json!({ "response_type": "in_channel", "text": text }),
            )
            .await;
            return;
        }
    }
}

/// The in-channel message for a finished deployment.
fn outcome(d: &Value, mention: Option<&str>) -> String {
    let id = d["id"].as_i64().unwrap_or_default();
    let app = escape(d["app"].as_str().unwrap_or_default());
    let sha = code(short_sha(d["sha"].as_str().unwrap_or_default()));
    let state = d["state"].as_str().unwrap_or_default();
    let reason = d["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {}", escape(&r.chars().take(500).collect::<String>())))
        .unwrap_or_default();
    let (icon, what) = match state {
        deploy_state::SUCCEEDED => (":white_check_mark:", "succeeded".to_owned()),
        deploy_state::FAILED => (":x:", format!("failed{reason}")),
        deploy_state::ROLLED_BACK => (
            ":leftwards_arrow_with_hook:",
            format!("was rolled back{reason}"),
        ),
        deploy_state::SUPERSEDED => (":fast_forward:", format!("was superseded{reason}")),
        other => (
            ":grey_question:",
            format!("ended as {}{reason}", escape(other)),
        ),
    };
    let by = mention
        .map(|m| format!(" (requested by {m})"))
        .unwrap_or_default();
    let kind = if d["trigger"] == crate::journal::trigger::ROLLBACK {
        "Rollback"
    } else {
        "Deployment"
    };
    format!("{icon} {kind} {id} of `{sha}` to *{app}* {what}{by}")
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            // A redirect could send the outcome somewhere Slack's URL did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// Why one POST failed. Never carries the URL.
#[derive(Debug)]
enum PostError {
    Status(reqwest::StatusCode),
    Transport(reqwest::Error),
}

impl PostError {
    fn retryable(&self) -> bool {
        match self {
            PostError::Status(s) => {
                s.is_server_error() || *s == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            PostError::Transport(e) => e.is_timeout() || e.is_connect() || e.is_request(),
        }
    }
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::Status(s) => write!(f, "HTTP {s}"),
            PostError::Transport(e) => write!(f, "{e}"),
        }
    }
}

async fn post_once(url: &ResponseUrl, body: &Value) -> Result<(), PostError> {
    let response = client()
        .post(url.0.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| PostError::Transport(e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Status(response.status()))
    }
}

/// POSTs `body` to Slack's `response_url`, retrying briefly on transient failures.
async fn post(url: &ResponseUrl, body: &Value) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(POST_ATTEMPTS - 1);
    let result = (|| post_once(url, body))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(PostError::retryable)
        .notify(|e, after| tracing::debug!(error = %e, retry_in = ?after, "chat: response_url post failed; retrying"))
        .await;
    match result {
        Ok(()) => tracing::debug!("chat: posted to response_url"),
        Err(e) => tracing::warn!(error = %e, "chat: could not post to response_url"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK_DOCS_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_DOCS_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_DOCS_SIGNATURE: &str =
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const TS: i64 = 1_531_420_618;

    #[test]
    fn sign_matches_known_vectors() {
        // Both computed independently with Python's hmac module.
        assert_eq!(
            sign(SLACK_DOCS_SECRET, "1531420618", SLACK_DOCS_BODY),
            SLACK_DOCS_SIGNATURE
        );
        assert_eq!(
            sign(b"secret", "1531420618", b"body"),
            "v0=78e394d129df51c593e1d449277f576c39c361411fecc54edd326794263d3f84"
        );
    }

    fn check(
        ts: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        verify(SLACK_DOCS_SECRET, ts, sig, body, now)
    }

    #[test]
    fn verify_accepts_the_docs_example_within_five_minutes() {
        for now in [TS, TS + 300, TS - 300, TS + 1] {
            assert_eq!(
                check(
                    Some("1531420618"),
                    Some(SLACK_DOCS_SIGNATURE),
                    SLACK_DOCS_BODY,
                    now
                ),
                Ok(())
            );
        }
        let upper = SLACK_DOCS_SIGNATURE
            .to_ascii_uppercase()
            .replace("V0=", "v0=");
        assert_eq!(
            check(Some("1531420618"), Some(&upper), SLACK_DOCS_BODY, TS),
            Ok(())
        );
    }

    #[test]
    fn verify_refuses_stale_missing_malformed_and_mismatched() {
        let ts = Some("1531420618");
        let sig = Some(SLACK_DOCS_SIGNATURE);
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS + 360),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(None, sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            check(ts, None, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Missing)
        );
        let no_prefix = &SLACK_DOCS_SIGNATURE[3..];
        for bad_sig in [
            no_prefix,
            "v0=abc",
            "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "v0=z2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ] {
            assert_eq!(
                check(ts, Some(bad_sig), SLACK_DOCS_BODY, TS),
                Err(SignatureError::Malformed),
                "{bad_sig}"
            );
        }
        for bad_ts in [
            "",
            "-1531420618",
            "1531420618.5",
            " 1531420618",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(Some(bad_ts), sig, SLACK_DOCS_BODY, TS),
                Err(SignatureError::Malformed),
                "{bad_ts:?}"
            );
        }
        // Another body, or the same body with another (fresh) timestamp: a replay.
        assert_eq!(
            check(ts, sig, b"text=deploy", TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(Some("1531420619"), sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret", ts, sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert!(!SignatureError::Mismatch.to_string().contains("a2114d"));
    }

    #[test]
    fn commands_parse() {
        let deploy = |app: &str, sha: &str| Command::Deploy {
            app: app.into(),
            sha: sha.into(),
        };
        assert_eq!(
            Command::parse("deploy web 1f2e3d4"),
            deploy("web", "1f2e3d4")
        );
        assert_eq!(
            Command::parse("  DEPLOY   web\t1f2e3d4 \n"),
            deploy("web", "1f2e3d4")
        );
        assert_eq!(Command::parse("deploy web"), Command::Usage(DEPLOY_USAGE));
        assert_eq!(
            Command::parse("deploy web a b"),
            Command::Usage(DEPLOY_USAGE)
        );
        assert_eq!(
            Command::parse("rollback web"),
            Command::Rollback {
                app: "web".into(),
                to: None
            }
        );
        assert_eq!(
            Command::parse("rollback web 12"),
            Command::Rollback {
                app: "web".into(),
                to: Some("12".into())
            }
        );
        assert_eq!(Command::parse("rollback"), Command::Usage(ROLLBACK_USAGE));
        assert_eq!(Command::parse("status"), Command::Status { app: None });
        assert_eq!(
            Command::parse("status web"),
            Command::Status {
                app: Some("web".into())
            }
        );
        assert_eq!(
            Command::parse("status web api"),
            Command::Usage(STATUS_USAGE)
        );
        assert_eq!(Command::parse(""), Command::Help);
        assert_eq!(Command::parse("   "), Command::Help);
        assert_eq!(Command::parse("help"), Command::Help);
        assert_eq!(Command::parse("help deploy"), Command::Help);
        assert_eq!(
            Command::parse("launch web"),
            Command::Unknown("launch".into())
        );
        let long = "x".repeat(100);
        assert_eq!(Command::parse(&long), Command::Unknown("x".repeat(32)));
    }

    #[test]
    fn response_urls_are_https_or_local() {
        let ok = |u: &str| ResponseUrl::parse(u).is_some();
        assert!(ok(
            "https://hooks.slack.com/commands/T1/397700885554/96rGlf"
        ));
        assert!(ok("http://127.0.0.1:4000/hook"));
        assert!(ok("http://localhost:4000/hook"));
        assert!(ok("http://[::1]:4000/hook"));
        assert!(!ok("http://hooks.slack.com/commands/T1"));
        assert!(!ok("http://10.0.0.1/hook"));
        assert!(!ok("http://127.0.0.1.evil.example/hook"));
        assert!(!ok("https://user:pw@hooks.slack.com/x"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("not a url"));
        assert!(!format!(
            "{:?}",
            ResponseUrl::parse("https://hooks.slack.com/x").unwrap()
        )
        .contains("slack"));
    }

    #[test]
    fn actor_and_mention_come_from_the_user() {
        let form = |id: &str, name: &str| SlashCommand {
            user_id: id.into(),
            user_name: name.into(),
            ..Default::default()
        };
        assert_eq!(
            form("U2CERLKJA", "roadrunner").actor(),
            "slack:U2CERLKJA(roadrunner)"
        );
        assert_eq!(form("U2CERLKJA", "").actor(), "slack:U2CERLKJA");
        assert_eq!(form("U2CERLKJA", "<>\n").actor(), "slack:U2CERLKJA");
        assert_eq!(form("", "roadrunner").actor(), "slack:unknown");
        assert_eq!(
            form("U2CERLKJA", "x").mention().as_deref(),
            Some("<@U2CERLKJA>")
        );
        assert_eq!(form("U2<!channel>", "x").mention(), None);
    }

    #[test]
    fn outcome_names_the_app_short_sha_state_and_reason() {
        let d = json!({
            "id": 12, "app": "web", "sha": "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
            "state": "succeeded", "trigger": "operator", "reason": null,
        });
        let text = outcome(&d, Some("<@U1>"));
        assert!(
            text.contains("Deployment 12 of `1f2e3d4` to *web* succeeded"),
            "{text}"
        );
        assert!(text.contains("<@U1>"), "{text}");
        let d = json!({
            "id": 13, "app": "web", "sha": "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
            "state": "rolled_back", "trigger": "rollback", "reason": "tasks <failed>",
        });
        let text = outcome(&d, None);
        assert!(text.contains("Rollback 13"), "{text}");
        assert!(
            text.contains("was rolled back: tasks &lt;failed&gt;"),
            "{text}"
        );
    }
}

/// Slack requests already handled, kept for as long as their timestamp is accepted.
#[derive(Debug, Default)]
pub struct SeenRequests(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl SeenRequests {
    /// True the first time `key` is seen within the accepted clock skew.
    pub fn first_time(&self, key: String, now: i64) -> bool {
        let mut seen = self.0.lock().expect("seen requests");
        seen.retain(|_, at| now - *at <= 2 * MAX_CLOCK_SKEW_SECS);
        seen.insert(key, now).is_none()
    }
}
