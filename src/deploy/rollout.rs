//! Reading an ECS rollout: what the service's deployment list says about ours.
//!
//! Success is only ever our deployment `COMPLETED` while it is `PRIMARY`. "Stable" is not
//! "completed", and a rollback by ECS's circuit breaker is a failure, never a success.

use aws_sdk_ecs::types::{Deployment, DeploymentRolloutState};

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

/// Judges the rollout of deployment `ours` (to `to_td`, from `from_td`).
pub fn evaluate(deployments: &[Deployment], ours: &str, from_td: &str, to_td: &str) -> Rollout {
    let mine = deployments.iter().find(|d| d.id.as_deref() == Some(ours));
    let primary = deployments
        .iter()
        .find(|d| d.status.as_deref() == Some("PRIMARY"));
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
        (_, Some(p)) if p.task_definition.as_deref() == Some(from_td) => match p.rollout_state {
            Some(DeploymentRolloutState::Completed) => Rollout::RolledBackByEcs(format!(
                "ECS rolled the service back to {from_td}: {}",
                reason_of(mine)
            )),
            Some(DeploymentRolloutState::Failed) => Rollout::EcsRollbackFailed(format!(
                "ECS's rollback to {from_td} failed: {} (the deployment of {to_td}: {})",
                reason_of(Some(p)),
                reason_of(mine)
            )),
            _ => Rollout::InProgress(progress(p)),
        },
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
            evaluate(&d, "new", FROM, TO),
            Rollout::Completed(_)
        ));
        let d = [
            dep("new", "PRIMARY", TO, InProgress),
            dep("old", "ACTIVE", FROM, Completed),
        ];
        assert_eq!(
            evaluate(&d, "new", FROM, TO),
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
        let r = evaluate(&d, "new", FROM, TO);
        assert!(matches!(&r, Rollout::InProgress(_)), "{r:?}");
        let d = [
            dep("back", "PRIMARY", FROM, Completed),
            dep("new", "ACTIVE", TO, Failed),
        ];
        let r = evaluate(&d, "new", FROM, TO);
        assert!(
            matches!(&r, Rollout::RolledBackByEcs(m) if m.contains("new Failed")),
            "{r:?}"
        );
        let d = [
            dep("back", "PRIMARY", FROM, Failed),
            dep("new", "ACTIVE", TO, Failed),
        ];
        let r = evaluate(&d, "new", FROM, TO);
        assert!(
            matches!(&r, Rollout::EcsRollbackFailed(m) if m.contains("back Failed")),
            "{r:?}"
        );
        // Even when the old deployment finished, and ours is gone.
        let d = [dep("back", "PRIMARY", FROM, Completed)];
        assert!(matches!(
            evaluate(&d, "new", FROM, TO),
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
            evaluate(&d, "new", FROM, TO),
            Rollout::InProgress(_)
        ));
        let d = [
            plain("new", "PRIMARY", TO, 2),
            plain("old", "ACTIVE", FROM, 1),
        ];
        assert!(matches!(
            evaluate(&d, "new", FROM, TO),
            Rollout::InProgress(_)
        ));
        let d = [plain("new", "PRIMARY", TO, 2)];
        assert!(matches!(
            evaluate(&d, "new", FROM, TO),
            Rollout::Completed(_)
        ));
    }

    #[test]
    fn failed_vanished_and_replaced() {
        use DeploymentRolloutState::*;
        let d = [dep("new", "PRIMARY", TO, Failed)];
        assert!(matches!(
            evaluate(&d, "new", FROM, TO),
            Rollout::NeedsRollback(_)
        ));
        let d: [Deployment; 0] = [];
        assert!(
            matches!(evaluate(&d, "new", FROM, TO), Rollout::NeedsRollback(m) if m.contains("vanished"))
        );
        let other = "arn:aws:ecs:eu-west-1:1:task-definition/web:7";
        let d = [
            dep("x", "PRIMARY", other, InProgress),
            dep("new", "ACTIVE", TO, InProgress),
        ];
        assert!(matches!(evaluate(&d, "new", FROM, TO), Rollout::Replaced(m) if m.contains(other)));
        // Ours completed, then someone else deployed before the next look.
        let d = [
            dep("x", "PRIMARY", other, InProgress),
            dep("new", "ACTIVE", TO, Completed),
        ];
        assert!(
            matches!(evaluate(&d, "new", FROM, TO), Rollout::CompletedThenReplaced(_, m) if m.contains(other))
        );
        let d = [dep("forced", "PRIMARY", TO, Completed)];
        assert!(matches!(
            evaluate(&d, "new", FROM, TO),
            Rollout::Completed(_)
        ));
    }
}
