//! Deployments: one record per deploy of a commit (or a rollback) to an ECS service.

use serde::{Deserialize, Serialize};

/// Deployment states, as stored.
pub mod deploy_state {
    pub const PENDING: &str = "pending";
    pub const DEPLOYING: &str = "deploying";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const ROLLED_BACK: &str = "rolled_back";
    pub const SUPERSEDED: &str = "superseded";

    pub fn is_terminal(state: &str) -> bool {
        !matches!(state, PENDING | DEPLOYING)
    }
}

/// How a deployment was started.
pub mod trigger {
    pub const PUSH: &str = "push";
    pub const FOREIGN_BUILD: &str = "foreign_build";
    pub const OPERATOR: &str = "operator";
    pub const ROLLBACK: &str = "rollback";
    /// An approved promotion (issue 27): the image another app's deploy ran, by digest.
    pub const PROMOTION: &str = "promotion";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: i64,
    pub app: String,
    pub service_key: String,
    pub sha: String,
    pub image_tag: String,
    pub trigger: String,
    pub actor: Option<String>,
    pub build_row: Option<i64>,
    pub build_id: Option<String>,
    pub delivery_id: Option<String>,
    pub order_key: i64,
    pub target_task_definition: Option<String>,
    pub image: Option<String>,
    pub from_task_definition: Option<String>,
    pub to_task_definition: Option<String>,
    pub ecs_deployment_id: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub log_link: Option<String>,
    pub running_count: Option<i64>,
    pub desired_count: Option<i64>,
    pub failed_tasks: Option<i64>,
    /// ECS's lifecycle stage of the rollout while it runs (`BAKE_TIME`, ...), when ECS says.
    pub stage: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// ECS's service deployment of the rollout (its ARN), once slipway found it.
    pub service_deployment_arn: Option<String>,
    /// When slipway stops waiting for the rollout (ms since the epoch) and why then.
    pub deadline_ms: Option<i64>,
    pub deadline_why: Option<String>,
    /// "cannot see the service: <reason>" while slipway's looks at the rollout fail.
    pub unseen: Option<String>,
    /// The rollback target's original when `from_task_definition` is a copy of it (ECS's
    /// own rollback goes back to the original).
    pub from_original: Option<String>,
    /// When slipway asked ECS to roll the rollout's service deployment back
    /// (StopServiceDeployment, `ROLLBACK`), journaled before the request: ECS's rollback that
    /// follows is this deploy's `rolled_back`, across restarts too.
    pub rollback_requested_ms: Option<i64>,
    /// The tag whose push this deploys (`tags`, issue 27); None for a branch push and for
    /// deploys not made by a push.
    #[serde(default)]
    pub tag: Option<String>,
    /// The promotion this deploys (trigger `promotion`, issue 27); its source app and deploy
    /// and its approval are on the promotion.
    #[serde(default)]
    pub promotion: Option<i64>,
}

/// A deploy to ask for.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub app: String,
    pub service_key: String,
    pub sha: String,
    pub image_tag: String,
    pub trigger: &'static str,
    pub actor: Option<String>,
    pub build_row: Option<i64>,
    pub build_id: Option<String>,
    pub delivery_id: Option<String>,
    /// None: rank it after every push journaled so far (explicit deploys are the newest).
    pub order_key: Option<i64>,
    pub target_task_definition: Option<String>,
    pub log_link: Option<String>,
    /// The tag a tag push released (issue 27).
    pub tag: Option<String>,
    /// The promotion whose approval makes this deploy (issue 27).
    pub promotion: Option<i64>,
}

/// A terminal CodeBuild state for a build, from an event or from the reconciler.
#[derive(Debug, Clone)]
pub struct BuildCompletion {
    pub build_id: String,
    pub succeeded: bool,
    /// CodeBuild's status word (`FAILED`, `TIMED_OUT`, …), for the reason.
    pub status: String,
    pub log_link: Option<String>,
    /// When slipway did not start the build: deploy it anyway as this (None: don't).
    pub foreign: Option<NewDeployment>,
    /// The build's `SLIPWAY_RUN`: finds a build whose id was never journaled (slipway stopped
    /// between StartBuild and recording its answer).
    pub run_token: Option<String>,
}

/// What the journal made of a build completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// Slipway did not start this build, and the app does not deploy foreign builds.
    Foreign,
    /// The build failed; `first_time` is false for a repeated event.
    Failed {
        app: String,
        sha: String,
        first_time: bool,
    },
    /// The deployment this build leads to (`created` is false for a repeated event).
    Deploy { deployment: i64, created: bool },
}

/// A change to a deployment's record.
#[derive(Debug, Clone, Default)]
pub struct DeploymentUpdate {
    pub state: Option<&'static str>,
    pub reason: Option<String>,
    pub image: Option<String>,
    pub from_task_definition: Option<String>,
    pub to_task_definition: Option<String>,
    pub ecs_deployment_id: Option<String>,
    pub started: bool,
    /// The rollout (re)starts now: `started_ms` is set to now even if it was set before (a
    /// resumed deploy whose UpdateService never reached ECS).
    pub restart_clock: bool,
    pub progress: Option<(i64, i64, i64)>,
    /// ECS's lifecycle stage now; a terminal state clears it.
    pub stage: Option<String>,
    pub service_deployment_arn: Option<String>,
    /// The deadline (ms) and why.
    pub deadline: Option<(i64, String)>,
    /// `Some(reason)` records that slipway cannot see the service; `Some("")` clears it; a
    /// terminal state clears it.
    pub unseen: Option<String>,
    pub from_original: Option<String>,
    /// Records that slipway is asking ECS to roll the service deployment back (the first
    /// time counts).
    pub rollback_requested: bool,
    /// Written only if this lease still carries this fence (issue 26: the deploy's service
    /// lease); else `StoreError::Fenced` and nothing changes.
    pub fence: Option<super::Fence>,
}

/// A build slipway started that has had no result for a while.
#[derive(Debug, Clone)]
pub struct InFlightBuild {
    pub build_row: i64,
    pub build_id: String,
    pub app: String,
}
