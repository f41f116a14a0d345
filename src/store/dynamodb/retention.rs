//! Retention in DynamoDB (issue 13's `[journal]` settings, same keys, same meaning):
//! ignored, ping and duplicate deliveries carry `expires` from intake (DynamoDB's TTL deletes
//! them, delivery and body, some time after); bodies older than `keep_bodies_days` are
//! deleted here, except a delivery's whose build or deployment is not finished. Deliveries
//! whose body is still kept sit in the `due` index (`bodies`, by when they were received),
//! so a pass reads only what it may drop.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};

use super::item::{get_n, get_opt_n, get_s, key, pad, s, Item};
use super::items::{build_pk, delivery_pk, deployment_key, due};
use super::{bad_request, sdk_error, DynamoStore};
use crate::config::JournalConfig;
use crate::store::{build_state, deploy_state, Pruned, StoreError};

const DAY_MS: i64 = 24 * 3600 * 1000;

impl DynamoStore {
    /// Drops the bodies `settings` no longer keeps as of `now_ms`, a page at a time. Deliveries
    /// themselves are deleted by DynamoDB's TTL, not counted here.
    pub async fn prune(&self, now_ms: i64, settings: &JournalConfig) -> Result<Pruned, StoreError> {
        let cutoff = now_ms.saturating_sub(settings.keep_bodies_days as i64 * DAY_MS);
        let mut pruned = Pruned::default();
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("due")
                .key_condition_expression("due_pk = :bodies AND due_sk < :cutoff")
                .expression_attribute_values(":bodies", s(due::BODIES))
                .expression_attribute_values(":cutoff", s(pad(cutoff)))
                .limit(100)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            let tied = self.tied(out.items()).await?;
            for d in out.items() {
                let row = get_n(d, "row")?;
                if tied.contains(&row) {
                    continue;
                }
                self.drop_body(row).await?;
                pruned.bodies_dropped += 1;
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(pruned);
            }
        }
    }

    /// Deletes delivery `row`'s body and takes the delivery out of the retention index.
    async fn drop_body(&self, row: i64) -> Result<(), StoreError> {
        let delete = Delete::builder()
            .table_name(self.table())
            .set_key(Some(key(delivery_pk(row), "body")))
            .build()
            .map_err(bad_request)?;
        let update = Update::builder()
            .table_name(self.table())
            .set_key(Some(key(delivery_pk(row), "delivery")))
            .update_expression("REMOVE due_pk, due_sk")
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(bad_request)?;
        // A delivery TTL deleted meanwhile has nothing left to drop.
        self.transact(vec![
            TransactWriteItem::builder().delete(delete).build(),
            TransactWriteItem::builder().update(update).build(),
        ])
        .await
        .map(|_| ())
    }

    /// The rows among `deliveries` that are tied: one of the builds it made or repeated, or
    /// that build's deployment, is not finished (as the SQLite engine's `TIED`).
    async fn tied(&self, deliveries: &[Item]) -> Result<Vec<i64>, StoreError> {
        let mut builds_of: HashMap<i64, Vec<i64>> = HashMap::new();
        for d in deliveries {
            if let Some(aws_sdk_dynamodb::types::AttributeValue::Ns(ns)) = d.get("builds") {
                let ids = ns.iter().filter_map(|n| n.parse().ok()).collect();
                builds_of.insert(get_n(d, "row")?, ids);
            }
        }
        let keys = builds_of
            .values()
            .flatten()
            .map(|id| key(build_pk(*id), "build"))
            .collect();
        let builds: HashMap<i64, Item> = self
            .batch_get(keys)
            .await?
            .into_iter()
            .map(|b| Ok((get_n(&b, "row")?, b)))
            .collect::<Result<_, StoreError>>()?;
        let deployment_keys = builds
            .values()
            .filter_map(|b| get_opt_n(b, "deployment").transpose())
            .map(|id| Ok(deployment_key(id?)))
            .collect::<Result<_, StoreError>>()?;
        let deployments: HashMap<i64, String> = self
            .batch_get(deployment_keys)
            .await?
            .iter()
            .map(|d| Ok((get_n(d, "id")?, get_s(d, "state")?)))
            .collect::<Result<_, StoreError>>()?;
        let unfinished = |b: &Item| -> Result<bool, StoreError> {
            let state = get_s(b, "state")?;
            let deployment = get_opt_n(b, "deployment")?;
            Ok(state == build_state::PENDING
                || state == build_state::STARTED
                || (state == build_state::SUCCEEDED && deployment.is_none())
                || deployment
                    .and_then(|id| deployments.get(&id))
                    .is_some_and(|s| !deploy_state::is_terminal(s)))
        };
        let mut tied = Vec::new();
        for (row, ids) in builds_of {
            for id in ids {
                if let Some(b) = builds.get(&id) {
                    if unfinished(b)? {
                        tied.push(row);
                        break;
                    }
                }
            }
        }
        Ok(tied)
    }
}
