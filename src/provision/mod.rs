//! `slipway provision`: sets up slipway's own plumbing and checks what the user owns.
//!
//! slipway's plumbing is created or brought back in line, idempotently: the dead-letter queue,
//! the events queue (redrive policy, and a queue policy letting only the EventBridge rule send
//! to it), the EventBridge rule matching the CodeBuild state changes of the configured
//! projects, and the rule's target. What the user owns (CodeBuild projects, ECR repositories,
//! ECS clusters, services and task definitions) is only looked at, never changed; every
//! problem is reported in the same run.
//!
//! The same plumbing made by deploy/cloudformation.yml (its target Id and statement Sid differ)
//! is recognised and reported `ok`, never doubled (`recognize`).
//!
//! `--dry-run` makes no change at all and reports what a real run would do.

mod checks;
pub mod ecs_events;
mod plumbing;
pub mod policy;
mod recognize;
mod report;
mod state_store;

pub use checks::github_repository;
use checks::*;
use plumbing::*;
pub use plumbing::{event_pattern, normalize, queue_policy, redrive_policy};
pub use report::{Item, Kind, Report, Status};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context;
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;
use serde_json::{json, Value};

use crate::aws::{AwsError, Clients};
use crate::config::{AppConfig, Config, ProvisionConfig};

/// The id of the rule's target slipway owns.
pub const TARGET_ID: &str = "slipway";
/// The `Sid` of the statement in the queue policy.
pub const POLICY_SID: &str = "slipway-eventbridge";
/// The build statuses slipway acts on (every final one).
pub const FINAL_BUILD_STATUSES: &[&str] = &["SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"];
/// Dead letters are kept as long as SQS allows (14 days).
const DLQ_RETENTION_SECS: &str = "1209600";
/// `slipway provision`: loads the config, runs, prints, and fails when the run failed.
pub async fn command(config_path: &Path, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let config =
        Config::load(config_path).with_context(|| format!("loading {}", config_path.display()))?;
    let aws = Clients::from_env().await;
    let report = run(&config, &aws, dry_run).await;
    if json {
        println!("{}", report.render_json());
    } else {
        print!("{}", report.render_text());
    }
    if report.is_success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(report.failure_message()))
    }
}

/// Creates or updates slipway's plumbing (nothing with `dry_run`) and checks what the user owns.
pub async fn run(config: &Config, aws: &Clients, dry_run: bool) -> Report {
    let mut report = Report::new(config, dry_run);
    let projects: Vec<String> = config
        .apps
        .iter()
        .filter_map(|a| a.codebuild_project.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut plumbing = Plumbing {
        aws,
        names: &config.provision,
        dry_run,
        report: &mut report,
    };
    // A failed call stops the plumbing (its steps build on each other); the checks still run,
    // and every step not attempted says so.
    let services = ecs_events::services(config);
    if plumbing.run(&projects, &services).await.is_err() {
        let names = &config.provision;
        let target = format!("{}/{TARGET_ID}", names.rule_name);
        for (kind, name) in [
            (Kind::DeadLetterQueue, names.dead_letter_queue_name.as_str()),
            (Kind::Queue, names.queue_name.as_str()),
            (Kind::Rule, names.rule_name.as_str()),
            (Kind::QueuePolicy, names.queue_name.as_str()),
            (Kind::RuleTarget, target.as_str()),
        ] {
            if !report.items.iter().any(|i| i.kind == kind) {
                report.push(
                    kind,
                    name,
                    Status::NotAttempted,
                    "not attempted: an earlier step failed",
                );
            }
        }
    }
    // The store's table and bucket stand apart from the plumbing: made even when it failed.
    state_store::provision(config, aws, dry_run, &mut report).await;
    check_config(config, &mut report);
    check_projects(config, aws, &mut report).await;
    let accounts = crate::accounts::Accounts::new(aws, &config.apps);
    check_repositories(config, aws, &accounts, &mut report).await;
    check_ecs(config, &accounts, &mut report).await;
    report.finish();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_repository_is_parsed() {
        let r = |s: &str| github_repository(s);
        assert_eq!(
            r("https://github.com/Octo-Org/Web.git").as_deref(),
            Some("octo-org/web")
        );
        assert_eq!(
            r("https://github.com/octo-org/web").as_deref(),
            Some("octo-org/web")
        );
        assert_eq!(
            r("https://github.com/octo-org/web/").as_deref(),
            Some("octo-org/web")
        );
        assert_eq!(
            r("git@github.com:octo-org/web.git").as_deref(),
            Some("octo-org/web")
        );
        assert_eq!(
            r("https://github.com/octo-org/web-two.git").as_deref(),
            Some("octo-org/web-two")
        );
        assert_eq!(r("my-bucket/source.zip"), None);
        assert_eq!(r("https://github.com/octo-org"), None);
    }

    #[test]
    fn json_is_compared_by_meaning() {
        let a = json!({"a": ["x", "y"], "n": 5, "s": ["only"]});
        let b = json!({"s": "only", "n": "5", "a": ["y", "x"]});
        assert_eq!(normalize(&a), normalize(&b));
        assert_ne!(
            normalize(&a),
            normalize(&json!({"a": ["x"], "n": 5, "s": "only"}))
        );
        assert!(same_json(Some(&b.to_string()), &a));
        assert!(!same_json(Some("not json"), &a));
        assert!(!same_json(None, &a));
    }

    #[test]
    fn pattern_lists_projects_once_sorted() {
        let p = event_pattern(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(p["detail"]["project-name"], json!(["a", "b"]));
        assert_eq!(p["source"], json!(["aws.codebuild"]));
    }

    #[test]
    fn sibling_arns_keep_partition_region_and_account() {
        assert_eq!(
            sibling_arn("arn:aws-cn:sqs:cn-north-1:123:q", "events", "rule/r").as_deref(),
            Some("arn:aws-cn:events:cn-north-1:123:rule/r")
        );
        assert_eq!(sibling_arn("nonsense", "sqs", "x"), None);
    }
}
