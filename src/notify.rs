//! Deploy notifications: Slack incoming webhooks and a generic JSON webhook.
//!
//! Callers hand a [`Notification`] to [`Notifier::send`], which only enqueues it on a bounded
//! channel and returns: notifications never block, fail or slow the deploy path. One background
//! task takes them off the queue in order and delivers each to every configured target
//! concurrently, retrying briefly on transient failures (connection errors, timeouts, 5xx, 429).
//! If the queue is full the notification is dropped with a warning.
//!
//! The webhook URLs are secrets: they are read once from the environment (by the variable names
//! in `[notify]`), and are never logged, put in errors or shown by `Debug`.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Notifications waiting for delivery; more are dropped.
const QUEUE_CAPACITY: usize = 1024;
/// Each HTTP request, connect to end of body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per target per notification, the first included.
const MAX_ATTEMPTS: usize = 3;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest failure reason put in a message (Slack rejects section text over 3000 characters).
const MAX_REASON_CHARS: usize = 500;
/// How much of a failed response's body goes into the log.
const MAX_LOGGED_BODY: usize = 200;

/// The `[notify]` table. Both keys name environment variables, never hold the URLs themselves.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Environment variable holding a Slack incoming-webhook URL.
    pub slack_webhook_url_env: Option<String>,
    /// Environment variable holding a generic JSON webhook URL.
    pub webhook_url_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BuildFailed,
    DeployStarted,
    DeploySucceeded,
    DeployFailed,
    RolledBack,
    Superseded,
    /// slipway's looks at a deploy's rollout keep failing: it decides nothing until it can see
    /// the service again (sent once per deploy).
    ServiceUnseen,
    /// A deploy of a service with ECS's own strategy (blue/green, linear, canary) is past its
    /// deadline and slipway cannot identify ECS's service deployment to roll back: it sends
    /// nothing and keeps watching (sent once per deploy).
    PastDeadline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub kind: EventKind,
    pub app: String,
    /// The full commit SHA; messages show the 7-character short form.
    pub sha: String,
    pub image: Option<String>,
    pub reason: Option<String>,
    /// CodeBuild log deep link, when there is one.
    pub log_link: Option<String>,
    /// slipway's deployment id.
    pub deployment: Option<i64>,
    pub build_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify.{key} is empty; it should name an environment variable")]
    EmptyVarName { key: &'static str },
    #[error("environment variable {var} (named by notify.{key}) is not set or is empty")]
    MissingEnv { key: &'static str, var: String },
    #[error("environment variable {var} (named by notify.{key}) is not an http(s) URL: {reason}")]
    InvalidUrl {
        key: &'static str,
        var: String,
        reason: String,
    },
    #[error("notifications need a tokio runtime: build the Notifier inside one")]
    NoRuntime,
    #[error("cannot build the notification HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Sends deploy notifications in the background. Cheap to clone; all clones share one queue.
///
/// The delivery task stops once every clone is dropped and the queue is drained.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    /// GitHub statuses and deployments: a second sink for the same events.
    github: crate::github::GithubSink,
}

struct Inner {
    tx: mpsc::Sender<Notification>,
    /// Notifications queued or being delivered.
    pending: Arc<watch::Sender<usize>>,
    dropped: AtomicU64,
    has_slack: bool,
    has_webhook: bool,
}

/// A configured destination. The URL is a secret: no `Debug`, never logged.
struct Target {
    kind: TargetKind,
    url: Url,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Slack,
    Webhook,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Slack => "slack",
            TargetKind::Webhook => "webhook",
        }
    }
}

impl Notifier {
    /// Reads the webhook URLs from the environment variables named in `cfg`, through `env`
    /// (production passes `|name| std::env::var(name).ok()`; tests inject their own).
    ///
    /// Errors if a named variable is missing or empty or does not hold an http(s) URL; the error
    /// names the variable, never its value. With no target configured this is
    /// [`Notifier::disabled`].
    ///
    /// Spawns the delivery task, so it must be called inside a tokio runtime (otherwise
    /// [`NotifyError::NoRuntime`]).
    pub fn from_config(
        cfg: &NotifyConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Notifier, NotifyError> {
        let mut targets = Vec::new();
        if let Some(var) = &cfg.slack_webhook_url_env {
            let url = read_url("slack_webhook_url_env", var, &env)?;
            targets.push(Target {
                kind: TargetKind::Slack,
                url,
            });
        }
        if let Some(var) = &cfg.webhook_url_env {
            let url = read_url("webhook_url_env", var, &env)?;
            targets.push(Target {
                kind: TargetKind::Webhook,
                url,
            });
        }
        if targets.is_empty() {
            return Ok(Notifier::disabled());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url()))?;

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let pending = Arc::new(watch::Sender::new(0));
        let inner = Inner {
            tx,
            pending: pending.clone(),
            dropped: AtomicU64::new(0),
            has_slack: targets.iter().any(|t| t.kind == TargetKind::Slack),
            has_webhook: targets.iter().any(|t| t.kind == TargetKind::Webhook),
        };
        runtime.spawn(deliver_all(rx, client, targets, pending));
        Ok(Notifier {
            inner: Some(Arc::new(inner)),
            github: Default::default(),
        })
    }

    /// A notifier that discards everything.
    pub fn disabled() -> Notifier {
        Notifier {
            inner: None,
            github: Default::default(),
        }
    }

    /// Also feeds every notification to GitHub (statuses and deployments).
    pub fn with_github(self, github: crate::github::GithubSink) -> Notifier {
        Notifier { github, ..self }
    }

    /// The GitHub sink, for the build events that are not notifications.
    pub fn github(&self) -> &crate::github::GithubSink {
        &self.github
    }

    /// Queues `n` for delivery and returns at once. Never blocks and never fails: if the queue
    /// is full the notification is dropped with a warning.
    pub fn send(&self, n: Notification) {
        self.github.notification(&n);
        let Some(inner) = &self.inner else {
            return;
        };
        // Count it before the worker can see it, so the count never goes below zero.
        inner.pending.send_modify(|p| *p += 1);
        let (n, why) = match inner.tx.try_send(n) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(n)) => (n, "queue full"),
            Err(mpsc::error::TrySendError::Closed(n)) => (n, "delivery task gone"),
        };
        inner.pending.send_modify(|p| *p -= 1);
        let dropped = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(crate::metrics::NOTIFICATIONS_DROPPED).increment(1);
        // A flood of drops would otherwise be a flood of warnings.
        if dropped == 1 || dropped % 100 == 0 {
            tracing::warn!(
                kind = ?n.kind,
                app = %n.app,
                sha = %n.sha,
                dropped_total = dropped,
                "dropping notification: {why}"
            );
        }
    }

    /// Waits until every queued notification has been delivered or given up on, or `timeout`
    /// has passed (then logs how many are still outstanding). For graceful shutdown and tests.
    pub async fn flush(&self, timeout: Duration) {
        if let Some(inner) = &self.inner {
            drained(&inner.pending, timeout, "notifications still undelivered").await;
        }
    }
}

/// Waits until a background queue's `pending` count is 0, at most `timeout`; then logs `what`
/// with how many are still outstanding.
pub(crate) async fn drained(pending: &watch::Sender<usize>, timeout: Duration, what: &str) {
    let mut rx = pending.subscribe();
    if tokio::time::timeout(timeout, rx.wait_for(|p| *p == 0))
        .await
        .is_err()
    {
        tracing::warn!(outstanding = *pending.borrow(), "{what} after {timeout:?}");
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |on: bool| on.then_some("<redacted>");
        match &self.inner {
            None => f.debug_struct("Notifier").field("enabled", &false).finish(),
            Some(inner) => f
                .debug_struct("Notifier")
                .field("enabled", &true)
                .field("slack", &redacted(inner.has_slack))
                .field("webhook", &redacted(inner.has_webhook))
                .field("pending", &*inner.pending.borrow())
                .finish(),
        }
    }
}

fn read_url(
    key: &'static str,
    var: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Url, NotifyError> {
    if var.trim().is_empty() {
        return Err(NotifyError::EmptyVarName { key });
    }
    let invalid = |reason: &str| NotifyError::InvalidUrl {
        key,
        var: var.to_owned(),
        reason: reason.to_owned(),
    };
    let value = env(var).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(NotifyError::MissingEnv {
            key,
            var: var.to_owned(),
        });
    }
    // `ParseError`'s messages describe the problem without quoting the input.
    let url = Url::parse(value).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    Ok(url)
}

/// The delivery task: one notification at a time, in order, each to all targets at once.
async fn deliver_all(
    mut rx: mpsc::Receiver<Notification>,
    client: reqwest::Client,
    targets: Vec<Target>,
    pending: Arc<watch::Sender<usize>>,
) {
    while let Some(n) = rx.recv().await {
        let slack = targets.iter().find(|t| t.kind == TargetKind::Slack);
        let webhook = targets.iter().find(|t| t.kind == TargetKind::Webhook);
        tokio::join!(
            async {
                if let Some(t) = slack {
                    deliver(&client, t, &slack_payload(&n), &n).await;
                }
            },
            async {
                if let Some(t) = webhook {
                    deliver(&client, t, &webhook_payload(&n), &n).await;
                }
            },
        );
        pending.send_modify(|p| *p = p.saturating_sub(1));
    }
}

/// Why one attempt failed. Never carries the URL.
#[derive(Debug)]
enum AttemptError {
    Status { status: StatusCode, body: String },
    Transport(reqwest::Error),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            AttemptError::Transport(e) => e.is_timeout() || e.is_connect() || e.is_request(),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } => Some(status.as_u16()),
            AttemptError::Transport(_) => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Status { status, body } if body.is_empty() => write!(f, "HTTP {status}"),
            AttemptError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            AttemptError::Transport(e) => {
                // `e` has had its URL stripped; its sources are hyper/io errors without one.
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(MAX_ATTEMPTS - 1)
}

async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    body: &serde_json::Value,
    n: &Notification,
) {
    let to = target.kind.name();
    let result = (|| post(client, &target.url, body))
        .retry(backoff())
        .sleep(tokio::time::sleep)
        .when(AttemptError::retryable)
        .notify(|e, after| {
            tracing::debug!(
                target_kind = to,
                status = e.status(),
                error = %e,
                retry_in = ?after,
                "{to} notification failed; retrying"
            );
        })
        .await;
    match result {
        Ok(()) => tracing::debug!(target_kind = to, kind = ?n.kind, app = %n.app, "{to} notified"),
        Err(e) => tracing::warn!(
            target_kind = to,
            status = e.status(),
            error = %e,
            kind = ?n.kind,
            app = %n.app,
            sha = %n.sha,
            "{to} notification not delivered"
        ),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &Url,
    body: &serde_json::Value,
) -> Result<(), AttemptError> {
    let mut response = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| AttemptError::Transport(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // A little of the body says why (Slack answers e.g. `invalid_blocks`); the rest is noise.
    let body = match response.chunk().await {
        Ok(Some(chunk)) => {
            let text = String::from_utf8_lossy(&chunk);
            one_line(&text, MAX_LOGGED_BODY).into_owned()
        }
        _ => String::new(),
    };
    Err(AttemptError::Status { status, body })
}

fn slack_payload(n: &Notification) -> serde_json::Value {
    let text = summary(n, Style::Slack);
    let mut context = vec![format!("commit `{}`", escape(&n.sha))];
    if let Some(id) = n.deployment {
        context.push(format!("deployment #{id}"));
    }
    if let Some(build) = &n.build_id {
        context.push(format!("build `{}`", escape(build)));
    }
    json!({
        "text": text,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": text } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": context.join(" · ") } ] },
        ],
    })
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    event: EventKind,
    text: String,
    #[serde(flatten)]
    notification: &'a Notification,
}

fn webhook_payload(n: &Notification) -> serde_json::Value {
    let body = WebhookBody {
        event: n.kind,
        text: summary(n, Style::Plain),
        notification: n,
    };
    serde_json::to_value(body).unwrap_or_else(|_| json!({ "event": n.kind }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Slack mrkdwn: user text escaped, the log as a link.
    Slack,
    /// The same words for the generic webhook: nothing escaped, the log URL spelled out.
    Plain,
}

/// The one-line summary of `n`, e.g. ":white_check_mark: *web* deployed `1f2e3d4` — image `…`".
fn summary(n: &Notification, style: Style) -> String {
    let text = |s: &str| -> String {
        match style {
            Style::Slack => escape(s).into_owned(),
            Style::Plain => s.to_owned(),
        }
    };
    let app = text(&n.app);
    let short = text(short_sha(&n.sha));
    let image = n
        .image
        .as_deref()
        .map(|i| format!(" — image `{}`", text(i)))
        .unwrap_or_default();
    let reason = n
        .reason
        .as_deref()
        .map(|r| one_line(r, MAX_REASON_CHARS))
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {}", text(&r)))
        .unwrap_or_default();
    let log = match (n.log_link.as_deref(), style) {
        (Some(link), Style::Slack) if is_http(link) => {
            format!(" (<{}|build log>)", slack_link(link))
        }
        (Some(link), Style::Plain) if !link.trim().is_empty() => format!(" (build log: {link})"),
        _ => String::new(),
    };
    match n.kind {
        EventKind::BuildFailed => format!(":x: *{app}* build of `{short}` failed{reason}{log}"),
        EventKind::DeployStarted => format!(":rocket: *{app}* deploying `{short}`{image}"),
        EventKind::DeploySucceeded => {
            format!(":white_check_mark: *{app}* deployed `{short}`{image}")
        }
        EventKind::DeployFailed => format!(":x: *{app}* deploy of `{short}` failed{reason}{log}"),
        EventKind::RolledBack => format!(
            ":leftwards_arrow_with_hook: *{app}* deploy of `{short}` rolled back{reason}{log}"
        ),
        EventKind::Superseded => {
            format!(":fast_forward: *{app}* `{short}` superseded by a newer commit{reason}")
        }
        EventKind::ServiceUnseen => {
            format!(":warning: *{app}* deploy of `{short}` is waiting{reason}; nothing is changed until slipway sees the service again")
        }
        EventKind::PastDeadline => {
            format!(":warning: *{app}* deploy of `{short}` is past its deadline{reason}")
        }
    }
}

fn short_sha(sha: &str) -> &str {
    sha.char_indices().nth(7).map_or(sha, |(i, _)| &sha[..i])
}

fn is_http(link: &str) -> bool {
    link.starts_with("https://") || link.starts_with("http://")
}

/// Slack's control characters in user-supplied text.
fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// A URL inside `<url|label>`: escaped, and a `|` would end it early.
fn slack_link(url: &str) -> String {
    escape(url).replace('|', "%7C")
}

/// Whitespace runs (newlines included) collapsed to one space, cut to `max` characters.
fn one_line(s: &str, max: usize) -> Cow<'_, str> {
    let mut out = String::new();
    for (i, word) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect::<String>() + "…";
    }
    if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode as AxumStatus;
    use axum::Router;
    use tokio::sync::oneshot;

    const SHA: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";
    const LOG: &str = "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logEvent:group=/aws/codebuild/web;stream=5f2c8e1a";
    const IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:1f2e3d4c5b6a";
    const SECRET_PATH: &str = "/services/T0000/B0000/XXXXsecretXXXX";

    /// How the test listener answers.
    #[derive(Clone, Default)]
    struct Behaviour {
        /// Answer the first this-many requests with `fail_status`.
        fail_first: usize,
        fail_status: u16,
        /// Wait this long before answering.
        delay: Option<Duration>,
    }

    #[derive(Clone)]
    struct Listener {
        url: String,
        bodies: Arc<Mutex<Vec<serde_json::Value>>>,
        hits: Arc<AtomicUsize>,
    }

    impl Listener {
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
        fn bodies(&self) -> Vec<serde_json::Value> {
            self.bodies.lock().unwrap().clone()
        }
    }

    #[derive(Clone)]
    struct Shared {
        behaviour: Behaviour,
        bodies: Arc<Mutex<Vec<serde_json::Value>>>,
        hits: Arc<AtomicUsize>,
        arrived: mpsc::UnboundedSender<()>,
        answered: mpsc::UnboundedSender<()>,
    }

    async fn record(State(s): State<Shared>, body: Bytes) -> AxumStatus {
        let n = s.hits.fetch_add(1, Ordering::SeqCst);
        s.bodies
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).expect("notification bodies are JSON"));
        let _ = s.arrived.send(());
        if let Some(delay) = s.behaviour.delay {
            tokio::time::sleep(delay).await;
        }
        let _ = s.answered.send(());
        if n < s.behaviour.fail_first {
            AxumStatus::from_u16(s.behaviour.fail_status).unwrap()
        } else {
            AxumStatus::OK
        }
    }

    /// A local HTTP listener recording every request body; returns it with channels that get a
    /// message when a request arrives and when it is answered.
    async fn listen(
        behaviour: Behaviour,
    ) -> (
        Listener,
        mpsc::UnboundedReceiver<()>,
        mpsc::UnboundedReceiver<()>,
    ) {
        let (arrived, arrived_rx) = mpsc::unbounded_channel();
        let (answered, answered_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            behaviour,
            bodies: Arc::default(),
            hits: Arc::default(),
            arrived,
            answered,
        };
        let listener = Listener {
            url: String::new(),
            bodies: shared.bodies.clone(),
            hits: shared.hits.clone(),
        };
        let app = Router::new().fallback(record).with_state(shared);
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
        let url = format!("http://{addr}{SECRET_PATH}");
        (Listener { url, ..listener }, arrived_rx, answered_rx)
    }

    async fn ok_listener() -> Listener {
        listen(Behaviour::default()).await.0
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn notifier(slack: Option<&str>, webhook: Option<&str>) -> Notifier {
        let cfg = NotifyConfig {
            slack_webhook_url_env: slack.map(|_| "TEST_SLACK_URL".into()),
            webhook_url_env: webhook.map(|_| "TEST_WEBHOOK_URL".into()),
        };
        let mut vars = Vec::new();
        if let Some(url) = slack {
            vars.push(("TEST_SLACK_URL", url));
        }
        if let Some(url) = webhook {
            vars.push(("TEST_WEBHOOK_URL", url));
        }
        Notifier::from_config(&cfg, env(&vars)).unwrap()
    }

    fn notification(kind: EventKind) -> Notification {
        Notification {
            kind,
            app: "web".into(),
            sha: SHA.into(),
            image: Some(IMAGE.into()),
            reason: Some("tests failed".into()),
            log_link: Some(LOG.into()),
            deployment: Some(42),
            build_id: Some("web:5f2c8e1a".into()),
        }
    }

    const ALL_KINDS: [EventKind; 8] = [
        EventKind::BuildFailed,
        EventKind::DeployStarted,
        EventKind::DeploySucceeded,
        EventKind::DeployFailed,
        EventKind::RolledBack,
        EventKind::Superseded,
        EventKind::ServiceUnseen,
        EventKind::PastDeadline,
    ];

    const FLUSH: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn webhook_receives_every_event_kind() {
        let hook = ok_listener().await;
        let notifier = notifier(None, Some(&hook.url));
        for kind in ALL_KINDS {
            notifier.send(notification(kind));
        }
        notifier.flush(FLUSH).await;

        let bodies = hook.bodies();
        assert_eq!(bodies.len(), ALL_KINDS.len());
        let names = [
            "build_failed",
            "deploy_started",
            "deploy_succeeded",
            "deploy_failed",
            "rolled_back",
            "superseded",
        ];
        for (body, name) in bodies.iter().zip(names) {
            assert_eq!(body["event"], name, "{body}");
            assert_eq!(body["kind"], name, "{body}");
            assert_eq!(body["app"], "web");
            assert_eq!(body["sha"], SHA);
            assert_eq!(body["image"], IMAGE);
            assert_eq!(body["reason"], "tests failed");
            assert_eq!(body["log_link"], LOG);
            assert_eq!(body["deployment"], 42);
            assert_eq!(body["build_id"], "web:5f2c8e1a");
            let text = body["text"].as_str().unwrap();
            assert!(
                text.contains("*web*") && text.contains("`1f2e3d4`"),
                "{text}"
            );
            assert!(!text.contains(SHA), "summary shows the short sha: {text}");
        }
        let failed = bodies[0]["text"].as_str().unwrap();
        assert!(
            failed.contains("tests failed") && failed.contains(LOG),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn webhook_fields_absent_are_null() {
        let hook = ok_listener().await;
        let notifier = notifier(None, Some(&hook.url));
        notifier.send(Notification {
            image: None,
            reason: None,
            log_link: None,
            deployment: None,
            build_id: None,
            ..notification(EventKind::Superseded)
        });
        notifier.flush(FLUSH).await;
        let body = &hook.bodies()[0];
        assert_eq!(body["event"], "superseded");
        assert!(body["image"].is_null() && body["log_link"].is_null());
        assert_eq!(
            body["text"],
            ":fast_forward: *web* `1f2e3d4` superseded by a newer commit"
        );
    }

    #[tokio::test]
    async fn slack_message_has_app_short_sha_reason_and_log_link() {
        let slack = ok_listener().await;
        let notifier = notifier(Some(&slack.url), None);
        notifier.send(Notification {
            reason: Some("health check <failed> & rolled\nback".into()),
            ..notification(EventKind::DeployFailed)
        });
        notifier.flush(FLUSH).await;

        let bodies = slack.bodies();
        assert_eq!(bodies.len(), 1);
        let text = bodies[0]["text"].as_str().unwrap();
        assert_eq!(
            text,
            format!(
                ":x: *web* deploy of `1f2e3d4` failed: health check &lt;failed&gt; &amp; rolled back (<{LOG}|build log>)"
            )
        );
        let blocks = bodies[0]["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["text"]["text"], text);
        let context = blocks[1]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.contains(SHA) && context.contains("deployment #42"),
            "{context}"
        );
        assert!(context.contains("web:5f2c8e1a"), "{context}");
    }

    #[test]
    fn slack_summaries() {
        let s = |n: Notification| summary(&n, Style::Slack);
        let image = IMAGE;
        assert_eq!(
            s(notification(EventKind::DeploySucceeded)),
            format!(":white_check_mark: *web* deployed `1f2e3d4` — image `{image}`")
        );
        assert_eq!(
            s(notification(EventKind::DeployStarted)),
            format!(":rocket: *web* deploying `1f2e3d4` — image `{image}`")
        );
        assert_eq!(
            s(notification(EventKind::BuildFailed)),
            format!(":x: *web* build of `1f2e3d4` failed: tests failed (<{LOG}|build log>)")
        );
        assert_eq!(
            s(Notification {
                log_link: None,
                ..notification(EventKind::RolledBack)
            }),
            ":leftwards_arrow_with_hook: *web* deploy of `1f2e3d4` rolled back: tests failed"
        );
        // Not a URL: no link.
        assert_eq!(
            s(Notification {
                log_link: Some("javascript:alert(1)".into()),
                reason: None,
                ..notification(EventKind::DeployFailed)
            }),
            ":x: *web* deploy of `1f2e3d4` failed"
        );
        let long = s(Notification {
            reason: Some("x".repeat(5000)),
            ..notification(EventKind::DeployFailed)
        });
        assert!(long.chars().count() < 1000, "{}", long.len());
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(
            slack_link("https://a/?x=1&y=<2>|z"),
            "https://a/?x=1&amp;y=&lt;2&gt;%7Cz"
        );
    }

    #[tokio::test]
    async fn both_targets_get_each_notification() {
        let slack = ok_listener().await;
        let hook = ok_listener().await;
        let notifier = notifier(Some(&slack.url), Some(&hook.url));
        notifier.send(notification(EventKind::DeploySucceeded));
        notifier.flush(FLUSH).await;
        assert_eq!(slack.bodies().len(), 1);
        assert!(slack.bodies()[0]["blocks"].is_array());
        assert_eq!(hook.bodies().len(), 1);
        assert_eq!(hook.bodies()[0]["event"], "deploy_succeeded");
    }

    #[tokio::test]
    async fn retries_5xx_until_success() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: 2,
            fail_status: 500,
            delay: None,
        })
        .await;
        let notifier = notifier(None, Some(&hook.url));
        notifier.send(notification(EventKind::DeployStarted));
        notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 3);
        let bodies = hook.bodies();
        assert!(bodies.iter().all(|b| b["event"] == "deploy_started"));
    }

    #[tokio::test]
    async fn retries_429() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: 1,
            fail_status: 429,
            delay: None,
        })
        .await;
        let notifier = notifier(Some(&hook.url), None);
        notifier.send(notification(EventKind::DeployStarted));
        notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 2);
    }

    #[tokio::test]
    async fn gives_up_after_three_attempts() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: usize::MAX,
            fail_status: 500,
            delay: None,
        })
        .await;
        let notifier = notifier(None, Some(&hook.url));
        notifier.send(notification(EventKind::DeployFailed));
        notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 3);

        // The worker is still there for the next one.
        notifier.send(notification(EventKind::RolledBack));
        notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 6);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: usize::MAX,
            fail_status: 400,
            delay: None,
        })
        .await;
        let notifier = notifier(Some(&hook.url), None);
        notifier.send(notification(EventKind::DeployFailed));
        notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 1);
    }

    #[tokio::test]
    async fn unreachable_target_does_not_stop_the_other() {
        let closed = {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/hook", tcp.local_addr().unwrap())
        };
        let hook = ok_listener().await;
        let notifier = notifier(Some(&closed), Some(&hook.url));
        notifier.send(notification(EventKind::DeployFailed));
        notifier.send(notification(EventKind::RolledBack));
        notifier.flush(FLUSH).await;
        let events: Vec<_> = hook.bodies().iter().map(|b| b["event"].clone()).collect();
        assert_eq!(events, ["deploy_failed", "rolled_back"]);
    }

    #[tokio::test]
    async fn delivery_errors_do_not_show_the_url() {
        let closed = {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}{SECRET_PATH}", tcp.local_addr().unwrap())
        };
        let client = reqwest::Client::new();
        let err = post(&client, &Url::parse(&closed).unwrap(), &json!({}))
            .await
            .unwrap_err();
        assert!(err.retryable(), "{err}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                !shown.contains("secret") && !shown.contains("/services/"),
                "{shown}"
            );
        }
    }

    #[tokio::test]
    async fn send_never_waits_for_delivery() {
        let (hook, mut arrived, mut answered) = listen(Behaviour {
            delay: Some(Duration::from_secs(10)),
            ..Behaviour::default()
        })
        .await;
        let notifier = notifier(Some(&hook.url), Some(&hook.url));
        // Get the delivery task stuck on a request the listener will not answer for 10 s.
        notifier.send(notification(EventKind::DeployStarted));
        arrived.recv().await.unwrap();

        // Far more than the queue holds: the excess is dropped, nothing waits.
        let (done_tx, done_rx) = oneshot::channel();
        let sender = notifier.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                sender.send(notification(EventKind::DeploySucceeded));
            }
            done_tx.send(()).unwrap();
        });
        tokio::select! {
            biased;
            done = done_rx => done.unwrap(),
            _ = answered.recv() => panic!("send waited for the listener to answer"),
        }
        assert!(answered.try_recv().is_err());
        // Bounded, even with deliveries stuck.
        tokio::time::timeout(
            Duration::from_secs(5),
            notifier.flush(Duration::from_millis(100)),
        )
        .await
        .expect("flush is bounded by its timeout");
        assert!(answered.try_recv().is_err());
    }

    #[tokio::test]
    async fn config_errors_name_the_variable_not_the_value() {
        let cfg = NotifyConfig {
            slack_webhook_url_env: Some("SLIPWAY_SLACK_URL".into()),
            webhook_url_env: None,
        };
        let err = Notifier::from_config(&cfg, env(&[])).unwrap_err();
        assert!(matches!(err, NotifyError::MissingEnv { .. }));
        assert!(err.to_string().contains("SLIPWAY_SLACK_URL"), "{err}");

        let err = Notifier::from_config(&cfg, env(&[("SLIPWAY_SLACK_URL", "  ")])).unwrap_err();
        assert!(err.to_string().contains("SLIPWAY_SLACK_URL"), "{err}");

        for bad in [
            "hooks.slack.com/services/T0/B0/SeCrEt",
            "ftp://hooks.slack.com/services/T0/B0/SeCrEt",
            "file:///services/T0/B0/SeCrEt",
        ] {
            let err = Notifier::from_config(&cfg, env(&[("SLIPWAY_SLACK_URL", bad)])).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, NotifyError::InvalidUrl { .. }), "{msg}");
            assert!(msg.contains("SLIPWAY_SLACK_URL"), "{msg}");
            assert!(!msg.contains("SeCrEt") && !msg.contains("hooks"), "{msg}");
            assert!(!format!("{err:?}").contains("SeCrEt"));
        }

        let cfg = NotifyConfig {
            slack_webhook_url_env: None,
            webhook_url_env: Some(String::new()),
        };
        let err = Notifier::from_config(&cfg, env(&[])).unwrap_err();
        assert!(err.to_string().contains("webhook_url_env"), "{err}");
    }

    #[tokio::test]
    async fn debug_does_not_show_urls() {
        let url = "https://hooks.slack.com/services/T0000/B0000/XXXXsecretXXXX";
        let generic = "https://example.com/hooks/anotherSecret";
        let cfg = NotifyConfig {
            slack_webhook_url_env: Some("S".into()),
            webhook_url_env: Some("W".into()),
        };
        let notifier = Notifier::from_config(&cfg, env(&[("S", url), ("W", generic)])).unwrap();
        let debug = format!("{notifier:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("Secret"),
            "{debug}"
        );
        assert!(
            !debug.contains("hooks") && !debug.contains("example.com"),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[tokio::test]
    async fn nothing_configured_is_disabled() {
        let notifier = Notifier::from_config(&NotifyConfig::default(), env(&[])).unwrap();
        assert!(notifier.inner.is_none());
        notifier.send(notification(EventKind::DeployStarted));
        notifier.flush(FLUSH).await;
        Notifier::disabled().send(notification(EventKind::DeployStarted));
    }

    #[test]
    fn from_config_outside_a_runtime_is_an_error() {
        let cfg = NotifyConfig {
            webhook_url_env: Some("W".into()),
            ..NotifyConfig::default()
        };
        let err = Notifier::from_config(&cfg, env(&[("W", "https://example.com/x")])).unwrap_err();
        assert!(matches!(err, NotifyError::NoRuntime), "{err}");
    }
}
