//! Whether a CodeBuild event in slipway's queue is to be believed.
//!
//! The queue is only a mailbox: anyone who may `SendMessage` to it (or a misrouted rule) can
//! put a well-formed event there. So an event counts only if it says it comes from CodeBuild
//! in slipway's own account and region, and a final status (`SUCCEEDED`, `FAILED`, `FAULT`,
//! `STOPPED`, `TIMED_OUT`) is only acted on once CodeBuild itself (`BatchGetBuilds`) reports
//! the same one, for a build slipway started (it carries that run's `SLIPWAY_RUN`) or a
//! foreign build the app accepts. What slipway keeps of the build (commit, log link, run) comes
//! from CodeBuild's answer, never from the event: the build id is public (it is in the log link
//! of every commit status), so anyone who may send to the queue can name a real build.

use aws_sdk_codebuild::types::Build;

use super::codebuild::{BuildStateChange, BuildStatus};
use crate::aws::AwsError;

/// The only `source` slipway accepts. `PutEvents` refuses `aws.*` sources to callers, so only
/// CodeBuild itself can emit it.
pub const SOURCE: &str = "aws.codebuild";

/// Where events must come from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The queue's account (from its URL): the rule that feeds the queue lives in the same
    /// account as the CodeBuild projects. None if the URL does not show one.
    pub account: Option<String>,
    /// The region of slipway's AWS configuration.
    pub region: Option<String>,
}

impl Origin {
    pub fn new(queue_url: &str, region: Option<&str>) -> Origin {
        Origin {
            account: account_from_queue_url(queue_url),
            region: region.map(str::to_owned),
        }
    }

    /// Why the event is not to be believed, if it is not.
    pub fn check(&self, event: &BuildStateChange) -> Result<(), String> {
        if event.source != SOURCE {
            return Err(format!(
                "source {:?} is not {SOURCE:?}",
                truncate(&event.source)
            ));
        }
        if let Some(account) = &self.account {
            if &event.account != account {
                return Err(format!(
                    "account {:?} is not slipway's account {account}",
                    truncate(&event.account)
                ));
            }
        }
        if let Some(region) = &self.region {
            if &event.region != region {
                return Err(format!(
                    "region {:?} is not slipway's region {region}",
                    truncate(&event.region)
                ));
            }
        }
        Ok(())
    }
}

/// The account in an SQS queue URL (`https://sqs.eu-west-1.amazonaws.com/123456789012/name`):
/// the 12-digit path segment before the queue name.
pub fn account_from_queue_url(url: &str) -> Option<String> {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut segments = path.split('/').skip(1).filter(|s| !s.is_empty());
    let account = segments.next()?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_owned())
}

/// Keeps what an untrusted event says short in logs and the journal.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// CodeBuild's own view of a build whose final status an event announced.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub commit: Option<String>,
    pub log_link: Option<String>,
    /// The build's `SLIPWAY_RUN`, as CodeBuild reports it.
    pub run_token: Option<String>,
}

/// What came of asking CodeBuild.
#[derive(Debug)]
pub enum Confirmation {
    Confirmed(Confirmed),
    /// Not to be deployed, with the reason.
    Rejected(String),
}

/// Asks CodeBuild whether the build of an event with a final status ended with that status,
/// in the project the event names. An AWS error is returned as such: the message is kept and
/// asked about again.
pub async fn confirm(
    codebuild: &aws_sdk_codebuild::Client,
    event: &BuildStateChange,
) -> Result<Confirmation, AwsError> {
    let id = event.build_id();
    let out = codebuild
        .batch_get_builds()
        .ids(id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CodeBuild BatchGetBuilds", &e))?;
    let Some(build) = out.builds().iter().find(|b| b.id() == Some(id)) else {
        return Ok(Confirmation::Rejected(format!(
            "CodeBuild does not know build {id}"
        )));
    };
    Ok(judge(event, build))
}

fn judge(event: &BuildStateChange, build: &Build) -> Confirmation {
    let status = BuildStatus::parse(build.build_status().map(|s| s.as_str()).unwrap_or(""));
    if status != event.status {
        return Confirmation::Rejected(format!(
            "the event says {} but CodeBuild reports the build as {status}",
            truncate(event.status.as_str())
        ));
    }
    if let Some(project) = build.project_name() {
        if project != event.project {
            return Confirmation::Rejected(format!(
                "the event names project {:?} but the build belongs to {project}",
                truncate(&event.project)
            ));
        }
    }
    let commit = build
        .resolved_source_version()
        .or(build.source_version())
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .or_else(|| env_var(build, "SLIPWAY_COMMIT"));
    Confirmation::Confirmed(Confirmed {
        commit,
        log_link: build.logs().and_then(|l| l.deep_link()).map(str::to_owned),
        run_token: env_var(build, "SLIPWAY_RUN"),
    })
}

/// The value of a build's environment variable as CodeBuild reports it (the last one wins,
/// as an override comes after the project's own value).
pub fn env_var(build: &Build, name: &str) -> Option<String> {
    build
        .environment()?
        .environment_variables()
        .iter()
        .rev()
        .find(|v| v.name() == name)
        .map(|v| v.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_comes_from_the_queue_url() {
        assert_eq!(
            account_from_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/slipway")
                .as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account_from_queue_url("http://127.0.0.1:5000/123456789012/slipway-events").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account_from_queue_url("http://localhost/queue/slipway"),
            None
        );
    }

    fn event(source: &str, account: &str, region: &str) -> BuildStateChange {
        BuildStateChange {
            event_id: "e".into(),
            source: source.into(),
            account: account.into(),
            region: region.into(),
            build_arn: "arn:aws:codebuild:eu-west-1:123456789012:build/p:1".into(),
            project: "p".into(),
            status: BuildStatus::Succeeded,
            source_version: None,
            env: vec![],
        }
    }

    #[test]
    fn only_codebuild_in_slipways_account_and_region_is_believed() {
        let origin = Origin::new(
            "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
            Some("eu-west-1"),
        );
        assert!(origin
            .check(&event(SOURCE, "123456789012", "eu-west-1"))
            .is_ok());
        let e = origin
            .check(&event("my.app", "123456789012", "eu-west-1"))
            .unwrap_err();
        assert!(e.contains("source \"my.app\""), "{e}");
        let e = origin
            .check(&event(SOURCE, "999999999999", "eu-west-1"))
            .unwrap_err();
        assert!(e.contains("account \"999999999999\""), "{e}");
        let e = origin
            .check(&event(SOURCE, "123456789012", "us-east-1"))
            .unwrap_err();
        assert!(e.contains("region \"us-east-1\""), "{e}");
        let e = origin.check(&event("", "", "")).unwrap_err();
        assert!(e.contains("source \"\""), "{e}");
    }
}
