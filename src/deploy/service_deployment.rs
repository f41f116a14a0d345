//! ECS's service deployment of a rollout, found the way ECS names it.
//!
//! A service deployment's id is an opaque string (`…:service-deployment/<cluster>/<service>/
//! NCWGC2ZR-taawPAYrIaU5`), unrelated to the `ecs-svc/…` id of the deployment it rolls out, and
//! a rollback by ECS makes no new service revision. So slipway never derives one id from the
//! other: it takes the ARN ECS names (`currentServiceDeployment` of UpdateService's answer) or
//! the service deployments ECS lists as created after the deploy started, and keeps one only
//! once its target service revision (DescribeServiceRevisions) runs our task definition.

use std::collections::HashMap;

use aws_sdk_ecs::types::{CreatedAt, ServiceDeployment};
use aws_smithy_types::DateTime;

use crate::aws::AwsError;

/// Slack for the clocks of slipway and ECS when asking for the service deployments created
/// after a deploy started.
const CLOCK_SLACK_MS: i64 = 60_000;
/// DescribeServiceRevisions takes at most 20 ARNs a call.
const REVISIONS_A_CALL: usize = 20;
/// Pages of ListServiceDeployments read at most while looking for ours.
const MAX_PAGES: usize = 5;

/// What is known about the rollout whose service deployment is looked for.
pub struct Wanted<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    /// The service deployment ECS named (`currentServiceDeployment`), to be confirmed.
    pub named: Option<&'a str>,
    /// When the deploy started (slipway's clock, ms).
    pub started_ms: i64,
    /// The task definition our rollout runs.
    pub to_td: &'a str,
}

/// Our service deployment, once confirmed: its ARN and, when it was read on the way, its state.
pub struct Found {
    pub arn: String,
    pub read: Option<ServiceDeployment>,
}

/// Finds our service deployment; `None` while ECS shows none that runs `to_td`.
pub async fn find(
    ecs: &aws_sdk_ecs::Client,
    wanted: &Wanted<'_>,
) -> Result<Option<Found>, AwsError> {
    if let Some(named) = wanted.named {
        if let Some(sd) = describe(ecs, named).await? {
            let target = sd
                .target_service_revision()
                .and_then(|t| t.arn())
                .map(str::to_owned);
            if let Some(target) = target {
                let runs = task_definitions(ecs, std::slice::from_ref(&target)).await?;
                if runs.get(&target).map(String::as_str) == Some(wanted.to_td) {
                    return Ok(Some(Found {
                        arn: named.to_owned(),
                        read: Some(sd),
                    }));
                }
            }
            tracing::info!(service_deployment = %named,
                "the service deployment ECS named does not run this deploy's revision; listing");
        }
    }
    let briefs = created_since(ecs, wanted).await?;
    let targets: Vec<String> = briefs.iter().map(|(_, t)| t.clone()).collect();
    let mut runs = HashMap::new();
    for chunk in targets.chunks(REVISIONS_A_CALL) {
        runs.extend(task_definitions(ecs, chunk).await?);
    }
    // Newest first, as ECS lists them.
    Ok(briefs
        .into_iter()
        .find(|(_, target)| runs.get(target).map(String::as_str) == Some(wanted.to_td))
        .map(|(arn, _)| Found { arn, read: None }))
}

/// The service deployments created since the deploy started (ARN, target revision ARN), newest
/// first, every page.
async fn created_since(
    ecs: &aws_sdk_ecs::Client,
    wanted: &Wanted<'_>,
) -> Result<Vec<(String, String)>, AwsError> {
    let after = DateTime::from_millis(wanted.started_ms - CLOCK_SLACK_MS);
    let mut out = vec![];
    let mut token = None;
    for _ in 0..MAX_PAGES {
        let page = ecs
            .list_service_deployments()
            .cluster(wanted.cluster)
            .service(wanted.service)
            .created_at(CreatedAt::builder().after(after).build())
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS ListServiceDeployments", &e))?;
        out.extend(page.service_deployments().iter().filter_map(|b| {
            Some((
                b.service_deployment_arn()?.to_owned(),
                b.target_service_revision_arn()?.to_owned(),
            ))
        }));
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(out)
}

/// Reads one service deployment by its ARN.
pub async fn describe(
    ecs: &aws_sdk_ecs::Client,
    arn: &str,
) -> Result<Option<ServiceDeployment>, AwsError> {
    let out = ecs
        .describe_service_deployments()
        .service_deployment_arns(arn)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ECS DescribeServiceDeployments", &e))?;
    Ok(out.service_deployments().first().cloned())
}

/// The task definition each service revision runs (unknown ones are left out).
async fn task_definitions(
    ecs: &aws_sdk_ecs::Client,
    revisions: &[String],
) -> Result<HashMap<String, String>, AwsError> {
    if revisions.is_empty() {
        return Ok(HashMap::new());
    }
    let out = ecs
        .describe_service_revisions()
        .set_service_revision_arns(Some(revisions.to_vec()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ECS DescribeServiceRevisions", &e))?;
    Ok(out
        .service_revisions()
        .iter()
        .filter_map(|r| {
            Some((
                r.service_revision_arn()?.to_owned(),
                r.task_definition()?.to_owned(),
            ))
        })
        .collect())
}

/// Asks ECS to stop our service deployment and roll it back to the previous service revision
/// (StopServiceDeployment, `stopType = ROLLBACK`).
pub async fn stop_and_roll_back(ecs: &aws_sdk_ecs::Client, arn: &str) -> Result<(), AwsError> {
    ecs.stop_service_deployment()
        .service_deployment_arn(arn)
        .stop_type(aws_sdk_ecs::types::StopServiceDeploymentStopType::Rollback)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ECS StopServiceDeployment", &e))?;
    Ok(())
}
