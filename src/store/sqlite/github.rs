//! The journal's GitHub records (issue 11): the GitHub deployment behind each slipway
//! deployment, and the deliveries slipway asked GitHub to redeliver.

use rusqlite::{params, OptionalExtension};

use super::{SqliteStore, StoreError};
use crate::store::github::*;

/// Whether a delivery (hook, GUID) is in the journal, found by its GUID's index.
pub(crate) const HELD_DELIVERY: &str =
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = ?2 AND hook_id = ?1)";

impl SqliteStore {
    /// When this journal was created (ms since the epoch; for a journal older than the record,
    /// its oldest delivery): delivery recovery asks for nothing older.
    pub async fn created_ms(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'created_ms'",
                [],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// The GitHub deployment made for slipway deployment `deployment`, if any.
    pub async fn github_deployment(
        &self,
        deployment: i64,
    ) -> Result<Option<GithubDeployment>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT deployment, repository, github_id, state FROM github_deployments
                 WHERE deployment = ?1",
                params![deployment],
                |r| {
                    Ok(GithubDeployment {
                        deployment: r.get(0)?,
                        repository: r.get(1)?,
                        github_id: r.get(2)?,
                        state: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub async fn record_github_deployment(
        &self,
        deployment: i64,
        app: String,
        d: GithubDeployment,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO github_deployments
                     (deployment, app, repository, github_id, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (deployment) DO UPDATE SET
                     github_id = excluded.github_id, state = excluded.state,
                     updated_ms = excluded.updated_ms",
                params![deployment, app, d.repository, d.github_id, d.state, now_ms],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn set_github_deployment_state(
        &self,
        deployment: i64,
        state: &'static str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE github_deployments SET state = ?2, updated_ms = ?3 WHERE deployment = ?1",
                params![deployment, state, now_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// The app's GitHub deployments older than `deployment` still shown as live (`success`):
    /// the ones a newer successful deploy replaced.
    pub async fn replaced_github_deployments(
        &self,
        app: String,
        deployment: i64,
    ) -> Result<Vec<GithubDeployment>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT deployment, repository, github_id, state FROM github_deployments
                 WHERE app = ?1 AND deployment < ?2 AND state = 'success'
                 ORDER BY deployment",
            )?;
            let rows = stmt
                .query_map(params![app, deployment], |r| {
                    Ok(GithubDeployment {
                        deployment: r.get(0)?,
                        repository: r.get(1)?,
                        github_id: r.get(2)?,
                        state: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// What the journal knows of delivery `delivery_id` of hook `hook_id`.
    pub async fn delivery_recovery_state(
        &self,
        hook_id: String,
        delivery_id: String,
    ) -> Result<RecoveryState, StoreError> {
        self.read(move |c| {
            let held: bool =
                c.query_row(HELD_DELIVERY, params![hook_id, delivery_id], |r| r.get(0))?;
            if held {
                return Ok(RecoveryState::Held);
            }
            let asked = c
                .query_row(
                    "SELECT attempt_id, outcome, requests FROM github_recoveries
                     WHERE hook_id = ?1 AND delivery_id = ?2",
                    params![hook_id, delivery_id],
                    |r| {
                        Ok(RecoveryState::Asked {
                            attempt_id: r.get(0)?,
                            requested: r.get::<_, String>(1)? == "requested",
                            requests: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            Ok(asked.unwrap_or(RecoveryState::Unknown))
        })
        .await
    }

    /// Journals a recovery. A failed request may be tried again later; its row is updated.
    pub async fn record_recovery(&self, r: NewRecovery, now_ms: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO github_recoveries (hook_id, delivery_id, attempt_id, event,
                     status_code, delivered_ms, actor, outcome, reason, requested_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (hook_id, delivery_id) DO UPDATE SET
                     requests = requests + 1,
                     attempt_id = excluded.attempt_id, status_code = excluded.status_code,
                     delivered_ms = excluded.delivered_ms, outcome = excluded.outcome,
                     reason = excluded.reason, requested_ms = excluded.requested_ms",
                params![
                    r.hook_id,
                    r.delivery_id,
                    r.attempt_id,
                    r.event,
                    r.status_code,
                    r.delivered_ms,
                    r.actor,
                    r.outcome,
                    r.reason,
                    now_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The most recent recoveries, newest first.
    pub async fn recoveries(&self, limit: u32) -> Result<Vec<RecoveryRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, hook_id, delivery_id, attempt_id, event, status_code, delivered_ms,
                        actor, outcome, reason, requested_ms, requests
                 FROM github_recoveries ORDER BY requested_ms DESC, id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok(RecoveryRecord {
                        id: r.get(0)?,
                        hook_id: r.get(1)?,
                        delivery: r.get(2)?,
                        attempt_id: r.get(3)?,
                        event: r.get(4)?,
                        status_code: r.get(5)?,
                        delivered_at: super::format_millis(r.get(6)?),
                        actor: r.get(7)?,
                        outcome: r.get(8)?,
                        reason: r.get(9)?,
                        requested_at: super::format_millis(r.get(10)?),
                        requests: r.get(11)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

impl SqliteStore {
    /// Puts a GitHub update in the outbox; it stays there until [`SqliteStore::github_posted`].
    pub async fn queue_github_update(&self, event: String, now_ms: i64) -> Result<i64, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO github_outbox (event, created_ms) VALUES (?1, ?2)",
                params![event, now_ms],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// The oldest updates in the outbox, in order.
    pub async fn github_outbox(&self, limit: i64) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, event, created_ms, attempts FROM github_outbox ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(OutboxEntry {
                        id: r.get(0)?,
                        event: r.get(1)?,
                        created_ms: r.get(2)?,
                        attempts: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// How many updates wait in the outbox.
    pub async fn github_outbox_len(&self) -> Result<i64, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM github_outbox", [], |r| r.get(0))?))
            .await
    }

    /// The update was posted, or given up on: it leaves the outbox.
    pub async fn github_posted(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM github_outbox WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// Posting the update failed for now; it stays first in line.
    pub async fn github_post_failed(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE github_outbox SET attempts = attempts + 1 WHERE id = ?1",
                [id],
            )?;
            Ok(())
        })
        .await
    }
}
