//! The items the engine holds, one builder per kind: the item for a record *in its current
//! state*, with the sparse index keys that state calls for (`docs/dynamodb.md`, "Items" and
//! "Indexes"). The live write paths make their new items here, and their updates take their
//! index keys from the same functions; `slipway store copy` builds every item of a SQLite
//! journal's rows here too, so a copied table is the table the engine would have written.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{key, n, opt_n, opt_s, pad, s, Item};
use super::table::EXPIRES;
use crate::store::{
    build_state, deploy_state, notify_state, Deployment, GithubDeployment, NewRecovery,
    OutboxEntry, RejectedEvent,
};

const DAY_SECS: i64 = 86_400;

/// Outcomes whose deliveries retention deletes whole after `keep_ignored_days` (as the SQLite
/// engine's `DISPOSABLE`).
const DISPOSABLE: [&str; 3] = ["ignored", "pong", "duplicate"];

/// The `due` index's partitions.
pub(super) mod due {
    /// Pending builds, by when their next attempt is due.
    pub const BUILD: &str = "build";
    /// Started builds waiting for their result, by when they were last looked at (the
    /// reconciler's order).
    pub const INFLIGHT: &str = "inflight";
    /// Unfinished deployments, by id.
    pub const DEPLOYMENT: &str = "deployment";
    /// GitHub updates not posted, by id.
    pub const OUTBOX: &str = "outbox";
    /// Deliveries whose body is kept, by when they were received (retention).
    pub const BODIES: &str = "bodies";
    /// Promotions waiting for their approval, by id (issue 27).
    pub const PROMOTION: &str = "promotion";

    /// A target's line of pending notifications.
    pub fn notify(target: &str) -> String {
        format!("notify#{target}")
    }
}

/// The `recent` index's partitions (everything listed newest first).
pub(super) mod recent {
    pub const DELIVERY: &str = "delivery";
    pub const BUILD: &str = "build";
    pub const DEPLOYMENT: &str = "deployment";
    pub const REJECTED: &str = "rejected";
    pub const RECOVERY: &str = "recovery";
    pub const NOTIFY: &str = "notify";
    /// Promotions (issue 27).
    pub const PROMOTION: &str = "promotion";

    /// An app's GitHub deployments.
    pub fn github(app: &str) -> String {
        format!("github#{app}")
    }
}

/// A `due` index sort key: a time, then the id (fixed width: text order is number order).
pub(super) fn due_sk(at_ms: i64, id: i64) -> String {
    format!("{}#{}", pad(at_ms), pad(id))
}

pub(super) fn delivery_pk(row: i64) -> String {
    format!("delivery#{row}")
}

pub(super) fn build_pk(row: i64) -> String {
    format!("build#{row}")
}

pub(super) fn deployment_key(id: i64) -> Item {
    key(format!("deployment#{id}"), "deployment")
}

pub(super) fn notify_key(id: i64) -> Item {
    key(format!("notify#{id}"), "notify")
}

pub(super) fn outbox_key(id: i64) -> Item {
    key(format!("outbox#{id}"), "outbox")
}

pub(super) fn github_key(deployment: i64) -> Item {
    key(format!("github#{deployment}"), "github")
}

pub(super) fn recovery_key(hook_id: &str, delivery_id: &str) -> Item {
    key(format!("recovery#{hook_id}/{delivery_id}"), "recovery")
}

pub(super) fn foreign_key(build_id: &str) -> Item {
    key(format!("foreign#{build_id}"), "foreign")
}

pub(super) fn slack_key(signature: &[u8]) -> Item {
    key(format!("slack#{}", hex::encode(signature)), "slack")
}

/// `lookup` keys: a delivery by its GUID, a build by its run token (until its CodeBuild id is
/// known) or by its CodeBuild id, a deployment by its service.
pub(super) mod look {
    pub fn guid(guid: &str) -> String {
        format!("guid#{guid}")
    }

    pub fn token(token: &str) -> String {
        format!("token#{token}")
    }

    pub fn build_id(build_id: &str) -> String {
        format!("build_id#{build_id}")
    }

    pub fn service(service_key: &str) -> String {
        format!("service#{service_key}")
    }
}

/// A recovery's sort key in the `recent` index: when it was last asked for, then its key.
pub(super) fn recovery_list_sk(requested_ms: i64, hook_id: &str, delivery_id: &str) -> String {
    format!("{}#{hook_id}/{delivery_id}", pad(requested_ms))
}

/// Where a deployment ranks among its service's (`lookup` index sort key). A missing push time
/// (before issue 24) counts as 0, as in the SQLite engine.
pub(super) fn rank(pushed_at: Option<i64>, order_key: i64, id: i64) -> String {
    format!(
        "{}#{}#{}",
        pad(pushed_at.unwrap_or(0)),
        pad(order_key),
        pad(id)
    )
}

/// When DynamoDB's TTL may delete a delivery (and its body) with `outcome` received at
/// `received_ms`: ignored, ping and duplicate deliveries only, `keep_ignored_days` later.
pub(super) fn delivery_expiry(
    outcome: &str,
    received_ms: i64,
    keep_ignored_days: u64,
) -> Option<i64> {
    DISPOSABLE
        .contains(&outcome)
        .then(|| received_ms / 1000 + keep_ignored_days as i64 * DAY_SECS)
}

/// When a finished notification expires (`keep_ignored_days` after it was done).
pub(super) fn notification_expiry(done_ms: i64, keep_ignored_days: u64) -> i64 {
    done_ms / 1000 + keep_ignored_days as i64 * DAY_SECS
}

fn insert_all<const N: usize>(item: &mut Item, fields: [(&str, AttributeValue); N]) {
    for (name, value) in fields {
        item.insert(name.to_owned(), value);
    }
}

/// Inserts the fields that have a value (an absent attribute, not NULL: conditions and
/// filters such as `attribute_exists(...)` take NULL for a value).
fn insert_some<const N: usize>(item: &mut Item, fields: [(&str, Option<AttributeValue>); N]) {
    for (name, value) in fields {
        if let Some(value) = value {
            item.insert(name.to_owned(), value);
        }
    }
}

/// A delivery as stored: the request, what was decided, its key's builds, whether its body is
/// still kept.
pub(crate) struct DeliveryRow {
    pub row: i64,
    pub delivery_id: String,
    pub hook_id: String,
    pub event: String,
    pub source: String,
    pub actor: Option<String>,
    pub replay_of: Option<i64>,
    pub received_ms: i64,
    pub content_type: String,
    /// The headers that matter, as JSON text.
    pub headers: String,
    pub dedup_key: String,
    pub outcome: String,
    pub reason: Option<String>,
    /// The builds of its own key (hook and GUID), as SQLite's `builds_of_delivery`.
    pub builds: Vec<i64>,
    /// Whether its body is still kept (retention has not dropped it).
    pub body_kept: bool,
}

/// The delivery item (`delivery#<row>`, `delivery`).
pub(super) fn delivery_item(d: &DeliveryRow, keep_ignored_days: u64) -> Item {
    let mut item = key(delivery_pk(d.row), "delivery");
    insert_all(
        &mut item,
        [
            ("row", n(d.row)),
            ("delivery_id", s(&d.delivery_id)),
            ("hook_id", s(&d.hook_id)),
            ("event", s(&d.event)),
            ("source", s(&d.source)),
            ("actor", opt_s(d.actor.clone())),
            ("replay_of", opt_n(d.replay_of)),
            ("received_ms", n(d.received_ms)),
            ("content_type", s(&d.content_type)),
            ("headers", s(&d.headers)),
            ("dedup_key", s(&d.dedup_key)),
            ("outcome", s(&d.outcome)),
            ("reason", opt_s(d.reason.clone())),
            ("list_pk", s(recent::DELIVERY)),
            ("list_sk", s(pad(d.row))),
            ("look_pk", s(look::guid(&d.delivery_id))),
            ("look_sk", s(pad(d.row))),
        ],
    );
    if d.body_kept {
        // Retention finds the bodies to drop here (`retention.rs`), oldest first.
        item.insert("due_pk".into(), s(due::BODIES));
        item.insert("due_sk".into(), s(due_sk(d.received_ms, d.row)));
    }
    if !d.builds.is_empty() {
        item.insert(
            "builds".into(),
            AttributeValue::Ns(d.builds.iter().map(i64::to_string).collect()),
        );
    }
    if let Some(at) = delivery_expiry(&d.outcome, d.received_ms, keep_ignored_days) {
        item.insert(EXPIRES.into(), n(at));
    }
    item
}

/// Where a body's stored bytes are.
pub(super) enum StoredBody {
    /// In the item.
    Inline(Vec<u8>),
    /// In the bodies bucket, under this key (written first).
    S3(String),
}

/// A delivery's body item (`delivery#<row>`, `body`): stored bytes in `encoding`.
pub(super) fn body_item(
    row: i64,
    encoding: &str,
    stored: StoredBody,
    expires: Option<i64>,
) -> Item {
    let mut body = key(delivery_pk(row), "body");
    body.insert("enc".into(), s(encoding));
    match stored {
        StoredBody::Inline(bytes) => {
            body.insert("body".into(), AttributeValue::B(Blob::new(bytes)))
        }
        StoredBody::S3(object) => body.insert("s3_key".into(), s(object)),
    };
    if let Some(at) = expires {
        body.insert(EXPIRES.into(), n(at));
    }
    body
}

/// A build as stored.
pub(crate) struct BuildRow {
    pub id: i64,
    pub delivery_row: i64,
    /// Its delivery's GUID.
    pub delivery_id: String,
    pub dedup_key: String,
    pub app: String,
    pub sha: String,
    pub project: String,
    pub image_tag: String,
    pub token: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub start_requested_ms: Option<i64>,
    pub build_id: Option<String>,
    pub build_arn: Option<String>,
    pub reason: Option<String>,
    pub log_link: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub service_key: String,
    pub before_sha: Option<String>,
    /// When GitHub received its push (Unix seconds); None for builds from before issue 24.
    pub pushed_at: Option<i64>,
    pub tag: Option<String>,
    /// The deployment its success made.
    pub deployment: Option<i64>,
}

/// Where a build is in the `due` index in `state`: pending builds by their next attempt,
/// started ones (their CodeBuild id known) by when they were last looked at; none otherwise.
pub(super) fn build_due(b: &BuildRow) -> Option<(&'static str, String)> {
    if b.state == build_state::PENDING {
        Some((due::BUILD, due_sk(b.next_attempt_ms, b.id)))
    } else if b.state == build_state::STARTED && b.build_id.is_some() {
        Some((due::INFLIGHT, due_sk(b.updated_ms, b.id)))
    } else {
        None
    }
}

/// The build item (`build#<row>`, `build`).
pub(super) fn build_item(b: &BuildRow) -> Item {
    let mut item = key(build_pk(b.id), "build");
    insert_all(
        &mut item,
        [
            ("row", n(b.id)),
            ("delivery_row", n(b.delivery_row)),
            ("delivery_id", s(&b.delivery_id)),
            ("dedup_key", s(&b.dedup_key)),
            ("app", s(&b.app)),
            ("sha", s(&b.sha)),
            ("project", s(&b.project)),
            ("image_tag", s(&b.image_tag)),
            ("token", s(&b.token)),
            ("state", s(&b.state)),
            ("attempts", n(b.attempts)),
            ("next_attempt_ms", n(b.next_attempt_ms)),
            ("created_ms", n(b.created_ms)),
            ("updated_ms", n(b.updated_ms)),
            ("service_key", s(&b.service_key)),
            ("before_sha", opt_s(b.before_sha.clone())),
            ("tag", opt_s(b.tag.clone())),
            ("list_pk", s(recent::BUILD)),
            ("list_sk", s(pad(b.id))),
        ],
    );
    insert_some(
        &mut item,
        [
            ("pushed_at", b.pushed_at.map(n)),
            ("start_requested_ms", b.start_requested_ms.map(n)),
            ("build_id", b.build_id.as_deref().map(s)),
            ("build_arn", b.build_arn.as_deref().map(s)),
            ("reason", b.reason.as_deref().map(s)),
            ("log_link", b.log_link.as_deref().map(s)),
            ("deployment", b.deployment.map(n)),
        ],
    );
    if let Some((due_pk, sk)) = build_due(b) {
        item.insert("due_pk".into(), s(due_pk));
        item.insert("due_sk".into(), s(sk));
    }
    // By run token until CodeBuild's id is known, then by that id.
    let look_pk = match &b.build_id {
        Some(id) => look::build_id(id),
        None => look::token(&b.token),
    };
    item.insert("look_pk".into(), s(look_pk));
    item.insert("look_sk".into(), s(pad(b.id)));
    item
}

/// The delivery key (`key#<hook>/<guid>`, `app#<app>`): the build the delivery of this hook
/// and GUID made for the app.
pub(super) fn delivery_key_item(dedup_key: &str, app: &str, build: i64) -> Item {
    let mut item = delivery_key(dedup_key, app);
    item.insert("build".into(), n(build));
    item
}

pub(super) fn delivery_key(dedup_key: &str, app: &str) -> Item {
    key(delivery_key_pk(dedup_key), format!("app#{app}"))
}

/// The partition of a delivery key's builds, one item per app.
pub(super) fn delivery_key_pk(dedup_key: &str) -> String {
    format!("key#{dedup_key}")
}

/// A push: the same push from two hooks is the same key.
pub(super) struct PushOf<'a> {
    pub app: &'a str,
    pub sha: &'a str,
    pub before: Option<&'a str>,
    pub tag: Option<&'a str>,
}

pub(super) fn push_key(p: &PushOf<'_>) -> Item {
    let push = format!("push#{}#{}#{}", p.app, p.sha, p.before.unwrap_or(""));
    // A tag push is another push than a branch push of the same commit (as the SQLite
    // engine's `FIND_SAME_PUSH` compares tags); a branch push's key is what it always was.
    let pk = match p.tag {
        Some(tag) => format!("{push}#tag#{tag}"),
        None => push,
    };
    key(pk, "push")
}

/// The push key: the push's live build (GitHub deliveries only).
pub(super) fn push_key_item(p: &PushOf<'_>, build: i64) -> Item {
    let mut item = push_key(p);
    item.insert("build".into(), n(build));
    item
}

/// The item that says `app` has commit `sha` (a build or a deployment of it), for
/// `shas_with_prefix`: the app's commits are one partition, sorted by SHA.
pub(super) fn commit_item(app: &str, sha: &str) -> Item {
    key(format!("commit#{app}"), sha)
}

/// The deployment item (`deployment#<id>`, `deployment`): `pushed_at` and `before_sha` are
/// its push's (the latter for `newer_deployment`). A finished deployment is out of the `due`
/// index and keeps no stage and no "cannot see".
pub(super) fn deployment_item(
    d: &Deployment,
    pushed_at: Option<i64>,
    before_sha: Option<&str>,
) -> Item {
    let finished = deploy_state::is_terminal(&d.state);
    let mut item = deployment_key(d.id);
    insert_some(
        &mut item,
        [
            ("id", Some(n(d.id))),
            ("app", Some(s(&d.app))),
            ("service_key", Some(s(&d.service_key))),
            ("sha", Some(s(&d.sha))),
            ("image_tag", Some(s(&d.image_tag))),
            ("trigger", Some(s(&d.trigger))),
            ("actor", d.actor.as_deref().map(s)),
            ("build_row", d.build_row.map(n)),
            ("build_id", d.build_id.as_deref().map(s)),
            ("delivery_id", d.delivery_id.as_deref().map(s)),
            ("order_key", Some(n(d.order_key))),
            ("pushed_at", pushed_at.map(n)),
            (
                "target_task_definition",
                d.target_task_definition.as_deref().map(s),
            ),
            ("log_link", d.log_link.as_deref().map(s)),
            ("tag", d.tag.as_deref().map(s)),
            ("promotion", d.promotion.map(n)),
            ("state", Some(s(&d.state))),
            ("created_ms", Some(n(d.created_ms))),
            ("updated_ms", Some(n(d.updated_ms))),
            ("list_pk", Some(s(recent::DEPLOYMENT))),
            ("list_sk", Some(s(pad(d.id)))),
            ("look_pk", Some(s(look::service(&d.service_key)))),
        ],
    );
    insert_some(
        &mut item,
        [
            ("reason", d.reason.as_deref().map(s)),
            ("image", d.image.as_deref().map(s)),
            (
                "from_task_definition",
                d.from_task_definition.as_deref().map(s),
            ),
            ("to_task_definition", d.to_task_definition.as_deref().map(s)),
            ("ecs_deployment_id", d.ecs_deployment_id.as_deref().map(s)),
            ("running_count", d.running_count.map(n)),
            ("desired_count", d.desired_count.map(n)),
            ("failed_tasks", d.failed_tasks.map(n)),
            ("started_ms", d.started_ms.map(n)),
            ("finished_ms", d.finished_ms.map(n)),
            (
                "service_deployment_arn",
                d.service_deployment_arn.as_deref().map(s),
            ),
            ("deadline_ms", d.deadline_ms.map(n)),
            ("deadline_why", d.deadline_why.as_deref().map(s)),
            ("from_original", d.from_original.as_deref().map(s)),
            ("rollback_requested_ms", d.rollback_requested_ms.map(n)),
        ],
    );
    if !finished {
        insert_some(
            &mut item,
            [
                ("stage", d.stage.as_deref().map(s)),
                ("unseen", d.unseen.as_deref().map(s)),
                ("due_pk", Some(s(due::DEPLOYMENT))),
                ("due_sk", Some(s(pad(d.id)))),
            ],
        );
    }
    // The rank twice: the index's sort key, and an attribute a filter may read.
    let rank = rank(pushed_at, d.order_key, d.id);
    item.insert("look_sk".into(), s(rank.clone()));
    item.insert("rank_key".into(), s(rank));
    if let Some(before) = before_sha {
        item.insert("before_sha".into(), s(before));
    }
    item
}

/// The marker of a build slipway did not start (`foreign#<build id>`): its deployment.
pub(super) fn foreign_marker_item(build_id: &str, deployment: i64) -> Item {
    let mut item = foreign_key(build_id);
    item.insert("deployment".into(), n(deployment));
    item
}

/// A GitHub update in the outbox, in the `due` index while it waits (every entry in the
/// outbox waits: a posted one is deleted).
pub(super) fn outbox_item(e: &OutboxEntry) -> Item {
    let mut item = outbox_key(e.id);
    insert_all(
        &mut item,
        [
            ("id", n(e.id)),
            ("event", s(&e.event)),
            ("created_ms", n(e.created_ms)),
            ("attempts", n(e.attempts)),
            ("due_pk", s(due::OUTBOX)),
            ("due_sk", s(pad(e.id))),
        ],
    );
    item
}

/// A notification as stored.
pub(crate) struct NotificationRow {
    pub id: i64,
    pub target: String,
    pub event: String,
    pub idempotency_key: String,
    pub state: String,
    pub created_ms: i64,
    pub attempts: i64,
    pub last_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
    pub done_ms: Option<i64>,
}

/// The notification item (`notify#<id>`): in its target's line of the `due` index while
/// pending; expiring `keep_ignored_days` after it was done.
pub(super) fn notification_item(r: &NotificationRow, keep_ignored_days: u64) -> Item {
    let mut item = notify_key(r.id);
    insert_all(
        &mut item,
        [
            ("id", n(r.id)),
            ("target", s(&r.target)),
            ("event", s(&r.event)),
            ("idempotency_key", s(&r.idempotency_key)),
            ("state", s(&r.state)),
            ("created_ms", n(r.created_ms)),
            ("attempts", n(r.attempts)),
            ("list_pk", s(recent::NOTIFY)),
            ("list_sk", s(pad(r.id))),
        ],
    );
    insert_some(
        &mut item,
        [
            ("last_attempt_ms", r.last_attempt_ms.map(n)),
            ("last_error", r.last_error.as_deref().map(s)),
            ("done_ms", r.done_ms.map(n)),
        ],
    );
    if r.state == notify_state::PENDING {
        item.insert("due_pk".into(), s(due::notify(&r.target)));
        item.insert("due_sk".into(), s(pad(r.id)));
    } else if let Some(done) = r.done_ms {
        item.insert(
            EXPIRES.into(),
            n(notification_expiry(done, keep_ignored_days)),
        );
    }
    item
}

/// A refused event (`rejected#<id>`).
pub(super) fn rejected_item(id: i64, e: &RejectedEvent) -> Item {
    let mut item = key(format!("rejected#{id}"), "rejected");
    insert_all(
        &mut item,
        [
            ("message_id", opt_s(e.message_id.clone())),
            ("build_id", opt_s(e.build_id.clone())),
            ("source", opt_s(e.source.clone())),
            ("account", opt_s(e.account.clone())),
            ("reason", s(&e.reason)),
            ("received_ms", n(e.received_ms)),
            ("list_pk", s(recent::REJECTED)),
            ("list_sk", s(pad(id))),
        ],
    );
    item
}

/// A Slack request's signature seen at `seen_at` (Unix seconds), expiring at the end of the
/// replay window.
pub(super) fn slack_item(signature: &[u8], seen_at: i64, window_secs: i64) -> Item {
    let mut item = slack_key(signature);
    item.insert("seen_at".into(), n(seen_at));
    item.insert(EXPIRES.into(), n(seen_at + window_secs));
    item
}

/// The GitHub deployment of slipway deployment `g.deployment` (as `record_github_deployment`
/// leaves it).
pub(super) fn github_item(
    app: &str,
    g: &GithubDeployment,
    created_ms: i64,
    updated_ms: i64,
) -> Item {
    let mut item = github_key(g.deployment);
    insert_all(
        &mut item,
        [
            ("deployment", n(g.deployment)),
            ("app", s(app)),
            ("repository", s(&g.repository)),
            ("github_id", n(g.github_id)),
            ("state", s(&g.state)),
            ("created_ms", n(created_ms)),
            ("updated_ms", n(updated_ms)),
            ("list_pk", s(recent::github(app))),
            ("list_sk", s(pad(g.deployment))),
        ],
    );
    item
}

/// A delivery slipway asked GitHub to redeliver, as stored: the last request's record, how
/// many requests, when the last was made.
pub(crate) struct RecoveryRow {
    pub id: i64,
    pub recovery: NewRecovery,
    pub requests: i64,
    pub requested_ms: i64,
}

/// The recovery item (`recovery#<hook>/<guid>`, as `record_recovery` leaves it).
pub(super) fn recovery_item(row: &RecoveryRow) -> Item {
    let r = &row.recovery;
    let mut item = recovery_key(&r.hook_id, &r.delivery_id);
    insert_all(
        &mut item,
        [
            ("id", n(row.id)),
            ("hook_id", s(&r.hook_id)),
            ("delivery_id", s(&r.delivery_id)),
            ("attempt_id", n(r.attempt_id)),
            ("event", s(&r.event)),
            ("status_code", opt_n(r.status_code)),
            ("delivered_ms", n(r.delivered_ms)),
            ("actor", s(&r.actor)),
            ("outcome", s(&r.outcome)),
            ("reason", opt_s(r.reason.clone())),
            ("requests", n(row.requests)),
            ("requested_ms", n(row.requested_ms)),
            ("list_pk", s(recent::RECOVERY)),
            (
                "list_sk",
                s(recovery_list_sk(
                    row.requested_ms,
                    &r.hook_id,
                    &r.delivery_id,
                )),
            ),
        ],
    );
    item
}
