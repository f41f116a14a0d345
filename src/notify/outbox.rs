//! The journaled outbox of an HTTP notification target (Slack's incoming webhook, the generic
//! JSON webhook), one per target.
//!
//! [`Target::notify`] only enqueues; one task journals each notification (a row in the
//! journal's `notify_outbox`, before anything is sent), another posts the target's rows in
//! order, oldest first. A row leaves `pending` when the target answered 2xx (`sent`) or when it
//! is given up: at once when the target refuses it for good (a 4xx other than 408 and 429),
//! otherwise only by age (`[notify] give_up_after_hours`, never by a count of attempts). A
//! failed attempt keeps the row first in line and waits a backoff worked out from the journaled
//! count of attempts, so a restart neither loses the row nor starts the backoff over.
//!
//! "Once": a row marked `sent` is never posted again. A crash between the target's 2xx and
//! that mark posts it once more after the restart (at least once): every attempt carries the
//! row's `Idempotency-Key` header (and the generic webhook's body its `idempotency_key`), the
//! same on every attempt, for a receiver that drops repeats. Slack's incoming webhooks ignore
//! the header.
//!
//! The webhook URLs are secrets: they are read once from the environment (by the variable names
//! in `[notify]`), and are never logged, journaled, put in errors or shown by `Debug`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, watch, Notify};

use super::message::{one_line, slack_payload, webhook_payload};
use super::{drained, Flushing, Notification, Target};
use crate::clock::SharedClock;
use crate::config::NotifyConfig;
use crate::store::{millis, PendingNotification, Store};

/// Notifications waiting to be journaled; more are dropped (with a warning and a count).
const QUEUE_CAPACITY: usize = 1024;
/// Each HTTP request, connect to end of body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a failed response's body is kept (journal, log).
const MAX_LOGGED_BODY: usize = 200;
/// The pause before reading the journal again after it failed.
const JOURNAL_PAUSE: Duration = Duration::from_secs(1);

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
    #[error("cannot build the notification HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The kinds of HTTP target: what the journal, the logs and `/metrics` call them, and what
/// they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slack,
    Webhook,
}

impl Kind {
    #[cfg(test)]
    const ALL: [Kind; 2] = [Kind::Slack, Kind::Webhook];

    fn name(self) -> &'static str {
        match self {
            Kind::Slack => "slack",
            Kind::Webhook => "webhook",
        }
    }

    fn payload(self, n: &Notification, idempotency_key: &str) -> serde_json::Value {
        match self {
            Kind::Slack => slack_payload(n),
            Kind::Webhook => webhook_payload(n, idempotency_key),
        }
    }
}

/// The configured targets' URLs, read from the environment and checked; nothing runs yet.
/// The URLs are secrets: no `Debug` shows them.
pub struct Endpoints {
    targets: Vec<(Kind, Url)>,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.targets.iter().map(|(k, _)| k.name()).collect();
        f.debug_struct("Endpoints")
            .field("targets", &names)
            .field("urls", &"<redacted>")
            .finish()
    }
}

impl Endpoints {
    /// Reads the webhook URLs from the environment variables named in `cfg`, through `env`
    /// (production passes `|name| std::env::var(name).ok()`; tests inject their own).
    ///
    /// Errors if a named variable is missing or empty or does not hold an http(s) URL; the error
    /// names the variable, never its value.
    pub fn from_config(
        cfg: &NotifyConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoints, NotifyError> {
        let mut targets = Vec::new();
        if let Some(var) = &cfg.slack_webhook_url_env {
            targets.push((Kind::Slack, read_url("slack_webhook_url_env", var, &env)?));
        }
        if let Some(var) = &cfg.webhook_url_env {
            targets.push((Kind::Webhook, read_url("webhook_url_env", var, &env)?));
        }
        Ok(Endpoints { targets })
    }

    /// Starts each target's outbox (its journaling and posting tasks) on the current tokio
    /// runtime; a restart's pending rows are posted first.
    pub fn start(
        self,
        cfg: &NotifyConfig,
        journal: Store,
        clock: SharedClock,
        replicas: Arc<crate::replicas::Replicas>,
    ) -> Result<Vec<Arc<dyn Target>>, NotifyError> {
        if self.targets.is_empty() {
            return Ok(Vec::new());
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url()))?;
        let mut started: Vec<Arc<dyn Target>> = Vec::new();
        for (kind, url) in self.targets {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let pending = Arc::new(watch::Sender::new(0));
            let poster = Poster {
                kind,
                url,
                client: client.clone(),
                journal: journal.clone(),
                clock: clock.clone(),
                settings: cfg.clone(),
                pending: pending.clone(),
                replicas: replicas.clone(),
            };
            tokio::spawn(poster.run(rx));
            started.push(Arc::new(Outbox {
                kind,
                tx,
                pending,
                dropped: AtomicU64::new(0),
            }));
        }
        Ok(started)
    }
}

/// One HTTP target's outbox, as the notifier sees it.
struct Outbox {
    kind: Kind,
    tx: mpsc::Sender<Notification>,
    /// Notifications taken and not yet sent or given up.
    pending: Arc<watch::Sender<usize>>,
    dropped: AtomicU64,
}

impl Target for Outbox {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn notify(&self, n: &Notification) {
        // Counted before the worker can see it, so the count never goes below zero.
        self.pending.send_modify(|p| *p += 1);
        let why = match self.tx.try_send(n.clone()) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue full",
            Err(mpsc::error::TrySendError::Closed(_)) => "outbox task gone",
        };
        self.pending.send_modify(|p| *p = p.saturating_sub(1));
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(crate::metrics::NOTIFICATIONS_DROPPED).increment(1);
        // A flood of drops would otherwise be a flood of warnings.
        if dropped == 1 || dropped.is_multiple_of(100) {
            tracing::warn!(
                target_kind = self.kind.name(),
                kind = ?n.kind,
                app = %n.app,
                sha = %n.sha,
                dropped_total = dropped,
                "dropping notification: {why}"
            );
        }
    }

    fn flush(&self, timeout: Duration) -> Flushing<'_> {
        Box::pin(drained(
            &self.pending,
            timeout,
            "notifications still undelivered",
        ))
    }
}

/// Journals and posts one target's notifications.
struct Poster {
    kind: Kind,
    url: Url,
    client: reqwest::Client,
    journal: Store,
    clock: SharedClock,
    settings: NotifyConfig,
    pending: Arc<watch::Sender<usize>>,
    replicas: Arc<crate::replicas::Replicas>,
}

/// What came of one attempt at a row.
enum Outcome {
    Sent,
    /// Tried again after this pause.
    Retry(Duration),
    GivenUp,
}

impl Poster {
    /// Counts what a restart left pending, then starts journaling new notifications (so none
    /// is counted twice) and posts the outbox, oldest first, forever.
    async fn run(self, rx: mpsc::Receiver<Notification>) {
        let name = self.kind.name();
        match self.journal.pending_notifications(name).await {
            Ok(n) if n > 0 => {
                tracing::info!(
                    target_kind = name,
                    notifications = n,
                    "notification outbox: sending what was left unsent"
                );
                self.pending.send_modify(|p| *p += n as usize);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target_kind = name, error = %e, "notification outbox: cannot read it")
            }
        }
        let wake = Arc::new(Notify::new());
        tokio::spawn(keep(
            self.kind,
            rx,
            self.journal.clone(),
            self.clock.clone(),
            wake.clone(),
            self.pending.clone(),
        ));
        let lease = crate::replicas::notify_outbox(name);
        let never = tokio_util::sync::CancellationToken::new();
        let mut claim: Option<crate::replicas::Claim> = None;
        loop {
            // One replica posts each target's outbox (issue 26).
            let held = match claim.as_ref().filter(|c| !c.is_lost()) {
                Some(c) => c.clone(),
                None => match self.replicas.acquire(&lease, &never).await {
                    Some(c) => c,
                    None => return,
                },
            };
            claim = Some(held.clone());
            let entry = match self.journal.next_notification(name).await {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    // Woken by this replica's notifications; another replica's are found by
                    // looking again every poll.
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.replicas.poll()) => {}
                        _ = held.lost() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(target_kind = name, error = %e, "notification outbox: cannot read it; trying again");
                    tokio::time::sleep(JOURNAL_PAUSE).await;
                    continue;
                }
            };
            // Right before the side effect: a replica that lost the lease posts nothing.
            if !self.replicas.check(&held).await {
                claim = None;
                continue;
            }
            match self.attempt(&entry).await {
                Some(Outcome::Retry(pause)) => self.clock.sleep(pause).await,
                Some(Outcome::Sent | Outcome::GivenUp) => {
                    self.pending.send_modify(|p| *p = p.saturating_sub(1));
                }
                // The journal did not take the outcome: read the row again after a pause.
                None => tokio::time::sleep(JOURNAL_PAUSE).await,
            }
        }
    }

    /// Posts `entry` once and journals what came of it (None: the journal did not take it).
    async fn attempt(&self, entry: &PendingNotification) -> Option<Outcome> {
        let name = self.kind.name();
        let n: Notification = match serde_json::from_str(&entry.event) {
            Ok(n) => n,
            Err(e) => {
                let reason = format!("unreadable notification in the journal: {e}");
                return self.give_up(entry, reason).await;
            }
        };
        let body = self.kind.payload(&n, &entry.idempotency_key);
        let result = post(&self.client, &self.url, &body, &entry.idempotency_key).await;
        let now = millis(self.clock.now());
        let age_ms = now - entry.created_ms;
        let young = u128::try_from(age_ms).unwrap_or(0) < self.settings.give_up_after.as_millis();
        match result {
            Ok(()) => {
                // Marked before anything else: a row marked sent is never posted again.
                if let Err(e) = self.journal.notification_sent(entry.id, now).await {
                    tracing::warn!(target_kind = name, error = %e, id = entry.id,
                        "notification sent but not marked so: it may be sent again");
                    return None;
                }
                metrics::counter!(crate::metrics::NOTIFICATIONS, "target" => name, "result" => crate::metrics::NOTIFY_SENT).increment(1);
                tracing::debug!(target_kind = name, id = entry.id, kind = ?n.kind, app = %n.app, "{name} notified");
                Some(Outcome::Sent)
            }
            Err(e) if e.retryable() && young => {
                let pause = pause_after(&self.settings, entry.attempts, &e);
                metrics::counter!(crate::metrics::NOTIFICATIONS, "target" => name, "result" => crate::metrics::NOTIFY_FAILED).increment(1);
                tracing::warn!(target_kind = name, id = entry.id, status = e.status(), error = %e,
                    attempts = entry.attempts + 1, retry_in_secs = pause.as_secs_f64(),
                    kind = ?n.kind, app = %n.app, sha = %n.sha,
                    "{name} notification not delivered; it stays first in line");
                if let Err(je) = self
                    .journal
                    .notification_failed(entry.id, e.to_string(), now)
                    .await
                {
                    tracing::warn!(target_kind = name, error = %je, "notification outbox: cannot count the attempt");
                }
                Some(Outcome::Retry(pause))
            }
            Err(e) => {
                let reason = if e.retryable() {
                    format!(
                        "not delivered within {} (notify.give_up_after_hours); last attempt: {e}",
                        humantime::format_duration(self.settings.give_up_after)
                    )
                } else {
                    format!("refused by the target: {e}")
                };
                self.give_up(entry, reason).await
            }
        }
    }

    async fn give_up(&self, entry: &PendingNotification, reason: String) -> Option<Outcome> {
        let name = self.kind.name();
        let now = millis(self.clock.now());
        metrics::counter!(crate::metrics::NOTIFICATIONS, "target" => name, "result" => crate::metrics::NOTIFY_GIVEN_UP).increment(1);
        tracing::warn!(target_kind = name, id = entry.id, attempts = entry.attempts + 1,
            queued_secs = (now - entry.created_ms) / 1000, reason = %reason,
            "{name} notification given up");
        match self
            .journal
            .notification_given_up(entry.id, reason, now)
            .await
        {
            Ok(()) => Some(Outcome::GivenUp),
            Err(e) => {
                tracing::warn!(target_kind = name, error = %e, "notification outbox: cannot mark a notification given up");
                None
            }
        }
    }
}

/// Journals each notification for `kind`, in the order they came, and wakes the poster.
async fn keep(
    kind: Kind,
    mut rx: mpsc::Receiver<Notification>,
    journal: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
    pending: Arc<watch::Sender<usize>>,
) {
    while let Some(n) = rx.recv().await {
        let json = serde_json::to_string(&n).expect("notifications serialize");
        let key = uuid::Uuid::new_v4().to_string();
        let mut tries = 0;
        loop {
            let now = millis(clock.now());
            let targets = vec![(kind.name().to_owned(), key.clone())];
            match journal.queue_notification(targets, json.clone(), now).await {
                Ok(_) => break,
                // The journal stalls only briefly (a slow disk): wait for it rather than drop.
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(target_kind = kind.name(), error = %e, "notification outbox: cannot journal it; retrying");
                    tokio::time::sleep(JOURNAL_PAUSE).await;
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::NOTIFICATIONS_DROPPED).increment(1);
                    tracing::error!(target_kind = kind.name(), error = %e, kind = ?n.kind, app = %n.app,
                        sha = %n.sha, "notification outbox: cannot journal it; dropping it");
                    pending.send_modify(|p| *p = p.saturating_sub(1));
                    break;
                }
            }
        }
        wake.notify_one();
    }
}

/// The pause after a failed attempt: the backoff, or the target's `Retry-After` when it asks
/// for longer (never past the give-up age).
fn pause_after(settings: &NotifyConfig, attempts: i64, e: &AttemptError) -> Duration {
    let asked = match e {
        AttemptError::Status {
            retry_after: Some(after),
            ..
        } => (*after).min(settings.give_up_after),
        _ => Duration::ZERO,
    };
    asked.max(backoff(settings, attempts))
}

/// The pause after a row's attempt failed for the time `attempts + 1`: doubling from
/// `retry_initial` up to `retry_max`, worked out from the journaled count so that a restart
/// does not start it over.
fn backoff(settings: &NotifyConfig, attempts: i64) -> Duration {
    let doublings = attempts.clamp(0, 20) as u32;
    settings
        .retry_initial
        .saturating_mul(1 << doublings)
        .min(settings.retry_max)
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

/// Why one attempt failed. Never carries the URL.
#[derive(Debug)]
enum AttemptError {
    Status {
        status: StatusCode,
        body: String,
        /// The target's `Retry-After` (seconds), e.g. Slack's on a 429.
        retry_after: Option<Duration>,
    },
    Transport(reqwest::Error),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
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
            AttemptError::Status { status, body, .. } if body.is_empty() => {
                write!(f, "HTTP {status}")
            }
            AttemptError::Status { status, body, .. } => write!(f, "HTTP {status}: {body}"),
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

/// One attempt: POSTs `body` as JSON with the row's idempotency key.
async fn post(
    client: &reqwest::Client,
    url: &Url,
    body: &serde_json::Value,
    idempotency_key: &str,
) -> Result<(), AttemptError> {
    let mut response = client
        .post(url.clone())
        .header("idempotency-key", idempotency_key)
        .json(body)
        .send()
        .await
        .map_err(|e| AttemptError::Transport(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // Slack answers a 429 with `Retry-After` in seconds ("Rate limits" in
    // https://api.slack.com/docs/rate-limits); a date is not expected and is ignored.
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A little of the body says why (Slack answers e.g. `invalid_blocks`); the rest is noise.
    let body = match response.chunk().await {
        Ok(Some(chunk)) => {
            let text = String::from_utf8_lossy(&chunk);
            one_line(&text, MAX_LOGGED_BODY).into_owned()
        }
        _ => String::new(),
    };
    Err(AttemptError::Status {
        status,
        body,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::Router;
    use serde_json::json;
    use tokio::sync::oneshot;

    use super::super::{EventKind, Notifier};
    use crate::store::notify_state;

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
        keys: Arc<Mutex<Vec<String>>>,
        hits: Arc<AtomicUsize>,
    }

    impl Listener {
        /// The `Idempotency-Key` header of each request, in order.
        fn keys(&self) -> Vec<String> {
            self.keys.lock().unwrap().clone()
        }
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
        keys: Arc<Mutex<Vec<String>>>,
        hits: Arc<AtomicUsize>,
        arrived: mpsc::UnboundedSender<()>,
        answered: mpsc::UnboundedSender<()>,
    }

    async fn record(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> AxumStatus {
        let n = s.hits.fetch_add(1, Ordering::SeqCst);
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        s.keys.lock().unwrap().push(key.to_owned());
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
            keys: Arc::default(),
            hits: Arc::default(),
            arrived,
            answered,
        };
        let listener = Listener {
            url: String::new(),
            bodies: shared.bodies.clone(),
            keys: shared.keys.clone(),
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

    /// Waits until `check` holds (at most 20 s).
    async fn eventually(mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + FLUSH;
        while !check() {
            assert!(std::time::Instant::now() < deadline, "gave up waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Short pauses, so retries happen within a test.
    fn settings(slack: bool, webhook: bool) -> NotifyConfig {
        NotifyConfig {
            slack_webhook_url_env: slack.then(|| "TEST_SLACK_URL".into()),
            webhook_url_env: webhook.then(|| "TEST_WEBHOOK_URL".into()),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            ..NotifyConfig::default()
        }
    }

    /// A notifier with the given targets' outboxes in a journal of its own.
    struct Harness {
        notifier: Notifier,
        journal: Store,
        _dir: tempfile::TempDir,
    }

    fn start(slack: Option<&str>, webhook: Option<&str>, cfg: NotifyConfig) -> Harness {
        let mut vars = Vec::new();
        if let Some(url) = slack {
            vars.push(("TEST_SLACK_URL", url));
        }
        if let Some(url) = webhook {
            vars.push(("TEST_WEBHOOK_URL", url));
        }
        let dir = tempfile::tempdir().unwrap();
        let journal = Store::open(dir.path()).unwrap();
        let targets = Endpoints::from_config(&cfg, env(&vars))
            .unwrap()
            .start(
                &cfg,
                journal.clone(),
                Arc::new(crate::clock::SystemClock),
                crate::replicas::Replicas::alone(journal.clone()),
            )
            .unwrap();
        Harness {
            notifier: Notifier::new(targets),
            journal,
            _dir: dir,
        }
    }

    fn notifier(slack: Option<&str>, webhook: Option<&str>) -> Harness {
        start(slack, webhook, settings(slack.is_some(), webhook.is_some()))
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
            tag: None,
            promotion: None,
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

    #[test]
    fn every_kind_of_target_has_fixed_metric_labels() {
        for kind in Kind::ALL {
            assert!(
                crate::metrics::NOTIFY_TARGETS.contains(&kind.name()),
                "{} is not among the metric's targets",
                kind.name()
            );
        }
    }

    #[tokio::test]
    async fn webhook_receives_every_event_kind_once_each_journaled_as_sent() {
        let hook = ok_listener().await;
        let h = notifier(None, Some(&hook.url));
        for kind in ALL_KINDS {
            h.notifier.send(notification(kind));
        }
        h.notifier.flush(FLUSH).await;

        let bodies = hook.bodies();
        assert_eq!(bodies.len(), ALL_KINDS.len());
        let names = [
            "build_failed",
            "deploy_started",
            "deploy_succeeded",
            "deploy_failed",
            "rolled_back",
            "superseded",
            "service_unseen",
        ];
        let keys = hook.keys();
        for ((body, name), key) in bodies.iter().zip(names).zip(&keys) {
            assert_eq!(body["event"], name, "{body}");
            assert_eq!(body["kind"], name, "{body}");
            assert_eq!(body["app"], "web");
            assert_eq!(body["sha"], SHA);
            assert_eq!(body["image"], IMAGE);
            assert_eq!(body["reason"], "tests failed");
            assert_eq!(body["log_link"], LOG);
            assert_eq!(body["deployment"], 42);
            assert_eq!(body["build_id"], "web:5f2c8e1a");
            // The header and the body carry the same key, a different one per notification.
            assert_eq!(body["idempotency_key"], key.as_str());
            let text = body["text"].as_str().unwrap();
            assert!(
                text.contains("*web*") && text.contains("`1f2e3d4`"),
                "{text}"
            );
            assert!(!text.contains(SHA), "summary shows the short sha: {text}");
        }
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), ALL_KINDS.len(), "{keys:?}");
        let failed = bodies[0]["text"].as_str().unwrap();
        assert!(
            failed.contains("tests failed") && failed.contains(LOG),
            "{failed}"
        );
        let rows = h.journal.notifications(None, 100).await.unwrap();
        assert_eq!(rows.len(), ALL_KINDS.len());
        assert!(rows
            .iter()
            .all(|r| r.state == notify_state::SENT && r.attempts == 1 && r.target == "webhook"));
    }

    #[tokio::test]
    async fn webhook_fields_absent_are_null() {
        let hook = ok_listener().await;
        let h = notifier(None, Some(&hook.url));
        h.notifier.send(Notification {
            image: None,
            reason: None,
            log_link: None,
            deployment: None,
            build_id: None,
            ..notification(EventKind::Superseded)
        });
        h.notifier.flush(FLUSH).await;
        let body = &hook.bodies()[0];
        assert_eq!(body["event"], "superseded");
        assert!(body["image"].is_null() && body["log_link"].is_null());
        assert!(body["tag"].is_null(), "{body}");
        assert_eq!(
            body["text"],
            ":fast_forward: *web* `1f2e3d4` superseded by a newer commit"
        );
    }

    #[tokio::test]
    async fn slack_message_has_app_short_sha_reason_and_log_link() {
        let slack = ok_listener().await;
        let h = notifier(Some(&slack.url), None);
        h.notifier.send(Notification {
            reason: Some("health check <failed> & rolled\nback".into()),
            ..notification(EventKind::DeployFailed)
        });
        h.notifier.flush(FLUSH).await;

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
        // Slack's payload has only Slack's fields; the key goes in the header.
        assert!(bodies[0].get("idempotency_key").is_none());
        assert_eq!(slack.keys().len(), 1);
        assert!(!slack.keys()[0].is_empty());
    }

    #[tokio::test]
    async fn both_targets_get_each_notification() {
        let slack = ok_listener().await;
        let hook = ok_listener().await;
        let h = notifier(Some(&slack.url), Some(&hook.url));
        h.notifier.send(notification(EventKind::DeploySucceeded));
        h.notifier.flush(FLUSH).await;
        assert_eq!(slack.bodies().len(), 1);
        assert!(slack.bodies()[0]["blocks"].is_array());
        assert_eq!(hook.bodies().len(), 1);
        assert_eq!(hook.bodies()[0]["event"], "deploy_succeeded");
        // One row per target, each with its own key.
        assert_ne!(slack.keys()[0], hook.keys()[0]);
    }

    #[tokio::test]
    async fn retries_5xx_with_the_same_key_until_success() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: 2,
            fail_status: 500,
            delay: None,
        })
        .await;
        let h = notifier(None, Some(&hook.url));
        h.notifier.send(notification(EventKind::DeployStarted));
        h.notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 3);
        let bodies = hook.bodies();
        assert!(bodies.iter().all(|b| b["event"] == "deploy_started"));
        let keys = hook.keys();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let rows = h.journal.notifications(None, 10).await.unwrap();
        assert_eq!(rows[0].state, notify_state::SENT);
        assert_eq!(rows[0].attempts, 3);
        assert_eq!(
            rows[0].last_error.as_deref(),
            Some("HTTP 500 Internal Server Error")
        );
    }

    #[tokio::test]
    async fn retries_429() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: 1,
            fail_status: 429,
            delay: None,
        })
        .await;
        let h = notifier(Some(&hook.url), None);
        h.notifier.send(notification(EventKind::DeployStarted));
        h.notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 2);
    }

    /// Changed by issue 24: no longer dropped after three attempts; tried until its age (the
    /// next one waits behind it, in order).
    #[tokio::test]
    async fn a_failing_notification_is_tried_past_any_count_and_the_next_waits_behind_it() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: 12,
            fail_status: 503,
            delay: None,
        })
        .await;
        let h = notifier(None, Some(&hook.url));
        h.notifier.send(notification(EventKind::DeployFailed));
        h.notifier.send(notification(EventKind::RolledBack));
        h.notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 14);
        let events: Vec<_> = hook.bodies().iter().map(|b| b["event"].clone()).collect();
        assert!(
            events[..13].iter().all(|e| e == "deploy_failed"),
            "{events:?}"
        );
        assert_eq!(events[13], "rolled_back");
    }

    #[tokio::test]
    async fn given_up_by_age_with_the_reason() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: usize::MAX,
            fail_status: 502,
            delay: None,
        })
        .await;
        let h = notifier(None, Some(&hook.url));
        // Journaled two days ago (slipway was down, or the target was): one more attempt, then
        // given up, however few attempts it had.
        use crate::clock::Clock;
        let two_days_ago = millis(crate::clock::SystemClock.now()) - 48 * 3600 * 1000;
        h.journal
            .queue_notification(
                vec![("webhook".into(), "old-key".into())],
                serde_json::to_string(&notification(EventKind::DeployFailed)).unwrap(),
                two_days_ago,
            )
            .await
            .unwrap();
        h.notifier.send(notification(EventKind::RolledBack));
        let old = loop {
            let rows = h.journal.notifications(None, 10).await.unwrap();
            let old = rows
                .iter()
                .find(|r| r.idempotency_key == "old-key")
                .cloned();
            if let Some(old) = old.filter(|o| o.state != notify_state::PENDING) {
                break old;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let rows = h.journal.notifications(None, 10).await.unwrap();
        assert_eq!(old.state, notify_state::GIVEN_UP);
        assert_eq!(old.attempts, 1);
        let why = old.last_error.as_deref().unwrap();
        assert!(
            why.contains("not delivered within 1day") && why.contains("HTTP 502"),
            "{why}"
        );
        // The young one is still being tried.
        let young = rows
            .iter()
            .find(|r| r.idempotency_key != "old-key")
            .unwrap();
        assert_eq!(young.state, notify_state::PENDING);
    }

    #[tokio::test]
    async fn client_errors_are_given_up_at_once_with_the_reason() {
        let (hook, _, _) = listen(Behaviour {
            fail_first: usize::MAX,
            fail_status: 400,
            delay: None,
        })
        .await;
        let h = notifier(Some(&hook.url), None);
        h.notifier.send(notification(EventKind::DeployFailed));
        h.notifier.flush(FLUSH).await;
        assert_eq!(hook.hits(), 1);
        let rows = h.journal.notifications(None, 10).await.unwrap();
        assert_eq!(rows[0].state, notify_state::GIVEN_UP);
        let why = rows[0].last_error.as_deref().unwrap();
        assert!(why.starts_with("refused by the target: HTTP 400"), "{why}");
    }

    #[tokio::test]
    async fn unreachable_target_does_not_stop_the_other() {
        let closed = {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/hook", tcp.local_addr().unwrap())
        };
        let hook = ok_listener().await;
        let h = notifier(Some(&closed), Some(&hook.url));
        h.notifier.send(notification(EventKind::DeployFailed));
        h.notifier.send(notification(EventKind::RolledBack));
        eventually(|| {
            let events: Vec<_> = hook.bodies().iter().map(|b| b["event"].clone()).collect();
            events == ["deploy_failed", "rolled_back"]
        })
        .await;
        // The webhook's are marked sent (just after their 2xx); Slack's are still pending,
        // with why.
        let deadline = std::time::Instant::now() + FLUSH;
        loop {
            let rows = h
                .journal
                .notifications(Some("pending".into()), 10)
                .await
                .unwrap();
            let slack_failed = rows.iter().any(|r| r.last_error.is_some());
            if rows.len() == 2 && rows.iter().all(|r| r.target == "slack") && slack_failed {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{rows:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn delivery_errors_do_not_show_the_url() {
        let closed = {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}{SECRET_PATH}", tcp.local_addr().unwrap())
        };
        let client = reqwest::Client::new();
        let err = post(&client, &Url::parse(&closed).unwrap(), &json!({}), "k")
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
        let h = notifier(Some(&hook.url), Some(&hook.url));
        // Get the delivery stuck on a request the listener will not answer for 10 s.
        h.notifier.send(notification(EventKind::DeployStarted));
        arrived.recv().await.unwrap();

        // Far more than the queue holds: the excess is dropped, nothing waits.
        let (done_tx, done_rx) = oneshot::channel();
        let sender = h.notifier.clone();
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
            h.notifier.flush(Duration::from_millis(100)),
        )
        .await
        .expect("flush is bounded by its timeout");
        assert!(answered.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_retry_after_is_read_and_waited_when_longer_than_the_backoff() {
        async fn slow_down() -> (AxumStatus, [(&'static str, &'static str); 1]) {
            (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "30")])
        }
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", tcp.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(tcp, Router::new().fallback(slow_down))
                .await
                .unwrap()
        });
        let err = post(
            &reqwest::Client::new(),
            &Url::parse(&url).unwrap(),
            &json!({}),
            "k",
        )
        .await
        .unwrap_err();
        assert!(err.retryable(), "{err}");
        let cfg = NotifyConfig::default();
        assert_eq!(pause_after(&cfg, 0, &err), Duration::from_secs(30));
        // The backoff when it is longer.
        assert_eq!(pause_after(&cfg, 5, &err), Duration::from_secs(64));
        let plain = AttemptError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(pause_after(&cfg, 0, &plain), Duration::from_secs(2));
    }

    #[test]
    fn the_backoff_follows_the_journaled_attempts() {
        let cfg = NotifyConfig::default();
        assert_eq!(backoff(&cfg, 0), Duration::from_secs(2));
        assert_eq!(backoff(&cfg, 3), Duration::from_secs(16));
        assert_eq!(backoff(&cfg, 10), Duration::from_secs(300));
        assert_eq!(backoff(&cfg, i64::MAX), Duration::from_secs(300));
        assert_eq!(backoff(&cfg, -1), Duration::from_secs(2));
    }

    #[test]
    fn config_errors_name_the_variable_not_the_value() {
        let cfg = NotifyConfig {
            slack_webhook_url_env: Some("SLIPWAY_SLACK_URL".into()),
            ..NotifyConfig::default()
        };
        let err = Endpoints::from_config(&cfg, env(&[])).unwrap_err();
        assert!(matches!(err, NotifyError::MissingEnv { .. }));
        assert!(err.to_string().contains("SLIPWAY_SLACK_URL"), "{err}");

        let err = Endpoints::from_config(&cfg, env(&[("SLIPWAY_SLACK_URL", "  ")])).unwrap_err();
        assert!(err.to_string().contains("SLIPWAY_SLACK_URL"), "{err}");

        for bad in [
            "hooks.slack.com/services/T0/B0/SeCrEt",
            "ftp://hooks.slack.com/services/T0/B0/SeCrEt",
            "file:///services/T0/B0/SeCrEt",
        ] {
            let err = Endpoints::from_config(&cfg, env(&[("SLIPWAY_SLACK_URL", bad)])).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, NotifyError::InvalidUrl { .. }), "{msg}");
            assert!(msg.contains("SLIPWAY_SLACK_URL"), "{msg}");
            assert!(!msg.contains("SeCrEt") && !msg.contains("hooks"), "{msg}");
            assert!(!format!("{err:?}").contains("SeCrEt"));
        }

        let cfg = NotifyConfig {
            webhook_url_env: Some(String::new()),
            ..NotifyConfig::default()
        };
        let err = Endpoints::from_config(&cfg, env(&[])).unwrap_err();
        assert!(err.to_string().contains("webhook_url_env"), "{err}");
    }

    #[tokio::test]
    async fn debug_does_not_show_urls() {
        let url = "https://hooks.slack.com/services/T0000/B0000/XXXXsecretXXXX";
        let generic = "https://example.com/hooks/anotherSecret";
        let cfg = NotifyConfig {
            slack_webhook_url_env: Some("S".into()),
            webhook_url_env: Some("W".into()),
            ..NotifyConfig::default()
        };
        let endpoints = Endpoints::from_config(&cfg, env(&[("S", url), ("W", generic)])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let journal = Store::open(dir.path()).unwrap();
        let debug_endpoints = format!("{endpoints:?}");
        let notifier = Notifier::new(
            endpoints
                .start(
                    &cfg,
                    journal.clone(),
                    Arc::new(crate::clock::SystemClock),
                    crate::replicas::Replicas::alone(journal),
                )
                .unwrap(),
        );
        for debug in [debug_endpoints, format!("{notifier:?}")] {
            assert!(
                !debug.contains("secret") && !debug.contains("Secret"),
                "{debug}"
            );
            assert!(
                !debug.contains("hooks") && !debug.contains("example.com"),
                "{debug}"
            );
            assert!(
                debug.contains("slack") && debug.contains("webhook"),
                "{debug}"
            );
        }
    }

    #[tokio::test]
    async fn nothing_configured_starts_nothing() {
        let cfg = NotifyConfig::default();
        let dir = tempfile::tempdir().unwrap();
        let journal = Store::open(dir.path()).unwrap();
        let targets = Endpoints::from_config(&cfg, env(&[]))
            .unwrap()
            .start(
                &cfg,
                journal.clone(),
                Arc::new(crate::clock::SystemClock),
                crate::replicas::Replicas::alone(journal),
            )
            .unwrap();
        assert!(targets.is_empty());
    }
}
