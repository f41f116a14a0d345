//! The new task definition revision: a copy of the one the service runs now, with one
//! container's image replaced and the `Version` tag set.
//!
//! Everything `RegisterTaskDefinition` accepts is carried over unchanged; only the read-only
//! fields `DescribeTaskDefinition` adds are dropped. Tools that kept an allow-list lost fields
//! when the API grew, so the two lists below are checked against the SDK's model in the tests:
//! a field added to `TaskDefinition` or to `RegisterTaskDefinitionInput` makes them fail until
//! it is classified here and copied in [`NewRevision::apply`].

use aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionFluentBuilder;
use aws_sdk_ecs::types::{Tag, TaskDefinition};

use crate::image::{ImageError, ImageRef};

/// Key of the tag that records the deployed version.
pub const VERSION_TAG_KEY: &str = "Version";

/// Maximum length of an ECS tag value.
const TAG_VALUE_MAX_LEN: usize = 256;

/// Fields of `TaskDefinition` that `DescribeTaskDefinition` returns and
/// `RegisterTaskDefinition` does not accept (snake_case, as the SDK's `Debug` prints them).
pub const READ_ONLY_FIELDS: &[&str] = &[
    "task_definition_arn",
    "revision",
    "status",
    "requires_attributes",
    "compatibilities",
    "registered_at",
    "registered_by",
    "deregistered_at",
    "delete_requested_at",
];

/// Every field of `RegisterTaskDefinitionInput`; all are copied from the current task
/// definition (`tags` from the tags described alongside it).
pub const CARRIED_FIELDS: &[&str] = &[
    "family",
    "task_role_arn",
    "execution_role_arn",
    "network_mode",
    "container_definitions",
    "volumes",
    "placement_constraints",
    "requires_compatibilities",
    "cpu",
    "memory",
    "tags",
    "pid_mode",
    "ipc_mode",
    "proxy_configuration",
    "inference_accelerators",
    "ephemeral_storage",
    "runtime_platform",
    "enable_fault_injection",
];

/// Why a new revision cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskDefError {
    #[error(
        "container {container:?} not found in the task definition (containers: {})",
        .available.join(", ")
    )]
    ContainerNotFound {
        container: String,
        available: Vec<String>,
    },
    #[error("container {container:?} has no image")]
    NoImage { container: String },
    /// The image the container runs now is not a reference slipway can parse.
    #[error("container {container:?} runs an image slipway cannot parse: {error}")]
    CurrentImage {
        container: String,
        error: ImageError,
    },
    #[error("new image for container {container:?}: {error}")]
    NewImage {
        container: String,
        error: ImageError,
    },
    #[error("invalid {VERSION_TAG_KEY} tag value {value:?}: must be 1 to 256 characters")]
    VersionTag { value: String },
    #[error(
        "the task definition already has {count} tags, the most ECS allows, and no \
         {VERSION_TAG_KEY} tag: remove a tag (or add {VERSION_TAG_KEY}) so slipway can tag the \
         new revision"
    )]
    TooManyTags { count: usize },
}

/// The most tags ECS allows on a resource.
pub const MAX_TAGS: usize = 50;

/// The input of `RegisterTaskDefinition` for the next revision.
#[derive(Debug, Clone)]
pub struct NewRevision {
    /// The current task definition with the container's image replaced.
    base: TaskDefinition,
    /// The current tags with `Version` set.
    tags: Vec<Tag>,
    container: String,
    old_image: String,
    new_image: ImageRef,
    notes: Vec<String>,
}

impl NewRevision {
    /// Copies `current`, replacing the image of `container` with `new_image` and setting
    /// the `Version` tag (added if absent) among `tags` to `version_tag`.
    pub fn from_current(
        current: &TaskDefinition,
        tags: &[Tag],
        container: &str,
        new_image: &str,
        version_tag: &str,
    ) -> Result<NewRevision, TaskDefError> {
        Self::for_containers(
            current,
            tags,
            &[container.to_owned()],
            new_image,
            version_tag,
        )
    }

    /// Copies `current`, replacing the image of every container in `containers` with
    /// `new_image` and setting the `Version` tag (added if absent) among `tags` to
    /// `version_tag`. A container not listed that runs the same repository keeps its image and
    /// is named in `notes()`. The images the containers run now are only informational: one
    /// slipway cannot parse does not stop the deploy.
    ///
    /// Errors: a container not found (the message lists the container names that exist), a
    /// container without an image, a new image that is not a valid reference, a bad tag value,
    /// no room for the `Version` tag.
    pub fn for_containers(
        current: &TaskDefinition,
        tags: &[Tag],
        containers: &[String],
        new_image: &str,
        version_tag: &str,
    ) -> Result<NewRevision, TaskDefError> {
        let first = containers.first().cloned().unwrap_or_default();
        let new_image = ImageRef::parse(new_image).map_err(|error| TaskDefError::NewImage {
            container: first.clone(),
            error,
        })?;
        if version_tag.is_empty() || version_tag.chars().count() > TAG_VALUE_MAX_LEN {
            return Err(TaskDefError::VersionTag {
                value: version_tag.to_owned(),
            });
        }

        let has_version = tags
            .iter()
            .any(|t| t.key.as_deref() == Some(VERSION_TAG_KEY));
        if !has_version && tags.len() >= MAX_TAGS {
            return Err(TaskDefError::TooManyTags { count: tags.len() });
        }

        let mut base = current.clone();
        let definitions = base.container_definitions.get_or_insert_with(Vec::new);
        let mut old_image = None;
        for container in containers {
            let Some(target) = definitions
                .iter_mut()
                .find(|c| c.name.as_deref() == Some(container.as_str()))
            else {
                return Err(TaskDefError::ContainerNotFound {
                    container: container.to_owned(),
                    available: definitions.iter().filter_map(|c| c.name.clone()).collect(),
                });
            };
            let Some(old) = target.image.replace(new_image.to_string()) else {
                return Err(TaskDefError::NoImage {
                    container: container.to_owned(),
                });
            };
            old_image.get_or_insert(old);
        }
        let same_repository = |image: &str| {
            ImageRef::parse(image).is_ok_and(|i| {
                i.registry() == new_image.registry() && i.repository() == new_image.repository()
            })
        };
        let notes = definitions
            .iter()
            .filter(|c| {
                !containers
                    .iter()
                    .any(|n| c.name.as_deref() == Some(n.as_str()))
            })
            .filter_map(|c| {
                let image = c.image.as_deref()?;
                same_repository(image).then(|| {
                    format!(
                        "container {} also runs {} and keeps its image {image} (list it in \
                         `containers` to deploy it too)",
                        c.name.as_deref().unwrap_or("?"),
                        new_image.repository()
                    )
                })
            })
            .collect();

        Ok(NewRevision {
            base,
            tags: with_version(tags, version_tag),
            container: first,
            old_image: old_image.unwrap_or_default(),
            new_image,
            notes,
        })
    }

    /// Containers that run the deployed repository but are not deployed (they keep their
    /// image), in words.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// An exact copy of `current` (same containers, images and tags), registered as a new
    /// revision when `current` was deregistered: ECS refuses to go back to an INACTIVE
    /// revision, so the copy is what a rollback returns to.
    pub fn copy_of(
        current: &TaskDefinition,
        tags: &[Tag],
        container: &str,
    ) -> Result<NewRevision, TaskDefError> {
        let image = current
            .container_definitions()
            .iter()
            .find(|c| c.name() == Some(container))
            .and_then(|c| c.image())
            .ok_or_else(|| TaskDefError::NoImage {
                container: container.to_owned(),
            })?;
        let new_image = ImageRef::parse(image).map_err(|error| TaskDefError::CurrentImage {
            container: container.to_owned(),
            error,
        })?;
        Ok(NewRevision {
            base: current.clone(),
            tags: tags.to_vec(),
            container: container.to_owned(),
            old_image: image.to_owned(),
            new_image,
            notes: vec![],
        })
    }

    /// The image the container had.
    pub fn old_image(&self) -> &str {
        &self.old_image
    }

    /// The image the container gets.
    pub fn new_image(&self) -> &str {
        self.new_image.as_str()
    }

    /// False when the new image string equals the old one (a redeploy of the same reference).
    pub fn image_changed(&self) -> bool {
        self.old_image != self.new_image.as_str()
    }

    /// The container whose image changes.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The task definition family.
    pub fn family(&self) -> Option<&str> {
        self.base.family.as_deref()
    }

    /// The tags the new revision is registered with.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Applies every carried field to the SDK's fluent builder.
    // `inference_accelerators` is deprecated (Elastic Inference is retired) but still
    // accepted: a task definition that has them keeps them.
    #[allow(deprecated)]
    pub fn apply(
        self,
        b: RegisterTaskDefinitionFluentBuilder,
    ) -> RegisterTaskDefinitionFluentBuilder {
        // Every known field is named so that this list reads against READ_ONLY_FIELDS and
        // CARRIED_FIELDS; `..` is forced by `#[non_exhaustive]`, and fields added to the SDK
        // later are caught by the tests instead.
        let TaskDefinition {
            task_definition_arn: _,
            revision: _,
            status: _,
            requires_attributes: _,
            compatibilities: _,
            registered_at: _,
            registered_by: _,
            deregistered_at: _,
            delete_requested_at: _,
            family,
            task_role_arn,
            execution_role_arn,
            network_mode,
            container_definitions,
            volumes,
            placement_constraints,
            requires_compatibilities,
            cpu,
            memory,
            pid_mode,
            ipc_mode,
            proxy_configuration,
            inference_accelerators,
            ephemeral_storage,
            runtime_platform,
            enable_fault_injection,
            ..
        } = self.base;
        b.set_family(family)
            .set_task_role_arn(task_role_arn)
            .set_execution_role_arn(execution_role_arn)
            .set_network_mode(network_mode)
            .set_container_definitions(container_definitions)
            .set_volumes(volumes)
            .set_placement_constraints(placement_constraints)
            .set_requires_compatibilities(requires_compatibilities)
            .set_cpu(cpu)
            .set_memory(memory)
            .set_tags(Some(self.tags))
            .set_pid_mode(pid_mode)
            .set_ipc_mode(ipc_mode)
            .set_proxy_configuration(proxy_configuration)
            .set_inference_accelerators(inference_accelerators)
            .set_ephemeral_storage(ephemeral_storage)
            .set_runtime_platform(runtime_platform)
            .set_enable_fault_injection(enable_fault_injection)
    }
}

/// `tags` in their order with every `Version` tag's value replaced, or `Version` appended.
fn with_version(tags: &[Tag], version: &str) -> Vec<Tag> {
    let mut out = tags.to_vec();
    let mut found = false;
    for tag in &mut out {
        if tag.key.as_deref() == Some(VERSION_TAG_KEY) {
            tag.value = Some(version.to_owned());
            found = true;
        }
    }
    if !found {
        out.push(Tag::builder().key(VERSION_TAG_KEY).value(version).build());
    }
    out
}

#[cfg(test)]
#[allow(deprecated)] // InferenceAccelerator, to fill every field
mod tests {
    use std::collections::BTreeSet;

    use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionInput;
    use aws_sdk_ecs::types::{
        Attribute, Compatibility, ContainerDefinition, CpuArchitecture, EphemeralStorage,
        HealthCheck, HostVolumeProperties, InferenceAccelerator, IpcMode, KeyValuePair,
        LogConfiguration, LogDriver, NetworkMode, OsFamily, PidMode, PortMapping,
        ProxyConfiguration, ProxyConfigurationType, RuntimePlatform, Secret,
        TaskDefinitionPlacementConstraint, TaskDefinitionPlacementConstraintType,
        TaskDefinitionStatus, TransportProtocol, Volume,
    };

    use super::*;

    const OLD_WEB: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:1111111";
    const NEW_WEB: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:2222222";

    /// Top-level field names and the start of their values, from `{:#?}` output.
    fn top_level_fields(pretty_debug: &str) -> Vec<(String, String)> {
        pretty_debug
            .lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn names(pretty_debug: &str) -> BTreeSet<String> {
        top_level_fields(pretty_debug)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn field_lists_are_disjoint_and_unique() {
        assert_eq!(set(READ_ONLY_FIELDS).len(), READ_ONLY_FIELDS.len());
        assert_eq!(set(CARRIED_FIELDS).len(), CARRIED_FIELDS.len());
        assert!(set(READ_ONLY_FIELDS).is_disjoint(&set(CARRIED_FIELDS)));
    }

    /// Fails when the SDK's `TaskDefinition` gains a field that is not classified.
    #[test]
    fn task_definition_fields_are_all_classified() {
        let described = names(&format!("{:#?}", TaskDefinition::builder().build()));
        // Tags are not part of `TaskDefinition`; DescribeTaskDefinition returns them beside it.
        let mut expected: BTreeSet<String> = set(READ_ONLY_FIELDS)
            .union(&set(CARRIED_FIELDS))
            .cloned()
            .collect();
        expected.remove("tags");
        let unclassified: Vec<_> = described.difference(&expected).collect();
        let unknown: Vec<_> = expected.difference(&described).collect();
        assert!(
            unclassified.is_empty() && unknown.is_empty(),
            "TaskDefinition fields not in READ_ONLY_FIELDS or CARRIED_FIELDS: {unclassified:?}; \
             listed but not in TaskDefinition: {unknown:?}"
        );
    }

    /// Fails when `RegisterTaskDefinition` accepts a field that is not carried.
    #[test]
    fn register_input_fields_are_all_carried() {
        let input = RegisterTaskDefinitionInput::builder().build().unwrap();
        let accepted = names(&format!("{input:#?}"));
        let carried = set(CARRIED_FIELDS);
        let not_carried: Vec<_> = accepted.difference(&carried).collect();
        let unknown: Vec<_> = carried.difference(&accepted).collect();
        assert!(
            not_carried.is_empty() && unknown.is_empty(),
            "RegisterTaskDefinitionInput fields not carried: {not_carried:?}; \
             carried but not accepted: {unknown:?}"
        );
    }

    fn tag(key: &str, value: &str) -> Tag {
        Tag::builder().key(key).value(value).build()
    }

    fn env(name: &str, value: &str) -> KeyValuePair {
        KeyValuePair::builder().name(name).value(value).build()
    }

    fn web() -> ContainerDefinition {
        ContainerDefinition::builder()
            .name("web")
            .image(OLD_WEB)
            .cpu(256)
            .memory(512)
            .memory_reservation(256)
            .essential(true)
            .command("serve")
            .command("--port=8080")
            .environment(env("RUST_LOG", "info"))
            .environment(env("EMPTY", ""))
            .environment(KeyValuePair::builder().name("NO_VALUE").build())
            .secrets(
                Secret::builder()
                    .name("DB_PASSWORD")
                    .value_from("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db")
                    .build()
                    .unwrap(),
            )
            .port_mappings(
                PortMapping::builder()
                    .container_port(8080)
                    .host_port(8080)
                    .protocol(TransportProtocol::Tcp)
                    .name("http")
                    .build(),
            )
            .health_check(
                HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("curl -f http://localhost:8080/health || exit 1")
                    .interval(10)
                    .retries(3)
                    .build()
                    .unwrap(),
            )
            .log_configuration(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", "/ecs/web")
                    .options("awslogs-region", "eu-west-1")
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn sidecar() -> ContainerDefinition {
        ContainerDefinition::builder()
            .name("envoy")
            .image("public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29.6.0-prod")
            .memory(128)
            .essential(true)
            .environment(env("APPMESH_VIRTUAL_NODE_NAME", "mesh/app/virtualNode/web"))
            .environment(env("ENVOY_LOG_LEVEL", ""))
            .build()
    }

    /// Every field set, read-only ones included.
    fn current() -> TaskDefinition {
        TaskDefinition::builder()
            .task_definition_arn("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7")
            .revision(7)
            .status(TaskDefinitionStatus::Active)
            .requires_attributes(
                Attribute::builder()
                    .name("ecs.capability.task-eni")
                    .build()
                    .unwrap(),
            )
            .compatibilities(Compatibility::Ec2)
            .compatibilities(Compatibility::Fargate)
            .registered_at(aws_smithy_types::DateTime::from_secs(1_700_000_000))
            .registered_by("arn:aws:iam::123456789012:role/deployer")
            .deregistered_at(aws_smithy_types::DateTime::from_secs(1_700_000_100))
            .delete_requested_at(aws_smithy_types::DateTime::from_secs(1_700_000_200))
            .family("web")
            .task_role_arn("arn:aws:iam::123456789012:role/web-task")
            .execution_role_arn("arn:aws:iam::123456789012:role/web-exec")
            .network_mode(NetworkMode::Awsvpc)
            .container_definitions(web())
            .container_definitions(sidecar())
            .volumes(
                Volume::builder()
                    .name("scratch")
                    .host(HostVolumeProperties::builder().source_path("/tmp").build())
                    .build(),
            )
            .placement_constraints(
                TaskDefinitionPlacementConstraint::builder()
                    .r#type(TaskDefinitionPlacementConstraintType::MemberOf)
                    .expression("attribute:ecs.availability-zone in [eu-west-1a]")
                    .build(),
            )
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("512")
            .memory("1024")
            .pid_mode(PidMode::Task)
            .ipc_mode(IpcMode::None)
            .proxy_configuration(
                ProxyConfiguration::builder()
                    .r#type(ProxyConfigurationType::Appmesh)
                    .container_name("envoy")
                    .properties(env("AppPorts", "8080"))
                    .properties(env("IgnoredUID", "1337"))
                    .build()
                    .unwrap(),
            )
            .inference_accelerators(
                InferenceAccelerator::builder()
                    .device_name("device1")
                    .device_type("eia2.medium")
                    .build()
                    .unwrap(),
            )
            .ephemeral_storage(EphemeralStorage::builder().size_in_gib(30).build())
            .runtime_platform(
                RuntimePlatform::builder()
                    .cpu_architecture(CpuArchitecture::Arm64)
                    .operating_system_family(OsFamily::Linux)
                    .build(),
            )
            .enable_fault_injection(true)
            .build()
    }

    fn client() -> aws_sdk_ecs::Client {
        let config = aws_sdk_ecs::Config::builder()
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .region(aws_sdk_ecs::config::Region::new("eu-west-1"))
            .build();
        aws_sdk_ecs::Client::from_conf(config)
    }

    fn register_input(revision: NewRevision) -> RegisterTaskDefinitionInput {
        revision
            .apply(client().register_task_definition())
            .as_input()
            .clone()
            .build()
            .unwrap()
    }

    #[test]
    fn carries_every_field_and_changes_only_image_and_version() {
        let current = current();
        let tags = vec![
            tag("team", "payments"),
            tag(VERSION_TAG_KEY, "1111111"),
            tag("empty", ""),
        ];
        let revision =
            NewRevision::from_current(&current, &tags, "web", NEW_WEB, "2222222").unwrap();
        assert_eq!(revision.old_image(), OLD_WEB);
        assert_eq!(revision.new_image(), NEW_WEB);
        assert_eq!(revision.container(), "web");
        assert_eq!(revision.family(), Some("web"));
        assert!(revision.image_changed());
        let input = register_input(revision);

        // The fixture sets every field, so nothing may come out empty.
        let debug = format!("{input:#?}");
        let fields = top_level_fields(&debug);
        assert_eq!(fields.len(), CARRIED_FIELDS.len());
        for (name, value) in &fields {
            assert!(
                value.starts_with("Some("),
                "{name} was not carried: {value}"
            );
        }

        let mut web = web();
        web.image = Some(NEW_WEB.to_owned());
        // PartialEq, not Debug: the SDK's Debug redacts `environment`.
        assert_eq!(input.container_definitions, Some(vec![web, sidecar()]));
        let env = input.container_definitions.as_ref().unwrap()[0].environment();
        assert_eq!(env[1].value.as_deref(), Some(""));
        assert_eq!(env[2].value, None);
        assert_eq!(
            input.tags,
            Some(vec![
                tag("team", "payments"),
                tag(VERSION_TAG_KEY, "2222222"),
                tag("empty", ""),
            ])
        );
        assert_eq!(input.family, current.family);
        assert_eq!(input.task_role_arn, current.task_role_arn);
        assert_eq!(input.execution_role_arn, current.execution_role_arn);
        assert_eq!(input.network_mode, current.network_mode);
        assert_eq!(input.volumes, current.volumes);
        assert_eq!(input.placement_constraints, current.placement_constraints);
        assert_eq!(
            input.requires_compatibilities,
            current.requires_compatibilities
        );
        assert_eq!(input.cpu, current.cpu);
        assert_eq!(input.memory, current.memory);
        assert_eq!(input.pid_mode, current.pid_mode);
        assert_eq!(input.ipc_mode, current.ipc_mode);
        assert_eq!(input.proxy_configuration, current.proxy_configuration);
        assert_eq!(input.inference_accelerators, current.inference_accelerators);
        assert_eq!(input.ephemeral_storage, current.ephemeral_storage);
        assert_eq!(input.runtime_platform, current.runtime_platform);
        assert_eq!(input.enable_fault_injection, current.enable_fault_injection);
    }

    #[test]
    fn every_carried_field_matches_by_debug() {
        // Independent of the field-by-field list above: the Debug of each carried field in the
        // input equals that of the same field in the task definition, except the two changes.
        let current = current();
        let revision = NewRevision::from_current(&current, &[], "envoy", "envoy:v2", "v2").unwrap();
        let input = register_input(revision);
        let mut expected = current.clone();
        expected.container_definitions.as_mut().unwrap()[1].image = Some("envoy:v2".into());
        let described: std::collections::BTreeMap<_, _> =
            top_level_fields(&format!("{expected:#?}"))
                .into_iter()
                .collect();
        let registered = top_level_fields(&format!("{input:#?}"));
        for (name, value) in &registered {
            if name == "tags" {
                continue;
            }
            assert_eq!(described.get(name), Some(value), "{name}");
        }
        assert_eq!(input.container_definitions, expected.container_definitions);
        assert_eq!(input.tags, Some(vec![tag(VERSION_TAG_KEY, "v2")]));
    }

    #[test]
    fn unset_fields_stay_unset() {
        let current = TaskDefinition::builder()
            .family("bare")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .image("app:1")
                    .build(),
            )
            .build();
        let input =
            register_input(NewRevision::from_current(&current, &[], "app", "app:2", "2").unwrap());
        assert_eq!(input.family.as_deref(), Some("bare"));
        assert_eq!(input.cpu, None);
        assert_eq!(input.pid_mode, None);
        assert_eq!(input.volumes, None);
        assert_eq!(input.enable_fault_injection, None);
        assert_eq!(input.tags, Some(vec![tag(VERSION_TAG_KEY, "2")]));
        assert_eq!(
            input.container_definitions.unwrap()[0].image.as_deref(),
            Some("app:2")
        );
    }

    #[test]
    fn same_image_is_reported_unchanged() {
        let revision = NewRevision::from_current(&current(), &[], "web", OLD_WEB, "again").unwrap();
        assert!(!revision.image_changed());
    }

    #[test]
    fn container_not_found_lists_available_containers() {
        let err = NewRevision::from_current(&current(), &[], "api", NEW_WEB, "2").unwrap_err();
        assert_eq!(
            err,
            TaskDefError::ContainerNotFound {
                container: "api".into(),
                available: vec!["web".into(), "envoy".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            "container \"api\" not found in the task definition (containers: web, envoy)"
        );
        let empty = TaskDefinition::builder().family("x").build();
        assert_eq!(
            NewRevision::from_current(&empty, &[], "web", NEW_WEB, "2").unwrap_err(),
            TaskDefError::ContainerNotFound {
                container: "web".into(),
                available: vec![],
            }
        );
    }

    #[test]
    fn image_errors() {
        let mut current = current();
        let no_image = NewRevision::from_current(
            &TaskDefinition::builder()
                .container_definitions(ContainerDefinition::builder().name("web").build())
                .build(),
            &[],
            "web",
            NEW_WEB,
            "2",
        );
        assert_eq!(
            no_image.unwrap_err(),
            TaskDefError::NoImage {
                container: "web".into()
            }
        );

        let bad_new = NewRevision::from_current(&current, &[], "web", "web::2", "2").unwrap_err();
        assert!(
            matches!(bad_new, TaskDefError::NewImage { .. }),
            "{bad_new:?}"
        );
        assert!(bad_new.to_string().contains("\"web::2\""), "{bad_new}");

        current.container_definitions.as_mut().unwrap()[0].image = Some("Web:1".into());
        // The current image is only informational: one slipway cannot parse does not block.
        let odd_old = NewRevision::from_current(&current, &[], "web", NEW_WEB, "2").unwrap();
        assert_eq!(odd_old.old_image(), "Web:1");
        assert_eq!(odd_old.new_image(), NEW_WEB);
    }

    #[test]
    fn version_tag_is_validated() {
        for value in [String::new(), "v".repeat(257)] {
            assert_eq!(
                NewRevision::from_current(&current(), &[], "web", NEW_WEB, &value).unwrap_err(),
                TaskDefError::VersionTag { value }
            );
        }
    }

    #[test]
    fn version_tag_replaced_in_place_or_appended() {
        let tags = [
            tag("a", "1"),
            tag("Version", "old"),
            tag("version", "lower"),
        ];
        assert_eq!(
            with_version(&tags, "new"),
            vec![
                tag("a", "1"),
                tag("Version", "new"),
                tag("version", "lower")
            ]
        );
        assert_eq!(
            with_version(&[tag("a", "1")], "new"),
            vec![tag("a", "1"), tag("Version", "new")]
        );
    }
}
