//! Replicas (issue 26): several slipway processes on one DynamoDB table, dividing the work
//! with the store's leases ([`crate::store::Lease`]).
//!
//! Every replica serves everything (webhooks, Slack, the API, the status page) and consumes
//! the queue (an event handled twice acts once: the store's writes are conditional). The work
//! that must run in one place at a time is taken under a lease:
//! - `builds` (the StartBuild worker), `reconcile`, `github-recovery`, `retention`, `promote`, and each
//!   outbox (`notify/<target>`, `github-outbox`): one holder each, kept while it lives;
//! - `deploy/<cluster>/<service>`: taken by the replica that drives a deploy of that service,
//!   handed back when the deploy ends (so two replicas never deploy one service at once);
//! - `replica/<id>`: each replica's own, renewed while it runs: the live replicas.
//!
//! A lease is renewed every quarter of its period. Locally it counts as held only for two
//! thirds of the period after the last renewal began (measured on the monotonic clock, which
//! runs on through a SIGSTOP), so a replica that was paused or cut off knows it lost its
//! leases before another replica can take them, and stops that work: the work's task is
//! cancelled, and [`Replicas::check`] (a strongly consistent read of the fence) answers false
//! before each side effect on AWS or GitHub. The deploy's writes are fenced in the store too
//! (`DeploymentUpdate::fence`). On a clean stop every lease is handed back at once.
//!
//! With SQLite there is one process (the `state_dir` lock): it takes every lease at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{millis, Fence, Lease, Store};

/// The lease of the StartBuild worker.
pub const BUILDS: &str = "builds";
/// The reconciler's.
pub const RECONCILE: &str = "reconcile";
/// Delivery recovery's (GitHub).
pub const RECOVERY: &str = "github-recovery";
/// Retention's.
pub const RETENTION: &str = "retention";
/// The GitHub outbox's.
pub const GITHUB_OUTBOX: &str = "github-outbox";
/// The promoter's (issue 27).
pub const PROMOTE: &str = "promote";

/// The lease of a notification outbox (`notify/slack`, `notify/webhook`).
pub fn notify_outbox(target: &str) -> String {
    format!("notify/{target}")
}

/// The lease of the deploys of one service (`cluster/service`).
pub fn deploy(service_key: &str) -> String {
    format!("deploy/{service_key}")
}

const REPLICA_PREFIX: &str = "replica/";

/// A lease this replica holds.
#[derive(Debug, Clone)]
pub struct Claim {
    lease: Lease,
    lost: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
}

impl Claim {
    pub fn name(&self) -> &str {
        &self.lease.name
    }

    pub fn fence(&self) -> Fence {
        self.lease.fence()
    }

    /// Resolves when the lease is lost (not renewed in time, or taken by another replica).
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Whether it still counts as held here (no store read): not lost, and renewed recently
    /// enough. False at once after a pause longer than the lease allows.
    pub fn held_here(&self) -> bool {
        !self.is_lost() && Instant::now() < *self.valid_until.lock().expect("lease validity")
    }

    /// Runs `work` while the lease counts as held here: before each step of `work` the lease
    /// is looked at, and `work` is dropped (None) the moment it no longer counts. A replica
    /// that wakes from a pause so takes no step of the work, whichever of its timers fires
    /// first.
    pub async fn while_held<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if !self.held_here() {
                return std::task::Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

struct Held {
    lease: Lease,
    /// Until when it counts as held here (monotonic), shared with its claims.
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
}

/// This replica's leases.
pub struct Replicas {
    store: Store,
    clock: SharedClock,
    id: String,
    period: Duration,
    held: Mutex<HashMap<String, Held>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("id", &self.id).finish()
    }
}

impl Replicas {
    pub fn new(store: Store, clock: SharedClock, id: String, period: Duration) -> Arc<Replicas> {
        Arc::new(Replicas {
            store,
            clock,
            id,
            period,
            held: Mutex::default(),
        })
    }

    /// A process alone with its store (the CLI's and tests' in-process workers): on the
    /// system clock, with the default period.
    /// Renews its leases on the current tokio runtime until the runtime ends.
    pub fn alone(store: Store) -> Arc<Replicas> {
        let replicas = Replicas::new(
            store,
            Arc::new(crate::clock::SystemClock),
            default_id(None, "local"),
            Duration::from_secs(crate::config::replicas::DEFAULT_LEASE_SECS),
        );
        tokio::spawn(replicas.clone().run(CancellationToken::new()));
        replicas
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How often work held elsewhere is looked for again: a quarter of the period, so a
    /// replica takes over within the period and one poll after the holder died.
    pub fn poll(&self) -> Duration {
        self.period / 4
    }

    /// How long a lease counts as held here after its renewal began.
    fn local_validity(&self) -> Duration {
        self.period * 2 / 3
    }

    fn now_ms(&self) -> i64 {
        millis(self.clock.now())
    }

    /// Takes `name` once if it is free (or returns this replica's claim on it).
    pub async fn try_claim(&self, name: &str) -> Option<Claim> {
        if let Some(claim) = self.held_claim(name) {
            return Some(claim);
        }
        let began = Instant::now();
        let got = self
            .store
            .claim_lease(
                name.to_owned(),
                self.id.clone(),
                self.now_ms(),
                self.period.as_millis() as i64,
            )
            .await;
        match got {
            Ok(Some(lease)) => {
                tracing::info!(lease = name, fence = lease.fence, "lease taken");
                metrics::counter!(crate::metrics::LEASES_TAKEN).increment(1);
                let lost = CancellationToken::new();
                let valid_until = Arc::new(Mutex::new(began + self.local_validity()));
                let claim = Claim {
                    lease: lease.clone(),
                    lost: lost.clone(),
                    valid_until: valid_until.clone(),
                };
                let mut held = self.held.lock().expect("leases");
                if let Some(old) = held.insert(
                    name.to_owned(),
                    Held {
                        lease,
                        valid_until,
                        lost,
                    },
                ) {
                    old.lost.cancel();
                }
                Some(claim)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "cannot take a lease");
                None
            }
        }
    }

    fn held_claim(&self, name: &str) -> Option<Claim> {
        let held = self.held.lock().expect("leases");
        let h = held.get(name)?;
        let claim = Claim {
            lease: h.lease.clone(),
            lost: h.lost.clone(),
            valid_until: h.valid_until.clone(),
        };
        claim.held_here().then_some(claim)
    }

    /// Whether this replica holds `name` now (no store read).
    pub fn holds(&self, name: &str) -> bool {
        self.held_claim(name).is_some()
    }

    /// Whether another replica holds `name` now (a strongly consistent read; false when the
    /// store cannot say).
    pub async fn held_by_another(&self, name: &str) -> bool {
        match self.store.lease(name.to_owned()).await {
            Ok(Some(l)) => l.is_live(self.now_ms()) && l.holder != self.id,
            _ => false,
        }
    }

    /// Waits until this replica holds `name` (looking again every [`Replicas::poll`]); None
    /// once `shutdown` is cancelled.
    pub async fn acquire(&self, name: &str, shutdown: &CancellationToken) -> Option<Claim> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            if let Some(claim) = self.try_claim(name).await {
                return Some(claim);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.poll()) => {}
            }
        }
    }

    /// Whether this replica still holds `claim`: counted as held here, and the store's lease
    /// still carries its fence (a strongly consistent read). Asked right before each side
    /// effect; false when the store cannot say (nothing is done then).
    pub async fn check(&self, claim: &Claim) -> bool {
        if claim.is_lost() || self.held_claim(claim.name()).is_none() {
            return false;
        }
        match self.store.lease(claim.lease.name.clone()).await {
            Ok(Some(l)) if l.fence == claim.lease.fence && l.expires_ms > 0 => true,
            Ok(_) => {
                self.lose(claim.name(), "another replica holds it now");
                false
            }
            Err(e) => {
                tracing::warn!(lease = claim.name(), error = %e, "cannot read a lease; not acting");
                false
            }
        }
    }

    fn lose(&self, name: &str, why: &str) {
        if let Some(h) = self.held.lock().expect("leases").remove(name) {
            tracing::warn!(lease = name, fence = h.lease.fence, why, "lease lost");
            metrics::counter!(crate::metrics::LEASES_LOST).increment(1);
            h.lost.cancel();
        }
    }

    /// Hands `claim` back at once (if it is still this replica's).
    pub async fn release(&self, claim: Claim) {
        let removed = {
            let mut held = self.held.lock().expect("leases");
            match held.get(claim.name()) {
                Some(h) if h.lease.fence == claim.lease.fence => held.remove(claim.name()),
                _ => None,
            }
        };
        if let Some(h) = removed {
            h.lost.cancel();
            if let Err(e) = self.store.release_lease(h.lease).await {
                tracing::warn!(lease = claim.name(), error = %e, "cannot hand a lease back; it expires");
            }
        }
    }

    /// Hands back every lease but the outboxes' and this replica's own (a clean stop: the
    /// work goes to the other replicas while the outboxes flush).
    pub async fn release_work(&self) {
        self.release_where(|name| {
            !(name.starts_with("notify/")
                || name == GITHUB_OUTBOX
                || name.starts_with(REPLICA_PREFIX))
        })
        .await
    }

    /// Hands every lease back (a clean stop).
    pub async fn release_all(&self) {
        self.release_where(|_| true).await
    }

    async fn release_where(&self, which: impl Fn(&str) -> bool) {
        let all: Vec<Held> = {
            let mut held = self.held.lock().expect("leases");
            let names: Vec<String> = held.keys().filter(|n| which(n)).cloned().collect();
            names.iter().filter_map(|n| held.remove(n)).collect()
        };
        for h in all {
            h.lost.cancel();
            if let Err(e) = self.store.release_lease(h.lease.clone()).await {
                tracing::warn!(lease = %h.lease.name, error = %e, "cannot hand a lease back; it expires");
            } else {
                tracing::info!(lease = %h.lease.name, "lease handed back");
            }
        }
    }

    /// Renews every lease held, every quarter period, and keeps this replica's own
    /// (`replica/<id>`); on `shutdown` hands them all back.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let me = format!("{REPLICA_PREFIX}{}", self.id);
        loop {
            if self.held_claim(&me).is_none() {
                self.try_claim(&me).await;
            }
            self.renew_all().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.period / 4) => {}
            }
        }
        self.release_all().await;
    }

    /// Renews every lease held, all at once (one slow renewal delays no other).
    async fn renew_all(&self) {
        let due: Vec<Lease> = self
            .held
            .lock()
            .expect("leases")
            .values()
            .map(|h| h.lease.clone())
            .collect();
        futures_util::future::join_all(due.into_iter().map(|lease| self.renew(lease))).await;
    }

    async fn renew(&self, lease: Lease) {
        let name = lease.name.clone();
        let expired_here = self
            .held
            .lock()
            .expect("leases")
            .get(&name)
            .is_none_or(|h| Instant::now() >= *h.valid_until.lock().expect("lease validity"));
        if expired_here {
            // Paused or cut off past what counts here: another replica may act on it soon.
            return self.lose(&name, "not renewed in time");
        }
        let began = Instant::now();
        match self
            .store
            .renew_lease(lease, self.now_ms(), self.period.as_millis() as i64)
            .await
        {
            Ok(Some(renewed)) => {
                if let Some(h) = self.held.lock().expect("leases").get_mut(&name) {
                    if h.lease.fence == renewed.fence {
                        h.lease = renewed;
                        *h.valid_until.lock().expect("lease validity") =
                            began + self.local_validity();
                    }
                }
            }
            Ok(None) => self.lose(&name, "another replica took it"),
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot renew a lease; trying again")
            }
        }
    }

    /// Runs `job` only while this replica holds `name`: waits for the lease, runs the job
    /// with a token cancelled when the lease is lost (or on `shutdown`), and starts over.
    pub async fn singleton<F, Fut>(
        self: Arc<Self>,
        name: &'static str,
        shutdown: CancellationToken,
        mut job: F,
    ) where
        F: FnMut(CancellationToken, Claim) -> Fut,
        Fut: Future<Output = ()>,
    {
        while let Some(claim) = self.acquire(name, &shutdown).await {
            let token = shutdown.child_token();
            let run = claim.while_held(job(token.clone(), claim.clone()));
            if run.await.is_none() {
                tracing::warn!(lease = name, "lease lost: this replica stops that work");
                token.cancel();
            } else {
                // The job ended by itself (stopping, or nothing to do here): hand it back.
                self.release(claim).await;
                return;
            }
        }
    }

    /// Every replica the store knows, live or not, and every lease, for the status views.
    pub async fn view(&self) -> Result<ReplicasView, crate::store::StoreError> {
        let now = self.now_ms();
        let leases = self.store.leases().await?;
        let mut replicas = Vec::new();
        let mut work = Vec::new();
        for l in leases {
            if let Some(id) = l.name.strip_prefix(REPLICA_PREFIX) {
                if l.is_live(now) {
                    replicas.push(ReplicaInfo {
                        id: id.to_owned(),
                        since_ms: l.since_ms,
                        expires_ms: l.expires_ms,
                        this: id == self.id,
                        holds: Vec::new(),
                    });
                }
            } else if l.is_live(now) {
                work.push(l);
            }
        }
        for l in work {
            match replicas.iter_mut().find(|r| r.id == l.holder) {
                Some(r) => r.holds.push(l.name),
                None => replicas.push(ReplicaInfo {
                    id: l.holder.clone(),
                    since_ms: l.since_ms,
                    expires_ms: l.expires_ms,
                    this: l.holder == self.id,
                    holds: vec![l.name],
                }),
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ReplicasView { replicas })
    }
}

/// The live replicas and what each holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicasView {
    pub replicas: Vec<ReplicaInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub since_ms: i64,
    pub expires_ms: i64,
    /// The replica answering.
    pub this: bool,
    /// The leases it holds (`builds`, `deploy/<cluster>/<service>`, …).
    pub holds: Vec<String>,
}

/// This replica's id when `[replicas] replica_id` is not set: the ECS task's ARN, else the
/// hostname and the process id (two processes on one host are two replicas).
pub fn default_id(task_arn: Option<String>, hostname: &str) -> String {
    task_arn.unwrap_or_else(|| format!("{hostname}:{}", std::process::id()))
}
