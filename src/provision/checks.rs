//! What the user owns (CodeBuild projects, ECR repositories, clusters, services, task
//! definitions): looked at, never changed; every problem reported in the same run.

use std::collections::BTreeMap;

use super::*;
use crate::accounts::Accounts;

// What the user owns: looked at, never changed.

pub(super) fn check_config(config: &Config, report: &mut Report) {
    let Some(configured) = &config.queue_url else {
        return;
    };
    let name = &config.provision.queue_name;
    if configured
        .trim_end_matches('/')
        .ends_with(&format!("/{name}"))
    {
        report.push(
            Kind::Config,
            "queue_url",
            Status::Ok,
            format!("names queue {name}"),
        );
    } else {
        report.push(
            Kind::Config,
            "queue_url",
            Status::Warning,
            format!(
                "{configured} is not the queue provision manages ({name}): slipway would read a queue the rule does not feed, and deploys would wait for the reconciler"
            ),
        );
    }
}

/// `owner/name` (lowercase) of a GitHub repository URL: `https://github.com/o/n(.git)`,
/// `git@github.com:o/n.git`, … Other hosts give None.
pub fn github_repository(location: &str) -> Option<String> {
    let lower = location.trim().to_ascii_lowercase();
    let start = lower
        .find("github.com/")
        .or_else(|| lower.find("github.com:"))?
        + "github.com/".len();
    let mut parts = lower[start..].split(['/', '?', '#']);
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    Some(format!("{owner}/{name}"))
}

pub(super) async fn check_projects(config: &Config, aws: &Clients, report: &mut Report) {
    let names: Vec<String> = config
        .apps
        .iter()
        .filter_map(|a| a.codebuild_project.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = HashMap::new();
    let mut failed = BTreeSet::new();
    for chunk in names.chunks(100) {
        match aws
            .codebuild
            .batch_get_projects()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(out) => {
                for project in out.projects() {
                    if let Some(name) = project.name() {
                        found.insert(name.to_owned(), project.clone());
                    }
                }
            }
            Err(e) => {
                let e = AwsError::from_sdk("CodeBuild BatchGetProjects", &e);
                for name in chunk {
                    report.push(Kind::CodebuildProject, name, Status::Error, &e.message);
                    failed.insert(name.clone());
                }
            }
        }
    }
    for app in &config.apps {
        // A promoted app never builds.
        let Some(name) = &app.codebuild_project else {
            continue;
        };
        if failed.contains(name) {
            continue;
        }
        let Some(project) = found.get(name) else {
            report.push_app(
                app,
                Kind::CodebuildProject,
                name,
                Status::Missing,
                "not found in CodeBuild",
            );
            continue;
        };
        let wanted = app.repository.to_ascii_lowercase();
        let source = project.source();
        let location = source.and_then(|s| s.location()).unwrap_or("");
        match github_repository(location) {
            Some(repo) if repo == wanted => report.push_app(
                app,
                Kind::CodebuildProject,
                name,
                Status::Ok,
                format!("builds github.com/{}", app.repository),
            ),
            _ => {
                let what = match (source.map(|s| s.r#type().as_str()), location) {
                    (Some(kind), "") => format!("{kind} source"),
                    (_, location) => location.to_owned(),
                };
                report.push_app(
                    app,
                    Kind::CodebuildProject,
                    name,
                    Status::Warning,
                    format!("builds {what}, not github.com/{}", app.repository),
                );
            }
        }
    }
}

/// Each app's repository, in its account (an app with `role_arn`: through its role); for a
/// promoted app in another account than the one holding its images, whether that account can
/// see them (the repository policy `provision --policy` prints).
pub(super) async fn check_repositories(
    config: &Config,
    aws: &Clients,
    accounts: &Accounts,
    report: &mut Report,
) {
    let mut seen: HashMap<(Option<&str>, &str), (Status, String)> = HashMap::new();
    let mut own_account: Option<Option<String>> = None;
    for app in &config.apps {
        if !config.images_elsewhere(app) {
            let repo = app.ecr_repository.as_str();
            let key = (app.role.as_ref().map(|r| r.arn.as_str()), repo);
            let outcome = match seen.get(&key) {
                Some(known) => known.clone(),
                None => {
                    let outcome = repository_in(&accounts.of(app).ecr, repo).await;
                    seen.insert(key, outcome.clone());
                    outcome
                }
            };
            report.push_app(app, Kind::EcrRepository, repo, outcome.0, outcome.1);
            continue;
        }
        // A promoted app in another account than the one holding its images: can it see them?
        let source = config.builder_of(app);
        let holder = match &source.role {
            Some(r) => Some(r.account.clone()),
            None => own_account
                .get_or_insert(
                    aws.sts
                        .get_caller_identity()
                        .send()
                        .await
                        .ok()
                        .and_then(|me| me.account().map(str::to_owned)),
                )
                .clone(),
        };
        let who = match &app.role {
            Some(r) => format!("account {}", r.account),
            None => "slipway's account".to_owned(),
        };
        let Some(holder) = holder else {
            report.push_app(
                app,
                Kind::EcrRepository,
                &source.ecr_repository,
                Status::Error,
                "cannot tell slipway's account (STS GetCallerIdentity failed): which registry \
                 holds the images it promotes is not known"
                    .to_owned(),
            );
            continue;
        };
        let name = format!("{holder}/{}", source.ecr_repository);
        let clients = accounts.of(app);
        if let Err(e) = clients.check_role().await {
            report.push_app(
                app,
                Kind::EcrRepository,
                &name,
                Status::Error,
                e.to_string(),
            );
            continue;
        }
        let seen_from = clients
            .ecr
            .describe_images()
            .registry_id(&holder)
            .repository_name(&source.ecr_repository)
            .max_results(1)
            .send()
            .await;
        let (status, detail) = match seen_from {
            Ok(_) => (Status::Ok, format!("{who} can see the images it promotes")),
            Err(e) => (
                Status::Error,
                format!(
                    "{who} cannot see the images it promotes ({}): the repository {} of \
                     account {holder} needs the repository policy `slipway provision --policy` \
                     prints",
                    AwsError::from_sdk("ECR DescribeImages", &e).message,
                    source.ecr_repository
                ),
            ),
        };
        report.push_app(app, Kind::EcrRepository, &name, status, detail);
    }
}

/// Whether `repo` is in the registry `ecr` reaches.
async fn repository_in(ecr: &aws_sdk_ecr::Client, repo: &str) -> (Status, String) {
    let result = ecr
        .describe_repositories()
        .repository_names(repo)
        .send()
        .await;
    match result {
        Ok(out) => match out.repositories().first().and_then(|r| r.repository_uri()) {
            Some(uri) => (Status::Ok, uri.to_owned()),
            None => (Status::Missing, "not found in ECR".to_owned()),
        },
        Err(e) => {
            let not_found = e
                .as_service_error()
                .is_some_and(|s| s.is_repository_not_found_exception());
            let err = AwsError::from_sdk("ECR DescribeRepositories", &e);
            if not_found || err.code.as_deref() == Some("RepositoryNotFoundException") {
                (Status::Missing, "not found in ECR".to_owned())
            } else {
                (Status::Error, err.message)
            }
        }
    }
}

/// Clusters and services, in each app's account (apps with `role_arn`: through their role).
pub(super) async fn check_ecs(config: &Config, accounts: &Accounts, report: &mut Report) {
    let mut by_account: BTreeMap<Option<&str>, Vec<&AppConfig>> = BTreeMap::new();
    for app in &config.apps {
        by_account
            .entry(app.role.as_ref().map(|r| r.arn.as_str()))
            .or_default()
            .push(app);
    }
    for apps in by_account.into_values() {
        let clients = accounts.of(apps[0]);
        if let Err(e) = clients.check_role().await {
            for app in apps {
                report.push_app(
                    app,
                    Kind::Cluster,
                    &app.cluster,
                    Status::Error,
                    e.to_string(),
                );
            }
            continue;
        }
        check_ecs_of(&apps, &clients.ecs, report).await;
    }
}

async fn check_ecs_of(apps: &[&AppConfig], ecs: &aws_sdk_ecs::Client, report: &mut Report) {
    // Clusters, all in one call (100 at a time).
    let clusters: Vec<String> = apps
        .iter()
        .map(|a| a.cluster.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut cluster_state: HashMap<String, (Status, String)> = HashMap::new();
    for chunk in clusters.chunks(100) {
        match ecs
            .describe_clusters()
            .set_clusters(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(out) => {
                for c in out.clusters() {
                    let name = c.cluster_name().unwrap_or_default().to_owned();
                    let state = match c.status() {
                        Some("ACTIVE") => (Status::Ok, "ACTIVE".to_owned()),
                        other => (
                            Status::Missing,
                            format!("status {}, not ACTIVE", other.unwrap_or("unknown")),
                        ),
                    };
                    cluster_state.insert(name, state);
                }
                for f in out.failures() {
                    let name = last_segment(f.arn().unwrap_or_default()).to_owned();
                    let reason = f.reason().unwrap_or("MISSING");
                    cluster_state.insert(name, (Status::Missing, format!("not found ({reason})")));
                }
            }
            Err(e) => {
                let e = AwsError::from_sdk("ECS DescribeClusters", &e);
                for name in chunk {
                    cluster_state.insert(name.clone(), (Status::Error, e.message.clone()));
                }
            }
        }
    }
    for app in apps {
        let (status, detail) = cluster_state
            .get(last_segment(&app.cluster))
            .cloned()
            .unwrap_or((Status::Missing, "not found".to_owned()));
        report.push_app(app, Kind::Cluster, &app.cluster, status, detail);
        if status == Status::Ok {
            check_service(app, ecs, report).await;
        }
    }
}

pub(super) async fn check_service(app: &AppConfig, ecs: &aws_sdk_ecs::Client, report: &mut Report) {
    let name = app.service_key();
    let out = match ecs
        .describe_services()
        .cluster(&app.cluster)
        .services(&app.service)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let e = AwsError::from_sdk("ECS DescribeServices", &e);
            report.push_app(app, Kind::Service, &name, Status::Error, e.message);
            return;
        }
    };
    let Some(service) = out.services().first() else {
        let reason = out
            .failures()
            .first()
            .and_then(|f| f.reason())
            .unwrap_or("MISSING");
        report.push_app(
            app,
            Kind::Service,
            &name,
            Status::Missing,
            format!("not found in cluster {} ({reason})", app.cluster),
        );
        return;
    };
    let task_definition = service.task_definition().unwrap_or_default();
    let revision = last_segment(task_definition);
    let controller = service
        .deployment_controller()
        .map(|c| c.r#type())
        .map(|t| t.as_str().to_owned());
    match service.status() {
        Some("ACTIVE") if controller.as_deref().is_some_and(|c| c != "ECS") => {
            report.push_app(
                app,
                Kind::Service,
                &name,
                Status::Missing,
                format!(
                    "deployment controller {}: slipway deploys with UpdateService, which needs the ECS controller",
                    controller.unwrap_or_default()
                ),
            );
            return;
        }
        Some("ACTIVE") => report.push_app(
            app,
            Kind::Service,
            &name,
            Status::Ok,
            format!("ACTIVE, runs {revision}"),
        ),
        other => {
            report.push_app(
                app,
                Kind::Service,
                &name,
                Status::Missing,
                format!("status {}, not ACTIVE", other.unwrap_or("unknown")),
            );
            return;
        }
    }

    // The container slipway swaps the image of, in the task definition the service runs.
    match ecs
        .describe_task_definition()
        .task_definition(task_definition)
        .send()
        .await
    {
        Ok(out) => {
            let containers: Vec<&str> = out
                .task_definition()
                .map(|t| t.container_definitions())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.name())
                .collect();
            for wanted in &app.containers {
                if containers.contains(&wanted.as_str()) {
                    report.push_app(
                        app,
                        Kind::Container,
                        wanted,
                        Status::Ok,
                        format!("in {revision}"),
                    );
                } else {
                    report.push_app(
                        app,
                        Kind::Container,
                        wanted,
                        Status::Missing,
                        format!(
                            "not in {revision}, which has: {}",
                            if containers.is_empty() {
                                "no containers".to_owned()
                            } else {
                                containers.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        Err(e) => {
            let e = AwsError::from_sdk("ECS DescribeTaskDefinition", &e);
            report.push_app(
                app,
                Kind::Container,
                &app.container,
                Status::Error,
                e.message,
            );
        }
    }

    let breaker = service
        .deployment_configuration()
        .and_then(|d| d.deployment_circuit_breaker());
    let timeout = app.rollout_timeout.as_secs();
    let timeout = if timeout.is_multiple_of(60) {
        format!("{} min", timeout / 60)
    } else {
        format!("{timeout} s")
    };
    let (status, detail) = match breaker {
        Some(b) if b.enable() && b.rollback() => (Status::Ok, "enabled, with rollback".to_owned()),
        Some(b) if b.enable() => (
            Status::Warning,
            format!("on without rollback: ECS stops a failing deploy, slipway rolls back itself (timeout {timeout})"),
        ),
        _ => (
            Status::Warning,
            format!("off: ECS retries failing tasks; a bad deploy ends at slipway's {timeout} rollout timeout, then slipway rolls back"),
        ),
    };
    report.push_app(app, Kind::CircuitBreaker, &name, status, detail);
}
