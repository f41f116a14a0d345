//! The GitHub REST client: authentication (a token, or a GitHub App's installation tokens
//! minted with a self-signed RS256 JWT and refreshed before they expire) and requests with
//! retries that honour GitHub's rate limits as docs.github.com ("Rate limits for the REST
//! API", "Best practices for using the REST API") describes them:
//!
//! - a primary limit (`x-ratelimit-remaining: 0`) is waited out until `x-ratelimit-reset`,
//!   however far that is;
//! - a secondary limit (403 or 429 whose message says so, a 429, or a 403 without rate-limit
//!   headers) is waited out for `retry-after` seconds when given, else at least a minute;
//! - while a limit holds, no request is sent (the limit is the installation's, not one
//!   request's), and mutating requests are sent at least a second apart.
//!
//! The waits follow the injected clock ([`crate::clock::Clock::sleep`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{AppIds, GithubConfig, Health};

/// Environment variable holding a fine-grained personal access token (or any bearer token).
pub const TOKEN_ENV: &str = "SLIPWAY_GITHUB_TOKEN";
/// Environment variable holding the GitHub App's private key (PEM).
pub const APP_KEY_ENV: &str = "SLIPWAY_GITHUB_APP_KEY";

const API_VERSION: &str = "2022-11-28";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per request, the first included.
const MAX_ATTEMPTS: u32 = 4;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(8);
/// Secondary rate limits without a hint: GitHub says to wait at least a minute.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// GitHub: "wait at least one second between each request" that changes something.
const WRITE_GAP: Duration = Duration::from_secs(1);
/// An installation token is replaced when it has less than this left.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// JWT lifetime (GitHub allows at most 10 minutes) and clock-drift allowance.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
const JWT_BACKDATE: Duration = Duration::from_secs(60);
const MAX_LOGGED_BODY: usize = 200;

/// How slipway authenticates to GitHub. Never printed.
pub enum Credentials {
    Token(String),
    App { ids: AppIds, key: EncodingKey },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token([redacted])"),
            Credentials::App { ids, .. } => write!(
                f,
                "Credentials::App {{ app_id: {}, installation_id: {}, key: [redacted] }}",
                ids.app_id, ids.installation_id
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("[github] has app_id and installation_id but {APP_KEY_ENV} is not set or is empty")]
    MissingAppKey,
    #[error("{APP_KEY_ENV} is not an RSA private key in PEM form: {0}")]
    BadAppKey(String),
    #[error(
        "[github] is configured but there are no credentials: set {TOKEN_ENV}, or app_id and \
         installation_id with {APP_KEY_ENV}"
    )]
    Missing,
}

impl Credentials {
    /// The credentials for `cfg` from the environment (read through `env`). None: GitHub is off.
    ///
    /// App credentials win over a token when both are there. A `[github]` table without
    /// credentials is an error; credentials without the table use its defaults.
    pub fn from_env(
        cfg: Option<&GithubConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, CredentialsError> {
        let non_empty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(ids) = cfg.and_then(|c| c.app) {
            let pem = non_empty(APP_KEY_ENV).ok_or(CredentialsError::MissingAppKey)?;
            let key = EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| CredentialsError::BadAppKey(e.to_string()))?;
            return Ok(Some(Credentials::App { ids, key }));
        }
        match non_empty(TOKEN_ENV) {
            Some(token) => Ok(Some(Credentials::Token(token.trim().to_owned()))),
            None if cfg.is_some() => Err(CredentialsError::Missing),
            None => Ok(None),
        }
    }
}

/// Why a GitHub request failed, after its retries. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("GitHub is unreachable: {0}")]
    Transport(String),
    #[error("GitHub rate limit: {0}")]
    RateLimited(String),
    #[error("cannot read GitHub's answer: {0}")]
    Decode(String),
    #[error("cannot get an installation token: {0}")]
    Token(Box<GithubError>),
    #[error("cannot sign the GitHub App JWT: {0}")]
    Jwt(String),
    #[error("cannot build the GitHub HTTP client: {0}")]
    Client(String),
}

/// Which credential a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// The installation token (or the configured token).
    Installation,
    /// The App itself (its JWT): `/app/...` endpoints.
    App,
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub body: serde_json::Value,
    /// The `rel="next"` link, for paginated lists.
    pub next: Option<String>,
}

pub struct Client {
    http: reqwest::Client,
    api: String,
    credentials: Credentials,
    installation_token: Mutex<Option<CachedToken>>,
    health: Arc<Health>,
    /// The health's clock: rate-limit waits and the gap between writes follow it.
    clock: crate::clock::SharedClock,
    pacing: std::sync::Mutex<Pacing>,
}

/// When the next request may go.
#[derive(Default)]
struct Pacing {
    /// A rate limit holds until then: nothing is sent before.
    blocked_until: Option<time::OffsetDateTime>,
    /// When the last mutating request was sent.
    last_write: Option<time::OffsetDateTime>,
}

struct CachedToken {
    token: String,
    expires_at: SystemTime,
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[derive(Deserialize)]
struct InstallationToken {
    token: String,
    expires_at: String,
}

/// What one attempt came to.
enum Attempt {
    Done(Result<Reply, GithubError>),
    /// A rate limit: nothing may be sent for this long.
    RateLimited(Duration, GithubError),
    RetryAfter(Duration, GithubError),
}

impl Client {
    pub fn new(
        api: &str,
        credentials: Credentials,
        health: Arc<Health>,
    ) -> Result<Client, GithubError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::Client(e.without_url().to_string()))?;
        Ok(Client {
            http,
            api: api.trim_end_matches('/').to_owned(),
            credentials,
            installation_token: Mutex::new(None),
            clock: health.clock.clone(),
            health,
            pacing: std::sync::Mutex::new(Pacing::default()),
        })
    }

    pub fn is_app(&self) -> bool {
        matches!(self.credentials, Credentials::App { .. })
    }

    /// `path` starts with `/` (relative to the API root) or is a full URL from a `Link` header.
    /// A rate limit is waited out however far its reset (the outbox gives up by age only).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        auth: As,
    ) -> Result<Reply, GithubError> {
        self.request_within(method, path, body, auth, Duration::MAX)
            .await
    }

    /// As [`Self::request`], but a rate limit that holds longer than `patience` fails the
    /// request at once ([`GithubError::RateLimited`]) instead of being waited out: for work
    /// that others wait on (the first recovery round holds `/readyz`) and that runs again later.
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        auth: As,
        patience: Duration,
    ) -> Result<Reply, GithubError> {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.api)
        } else if path.starts_with(&format!("{}/", self.api)) {
            path.to_owned()
        } else {
            // A pagination link elsewhere would take the token with it.
            return Err(GithubError::Decode(format!(
                "a link outside the API ({}) is not followed",
                self.api
            )));
        };
        let mut delay = RETRY_MIN_DELAY;
        let mut attempt = 1;
        let result = loop {
            if let Err(e) = self.wait_turn(&method, patience).await {
                break Err(e);
            }
            let outcome = self.attempt(&method, &url, body, auth).await;
            if !matches!(method, Method::GET | Method::HEAD) {
                // The gap counts from the answer: GitHub sees the next write a second after
                // it finished with this one, however long this one took to arrive.
                self.pacing.lock().expect("pacing lock").last_write = Some(self.clock.now());
            }
            let (wait, error) = match outcome {
                Attempt::Done(result) => break result,
                Attempt::RateLimited(wait, error) => {
                    // The limit is the installation's: every request waits it out.
                    let until = self.clock.now() + wait;
                    let mut pacing = self.pacing.lock().expect("pacing lock");
                    pacing.blocked_until = pacing.blocked_until.max(Some(until));
                    drop(pacing);
                    if wait > patience {
                        tracing::warn!(%method, path, error = %error, wait_secs = wait.as_secs(),
                            "GitHub rate limit: not waited for by this request");
                        break Err(GithubError::RateLimited(format!(
                            "{error} (resets in {} s; not waited for)",
                            wait.as_secs()
                        )));
                    }
                    tracing::warn!(%method, path, error = %error, wait_secs = wait.as_secs(),
                        "GitHub rate limit: waiting before the next request");
                    if attempt >= MAX_ATTEMPTS {
                        break Err(GithubError::RateLimited(format!(
                            "still holds after {MAX_ATTEMPTS} tries: {error}"
                        )));
                    }
                    attempt += 1;
                    continue;
                }
                Attempt::RetryAfter(wait, error) => (wait, error),
            };
            if attempt >= MAX_ATTEMPTS {
                break Err(error);
            }
            let wait = wait.max(delay);
            tracing::debug!(%method, path, error = %error, retry_in = ?wait, "GitHub request failed; retrying");
            self.clock.sleep(wait).await;
            delay = (delay * 2).min(RETRY_MAX_DELAY);
            attempt += 1;
        };
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(e) => {
                tracing::warn!(%method, path, error = %e, "GitHub request failed");
                self.health.failed(&format!("{method} {path}: {e}"));
            }
        }
        result
    }

    /// Waits until no rate limit holds and, for a mutating request, until [`WRITE_GAP`] has
    /// passed since the last one; then takes its turn.
    /// Waits for this request's turn (a rate limit's reset; a second after the last write).
    /// A rate limit's reset further than `patience` is not waited for.
    async fn wait_turn(&self, method: &Method, patience: Duration) -> Result<(), GithubError> {
        let write = !matches!(*method, Method::GET | Method::HEAD);
        loop {
            let now = self.clock.now();
            let wait = {
                let mut pacing = self.pacing.lock().expect("pacing lock");
                let mut ready = pacing.blocked_until.unwrap_or(now);
                let blocked = ready - now;
                if blocked > patience {
                    return Err(GithubError::RateLimited(format!(
                        "it resets in {} s; not waited for",
                        blocked.whole_seconds()
                    )));
                }
                if write {
                    ready = ready.max(pacing.last_write.map_or(now, |t| t + WRITE_GAP));
                }
                if ready <= now {
                    if write {
                        pacing.last_write = Some(now);
                    }
                    return Ok(());
                }
                ready - now
            };
            self.clock
                .sleep(wait.try_into().unwrap_or(Duration::ZERO))
                .await;
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
        auth: As,
    ) -> Attempt {
        let bearer = match self.bearer(auth).await {
            Ok(token) => token,
            // Minting the token is itself a request that has had its retries.
            Err(e) => return Attempt::Done(Err(e)),
        };
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(bearer)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                count("unreachable");
                let e = GithubError::Transport(error_chain(&e.without_url()));
                return Attempt::RetryAfter(Duration::ZERO, e);
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            count("ok");
            let body = if text.trim().is_empty() {
                serde_json::Value::Null
            } else {
                match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => return Attempt::Done(Err(GithubError::Decode(e.to_string()))),
                }
            };
            return Attempt::Done(Ok(Reply {
                body,
                next: next_link(&headers),
            }));
        }
        let message = message(&text);
        let now = SystemTime::from(self.clock.now());
        let wait = rate_limit_wait(status, &headers, &message, now);
        let error = GithubError::Status {
            status: status.as_u16(),
            message,
        };
        if let Some(wait) = wait {
            count("rate_limited");
            return Attempt::RateLimited(wait, error);
        }
        if status == StatusCode::UNAUTHORIZED && auth == As::Installation && self.is_app() {
            // The installation token was revoked or expired early: mint a new one.
            count("error");
            *self.installation_token.lock().await = None;
            return Attempt::RetryAfter(Duration::ZERO, error);
        }
        if status.is_server_error() {
            count("server_error");
            return Attempt::RetryAfter(Duration::ZERO, error);
        }
        count("error");
        Attempt::Done(Err(error))
    }

    async fn bearer(&self, auth: As) -> Result<String, GithubError> {
        let (ids, key) = match &self.credentials {
            Credentials::Token(token) => return Ok(token.clone()),
            Credentials::App { ids, key } => (ids, key),
        };
        if auth == As::App {
            return jwt(ids.app_id, key, SystemTime::now());
        }
        let mut cached = self.installation_token.lock().await;
        if let Some(t) = cached.as_ref() {
            let left = t
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left > TOKEN_REFRESH_MARGIN {
                return Ok(t.token.clone());
            }
        }
        let path = format!("/app/installations/{}/access_tokens", ids.installation_id);
        let reply = Box::pin(self.request(Method::POST, &path, None, As::App))
            .await
            .map_err(|e| GithubError::Token(Box::new(e)))?;
        let minted: InstallationToken = serde_json::from_value(reply.body)
            .map_err(|e| GithubError::Decode(format!("installation token: {e}")))?;
        let expires_at = time::OffsetDateTime::parse(
            &minted.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| GithubError::Decode(format!("installation token expires_at: {e}")))?;
        let expires_at = UNIX_EPOCH
            + Duration::from_secs(u64::try_from(expires_at.unix_timestamp()).unwrap_or(0));
        tracing::debug!("minted a GitHub installation token");
        *cached = Some(CachedToken {
            token: minted.token.clone(),
            expires_at,
        });
        Ok(minted.token)
    }
}

fn count(result: &'static str) {
    metrics::counter!("slipway_github_requests_total", "result" => result).increment(1);
}

/// The App's JWT: RS256, issued a minute in the past for clock drift, valid nine minutes.
fn jwt(app_id: u64, key: &EncodingKey, now: SystemTime) -> Result<String, GithubError> {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let claims = Claims {
        iat: (now - JWT_BACKDATE.min(now)).as_secs(),
        exp: (now + JWT_LIFETIME).as_secs(),
        iss: app_id.to_string(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
        .map_err(|e| GithubError::Jwt(e.to_string()))
}

/// How long to wait before retrying, when the answer is a rate limit (docs.github.com,
/// "Rate limits for the REST API", "Exceeding the rate limit"): `retry-after` first; then
/// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0 (a primary limit, however far its
/// reset); otherwise a minute. A 403 is a rate limit when it says so (`message`), carries one
/// of those headers, or carries no rate-limit headers at all (GitHub sends them with every
/// answer of the API, a permission error included); a 429 always is. None: not a rate limit.
fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
    now: SystemTime,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let retry_after = header("retry-after");
    let remaining = header("x-ratelimit-remaining");
    let says_so = message.to_ascii_lowercase().contains("rate limit");
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || says_so
        || retry_after.is_some()
        || remaining.is_none_or(|r| r == 0);
    if !limited {
        return None;
    }
    if let Some(secs) = retry_after {
        return Some(Duration::from_secs(secs));
    }
    if remaining == Some(0) {
        if let Some(reset) = header("x-ratelimit-reset") {
            let reset = UNIX_EPOCH + Duration::from_secs(reset);
            // One more second: the reset time is rounded down to the second.
            return Some(reset.duration_since(now).unwrap_or_default() + Duration::from_secs(1));
        }
    }
    Some(SECONDARY_LIMIT_WAIT)
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// GitHub's `message`, or the start of the body.
fn message(text: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned));
    let text = from_json.unwrap_or_else(|| text.to_owned());
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(MAX_LOGGED_BODY).collect()
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_are_recognised() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let wait = |status: u16, h: &[(&'static str, &str)]| {
            rate_limit_wait(StatusCode::from_u16(status).unwrap(), &headers(h), "", now)
        };
        assert_eq!(
            wait(403, &[("retry-after", "7")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1010")
                ]
            ),
            Some(Duration::from_secs(11))
        );
        assert_eq!(
            wait(
                429,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "900")]
            ),
            Some(Duration::from_secs(1))
        );
        assert_eq!(wait(429, &[]), Some(SECONDARY_LIMIT_WAIT));
        // A plain 403 is a permission problem, not a rate limit.
        assert_eq!(wait(403, &[("x-ratelimit-remaining", "12")]), None);
        assert_eq!(wait(500, &[("retry-after", "7")]), None);
        // A secondary limit: GitHub's message, with headers left over from the primary count.
        let secondary = "You have exceeded a secondary rate limit. Please wait a few minutes.";
        let limited = [
            ("x-ratelimit-remaining", "4000"),
            ("x-ratelimit-reset", "5000"),
        ];
        for status in [StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS] {
            assert_eq!(
                rate_limit_wait(status, &headers(&limited), secondary, now),
                Some(SECONDARY_LIMIT_WAIT)
            );
        }
        // A 403 without any rate-limit header: a secondary limit, a minute.
        assert_eq!(wait(403, &[]), Some(SECONDARY_LIMIT_WAIT));
        // A primary limit resetting in 40 minutes is waited for, all of it.
        assert_eq!(
            wait(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "3400")
                ]
            ),
            Some(Duration::from_secs(2401))
        );
    }

    #[test]
    fn next_link_is_found() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        assert_eq!(next_link(&headers(&[("link", "<u>; rel=\"last\"")])), None);
    }

    #[test]
    fn credentials_from_the_environment() {
        let cfg = GithubConfig::default();
        let none = |_: &str| None;
        assert!(Credentials::from_env(None, none).unwrap().is_none());
        assert!(matches!(
            Credentials::from_env(Some(&cfg), none),
            Err(CredentialsError::Missing)
        ));
        let token = |n: &str| (n == TOKEN_ENV).then(|| "ghp_secret".to_owned());
        let creds = Credentials::from_env(None, token).unwrap().unwrap();
        assert!(!format!("{creds:?}").contains("ghp_secret"));
        let app = GithubConfig {
            app: Some(AppIds {
                app_id: 1,
                installation_id: 2,
            }),
            ..GithubConfig::default()
        };
        assert!(matches!(
            Credentials::from_env(Some(&app), token),
            Err(CredentialsError::MissingAppKey)
        ));
        let bad = |n: &str| (n == APP_KEY_ENV).then(|| "not a key".to_owned());
        let err = Credentials::from_env(Some(&app), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(APP_KEY_ENV) && !err.contains("not a key"),
            "{err}"
        );
    }

    #[test]
    fn messages_are_short_and_one_line() {
        assert_eq!(
            message(r#"{"message":"Not Found","documentation_url":"x"}"#),
            "Not Found"
        );
        assert_eq!(message("a\n  b"), "a b");
        assert_eq!(message(&"x".repeat(1000)).len(), MAX_LOGGED_BODY);
    }
}
