//! Deployments: one record per deploy of a commit (or a rollback) to an ECS service.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::deliveries::BUILDS_OF_DELIVERY;
use super::{SqliteStore, StoreError};
use crate::store::build_state;
use crate::store::deployments::*;

pub(crate) const COLUMNS: &str =
    "id, app, service_key, sha, image_tag, trigger, actor, build_row, build_id,
    delivery_id, order_key, target_task_definition, image, from_task_definition,
    to_task_definition, ecs_deployment_id, state, reason, log_link, running_count,
    desired_count, failed_tasks, created_ms, updated_ms, started_ms, finished_ms, stage,
    service_deployment_arn, deadline_ms, deadline_why, unseen, from_original,
    rollback_requested_ms, tag, promotion";

pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        app: r.get(1)?,
        service_key: r.get(2)?,
        sha: r.get(3)?,
        image_tag: r.get(4)?,
        trigger: r.get(5)?,
        actor: r.get(6)?,
        build_row: r.get(7)?,
        build_id: r.get(8)?,
        delivery_id: r.get(9)?,
        order_key: r.get(10)?,
        target_task_definition: r.get(11)?,
        image: r.get(12)?,
        from_task_definition: r.get(13)?,
        to_task_definition: r.get(14)?,
        ecs_deployment_id: r.get(15)?,
        state: r.get(16)?,
        reason: r.get(17)?,
        log_link: r.get(18)?,
        running_count: r.get(19)?,
        desired_count: r.get(20)?,
        failed_tasks: r.get(21)?,
        created_ms: r.get(22)?,
        updated_ms: r.get(23)?,
        started_ms: r.get(24)?,
        finished_ms: r.get(25)?,
        stage: r.get(26)?,
        service_deployment_arn: r.get(27)?,
        deadline_ms: r.get(28)?,
        deadline_why: r.get(29)?,
        unseen: r.get(30)?,
        from_original: r.get(31)?,
        rollback_requested_ms: r.get(32)?,
        tag: r.get(33)?,
        promotion: r.get(34)?,
    })
}

/// Deploys of a service rank by `(pushed_at, order_key, id)`: first by when GitHub received
/// the push (NULL, from before issue 24, counts as 0), so that a push delivered late
/// (recovery, GitHub's redelivery, a replayed file) never ranks above one pushed after it;
/// then by `order_key`, the journal order of the push (below).
///
/// The rank of a push's deploy within its push time: journal order of the push.
fn push_rank(build_row: i64) -> i64 {
    2 * build_row
}

/// The push time an explicit deploy ranks at: the latest of the pushes journaled recently (the
/// newest thousand builds, read by their primary key), so it ranks above them and below pushes
/// made after it.
const EXPLICIT_PUSHED_AT: &str =
    "SELECT MAX(pushed_at) FROM (SELECT pushed_at FROM builds ORDER BY id DESC LIMIT 1000)";

pub(super) fn insert_deployment(
    c: &Connection,
    d: &NewDeployment,
    now: i64,
) -> Result<i64, StoreError> {
    let (order_key, pushed_at): (i64, Option<i64>) = match (d.order_key, d.build_row) {
        (Some(k), Some(row)) => {
            let pushed_at = c
                .query_row("SELECT pushed_at FROM builds WHERE id = ?1", [row], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
            (k, pushed_at)
        }
        (Some(k), None) => (k, None),
        // Explicit deploys rank above every push journaled so far (and below later ones).
        (None, _) => {
            let newest: i64 =
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM builds", [], |r| r.get(0))?;
            let pushed_at = c.query_row(EXPLICIT_PUSHED_AT, [], |r| r.get(0))?;
            (push_rank(newest) + 1, pushed_at)
        }
    };
    c.execute(
        "INSERT INTO deployments (app, service_key, sha, image_tag, trigger, actor, build_row,
             build_id, delivery_id, order_key, target_task_definition, log_link, state,
             created_ms, updated_ms, pushed_at, tag, promotion)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, ?16,
                 ?17)",
        params![
            d.app,
            d.service_key,
            d.sha,
            d.image_tag,
            d.trigger,
            d.actor,
            d.build_row,
            d.build_id,
            d.delivery_id,
            order_key,
            d.target_task_definition,
            d.log_link,
            deploy_state::PENDING,
            now,
            pushed_at,
            d.tag,
            d.promotion,
        ],
    )?;
    Ok(c.last_insert_rowid())
}

/// The build a CodeBuild result is about: by its id, or (a start whose answer was never
/// journaled) by its run token among the builds whose start was requested. Only those are in
/// `builds_by_token`, so intake never writes to that index.
pub(crate) const FIND_COMPLETED_BUILD: &str =
    "SELECT b.id, b.app, b.sha, b.image_tag, d.delivery_id, b.service_key, b.build_id
     FROM builds b JOIN deliveries d ON d.id = b.delivery
     WHERE b.build_id = ?1
        OR (b.build_id IS NULL AND b.start_requested_ms IS NOT NULL AND b.token = ?2)
     ORDER BY (b.build_id = ?1) DESC LIMIT 1";

fn complete_build(
    c: &Connection,
    done: &BuildCompletion,
    now: i64,
) -> Result<CompletionOutcome, StoreError> {
    type BuildRow = (i64, String, String, String, String, String, Option<String>);
    let row: Option<BuildRow> = c
        .query_row(
            FIND_COMPLETED_BUILD,
            params![done.build_id, done.run_token.as_deref().unwrap_or("-")],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .optional()?;
    if let Some((build_row, .., None)) = &row {
        // Started by slipway, but the answer was never journaled: adopt it now.
        c.execute(
            "UPDATE builds SET build_id = ?2, state = CASE WHEN state = ?3 THEN ?4 ELSE state END,
                 updated_ms = ?5
             WHERE id = ?1",
            params![
                build_row,
                done.build_id,
                build_state::PENDING,
                build_state::STARTED,
                now
            ],
        )?;
    }
    let Some((build_row, app, sha, image_tag, delivery_id, service_key, _)) = row else {
        let Some(foreign) = &done.foreign else {
            return Ok(CompletionOutcome::Foreign);
        };
        if !done.succeeded {
            return Ok(CompletionOutcome::Failed {
                app: foreign.app.clone(),
                sha: foreign.sha.clone(),
                first_time: false,
            });
        }
        let existing: Option<i64> = c
            .query_row(
                "SELECT id FROM deployments WHERE build_id = ?1",
                [&done.build_id],
                |r| r.get(0),
            )
            .optional()?;
        return Ok(match existing {
            Some(id) => CompletionOutcome::Deploy {
                deployment: id,
                created: false,
            },
            None => CompletionOutcome::Deploy {
                deployment: insert_deployment(c, foreign, now)?,
                created: true,
            },
        });
    };
    if !done.succeeded {
        let changed = c.execute(
            "UPDATE builds SET state = ?2, reason = ?3, log_link = COALESCE(?4, log_link),
                 updated_ms = ?5
             WHERE id = ?1 AND state != ?2",
            params![
                build_row,
                build_state::BUILD_FAILED,
                format!("build {}", done.status),
                done.log_link,
                now
            ],
        )?;
        return Ok(CompletionOutcome::Failed {
            app,
            sha,
            first_time: changed > 0,
        });
    }
    c.execute(
        "UPDATE builds SET state = ?2, log_link = COALESCE(?3, log_link), updated_ms = ?4
         WHERE id = ?1 AND state != ?2",
        params![build_row, build_state::SUCCEEDED, done.log_link, now],
    )?;
    let existing: Option<i64> = c
        .query_row(
            "SELECT id FROM deployments WHERE build_row = ?1",
            [build_row],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(CompletionOutcome::Deploy {
            deployment: id,
            created: false,
        });
    }
    let tag: Option<String> =
        c.query_row("SELECT tag FROM builds WHERE id = ?1", [build_row], |r| {
            r.get(0)
        })?;
    let id = insert_deployment(
        c,
        &NewDeployment {
            app,
            service_key,
            sha,
            image_tag,
            trigger: trigger::PUSH,
            actor: None,
            build_row: Some(build_row),
            build_id: Some(done.build_id.clone()),
            delivery_id: Some(delivery_id),
            order_key: Some(push_rank(build_row)),
            target_task_definition: None,
            log_link: done.log_link.clone(),
            tag,
            promotion: None,
        },
        now,
    )?;
    Ok(CompletionOutcome::Deploy {
        deployment: id,
        created: true,
    })
}

impl SqliteStore {
    /// Records a build's terminal state and, for a success, the deployment it leads to (once,
    /// however often CodeBuild or SQS repeat themselves).
    pub async fn complete_build(
        &self,
        done: BuildCompletion,
        now_ms: i64,
    ) -> Result<CompletionOutcome, StoreError> {
        self.write(move |c| complete_build(c, &done, now_ms)).await
    }

    pub async fn request_deployment(
        &self,
        d: NewDeployment,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.write(move |c| insert_deployment(c, &d, now_ms)).await
    }

    pub async fn deployment(&self, id: i64) -> Result<Option<Deployment>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Deployments that are not finished: pending or deploying, oldest first.
    pub async fn unfinished_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE state IN (?1, ?2) ORDER BY id"
            ))?;
            let rows = stmt
                .query_map(
                    params![deploy_state::PENDING, deploy_state::DEPLOYING],
                    from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// A deployment of the same service that is newer than `d` and is going ahead or went
    /// ahead: ranked after it, or (for pushes) the deploy of a push that followed `d`'s commit
    /// (its `before` is `d`'s commit), whatever order GitHub delivered them in.
    pub async fn newer_deployment(&self, d: &Deployment) -> Result<Option<Deployment>, StoreError> {
        let (key, order, id, sha) = (d.service_key.clone(), d.order_key, d.id, d.sha.clone());
        let automatic = d.trigger == trigger::PUSH || d.trigger == trigger::FOREIGN_BUILD;
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM deployments n
                     WHERE n.service_key = ?1 AND n.id != ?3 AND n.state IN (?4, ?5, ?6)
                       AND ((COALESCE(n.pushed_at, 0), n.order_key, n.id)
                                > (COALESCE((SELECT pushed_at FROM deployments WHERE id = ?3), 0),
                                   ?2, ?3)
                            OR (?7 AND EXISTS (SELECT 1 FROM builds b
                                    WHERE b.id = n.build_row AND b.before_sha = ?8)))
                     ORDER BY COALESCE(n.pushed_at, 0) DESC, n.order_key DESC, n.id DESC
                     LIMIT 1"
                ),
                params![
                    key,
                    order,
                    id,
                    deploy_state::PENDING,
                    deploy_state::DEPLOYING,
                    deploy_state::SUCCEEDED,
                    automatic,
                    sha,
                ],
                from_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn update_deployment(
        &self,
        id: i64,
        u: DeploymentUpdate,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            if let Some(fence) = &u.fence {
                super::leases::check_fence(c, fence)?;
            }
            let finished = u.state.is_some_and(deploy_state::is_terminal);
            let (running, desired, failed) = match u.progress {
                Some((r, d, f)) => (Some(r), Some(d), Some(f)),
                None => (None, None, None),
            };
            c.execute(
                "UPDATE deployments SET
                    state = COALESCE(?2, state),
                    reason = COALESCE(?3, reason),
                    image = COALESCE(?4, image),
                    from_task_definition = COALESCE(?5, from_task_definition),
                    to_task_definition = COALESCE(?6, to_task_definition),
                    ecs_deployment_id = COALESCE(?7, ecs_deployment_id),
                    started_ms = CASE WHEN ?14 THEN ?9 WHEN ?8 AND started_ms IS NULL THEN ?9 ELSE started_ms END,
                    finished_ms = CASE WHEN ?10 THEN ?9 ELSE finished_ms END,
                    running_count = COALESCE(?11, running_count),
                    desired_count = COALESCE(?12, desired_count),
                    failed_tasks = COALESCE(?13, failed_tasks),
                    stage = CASE WHEN ?10 THEN NULL ELSE COALESCE(?15, stage) END,
                    service_deployment_arn = COALESCE(?16, service_deployment_arn),
                    deadline_ms = COALESCE(?17, deadline_ms),
                    deadline_why = COALESCE(?18, deadline_why),
                    unseen = CASE WHEN ?10 OR ?19 = '' THEN NULL ELSE COALESCE(?19, unseen) END,
                    from_original = COALESCE(?20, from_original),
                    rollback_requested_ms = CASE WHEN ?21 AND rollback_requested_ms IS NULL
                        THEN ?9 ELSE rollback_requested_ms END,
                    updated_ms = ?9
                 WHERE id = ?1",
                params![
                    id,
                    u.state,
                    u.reason,
                    u.image,
                    u.from_task_definition,
                    u.to_task_definition,
                    u.ecs_deployment_id,
                    u.started,
                    now_ms,
                    finished,
                    running,
                    desired,
                    failed,
                    u.restart_clock,
                    u.stage,
                    u.service_deployment_arn,
                    u.deadline.as_ref().map(|d| d.0),
                    u.deadline.as_ref().map(|d| d.1.clone()),
                    u.unseen,
                    u.from_original,
                    u.rollback_requested,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Recent deployments, newest first, optionally of one app.
    pub async fn recent_deployments(
        &self,
        app: Option<String>,
        limit: u32,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE (?1 IS NULL OR app = ?1)
                 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![app, limit], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Builds started before `before_ms` whose result never arrived.
    pub async fn builds_in_flight(&self, before_ms: i64) -> Result<Vec<InFlightBuild>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, build_id, app FROM builds
                 WHERE state = ?1 AND build_id IS NOT NULL AND updated_ms <= ?2
                 ORDER BY updated_ms LIMIT 100",
            )?;
            let rows = stmt
                .query_map(params![build_state::STARTED, before_ms], |r| {
                    Ok(InFlightBuild {
                        build_row: r.get(0)?,
                        build_id: r.get(1)?,
                        app: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

impl SqliteStore {
    /// The task definition the newest finished deploy of a service left running (its new
    /// revision when it succeeded, the previous one when it was rolled back): a guess at what
    /// the service runs now, so the deploy can read it while it asks ECS.
    pub async fn last_deployed_task_definition(
        &self,
        service_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = service_key.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT CASE state WHEN ?2 THEN to_task_definition ELSE from_task_definition END
                 FROM deployments WHERE service_key = ?1 AND state IN (?2, ?3)
                 ORDER BY COALESCE(pushed_at, 0) DESC, order_key DESC, id DESC LIMIT 1",
                params![key, deploy_state::SUCCEEDED, deploy_state::ROLLED_BACK],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
        })
        .await
    }

    /// Succeeded deployments of `app`, newest first.
    pub async fn successful_deployments(&self, app: &str) -> Result<Vec<Deployment>, StoreError> {
        let app = app.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE app = ?1 AND state = ?2
                 AND to_task_definition IS NOT NULL ORDER BY id DESC LIMIT 100"
            ))?;
            let rows = stmt
                .query_map(params![app, deploy_state::SUCCEEDED], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deployments that came from the builds of one delivery key.
    pub async fn deployments_of_delivery(
        &self,
        delivery_row: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE build_row IN ({BUILDS_OF_DELIVERY})
                 ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([delivery_row], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

impl SqliteStore {
    /// Marks builds as asked about, so the reconciler's next pass starts with others.
    pub async fn builds_checked(&self, rows: Vec<i64>, now_ms: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            for row in rows {
                c.execute(
                    "UPDATE builds SET updated_ms = ?2 WHERE id = ?1 AND state = ?3",
                    params![row, now_ms, build_state::STARTED],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// A build CodeBuild says it does not know: it will never end, so it failed.
    pub async fn build_unknown_to_codebuild(
        &self,
        row: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE builds SET state = ?2, reason = 'CodeBuild does not know this build',
                     updated_ms = ?3
                 WHERE id = ?1 AND state = ?4",
                params![row, build_state::BUILD_FAILED, now_ms, build_state::STARTED],
            )?;
            Ok(())
        })
        .await
    }
}
