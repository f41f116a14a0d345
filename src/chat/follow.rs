//! After the answer: the outcome of slow work and of deployments, posted to Slack's
//! `response_url`.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Url;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::reply::{escape, outcome};
use crate::config::AppConfig;
use crate::ops::Ops;
use crate::store::deploy_state;

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

    /// Posts `text` to its user only (an answer to a button press), retrying briefly.
    pub async fn post_ephemeral(&self, text: &str) {
        let body = serde_json::json!({
            "response_type": "ephemeral",
            "replace_original": false,
            "text": text,
        });
        post(self, &body).await;
    }
}

/// The answer of `work` if it comes within Slack's patience; otherwise "working on it", and
/// the answer goes to `reply_to` when it comes.
pub(super) async fn answer_within(
    mut work: JoinHandle<String>,
    reply_to: Option<ResponseUrl>,
) -> String {
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
pub(super) fn follow(
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
