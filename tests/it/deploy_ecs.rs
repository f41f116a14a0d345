//! Issue 22: deploys judged the way ECS judges them: the service deployment ECS names (opaque
//! ids), never a rollback decided without seeing the service, deadlines from the service's
//! strategy, and ECS's own rollback at the deadline. Rollouts are scripted through the proxy,
//! which models ECS's service deployments and revisions as the API reference describes them.

use std::time::Duration;

use aws_sdk_ecs::types::DeploymentStrategy;
use serde_json::Value;

use crate::deploy::{now_ms, strategy, web_with, Deploy, Setup, SHORT_TIMEOUT};
use crate::support::proxy::{Fault, Rollout};
use crate::support::world::{CLUSTER, SERVICE};
use crate::support::{eventually, sdk_config, MASTER_SHA};

fn reason(d: &Value) -> &str {
    d["reason"].as_str().unwrap_or("")
}

async fn ecs(w: &Deploy) -> aws_sdk_ecs::Client {
    aws_sdk_ecs::Client::new(&sdk_config(&w.proxy.url).await)
}

/// The digits of an `ecs-svc/…` deployment id.
fn digits(ecs_id: &str) -> &str {
    ecs_id.rsplit('/').next().unwrap()
}

/// The UpdateService calls that name `task_definition`.
fn updates_to(w: &Deploy, task_definition: &str) -> usize {
    w.proxy
        .update_service_calls()
        .iter()
        .filter(|c| c["taskDefinition"] == task_definition)
        .count()
}

#[tokio::test]
async fn the_service_deployment_is_the_one_ecs_names_confirmed_by_its_revision() {
    // Before: slipway took the digits of `ecs-svc/…` for the service revision's id; ECS's ids
    // are opaque, so every blue/green deploy fell back to `rolloutState`.
    let w = Deploy::new().await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.rollouts([Rollout::Complete { after: 3 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "sdnamed-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let sds = w.proxy.service_deployments(CLUSTER, SERVICE);
    let (arn, _, status) = sds
        .iter()
        .find(|(_, dep, _)| *dep == d["ecs_deployment_id"])
        .expect("ECS's service deployment of ours");
    assert_eq!(d["service_deployment_arn"], arn.as_str(), "{d}");
    assert_eq!(status, "SUCCESSFUL");
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap();
    assert!(!arn.contains(digits(ecs_id)), "opaque: {arn} vs {ecs_id}");
    // Named by UpdateService's answer, confirmed through its target revision: no listing.
    assert!(w.proxy.requests("ListServiceDeployments").is_empty());
    let revisions = w.proxy.requests("DescribeServiceRevisions");
    assert_eq!(revisions.len(), 1, "{revisions:?}");
    assert!(!w.proxy.requests("DescribeServiceDeployments").is_empty());
}

#[tokio::test]
async fn without_a_named_service_deployment_ecs_lists_those_created_since_the_start() {
    let w = Deploy::new().await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.hide_current_service_deployment();
    w.proxy.rollouts([Rollout::Complete { after: 4 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "sdlisted-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let lists = w.proxy.requests("ListServiceDeployments");
    assert!(!lists.is_empty());
    let after = lists[0]["createdAt"]["after"]
        .as_f64()
        .expect("created after the deploy's start");
    let started = d["started_ms"].as_f64().unwrap() / 1000.0;
    assert!(after <= started, "{after} {started}");
    let sds = w.proxy.service_deployments(CLUSTER, SERVICE);
    let ours = sds
        .iter()
        .find(|(_, dep, _)| *dep == d["ecs_deployment_id"])
        .unwrap();
    assert_eq!(d["service_deployment_arn"], ours.0.as_str(), "{d}");
}

#[tokio::test]
async fn an_update_answer_without_a_primary_deployment_keeps_the_deploy_watching() {
    // Before: the deploy failed at once, with nothing watched, while ECS rolled it out.
    let w = Deploy::new().await;
    w.proxy.next_update_without_deployments();
    w.proxy.rollouts([Rollout::Complete { after: 3 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "noprimary-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert!(d["ecs_deployment_id"].is_string(), "found in the list: {d}");
    assert_eq!(w.proxy.update_service_calls().len(), 1);
}

#[tokio::test]
async fn failing_looks_past_the_deadline_never_roll_back_a_rollout_that_completed() {
    // Before: 3 failing looks past the timeout (15 calls with the SDK's retries) and slipway
    // sent UpdateService(from_td) without having seen the service.
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    w.completed_while_down_past_the_timeout("blind-1").await;
    w.proxy.fail("DescribeServices", 15, 500, "ServerException");
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["unseen"].is_null(), "cleared: {done}");
    assert_eq!(updates_to(&w, &w.base_td), 0, "no rollback sent");
    assert_eq!(w.proxy.update_service_calls().len(), 1);
    let unseen = w.notes_of("service_unseen");
    assert_eq!(unseen.len(), 1, "one notification: {unseen:?}");
    assert!(
        unseen[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("cannot see the service: "),
        "{unseen:?}"
    );
}

#[tokio::test]
async fn failing_looks_past_the_deadline_leave_an_operators_hotfix_in_place() {
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    w.completed_while_down_past_the_timeout("blind-2").await;
    // An operator hotfixes meanwhile, back on the base revision's family.
    let hotfix = w
        .emulator
        .register_full_task_definition("web", "nginx:hotfix")
        .await;
    ecs(&w)
        .await
        .update_service()
        .cluster(CLUSTER)
        .service(SERVICE)
        .task_definition(&hotfix)
        .send()
        .await
        .unwrap();
    w.proxy.fail("DescribeServices", 15, 500, "ServerException");
    let _s = w.builder.start().await;
    // While the looks fail, the deploy says so (`slipway deployments`, the API's record) and
    // sends nothing.
    let seen = eventually("the deploy says it cannot see the service", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["unseen"].is_string())
    })
    .await;
    assert_eq!(seen["state"], "deploying", "{seen}");
    assert!(
        seen["unseen"]
            .as_str()
            .is_some_and(|u| u.starts_with("cannot see the service: ")),
        "{seen}"
    );
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(reason(&done).contains("replaced"), "{done}");
    assert_eq!(updates_to(&w, &w.base_td), 0, "no rollback sent");
    assert_eq!(w.service_td().await, hotfix, "the hotfix stays");
}

#[tokio::test]
async fn a_default_linear_deploy_gets_the_time_ecs_needs_and_completes() {
    // Before: the 15-minute rollout timeout cut off every default LINEAR deploy (about 54
    // minutes of steps plus the bake time) with an UpdateService on top of ECS's deployment.
    let w = Deploy::new().await;
    w.configure(strategy(DeploymentStrategy::Linear, 5)).await;
    w.proxy.rollouts([Rollout::Complete { after: 4 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "linear-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let why = d["deadline_why"].as_str().unwrap();
    assert!(
        why.contains("LINEAR: 9 steps of 10% × 6 min + 5 min bake time"),
        "{why}"
    );
    assert!(
        why.contains("longer than rollout_timeout_secs = 900"),
        "{why}"
    );
    let minutes = (d["deadline_ms"].as_i64().unwrap() - d["started_ms"].as_i64().unwrap()) / 60_000;
    assert_eq!(minutes, 54 + 5 + 5, "{d}");
    assert!(w.proxy.requests("StopServiceDeployment").is_empty());
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy"
    );
}

#[tokio::test]
async fn at_the_deadline_ecs_rolls_its_own_service_deployment_back() {
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 2"),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "deadline-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    assert!(reason(&d).contains("did not complete within 2s"), "{d}");
    assert!(
        reason(&d).contains("ECS rolled its service deployment back"),
        "{d}"
    );
    let stops = w.proxy.requests("StopServiceDeployment");
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["stopType"], "ROLLBACK");
    assert_eq!(
        stops[0]["serviceDeploymentArn"],
        d["service_deployment_arn"]
    );
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy: no UpdateService over ECS's deployment"
    );
    assert_eq!(w.service_td().await, w.base_td);
}

#[tokio::test]
async fn an_ecs_rollback_at_the_deadline_is_watched_not_overwritten() {
    // Before: at the timeout slipway sent UpdateService(from_td) on top of ECS's own rollback.
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 1"),
        ..Setup::default()
    })
    .await;
    w.proxy.rollouts([Rollout::EcsRollbackNever { after: 1 }]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "ecsrb-1", MASTER_SHA).await;
    let rolling = eventually("ECS rolling back, past the deadline", || async {
        w.builder.deployments().into_iter().find(|d| {
            d["stage"] == "ROLLBACK_IN_PROGRESS"
                && d["deadline_ms"]
                    .as_i64()
                    .is_some_and(|t| t + 1500 < now_ms())
        })
    })
    .await;
    assert_eq!(rolling["state"], "deploying", "{rolling}");
    assert_eq!(w.proxy.update_service_calls().len(), 1, "nothing on top");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = w
        .proxy
        .deployments(CLUSTER, SERVICE)
        .into_iter()
        .find(|x| x["status"] == "PRIMARY")
        .unwrap();
    w.proxy
        .complete_now(CLUSTER, SERVICE, back["id"].as_str().unwrap());
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        reason(&done).contains("ECS rolled the service back"),
        "{done}"
    );
    assert_eq!(w.proxy.update_service_calls().len(), 1, "nothing on top");
}

#[tokio::test]
async fn a_lost_service_deployment_is_found_at_the_deadline_and_ecs_rolls_it_back() {
    // Before: a blue/green rollout whose service deployment the watch had not found (ECS named
    // none, the listing failed) was watched through `rolloutState`, and at the deadline
    // slipway sent UpdateService(from_td) over ECS's open service deployment.
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 2"),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.hide_current_service_deployment();
    w.proxy
        .fail("ListServiceDeployments", 1, 400, "AccessDeniedException");
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "lostsd-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    assert!(reason(&d).contains("did not complete within 2s"), "{d}");
    assert!(
        reason(&d).contains("ECS rolled its service deployment back"),
        "{d}"
    );
    // The watch had lost the service deployment.
    s.wait_log("cannot read ECS's service deployments; watching the deployments list")
        .await;
    assert_eq!(updates_to(&w, &w.base_td), 0, "no UpdateService(from_td)");
    let stops = w.proxy.requests("StopServiceDeployment");
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["stopType"], "ROLLBACK");
    let sds = w.proxy.service_deployments(CLUSTER, SERVICE);
    let (ours, _, _) = sds
        .iter()
        .find(|(_, dep, _)| *dep == d["ecs_deployment_id"])
        .expect("ECS's service deployment of ours");
    assert_eq!(stops[0]["serviceDeploymentArn"], ours.as_str());
    assert_eq!(d["service_deployment_arn"], ours.as_str(), "{d}");
    assert_eq!(w.service_td().await, w.base_td, "ECS put the base back");
}

#[tokio::test]
async fn without_a_service_deployment_to_stop_nothing_is_sent_at_the_deadline() {
    // A blue/green service whose service deployments cannot be listed: past the deadline the
    // deploy says why it is not rolled back (once), sends nothing, and keeps watching.
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 2"),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.hide_current_service_deployment();
    w.proxy.fail(
        "ListServiceDeployments",
        10_000,
        400,
        "AccessDeniedException",
    );
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "nosd-1", MASTER_SHA).await;
    let d = eventually("the deploy says why nothing was rolled back", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| reason(d).contains("nothing was sent to ECS"))
    })
    .await;
    assert_eq!(d["state"], "deploying", "{d}");
    assert!(reason(&d).contains("did not complete within 2s"), "{d}");
    assert!(
        reason(&d).contains("cannot list ECS's service deployments"),
        "{d}"
    );
    assert!(reason(&d).contains("BLUE_GREEN"), "{d}");
    let told = eventually("one notification", || async {
        let n = w.notes_of("past_deadline");
        (!n.is_empty()).then_some(n)
    })
    .await;
    // More looks past the deadline: still nothing sent, nothing told again.
    let looks = describes(&w);
    eventually("more looks", || async {
        (describes(&w) > looks + 5).then_some(())
    })
    .await;
    assert_eq!(updates_to(&w, &w.base_td), 0, "no UpdateService(from_td)");
    assert!(w.proxy.requests("StopServiceDeployment").is_empty());
    // ECS completes the rollout after all.
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap();
    w.proxy.complete_now(CLUSTER, SERVICE, ecs_id);
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(updates_to(&w, &w.base_td), 0, "no UpdateService(from_td)");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(w.notes_of("past_deadline").len(), 1, "told once");
    assert!(
        told[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nothing was sent to ECS")),
        "{told:?}"
    );
}

#[tokio::test]
async fn a_rollback_asked_of_ecs_before_a_restart_ends_rolled_back() {
    // Before: after a restart, ECS's rollback that slipway had asked for (StopServiceDeployment)
    // was taken for ECS's own and the deploy ended `failed`.
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 2"),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.proxy.hold_requested_rollbacks();
    w.proxy.rollouts([Rollout::Never]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "rbrestart-1", MASTER_SHA).await;
    eventually("the rollback asked of ECS", || async {
        (!w.proxy.requests("StopServiceDeployment").is_empty()).then_some(())
    })
    .await;
    s.kill();
    let asked = w.builder.deployments();
    assert!(asked[0]["rollback_requested_ms"].is_i64(), "{:?}", asked[0]);
    let _s = w.builder.start().await;
    // ECS's rollback completes after slipway is back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let back = w
        .proxy
        .deployments(CLUSTER, SERVICE)
        .into_iter()
        .find(|x| x["status"] == "PRIMARY")
        .unwrap();
    assert_eq!(back["taskDefinition"], w.base_td.as_str(), "{back}");
    w.proxy
        .complete_now(CLUSTER, SERVICE, back["id"].as_str().unwrap());
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert!(
        reason(&done).contains("did not complete within 2s"),
        "{done}"
    );
    assert!(
        reason(&done).contains("ECS rolled its service deployment back"),
        "{done}"
    );
    assert_eq!(w.proxy.requests("StopServiceDeployment").len(), 1);
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy"
    );
}

#[tokio::test]
async fn a_resumed_rollback_sends_no_update_service_once_the_service_has_ecs_strategy() {
    // slipway's own rollback (a rolling update) was journaled, and slipway stopped before its
    // UpdateService reached ECS; meanwhile the service moved to BLUE_GREEN. Resuming must not
    // send UpdateService(from_td) over ECS's strategy.
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "rbresume-1", MASTER_SHA).await;
    w.watching().await;
    // The rollback's UpdateService is held before it reaches ECS.
    w.proxy
        .script("UpdateService", [Fault::Delay(Duration::from_secs(120))]);
    eventually("slipway's rollback journaled", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["stage"] == "ROLLING_BACK")
    })
    .await;
    s.kill();
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    let sent = updates_to(&w, &w.base_td);
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(reason(&done).contains("BLUE_GREEN"), "{done}");
    assert!(reason(&done).contains("nothing was sent"), "{done}");
    assert_eq!(
        updates_to(&w, &w.base_td),
        sent,
        "no UpdateService(from_td)"
    );
    assert_ne!(w.service_td().await, w.base_td);
}

#[tokio::test]
async fn a_delete_in_progress_running_revision_is_copied_for_slipways_rollback() {
    // Before: only INACTIVE revisions were copied; ECS refuses UpdateService to a
    // DELETE_IN_PROGRESS one, so the rollback failed and the broken revision stayed.
    let w = Deploy::new().await;
    w.proxy
        .task_definition_status(&w.base_td, "DELETE_IN_PROGRESS");
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "delinprog-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    let copy = d["from_task_definition"].as_str().unwrap().to_owned();
    assert_ne!(copy, w.base_td, "{d}");
    assert_eq!(d["from_original"], w.base_td.as_str(), "{d}");
    assert_eq!(w.service_td().await, copy, "back on the copy");
    assert_eq!(updates_to(&w, &w.base_td), 0, "never the deleted revision");
}

#[tokio::test]
async fn ecs_rolling_back_to_the_original_of_a_copy_is_ecs_rollback_not_a_replacement() {
    // Before: the rollback target was the copy, ECS's circuit breaker went back to the
    // original (its last completed deployment), and slipway said "another deployment replaced
    // this one" while ECS was still rolling back.
    let w = Deploy::new().await;
    w.emulator
        .ecs()
        .deregister_task_definition()
        .task_definition(&w.base_td)
        .send()
        .await
        .unwrap();
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 2 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "cbcopy-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        reason(&d).contains(&format!("ECS rolled the service back to {}", w.base_td)),
        "{d}"
    );
    assert!(!reason(&d).contains("replaced"), "{d}");
    assert_ne!(d["from_task_definition"], w.base_td.as_str());
    assert_eq!(w.proxy.update_service_calls().len(), 1, "nothing on top");
}

#[tokio::test]
async fn an_operators_rollback_to_a_deleted_revision_deploys_a_copy_of_it() {
    const TOKEN: &str = "alice-token-0123456789";
    const OTHER: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let w = Deploy::with(Setup {
        images: &[MASTER_SHA, OTHER],
        ..Setup::default()
    })
    .await;
    let s = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"))
        .start()
        .await;
    let a = w.ship(&s, "oprb-1", MASTER_SHA).await;
    let b = w.ship(&s, "oprb-2", OTHER).await;
    assert_eq!(
        (&a["state"], &b["state"]),
        (&"succeeded".into(), &"succeeded".into())
    );
    let a_td = a["to_task_definition"].as_str().unwrap().to_owned();
    w.proxy.task_definition_status(&a_td, "DELETE_IN_PROGRESS");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/apps/web/rollback", s.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["deployment"]
        .as_i64()
        .unwrap();
    let r = eventually("the rollback finished", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["id"] == id && d["finished_ms"].is_i64())
    })
    .await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let copy = r["to_task_definition"].as_str().unwrap();
    assert_ne!(copy, a_td, "{r}");
    assert!(reason(&r).contains("DELETE_IN_PROGRESS"), "{r}");
    assert_eq!(w.service_td().await, copy);
    assert_eq!(
        updates_to(&w, &a_td),
        1,
        "only A's own deploy, never the rollback"
    );
}

/// An `ECS Deployment State Change` event as EventBridge writes it into the queue (the
/// developer guide's example); an empty account is filled with the queue's by the proxy, as
/// AWS does for slipway's own rule.
fn ecs_event(deployment_id: &str, name: &str, account: &str) -> Value {
    serde_json::json!({
        "version": "0",
        "id": "ddca6449-b258-46c0-8653-e0e3a6EXAMPLE",
        "detail-type": "ECS Deployment State Change",
        "source": "aws.ecs",
        "account": account,
        "time": "2026-12-04T10:00:00Z",
        "region": "eu-west-1",
        "resources": [format!("arn:aws:ecs:eu-west-1:123456789012:service/{CLUSTER}/{SERVICE}")],
        "detail": {
            "eventType": "INFO",
            "eventName": name,
            "deploymentId": deployment_id,
            "updatedAt": "2026-12-04T10:00:00Z",
            "reason": format!("ECS deployment {deployment_id} {name}."),
        },
    })
}

impl Deploy {
    async fn send_ecs_event(&self, body: &Value) {
        self.emulator
            .sqs()
            .send_message()
            .queue_url(&self.queue)
            .message_body(body.to_string())
            .send()
            .await
            .expect("SendMessage");
    }

    /// The events the journal recorded as not acted on (newest first).
    async fn ignored_events(&self) -> Vec<slipway::store::RejectedEvent> {
        crate::support::rejected_events(&self.builder).await
    }
}

/// Waits until slipway has taken `n` ECS events for a watched rollout (its log says so).
async fn woken(s: &crate::support::slipway::Slipway, n: usize) {
    eventually("the ECS event taken", || async {
        (s.logs()
            .matches("ECS deployment event for a watched rollout")
            .count()
            >= n)
            .then_some(())
    })
    .await;
}

fn describes(w: &Deploy) -> usize {
    w.proxy.requests("DescribeServices").len()
}

/// The `DescribeServices` calls the proxy has answered (their answer made).
fn answered_describes(w: &Deploy) -> usize {
    w.proxy
        .recorded()
        .iter()
        .filter(|r| r.operation == "DescribeServices" && r.answered != u64::MAX)
        .count()
}

#[tokio::test]
async fn a_completed_event_ends_the_deploy_with_one_confirming_look() {
    // Fallback looks 15 s apart: the event's look comes well before the next one, however
    // slow the machine.
    let w = Deploy::with(Setup {
        deploy_timing: "poll_initial_ms = 50\npoll_max_ms = 200\npoll_with_events_ms = 15000",
        ..Setup::default()
    })
    .await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "ev-1", MASTER_SHA).await;
    let d = w.watching().await;
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap().to_owned();
    w.send_ecs_event(&ecs_event(&ecs_id, "SERVICE_DEPLOYMENT_IN_PROGRESS", ""))
        .await;
    woken(&s, 1).await;
    // Events arrive: polling falls back to one look every `poll_with_events_ms`. Right after
    // such a look, ECS completes the rollout and says so.
    let before = describes(&w);
    // Answered, not only asked: an answer made after `complete_now` would show the rollout
    // completed and end the deploy without the event's look.
    eventually("a fallback look answered", || async {
        (answered_describes(&w) > before).then_some(())
    })
    .await;
    // An IN_PROGRESS event tells the watch nothing new: it costs no look.
    assert!(
        !s.logs().contains("ECS's deployment event: looking now"),
        "a look for IN_PROGRESS"
    );
    let looks = describes(&w);
    assert_eq!(answered_describes(&w), looks, "no look in flight");
    w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
    w.send_ecs_event(&ecs_event(&ecs_id, "SERVICE_DEPLOYMENT_COMPLETED", ""))
        .await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(describes(&w) - looks, 1, "one look confirmed the event");
    s.wait_log("ECS's deployment event: looking now").await;
    assert!(
        w.ignored_events().await.is_empty(),
        "both events were acted on"
    );
}

#[tokio::test]
async fn a_lost_completed_event_is_caught_by_the_fallback_poll() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "ev-2", MASTER_SHA).await;
    let d = w.watching().await;
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap().to_owned();
    w.send_ecs_event(&ecs_event(&ecs_id, "SERVICE_DEPLOYMENT_IN_PROGRESS", ""))
        .await;
    woken(&s, 1).await;
    // ECS completes; its COMPLETED event never arrives.
    w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[tokio::test]
async fn events_for_unknown_deployments_or_from_another_account_are_recorded_and_ignored() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "ev-3", MASTER_SHA).await;
    let d = w.watching().await;
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap().to_owned();
    w.send_ecs_event(&ecs_event(
        "ecs-svc/1111111111111111111",
        "SERVICE_DEPLOYMENT_COMPLETED",
        "",
    ))
    .await;
    w.send_ecs_event(&ecs_event(
        &ecs_id,
        "SERVICE_DEPLOYMENT_COMPLETED",
        "999999999999",
    ))
    .await;
    let ignored = eventually("both recorded", || async {
        let r = w.ignored_events().await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let reasons: Vec<&str> = ignored.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("ecs-svc/1111111111111111111") && r.contains("ignored")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("account \"999999999999\"")),
        "{reasons:?}"
    );
    // The deploy is still watching: a forged COMPLETED decides nothing.
    let now = w
        .builder
        .deployments()
        .into_iter()
        .find(|x| x["id"] == d["id"])
        .unwrap();
    assert_eq!(now["state"], "deploying", "{now}");
    w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

/// The benchmark of issue 22 (`scripts/bench-ecs-events.sh`): with slipway's default polling,
/// the time from ECS's COMPLETED (the rollout completes and, with events, its event is put in
/// the queue as EventBridge delivers it) to `succeeded` in the journal, and the AWS calls
/// (ECS and ECR; not SQS or CodeBuild) in three phases: start-up (the deploy until it watches,
/// then the watch's first minute), the steady state (from then until ECS completes, per
/// minute) and completion. Event-driven and polling-only deploys in the same run; with events,
/// `SERVICE_DEPLOYMENT_IN_PROGRESS` arrives when the watch starts and again every
/// `BENCH_EVENT_EVERY_SECS` (ECS itself sends it once per deployment: a worse case).
#[tokio::test]
#[ignore = "a benchmark: run scripts/bench-ecs-events.sh"]
async fn bench_ecs_events() {
    const SHAS: [&str; 6] = [
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
        "3333333333333333333333333333333333333333",
        "4444444444444444444444444444444444444444",
        "5555555555555555555555555555555555555555",
        "6666666666666666666666666666666666666666",
    ];
    let env = |key: &str, default: u64| -> u64 {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = (env("BENCH_RUNS", 1) as usize).min(SHAS.len() / 2);
    let watch = Duration::from_secs(env("BENCH_WATCH_SECS", 300).max(90));
    let event_every = Duration::from_secs(env("BENCH_EVENT_EVERY_SECS", 45).max(5));
    let w = Deploy::with(Setup {
        images: &SHAS,
        // slipway's defaults.
        deploy_timing: "poll_initial_ms = 5000\npoll_max_ms = 30000\npoll_with_events_ms = 60000",
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    // AWS calls recorded so far (ECS and ECR).
    let calls = || {
        w.proxy
            .recorded()
            .iter()
            .filter(|r| {
                r.arrived < u64::MAX
                    && !matches!(
                        r.operation.as_str(),
                        "ReceiveMessage"
                            | "DeleteMessage"
                            | "ChangeMessageVisibility"
                            | "BatchGetBuilds"
                            | "StartBuild"
                            | "SendMessage"
                            | "GetQueueAttributes"
                    )
            })
            .count()
    };
    let mut report = vec![];
    for (i, sha) in SHAS.iter().take(runs * 2).enumerate() {
        let events = i % 2 == 0;
        w.proxy.rollouts([Rollout::Never]);
        let deploy_from = calls();
        w.build_succeeds(&s, &format!("bench-{i}"), sha).await;
        let d = eventually("watching", || async {
            w.builder
                .deployments()
                .into_iter()
                .find(|d| d["sha"] == *sha && d["ecs_deployment_id"].is_string())
        })
        .await;
        let ecs_id = d["ecs_deployment_id"].as_str().unwrap().to_owned();
        let watch_from = calls();
        let watch_from_ms = now_ms();
        // The rollout runs `watch` (plus a different phase of the polling schedule each run).
        let complete_at = tokio::time::Instant::now() + watch + Duration::from_secs(7 * i as u64);
        let steady_at = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut steady_from = None;
        let mut next_event = tokio::time::Instant::now();
        let mut sent = 0;
        loop {
            let now = tokio::time::Instant::now();
            if now >= complete_at {
                break;
            }
            if steady_from.is_none() && now >= steady_at {
                steady_from = Some((calls(), now_ms()));
            }
            if events && now >= next_event {
                w.send_ecs_event(&ecs_event(&ecs_id, "SERVICE_DEPLOYMENT_IN_PROGRESS", ""))
                    .await;
                sent += 1;
                next_event += event_every;
            }
            let mut wake = complete_at;
            if steady_from.is_none() {
                wake = wake.min(steady_at);
            }
            if events {
                wake = wake.min(next_event);
            }
            tokio::time::sleep_until(wake).await;
        }
        let (steady_calls_from, steady_from_ms) = steady_from.expect("a watch over a minute");
        let completed_ms = now_ms();
        let completed_from = calls();
        w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
        if events {
            w.send_ecs_event(&ecs_event(&ecs_id, "SERVICE_DEPLOYMENT_COMPLETED", ""))
                .await;
            sent += 1;
        }
        let done = loop {
            let found = w
                .builder
                .deployments()
                .into_iter()
                .find(|x| x["id"] == d["id"] && x["finished_ms"].is_i64());
            if let Some(done) = found {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(done["state"], "succeeded", "{done}");
        let finished = done["finished_ms"].as_i64().unwrap();
        let end = calls();
        let steady_minutes = (completed_ms - steady_from_ms) as f64 / 60_000.0;
        let steady = completed_from - steady_calls_from;
        report.push(format!(
            "{:7} ({:2} events) completed->succeeded {:6} ms | start-up {:2} calls (deploy {:2}, \
             first minute of the watch {}) | steady state {:2} calls in {:.2} min = {:.2}/min | \
             completion {} | watch {:.2} min",
            if events { "events" } else { "polling" },
            sent,
            finished - completed_ms,
            steady_calls_from - deploy_from,
            watch_from - deploy_from,
            steady_calls_from - watch_from,
            steady,
            steady_minutes,
            steady as f64 / steady_minutes,
            end - completed_from,
            (finished - watch_from_ms) as f64 / 60_000.0,
        ));
        eprintln!("{}", report.last().unwrap());
    }
    println!("BENCH ECS EVENTS\n{}", report.join("\n"));
}
