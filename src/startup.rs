//! What `serve` finds out about AWS before it starts listening: whether the credentials work,
//! and where the build results queue is when slipway.toml does not say.

use crate::aws::{AwsError, Clients};
use crate::config::Config;
use crate::readiness::{credential_source, Readiness};

/// Asks STS who slipway is. On failure slipway still starts (the journal keeps taking pushes),
/// but `/readyz` answers 503 with the reason and the log says which credential source was tried.
pub async fn check_credentials(aws: &Clients, readiness: &Readiness) {
    match aws.sts.get_caller_identity().send().await {
        Ok(me) => {
            tracing::info!(
                account = me.account().unwrap_or("?"),
                arn = me.arn().unwrap_or("?"),
                "AWS credentials accepted"
            );
            readiness.set_credentials_error(None);
        }
        Err(e) => {
            let err = AwsError::from_sdk("STS GetCallerIdentity", &e);
            let source = credential_source(|name| std::env::var(name).ok());
            tracing::error!(
                error = %err,
                credential_source = %source,
                "AWS credentials do not work: slipway takes pushes but cannot build or deploy \
                 until this is fixed (/readyz answers 503)"
            );
            readiness.set_credentials_error(Some(format!("{err} (tried {source})")));
        }
    }
}

/// Without `queue_url` in slipway.toml, looks the queue up by `[provision] queue_name` and puts
/// its URL in `config`. If that fails, build results come only from the reconciler (minutes
/// late): said loudly in the log and by `/readyz`.
pub async fn find_queue(config: &mut Config, aws: &Clients, readiness: &Readiness) {
    if config.queue_url.is_some() {
        return;
    }
    let name = config.provision.queue_name.clone();
    match aws.sqs.get_queue_url().queue_name(&name).send().await {
        Ok(out) if out.queue_url().is_some_and(|u| !u.is_empty()) => {
            let url = out.queue_url().unwrap_or_default().to_owned();
            tracing::info!(queue = %name, queue_url = %url, "found the events queue by name");
            config.queue_url = Some(url);
        }
        result => {
            let why = match result {
                Ok(_) => "GetQueueUrl returned no URL".to_owned(),
                Err(e) => AwsError::from_sdk("SQS GetQueueUrl", &e).message,
            };
            let warning = format!(
                "no events queue (no queue_url, and queue \"{name}\" was not found: {why}): \
                 build results come only from the reconciler, minutes late; run `slipway \
                 provision` or set queue_url"
            );
            tracing::warn!("{warning}");
            readiness.set_queue_warning(Some(warning));
        }
    }
}

/// The ECS task this process runs in, from the task metadata endpoint (v4), to name it in the
/// journal lock: `GET ${ECS_CONTAINER_METADATA_URI_V4}/task` answers a JSON object whose
/// `TaskARN` is the task's ARN (AWS: "Amazon ECS task metadata endpoint version 4"). None off
/// ECS, or when the endpoint does not answer within a second.
pub async fn ecs_task_arn(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TaskMetadata {
        #[serde(rename = "TaskARN")]
        task_arn: String,
    }
    let base = env("ECS_CONTAINER_METADATA_URI_V4").filter(|u| !u.is_empty())?;
    let url = format!("{}/task", base.trim_end_matches('/'));
    let answer = async {
        reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(1))
            .send()
            .await?
            .error_for_status()?
            .json::<TaskMetadata>()
            .await
    };
    match answer.await {
        Ok(task) => Some(task.task_arn),
        Err(e) => {
            tracing::warn!(error = %e, %url, "the ECS task metadata endpoint did not say which task this is");
            None
        }
    }
}

/// Whether webhook delivery recovery will run, and if not, why: it needs `[github]` API
/// credentials and at least one `[[github.hook]]`.
pub fn recovery_state(config: &Config, credentials: bool) -> crate::readiness::Recovery {
    use crate::readiness::Recovery;
    let hooks = config.github.as_ref().is_some_and(|g| !g.hooks.is_empty());
    let why = match (credentials, hooks) {
        (true, true) => return Recovery::Pending,
        (false, true) => "no GitHub API credentials ([github] and its app or token settings)",
        (true, false) => "no [[github.hook]] to recover deliveries of",
        (false, false) => "no [github] credentials and no [[github.hook]]",
    };
    tracing::warn!(reason = why, "{}", crate::readiness::RECOVERY_OFF);
    Recovery::Off(why.to_owned())
}

/// Opens the configured store for `serve`: the SQLite journal ([`take_journal`]), or the
/// DynamoDB table ([`open_table`]). None if `shutdown` came first.
pub async fn open_store(
    config: &Config,
    aws: &Clients,
    readiness: &Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<crate::store::Store>> {
    match &config.store {
        crate::config::store::StoreConfig::Sqlite => {
            take_journal(config, readiness, shutdown).await
        }
        crate::config::store::StoreConfig::DynamoDb {
            table,
            bodies_bucket,
        } => {
            open_table(
                config,
                table,
                bodies_bucket.as_deref(),
                aws,
                readiness,
                shutdown,
            )
            .await
        }
    }
}

/// How long `serve` waits between attempts to reach its DynamoDB table at start.
const TABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the DynamoDB table for `serve`. While DynamoDB cannot be reached (or throttles),
/// tries again every few seconds, saying why in the log and in `/readyz`; a table that does
/// not exist, or refused credentials, end the start with the reason (`slipway provision` makes
/// the table). None if `shutdown` came first.
async fn open_table(
    config: &Config,
    table: &str,
    bodies_bucket: Option<&str>,
    aws: &Clients,
    readiness: &Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<crate::store::Store>> {
    use crate::store::{Store, StoreError};
    tokio::pin!(shutdown);
    let mut attempts = 0u32;
    loop {
        readiness.set_starting(Some(format!("opening the DynamoDB table {table}")));
        let opened = Store::open_dynamodb(
            aws.dynamodb.clone(),
            aws.s3.clone(),
            table,
            bodies_bucket,
            &config.journal,
            crate::store::millis(time::OffsetDateTime::now_utc()),
        )
        .await;
        match opened {
            Ok(store) => {
                tracing::info!(table, bodies_bucket, "state in DynamoDB");
                return Ok(Some(store));
            }
            Err(StoreError::Unavailable { reason }) => {
                attempts += 1;
                let why = format!(
                    "cannot reach the DynamoDB table {table} ({reason}); trying again every {} s",
                    TABLE_RETRY.as_secs()
                );
                if attempts == 1 || attempts.is_multiple_of(12) {
                    tracing::warn!(table, attempts, "{why}");
                }
                readiness.set_starting(Some(why));
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("opening the DynamoDB table {table}"))
                );
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(None),
            _ = tokio::time::sleep(TABLE_RETRY) => {}
        }
    }
}

/// Takes the journal for `serve`: waits up to `[journal] lock_wait_secs` while another slipway
/// holds it (a task being replaced may still be stopping), saying whom it waits for in the log
/// and in `/readyz`, then opens it (migrating if needed). None if `shutdown` came first.
async fn take_journal(
    config: &Config,
    readiness: &Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<crate::store::Store>> {
    use crate::store::sqlite::lock::{Holder, JournalLock};
    use anyhow::Context;
    let state_dir = config.state_dir.clone();
    let me = Holder::this_process(ecs_task_arn(|name| std::env::var(name).ok()).await);
    let wait = std::time::Duration::from_secs(config.journal.lock_wait_secs);
    let mut last_holder: Option<Option<Holder>> = None;
    let mut last_log = std::time::Instant::now();
    let waiting = JournalLock::wait_exclusive(&state_dir, &me, wait, |holder, waited| {
        let whom = match holder {
            Some(h) => format!("held by {h}"),
            None => "held by a process that did not say who it is".to_owned(),
        };
        readiness.set_starting(Some(format!(
            "waiting for the journal lock {whom} ({} s of at most {} s)",
            waited.as_secs(),
            wait.as_secs()
        )));
        // Logged when the holder changes, and every 15 s.
        if last_holder.as_ref() != Some(&holder.cloned())
            || last_log.elapsed() >= std::time::Duration::from_secs(15)
        {
            tracing::warn!(
                holder = %whom,
                waited_secs = waited.as_secs(),
                lock_wait_secs = wait.as_secs(),
                state_dir = %state_dir.display(),
                "another slipway holds the journal: waiting for it to exit"
            );
            last_holder = Some(holder.cloned());
            last_log = std::time::Instant::now();
        }
    });
    let lock = tokio::select! {
        _ = shutdown => return Ok(None),
        lock = waiting => lock.with_context(|| format!("taking the journal in {}", config.state_dir.display()))?,
    };
    if last_holder.is_some() {
        tracing::info!("took over the journal lock");
    }
    readiness.set_starting(Some(
        "opening the journal (migrating it if needed)".to_owned(),
    ));
    let settings = config.journal.clone();
    let journal = tokio::task::spawn_blocking(move || {
        crate::store::Store::open_locked(&state_dir, lock, &settings)
    })
    .await
    .context("the journal's opening task failed")?
    .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    Ok(Some(journal))
}

/// What `serve` would refuse in the environment for `config`, without calling AWS: the webhook
/// secrets, the ops tokens, the variables `[notify]` names, Slack's signing secret without
/// `[chat] slack_team_id`, `[github]` without credentials, and the AWS region. Every problem is
/// one line naming the variable or key; the values are never shown. `region` is the region the
/// SDK resolved (environment or profile).
pub fn check_serve_environment(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
    region: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = crate::webhook_keys::Keyring::load(config, &env) {
        problems.push(e.to_string());
    }
    if let Err(e) = crate::config::OpsTokens::parse(env(crate::config::OPS_TOKENS_ENV).as_deref()) {
        problems.push(e.to_string());
    }
    if let Err(e) = crate::config::ReadToken::parse(env(crate::config::READ_TOKEN_ENV).as_deref()) {
        problems.push(e.to_string());
    }
    if let Err(e) = crate::notify::Endpoints::from_config(&config.notify, &env) {
        problems.push(e.to_string());
    }
    let slack_secret =
        env(crate::config::SLACK_SIGNING_SECRET_ENV).is_some_and(|s| !s.trim().is_empty());
    if slack_secret && config.chat.slack_team_id.is_none() {
        problems.push(crate::config::SLACK_TEAM_REQUIRED.to_owned());
    }
    if let Err(e) = crate::github::Credentials::from_env(config.github.as_ref(), &env) {
        problems.push(e.to_string());
    }
    if region.is_none_or(str::is_empty) {
        problems.push(crate::config::NO_REGION.to_owned());
    }
    problems
}

/// This replica's id (issue 26): `[replicas] replica_id`, else the ECS task's ARN, else the
/// hostname and the process id.
pub async fn replica_id(config: &Config) -> String {
    match &config.replicas.replica_id {
        Some(id) => id.clone(),
        None => crate::replicas::default_id(
            ecs_task_arn(|name| std::env::var(name).ok()).await,
            &crate::store::sqlite::lock::hostname(),
        ),
    }
}
