//! `slipway init`: a commented slipway.toml written from a real ECS service, for a user moving
//! from CodePipeline (as ecspresso's `init` does for its own config).
//!
//! Reads the service, its task definition (the container whose image lives in ECR gives the
//! container name and the ECR repository) and the CodeBuild projects (the one building the
//! GitHub repository, or the one named like the service).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context};

use crate::aws::{AwsError, Clients};
use crate::image::ImageRef;

/// What `init` found, before it is written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub cluster: String,
    pub service: String,
    pub task_definition: String,
    pub container: String,
    pub ecr_repository: String,
    /// Other containers of the task definition, for the comment.
    pub other_containers: Vec<String>,
    pub repository: Option<String>,
    pub codebuild_project: Option<String>,
    /// Why the project was chosen (or why none was).
    pub project_note: String,
}

pub async fn command(
    aws: &Clients,
    cluster: &str,
    service: &str,
    repository: Option<&str>,
    output: &Path,
    force: bool,
) -> anyhow::Result<()> {
    if output.exists() && !force {
        bail!(
            "{} exists; give another --output or --force to overwrite it",
            output.display()
        );
    }
    let found = discover(aws, cluster, service, repository).await?;
    let text = render(&found);
    std::fs::write(output, &text).with_context(|| format!("writing {}", output.display()))?;
    println!("wrote {}", output.display());
    if found.codebuild_project.is_none() || found.repository.is_none() {
        println!("fill in the values marked TODO, then run `slipway check-config --aws`");
    } else {
        println!(
            "next: `slipway check-config --aws --config {}`",
            output.display()
        );
    }
    Ok(())
}

pub async fn discover(
    aws: &Clients,
    cluster: &str,
    service: &str,
    repository: Option<&str>,
) -> anyhow::Result<Found> {
    let out = aws
        .ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .map_err(|e| anyhow!(AwsError::from_sdk("ECS DescribeServices", &e)))?;
    let svc = out
        .services()
        .iter()
        .find(|s| s.status() != Some("INACTIVE"))
        .ok_or_else(|| anyhow!("no service {service} in cluster {cluster}"))?;
    let task_definition = svc
        .task_definition()
        .ok_or_else(|| anyhow!("service {service} has no task definition"))?
        .to_owned();
    let td = aws
        .ecs
        .describe_task_definition()
        .task_definition(&task_definition)
        .send()
        .await
        .map_err(|e| anyhow!(AwsError::from_sdk("ECS DescribeTaskDefinition", &e)))?;
    let containers = td
        .task_definition()
        .map(|t| t.container_definitions())
        .unwrap_or_default();
    // The container slipway deploys: the first one whose image is in ECR.
    let (container, ecr_repository) = containers
        .iter()
        .find_map(|c| {
            let image = ImageRef::parse(c.image()?).ok()?;
            let name = c.name()?;
            image
                .registry()?
                .contains(".dkr.ecr.")
                .then(|| (name.to_owned(), image.repository().to_owned()))
        })
        .ok_or_else(|| {
            anyhow!("no container of {task_definition} runs an image from ECR; slipway deploys ECR images")
        })?;
    let other_containers = containers
        .iter()
        .filter_map(|c| c.name())
        .filter(|n| *n != container)
        .map(str::to_owned)
        .collect();

    let (codebuild_project, found_repository, project_note) =
        choose_project(aws, service, &ecr_repository, repository).await?;
    Ok(Found {
        cluster: cluster.to_owned(),
        service: service.to_owned(),
        task_definition,
        container,
        ecr_repository,
        other_containers,
        repository: repository.map(str::to_lowercase).or(found_repository),
        codebuild_project,
        project_note,
    })
}

/// The CodeBuild project that builds this service: the one whose GitHub source is
/// `repository` when given, else the one named like the service or its ECR repository.
async fn choose_project(
    aws: &Clients,
    service: &str,
    ecr_repository: &str,
    repository: Option<&str>,
) -> anyhow::Result<(Option<String>, Option<String>, String)> {
    let mut names = Vec::new();
    let mut pages = aws.codebuild.list_projects().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow!(AwsError::from_sdk("CodeBuild ListProjects", &e)))?;
        names.extend(page.projects().iter().cloned());
    }
    let mut projects = Vec::new();
    for chunk in names.chunks(100) {
        let out = aws
            .codebuild
            .batch_get_projects()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| anyhow!(AwsError::from_sdk("CodeBuild BatchGetProjects", &e)))?;
        for p in out.projects() {
            let repo = p
                .source()
                .and_then(|s| s.location())
                .and_then(crate::provision::github_repository);
            projects.push((p.name().unwrap_or_default().to_owned(), repo));
        }
    }
    if let Some(wanted) = repository {
        let wanted = wanted.to_lowercase();
        let matching: Vec<&String> = projects
            .iter()
            .filter(|(_, r)| r.as_deref() == Some(wanted.as_str()))
            .map(|(n, _)| n)
            .collect();
        return Ok(match matching.as_slice() {
            [one] => (
                Some((*one).clone()),
                Some(wanted.clone()),
                format!("the CodeBuild project whose source is github.com/{wanted}"),
            ),
            [] => (
                None,
                Some(wanted.clone()),
                format!("no CodeBuild project has github.com/{wanted} as its source"),
            ),
            many => (
                Some(many[0].clone()),
                Some(wanted.clone()),
                format!(
                    "{} CodeBuild projects build github.com/{wanted} ({}); the first was taken",
                    many.len(),
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        });
    }
    let by_name = projects.iter().find(|(n, _)| {
        let n = n.to_lowercase();
        n == service.to_lowercase()
            || n.starts_with(&format!("{}-", service.to_lowercase()))
            || n.starts_with(&format!("{}-", ecr_repository.to_lowercase()))
    });
    Ok(match by_name {
        Some((name, repo)) => (
            Some(name.clone()),
            repo.clone(),
            format!("the CodeBuild project named like the service ({name})"),
        ),
        None => (
            None,
            None,
            "no CodeBuild project is named like the service; give --repository".to_owned(),
        ),
    })
}

/// TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The commented slipway.toml for what was found.
pub fn render(f: &Found) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# slipway.toml written by `slipway init --cluster {} --service {}`.\n\
         # Check it with `slipway check-config --aws`; the README's \"Moving from CodePipeline\"\n\
         # section lists the steps around it.\n",
        f.cluster, f.service
    );
    out.push_str(
        "# Where GitHub's webhooks arrive.\nlisten = \"0.0.0.0:8080\"\n\
         # The journal (SQLite): every push, build and deployment. Keep it on a disk that survives\n\
         # restarts.\nstate_dir = \"/var/lib/slipway\"\n\
         # queue_url is not needed: serve finds the queue `slipway provision` creates by its name\n\
         # ([provision] queue_name, slipway-events by default).\n\n",
    );
    let name = f.service.clone();
    let _ = writeln!(out, "[[app]]\nname = {}", quoted(&name));
    match &f.repository {
        Some(r) => {
            let _ = writeln!(
                out,
                "# The GitHub repository whose pushes deploy.\nrepository = {}",
                quoted(r)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# TODO: the GitHub repository whose pushes deploy (owner/name).\nrepository = \"owner/name\""
            );
        }
    }
    out.push_str("# Pushes to this branch deploy.\nbranch = \"main\"\n");
    let _ = writeln!(out, "# {}.", f.project_note);
    match &f.codebuild_project {
        Some(p) => {
            let _ = writeln!(out, "codebuild_project = {}", quoted(p));
        }
        None => {
            let _ = writeln!(out, "# TODO: the CodeBuild project that builds the image.\ncodebuild_project = \"TODO\"");
        }
    }
    let _ = writeln!(
        out,
        "# The service runs {}.\ncluster = {}\nservice = {}",
        f.task_definition,
        quoted(&f.cluster),
        quoted(&f.service)
    );
    if f.other_containers.is_empty() {
        out.push_str("# The container whose image slipway swaps (its image is in ECR).\n");
    } else {
        let _ = writeln!(
            out,
            "# The container whose image slipway swaps (its image is in ECR); the other containers\n\
             # ({}) keep theirs.",
            f.other_containers.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "container = {}\n# The build pushes the image here, tagged with the commit SHA.\necr_repository = {}",
        quoted(&f.container),
        quoted(&f.ecr_repository)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_file_is_a_valid_config_even_with_todos() {
        let mut found = Found {
            cluster: "prod".into(),
            service: "web".into(),
            task_definition: "arn:aws:ecs:eu-west-1:1:task-definition/web:7".into(),
            container: "app".into(),
            ecr_repository: "team/web".into(),
            other_containers: vec!["envoy".into()],
            repository: Some("octo-org/web".into()),
            codebuild_project: Some("web-build".into()),
            project_note: "the CodeBuild project named like the service (web-build)".into(),
        };
        let config = crate::config::Config::parse(&render(&found)).unwrap();
        let app = &config.apps[0];
        assert_eq!(
            (
                app.codebuild_project.as_deref().unwrap_or(""),
                app.ecr_repository.as_str()
            ),
            ("web-build", "team/web")
        );
        assert_eq!(app.container, "app");
        found.codebuild_project = None;
        found.repository = None;
        let text = render(&found);
        assert!(text.contains("TODO"), "{text}");
        crate::config::Config::parse(&text).unwrap();
    }
}
