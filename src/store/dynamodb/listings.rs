//! The DynamoDB engine's delivery listings (`slipway deliveries`, the API): each delivery
//! with the builds its key made and their deployments, read in batches; and the commits an
//! app has, by prefix.

use std::collections::HashMap;

use super::item::{get_n, get_opt_n, get_opt_s, get_s, key, s, Item};
use super::items::{build_pk, delivery_pk, deployment_key, recent};
use super::{sdk_error, DynamoStore};
use crate::store::{
    format_millis, Admission, DeliverySummary, NewDelivery, Run, RunBuild, RunDeployment,
    StoreError, Verdict,
};

impl DynamoStore {
    /// Stores many deliveries in order, one after the other.
    pub async fn admit_all(
        &self,
        deliveries: Vec<(NewDelivery, Verdict)>,
    ) -> Result<Vec<(i64, Admission)>, StoreError> {
        let mut admitted = Vec::with_capacity(deliveries.len());
        for (delivery, verdict) in deliveries {
            admitted.push(self.admit(delivery, verdict).await?);
        }
        Ok(admitted)
    }

    /// The most recent deliveries, newest first, one line per build they asked for.
    pub async fn recent_deliveries(&self, limit: u32) -> Result<Vec<DeliverySummary>, StoreError> {
        let query = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("recent")
            .key_condition_expression("list_pk = :kind")
            .expression_attribute_values(":kind", s(recent::DELIVERY))
            .scan_index_forward(false);
        let deliveries = self.query_items(query, Some(limit as usize)).await?;
        self.summaries(deliveries).await
    }

    /// One delivery's lines, by row.
    pub async fn delivery_summary(&self, row: i64) -> Result<Vec<DeliverySummary>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key(delivery_pk(row), "delivery")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        self.summaries(out.item().cloned().into_iter().collect())
            .await
    }

    /// The lines of `deliveries` (in their order): their builds and those builds' deployments
    /// read with `BatchGetItem`, two rounds whatever the number of deliveries.
    async fn summaries(&self, deliveries: Vec<Item>) -> Result<Vec<DeliverySummary>, StoreError> {
        let builds_of = |d: &Item| -> Vec<i64> {
            let mut ids: Vec<i64> = match d.get("builds") {
                Some(aws_sdk_dynamodb::types::AttributeValue::Ns(ns)) => {
                    ns.iter().filter_map(|n| n.parse().ok()).collect()
                }
                _ => Vec::new(),
            };
            ids.sort();
            ids
        };
        let build_keys: Vec<Item> = deliveries
            .iter()
            .flat_map(builds_of)
            .map(|id| key(build_pk(id), "build"))
            .collect();
        let builds: HashMap<i64, Item> = self
            .batch_get(build_keys)
            .await?
            .into_iter()
            .map(|b| Ok((get_n(&b, "row")?, b)))
            .collect::<Result<_, StoreError>>()?;
        let deployment_keys: Vec<Item> = builds
            .values()
            .filter_map(|b| get_opt_n(b, "deployment").transpose())
            .map(|id| Ok(deployment_key(id?)))
            .collect::<Result<_, StoreError>>()?;
        let deployments: HashMap<i64, Item> = self
            .batch_get(deployment_keys)
            .await?
            .into_iter()
            .map(|d| Ok((get_n(&d, "id")?, d)))
            .collect::<Result<_, StoreError>>()?;
        let mut lines = Vec::new();
        for d in &deliveries {
            let outcome = get_s(d, "outcome")?;
            let line = DeliverySummary {
                row: get_n(d, "row")?,
                received_at: format_millis(get_n(d, "received_ms")?),
                delivery: get_s(d, "delivery_id")?,
                event: get_s(d, "event")?,
                source: get_s(d, "source")?,
                outcome: outcome.clone(),
                app: None,
                sha: None,
                state: None,
                build_id: None,
                attempts: None,
                reason: get_opt_s(d, "reason")?,
                deployment: None,
                deploy_state: None,
            };
            let own: Vec<&Item> = if outcome == "accepted" || outcome == "duplicate" {
                builds_of(d)
                    .iter()
                    .filter_map(|id| builds.get(id))
                    .collect()
            } else {
                Vec::new()
            };
            if own.is_empty() {
                lines.push(line);
                continue;
            }
            for b in own {
                let dp = get_opt_n(b, "deployment")?.and_then(|id| deployments.get(&id));
                let dp_reason = match dp {
                    Some(dp) => get_opt_s(dp, "reason")?,
                    None => None,
                };
                lines.push(DeliverySummary {
                    app: Some(get_s(b, "app")?),
                    sha: Some(get_s(b, "sha")?),
                    state: Some(get_s(b, "state")?),
                    build_id: get_opt_s(b, "build_id")?,
                    attempts: Some(get_n(b, "attempts")? as u32),
                    reason: dp_reason
                        .or(get_opt_s(b, "reason")?)
                        .or(line.reason.clone()),
                    deployment: dp.map(|dp| get_n(dp, "id")).transpose()?,
                    deploy_state: dp.map(|dp| get_s(dp, "state")).transpose()?,
                    ..line.clone()
                });
            }
        }
        Ok(lines)
    }

    /// Full commit SHAs of `app` (built or deployed) that start with `prefix`: the app's
    /// partition of commit items, by sort key prefix.
    pub async fn shas_with_prefix(
        &self,
        app: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut shas = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client()
                .query()
                .table_name(self.table())
                .expression_attribute_values(":app", s(format!("commit#{app}")))
                .set_exclusive_start_key(start);
            // A key condition cannot name an empty string: no prefix is every commit.
            query = if prefix.is_empty() {
                query.key_condition_expression("pk = :app")
            } else {
                query
                    .key_condition_expression("pk = :app AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix.to_ascii_lowercase()))
            };
            let out = query
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                shas.push(get_s(item, "sk")?);
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(shas);
            }
        }
    }
}

/// Who pushed, from a push payload's `pusher.name`, read by its JSON type as the SQLite engine
/// reads it: text as it is, a number as text, anything else as nothing (issue 23 item 5).
fn pusher_name(body: &[u8]) -> Option<String> {
    let payload: serde_json::Value = serde_json::from_slice(body).ok()?;
    match payload.get("pusher")?.get("name")? {
        serde_json::Value::String(name) => Some(name.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl DynamoStore {
    /// The newest `limit` pipeline runs, newest first: builds with the delivery that asked for
    /// them and their deployment, and deployments no build started (operator deploys,
    /// rollbacks).
    pub async fn recent_runs(&self, limit: u32) -> Result<Vec<Run>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let builds = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("recent")
            .key_condition_expression("list_pk = :kind")
            .expression_attribute_values(":kind", s(recent::BUILD))
            .scan_index_forward(false)
            .limit(limit.min(1000) as i32)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        let builds = builds.items();
        // Their deliveries (with bodies, for who pushed) and deployments, in batches.
        let mut keys = Vec::new();
        for b in builds {
            let row = get_n(b, "delivery_row")?;
            keys.push(key(delivery_pk(row), "delivery"));
            keys.push(key(delivery_pk(row), "body"));
            if let Some(id) = get_opt_n(b, "deployment")? {
                keys.push(deployment_key(id));
            }
        }
        let mut deliveries: HashMap<String, Item> = HashMap::new();
        let mut bodies: HashMap<String, Item> = HashMap::new();
        let mut deployments: HashMap<i64, Item> = HashMap::new();
        for item in self.batch_get(keys).await? {
            match get_s(&item, "sk")?.as_str() {
                "delivery" => {
                    deliveries.insert(get_s(&item, "pk")?, item);
                }
                "body" => {
                    bodies.insert(get_s(&item, "pk")?, item);
                }
                _ => {
                    deployments.insert(get_n(&item, "id")?, item);
                }
            }
        }
        let run_deployment = |dp: &Item| -> Result<RunDeployment, StoreError> {
            Ok(RunDeployment {
                id: get_n(dp, "id")?,
                state: get_s(dp, "state")?,
                reason: get_opt_s(dp, "reason")?,
                log_link: get_opt_s(dp, "log_link")?,
                updated_ms: get_n(dp, "updated_ms")?,
            })
        };
        let mut runs = Vec::new();
        for b in builds {
            let pk = delivery_pk(get_n(b, "delivery_row")?);
            let Some(d) = deliveries.get(&pk) else {
                continue;
            };
            let source = get_s(d, "source")?;
            let actor = match get_opt_s(d, "actor")? {
                Some(actor) => Some(actor),
                None => match bodies.get(&pk) {
                    Some(body) => pusher_name(&self.read_body(body).await?),
                    None => None,
                },
            };
            let deployment = match get_opt_n(b, "deployment")?.and_then(|id| deployments.get(&id)) {
                Some(dp) => Some(run_deployment(dp)?),
                None => None,
            };
            runs.push(Run {
                app: get_s(b, "app")?,
                sha: get_s(b, "sha")?,
                trigger: if source == "github" {
                    "push".to_owned()
                } else {
                    source
                },
                actor,
                started_ms: get_n(d, "received_ms")?,
                delivery: Some(get_s(d, "delivery_id")?),
                build: Some(RunBuild {
                    state: get_s(b, "state")?,
                    build_id: get_opt_s(b, "build_id")?,
                    log_link: get_opt_s(b, "log_link")?,
                    reason: get_opt_s(b, "reason")?,
                    updated_ms: get_n(b, "updated_ms")?,
                }),
                deployment,
            });
        }
        // Deployments no build started, newest first.
        let mut start = None;
        let mut others = 0;
        while others < limit {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("recent")
                .key_condition_expression("list_pk = :kind")
                .filter_expression("attribute_not_exists(build_row)")
                .expression_attribute_values(":kind", s("deployment"))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for dp in out.items() {
                if others == limit {
                    break;
                }
                others += 1;
                runs.push(Run {
                    app: get_s(dp, "app")?,
                    sha: get_s(dp, "sha")?,
                    trigger: get_s(dp, "trigger")?,
                    actor: get_opt_s(dp, "actor")?,
                    started_ms: get_n(dp, "created_ms")?,
                    delivery: get_opt_s(dp, "delivery_id")?,
                    build: None,
                    deployment: Some(run_deployment(dp)?),
                });
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        runs.truncate(limit as usize);
        Ok(runs)
    }
}
