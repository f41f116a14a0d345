//! Leases in the journal (issue 26; see [`crate::store::Lease`]). One process holds a SQLite
//! journal, so these are always its own; they are kept the same way as on DynamoDB so both
//! engines answer the one interface alike.

use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::store::{Fence, Lease, StoreError};

const COLUMNS: &str = "name, holder, fence, expires_ms, since_ms";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        holder: r.get(1)?,
        fence: r.get(2)?,
        expires_ms: r.get(3)?,
        since_ms: r.get(4)?,
    })
}

fn read(c: &Connection, name: &str) -> Result<Option<Lease>, StoreError> {
    Ok(
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM leases WHERE name = ?1"))?
            .query_row([name], from_row)
            .optional()?,
    )
}

/// Refuses (nothing written) unless the lease still carries `fence`: the condition on every
/// fenced write, checked inside the write's own transaction.
pub(super) fn check_fence(c: &Connection, fence: &Fence) -> Result<(), StoreError> {
    match read(c, &fence.name)? {
        Some(l) if l.fence == fence.fence && l.expires_ms > 0 => Ok(()),
        _ => Err(StoreError::Fenced(fence.name.clone())),
    }
}

impl SqliteStore {
    pub async fn claim_lease(
        &self,
        name: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        self.write(move |c| {
            let fence = match read(c, &name)? {
                Some(l) if l.is_live(now_ms) => return Ok(None),
                Some(l) => l.fence + 1,
                None => 1,
            };
            let lease = Lease {
                name,
                holder,
                fence,
                expires_ms: now_ms + ttl_ms,
                since_ms: now_ms,
            };
            c.execute(
                "INSERT INTO leases (name, holder, fence, expires_ms, since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,
                    fence = excluded.fence, expires_ms = excluded.expires_ms,
                    since_ms = excluded.since_ms",
                params![
                    lease.name,
                    lease.holder,
                    lease.fence,
                    lease.expires_ms,
                    lease.since_ms
                ],
            )?;
            Ok(Some(lease))
        })
        .await
    }

    pub async fn renew_lease(
        &self,
        lease: Lease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        self.write(move |c| {
            let expires = now_ms + ttl_ms;
            let n = c.execute(
                "UPDATE leases SET expires_ms = ?3
                 WHERE name = ?1 AND fence = ?2 AND holder = ?4 AND expires_ms > 0",
                params![lease.name, lease.fence, expires, lease.holder],
            )?;
            Ok((n == 1).then_some(Lease {
                expires_ms: expires,
                ..lease
            }))
        })
        .await
    }

    pub async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE leases SET expires_ms = 0 WHERE name = ?1 AND fence = ?2",
                params![lease.name, lease.fence],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn lease(&self, name: String) -> Result<Option<Lease>, StoreError> {
        self.read(move |c| read(c, &name)).await
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM leases ORDER BY name"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
