//! GitHub API access (optional): commit statuses, GitHub Deployments, recovery of webhook
//! deliveries that failed while slipway was down, and the changed files between two commits.
//!
//! Without credentials none of this runs and slipway behaves as it always has. With them, every
//! GitHub call happens in the background ([`GithubSink`] only enqueues), with retries that honour
//! `Retry-After` and the rate-limit headers: a slow or failing GitHub never delays, fails or
//! blocks a build or a deploy, the same contract as notifications.

mod client;
mod compare;
mod recovery;
mod sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{invalid, ConfigError};

pub use client::{Client, Credentials, CredentialsError, GithubError};
pub use compare::{changed_files, ChangedFiles, MAX_COMPARE_FILES};
pub use recovery::Recovery;
pub use sink::{BuildState, GithubSink};

/// The actor journaled for a delivery slipway asked GitHub to redeliver.
pub const RECOVERY_ACTOR: &str = "github-recovery";
/// GitHub keeps deliveries this long; recovery cannot look further back.
const MAX_RECOVER_WINDOW_HOURS: u64 = 72;

/// The `[github]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithubConfig {
    api_url: Option<String>,
    app_id: Option<u64>,
    installation_id: Option<u64>,
    recover_every_mins: Option<u64>,
    recover_window_hours: Option<u64>,
    /// An update (status, deployment) GitHub has not taken by this age is given up.
    give_up_after_hours: Option<u64>,
    /// The older spelling of `[server] public_url` (used when that is not set).
    public_url: Option<String>,
    #[serde(default)]
    hook: Vec<RawHook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    repository: Option<String>,
    org: Option<String>,
    id: u64,
}

/// The validated `[github]` table.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// Without a trailing slash.
    pub api_url: String,
    pub app: Option<AppIds>,
    pub recover_every: Duration,
    pub recover_window: Duration,
    /// The outbox gives an update up at this age (never by a count of attempts).
    pub give_up_after: Duration,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub hooks: Vec<Hook>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppIds {
    pub app_id: u64,
    pub installation_id: u64,
}

/// A webhook whose deliveries are recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub owner: HookOwner,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOwner {
    Repository(String),
    Org(String),
    /// The GitHub App's own webhook (needs App credentials).
    App,
}

impl Hook {
    /// The API path of its deliveries.
    fn deliveries_path(&self) -> String {
        match &self.owner {
            HookOwner::Repository(repo) => format!("/repos/{repo}/hooks/{}/deliveries", self.id),
            HookOwner::Org(org) => format!("/orgs/{org}/hooks/{}/deliveries", self.id),
            HookOwner::App => "/app/hook/deliveries".to_owned(),
        }
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        RawGithubConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl RawGithubConfig {
    pub fn validate(self) -> Result<GithubConfig, ConfigError> {
        let api_url = self
            .api_url
            .unwrap_or_else(|| "https://api.github.com".to_owned());
        let parsed = reqwest::Url::parse(&api_url)
            .map_err(|e| invalid("github.api_url", format!("\"{api_url}\" is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(
                "github.api_url",
                format!("\"{api_url}\" is not an http(s) URL"),
            ));
        }
        // The token goes with every request: never in clear text across a network.
        if parsed.scheme() == "http" && !crate::client::is_loopback(&parsed) {
            return Err(invalid(
                "github.api_url",
                format!(
                    "\"{api_url}\" must be https:// (plain http:// only to this machine: the \
                     GitHub token would cross the network in clear text)"
                ),
            ));
        }
        let app = match (self.app_id, self.installation_id) {
            (Some(app_id), Some(installation_id)) => Some(AppIds {
                app_id,
                installation_id,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "github.installation_id",
                    "is required with github.app_id",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "github.app_id",
                    "is required with github.installation_id",
                ))
            }
        };
        let every = self.recover_every_mins.unwrap_or(10);
        if every == 0 {
            return Err(invalid(
                "github.recover_every_mins",
                "must be greater than 0",
            ));
        }
        let window = self.recover_window_hours.unwrap_or(24);
        if window == 0 || window > MAX_RECOVER_WINDOW_HOURS {
            return Err(invalid(
                "github.recover_window_hours",
                format!(
                    "must be between 1 and {MAX_RECOVER_WINDOW_HOURS} (GitHub keeps deliveries 3 days)"
                ),
            ));
        }
        let give_up = self.give_up_after_hours.unwrap_or(24);
        if give_up == 0 {
            return Err(invalid(
                "github.give_up_after_hours",
                "must be greater than 0",
            ));
        }
        let public_url = match self.public_url {
            None => None,
            Some(url) => Some(crate::config::http_url("github.public_url", &url)?),
        };
        let mut hooks = Vec::new();
        for (i, h) in self.hook.into_iter().enumerate() {
            let key = |field: &str| format!("github.hook[{i}].{field}");
            let owner = match (h.repository, h.org) {
                (Some(_), Some(_)) => {
                    return Err(invalid(key("org"), "give repository or org, not both"))
                }
                (Some(repo), None) => {
                    let ok = repo
                        .split_once('/')
                        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
                    if !ok {
                        return Err(invalid(
                            key("repository"),
                            format!("\"{repo}\" is not a GitHub owner/name"),
                        ));
                    }
                    HookOwner::Repository(repo)
                }
                (None, Some(org)) if org.is_empty() || org.contains('/') => {
                    return Err(invalid(
                        key("org"),
                        format!("\"{org}\" is not an organisation"),
                    ))
                }
                (None, Some(org)) => HookOwner::Org(org),
                (None, None) if app.is_none() => {
                    return Err(invalid(
                        key("repository"),
                        "a hook without repository or org is the App's hook, which needs \
                         github.app_id and github.installation_id",
                    ))
                }
                (None, None) => HookOwner::App,
            };
            if h.id == 0 {
                return Err(invalid(key("id"), "must be the hook's id"));
            }
            hooks.push(Hook { owner, id: h.id });
        }
        Ok(GithubConfig {
            api_url: api_url.trim_end_matches('/').to_owned(),
            app,
            recover_every: Duration::from_secs(every * 60),
            recover_window: Duration::from_secs(window * 3600),
            give_up_after: Duration::from_secs(give_up * 3600),
            public_url,
            hooks,
        })
    }
}

/// How GitHub calls are going, for `slipway status`.
pub struct Health {
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<(String, i64)>>,
    clock: crate::clock::SharedClock,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    pub requests_succeeded: u64,
    pub requests_failed: u64,
    /// The last failure, in words, and when (RFC 3339).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// On the system clock (a client made outside `serve`, e.g. by the CLI or a test).
impl Default for Health {
    fn default() -> Health {
        Health::new(Arc::new(crate::clock::SystemClock))
    }
}

impl Health {
    fn new(clock: crate::clock::SharedClock) -> Health {
        Health {
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            clock,
        }
    }

    fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, why: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let now = crate::store::millis(self.clock.now());
        *self.last_error.lock().expect("health lock") = Some((why.to_owned(), now));
    }

    pub fn report(&self) -> HealthReport {
        let last = self.last_error.lock().expect("health lock").clone();
        HealthReport {
            requests_succeeded: self.succeeded.load(Ordering::Relaxed),
            requests_failed: self.failed.load(Ordering::Relaxed),
            last_error_at: last
                .as_ref()
                .map(|(_, at)| crate::store::format_millis(*at)),
            last_error: last.map(|(why, _)| why),
        }
    }
}

/// Everything GitHub-side that `server::run` starts: the sink the workers feed, the recovery
/// loop, and the health shown by `slipway status`.
pub struct Github {
    /// For other features' GitHub calls (e.g. [`changed_files`]).
    pub client: Arc<Client>,
    pub sink: GithubSink,
    pub recovery: Option<Recovery>,
    pub health: Arc<Health>,
}

impl Github {
    /// Starts the background sink (must run inside a tokio runtime). The recovery loop is
    /// returned for the caller to run with its shutdown token.
    pub fn start(
        credentials: Credentials,
        cfg: GithubConfig,
        config: Arc<crate::config::Config>,
        journal: crate::store::Store,
        clock: crate::clock::SharedClock,
    ) -> Result<Github, GithubError> {
        let health = Arc::new(Health::new(clock.clone()));
        let client = Arc::new(Client::new(&cfg.api_url, credentials, health.clone())?);
        let sink = GithubSink::start(
            client.clone(),
            config,
            journal.clone(),
            clock.clone(),
            cfg.give_up_after,
        );
        let recovery = (!cfg.hooks.is_empty()).then(|| Recovery {
            client: client.clone(),
            journal,
            hooks: cfg.hooks.clone(),
            every: cfg.recover_every,
            window: cfg.recover_window,
            clock,
        });
        Ok(Github {
            client,
            sink,
            recovery,
            health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GithubConfig, ConfigError> {
        toml::from_str::<RawGithubConfig>(text).unwrap().validate()
    }

    #[test]
    fn defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.api_url, "https://api.github.com");
        assert_eq!(cfg.recover_every, Duration::from_secs(600));
        assert_eq!(cfg.recover_window, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.give_up_after, Duration::from_secs(24 * 3600));
        assert!(cfg.app.is_none() && cfg.hooks.is_empty());
    }

    #[test]
    fn the_issue_example_parses() {
        let cfg = parse(
            r#"
api_url = "https://ghe.example.com/api/v3/"
app_id = 12345
installation_id = 678
recover_every_mins = 5
recover_window_hours = 72
[[hook]]
repository = "octo-org/web"
id = 12345
[[hook]]
org = "octo-org"
id = 2
[[hook]]
id = 3
"#,
        )
        .unwrap();
        assert_eq!(cfg.api_url, "https://ghe.example.com/api/v3");
        assert_eq!(
            cfg.app,
            Some(AppIds {
                app_id: 12345,
                installation_id: 678
            })
        );
        assert_eq!(
            cfg.hooks[0].deliveries_path(),
            "/repos/octo-org/web/hooks/12345/deliveries"
        );
        assert_eq!(
            cfg.hooks[1].deliveries_path(),
            "/orgs/octo-org/hooks/2/deliveries"
        );
        assert_eq!(cfg.hooks[2].deliveries_path(), "/app/hook/deliveries");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("api_url = \"ftp://x\"", "github.api_url"),
            (
                "api_url = \"http://ghe.example.com/api/v3\"",
                "github.api_url",
            ),
            ("api_url = \"not a url\"", "github.api_url"),
            ("app_id = 1", "github.installation_id"),
            ("installation_id = 1", "github.app_id"),
            ("recover_every_mins = 0", "github.recover_every_mins"),
            ("recover_window_hours = 73", "github.recover_window_hours"),
            ("recover_window_hours = 0", "github.recover_window_hours"),
            ("give_up_after_hours = 0", "github.give_up_after_hours"),
            ("public_url = \"slipway\"", "github.public_url"),
            (
                "[[hook]]\nrepository = \"web\"\nid = 1",
                "github.hook[0].repository",
            ),
            (
                "[[hook]]\nrepository = \"a/b\"\norg = \"a\"\nid = 1",
                "github.hook[0].org",
            ),
            ("[[hook]]\nid = 1", "github.hook[0].repository"),
            ("[[hook]]\norg = \"a\"\nid = 0", "github.hook[0].id"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
