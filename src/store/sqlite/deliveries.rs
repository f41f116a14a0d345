//! Deliveries (what reached the webhook) and the builds they asked for.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{SqliteStore, StoreError};
use crate::store::deliveries::*;

/// How long a delivery may wait for the writer before it is answered 503 (GitHub gives up
/// after 10 s; this leaves room for the answer).
const ADMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A delivery about to be stored, with its body's digest and stored form (both computed
/// before the writer, off its thread).
pub(super) struct Incoming {
    delivery: NewDelivery,
    digest: [u8; 32],
    encoding: &'static str,
    stored: Vec<u8>,
}

impl Incoming {
    pub(super) fn new(delivery: NewDelivery) -> Incoming {
        let (encoding, stored) = super::body_codec::encode(&delivery.body);
        Incoming {
            digest: super::schema::body_digest(&delivery.body),
            encoding,
            stored,
            delivery,
        }
    }
}

/// Stores the body once per digest and counts the delivery pointing at it.
fn store_body(tx: &Connection, incoming: &Incoming) -> Result<i64, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO bodies (sha256, refs, body, encoding) VALUES (?1, 1, ?2, ?3)
         ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1
         RETURNING id",
    )?;
    Ok(stmt.query_row(
        params![
            incoming.digest.as_slice(),
            incoming.stored,
            incoming.encoding
        ],
        |r| r.get(0),
    )?)
}

fn insert_delivery(
    tx: &Connection,
    incoming: &Incoming,
    outcome: &str,
    reason: Option<&str>,
) -> Result<i64, StoreError> {
    let d = &incoming.delivery;
    let body_id = store_body(tx, incoming)?;
    tx.prepare_cached(
        "INSERT INTO deliveries (delivery_id, hook_id, event, source, actor, replay_of,
             received_ms, content_type, headers, body_id, dedup_key, outcome, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        d.delivery_id.as_str(),
        d.hook_id.as_str(),
        d.event,
        d.source.as_str(),
        d.actor,
        d.replay_of,
        d.received_ms,
        d.content_type,
        d.headers.to_string(),
        body_id,
        d.dedup_key(),
        outcome,
        reason,
    ])?;
    Ok(tx.last_insert_rowid())
}

/// The intake queries, by name, for the query-plan test: each must use an index.
/// A redelivery (the same hook and GUID): the app's build from the delivery that made it.
/// (`CROSS JOIN` keeps SQLite from reading the app's builds through `builds_by_push` (app):
/// every build of the app, not one.)
pub(crate) const FIND_BY_KEY: &str = "SELECT b.id, b.state FROM deliveries d
     CROSS JOIN builds b ON b.delivery = d.id
     WHERE d.delivery_id = ?1 AND d.hook_id = ?2 AND b.app = ?3
     LIMIT 1";
/// The same push from two GitHub hooks: a build of (app, sha, before) from a GitHub delivery.
pub(crate) const FIND_SAME_PUSH: &str = "SELECT b.id, b.state FROM builds b
     JOIN deliveries d ON d.id = b.delivery
     WHERE b.app = ?1 AND b.sha = ?2 AND b.before_sha IS ?3 AND b.state != ?4
       AND b.tag IS ?5 AND d.source = 'github'
     ORDER BY b.id DESC LIMIT 1";

/// The builds of delivery row `$row`: those made by the delivery of its hook and GUID that made
/// them (a redelivery's are those of the delivery it repeats), found through the GUID's index.
/// (`builds` has no index on its own `dedup_key`: a join on it built a temporary index of every
/// build each time.)
macro_rules! builds_of_delivery {
    ($row:literal) => {
        concat!(
            "SELECT own.id FROM deliveries asked
             JOIN deliveries same ON same.delivery_id = asked.delivery_id
                                 AND same.hook_id = asked.hook_id
             JOIN builds own ON own.delivery = same.id
             WHERE asked.id = ",
            $row
        )
    };
}
/// The builds of delivery row `?1` (for its deployments).
pub(crate) const BUILDS_OF_DELIVERY: &str = builds_of_delivery!("?1");

/// Delivery lines, newest first, of the deliveries `$deliveries` selects, each with its builds.
macro_rules! summaries {
    ($deliveries:literal) => {
        concat!(
            "SELECT d.id, d.received_ms, d.delivery_id, d.event, d.source, d.outcome,
                    b.app, b.sha, b.state, b.build_id, b.attempts,
                    COALESCE(dp.reason, b.reason, d.reason), dp.id, dp.state
             FROM (",
            $deliveries,
            ") d
             LEFT JOIN builds b ON d.outcome IN ('accepted', 'duplicate')
                  AND b.id IN (",
            builds_of_delivery!("d.id"),
            ")
             LEFT JOIN deployments dp ON dp.build_row = b.id
             ORDER BY d.id DESC, b.id"
        )
    };
}
/// The lines of the newest `?1` deliveries.
pub(crate) const RECENT_SUMMARIES: &str =
    summaries!("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?1");
/// The lines of delivery row `?1`.
pub(crate) const ONE_SUMMARY: &str = summaries!("SELECT * FROM deliveries WHERE id = ?1");

pub(super) fn admit_in(
    tx: &Connection,
    incoming: &Incoming,
    verdict: Verdict,
) -> Result<(i64, Admission), StoreError> {
    let d = &incoming.delivery;
    let d_in = incoming;
    let requests = match verdict {
        Verdict::Pong => {
            let row = insert_delivery(tx, d_in, "pong", None)?;
            return Ok((row, Admission::Pong));
        }
        Verdict::Ignored(reason) => {
            let row = insert_delivery(tx, d_in, "ignored", Some(&reason))?;
            return Ok((row, Admission::Ignored(reason)));
        }
        Verdict::Rejected(reason) => {
            let row = insert_delivery(tx, d_in, "rejected", Some(&reason))?;
            return Ok((row, Admission::Rejected(reason)));
        }
        Verdict::Build(requests) => (requests, None),
        Verdict::BuildSome { builds, skipped } => {
            let note: Vec<String> = skipped
                .iter()
                .map(|s| format!("{} skipped: {}", s.app, s.reason))
                .collect();
            (builds, Some(note.join("; ")))
        }
    };
    let (requests, skipped_note) = requests;
    let key = d.dedup_key();
    // Decide per app first, so the delivery row records the overall outcome.
    let mut plan = Vec::with_capacity(requests.len());
    for req in requests {
        let existing: Option<(i64, String)> = tx
            .prepare_cached(FIND_BY_KEY)?
            .query_row(
                params![d.delivery_id.as_str(), d.hook_id.as_str(), req.app.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // The same push sent by two hooks (a repository's and its organisation's): one build.
        // That includes a redelivery of a build that failed for good after the other hook's
        // delivery made a new one: the new one stands for it (retrying both would build twice).
        let existing = match existing {
            Some((id, state)) if state != build_state::FAILED => Some((id, state)),
            found if d.source == Source::Github => tx
                .prepare_cached(FIND_SAME_PUSH)?
                .query_row(
                    params![
                        req.app.as_str(),
                        req.sha.as_str(),
                        req.before,
                        build_state::FAILED,
                        req.tag
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .or(found),
            found => found,
        };
        plan.push((req, existing));
    }
    let all_started = plan.iter().all(|(_, existing)| {
        matches!(existing, Some((_, state))
            if state != build_state::PENDING && state != build_state::FAILED)
    });
    if all_started && !plan.is_empty() {
        insert_delivery(
            tx,
            d_in,
            "duplicate",
            Some("every build this delivery asks for was already started"),
        )?;
        return Ok((0, Admission::Duplicate));
    }
    let row = insert_delivery(tx, d_in, "accepted", skipped_note.as_deref())?;
    let now = d.received_ms;
    let mut accepted = Vec::new();
    for (req, existing) in plan {
        match existing {
            None => {
                tx.prepare_cached(
                    "INSERT INTO builds (delivery, dedup_key, app, sha, project, image_tag, token,
                         state, next_attempt_ms, created_ms, updated_ms, service_key, before_sha,
                         pushed_at, tag)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9, ?10, ?11,
                         COALESCE(?12, ?9 / 1000), ?13)",
                )?
                .execute(params![
                    row,
                    key,
                    req.app.as_str(),
                    req.sha.as_str(),
                    req.project,
                    req.image_tag,
                    token_for(&key, req.app.as_str()),
                    build_state::PENDING,
                    now,
                    req.service_key,
                    req.before,
                    req.pushed_at,
                    req.tag,
                ])?;
                accepted.push(AcceptedBuild {
                    app: req.app,
                    sha: req.sha,
                    build_row: tx.last_insert_rowid(),
                    retry: false,
                });
            }
            Some((id, state)) if state == build_state::PENDING || state == build_state::FAILED => {
                // Never started: the redelivery is a retry. Try again now.
                tx.prepare_cached(
                    "UPDATE builds SET state = ?2, next_attempt_ms = ?3, updated_ms = ?3,
                         attempts = CASE WHEN state = ?4 THEN 0 ELSE attempts END
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    build_state::PENDING,
                    now,
                    build_state::FAILED
                ])?;
                accepted.push(AcceptedBuild {
                    app: req.app,
                    sha: req.sha,
                    build_row: id,
                    retry: true,
                });
            }
            Some(_) => {} // this app's build already started; the others go on
        }
    }
    Ok((row, Admission::Accepted(accepted)))
}

fn pending_from_row(r: &Row<'_>) -> rusqlite::Result<PendingBuild> {
    Ok(PendingBuild {
        id: r.get(0)?,
        delivery_id: r.get(1)?,
        app: r.get(2)?,
        sha: r.get(3)?,
        project: r.get(4)?,
        image_tag: r.get(5)?,
        token: r.get(6)?,
        attempts: r.get(7)?,
        start_requested: r.get::<_, Option<i64>>(8)?.is_some(),
        tag: r.get(9)?,
    })
}

impl SqliteStore {
    /// Journals a delivery and the builds it asks for, deduplicated on (hook id, delivery
    /// id) and app. Returns the delivery's row (0 for a duplicate) and what was decided.
    pub async fn admit(
        &self,
        delivery: NewDelivery,
        verdict: Verdict,
    ) -> Result<(i64, Admission), StoreError> {
        let permit = self.admission_permit()?;
        let incoming = Incoming::new(delivery);
        let mut permit = Some(permit);
        let write = self.write_repeatable(move |tx| {
            // Out of the queue once the writer has it.
            permit.take();
            admit_in(tx, &incoming, verdict.clone())
        });
        let result = match tokio::time::timeout(ADMIT_WAIT, write).await {
            Ok(result) => result,
            // It may still be stored later; a redelivery then dedups against it.
            Err(_) => Err(StoreError::Busy(format!(
                "the journal writer did not commit within {} s",
                ADMIT_WAIT.as_secs()
            ))),
        };
        let outcome = match &result {
            Ok((_, Admission::Pong)) => "pong",
            Ok((_, Admission::Ignored(_))) => "ignored",
            Ok((_, Admission::Rejected(_))) => "rejected",
            Ok((_, Admission::Duplicate)) => "duplicate",
            Ok((_, Admission::Accepted(_))) => "accepted",
            Err(StoreError::Busy(_)) => "busy",
            Err(_) => "error",
        };
        metrics::counter!("slipway_deliveries_total", "outcome" => outcome).increment(1);
        result
    }

    /// Pending builds whose next attempt is due, oldest first.
    pub async fn due_builds(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingBuild>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT b.id, d.delivery_id, b.app, b.sha, b.project, b.image_tag, b.token, b.attempts,
                        b.start_requested_ms, b.tag
                 FROM builds b JOIN deliveries d ON d.id = b.delivery
                 WHERE b.state = ?1 AND b.next_attempt_ms <= ?2
                 ORDER BY b.id LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![build_state::PENDING, now_ms, limit], pending_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// When the earliest pending build is due, if any is pending.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_attempt_ms) FROM builds WHERE state = ?1",
                [build_state::PENDING],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    /// Records that StartBuild is about to be called (so a restart knows to look for a build
    /// that may have been started before the answer was recorded).
    pub async fn build_start_requested(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE builds SET start_requested_ms = ?2, updated_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now_ms])?;
            Ok(())
        })
        .await
    }

    pub async fn build_started(
        &self,
        id: i64,
        build_id: String,
        build_arn: Option<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE builds SET state = ?2, build_id = ?3, build_arn = ?4, reason = NULL,
                     attempts = attempts + 1, updated_ms = ?5
                 WHERE id = ?1 AND state = ?6",
            )?
            .execute(params![
                id,
                build_state::STARTED,
                build_id,
                build_arn,
                now_ms,
                build_state::PENDING
            ])?;
            Ok(())
        })
        .await
    }

    /// A retryable failure: stays pending until `next_attempt_ms`.
    pub async fn build_retry_later(
        &self,
        id: i64,
        reason: String,
        next_attempt_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE builds SET attempts = attempts + 1, reason = ?2, next_attempt_ms = ?3,
                     updated_ms = ?4
                 WHERE id = ?1 AND state = ?5",
            )?
            .execute(params![
                id,
                reason,
                next_attempt_ms,
                now_ms,
                build_state::PENDING
            ])?;
            Ok(())
        })
        .await
    }

    /// A permanent failure: StartBuild will not be called again unless GitHub redelivers.
    pub async fn build_failed_to_start(
        &self,
        id: i64,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE builds SET state = ?2, attempts = attempts + 1, reason = ?3,
                     updated_ms = ?4
                 WHERE id = ?1 AND state = ?5",
            )?
            .execute(params![
                id,
                build_state::FAILED,
                reason,
                now_ms,
                build_state::PENDING
            ])?;
            Ok(())
        })
        .await
    }

    /// The most recent deliveries, newest first, one line per build they asked for.
    pub async fn recent_deliveries(&self, limit: u32) -> Result<Vec<DeliverySummary>, StoreError> {
        self.summaries(None, limit).await
    }

    /// The lines of one delivery (by journal row): what came of it, however old it is.
    pub async fn delivery_summary(&self, row: i64) -> Result<Vec<DeliverySummary>, StoreError> {
        self.summaries(Some(row), 1).await
    }

    /// Delivery lines, newest first: of the newest `limit` deliveries, or of row `only`.
    async fn summaries(
        &self,
        only: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        self.read(move |c| {
            let (sql, which) = match only {
                Some(row) => (ONE_SUMMARY, row),
                None => (RECENT_SUMMARIES, i64::from(limit)),
            };
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt
                .query_map([which], |r| {
                    Ok(DeliverySummary {
                        row: r.get(0)?,
                        received_at: super::format_millis(r.get(1)?),
                        delivery: r.get(2)?,
                        event: r.get(3)?,
                        source: r.get(4)?,
                        outcome: r.get(5)?,
                        app: r.get(6)?,
                        sha: r.get(7)?,
                        state: r.get(8)?,
                        build_id: r.get(9)?,
                        attempts: r.get(10)?,
                        reason: r.get(11)?,
                        deployment: r.get(12)?,
                        deploy_state: r.get(13)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

impl SqliteStore {
    /// A delivery by journal row (digits) or by GitHub delivery id (the newest with that id).
    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let by_row = id.parse::<i64>().ok();
            let rec = c
                .query_row(
                    "SELECT id, delivery_id, hook_id, event, source, actor, replay_of, received_ms,
                            content_type, headers, outcome, reason,
                            (SELECT slipway_body(encoding, body) FROM bodies WHERE bodies.id = deliveries.body_id)
                     FROM deliveries WHERE id = ?1 OR delivery_id = ?2
                     ORDER BY (id = ?1) DESC, id DESC LIMIT 1",
                    params![by_row.unwrap_or(-1), id],
                    |r| {
                        Ok(DeliveryRecord {
                            row: r.get(0)?,
                            delivery: r.get(1)?,
                            hook_id: r.get(2)?,
                            event: r.get(3)?,
                            source: r.get(4)?,
                            actor: r.get(5)?,
                            replay_of: r.get(6)?,
                            received_at: super::format_millis(r.get(7)?),
                            content_type: r.get(8)?,
                            headers: serde_json::from_str(&r.get::<_, String>(9)?)
                                .unwrap_or(serde_json::Value::Null),
                            outcome: r.get(10)?,
                            reason: r.get(11)?,
                            body: r.get(12)?,
                        })
                    },
                )
                .optional()?;
            Ok(rec)
        })
        .await
    }

    /// Full commit SHAs of `app` in the journal that start with `prefix`.
    pub async fn shas_with_prefix(
        &self,
        app: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (app, pattern) = (app.to_owned(), format!("{}%", prefix.to_ascii_lowercase()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sha FROM builds WHERE app = ?1 AND sha LIKE ?2
                 UNION SELECT sha FROM deployments WHERE app = ?1 AND sha LIKE ?2",
            )?;
            let rows = stmt
                .query_map(params![app, pattern], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}
