//! Leases (issue 26): how replicas sharing one store divide the work.
//!
//! A lease names a piece of work (`builds`, `deploy/<cluster>/<service>`, `replica/<id>`, …).
//! A replica takes it with a conditional write when it is free or its expiry has passed, and
//! every new owner gets a larger fencing number (`fence`). The owner renews it while it works;
//! a renewal, a release and every fenced write are conditional on the fence still being the
//! one it got, so a replica that lost the lease (paused, partitioned, killed) can write
//! nothing more for that work. Both engines keep them; with SQLite there is only ever one
//! process (the `state_dir` lock), so its leases are always its own.

/// One lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What it covers.
    pub name: String,
    /// The replica that holds it (its `replica_id`).
    pub holder: String,
    /// Incremented by every new owner, never by a renewal.
    pub fence: i64,
    /// Until when (store milliseconds) it is held; 0 once released.
    pub expires_ms: i64,
    /// When its owner took it.
    pub since_ms: i64,
}

impl Lease {
    /// Held by someone as of `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }

    /// What a fenced write is conditional on.
    pub fn fence(&self) -> Fence {
        Fence {
            name: self.name.clone(),
            fence: self.fence,
        }
    }
}

/// The condition on a fenced write: the lease `name` still carries `fence` (whoever renewed
/// it since; the fence changes only with a new owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub fence: i64,
}
