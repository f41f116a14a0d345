//! Retention (issue 13): what a pruning pass did, and the background worker that runs one
//! every `prune_interval_secs` on whichever engine holds the state.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::clock::SharedClock;
use crate::config::JournalConfig;

/// What a pruning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Deliveries whose body was dropped (the row stays).
    pub bodies_dropped: u64,
    /// Ignored, ping and duplicate deliveries deleted.
    pub deliveries_deleted: u64,
    /// Notifications sent or given up longer ago than `keep_ignored_days`, deleted.
    pub notifications_deleted: u64,
    /// Free pages given back to the file system (4 KiB each).
    pub pages_reclaimed: u64,
}

impl Pruned {
    pub(crate) fn add(&mut self, other: Pruned) {
        self.bodies_dropped += other.bodies_dropped;
        self.deliveries_deleted += other.deliveries_deleted;
        self.notifications_deleted += other.notifications_deleted;
        self.pages_reclaimed += other.pages_reclaimed;
    }
}

/// The background pruning worker.
pub struct Retention {
    pub journal: Store,
    pub clock: SharedClock,
    pub settings: JournalConfig,
}

impl Retention {
    pub async fn run(&self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.prune_interval_secs);
        loop {
            let now = super::millis(self.clock.now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                pruned = self.journal.prune(now, &self.settings) => match pruned {
                    Ok(p) if p != Pruned::default() => tracing::info!(
                        bodies_dropped = p.bodies_dropped,
                        deliveries_deleted = p.deliveries_deleted,
                        notifications_deleted = p.notifications_deleted,
                        pages_reclaimed = p.pages_reclaimed,
                        "journal: pruned"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "journal: pruning failed; will try again"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
