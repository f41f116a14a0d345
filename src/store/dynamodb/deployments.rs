//! Deployments in DynamoDB (`docs/dynamodb.md`): one item per deploy, in the `due` index while
//! unfinished and in the `recent` index always, with the service's rank in the `lookup`
//! index. Ranks are the SQLite engine's: `(pushed_at, order_key, id)`, a push's order key
//! twice its build's id, an explicit deploy's just above every build so far.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{get_n, get_opt_n, get_opt_s, get_s, key, n, pad, s, Item};
use super::{sdk_error, DynamoStore};
use crate::store::{deploy_state, Deployment, DeploymentUpdate, NewDeployment, StoreError};

/// How many of the newest builds an explicit deploy's push time is read from (as the SQLite
/// engine's `EXPLICIT_PUSHED_AT`).
const EXPLICIT_WINDOW: i32 = 1000;

fn deployment_key(id: i64) -> Item {
    key(format!("deployment#{id}"), "deployment")
}

/// Where a deployment ranks among its service's (`lookup` index sort key). A missing push time
/// (before issue 24) counts as 0, as in the SQLite engine.
fn rank(pushed_at: Option<i64>, order_key: i64, id: i64) -> String {
    format!(
        "{}#{}#{}",
        pad(pushed_at.unwrap_or(0)),
        pad(order_key),
        pad(id)
    )
}

fn deployment_from(item: &Item) -> Result<Deployment, StoreError> {
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
    /// The push time of build `row`, if it has one.
    async fn build_pushed_at(&self, row: i64) -> Result<Option<i64>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key(format!("build#{row}"), "build")))
            .projection_expression("pushed_at")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", e))?;
        match out.item() {
            Some(item) => get_opt_n(item, "pushed_at"),
            None => Ok(None),
        }
    }

    /// The last id handed out (every build so far has one at most this).
    async fn last_id(&self) -> Result<i64, StoreError> {
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
            .expression_attribute_values(":build", s("build"))
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
        let (order_key, pushed_at) = match (d.order_key, d.build_row) {
            (Some(k), Some(row)) => (k, self.build_pushed_at(row).await?),
            (Some(k), None) => (k, None),
            // Explicit deploys rank above every push stored so far (and below later ones).
            (None, _) => (
                2 * self.last_id().await? + 1,
                self.recent_pushed_at().await?,
            ),
        };
        let id = self.take_ids(1).await?;
        let mut item = deployment_key(id);
        let fields: [(&str, Option<AttributeValue>); 22] = [
            ("id", Some(n(id))),
            ("app", Some(s(&d.app))),
            ("service_key", Some(s(&d.service_key))),
            ("sha", Some(s(&d.sha))),
            ("image_tag", Some(s(&d.image_tag))),
            ("trigger", Some(s(d.trigger))),
            ("actor", d.actor.map(s)),
            ("build_row", d.build_row.map(n)),
            ("build_id", d.build_id.map(s)),
            ("delivery_id", d.delivery_id.map(s)),
            ("order_key", Some(n(order_key))),
            ("pushed_at", pushed_at.map(n)),
            ("target_task_definition", d.target_task_definition.map(s)),
            ("log_link", d.log_link.map(s)),
            ("state", Some(s(deploy_state::PENDING))),
            ("created_ms", Some(n(now_ms))),
            ("updated_ms", Some(n(now_ms))),
            ("due_pk", Some(s("deployment"))),
            ("due_sk", Some(s(pad(id)))),
            ("list_pk", Some(s("deployment"))),
            ("list_sk", Some(s(pad(id)))),
            ("look_pk", Some(s(format!("service#{}", d.service_key)))),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                item.insert(name.to_owned(), value);
            }
        }
        item.insert("look_sk".into(), s(rank(pushed_at, order_key, id)));
        self.client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB PutItem", e))?;
        Ok(id)
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
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .index_name("due")
                .key_condition_expression("due_pk = :kind")
                .expression_attribute_values(":kind", s("deployment"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB Query", e))?;
            for item in out.items() {
                found.push(deployment_from(item)?);
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(found);
            }
        }
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
        match update.send().await {
            Ok(_) => Ok(()),
            // No such deployment: nothing to change (as an UPDATE of no row).
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(sdk_error("DynamoDB UpdateItem", err)),
        }
    }

    /// Recent deployments, newest first, optionally of one app (the `recent` index, page by
    /// page, the app's kept).
    pub async fn recent_deployments(
        &self,
        app: Option<String>,
        limit: u32,
    ) -> Result<Vec<Deployment>, StoreError> {
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
                .expression_attribute_values(":kind", s("deployment"))
                .scan_index_forward(false)
                .set_exclusive_start_key(start);
            match &app {
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
}
