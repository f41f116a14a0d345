//! Deliveries and the builds they ask for, in DynamoDB (`docs/dynamodb.md`, "Intake"): the
//! same decisions as the SQLite engine's `admit_in`, kept by conditional writes instead of a
//! transaction's isolation.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValue, TransactWriteItem, Update,
};

use super::item::{get_b, get_n, get_opt_n, get_opt_s, get_s, key, n, opt_s, pad, s, Item};
use super::items::{
    self, build_pk, delivery_pk, due, due_sk, look, BuildRow, DeliveryRow, PushOf, StoredBody,
};
use super::{bad_request, not_configured, sdk_error, DynamoStore};
use crate::store::sqlite::body_codec;
use crate::store::sqlite::schema::body_digest;
use crate::store::{
    build_state, format_millis, token_for, AcceptedBuild, Admission, BuildRequest, DeliveryRecord,
    NewDelivery, PendingBuild, Source, StoreError, Verdict,
};

/// Bodies larger than this go to S3 (DynamoDB's item limit is 400 KB, with the attributes).
pub(super) const MAX_ITEM_BODY: usize = 350 * 1024;
/// Tries at an admission whose conditional writes found that another writer got there first.
pub(super) const ADMIT_TRIES: usize = 3;
/// Most items one `TransactWriteItems` takes.
const MAX_TRANSACTION: usize = 100;

fn push_of(req: &BuildRequest) -> PushOf<'_> {
    PushOf {
        app: req.app.as_str(),
        sha: req.sha.as_str(),
        before: req.before.as_deref(),
        tag: req.tag.as_deref(),
    }
}

/// A build as intake sees it.
#[derive(Clone)]
struct Found {
    id: i64,
    state: String,
}

/// What intake will do for one build request.
struct Step {
    req: BuildRequest,
    existing: Option<Found>,
    /// Whether `existing` is this delivery key's own build (not the push's from another hook).
    from_key: bool,
    /// The push's build that failed for good, which a new build replaces as the push's build.
    failed_push_build: Option<i64>,
}

/// The condition that lets an update touch only an item that exists (an update of a missing
/// key would create one).
const EXISTS: &str = "attribute_exists(pk)";

impl DynamoStore {
    pub(super) fn put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: Option<HashMap<String, AttributeValue>>,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(self.table())
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_values(values)
            .build()
            .map_err(bad_request)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Hands out `count` consecutive ids; the first of them. They come from a block this
    /// process reserved from the table's counter ([`super::ID_BLOCK`] at a time, one
    /// `UpdateItem`), so they increase in the order they are handed out; ids left in a block
    /// when slipway stops are never used (gaps, as after a lost transaction).
    pub(super) async fn take_ids(&self, count: i64) -> Result<i64, StoreError> {
        let mut block = self.inner.ids.lock().await;
        if block.end - block.next < count {
            let reserve = count.max(super::ID_BLOCK);
            let first = self.reserve_ids(reserve).await?;
            *block = super::IdBlock {
                next: first,
                end: first + reserve,
            };
        }
        let first = block.next;
        block.next += count;
        Ok(first)
    }

    /// Ids this process has reserved are not handed out: the next ones come from the counter,
    /// above every id handed out so far (by any process), as an explicit deploy's rank needs.
    /// No id is handed out while the guard is held.
    pub(super) async fn forget_reserved_ids(&self) -> tokio::sync::MutexGuard<'_, super::IdBlock> {
        let mut block = self.inner.ids.lock().await;
        block.next = block.end;
        block
    }

    /// Reserves `count` consecutive ids on the table's counter; the first of them.
    async fn reserve_ids(&self, count: i64) -> Result<i64, StoreError> {
        let out = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key("counter", "ids")))
            .update_expression("ADD n :k")
            .expression_attribute_values(":k", n(count))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB UpdateItem", e))?;
        let last = get_n(out.attributes().unwrap_or(&HashMap::new()), "n")?;
        Ok(last - count + 1)
    }

    /// The items with these keys (those that exist), through `BatchGetItem`, asking again for
    /// what DynamoDB left unprocessed.
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        // BatchGetItem refuses a key named twice.
        let mut unique: BTreeMap<(String, String), Item> = BTreeMap::new();
        for k in keys {
            let id = (
                get_s(&k, "pk").unwrap_or_default(),
                get_s(&k, "sk").unwrap_or_default(),
            );
            unique.insert(id, k);
        }
        let mut found = Vec::new();
        let mut wanted: Vec<Item> = unique.into_values().collect();
        while !wanted.is_empty() {
            let chunk: Vec<Item> = wanted.drain(..wanted.len().min(100)).collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk))
                    .consistent_read(true)
                    .build()
                    .map_err(bad_request)?,
            );
            while let Some(keys) = request.take() {
                let out = self
                    .client()
                    .batch_get_item()
                    .request_items(self.table(), keys)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DynamoDB BatchGetItem", e))?;
                if let Some(items) = out.responses().and_then(|r| r.get(self.table())) {
                    found.extend(items.iter().cloned());
                }
                request = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(self.table()))
                    .filter(|k| !k.keys().is_empty())
                    .cloned();
            }
        }
        Ok(found)
    }

    /// Stores a delivery and the builds it asks for, deduplicated on (hook id, delivery id)
    /// and app, and on the push (the same push from two hooks builds once). Returns the
    /// delivery's row (0 for a duplicate) and what was decided.
    pub async fn admit(
        &self,
        delivery: NewDelivery,
        verdict: Verdict,
    ) -> Result<(i64, Admission), StoreError> {
        let mut result = Err(StoreError::Unavailable {
            reason: "the delivery's builds kept changing under it".into(),
        });
        for _ in 0..ADMIT_TRIES {
            match self.try_admit(&delivery, verdict.clone()).await {
                Ok(Some(done)) => {
                    result = Ok(done);
                    break;
                }
                // Another writer got there first: decide again from what it wrote.
                Ok(None) => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let outcome = match &result {
            Ok((_, Admission::Pong)) => "pong",
            Ok((_, Admission::Ignored(_))) => "ignored",
            Ok((_, Admission::Rejected(_))) => "rejected",
            Ok((_, Admission::Duplicate)) => "duplicate",
            Ok((_, Admission::Accepted(_))) => "accepted",
            Err(StoreError::Unavailable { .. }) => "busy",
            Err(_) => "error",
        };
        // The name as `metrics::DELIVERIES` spells it: the store imports nothing above it.
        metrics::counter!("slipway_deliveries_total", "outcome" => outcome).increment(1);
        result
    }

    /// One try; None if a condition failed (another writer changed what it read).
    async fn try_admit(
        &self,
        d: &NewDelivery,
        verdict: Verdict,
    ) -> Result<Option<(i64, Admission)>, StoreError> {
        let (requests, note) = match verdict {
            Verdict::Pong => {
                let row = self.write_delivery(d, "pong", None, &[], vec![]).await?;
                return Ok(row.map(|row| (row, Admission::Pong)));
            }
            Verdict::Ignored(reason) => {
                let row = self
                    .write_delivery(d, "ignored", Some(&reason), &[], vec![])
                    .await?;
                return Ok(row.map(|row| (row, Admission::Ignored(reason))));
            }
            Verdict::Rejected(reason) => {
                let row = self
                    .write_delivery(d, "rejected", Some(&reason), &[], vec![])
                    .await?;
                return Ok(row.map(|row| (row, Admission::Rejected(reason))));
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
        let dedup_key = d.dedup_key();
        let github = d.source == Source::Github;
        let steps = self.plan(&dedup_key, github, requests).await?;
        let all_started = steps.iter().all(|step| {
            matches!(&step.existing, Some(f)
                if f.state != build_state::PENDING && f.state != build_state::FAILED)
        });
        if all_started && !steps.is_empty() {
            // The delivery's lines show its key's builds (as the SQLite engine's
            // `builds_of_delivery`), not another hook's.
            let seen: Vec<i64> = steps
                .iter()
                .filter(|s| s.from_key)
                .filter_map(|s| s.existing.as_ref())
                .map(|f| f.id)
                .collect();
            let row = self
                .write_delivery(
                    d,
                    "duplicate",
                    Some("every build this delivery asks for was already started"),
                    &seen,
                    vec![],
                )
                .await?;
            return Ok(row.map(|_| (0, Admission::Duplicate)));
        }
        let new_builds = steps.iter().filter(|s| s.existing.is_none()).count() as i64;
        let row = self.take_ids(1 + new_builds).await?;
        let now = d.received_ms;
        let mut next_id = row + 1;
        let mut writes = Vec::new();
        let mut accepted = Vec::new();
        let mut build_rows = Vec::new();
        for step in steps {
            let req = step.req;
            match step.existing {
                None => {
                    let id = next_id;
                    next_id += 1;
                    let token = token_for(&dedup_key, req.app.as_str());
                    let build = items::build_item(&BuildRow {
                        id,
                        delivery_row: row,
                        delivery_id: d.delivery_id.as_str().to_owned(),
                        dedup_key: dedup_key.clone(),
                        app: req.app.as_str().to_owned(),
                        sha: req.sha.as_str().to_owned(),
                        project: req.project.clone(),
                        image_tag: req.image_tag.clone(),
                        token,
                        state: build_state::PENDING.to_owned(),
                        attempts: 0,
                        next_attempt_ms: now,
                        start_requested_ms: None,
                        build_id: None,
                        build_arn: None,
                        reason: None,
                        log_link: None,
                        created_ms: now,
                        updated_ms: now,
                        service_key: req.service_key.clone(),
                        before_sha: req.before.clone(),
                        pushed_at: Some(req.pushed_at.unwrap_or(now / 1000)),
                        tag: req.tag.clone(),
                        deployment: None,
                    });
                    writes.push(self.put(build, None, None)?);
                    let by_key = items::delivery_key_item(&dedup_key, req.app.as_str(), id);
                    writes.push(self.put(by_key, Some("attribute_not_exists(pk)"), None)?);
                    if github {
                        let push = items::push_key_item(&push_of(&req), id);
                        let (condition, values) = match step.failed_push_build {
                            Some(failed) => (
                                "attribute_not_exists(pk) OR #b = :failed",
                                Some(HashMap::from([(":failed".to_owned(), n(failed))])),
                            ),
                            None => ("attribute_not_exists(pk)", None),
                        };
                        let put =
                            Put::builder()
                                .table_name(self.table())
                                .set_item(Some(push))
                                .condition_expression(condition)
                                .set_expression_attribute_values(values)
                                .set_expression_attribute_names(step.failed_push_build.map(|_| {
                                    HashMap::from([("#b".to_owned(), "build".to_owned())])
                                }))
                                .build()
                                .map_err(bad_request)?;
                        writes.push(TransactWriteItem::builder().put(put).build());
                    }
                    writes.push(self.put(
                        items::commit_item(req.app.as_str(), req.sha.as_str()),
                        None,
                        None,
                    )?);
                    build_rows.push(id);
                    accepted.push(AcceptedBuild {
                        app: req.app,
                        sha: req.sha,
                        build_row: id,
                        retry: false,
                    });
                }
                Some(found)
                    if found.state == build_state::PENDING
                        || found.state == build_state::FAILED =>
                {
                    // Never started: the redelivery is a retry. Try again now.
                    let reset = if found.state == build_state::FAILED {
                        ", attempts = :zero"
                    } else {
                        ""
                    };
                    let mut values = HashMap::from([
                        (":pending".to_owned(), s(build_state::PENDING)),
                        (":now".to_owned(), n(now)),
                        (":due_pk".to_owned(), s(due::BUILD)),
                        (":due_sk".to_owned(), s(due_sk(now, found.id))),
                        (":seen".to_owned(), s(&found.state)),
                    ]);
                    if !reset.is_empty() {
                        values.insert(":zero".to_owned(), n(0));
                    }
                    let update = Update::builder()
                        .table_name(self.table())
                        .set_key(Some(key(build_pk(found.id), "build")))
                        .update_expression(format!(
                            "SET #st = :pending, next_attempt_ms = :now, updated_ms = :now, \
                             due_pk = :due_pk, due_sk = :due_sk{reset}"
                        ))
                        .condition_expression("#st = :seen")
                        .expression_attribute_names("#st", "state")
                        .set_expression_attribute_values(Some(values))
                        .build()
                        .map_err(bad_request)?;
                    writes.push(TransactWriteItem::builder().update(update).build());
                    // The push's build failed for good and this one is retried: it becomes the
                    // push's build, so another hook's redelivery finds it (as the SQLite
                    // engine's newest live build of the push) instead of retrying its own.
                    if let Some(failed) = step.failed_push_build.filter(|f| *f != found.id) {
                        let push = items::push_key_item(&push_of(&req), found.id);
                        let put = Put::builder()
                            .table_name(self.table())
                            .set_item(Some(push))
                            .condition_expression("#b = :failed")
                            .expression_attribute_names("#b", "build")
                            .expression_attribute_values(":failed", n(failed))
                            .build()
                            .map_err(bad_request)?;
                        writes.push(TransactWriteItem::builder().put(put).build());
                    }
                    if step.from_key {
                        build_rows.push(found.id);
                    }
                    accepted.push(AcceptedBuild {
                        app: req.app,
                        sha: req.sha,
                        build_row: found.id,
                        retry: true,
                    });
                }
                // Already started; the others go on.
                Some(found) => {
                    if step.from_key {
                        build_rows.push(found.id);
                    }
                }
            }
        }
        let written = self
            .write_delivery_with(d, row, "accepted", note.as_deref(), &build_rows, writes)
            .await?;
        Ok(written.map(|row| (row, Admission::Accepted(accepted))))
    }

    /// Reads what intake decides from: each request's build by this delivery's key, and the
    /// push's build.
    async fn plan(
        &self,
        dedup_key: &str,
        github: bool,
        requests: Vec<BuildRequest>,
    ) -> Result<Vec<Step>, StoreError> {
        let mut keys = Vec::new();
        for req in &requests {
            keys.push(items::delivery_key(dedup_key, req.app.as_str()));
            if github {
                keys.push(items::push_key(&push_of(req)));
            }
        }
        let pointers: HashMap<(String, String), i64> = self
            .batch_get(keys)
            .await?
            .iter()
            .map(|item| {
                Ok((
                    (get_s(item, "pk")?, get_s(item, "sk")?),
                    get_n(item, "build")?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let states: HashMap<i64, String> = self
            .batch_get(
                pointers
                    .values()
                    .map(|id| key(build_pk(*id), "build"))
                    .collect(),
            )
            .await?
            .iter()
            .map(|item| Ok((get_n(item, "row")?, get_s(item, "state")?)))
            .collect::<Result<_, StoreError>>()?;
        let found = |k: Item| -> Option<Found> {
            let id = *pointers.get(&(get_s(&k, "pk").ok()?, get_s(&k, "sk").ok()?))?;
            Some(Found {
                id,
                state: states.get(&id)?.clone(),
            })
        };
        let mut steps = Vec::with_capacity(requests.len());
        for req in requests {
            let by_key = found(items::delivery_key(dedup_key, req.app.as_str()));
            let push = if github {
                found(items::push_key(&push_of(&req)))
            } else {
                None
            };
            let failed_push_build = push
                .as_ref()
                .filter(|f| f.state == build_state::FAILED)
                .map(|f| f.id);
            let live_push = push.filter(|f| f.state != build_state::FAILED);
            // As the SQLite engine: the key's build unless it failed for good; then (GitHub
            // deliveries) the push's live build from another hook; else the failed one, retried.
            let by_key_id = by_key.as_ref().map(|f| f.id);
            let existing = match by_key {
                Some(f) if f.state != build_state::FAILED => Some(f),
                found if github => live_push.or(found),
                found => found,
            };
            steps.push(Step {
                from_key: existing.as_ref().map(|f| f.id) == by_key_id && by_key_id.is_some(),
                req,
                existing,
                failed_push_build,
            });
        }
        Ok(steps)
    }

    /// Writes a delivery that makes no build (with a fresh row); None if a condition failed.
    async fn write_delivery(
        &self,
        d: &NewDelivery,
        outcome: &str,
        reason: Option<&str>,
        builds: &[i64],
        writes: Vec<TransactWriteItem>,
    ) -> Result<Option<i64>, StoreError> {
        let row = self.take_ids(1).await?;
        self.write_delivery_with(d, row, outcome, reason, builds, writes)
            .await
    }

    /// Writes delivery `row` and its body together with `writes`, in one transaction; None if
    /// one of the writes' conditions failed (nothing was written then).
    async fn write_delivery_with(
        &self,
        d: &NewDelivery,
        row: i64,
        outcome: &str,
        reason: Option<&str>,
        builds: &[i64],
        mut writes: Vec<TransactWriteItem>,
    ) -> Result<Option<i64>, StoreError> {
        let (encoding, stored) = body_codec::encode(&d.body);
        let keep_ignored_days = self.inner.settings.keep_ignored_days;
        let item = items::delivery_item(
            &DeliveryRow {
                row,
                delivery_id: d.delivery_id.as_str().to_owned(),
                hook_id: d.hook_id.as_str().to_owned(),
                event: d.event.clone(),
                source: d.source.as_str().to_owned(),
                actor: d.actor.clone(),
                replay_of: d.replay_of,
                received_ms: d.received_ms,
                content_type: d.content_type.clone(),
                headers: d.headers.to_string(),
                dedup_key: d.dedup_key(),
                outcome: outcome.to_owned(),
                reason: reason.map(str::to_owned),
                builds: builds.to_vec(),
                body_kept: true,
            },
            keep_ignored_days,
        );
        let stored = self.stored_body(&body_digest(&d.body), stored).await?;
        let body = items::body_item(
            row,
            encoding,
            stored,
            items::delivery_expiry(outcome, d.received_ms, keep_ignored_days),
        );
        writes.push(self.put(item, Some("attribute_not_exists(pk)"), None)?);
        writes.push(self.put(body, None, None)?);
        if writes.len() > MAX_TRANSACTION {
            return Err(StoreError::Invalid(format!(
                "a delivery asking for {} writes is more than one DynamoDB transaction takes ({MAX_TRANSACTION})",
                writes.len()
            )));
        }
        let sent = self
            .client()
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Some(row)),
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(transaction_error(e)),
        }
    }

    /// Pending builds whose next attempt is due, by when they are due (the `due` index).
    pub async fn due_builds(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingBuild>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("due")
            .key_condition_expression("due_pk = :build AND due_sk < :after")
            .expression_attribute_values(":build", s(due::BUILD))
            .expression_attribute_values(":after", s(pad(now_ms.saturating_add(1))))
            .limit(limit.clamp(1, i32::MAX as u32) as i32)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        out.items()
            .iter()
            .map(|item| {
                Ok(PendingBuild {
                    id: get_n(item, "row")?,
                    delivery_id: get_s(item, "delivery_id")?,
                    app: get_s(item, "app")?,
                    sha: get_s(item, "sha")?,
                    project: get_s(item, "project")?,
                    image_tag: get_s(item, "image_tag")?,
                    token: get_s(item, "token")?,
                    attempts: get_n(item, "attempts")? as u32,
                    start_requested: get_opt_n(item, "start_requested_ms")?.is_some(),
                    tag: get_opt_s(item, "tag")?,
                })
            })
            .collect()
    }

    /// When the earliest pending build is due, if any is pending.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("due")
            .key_condition_expression("due_pk = :build")
            .expression_attribute_values(":build", s(due::BUILD))
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        match out.items().first() {
            None => Ok(None),
            Some(item) => Ok(Some(get_n(item, "next_attempt_ms")?)),
        }
    }

    /// Runs an update of build `id` whose condition (besides that the build exists) may fail:
    /// then nothing changes, as the SQLite engine's `UPDATE … WHERE state = …` changes no row.
    pub(super) async fn update_build(
        &self,
        id: i64,
        expression: &str,
        condition: Option<&str>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), StoreError> {
        let condition = match condition {
            Some(c) => format!("{EXISTS} AND {c}"),
            None => EXISTS.to_owned(),
        };
        let names_state = expression.contains("#st") || condition.contains("#st");
        let mut update = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(build_pk(id), "build")))
            .update_expression(expression)
            .condition_expression(condition);
        if names_state {
            update = update.expression_attribute_names("#st", "state");
        }
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        super::update_if(update).await?;
        Ok(())
    }

    /// Records that StartBuild is about to be called (so a restart knows to look for a build
    /// that may have been started before the answer was recorded).
    pub async fn build_start_requested(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.update_build(
            id,
            "SET start_requested_ms = :now, updated_ms = :now",
            None,
            vec![(":now", n(now_ms))],
        )
        .await
    }

    pub async fn build_started(
        &self,
        id: i64,
        build_id: String,
        build_arn: Option<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_build(
            id,
            "SET #st = :started, build_id = :build_id, build_arn = :arn, \
             attempts = attempts + :one, updated_ms = :now, look_pk = :look, look_sk = :row, \
             due_pk = :inflight, due_sk = :due \
             REMOVE reason",
            Some("#st = :pending"),
            vec![
                (":started", s(build_state::STARTED)),
                (":build_id", s(&build_id)),
                (":arn", opt_s(build_arn)),
                (":one", n(1)),
                (":now", n(now_ms)),
                (":look", s(look::build_id(&build_id))),
                (":row", s(pad(id))),
                (":inflight", s(due::INFLIGHT)),
                (":due", s(due_sk(now_ms, id))),
                (":pending", s(build_state::PENDING)),
            ],
        )
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
        self.update_build(
            id,
            "SET attempts = attempts + :one, reason = :reason, next_attempt_ms = :next, \
             updated_ms = :now, due_sk = :due",
            Some("#st = :pending"),
            vec![
                (":one", n(1)),
                (":reason", s(reason)),
                (":next", n(next_attempt_ms)),
                (":now", n(now_ms)),
                (":due", s(due_sk(next_attempt_ms, id))),
                (":pending", s(build_state::PENDING)),
            ],
        )
        .await
    }

    /// A permanent failure: StartBuild will not be called again unless GitHub redelivers.
    pub async fn build_failed_to_start(
        &self,
        id: i64,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_build(
            id,
            "SET #st = :failed, attempts = attempts + :one, reason = :reason, updated_ms = :now \
             REMOVE due_pk, due_sk",
            Some("#st = :pending"),
            vec![
                (":failed", s(build_state::FAILED)),
                (":one", n(1)),
                (":reason", s(reason)),
                (":now", n(now_ms)),
                (":pending", s(build_state::PENDING)),
            ],
        )
        .await
    }

    /// A delivery by row (digits) or by GitHub delivery id (the newest with that id).
    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        if let Ok(row) = id.parse::<i64>() {
            if let Some(record) = self.delivery_by_row(row).await? {
                return Ok(Some(record));
            }
        }
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .index_name("lookup")
            .key_condition_expression("look_pk = :guid")
            .expression_attribute_values(":guid", s(look::guid(id)))
            .scan_index_forward(false)
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        match out.items().first() {
            None => Ok(None),
            Some(item) => self.delivery_by_row(get_n(item, "row")?).await,
        }
    }

    /// Delivery `row` and its body: one `Query` on the delivery's partition.
    async fn delivery_by_row(&self, row: i64) -> Result<Option<DeliveryRecord>, StoreError> {
        let out = self
            .client()
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(delivery_pk(row)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", e))?;
        let mut record = None;
        let mut body = None;
        for item in out.items() {
            match get_s(item, "sk")?.as_str() {
                "delivery" => record = Some(item),
                "body" => body = Some(self.read_body(item).await?),
                _ => {}
            }
        }
        let Some(d) = record else { return Ok(None) };
        Ok(Some(DeliveryRecord {
            row,
            delivery: get_s(d, "delivery_id")?,
            hook_id: get_s(d, "hook_id")?,
            event: get_s(d, "event")?,
            source: get_s(d, "source")?,
            actor: get_opt_s(d, "actor")?,
            replay_of: get_opt_n(d, "replay_of")?,
            received_at: format_millis(get_n(d, "received_ms")?),
            content_type: get_s(d, "content_type")?,
            headers: serde_json::from_str(&get_s(d, "headers")?).unwrap_or(serde_json::Value::Null),
            outcome: get_s(d, "outcome")?,
            reason: get_opt_s(d, "reason")?,
            body,
        }))
    }

    /// Proves the table takes a write (for `/readyz`).
    pub async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut item = key("meta", "ready_check");
        item.insert("value".into(), n(now_ms));
        self.client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB PutItem", e))?;
        Ok(())
    }
}

/// Whether a transaction was cancelled because another writer got there first: one of its
/// conditions failed, or another transaction was writing the same item
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).
pub(super) fn condition_failed<R>(
    e: &aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, R>,
) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
            c.cancellation_reasons().iter().any(|r| {
                matches!(
                    r.code(),
                    Some("ConditionalCheckFailed" | "TransactionConflict")
                )
            })
        }
        _ => false,
    }
}

/// Reasons DynamoDB cancels a transaction for that say nothing about its items: throttled, it
/// may go through later (the TransactWriteItems reference's `CancellationReasons`).
const THROTTLED_REASONS: [&str; 2] = ["ThrottlingError", "ProvisionedThroughputExceeded"];

/// A failed transaction as a store error: cancelled because DynamoDB throttled one of its
/// items (no condition failed: [`condition_failed`] is asked first) is `Unavailable`, as a
/// throttled single write is; the rest as [`sdk_error`] sorts them.
pub(super) fn transaction_error(
    e: aws_sdk_dynamodb::error::SdkError<
        TransactWriteItemsError,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> StoreError {
    if let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error() {
        let codes: Vec<&str> = c
            .cancellation_reasons()
            .iter()
            .filter_map(|r| r.code())
            .collect();
        if codes.iter().any(|code| THROTTLED_REASONS.contains(code)) {
            return StoreError::Unavailable {
                reason: format!(
                    "DynamoDB TransactWriteItems: cancelled, DynamoDB throttled it ({})",
                    codes.join(", ")
                ),
            };
        }
    }
    sdk_error("DynamoDB TransactWriteItems", e)
}

impl DynamoStore {
    /// Where a body's stored bytes go: in its item, or (over [`MAX_ITEM_BODY`]) in the bodies
    /// bucket under the SHA-256 of the body as received (`digest`), one object per distinct
    /// body: a second put of the same body writes the same bytes. Written before the item
    /// that names it, so a stored delivery's body is always there.
    pub(super) async fn stored_body(
        &self,
        digest: &[u8],
        stored: Vec<u8>,
    ) -> Result<StoredBody, StoreError> {
        if stored.len() <= MAX_ITEM_BODY {
            return Ok(StoredBody::Inline(stored));
        }
        let Some((s3, bucket)) = &self.inner.bodies else {
            return Err(not_configured(&format!(
                "a body of {} bytes stored is over 350 KB and there is no [store] bodies_bucket \
                 to keep it in",
                stored.len()
            )));
        };
        let object = format!("{}{}", super::BODIES_PREFIX, hex::encode(digest));
        s3.put_object()
            .bucket(bucket)
            .key(&object)
            .body(aws_sdk_s3::primitives::ByteStream::from(stored))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("S3 PutObject s3://{bucket}/{object}"), e))?;
        Ok(StoredBody::S3(object))
    }

    /// A body item's body as received: from the item, or from the bodies bucket.
    pub(super) async fn read_body(&self, item: &Item) -> Result<Vec<u8>, StoreError> {
        let encoding = get_s(item, "enc")?;
        let Some(object) = get_opt_s(item, "s3_key")? else {
            let stored = get_b(item, "body")?.unwrap_or_default();
            return body_codec::decode(&encoding, &stored);
        };
        let Some((s3, bucket)) = &self.inner.bodies else {
            return Err(StoreError::Invalid(format!(
                "the body is in S3 ({object}) and there is no [store] bodies_bucket"
            )));
        };
        let out = s3
            .get_object()
            .bucket(bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("S3 GetObject s3://{bucket}/{object}"), e))?;
        let stored = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable {
                reason: format!("S3 GetObject s3://{bucket}/{object}: {e}"),
            })?;
        body_codec::decode(&encoding, &stored.into_bytes())
    }
}
