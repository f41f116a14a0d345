//! The `slipway` command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::aws::Clients;
use crate::client::Client;
use crate::clock::SystemClock;
use crate::config::{Config, WebhookSecrets};
use crate::http::{self as server, Services};
use crate::journal::{DeliverySummary, Journal};

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "GitHub push → CodeBuild → ECS Fargate, without CodePipeline"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLIPWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
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
    /// URL of a running slipway (the token comes from SLIPWAY_OPS_TOKEN).
    #[arg(long, env = "SLIPWAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver and the workers.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Recent deliveries: from a running slipway with --server (or SLIPWAY_SERVER), else
    /// straight from the journal of --config.
    Deliveries {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, env = "SLIPWAY_SERVER")]
        server: Option<String>,
        /// How many deliveries.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recent deployments: from a running slipway with --server (or SLIPWAY_SERVER), else
    /// straight from the journal of --config.
    Deployments {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, env = "SLIPWAY_SERVER")]
        server: Option<String>,
        /// Only this app's deployments.
        #[arg(long)]
        app: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a commit of an app (by SHA, 7 to 40 hex characters).
    Deploy {
        #[command(flatten)]
        server: ServerArg,
        app: String,
        sha: String,
        /// Follow the rollout; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Put back what ran before (or the deployment / commit given with --to).
    Rollback {
        #[command(flatten)]
        server: ServerArg,
        app: String,
        /// A deployment id or a commit SHA to go back to.
        #[arg(long)]
        to: Option<String>,
        /// Follow the rollout; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Run a stored delivery again (by id), or submit a payload saved by hand (--file).
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
    /// What every app runs now.
    Status {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration file and exit.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create or update slipway's queue and EventBridge rule; check the apps' AWS resources.
    Provision {
        #[command(flatten)]
        config: ConfigArg,
        /// Change nothing; report what would be done.
        #[arg(long)]
        dry_run: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config.config).await,
        Command::Deliveries {
            config,
            server,
            limit,
            json,
        } => {
            let rows = match server {
                Some(server) => {
                    let v = Client::new(&server)?
                        .get(&format!("/api/deliveries?limit={limit}"))
                        .await?;
                    serde_json::from_value(v["deliveries"].clone())?
                }
                None => {
                    let config = Config::load(&config.config)?;
                    let journal = Journal::open_read_only(&config.state_dir)?;
                    journal.recent_deliveries(limit).await?
                }
            };
            print_deliveries(&rows, json);
            Ok(())
        }
        Command::Deployments {
            config,
            server,
            app,
            limit,
            json,
        } => {
            let rows = match server {
                Some(server) => {
                    let mut path = format!("/api/deployments?limit={limit}");
                    if let Some(app) = &app {
                        path.push_str(&format!("&app={app}"));
                    }
                    let v = Client::new(&server)?.get(&path).await?;
                    serde_json::from_value(v["deployments"].clone())?
                }
                None => {
                    let config = Config::load(&config.config)?;
                    let journal = Journal::open_read_only(&config.state_dir)?;
                    journal.recent_deployments(app, limit).await?
                }
            };
            print_deployments(&rows, json);
            Ok(())
        }
        Command::Deploy {
            server,
            app,
            sha,
            wait,
        } => {
            let client = Client::new(&server.server)?;
            let v = client
                .post(
                    &format!("/api/apps/{app}/deploy"),
                    &serde_json::json!({ "sha": sha }),
                )
                .await?;
            follow(&client, &v, wait).await
        }
        Command::Rollback {
            server,
            app,
            to,
            wait,
        } => {
            let client = Client::new(&server.server)?;
            let v = client
                .post(
                    &format!("/api/apps/{app}/rollback"),
                    &serde_json::json!({ "to": to }),
                )
                .await?;
            follow(&client, &v, wait).await
        }
        Command::Replay {
            server,
            delivery,
            file,
            event,
        } => {
            let client = Client::new(&server.server)?;
            let v = match (delivery, file) {
                (Some(id), _) => {
                    client
                        .post(
                            &format!("/api/deliveries/{id}/replay"),
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
                (None, None) => anyhow::bail!("give a delivery id or --file"),
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
            Ok(())
        }
        Command::Status { server, json } => {
            let v = Client::new(&server.server)?.get("/api/apps").await?;
            print_status(&v, json);
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config.config)?;
            println!(
                "{}: ok ({} apps)",
                config.config.display(),
                loaded.apps.len()
            );
            Ok(())
        }
        Command::Provision {
            config,
            dry_run,
            json,
        } => crate::provision::command(&config.config, dry_run, json).await,
    }
}

async fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let secrets = WebhookSecrets::from_env()?;
    let journal = Journal::open_with(&config.state_dir, &config.journal)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let aws = Clients::from_env().await;
    let notifier =
        crate::notify::Notifier::from_config(&config.notify, |name| std::env::var(name).ok())?;
    server::run(
        listener,
        Services {
            config,
            secrets,
            journal,
            clock: Arc::new(SystemClock),
            aws,
            notifier,
            ops_tokens: crate::config::OpsTokens::from_env()?,
            slack_secret: crate::config::slack_signing_secret_from_env(),
        },
        shutdown_signal(),
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

fn print_deliveries(rows: &[DeliverySummary], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).expect("serializable"));
        }
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

fn print_deployments(rows: &[crate::journal::Deployment], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).expect("serializable"));
        }
        return;
    }
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|d| {
            [
                d.id.to_string(),
                crate::journal::format_millis(d.created_ms),
                d.app.clone(),
                d.sha.chars().take(7).collect(),
                d.state.clone(),
                d.trigger.clone(),
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

/// Prints what a deploy or rollback request started, and follows it with `--wait`.
async fn follow(client: &Client, accepted: &serde_json::Value, wait: bool) -> anyhow::Result<()> {
    let id = accepted["deployment"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the server did not return a deployment id"))?;
    println!("deployment {id} accepted");
    if wait {
        client.wait(id).await?;
    }
    Ok(())
}

fn print_status(v: &serde_json::Value, json: bool) {
    let apps = v["apps"].as_array().cloned().unwrap_or_default();
    if json {
        for app in &apps {
            println!("{app}");
        }
        return;
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let rows: Vec<[String; 6]> = apps
        .iter()
        .map(|a| {
            let last = &a["last_deployment"];
            [
                text(&a["app"]),
                a["commit"]
                    .as_str()
                    .map(|s| s.chars().take(7).collect())
                    .unwrap_or_else(|| "-".into()),
                revision(&a["task_definition"].as_str().map(str::to_owned)),
                text(&a["image"]),
                match last["id"].as_i64() {
                    Some(id) => format!("#{id} {}", text(&last["state"])),
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
