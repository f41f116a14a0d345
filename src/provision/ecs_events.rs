//! Routing ECS's service deployment events into slipway's queue (issue 22, item 9).
//!
//! ECS sends `ECS Deployment State Change` events (source `aws.ecs`, the service's ARN in
//! `resources`) to EventBridge's default bus. slipway's one rule carries them alongside
//! CodeBuild's final build states, through EventBridge's `$or`, for the configured services
//! only (`suffix` matching on `…:service/<cluster>/<service>`). One rule keeps the queue
//! policy (only this rule may send) and the provisioning policy as they are.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::events::ecs::{DETAIL_TYPE, SOURCE};

/// The pattern of ECS deployment events for these services (`cluster/service`).
pub fn deployment_events(services: &[String]) -> Option<Value> {
    let services: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    if services.is_empty() {
        return None;
    }
    let suffixes: Vec<Value> = services
        .iter()
        .map(|s| json!({ "suffix": format!(":service/{s}") }))
        .collect();
    Some(json!({
        "source": [SOURCE],
        "detail-type": [DETAIL_TYPE],
        "resources": suffixes,
    }))
}

/// The rule's pattern: CodeBuild's (`codebuild`) or the services' ECS deployment events.
pub fn rule_pattern(codebuild: Value, services: &[String]) -> Value {
    match deployment_events(services) {
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
        assert_eq!(rule_pattern(codebuild.clone(), &[]), codebuild);
        let p = rule_pattern(
            codebuild.clone(),
            &["main/web".into(), "main/api".into(), "main/web".into()],
        );
        assert_eq!(p["$or"][0], codebuild);
        assert_eq!(
            p["$or"][1],
            json!({
                "source": ["aws.ecs"],
                "detail-type": ["ECS Deployment State Change"],
                "resources": [{"suffix": ":service/main/api"}, {"suffix": ":service/main/web"}],
            })
        );
    }
}
