//! Issue: from CodeBuild completion to a safe Fargate deploy.

use aws_sdk_ecs::types::{DeploymentConfiguration, DeploymentStrategy};
use serde_json::Value;

use crate::support::listener::Listener;
use crate::support::proxy::{Fault, Rollout};
use crate::support::slipway::{Slipway, DEFAULT_APPS};
use crate::support::world::{CLUSTER, ECR_REPO, PROJECT, SERVICE};
use crate::support::{
    eventually, fixture, sdk_config, Emulator, Proxy, SlipwayBuilder, MASTER_SHA,
};

const OLDER_SHA: &str = "0a0b0c0d0e0f10111213141516171819202122ab";
const NEWER_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

pub struct Deploy {
    pub emulator: Emulator,
    pub proxy: Proxy,
    pub queue: String,
    pub base_td: String,
    pub builder: SlipwayBuilder,
    pub notes: Listener,
}

pub struct Setup<'a> {
    pub apps: String,
    pub extra: &'a str,
    pub container: &'a str,
    pub images: &'a [&'a str],
    /// The `[deploy]` section's keys (the tests poll fast by default).
    pub deploy_timing: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            apps: DEFAULT_APPS.to_owned(),
            extra: "",
            container: "web",
            images: &[MASTER_SHA],
            deploy_timing: "poll_initial_ms = 50\npoll_max_ms = 200\npoll_with_events_ms = 5000",
        }
    }
}

impl Deploy {
    pub async fn new() -> Deploy {
        Self::with(Setup::default()).await
    }

    pub async fn with(setup: Setup<'_>) -> Deploy {
        let emulator = Emulator::start().await;
        emulator.create_project(PROJECT, "octo-org/web").await;
        for tag in setup.images {
            emulator.push_image(ECR_REPO, tag).await;
        }
        let _ = emulator
            .ecr()
            .create_repository()
            .repository_name(ECR_REPO)
            .send()
            .await;
        let uri = emulator.repository_uri(ECR_REPO).await;
        emulator.create_cluster(CLUSTER).await;
        let base_td = emulator
            .register_full_task_definition(setup.container, &format!("{uri}:previous"))
            .await;
        emulator.create_service(CLUSTER, SERVICE, &base_td).await;
        let queue = emulator.create_event_route("slipway-events").await;
        let proxy = Proxy::start(&emulator.url).await;
        let notes = Listener::start().await;
        let builder = SlipwayBuilder::new(&proxy.url)
            .apps(&setup.apps)
            .extra(&format!(
                "queue_url = \"{queue}\"\n{}\n[deploy]\n{}\n[events]\nvisibility_timeout_secs = 3\n[notify]\nwebhook_url_env = \"TEST_NOTIFY_URL\"\n",
                setup.extra, setup.deploy_timing
            ))
            .env("TEST_NOTIFY_URL", &notes.url);
        Deploy {
            emulator,
            proxy,
            queue,
            base_td,
            builder,
            notes,
        }
    }

    /// Sends a signed push of `sha` and waits for its build to start; returns the build ARN.
    pub async fn push(&self, s: &Slipway, delivery: &str, sha: &str) -> String {
        let body = String::from_utf8(fixture("github/push_master.json"))
            .unwrap()
            .replace(MASTER_SHA, sha);
        let r = s.deliver("push", delivery, body.as_bytes()).await;
        assert_eq!(r.status, 202, "{}", r.text);
        let build_id = eventually(&format!("build of {delivery} started"), || async {
            s.deliveries()
                .into_iter()
                .find(|d| d["delivery"] == delivery && d["state"] == "build_started")
                .map(|d| d["build_id"].as_str().unwrap().to_owned())
        })
        .await;
        let builds = self.emulator.builds(PROJECT).await;
        builds
            .iter()
            .find(|b| b.id() == Some(build_id.as_str()))
            .and_then(|b| b.arn())
            .unwrap()
            .to_owned()
    }

    /// The build ends with `status`: CodeBuild reports it so (`BatchGetBuilds`, through the
    /// proxy; the emulator itself reports every build SUCCEEDED) and emits its event.
    pub async fn complete(&self, build_arn: &str, status: &str, sha: &str) {
        if status != "SUCCEEDED" {
            let id = build_arn
                .split_once(":build/")
                .map_or(build_arn, |(_, id)| id);
            self.proxy.build_status(id, status);
        }
        self.emulator
            .emit_build_event(build_arn, PROJECT, status, sha)
            .await;
    }

    /// A build of the project started outside slipway; returns its ARN.
    pub async fn build_by_hand(&self) -> String {
        self.emulator
            .codebuild()
            .start_build()
            .project_name(PROJECT)
            .source_version(MASTER_SHA)
            .send()
            .await
            .expect("StartBuild")
            .build_value()
            .and_then(|b| b.arn())
            .unwrap()
            .to_owned()
    }

    /// A push of `sha`, its build succeeding, and the deploy that follows; returns the
    /// deployment once it ended.
    pub async fn ship(&self, s: &Slipway, delivery: &str, sha: &str) -> Value {
        self.build_succeeds(s, delivery, sha).await;
        self.finished(sha).await
    }

    /// A push of `sha` and its build succeeding (the deploy it leads to is not waited for);
    /// returns the build ARN.
    pub async fn build_succeeds(&self, s: &Slipway, delivery: &str, sha: &str) -> String {
        let arn = self.push(s, delivery, sha).await;
        self.complete(&arn, "SUCCEEDED", sha).await;
        arn
    }

    /// Waits until a deploy watches its ECS deployment; returns its record.
    pub async fn watching(&self) -> Value {
        eventually("the deploy watching its rollout", || async {
            self.builder
                .deployments()
                .into_iter()
                .find(|d| d["ecs_deployment_id"].is_string())
        })
        .await
    }

    /// Waits until the deployment of `sha` ends; returns its record.
    pub async fn finished(&self, sha: &str) -> Value {
        eventually(&format!("deploy of {sha} finished"), || async {
            self.builder.deployments().into_iter().find(|d| {
                d["sha"] == sha && !matches!(d["state"].as_str(), Some("pending" | "deploying"))
            })
        })
        .await
    }

    /// Deploys `MASTER_SHA` (the app has [`SHORT_TIMEOUT`]); slipway stops while it watches,
    /// and ECS completes the rollout while the timeout passes.
    pub async fn completed_while_down_past_the_timeout(&self, delivery: &str) {
        self.proxy.rollouts([Rollout::Never]);
        let mut s = self.builder.start().await;
        self.build_succeeds(&s, delivery, MASTER_SHA).await;
        let d = self.watching().await;
        s.kill();
        // The premise: slipway was stopped before its deadline, not after acting on it.
        let before = self.builder.deployments();
        let at_kill = before.iter().find(|x| x["id"] == d["id"]).unwrap();
        assert_eq!(
            at_kill["state"], "deploying",
            "the deadline passed before slipway was stopped: {at_kill}"
        );
        let ecs_id = d["ecs_deployment_id"].as_str().unwrap();
        self.proxy.complete_now(CLUSTER, SERVICE, ecs_id);
        let deadline = d["deadline_ms"].as_i64().expect("a journaled deadline");
        assert!(
            deadline < now_ms() + 30_000,
            "a deadline of the app's short timeout, not a strategy's waits: {d}"
        );
        sleep_past(deadline).await;
    }

    /// Sets the service's deployment configuration, through the proxy, which keeps it (the
    /// emulator drops it).
    pub async fn configure(&self, config: DeploymentConfiguration) {
        aws_sdk_ecs::Client::new(&sdk_config(&self.proxy.url).await)
            .update_service()
            .cluster(CLUSTER)
            .service(SERVICE)
            .deployment_configuration(config)
            .send()
            .await
            .unwrap();
    }

    pub async fn service_td(&self) -> String {
        self.emulator
            .service(CLUSTER, SERVICE)
            .await
            .task_definition()
            .unwrap()
            .to_owned()
    }

    pub async fn image_uri(&self, tag: &str) -> String {
        format!("{}:{tag}", self.emulator.repository_uri(ECR_REPO).await)
    }

    pub fn notes_of(&self, event: &str) -> Vec<Value> {
        self.notes
            .bodies()
            .into_iter()
            .filter(|b| b["event"] == event)
            .collect()
    }
}

/// ECS's deployment strategy `s` with `bake_minutes` of bake time (0 leaves the deadline at
/// the app's `rollout_timeout_secs`; a bake time adds to it, see `deploy::deadline`).
pub fn strategy(s: DeploymentStrategy, bake_minutes: i32) -> DeploymentConfiguration {
    DeploymentConfiguration::builder()
        .strategy(s)
        .bake_time_in_minutes(bake_minutes)
        .build()
}

/// The wall clock in ms, as slipway journals times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps until half a second past `deadline_ms` (a journaled deadline), however long
/// getting there took.
pub async fn sleep_past(deadline_ms: i64) {
    let wait = (deadline_ms + 500 - now_ms()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

/// A rollout timeout long enough for slipway to reach its watch on a loaded machine (the
/// tests that stop it while it watches rely on that) and short enough to wait out.
pub const SHORT_TIMEOUT: &str = "rollout_timeout_secs = 4";

/// The default `web` app with extra settings (TOML lines).
pub fn web_with(settings: &str) -> String {
    format!("{DEFAULT_APPS}{settings}\n")
}

fn image_of(td: &aws_sdk_ecs::types::TaskDefinition, container: &str) -> String {
    td.container_definitions()
        .iter()
        .find(|c| c.name() == Some(container))
        .and_then(|c| c.image())
        .unwrap()
        .to_owned()
}

fn version_tag(tags: &[aws_sdk_ecs::types::Tag]) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some("Version"))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

#[tokio::test]
async fn a_successful_build_is_deployed_and_the_rollout_completes() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.build_succeeds(&s, "ok-1", MASTER_SHA).await;
    let d = w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["from_task_definition"], w.base_td.as_str());
    let to = d["to_task_definition"].as_str().unwrap().to_owned();
    assert_ne!(to, w.base_td);
    assert_eq!(
        w.service_td().await,
        to,
        "the service runs the new revision"
    );
    let (td, tags) = w.emulator.task_definition(&to).await;
    let expected = w.image_uri(MASTER_SHA).await;
    assert_eq!(image_of(&td, "web"), expected);
    assert_eq!(d["image"], expected.as_str());
    assert_eq!(version_tag(&tags).as_deref(), Some(MASTER_SHA));
    assert!(d["ecs_deployment_id"]
        .as_str()
        .unwrap()
        .starts_with("ecs-svc/"));
    assert_eq!(d["build_id"], arn.rsplit('/').next().unwrap());

    // The delivery shows how far it got, and the message is gone from the queue.
    let row = s
        .deliveries()
        .into_iter()
        .find(|r| r["delivery"] == "ok-1")
        .unwrap();
    assert_eq!(
        (row["state"].as_str(), row["deploy_state"].as_str()),
        (Some("build_succeeded"), Some("succeeded"))
    );
    eventually("the event deleted from the queue", || async {
        (w.emulator.queue_depth(&w.queue).await == 0).then_some(())
    })
    .await;
    let started = eventually("notifications", || async {
        let s = w.notes_of("deploy_succeeded");
        (!s.is_empty()).then_some(w.notes_of("deploy_started"))
    })
    .await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["sha"], MASTER_SHA);
}

#[tokio::test]
async fn the_new_revision_differs_from_the_old_only_in_the_image_and_version() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "fid-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let (mut old, old_tags) = w.emulator.task_definition(&w.base_td).await;
    let (mut new, new_tags) = w
        .emulator
        .task_definition(d["to_task_definition"].as_str().unwrap())
        .await;
    assert_eq!(new.revision, old.revision + 1);
    // Clear what AWS sets on every registration, then everything else must be equal
    // except the app container's image.
    for td in [&mut old, &mut new] {
        td.task_definition_arn = None;
        td.revision = 0;
        td.registered_at = None;
        td.registered_by = None;
    }
    let mut expected = old.clone();
    let container = expected
        .container_definitions
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c.name() == Some("web"))
        .unwrap();
    container.image = Some(w.image_uri(MASTER_SHA).await);
    assert_eq!(new, expected, "only the image may differ");
    let sidecar = |td: &aws_sdk_ecs::types::TaskDefinition| image_of(td, "envoy");
    assert_eq!(sidecar(&new), sidecar(&old));
    // Every tag carried, Version set to the new tag.
    let strip = |tags: &[aws_sdk_ecs::types::Tag]| {
        let mut v: Vec<(String, String)> = tags
            .iter()
            .filter(|t| t.key() != Some("Version"))
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(strip(&new_tags), strip(&old_tags));
    assert_eq!(strip(&new_tags).len(), 2);
    assert_eq!(version_tag(&new_tags).as_deref(), Some(MASTER_SHA));
    // What slipway sent kept the empty environment value.
    let sent = w.proxy.requests("RegisterTaskDefinition");
    assert_eq!(sent.len(), 1);
    let env = &sent[0]["containerDefinitions"][0]["environment"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "EMPTY_ON_PURPOSE" && e["value"] == ""),
        "{env}"
    );
}

#[tokio::test]
async fn a_failed_rollout_is_rolled_back() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Fail { after: 2 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "fail-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("rollout failed") && reason.contains("rolled back to"),
        "{reason}"
    );
    let calls = w.proxy.update_service_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1]["taskDefinition"], w.base_td.as_str());
    assert_eq!(w.service_td().await, w.base_td);
    eventually("rolled_back notification", || async {
        (!w.notes_of("rolled_back").is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_ecs_rollback_is_reported_as_failed_not_success() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 2 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "ecsrb-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("ECS rolled the service back"),
        "{d}"
    );
    // ECS already put the old revision back: slipway does not update the service again.
    assert_eq!(w.proxy.update_service_calls().len(), 1);
    eventually("deploy_failed notification", || async {
        (!w.notes_of("deploy_failed").is_empty()).then_some(())
    })
    .await;
    assert!(w.notes_of("deploy_succeeded").is_empty());
}

#[tokio::test]
async fn a_rollout_that_never_finishes_times_out_and_is_rolled_back() {
    let apps = web_with("rollout_timeout_secs = 2");
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "slow-1", MASTER_SHA).await;
    assert_eq!(d["state"], "rolled_back", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("did not complete within 2s"),
        "{d}"
    );
    assert_eq!(w.service_td().await, w.base_td);
}

#[tokio::test]
async fn a_foreign_deploy_replacing_ours_fails_without_undoing_theirs() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Foreign { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "foreign-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("replaced"), "{d}");
    assert_eq!(w.proxy.update_service_calls().len(), 1);
}

#[tokio::test]
async fn a_missing_image_fails_before_anything_is_registered() {
    let w = Deploy::with(Setup {
        images: &[],
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "noimg-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(
        d["reason"],
        format!("image web:{MASTER_SHA} not found in ECR").as_str()
    );
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(w.proxy.update_service_calls().is_empty());
    assert_eq!(w.service_td().await, w.base_td);
}

#[tokio::test]
async fn a_missing_cluster_and_an_inactive_service_fail_clearly() {
    let apps = DEFAULT_APPS.replace("cluster = \"web\"", "cluster = \"nope\"");
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "nocl-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("cluster nope not found"),
        "{d}"
    );
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());

    let w = Deploy::new().await;
    w.emulator
        .ecs()
        .delete_service()
        .cluster(CLUSTER)
        .service(SERVICE)
        .force(true)
        .send()
        .await
        .unwrap();
    let s = w.builder.start().await;
    let d = w.ship(&s, "inactive-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("is INACTIVE, not ACTIVE"),
        "{d}"
    );
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
}

#[tokio::test]
async fn a_container_name_not_in_the_task_definition_fails_clearly() {
    let w = Deploy::with(Setup {
        container: "app",
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "cont-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("container \"web\" not found") && reason.contains("app, envoy"),
        "{reason}"
    );
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
}

#[tokio::test]
async fn builds_completing_out_of_order_never_put_the_older_commit_in_front() {
    let w = Deploy::with(Setup {
        images: &[OLDER_SHA, NEWER_SHA],
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let older = w.push(&s, "ooo-1", OLDER_SHA).await;
    let newer = w.push(&s, "ooo-2", NEWER_SHA).await;
    w.complete(&newer, "SUCCEEDED", NEWER_SHA).await;
    let d = w.finished(NEWER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    w.complete(&older, "SUCCEEDED", OLDER_SHA).await;
    let d_old = w.finished(OLDER_SHA).await;
    assert_eq!(d_old["state"], "superseded", "{d_old}");
    assert!(
        d_old["reason"].as_str().unwrap().contains("9f8e7d6"),
        "{d_old}"
    );
    assert_eq!(
        w.service_td().await,
        d["to_task_definition"].as_str().unwrap()
    );
    assert_eq!(w.proxy.requests("RegisterTaskDefinition").len(), 1);
    eventually("superseded notification", || async {
        (!w.notes_of("superseded").is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_same_event_twice_deploys_once() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.build_succeeds(&s, "twice-1", MASTER_SHA).await;
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    let d = w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded");
    eventually("both messages deleted", || async {
        (w.emulator.queue_depth(&w.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(s.builder.deployments().len(), 1);
    assert_eq!(w.proxy.requests("RegisterTaskDefinition").len(), 1);
    assert_eq!(w.proxy.update_service_calls().len(), 1);
}

#[tokio::test]
async fn killed_mid_deploy_the_restart_finishes_the_same_deploy() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Complete { after: 1_000_000 }]);
    let mut s = w.builder.start().await;
    w.build_succeeds(&s, "kill-1", MASTER_SHA).await;
    let d = w.watching().await;
    assert_eq!(d["state"], "deploying");
    s.kill();
    // ECS finishes the rollout while slipway is down.
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap().to_owned();
    w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
    let s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["id"], d["id"]);
    assert_eq!(s.builder.deployments().len(), 1);
    assert_eq!(w.proxy.requests("RegisterTaskDefinition").len(), 1);
    assert_eq!(w.proxy.update_service_calls().len(), 1);
    eventually("the redelivered message deleted", || async {
        (w.emulator.queue_depth(&w.queue).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_failed_build_is_notified_and_not_deployed() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let arn = w.push(&s, "bfail-1", MASTER_SHA).await;
    w.complete(&arn, "FAILED", MASTER_SHA).await;
    let note = eventually("build_failed notification", || async {
        w.notes_of("build_failed").into_iter().next()
    })
    .await;
    assert_eq!(note["app"], "web");
    assert_eq!(note["sha"], MASTER_SHA);
    assert!(note["log_link"]
        .as_str()
        .unwrap()
        .starts_with("https://console.aws.amazon.com/cloudwatch"));
    let row = s
        .deliveries()
        .into_iter()
        .find(|r| r["delivery"] == "bfail-1")
        .unwrap();
    assert_eq!(row["state"], "build_failed");
    eventually("the event deleted", || async {
        (w.emulator.queue_depth(&w.queue).await == 0).then_some(())
    })
    .await;
    assert!(s.builder.deployments().is_empty());
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
}

#[tokio::test]
async fn a_lost_event_is_recovered_by_the_reconciler() {
    let w = Deploy::new().await;
    let builder = w.builder.clone().extra(&format!(
        "queue_url = \"{}\"\n[deploy]\npoll_initial_ms = 50\npoll_max_ms = 200\n[events]\nreconcile_after_secs = 1\n",
        w.queue
    ));
    let s = builder.start().await;
    w.push(&s, "lost-1", MASTER_SHA).await;
    // No event is ever emitted; the emulator's BatchGetBuilds reports the build SUCCEEDED.
    let d = eventually("the reconciler's deploy", || async {
        builder
            .deployments()
            .into_iter()
            .find(|d| d["state"] == "succeeded")
    })
    .await;
    assert_eq!(d["sha"], MASTER_SHA);
    s.wait_log("no event arrived for this build").await;
    assert!(!w.proxy.requests("BatchGetBuilds").is_empty());
}

#[tokio::test]
async fn an_unparseable_message_is_left_for_the_dead_letter_queue_and_the_consumer_goes_on() {
    let w = Deploy::new().await;
    w.emulator
        .sqs()
        .send_message()
        .queue_url(&w.queue)
        .message_body("this is not an event")
        .send()
        .await
        .unwrap();
    let s = w.builder.start().await;
    w.build_succeeds(&s, "poison-1", MASTER_SHA).await;
    assert_eq!(w.finished(MASTER_SHA).await["state"], "succeeded");
    s.wait_log("leaving it to the queue's redrive policy").await;
    // The event is deleted; the poison message stays for the redrive policy.
    eventually("only the poison message left", || async {
        (w.emulator.queue_depth(&w.queue).await == 1).then_some(())
    })
    .await;
    drop(s);
    let body = eventually("the poison message visible again", || async {
        let out = w
            .emulator
            .sqs()
            .receive_message()
            .queue_url(&w.queue)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        out.messages()
            .first()
            .and_then(|m| m.body())
            .map(str::to_owned)
    })
    .await;
    assert_eq!(body, "this is not an event");
}

#[tokio::test]
async fn throttled_polling_is_tolerated() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Complete { after: 3 }]);
    let s = w.builder.start().await;
    let arn = w.push(&s, "thr-1", MASTER_SHA).await;
    w.proxy
        .fail("DescribeServices", 4, 400, "ThrottlingException");
    w.proxy.script(
        "RegisterTaskDefinition",
        [Fault::Error {
            status: 500,
            code: "ServerException".into(),
        }],
    );
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    assert_eq!(w.finished(MASTER_SHA).await["state"], "succeeded");
}

#[tokio::test]
async fn foreign_builds_deploy_only_when_the_app_allows_it() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    // Someone starts a build by hand (CodeBuild must know it: slipway asks before deploying).
    let hand = w.build_by_hand().await;
    w.complete(&hand, "SUCCEEDED", MASTER_SHA).await;
    eventually("the event handled", || async {
        (w.emulator.queue_depth(&w.queue).await == 0).then_some(())
    })
    .await;
    assert!(s.builder.deployments().is_empty());
    s.wait_log("deploy_foreign_builds is off").await;
    drop(s);

    let apps = web_with("deploy_foreign_builds = true");
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    let _s = w.builder.start().await;
    let hand = w.build_by_hand().await;
    w.complete(&hand, "SUCCEEDED", MASTER_SHA).await;
    let d = w.finished(MASTER_SHA).await;
    assert_eq!(
        (d["state"].as_str(), d["trigger"].as_str()),
        (Some("succeeded"), Some("foreign_build"))
    );
}

#[tokio::test]
async fn pin_digest_deploys_the_image_by_digest() {
    let apps = web_with("pin_digest = true");
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "pin-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let image = d["image"].as_str().unwrap();
    let uri = w.emulator.repository_uri(ECR_REPO).await;
    assert!(image.starts_with(&format!("{uri}@sha256:")), "{image}");
    let (td, _) = w
        .emulator
        .task_definition(d["to_task_definition"].as_str().unwrap())
        .await;
    assert_eq!(image_of(&td, "web"), image);
}

#[tokio::test]
async fn a_rollback_that_fails_too_is_reported_as_failed() {
    let w = Deploy::new().await;
    w.proxy
        .rollouts([Rollout::Fail { after: 1 }, Rollout::Fail { after: 1 }]);
    let s = w.builder.start().await;
    let d = w.ship(&s, "rbfail-1", MASTER_SHA).await;
    assert_eq!(d["state"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("rollout failed") && reason.contains("the rollback to"),
        "{reason}"
    );
    assert_eq!(w.proxy.update_service_calls().len(), 2);
}

#[tokio::test]
async fn past_the_timeout_a_restart_looks_before_rolling_back() {
    let apps = web_with(SHORT_TIMEOUT);
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    w.completed_while_down_past_the_timeout("late-1").await;
    let _s = w.builder.start().await;
    let done = w.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        w.proxy.update_service_calls().len(),
        1,
        "no rollback of a completed rollout"
    );
}

#[tokio::test]
async fn an_older_push_delivered_late_does_not_replace_the_newer_one() {
    let w = Deploy::with(Setup {
        images: &[OLDER_SHA, NEWER_SHA],
        ..Setup::default()
    })
    .await;
    let s = w.builder.start().await;
    // The newer push (its `before` is the older commit) arrives and deploys first ...
    let body = String::from_utf8(fixture("github/push_master.json")).unwrap();
    let before = serde_json::from_str::<Value>(&body).unwrap()["before"]
        .as_str()
        .unwrap()
        .to_owned();
    let newer = body
        .replace(&before, OLDER_SHA)
        .replace(MASTER_SHA, NEWER_SHA);
    let r = s.deliver("push", "late-newer", newer.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let newer_arn = eventually("the newer build", || async {
        w.emulator
            .builds(PROJECT)
            .await
            .first()
            .and_then(|b| b.arn().map(str::to_owned))
    })
    .await;
    w.complete(&newer_arn, "SUCCEEDED", NEWER_SHA).await;
    assert_eq!(w.finished(NEWER_SHA).await["state"], "succeeded");
    // ... then the older push is redelivered by hand, later in journal order.
    let older_arn = w.push(&s, "late-older", OLDER_SHA).await;
    w.complete(&older_arn, "SUCCEEDED", OLDER_SHA).await;
    let d = w.finished(OLDER_SHA).await;
    assert_eq!(d["state"], "superseded", "{d}");
    assert_eq!(w.proxy.requests("RegisterTaskDefinition").len(), 1);
}

#[tokio::test]
async fn an_event_for_a_build_whose_start_was_never_recorded_is_recognised() {
    let w = Deploy::new().await;
    // CodeBuild starts the build but slipway does not hear back (yet).
    w.proxy.script(
        "StartBuild",
        [Fault::DelayAnswer(std::time::Duration::from_secs(600))],
    );
    let s = w.builder.start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "unheard-1", &body).await.status, 202);
    let build = eventually("the build in CodeBuild", || async {
        w.emulator.builds(PROJECT).await.into_iter().next()
    })
    .await;
    let run = w.proxy.requests("StartBuild")[0]["idempotencyToken"]
        .as_str()
        .unwrap()
        .to_owned();
    w.emulator
        .emit_build_event_with_env(
            build.arn().unwrap(),
            PROJECT,
            "SUCCEEDED",
            MASTER_SHA,
            &[("SLIPWAY_RUN", &run)],
        )
        .await;
    let d = w.finished(MASTER_SHA).await;
    assert_eq!(
        (d["state"].as_str(), d["trigger"].as_str()),
        (Some("succeeded"), Some("push")),
        "{d}"
    );
    assert_eq!(d["build_id"].as_str(), build.id());
}

#[tokio::test]
async fn an_operator_deploy_ranks_above_a_push_still_building() {
    let w = Deploy::with(Setup {
        images: &[MASTER_SHA, NEWER_SHA],
        ..Setup::default()
    })
    .await;
    let s = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", "ops-token-0123456789abc")
        .start()
        .await;
    let arn = w.push(&s, "building-1", MASTER_SHA).await;
    // While that push builds, an operator deploys another commit.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/apps/web/deploy", s.admin_url))
        .bearer_auth("ops-token-0123456789abc")
        .json(&serde_json::json!({ "sha": NEWER_SHA }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(w.finished(NEWER_SHA).await["state"], "succeeded");
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;
    let d = w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "superseded", "{d}");
}

#[tokio::test]
async fn apps_sharing_a_codebuild_project_each_deploy_their_own_service() {
    let apps = format!(
        "{DEFAULT_APPS}\n[[app]]\nname = \"worker\"\nrepository = \"octo-org/web\"\ncodebuild_project = \"web-build\"\ncluster = \"web\"\nservice = \"worker\"\ncontainer = \"web\"\necr_repository = \"web\"\n"
    );
    let w = Deploy::with(Setup {
        apps,
        ..Setup::default()
    })
    .await;
    w.emulator
        .create_service(CLUSTER, "worker", &w.base_td)
        .await;
    let s = w.builder.start().await;
    let r = s
        .deliver("push", "mono-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let builds = eventually("two builds", || async {
        let b = w.emulator.builds(PROJECT).await;
        (b.len() == 2).then_some(b)
    })
    .await;
    for b in &builds {
        w.complete(b.arn().unwrap(), "SUCCEEDED", MASTER_SHA).await;
    }
    let done = eventually("both deploys finished", || async {
        let d = w.builder.deployments();
        (d.len() == 2 && d.iter().all(|d| d["state"] == "succeeded")).then_some(d)
    })
    .await;
    let mut keys: Vec<(&str, &str)> = done
        .iter()
        .map(|d| {
            (
                d["app"].as_str().unwrap(),
                d["service_key"].as_str().unwrap(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys, [("web", "web/web"), ("worker", "web/worker")]);
    for d in &done {
        let service = d["service_key"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap();
        let td = w
            .emulator
            .service(CLUSTER, service)
            .await
            .task_definition()
            .unwrap()
            .to_owned();
        assert_eq!(td, d["to_task_definition"].as_str().unwrap(), "{service}");
    }
}
