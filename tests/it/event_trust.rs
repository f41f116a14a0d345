//! Issue 8 item 6: events in slipway's queue are believed only when they come from CodeBuild
//! in slipway's account and region, and a SUCCEEDED only once CodeBuild confirms it.

use serde_json::{json, Value};

use crate::deploy::Deploy;
use crate::support::world::PROJECT;
use crate::support::{eventually, MASTER_SHA};

/// A `CodeBuild Build State Change` event as EventBridge writes it into the queue.
fn event(build_arn: &str, source: &str, account: &str, status: &str) -> Value {
    json!({
        "version": "0",
        "id": "4ab1c2d3-0000-0000-0000-000000000001",
        "detail-type": "CodeBuild Build State Change",
        "source": source,
        "account": account,
        "time": "2026-11-26T10:00:00Z",
        "region": "eu-west-1",
        "resources": [build_arn],
        "detail": {
            "build-status": status,
            "project-name": PROJECT,
            "build-id": build_arn,
            "additional-information": { "source-version": MASTER_SHA },
        },
    })
}

impl Deploy {
    /// Writes a message straight into slipway's queue, as anyone allowed to send there could.
    async fn send_raw(&self, body: &Value) {
        self.emulator
            .sqs()
            .send_message()
            .queue_url(&self.queue)
            .message_body(body.to_string())
            .send()
            .await
            .expect("SendMessage");
    }

    /// Waits until the queue is empty; returns the journaled rejections (newest first).
    async fn rejections(&self) -> Vec<slipway::journal::RejectedEvent> {
        eventually("the queue drained", || async {
            (self.emulator.queue_depth(&self.queue).await == 0).then_some(())
        })
        .await;
        // slipway holds the journal (the CLI would be refused): the test looks inside the file
        // read-only, as `sqlite3 -readonly` would. No API lists rejections.
        let db = rusqlite::Connection::open_with_flags(
            self.builder.state_dir().join("journal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the journal");
        let mut stmt = db
            .prepare(
                "SELECT message_id, build_id, source, account, reason, received_ms
                 FROM rejected_events ORDER BY id DESC",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok(slipway::journal::RejectedEvent {
                    message_id: r.get(0)?,
                    build_id: r.get(1)?,
                    source: r.get(2)?,
                    account: r.get(3)?,
                    reason: r.get(4)?,
                    received_ms: r.get(5)?,
                })
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>()
            .expect("rejected events")
    }

    /// The first event the journal rejected, once there is one.
    async fn first_rejection(&self) -> slipway::journal::RejectedEvent {
        eventually("journaled as rejected", || async {
            self.rejections().await.into_iter().next()
        })
        .await
    }
}

#[tokio::test]
async fn events_from_another_source_or_account_are_rejected_and_not_deployed() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.push(&s, "trust-1", MASTER_SHA).await;

    w.send_raw(&event(&arn, "my.app", "123456789012", "SUCCEEDED"))
        .await;
    w.send_raw(&event(&arn, "aws.codebuild", "999999999999", "SUCCEEDED"))
        .await;
    let rejected = eventually("both journaled as rejected", || async {
        let r = w.rejections().await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("source \"my.app\" is not \"aws.codebuild\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("account \"999999999999\" is not slipway's account")),
        "{reasons:?}"
    );
    assert!(s.builder.deployments().is_empty());
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(w.proxy.update_service_calls().is_empty());

    // Nothing was lost or stuck: CodeBuild's own event for the same build still deploys it.
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    assert_eq!(w.finished(MASTER_SHA).await["state"], "succeeded");
}

#[tokio::test]
async fn a_succeeded_event_for_a_build_codebuild_reports_failed_is_not_deployed() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.push(&s, "trust-2", MASTER_SHA).await;
    let id = arn.split_once(":build/").unwrap().1;
    w.proxy.build_status(id, "FAILED");

    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    let rejected = w.first_rejection().await;
    assert_eq!(rejected.build_id.as_deref(), Some(id));
    assert!(
        rejected
            .reason
            .contains("the event says SUCCEEDED but CodeBuild reports the build as FAILED"),
        "{}",
        rejected.reason
    );
    assert!(!w.proxy.requests("BatchGetBuilds").is_empty());
    assert!(s.builder.deployments().is_empty());
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(s.logs().contains("event rejected; not deploying"));
}

#[tokio::test]
async fn a_succeeded_event_for_a_build_codebuild_does_not_know_is_not_deployed() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let made_up = "arn:aws:codebuild:eu-west-1:123456789012:build/web-build:made-up-1";
    w.complete(made_up, "SUCCEEDED", MASTER_SHA).await;
    let rejected = w.first_rejection().await;
    assert!(
        rejected
            .reason
            .contains("CodeBuild does not know build web-build:made-up-1"),
        "{}",
        rejected.reason
    );
    assert!(s.builder.deployments().is_empty());
}

#[tokio::test]
async fn a_build_without_this_runs_slipway_run_is_not_deployed() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.push(&s, "trust-3", MASTER_SHA).await;
    let id = arn.split_once(":build/").unwrap().1;
    // The build slipway journaled under this id says it belongs to another run.
    w.proxy
        .build_env(id, &[("SLIPWAY_RUN", "someone-elses-run")]);
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    let rejected = w.first_rejection().await;
    assert!(
        rejected
            .reason
            .contains("does not carry the SLIPWAY_RUN slipway started it with"),
        "{}",
        rejected.reason
    );
    assert!(s.builder.deployments().is_empty());
}
