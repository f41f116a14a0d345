//! The test proxy itself: its ECS deployment overlay and its fault scripting, through the real
//! ECS SDK client against the emulator.

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, LaunchType, NetworkMode};

use crate::support::proxy::{Fault, Rollout};
use crate::support::{sdk_config, Emulator, Proxy};

const CLUSTER: &str = "apps";

struct World {
    emulator: Emulator,
    proxy: Proxy,
    ecs: aws_sdk_ecs::Client,
    cluster_arn: String,
    rev1: String,
    rev2: String,
}

/// A deployment as the SDK parsed it.
#[derive(Debug, Clone, PartialEq)]
struct Dep {
    id: String,
    status: String,
    task_definition: String,
    state: String,
    reason: String,
    running: i32,
    desired: i32,
    failed: i32,
}

impl Dep {
    fn of(d: &aws_sdk_ecs::types::Deployment) -> Dep {
        Dep {
            id: d.id().unwrap_or_default().to_owned(),
            status: d.status().unwrap_or_default().to_owned(),
            task_definition: d.task_definition().unwrap_or_default().to_owned(),
            state: d
                .rollout_state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            reason: d.rollout_state_reason().unwrap_or_default().to_owned(),
            running: d.running_count(),
            desired: d.desired_count(),
            failed: d.failed_tasks(),
        }
    }

    fn summary(&self) -> (&str, &str, &str) {
        (
            self.status.as_str(),
            self.state.as_str(),
            self.task_definition.as_str(),
        )
    }
}

/// The service's task definition and its deployments, newest first.
type View = (String, Vec<Dep>);

fn view_of(s: &aws_sdk_ecs::types::Service) -> View {
    (
        s.task_definition().unwrap_or_default().to_owned(),
        s.deployments().iter().map(Dep::of).collect(),
    )
}

fn is_deployment_id(id: &str) -> bool {
    id.strip_prefix("ecs-svc/")
        .is_some_and(|d| d.len() == 19 && d.bytes().all(|b| b.is_ascii_digit()))
}

async fn register(ecs: &aws_sdk_ecs::Client, image: &str) -> String {
    ecs.register_task_definition()
        .family("web")
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ContainerDefinition::builder()
                .name("web")
                .image(image)
                .memory(512)
                .essential(true)
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition")
        .task_definition()
        .and_then(|t| t.task_definition_arn())
        .unwrap()
        .to_owned()
}

async fn create_service(w: &World, name: &str) {
    w.ecs
        .create_service()
        .cluster(CLUSTER)
        .service_name(name)
        .task_definition(&w.rev1)
        .desired_count(2)
        .launch_type(LaunchType::Fargate)
        .send()
        .await
        .expect("CreateService");
}

/// A cluster `apps` with a service `web` (desired 2) on revision 1 of `web`; revision 2 exists.
async fn world() -> World {
    let emulator = Emulator::start().await;
    let proxy = Proxy::start(&emulator.url).await;
    let config = sdk_config(&proxy.url).await;
    // No SDK retries: the tests see each answer of the proxy.
    let ecs = aws_sdk_ecs::Client::from_conf(
        aws_sdk_ecs::config::Builder::from(&config)
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let cluster_arn = ecs
        .create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .expect("CreateCluster")
        .cluster()
        .and_then(|c| c.cluster_arn())
        .unwrap()
        .to_owned();
    let rev1 = register(&ecs, "nginx:1").await;
    let rev2 = register(&ecs, "nginx:2").await;
    assert!(rev1.ends_with("task-definition/web:1"), "{rev1}");
    assert!(rev2.ends_with("task-definition/web:2"), "{rev2}");
    let w = World {
        emulator,
        proxy,
        ecs,
        cluster_arn,
        rev1,
        rev2,
    };
    create_service(&w, "web").await;
    w
}

impl World {
    async fn update(&self, service: &str, task_definition: &str) -> View {
        let out = self
            .ecs
            .update_service()
            .cluster(CLUSTER)
            .service(service)
            .task_definition(task_definition)
            .send()
            .await
            .expect("UpdateService");
        view_of(out.service().unwrap())
    }

    async fn describe(&self, service: &str) -> View {
        let out = self
            .ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(service)
            .send()
            .await
            .expect("DescribeServices");
        assert!(out.failures().is_empty(), "{:?}", out.failures());
        view_of(&out.services()[0])
    }

    /// The service's task definition as the emulator itself has it.
    async fn emulator_task_definition(&self, service: &str) -> String {
        aws_sdk_ecs::Client::new(&self.emulator.config)
            .describe_services()
            .cluster(CLUSTER)
            .services(service)
            .send()
            .await
            .expect("DescribeServices on the emulator")
            .services()[0]
            .task_definition()
            .unwrap()
            .to_owned()
    }

    /// Updates `web` to revision 2 and checks the answer: a new PRIMARY deployment in progress
    /// in front of the baseline, now ACTIVE. Returns (new id, baseline id).
    async fn deploy_rev2(&self) -> (String, String) {
        let (td, deps) = self.update("web", &self.rev2).await;
        assert_eq!(td, self.rev2);
        assert_eq!(deps.len(), 2, "{deps:#?}");
        let (new, base) = (&deps[0], &deps[1]);
        assert!(is_deployment_id(&new.id), "{}", new.id);
        assert_ne!(new.id, base.id);
        assert_eq!(
            new.summary(),
            ("PRIMARY", "IN_PROGRESS", self.rev2.as_str())
        );
        assert_eq!((new.running, new.desired, new.failed), (0, 2, 0));
        assert_eq!(
            new.reason,
            format!("ECS deployment {} in progress.", new.id)
        );
        assert_eq!(base.summary(), ("ACTIVE", "COMPLETED", self.rev1.as_str()));
        assert_eq!((base.running, base.desired), (2, 2));
        // The emulator took the new task definition.
        assert_eq!(self.emulator_task_definition("web").await, self.rev2);
        (new.id.clone(), base.id.clone())
    }
}

#[tokio::test]
async fn complete_after_two_describes_removes_the_old_deployment() {
    let w = world().await;
    w.proxy.rollouts([Rollout::Complete { after: 2 }]);
    let (id, base) = w.deploy_rev2().await;

    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev2);
    assert_eq!(deps.len(), 2);
    assert_eq!(deps[0].id, id);
    assert_eq!(
        deps[0].summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev2.as_str())
    );
    assert_eq!(deps[0].running, 1, "running creeps up");
    assert_eq!(deps[1].id, base);

    for _ in 0..3 {
        let (td, deps) = w.describe("web").await;
        assert_eq!(td, w.rev2);
        assert_eq!(deps.len(), 1, "{deps:#?}");
        assert_eq!(deps[0].id, id);
        assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev2.as_str()));
        assert_eq!((deps[0].running, deps[0].desired), (2, 2));
        assert_eq!(deps[0].reason, format!("ECS deployment {id} completed."));
    }

    // The overlay as the test sees it, by name or by ARN.
    let overlay = w.proxy.deployments(CLUSTER, "web");
    assert_eq!(overlay.len(), 1);
    assert_eq!(overlay[0]["id"], id.as_str());
    assert_eq!(overlay[0]["rolloutState"], "COMPLETED");
    let service_arn = format!("{}/web", w.cluster_arn.replace(":cluster/", ":service/"));
    assert_eq!(w.proxy.deployments(&w.cluster_arn, &service_arn), overlay);
    assert!(w.proxy.deployments(CLUSTER, "other").is_empty());

    let calls = w.proxy.update_service_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["taskDefinition"], w.rev2.as_str());
    assert_eq!(calls[0]["service"], "web");
}

#[tokio::test]
async fn without_a_script_a_deployment_completes_at_the_first_describe() {
    let w = world().await;
    let (id, _) = w.deploy_rev2().await;
    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev2);
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].id, id);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev2.as_str()));

    // A second deploy (back to revision 1, by family:revision) starts from the completed one.
    let (td, deps) = w.update("web", "web:1").await;
    assert_eq!(td, w.rev1, "the task definition is resolved to its ARN");
    assert_eq!(deps.len(), 2);
    assert_eq!(
        deps[0].summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev1.as_str())
    );
    assert_eq!(deps[1].id, id);
    assert_eq!(deps[1].summary(), ("ACTIVE", "COMPLETED", w.rev2.as_str()));
    let (_, deps) = w.describe("web").await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev1.as_str()));
}

#[tokio::test]
async fn fail_stays_primary_and_failed() {
    let w = world().await;
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let (id, base) = w.deploy_rev2().await;
    for _ in 0..3 {
        let (td, deps) = w.describe("web").await;
        assert_eq!(td, w.rev2);
        assert_eq!(deps.len(), 2, "{deps:#?}");
        assert_eq!(deps[0].id, id);
        assert_eq!(deps[0].summary(), ("PRIMARY", "FAILED", w.rev2.as_str()));
        assert_eq!((deps[0].running, deps[0].failed), (0, 3));
        assert!(
            deps[0].reason.contains("circuit breaker"),
            "{}",
            deps[0].reason
        );
        assert_eq!(deps[1].id, base);
        assert_eq!(deps[1].summary(), ("ACTIVE", "COMPLETED", w.rev1.as_str()));
    }
}

#[tokio::test]
async fn ecs_rolls_back_to_the_previous_task_definition() {
    let w = world().await;
    w.proxy.rollouts([Rollout::EcsRollsBack { after: 2 }]);
    let (id, base) = w.deploy_rev2().await;

    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev2);
    assert_eq!(
        deps[0].summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev2.as_str())
    );

    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev1, "the service runs the old task definition again");
    // ECS makes no new deployment for its rollback: the last one that completed goes
    // IN_PROGRESS again and PRIMARY (ECS developer guide, deployment circuit breaker).
    assert_eq!(deps.len(), 2, "{deps:#?}");
    let rollback = deps
        .iter()
        .find(|d| d.status == "PRIMARY")
        .cloned()
        .unwrap();
    assert_eq!(rollback.id, base);
    assert_eq!(
        rollback.summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev1.as_str())
    );
    assert!(
        rollback.reason.contains("rolling back"),
        "{}",
        rollback.reason
    );
    let failed = deps.iter().find(|d| d.id == id).unwrap();
    assert_eq!(failed.summary(), ("ACTIVE", "FAILED", w.rev2.as_str()));
    assert_eq!(failed.failed, 3);
    assert!(failed.reason.contains("circuit breaker"));
    // The emulator was moved back too.
    assert_eq!(w.emulator_task_definition("web").await, w.rev1);

    for _ in 0..2 {
        let (td, deps) = w.describe("web").await;
        assert_eq!(td, w.rev1);
        assert_eq!(deps.len(), 1, "{deps:#?}");
        assert_eq!(deps[0].id, base);
        assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev1.as_str()));
        assert_eq!(deps[0].running, 2);
    }
}

#[tokio::test]
async fn a_foreign_deploy_takes_over() {
    let w = world().await;
    let rev999 = w.rev2.replace("web:2", "web:999");
    w.proxy.rollouts([
        Rollout::Foreign { after: 1 },
        Rollout::ForeignTo {
            after: 2,
            task_definition: w.rev1.clone(),
        },
    ]);
    let (id, base) = w.deploy_rev2().await;

    let (td, deps) = w.describe("web").await;
    assert_eq!(td, rev999);
    assert_eq!(deps.len(), 3, "{deps:#?}");
    let foreign = deps[0].clone();
    assert!(is_deployment_id(&foreign.id));
    assert_eq!(
        foreign.summary(),
        ("PRIMARY", "IN_PROGRESS", rev999.as_str())
    );
    assert_eq!(deps[1].id, id);
    assert_eq!(
        deps[1].summary(),
        ("ACTIVE", "IN_PROGRESS", w.rev2.as_str())
    );
    assert_eq!(deps[2].id, base);

    let (td, deps) = w.describe("web").await;
    assert_eq!(td, rev999);
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].id, foreign.id);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", rev999.as_str()));

    // With a given task definition: someone deploys revision 1 over our revision 2.
    let (td, deps) = w.update("web", &w.rev2).await;
    assert_eq!(td, w.rev2);
    assert_eq!(
        deps[0].summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev2.as_str())
    );
    assert_eq!(deps[1].summary(), ("ACTIVE", "COMPLETED", rev999.as_str()));
    let ours = deps[0].id.clone();
    let (_, deps) = w.describe("web").await;
    assert_eq!(deps[0].id, ours);
    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev1);
    assert_eq!(
        deps[0].summary(),
        ("PRIMARY", "IN_PROGRESS", w.rev1.as_str())
    );
    assert_eq!(deps[1].id, ours);
    assert_eq!(deps[1].status, "ACTIVE");
    assert_eq!(w.emulator_task_definition("web").await, w.rev1);
}

#[tokio::test]
async fn a_vanished_deployment_leaves_the_previous_primary() {
    let w = world().await;
    w.proxy.rollouts([Rollout::Vanish { after: 1 }]);
    let (_, base) = w.deploy_rev2().await;
    for _ in 0..2 {
        let (td, deps) = w.describe("web").await;
        assert_eq!(td, w.rev1);
        assert_eq!(deps.len(), 1, "{deps:#?}");
        assert_eq!(deps[0].id, base);
        assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev1.as_str()));
    }
    assert_eq!(w.emulator_task_definition("web").await, w.rev1);
}

#[tokio::test]
async fn never_stays_in_progress() {
    let w = world().await;
    w.proxy.rollouts([Rollout::Never]);
    let (id, base) = w.deploy_rev2().await;
    for _ in 0..10 {
        let (td, deps) = w.describe("web").await;
        assert_eq!(td, w.rev2);
        assert_eq!(deps.len(), 2);
        assert_eq!(deps[0].id, id);
        assert_eq!(
            deps[0].summary(),
            ("PRIMARY", "IN_PROGRESS", w.rev2.as_str())
        );
        assert_eq!(deps[0].running, 1, "creeps up to desired - 1");
        assert_eq!(deps[1].id, base);
    }
}

#[tokio::test]
async fn outcomes_are_consumed_in_order_across_services() {
    let w = world().await;
    create_service(&w, "api").await;
    w.proxy
        .rollouts([Rollout::Fail { after: 1 }, Rollout::Complete { after: 2 }]);

    // Changing only the desired count starts no deployment and consumes no outcome.
    w.ecs
        .update_service()
        .cluster(CLUSTER)
        .service("web")
        .desired_count(3)
        .send()
        .await
        .expect("UpdateService");
    assert!(w.proxy.deployments(CLUSTER, "web").is_empty());

    let (web, _) = w.deploy_rev2_with_desired(3).await;
    let (_, api) = w.update("api", &w.rev2).await;
    let api = api[0].id.clone();

    // One call naming both services advances both.
    let out = w
        .ecs
        .describe_services()
        .cluster(&w.cluster_arn)
        .services("web")
        .services("api")
        .send()
        .await
        .unwrap();
    let views: Vec<View> = out.services().iter().map(view_of).collect();
    assert_eq!(views[0].1[0].id, web);
    assert_eq!(views[0].1[0].state, "FAILED");
    assert_eq!(views[1].1[0].id, api);
    assert_eq!(views[1].1[0].state, "IN_PROGRESS");
    let (_, deps) = w.describe("api").await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev2.as_str()));

    // The queue is empty: the default.
    let (_, deps) = w.update("web", &w.rev1).await;
    assert_eq!(deps.len(), 3);
    let (_, deps) = w.describe("web").await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev1.as_str()));
    assert_eq!((deps[0].running, deps[0].desired), (3, 3));
}

impl World {
    async fn deploy_rev2_with_desired(&self, desired: i32) -> (String, Vec<Dep>) {
        let (_, deps) = self.update("web", &self.rev2).await;
        assert_eq!(deps[0].desired, desired);
        assert_eq!(deps[1].desired, desired);
        (deps[0].id.clone(), deps)
    }
}

#[tokio::test]
async fn throttling_on_describe_services_is_a_service_error_and_does_not_advance() {
    let w = world().await;
    w.proxy.rollouts([Rollout::Complete { after: 2 }]);
    let (id, _) = w.deploy_rev2().await;
    w.proxy
        .fail("DescribeServices", 2, 400, "ThrottlingException");
    for _ in 0..2 {
        let err = w
            .ecs
            .describe_services()
            .cluster(CLUSTER)
            .services("web")
            .send()
            .await
            .expect_err("throttled");
        let service_error = err.as_service_error().expect("a service error");
        assert_eq!(service_error.code(), Some("ThrottlingException"));
        assert!(service_error.message().unwrap_or("").contains("test proxy"));
    }
    let (_, deps) = w.describe("web").await;
    assert_eq!(deps[0].id, id);
    assert_eq!(deps[0].state, "IN_PROGRESS", "throttled calls are no steps");
    let (_, deps) = w.describe("web").await;
    assert_eq!(deps[0].state, "COMPLETED");
    assert_eq!(w.proxy.requests("DescribeServices").len(), 4);

    // 5xx and latency still work through the overlay.
    w.proxy.script(
        "DescribeServices",
        [
            Fault::Error {
                status: 500,
                code: "ServerException".to_owned(),
            },
            Fault::Delay(std::time::Duration::from_millis(50)),
        ],
    );
    let err = w
        .ecs
        .describe_services()
        .cluster(CLUSTER)
        .services("web")
        .send()
        .await
        .expect_err("5xx");
    assert_eq!(err.code(), Some("ServerException"));
    let (td, deps) = w.describe("web").await;
    assert_eq!(td, w.rev2);
    assert_eq!(deps[0].summary(), ("PRIMARY", "COMPLETED", w.rev2.as_str()));
}

#[tokio::test]
async fn service_deployments_and_revisions_are_modelled_as_the_api_reference_says() {
    use aws_sdk_ecs::types::{CreatedAt, StopServiceDeploymentStopType};
    let w = world().await;
    w.proxy.rollouts([Rollout::Never]);
    let (id, _base) = w.deploy_rev2().await;
    // UpdateService named the current service deployment: an opaque id, not the digits.
    let service = w
        .ecs
        .describe_services()
        .cluster(CLUSTER)
        .services("web")
        .send()
        .await
        .unwrap()
        .services()[0]
        .clone();
    let current = service.current_service_deployment().unwrap().to_owned();
    let opaque = current.rsplit('/').next().unwrap();
    assert!(current.contains(":service-deployment/"), "{current}");
    assert!(
        !current.contains(id.rsplit('/').next().unwrap()),
        "{current} {id}"
    );
    assert_eq!(opaque.len(), 21, "like NCWGC2ZR-taawPAYrIaU5: {opaque}");
    // Its target revision runs rev2 (DescribeServiceRevisions).
    let sd = w
        .ecs
        .describe_service_deployments()
        .service_deployment_arns(&current)
        .send()
        .await
        .unwrap()
        .service_deployments()[0]
        .clone();
    let revision = sd
        .target_service_revision()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let revisions = w
        .ecs
        .describe_service_revisions()
        .service_revision_arns(&revision)
        .service_revision_arns("arn:aws:ecs:eu-west-1:123456789012:service-revision/x/y/1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        revisions.service_revisions()[0].task_definition(),
        Some(w.rev2.as_str())
    );
    assert_eq!(revisions.failures().len(), 1);
    // Listing: newest first, cut at maxResults with a nextToken, filtered by createdAt.
    let page = w
        .ecs
        .list_service_deployments()
        .cluster(CLUSTER)
        .service("web")
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!(page.service_deployments().len(), 1);
    assert_eq!(
        page.service_deployments()[0].service_deployment_arn(),
        Some(current.as_str())
    );
    assert!(page.next_token().is_some());
    let later = w
        .ecs
        .list_service_deployments()
        .cluster(CLUSTER)
        .service("web")
        .created_at(
            CreatedAt::builder()
                .after(aws_smithy_types::DateTime::from_secs(4_000_000_000))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(later.service_deployments().is_empty());
    // StopServiceDeployment(ROLLBACK): ECS rolls back to the previous revision, no new one.
    w.ecs
        .stop_service_deployment()
        .service_deployment_arn(&current)
        .stop_type(StopServiceDeploymentStopType::Rollback)
        .send()
        .await
        .unwrap();
    let (td, _) = w.describe("web").await;
    assert_eq!(td, w.rev1, "rolled back");
    let sd = w
        .ecs
        .describe_service_deployments()
        .service_deployment_arns(&current)
        .send()
        .await
        .unwrap()
        .service_deployments()[0]
        .clone();
    assert_eq!(sd.status().map(|s| s.as_str()), Some("ROLLBACK_SUCCESSFUL"));
    assert!(sd
        .rollback()
        .and_then(|r| r.service_revision_arn())
        .is_some());
    // A finished service deployment cannot be stopped.
    let refused = w
        .ecs
        .stop_service_deployment()
        .service_deployment_arn(&current)
        .stop_type(StopServiceDeploymentStopType::Rollback)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_service_error().and_then(|e| e.meta().code()),
        Some("ConflictException")
    );
}

/// CodeBuild's StartBuild `idempotencyToken` (which the emulator ignores): the same request
/// with the same token is the same build; another request with it is a parameter mismatch.
#[tokio::test]
async fn start_build_with_the_same_idempotency_token_is_the_same_build() {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    let proxy = Proxy::start(&emulator.url).await;
    let codebuild = aws_sdk_codebuild::Client::new(&sdk_config(&proxy.url).await);
    let start = |version: &'static str, token: &'static str| {
        codebuild
            .start_build()
            .project_name("web-build")
            .source_version(version)
            .idempotency_token(token)
            .send()
    };
    let first = start("aaaa", "run-1").await.unwrap();
    let again = start("aaaa", "run-1").await.unwrap();
    let id = |o: &aws_sdk_codebuild::operation::start_build::StartBuildOutput| {
        o.build_value().and_then(|b| b.id()).unwrap().to_owned()
    };
    assert_eq!(id(&first), id(&again), "the same build");
    let other = start("aaaa", "run-2").await.unwrap();
    assert_ne!(id(&first), id(&other), "another token, another build");
    let mismatch = start("bbbb", "run-1").await.unwrap_err();
    assert_eq!(
        aws_sdk_codebuild::error::ProvideErrorMetadata::code(&mismatch),
        Some("InvalidInputException")
    );
    assert_eq!(emulator.builds("web-build").await.len(), 2);
}

/// The proxy's STS (see "Other accounts" in `support/proxy.rs`): a role is assumed only as its
/// trust policy allows, `sts:ExternalId` included, and an explicit `Deny` wins; a condition it
/// does not model is not met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_follows_the_trust_policy() {
    let emulator = Emulator::start().await;
    let proxy = Proxy::start(&emulator.url).await;
    let sts = aws_sdk_sts::Client::new(&sdk_config(&proxy.url).await);
    const ROLE: &str = "arn:aws:iam::222222222222:role/deploy";
    let assume = |id: Option<&'static str>| {
        let sts = sts.clone();
        async move {
            sts.assume_role()
                .role_arn(ROLE)
                .role_session_name("slipway")
                .set_external_id(id.map(str::to_owned))
                .send()
                .await
        }
    };
    let allow = serde_json::json!({
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": "id-1"}},
    });

    // No trust policy: the role does not exist for the caller.
    let err = assume(Some("id-1")).await.unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
    assert_eq!(
        err.message(),
        Some(
            "User: arn:aws:iam::123456789012:user/moto is not authorized to perform: \
             sts:AssumeRole on resource: arn:aws:iam::222222222222:role/deploy"
        )
    );

    proxy.trust_policy(ROLE, serde_json::json!({"Statement": [allow.clone()]}));
    assert!(assume(None).await.is_err(), "the external id is required");
    assert!(assume(Some("id-2")).await.is_err(), "and must match");
    let ok = assume(Some("id-1")).await.unwrap();
    let key = ok.credentials().unwrap().access_key_id().to_owned();
    assert_eq!(
        proxy.assumed_keys().get(&key).map(String::as_str),
        Some(ROLE)
    );

    let mut deny = allow.clone();
    deny["Effect"] = "Deny".into();
    proxy.trust_policy(
        ROLE,
        serde_json::json!({"Statement": [allow.clone(), deny]}),
    );
    assert!(assume(Some("id-1")).await.is_err(), "an explicit deny wins");

    let mut unmodelled = allow;
    unmodelled["Condition"] = serde_json::json!({"StringLike": {"sts:ExternalId": "id-*"}});
    proxy.trust_policy(ROLE, serde_json::json!({"Statement": [unmodelled]}));
    assert!(assume(Some("id-1")).await.is_err(), "not modelled: refused");
}
