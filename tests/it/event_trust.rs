//! Issue 8 item 6: events in slipway's queue are believed only when they come from CodeBuild
//! in slipway's account and region, and a final status only once CodeBuild confirms it
//! (issue 23 item 1: every final status, not only SUCCEEDED).

use serde_json::{json, Value};

use crate::deploy::{Deploy, Setup};
use crate::support::github_fake::{GithubFake, STATIC_TOKEN};
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
    async fn rejections(&self) -> Vec<slipway::store::RejectedEvent> {
        eventually("the queue drained", || async {
            (self.emulator.queue_depth(&self.queue).await == 0).then_some(())
        })
        .await;
        crate::support::rejected_events(&self.builder).await
    }

    /// The first event the journal rejected, once there is one.
    async fn first_rejection(&self) -> slipway::store::RejectedEvent {
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
    s.wait_log("event rejected; not deploying").await;
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

/// Issue 23 item 1: the build id is public (it is in the log link of every commit status), so
/// whoever may send to the queue can forge a FAILED event for a build that succeeded, with a
/// `javascript:` log link. CodeBuild says the build succeeded: nothing changes.
#[tokio::test]
async fn a_forged_failed_event_for_a_build_that_succeeded_changes_nothing() {
    let gh = GithubFake::start().await;
    let extra = format!("[github]\napi_url = \"{}\"\n", gh.url);
    let mut w = Deploy::with(Setup {
        extra: &extra,
        ..Setup::default()
    })
    .await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN);
    let s = w.builder.start().await;
    let arn = w.build_succeeds(&s, "forged-1", MASTER_SHA).await;
    assert_eq!(w.finished(MASTER_SHA).await["state"], "succeeded");
    let build_statuses = eventually("the build's success status", || async {
        let st = gh.statuses(MASTER_SHA, "slipway/build");
        st.iter().any(|(state, _)| state == "success").then_some(st)
    })
    .await;
    let row = |s: &crate::support::slipway::Slipway| {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "forged-1")
            .unwrap()
    };
    let before = row(&s);
    // The deploy's notifications go through their outbox: count them once the last is in.
    eventually("the deploy's success notified", || async {
        (!w.notes_of("deploy_succeeded").is_empty()).then_some(())
    })
    .await;
    let notes_before = w.notes.bodies().len();

    let mut forged = event(&arn, "aws.codebuild", "123456789012", "FAILED");
    forged["detail"]["additional-information"]["logs"] =
        json!({ "deep-link": "javascript:alert(document.domain)" });
    w.send_raw(&forged).await;
    let rejected = w.first_rejection().await;
    assert!(
        rejected
            .reason
            .contains("the event says FAILED but CodeBuild reports the build as SUCCEEDED"),
        "{}",
        rejected.reason
    );

    // The build's state, its notifications and its GitHub statuses are as they were.
    let after = row(&s);
    assert_eq!(after["state"], before["state"], "{after}");
    assert_eq!(after["reason"], before["reason"], "{after}");
    assert!(w.notes_of("build_failed").is_empty());
    assert_eq!(w.notes.bodies().len(), notes_before);
    assert_eq!(gh.statuses(MASTER_SHA, "slipway/build"), build_statuses);

    // The page links only to CodeBuild's own https log link, under a policy that runs nothing.
    let deployment = w.finished(MASTER_SHA).await["id"].as_i64().unwrap();
    for path in ["/".to_owned(), format!("/deployments/{deployment}")] {
        let r = reqwest::get(format!("{}{path}", s.admin_url))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("script-src"), "{path}: {csp}");
        let html = r.text().await.unwrap();
        assert!(!html.contains("javascript:"), "{path}: {html}");
        assert!(
            html.contains(r#"href="https://console.aws.amazon.com/cloudwatch/"#),
            "{path}: {html}"
        );
    }
}

/// A FAILED event CodeBuild confirms is recorded, with CodeBuild's log link, not the event's.
#[tokio::test]
async fn a_confirmed_failure_takes_the_log_link_from_codebuild() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.push(&s, "confirmed-fail", MASTER_SHA).await;
    let id = arn.split_once(":build/").unwrap().1;
    w.proxy.build_status(id, "FAILED");
    let mut failed = event(&arn, "aws.codebuild", "123456789012", "FAILED");
    failed["detail"]["additional-information"]["logs"] =
        json!({ "deep-link": "https://attacker.example/logs" });
    w.send_raw(&failed).await;
    let note = eventually("build_failed notification", || async {
        w.notes_of("build_failed").into_iter().next()
    })
    .await;
    let link = note["log_link"].as_str().unwrap();
    assert!(
        link.starts_with("https://console.aws.amazon.com/cloudwatch/"),
        "{link}"
    );
    assert!(s.builder.deployments().is_empty());
}
