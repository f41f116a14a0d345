//! The journal's tables. A new version appends a migration; old ones never change.
//!
//! Upgrades can roll back (issue 21): every migration keeps the journal readable and writable
//! by the release before it. It adds tables, nullable columns or columns with a default, and
//! indexes; it never drops or renames a table or a column, nor changes what a stored value
//! means (`every_migration_is_additive` checks the structure of each). The journal records the
//! oldest schema version whose release can still use it (`meta.oldest_reader_version`): a
//! release that knows fewer migrations opens the journal if it is at least that version, and
//! refuses otherwise. Migrations 5 and 7, from before the rule, are the only exceptions
//! ([`NOT_READABLE_BY_OLDER`]).

use std::collections::BTreeSet;

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::StoreError;

/// The schema version a fully migrated journal is at.
#[cfg(test)]
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every authentic request that reached the webhook (or an operator's replay), as received.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT NOT NULL,
    hook_id      TEXT NOT NULL,
    event        TEXT NOT NULL,
    source       TEXT NOT NULL,          -- github | replay
    actor        TEXT,                   -- who replayed it
    replay_of    INTEGER REFERENCES deliveries(id),
    received_ms  INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    headers      TEXT NOT NULL,          -- JSON object of the headers that matter
    body         BLOB NOT NULL,          -- the raw body, exactly as signed
    dedup_key    TEXT NOT NULL,          -- hook_id "/" delivery_id: what a redelivery repeats
    outcome      TEXT NOT NULL,          -- accepted | duplicate | ignored | rejected | pong
    reason       TEXT
);
CREATE INDEX deliveries_by_key ON deliveries (dedup_key);

-- One build per (delivery, app): what the push asked for and how far it got.
CREATE TABLE builds (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- journal order: newer pushes have larger ids
    delivery           INTEGER NOT NULL REFERENCES deliveries(id),
    dedup_key          TEXT NOT NULL,
    app                TEXT NOT NULL,
    sha                TEXT NOT NULL,
    project            TEXT NOT NULL,
    image_tag          TEXT NOT NULL,     -- the tag the build pushes (IMAGE_TAG)
    service_key        TEXT NOT NULL,     -- the app's cluster "/" service when it was pushed
    before_sha         TEXT,              -- the push's `before`: the commit this one follows
    token              TEXT NOT NULL,     -- StartBuild idempotency token, also SLIPWAY_RUN
    state              TEXT NOT NULL,     -- pending | build_started | build_succeeded | build_failed | failed
    build_id           TEXT,
    build_arn          TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms    INTEGER NOT NULL,
    start_requested_ms INTEGER,
    reason             TEXT,
    log_link           TEXT,
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL,
    UNIQUE (dedup_key, app)
);
CREATE INDEX builds_by_state ON builds (state, next_attempt_ms);
CREATE UNIQUE INDEX builds_by_build_id ON builds (build_id) WHERE build_id IS NOT NULL;

-- Every deploy, however it was started: what it deployed, from/to, and how it ended.
CREATE TABLE deployments (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    app                TEXT NOT NULL,
    service_key        TEXT NOT NULL,     -- cluster "/" service: one deploy at a time per key
    sha                TEXT NOT NULL,
    image_tag          TEXT NOT NULL,
    trigger            TEXT NOT NULL,     -- push | foreign_build | operator | rollback
    actor              TEXT,
    build_row          INTEGER REFERENCES builds(id),
    build_id           TEXT,
    delivery_id        TEXT,
    order_key          INTEGER NOT NULL,  -- newer wins: (order_key, id) ranks deploys of a service
    target_task_definition TEXT,          -- a rollback redeploys this one as it is
    image              TEXT,
    from_task_definition TEXT,
    to_task_definition TEXT,
    ecs_deployment_id  TEXT,
    state              TEXT NOT NULL,     -- pending | deploying | succeeded | failed | rolled_back | superseded
    reason             TEXT,
    log_link           TEXT,
    running_count      INTEGER,
    desired_count      INTEGER,
    failed_tasks       INTEGER,
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL,
    started_ms         INTEGER,
    finished_ms        INTEGER
);
CREATE UNIQUE INDEX deployments_by_build_row ON deployments (build_row) WHERE build_row IS NOT NULL;
CREATE UNIQUE INDEX deployments_by_build_id ON deployments (build_id) WHERE build_id IS NOT NULL;
CREATE INDEX deployments_by_state ON deployments (state);
CREATE INDEX deployments_by_service ON deployments (service_key, order_key);
"#,
    // SQS trust (issue 8): CodeBuild events that were refused, and why.
    r#"
CREATE TABLE rejected_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT,
    build_id     TEXT,
    source       TEXT,
    account      TEXT,
    reason       TEXT NOT NULL,
    received_ms  INTEGER NOT NULL
);
"#,
    // Slack replay protection (issue 8): the signatures of Slack requests already handled, kept
    // while their timestamp is still accepted, so a restart does not forget them.
    r#"
CREATE TABLE slack_seen (
    signature  BLOB PRIMARY KEY,         -- the 32 decoded bytes of X-Slack-Signature
    seen_at    INTEGER NOT NULL          -- Unix seconds
);
CREATE INDEX slack_seen_by_time ON slack_seen (seen_at);
"#,
    // GitHub statuses, deployments and delivery recovery (issue 11).
    r#"
-- The GitHub deployment made for a slipway deployment: statuses go to the same one after a
-- restart, and the one a newer deploy replaced can be marked inactive.
CREATE TABLE github_deployments (
    deployment  INTEGER PRIMARY KEY REFERENCES deployments(id),
    app         TEXT NOT NULL,
    repository  TEXT NOT NULL,
    github_id   INTEGER NOT NULL,
    state       TEXT NOT NULL,     -- the last deployment status posted
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX github_deployments_by_app ON github_deployments (app, deployment);

-- Failed webhook deliveries slipway asked GitHub to redeliver.
CREATE TABLE github_recoveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    hook_id       TEXT NOT NULL,
    delivery_id   TEXT NOT NULL,     -- the GUID (X-GitHub-Delivery) the redelivery repeats
    attempt_id    INTEGER NOT NULL,  -- GitHub's id of the failed attempt
    event         TEXT NOT NULL,
    status_code   INTEGER,           -- what slipway (or nobody) answered then
    delivered_ms  INTEGER NOT NULL,  -- when GitHub tried
    actor         TEXT NOT NULL,
    outcome       TEXT NOT NULL,     -- requested | failed
    reason        TEXT,
    requests      INTEGER NOT NULL DEFAULT 1,  -- how many times slipway asked
    requested_ms  INTEGER NOT NULL,
    UNIQUE (hook_id, delivery_id)
);
"#,
    // Issue 13 (intake that stays fast with years of history): bodies in their own table, stored
    // once per SHA-256 and counted, so retention can drop them; indexes for every intake and
    // pruning query. `slipway_sha256` is registered on the connection before migrating.
    r#"
CREATE TABLE bodies (
    id     INTEGER PRIMARY KEY,
    sha256 BLOB NOT NULL UNIQUE,     -- SHA-256 of the body: an identical body is stored once
    refs   INTEGER NOT NULL,         -- deliveries pointing at it; 0 means it can go
    body   BLOB NOT NULL
);
INSERT INTO bodies (sha256, refs, body)
    SELECT slipway_sha256(body), COUNT(*), body FROM deliveries GROUP BY slipway_sha256(body);
ALTER TABLE deliveries ADD COLUMN body_id INTEGER;   -- bodies.id (counted in refs); NULL: pruned
UPDATE deliveries SET body_id = (SELECT id FROM bodies WHERE sha256 = slipway_sha256(deliveries.body));
ALTER TABLE deliveries DROP COLUMN body;
-- The same push from two hooks: builds of (app, sha, before), newest first.
CREATE INDEX builds_by_push ON builds (app, sha, before_sha);
-- Foreign keys point here: deleting a delivery must not scan to check them.
CREATE INDEX builds_by_delivery ON builds (delivery);
CREATE INDEX deliveries_by_replay_of ON deliveries (replay_of) WHERE replay_of IS NOT NULL;
CREATE INDEX deliveries_by_delivery_id ON deliveries (delivery_id);
-- Retention: deliveries still holding a body, and deliveries by outcome, oldest first.
CREATE INDEX deliveries_with_body ON deliveries (received_ms) WHERE body_id IS NOT NULL;
CREATE INDEX deliveries_by_outcome ON deliveries (outcome, received_ms);
"#,
    r#"
-- Where ECS's service deployment is (BAKE_TIME, TEST_TRAFFIC_SHIFT, ...) while it runs.
ALTER TABLE deployments ADD COLUMN stage TEXT;
-- Commit statuses and GitHub deployment updates not yet posted, oldest first: they survive a
-- restart and are posted in order.
CREATE TABLE github_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event       TEXT NOT NULL,       -- JSON
    created_ms  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
"#,
    // Issue 13 (intake speed): new bodies are stored zstd-compressed; `slipway_body(encoding,
    // body)` (registered on every connection) gives back the bytes as received.
    r#"
ALTER TABLE bodies ADD COLUMN encoding TEXT NOT NULL DEFAULT 'identity';  -- identity | zstd
"#,
    // Issue 13: a CodeBuild result names its build by id, or (a start whose answer was never
    // journaled) by its SLIPWAY_RUN token: without this the token lookup scanned every build,
    // on the writer, for every result. Only builds without an id are in it, so it stays small.
    r#"
CREATE INDEX builds_by_token ON builds (token) WHERE build_id IS NULL;
"#,
    // Issue 13 (intake speed): only builds whose start was requested can have a CodeBuild
    // result that names them by token, so only those are indexed: a new build (intake) no
    // longer writes a random page of this index; the build worker's start request does.
    r#"
DROP INDEX builds_by_token;
CREATE INDEX builds_by_token ON builds (token)
    WHERE build_id IS NULL AND start_requested_ms IS NOT NULL;
"#,
    // Issue 13 (intake speed): a delivery is looked up by its GUID (`deliveries_by_delivery_id`)
    // and then its hook. An index on the "hook/GUID" key as well wrote a second random page for
    // every delivery stored; nothing needs it.
    r#"
DROP INDEX deliveries_by_key;
"#,
    // Issue 13 (intake speed): a redelivery finds its builds through its GUID
    // (`deliveries_by_delivery_id`, then `builds_by_delivery`), so the builds' UNIQUE
    // (dedup_key, app) index only cost a random page for every new build. A table constraint
    // goes only with its table: `builds` is rebuilt without it, keeping every row, its id and
    // the AUTOINCREMENT counter (foreign keys are checked after the migrations, see
    // `migrate_in`). The writer, which checks before it inserts, keeps one build per key.
    r#"
CREATE TABLE builds_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- journal order: newer pushes have larger ids
    delivery           INTEGER NOT NULL REFERENCES deliveries(id),
    dedup_key          TEXT NOT NULL,     -- the delivery's hook_id "/" delivery_id
    app                TEXT NOT NULL,
    sha                TEXT NOT NULL,
    project            TEXT NOT NULL,
    image_tag          TEXT NOT NULL,     -- the tag the build pushes (IMAGE_TAG)
    service_key        TEXT NOT NULL,     -- the app's cluster "/" service when it was pushed
    before_sha         TEXT,              -- the push's `before`: the commit this one follows
    token              TEXT NOT NULL,     -- StartBuild idempotency token, also SLIPWAY_RUN
    state              TEXT NOT NULL,     -- pending | build_started | build_succeeded | build_failed | failed
    build_id           TEXT,
    build_arn          TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms    INTEGER NOT NULL,
    start_requested_ms INTEGER,
    reason             TEXT,
    log_link           TEXT,
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL
);
INSERT INTO builds_new SELECT * FROM builds;
DELETE FROM sqlite_sequence WHERE name = 'builds_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'builds_new', seq FROM sqlite_sequence WHERE name = 'builds';
DROP TABLE builds;
ALTER TABLE builds_new RENAME TO builds;
CREATE INDEX builds_by_state ON builds (state, next_attempt_ms);
CREATE UNIQUE INDEX builds_by_build_id ON builds (build_id) WHERE build_id IS NOT NULL;
CREATE INDEX builds_by_push ON builds (app, sha, before_sha);
CREATE INDEX builds_by_delivery ON builds (delivery);
CREATE INDEX builds_by_token ON builds (token)
    WHERE build_id IS NULL AND start_requested_ms IS NOT NULL;
"#,
    // Issue 24 (newer wins by push order): a push's deploy ranks by when GitHub received the
    // push (`repository.pushed_at`, Unix seconds; when slipway received it if the payload has
    // none), whatever order the deliveries arrive in; deploys rank by (pushed_at, order_key,
    // id), NULL (rows from before) counting as 0. The journal's creation time bounds delivery
    // recovery: for a journal that existed before this migration, its oldest delivery.
    r#"
ALTER TABLE builds ADD COLUMN pushed_at INTEGER;
ALTER TABLE deployments ADD COLUMN pushed_at INTEGER;
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'created_ms', CAST(COALESCE((SELECT MIN(received_ms) FROM deliveries),
        (julianday('now') - 2440587.5) * 86400000.0) AS INTEGER);
"#,
    // Issue 22 (deploys judged the way ECS judges them): the service deployment ECS names, the
    // deadline taken from the service's strategy and why, "cannot see the service" while looks
    // fail, and the original of a copied rollback target. Additive: nullable columns.
    r#"
ALTER TABLE deployments ADD COLUMN service_deployment_arn TEXT;
ALTER TABLE deployments ADD COLUMN deadline_ms INTEGER;
ALTER TABLE deployments ADD COLUMN deadline_why TEXT;
ALTER TABLE deployments ADD COLUMN unseen TEXT;
ALTER TABLE deployments ADD COLUMN from_original TEXT;
"#,
    // Issue 24 (one outbox for every notification): a Slack or generic-webhook notification is
    // journaled here, one row per target, before anything is sent; it leaves `pending` when its
    // target answered 2xx (`sent`) or it was given up (`given_up`: too old, or refused for good),
    // and the row stays for the ops API and the status page (retention prunes old ones).
    // Additive: a new table.
    r#"
CREATE TABLE notify_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    target          TEXT NOT NULL,                   -- slack | webhook
    event           TEXT NOT NULL,                   -- the notification, JSON
    idempotency_key TEXT NOT NULL,                   -- sent with every attempt (a UUID)
    state           TEXT NOT NULL DEFAULT 'pending', -- pending | sent | given_up
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_ms INTEGER,
    last_error      TEXT,                            -- why the last attempt failed, or why given up
    done_ms         INTEGER                          -- when it was sent or given up
);
CREATE INDEX notify_outbox_pending ON notify_outbox (target, id) WHERE state = 'pending';
CREATE INDEX notify_outbox_done ON notify_outbox (done_ms) WHERE state != 'pending';
"#,
    // Issue 22 (review): when slipway asked ECS to roll a service deployment back, so that a
    // restart reports ECS's rollback that follows as `rolled_back`. Additive: a nullable column.
    r#"
ALTER TABLE deployments ADD COLUMN rollback_requested_ms INTEGER;
"#,
    // Issue 27 (release on tags): the tag a tag push released, on its build and on the deploy
    // that build leads to (NULL for a branch push). Additive: nullable columns.
    r#"
ALTER TABLE builds ADD COLUMN tag TEXT;
ALTER TABLE deployments ADD COLUMN tag TEXT;
"#,
    // Issue 26 (replicas): leases, the same records the DynamoDB engine keeps. With SQLite one
    // process holds the journal, so they are always its own; they make the interface one.
    r#"
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    fence      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    since_ms   INTEGER NOT NULL
);
"#,
    // Issue 27 (promotion): promotions, each waiting for its approval or decided, once per
    // (app, source deployment, tag); the deploy an approval made links back. Additive: a new
    // table and a nullable column.
    r#"
CREATE TABLE promotions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    app               TEXT NOT NULL,
    source_app        TEXT NOT NULL,
    source_deployment INTEGER NOT NULL,
    sha               TEXT NOT NULL,
    image_digest      TEXT NOT NULL,
    image_tag         TEXT NOT NULL,
    tag               TEXT,
    service_key       TEXT NOT NULL,
    state             TEXT NOT NULL,  -- awaiting_approval | approved | rejected | superseded | expired
    reason            TEXT,
    decided_by        TEXT,
    decided_ms        INTEGER,
    expires_ms        INTEGER NOT NULL,
    deployment        INTEGER,
    created_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL
);
CREATE UNIQUE INDEX promotions_source ON promotions (app, source_deployment, COALESCE(tag, ''));
CREATE INDEX promotions_app ON promotions (app, id);
CREATE INDEX promotions_waiting ON promotions (id) WHERE state = 'awaiting_approval';
ALTER TABLE deployments ADD COLUMN promotion INTEGER;
"#,
];

/// The migrations a release before them cannot live with, and why. A new entry is a breaking
/// change: it needs a release that says so and a way back (see the module's comment), and
/// `every_migration_is_additive` refuses one after [`LAST_BEFORE_THE_RULE`].
pub(super) const NOT_READABLE_BY_OLDER: &[(usize, &str)] = &[
    (
        5,
        "bodies moved to their own table and deliveries.body was dropped: an older release \
         stores and reads payloads in that column",
    ),
    (
        7,
        "bodies may be stored zstd-compressed: an older release would take the compressed bytes \
         for the payload (a replay would send them)",
    ),
];

/// The last migration written before every migration had to be additive.
#[cfg(test)]
pub(super) const LAST_BEFORE_THE_RULE: usize = 11;

/// The `meta` key holding the oldest schema version whose release can use the journal.
pub(super) const OLDEST_READER: &str = "oldest_reader_version";

/// The oldest schema version whose release can use a journal at `version`: the last migration
/// up to it that a release before it cannot live with (1: any release that has the rule).
pub(super) fn oldest_reader(version: usize) -> usize {
    NOT_READABLE_BY_OLDER
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| *v <= version)
        .max()
        .unwrap_or(1)
}

/// Migrates as a release that knows only the first `known` migrations would: how tests open a
/// journal with the previous release's expectations (`known` = this release's minus one).
pub(crate) fn migrate_known(conn: &mut Connection, known: usize) -> Result<(), StoreError> {
    migrate_with(conn, &MIGRATIONS[..known], known)
}

/// The value of `key` in the journal's `meta` table, if set.
pub(crate) fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Why a release that knows `known` migrations cannot use a journal at `version`, if it can't;
/// None if it can (the journal's oldest reader is at most `known`).
pub(crate) fn newer_journal_refusal(
    conn: &Connection,
    version: i64,
    known: i64,
) -> Result<Option<String>, StoreError> {
    let oldest = meta_value(conn, OLDEST_READER)?.and_then(|v| v.parse::<i64>().ok());
    match oldest {
        Some(oldest) if oldest <= known => Ok(None),
        _ => Ok(Some(format!(
            "the journal is at schema version {version}, newer than this slipway knows \
             ({known}), and releases before schema version {} cannot use it: run a newer \
             slipway, or restore the backup taken before the upgrade (`slipway restore --from \
             …`, which keeps aside the journal it replaces)",
            oldest.map_or_else(|| version.to_string(), |o| o.to_string())
        ))),
    }
}

/// Applies the migrations up to version `target` (a test builds yesterday's journal with it).
#[cfg(test)]
pub(crate) fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), StoreError> {
    migrate_with(conn, MIGRATIONS, target)
}

/// Applies `migrations` up to version `target` (tests pass their own list).
pub(crate) fn migrate_with(
    conn: &mut Connection,
    migrations: &[&str],
    target: usize,
) -> Result<(), StoreError> {
    conn.create_scalar_function(
        "slipway_sha256",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let body = ctx.get_raw(0).as_bytes_or_null()?.unwrap_or_default();
            Ok(body_digest(body).to_vec())
        },
    )?;
    // A migration may rebuild a table that others point at (SQLite's documented way: foreign
    // keys off, which only works outside a transaction); they are checked before the commit.
    let enforced: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = migrate_in(conn, migrations, target);
    if enforced {
        conn.pragma_update(None, "foreign_keys", true)?;
    }
    migrated
}

/// A reference to a row that is not there: (table, row id, the table it points at).
type BrokenReference = (String, Option<i64>, String);

/// Every broken reference in the journal (`PRAGMA foreign_key_check`: reads every table).
fn broken_references(tx: &Connection) -> Result<BTreeSet<BrokenReference>, StoreError> {
    let mut stmt = tx.prepare("PRAGMA foreign_key_check")?;
    let broken = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(broken)
}

fn describe((table, row, parent): &BrokenReference) -> String {
    // The row id is NULL only for a WITHOUT ROWID table (the journal has none).
    match row {
        Some(id) => format!("{table} row {id} -> {parent}"),
        None => format!("a {table} row -> {parent}"),
    }
}

fn migrate_in(conn: &mut Connection, migrations: &[&str], target: usize) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations.len() as i64;
    if version > known {
        if let Some(why) = newer_journal_refusal(&tx, version, known)? {
            return Err(StoreError::Invalid(why));
        }
        // A rollback: the newer release's migrations were additive, so this one uses the
        // journal as it is; what the newer release added stays for when it comes back.
        tracing::warn!(
            journal_version = version,
            known_version = known,
            "running an older release on a journal a newer one migrated (a rollback): it is \
             used as it is, without migrating"
        );
        return Ok(());
    }
    if (version as usize) >= target {
        record_oldest_reader(&tx, version as usize)?;
        tx.commit()?;
        return Ok(());
    }
    // References broken before (which slipway's own connections never write) are reported and
    // left as they are; a migration may not break any other.
    let before = broken_references(&tx)?;
    if let Some(first) = before.first() {
        tracing::warn!(
            broken = before.len(),
            example = %describe(first),
            "journal: references were already broken before migrating; left as they are"
        );
    }
    for (i, sql) in migrations
        .iter()
        .enumerate()
        .take(target)
        .skip(version as usize)
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    record_oldest_reader(&tx, target)?;
    let after = broken_references(&tx)?;
    if let Some(broken) = after.difference(&before).next() {
        return Err(StoreError::Invalid(format!(
            "migrating the journal would break a reference ({}); nothing was changed",
            describe(broken)
        )));
    }
    tx.commit()?;
    Ok(())
}

/// Records which releases can use a journal at `version` (for a release that knows fewer
/// migrations: see [`newer_journal_refusal`]). Nothing is written when it is already there.
fn record_oldest_reader(tx: &Connection, version: usize) -> Result<(), StoreError> {
    if version == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value != excluded.value",
        rusqlite::params![OLDEST_READER, oldest_reader(version).to_string()],
    )?;
    Ok(())
}

/// The key a body is stored under.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Turns on incremental vacuum (so pruning can give disk back). Changing it on a journal that
/// already has tables takes a VACUUM, once; a new journal gets it before its first table.
pub fn incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if tables > 0 {
        tracing::info!("journal: converting to incremental vacuum (a one-time VACUUM)");
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}
