//! Promotions in DynamoDB (issue 27; `docs/dynamodb.md`): one item per promotion, listed in
//! the `recent` index (`promotion`) and, while it waits, in the `due` index (`promotion`).
//! Two small items keep the SQLite engine's guarantees: `promoted#<app>#<source>#<tag>` (one
//! promotion per source deploy and tag, `attribute_not_exists`) and `waiting#<app>` (the one
//! promotion of an app that waits, read consistently, so a newer one supersedes it in the
//! same transaction).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, TransactWriteItem, Update};

use super::item::{get_n, get_opt_n, get_opt_s, get_s, key, n, pad, s, Item};
use super::items::{self, due, recent};
use super::{bad_request, sdk_error, DynamoStore};
use crate::store::promotions::*;
use crate::store::StoreError;

/// Conflicting writers (two promotions of one app at once): decided again this many times.
const TRIES: usize = 3;

fn promotion_key(id: i64) -> Item {
    key(format!("promotion#{id}"), "promotion")
}

fn source_key(app: &str, source_deployment: i64, tag: Option<&str>) -> Item {
    key(
        format!("promoted#{app}#{source_deployment}#{}", tag.unwrap_or("")),
        "promoted",
    )
}

fn waiting_key(app: &str) -> Item {
    key(format!("waiting#{app}"), "waiting")
}

/// The item of `p` as it is now, with the `due` keys while it waits.
pub(crate) fn promotion_item(p: &Promotion) -> Item {
    let mut item = promotion_key(p.id);
    let fields: [(&str, Option<AttributeValue>); 20] = [
        ("id", Some(n(p.id))),
        ("app", Some(s(&p.app))),
        ("source_app", Some(s(&p.source_app))),
        ("source_deployment", Some(n(p.source_deployment))),
        ("sha", Some(s(&p.sha))),
        ("image_digest", Some(s(&p.image_digest))),
        ("image_tag", Some(s(&p.image_tag))),
        ("tag", p.tag.as_deref().map(s)),
        ("service_key", Some(s(&p.service_key))),
        ("state", Some(s(&p.state))),
        ("reason", p.reason.as_deref().map(s)),
        ("decided_by", p.decided_by.as_deref().map(s)),
        ("decided_ms", p.decided_ms.map(n)),
        ("expires_ms", Some(n(p.expires_ms))),
        ("deployment", p.deployment.map(n)),
        ("created_ms", Some(n(p.created_ms))),
        ("updated_ms", Some(n(p.updated_ms))),
        ("list_pk", Some(s(recent::PROMOTION))),
        ("list_sk", Some(s(pad(p.id)))),
        (
            "due_pk",
            (p.state == promotion_state::AWAITING_APPROVAL).then(|| s(due::PROMOTION)),
        ),
    ];
    for (name, value) in fields.into_iter() {
        if let Some(v) = value {
            item.insert(name.to_owned(), v);
        }
    }
    if p.state == promotion_state::AWAITING_APPROVAL {
        item.insert("due_sk".to_owned(), s(pad(p.id)));
    }
    item
}

/// Every item a promotion as it is now makes (`slipway store copy`): the promotion, its
/// once-per-source key, and the app's waiting pointer while it waits.
pub(crate) fn promotion_items(p: &Promotion) -> Vec<Item> {
    let mut marker = source_key(&p.app, p.source_deployment, p.tag.as_deref());
    marker.insert("promotion".into(), n(p.id));
    let mut out = vec![promotion_item(p), marker];
    if p.state == promotion_state::AWAITING_APPROVAL {
        let mut pointer = waiting_key(&p.app);
        pointer.insert("promotion".into(), n(p.id));
        out.push(pointer);
    }
    out
}

fn promotion_from(item: &Item) -> Result<Promotion, StoreError> {
    Ok(Promotion {
        id: get_n(item, "id")?,
        app: get_s(item, "app")?,
        source_app: get_s(item, "source_app")?,
        source_deployment: get_n(item, "source_deployment")?,
        sha: get_s(item, "sha")?,
        image_digest: get_s(item, "image_digest")?,
        image_tag: get_s(item, "image_tag")?,
        tag: get_opt_s(item, "tag")?,
        service_key: get_s(item, "service_key")?,
        state: get_s(item, "state")?,
        reason: get_opt_s(item, "reason")?,
        decided_by: get_opt_s(item, "decided_by")?,
        decided_ms: get_opt_n(item, "decided_ms")?,
        expires_ms: get_n(item, "expires_ms")?,
        deployment: get_opt_n(item, "deployment")?,
        created_ms: get_n(item, "created_ms")?,
        updated_ms: get_n(item, "updated_ms")?,
    })
}

impl DynamoStore {
    /// A transaction item: `promotion` set to `to` with its `state`, if it still waits.
    fn leave_waiting(&self, to: &Promotion) -> Result<TransactWriteItem, StoreError> {
        let mut values = HashMap::from([
            (":st".to_owned(), s(&to.state)),
            (":waiting".to_owned(), s(promotion_state::AWAITING_APPROVAL)),
            (":now".to_owned(), n(to.updated_ms)),
        ]);
        let mut set = vec!["#st = :st", "updated_ms = :now"];
        for (name, value) in [
            ("reason", to.reason.as_deref().map(s)),
            ("decided_by", to.decided_by.as_deref().map(s)),
            ("decided_ms", to.decided_ms.map(n)),
            ("deployment", to.deployment.map(n)),
        ] {
            if let Some(v) = value {
                values.insert(format!(":{name}"), v);
                set.push(match name {
                    "reason" => "reason = :reason",
                    "decided_by" => "decided_by = :decided_by",
                    "decided_ms" => "decided_ms = :decided_ms",
                    _ => "deployment = :deployment",
                });
            }
        }
        let update = Update::builder()
            .table_name(self.table())
            .set_key(Some(promotion_key(to.id)))
            .update_expression(format!("SET {} REMOVE due_pk, due_sk", set.join(", ")))
            .condition_expression("#st = :waiting")
            .expression_attribute_names("#st", "state")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(bad_request)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    pub async fn create_promotion(
        &self,
        p: NewPromotion,
        now_ms: i64,
    ) -> Result<PromotionCreated, StoreError> {
        for _ in 0..TRIES {
            let source = source_key(&p.app, p.source_deployment, p.tag.as_deref());
            if let Some(marker) = self.get(source.clone()).await? {
                let id = get_n(&marker, "promotion")?;
                if let Some(existing) = self.promotion(id).await? {
                    return Ok(PromotionCreated::Exists(existing));
                }
            }
            let waiting = match self.get(waiting_key(&p.app)).await? {
                Some(pointer) => self.promotion(get_n(&pointer, "promotion")?).await?,
                None => None,
            };
            let id = self.take_ids(1).await?;
            let promotion = Promotion {
                id,
                app: p.app.clone(),
                source_app: p.source_app.clone(),
                source_deployment: p.source_deployment,
                sha: p.sha.clone(),
                image_digest: p.image_digest.clone(),
                image_tag: p.image_tag.clone(),
                tag: p.tag.clone(),
                service_key: p.service_key.clone(),
                state: promotion_state::AWAITING_APPROVAL.to_owned(),
                reason: None,
                decided_by: None,
                decided_ms: None,
                expires_ms: p.expires_ms,
                deployment: None,
                created_ms: now_ms,
                updated_ms: now_ms,
            };
            let mut marker = source.clone();
            marker.insert("promotion".into(), n(id));
            let mut pointer = waiting_key(&p.app);
            pointer.insert("promotion".into(), n(id));
            let (pointer_condition, pointer_values) = match &waiting {
                Some(old) => (
                    "promotion = :old",
                    Some(HashMap::from([(":old".to_owned(), n(old.id))])),
                ),
                None => ("attribute_not_exists(pk)", None),
            };
            let mut writes = vec![
                self.put(
                    promotion_item(&promotion),
                    Some("attribute_not_exists(pk)"),
                    None,
                )?,
                self.put(marker, Some("attribute_not_exists(pk)"), None)?,
                self.put(pointer, Some(pointer_condition), pointer_values)?,
            ];
            let mut superseded = Vec::new();
            if let Some(old) = waiting.filter(|o| o.state == promotion_state::AWAITING_APPROVAL) {
                let mut old = old;
                old.state = promotion_state::SUPERSEDED.to_owned();
                old.reason = Some(format!(
                    "superseded by promotion {id} of {}",
                    &p.sha[..p.sha.len().min(7)]
                ));
                old.updated_ms = now_ms;
                writes.push(self.leave_waiting(&old)?);
                superseded.push(old);
            }
            if self.transact(writes).await? {
                return Ok(PromotionCreated::New {
                    promotion,
                    superseded,
                });
            }
            // Another writer got there first: decide again from what it wrote.
        }
        Err(StoreError::Unavailable {
            reason: format!(
                "promotions of {} were being written concurrently; try again",
                p.app
            ),
        })
    }

    pub async fn decide_promotion(
        &self,
        id: i64,
        decision: PromotionDecision,
        now_ms: i64,
    ) -> Result<PromotionDecided, StoreError> {
        let Some(mut p) = self.promotion(id).await? else {
            return Ok(PromotionDecided::NotFound);
        };
        if p.state != promotion_state::AWAITING_APPROVAL {
            return Ok(PromotionDecided::NotWaiting(p));
        }
        p.updated_ms = now_ms;
        let mut writes = Vec::new();
        match decision {
            PromotionDecision::Approve { by, mut deployment } => {
                deployment.promotion = Some(id);
                let commit = items::commit_item(&deployment.app, &deployment.sha);
                let (made, item) = self.deployment_item(*deployment, now_ms).await?;
                writes.push(self.put(item, Some("attribute_not_exists(pk)"), None)?);
                writes.push(self.put(commit, None, None)?);
                p.state = promotion_state::APPROVED.to_owned();
                p.decided_by = Some(by);
                p.decided_ms = Some(now_ms);
                p.deployment = Some(made);
            }
            PromotionDecision::Reject { by, reason } => {
                p.state = promotion_state::REJECTED.to_owned();
                p.decided_by = Some(by);
                p.decided_ms = Some(now_ms);
                p.reason = Some(reason);
            }
            PromotionDecision::Expire { reason } => {
                p.state = promotion_state::EXPIRED.to_owned();
                p.reason = Some(reason);
            }
        }
        writes.push(self.leave_waiting(&p)?);
        let delete = Delete::builder()
            .table_name(self.table())
            .set_key(Some(waiting_key(&p.app)))
            .condition_expression("attribute_not_exists(pk) OR promotion = :id")
            .expression_attribute_values(":id", n(id))
            .build()
            .map_err(bad_request)?;
        writes.push(TransactWriteItem::builder().delete(delete).build());
        if self.transact(writes).await? {
            return Ok(PromotionDecided::Done(p));
        }
        // Decided (or superseded) by someone else meanwhile.
        match self.promotion(id).await? {
            Some(now) => Ok(PromotionDecided::NotWaiting(now)),
            None => Ok(PromotionDecided::NotFound),
        }
    }

    pub async fn promotion(&self, id: i64) -> Result<Option<Promotion>, StoreError> {
        self.get(promotion_key(id))
            .await?
            .as_ref()
            .map(promotion_from)
            .transpose()
    }

    pub async fn promotions(
        &self,
        app: Option<String>,
        limit: u32,
    ) -> Result<Vec<Promotion>, StoreError> {
        self.recent_of_app(recent::PROMOTION, app.as_deref(), limit)
            .await?
            .iter()
            .map(promotion_from)
            .collect()
    }

    pub async fn awaiting_promotions(&self) -> Result<Vec<Promotion>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("due")
                .key_condition_expression("due_pk = :kind")
                .expression_attribute_values(":kind", s(due::PROMOTION))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                let p = promotion_from(item)?;
                // The index is eventually consistent: only what still waits.
                if p.state == promotion_state::AWAITING_APPROVAL {
                    found.push(p);
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    pub async fn waiting_promotion(&self, app: String) -> Result<Option<Promotion>, StoreError> {
        let Some(pointer) = self.get(waiting_key(&app)).await? else {
            return Ok(None);
        };
        Ok(self
            .promotion(get_n(&pointer, "promotion")?)
            .await?
            .filter(|p| p.state == promotion_state::AWAITING_APPROVAL))
    }

    pub async fn promotion_of_source(
        &self,
        app: String,
        source_deployment: i64,
    ) -> Result<Option<Promotion>, StoreError> {
        match self.get(source_key(&app, source_deployment, None)).await? {
            Some(marker) => self.promotion(get_n(&marker, "promotion")?).await,
            None => Ok(None),
        }
    }
}
