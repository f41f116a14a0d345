//! Deployments in DynamoDB (`docs/dynamodb.md`): one item per deploy, in the `due` index while
//! unfinished and in the `recent` index always, with the service's rank in the `lookup`
//! index. Ranks are the SQLite engine's: `(pushed_at, order_key, id)`, a push's order key
//! twice its build's id, an explicit deploy's just above every build so far.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{get_n, get_opt_n, get_opt_s, get_s, key, n, s, Item};
use super::items::{self, build_pk, delivery_pk, deployment_key, due, look, rank, recent};
use super::{sdk_error, DynamoStore};
use crate::store::{
    deploy_state, trigger, Deployment, DeploymentUpdate, NewDeployment, StoreError,
};

/// How many of the newest builds an explicit deploy's push time is read from (as the SQLite
/// engine's `EXPLICIT_PUSHED_AT`).
const EXPLICIT_WINDOW: i32 = 1000;

pub(super) fn deployment_from(item: &Item) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: get_n(item, "id")?,
        app: get_s(item, "app")?,
        service_key: get_s(item, "service_key")?,
        sha: get_s(item, "sha")?,
        image_tag: get_s(item, "image_tag")?,
        trigger: get_s(item, "trigger")?,
        actor: get_opt_s(item, "actor")?,
        build_row: get_opt_n(item, "build_row")?,
        build_id: get_opt_s(item, "build_id")?,
        delivery_id: get_opt_s(item, "delivery_id")?,
        order_key: get_n(item, "order_key")?,
        target_task_definition: get_opt_s(item, "target_task_definition")?,
        image: get_opt_s(item, "image")?,
        from_task_definition: get_opt_s(item, "from_task_definition")?,
        to_task_definition: get_opt_s(item, "to_task_definition")?,
        ecs_deployment_id: get_opt_s(item, "ecs_deployment_id")?,
        state: get_s(item, "state")?,
        reason: get_opt_s(item, "reason")?,
        log_link: get_opt_s(item, "log_link")?,
        running_count: get_opt_n(item, "running_count")?,
        desired_count: get_opt_n(item, "desired_count")?,
        failed_tasks: get_opt_n(item, "failed_tasks")?,
        stage: get_opt_s(item, "stage")?,
        created_ms: get_n(item, "created_ms")?,
        updated_ms: get_n(item, "updated_ms")?,
        started_ms: get_opt_n(item, "started_ms")?,
        finished_ms: get_opt_n(item, "finished_ms")?,
        service_deployment_arn: get_opt_s(item, "service_deployment_arn")?,
        deadline_ms: get_opt_n(item, "deadline_ms")?,
        deadline_why: get_opt_s(item, "deadline_why")?,
        unseen: get_opt_s(item, "unseen")?,
        from_original: get_opt_s(item, "from_original")?,
        rollback_requested_ms: get_opt_n(item, "rollback_requested_ms")?,
        tag: get_opt_s(item, "tag")?,
        promotion: get_opt_n(item, "promotion")?,
    })
}

/// Builds an update expression from its parts, with the values it names.
#[derive(Default)]
struct Expression {
    set: Vec<String>,
    remove: Vec<String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn set(&mut self, attribute: &str, value: AttributeValue) {
        let name = format!(":{attribute}");
        self.set.push(format!("{attribute} = {name}"));
        self.values.insert(name, value);
    }

    fn set_s(&mut self, attribute: &str, value: Option<String>) {
        if let Some(v) = value {
            self.set(attribute, s(v));
        }
    }

    fn set_n(&mut self, attribute: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.set(attribute, n(v));
        }
    }

    fn text(&self) -> String {
        let mut text = String::new();
        if !self.set.is_empty() {
            text.push_str("SET ");
            text.push_str(&self.set.join(", "));
        }
        if !self.remove.is_empty() {
            text.push_str(" REMOVE ");
            text.push_str(&self.remove.join(", "));
        }
        text
    }
}

impl DynamoStore {
    /// The push time of build `row` and the commit its push followed, as far as known (the
    /// latter kept on the deployment for `newer_deployment`).
    async fn build_push(&self, row: i64) -> Result<(Option<i64>, Option<String>), StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            // Strongly consistent: read what was just written, as the SQLite engine does.
            .consistent_read(true)
            .set_key(Some(key(build_pk(row), "build")))
            .projection_expression("pushed_at, before_sha")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        match out.item() {
            Some(item) => Ok((
                get_opt_n(item, "pushed_at")?,
                get_opt_s(item, "before_sha")?,
            )),
            None => Ok((None, None)),
        }
    }

    /// The last id reserved on the counter (every build so far has one at most this). Ids
    /// this process reserved below it are forgotten, so that every later build ranks above.
    async fn last_id(&self) -> Result<i64, StoreError> {
        // Held while the counter is read: no block is reserved in between and kept.
        let _ids = self.forget_reserved_ids().await;
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key("counter", "ids")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        Ok(match out.item() {
            Some(item) => get_opt_n(item, "n")?.unwrap_or(0),
            None => 0,
        })
    }

    /// The latest push time among the newest builds (the `recent` index's build partition).
    async fn recent_pushed_at(&self) -> Result<Option<i64>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("recent")
            .key_condition_expression("list_pk = :build")
            .expression_attribute_values(":build", s(recent::BUILD))
            .scan_index_forward(false)
            .projection_expression("pushed_at")
            .limit(EXPLICIT_WINDOW)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        let mut latest = None;
        for item in out.items() {
            if let Some(p) = get_opt_n(item, "pushed_at")? {
                latest = Some(latest.map_or(p, |l: i64| l.max(p)));
            }
        }
        Ok(latest)
    }

    /// Records a deploy to make; its id.
    pub async fn request_deployment(
        &self,
        d: NewDeployment,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let commit = items::commit_item(&d.app, &d.sha);
        let (id, item) = self.deployment_item(d, now_ms).await?;
        let writes = vec![
            self.put(item, Some("attribute_not_exists(pk)"), None)?,
            self.put(commit, None, None)?,
        ];
        if !self.transact(writes).await? {
            // A fresh id is never taken: only a bug could get here.
            return Err(StoreError::Invalid(format!(
                "deployment id {id} was taken twice"
            )));
        }
        Ok(id)
    }

    /// A new deployment's id and item, ranked (not written).
    pub(super) async fn deployment_item(
        &self,
        d: NewDeployment,
        now_ms: i64,
    ) -> Result<(i64, Item), StoreError> {
        let (order_key, pushed_at, before_sha) = match (d.order_key, d.build_row) {
            (Some(k), Some(row)) => {
                let (pushed_at, before) = self.build_push(row).await?;
                (k, pushed_at, before)
            }
            (Some(k), None) => (k, None, None),
            // Explicit deploys rank above every push stored so far (and below later ones).
            (None, _) => (
                2 * self.last_id().await? + 1,
                self.recent_pushed_at().await?,
                None,
            ),
        };
        let id = self.take_ids(1).await?;
        let deployment = Deployment {
            id,
            app: d.app,
            service_key: d.service_key,
            sha: d.sha,
            image_tag: d.image_tag,
            trigger: d.trigger.to_owned(),
            actor: d.actor,
            build_row: d.build_row,
            build_id: d.build_id,
            delivery_id: d.delivery_id,
            order_key,
            target_task_definition: d.target_task_definition,
            image: None,
            from_task_definition: None,
            to_task_definition: None,
            ecs_deployment_id: None,
            state: deploy_state::PENDING.to_owned(),
            reason: None,
            log_link: d.log_link,
            running_count: None,
            desired_count: None,
            failed_tasks: None,
            stage: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            service_deployment_arn: None,
            deadline_ms: None,
            deadline_why: None,
            unseen: None,
            from_original: None,
            rollback_requested_ms: None,
            tag: d.tag,
            promotion: d.promotion,
        };
        let item = items::deployment_item(&deployment, pushed_at, before_sha.as_deref());
        Ok((id, item))
    }

    pub async fn deployment(&self, id: i64) -> Result<Option<Deployment>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(deployment_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        out.item().map(deployment_from).transpose()
    }

    /// Deployments that are not finished, oldest first (the `due` index's deployments).
    pub async fn unfinished_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let query = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("due")
            .key_condition_expression("due_pk = :kind")
            .expression_attribute_values(":kind", s(due::DEPLOYMENT));
        self.query_items(query, None)
            .await?
            .iter()
            .map(deployment_from)
            .collect()
    }

    /// Changes a deployment's record as the SQLite engine's `update_deployment` does: each
    /// field given replaces the stored one; a terminal state finishes the deployment (its
    /// stage and "cannot see" cleared, out of the `due` index).
    pub async fn update_deployment(
        &self,
        id: i64,
        u: DeploymentUpdate,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let finished = u.state.is_some_and(deploy_state::is_terminal);
        let mut e = Expression::default();
        if let Some(state) = u.state {
            e.set.push("#st = :state".into());
            e.values.insert(":state".into(), s(state));
        }
        e.set_s("reason", u.reason);
        e.set_s("image", u.image);
        e.set_s("from_task_definition", u.from_task_definition);
        e.set_s("to_task_definition", u.to_task_definition);
        e.set_s("ecs_deployment_id", u.ecs_deployment_id);
        e.set("updated_ms", n(now_ms));
        if u.restart_clock {
            e.set.push("started_ms = :updated_ms".into());
        } else if u.started {
            e.set
                .push("started_ms = if_not_exists(started_ms, :updated_ms)".into());
        }
        if let Some((running, desired, failed)) = u.progress {
            e.set("running_count", n(running));
            e.set("desired_count", n(desired));
            e.set("failed_tasks", n(failed));
        }
        e.set_s("service_deployment_arn", u.service_deployment_arn);
        if let Some((at, why)) = u.deadline {
            e.set_n("deadline_ms", Some(at));
            e.set_s("deadline_why", Some(why));
        }
        e.set_s("from_original", u.from_original);
        if u.rollback_requested {
            // The first request counts, as in the SQLite engine.
            e.set.push(
                "rollback_requested_ms = if_not_exists(rollback_requested_ms, :updated_ms)".into(),
            );
        }
        if finished {
            e.set.push("finished_ms = :updated_ms".into());
            e.remove
                .extend(["stage", "unseen", "due_pk", "due_sk"].map(str::to_owned));
        } else {
            e.set_s("stage", u.stage);
            match u.unseen.as_deref() {
                Some("") => e.remove.push("unseen".into()),
                Some(_) => e.set_s("unseen", u.unseen),
                None => {}
            }
        }
        if let Some(fence) = &u.fence {
            // Fenced (issue 26): the update and a check of the lease, in one transaction.
            let mut update = aws_sdk_dynamodb::types::Update::builder()
                .table_name(self.table())
                .set_key(Some(deployment_key(id)))
                .update_expression(e.text())
                .condition_expression("attribute_exists(pk)")
                .set_expression_attribute_values(Some(e.values));
            if u.state.is_some() {
                update = update.expression_attribute_names("#st", "state");
            }
            let writes = vec![
                aws_sdk_dynamodb::types::TransactWriteItem::builder()
                    .update(update.build().map_err(super::bad_request)?)
                    .build(),
                self.fence_check(fence)?,
            ];
            return self.fenced_transact(writes, fence).await;
        }
        let mut update = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(deployment_key(id)))
            .update_expression(e.text())
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_values(Some(e.values));
        if u.state.is_some() {
            update = update.expression_attribute_names("#st", "state");
        }
        // No such deployment (the condition fails): nothing to change, as an UPDATE of no row.
        super::update_if(update).await?;
        Ok(())
    }

    /// Recent deployments, newest first, optionally of one app (the `recent` index, page by
    /// page, the app's kept).
    pub async fn recent_deployments(
        &self,
        app: Option<String>,
        limit: u32,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.recent_of_app(recent::DEPLOYMENT, app.as_deref(), limit)
            .await?
            .iter()
            .map(deployment_from)
            .collect()
    }

    /// The newest `limit` items of a `recent` partition, of one app when given (a filter
    /// within the partition, page after page until enough).
    pub(super) async fn recent_of_app(
        &self,
        kind: &str,
        app: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Item>, StoreError> {
        let wanted = limit as usize;
        let mut found = Vec::new();
        let mut start = None;
        while found.len() < wanted {
            let mut query = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("recent")
                .key_condition_expression("list_pk = :kind")
                .expression_attribute_values(":kind", s(kind))
                .scan_index_forward(false)
                .set_exclusive_start_key(start);
            match app {
                Some(app) => {
                    query = query
                        .filter_expression("app = :app")
                        .expression_attribute_values(":app", s(app));
                }
                None => query = query.limit((wanted - found.len()).min(1000) as i32),
            }
            let out = query
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                if found.len() < wanted {
                    found.push(item.clone());
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// The service's deployments, highest rank first, that match `filter`, page by page until
    /// `enough` says so (the service's partition of the `lookup` index).
    async fn service_deployments(
        &self,
        service_key: &str,
        filter: &str,
        mut values: HashMap<String, AttributeValue>,
        enough: impl Fn(&[Deployment]) -> bool,
    ) -> Result<Vec<Deployment>, StoreError> {
        values.insert(":service".into(), s(look::service(service_key)));
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("lookup")
                .key_condition_expression("look_pk = :service")
                .filter_expression(filter)
                .expression_attribute_names("#st", "state")
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                found.push(deployment_from(item)?);
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() || enough(&found) {
                return Ok(found);
            }
        }
    }

    /// A deployment of the same service that is newer than `d` and is going ahead or went
    /// ahead: ranked after it, or (for pushes) the deploy of a push that followed `d`'s commit
    /// (its `before` is `d`'s commit), whatever order GitHub delivered them in. The highest
    /// ranked such deployment, as the SQLite engine answers.
    pub async fn newer_deployment(&self, d: &Deployment) -> Result<Option<Deployment>, StoreError> {
        let stored = self
            .client()
            .get_item()
            .table_name(self.table())
            // Strongly consistent: read what was just written, as the SQLite engine does.
            .consistent_read(true)
            .set_key(Some(deployment_key(d.id)))
            .projection_expression("rank_key")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        // A deployment not stored ranks at its order key with no push time.
        let own_rank = match stored.item() {
            Some(item) => get_s(item, "rank_key")?,
            None => rank(None, d.order_key, d.id),
        };
        let automatic = d.trigger == trigger::PUSH || d.trigger == trigger::FOREIGN_BUILD;
        let mut values = HashMap::from([
            (":id".to_owned(), n(d.id)),
            (":pending".to_owned(), s(deploy_state::PENDING)),
            (":deploying".to_owned(), s(deploy_state::DEPLOYING)),
            (":succeeded".to_owned(), s(deploy_state::SUCCEEDED)),
            (":rank".to_owned(), s(own_rank)),
        ]);
        let newer = if automatic {
            values.insert(":sha".into(), s(&d.sha));
            "(rank_key > :rank OR before_sha = :sha)"
        } else {
            "rank_key > :rank"
        };
        let filter = format!("id <> :id AND #st IN (:pending, :deploying, :succeeded) AND {newer}");
        let found = self
            .service_deployments(&d.service_key, &filter, values, |found| !found.is_empty())
            .await?;
        Ok(found.into_iter().next())
    }

    /// The task definition the newest finished deploy of a service left running (its new
    /// revision when it succeeded, the previous one when it was rolled back).
    pub async fn last_deployed_task_definition(
        &self,
        service_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let values = HashMap::from([
            (":succeeded".to_owned(), s(deploy_state::SUCCEEDED)),
            (":rolled_back".to_owned(), s(deploy_state::ROLLED_BACK)),
        ]);
        let found = self
            .service_deployments(
                service_key,
                "#st IN (:succeeded, :rolled_back)",
                values,
                |found| !found.is_empty(),
            )
            .await?;
        Ok(found.into_iter().next().and_then(|d| {
            if d.state == deploy_state::SUCCEEDED {
                d.to_task_definition
            } else {
                d.from_task_definition
            }
        }))
    }

    /// Succeeded deployments of `app` with a task definition, newest first, at most 100.
    pub async fn successful_deployments(&self, app: &str) -> Result<Vec<Deployment>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        while found.len() < 100 {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("recent")
                .key_condition_expression("list_pk = :kind")
                .filter_expression(
                    "app = :app AND #st = :succeeded AND attribute_exists(to_task_definition)",
                )
                .expression_attribute_names("#st", "state")
                .expression_attribute_values(":kind", s(recent::DEPLOYMENT))
                .expression_attribute_values(":app", s(app))
                .expression_attribute_values(":succeeded", s(deploy_state::SUCCEEDED))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                if found.len() < 100 {
                    found.push(deployment_from(item)?);
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// Deployments that came from the builds of one delivery key (those made by the delivery
    /// of its hook and GUID: a redelivery's are those of the delivery it repeats), by id.
    pub async fn deployments_of_delivery(
        &self,
        delivery_row: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        let delivery = self
            .client()
            .get_item()
            .table_name(self.table())
            // Strongly consistent: read what was just written, as the SQLite engine does.
            .consistent_read(true)
            .set_key(Some(key(delivery_pk(delivery_row), "delivery")))
            .projection_expression("dedup_key")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        let Some(dedup_key) = delivery.item().map(|i| get_s(i, "dedup_key")).transpose()? else {
            return Ok(Vec::new());
        };
        // The key's builds, one item per app.
        let by_key = self
            .client()
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :key")
            .expression_attribute_values(":key", s(items::delivery_key_pk(&dedup_key)))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        let builds: Vec<Item> = by_key
            .items()
            .iter()
            .map(|i| Ok(key(build_pk(get_n(i, "build")?), "build")))
            .collect::<Result<_, StoreError>>()?;
        let deployments: Vec<Item> = self
            .batch_get(builds)
            .await?
            .iter()
            .filter_map(|b| get_opt_n(b, "deployment").transpose())
            .map(|id| Ok(deployment_key(id?)))
            .collect::<Result<_, StoreError>>()?;
        let mut found = self
            .batch_get(deployments)
            .await?
            .iter()
            .map(deployment_from)
            .collect::<Result<Vec<_>, _>>()?;
        found.sort_by_key(|d| d.id);
        Ok(found)
    }
}
