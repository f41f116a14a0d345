//! Builds' results in DynamoDB: a CodeBuild result recorded once however often CodeBuild or
//! SQS repeat it, the deployment it leads to made once (a condition on the build item), and
//! the reconciler's view of started builds (the `due` index's `inflight` partition).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::deliveries::{condition_failed, transaction_error, ADMIT_TRIES};
use super::item::{get_n, get_opt_n, get_opt_s, get_s, key, n, pad, s, Item};
use super::items::{self, build_pk, commit_item, due, due_sk, foreign_key, look};
use super::{bad_request, sdk_error, DynamoStore};
use crate::store::{
    build_state, trigger, BuildCompletion, CompletionOutcome, InFlightBuild, NewDeployment,
    StoreError,
};

impl DynamoStore {
    /// The build a CodeBuild result is about: by its id, or (a start whose answer was never
    /// stored) by its run token among the builds whose start was requested.
    async fn find_completed_build(
        &self,
        done: &BuildCompletion,
    ) -> Result<Option<Item>, StoreError> {
        let by_id = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("lookup")
            .key_condition_expression("look_pk = :id")
            .expression_attribute_values(":id", s(look::build_id(&done.build_id)))
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        if let Some(item) = by_id.items().first() {
            return Ok(Some(item.clone()));
        }
        let Some(token) = &done.run_token else {
            return Ok(None);
        };
        // A build keeps its token in the index only until its CodeBuild id is known.
        let by_token = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("lookup")
            .key_condition_expression("look_pk = :token")
            .filter_expression("attribute_exists(start_requested_ms)")
            .expression_attribute_values(":token", s(look::token(token)))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        Ok(by_token.items().first().cloned())
    }

    /// Records a build's terminal state and, for a success, the deployment it leads to (once,
    /// however often CodeBuild or SQS repeat themselves).
    pub async fn complete_build(
        &self,
        done: BuildCompletion,
        now_ms: i64,
    ) -> Result<CompletionOutcome, StoreError> {
        for _ in 0..ADMIT_TRIES {
            if let Some(outcome) = self.try_complete_build(&done, now_ms).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable {
            reason: format!("build {}'s record kept changing under it", done.build_id),
        })
    }

    /// One try; None if another writer recorded the deployment first (the next try finds it).
    async fn try_complete_build(
        &self,
        done: &BuildCompletion,
        now: i64,
    ) -> Result<Option<CompletionOutcome>, StoreError> {
        let Some(build) = self.find_completed_build(done).await? else {
            return self.complete_foreign_build(done, now).await;
        };
        let row = get_n(&build, "row")?;
        let (app, sha) = (get_s(&build, "app")?, get_s(&build, "sha")?);
        // The build's new state, its log link, and (started by slipway, but the answer was
        // never stored) its CodeBuild id, adopted now.
        let mut set = vec!["#st = :state", "updated_ms = :now"];
        let mut values: HashMap<String, AttributeValue> =
            HashMap::from([(":now".to_owned(), n(now))]);
        if let Some(link) = &done.log_link {
            set.push("log_link = :link");
            values.insert(":link".into(), s(link));
        }
        if get_opt_s(&build, "build_id")?.is_none() {
            set.extend(["build_id = :build_id", "look_pk = :look", "look_sk = :row"]);
            values.insert(":build_id".into(), s(&done.build_id));
            values.insert(":look".into(), s(look::build_id(&done.build_id)));
            values.insert(":row".into(), s(pad(row)));
        }
        if !done.succeeded {
            set.push("reason = :reason");
            values.insert(":state".into(), s(build_state::BUILD_FAILED));
            values.insert(":reason".into(), s(format!("build {}", done.status)));
            let updated = self
                .client()
                .update_item()
                .table_name(self.table())
                .set_key(Some(key(build_pk(row), "build")))
                .update_expression(format!("SET {} REMOVE due_pk, due_sk", set.join(", ")))
                .condition_expression("#st <> :state")
                .expression_attribute_names("#st", "state")
                .set_expression_attribute_values(Some(values));
            let first_time = super::update_if(updated).await?;
            return Ok(Some(CompletionOutcome::Failed {
                app,
                sha,
                first_time,
            }));
        }
        values.insert(":state".into(), s(build_state::SUCCEEDED));
        if let Some(id) = get_opt_n(&build, "deployment")? {
            // Repeated: the deployment exists; the build's record is brought up to date.
            let updated = self
                .client()
                .update_item()
                .table_name(self.table())
                .set_key(Some(key(build_pk(row), "build")))
                .update_expression(format!("SET {} REMOVE due_pk, due_sk", set.join(", ")))
                .expression_attribute_names("#st", "state")
                .set_expression_attribute_values(Some(values))
                .send()
                .await;
            updated.map_err(|e| sdk_error("DynamoDB UpdateItem", e))?;
            return Ok(Some(CompletionOutcome::Deploy {
                deployment: id,
                created: false,
            }));
        }
        let (id, deployment) = self
            .deployment_item(
                NewDeployment {
                    app,
                    service_key: get_s(&build, "service_key")?,
                    sha,
                    image_tag: get_s(&build, "image_tag")?,
                    trigger: trigger::PUSH,
                    actor: None,
                    build_row: Some(row),
                    build_id: Some(done.build_id.clone()),
                    delivery_id: Some(get_s(&build, "delivery_id")?),
                    order_key: Some(2 * row),
                    target_task_definition: None,
                    log_link: done.log_link.clone(),
                    tag: get_opt_s(&build, "tag")?,
                    promotion: None,
                },
                now,
            )
            .await?;
        set.push("deployment = :deployment");
        values.insert(":deployment".into(), n(id));
        // The build names its deployment: a second success event finds it, never makes two.
        let update = Update::builder()
            .table_name(self.table())
            .set_key(Some(key(build_pk(row), "build")))
            .update_expression(format!("SET {} REMOVE due_pk, due_sk", set.join(", ")))
            .condition_expression("attribute_not_exists(deployment)")
            .expression_attribute_names("#st", "state")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(bad_request)?;
        let writes = vec![
            self.put(deployment, Some("attribute_not_exists(pk)"), None)?,
            TransactWriteItem::builder().update(update).build(),
        ];
        self.transact(writes).await.map(|written| {
            written.then_some(CompletionOutcome::Deploy {
                deployment: id,
                created: true,
            })
        })
    }

    /// A build slipway did not start: deployed as `done.foreign` says, once per build id.
    async fn complete_foreign_build(
        &self,
        done: &BuildCompletion,
        now: i64,
    ) -> Result<Option<CompletionOutcome>, StoreError> {
        let Some(foreign) = &done.foreign else {
            return Ok(Some(CompletionOutcome::Foreign));
        };
        if !done.succeeded {
            return Ok(Some(CompletionOutcome::Failed {
                app: foreign.app.clone(),
                sha: foreign.sha.clone(),
                first_time: false,
            }));
        }
        let marker = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(foreign_key(&done.build_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        if let Some(item) = marker.item() {
            return Ok(Some(CompletionOutcome::Deploy {
                deployment: get_n(item, "deployment")?,
                created: false,
            }));
        }
        let (id, deployment) = self.deployment_item(foreign.clone(), now).await?;
        let marker = items::foreign_marker_item(&done.build_id, id);
        let writes = vec![
            self.put(deployment, Some("attribute_not_exists(pk)"), None)?,
            self.put(marker, Some("attribute_not_exists(pk)"), None)?,
            self.put(commit_item(&foreign.app, &foreign.sha), None, None)?,
        ];
        self.transact(writes).await.map(|written| {
            written.then_some(CompletionOutcome::Deploy {
                deployment: id,
                created: true,
            })
        })
    }

    /// Runs `writes` in one transaction: false if a condition failed (nothing was written).
    pub(super) async fn transact(
        &self,
        writes: Vec<TransactWriteItem>,
    ) -> Result<bool, StoreError> {
        match self
            .client()
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(transaction_error(e)),
        }
    }

    /// Builds started before `before_ms` (last looked at then) whose result never arrived,
    /// the longest unexamined first, at most 100.
    pub async fn builds_in_flight(&self, before_ms: i64) -> Result<Vec<InFlightBuild>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("due")
            .key_condition_expression("due_pk = :inflight AND due_sk < :after")
            .expression_attribute_values(":inflight", s(due::INFLIGHT))
            .expression_attribute_values(":after", s(pad(before_ms.saturating_add(1))))
            .limit(100)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        out.items()
            .iter()
            .map(|item| {
                Ok(InFlightBuild {
                    build_row: get_n(item, "row")?,
                    build_id: get_s(item, "build_id")?,
                    app: get_s(item, "app")?,
                })
            })
            .collect()
    }

    /// Marks builds as asked about, so the reconciler's next pass starts with others.
    pub async fn builds_checked(&self, rows: Vec<i64>, now_ms: i64) -> Result<(), StoreError> {
        for row in rows {
            self.update_build(
                row,
                "SET updated_ms = :now, due_sk = :due",
                Some("#st = :started"),
                vec![
                    (":now", n(now_ms)),
                    (":due", s(due_sk(now_ms, row))),
                    (":started", s(build_state::STARTED)),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// A build CodeBuild says it does not know: it will never end, so it failed.
    pub async fn build_unknown_to_codebuild(
        &self,
        row: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_build(
            row,
            "SET #st = :failed, reason = :reason, updated_ms = :now REMOVE due_pk, due_sk",
            Some("#st = :started"),
            vec![
                (":failed", s(build_state::BUILD_FAILED)),
                (":reason", s("CodeBuild does not know this build")),
                (":now", n(now_ms)),
                (":started", s(build_state::STARTED)),
            ],
        )
        .await
    }
}
