//! ECS's service deployment events (`ECS Deployment State Change`), routed by `slipway
//! provision` into the same queue as CodeBuild's.
//!
//! ECS sends `SERVICE_DEPLOYMENT_IN_PROGRESS`, `SERVICE_DEPLOYMENT_COMPLETED` and
//! `SERVICE_DEPLOYMENT_FAILED`, with the `deploymentId` (`ecs-svc/…`) that UpdateService
//! returned (Amazon ECS developer guide, "Amazon ECS service deployment state change events").
//! An event never decides a deploy by itself: it wakes the watch of that deployment, which looks
//! at ECS once (one Describe call) and judges by what ECS says. Events are believed only from
//! ECS (`aws.ecs`, a source callers of PutEvents cannot use) in slipway's account and region,
//! as CodeBuild's are; events for deployments slipway does not watch are recorded and ignored.

use aws_sdk_sqs::types::Message;
use serde::Deserialize;

use crate::store::{millis, RejectedEvent};

/// The only detail type handled here.
pub const DETAIL_TYPE: &str = "ECS Deployment State Change";
/// The only source believed.
pub const SOURCE: &str = "aws.ecs";

/// One `ECS Deployment State Change` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStateChange {
    pub source: String,
    pub account: String,
    pub region: String,
    /// The service's ARN (`resources[0]`).
    pub service_arn: Option<String>,
    /// `SERVICE_DEPLOYMENT_IN_PROGRESS` | `SERVICE_DEPLOYMENT_COMPLETED` | `SERVICE_DEPLOYMENT_FAILED`.
    pub event_name: String,
    pub deployment_id: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    resources: Vec<String>,
    detail: RawDetail,
}

#[derive(Deserialize)]
struct RawDetail {
    #[serde(rename = "eventName", default)]
    event_name: String,
    #[serde(rename = "deploymentId")]
    deployment_id: String,
}

impl DeploymentStateChange {
    /// Whether the event may say the rollout ended (COMPLETED, FAILED, or a name slipway does
    /// not know): the watch looks at once. `SERVICE_DEPLOYMENT_IN_PROGRESS` for our own
    /// deployment says only what the watch knows (ECS's rollback deployment has its own id,
    /// and ours gets FAILED): it is counted, so polling falls back to `poll_with_events_ms`.
    pub fn may_end_the_rollout(&self) -> bool {
        self.event_name != "SERVICE_DEPLOYMENT_IN_PROGRESS"
    }
}

/// Whether the message body is an ECS deployment event (the consumer's dispatch).
pub fn is_ecs_deployment_event(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v["detail-type"] == DETAIL_TYPE)
}

/// Parses an ECS deployment event.
pub fn parse(body: &str) -> Result<DeploymentStateChange, String> {
    let raw: Raw =
        serde_json::from_str(body).map_err(|e| format!("not an ECS deployment event: {e}"))?;
    if raw.detail_type != DETAIL_TYPE {
        return Err(format!(
            "detail-type {:?} is not {DETAIL_TYPE:?}",
            raw.detail_type
        ));
    }
    if raw.detail.deployment_id.is_empty() {
        return Err("the event names no deploymentId".into());
    }
    Ok(DeploymentStateChange {
        source: raw.source,
        account: raw.account,
        region: raw.region,
        service_arn: raw.resources.into_iter().next(),
        event_name: raw.detail.event_name,
        deployment_id: raw.detail.deployment_id,
    })
}

/// Why the event is not to be believed, if it is not: the same rules as CodeBuild's events
/// (`trust::Origin`), with ECS's source.
pub fn check(origin: &super::trust::Origin, e: &DeploymentStateChange) -> Result<(), String> {
    let short = |s: &str| s.chars().take(64).collect::<String>();
    if e.source != SOURCE {
        return Err(format!("source {:?} is not {SOURCE:?}", short(&e.source)));
    }
    if let Some(account) = &origin.account {
        if &e.account != account {
            return Err(format!(
                "account {:?} is not slipway's account {account}",
                short(&e.account)
            ));
        }
    }
    if let Some(region) = &origin.region {
        if &e.region != region {
            return Err(format!(
                "region {:?} is not slipway's region {region}",
                short(&e.region)
            ));
        }
    }
    Ok(())
}

impl super::Running {
    /// Handles an ECS deployment event: wakes the watch of its deployment, or records why it
    /// was not acted on. The message is deleted once that is done.
    pub(super) async fn handle_ecs(&self, message: &Message, receipt: &str, body: &str) {
        let event = match parse(body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot parse the ECS event; leaving it to the queue's redrive policy");
                return;
            }
        };
        let span = tracing::info_span!("ecs_event", deployment = %event.deployment_id,
            event = %event.event_name);
        let _in = span.enter();
        let ignored = match check(&self.origin, &event) {
            Err(reason) => {
                tracing::warn!(%reason, "ECS event rejected");
                Some(reason)
            }
            Ok(()) => match &self.ecs_watchers {
                Some(w) if w.event_for(&event.deployment_id, event.may_end_the_rollout()) => {
                    tracing::info!("ECS deployment event for a watched rollout");
                    None
                }
                _ => {
                    tracing::info!(
                        "ECS deployment event for a deployment slipway does not watch; ignored"
                    );
                    Some(format!(
                        "{} for ECS deployment {} ({}), which no deploy of slipway's watches; ignored",
                        event.event_name,
                        event.deployment_id,
                        event.service_arn.as_deref().unwrap_or("no service")
                    ))
                }
            },
        };
        if let Some(reason) = ignored {
            let record = RejectedEvent {
                message_id: message.message_id().map(str::to_owned),
                build_id: None,
                source: Some(event.source.clone()),
                account: Some(event.account.clone()),
                reason,
                received_ms: millis(self.results.clock.now()),
            };
            if let Err(e) = self.results.journal.event_rejected(record).await {
                // Not deleted: it comes back and is recorded then.
                return tracing::error!(error = %e, "cannot journal the ECS event");
            }
        }
        self.delete(receipt).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the ECS developer guide.
    const EXAMPLE: &str = r#"{
        "version": "0", "id": "ddca6449-b258-46c0-8653-e0e3a6EXAMPLE",
        "detail-type": "ECS Deployment State Change", "source": "aws.ecs",
        "account": "111122223333", "time": "2020-05-23T12:31:14Z", "region": "us-west-2",
        "resources": ["arn:aws:ecs:us-west-2:111122223333:service/default/servicetest"],
        "detail": {"eventType": "INFO", "eventName": "SERVICE_DEPLOYMENT_COMPLETED",
            "deploymentId": "ecs-svc/123", "updatedAt": "2020-05-23T11:11:11Z",
            "reason": "ECS deployment deploymentId completed."}
    }"#;

    #[test]
    fn the_documented_event_parses_and_is_believed_only_from_slipways_account_and_region() {
        assert!(is_ecs_deployment_event(EXAMPLE));
        let e = parse(EXAMPLE).unwrap();
        assert_eq!(e.deployment_id, "ecs-svc/123");
        assert_eq!(e.event_name, "SERVICE_DEPLOYMENT_COMPLETED");
        assert!(e.may_end_the_rollout());
        let in_progress = DeploymentStateChange {
            event_name: "SERVICE_DEPLOYMENT_IN_PROGRESS".into(),
            ..e.clone()
        };
        assert!(!in_progress.may_end_the_rollout());
        let origin = |account: &str, region: &str| super::super::trust::Origin {
            account: Some(account.into()),
            region: Some(region.into()),
        };
        assert_eq!(check(&origin("111122223333", "us-west-2"), &e), Ok(()));
        assert!(check(&origin("999999999999", "us-west-2"), &e)
            .unwrap_err()
            .contains("account"));
        assert!(check(&origin("111122223333", "eu-west-1"), &e)
            .unwrap_err()
            .contains("region"));
        let forged = DeploymentStateChange {
            source: "my.app".into(),
            ..e
        };
        assert!(check(&origin("111122223333", "us-west-2"), &forged)
            .unwrap_err()
            .contains("source"));
        assert!(!is_ecs_deployment_event(
            r#"{"detail-type": "CodeBuild Build State Change"}"#
        ));
        assert!(parse(r#"{"detail-type": "ECS Deployment State Change", "detail": {}}"#).is_err());
    }
}
