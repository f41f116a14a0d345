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

use serde::{Deserialize, Serialize};

pub use crate::config::github::{AppIds, GithubConfig, Hook, HookOwner, RawGithubConfig};

pub use client::{Client, Credentials, CredentialsError, GithubError};
pub use compare::{changed_files, ChangedFiles, MAX_COMPARE_FILES};
pub use recovery::Recovery;
pub use sink::{BuildState, GithubSink};

/// The actor journaled for a delivery slipway asked GitHub to redeliver.
pub const RECOVERY_ACTOR: &str = "github-recovery";

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
        replicas: Arc<crate::replicas::Replicas>,
    ) -> Result<Github, GithubError> {
        let health = Arc::new(Health::new(clock.clone()));
        let client = Arc::new(Client::new(&cfg.api_url, credentials, health.clone())?);
        let sink = GithubSink::start(
            client.clone(),
            config,
            journal.clone(),
            clock.clone(),
            cfg.give_up_after,
            replicas,
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
