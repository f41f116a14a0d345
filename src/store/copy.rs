//! `slipway store copy` (issue 25, `docs/dynamodb.md`, "Moving over"): a stopped slipway's
//! SQLite journal copied into a fresh DynamoDB table, every kind of record with its id, then
//! counted on both sides. The only place that knows both engines: it reads the journal's rows
//! page by page (by id, read-only) and hands each to the DynamoDB engine's item builders.
//! The journal is held under its shared lock throughout: a `serve` started meanwhile cannot
//! take it, so nothing changes between the pages.

use rusqlite::{params, Connection, OptionalExtension};

use super::dynamodb::{
    BatchWriter, BodyRow, BuildRow, CopyRefused, DeliveryRow, DynamoStore, NotificationRow, Record,
    RecoveryRow,
};
use super::sqlite::{self, SqliteStore};
use super::{GithubDeployment, NewRecovery, OutboxEntry, RejectedEvent, StoreError};

/// Rows read from the journal at a time.
const PAGE: i64 = 500;

/// One kind of record, counted on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    pub kind: &'static str,
    pub sqlite: i64,
    pub dynamodb: i64,
}

/// What a copy did.
#[derive(Debug)]
pub struct Copied {
    /// Item writes (derived keys and commits included; an app's commit is written again for
    /// each of its builds and deployments).
    pub items: u64,
    /// The id counter it left (the last id handed out): every copied id is at most this, every
    /// id the engine hands out next above it.
    pub last_id: i64,
    pub counts: Vec<KindCount>,
}

impl Copied {
    pub fn mismatches(&self) -> Vec<&KindCount> {
        self.counts
            .iter()
            .filter(|c| c.sqlite != c.dynamodb)
            .collect()
    }
}

/// Copies the journal `from` (`source` names it, for the table's `meta/copy` item) into the
/// fresh table of `to`, then counts each kind on both sides. `slack_window_secs`: how long a
/// Slack signature is remembered (its item expires then).
pub async fn copy_journal(
    from: &SqliteStore,
    source: &str,
    to: &DynamoStore,
    slack_window_secs: i64,
    now_ms: i64,
    provision_hint: &str,
) -> Result<Copied, CopyRefused> {
    to.check_copy_target(provision_hint).await?;
    if !to.begin_copy(source, now_ms).await? {
        return Err(CopyRefused::Refused(format!(
            "another copy into the DynamoDB table {} started just now",
            to.table()
        )));
    }
    let mut w = BatchWriter::new(to);
    let window = slack_window_secs;
    copy_kind(from, &mut w, window, DELIVERIES, delivery).await?;
    copy_kind(from, &mut w, window, BUILDS, build).await?;
    copy_kind(from, &mut w, window, deployments_query(), deployment).await?;
    copy_kind(from, &mut w, window, OUTBOX, |_, r| {
        let e = OutboxEntry {
            id: r.get(0)?,
            event: r.get(1)?,
            created_ms: r.get(2)?,
            attempts: r.get(3)?,
        };
        Ok((e.id, Record::Outbox(e)))
    })
    .await?;
    copy_kind(from, &mut w, window, NOTIFICATIONS, |_, r| {
        let n = NotificationRow {
            id: r.get(0)?,
            target: r.get(1)?,
            event: r.get(2)?,
            idempotency_key: r.get(3)?,
            state: r.get(4)?,
            created_ms: r.get(5)?,
            attempts: r.get(6)?,
            last_attempt_ms: r.get(7)?,
            last_error: r.get(8)?,
            done_ms: r.get(9)?,
        };
        Ok((n.id, Record::Notification(n)))
    })
    .await?;
    copy_kind(from, &mut w, window, REJECTED, |_, r| {
        let id = r.get(0)?;
        let e = RejectedEvent {
            message_id: r.get(1)?,
            build_id: r.get(2)?,
            source: r.get(3)?,
            account: r.get(4)?,
            reason: r.get(5)?,
            received_ms: r.get(6)?,
        };
        Ok((id, Record::Rejected(id, e)))
    })
    .await?;
    copy_kind(from, &mut w, window, GITHUB, |_, r| {
        let g = GithubDeployment {
            deployment: r.get(0)?,
            repository: r.get(2)?,
            github_id: r.get(3)?,
            state: r.get(4)?,
        };
        Ok((
            g.deployment,
            Record::Github(r.get(1)?, g, r.get(5)?, r.get(6)?),
        ))
    })
    .await?;
    copy_kind(from, &mut w, window, RECOVERIES, recovery).await?;
    copy_kind(from, &mut w, window, PROMOTIONS, |_, r| {
        let p = super::Promotion {
            id: r.get(0)?,
            app: r.get(1)?,
            source_app: r.get(2)?,
            source_deployment: r.get(3)?,
            sha: r.get(4)?,
            image_digest: r.get(5)?,
            image_tag: r.get(6)?,
            tag: r.get(7)?,
            service_key: r.get(8)?,
            state: r.get(9)?,
            reason: r.get(10)?,
            decided_by: r.get(11)?,
            decided_ms: r.get(12)?,
            expires_ms: r.get(13)?,
            deployment: r.get(14)?,
            created_ms: r.get(15)?,
            updated_ms: r.get(16)?,
        };
        Ok((p.id, Record::Promotion(Box::new(p))))
    })
    .await?;
    // Slack keys are few (those of the last minutes): read at once.
    for (signature, seen_at) in slack_keys(from).await? {
        w.record(Record::Slack(signature, seen_at), window).await?;
    }
    w.flush().await?;
    let items = w.written;
    let (last_id, created_ms) = from
        .read(|c| {
            let seq: i64 = c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence",
                [],
                |r| r.get(0),
            )?;
            let created = sqlite::schema::meta_value(c, "created_ms")?.and_then(|v| v.parse().ok());
            Ok((seq, created))
        })
        .await?;
    to.finish_copy(last_id, created_ms, now_ms).await?;
    let counts = verify(from, to).await?;
    Ok(Copied {
        items,
        last_id,
        counts,
    })
}

/// Copies every row `query` selects (its `?1` the last id of the page before, `?2` the page
/// size), page by page in id order; `row` reads one as its id and record.
async fn copy_kind<F>(
    from: &SqliteStore,
    w: &mut BatchWriter<'_>,
    slack_window_secs: i64,
    query: &'static str,
    row: F,
) -> Result<(), StoreError>
where
    F: Fn(&Connection, &rusqlite::Row<'_>) -> Result<(i64, Record), StoreError>
        + Send
        + Copy
        + 'static,
{
    let mut after = 0;
    loop {
        let rows = from
            .read(move |c| {
                let mut stmt = c.prepare_cached(query)?;
                let mut rows = stmt.query(params![after, PAGE])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(row(c, r)?);
                }
                Ok(out)
            })
            .await?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(());
        };
        for (_, record) in rows {
            w.record(record, slack_window_secs).await?;
        }
        after = last;
    }
}

const PROMOTIONS: &str = "SELECT id, app, source_app, source_deployment, sha, image_digest,
        image_tag, tag, service_key, state, reason, decided_by, decided_ms, expires_ms,
        deployment, created_ms, updated_ms
     FROM promotions WHERE id > ?1 ORDER BY id LIMIT ?2";

const DELIVERIES: &str = "SELECT d.id, d.delivery_id, d.hook_id, d.event, d.source, d.actor,
        d.replay_of, d.received_ms, d.content_type, d.headers, d.dedup_key, d.outcome, d.reason,
        b.encoding, b.body, b.sha256
     FROM deliveries d LEFT JOIN bodies b ON b.id = d.body_id
     WHERE d.id > ?1 ORDER BY d.id LIMIT ?2";

fn delivery(c: &Connection, r: &rusqlite::Row<'_>) -> Result<(i64, Record), StoreError> {
    let row: i64 = r.get(0)?;
    let outcome: String = r.get(11)?;
    // The lines a delivery shows are its key's builds (accepted and duplicate ones).
    let builds = if outcome == "accepted" || outcome == "duplicate" {
        let mut stmt = c.prepare_cached(sqlite::BUILDS_OF_DELIVERY)?;
        let mut ids = stmt
            .query_map([row], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids
    } else {
        Vec::new()
    };
    let body = match r.get::<_, Option<Vec<u8>>>(14)? {
        Some(stored) => Some(BodyRow {
            encoding: r.get(13)?,
            stored,
            digest: r.get(15)?,
        }),
        None => None,
    };
    let d = DeliveryRow {
        row,
        delivery_id: r.get(1)?,
        hook_id: r.get(2)?,
        event: r.get(3)?,
        source: r.get(4)?,
        actor: r.get(5)?,
        replay_of: r.get(6)?,
        received_ms: r.get(7)?,
        content_type: r.get(8)?,
        headers: r.get(9)?,
        dedup_key: r.get(10)?,
        outcome,
        reason: r.get(12)?,
        builds,
        body_kept: body.is_some(),
    };
    Ok((row, Record::Delivery(Box::new(d), body)))
}

const BUILDS: &str = "SELECT b.id, b.delivery, d.delivery_id, b.dedup_key, b.app, b.sha,
        b.project, b.image_tag, b.token, b.state, b.attempts, b.next_attempt_ms,
        b.start_requested_ms, b.build_id, b.build_arn, b.reason, b.log_link, b.created_ms,
        b.updated_ms, b.service_key, b.before_sha, b.pushed_at, b.tag, dp.id, d.source
     FROM builds b JOIN deliveries d ON d.id = b.delivery
     LEFT JOIN deployments dp ON dp.build_row = b.id
     WHERE b.id > ?1 ORDER BY b.id LIMIT ?2";

/// The build a push's key names: the newest live build of the push from a GitHub delivery (as
/// the SQLite engine's `FIND_SAME_PUSH` finds it), else the newest that failed for good.
const PUSH_BUILD: &str = "SELECT b.id FROM builds b JOIN deliveries d ON d.id = b.delivery
     WHERE b.app = ?1 AND b.sha = ?2 AND b.before_sha IS ?3 AND b.tag IS ?4
       AND d.source = 'github'
     ORDER BY b.state = ?5, b.id DESC LIMIT 1";

fn build(c: &Connection, r: &rusqlite::Row<'_>) -> Result<(i64, Record), StoreError> {
    let b = BuildRow {
        id: r.get(0)?,
        delivery_row: r.get(1)?,
        delivery_id: r.get(2)?,
        dedup_key: r.get(3)?,
        app: r.get(4)?,
        sha: r.get(5)?,
        project: r.get(6)?,
        image_tag: r.get(7)?,
        token: r.get(8)?,
        state: r.get(9)?,
        attempts: r.get(10)?,
        next_attempt_ms: r.get(11)?,
        start_requested_ms: r.get(12)?,
        build_id: r.get(13)?,
        build_arn: r.get(14)?,
        reason: r.get(15)?,
        log_link: r.get(16)?,
        created_ms: r.get(17)?,
        updated_ms: r.get(18)?,
        service_key: r.get(19)?,
        before_sha: r.get(20)?,
        pushed_at: r.get(21)?,
        tag: r.get(22)?,
        deployment: r.get(23)?,
    };
    let github = r.get::<_, String>(24)? == "github";
    let push_build = github
        && c.prepare_cached(PUSH_BUILD)?
            .query_row(
                params![
                    b.app,
                    b.sha,
                    b.before_sha,
                    b.tag,
                    super::build_state::FAILED
                ],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            == Some(b.id);
    Ok((b.id, Record::Build(Box::new(b), push_build)))
}

/// Deployments with the engine's own columns, their push time and the commit their push
/// followed.
fn deployments_query() -> &'static str {
    static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUERY.get_or_init(|| {
        format!(
            "SELECT {}, pushed_at,
                 (SELECT b.before_sha FROM builds b WHERE b.id = deployments.build_row)
             FROM deployments WHERE id > ?1 ORDER BY id LIMIT ?2",
            sqlite::DEPLOYMENT_COLUMNS
        )
    })
}

fn deployment(_: &Connection, r: &rusqlite::Row<'_>) -> Result<(i64, Record), StoreError> {
    let d = sqlite::deployment_from_row(r)?;
    // After the engine's columns (`DEPLOYMENT_COLUMNS`, however many there are now).
    let engine = sqlite::DEPLOYMENT_COLUMNS.split(',').count();
    let (pushed_at, before_sha) = (r.get(engine)?, r.get(engine + 1)?);
    Ok((d.id, Record::Deployment(Box::new(d), pushed_at, before_sha)))
}

const OUTBOX: &str = "SELECT id, event, created_ms, attempts FROM github_outbox
     WHERE id > ?1 ORDER BY id LIMIT ?2";

const NOTIFICATIONS: &str = "SELECT id, target, event, idempotency_key, state, created_ms,
        attempts, last_attempt_ms, last_error, done_ms
     FROM notify_outbox WHERE id > ?1 ORDER BY id LIMIT ?2";

const REJECTED: &str = "SELECT id, message_id, build_id, source, account, reason, received_ms
     FROM rejected_events WHERE id > ?1 ORDER BY id LIMIT ?2";

const GITHUB: &str = "SELECT deployment, app, repository, github_id, state, created_ms,
        updated_ms
     FROM github_deployments WHERE deployment > ?1 ORDER BY deployment LIMIT ?2";

const RECOVERIES: &str = "SELECT id, hook_id, delivery_id, attempt_id, event, status_code,
        delivered_ms, actor, outcome, reason, requests, requested_ms
     FROM github_recoveries WHERE id > ?1 ORDER BY id LIMIT ?2";

fn recovery(_: &Connection, r: &rusqlite::Row<'_>) -> Result<(i64, Record), StoreError> {
    let row = RecoveryRow {
        id: r.get(0)?,
        recovery: NewRecovery {
            hook_id: r.get(1)?,
            delivery_id: r.get(2)?,
            attempt_id: r.get(3)?,
            event: r.get(4)?,
            status_code: r.get(5)?,
            delivered_ms: r.get(6)?,
            actor: r.get(7)?,
            outcome: r.get(8)?,
            reason: r.get(9)?,
        },
        requests: r.get(10)?,
        requested_ms: r.get(11)?,
    };
    Ok((row.id, Record::Recovery(row)))
}

async fn slack_keys(from: &SqliteStore) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
    from.read(|c| {
        let mut stmt = c.prepare("SELECT signature, seen_at FROM slack_seen ORDER BY signature")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    })
    .await
}

/// How long the count waits for DynamoDB's indexes, which are updated shortly after a write
/// (a GSI is eventually consistent): a count below the journal's is asked again until then.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Each kind's count in the journal and in the table (through the index partition that lists
/// it; Slack keys, in no index, read by key).
pub async fn verify(from: &SqliteStore, to: &DynamoStore) -> Result<Vec<KindCount>, StoreError> {
    let (sqlite_counts, apps) = from
        .read(|c| {
            let count =
                |sql: &str| -> Result<i64, StoreError> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
            let counts = vec![
                count("SELECT COUNT(*) FROM deliveries")?,
                count("SELECT COUNT(*) FROM deliveries WHERE body_id IS NOT NULL")?,
                count("SELECT COUNT(*) FROM builds")?,
                count("SELECT COUNT(*) FROM deployments")?,
                count("SELECT COUNT(*) FROM github_outbox")?,
                count("SELECT COUNT(*) FROM notify_outbox")?,
                count("SELECT COUNT(*) FROM rejected_events")?,
                count("SELECT COUNT(*) FROM github_deployments")?,
                count("SELECT COUNT(*) FROM github_recoveries")?,
                count("SELECT COUNT(*) FROM slack_seen")?,
                count("SELECT COUNT(*) FROM promotions")?,
            ];
            let mut stmt = c.prepare("SELECT DISTINCT app FROM github_deployments")?;
            let apps = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((counts, apps))
        })
        .await?;
    let signatures: Vec<Vec<u8>> = slack_keys(from)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let dynamodb = to.copied_counts(&apps, &signatures).await?;
        let counts: Vec<KindCount> = KINDS
            .iter()
            .zip(sqlite_counts.iter().zip(dynamodb))
            .map(|(kind, (sqlite, dynamodb))| KindCount {
                kind,
                sqlite: *sqlite,
                dynamodb,
            })
            .collect();
        let behind = counts.iter().any(|c| c.dynamodb < c.sqlite);
        if !behind || tokio::time::Instant::now() >= deadline {
            return Ok(counts);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The kinds counted, in [`verify`]'s order.
const KINDS: [&str; 11] = [
    "deliveries",
    "bodies",
    "builds",
    "deployments",
    "github outbox",
    "notifications",
    "refused events",
    "github deployments",
    "recoveries",
    "slack keys",
    "promotions",
];
