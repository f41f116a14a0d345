//! Recovery of webhook deliveries that failed while slipway was down or unreachable.
//!
//! GitHub does not retry a failed delivery. At start and every `recover_every_mins`, slipway
//! lists the recent deliveries of each configured hook and, for every push whose attempts all
//! failed and that the journal does not hold, asks GitHub to redeliver it. The redelivery
//! comes through the normal verified webhook path with the same delivery id, so the journal's
//! dedup makes the whole thing idempotent. Each request is journaled with the actor
//! `github-recovery` (API: `GET /api/github/recoveries`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::client::{As, Client};
use super::{GithubError, Hook, HookOwner, RECOVERY_ACTOR};
use crate::clock::SharedClock;
use crate::journal::{millis, Journal, NewRecovery, RecoveryState};
use crate::readiness::{Readiness, Recovery as ReadyState};

/// Deliveries asked for per page (GitHub's maximum).
const PER_PAGE: u32 = 100;
/// Pages read per hook and round: bounds the work when a hook is very busy.
const MAX_PAGES: usize = 20;
/// Redeliveries asked for one delivery at most: one that keeps failing (a wrong hook secret)
/// is left for an operator.
const MAX_REQUESTS: i64 = 3;

/// The recovery loop. Run it with [`Recovery::run`].
pub struct Recovery {
    pub(super) client: Arc<Client>,
    pub(super) journal: Journal,
    pub(super) hooks: Vec<Hook>,
    pub(super) every: Duration,
    pub(super) window: Duration,
    pub(super) clock: SharedClock,
}

/// One delivery attempt, as `GET .../deliveries` lists it (only the fields used).
#[derive(Debug, Deserialize)]
struct Attempt {
    id: i64,
    guid: String,
    delivered_at: String,
    status_code: Option<i64>,
    event: String,
}

impl Recovery {
    /// Recovers at once, then every `every`, until `shutdown`. `readiness` learns how the
    /// first round went: `/readyz` answers 503 until it has finished or failed.
    pub async fn run(self, shutdown: CancellationToken, readiness: Arc<Readiness>) {
        let mut first = true;
        loop {
            let failed = tokio::select! {
                _ = shutdown.cancelled() => break,
                failed = self.recover_all() => failed,
            };
            if first {
                first = false;
                readiness.set_recovery(match failed {
                    None => ReadyState::Done,
                    Some(why) => {
                        tracing::error!(
                            error = %why,
                            "the first round of delivery recovery failed: pushes GitHub could \
                             not deliver while slipway was down may be lost until a later round \
                             succeeds"
                        );
                        ReadyState::Failed(why)
                    }
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One round over every hook; returns why it failed for some hook, if it did.
    async fn recover_all(&self) -> Option<String> {
        let mut requested = 0;
        let mut failed = Vec::new();
        for hook in &self.hooks {
            match self.recover(hook).await {
                Ok(n) => requested += n,
                Err(e) => {
                    tracing::warn!(hook = hook.id, error = %e, "delivery recovery failed for this hook");
                    failed.push(format!("hook {}: {e}", hook.id));
                }
            }
        }
        tracing::info!(requested, "delivery recovery round finished");
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    fn auth(hook: &Hook) -> As {
        if hook.owner == HookOwner::App {
            As::App
        } else {
            As::Installation
        }
    }

    /// One round for one hook: returns how many redeliveries were requested.
    pub async fn recover(&self, hook: &Hook) -> Result<usize, GithubError> {
        let now = self.clock.now();
        let since = now - self.window;
        let failed = self.failed_pushes(hook, since).await?;
        let hook_id = hook.id.to_string();
        let mut requested = 0;
        for (guid, attempt) in failed {
            let state = self
                .journal
                .delivery_recovery_state(hook_id.clone(), guid.clone())
                .await;
            match state {
                Ok(RecoveryState::Held) => continue,
                Ok(RecoveryState::Unknown) => {}
                // Asked before: again only if GitHub's answer was an error, or the redelivery
                // it made failed too (a newer failed attempt), and not too often.
                Ok(RecoveryState::Asked {
                    attempt_id,
                    requested,
                    requests,
                }) => {
                    let failed_again = attempt.id > attempt_id;
                    if (requested && !failed_again) || requests >= MAX_REQUESTS {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovery: cannot read the journal; trying later");
                    return Ok(requested);
                }
            }
            let path = format!("{}/{}/attempts", hook.deliveries_path(), attempt.id);
            let result = self
                .client
                .request(Method::POST, &path, None, Self::auth(hook))
                .await;
            let (outcome, reason) = match &result {
                Ok(_) => ("requested", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            tracing::info!(hook = hook.id, delivery = %guid, outcome, "asked GitHub to redeliver a failed push");
            let record = NewRecovery {
                hook_id: hook_id.clone(),
                delivery_id: guid,
                attempt_id: attempt.id,
                event: attempt.event,
                status_code: attempt.status_code,
                delivered_ms: parse_time(&attempt.delivered_at).map_or(0, millis),
                actor: RECOVERY_ACTOR.to_owned(),
                outcome: outcome.to_owned(),
                reason,
            };
            if let Err(e) = self
                .journal
                .record_recovery(record, millis(self.clock.now()))
                .await
            {
                tracing::warn!(error = %e, "recovery: cannot journal the redelivery request");
            }
            if result.is_ok() {
                requested += 1;
            }
        }
        Ok(requested)
    }

    /// The push deliveries since `since` whose attempts all failed: GUID → its newest attempt.
    async fn failed_pushes(
        &self,
        hook: &Hook,
        since: time::OffsetDateTime,
    ) -> Result<BTreeMap<String, Attempt>, GithubError> {
        let mut failed: BTreeMap<String, Attempt> = BTreeMap::new();
        let mut succeeded = std::collections::HashSet::new();
        let mut next = Some(format!("{}?per_page={PER_PAGE}", hook.deliveries_path()));
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let reply = self
                .client
                .request(Method::GET, &url, None, Self::auth(hook))
                .await?;
            let attempts: Vec<Attempt> = serde_json::from_value(reply.body)
                .map_err(|e| GithubError::Decode(format!("hook deliveries: {e}")))?;
            let mut older = false;
            for a in attempts {
                let Some(at) = parse_time(&a.delivered_at) else {
                    continue;
                };
                if at < since {
                    older = true;
                    continue;
                }
                if a.event != "push" {
                    continue;
                }
                if a.status_code.is_some_and(|c| (200..300).contains(&c)) {
                    succeeded.insert(a.guid);
                    continue;
                }
                // Newest first: keep the first attempt seen for each GUID.
                failed.entry(a.guid.clone()).or_insert(a);
            }
            if !older && pages < MAX_PAGES {
                next = reply.next;
            }
        }
        failed.retain(|guid, _| !succeeded.contains(guid));
        Ok(failed)
    }
}

fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}
