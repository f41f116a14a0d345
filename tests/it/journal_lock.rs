//! One slipway per journal (issue 21): a second `serve` on the same state_dir waits for the
//! lock with `/readyz` saying whom it waits for, and takes over when the first exits; the CLI
//! reads the journal under a shared lock and is sent to the server while one holds it.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::slipway::{Slipway, HARNESS_TOKEN};
use crate::support::{eventually, fixture, Emulator, SlipwayBuilder};

const TASK_ARN: &str =
    "arn:aws:ecs:eu-west-1:111122223333:task/slipway/0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The ECS task metadata endpoint v4: `GET ${ECS_CONTAINER_METADATA_URI_V4}/task` answers the
/// task's metadata, `TaskARN` among it ("Amazon ECS task metadata endpoint version 4 for tasks
/// on Fargate", response example). Only the fields around it are modelled.
async fn ecs_metadata() -> String {
    let app = Router::new().route(
        "/v4/container-id/task",
        get(|| async {
            Json(json!({
                "Cluster": "arn:aws:ecs:eu-west-1:111122223333:cluster/slipway",
                "TaskARN": TASK_ARN,
                "Family": "slipway",
                "Revision": "7",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "LaunchType": "FARGATE"
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v4/container-id", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn emulator() -> Emulator {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    emulator
}

async fn readyz(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/readyz"))
        .await
        .expect("GET /readyz");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn push(sha: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("github/push_master.json")).unwrap();
    text.replace(crate::support::MASTER_SHA, sha).into_bytes()
}

#[tokio::test]
async fn a_second_serve_waits_for_the_lock_and_takes_over_when_the_first_exits() {
    let emulator = emulator().await;
    let metadata = ecs_metadata().await;
    let builder =
        SlipwayBuilder::new(&emulator.url).env("ECS_CONTAINER_METADATA_URI_V4", &metadata);
    let mut first = builder.start().await;
    let sha = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
    assert_eq!(
        first.deliver("push", "before-1", &push(sha)).await.status,
        202
    );

    let mut second = builder.spawn().await;
    // Listening, alive, not ready, and saying whom it waits for.
    let why = eventually("the second slipway to say whom it waits for", || async {
        let (status, body) = readyz(&second.url).await;
        assert_eq!(status, 503, "{body}");
        let why = body["error"].as_str().unwrap_or("").to_owned();
        why.contains("held by").then_some(why)
    })
    .await;
    assert!(
        why.starts_with("waiting for the journal lock held by slipway pid")
            && why.contains(&format!("pid {} on {}", first.pid(), this_host()))
            && why.contains(TASK_ARN),
        "{why}"
    );
    assert_eq!(readyz(&second.admin_url).await.0, 503);
    assert_eq!(second.get("/healthz").await.0, 200, "alive while it waits");
    // A delivery reaching it now is refused, not acknowledged: GitHub records the failure.
    let r = second.deliver("push", "while-waiting", &push(sha)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("waiting for the journal lock"));
    // The first still serves meanwhile.
    assert_eq!(readyz(&first.url).await.0, 200);
    assert!(second
        .logs()
        .contains("another slipway holds the journal: waiting for it to exit"));

    assert!(first.terminate().success());
    eventually("the second slipway to be ready", || async {
        (readyz(&second.url).await.0 == 200).then_some(())
    })
    .await;
    second.wait_log("took over the journal lock").await;
    builder.now_running(&second);
    // It serves: what the first acknowledged is there, and new pushes are taken.
    let after = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
    assert_eq!(
        second.deliver("push", "after-1", &push(after)).await.status,
        202
    );
    let delivered: Vec<String> = builder
        .deliveries()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap().to_owned())
        .collect();
    assert!(delivered.contains(&"before-1".to_owned()), "{delivered:?}");
    assert!(delivered.contains(&"after-1".to_owned()), "{delivered:?}");
    assert!(
        !delivered.contains(&"while-waiting".to_owned()),
        "{delivered:?}"
    );
    assert!(second.terminate().success());
}

#[tokio::test]
async fn a_serve_that_waits_too_long_gives_up_naming_the_holder() {
    let emulator = emulator().await;
    let builder = SlipwayBuilder::new(&emulator.url).extra("[journal]\nlock_wait_secs = 2\n");
    let first = builder.start().await;
    let config = builder.config_path();
    let (status, _, err) = builder.run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("gave up after 2 s waiting for the journal lock, held by slipway pid")
            && err.contains(&format!("pid {} on", first.pid())),
        "{err}"
    );
    // The first was not disturbed.
    assert_eq!(readyz(&first.url).await.0, 200);
}

#[tokio::test]
async fn the_cli_reads_the_journal_only_while_no_server_holds_it() {
    let emulator = emulator().await;
    let builder = SlipwayBuilder::new(&emulator.url);
    let mut s: Slipway = builder.start().await;
    let sha = "cccccccccccccccccccccccccccccccccccccccc";
    assert_eq!(s.deliver("push", "d-1", &push(sha)).await.status, 202);
    let config = builder.config_path();
    let config = config.to_str().unwrap();

    let (status, out, err) = builder.run(&["deliveries", "--config", config]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    let expected = format!("slipway is running on {}; use SLIPWAY_SERVER", this_host());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains(&format!("pid {}", s.pid())), "{err}");
    let (status, _, err) = builder.run(&["deployments", "--config", config]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains(&expected), "{err}");

    // Through the server, as the message says.
    let out = builder
        .command()
        .args(["deliveries", "--json", "--config", config])
        .env("SLIPWAY_SERVER", &s.admin_url)
        .env("SLIPWAY_OPS_TOKEN", HARNESS_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["delivery"], "d-1");

    // With no server, the journal is read directly, and a server can start while it is read.
    assert!(s.terminate().success());
    let (status, out, err) = builder.run(&["deliveries", "--json", "--config", config]);
    assert!(status.success(), "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["delivery"], "d-1");
    let s = builder.start().await;
    assert_eq!(readyz(&s.url).await.0, 200);
}
