//! Routing ECS's service deployment events into slipway's queue (issue 22, item 9).
//!
//! ECS sends `ECS Deployment State Change` events (source `aws.ecs`, the service's ARN in
//! `resources`) to EventBridge's default bus. slipway's one rule carries them alongside
//! CodeBuild's final build states, through EventBridge's `$or`, for the configured services
//! only: their exact ARNs (`arn:…:ecs:<region>:<account>:service/<cluster>/<service>`, the
//! account and region of slipway's queue), as the CloudFormation template lists them from its
//! `EcsServiceArns`; `suffix` matching on `:service/<cluster>/<service>` only while the queue's
//! ARN is not known (a dry run in an empty account). One rule keeps the queue policy (only
//! this rule may send) and the provisioning policy as they are.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::events::ecs::{DETAIL_TYPE, SOURCE};

/// The pattern of ECS deployment events for these services (`cluster/service`): their ARNs
/// in the account and region of `queue_arn`, or ARN suffixes while it is not known.
pub fn deployment_events(services: &[String], queue_arn: Option<&str>) -> Option<Value> {
    let services: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    if services.is_empty() {
        return None;
    }
    let resources: Vec<Value> = services
        .iter()
        .map(|s| {
            let resource = format!("service/{s}");
            match queue_arn.and_then(|q| super::plumbing::sibling_arn(q, "ecs", &resource)) {
                Some(arn) => json!(arn),
                None => json!({ "suffix": format!(":{resource}") }),
            }
        })
        .collect();
    Some(json!({
        "source": [SOURCE],
        "detail-type": [DETAIL_TYPE],
        "resources": resources,
    }))
}

/// The rule's pattern: CodeBuild's (`codebuild`) or the services' ECS deployment events.
pub fn rule_pattern(codebuild: Value, services: &[String], queue_arn: Option<&str>) -> Value {
    match deployment_events(services, queue_arn) {
        Some(ecs) => json!({ "$or": [codebuild, ecs] }),
        None => codebuild,
    }
}

/// The `cluster/service` of every configured app, once each.
pub fn services(config: &crate::config::Config) -> Vec<String> {
    config
        .apps
        .iter()
        .map(|a| format!("{}/{}", a.cluster, a.service))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_carries_codebuild_or_the_services_deployment_events() {
        let codebuild = json!({ "source": ["aws.codebuild"] });
        assert_eq!(rule_pattern(codebuild.clone(), &[], None), codebuild);
        let services = ["main/web".into(), "main/api".into(), "main/web".into()];
        let p = rule_pattern(codebuild.clone(), &services, None);
        assert_eq!(p["$or"][0], codebuild);
        assert_eq!(
            p["$or"][1],
            json!({
                "source": ["aws.ecs"],
                "detail-type": ["ECS Deployment State Change"],
                "resources": [{"suffix": ":service/main/api"}, {"suffix": ":service/main/web"}],
            })
        );
        // Once the queue is known: the services' own ARNs, in its account and region.
        let queue = "arn:aws:sqs:eu-west-1:123456789012:slipway-events";
        let p = rule_pattern(codebuild, &services, Some(queue));
        assert_eq!(
            p["$or"][1]["resources"],
            json!([
                "arn:aws:ecs:eu-west-1:123456789012:service/main/api",
                "arn:aws:ecs:eu-west-1:123456789012:service/main/web",
            ])
        );
    }
}
