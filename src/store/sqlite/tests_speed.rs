//! Issue 13, intake speed: compressed bodies, bulk admission, disk given back by pruning,
//! checkpoints off the writer.

use rusqlite::Connection;

use super::tests::{build, delivery, DAY_MS, T0};
use super::*;
use crate::config::JournalConfig;
use crate::store::*;

/// Bytes that do not compress (so they take the pages they say).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `n` ignored deliveries with bodies of `len` bytes that do not compress.
fn ignored(prefix: &str, n: u64, len: usize) -> Vec<(NewDelivery, Verdict)> {
    (0..n)
        .map(|i| {
            (
                delivery(&format!("{prefix}-{i}"), "1", T0, &noise(i, len)),
                Verdict::Ignored("branch".into()),
            )
        })
        .collect()
}

/// Waits until `done` holds (polling; a generous deadline, never a timing assertion), or
/// panics with what `state` says then.
async fn until(done: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", state());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn pages(path: &std::path::Path) -> (i64, i64) {
    let c = Connection::open(path).unwrap();
    let count = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let free = c
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    (count, free)
}

#[tokio::test]
async fn a_body_is_stored_compressed_and_read_back_as_received() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let push = include_bytes!("../../../fixtures/github/push_master.json");
    let (row, _) = journal
        .admit(delivery("d-1", "1", T0, push), build('a'))
        .await
        .unwrap();
    let (encoding, stored): (String, i64) = journal
        .read(|c| {
            Ok(
                c.query_row("SELECT encoding, length(body) FROM bodies", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?,
            )
        })
        .await
        .unwrap();
    assert_eq!(encoding, "zstd");
    assert!((stored as usize) * 2 < push.len(), "stored {stored} bytes");
    let rec = journal.delivery(&row.to_string()).await.unwrap().unwrap();
    assert_eq!(rec.payload().unwrap(), push);
    // The pusher shown on the status page is read from the stored body too.
    let runs = journal.recent_runs(5).await.unwrap();
    assert_eq!(runs[0].actor.as_deref(), Some("octocat"), "{runs:?}");
}

#[tokio::test]
async fn admit_all_decides_each_delivery_as_admit_does_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let results = journal
        .admit_all(vec![
            (delivery("d-1", "1", T0, b"{}"), build('a')),
            // The same push from the organisation's hook: the pending build, not a second.
            (delivery("d-2", "2", T0, b"{}"), build('a')),
            (
                delivery("d-3", "1", T0, b"{}"),
                Verdict::Ignored("branch".into()),
            ),
        ])
        .await
        .unwrap();
    assert!(matches!(&results[0].1, Admission::Accepted(b) if !b[0].retry));
    assert!(matches!(&results[1].1, Admission::Accepted(b) if b[0].retry));
    assert!(matches!(&results[2].1, Admission::Ignored(_)));
    let builds: i64 = journal
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(builds, 1);
}

#[tokio::test]
async fn pruning_gives_the_freed_pages_back_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    // 400 ignored deliveries of 16 KB each: about 1,600 pages.
    journal
        .admit_all(ignored("d", 400, 16 * 1024))
        .await
        .unwrap();
    let kept = journal
        .admit(
            delivery("kept", "1", T0 + 30 * DAY_MS, &noise(9999, 16 * 1024)),
            build('a'),
        )
        .await
        .unwrap();
    let (before, _) = pages(journal.path());
    let p = journal
        .prune(T0 + 20 * DAY_MS, &JournalConfig::default())
        .await
        .unwrap();
    assert_eq!(p.deliveries_deleted, 400);
    assert!(p.pages_reclaimed >= 1_500, "{p:?}");
    let (after, free) = pages(journal.path());
    assert_eq!(free, 0, "every free page given back");
    assert!(
        after + 1_500 <= before,
        "{before} pages before, {after} after"
    );
    let rec = journal
        .delivery(&kept.0.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.payload().unwrap(), noise(9999, 16 * 1024));
    // Free pages left by anything else are given back by the next pass, with nothing to prune.
    let c = Connection::open(journal.path()).unwrap();
    c.execute_batch("CREATE TABLE scratch (b BLOB); INSERT INTO scratch VALUES (zeroblob(400000)); DROP TABLE scratch;")
        .unwrap();
    assert!(pages(journal.path()).1 > 90);
    let p = journal
        .prune(T0 + 20 * DAY_MS, &JournalConfig::default())
        .await
        .unwrap();
    assert_eq!((p.deliveries_deleted, p.bodies_dropped), (0, 0));
    assert!(p.pages_reclaimed > 90, "{p:?}");
    assert_eq!(pages(journal.path()).1, 0);
}

#[tokio::test]
async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let writer_setting: i64 = journal
        .write(|c| Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(
        writer_setting, 0,
        "the writer leaves checkpoints to their thread"
    );
    journal
        .admit_all(ignored("d", 100, 16 * 1024))
        .await
        .unwrap();
    // The checkpoint thread copies them into journal.db (1.6 MB) while the journal stays open.
    let size = || std::fs::metadata(journal.path()).unwrap().len();
    until(
        || size() > 1_500_000,
        || {
            format!(
                "journal.db is still {} bytes: nothing was checkpointed",
                size()
            )
        },
    )
    .await;
}

/// A future polled once (so its write is queued for the writer), to be awaited later.
fn queued<F: std::future::Future + Unpin>(mut f: F) -> F {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::pin::Pin::new(&mut f).poll(&mut cx).is_pending());
    f
}

type Runs = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// A repeatable write that stores `key` in `meta`, counts its runs, and fails if `fail`.
fn store_key(
    journal: &SqliteStore,
    key: &'static str,
    fail: bool,
    runs: &Runs,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<(), StoreError>>>> {
    let runs = runs.clone();
    let journal = journal.clone();
    Box::pin(async move {
        journal
            .write_repeatable(move |c| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                c.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])?;
                if fail {
                    return Err(StoreError::Invalid(format!("{key} fails")));
                }
                Ok(())
            })
            .await
    })
}

#[tokio::test]
async fn admissions_in_one_group_share_a_savepoint_and_a_failing_one_still_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    let hold = dir.path().join(HOLD_FILE);
    std::fs::write(&hold, b"").unwrap();
    let runs: Vec<Runs> = (0..6).map(|_| Runs::default()).collect();
    // One group (the writer holds until all are queued): a, b (fails) | c (a plain write) | d, e.
    let a = queued(store_key(&journal, "a", false, &runs[0]));
    let b = queued(store_key(&journal, "b", true, &runs[1]));
    let c = queued(Box::pin(journal.write(|c| {
        c.execute("INSERT INTO meta (key, value) VALUES ('c', 'x')", [])?;
        Ok(())
    })));
    let d = queued(store_key(&journal, "d", false, &runs[3]));
    let e = queued(store_key(&journal, "e", false, &runs[4]));
    std::fs::remove_file(&hold).unwrap();
    assert!(a.await.is_ok());
    let failed = b.await.unwrap_err();
    assert!(failed.to_string().contains("b fails"), "{failed}");
    c.await.unwrap();
    d.await.unwrap();
    e.await.unwrap();
    let keys: Vec<String> = journal
        .read(|c| {
            let mut stmt =
                c.prepare("SELECT key FROM meta WHERE key IN ('a','b','c','d','e') ORDER BY key")?;
            let keys = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(keys)
        })
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["a", "c", "d", "e"],
        "b's insert is undone, nobody else's"
    );
    let count = |i: usize| runs[i].load(std::sync::atomic::Ordering::SeqCst);
    // a and b shared a savepoint: b failed, so both ran again, each in its own.
    assert_eq!((count(0), count(1)), (2, 2));
    // d and e, after the plain write, shared another one that succeeded: each ran once.
    assert_eq!((count(3), count(4)), (1, 1));
}

#[tokio::test]
async fn the_wal_file_is_emptied_once_the_journal_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteStore::open(dir.path()).unwrap();
    // A reader on the snapshot before the writes keeps the checkpointer from copying them, so
    // the first check cannot race the truncation however slowly this test runs.
    let mut reader = Connection::open(dir.path().join("journal.db")).unwrap();
    let snapshot = reader.transaction().unwrap();
    let before: i64 = snapshot
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    journal.admit_all(ignored("idle", 50, 8_000)).await.unwrap();
    let wal = dir.path().join("journal.db-wal");
    let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len() > 400_000, "the writes went to the WAL first");
    assert_eq!(before, 0);
    drop(snapshot);
    // Nothing else is written: the checkpointer empties the file (it waits for a quiet second).
    until(
        || wal_len() == 0,
        || format!("the WAL file still holds {} bytes", wal_len()),
    )
    .await;
    // Everything is in journal.db, and the journal still takes writes.
    let (_, again) = journal
        .admit(delivery("idle-after", "1", T0, b"{}"), build('b'))
        .await
        .unwrap();
    assert!(matches!(again, Admission::Accepted(_)), "{again:?}");
    let c = Connection::open(dir.path().join("journal.db")).unwrap();
    let stored: i64 = c
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 51);
}
