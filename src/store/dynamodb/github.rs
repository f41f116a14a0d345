//! The DynamoDB engine's GitHub records (issue 11): the GitHub deployment behind each slipway
//! deployment, and the deliveries slipway asked GitHub to redeliver.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{get_n, get_opt_n, get_opt_s, get_s, n, opt_n, opt_s, pad, s, Item};
use super::items::{self, github_key, look, recent, recovery_key};
use super::{sdk_error, DynamoStore};
use crate::store::{
    format_millis, GithubDeployment, NewRecovery, RecoveryRecord, RecoveryState, StoreError,
};

fn github_from(item: &Item) -> Result<GithubDeployment, StoreError> {
    Ok(GithubDeployment {
        deployment: get_n(item, "deployment")?,
        repository: get_s(item, "repository")?,
        github_id: get_n(item, "github_id")?,
        state: get_s(item, "state")?,
    })
}

/// Whether an SDK error is a failed condition (the item was not there).
fn condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

impl DynamoStore {
    /// The GitHub deployment made for slipway deployment `deployment`, if any.
    pub async fn github_deployment(
        &self,
        deployment: i64,
    ) -> Result<Option<GithubDeployment>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(github_key(deployment)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        out.item().map(github_from).transpose()
    }

    /// Records (or updates: a new GitHub id and state) the GitHub deployment of `deployment`.
    pub async fn record_github_deployment(
        &self,
        deployment: i64,
        app: String,
        d: GithubDeployment,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // As the SQLite engine's upsert: the app and repository are those first recorded.
        self.client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(github_key(deployment)))
            .update_expression(
                "SET deployment = :d, app = if_not_exists(app, :app), \
                 repository = if_not_exists(repository, :repo), github_id = :gid, #st = :st, \
                 created_ms = if_not_exists(created_ms, :now), updated_ms = :now, \
                 list_pk = if_not_exists(list_pk, :list), list_sk = :lsk",
            )
            .expression_attribute_names("#st", "state")
            .set_expression_attribute_values(Some(HashMap::from([
                (":d".to_owned(), n(deployment)),
                (":app".to_owned(), s(&app)),
                (":repo".to_owned(), s(d.repository)),
                (":gid".to_owned(), n(d.github_id)),
                (":st".to_owned(), s(d.state)),
                (":now".to_owned(), n(now_ms)),
                (":list".to_owned(), s(recent::github(&app))),
                (":lsk".to_owned(), s(pad(deployment))),
            ])))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB UpdateItem", e))?;
        Ok(())
    }

    pub async fn set_github_deployment_state(
        &self,
        deployment: i64,
        state: &'static str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let updated = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(github_key(deployment)))
            .update_expression("SET #st = :st, updated_ms = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":st", s(state))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(condition_failed) => Ok(()),
            Err(e) => Err(sdk_error("DynamoDB UpdateItem", e)),
        }
    }

    /// The app's GitHub deployments older than `deployment` still shown as live (`success`),
    /// oldest first: the app's partition of the `recent` index, read below `deployment`.
    pub async fn replaced_github_deployments(
        &self,
        app: String,
        deployment: i64,
    ) -> Result<Vec<GithubDeployment>, StoreError> {
        let query = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("recent")
            .key_condition_expression("list_pk = :app AND list_sk < :below")
            .filter_expression("#st = :success")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":app", s(recent::github(&app)))
            .expression_attribute_values(":below", s(pad(deployment)))
            .expression_attribute_values(":success", s("success"));
        self.query_items(query, None)
            .await?
            .iter()
            .map(github_from)
            .collect()
    }

    /// What the store knows of delivery `delivery_id` of hook `hook_id`: held (received), asked
    /// for, or unknown.
    pub async fn delivery_recovery_state(
        &self,
        hook_id: String,
        delivery_id: String,
    ) -> Result<RecoveryState, StoreError> {
        // Deliveries with this GUID (the `lookup` index), of this hook.
        let held = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("lookup")
            .key_condition_expression("look_pk = :guid")
            .filter_expression("hook_id = :hook")
            .expression_attribute_values(":guid", s(look::guid(&delivery_id)))
            .expression_attribute_values(":hook", s(&hook_id))
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        if held.count() > 0 {
            return Ok(RecoveryState::Held);
        }
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(recovery_key(&hook_id, &delivery_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        Ok(match out.item() {
            None => RecoveryState::Unknown,
            Some(item) => RecoveryState::Asked {
                attempt_id: get_n(item, "attempt_id")?,
                requested: get_s(item, "outcome")? == "requested",
                requests: get_n(item, "requests")?,
            },
        })
    }

    /// Records a recovery. A failed request may be tried again later; its record is updated
    /// and counts the requests.
    pub async fn record_recovery(&self, r: NewRecovery, now_ms: i64) -> Result<(), StoreError> {
        let id = self.take_ids(1).await?;
        let values: HashMap<String, AttributeValue> = HashMap::from([
            (":id".to_owned(), n(id)),
            (":hook".to_owned(), s(&r.hook_id)),
            (":guid".to_owned(), s(&r.delivery_id)),
            (":attempt".to_owned(), n(r.attempt_id)),
            (":event".to_owned(), s(r.event)),
            (":status".to_owned(), opt_n(r.status_code)),
            (":delivered".to_owned(), n(r.delivered_ms)),
            (":actor".to_owned(), s(r.actor)),
            (":outcome".to_owned(), s(r.outcome)),
            (":reason".to_owned(), opt_s(r.reason)),
            (":now".to_owned(), n(now_ms)),
            (":one".to_owned(), n(1)),
            (":list".to_owned(), s(recent::RECOVERY)),
            (
                ":lsk".to_owned(),
                s(items::recovery_list_sk(now_ms, &r.hook_id, &r.delivery_id)),
            ),
        ]);
        // The first record keeps its id and its event and actor, as the SQLite engine's upsert.
        self.client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(recovery_key(&r.hook_id, &r.delivery_id)))
            .update_expression(
                "SET id = if_not_exists(id, :id), hook_id = :hook, delivery_id = :guid, \
                 attempt_id = :attempt, event = if_not_exists(event, :event), \
                 status_code = :status, delivered_ms = :delivered, \
                 actor = if_not_exists(actor, :actor), outcome = :outcome, reason = :reason, \
                 requested_ms = :now, list_pk = :list, list_sk = :lsk ADD requests :one",
            )
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB UpdateItem", e))?;
        Ok(())
    }

    /// The most recent recoveries, newest first.
    pub async fn recoveries(&self, limit: u32) -> Result<Vec<RecoveryRecord>, StoreError> {
        let query = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("recent")
            .key_condition_expression("list_pk = :kind")
            .expression_attribute_values(":kind", s(recent::RECOVERY))
            .scan_index_forward(false);
        self.query_items(query, Some(limit as usize))
            .await?
            .iter()
            .map(|item| {
                Ok(RecoveryRecord {
                    id: get_n(item, "id")?,
                    hook_id: get_s(item, "hook_id")?,
                    delivery: get_s(item, "delivery_id")?,
                    attempt_id: get_n(item, "attempt_id")?,
                    event: get_s(item, "event")?,
                    status_code: get_opt_n(item, "status_code")?,
                    delivered_at: format_millis(get_n(item, "delivered_ms")?),
                    actor: get_s(item, "actor")?,
                    outcome: get_s(item, "outcome")?,
                    reason: get_opt_s(item, "reason")?,
                    requests: get_n(item, "requests")?,
                    requested_at: format_millis(get_n(item, "requested_ms")?),
                })
            })
            .collect()
    }
}
