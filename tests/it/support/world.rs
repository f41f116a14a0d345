//! AWS resources a deploy needs, created in the emulator through the real SDK clients:
//! the ECR image, the cluster, a task definition with every field set, the service, the
//! CodeBuild project, and the queue with the EventBridge rule that feeds it.

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, DeploymentCircuitBreaker, DeploymentConfiguration,
    EphemeralStorage, HealthCheck, KeyValuePair, LogConfiguration, LogDriver, NetworkMode,
    PortMapping, ProxyConfiguration, RuntimePlatform, Secret, Tag,
    TaskDefinitionPlacementConstraint, TaskDefinitionPlacementConstraintType, Volume,
};

use super::Emulator;

pub const CLUSTER: &str = "web";
pub const SERVICE: &str = "web";
pub const FAMILY: &str = "web";
pub const ECR_REPO: &str = "web";
pub const PROJECT: &str = "web-build";

/// The deployment circuit breaker on, with rollback: what a careful user configures.
pub fn circuit_breaker_on() -> DeploymentConfiguration {
    DeploymentConfiguration::builder()
        .deployment_circuit_breaker(
            DeploymentCircuitBreaker::builder()
                .enable(true)
                .rollback(true)
                .build(),
        )
        .build()
}

pub fn ecs(config: &aws_config::SdkConfig) -> aws_sdk_ecs::Client {
    aws_sdk_ecs::Client::new(config)
}

impl Emulator {
    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        ecs(&self.config)
    }
    pub fn ecr(&self) -> aws_sdk_ecr::Client {
        aws_sdk_ecr::Client::new(&self.config)
    }
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.config)
    }
    pub fn events(&self) -> aws_sdk_eventbridge::Client {
        aws_sdk_eventbridge::Client::new(&self.config)
    }

    /// An ECR repository (created if missing) holding an image tagged `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str) -> String {
        let _ = self
            .ecr()
            .create_repository()
            .repository_name(repo)
            .send()
            .await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7023,
                "digest": format!("sha256:{}", "c".repeat(64)),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 32654,
                "digest": format!("sha256:{:0>64}", hex_of(tag)),
            }],
        });
        let out = self
            .ecr()
            .put_image()
            .repository_name(repo)
            .image_tag(tag)
            .image_manifest(manifest.to_string())
            .send()
            .await
            .expect("ECR PutImage");
        out.image()
            .and_then(|i| i.image_id())
            .and_then(|i| i.image_digest())
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn repository_uri(&self, repo: &str) -> String {
        self.ecr()
            .describe_repositories()
            .repository_names(repo)
            .send()
            .await
            .expect("DescribeRepositories")
            .repositories()[0]
            .repository_uri()
            .unwrap()
            .to_owned()
    }

    pub async fn create_cluster(&self, name: &str) {
        self.ecs()
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .expect("CreateCluster");
    }

    /// Registers `web` with every field RegisterTaskDefinition takes (that the emulator keeps),
    /// two containers, an empty environment value and several tags. Returns its ARN.
    pub async fn register_full_task_definition(&self, container: &str, image: &str) -> String {
        let env = |k: &str, v: &str| KeyValuePair::builder().name(k).value(v).build();
        let app = ContainerDefinition::builder()
            .name(container)
            .image(image)
            .memory(512)
            .memory_reservation(256)
            .cpu(128)
            .essential(true)
            .port_mappings(
                PortMapping::builder()
                    .container_port(8080)
                    .host_port(8080)
                    .build(),
            )
            .environment(env("RUST_LOG", "info"))
            .environment(env("EMPTY_ON_PURPOSE", ""))
            .secrets(
                Secret::builder()
                    .name("DATABASE_URL")
                    .value_from("arn:aws:ssm:eu-west-1:123456789012:parameter/web/db")
                    .build()
                    .unwrap(),
            )
            .log_configuration(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", "/ecs/web")
                    .options("awslogs-region", "eu-west-1")
                    .options("awslogs-stream-prefix", "web")
                    .build()
                    .unwrap(),
            )
            .health_check(
                HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("curl -f http://localhost:8080/healthz || exit 1")
                    .interval(30)
                    .timeout(5)
                    .retries(3)
                    .start_period(10)
                    .build()
                    .unwrap(),
            )
            .build();
        let sidecar = ContainerDefinition::builder()
            .name("envoy")
            .image("public.ecr.aws/appmesh/aws-appmesh-envoy:v1.27.0.0-prod")
            .memory(128)
            .essential(false)
            .environment(env("APPMESH_VIRTUAL_NODE_NAME", "mesh/web/virtualNode/web"))
            .build();
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        self.ecs()
            .register_task_definition()
            .family(FAMILY)
            .task_role_arn("arn:aws:iam::123456789012:role/web-task")
            .execution_role_arn("arn:aws:iam::123456789012:role/web-exec")
            .network_mode(NetworkMode::Awsvpc)
            .container_definitions(app)
            .container_definitions(sidecar)
            .volumes(Volume::builder().name("scratch").build())
            .placement_constraints(
                TaskDefinitionPlacementConstraint::builder()
                    .r#type(TaskDefinitionPlacementConstraintType::MemberOf)
                    .expression("attribute:ecs.availability-zone in [eu-west-1a]")
                    .build(),
            )
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("512")
            .memory("1024")
            .pid_mode(aws_sdk_ecs::types::PidMode::Task)
            .ipc_mode(aws_sdk_ecs::types::IpcMode::None)
            .proxy_configuration(
                ProxyConfiguration::builder()
                    .container_name("envoy")
                    .properties(env("AppPorts", "8080"))
                    .properties(env("ProxyIngressPort", "15000"))
                    .build()
                    .unwrap(),
            )
            .ephemeral_storage(EphemeralStorage::builder().size_in_gib(30).build())
            .runtime_platform(
                RuntimePlatform::builder()
                    .cpu_architecture(aws_sdk_ecs::types::CpuArchitecture::Arm64)
                    .operating_system_family(aws_sdk_ecs::types::OsFamily::Linux)
                    .build(),
            )
            .tags(tag("team", "payments"))
            .tags(tag("Version", "0000000000000000000000000000000000000000"))
            .tags(tag("cost-center", "42"))
            .send()
            .await
            .expect("RegisterTaskDefinition")
            .task_definition()
            .unwrap()
            .task_definition_arn()
            .unwrap()
            .to_owned()
    }

    pub async fn create_service(&self, cluster: &str, name: &str, task_definition: &str) {
        self.ecs()
            .create_service()
            .cluster(cluster)
            .service_name(name)
            .task_definition(task_definition)
            .desired_count(2)
            .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
            .deployment_configuration(circuit_breaker_on())
            .send()
            .await
            .expect("CreateService");
    }

    /// The queue slipway consumes and the EventBridge rule routing CodeBuild's state changes
    /// to it, as `slipway provision` sets them up. Returns the queue URL.
    pub async fn create_event_route(&self, queue: &str) -> String {
        let url = self
            .sqs()
            .create_queue()
            .queue_name(queue)
            .send()
            .await
            .expect("CreateQueue")
            .queue_url()
            .unwrap()
            .to_owned();
        let arn = self
            .sqs()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        let pattern = serde_json::json!({
            "source": ["aws.codebuild"],
            "detail-type": ["CodeBuild Build State Change"],
        });
        self.events()
            .put_rule()
            .name("slipway-codebuild")
            .event_pattern(pattern.to_string())
            .send()
            .await
            .expect("PutRule");
        self.events()
            .put_targets()
            .rule("slipway-codebuild")
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("slipway")
                    .arn(arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("PutTargets");
        url
    }

    /// Plays CodeBuild's completion event onto the bus, as AWS would emit it.
    pub async fn emit_build_event(&self, build_arn: &str, project: &str, status: &str, sha: &str) {
        self.emit_build_event_with_env(build_arn, project, status, sha, &[])
            .await
    }

    /// Like `emit_build_event`, with the build's environment variables in the event.
    pub async fn emit_build_event_with_env(
        &self,
        build_arn: &str,
        project: &str,
        status: &str,
        sha: &str,
        env: &[(&str, &str)],
    ) {
        let env: Vec<serde_json::Value> = env
            .iter()
            .map(|(k, v)| serde_json::json!({ "name": k, "value": v, "type": "PLAINTEXT" }))
            .collect();
        let detail = serde_json::json!({
            "build-status": status,
            "project-name": project,
            "build-id": build_arn,
            "current-phase": "COMPLETED",
            "current-phase-context": "[: ]",
            "version": "1",
            "additional-information": {
                "build-complete": true,
                "initiator": "slipway",
                "source-version": sha,
                "logs": {
                    "group-name": format!("/aws/codebuild/{project}"),
                    "stream-name": "stream",
                    "deep-link": format!("https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logEvent:group=/aws/codebuild/{project}"),
                },
                "timeout-in-minutes": 60.0,
                "build-number": 7.0,
                "environment": { "environment-variables": env },
            },
        });
        let out = self
            .events()
            .put_events()
            .entries(
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .source("aws.codebuild")
                    .detail_type("CodeBuild Build State Change")
                    .resources(build_arn)
                    .detail(detail.to_string())
                    .build(),
            )
            .send()
            .await
            .expect("PutEvents");
        assert_eq!(out.failed_entry_count(), 0, "PutEvents failed: {out:?}");
    }

    /// Messages in the queue, visible or not.
    pub async fn queue_depth(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| {
            attrs
                .get(a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    pub async fn service(&self, cluster: &str, name: &str) -> aws_sdk_ecs::types::Service {
        self.ecs()
            .describe_services()
            .cluster(cluster)
            .services(name)
            .send()
            .await
            .unwrap()
            .services()[0]
            .clone()
    }

    pub async fn task_definition(
        &self,
        arn: &str,
    ) -> (aws_sdk_ecs::types::TaskDefinition, Vec<Tag>) {
        let out = self
            .ecs()
            .describe_task_definition()
            .task_definition(arn)
            .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
            .send()
            .await
            .unwrap();
        (out.task_definition().unwrap().clone(), out.tags().to_vec())
    }
}

fn hex_of(s: &str) -> String {
    s.bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(64)
        .collect()
}
