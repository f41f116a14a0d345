//! Promotions in the journal (issue 27): one row each, unique per (app, source deployment,
//! tag); an approval writes the promotion and its deployment in one transaction.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::deployments::insert_deployment;
use super::{SqliteStore, StoreError};
use crate::store::promotions::*;

const COLUMNS: &str = "id, app, source_app, source_deployment, sha, image_digest, image_tag, tag,
    service_key, state, reason, decided_by, decided_ms, expires_ms, deployment, created_ms,
    updated_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Promotion> {
    Ok(Promotion {
        id: r.get(0)?,
        app: r.get(1)?,
        source_app: r.get(2)?,
        source_deployment: r.get(3)?,
        sha: r.get(4)?,
        image_digest: r.get(5)?,
        image_tag: r.get(6)?,
        tag: r.get(7)?,
        service_key: r.get(8)?,
        state: r.get(9)?,
        reason: r.get(10)?,
        decided_by: r.get(11)?,
        decided_ms: r.get(12)?,
        expires_ms: r.get(13)?,
        deployment: r.get(14)?,
        created_ms: r.get(15)?,
        updated_ms: r.get(16)?,
    })
}

fn by_id(c: &Connection, id: i64) -> Result<Option<Promotion>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM promotions WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?)
}

fn create(c: &Connection, p: &NewPromotion, now: i64) -> Result<PromotionCreated, StoreError> {
    let existing = c
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM promotions
                 WHERE app = ?1 AND source_deployment = ?2 AND COALESCE(tag, '') = ?3"
            ),
            params![p.app, p.source_deployment, p.tag.as_deref().unwrap_or("")],
            from_row,
        )
        .optional()?;
    if let Some(existing) = existing {
        return Ok(PromotionCreated::Exists(existing));
    }
    c.execute(
        "INSERT INTO promotions (app, source_app, source_deployment, sha, image_digest, image_tag,
             tag, service_key, state, expires_ms, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        params![
            p.app,
            p.source_app,
            p.source_deployment,
            p.sha,
            p.image_digest,
            p.image_tag,
            p.tag,
            p.service_key,
            promotion_state::AWAITING_APPROVAL,
            p.expires_ms,
            now
        ],
    )?;
    let id = c.last_insert_rowid();
    let older: Vec<i64> = {
        let mut stmt = c.prepare_cached(
            "SELECT id FROM promotions WHERE app = ?1 AND state = ?2 AND id < ?3 ORDER BY id",
        )?;
        let ids = stmt
            .query_map(
                params![p.app, promotion_state::AWAITING_APPROVAL, id],
                |r| r.get(0),
            )?
            .collect::<Result<Vec<i64>, _>>()?;
        ids
    };
    let mut superseded = Vec::with_capacity(older.len());
    for old in older {
        c.execute(
            "UPDATE promotions SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
            params![
                old,
                promotion_state::SUPERSEDED,
                format!("superseded by promotion {id} of {}", short(&p.sha)),
                now
            ],
        )?;
        superseded.extend(by_id(c, old)?);
    }
    let promotion =
        by_id(c, id)?.ok_or_else(|| StoreError::Invalid(format!("promotion {id} vanished")))?;
    Ok(PromotionCreated::New {
        promotion,
        superseded,
    })
}

fn decide(
    c: &Connection,
    id: i64,
    decision: &PromotionDecision,
    now: i64,
) -> Result<PromotionDecided, StoreError> {
    let Some(p) = by_id(c, id)? else {
        return Ok(PromotionDecided::NotFound);
    };
    if p.state != promotion_state::AWAITING_APPROVAL {
        return Ok(PromotionDecided::NotWaiting(p));
    }
    match decision {
        PromotionDecision::Approve { by, deployment } => {
            let mut deployment = (**deployment).clone();
            deployment.promotion = Some(id);
            let made = insert_deployment(c, &deployment, now)?;
            c.execute(
                "UPDATE promotions SET state = ?2, decided_by = ?3, decided_ms = ?4,
                     deployment = ?5, updated_ms = ?4
                 WHERE id = ?1",
                params![id, promotion_state::APPROVED, by, now, made],
            )?;
        }
        PromotionDecision::Reject { by, reason } => {
            c.execute(
                "UPDATE promotions SET state = ?2, decided_by = ?3, decided_ms = ?4, reason = ?5,
                     updated_ms = ?4
                 WHERE id = ?1",
                params![id, promotion_state::REJECTED, by, now, reason],
            )?;
        }
        PromotionDecision::Expire { reason } => {
            c.execute(
                "UPDATE promotions SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, promotion_state::EXPIRED, reason, now],
            )?;
        }
    }
    let now_is =
        by_id(c, id)?.ok_or_else(|| StoreError::Invalid(format!("promotion {id} vanished")))?;
    Ok(PromotionDecided::Done(now_is))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

impl SqliteStore {
    pub async fn create_promotion(
        &self,
        p: NewPromotion,
        now_ms: i64,
    ) -> Result<PromotionCreated, StoreError> {
        self.write(move |c| create(c, &p, now_ms)).await
    }

    pub async fn decide_promotion(
        &self,
        id: i64,
        decision: PromotionDecision,
        now_ms: i64,
    ) -> Result<PromotionDecided, StoreError> {
        self.write(move |c| decide(c, id, &decision, now_ms)).await
    }

    pub async fn promotion(&self, id: i64) -> Result<Option<Promotion>, StoreError> {
        self.read(move |c| by_id(c, id)).await
    }

    pub async fn promotions(
        &self,
        app: Option<String>,
        limit: u32,
    ) -> Result<Vec<Promotion>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM promotions WHERE ?1 IS NULL OR app = ?1
                 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![app, limit], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn awaiting_promotions(&self) -> Result<Vec<Promotion>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM promotions WHERE state = ?1 ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([promotion_state::AWAITING_APPROVAL], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn waiting_promotion(&self, app: String) -> Result<Option<Promotion>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM promotions WHERE app = ?1 AND state = ?2
                     ORDER BY id DESC LIMIT 1"
                ),
                params![app, promotion_state::AWAITING_APPROVAL],
                from_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn promotion_of_source(
        &self,
        app: String,
        source_deployment: i64,
    ) -> Result<Option<Promotion>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM promotions
                     WHERE app = ?1 AND source_deployment = ?2 AND tag IS NULL"
                ),
                params![app, source_deployment],
                from_row,
            )
            .optional()?)
        })
        .await
    }
}
