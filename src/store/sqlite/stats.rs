//! Read-only views for issue 10: the scrape-time build gauges and the pipeline runs the status
//! page lists.

use rusqlite::params;

use super::{SqliteStore, StoreError};
use crate::store::build_state;
use crate::store::stats::*;

impl SqliteStore {
    /// How many builds wait for StartBuild, and for how long the oldest has.
    pub async fn pending_builds(&self, now_ms: i64) -> Result<PendingBuilds, StoreError> {
        self.read(move |c| {
            let (count, oldest): (i64, Option<i64>) = c.query_row(
                "SELECT COUNT(*), MIN(created_ms) FROM builds WHERE state = ?1",
                params![build_state::PENDING],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(PendingBuilds {
                count: count.max(0) as u64,
                oldest_age_ms: oldest.map_or(0, |t| (now_ms - t).max(0)),
            })
        })
        .await
    }

    /// The newest `limit` pipeline runs, newest first: builds with the delivery that asked for
    /// them and their deployment, and deployments no build started (operator deploys,
    /// rollbacks).
    pub async fn recent_runs(&self, limit: u32) -> Result<Vec<Run>, StoreError> {
        self.read(move |c| {
            // Who pushed is in the payload (`pusher.name`); a replay names its operator. The
            // payload is whatever was signed: the name is read by its JSON type (a number is
            // shown as text; an object, array or boolean as nothing), so no payload can make
            // the column anything but text or NULL (issue 23 item 5).
            let mut stmt = c.prepare_cached(
                "SELECT b.app, b.sha, d.source,
                        COALESCE(d.actor,
                          (SELECT CASE WHEN json_valid(t) THEN
                               CASE json_type(t, '$.pusher.name')
                                 WHEN 'text' THEN json_extract(t, '$.pusher.name')
                                 WHEN 'integer' THEN CAST(json_extract(t, '$.pusher.name') AS TEXT)
                                 WHEN 'real' THEN CAST(json_extract(t, '$.pusher.name') AS TEXT)
                               END END
                           FROM (SELECT CAST(slipway_body(bo.encoding, bo.body) AS TEXT) AS t
                                 FROM bodies bo WHERE bo.id = d.body_id))),
                        d.received_ms, d.delivery_id,
                        b.state, b.build_id, b.log_link, b.reason, b.updated_ms,
                        dp.id, dp.state, dp.reason, dp.log_link, dp.updated_ms
                 FROM builds b
                 JOIN deliveries d ON d.id = b.delivery
                 LEFT JOIN deployments dp ON dp.build_row = b.id
                 ORDER BY b.id DESC LIMIT ?1",
            )?;
            let mut runs = stmt
                .query_map(params![limit], |r| {
                    let source: String = r.get(2)?;
                    let deployment = match r.get::<_, Option<i64>>(11)? {
                        Some(id) => Some(RunDeployment {
                            id,
                            state: r.get(12)?,
                            reason: r.get(13)?,
                            log_link: r.get(14)?,
                            updated_ms: r.get(15)?,
                        }),
                        None => None,
                    };
                    Ok(Run {
                        app: r.get(0)?,
                        sha: r.get(1)?,
                        trigger: if source == "github" {
                            "push".to_owned()
                        } else {
                            source
                        },
                        actor: r.get(3)?,
                        started_ms: r.get(4)?,
                        delivery: Some(r.get(5)?),
                        build: Some(RunBuild {
                            state: r.get(6)?,
                            build_id: r.get(7)?,
                            log_link: r.get(8)?,
                            reason: r.get(9)?,
                            updated_ms: r.get(10)?,
                        }),
                        deployment,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = c.prepare_cached(
                "SELECT app, sha, trigger, actor, created_ms, delivery_id,
                        id, state, reason, log_link, updated_ms
                 FROM deployments WHERE build_row IS NULL
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let others = stmt
                .query_map(params![limit], |r| {
                    Ok(Run {
                        app: r.get(0)?,
                        sha: r.get(1)?,
                        trigger: r.get(2)?,
                        actor: r.get(3)?,
                        started_ms: r.get(4)?,
                        delivery: r.get(5)?,
                        build: None,
                        deployment: Some(RunDeployment {
                            id: r.get(6)?,
                            state: r.get(7)?,
                            reason: r.get(8)?,
                            log_link: r.get(9)?,
                            updated_ms: r.get(10)?,
                        }),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            runs.extend(others);
            runs.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
            runs.truncate(limit as usize);
            Ok(runs)
        })
        .await
    }
}
