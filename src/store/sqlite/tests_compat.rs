//! Issue 21: upgrades that can roll back. Every migration is additive (checked on the
//! structure each one leaves), and a journal at this release's schema opens with the previous
//! release's expectations and takes its intake and listings.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;

use super::lock::{Holder, JournalLock};
use super::schema::{self, MIGRATIONS, NOT_READABLE_BY_OLDER, VERSION};
use super::tests::{build, delivery, T0};
use super::*;
use crate::config::JournalConfig;
use crate::store::*;

/// A column as an older release sees it: whether it must be given (NOT NULL without a default).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    required: bool,
}

/// Tables, their columns, and the column lists of their UNIQUE indexes.
#[derive(Debug, Default)]
struct Structure {
    tables: BTreeMap<String, BTreeMap<String, Column>>,
    unique: BTreeMap<String, BTreeSet<Vec<String>>>,
}

fn structure(c: &Connection) -> Structure {
    let mut s = Structure::default();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in tables {
        let columns = c
            .prepare(&format!("PRAGMA table_info(\"{table}\")"))
            .unwrap()
            .query_map([], |r| {
                let name: String = r.get(1)?;
                let notnull: bool = r.get(3)?;
                let default: Option<String> = r.get(4)?;
                let pk: i64 = r.get(5)?;
                Ok((
                    name,
                    Column {
                        // An INTEGER PRIMARY KEY is given by SQLite when left out.
                        required: notnull && default.is_none() && pk == 0,
                    },
                ))
            })
            .unwrap()
            .collect::<Result<BTreeMap<_, _>, _>>()
            .unwrap();
        let indexes: Vec<(String, bool)> = c
            .prepare(&format!("PRAGMA index_list(\"{table}\")"))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut unique = BTreeSet::new();
        for (index, is_unique) in indexes {
            if !is_unique {
                continue;
            }
            let cols: Vec<String> = c
                .prepare(&format!("PRAGMA index_info(\"{index}\")"))
                .unwrap()
                .query_map([], |r| r.get::<_, Option<String>>(2))
                .unwrap()
                .map(|n| n.unwrap().unwrap_or_else(|| "<expression>".into()))
                .collect();
            unique.insert(cols);
        }
        s.unique.insert(table.clone(), unique);
        s.tables.insert(table, columns);
    }
    s
}

/// What a release that knows `before` cannot live with in `after`: a table or column gone
/// (dropped or renamed), a column it does not know that must be given, a new UNIQUE index on
/// a table it writes (its inserts could start failing).
fn breaks_older(before: &Structure, after: &Structure) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, columns) in &before.tables {
        let Some(now) = after.tables.get(table) else {
            problems.push(format!("table {table} is gone"));
            continue;
        };
        for name in columns.keys() {
            if !now.contains_key(name) {
                problems.push(format!("column {table}.{name} is gone"));
            }
        }
        for (name, column) in now {
            if column.required && !columns.contains_key(name) {
                problems.push(format!(
                    "new column {table}.{name} is NOT NULL without a default: an older \
                     release's inserts would fail"
                ));
            }
        }
        let had = &before.unique[table];
        for cols in &after.unique[table] {
            if !had.contains(cols) {
                problems.push(format!(
                    "a new UNIQUE index on {table} ({})",
                    cols.join(", ")
                ));
            }
        }
    }
    problems
}

fn at(version: usize) -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    schema::migrate_to(&mut c, version).unwrap();
    c
}

#[test]
fn every_migration_is_additive() {
    for version in 2..=MIGRATIONS.len() {
        let before = structure(&at(version - 1));
        let after = structure(&at(version));
        let problems = breaks_older(&before, &after);
        match NOT_READABLE_BY_OLDER.iter().find(|(v, _)| *v == version) {
            Some((_, why)) => {
                assert!(
                    version <= schema::LAST_BEFORE_THE_RULE,
                    "migration {version} is not additive ({why}): the previous release could \
                     not use the journal after it, so a rollback would crash-loop. Make it \
                     additive (new tables, nullable columns or columns with defaults, indexes)"
                );
            }
            None => assert!(
                problems.is_empty(),
                "migration {version} is not additive: {problems:?}. The previous release \
                 must still open and use a journal it produced"
            ),
        }
    }
    // The checker itself sees what would break an older release.
    let before = structure(&at(VERSION as usize));
    let rebuilt = at(VERSION as usize);
    rebuilt
        .execute_batch(
            "ALTER TABLE deployments RENAME COLUMN log_link TO link;
             ALTER TABLE github_outbox DROP COLUMN attempts;
             CREATE TABLE slack_seen_new (signature BLOB PRIMARY KEY, seen_at INTEGER NOT NULL,
                 team TEXT NOT NULL);
             DROP TABLE slack_seen;
             ALTER TABLE slack_seen_new RENAME TO slack_seen;
             CREATE UNIQUE INDEX one_per_sha ON builds (app, sha);
             DROP TABLE rejected_events;",
        )
        .unwrap();
    let problems = breaks_older(&before, &structure(&rebuilt));
    for expected in [
        "column deployments.log_link is gone",
        "column github_outbox.attempts is gone",
        "new column slack_seen.team is NOT NULL without a default",
        "a new UNIQUE index on builds (app, sha)",
        "table rejected_events is gone",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected}: {problems:?}"
        );
    }
}

#[test]
fn the_journal_records_the_oldest_release_that_can_use_it() {
    assert_eq!(schema::oldest_reader(4), 1);
    assert_eq!(schema::oldest_reader(5), 5);
    assert_eq!(schema::oldest_reader(6), 5);
    assert_eq!(schema::oldest_reader(VERSION as usize), 7);
    let c = at(VERSION as usize);
    let oldest: String = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'oldest_reader_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(oldest, "7");
}

fn lock(dir: &std::path::Path) -> JournalLock {
    JournalLock::try_exclusive(dir, &Holder::this_process(None)).unwrap()
}

fn schema_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_journal_at_this_schema_opens_as_the_previous_release_and_takes_its_intake() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalConfig::default();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let path = journal.path().to_owned();
    let (_, first) = journal
        .admit(delivery("new-release", "1", T0, b"{\"a\":1}"), build('a'))
        .await
        .unwrap();
    let Admission::Accepted(first) = first else {
        panic!("{first:?}")
    };
    journal.close();
    drop(journal);
    assert_eq!(schema_version(&path), VERSION);

    // The previous release: it knows one migration fewer, and uses the journal as it is.
    let previous = (VERSION - 1) as usize;
    let journal =
        SqliteStore::open_with_known_version(dir.path(), lock(dir.path()), &settings, previous)
            .unwrap();
    let (_, admission) = journal
        .admit(
            delivery("old-release", "1", T0 + 1, b"{\"b\":2}"),
            build('b'),
        )
        .await
        .unwrap();
    assert!(matches!(admission, Admission::Accepted(_)), "{admission:?}");
    // A redelivery of what the newer release took finds its build: no second one.
    let (_, again) = journal
        .admit(
            delivery("new-release", "1", T0 + 2, b"{\"a\":1}"),
            build('a'),
        )
        .await
        .unwrap();
    match again {
        Admission::Accepted(b) => assert_eq!(b[0].build_row, first[0].build_row),
        other => assert!(matches!(other, Admission::Duplicate), "{other:?}"),
    }
    let listed: Vec<String> = journal
        .recent_deliveries(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.delivery)
        .collect();
    assert!(
        listed.contains(&"new-release".to_owned()) && listed.contains(&"old-release".to_owned()),
        "{listed:?}"
    );
    journal.recent_deployments(None, 10).await.unwrap();
    journal.close();
    drop(journal);
    assert_eq!(schema_version(&path), VERSION, "not migrated back or forth");

    // And the newer release again (rolled forward) finds both.
    let journal = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(journal.recent_deliveries(10).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_release_from_before_a_breaking_migration_is_refused_and_told_how_to_go_back() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let err = SqliteStore::open_with_known_version(
        dir.path(),
        lock(dir.path()),
        &JournalConfig::default(),
        6,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "schema version {VERSION}, newer than this slipway knows (6)"
        )) && err.contains("releases before schema version 7 cannot use it")
            && err.contains("slipway restore --from"),
        "{err}"
    );
}
