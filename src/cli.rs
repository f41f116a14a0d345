//! The `slipway` command line.
//!
//! Conventions (issue 10): exit 0 only when everything asked for is fine, 1 when something is
//! not (an app in error, a failed deployment, an unknown app), 2 for a usage or setup error
//! (bad arguments, no AWS region); `--json` always prints one valid JSON document; empty tables
//! say so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::aws::Clients;
use crate::client::Client;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::http::{self as server, Services};
use crate::store::{DeliverySummary, Store};

/// Where the CLI looks for a running slipway unless `--server` or `SLIPWAY_SERVER` says
/// otherwise: the admin listener.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9090";

pub use crate::config::UsageError;

/// The exit status for an error returned by [`run`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "GitHub push → CodeBuild → ECS Fargate, without CodePipeline",
    after_help = "Examples:\n  slipway check-config --config slipway.toml\n  slipway serve --config slipway.toml\n  SLIPWAY_OPS_TOKEN=… slipway status\n  slipway completions bash > /etc/bash_completion.d/slipway"
)]
pub struct Cli {
    /// Log format: text at a terminal (coloured), JSON otherwise (systemd, files, pipes), where
    /// every field is escaped and one log line is one JSON object.
    #[arg(long, global = true, value_enum, env = "SLIPWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span fields.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path to slipway.toml.
    #[arg(long, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
    pub config: PathBuf,
}

/// Where a running slipway is, for the commands that talk to it.
#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// URL of a running slipway's admin listener (the token comes from SLIPWAY_OPS_TOKEN).
    #[arg(long, env = "SLIPWAY_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Allow sending the token over plain http:// to a host other than this machine.
    #[arg(long)]
    pub insecure: bool,
}

/// For the listing commands: a running slipway if one is named, else the journal.
#[derive(Debug, clap::Args)]
pub struct SourceArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Ask this running slipway (its admin listener, e.g. http://127.0.0.1:9090) instead of
    /// reading the journal of --config.
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: Option<String>,
    /// Allow sending the token over plain http:// to a host other than this machine.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver and the workers.
    #[command(
        after_help = "Examples:\n  AWS_REGION=eu-west-1 SLIPWAY_WEBHOOK_SECRET=… slipway serve --config /etc/slipway/slipway.toml"
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Recent deliveries: from a running slipway with --server (or SLIPWAY_SERVER), else
    /// straight from the journal of --config.
    #[command(
        after_help = "Examples:\n  slipway deliveries --config slipway.toml\n  slipway deliveries --server http://127.0.0.1:9090 --limit 50 --json"
    )]
    Deliveries {
        #[command(flatten)]
        source: SourceArg,
        /// How many deliveries, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recent deployments: from a running slipway with --server (or SLIPWAY_SERVER), else
    /// straight from the journal of --config.
    #[command(
        after_help = "Examples:\n  slipway deployments --app web\n  slipway deployments --server http://127.0.0.1:9090 --json"
    )]
    Deployments {
        #[command(flatten)]
        source: SourceArg,
        /// Only this app's deployments (an app named in slipway.toml).
        #[arg(long)]
        app: Option<String>,
        /// How many deployments, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a commit of an app (by SHA, 7 to 40 hex characters).
    #[command(
        after_help = "Examples:\n  slipway deploy web 1f2e3d4\n  slipway deploy web 1f2e3d4c5b6a --wait --timeout 20m"
    )]
    Deploy {
        #[command(flatten)]
        server: ServerArg,
        /// The app, as named in slipway.toml.
        app: String,
        /// The commit to deploy: 7 to 40 hex characters of a SHA that was built.
        sha: String,
        /// Follow the rollout; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up following after this long (e.g. 90s, 20m, 1h); the deployment
        /// goes on.
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
    },
    /// Approve the promotion waiting for an app (promote_from): it is deployed.
    #[command(
        after_help = "Examples:\n  slipway approve web-prod\n  slipway approve web-prod 1f2e3d4 --wait"
    )]
    Approve {
        #[command(flatten)]
        server: ServerArg,
        /// The promoted app, as named in slipway.toml.
        app: String,
        /// The commit whose promotion is meant (default: the one waiting).
        sha: Option<String>,
        /// Follow the deploy the approval makes; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up following after this long (e.g. 90s, 20m, 1h).
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
    },
    /// Reject the promotion waiting for an app: nothing is deployed.
    #[command(
        after_help = "Examples:\n  slipway reject web-prod\n  slipway reject web-prod 1f2e3d4"
    )]
    Reject {
        #[command(flatten)]
        server: ServerArg,
        /// The promoted app, as named in slipway.toml.
        app: String,
        /// The commit whose promotion is meant (default: the one waiting).
        sha: Option<String>,
    },
    /// Put back what ran before (or the deployment / commit given with --to).
    #[command(
        after_help = "Examples:\n  slipway rollback web --wait\n  slipway rollback web --to 41\n  slipway rollback web --to 1f2e3d4"
    )]
    Rollback {
        #[command(flatten)]
        server: ServerArg,
        /// The app, as named in slipway.toml.
        app: String,
        /// A deployment id or a commit SHA to go back to.
        #[arg(long)]
        to: Option<String>,
        /// Follow the rollout; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up following after this long (e.g. 90s, 20m, 1h).
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
    },
    /// Run a stored delivery again (by id), or submit a payload saved by hand (--file).
    #[command(
        after_help = "Examples:\n  slipway replay 72d3162e-cc78-11e3-81ab-4c9367dc0958\n  slipway replay --file push.json --event push"
    )]
    Replay {
        #[command(flatten)]
        server: ServerArg,
        /// The delivery's id (GitHub's GUID or slipway's row number).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        delivery: Option<String>,
        /// A payload saved by hand, e.g. from GitHub's "Recent Deliveries" page.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The event of --file.
        #[arg(long, default_value = "push", requires = "file")]
        event: String,
    },
    /// Failed webhook deliveries slipway asked GitHub to redeliver (needs [github]).
    #[command(
        after_help = "Examples:\n  slipway recoveries\n  slipway recoveries --limit 50 --json"
    )]
    Recoveries {
        #[command(flatten)]
        server: ServerArg,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What every app runs now; exits 1 if any app has an error.
    #[command(
        after_help = "Examples:\n  slipway status\n  slipway status --json | jq '.[] | select(.error)'"
    )]
    Status {
        #[command(flatten)]
        server: ServerArg,
        /// A JSON array of apps instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration file and the environment `serve` needs, and exit.
    #[command(
        after_help = "Examples:\n  slipway check-config --config slipway.toml\n  slipway check-config --aws   # also check the named AWS resources exist"
    )]
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check that the AWS resources the config names exist (read-only calls).
        #[arg(long)]
        aws: bool,
    },
    /// Create or update slipway's queue and EventBridge rule; check the apps' AWS resources.
    #[command(after_help = "Examples:\n  slipway provision --dry-run\n  slipway provision --json")]
    Provision {
        #[command(flatten)]
        config: ConfigArg,
        /// Change nothing; report what would be done.
        #[arg(long)]
        dry_run: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        /// Print the IAM policies slipway needs (`runtime` and `provisioning`, exact ARNs from
        /// the config and the services' task definitions; `accounts`: per `role_arn`, the
        /// role's policy, its trust policy and the ECR repository policy) and change nothing.
        #[arg(long, conflicts_with_all = ["dry_run", "json"])]
        policy: bool,
    },
    /// Write a commented slipway.toml for an existing ECS service (when moving from
    /// CodePipeline): reads the service, its task definition and the CodeBuild projects.
    #[command(
        after_help = "Examples:\n  slipway init --cluster prod --service web\n  slipway init --cluster prod --service web --repository octo-org/web --output web.toml"
    )]
    Init {
        /// The ECS cluster the service runs in.
        #[arg(long)]
        cluster: String,
        /// The ECS service slipway will deploy.
        #[arg(long)]
        service: String,
        /// The GitHub repository (owner/name) whose pushes deploy; picks the CodeBuild project
        /// building it. Without it, the project named like the service is taken.
        #[arg(long)]
        repository: Option<String>,
        /// Where to write the file.
        #[arg(long, default_value = "slipway.toml")]
        output: PathBuf,
        /// Overwrite --output if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Is the slipway on this machine up? GETs /healthz on the config's public listener (or
    /// --url): exit 0 up, 1 down, with the reason. The image's and the task's health check.
    #[command(
        after_help = "Examples:\n  slipway healthcheck\n  slipway healthcheck --url http://127.0.0.1:8080/healthz --timeout-secs 2"
    )]
    Healthcheck {
        #[command(flatten)]
        config: ConfigArg,
        /// Check this URL instead of the config's listener.
        #[arg(long)]
        url: Option<String>,
        /// Give up (down) after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Take a consistent backup of the journal (while slipway serves, it takes it: the
    /// command asks the server at --server / SLIPWAY_SERVER).
    #[command(
        after_help = "Examples:\n  slipway backup --to /backups/journal-$(date +%F).db\n  SLIPWAY_OPS_TOKEN=… slipway backup --to s3://my-backups/slipway/journal-manual.db"
    )]
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        server: ServerArg,
        /// Where the backup goes: a file path (on the server's host when a server takes it) or
        /// s3://bucket/key.
        #[arg(long)]
        to: crate::config::BackupLocation,
    },
    /// Replace the journal with a backup, after checking it (integrity, schema, tables). Only
    /// while slipway is stopped; the journal it replaces is kept aside.
    #[command(
        after_help = "Examples:\n  slipway restore --from /backups/journal-2026-12-04.db\n  slipway restore --from s3://my-backups/slipway/journal-20261204T030000Z.db"
    )]
    Restore {
        #[command(flatten)]
        config: ConfigArg,
        /// The backup: a file path or s3://bucket/key.
        #[arg(long)]
        from: crate::config::BackupLocation,
    },
    /// Move slipway's state between engines (`store copy`: a SQLite journal into DynamoDB).
    #[command(
        after_help = "Examples:\n  slipway store copy --from /var/lib/slipway --to slipway-dynamodb.toml"
    )]
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  slipway completions bash > ~/.local/share/bash-completion/completions/slipway\n  slipway completions zsh > ~/.zfunc/_slipway"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// `slipway store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped slipway's SQLite journal into a fresh DynamoDB table (made by `slipway
    /// provision`): every record with its id, then each kind counted on both sides; exits 1
    /// if a count differs. The upgrade path to `[store] engine = "dynamodb"`.
    #[command(
        after_help = "Examples:\n  slipway store copy --from slipway.toml --to slipway-dynamodb.toml\n  slipway store copy --from /var/lib/slipway --to slipway-dynamodb.toml"
    )]
    Copy {
        /// The journal to copy: a slipway.toml (its state_dir) or a state_dir. slipway must be
        /// stopped.
        #[arg(long)]
        from: PathBuf,
        /// The config to copy into: its `[store] engine = "dynamodb"`, `table` and
        /// `bodies_bucket` (and `[journal]`'s retention) are used.
        #[arg(long)]
        to: PathBuf,
    },
}

/// Logs go to stderr: as text when a person reads it at a terminal, else as JSON lines (`format`
/// overrides). Values a client chose are logged as escaped fields (`?value`: quoted, newlines
/// and control characters escaped) in both formats, so no request can write a log line of its
/// own or a field of someone else's.
pub fn init_tracing(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLIPWAY_LOG")
        // The SDK's region lookup in instance metadata warns in Debug form when there is none;
        // slipway says so itself (no AWS region: set AWS_REGION).
        .unwrap_or_else(|_| {
            EnvFilter::new("info,aws_config=warn,aws_config::imds=error,aws_smithy_runtime=warn")
        });
    // Colour only for a person at a terminal: under systemd, in files and pipes, escape codes
    // are noise.
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The client for `--server`, refusing to send a token in clear text to another machine.
fn client(server: &str, insecure: bool) -> anyhow::Result<Client> {
    Client::new(server, insecure)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config.config).await,
        Command::Deliveries {
            source,
            limit,
            json,
        } => {
            let rows: Vec<DeliverySummary> = match &source.server {
                Some(server) => {
                    let v = client(server, source.insecure)?
                        .get(&format!("/api/deliveries?limit={limit}"))
                        .await?;
                    serde_json::from_value(v["deliveries"].clone())
                        .context("the server's deliveries are not in the expected form")?
                }
                None => {
                    let config = Config::load(&source.config.config)?;
                    let journal = Store::open_configured_read_only(
                        &config,
                        &crate::aws::shared_config().await,
                    )?;
                    journal.recent_deliveries(limit).await?
                }
            };
            print_deliveries(&rows, json);
            Ok(())
        }
        Command::Deployments {
            source,
            app,
            limit,
            json,
        } => {
            let rows = match &source.server {
                Some(server) => {
                    let mut path = format!("/api/deployments?limit={limit}");
                    if let Some(app) = &app {
                        path.push_str(&format!("&app={}", crate::client::encode(app)));
                    }
                    let v = client(server, source.insecure)?.get(&path).await?;
                    serde_json::from_value(v["deployments"].clone())
                        .context("the server's deployments are not in the expected form")?
                }
                None => {
                    let config = Config::load(&source.config.config)?;
                    if let Some(app) = &app {
                        // The same answer as the server gives (404 there).
                        if config.app(app).is_none() {
                            anyhow::bail!("unknown app {app}");
                        }
                    }
                    let journal = Store::open_configured_read_only(
                        &config,
                        &crate::aws::shared_config().await,
                    )?;
                    journal.recent_deployments(app.clone(), limit).await?
                }
            };
            print_deployments(&rows, app.as_deref(), json);
            Ok(())
        }
        Command::Deploy {
            server,
            app,
            sha,
            wait,
            timeout,
        } => {
            let client = client(&server.server, server.insecure)?;
            let v = client
                .post(
                    &format!("/api/apps/{}/deploy", crate::client::encode(&app)),
                    &serde_json::json!({ "sha": sha }),
                )
                .await?;
            follow(&client, &v, wait.then_some(timeout)).await
        }
        Command::Approve {
            server,
            app,
            sha,
            wait,
            timeout,
        } => {
            let client = client(&server.server, server.insecure)?;
            let v = client
                .post(
                    &format!("/api/apps/{}/approve", crate::client::encode(&app)),
                    &serde_json::json!({ "sha": sha }),
                )
                .await?;
            println!("{}", decided_line(&v));
            follow(&client, &v, wait.then_some(timeout)).await
        }
        Command::Reject { server, app, sha } => {
            let client = client(&server.server, server.insecure)?;
            let v = client
                .post(
                    &format!("/api/apps/{}/reject", crate::client::encode(&app)),
                    &serde_json::json!({ "sha": sha }),
                )
                .await?;
            println!("{}", decided_line(&v));
            Ok(())
        }
        Command::Rollback {
            server,
            app,
            to,
            wait,
            timeout,
        } => {
            let client = client(&server.server, server.insecure)?;
            let v = client
                .post(
                    &format!("/api/apps/{}/rollback", crate::client::encode(&app)),
                    &serde_json::json!({ "to": to }),
                )
                .await?;
            follow(&client, &v, wait.then_some(timeout)).await
        }
        Command::Replay {
            server,
            delivery,
            file,
            event,
        } => {
            let client = client(&server.server, server.insecure)?;
            let v = match (delivery, file) {
                (Some(id), _) => {
                    client
                        .post(
                            &format!("/api/deliveries/{}/replay", crate::client::encode(&id)),
                            &serde_json::json!({}),
                        )
                        .await?
                }
                (None, Some(file)) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let payload: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    client
                        .post(
                            "/api/replay",
                            &serde_json::json!({ "event": event, "payload": payload }),
                        )
                        .await?
                }
                (None, None) => {
                    return Err(UsageError("give a delivery id or --file".into()).into())
                }
            };
            let r = &v["replay"];
            println!(
                "replay accepted as delivery {}",
                r["delivery"].as_str().unwrap_or("?")
            );
            for b in r["builds"].as_array().into_iter().flatten() {
                println!(
                    "  build of {} for {}",
                    b["sha"].as_str().unwrap_or("?"),
                    b["app"].as_str().unwrap_or("?")
                );
            }
            for skipped in r["skipped"].as_array().into_iter().flatten() {
                println!(
                    "  {} skipped: {}",
                    skipped["app"].as_str().unwrap_or("?"),
                    skipped["reason"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Recoveries {
            server,
            limit,
            json,
        } => {
            let v = client(&server.server, server.insecure)?
                .get(&format!("/api/github/recoveries?limit={limit}"))
                .await?;
            print_recoveries(&v, json);
            Ok(())
        }
        Command::Status { server, json } => {
            let v = client(&server.server, server.insecure)?
                .get("/api/apps")
                .await?;
            let apps = v["apps"].as_array().cloned().unwrap_or_default();
            print_status(&apps, json);
            if !json {
                print_github(&v);
                print_replicas(&v);
            }
            let failing: Vec<&str> = apps
                .iter()
                .filter(|a| a["error"].as_str().is_some_and(|e| !e.is_empty()))
                .map(|a| a["app"].as_str().unwrap_or("?"))
                .collect();
            if failing.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} of {} apps have an error: {}",
                    failing.len(),
                    apps.len(),
                    failing.join(", ")
                )
            }
        }
        Command::CheckConfig { config, aws } => check_config(&config.config, aws).await,
        Command::Provision {
            config,
            policy: true,
            ..
        } => {
            require_region().await?;
            let loaded = Config::load(&config.config)?;
            crate::provision::policy::command(&loaded).await
        }
        Command::Provision {
            config,
            dry_run,
            json,
            policy: false,
        } => {
            require_region().await?;
            crate::provision::command(&config.config, dry_run, json).await
        }
        Command::Init {
            cluster,
            service,
            repository,
            output,
            force,
        } => {
            let shared = require_region().await?;
            let aws = Clients::from_config(&shared);
            crate::init::command(
                &aws,
                &cluster,
                &service,
                repository.as_deref(),
                &output,
                force,
            )
            .await
        }
        Command::Healthcheck {
            config,
            url,
            timeout_secs,
        } => {
            let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
            crate::healthcheck::command(&config.config, url.as_deref(), timeout).await
        }
        Command::Backup { config, server, to } => {
            let loaded = Config::load(&config.config)?;
            crate::backup::backup_command(&loaded, &to, &server.server, server.insecure).await
        }
        Command::Restore { config, from } => {
            let loaded = Config::load(&config.config)?;
            crate::backup::restore_command(&loaded, &from).await
        }
        Command::Store {
            command: StoreCommand::Copy { from, to },
        } => store_copy(&from, &to).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "slipway",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// `slipway store copy`: the journal of `from` (a config or a state_dir) into the DynamoDB
/// table of the config `to`, then the counts, printed.
async fn store_copy(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use crate::store::copy::copy_journal;
    use crate::store::dynamodb::{CopyRefused, DynamoStore};
    use crate::store::{StoreConfig, StoreError};
    let target = Config::load(to)?;
    let StoreConfig::DynamoDb {
        table,
        bodies_bucket,
    } = &target.store
    else {
        return Err(UsageError(format!(
            "--to {}: its [store] engine is \"sqlite\"; store copy copies into DynamoDB: give \
             a config with [store] engine = \"dynamodb\" and its table",
            to.display()
        ))
        .into());
    };
    let state_dir = if from.is_dir() {
        from.to_owned()
    } else {
        let source = Config::load(from)?;
        if source.store != StoreConfig::Sqlite {
            return Err(UsageError(format!(
                "--from {}: its [store] engine is not \"sqlite\"; store copy copies a SQLite \
                 journal (a state_dir, or a config with engine = \"sqlite\")",
                from.display()
            ))
            .into());
        }
        source.state_dir
    };
    let journal = match Store::open_read_only(&state_dir) {
        Ok(Store::Sqlite(journal)) => journal,
        Ok(Store::DynamoDb(_)) => anyhow::bail!("{}: not a SQLite journal", state_dir.display()),
        Err(StoreError::ServerRunning { host, holder }) => anyhow::bail!(
            "the journal in {} is in use: slipway is running on {host} ({holder}); stop it \
             first: store copy copies from a stopped slipway, so that nothing changes while it \
             copies",
            state_dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the journal in {}", state_dir.display()))
        }
    };
    let shared = require_region().await?;
    let clients = Clients::from_config(&shared);
    let mut store = DynamoStore::new(clients.dynamodb.clone(), table.clone(), &target.journal);
    if let Some(bucket) = bodies_bucket {
        store = store.with_bodies_bucket(clients.s3.clone(), bucket.clone());
    }
    let hint = format!("slipway provision --config {}", to.display());
    let now = crate::store::millis(time::OffsetDateTime::now_utc());
    let source = state_dir.display().to_string();
    let copied = match copy_journal(
        &journal,
        &source,
        &store,
        crate::chat::REPLAY_WINDOW_SECS,
        now,
        &hint,
    )
    .await
    {
        Ok(copied) => copied,
        Err(CopyRefused::Refused(why)) => anyhow::bail!("not copying: {why}"),
        Err(CopyRefused::Store(e)) => {
            return Err(e).with_context(|| {
                format!(
                    "the copy into the DynamoDB table {table} stopped: the table is left \
                     half-filled and refused by the next copy; delete it, run `{hint}` and \
                     copy again"
                )
            })
        }
    };
    println!(
        "copied the journal in {source} into the DynamoDB table {table}: {} items, ids up to {}",
        copied.items, copied.last_id
    );
    println!("{:<20} {:>10} {:>10}", "kind", "sqlite", "dynamodb");
    for c in &copied.counts {
        println!("{:<20} {:>10} {:>10}", c.kind, c.sqlite, c.dynamodb);
    }
    let differ = copied.mismatches();
    if !differ.is_empty() {
        let kinds: Vec<String> = differ
            .iter()
            .map(|c| format!("{} (sqlite {}, dynamodb {})", c.kind, c.sqlite, c.dynamodb))
            .collect();
        anyhow::bail!("the counts differ: {}", kinds.join(", "));
    }
    println!("every count matches");
    Ok(())
}

/// The SDK configuration, or a usage error (exit 2) naming AWS_REGION when there is no region.
async fn require_region() -> anyhow::Result<aws_config::SdkConfig> {
    let shared = crate::aws::shared_config().await;
    if shared.region().is_none() {
        return Err(UsageError(crate::config::NO_REGION.to_owned()).into());
    }
    Ok(shared)
}

async fn check_config(path: &std::path::Path, aws: bool) -> anyhow::Result<()> {
    let loaded = Config::load(path)?;
    let shared = crate::aws::shared_config().await;
    let problems = crate::startup::check_serve_environment(
        &loaded,
        |name| std::env::var(name).ok(),
        shared.region().map(|r| r.as_ref()),
    );
    for p in &problems {
        eprintln!("{}: {p}", path.display());
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{}: {} problem{} that serve would refuse",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
    }
    if aws {
        let clients = Clients::from_config(&shared);
        let report = crate::provision::run(&loaded, &clients, true).await;
        print!("{}", report.render_text());
        if !report.is_success() {
            anyhow::bail!("{}: {}", path.display(), report.failure_message());
        }
    }
    let n = loaded.apps.len();
    println!(
        "{}: ok ({n} app{})",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

async fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    let keys = crate::webhook_keys::Keyring::load(&config, &|name| std::env::var(name).ok())?;
    let shared = require_region().await?;
    let notify =
        crate::notify::Endpoints::from_config(&config.notify, |name| std::env::var(name).ok())?;
    let github = crate::github::Credentials::from_env(config.github.as_ref(), |name| {
        std::env::var(name).ok()
    })?;
    let ops_tokens = crate::config::OpsTokens::from_env()?;
    // Refused before the store is opened: a DynamoDB table slow to reach must not hold it up.
    if crate::config::slack_signing_secret_from_env().is_some()
        && config.chat.slack_team_id.is_none()
    {
        anyhow::bail!(crate::config::SLACK_TEAM_REQUIRED);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen {}", config.admin_listen))?;
    // Listening from the start: while the journal lock is held by a task being replaced,
    // health checks learn why this one is not ready yet (`/readyz` 503), and that it lives.
    tracing::info!(
        addr = %listener.local_addr()?,
        admin_addr = %admin.local_addr()?,
        "listening, starting"
    );
    let readiness = Arc::new(crate::readiness::Readiness::default());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let answering = tokio_util::sync::CancellationToken::new();
    let starting = async {
        let started = async {
            let aws = Clients::from_config(&shared);
            let Some(journal) =
                crate::startup::open_store(&config, &aws, &readiness, &mut shutdown).await?
            else {
                return Ok(None);
            };
            readiness.set_starting(Some("checking the AWS credentials".to_owned()));
            crate::startup::check_credentials(&aws, &readiness).await;
            crate::startup::find_queue(&mut config, &aws, &readiness).await;
            anyhow::Ok(Some((journal, aws)))
        };
        let started = started.await;
        answering.cancel();
        started
    };
    let (started, ()) = tokio::join!(
        starting,
        server::answer_while_starting(&listener, &admin, readiness.clone(), answering.clone())
    );
    let Some((journal, aws)) = started? else {
        tracing::info!("stopped before the journal was taken");
        return Ok(());
    };
    readiness.set_starting(None);
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let backups = Arc::new(crate::backup::Backups::new(
        journal.clone(),
        aws.s3.clone(),
        clock.clone(),
        readiness.clone(),
        config.state_dir.clone(),
        config.journal.clone(),
    ));
    match journal.last_backup().await {
        Ok(Some(last)) => readiness.set_last_backup(last),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the last backup's outcome"),
    }
    readiness.set_recovery(crate::startup::recovery_state(&config, github.is_some()));
    let replica_id = crate::startup::replica_id(&config).await;
    server::run(
        listener,
        admin,
        Services {
            config,
            keys,
            journal,
            clock,
            aws,
            notify,
            ops_tokens,
            read_token: crate::config::ReadToken::parse(
                std::env::var(crate::config::READ_TOKEN_ENV).ok().as_deref(),
            )?,
            slack_secret: crate::config::slack_signing_secret_from_env(),
            readiness,
            github,
            backups,
            replica_id,
        },
        shutdown,
    )
    .await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// `rows` as one JSON array (`[]` when empty).
fn print_json<T: serde::Serialize>(rows: &[T]) {
    println!("{}", serde_json::to_string(rows).expect("serializable"));
}

fn print_deliveries(rows: &[DeliverySummary], json: bool) {
    if json {
        return print_json(rows);
    }
    if rows.is_empty() {
        println!("no deliveries yet");
        return;
    }
    let dash = || "-".to_owned();
    let table: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.received_at.clone(),
                r.delivery.clone(),
                r.event.clone(),
                r.app.clone().unwrap_or_else(dash),
                r.sha
                    .as_deref()
                    .map(|s| s.chars().take(7).collect())
                    .unwrap_or_else(dash),
                r.state.clone().unwrap_or_else(|| r.outcome.clone()),
                r.build_id.clone().unwrap_or_else(dash),
                r.deploy_state.clone().unwrap_or_else(dash),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "RECEIVED",
            "DELIVERY",
            "EVENT",
            "APP",
            "SHA",
            "BUILD STATE",
            "BUILD",
            "DEPLOY",
            "REASON",
        ],
        &table,
    );
}

/// `family:revision` of a task definition ARN, for tables.
fn revision(arn: &Option<String>) -> String {
    arn.as_deref()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

fn print_deployments(rows: &[crate::store::Deployment], app: Option<&str>, json: bool) {
    if json {
        return print_json(rows);
    }
    if rows.is_empty() {
        match app {
            Some(app) => println!("no deployments of {app} yet"),
            None => println!("no deployments yet"),
        }
        return;
    }
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|d| {
            [
                d.id.to_string(),
                crate::store::format_millis(d.created_ms),
                d.app.clone(),
                d.sha.chars().take(7).collect(),
                d.state.clone(),
                match (&d.tag, d.promotion) {
                    (Some(tag), _) => format!("{} (tag {tag})", d.trigger),
                    (None, Some(p)) => format!(
                        "{} {p} (approved by {})",
                        d.trigger,
                        d.actor.as_deref().unwrap_or("?")
                    ),
                    (None, None) => d.trigger.clone(),
                },
                format!(
                    "{} -> {}",
                    revision(&d.from_task_definition),
                    revision(&d.to_task_definition)
                ),
                d.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "CREATED",
            "APP",
            "SHA",
            "STATE",
            "TRIGGER",
            "TASK DEFINITION",
            "REASON",
        ],
        &table,
    );
}

/// Prints aligned columns; the last column is not padded.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// What an approval or a rejection did: "promotion 7 of 1f2e3d4 (from web, deployment 12)
/// approved by alice".
fn decided_line(v: &serde_json::Value) -> String {
    let p = &v["promotion"];
    format!(
        "promotion {} of {} (from {}, deployment {}) {} by {}",
        p["id"],
        p["sha"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(7)
            .collect::<String>(),
        p["source_app"].as_str().unwrap_or("?"),
        p["source_deployment"],
        p["state"].as_str().unwrap_or("?"),
        p["decided_by"].as_str().unwrap_or("?")
    )
}

/// Prints what a deploy or rollback request started, and follows it with `--wait`.
async fn follow(
    client: &Client,
    accepted: &serde_json::Value,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let id = accepted["deployment"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the server did not return a deployment id"))?;
    println!("deployment {id} accepted");
    if let Some(timeout) = wait {
        client.wait(id, timeout).await?;
    }
    Ok(())
}

fn print_recoveries(v: &serde_json::Value, json: bool) {
    let rows = v["recoveries"].as_array().cloned().unwrap_or_default();
    if json {
        return print_json(&rows);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let rows: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                text(&r["requested_at"]),
                text(&r["hook_id"]),
                text(&r["delivery"]),
                text(&r["status_code"]),
                text(&r["actor"]),
                text(&r["outcome"]),
                text(&r["reason"]),
            ]
        })
        .collect();
    print_table(
        &[
            "REQUESTED",
            "HOOK",
            "DELIVERY",
            "WAS",
            "ACTOR",
            "OUTCOME",
            "REASON",
        ],
        &rows,
    );
}

fn print_status(apps: &[serde_json::Value], json: bool) {
    if json {
        return print_json(apps);
    }
    if apps.is_empty() {
        println!("no apps configured");
        return;
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let rows: Vec<[String; 6]> = apps
        .iter()
        .map(|a| {
            let last = &a["last_deployment"];
            [
                match a["account"].as_str() {
                    Some(account) => format!("{} (account {account})", text(&a["app"])),
                    None => text(&a["app"]),
                },
                a["commit"]
                    .as_str()
                    .map(|s| s.chars().take(7).collect())
                    .unwrap_or_else(|| "-".into()),
                revision(&a["task_definition"].as_str().map(str::to_owned)),
                text(&a["image"]),
                match last["id"].as_i64() {
                    Some(id) => match last["tag"].as_str() {
                        Some(tag) => format!("#{id} {} (tag {tag})", text(&last["state"])),
                        None => format!("#{id} {}", text(&last["state"])),
                    },
                    None => "-".into(),
                },
                a["error"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "APP",
            "COMMIT",
            "TASK DEFINITION",
            "IMAGE",
            "LAST DEPLOY",
            "ERROR",
        ],
        &rows,
    );
}

/// The `github` line of `slipway status`: how GitHub calls are going (when configured).
/// The live replicas and what each holds (issue 26).
fn print_replicas(v: &serde_json::Value) {
    let Some(list) = v["replicas"].as_array() else {
        return;
    };
    println!("replicas: {} live", list.len());
    for r in list {
        let holds: Vec<&str> = r["holds"]
            .as_array()
            .map(|h| h.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  {}{}: {}",
            r["id"].as_str().unwrap_or("?"),
            if r["this"].as_bool() == Some(true) {
                " (answering)"
            } else {
                ""
            },
            if holds.is_empty() {
                "holds nothing".to_owned()
            } else {
                format!("holds {}", holds.join(", "))
            }
        );
    }
}

fn print_github(v: &serde_json::Value) {
    let github = &v["github"];
    if github.is_object() {
        let failed = github["requests_failed"].as_u64().unwrap_or(0);
        let ok = github["requests_succeeded"].as_u64().unwrap_or(0);
        match github["last_error"].as_str() {
            Some(e) => println!(
                "github: {ok} requests ok, {failed} failed; last failure at {}: {e}",
                github["last_error_at"].as_str().unwrap_or("?")
            ),
            None => println!("github: {ok} requests ok, {failed} failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument and flag of every command says what it is, and every command shows
    /// examples.
    #[test]
    fn every_argument_has_help_and_every_command_examples() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        for sub in cli.get_subcommands() {
            assert!(
                sub.get_after_help().is_some(),
                "{} has no examples",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                if matches!(arg.get_id().as_str(), "help" | "version") {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} {} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn usage_errors_exit_2_and_failures_1() {
        assert_eq!(exit_code(&UsageError("x".into()).into()), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), 1);
    }
}
