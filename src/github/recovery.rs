//! Recovery of webhook deliveries that failed while slipway was down or unreachable.
//!
//! GitHub does not retry a failed delivery. At start and every `recover_every_mins`, slipway
//! lists the recent deliveries of each configured hook and, for every push whose attempts all
//! failed and that the journal does not hold, asks GitHub to redeliver it: oldest first, one
//! at a time (the next is asked for once the journal holds the previous one, or after
//! [`REDELIVERY_WAIT`]), and never one older than the journal (a fresh journal does not replay
//! the pushes of the day before slipway existed). The redelivery comes through the normal
//! verified webhook path with the same delivery id, so the journal's dedup makes the whole
//! thing idempotent; deploys rank by when GitHub received each push, so the order they come
//! back in cannot leave an older commit running. Each request is journaled with the actor
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
use crate::readiness::{Readiness, Recovery as ReadyState};
use crate::store::{millis, NewRecovery, RecoveryState, Store};

/// Deliveries asked for per page (GitHub's maximum).
const PER_PAGE: u32 = 100;
/// Pages read per hook and round, following the `Link` header's cursors to the end of the
/// window: 100,000 deliveries. A hook busier than that stops early, and says so in the log
/// and in `slipway_github_recovery_stopped_early_total`.
const MAX_PAGES: usize = 1000;
/// Redeliveries asked for one delivery at most: one that keeps failing (a wrong hook secret)
/// is left for an operator.
const MAX_REQUESTS: i64 = 3;
/// How long the next redelivery waits for the previous one to reach the journal (GitHub gives
/// a delivery 10 s).
const REDELIVERY_WAIT: Duration = Duration::from_secs(12);
/// The longest GitHub rate limit a round waits out. A round holds `/readyz` the first time and
/// runs again every `recover_every` anyway, so a limit resetting later fails the round (it
/// says why) instead of keeping slipway unready past ECS's health check grace period.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(300);

/// The recovery loop. Run it with [`Recovery::run`].
pub struct Recovery {
    pub(super) client: Arc<Client>,
    pub(super) journal: Store,
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
    pub async fn run(&self, shutdown: CancellationToken, readiness: Arc<Readiness>) {
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
        let mut since = now - self.window;
        match self.journal.created_ms().await {
            Ok(Some(ms)) => {
                // GitHub's `delivered_at` is in whole seconds: the journal's second counts.
                let secs = u64::try_from(ms / 1000).unwrap_or(0);
                let created = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(secs);
                since = since.max(created);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "recovery: cannot read the journal; trying later");
                return Ok(0);
            }
        }
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
            let path = format!("{}/{}/attempts", deliveries_path(hook), attempt.id);
            let result = self
                .client
                .request_within(
                    Method::POST,
                    &path,
                    None,
                    Self::auth(hook),
                    RATE_LIMIT_PATIENCE,
                )
                .await;
            let (outcome, reason) = match &result {
                Ok(_) => ("requested", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            tracing::info!(hook = hook.id, delivery = %guid, outcome, "asked GitHub to redeliver a failed push");
            let record = NewRecovery {
                hook_id: hook_id.clone(),
                delivery_id: guid.clone(),
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
                self.held(&hook_id, &guid).await;
            }
        }
        Ok(requested)
    }

    /// Waits until the journal holds delivery `guid` of `hook_id` (GitHub redelivered it), at
    /// most [`REDELIVERY_WAIT`], so that redeliveries arrive one at a time, in order.
    async fn held(&self, hook_id: &str, guid: &str) {
        let wait = async {
            loop {
                let state = self
                    .journal
                    .delivery_recovery_state(hook_id.to_owned(), guid.to_owned())
                    .await;
                if matches!(state, Ok(RecoveryState::Held)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(REDELIVERY_WAIT, wait).await.is_err() {
            tracing::warn!(
                hook = hook_id,
                delivery = guid,
                "the redelivery has not arrived; asking for the next one"
            );
        }
    }

    /// The push deliveries since `since` whose attempts all failed, oldest first (by their
    /// first attempt): (GUID, its newest attempt). A delivery failed unless GitHub got a 2xx:
    /// `status_code` 0 is one GitHub could not deliver at all (could not connect, timed out).
    async fn failed_pushes(
        &self,
        hook: &Hook,
        since: time::OffsetDateTime,
    ) -> Result<Vec<(String, Attempt)>, GithubError> {
        let mut failed: BTreeMap<String, Attempt> = BTreeMap::new();
        let mut first: BTreeMap<String, (time::OffsetDateTime, i64)> = BTreeMap::new();
        let mut succeeded = std::collections::HashSet::new();
        let mut next = Some(format!("{}?per_page={PER_PAGE}", deliveries_path(hook)));
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let reply = self
                .client
                .request_within(
                    Method::GET,
                    &url,
                    None,
                    Self::auth(hook),
                    RATE_LIMIT_PATIENCE,
                )
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
                let seen = first.entry(a.guid.clone()).or_insert((at, a.id));
                *seen = (*seen).min((at, a.id));
                if delivered(&a) {
                    succeeded.insert(a.guid);
                    continue;
                }
                // Newest first: keep the first attempt seen for each GUID.
                failed.entry(a.guid.clone()).or_insert(a);
            }
            match reply.next {
                Some(url) if !older && pages < MAX_PAGES => next = Some(url),
                Some(_) if !older => {
                    metrics::counter!(crate::metrics::GITHUB_RECOVERY_STOPPED_EARLY,
                        "hook" => hook.id.to_string())
                    .increment(1);
                    tracing::warn!(
                        hook = hook.id,
                        pages,
                        "delivery recovery stopped early: \
                        the hook has more deliveries in the window than slipway reads a round"
                    );
                }
                _ => {}
            }
        }
        failed.retain(|guid, _| !succeeded.contains(guid));
        let mut failed: Vec<(String, Attempt)> = failed.into_iter().collect();
        failed.sort_by_key(|(guid, _)| first.get(guid).copied());
        Ok(failed)
    }
}

/// Whether GitHub got a 2xx for this attempt (0, or none: it could not deliver at all).
/// The API path of a hook's deliveries.
fn deliveries_path(hook: &Hook) -> String {
    match &hook.owner {
        HookOwner::Repository(repo) => format!("/repos/{repo}/hooks/{}/deliveries", hook.id),
        HookOwner::Org(org) => format!("/orgs/{org}/hooks/{}/deliveries", hook.id),
        HookOwner::App => "/app/hook/deliveries".to_owned(),
    }
}

fn delivered(a: &Attempt) -> bool {
    a.status_code.is_some_and(|c| (200..300).contains(&c))
}

fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hook_owner_has_its_deliveries_path() {
        let hook = |owner| Hook { owner, id: 7 };
        assert_eq!(
            deliveries_path(&hook(HookOwner::Repository("octo-org/web".into()))),
            "/repos/octo-org/web/hooks/7/deliveries"
        );
        assert_eq!(
            deliveries_path(&hook(HookOwner::Org("octo-org".into()))),
            "/orgs/octo-org/hooks/7/deliveries"
        );
        assert_eq!(
            deliveries_path(&hook(HookOwner::App)),
            "/app/hook/deliveries"
        );
    }

    #[test]
    fn an_attempt_that_could_not_connect_failed() {
        let attempt = |status_code| Attempt {
            id: 1,
            guid: "g".into(),
            delivered_at: "2026-12-04T10:00:00Z".into(),
            status_code,
            event: "push".into(),
        };
        assert!(!delivered(&attempt(Some(0))));
        assert!(!delivered(&attempt(None)));
        assert!(!delivered(&attempt(Some(502))));
        assert!(delivered(&attempt(Some(202))));
    }
}
