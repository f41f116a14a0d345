//! Issue 13: the intake queries' plans, the bodies migration, retention and backpressure.

use rusqlite::{params, Connection};
use serde_json::json;

use super::*;
use super::{deliveries, deployments, retention};
use crate::config::JournalConfig;
use crate::ids::{AppName, CommitSha, DeliveryId, HookId};
use crate::store::*;

pub(super) const DAY_MS: i64 = 24 * 3600 * 1000;
pub(super) const T0: i64 = 1_700_000_000_000;

pub(super) fn delivery(id: &str, hook: &str, received_ms: i64, body: &[u8]) -> NewDelivery {
    NewDelivery {
        delivery_id: DeliveryId::parse(id).unwrap(),
        hook_id: HookId::parse(Some(hook)).unwrap(),
        event: "push".into(),
        source: Source::Github,
        actor: None,
        replay_of: None,
        received_ms,
        content_type: "application/json".into(),
        headers: json!({}),
        body: body.to_vec(),
    }
}

pub(super) fn build(sha: char) -> Verdict {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    Verdict::Build(vec![BuildRequest {
        app: AppName::parse("web").unwrap(),
        sha: CommitSha::parse(&sha).unwrap(),
        project: "web-build".into(),
        image_tag: sha.clone(),
        service_key: "main/web".into(),
        before: Some("1".repeat(40)),
        pushed_at: None,
        tag: None,
    }])
}

fn plan(c: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let n = stmt.parameter_count();
    let nulls: Vec<rusqlite::types::Value> = vec![rusqlite::types::Value::Null; n];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A new journal (in a directory kept while the first value lives) and a connection to it.
fn new_journal() -> (tempfile::TempDir, SqliteStore, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let c = Connection::open(journal.path()).unwrap();
    (dir, journal, c)
}

/// Fails if `sql`'s plan builds a temporary index (`AUTOMATIC`): of a whole table, every time.
fn assert_no_temporary_index(sql: &str, steps: &[String]) {
    assert!(
        !steps.iter().any(|s| s.contains("AUTOMATIC")),
        "{sql}\nbuilds a temporary index of a whole table: {steps:?}"
    );
}

#[test]
fn intake_queries_use_an_index_never_a_scan() {
    let (_dir, _journal, c) = new_journal();
    let vacuum: i64 = c
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap();
    assert_eq!(vacuum, 2, "a new journal vacuums incrementally");
    for sql in [
        deliveries::FIND_BY_KEY,
        deliveries::FIND_SAME_PUSH,
        "INSERT INTO bodies (sha256, refs, body) VALUES (?1, 1, ?2)
         ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1 RETURNING id",
        "UPDATE builds SET state = 'pending' WHERE id = ?1",
        "DELETE FROM deliveries WHERE id = ?1",
        "UPDATE deliveries SET replay_of = NULL WHERE replay_of = ?1",
        &retention::disposable_sql(),
        &retention::old_bodies_sql(),
        // The build a CodeBuild result is about (sqlite/deployments.rs, complete_build).
        deployments::FIND_COMPLETED_BUILD,
        // Is this delivery held? (GitHub delivery recovery, sqlite/github.rs)
        super::github::HELD_DELIVERY,
        // A delivery's deployments (the API's delivery view).
        &format!(
            "SELECT id FROM deployments WHERE build_row IN ({})",
            deliveries::BUILDS_OF_DELIVERY
        ),
    ] {
        let steps = plan(&c, sql);
        // A search on a prefix that is one app, or one state, reads all of its rows.
        assert!(
            !steps.iter().any(|s| s.ends_with("(app=?)")),
            "{sql}\nreads every build of an app: {steps:?}"
        );
        assert_no_temporary_index(sql, &steps);
        assert!(
            // (`SCAN CONSTANT ROW` is a SELECT without a table, not a scan of one.)
            !steps
                .iter()
                .any(|s| s.starts_with("SCAN") && s != "SCAN CONSTANT ROW"),
            "{sql}\nscans: {steps:?}"
        );
    }
}

#[test]
fn delivery_lines_find_builds_through_the_guid_index_and_build_no_temporary_index() {
    let (_dir, _journal, c) = new_journal();
    for sql in [deliveries::RECENT_SUMMARIES, deliveries::ONE_SUMMARY] {
        let steps = plan(&c, sql);
        assert_no_temporary_index(sql, &steps);
        for table in ["b", "same", "dp"] {
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with(&format!("SEARCH {table} USING"))),
                "{table} is searched through an index: {steps:?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|s| s.starts_with(&format!("SCAN {table}"))),
                "{table} is scanned: {steps:?}"
            );
        }
    }
    // One delivery, however old: found by its row, not by reading every newer one.
    let steps = plan(&c, deliveries::ONE_SUMMARY);
    assert!(
        !steps.iter().any(|s| s == "SCAN deliveries"),
        "one delivery's lines read the deliveries: {steps:?}"
    );
}

#[test]
fn a_redelivery_finds_its_build_through_its_guid() {
    let (_dir, _journal, c) = new_journal();
    assert_eq!(
        plan(&c, deliveries::FIND_BY_KEY),
        [
            "SEARCH d USING INDEX deliveries_by_delivery_id (delivery_id=?)",
            "SEARCH b USING INDEX builds_by_delivery (delivery=?)"
        ]
    );
}

/// The same push from two hooks, and a redelivery, is one build (`tests/it/store.rs` asserts
/// that for both engines); here, what only this engine does: identical bodies stored once.
#[tokio::test]
async fn identical_bodies_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let (first, _) = accepted(&journal, "d-1", "1", T0, 'a').await;
    assert_eq!(accepted(&journal, "d-2", "2", T0, 'a').await, (first, true));
    assert_eq!(
        accepted(&journal, "d-1", "1", T0 + 1, 'a').await,
        (first, true)
    );
    let bodies: i64 = journal
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(bodies, 1);
}

/// Admits delivery `id` from `hook` asking for a build of `sha` (its body names the commit):
/// the build it was accepted with, and whether that was a retry. Panics on any other answer.
async fn accepted(journal: &SqliteStore, id: &str, hook: &str, at: i64, sha: char) -> (i64, bool) {
    let body = format!("{{\"after\":\"{sha}\"}}");
    let (_, admission) = journal
        .admit(delivery(id, hook, at, body.as_bytes()), build(sha))
        .await
        .unwrap();
    match admission {
        Admission::Accepted(b) => (b[0].build_row, b[0].retry),
        other => panic!("{id} from hook {hook}: {other:?}"),
    }
}

#[tokio::test]
async fn a_journal_from_the_first_schema_is_converted_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    {
        let mut c = Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        schema::migrate_to(&mut c, 1).unwrap();
        for (i, body) in [&b"same"[..], b"same", b"other"].iter().enumerate() {
            c.execute(
                "INSERT INTO deliveries (delivery_id, hook_id, event, source, received_ms,
                     content_type, headers, body, dedup_key, outcome)
                 VALUES (?1, 'h', 'push', 'github', ?2, 'application/json', '{}', ?3, ?4, 'accepted')",
                params![format!("d-{i}"), T0 + i as i64, body, format!("h/d-{i}")],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO builds (delivery, dedup_key, app, sha, project, image_tag, service_key,
                 token, state, next_attempt_ms, created_ms, updated_ms)
             VALUES (1, 'h/d-0', 'web', 'abc', 'p', 't', 'c/s', 'tok', 'build_started', 0, 0, 0)",
            [],
        )
        .unwrap();
    }
    let journal = SqliteStore::open(dir.path()).unwrap();
    let (deliveries, bodies, builds, version, vacuum): (i64, i64, i64, i64, i64) = journal
        .read(|c| {
            Ok((
                c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?,
                c.query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))?,
                c.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0))?,
                c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                c.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((deliveries, bodies, builds), (3, 2, 1));
    assert_eq!(
        version,
        super::schema::VERSION,
        "migrated to the newest schema"
    );
    assert_eq!(vacuum, 2, "incremental auto_vacuum");
    for (id, body) in [("d-0", &b"same"[..]), ("d-1", b"same"), ("d-2", b"other")] {
        let rec = journal.delivery(id).await.unwrap().unwrap();
        assert_eq!(rec.payload().unwrap(), body);
    }
    // And it takes new deliveries.
    let (_, a) = journal
        .admit(delivery("d-9", "h", T0 + 10, b"same"), build('b'))
        .await
        .unwrap();
    assert!(matches!(a, Admission::Accepted(_)));
}

async fn set_build(journal: &SqliteStore, delivery_row: i64, state: &'static str) -> i64 {
    journal
        .write(move |c| {
            c.execute(
                "UPDATE builds SET state = ?2 WHERE delivery = ?1",
                params![delivery_row, state],
            )?;
            Ok(c.query_row(
                "SELECT id FROM builds WHERE delivery = ?1",
                [delivery_row],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

async fn add_deployment(journal: &SqliteStore, build_row: i64, state: &'static str) {
    journal
        .write(move |c| {
            c.execute(
                "INSERT INTO deployments (app, service_key, sha, image_tag, trigger, build_row,
                     order_key, state, created_ms, updated_ms)
                 VALUES ('web', 'main/web', 'x', 'x', 'push', ?1, 0, ?2, 0, 0)",
                params![build_row, state],
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn retention_drops_old_bodies_and_ignored_deliveries_but_not_unfinished_work() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let settings = JournalConfig::default();
    let (ignored, _) = journal
        .admit(
            delivery("ign", "1", T0, b"ignored"),
            Verdict::Ignored("branch".into()),
        )
        .await
        .unwrap();
    let (done, _) = journal
        .admit(delivery("done", "1", T0, b"done"), build('a'))
        .await
        .unwrap();
    let b = set_build(&journal, done, build_state::SUCCEEDED).await;
    add_deployment(&journal, b, "succeeded").await;
    let (deploying, _) = journal
        .admit(delivery("deploying", "1", T0, b"deploying"), build('b'))
        .await
        .unwrap();
    let b = set_build(&journal, deploying, build_state::SUCCEEDED).await;
    add_deployment(&journal, b, "deploying").await;
    let (pending, _) = journal
        .admit(delivery("pending", "1", T0, b"pending"), build('c'))
        .await
        .unwrap();
    let (recent, _) = journal
        .admit(
            delivery("recent", "1", T0 + 95 * DAY_MS, b"recent"),
            Verdict::Ignored("x".into()),
        )
        .await
        .unwrap();

    // 20 days on: only the ignored delivery is past its time.
    let p = journal.prune(T0 + 20 * DAY_MS, &settings).await.unwrap();
    assert_eq!((p.deliveries_deleted, p.bodies_dropped), (1, 0));
    assert!(journal
        .delivery(&ignored.to_string())
        .await
        .unwrap()
        .is_none());

    // 100 days on: the finished delivery's body goes, its row and dedup key stay.
    let p = journal.prune(T0 + 100 * DAY_MS, &settings).await.unwrap();
    assert_eq!((p.deliveries_deleted, p.bodies_dropped), (0, 1));
    let rec = journal.delivery("done").await.unwrap().unwrap();
    assert!(matches!(rec.payload(), Err(StoreError::PayloadNotKept)));
    for (row, body) in [
        (deploying, &b"deploying"[..]),
        (pending, b"pending"),
        (recent, b"recent"),
    ] {
        let rec = journal.delivery(&row.to_string()).await.unwrap().unwrap();
        assert_eq!(rec.payload().unwrap(), body, "row {row} is kept");
    }
    let bodies: i64 = journal
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(bodies, 3);
    // GitHub redelivers the old delivery: still a duplicate.
    let (_, again) = journal
        .admit(
            delivery("done", "1", T0 + 100 * DAY_MS, b"done"),
            build('a'),
        )
        .await
        .unwrap();
    assert_eq!(again, Admission::Duplicate);
}

#[tokio::test]
async fn a_stalled_writer_turns_new_deliveries_away_and_loses_none_it_queued() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalConfig {
        max_queued_deliveries: 2,
        ..JournalConfig::default()
    };
    let journal = SqliteStore::open_with(dir.path(), &settings).unwrap();
    let hold = dir.path().join(HOLD_FILE);
    std::fs::write(&hold, b"").unwrap();
    let queued: Vec<_> = ["q-1", "q-2"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let journal = journal.clone();
            tokio::spawn(async move {
                journal
                    .admit(delivery(id, "1", T0, id.as_bytes()), build(['a', 'b'][i]))
                    .await
            })
        })
        .collect();
    // Both deliveries are queued behind the held writer (bounded: a failure, not a hang).
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while journal.backpressure().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the queue fills up");
    let turned_away = journal
        .admit(delivery("q-3", "1", T0, b"q-3"), build('c'))
        .await;
    assert!(
        matches!(turned_away, Err(StoreError::Busy(_))),
        "{turned_away:?}"
    );
    std::fs::remove_file(&hold).unwrap();
    // Once resumed, both queued deliveries are accepted, and an accepted delivery is stored.
    for (task, id) in queued.into_iter().zip(["q-1", "q-2"]) {
        let admitted = tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("the writer resumes")
            .unwrap();
        assert!(
            matches!(admitted, Ok((_, Admission::Accepted(_)))),
            "{admitted:?}"
        );
        let stored = journal.delivery(id).await.unwrap().expect("stored");
        assert_eq!(stored.payload().unwrap(), id.as_bytes());
    }
    assert!(journal.delivery("q-3").await.unwrap().is_none());
    assert!(journal.backpressure().is_none());
}

#[tokio::test]
async fn a_result_named_only_by_its_run_token_finds_a_build_whose_start_was_requested() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    for (id, sha) in [("tok-1", 'a'), ("tok-2", 'b')] {
        journal
            .admit(delivery(id, "1", T0, id.as_bytes()), build(sha))
            .await
            .unwrap();
    }
    let due = journal.due_builds(T0, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    // Only the first one's StartBuild was requested (then slipway stopped before its answer).
    journal.build_start_requested(due[0].id, T0).await.unwrap();
    let result = |build_id: &str, token: &str| BuildCompletion {
        build_id: build_id.into(),
        succeeded: false,
        status: "FAILED".into(),
        log_link: None,
        foreign: None,
        run_token: Some(token.into()),
    };
    let adopted = journal
        .complete_build(result("web-build:1", &due[0].token), T0)
        .await
        .unwrap();
    assert!(
        matches!(
            adopted,
            CompletionOutcome::Failed {
                first_time: true,
                ..
            }
        ),
        "{adopted:?}"
    );
    // A build slipway never asked CodeBuild to start is not this result's, token or not.
    let never_started = journal
        .complete_build(result("web-build:2", &due[1].token), T0)
        .await
        .unwrap();
    assert!(
        matches!(never_started, CompletionOutcome::Foreign),
        "{never_started:?}"
    );
}

#[tokio::test]
async fn a_group_waits_for_a_checkpointer_holding_the_write_lock_instead_of_failing() {
    // The checkpointer's idle truncation (checkpoint.rs) holds the WAL's write lock while it
    // waits for readers. A group that read first and only then asked for the lock was refused
    // at once (SQLITE_BUSY: no busy wait for a read upgrading to a write), so the first
    // delivery after a quiet second could be answered 503. Another connection holds the lock
    // here, as the checkpointer would, then lets it go.
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let holder = Connection::open(journal.path()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        holder.execute_batch("COMMIT").unwrap();
    });
    let admitted = journal
        .admit(delivery("locked-1", "1", T0, b"{}"), build('a'))
        .await;
    release.join().unwrap();
    let (_, admission) = admitted.expect("the group waits for the lock");
    assert!(matches!(admission, Admission::Accepted(_)), "{admission:?}");
    let c = Connection::open(dir.path().join("journal.db")).unwrap();
    let stored: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE delivery_id = 'locked-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 1);
}

/// A journal from before `builds` lost its UNIQUE (dedup_key, app) constraint (schema 10).
fn journal_at_schema_10(dir: &std::path::Path, foreign_keys: bool) -> Connection {
    let mut c = Connection::open(dir.join("journal.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    schema::migrate_to(&mut c, 10).unwrap();
    c.pragma_update(None, "foreign_keys", foreign_keys).unwrap();
    c.execute(
        "INSERT INTO bodies (sha256, refs, body) VALUES (x'00', 2, x'7b7d')",
        [],
    )
    .unwrap();
    for (guid, state) in [
        ("d-0", "build_started"),
        ("d-1", "pending"),
        ("d-2", "pending"),
    ] {
        c.execute(
            "INSERT INTO deliveries (delivery_id, hook_id, event, source, received_ms,
                 content_type, headers, body_id, dedup_key, outcome)
             VALUES (?1, 'h', 'push', 'github', 0, 'application/json', '{}', 1, 'h/' || ?1,
                     'accepted')",
            [guid],
        )
        .unwrap();
        c.execute(
            "INSERT INTO builds (delivery, dedup_key, app, sha, project, image_tag, service_key,
                 token, state, next_attempt_ms, created_ms, updated_ms, before_sha)
             VALUES (last_insert_rowid(), 'h/' || ?1, 'web', ?2, 'p', 't', 'main/web', ?1, ?3,
                     0, 0, 0, ?4)",
            params![guid, "a".repeat(40), state, "1".repeat(40)],
        )
        .unwrap();
    }
    // The newest build is gone: the AUTOINCREMENT counter is ahead of the largest id.
    c.execute("DELETE FROM builds WHERE id = 3", []).unwrap();
    c.execute(
        "INSERT INTO deployments (app, service_key, sha, image_tag, trigger, build_row,
             order_key, state, created_ms, updated_ms)
         VALUES ('web', 'main/web', 'x', 'x', 'push', 1, 0, 'succeeded', 0, 0)",
        [],
    )
    .unwrap();
    c
}

#[tokio::test]
async fn builds_lose_their_unique_key_index_and_keep_every_row_id_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    drop(journal_at_schema_10(dir.path(), true));
    let journal = SqliteStore::open(dir.path()).unwrap();
    // The rebuilt table's pages are copied at open, not left in the WAL for the checkpointer's
    // first idle truncation (which holds the write lock while it copies).
    let wal = std::fs::metadata(dir.path().join("journal.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the migration's pages are still in the WAL");
    let (rows, seq, indexes, deployed): (Vec<(i64, String)>, i64, Vec<String>, i64) = journal
        .read(|c| {
            let rows = c
                .prepare("SELECT id, dedup_key FROM builds ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let seq = c.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'builds'",
                [],
                |r| r.get(0),
            )?;
            let indexes = c
                .prepare("SELECT name FROM pragma_index_list('builds') ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let deployed = c.query_row(
                "SELECT b.id FROM deployments x JOIN builds b ON b.id = x.build_row",
                [],
                |r| r.get(0),
            )?;
            Ok((rows, seq, indexes, deployed))
        })
        .await
        .unwrap();
    assert_eq!(rows, vec![(1, "h/d-0".to_owned()), (2, "h/d-1".to_owned())]);
    assert_eq!(
        seq, 3,
        "the AUTOINCREMENT counter is kept: no id is handed out twice"
    );
    assert_eq!(
        indexes,
        [
            "builds_by_build_id",
            "builds_by_delivery",
            "builds_by_push",
            "builds_by_state",
            "builds_by_token"
        ],
        "every index but the constraint's is back"
    );
    assert_eq!(deployed, 1, "the deployment still points at its build");
    // Redeliveries are still found through their GUID: a started build is a duplicate, a
    // pending one is retried, not doubled.
    let (_, started) = journal
        .admit(delivery("d-0", "h", T0, b"{}"), build('a'))
        .await
        .unwrap();
    assert!(matches!(started, Admission::Duplicate), "{started:?}");
    let (_, pending) = journal
        .admit(delivery("d-1", "h", T0, b"{}"), build('b'))
        .await
        .unwrap();
    match pending {
        Admission::Accepted(b) => assert_eq!((b[0].build_row, b[0].retry), (2, true)),
        other => panic!("{other:?}"),
    }
    // A new push gets an id the deleted build never had, and foreign keys are enforced again.
    let (_, new) = journal
        .admit(delivery("d-9", "h", T0, b"{\"n\":9}"), build('c'))
        .await
        .unwrap();
    match new {
        Admission::Accepted(b) => assert_eq!(b[0].build_row, 4),
        other => panic!("{other:?}"),
    }
    let orphan = journal
        .write(|c| {
            c.execute(
                "INSERT INTO builds (delivery, dedup_key, app, sha, project, image_tag,
                     service_key, token, state, next_attempt_ms, created_ms, updated_ms)
                 VALUES (999, 'x', 'web', 'x', 'p', 't', 'main/web', 'x', 'pending', 0, 0, 0)",
                [],
            )?;
            Ok(())
        })
        .await;
    assert!(orphan.is_err(), "a build of no delivery is refused");
}

#[test]
fn a_migration_that_would_break_a_reference_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = journal_at_schema_10(dir.path(), true);
    // A migration 11 that drops a delivery a build points at.
    let mut migrations = schema::MIGRATIONS[..10].to_vec();
    migrations.push("DELETE FROM deliveries WHERE id = 2;");
    let err = schema::migrate_with(&mut c, &migrations, 11).unwrap_err();
    assert!(
        err.to_string()
            .contains("migrating the journal would break a reference (builds row 2 -> deliveries)"),
        "{err}"
    );
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 10, "nothing was changed");
    let deliveries: i64 = c
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(deliveries, 3, "nothing was changed");
}

#[tokio::test]
async fn a_reference_broken_before_migrating_is_left_and_does_not_stop_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Written with foreign keys off (not by slipway): a build of a delivery not there.
        let c = journal_at_schema_10(dir.path(), false);
        c.execute("DELETE FROM deliveries WHERE id = 2", [])
            .unwrap();
    }
    let journal = SqliteStore::open(dir.path()).unwrap();
    let (version, builds, broken): (i64, Vec<i64>, i64) = journal
        .read(|c| {
            Ok((
                c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                c.prepare("SELECT id FROM builds ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
                c.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(version, schema::VERSION, "migrated");
    assert_eq!(builds, [1, 2], "every build kept, the orphan too");
    assert_eq!(broken, 1, "the reference broken before, and no other");
}
