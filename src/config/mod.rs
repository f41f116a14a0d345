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

pub mod account;
pub mod github;
pub mod notify;
pub mod promote;
pub mod replicas;
pub mod store;

pub use notify::NotifyConfig;

/// Environment variable holding the GitHub webhook secret(s), comma-separated for rotation.
pub const WEBHOOK_SECRET_ENV: &str = "SLIPWAY_WEBHOOK_SECRET";

/// The shortest webhook secret accepted: a short secret can be guessed offline from one
/// signed delivery.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `#[source]`: the message already carries the cause, and `{:#}` would repeat it.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Secret(String),
}

/// `url` if it is an http(s) URL with a host, without its trailing slash; else an error naming
/// `key` (the URL is configuration, not a secret: it may be quoted).
pub(crate) fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let ok = reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(invalid(key, format!("\"{url}\" is not an http(s) URL")));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
    /// The operators' listener (ops API, later metrics and the status page).
    admin_listen: Option<String>,
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
    notify: notify::RawNotifyConfig,
    #[serde(default)]
    provision: RawProvision,
    #[serde(default, rename = "app")]
    apps: Vec<RawApp>,
    #[serde(default)]
    chat: RawChat,
    #[serde(default)]
    journal: JournalConfig,
    #[serde(default)]
    store: store::RawStoreConfig,
    #[serde(default)]
    replicas: replicas::RawReplicasConfig,
    /// Optional GitHub API access (issue 11): statuses, deployments, recovery.
    github: Option<github::RawGithubConfig>,
}

/// The `[chat]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChat {
    /// The Slack workspace (`T…`) whose commands are accepted; required with a signing secret.
    slack_team_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    /// Open connections one client address may hold on the public listener.
    max_connections_per_ip: Option<usize>,
    /// Load balancers whose `X-Forwarded-For` names the client.
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Bytes of not-yet-authenticated bodies held in memory at once, all requests together.
    unauthenticated_body_bytes: Option<usize>,
    /// Host names the admin listener answers for, besides the loopback names (issue 23).
    #[serde(default)]
    admin_hosts: Vec<String>,
    /// Where the admin listener (status page) is reached from outside; GitHub links there.
    public_url: Option<String>,
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
    /// The fallback poll of a rollout while ECS's deployment events arrive for it.
    poll_with_events_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    reconcile_after_secs: Option<u64>,
    visibility_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvision {
    queue_name: Option<String>,
    dead_letter_queue_name: Option<String>,
    rule_name: Option<String>,
    max_receive_count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    repository: String,
    branch: Option<String>,
    /// Release on tags (issue 27): pushed tags matching these globs deploy their commit.
    tags: Option<Vec<String>>,
    /// Required, except for a promoted app (`promote_from`), which never builds.
    codebuild_project: Option<String>,
    cluster: String,
    service: String,
    /// The container whose image is replaced; or `containers`, several (exactly one of the two).
    container: Option<String>,
    containers: Option<Vec<String>>,
    ecr_repository: String,
    image_tag: Option<String>,
    pin_digest: Option<bool>,
    deploy_foreign_builds: Option<bool>,
    rollout_timeout_secs: Option<u64>,
    slack_users: Option<Vec<String>>,
    /// Monorepos (issue 12): build only for pushes that change these files.
    paths: Option<Vec<String>>,
    paths_ignore: Option<Vec<String>>,
    honor_skip_markers: Option<bool>,
    /// The GitHub Deployments environment; the app's name when unset.
    environment: Option<String>,
    /// The environment variable holding this repository's webhook secret(s) (issue 23);
    /// `SLIPWAY_WEBHOOK_SECRET` when unset.
    webhook_secret_env: Option<String>,
    /// GitHub's `production_environment`; default: the environment is named `production`.
    production: Option<bool>,
    /// The service's public URL, GitHub's `environment_url` for the app's deployments.
    environment_url: Option<String>,
    /// Environments and promotion (issue 27): deploy what this app's deploys ran instead of
    /// building.
    promote_from: Option<String>,
    approval: Option<String>,
    approvers: Option<Vec<String>>,
    approval_timeout_hours: Option<u64>,
    /// Another AWS account (issue 27): the role every ECS and ECR call of this app is made as.
    role_arn: Option<String>,
    external_id: Option<String>,
}

/// [`Config::builder_of`] over a list of apps (also while the config is being validated):
/// `app` itself, or the head of its `promote_from` chain, at most as many steps as apps.
fn builder_in<'a>(apps: &'a [AppConfig], app: &'a AppConfig) -> &'a AppConfig {
    let mut at = app;
    for _ in 0..apps.len() {
        let from = at.promote.as_ref().map(|p| p.from.as_str());
        match from.and_then(|f| apps.iter().find(|a| a.name.as_str() == f)) {
            Some(next) => at = next,
            None => break,
        }
    }
    at
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub queue_url: Option<String>,
    pub server: ServerLimits,
    pub build: BuildRetry,
    pub deploy: DeployTiming,
    pub events: EventsConfig,
    /// Where notifications go (the URLs themselves come from the environment).
    pub notify: NotifyConfig,
    /// Names of what `slipway provision` creates.
    pub provision: ProvisionConfig,
    pub apps: Vec<AppConfig>,
    pub chat: ChatConfig,
    /// The `[github]` table, validated; None when absent.
    pub github: Option<github::GithubConfig>,
    /// `[server] public_url` (or the older `[github] public_url`), without a trailing slash:
    /// where a deploy's page is reached from outside.
    pub public_url: Option<String>,
    /// Retention and queueing of the journal.
    pub journal: JournalConfig,
    /// Which engine holds the state (`[store]`).
    pub store: store::StoreConfig,
    /// This replica's id and the lease period (`[replicas]`, issue 26).
    pub replicas: replicas::ReplicasConfig,
}

/// The `[chat]` table.
#[derive(Debug, Clone, Default)]
pub struct ChatConfig {
    /// Slack commands from any other workspace are refused.
    pub slack_team_id: Option<String>,
}

/// The `[provision]` table: slipway's own queue, dead-letter queue and EventBridge rule.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    pub queue_name: String,
    pub dead_letter_queue_name: String,
    pub rule_name: String,
    /// Receives of one message before SQS moves it to the dead-letter queue.
    pub max_receive_count: u32,
}

/// How often a rollout is polled: starts at `poll_initial`, backs off to `poll_max`.
#[derive(Debug, Clone)]
pub struct DeployTiming {
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// While ECS's deployment events arrive for a rollout, it is polled only this often (a
    /// lost event is still caught).
    pub poll_with_events: Duration,
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
    pub max_connections_per_ip: usize,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub unauthenticated_body_bytes: usize,
    /// `Host` names (`name` or `name:port`, lowercase) the admin listener answers for besides
    /// `127.0.0.1`, `localhost` and `[::1]`; any other gets 421 (DNS rebinding).
    pub admin_hosts: Vec<String>,
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
    /// The branch whose pushes deploy (`branch`; `master` when neither `branch` nor `tags` is
    /// set; None for an app that deploys only tags).
    pub branch: Option<String>,
    /// The tags whose pushes deploy (`tags`, globs as GitHub Actions reads them: `*` stays
    /// within one `/` segment, `**` crosses them).
    pub tags: Option<crate::push_filter::Globs>,
    /// The CodeBuild project that builds the app; None for a promoted app (`promote_from`).
    pub codebuild_project: Option<String>,
    pub cluster: String,
    pub service: String,
    /// The first (or only) container whose image is replaced: its image is what `status`
    /// shows as running.
    pub container: String,
    /// Every container whose image is replaced (`container` first).
    pub containers: Vec<String>,
    pub ecr_repository: String,
    /// `{sha}` or `{short_sha}` with optional literal text around it.
    pub image_tag: String,
    pub pin_digest: bool,
    pub deploy_foreign_builds: bool,
    pub rollout_timeout: Duration,
    /// Slack user ids allowed to deploy and roll back this app from chat (None: nobody;
    /// `["*"]`: everyone in the workspace that can run the slash command).
    pub slack_users: Option<Vec<String>>,
    /// Which pushes build this app: `paths`, `paths_ignore`, `honor_skip_markers`.
    pub path_rules: crate::push_filter::PathRules,
    /// The GitHub Deployments environment (`environment`, default: the app's name).
    pub environment: String,
    /// The environment variable holding the secrets that sign this repository's deliveries
    /// (`webhook_secret_env`, default [`WEBHOOK_SECRET_ENV`]).
    pub webhook_secret_env: String,
    /// GitHub's `production_environment` (`production`, default: `environment` is
    /// `production`).
    pub production: bool,
    /// GitHub's `environment_url` (`environment_url`): the service's public URL.
    pub environment_url: Option<String>,
    /// Where this app's images come from when it is promoted (`promote_from`, issue 27).
    pub promote: Option<promote::PromoteConfig>,
    /// The role in another AWS account its ECS and ECR calls are made as (`role_arn`,
    /// `external_id`); None: slipway's own credentials.
    pub role: Option<account::AccountRole>,
}

impl AppConfig {
    /// What serializes deploys: one at a time per ECS service.
    pub fn service_key(&self) -> String {
        format!("{}/{}", self.cluster, self.service)
    }

    /// Whether a push of `git_ref` (`refs/heads/<branch>` or `refs/tags/<tag>`) deploys this
    /// app: its branch, or a tag matching its `tags`.
    pub fn deploys_ref(&self, git_ref: &str) -> bool {
        if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            return self.tags.as_ref().is_some_and(|t| t.is_match(tag));
        }
        self.branch
            .as_deref()
            .is_some_and(|b| git_ref.strip_prefix("refs/heads/") == Some(b))
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
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
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

    /// The app whose build made `app`'s images: `app` itself, or for a promoted app the head
    /// of its `promote_from` chain (the chain is checked for cycles when loaded).
    pub fn builder_of<'a>(&'a self, app: &'a AppConfig) -> &'a AppConfig {
        builder_in(&self.apps, app)
    }

    /// Whether `app`'s images are held in another account than the one its service is in:
    /// its builder is in another account than it (one of them through a `role_arn`).
    pub fn images_elsewhere(&self, app: &AppConfig) -> bool {
        let account = |a: &AppConfig| a.role.as_ref().map(|r| r.account.clone());
        account(self.builder_of(app)) != account(app)
    }

    /// The app whose builds run in this CodeBuild project, if any.
    pub fn app_for_project(&self, project: &str) -> Option<&AppConfig> {
        self.apps
            .iter()
            .find(|a| a.codebuild_project.as_deref() == Some(project))
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
        let admin_text = self
            .admin_listen
            .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
        let admin_listen: SocketAddr = admin_text.parse().map_err(|_| {
            invalid(
                "admin_listen",
                format!("\"{admin_text}\" is not an address like 127.0.0.1:9090"),
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
            header_timeout: duration(
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
                10,
                Duration::from_secs,
                max::HEADER_TIMEOUT_SECS,
            )?,
            body_timeout: duration(
                "server.body_timeout_secs",
                self.server.body_timeout_secs,
                30,
                Duration::from_secs,
                max::BODY_TIMEOUT_SECS,
            )?,
            max_connections_per_ip: positive(
                "server.max_connections_per_ip",
                self.server.max_connections_per_ip,
                64,
            )?,
            trusted_proxies: self
                .server
                .trusted_proxies
                .iter()
                .map(|p| {
                    p.parse().map_err(|_| {
                        invalid(
                            "server.trusted_proxies",
                            format!("\"{p}\" is not an IP address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            unauthenticated_body_bytes: positive(
                "server.unauthenticated_body_bytes",
                self.server.unauthenticated_body_bytes,
                64 * 1024 * 1024,
            )?,
            admin_hosts: self
                .server
                .admin_hosts
                .iter()
                .map(|h| {
                    let ok = !h.is_empty()
                        && h.bytes().all(|b| {
                            b.is_ascii_alphanumeric()
                                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                        });
                    if ok {
                        Ok(h.to_ascii_lowercase())
                    } else {
                        Err(invalid(
                            "server.admin_hosts",
                            format!("\"{h}\" is not a host name (name or name:port)"),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let chat = ChatConfig {
            slack_team_id: self
                .chat
                .slack_team_id
                .map(|t| non_empty("chat.slack_team_id".into(), t))
                .transpose()?,
        };
        let build = BuildRetry {
            initial: duration(
                "build.retry_initial_secs",
                self.build.retry_initial_secs,
                1,
                Duration::from_secs,
                max::RETRY_SECS,
            )?,
            max: duration(
                "build.retry_max_secs",
                self.build.retry_max_secs,
                300,
                Duration::from_secs,
                max::RETRY_SECS,
            )?,
        };
        if build.max < build.initial {
            return Err(invalid(
                "build.retry_max_secs",
                "must not be smaller than build.retry_initial_secs",
            ));
        }
        let deploy = DeployTiming {
            poll_initial: duration(
                "deploy.poll_initial_ms",
                self.deploy.poll_initial_ms,
                5_000,
                Duration::from_millis,
                max::POLL_MS,
            )?,
            poll_max: duration(
                "deploy.poll_max_ms",
                self.deploy.poll_max_ms,
                30_000,
                Duration::from_millis,
                max::POLL_MS,
            )?,
            poll_with_events: duration(
                "deploy.poll_with_events_ms",
                self.deploy.poll_with_events_ms,
                60_000,
                Duration::from_millis,
                max::POLL_MS,
            )?,
        };
        if deploy.poll_max < deploy.poll_initial {
            return Err(invalid(
                "deploy.poll_max_ms",
                "must not be smaller than deploy.poll_initial_ms",
            ));
        }
        let events = EventsConfig {
            reconcile_after: duration(
                "events.reconcile_after_secs",
                self.events.reconcile_after_secs,
                30 * 60,
                Duration::from_secs,
                max::RECONCILE_AFTER_SECS,
            )?,
            visibility_timeout: duration(
                "events.visibility_timeout_secs",
                self.events.visibility_timeout_secs,
                120,
                Duration::from_secs,
                max::VISIBILITY_TIMEOUT_SECS,
            )?,
        };
        let provision = self.provision.validate()?;
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
        let chains: Vec<_> = apps
            .iter()
            .map(|a| (a.name.clone(), a.promote.as_ref().map(|p| p.from.clone())))
            .collect();
        promote::check_chains(&chains)?;
        account::check_shared_roles(
            &apps
                .iter()
                .map(|a| (a.name.clone(), a.role.clone()))
                .collect::<Vec<_>>(),
        )?;
        promote::check_repositories(&apps)?;
        let github = self.github.map(|g| g.validate()).transpose()?;
        let journal = self.journal.validate()?;
        let store = self.store.validate()?;
        if matches!(store, store::StoreConfig::DynamoDb { .. }) && journal.backup_to.is_some() {
            // Silently unused otherwise: `slipway backup` copies the SQLite journal's file.
            return Err(ConfigError::Invalid {
                key: "journal.backup_to".into(),
                message: "is for the SQLite journal; the DynamoDB engine's backups are \
                          DynamoDB's point-in-time recovery (on for the table `slipway \
                          provision` makes)"
                    .into(),
            });
        }
        Ok(Config {
            listen,
            admin_listen,
            chat,
            state_dir: self.state_dir,
            queue_url: self.queue_url,
            server,
            build,
            deploy,
            events,
            notify: self.notify.validate()?,
            provision,
            apps,
            public_url: match self.server.public_url {
                Some(url) => Some(http_url("server.public_url", &url)?),
                None => github.as_ref().and_then(|g| g.public_url.clone()),
            },
            github,
            journal,
            store,
            replicas: self.replicas.validate()?,
        })
    }
}

/// `[journal]`: how long the journal keeps what, and how many deliveries may wait for its
/// writer (issue 13). Days count from when a delivery was received.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Bodies of older deliveries are dropped; their metadata and dedup keys stay.
    pub keep_bodies_days: u64,
    /// Ignored, ping and duplicate deliveries older than this are deleted, rows and bodies.
    pub keep_ignored_days: u64,
    /// Deliveries waiting for the journal writer before new ones get 503.
    pub max_queued_deliveries: usize,
    /// How often the background pruning pass runs.
    pub prune_interval_secs: u64,
    /// How long `serve` waits for the journal lock while another slipway holds it (a task
    /// being replaced may still be stopping); 0: refuse at once.
    pub lock_wait_secs: u64,
    /// Where the scheduled backup goes: a local path or `s3://bucket/key` (None: no schedule).
    /// Each copy gets a timestamp before its extension.
    pub backup_to: Option<BackupLocation>,
    /// Hours between scheduled backups.
    pub backup_every_hours: u64,
    /// Scheduled copies kept at `backup_to`; older ones are deleted.
    pub backup_keep: usize,
}

/// Where a backup is written or read: a file, or an S3 object (`s3://bucket/key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupLocation {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

impl std::str::FromStr for BackupLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                return Err(format!(
                    "\"{text}\" is not s3://bucket/key (a bucket and an object key, not a prefix)"
                ));
            }
            return Ok(BackupLocation::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if text.is_empty() || text.contains("://") {
            return Err(format!(
                "\"{text}\" is neither a file path nor s3://bucket/key"
            ));
        }
        Ok(BackupLocation::File(PathBuf::from(text)))
    }
}

impl fmt::Display for BackupLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupLocation::File(path) => write!(f, "{}", path.display()),
            BackupLocation::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

impl<'de> Deserialize<'de> for BackupLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            keep_bodies_days: 90,
            keep_ignored_days: 14,
            max_queued_deliveries: 1024,
            prune_interval_secs: 60,
            lock_wait_secs: 120,
            backup_to: None,
            backup_every_hours: 24,
            backup_keep: 7,
        }
    }
}

impl JournalConfig {
    fn validate(self) -> Result<JournalConfig, ConfigError> {
        positive(
            "journal.keep_bodies_days",
            Some(self.keep_bodies_days as usize),
            0,
        )?;
        positive(
            "journal.keep_ignored_days",
            Some(self.keep_ignored_days as usize),
            0,
        )?;
        positive(
            "journal.max_queued_deliveries",
            Some(self.max_queued_deliveries),
            0,
        )?;
        positive(
            "journal.prune_interval_secs",
            Some(self.prune_interval_secs as usize),
            0,
        )?;
        positive(
            "journal.backup_every_hours",
            Some(self.backup_every_hours as usize),
            0,
        )?;
        positive("journal.backup_keep", Some(self.backup_keep), 0)?;
        // Day counts become milliseconds: keep them far from overflowing.
        for (key, value, max) in [
            ("journal.keep_bodies_days", self.keep_bodies_days, 36_500),
            ("journal.keep_ignored_days", self.keep_ignored_days, 36_500),
            (
                "journal.prune_interval_secs",
                self.prune_interval_secs,
                86_400,
            ),
            ("journal.lock_wait_secs", self.lock_wait_secs, 86_400),
            ("journal.backup_every_hours", self.backup_every_hours, 8_760),
        ] {
            if value > max {
                return Err(invalid(
                    key,
                    format!("{value} is too large (at most {max})"),
                ));
            }
        }
        Ok(self)
    }
}

/// The largest value each duration key accepts, in the key's own unit. Far above any sensible
/// setting, low enough that arithmetic on them (deadlines, backoff) cannot overflow.
pub mod max {
    pub const HEADER_TIMEOUT_SECS: u64 = 300;
    pub const BODY_TIMEOUT_SECS: u64 = 600;
    /// StartBuild retry delays (initial and max).
    pub const RETRY_SECS: u64 = 24 * 3600;
    /// Rollout polling intervals (initial and max).
    pub const POLL_MS: u64 = 10 * 60 * 1000;
    pub const RECONCILE_AFTER_SECS: u64 = 7 * 24 * 3600;
    /// What SQS allows.
    pub const VISIBILITY_TIMEOUT_SECS: u64 = 12 * 3600;
    pub const ROLLOUT_TIMEOUT_SECS: u64 = 24 * 3600;
}

/// The longest an outbox (GitHub's, a notification target's) may keep trying an entry: 30 days.
const MAX_GIVE_UP_AFTER_HOURS: u64 = 720;

/// A number of `unit`s (`Duration::from_secs` or `from_millis`) in `1..=max`, or the default.
fn duration(
    key: &str,
    value: Option<u64>,
    default: u64,
    unit: fn(u64) -> Duration,
    max: u64,
) -> Result<Duration, ConfigError> {
    match value {
        Some(0) => Err(invalid(key, "must be greater than 0")),
        Some(v) if v > max => Err(invalid(key, format!("{v} is too large (at most {max})"))),
        v => Ok(unit(v.unwrap_or(default))),
    }
}

fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be greater than 0")),
        Some(v) => Ok(v),
    }
}

impl RawProvision {
    fn validate(self) -> Result<ProvisionConfig, ConfigError> {
        let sqs_name = |key: &str, name: String| {
            let name = non_empty(key.to_owned(), name)?;
            let ok = name.len() <= 80
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if ok {
                Ok(name)
            } else {
                Err(invalid(
                    key,
                    format!(
                        "\"{name}\" is not a standard SQS queue name (up to 80 of A-Z a-z 0-9 - _)"
                    ),
                ))
            }
        };
        let queue_name = sqs_name(
            "provision.queue_name",
            self.queue_name.unwrap_or_else(|| "slipway-events".into()),
        )?;
        let dead_letter_queue_name = sqs_name(
            "provision.dead_letter_queue_name",
            self.dead_letter_queue_name
                .unwrap_or_else(|| format!("{queue_name}-dlq")),
        )?;
        if dead_letter_queue_name == queue_name {
            return Err(invalid(
                "provision.dead_letter_queue_name",
                "must differ from provision.queue_name",
            ));
        }
        let rule_name = non_empty(
            "provision.rule_name".into(),
            self.rule_name.unwrap_or_else(|| "slipway-codebuild".into()),
        )?;
        let rule_ok = rule_name.len() <= 64
            && rule_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !rule_ok {
            return Err(invalid(
                "provision.rule_name",
                format!("\"{rule_name}\" is not an EventBridge rule name (up to 64 of A-Z a-z 0-9 . - _)"),
            ));
        }
        let max_receive_count = self.max_receive_count.unwrap_or(5);
        if !(1..=1000).contains(&max_receive_count) {
            return Err(invalid(
                "provision.max_receive_count",
                "must be between 1 and 1000",
            ));
        }
        Ok(ProvisionConfig {
            queue_name,
            dead_letter_queue_name,
            rule_name,
            max_receive_count,
        })
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
        let promote = promote::RawPromote {
            promote_from: self.promote_from,
            approval: self.approval,
            approvers: self.approvers,
            approval_timeout_hours: self.approval_timeout_hours,
        }
        .validate(&key)?;
        let role = account::validate(&key, self.role_arn, self.external_id)?;
        if promote.is_some() {
            for (field, set) in [
                ("codebuild_project", self.codebuild_project.is_some()),
                ("branch", self.branch.is_some()),
                ("paths", self.paths.is_some()),
                ("paths_ignore", self.paths_ignore.is_some()),
                ("honor_skip_markers", self.honor_skip_markers.is_some()),
                (
                    "deploy_foreign_builds",
                    self.deploy_foreign_builds.is_some(),
                ),
            ] {
                if set {
                    return Err(invalid(key(field), promote::NOT_FOR_PROMOTED));
                }
            }
        }
        let codebuild_project = match (self.codebuild_project, &promote) {
            (Some(p), _) => Some(non_empty(key("codebuild_project"), p)?),
            (None, Some(_)) => None,
            (None, None) => {
                return Err(invalid(
                    key("codebuild_project"),
                    "missing: name the CodeBuild project that builds the app (or set \
                     `promote_from` to deploy what another app ran)",
                ))
            }
        };
        // `master` by default, as before tags existed; an app with `tags` and no `branch`
        // deploys only tags; a promoted app deploys no branch (its source's deploys lead).
        let branch = match (self.branch, &self.tags) {
            (Some(b), _) => Some(non_empty(key("branch"), b)?),
            (None, None) if promote.is_none() => Some("master".to_owned()),
            (None, _) => None,
        };
        if let Some(stripped) = branch.as_deref().and_then(|b| b.strip_prefix("refs/")) {
            return Err(invalid(
                key("branch"),
                format!(
                    "give the branch name (\"{}\"), not a ref",
                    stripped.trim_start_matches("heads/")
                ),
            ));
        }
        if branch.is_none() && promote.is_none() && self.tags.as_ref().is_some_and(|t| t.is_empty())
        {
            return Err(invalid(
                key("tags"),
                "is empty and no `branch` is set: the app would deploy nothing \
                 (set `branch`, `tags`, or both)",
            ));
        }
        let tags = tag_globs(&key, self.tags)?;
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
        let rollout_timeout = duration(
            &key("rollout_timeout_secs"),
            self.rollout_timeout_secs,
            15 * 60,
            Duration::from_secs,
            max::ROLLOUT_TIMEOUT_SECS,
        )?;
        let path_rules = path_rules(&key, self.paths, self.paths_ignore, self.honor_skip_markers)?;
        let containers = match (self.container, self.containers) {
            (Some(one), None) => vec![non_empty(key("container"), one)?],
            (None, Some(list)) if !list.is_empty() => {
                let mut seen = std::collections::BTreeSet::new();
                for (i, c) in list.iter().enumerate() {
                    if c.trim().is_empty() {
                        return Err(invalid(key(&format!("containers[{i}]")), "must not be empty"));
                    }
                    if !seen.insert(c.as_str()) {
                        return Err(invalid(
                            key(&format!("containers[{i}]")),
                            format!("{c:?} is listed twice"),
                        ));
                    }
                }
                list
            }
            (None, Some(_)) => return Err(invalid(key("containers"), "must list at least one container")),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("container"),
                    "set either `container` or `containers`, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    key("container"),
                    "missing: name the container whose image is replaced (`container = \"web\"`, or `containers = [\"web\", \"migrate\"]`)",
                ))
            }
        };
        let environment = match self.environment {
            None => name.to_string(),
            Some(env) => non_empty(key("environment"), env)?,
        };
        Ok(AppConfig {
            path_rules,
            repository,
            branch,
            tags,
            codebuild_project,
            promote,
            role,
            cluster: non_empty(key("cluster"), self.cluster)?,
            service: non_empty(key("service"), self.service)?,
            container: containers[0].clone(),
            containers,
            ecr_repository: non_empty(key("ecr_repository"), self.ecr_repository)?,
            image_tag,
            pin_digest: self.pin_digest.unwrap_or(false),
            deploy_foreign_builds: self.deploy_foreign_builds.unwrap_or(false),
            rollout_timeout,
            slack_users: self.slack_users,
            environment: environment.clone(),
            production: self
                .production
                .unwrap_or(environment.eq_ignore_ascii_case("production")),
            environment_url: match self.environment_url {
                Some(url) => Some(http_url(&key("environment_url"), &url)?),
                None => None,
            },
            webhook_secret_env: match self.webhook_secret_env {
                None => WEBHOOK_SECRET_ENV.to_owned(),
                Some(var) => env_var_name(key("webhook_secret_env"), var)?,
            },
            name,
        })
    }
}

/// The name of an environment variable: letters, digits and `_`, not starting with a digit.
fn env_var_name(key: String, value: String) -> Result<String, ConfigError> {
    let ok = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!("\"{value}\" is not an environment variable name"),
        ))
    }
}

/// An app's `tags`, with a bad glob named. An empty list is refused (it would deploy no tag:
/// leave the key out).
fn tag_globs(
    key: &dyn Fn(&str) -> String,
    tags: Option<Vec<String>>,
) -> Result<Option<crate::push_filter::Globs>, ConfigError> {
    let Some(list) = tags else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(invalid(
            key("tags"),
            "must list at least one glob (leave it out to deploy no tag)",
        ));
    }
    for (i, tag) in list.iter().enumerate() {
        if let Some(short) = tag.strip_prefix("refs/") {
            return Err(invalid(
                format!("{}[{i}]", key("tags")),
                format!(
                    "give the tag glob (\"{}\"), not a ref",
                    short.trim_start_matches("tags/")
                ),
            ));
        }
    }
    crate::push_filter::Globs::new(list).map(Some).map_err(|e| {
        invalid(
            format!("{}[{}]", key("tags"), e.index),
            format!("\"{}\" is not a valid glob: {}", e.pattern, e.message),
        )
    })
}

/// An app's `paths`, `paths_ignore` and `honor_skip_markers`, with a bad glob named.
fn path_rules(
    key: &dyn Fn(&str) -> String,
    paths: Option<Vec<String>>,
    paths_ignore: Option<Vec<String>>,
    honor_skip_markers: Option<bool>,
) -> Result<crate::push_filter::PathRules, ConfigError> {
    use crate::push_filter::{Globs, PathRules};
    let compile = |field: &str, list: Option<Vec<String>>| match list {
        None => Ok(None),
        Some(list) if list.is_empty() => Err(invalid(
            key(field),
            "must list at least one glob (leave it out to match every file)",
        )),
        Some(list) => Globs::new(list).map(Some).map_err(|e| {
            invalid(
                format!("{}[{}]", key(field), e.index),
                format!("\"{}\" is not a valid glob: {}", e.pattern, e.message),
            )
        }),
    };
    Ok(PathRules {
        paths: compile("paths", paths)?,
        paths_ignore: compile("paths_ignore", paths_ignore)?,
        honor_skip_markers: honor_skip_markers.unwrap_or(true),
    })
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
        Self::parse_named(WEBHOOK_SECRET_ENV, value)
    }

    /// Parses the comma-separated value of the environment variable `name`.
    pub fn parse_named(name: &str, value: Option<&str>) -> Result<Self, ConfigError> {
        let value = value.ok_or_else(|| {
            ConfigError::Secret(format!(
                "{name} is not set: slipway will not accept unsigned webhooks"
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
                "{name} is empty: slipway will not accept unsigned webhooks"
            )));
        }
        if let Some(i) = secrets
            .iter()
            .position(|s| s.expose().len() < MIN_WEBHOOK_SECRET_BYTES)
        {
            return Err(ConfigError::Secret(format!(
                "{name}: secret {} of {} is shorter than {MIN_WEBHOOK_SECRET_BYTES} bytes; \
                 use a long random value (e.g. `openssl rand -hex 32`)",
                i + 1,
                secrets.len()
            )));
        }
        Ok(Self(secrets))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }
}

/// The smallest valid configuration: one app, for unit tests here and elsewhere.
#[cfg(test)]
pub(crate) const MINIMAL_FOR_TESTS: &str = r#"
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = MINIMAL_FOR_TESTS;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(GOOD).unwrap();
        let app = &c.apps[0];
        assert_eq!(app.branch.as_deref(), Some("master"));
        assert!(app.tags.is_none());
        assert_eq!(app.image_tag, "{sha}");
        assert_eq!(app.rollout_timeout, Duration::from_secs(900));
        assert_eq!(c.server.max_connections, 512);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.max_connections_per_ip, 64);
        assert_eq!(c.server.unauthenticated_body_bytes, 64 * 1024 * 1024);
        assert!(c.chat.slack_team_id.is_none());
        assert!(app.deploys_ref("refs/heads/master"));
        assert!(!app.deploys_ref("refs/heads/main"));
        assert!(!app.deploys_ref("refs/tags/master"));
    }

    #[test]
    fn listener_and_proxy_errors_name_the_key() {
        let e = err(&format!("admin_listen = \"nine\"\n{GOOD}"));
        assert!(e.contains("admin_listen"), "{e}");
        let e = err(&format!("{GOOD}\n[server]\ntrusted_proxies = [\"lb\"]\n"));
        assert!(e.contains("server.trusted_proxies"), "{e}");
        let e = err(&format!("{GOOD}\n[chat]\nslack_team_id = \"\"\n"));
        assert!(e.contains("chat.slack_team_id"), "{e}");
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
    fn tag_globs_are_checked_and_a_bad_one_named() {
        // Tags only: no branch deploys.
        let c = Config::parse(&format!("{GOOD}tags = [\"v*\", \"release/**\"]\n")).unwrap();
        let app = &c.apps[0];
        assert_eq!(app.branch, None);
        assert!(app.deploys_ref("refs/tags/v1.2.0"));
        assert!(app.deploys_ref("refs/tags/release/2026/12"));
        assert!(
            !app.deploys_ref("refs/tags/v1/rc"),
            "* stays within a segment"
        );
        assert!(!app.deploys_ref("refs/tags/nightly"));
        assert!(!app.deploys_ref("refs/heads/master"));
        assert!(!app.deploys_ref("refs/heads/v1"));
        // Next to a branch.
        let c = Config::parse(&format!("{GOOD}branch = \"main\"\ntags = [\"v*\"]\n")).unwrap();
        assert!(c.apps[0].deploys_ref("refs/heads/main"));
        assert!(c.apps[0].deploys_ref("refs/tags/v2"));
        let e = err(&format!("{GOOD}tags = [\"v*\", \"v[1\"]\n"));
        assert!(e.contains("app[0] (web).tags[1]"), "{e}");
        assert!(e.contains("\"v[1\" is not a valid glob"), "{e}");
        let e = err(&format!("{GOOD}tags = [\"refs/tags/v*\"]\n"));
        assert!(
            e.contains("app[0] (web).tags[0]: give the tag glob (\"v*\")"),
            "{e}"
        );
        let e = err(&format!("{GOOD}tags = []\n"));
        assert!(
            e.contains("app[0] (web).tags: is empty and no `branch` is set"),
            "{e}"
        );
        let e = err(&format!("{GOOD}branch = \"main\"\ntags = []\n"));
        assert!(
            e.contains("app[0] (web).tags: must list at least one glob"),
            "{e}"
        );
        let e = err(&format!("{GOOD}tags = [\"\"]\n"));
        assert!(e.contains("app[0] (web).tags[0]"), "{e}");
    }

    #[test]
    fn path_globs_are_checked_and_a_bad_one_named() {
        let c = Config::parse(&format!(
            "{GOOD}paths = [\"services/web/**\", \"libs/\"]\npaths_ignore = [\"**/*.md\"]\n"
        ))
        .unwrap();
        let rules = &c.apps[0].path_rules;
        assert!(rules.wants("libs/auth/a.rs"));
        assert!(!rules.wants("libs/auth/README.md"));
        assert!(rules.honor_skip_markers);
        let e = err(&format!(
            "{GOOD}paths = [\"services/web/**\", \"src/[a\"]\n"
        ));
        assert!(e.contains("app[0] (web).paths[1]"), "{e}");
        assert!(e.contains("\"src/[a\" is not a valid glob"), "{e}");
        let e = err(&format!("{GOOD}paths_ignore = []\n"));
        assert!(e.contains("app[0] (web).paths_ignore"), "{e}");
        let c = Config::parse(&format!("{GOOD}honor_skip_markers = false\n")).unwrap();
        assert!(!c.apps[0].path_rules.honor_skip_markers);
        assert!(!c.apps[0].path_rules.filters_paths());
    }

    #[test]
    fn secrets_are_required_and_never_printed() {
        assert!(WebhookSecrets::parse(None).is_err());
        assert!(WebhookSecrets::parse(Some(" , ")).is_err());
        let s = WebhookSecrets::parse(Some("old-webhook-secret, new-webhook-secret")).unwrap();
        assert_eq!(s.iter().count(), 2);
        let printed = format!("{s:?}");
        assert!(!printed.contains("old-secret") && !printed.contains("new-secret"));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    const APP: &str = MINIMAL_FOR_TESTS;

    #[test]
    fn webhook_secrets_need_16_bytes_each() {
        let long = "0123456789abcdef";
        assert!(WebhookSecrets::parse(Some(long)).is_ok());
        let e = WebhookSecrets::parse(Some(&format!("{long},short")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret 2 of 2 is shorter than 16 bytes"), "{e}");
        assert!(!e.contains("short,") && !e.contains(long), "{e}");
    }

    #[test]
    fn durations_have_a_maximum_named_by_key() {
        let e = Config::parse(&format!(
            "{APP}rollout_timeout_secs = 9223372036854775807\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("app[0] (web).rollout_timeout_secs: 9223372036854775807 is too large"),
            "{e}"
        );
        let at_max = format!(
            "{APP}rollout_timeout_secs = {}\n",
            max::ROLLOUT_TIMEOUT_SECS
        );
        assert!(Config::parse(&at_max).is_ok());
        let e = Config::parse(&format!("{APP}[events]\nvisibility_timeout_secs = 43201\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("events.visibility_timeout_secs"), "{e}");
    }
}

/// Environment variable holding the ops API tokens: `token` or `label:token`, comma-separated.
pub const OPS_TOKENS_ENV: &str = "SLIPWAY_OPS_TOKENS";

/// The ops API's bearer tokens. Empty means the ops API is disabled (never open).
#[derive(Clone, Default)]
pub struct OpsTokens(Vec<(String, [u8; 32])>);

impl fmt::Debug for OpsTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.0.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("OpsTokens")
            .field("labels", &labels)
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token).into()
}

impl OpsTokens {
    pub fn parse(value: Option<&str>) -> Result<OpsTokens, ConfigError> {
        let mut tokens = Vec::new();
        for entry in value
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (label, token) = match entry.split_once(':') {
                Some((label, token)) => (label.trim(), token.trim()),
                None => ("ops", entry),
            };
            if label.is_empty() || token.chars().count() < 16 {
                return Err(ConfigError::Secret(format!(
                    "{OPS_TOKENS_ENV}: every entry must be `token` or `label:token`, with tokens of at least 16 characters (entry {} is not)",
                    tokens.len() + 1
                )));
            }
            tokens.push((label.to_owned(), digest(token.as_bytes())));
        }
        Ok(OpsTokens(tokens))
    }

    pub fn from_env() -> Result<OpsTokens, ConfigError> {
        Self::parse(std::env::var(OPS_TOKENS_ENV).ok().as_deref())
    }

    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The label of the token that matches, compared in constant time against every token.
    pub fn check(&self, presented: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for (label, token) in &self.0 {
            if bool::from(token.ct_eq(&presented)) {
                found = Some(label.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod ops_token_tests {
    use super::*;

    #[test]
    fn tokens_have_labels_and_are_compared_whole() {
        let t = OpsTokens::parse(Some("alice:aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb")).unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("alice"));
        assert_eq!(t.check("bbbbbbbbbbbbbbbbbbbb").as_deref(), Some("ops"));
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaa"), None);
        assert!(!format!("{t:?}").contains("aaaa"));
        assert!(!OpsTokens::parse(None).unwrap().is_enabled());
        assert!(OpsTokens::parse(Some("short")).is_err());
    }
}

/// Environment variable holding the read token of the admin listener's page and `/metrics`.
pub const READ_TOKEN_ENV: &str = "SLIPWAY_READ_TOKEN";

/// The token that opens the status page and `/metrics` (issue 23), as a bearer token or as the
/// password of HTTP Basic (any user name, so a browser can ask for it). Unset: they are open to
/// whoever reaches the admin listener under an allowed `Host`.
#[derive(Clone, Default)]
pub struct ReadToken(Option<[u8; 32]>);

impl fmt::Debug for ReadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadToken(enabled: {})", self.0.is_some())
    }
}

impl ReadToken {
    pub fn parse(value: Option<&str>) -> Result<ReadToken, ConfigError> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(ReadToken(None)),
            Some(t) if t.chars().count() < 16 => Err(ConfigError::Secret(format!(
                "{READ_TOKEN_ENV} must be at least 16 characters"
            ))),
            Some(t) => Ok(ReadToken(Some(digest(t.as_bytes())))),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn check(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0
            .is_some_and(|token| bool::from(token.ct_eq(&digest(presented.as_bytes()))))
    }
}

/// Environment variable holding Slack's signing secret for the slash command.
pub const SLACK_SIGNING_SECRET_ENV: &str = "SLIPWAY_SLACK_SIGNING_SECRET";

/// Slack's signing secret, if the slash command is enabled.
pub fn slack_signing_secret_from_env() -> Option<Secret> {
    std::env::var(SLACK_SIGNING_SECRET_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Secret::new(s.trim()))
}

// ---- check-config: everything `serve` checks before it starts (issue 10) ----

/// What `serve` says when Slack's signing secret is set without `[chat] slack_team_id`.
pub const SLACK_TEAM_REQUIRED: &str = "[chat] slack_team_id is required when \
     SLIPWAY_SLACK_SIGNING_SECRET is set (commands from other Slack workspaces must be refused)";

/// An error in how slipway was called or set up (exit status 2), as opposed to something that
/// failed (exit status 1). Here, below every command, so that any of them can say it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What `serve`, `provision` and `check-config` say when the SDK finds no region.
pub const NO_REGION: &str =
    "no AWS region: set AWS_REGION (or a region in the AWS profile slipway uses)";
