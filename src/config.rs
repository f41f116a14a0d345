//! The configuration file (`slipway.toml`) and the secrets that come from the environment.
//!
//! Everything is validated once, at start; an error names the bad key and why.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::AppName;

/// Environment variable holding the GitHub webhook secret(s), comma-separated for rotation.
pub const WEBHOOK_SECRET_ENV: &str = "SLIPWAY_WEBHOOK_SECRET";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Secret(String),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written. Unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: PathBuf,
    queue_url: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    build: RawBuild,
    #[serde(default)]
    deploy: RawDeploy,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    notify: crate::notify::NotifyConfig,
    #[serde(default, rename = "app")]
    apps: Vec<RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    retry_initial_secs: Option<u64>,
    retry_max_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    poll_initial_ms: Option<u64>,
    poll_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    reconcile_after_secs: Option<u64>,
    visibility_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    repository: String,
    branch: Option<String>,
    codebuild_project: String,
    cluster: String,
    service: String,
    container: String,
    ecr_repository: String,
    image_tag: Option<String>,
    pin_digest: Option<bool>,
    deploy_foreign_builds: Option<bool>,
    rollout_timeout_secs: Option<u64>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub queue_url: Option<String>,
    pub server: ServerLimits,
    pub build: BuildRetry,
    pub deploy: DeployTiming,
    pub events: EventsConfig,
    /// Where notifications go (the URLs themselves come from the environment).
    pub notify: crate::notify::NotifyConfig,
    pub apps: Vec<AppConfig>,
}

/// How often a rollout is polled: starts at `poll_initial`, backs off to `poll_max`.
#[derive(Debug, Clone)]
pub struct DeployTiming {
    pub poll_initial: Duration,
    pub poll_max: Duration,
}

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// A build with no result for this long is asked about (`BatchGetBuilds`).
    pub reconcile_after: Duration,
    /// How long a received message stays invisible; extended while its deploy runs.
    pub visibility_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BuildRetry {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: AppName,
    /// GitHub `full_name`, e.g. `octo-org/web`.
    pub repository: String,
    pub branch: String,
    pub codebuild_project: String,
    pub cluster: String,
    pub service: String,
    pub container: String,
    pub ecr_repository: String,
    /// `{sha}` or `{short_sha}` with optional literal text around it.
    pub image_tag: String,
    pub pin_digest: bool,
    pub deploy_foreign_builds: bool,
    pub rollout_timeout: Duration,
}

impl AppConfig {
    /// What serializes deploys: one at a time per ECS service.
    pub fn service_key(&self) -> String {
        format!("{}/{}", self.cluster, self.service)
    }

    /// The ref a push must have to match this app.
    pub fn git_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// The image tag CodeBuild pushes for a commit.
    pub fn tag_for(&self, sha: &crate::ids::CommitSha) -> String {
        self.image_tag
            .replace("{short_sha}", sha.short())
            .replace("{sha}", sha.as_str())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        raw.validate()
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name.as_str() == name)
    }

    /// The app whose builds run in this CodeBuild project, if any.
    pub fn app_for_project(&self, project: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.codebuild_project == project)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.db")
    }
}

fn non_empty(key: String, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else if value.trim() != value {
        Err(invalid(key, "must not have leading or trailing spaces"))
    } else {
        Ok(value)
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| "0.0.0.0:8080".to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("\"{listen_text}\" is not an address like 0.0.0.0:8080"),
            )
        })?;
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        if let Some(url) = &self.queue_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    "queue_url",
                    format!("\"{url}\" is not an SQS queue URL"),
                ));
            }
        }
        let server = ServerLimits {
            max_connections: positive("server.max_connections", self.server.max_connections, 512)?,
            header_timeout: Duration::from_secs(positive(
                "server.header_timeout_secs",
                self.server.header_timeout_secs.map(|v| v as usize),
                10,
            )? as u64),
            body_timeout: Duration::from_secs(positive(
                "server.body_timeout_secs",
                self.server.body_timeout_secs.map(|v| v as usize),
                30,
            )? as u64),
        };
        let build = BuildRetry {
            initial: Duration::from_secs(positive(
                "build.retry_initial_secs",
                self.build.retry_initial_secs.map(|v| v as usize),
                1,
            )? as u64),
            max: Duration::from_secs(positive(
                "build.retry_max_secs",
                self.build.retry_max_secs.map(|v| v as usize),
                300,
            )? as u64),
        };
        if build.max < build.initial {
            return Err(invalid(
                "build.retry_max_secs",
                "must not be smaller than build.retry_initial_secs",
            ));
        }
        let deploy = DeployTiming {
            poll_initial: Duration::from_millis(positive(
                "deploy.poll_initial_ms",
                self.deploy.poll_initial_ms.map(|v| v as usize),
                5_000,
            )? as u64),
            poll_max: Duration::from_millis(positive(
                "deploy.poll_max_ms",
                self.deploy.poll_max_ms.map(|v| v as usize),
                30_000,
            )? as u64),
        };
        if deploy.poll_max < deploy.poll_initial {
            return Err(invalid(
                "deploy.poll_max_ms",
                "must not be smaller than deploy.poll_initial_ms",
            ));
        }
        let events = EventsConfig {
            reconcile_after: Duration::from_secs(positive(
                "events.reconcile_after_secs",
                self.events.reconcile_after_secs.map(|v| v as usize),
                30 * 60,
            )? as u64),
            visibility_timeout: Duration::from_secs(positive(
                "events.visibility_timeout_secs",
                self.events.visibility_timeout_secs.map(|v| v as usize),
                120,
            )? as u64),
        };
        if events.visibility_timeout > Duration::from_secs(12 * 3600) {
            return Err(invalid(
                "events.visibility_timeout_secs",
                "SQS allows at most 43200 (12 hours)",
            ));
        }
        let mut names = HashSet::new();
        let mut apps = Vec::with_capacity(self.apps.len());
        for (i, raw) in self.apps.into_iter().enumerate() {
            let app = raw.validate(i)?;
            if !names.insert(app.name.clone()) {
                return Err(invalid(
                    format!("app[{i}].name"),
                    format!("\"{}\" is used by another app", app.name),
                ));
            }
            apps.push(app);
        }
        if apps.is_empty() {
            return Err(invalid("app", "at least one [[app]] is required"));
        }
        Ok(Config {
            listen,
            state_dir: self.state_dir,
            queue_url: self.queue_url,
            server,
            build,
            deploy,
            events,
            notify: self.notify,
            apps,
        })
    }
}

fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be greater than 0")),
        Some(v) => Ok(v),
    }
}

impl RawApp {
    fn validate(self, i: usize) -> Result<AppConfig, ConfigError> {
        let key = |field: &str| format!("app[{i}].{field}");
        let name = AppName::parse(&self.name).map_err(|e| invalid(key("name"), e.0))?;
        let key = |field: &str| format!("app[{i}] ({name}).{field}");
        let repository = non_empty(key("repository"), self.repository)?;
        let mut parts = repository.split('/');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(o), Some(r), None) if !o.is_empty() && !r.is_empty()
        );
        if !well_formed {
            return Err(invalid(
                key("repository"),
                format!("\"{repository}\" is not a GitHub owner/name"),
            ));
        }
        let branch = non_empty(
            key("branch"),
            self.branch.unwrap_or_else(|| "master".into()),
        )?;
        if let Some(stripped) = branch.strip_prefix("refs/") {
            return Err(invalid(
                key("branch"),
                format!(
                    "give the branch name (\"{}\"), not a ref",
                    stripped.trim_start_matches("heads/")
                ),
            ));
        }
        let image_tag = self.image_tag.unwrap_or_else(|| "{sha}".into());
        if !image_tag.contains("{sha}") && !image_tag.contains("{short_sha}") {
            return Err(invalid(
                key("image_tag"),
                format!("\"{image_tag}\" must contain {{sha}} or {{short_sha}}"),
            ));
        }
        let sample = image_tag
            .replace("{short_sha}", "1234567")
            .replace("{sha}", &"a".repeat(40));
        let tag_ok = sample.len() <= 128
            && sample
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && sample
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !tag_ok {
            return Err(invalid(
                key("image_tag"),
                format!("\"{image_tag}\" does not make a valid image tag"),
            ));
        }
        let rollout = self.rollout_timeout_secs.unwrap_or(15 * 60);
        if rollout == 0 {
            return Err(invalid(
                key("rollout_timeout_secs"),
                "must be greater than 0",
            ));
        }
        Ok(AppConfig {
            repository,
            branch,
            codebuild_project: non_empty(key("codebuild_project"), self.codebuild_project)?,
            cluster: non_empty(key("cluster"), self.cluster)?,
            service: non_empty(key("service"), self.service)?,
            container: non_empty(key("container"), self.container)?,
            ecr_repository: non_empty(key("ecr_repository"), self.ecr_repository)?,
            image_tag,
            pin_digest: self.pin_digest.unwrap_or(false),
            deploy_foreign_builds: self.deploy_foreign_builds.unwrap_or(false),
            rollout_timeout: Duration::from_secs(rollout),
            name,
        })
    }
}

/// A secret value: never printed, compared in constant time.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One or more webhook secrets; any one matching is accepted (rotation).
#[derive(Clone, Debug)]
pub struct WebhookSecrets(Vec<Secret>);

impl WebhookSecrets {
    /// Parses the comma-separated value of [`WEBHOOK_SECRET_ENV`].
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        let value = value.ok_or_else(|| {
            ConfigError::Secret(format!(
                "{WEBHOOK_SECRET_ENV} is not set: slipway will not accept unsigned webhooks"
            ))
        })?;
        let secrets: Vec<Secret> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect();
        if secrets.is_empty() {
            return Err(ConfigError::Secret(format!(
                "{WEBHOOK_SECRET_ENV} is empty: slipway will not accept unsigned webhooks"
            )));
        }
        Ok(Self(secrets))
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse(std::env::var(WEBHOOK_SECRET_ENV).ok().as_deref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
state_dir = "/tmp/slipway"

[[app]]
name = "web"
repository = "octo-org/web"
codebuild_project = "web-build"
cluster = "web"
service = "web"
container = "web"
ecr_repository = "web"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(GOOD).unwrap();
        let app = &c.apps[0];
        assert_eq!(app.branch, "master");
        assert_eq!(app.image_tag, "{sha}");
        assert_eq!(app.rollout_timeout, Duration::from_secs(900));
        assert_eq!(c.server.max_connections, 512);
        assert_eq!(app.git_ref(), "refs/heads/master");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&GOOD.replace("cluster =", "clustre = \"x\"\ncluster ="));
        assert!(e.contains("unknown field `clustre`"), "{e}");
        let e = err(&format!("bogus = 1\n{GOOD}"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err(&GOOD.replace("octo-org/web", "web"));
        assert!(e.contains("app[0] (web).repository"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:0", "nowhere"));
        assert!(e.contains("listen"), "{e}");
        let e = err(&GOOD.replace("container = \"web\"", "container = \"\""));
        assert!(
            e.contains("app[0] (web).container: must not be empty"),
            "{e}"
        );
        let e = err(&format!("{GOOD}image_tag = \"v1\"\n"));
        assert!(e.contains("image_tag"), "{e}");
        let e = err(&format!("{GOOD}{}", &GOOD[GOOD.find("[[app]]").unwrap()..]));
        assert!(e.contains("is used by another app"), "{e}");
        let e = err("state_dir = \"/x\"\n");
        assert!(e.contains("at least one [[app]]"), "{e}");
        let e = err(&format!("{GOOD}branch = \"refs/heads/main\"\n"));
        assert!(e.contains("branch"), "{e}");
    }

    #[test]
    fn secrets_are_required_and_never_printed() {
        assert!(WebhookSecrets::parse(None).is_err());
        assert!(WebhookSecrets::parse(Some(" , ")).is_err());
        let s = WebhookSecrets::parse(Some("old-secret, new-secret")).unwrap();
        assert_eq!(s.iter().count(), 2);
        let printed = format!("{s:?}");
        assert!(!printed.contains("old-secret") && !printed.contains("new-secret"));
    }
}
