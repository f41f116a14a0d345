//! Issue 25: `serve` on the DynamoDB engine where DynamoDB is not well: throttling, a write
//! conflict, an endpoint that does not answer, a table that was never made. The rest of the
//! suite runs on this engine too (`SLIPWAY_TEST_STORE=dynamodb`, scripts/test.sh); these tests
//! set their own `[store]` and put the test proxy in front of DynamoDB, so they run once.

use std::time::{Duration, Instant};

use crate::support::{eventually, fixture, free_port, Emulator, Proxy, SlipwayBuilder};

const TABLE: &str = "slipway";
const NO_AWS: &str = "http://127.0.0.1:9";

/// The `[store]` lines of a slipway on DynamoDB.
fn store_config() -> String {
    format!("[store]\nengine = \"dynamodb\"\ntable = \"{TABLE}\"\n")
}

/// An emulator holding slipway's table, as `slipway provision` makes it.
async fn table() -> Emulator {
    let emulator = Emulator::start().await;
    emulator.create_state_table(TABLE).await;
    emulator
}

/// A slipway (AWS elsewhere unreachable: only intake is exercised) keeping its state in
/// DynamoDB at `dynamodb`.
fn on_dynamodb(dynamodb: &str) -> SlipwayBuilder {
    SlipwayBuilder::new(NO_AWS)
        .extra(&store_config())
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)
}

/// The GUIDs of the deliveries slipway lists (through its API while it runs).
fn guids(b: &SlipwayBuilder) -> Vec<String> {
    b.deliveries()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap_or("").to_owned())
        .collect()
}

// The CLI's listings block this thread while the proxy (on this runtime) must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttling_a_conflict_or_a_fault_answers_github_503_and_acknowledges_nothing() {
    let emulator = table().await;
    let proxy = Proxy::start(&emulator.url).await;
    let s = on_dynamodb(&proxy.url).start().await;
    let body = fixture("github/push_master.json");
    let r = s.deliver("push", "dyn-ok-1", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);

    for (guid, status, code) in [
        (
            "dyn-throttled-1",
            400,
            "ProvisionedThroughputExceededException",
        ),
        ("dyn-conflict-1", 400, "TransactionConflictException"),
        // A 5xx is DynamoDB's own fault, whatever its code: try again later too.
        ("dyn-fault-1", 500, "InternalFailure"),
    ] {
        // More failures than the SDK's attempts: the write does not happen.
        proxy.fail("TransactWriteItems", 50, status, code);
        let r = s.deliver("push", guid, &body).await;
        assert_eq!(r.status, 503, "{code}: {}", r.text);
        // "busy": the answer that comes with Retry-After (the store is unavailable for now).
        assert!(
            r.text.contains("busy") && r.text.contains(code),
            "{code}: the answer says why: {}",
            r.text
        );
        proxy.clear_faults();
    }
    // The store's writes fail: readiness says so, with DynamoDB's reason.
    proxy.fail("PutItem", 50, 500, "InternalServerError");
    let (status, ready) = s.admin_get("/readyz").await;
    assert_eq!(status, 503);
    let why = ready["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not writable") && why.contains("InternalServerError"),
        "{ready}"
    );
    proxy.clear_faults();
    assert!(
        proxy.operations().iter().all(|op| op != "Scan"),
        "no Scan: {:?}",
        proxy.operations()
    );

    // Nothing was acknowledged for the refused deliveries; GitHub's redelivery is taken once.
    assert_eq!(guids(&s.builder), ["dyn-ok-1"]);
    for guid in ["dyn-throttled-1", "dyn-conflict-1", "dyn-fault-1"] {
        let r = s.deliver("push", guid, &body).await;
        assert_eq!(r.status, 202, "{guid}: {}", r.text);
    }
    let mut listed = guids(&s.builder);
    listed.sort();
    assert_eq!(
        listed,
        [
            "dyn-conflict-1",
            "dyn-fault-1",
            "dyn-ok-1",
            "dyn-throttled-1"
        ]
    );
    // Still serving.
    assert_eq!(s.get("/healthz").await.0, 200);
}

// The CLI's listings block this thread while the proxy (on this runtime) must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_unreachable_at_start_keeps_slipway_starting_with_the_reason_until_it_answers() {
    let emulator = table().await;
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let b = on_dynamodb(&endpoint);
    let s = b.spawn().await;
    let reason = eventually("readiness naming the table", || async {
        let (status, v) = s.admin_get("/readyz").await;
        let why = v["error"].as_str().unwrap_or_default().to_owned();
        (status == 503 && why.contains("cannot reach the DynamoDB table slipway")).then_some(why)
    })
    .await;
    assert!(reason.contains(&endpoint), "{reason}");
    // A delivery now is refused with the same reason, not acknowledged.
    let body = fixture("github/push_master.json");
    let r = s.deliver("push", "dyn-early-1", &body).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.text.contains("cannot reach the DynamoDB table"),
        "{}",
        r.text
    );

    // DynamoDB answers: slipway serves, and the redelivery is taken.
    let _proxy = Proxy::bind(&format!("127.0.0.1:{port}"), &emulator.url)
        .await
        .unwrap();
    eventually("slipway serving", || async {
        s.logs().contains("\"listening\"").then_some(())
    })
    .await;
    let r = s.deliver("push", "dyn-early-1", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    b.now_running(&s);
    assert_eq!(guids(&b), ["dyn-early-1"]);
}

#[tokio::test]
async fn a_table_that_was_never_made_stops_the_start_naming_provision() {
    let emulator = Emulator::start().await; // no table
    let b = on_dynamodb(&emulator.url);
    let config = b.write_config();
    let mut child = b
        .command()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("serve kept running without its table");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("the DynamoDB table slipway does not exist")
            && err.contains("run `slipway provision` to make it"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_reads_the_table_while_serve_runs_and_backup_points_at_pitr() {
    let emulator = table().await;
    let b = on_dynamodb(&emulator.url);
    let s = b.start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "dyn-cli-1", &body).await.status, 202);
    // Without --server: the CLI reads the table itself (no journal lock to stand aside for).
    let config = b.config_path();
    let (status, out, err) = b.run(&["deliveries", "--json", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(rows.iter().any(|d| d["delivery"] == "dyn-cli-1"), "{out}");
    // check-config takes the engine.
    let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    // backup and restore are the SQLite journal's: a usage error saying what to use instead.
    for args in [
        vec!["backup", "--to", "/tmp/slipway-never-written.db"],
        vec!["restore", "--from", "/tmp/slipway-never-written.db"],
    ] {
        let mut args = args;
        args.extend(["--config", config.to_str().unwrap()]);
        let (status, _, err) = b.run(&args);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("point-in-time recovery"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/slipway-never-written.db").exists());
    assert_eq!(s.get("/healthz").await.0, 200);
}
