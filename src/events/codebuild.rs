//! `CodeBuild Build State Change` events, as EventBridge delivers them to an SQS queue with a
//! plain target: the SQS message body is the whole event as JSON.
//!
//! Only the handful of fields slipway needs are read; everything else (phases, times in
//! `Aug 21, 2026 10:00:03 AM` form, numbers sent as `60.0`, ...) is ignored, so new or oddly
//! typed fields in the event cannot break parsing.

use serde::Deserialize;

/// The `detail-type` of the events this module understands.
pub const DETAIL_TYPE: &str = "CodeBuild Build State Change";

/// Status of a CodeBuild build, as carried in `detail.build-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStatus {
    InProgress,
    Succeeded,
    Failed,
    Fault,
    Stopped,
    TimedOut,
    /// A status this version of slipway does not know. It is not treated as terminal: the
    /// fallback that asks CodeBuild (`BatchGetBuilds`) settles such builds.
    Unknown(String),
}

impl BuildStatus {
    /// Parses CodeBuild's wire form (`IN_PROGRESS`, `SUCCEEDED`, ...). Anything else becomes
    /// [`BuildStatus::Unknown`].
    pub fn parse(s: &str) -> Self {
        match s {
            "IN_PROGRESS" => Self::InProgress,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            "FAULT" => Self::Fault,
            "STOPPED" => Self::Stopped,
            "TIMED_OUT" => Self::TimedOut,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The wire form; for `Unknown` the string as received.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Fault => "FAULT",
            Self::Stopped => "STOPPED",
            Self::TimedOut => "TIMED_OUT",
            Self::Unknown(s) => s,
        }
    }

    /// True when the build has finished and will not change state again. `Unknown` is not
    /// terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Fault | Self::Stopped | Self::TimedOut
        )
    }

    /// True only for `SUCCEEDED`.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Succeeded)
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What slipway needs from one `CodeBuild Build State Change` event.
#[derive(Debug, Clone)]
pub struct BuildStateChange {
    /// The EventBridge event `id`.
    pub event_id: String,
    /// The event's `source` (`aws.codebuild` when CodeBuild emitted it; empty if absent).
    pub source: String,
    /// The account the event came from (empty if absent).
    pub account: String,
    /// The region the event came from (empty if absent).
    pub region: String,
    /// `detail.build-id`: the build ARN.
    pub build_arn: String,
    /// `detail.project-name`.
    pub project: String,
    /// `detail.build-status`.
    pub status: BuildStatus,
    /// `detail.additional-information.source-version`.
    pub source_version: Option<String>,
    /// `detail.additional-information.environment.environment-variables`, name and value, in
    /// the order of the event.
    pub env: Vec<(String, String)>,
    // `detail.additional-information.logs.deep-link` is not kept: the log link shown and
    // posted comes only from CodeBuild's own answer (`events::trust`), never from an event.
}

impl BuildStateChange {
    /// The commit: source-version if it is a 40-hex sha, else the `SLIPWAY_COMMIT` env var
    /// (also only if it is a 40-hex sha).
    pub fn commit(&self) -> Option<&str> {
        self.source_version
            .as_deref()
            .filter(|s| is_sha(s))
            .or_else(|| self.env_var("SLIPWAY_COMMIT").filter(|s| is_sha(s)))
    }

    /// The value of an environment variable of the build. If the name appears more than once,
    /// the last entry wins (an override comes after the project's own value).
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `project:uuid` form of the build id.
    pub fn build_id(&self) -> &str {
        build_id_from_arn(&self.build_arn)
    }
}

/// The `project:uuid` part of a build ARN
/// (`arn:aws:codebuild:eu-west-1:123456789012:build/web-build:5f2c...` → `web-build:5f2c...`).
/// A value that is not an ARN is returned unchanged. `BatchGetBuilds` accepts either form.
pub fn build_id_from_arn(arn: &str) -> &str {
    match arn.split_once(":build/") {
        Some((_, id)) if arn.starts_with("arn:") => id,
        _ => arn,
    }
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why an SQS message body could not be read as a build state change.
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    /// The body is not JSON at all.
    #[error("event body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Valid event, but not a `CodeBuild Build State Change`.
    #[error("unexpected detail-type {0:?} (expected {DETAIL_TYPE:?})")]
    WrongDetailType(String),
    /// A field is missing or has the wrong type. `path` is the JSON path of the failing field
    /// (for a missing field, the object that lacks it), `message` names the field or problem.
    #[error("invalid event at `{path}`: {message}")]
    Field { path: String, message: String },
}

impl EventParseError {
    fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<serde_path_to_error::Error<serde_json::Error>> for EventParseError {
    fn from(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        Self::field(err.path().to_string(), err.inner().to_string())
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "detail-type")]
    detail_type: String,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    region: String,
    detail: RawDetail,
}

#[derive(Deserialize)]
struct RawDetail {
    #[serde(rename = "build-status")]
    build_status: String,
    #[serde(rename = "project-name")]
    project_name: String,
    #[serde(rename = "build-id")]
    build_id: String,
    #[serde(rename = "additional-information", default)]
    additional_information: Option<RawInfo>,
}

#[derive(Deserialize)]
struct RawInfo {
    #[serde(rename = "source-version", default)]
    source_version: Option<String>,
    #[serde(default)]
    environment: Option<RawEnvironment>,
}

#[derive(Deserialize)]
struct RawEnvironment {
    #[serde(rename = "environment-variables", default)]
    environment_variables: Option<Vec<RawEnvVar>>,
}

#[derive(Deserialize)]
struct RawEnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

/// Parses an SQS message body holding a whole EventBridge `CodeBuild Build State Change` event.
///
/// Only the `detail-type` is checked here; where the event came from (`source`, `account`,
/// `region`) is kept for the consumer to judge (see `events::trust`).
pub fn parse_event(body: &str) -> Result<BuildStateChange, EventParseError> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(EventParseError::NotJson)?;

    let envelope: Envelope = serde_path_to_error::deserialize(&value)?;
    if envelope.detail_type != DETAIL_TYPE {
        return Err(EventParseError::WrongDetailType(envelope.detail_type));
    }

    let raw: RawEvent = serde_path_to_error::deserialize(&value)?;
    let detail = raw.detail;
    if detail.build_id.is_empty() {
        return Err(EventParseError::field("detail.build-id", "empty build-id"));
    }
    if detail.project_name.is_empty() {
        return Err(EventParseError::field(
            "detail.project-name",
            "empty project-name",
        ));
    }

    let info = detail.additional_information;
    let (source_version, env) = match info {
        None => (None, Vec::new()),
        Some(info) => (
            info.source_version.filter(|s| !s.is_empty()),
            info.environment
                .and_then(|e| e.environment_variables)
                .unwrap_or_default()
                .into_iter()
                .map(|v| (v.name, v.value.unwrap_or_default()))
                .collect(),
        ),
    };

    Ok(BuildStateChange {
        event_id: raw.id,
        source: raw.source,
        account: raw.account,
        region: raw.region,
        build_arn: detail.build_id,
        project: detail.project_name,
        status: BuildStatus::parse(&detail.build_status),
        source_version,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUCCEEDED: &str = include_str!("../../fixtures/codebuild/build_succeeded.json");
    const FAILED: &str = include_str!("../../fixtures/codebuild/build_failed.json");
    const IN_PROGRESS: &str = include_str!("../../fixtures/codebuild/build_in_progress.json");
    const NO_SOURCE_VERSION: &str =
        include_str!("../../fixtures/codebuild/build_no_source_version.json");
    const UNKNOWN_STATUS: &str = include_str!("../../fixtures/codebuild/build_unknown_status.json");

    const SHA: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";

    /// Parses a fixture, applies `edit` to its JSON, and parses the result.
    fn parse_edited(
        fixture: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<BuildStateChange, EventParseError> {
        let mut v: serde_json::Value = serde_json::from_str(fixture).unwrap();
        edit(&mut v);
        parse_event(&v.to_string())
    }

    fn field_error(err: EventParseError) -> (String, String) {
        match err {
            EventParseError::Field { path, message } => (path, message),
            other => panic!("expected a Field error, got {other:?}"),
        }
    }

    #[test]
    fn succeeded_fixture() {
        let ev = parse_event(SUCCEEDED).unwrap();
        assert_eq!(ev.event_id, "8c1f6a52-3b7e-d4a9-0e2f-6b91c7d3a845");
        assert_eq!(
            ev.build_arn,
            "arn:aws:codebuild:eu-west-1:123456789012:build/web-build:5f2c8e1a-9b3d-4c7e-a6f0-2d8b1e4c9a73"
        );
        assert_eq!(
            ev.build_id(),
            "web-build:5f2c8e1a-9b3d-4c7e-a6f0-2d8b1e4c9a73"
        );
        assert_eq!(ev.project, "web-build");
        assert_eq!(ev.status, BuildStatus::Succeeded);
        assert!(ev.status.is_terminal() && ev.status.is_success());
        assert_eq!(ev.source_version.as_deref(), Some(SHA));
        assert_eq!(ev.commit(), Some(SHA));
        assert_eq!(ev.env_var("IMAGE_TAG"), Some("1f2e3d4c5b6a"));
        assert_eq!(ev.env_var("SLIPWAY_COMMIT"), Some(SHA));
        assert_eq!(
            ev.env_var("SLIPWAY_DELIVERY"),
            Some("5c0b7e9a-6f1d-11f0-8a4b-2d7e1c9f0a11")
        );
        assert_eq!(ev.env_var("NPM_TOKEN"), Some("/web/npm-token"));
        assert_eq!(ev.env_var("NOPE"), None);
        assert_eq!(ev.env.len(), 5);
    }

    #[test]
    fn failed_fixture() {
        let ev = parse_event(FAILED).unwrap();
        assert_eq!(ev.status, BuildStatus::Failed);
        assert!(ev.status.is_terminal());
        assert!(!ev.status.is_success());
        assert_eq!(ev.project, "web-build");
        assert_eq!(ev.commit(), Some(SHA));
        assert!(ev
            .build_arn
            .ends_with(":build/web-build:a0c4e6f8-1b3d-4f5a-8c7e-9d2b4f6a8c01"));
    }

    #[test]
    fn in_progress_fixture() {
        let ev = parse_event(IN_PROGRESS).unwrap();
        assert_eq!(ev.status, BuildStatus::InProgress);
        assert!(!ev.status.is_terminal());
        assert!(!ev.status.is_success());
        assert_eq!(ev.event_id, "f4e3d2c1-b0a9-8f7e-6d5c-4b3a2f1e0d9c");
        assert_eq!(ev.commit(), Some(SHA));
    }

    #[test]
    fn no_source_version_falls_back_to_slipway_commit() {
        let ev = parse_event(NO_SOURCE_VERSION).unwrap();
        assert_eq!(ev.status, BuildStatus::Succeeded);
        assert_eq!(ev.source_version, None);
        assert_eq!(ev.commit(), Some(SHA));
    }

    #[test]
    fn non_sha_source_version_falls_back_to_slipway_commit() {
        let ev = parse_edited(SUCCEEDED, |v| {
            v["detail"]["additional-information"]["source-version"] = "refs/heads/master".into();
        })
        .unwrap();
        assert_eq!(ev.source_version.as_deref(), Some("refs/heads/master"));
        assert_eq!(ev.commit(), Some(SHA));

        // Neither a sha source-version nor a usable SLIPWAY_COMMIT: no commit.
        let ev = parse_edited(NO_SOURCE_VERSION, |v| {
            let vars =
                &mut v["detail"]["additional-information"]["environment"]["environment-variables"];
            vars.as_array_mut()
                .unwrap()
                .retain(|e| e["name"] != "SLIPWAY_COMMIT");
        })
        .unwrap();
        assert_eq!(ev.commit(), None);
    }

    #[test]
    fn unknown_status_is_kept() {
        let ev = parse_event(UNKNOWN_STATUS).unwrap();
        assert_eq!(ev.status, BuildStatus::Unknown("SOMETHING_NEW".into()));
        assert_eq!(ev.status.as_str(), "SOMETHING_NEW");
        assert!(!ev.status.is_terminal());
        assert!(!ev.status.is_success());
    }

    #[test]
    fn status_round_trips() {
        for s in [
            "IN_PROGRESS",
            "SUCCEEDED",
            "FAILED",
            "FAULT",
            "STOPPED",
            "TIMED_OUT",
        ] {
            let status = BuildStatus::parse(s);
            assert!(!matches!(status, BuildStatus::Unknown(_)), "{s}");
            assert_eq!(status.as_str(), s);
            assert_eq!(status.to_string(), s);
            assert_eq!(status.is_terminal(), s != "IN_PROGRESS", "{s}");
        }
        // Case matters on the wire.
        assert_eq!(
            BuildStatus::parse("succeeded"),
            BuildStatus::Unknown("succeeded".into())
        );
    }

    #[test]
    fn missing_optional_blocks_are_tolerated() {
        let ev = parse_edited(SUCCEEDED, |v| {
            v["detail"]
                .as_object_mut()
                .unwrap()
                .remove("additional-information");
        })
        .unwrap();
        assert_eq!(ev.status, BuildStatus::Succeeded);
        assert_eq!(ev.source_version, None);
        assert!(ev.env.is_empty());
        assert_eq!(ev.commit(), None);

        let ev = parse_edited(SUCCEEDED, |v| {
            let info = v["detail"]["additional-information"]
                .as_object_mut()
                .unwrap();
            info.remove("environment");
            info.remove("logs");
        })
        .unwrap();
        assert!(ev.env.is_empty());
        assert_eq!(ev.commit(), Some(SHA));

        let ev = parse_edited(SUCCEEDED, |v| {
            v["detail"]["additional-information"] = serde_json::Value::Null;
        })
        .unwrap();
        assert!(ev.env.is_empty());
    }

    #[test]
    fn floats_and_odd_fields_are_ignored() {
        // The fixtures already carry 60.0 / 412.0; integers must work as well.
        let ev = parse_edited(SUCCEEDED, |v| {
            let info = &mut v["detail"]["additional-information"];
            info["build-number"] = 412.into();
            info["timeout-in-minutes"] = 60.into();
            info["brand-new-field"] = serde_json::json!({"x": [1, 2.5]});
        })
        .unwrap();
        assert_eq!(ev.status, BuildStatus::Succeeded);
    }

    #[test]
    fn not_json_is_an_error() {
        let err = parse_event("this is not json").unwrap_err();
        assert!(matches!(err, EventParseError::NotJson(_)), "{err:?}");
        assert!(err.to_string().contains("not JSON"), "{err}");

        let err = parse_event(&SUCCEEDED[..SUCCEEDED.len() / 2]).unwrap_err();
        assert!(matches!(err, EventParseError::NotJson(_)), "{err:?}");
    }

    #[test]
    fn wrong_detail_type_is_an_error() {
        let err = parse_edited(SUCCEEDED, |v| {
            v["detail-type"] = "CodeBuild Build Phase Change".into();
        })
        .unwrap_err();
        match &err {
            EventParseError::WrongDetailType(t) => assert_eq!(t, "CodeBuild Build Phase Change"),
            other => panic!("expected WrongDetailType, got {other:?}"),
        }
        assert!(err.to_string().contains("CodeBuild Build Phase Change"));
    }

    #[test]
    fn missing_detail_type_names_the_field() {
        let err = parse_edited(SUCCEEDED, |v| {
            v.as_object_mut().unwrap().remove("detail-type");
        })
        .unwrap_err();
        let (_, message) = field_error(err);
        assert!(message.contains("detail-type"), "{message}");

        let err = parse_event("[1, 2]").unwrap_err();
        assert!(matches!(err, EventParseError::Field { .. }), "{err:?}");
    }

    #[test]
    fn missing_build_id_names_the_field() {
        let err = parse_edited(SUCCEEDED, |v| {
            v["detail"].as_object_mut().unwrap().remove("build-id");
        })
        .unwrap_err();
        let text = err.to_string();
        let (path, message) = field_error(err);
        assert_eq!(path, "detail");
        assert!(message.contains("build-id"), "{message}");
        assert!(
            text.contains("detail") && text.contains("build-id"),
            "{text}"
        );
    }

    #[test]
    fn empty_build_id_is_an_error() {
        let err = parse_edited(SUCCEEDED, |v| v["detail"]["build-id"] = "".into()).unwrap_err();
        let (path, _) = field_error(err);
        assert_eq!(path, "detail.build-id");
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let err = parse_edited(SUCCEEDED, |v| {
            v["detail"]["additional-information"]["environment"]["environment-variables"][2]
                ["name"] = 7.into();
        })
        .unwrap_err();
        let (path, message) = field_error(err);
        assert_eq!(
            path,
            "detail.additional-information.environment.environment-variables[2].name"
        );
        assert!(message.contains("invalid type"), "{message}");

        let err = parse_edited(SUCCEEDED, |v| v["detail"]["build-status"] = 3.into()).unwrap_err();
        let (path, _) = field_error(err);
        assert_eq!(path, "detail.build-status");
    }

    #[test]
    fn build_id_from_arn_strips_the_prefix() {
        assert_eq!(
            build_id_from_arn(
                "arn:aws:codebuild:eu-west-1:123456789012:build/web-build:5f2c8e1a-9b3d-4c7e-a6f0-2d8b1e4c9a73"
            ),
            "web-build:5f2c8e1a-9b3d-4c7e-a6f0-2d8b1e4c9a73"
        );
        assert_eq!(
            build_id_from_arn("arn:aws-cn:codebuild:cn-north-1:123456789012:build/p:u"),
            "p:u"
        );
        assert_eq!(build_id_from_arn("web-build:5f2c"), "web-build:5f2c");
        assert_eq!(build_id_from_arn(""), "");
    }

    #[test]
    fn github_fixtures_are_valid_json() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/github");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            assert!(v.is_object(), "{name}: not an object");
            assert!(
                v["repository"]["full_name"].is_string(),
                "{name}: repository.full_name"
            );
            assert!(v["sender"]["login"].is_string(), "{name}: sender.login");
            if name.starts_with("push_") {
                for key in [
                    "ref",
                    "before",
                    "after",
                    "created",
                    "deleted",
                    "forced",
                    "base_ref",
                    "compare",
                    "commits",
                    "head_commit",
                    "repository",
                    "pusher",
                    "sender",
                ] {
                    assert!(v.get(key).is_some(), "{name}: missing {key}");
                }
                assert!(is_sha(v["before"].as_str().unwrap()), "{name}: before");
                assert!(is_sha(v["after"].as_str().unwrap()), "{name}: after");
                assert!(v["repository"]["created_at"].is_u64(), "{name}: created_at");
                assert!(v["repository"]["pushed_at"].is_u64(), "{name}: pushed_at");
            }
            seen.push(name);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "issues_opened.json",
                "ping.json",
                "push_branch_deleted.json",
                "push_feature.json",
                "push_master.json",
                "push_new_branch.json",
                "push_other_repo.json",
                "push_tag.json",
            ]
        );
    }
}
