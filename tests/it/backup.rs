//! Consistent backups (issue 21): `slipway backup` while slipway serves under webhook load,
//! `slipway restore` checking what it puts in place, scheduled copies in S3 (moto) pruned to
//! `backup_keep`, and failures that say why.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::support::slipway::{Slipway, HARNESS_TOKEN};
use crate::support::{eventually, fixture, Emulator, SlipwayBuilder, MASTER_SHA};

async fn emulator() -> Emulator {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    emulator
}

async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

fn push(sha: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("github/push_master.json")).unwrap();
    text.replace(MASTER_SHA, sha).into_bytes()
}

/// `slipway <args>` with the server's address and the harness's token in the environment.
fn cli(
    b: &SlipwayBuilder,
    server: Option<&Slipway>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    b.write_config();
    let config = b.config_path();
    let mut cmd = b.command();
    cmd.args(args).arg("--config").arg(&config);
    if let Some(s) = server {
        cmd.env("SLIPWAY_SERVER", &s.admin_url)
            .env("SLIPWAY_OPS_TOKEN", HARNESS_TOKEN);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn integrity(path: &std::path::Path) -> String {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

async fn api(
    s: &Slipway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", s.admin_url))
        .bearer_auth(HARNESS_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Signed pushes posted concurrently by `workers` clients, each `per_worker` of them; the ids
/// slipway acknowledged, in the order the acknowledgements came.
fn load(
    s: &Slipway,
    workers: usize,
    per_worker: usize,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = s.url.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..per_worker {
                let id = format!("load-{w}-{i}");
                let sha = format!("{:040x}", w * 100_000 + i + 1);
                let body = push(&sha);
                let signature = slipway::webhook::sign(crate::support::SECRET.as_bytes(), &body);
                let r = client
                    .post(format!("{url}/webhooks/github"))
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", &id)
                    .header("x-github-hook-id", "4242")
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().is_success() {
                        acked.lock().unwrap().push(id);
                    }
                }
            }
        }));
    }
    (acked, tasks)
}

/// Every delivery acknowledged before the backup began is in the restored journal.
fn holds_all(restored: &[String], acknowledged: &[String]) {
    for id in acknowledged {
        assert!(
            restored.contains(id),
            "{id} was acknowledged before the backup: {restored:?}"
        );
    }
}

fn delivered(b: &SlipwayBuilder) -> Vec<String> {
    b.deliveries()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_webhook_load_restores_every_delivery_acknowledged_before_it() {
    let emulator = emulator().await;
    let s3 = emulator.bucket("journal-backups").await;
    let b = SlipwayBuilder::new(&emulator.url);
    let mut s = b.start().await;
    let (acked, tasks) = load(&s, 4, 40);
    eventually("some deliveries acknowledged", || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await;

    // Both while the load goes on: the CLI sees the server holds the journal and asks it.
    let file = b
        .state_dir()
        .parent()
        .unwrap()
        .join("backups/journal-manual.db");
    let before_file: Vec<String> = acked.lock().unwrap().clone();
    let (code, out, err) = cli(&b, Some(&s), &["backup", "--to", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("slipway is running on"), "{err}");
    assert!(
        out.contains(&format!("backed up the journal to {}", file.display())),
        "{out}"
    );
    let before_s3: Vec<String> = acked.lock().unwrap().clone();
    let (code, out, err) = cli(
        &b,
        Some(&s),
        &[
            "backup",
            "--to",
            "s3://journal-backups/slipway/journal-manual.db",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        keys(&s3, "journal-backups").await,
        ["slipway/journal-manual.db"]
    );
    for task in tasks {
        task.await.unwrap();
    }
    let all_acked = acked.lock().unwrap().clone();
    assert!(
        all_acked.len() > before_s3.len(),
        "the load went on after the backups"
    );
    assert!(s.terminate().success());
    assert_eq!(integrity(&file), "ok");

    // Restore the file: checked, put in place, the journal it replaces kept aside.
    let (code, out, err) = cli(&b, None, &["restore", "--from", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("PRAGMA integrity_check: ok"), "{out}");
    let aside = std::fs::read_dir(b.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("journal.db.before-restore-")
        })
        .expect("the replaced journal kept aside")
        .path();
    assert!(out.contains(&aside.display().to_string()), "{out}");
    assert_eq!(integrity(&aside), "ok");
    assert_eq!(integrity(&b.state_dir().join("journal.db")), "ok");
    // It opens and serves everything acknowledged before the backup began.
    let s = b.start().await;
    let restored = delivered(&b);
    holds_all(&restored, &before_file);
    assert_eq!(
        s.deliver("push", "after-restore", &push(&"e".repeat(40)))
            .await
            .status,
        202
    );
    drop(s);

    // The S3 copy the same way.
    let (code, out, err) = cli(
        &b,
        None,
        &[
            "restore",
            "--from",
            "s3://journal-backups/slipway/journal-manual.db",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let _s = b.start().await;
    let restored = delivered(&b);
    holds_all(&restored, &before_s3);
    assert!(
        !restored.contains(&"after-restore".to_owned()),
        "the S3 copy is older"
    );
}

#[tokio::test]
async fn scheduled_backups_go_to_s3_and_keep_backup_keep_copies() {
    let emulator = emulator().await;
    let s3 = emulator.bucket("journal-backups").await;
    // Three older scheduled copies and one taken by hand (not counted).
    for key in [
        "slipway/journal-20200101T000000Z.db",
        "slipway/journal-20200102T000000Z.db",
        "slipway/journal-20200103T000000Z.db",
        "slipway/journal-manual.db",
    ] {
        s3.put_object()
            .bucket("journal-backups")
            .key(key)
            .body(b"old".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let b = SlipwayBuilder::new(&emulator.url).extra(
        "[journal]\nbackup_to = \"s3://journal-backups/slipway/journal.db\"\nbackup_every_hours = 24\nbackup_keep = 2\n",
    );
    let s = b.start().await;
    assert_eq!(
        s.deliver("push", "kept-1", &push(MASTER_SHA)).await.status,
        202
    );
    // Overdue (the newest copy is years old): one is taken at once, and the oldest go.
    let left = eventually("the scheduled backup and the pruning", || async {
        let left = keys(&s3, "journal-backups").await;
        (left.len() == 3 && !left.contains(&"slipway/journal-20200102T000000Z.db".to_owned()))
            .then_some(left)
    })
    .await;
    assert_eq!(left[0], "slipway/journal-20200103T000000Z.db", "{left:?}");
    assert!(
        left[1].starts_with("slipway/journal-2") && left[1] != left[0],
        "{left:?}"
    );
    assert_eq!(left[2], "slipway/journal-manual.db");
    let (status, body) = api(&s, reqwest::Method::GET, "/api/backups", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["last"]["to"],
        format!("s3://journal-backups/{}", left[1])
    );
    assert_eq!(body["last"]["error"], Value::Null);
    assert_eq!(body["schedule"]["keep"], 2);
    let metrics = reqwest::get(format!("{}/metrics", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        crate::metrics::sample(&metrics, "slipway_backups_total", &[("result", "ok")]),
        Some(1.0),
        "{metrics}"
    );
    s.wait_log("old journal backup deleted").await;

    // Asked for without "to": a stamped copy next to the scheduled ones.
    let (status, body) = api(&s, reqwest::Method::POST, "/api/backups", None).await;
    assert_eq!(status, 200, "{body}");
    let to = body["backup"]["to"].as_str().unwrap();
    assert!(
        to.starts_with("s3://journal-backups/slipway/journal-2"),
        "{body}"
    );
    assert!(
        body["backup"]["deliveries"].as_i64().unwrap() >= 1,
        "{body}"
    );
}

#[tokio::test]
async fn a_failed_backup_says_why_everywhere_and_the_server_keeps_serving() {
    let emulator = emulator().await;
    let b = SlipwayBuilder::new(&emulator.url);
    let s = b.start().await;
    let (status, body) = api(
        &s,
        reqwest::Method::POST,
        "/api/backups",
        Some(serde_json::json!({ "to": "s3://no-such-bucket/journal.db" })),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "backup_failed");
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("PutObject s3://no-such-bucket/journal.db") && why.contains("NoSuchBucket"),
        "{why}"
    );
    let (status, body) = api(&s, reqwest::Method::GET, "/api/backups", None).await;
    assert_eq!(status, 200);
    assert!(
        body["last"]["error"]
            .as_str()
            .unwrap()
            .contains("NoSuchBucket"),
        "{body}"
    );
    assert_eq!(
        s.get("/readyz").await.0,
        200,
        "a failed backup is a warning"
    );
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 200, "a failed backup is a warning: {body}");
    assert!(
        body["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("the last backup (to s3://no-such-bucket/journal.db")),
        "{body}"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        crate::metrics::sample(&metrics, "slipway_backups_total", &[("result", "error")]),
        Some(1.0),
        "{metrics}"
    );
    // Bad requests.
    for (body, expected) in [
        (
            serde_json::json!({ "to": "ftp://x/y" }),
            "neither a file path nor s3://bucket/key",
        ),
        (serde_json::json!({}), "backup_to is not set"),
        (
            serde_json::json!({ "to": "s3://bucket" }),
            "not s3://bucket/key",
        ),
    ] {
        let (status, answer) = api(&s, reqwest::Method::POST, "/api/backups", Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{answer}"
        );
    }
    assert_eq!(
        s.deliver("push", "still-1", &push(MASTER_SHA)).await.status,
        202
    );
}

#[tokio::test]
async fn restore_refuses_a_damaged_or_foreign_backup_and_a_running_server() {
    let emulator = emulator().await;
    let b = SlipwayBuilder::new(&emulator.url);
    let mut s = b.start().await;
    assert_eq!(
        s.deliver("push", "kept-1", &push(MASTER_SHA)).await.status,
        202
    );
    let dir = b.state_dir().parent().unwrap().to_owned();
    let good = dir.join("good.db");
    let (code, _, err) = cli(&b, Some(&s), &["backup", "--to", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");

    // Not while a server holds the journal.
    let (code, out, err) = cli(&b, None, &["restore", "--from", good.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("stop it before restoring") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(s.terminate().success());
    let journal = b.state_dir().join("journal.db");
    let original = std::fs::read(&journal).unwrap();

    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, b"this is not a journal".repeat(300)).unwrap();
    let mut damaged = std::fs::read(&good).unwrap();
    let page = 4096;
    assert!(damaged.len() > 3 * page);
    for byte in &mut damaged[2 * page + 16..3 * page] {
        *byte = 0x5a;
    }
    let damaged_path = dir.join("damaged.db");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let empty = dir.join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let newer = dir.join("newer.db");
    std::fs::copy(&good, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 999; UPDATE meta SET value = '999' WHERE key = 'oldest_reader_version'")
        .unwrap();
    for (path, reason) in [
        (&garbage, "it is not an SQLite database"),
        (&damaged_path, "not usable"),
        (&empty, "it holds no slipway journal"),
        (&newer, "releases before schema version 999 cannot use it"),
    ] {
        let (code, out, err) = cli(&b, None, &["restore", "--from", path.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{}: {out}", path.display());
        assert!(
            err.contains(&format!("refused {}", path.display()))
                && err.contains(reason)
                && err.contains("the journal was not changed"),
            "{}: {err}",
            path.display()
        );
        assert_eq!(std::fs::read(&journal).unwrap(), original, "unchanged");
    }
    let (code, _, err) = cli(
        &b,
        None,
        &[
            "restore",
            "--from",
            dir.join("missing.db").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read the backup") && err.contains("the journal was not changed"),
        "{err}"
    );
    // Nothing left behind by the refusals.
    let leftovers: Vec<String> = std::fs::read_dir(b.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A file backup needs no AWS region: the good one restores without.
    let out = b
        .command()
        .env_remove("AWS_REGION")
        .args(["restore", "--from", good.to_str().unwrap(), "--config"])
        .arg(b.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The journal still serves.
    let _s = b.start().await;
    assert!(delivered(&b).contains(&"kept-1".to_owned()));
}
