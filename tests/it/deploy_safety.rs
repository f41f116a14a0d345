//! Issue 9: deploys that stay right through restarts, ECS rollbacks and every ECS setup.
//! Each test names the defect it guards against; rollouts are scripted through the proxy.

use std::time::Duration;

use aws_sdk_ecs::types::{DeploymentController, DeploymentControllerType, DeploymentStrategy, Tag};
use serde_json::Value;

use crate::deploy::{sleep_past, strategy, web_with, Deploy, Setup, SHORT_TIMEOUT};
use crate::support::proxy::{Fault, Recorded, Rollout};
use crate::support::world::{CLUSTER, SERVICE};
use crate::support::{eventually, sdk_config, MASTER_SHA};

/// The deploy, once it has recorded its new revision but not (yet) heard from UpdateService.
async fn registered(w: &Deploy) -> Value {
    eventually("the deploy's new revision recorded", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["to_task_definition"].is_string() && d["state"] == "deploying")
    })
    .await
}

/// Waits until ECS (the proxy's view of it) has applied slipway's UpdateService to
/// `task_definition`, whose answer the proxy holds back.
async fn ecs_applied(w: &Deploy, task_definition: &str) {
    eventually("ECS applied slipway's UpdateService", || async {
        w.proxy
            .deployments(CLUSTER, SERVICE)
            .iter()
            .any(|d| d["taskDefinition"] == task_definition)
            .then_some(())
    })
    .await;
}

/// An operator (or another tool) deploys `task_definition` straight through ECS.
async fn operator_deploys(w: &Deploy, task_definition: &str) {
    let ecs = aws_sdk_ecs::Client::new(&sdk_config(&w.proxy.url).await);
    ecs.update_service()
        .cluster(CLUSTER)
        .service(SERVICE)
        .task_definition(task_definition)
        .send()
        .await
        .unwrap();
}

/// Someone looks at the service through the proxy (ECS moves on while slipway is down).
async fn look(w: &Deploy) {
    let ecs = aws_sdk_ecs::Client::new(&sdk_config(&w.proxy.url).await);
    ecs.describe_services()
        .cluster(CLUSTER)
        .services(SERVICE)
        .send()
        .await
        .unwrap();
}

fn reason(d: &Value) -> &str {
    d["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_restart_never_puts_its_revision_over_an_operators_hotfix() {
    let w = Deploy::new().await;
    // ECS applies slipway's UpdateService, but slipway dies before it hears the answer.
    w.proxy.script(
        "UpdateService",
        [Fault::DelayAnswer(Duration::from_secs(60))],
    );
    w.proxy.rollouts([Rollout::Never]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "hotfix-1", MASTER_SHA).await;
    let d = registered(&w).await;
    ecs_applied(&w, d["to_task_definition"].as_str().unwrap()).await;
    s.kill();
    // The operator ships a hotfix through ECS while slipway is down.
    let hotfix = w
        .emulator
        .register_full_task_definition("web", &w.image_uri("hotfix").await)
        .await;
    operator_deploys(&w, &hotfix).await;
    look(&w).await;
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["id"], d["id"]);
    assert_eq!(done["state"], "failed", "{done}");
    assert!(reason(&done).contains(&hotfix), "{done}");
    assert!(reason(&done).contains("nothing was changed"), "{done}");
    assert_eq!(w.service_td().await, hotfix, "the hotfix still runs");
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "slipway's lost call and the operator's, nothing after the restart"
    );
}

#[tokio::test]
async fn a_restart_never_reapplies_what_ecs_already_rolled_back() {
    let w = Deploy::new().await;
    w.proxy.script(
        "UpdateService",
        [Fault::DelayAnswer(Duration::from_secs(60))],
    );
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 1 }]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "cb-1", MASTER_SHA).await;
    let d = registered(&w).await;
    ecs_applied(&w, d["to_task_definition"].as_str().unwrap()).await;
    s.kill();
    // The circuit breaker fails the deployment and completes its rollback meanwhile.
    look(&w).await;
    look(&w).await;
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        reason(&done).contains("ECS rolled the service back"),
        "{done}"
    );
    assert_eq!(w.service_td().await, w.base_td);
    assert_eq!(
        w.proxy.update_service_calls().len(),
        1,
        "nothing re-applied"
    );
}

#[tokio::test]
async fn a_deploy_that_never_reached_ecs_gets_a_fresh_rollout_clock_after_downtime() {
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    // UpdateService is held before it reaches ECS; slipway dies waiting.
    w.proxy
        .script("UpdateService", [Fault::Delay(Duration::from_secs(600))]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "clock-1", MASTER_SHA).await;
    registered(&w).await;
    eventually("UpdateService sent", || async {
        (!w.proxy.update_service_calls().is_empty()).then_some(())
    })
    .await;
    s.kill();
    assert_eq!(
        w.service_td().await,
        w.base_td,
        "the held call never reached ECS"
    );
    // Down for longer than the rollout timeout: past the journaled deadline.
    let deadline = w
        .builder
        .deployments()
        .into_iter()
        .find(|d| d["sha"] == MASTER_SHA)
        .and_then(|d| d["deadline_ms"].as_i64())
        .expect("the deadline journaled");
    sleep_past(deadline).await;
    // The rollout then takes two looks to complete.
    w.proxy.rollouts([Rollout::Complete { after: 2 }]);
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        w.service_td().await,
        done["to_task_definition"].as_str().unwrap()
    );
}

#[tokio::test]
async fn an_ecs_rollback_is_reported_only_once_it_completed() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "cbdone-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(reason(&d).contains("ECS rolled the service back"), "{d}");
    let deployments = w.proxy.deployments(CLUSTER, SERVICE);
    let primary = deployments
        .iter()
        .find(|x| x["status"] == "PRIMARY")
        .unwrap();
    assert_eq!(primary["rolloutState"], "COMPLETED", "{deployments:?}");
}

#[tokio::test]
async fn a_failed_ecs_rollback_is_reported_with_ecs_reason() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::EcsRollbackFails { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "cbfail-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        reason(&d).contains("rollback")
            && reason(&d).contains("failed")
            && reason(&d).contains("the rollback's tasks failed to start"),
        "{d}"
    );
    let note = eventually("the failure notified", || async {
        w.notes_of("deploy_failed").into_iter().next()
    })
    .await;
    assert!(
        note["reason"]
            .as_str()
            .unwrap()
            .contains("the rollback's tasks failed to start"),
        "{note}"
    );
    assert_eq!(
        w.proxy.update_service_calls().len(),
        1,
        "slipway adds no rollback of its own"
    );
}

#[tokio::test]
async fn a_service_scaled_to_zero_says_no_task_started() {
    let w = Deploy::new().await;
    w.emulator
        .ecs()
        .update_service()
        .cluster(CLUSTER)
        .service(SERVICE)
        .desired_count(0)
        .send()
        .await
        .unwrap();
    let s = w.builder.start().await;
    let d = w.ship(&s, "zero-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert!(
        reason(&d).contains("desired count 0: no task started"),
        "{d}"
    );
    let note = eventually("the success notified", || async {
        w.notes_of("deploy_succeeded").into_iter().next()
    })
    .await;
    assert!(
        note["reason"]
            .as_str()
            .unwrap_or("")
            .contains("desired count 0"),
        "{note}"
    );
}

#[tokio::test]
async fn past_the_timeout_a_failing_last_look_is_retried_not_taken_as_failure() {
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    w.completed_while_down_past_the_timeout("look-1").await;
    // The first looks after the restart fail, more often than the SDK retries on its own.
    w.proxy.fail("DescribeServices", 5, 500, "ServerException");
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(w.proxy.update_service_calls().len(), 1, "no rollback");
}

#[tokio::test]
async fn a_rollout_that_completed_then_was_replaced_is_a_success_with_a_note() {
    let w = Deploy::new().await;
    w.proxy
        .rollouts([Rollout::CompleteThenForeign { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "thenrep-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert!(
        reason(&d).contains("then replaced by another deployment"),
        "{d}"
    );
    assert_eq!(
        w.proxy.update_service_calls().len(),
        1,
        "theirs is not undone"
    );
}

#[tokio::test]
async fn fifty_tags_are_refused_before_anything_is_registered() {
    let w = Deploy::new().await;
    let td = w.emulator.task_definition(&w.base_td).await;
    let tags: Vec<Tag> = (0..50)
        .map(|i| Tag::builder().key(format!("k{i}")).value("v").build())
        .collect();
    let register = w
        .emulator
        .ecs()
        .register_task_definition()
        .family("web")
        .set_container_definitions(Some(td.0.container_definitions().to_vec()))
        .set_requires_compatibilities(Some(td.0.requires_compatibilities().to_vec()))
        .set_network_mode(td.0.network_mode().cloned())
        .set_cpu(td.0.cpu().map(str::to_owned))
        .set_memory(td.0.memory().map(str::to_owned))
        .set_tags(Some(tags));
    service_runs(&w, register).await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "tags-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(reason(&d).contains("already has 50 tags"), "{d}");
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(w.proxy.update_service_calls().is_empty());
}

#[tokio::test]
async fn a_code_deploy_service_is_refused_before_anything_is_registered() {
    let w = Deploy::new().await;
    w.emulator
        .ecs()
        .create_service()
        .cluster(CLUSTER)
        .service_name("blue")
        .task_definition(&w.base_td)
        .desired_count(1)
        .deployment_controller(
            DeploymentController::builder()
                .r#type(DeploymentControllerType::CodeDeploy)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let builder = w.builder.clone().apps(
        &crate::support::slipway::DEFAULT_APPS.replace("service = \"web\"", "service = \"blue\""),
    );
    let s = builder.start().await;
    w.build_succeeds(&s, "cd-1", MASTER_SHA).await;
    let d = eventually("the deploy ended", || async {
        builder
            .deployments()
            .into_iter()
            .find(|d| d["state"] == "failed")
    })
    .await;
    assert!(
        reason(&d).contains("CODE_DEPLOY deployment controller"),
        "{d}"
    );
    assert!(reason(&d).contains("BLUE_GREEN"), "{d}");
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(w.proxy.update_service_calls().is_empty());
}

#[tokio::test]
async fn a_deregistered_running_revision_is_copied_so_a_rollback_can_return() {
    let w = Deploy::new().await;
    w.emulator
        .ecs()
        .deregister_task_definition()
        .task_definition(&w.base_td)
        .send()
        .await
        .unwrap();
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "inactive-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    let copy = d["from_task_definition"].as_str().unwrap().to_owned();
    assert_ne!(copy, w.base_td, "{d}");
    assert_eq!(
        w.service_td().await,
        copy,
        "the rollback returned to the copy"
    );
    let copy_td = w.emulator.task_definition(&copy).await;
    assert_eq!(
        copy_td.0.status(),
        Some(&aws_sdk_ecs::types::TaskDefinitionStatus::Active)
    );
    assert_eq!(
        copy_td.0.container_definitions()[0].image(),
        w.emulator
            .task_definition(&w.base_td)
            .await
            .0
            .container_definitions()[0]
            .image()
    );
    assert_eq!(w.proxy.requests("RegisterTaskDefinition").len(), 2);
}

/// The longest chain of `records` in which each call arrived after the previous one was
/// answered: the sequential round trips they took.
fn round_trips(records: &[&Recorded]) -> usize {
    let mut depth: Vec<usize> = vec![];
    for (i, r) in records.iter().enumerate() {
        let before = (0..i)
            .filter(|&j| records[j].answered < r.arrived)
            .map(|j| depth[j])
            .max()
            .unwrap_or(0);
        depth.push(before + 1);
    }
    depth.into_iter().max().unwrap_or(0)
}

#[test]
fn round_trips_counts_the_longest_chain_of_dependent_calls() {
    let r = |arrived, answered| Recorded {
        operation: String::new(),
        body: Value::Null,
        arrived,
        answered,
        caller: String::new(),
    };
    // 1, then 2 and 3 concurrently, then 4.
    let calls = [r(1, 2), r(3, 6), r(4, 5), r(7, 8)];
    assert_eq!(round_trips(&calls.iter().collect::<Vec<_>>()), 3);
    let calls = [r(1, 2), r(3, 4), r(5, 6)];
    assert_eq!(round_trips(&calls.iter().collect::<Vec<_>>()), 3);
    let calls = [r(1, 6), r(2, 5), r(3, 4)];
    assert_eq!(round_trips(&calls.iter().collect::<Vec<_>>()), 1);
}

const DEPLOY_CALLS: &[&str] = &[
    "BatchGetBuilds",
    "DescribeImages",
    "DescribeRepositories",
    "DescribeClusters",
    "DescribeServices",
    "DescribeTaskDefinition",
    "RegisterTaskDefinition",
    "UpdateService",
];

#[tokio::test]
async fn from_event_to_update_service_takes_four_round_trips() {
    const SECOND: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let w = Deploy::with(Setup {
        images: &[MASTER_SHA, SECOND],
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "trips-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let arn = w.push(&s, "trips-2", SECOND).await;
    let from = w.proxy.recorded().len();
    w.complete(&arn, "SUCCEEDED", SECOND).await;
    let d = w.finished(SECOND).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let recorded = w.proxy.recorded();
    let second = &recorded[from..];
    let update = second
        .iter()
        .position(|r| r.operation == "UpdateService")
        .expect("UpdateService called");
    // The event's confirming BatchGetBuilds is the first; a later one is the same event
    // delivered again by SQS on a slow machine (its visibility timeout here is 3 s), which
    // the journal recognises, not a step of this deploy.
    let first_confirm = second
        .iter()
        .position(|r| r.operation == "BatchGetBuilds")
        .expect("the build confirmed");
    let chain: Vec<&Recorded> = second[..=update]
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            DEPLOY_CALLS.contains(&r.operation.as_str())
                && (r.operation != "BatchGetBuilds" || *i == first_confirm)
        })
        .map(|(_, r)| r)
        .collect();
    let ops: Vec<&str> = chain.iter().map(|r| r.operation.as_str()).collect();
    assert!(chain.len() <= 6, "{ops:?}");
    // Confirm the build; image, service and its task definition at once; register; update.
    assert_eq!(round_trips(&chain), 4, "{chain:#?}");
}

#[tokio::test]
async fn from_event_to_update_service_takes_few_calls() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "calls-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let calls = w.proxy.operations();
    let until_update = calls
        .iter()
        .position(|op| op == "UpdateService")
        .expect("UpdateService called");
    // The calls between the completion event and UpdateService (the build's StartBuild and
    // SQS traffic aside).
    let deploy_calls: Vec<&String> = calls[..=until_update]
        .iter()
        .filter(|op| DEPLOY_CALLS.contains(&op.as_str()))
        .collect();
    // The event's confirming BatchGetBuilds, and on a slow machine the reconciler's look at
    // the build still in flight, which may fall in the same window: the deploy's own calls
    // are the rest.
    let (confirms, own): (Vec<&String>, Vec<&String>) = deploy_calls
        .iter()
        .partition(|op| op.as_str() == "BatchGetBuilds");
    assert!(
        (1..=2).contains(&confirms.len()) && own.len() <= 5,
        "{deploy_calls:?}"
    );
    assert!(
        !calls.iter().any(|op| op == "DescribeClusters"),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|op| op == "DescribeRepositories"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_service_without_rollout_state_completes_when_its_deployment_list_is_steady() {
    let w = Deploy::new().await;
    w.proxy.hide_rollout_state();
    // Its service deployment cannot be read (no permission): the deployments list decides.
    w.proxy.fail(
        "DescribeServiceDeployments",
        1,
        400,
        "AccessDeniedException",
    );
    w.proxy.rollouts([Rollout::Complete { after: 2 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "clb-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(w.proxy.update_service_calls().len(), 1, "no rollback");
    assert_eq!(
        w.proxy.requests("DescribeServiceDeployments").len(),
        1,
        "refused once, then judged by the deployments list"
    );
    assert!(w.proxy.requests("DescribeServiceRevisions").is_empty());
}

/// A task definition of family `web` with the given (name, image) containers; the service
/// is moved to it. Returns its ARN.
async fn service_with_containers(w: &Deploy, containers: &[(&str, &str)]) -> String {
    use aws_sdk_ecs::types::ContainerDefinition;
    let defs: Vec<ContainerDefinition> = containers
        .iter()
        .map(|(name, image)| {
            ContainerDefinition::builder()
                .name(*name)
                .image(*image)
                .memory(128)
                .essential(*name == "web")
                .build()
        })
        .collect();
    let register = w
        .emulator
        .ecs()
        .register_task_definition()
        .family("web")
        .set_container_definitions(Some(defs));
    service_runs(w, register).await
}

/// Registers the task definition `register` describes and moves the service to it; returns
/// its ARN.
async fn service_runs(
    w: &Deploy,
    register: aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionFluentBuilder,
) -> String {
    let arn = register
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    w.emulator
        .ecs()
        .update_service()
        .cluster(CLUSTER)
        .service(SERVICE)
        .task_definition(&arn)
        .send()
        .await
        .unwrap();
    arn
}

#[tokio::test]
async fn every_listed_container_gets_the_image_and_an_unlisted_one_of_the_same_repository_is_noted()
{
    let apps = crate::support::slipway::DEFAULT_APPS
        .replace("container = \"web\"", "containers = [\"web\", \"migrate\"]");
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    let previous = w.image_uri("previous").await;
    service_with_containers(
        &w,
        &[
            ("web", &previous),
            ("migrate", &previous),
            ("worker", &previous),
        ],
    )
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "many-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let td = w
        .emulator
        .task_definition(d["to_task_definition"].as_str().unwrap())
        .await
        .0;
    let image = |name: &str| {
        td.container_definitions()
            .iter()
            .find(|c| c.name() == Some(name))
            .and_then(|c| c.image())
            .unwrap()
            .to_owned()
    };
    let new = w.image_uri(MASTER_SHA).await;
    assert_eq!(image("web"), new);
    assert_eq!(image("migrate"), new);
    assert_eq!(image("worker"), previous, "not listed: keeps its image");
    assert!(
        reason(&d).contains("container worker also runs web and keeps its image"),
        "{d}"
    );
}

#[tokio::test]
async fn an_image_slipway_cannot_parse_in_the_current_revision_does_not_block_the_deploy() {
    let w = Deploy::new().await;
    service_with_containers(&w, &[("web", "Not A Valid//Reference::")]).await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "oddimage-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
}

#[tokio::test]
async fn container_and_containers_together_are_refused_naming_the_key() {
    let apps = format!(
        "{}containers = [\"web\"]\n",
        crate::support::slipway::DEFAULT_APPS
    );
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    let config = w.builder.write_config();
    let (status, _out, err) =
        w.builder
            .run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("app[0] (web).container: set either `container` or `containers`, not both"),
        "{err}"
    );
}

#[tokio::test]
async fn a_service_without_rollout_state_is_watched_through_its_service_deployment() {
    // Before: no rolloutState meant "in progress" until the timeout, so ECS's own rollback
    // was followed by a second rollback from slipway, reported as `rolled_back`.
    let w = Deploy::with(Setup {
        apps: web_with("rollout_timeout_secs = 5"),
        ..Setup::default()
    })
    .await;
    w.proxy.hide_rollout_state();
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 2 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "clb-rb-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(reason(&d).contains("ECS rolled the service back"), "{d}");
    assert_eq!(
        w.proxy.update_service_calls().len(),
        1,
        "slipway adds no rollback of its own"
    );
    // ECS named it in UpdateService's answer; its target revision confirmed it.
    assert!(w.proxy.requests("ListServiceDeployments").is_empty());
    assert_eq!(w.proxy.requests("DescribeServiceRevisions").len(), 1);
    assert!(!w.proxy.requests("DescribeServiceDeployments").is_empty());
}

#[tokio::test]
async fn a_service_deployment_that_ecs_stopped_while_ours_still_runs_is_rolled_back() {
    // No rolloutState, and the circuit breaker stops the deployment without a rollback: the
    // deployments list alone looks like a rollout still going.
    let w = Deploy::new().await;
    w.proxy.hide_rollout_state();
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "clb-stop-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    assert!(reason(&d).contains("tasks failed to start"), "{d}");
    assert_eq!(w.service_td().await, w.base_td);
}

// The CLI runs as a child process while the proxy serves slipway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_deploy_shows_its_lifecycle_stage_until_ecs_says_it_succeeded() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    const TOKEN: &str = "alice-token-0123456789";
    let w = Deploy::new().await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 5))
        .await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"))
        .start()
        .await;
    let mut cmd = tokio::process::Command::from(s.builder.command());
    cmd.env("SLIPWAY_SERVER", &s.admin_url)
        .env("SLIPWAY_OPS_TOKEN", TOKEN)
        .args(["deploy", "web", MASTER_SHA, "--wait"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let baking = line.contains("stage BAKE_TIME");
            seen.push(line);
            if baking {
                return;
            }
        }
        panic!("the CLI ended without showing the bake time: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no lifecycle stage shown: {seen:?}"));
    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/deployments?app=web", s.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = &list["deployments"][0]["id"];
    let d: Value = reqwest::Client::new()
        .get(format!("{}/api/deployments/{id}", s.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["stage"], "BAKE_TIME", "{d}");
    assert_eq!(
        d["state"], "deploying",
        "ECS has not said it succeeded yet: {d}"
    );
    let page = reqwest::Client::new()
        .get(format!("{}/deployments/{id}", s.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("BAKE_TIME"),
        "the status page shows the stage: {page}"
    );
    // ECS finishes the bake time.
    w.proxy
        .complete_now(CLUSTER, SERVICE, d["ecs_deployment_id"].as_str().unwrap());
    let mut rest = vec![];
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{seen:?} {rest:?}");
    assert!(rest.last().unwrap().contains("succeeded"), "{rest:?}");
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["stage"].is_null(), "{done}");
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy"
    );
}

#[tokio::test]
async fn a_canary_that_ecs_rolls_back_is_a_failure() {
    let w = Deploy::new().await;
    w.configure(strategy(DeploymentStrategy::Canary, 5)).await;
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 4 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "canary-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(reason(&d).contains("ECS rolled the service back"), "{d}");
    assert!(!w.proxy.requests("DescribeServiceDeployments").is_empty());
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy: no rollback of slipway's own"
    );
}

#[tokio::test]
async fn watching_a_rollout_costs_one_call_a_poll() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Complete { after: 5 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "polls-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let calls = w.proxy.operations();
    let update = calls.iter().position(|op| op == "UpdateService").unwrap();
    let watching: Vec<&String> = calls[update + 1..]
        .iter()
        .filter(|op| {
            !matches!(
                op.as_str(),
                "ReceiveMessage" | "DeleteMessage" | "ChangeMessageVisibility" | "BatchGetBuilds"
            )
        })
        .collect();
    // The fifth look shows the outcome: five calls, one a poll, nothing else.
    assert_eq!(watching, vec!["DescribeServices"; 5], "{calls:?}");
}

#[tokio::test]
async fn aws_calls_are_retried_by_the_sdk_alone_a_bounded_number_of_times() {
    // Before: slipway's own 7 tries around the SDK's 3 made 21 calls.
    let w = Deploy::new().await;
    w.proxy
        .fail("DescribeTaskDefinition", 50, 500, "ServerException");
    let s = w.builder.start().await;
    let d = w.ship(&s, "retries-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(reason(&d).contains("DescribeTaskDefinition"), "{d}");
    // The SDK's attempts, as configured once (`aws::MAX_ATTEMPTS`), and no more.
    assert_eq!(w.proxy.requests("DescribeTaskDefinition").len(), 5);
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
}

#[tokio::test]
async fn a_restart_during_slipways_own_rollback_keeps_watching_it() {
    // Before: the restart watched the failed deployment, saw the old revision back and
    // reported "ECS rolled the service back" (failed), a guess.
    let w = Deploy::new().await;
    w.proxy
        .rollouts([Rollout::Fail { after: 1 }, Rollout::Never]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "rbcrash-1", MASTER_SHA).await;
    eventually("slipway's rollback sent", || async {
        (w.proxy.update_service_calls().len() == 2).then_some(())
    })
    .await;
    let rolling = eventually("the rollback journaled", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["stage"] == "ROLLING_BACK")
    })
    .await;
    assert_eq!(rolling["state"], "deploying", "{rolling}");
    // ECS has applied slipway's rollback (killing slipway while the proxy was still forwarding
    // it would cancel it: a test race, not what this is about) and finishes it while slipway
    // is down.
    let rollback = eventually("ECS applied slipway's rollback", || async {
        w.proxy
            .deployments(CLUSTER, SERVICE)
            .into_iter()
            .find(|x| x["status"] == "PRIMARY" && x["taskDefinition"] == w.base_td.as_str())
    })
    .await;
    s.kill();
    w.proxy
        .complete_now(CLUSTER, SERVICE, rollback["id"].as_str().unwrap());
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert!(reason(&done).contains("rolled back to"), "{done}");
    assert!(reason(&done).contains("tasks failed to start"), "{done}");
    assert!(done["stage"].is_null(), "{done}");
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the deploy and its rollback, nothing sent again"
    );
    assert_eq!(w.service_td().await, w.base_td);
}

#[tokio::test]
async fn a_rollback_that_never_reached_ecs_is_sent_after_a_restart() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    // The deploy's UpdateService goes through; the rollback's is still on its way when
    // slipway dies, and never reaches ECS.
    w.proxy.script(
        "UpdateService",
        [
            Fault::Delay(Duration::ZERO),
            Fault::Delay(Duration::from_secs(120)),
        ],
    );
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "rblost-1", MASTER_SHA).await;
    eventually("the rollback journaled", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["stage"] == "ROLLING_BACK")
    })
    .await;
    eventually("slipway's rollback on its way", || async {
        (w.proxy.update_service_calls().len() == 2).then_some(())
    })
    .await;
    s.kill();
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(w.service_td().await, w.base_td);
    assert_eq!(
        w.proxy.update_service_calls().len(),
        3,
        "the deploy, the lost rollback, the rollback sent again"
    );
}

/// A blue-green service (no bake time, [`SHORT_TIMEOUT`]) whose rollout completed while
/// slipway was down past the timeout.
async fn blue_green_completed_while_down(build: &str) -> Deploy {
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    w.completed_while_down_past_the_timeout(build).await;
    w
}

#[tokio::test]
async fn past_the_timeout_a_blue_green_deploy_that_succeeded_meanwhile_is_a_success() {
    let w = blue_green_completed_while_down("bglate-1").await;
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        !w.proxy.requests("DescribeServiceDeployments").is_empty(),
        "judged by its service deployment"
    );
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy: no rollback"
    );
}

#[tokio::test]
async fn past_the_timeout_an_unlisted_service_deployment_leaves_the_deployments_list_to_judge() {
    // Before: switching to the service deployment, and each poll that did not find it listed,
    // used up a last look: the deploy timed out and was rolled back before the deployments
    // list, which said the rollout had completed, was ever asked for a verdict.
    let w = Deploy::with(Setup {
        apps: web_with(SHORT_TIMEOUT),
        ..Setup::default()
    })
    .await;
    w.configure(strategy(DeploymentStrategy::BlueGreen, 0))
        .await;
    // ECS neither names nor lists the service deployment.
    w.proxy.unlist_service_deployments();
    w.proxy.hide_current_service_deployment();
    w.completed_while_down_past_the_timeout("bgunlisted-1")
        .await;
    let listed_before = w.proxy.requests("ListServiceDeployments").len();
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        w.proxy.requests("ListServiceDeployments").len() > listed_before,
        "the service deployment was looked for"
    );
    assert_eq!(
        w.proxy.update_service_calls().len(),
        2,
        "the strategy, then the deploy: no rollback"
    );
}
