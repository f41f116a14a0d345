//! Read-only views for issue 10: the scrape-time build gauges and the pipeline runs the status
//! page lists.

use serde::Serialize;

/// Builds waiting for CodeBuild StartBuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingBuilds {
    pub count: u64,
    /// How long the oldest one has waited; 0 when none waits.
    pub oldest_age_ms: i64,
}

/// One pipeline run: a push (or an operator's deploy, or a rollback), its build when there is
/// one, and the deployment that followed.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub app: String,
    pub sha: String,
    /// push | replay | operator | rollback | foreign_build
    pub trigger: String,
    /// Who pushed, replayed or deployed, when the journal knows.
    pub actor: Option<String>,
    pub started_ms: i64,
    pub delivery: Option<String>,
    pub build: Option<RunBuild>,
    pub deployment: Option<RunDeployment>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunBuild {
    pub state: String,
    pub build_id: Option<String>,
    pub log_link: Option<String>,
    pub reason: Option<String>,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDeployment {
    pub id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub log_link: Option<String>,
    pub updated_ms: i64,
}
