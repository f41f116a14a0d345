//! Reading an ECS rollout: what the service's deployment list says about ours.
//!
//! Success is only ever our deployment `COMPLETED` while it is `PRIMARY`. "Stable" is not
//! "completed", and a rollback by ECS's circuit breaker is a failure, never a success.

use aws_sdk_ecs::types::{
    Deployment, DeploymentRolloutState, DeploymentStrategy, Service, ServiceDeployment,
    ServiceDeploymentStatus,
};

/// Running / desired / failed tasks of our deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub running: i64,
    pub desired: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    InProgress(Progress),
    /// ECS is rolling ours back (circuit breaker, alarms, or a StopServiceDeployment): the
    /// service is still moving, and nothing may be sent on top of it.
    EcsRollingBack(Progress),
    Completed(Progress),
    /// Ours completed, then someone else's deployment took over before slipway looked again:
    /// ours did succeed; the note says what replaced it.
    CompletedThenReplaced(Progress, String),
    /// ECS put the previous task definition back (circuit breaker) and that rollback completed.
    RolledBackByEcs(String),
    /// ECS tried to put the previous task definition back and that failed too.
    EcsRollbackFailed(String),
    /// Ours failed (or vanished) and the service still runs it: slipway must roll back.
    NeedsRollback(String),
    /// Someone else's deployment replaced ours; rolling back would undo theirs.
    Replaced(String),
}

fn progress(d: &Deployment) -> Progress {
    Progress {
        running: d.running_count as i64,
        desired: d.desired_count as i64,
        failed: d.failed_tasks as i64,
    }
}

fn reason_of(d: Option<&Deployment>) -> String {
    d.and_then(|d| d.rollout_state_reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "no reason given".to_owned())
}

/// The service's `PRIMARY` deployment: the one ECS is rolling out, or has rolled out, now.
pub fn primary(deployments: &[Deployment]) -> Option<&Deployment> {
    deployments
        .iter()
        .find(|d| d.status.as_deref() == Some("PRIMARY"))
}

/// The revisions the service ran before a deploy: `from_td` (the rollback target) first, then
/// the original it is a copy of, when it is one. ECS's own rollback goes back to the most recent
/// deployment that completed, which may be the original.
#[derive(Debug, Clone, Copy)]
pub struct Earlier<'a> {
    pub from_td: &'a str,
    pub original: Option<&'a str>,
}

impl<'a> Earlier<'a> {
    pub fn only(from_td: &'a str) -> Earlier<'a> {
        Earlier {
            from_td,
            original: None,
        }
    }

    fn has(&self, td: Option<&str>) -> bool {
        td.is_some_and(|td| td == self.from_td || Some(td) == self.original)
    }
}

/// Judges the rollout of deployment `ours` (to `to_td`, from `earlier`).
pub fn evaluate(
    deployments: &[Deployment],
    ours: &str,
    earlier: Earlier<'_>,
    to_td: &str,
) -> Rollout {
    let from_td = earlier.from_td;
    let mine = deployments.iter().find(|d| d.id.as_deref() == Some(ours));
    let primary = primary(deployments);
    // ECS rolls back by making the most recent completed deployment PRIMARY again (it keeps
    // its `createdAt`): a PRIMARY older than ours, or running what the service ran before.
    let older_than_mine = |p: &Deployment| match (mine.and_then(|m| m.created_at()), p.created_at())
    {
        (Some(m), Some(p)) => p.to_millis().unwrap_or(0) < m.to_millis().unwrap_or(0),
        _ => false,
    };
    let judge = |d: &Deployment| match d.rollout_state {
        Some(DeploymentRolloutState::Completed) => Rollout::Completed(progress(d)),
        Some(DeploymentRolloutState::Failed) => {
            Rollout::NeedsRollback(format!("rollout failed: {}", reason_of(Some(d))))
        }
        // ECS reports no rollout state for some services (behind a Classic Load Balancer, or
        // older setups): then the deployments list is all there is, and ours alone, PRIMARY,
        // with every desired task running is as complete as ECS will ever say.
        None if deployments.len() == 1
            && d.status.as_deref() == Some("PRIMARY")
            && d.running_count == d.desired_count
            && d.pending_count == 0 =>
        {
            Rollout::Completed(progress(d))
        }
        _ => Rollout::InProgress(progress(d)),
    };
    match (mine, primary) {
        (Some(m), Some(p)) if m.id == p.id => judge(m),
        // ECS is putting the previous task definition back: only its completion is a rollback;
        // until then the service is still moving and nothing else may start on top of it.
        (_, Some(p))
            if earlier.has(p.task_definition.as_deref())
                || (older_than_mine(p) && p.task_definition.as_deref() != Some(to_td)) =>
        {
            let back_to = p.task_definition.as_deref().unwrap_or(from_td);
            match p.rollout_state {
                Some(DeploymentRolloutState::Completed) => Rollout::RolledBackByEcs(format!(
                    "ECS rolled the service back to {back_to}: {}",
                    reason_of(mine)
                )),
                Some(DeploymentRolloutState::Failed) => Rollout::EcsRollbackFailed(format!(
                    "ECS's rollback to {back_to} failed: {} (the deployment of {to_td}: {})",
                    reason_of(Some(p)),
                    reason_of(mine)
                )),
                _ => Rollout::EcsRollingBack(progress(p)),
            }
        }
        // Another deployment of our own task definition took over (a forced redeploy): follow it.
        (_, Some(p)) if p.task_definition.as_deref() == Some(to_td) => judge(p),
        // Ours had completed before someone else's deployment replaced it.
        (Some(m), Some(p)) if m.rollout_state == Some(DeploymentRolloutState::Completed) => {
            Rollout::CompletedThenReplaced(
                progress(m),
                format!(
                    "then replaced by another deployment ({})",
                    p.task_definition
                        .as_deref()
                        .unwrap_or("unknown task definition")
                ),
            )
        }
        (_, Some(p)) => Rollout::Replaced(format!(
            "another deployment ({}) replaced this one",
            p.task_definition
                .as_deref()
                .unwrap_or("unknown task definition")
        )),
        (_, None) => Rollout::NeedsRollback(format!(
            "the deployment vanished from the service: {}",
            reason_of(mine)
        )),
    }
}

/// Whether the deployments list cannot judge this rollout and ECS's service deployment must:
/// ECS's own blue/green, linear and canary strategies (success comes after the traffic shift
/// and the bake time), and deployments without a `rolloutState` (behind a Classic Load
/// Balancer).
pub fn wants_service_deployment(service: &Service, ours: &str) -> bool {
    let ecs_strategy = ecs_strategy(service).is_some();
    let no_rollout_state = service
        .deployments()
        .iter()
        .find(|d| d.id.as_deref() == Some(ours))
        .is_some_and(|d| d.rollout_state.is_none());
    ecs_strategy || no_rollout_state
}

/// ECS's own strategy of the service (BLUE_GREEN, LINEAR, CANARY, or one slipway does not
/// know); `None` for a rolling update. Only ECS rolls back a service with its own strategy:
/// slipway never sends UpdateService over its service deployment.
pub fn ecs_strategy(service: &Service) -> Option<DeploymentStrategy> {
    match service
        .deployment_configuration()
        .and_then(|c| c.strategy())
    {
        None | Some(DeploymentStrategy::Rolling) => None,
        Some(other) => Some(other.clone()),
    }
}

/// What a service deployment says about our rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A judgement; `InProgress` comes with ECS's lifecycle stage when it gives one.
    Rollout(Rollout, Option<String>),
    /// `STOPPED` (replaced by another deployment, stopped by someone, failed without a
    /// rollback) or a status slipway does not know: the deployments list decides.
    AskTheService(String),
}

/// Judges our rollout from its service deployment.
pub fn evaluate_service_deployment(sd: &ServiceDeployment, from_td: &str, to_td: &str) -> Verdict {
    let target = sd.target_service_revision();
    let progress = Progress {
        running: target.map_or(0, |t| t.running_task_count as i64),
        desired: target.map_or(0, |t| t.requested_task_count as i64),
        failed: sd
            .deployment_circuit_breaker()
            .map_or(0, |b| b.failure_count as i64),
    };
    let reason = sd
        .status_reason()
        .filter(|r| !r.is_empty())
        .unwrap_or("no reason given")
        .to_owned();
    let stage = sd.lifecycle_stage().map(|s| s.as_str().to_owned());
    use ServiceDeploymentStatus as S;
    match sd.status() {
        Some(S::Pending | S::InProgress) => Verdict::Rollout(Rollout::InProgress(progress), stage),
        // ECS is putting the previous revision back: nothing may start on top of it yet.
        Some(S::RollbackRequested | S::RollbackInProgress) => Verdict::Rollout(
            Rollout::EcsRollingBack(progress),
            Some("ROLLBACK_IN_PROGRESS".to_owned()),
        ),
        Some(S::Successful) => Verdict::Rollout(Rollout::Completed(progress), None),
        Some(S::RollbackSuccessful) => Verdict::Rollout(
            Rollout::RolledBackByEcs(format!(
                "ECS rolled the service back to {from_td}: {}",
                rollback_reason(sd, &reason)
            )),
            None,
        ),
        Some(S::RollbackFailed) => Verdict::Rollout(
            Rollout::EcsRollbackFailed(format!(
                "ECS's rollback to {from_td} failed: {reason} (the deployment of {to_td}: {})",
                rollback_reason(sd, "no reason given")
            )),
            None,
        ),
        Some(other) => Verdict::AskTheService(format!(
            "ECS's service deployment is {}: {reason}",
            other.as_str()
        )),
        None => Verdict::AskTheService(format!("ECS's service deployment has no status: {reason}")),
    }
}

fn rollback_reason<'a>(sd: &'a ServiceDeployment, otherwise: &'a str) -> &'a str {
    sd.rollback()
        .and_then(|r| r.reason())
        .filter(|r| !r.is_empty())
        .unwrap_or(otherwise)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "arn:aws:ecs:eu-west-1:1:task-definition/web:1";
    const TO: &str = "arn:aws:ecs:eu-west-1:1:task-definition/web:2";

    fn dep(id: &str, status: &str, td: &str, state: DeploymentRolloutState) -> Deployment {
        Deployment::builder()
            .id(id)
            .status(status)
            .task_definition(td)
            .rollout_state_reason(format!("{id} {state:?}"))
            .rollout_state(state)
            .running_count(1)
            .desired_count(2)
            .build()
    }

    #[test]
    fn only_our_primary_completed_is_success() {
        use DeploymentRolloutState::*;
        let d = [dep("new", "PRIMARY", TO, Completed)];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::Completed(_)
        ));
        let d = [
            dep("new", "PRIMARY", TO, InProgress),
            dep("old", "ACTIVE", FROM, Completed),
        ];
        assert_eq!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::InProgress(Progress {
                running: 1,
                desired: 2,
                failed: 0
            })
        );
    }

    #[test]
    fn an_ecs_rollback_is_a_failure() {
        use DeploymentRolloutState::*;
        let d = [
            dep("back", "PRIMARY", FROM, InProgress),
            dep("new", "ACTIVE", TO, Failed),
        ];
        // Still rolling back: not reported yet.
        let r = evaluate(&d, "new", Earlier::only(FROM), TO);
        assert!(matches!(&r, Rollout::EcsRollingBack(_)), "{r:?}");
        let d = [
            dep("back", "PRIMARY", FROM, Completed),
            dep("new", "ACTIVE", TO, Failed),
        ];
        let r = evaluate(&d, "new", Earlier::only(FROM), TO);
        assert!(
            matches!(&r, Rollout::RolledBackByEcs(m) if m.contains("new Failed")),
            "{r:?}"
        );
        let d = [
            dep("back", "PRIMARY", FROM, Failed),
            dep("new", "ACTIVE", TO, Failed),
        ];
        let r = evaluate(&d, "new", Earlier::only(FROM), TO);
        assert!(
            matches!(&r, Rollout::EcsRollbackFailed(m) if m.contains("back Failed")),
            "{r:?}"
        );
        // Even when the old deployment finished, and ours is gone.
        let d = [dep("back", "PRIMARY", FROM, Completed)];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::RolledBackByEcs(_)
        ));
    }

    #[test]
    fn without_a_rollout_state_the_steady_deployment_list_decides() {
        let plain = |id: &str, status: &str, td: &str, running: i32| {
            Deployment::builder()
                .id(id)
                .status(status)
                .task_definition(td)
                .running_count(running)
                .desired_count(2)
                .build()
        };
        let d = [
            plain("new", "PRIMARY", TO, 1),
            plain("old", "ACTIVE", FROM, 2),
        ];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::InProgress(_)
        ));
        let d = [
            plain("new", "PRIMARY", TO, 2),
            plain("old", "ACTIVE", FROM, 1),
        ];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::InProgress(_)
        ));
        let d = [plain("new", "PRIMARY", TO, 2)];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::Completed(_)
        ));
    }

    #[test]
    fn failed_vanished_and_replaced() {
        use DeploymentRolloutState::*;
        let d = [dep("new", "PRIMARY", TO, Failed)];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::NeedsRollback(_)
        ));
        let d: [Deployment; 0] = [];
        assert!(
            matches!(evaluate(&d, "new", Earlier::only(FROM), TO), Rollout::NeedsRollback(m) if m.contains("vanished"))
        );
        let other = "arn:aws:ecs:eu-west-1:1:task-definition/web:7";
        let d = [
            dep("x", "PRIMARY", other, InProgress),
            dep("new", "ACTIVE", TO, InProgress),
        ];
        assert!(
            matches!(evaluate(&d, "new", Earlier::only(FROM), TO), Rollout::Replaced(m) if m.contains(other))
        );
        // Ours completed, then someone else deployed before the next look.
        let d = [
            dep("x", "PRIMARY", other, InProgress),
            dep("new", "ACTIVE", TO, Completed),
        ];
        assert!(
            matches!(evaluate(&d, "new", Earlier::only(FROM), TO), Rollout::CompletedThenReplaced(_, m) if m.contains(other))
        );
        let d = [dep("forced", "PRIMARY", TO, Completed)];
        assert!(matches!(
            evaluate(&d, "new", Earlier::only(FROM), TO),
            Rollout::Completed(_)
        ));
    }

    fn sd(status: &str) -> ServiceDeployment {
        use aws_sdk_ecs::types::{
            Rollback, ServiceDeploymentCircuitBreaker, ServiceDeploymentLifecycleStage,
            ServiceRevisionSummary,
        };
        ServiceDeployment::builder()
            .status(ServiceDeploymentStatus::from(status))
            .status_reason(format!("sd {status}"))
            .lifecycle_stage(ServiceDeploymentLifecycleStage::BakeTime)
            .target_service_revision(
                ServiceRevisionSummary::builder()
                    .arn("arn:aws:ecs:eu-west-1:1:service-revision/web/web/1485800978477494678")
                    .requested_task_count(2)
                    .running_task_count(1)
                    .build(),
            )
            .deployment_circuit_breaker(
                ServiceDeploymentCircuitBreaker::builder()
                    .failure_count(1)
                    .build(),
            )
            .rollback(Rollback::builder().reason("alarm web-5xx").build())
            .build()
    }

    #[test]
    fn a_service_deployment_decides_by_its_status() {
        let p = Progress {
            running: 1,
            desired: 2,
            failed: 1,
        };
        assert_eq!(
            evaluate_service_deployment(&sd("IN_PROGRESS"), FROM, TO),
            Verdict::Rollout(Rollout::InProgress(p), Some("BAKE_TIME".into()))
        );
        assert_eq!(
            evaluate_service_deployment(&sd("ROLLBACK_IN_PROGRESS"), FROM, TO),
            Verdict::Rollout(
                Rollout::EcsRollingBack(p),
                Some("ROLLBACK_IN_PROGRESS".into())
            )
        );
        assert_eq!(
            evaluate_service_deployment(&sd("SUCCESSFUL"), FROM, TO),
            Verdict::Rollout(Rollout::Completed(p), None)
        );
        let r = evaluate_service_deployment(&sd("ROLLBACK_SUCCESSFUL"), FROM, TO);
        assert!(
            matches!(&r, Verdict::Rollout(Rollout::RolledBackByEcs(m), None)
                if m.contains(FROM) && m.contains("alarm web-5xx")),
            "{r:?}"
        );
        let r = evaluate_service_deployment(&sd("ROLLBACK_FAILED"), FROM, TO);
        assert!(
            matches!(&r, Verdict::Rollout(Rollout::EcsRollbackFailed(m), None)
                if m.contains("sd ROLLBACK_FAILED") && m.contains("alarm web-5xx")),
            "{r:?}"
        );
        for status in ["STOPPED", "SOMETHING_NEW"] {
            let r = evaluate_service_deployment(&sd(status), FROM, TO);
            assert!(
                matches!(&r, Verdict::AskTheService(m) if m.contains(status)),
                "{r:?}"
            );
        }
    }

    #[test]
    fn strategies_and_missing_rollout_state_want_the_service_deployment() {
        use aws_sdk_ecs::types::DeploymentConfiguration;
        let service = |strategy: Option<DeploymentStrategy>,
                       state: Option<DeploymentRolloutState>| {
            let mut d = Deployment::builder().id("new").status("PRIMARY");
            if let Some(state) = state {
                d = d.rollout_state(state);
            }
            let mut c = DeploymentConfiguration::builder();
            if let Some(s) = strategy {
                c = c.strategy(s);
            }
            Service::builder()
                .deployments(d.build())
                .deployment_configuration(c.build())
                .build()
        };
        use DeploymentRolloutState::InProgress;
        assert!(!wants_service_deployment(
            &service(None, Some(InProgress)),
            "new"
        ));
        assert!(!wants_service_deployment(
            &service(Some(DeploymentStrategy::Rolling), Some(InProgress)),
            "new"
        ));
        for s in [
            DeploymentStrategy::BlueGreen,
            DeploymentStrategy::Linear,
            DeploymentStrategy::Canary,
        ] {
            assert!(wants_service_deployment(
                &service(Some(s), Some(InProgress)),
                "new"
            ));
        }
        assert!(wants_service_deployment(&service(None, None), "new"));
    }
}
