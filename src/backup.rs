//! Backups of the journal (issue 21): `slipway backup --to`, `slipway restore --from`, and the
//! schedule `[journal] backup_to` / `backup_every_hours` / `backup_keep`.
//!
//! A backup is a consistent copy (see `store::sqlite::backup`) written to a file or uploaded to S3.
//! While `serve` holds the journal, `slipway backup` asks it through the ops API
//! (`POST /api/backups`), which takes the copy itself. Each scheduled copy gets a timestamp in
//! its name (`journal.db` → `journal-20261204T190000Z.db`), and copies beyond `backup_keep` are
//! deleted, oldest first. Every backup's outcome is logged, counted in
//! `slipway_backups_total{result}`, kept in the journal (`meta.last_backup`), shown by
//! `GET /api/backups`, and a failed last backup is a warning on `/readyz`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::error::DisplayErrorContext;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::BackupLocation;
use crate::readiness::{BackupOutcome, Readiness};
use crate::store::sqlite::backup::BackupSummary;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Journal(#[from] StoreError),
    #[error("S3 {operation} s3://{bucket}/{key}: {message}")]
    S3 {
        operation: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A backup that was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Taken {
    pub to: String,
    /// When the copy began (RFC 3339): it holds everything acknowledged before.
    pub at: String,
    pub schema_version: i64,
    pub bytes: u64,
    pub deliveries: i64,
    pub deployments: i64,
}

/// The stamp a scheduled copy carries in its name (UTC, sorts as text).
const STAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

fn stamp(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(STAMP)
        .expect("formattable")
}

/// `name` with `-<stamp>` before its extension: (the part before, the part after).
fn split_name(name: &str) -> (&str, &str) {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[file_start..].rfind('.') {
        Some(dot) if dot > 0 => name.split_at(file_start + dot),
        _ => (name, ""),
    }
}

fn with_stamp(name: &str, stamp: &str) -> String {
    let (stem, ext) = split_name(name);
    format!("{stem}-{stamp}{ext}")
}

/// The beginning every stamped copy of `key` has (`slipway/journal-` for
/// `slipway/journal.db`): what the scheduled backups list, write, read and delete, and all
/// the runtime IAM policy grants on a backup bucket (`provision::policy`).
pub fn copies_prefix(key: &str) -> String {
    format!("{}-", split_name(key).0)
}

/// The stamp of `candidate` if it is a stamped copy of `name`.
fn stamp_in<'a>(name: &str, candidate: &'a str) -> Option<&'a str> {
    let (stem, ext) = split_name(name);
    let stamp = candidate
        .strip_prefix(stem)?
        .strip_prefix('-')?
        .strip_suffix(ext)?;
    time::PrimitiveDateTime::parse(stamp.trim_end_matches('Z'), &STAMP[..STAMP.len() - 1])
        .ok()
        .map(|_| stamp)
}

/// `location` with `stamp` in its name.
pub fn stamped(location: &BackupLocation, stamp: &str) -> BackupLocation {
    match location {
        BackupLocation::File(path) => {
            BackupLocation::File(PathBuf::from(with_stamp(&path.to_string_lossy(), stamp)))
        }
        BackupLocation::S3 { bucket, key } => BackupLocation::S3 {
            bucket: bucket.clone(),
            key: with_stamp(key, stamp),
        },
    }
}

/// The stamped copies of `location` there now, oldest first: (stamp, copy).
pub async fn copies(
    s3: &aws_sdk_s3::Client,
    location: &BackupLocation,
) -> Result<Vec<(String, BackupLocation)>, BackupError> {
    let mut found = Vec::new();
    match location {
        BackupLocation::File(path) => {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                return Ok(found);
            };
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let candidate = entry.file_name().to_string_lossy().into_owned();
                if let Some(stamp) = stamp_in(&name, &candidate) {
                    found.push((stamp.to_owned(), BackupLocation::File(dir.join(&candidate))));
                }
            }
        }
        BackupLocation::S3 { bucket, key } => {
            let prefix = copies_prefix(key);
            let mut pages = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| BackupError::S3 {
                    operation: "ListObjectsV2",
                    bucket: bucket.clone(),
                    key: format!("{prefix}*"),
                    message: DisplayErrorContext(&e).to_string(),
                })?;
                for object in page.contents() {
                    let Some(candidate) = object.key() else {
                        continue;
                    };
                    if let Some(stamp) = stamp_in(key, candidate) {
                        found.push((
                            stamp.to_owned(),
                            BackupLocation::S3 {
                                bucket: bucket.clone(),
                                key: candidate.to_owned(),
                            },
                        ));
                    }
                }
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Deletes the stamped copies of `location` beyond the newest `keep`; returns what it deleted.
pub async fn prune(
    s3: &aws_sdk_s3::Client,
    location: &BackupLocation,
    keep: usize,
) -> Result<Vec<BackupLocation>, BackupError> {
    let all = copies(s3, location).await?;
    let extra = all.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for (_, copy) in all.into_iter().take(extra) {
        match &copy {
            BackupLocation::File(path) => std::fs::remove_file(path).map_err(io(path))?,
            BackupLocation::S3 { bucket, key } => {
                s3.delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| BackupError::S3 {
                        operation: "DeleteObject",
                        bucket: bucket.clone(),
                        key: key.clone(),
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
            }
        }
        deleted.push(copy);
    }
    Ok(deleted)
}

/// Takes a consistent copy of `journal` and puts it at `to`. The copy is made in `staging`
/// (the state_dir) first: a file target is then renamed into place (never half-written), an
/// S3 target uploaded in one PutObject (at most 5 GB).
pub async fn take(
    journal: &Store,
    s3: &aws_sdk_s3::Client,
    staging: &Path,
    to: &BackupLocation,
    now: time::OffsetDateTime,
) -> Result<Taken, BackupError> {
    let temp = staging.join(format!(
        "journal.db.backup-{}-{}",
        stamp(now),
        uuid::Uuid::new_v4().simple()
    ));
    let result = async {
        let summary: BackupSummary = journal.snapshot_into(temp.clone()).await?;
        match to {
            BackupLocation::File(path) => {
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                // A rename within one file system; across file systems, copy then rename.
                let partial = PathBuf::from(format!("{}.partial", path.display()));
                std::fs::copy(&temp, &partial).map_err(io(&partial))?;
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&partial))?;
                std::fs::rename(&partial, path).map_err(io(path))?;
            }
            BackupLocation::S3 { bucket, key } => {
                let body = aws_sdk_s3::primitives::ByteStream::from_path(&temp)
                    .await
                    .map_err(|e| BackupError::Io {
                        path: temp.clone(),
                        source: std::io::Error::other(e),
                    })?;
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .content_type("application/vnd.sqlite3")
                    .metadata("slipway-schema-version", summary.schema_version.to_string())
                    .send()
                    .await
                    .map_err(|e| BackupError::S3 {
                        operation: "PutObject",
                        bucket: bucket.clone(),
                        key: key.clone(),
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
            }
        }
        Ok::<_, BackupError>(summary)
    }
    .await;
    let _ = std::fs::remove_file(&temp);
    let summary = result?;
    Ok(Taken {
        to: to.to_string(),
        at: crate::clock::format(now),
        schema_version: summary.schema_version,
        bytes: summary.bytes,
        deliveries: summary.deliveries,
        deployments: summary.deployments,
    })
}

/// Fetches the backup at `from` into `dest` (a new file).
pub async fn fetch(
    s3: &aws_sdk_s3::Client,
    from: &BackupLocation,
    dest: &Path,
) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io(dest))?;
    match from {
        BackupLocation::File(path) => {
            let mut source = std::fs::File::open(path).map_err(io(path))?;
            std::io::copy(&mut source, &mut file).map_err(io(dest))?;
        }
        BackupLocation::S3 { bucket, key } => {
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| BackupError::S3 {
                    operation: "GetObject",
                    bucket: bucket.clone(),
                    key: key.clone(),
                    message: DisplayErrorContext(&e).to_string(),
                })?;
            let mut body = object.body;
            use std::io::Write;
            while let Some(chunk) = body.try_next().await.map_err(|e| BackupError::S3 {
                operation: "GetObject",
                bucket: bucket.clone(),
                key: key.clone(),
                message: e.to_string(),
            })? {
                file.write_all(&chunk).map_err(io(dest))?;
            }
        }
    }
    file.sync_all().map_err(io(dest))?;
    Ok(())
}

/// Backups taken by the server: on request (`POST /api/backups`) and on schedule.
pub struct Backups {
    pub journal: Store,
    pub s3: aws_sdk_s3::Client,
    pub clock: SharedClock,
    pub readiness: Arc<Readiness>,
    pub staging: PathBuf,
    pub settings: crate::config::JournalConfig,
    /// One backup at a time.
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    pub fn new(
        journal: Store,
        s3: aws_sdk_s3::Client,
        clock: SharedClock,
        readiness: Arc<Readiness>,
        staging: PathBuf,
        settings: crate::config::JournalConfig,
    ) -> Backups {
        Backups {
            journal,
            s3,
            clock,
            readiness,
            staging,
            settings,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a backup to `to` and records how it went (log, metric, journal, `/readyz`).
    pub async fn take(&self, to: &BackupLocation) -> Result<Taken, BackupError> {
        let _one = self.running.lock().await;
        let now = self.clock.now();
        let result = take(&self.journal, &self.s3, &self.staging, to, now).await;
        let outcome = BackupOutcome {
            at: crate::clock::format(now),
            to: to.to_string(),
            error: result.as_ref().err().map(|e| e.to_string()),
        };
        match &result {
            Ok(taken) => {
                metrics::counter!(crate::metrics::BACKUPS, "result" => crate::metrics::RESULT_OK)
                    .increment(1);
                tracing::info!(
                    to = %taken.to,
                    bytes = taken.bytes,
                    deliveries = taken.deliveries,
                    schema_version = taken.schema_version,
                    "journal backup taken"
                );
            }
            Err(e) => {
                metrics::counter!(crate::metrics::BACKUPS, "result" => crate::metrics::RESULT_ERROR)
                    .increment(1);
                tracing::error!(to = %to, error = %e, "journal backup failed");
            }
        }
        if let Err(e) = self.journal.record_backup(&outcome).await {
            tracing::warn!(error = %e, "could not journal the backup's outcome");
        }
        self.readiness.set_last_backup(outcome);
        result
    }

    /// Where a requested backup goes: `to` (a file path or s3://bucket/key), or a stamped copy
    /// at `backup_to`.
    pub fn target(&self, to: Option<&str>) -> Result<BackupLocation, String> {
        match (to, &self.settings.backup_to) {
            (Some(to), _) => to.parse(),
            (None, Some(configured)) => Ok(stamped(configured, &stamp(self.clock.now()))),
            (None, None) => Err(
                "say where the backup goes (\"to\": a file path or s3://bucket/key); \
                 [journal] backup_to is not set"
                    .to_owned(),
            ),
        }
    }

    /// The schedule, for `GET /api/backups` (null: none).
    pub fn schedule(&self) -> serde_json::Value {
        match &self.settings.backup_to {
            Some(to) => serde_json::json!({
                "to": to.to_string(),
                "every_hours": self.settings.backup_every_hours,
                "keep": self.settings.backup_keep,
            }),
            None => serde_json::Value::Null,
        }
    }

    /// The last backup's outcome, from the journal (it outlives restarts).
    pub async fn last(&self) -> Result<Option<BackupOutcome>, StoreError> {
        self.journal.last_backup().await
    }

    /// Backs up to stamped copies of `to` every `backup_every_hours`, keeping `backup_keep`,
    /// until `shutdown`. The first is due one interval after the newest copy already there
    /// (at once if there is none), so restarts do not postpone backups forever.
    pub async fn run_schedule(self: Arc<Self>, to: BackupLocation, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.backup_every_hours * 3600);
        let retry = every.min(Duration::from_secs(15 * 60));
        let mut wait = match copies(&self.s3, &to).await {
            Ok(found) => found
                .last()
                .and_then(|(stamp, _)| parse_stamp(stamp))
                .map(|newest| {
                    let due = newest + every;
                    let now = self.clock.now();
                    if due > now {
                        (due - now).try_into().unwrap_or(Duration::ZERO)
                    } else {
                        Duration::ZERO
                    }
                })
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!(to = %to, error = %e, "cannot list the backups already taken; backing up now");
                Duration::ZERO
            }
        };
        tracing::info!(to = %to, every_hours = self.settings.backup_every_hours, keep = self.settings.backup_keep, first_in_secs = wait.as_secs(), "scheduled journal backups");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let copy = stamped(&to, &stamp(self.clock.now()));
            wait = match self.take(&copy).await {
                Ok(_) => {
                    match prune(&self.s3, &to, self.settings.backup_keep).await {
                        Ok(deleted) => {
                            for old in deleted {
                                tracing::info!(deleted = %old, keep = self.settings.backup_keep, "old journal backup deleted");
                            }
                        }
                        Err(e) => {
                            tracing::error!(to = %to, error = %e, "could not delete old journal backups")
                        }
                    }
                    every
                }
                Err(_) => retry,
            };
        }
    }
}

fn parse_stamp(stamp: &str) -> Option<time::OffsetDateTime> {
    time::PrimitiveDateTime::parse(stamp.trim_end_matches('Z'), &STAMP[..STAMP.len() - 1])
        .ok()
        .map(|t| t.assume_utc())
}

/// `slipway backup` and `restore` are for the SQLite journal's file; a DynamoDB table is
/// backed up and restored by DynamoDB (usage error, exit 2, saying so).
fn refuse_dynamodb(config: &crate::config::Config, command: &str) -> anyhow::Result<()> {
    if let crate::config::store::StoreConfig::DynamoDb { table, .. } = &config.store {
        return Err(crate::config::UsageError(format!(
            "slipway {command} is for the SQLite journal; the state is in the DynamoDB table \
             {table}, whose backups are DynamoDB's point-in-time recovery (restore one into a \
             new table with `aws dynamodb restore-table-to-point-in-time`, then set [store] \
             table to it)"
        ))
        .into());
    }
    Ok(())
}

/// `slipway backup --to`: from the journal directly when no server holds it, else through the
/// server's ops API (the server takes the copy; a file path is then on the server's host).
pub async fn backup_command(
    config: &crate::config::Config,
    to: &BackupLocation,
    server: &str,
    insecure: bool,
) -> anyhow::Result<()> {
    refuse_dynamodb(config, "backup")?;
    let taken: Taken =
        match Store::open_configured_read_only(config, &crate::aws::shared_config().await) {
            Ok(journal) => {
                let s3 = match to {
                    BackupLocation::S3 { .. } => s3_client().await?,
                    BackupLocation::File(_) => unused_s3(),
                };
                take(
                    &journal,
                    &s3,
                    &config.state_dir,
                    to,
                    time::OffsetDateTime::now_utc(),
                )
                .await
                .with_context(|| format!("backing up the journal to {to}"))?
            }
            Err(StoreError::ServerRunning { host, .. }) => {
                eprintln!("slipway is running on {host}: asking it ({server}) to take the backup");
                let v = crate::client::Client::new(server, insecure)?
                    .post("/api/backups", &serde_json::json!({ "to": to.to_string() }))
                    .await?;
                serde_json::from_value(v["backup"].clone())
                    .context("the server's answer is not in the expected form")?
            }
            Err(e) => return Err(e.into()),
        };
    println!(
        "backed up the journal to {} ({} bytes, schema version {}, {} deliveries, {} deployments, as of {})",
        taken.to, taken.bytes, taken.schema_version, taken.deliveries, taken.deployments, taken.at
    );
    Ok(())
}

/// `slipway restore --from`: only while no slipway holds the journal. Checks the backup
/// before it replaces anything; keeps the replaced journal aside.
pub async fn restore_command(
    config: &crate::config::Config,
    from: &BackupLocation,
) -> anyhow::Result<()> {
    use crate::store::sqlite::lock::{Holder, JournalLock, LockError};
    refuse_dynamodb(config, "restore")?;
    let state_dir = &config.state_dir;
    let lock = match JournalLock::try_exclusive(state_dir, &Holder::this_process(None)) {
        Ok(lock) => lock,
        Err(LockError::Held(holder)) => anyhow::bail!(
            "slipway is running on {} ({}): stop it before restoring (a restore replaces the \
             journal it is using); nothing was changed",
            holder
                .as_ref()
                .map_or("this state_dir".to_owned(), |h| h.host.clone()),
            holder.map_or("it has not said who it is".to_owned(), |h| h.to_string())
        ),
        Err(e) => return Err(e.into()),
    };
    let now = stamp(time::OffsetDateTime::now_utc());
    let candidate = state_dir.join(format!("journal.db.restoring-{now}"));
    let s3 = match from {
        BackupLocation::S3 { .. } => s3_client().await?,
        BackupLocation::File(_) => unused_s3(),
    };
    let fetched = fetch(&s3, from, &candidate).await;
    if let Err(e) = fetched {
        let _ = std::fs::remove_file(&candidate);
        return Err(anyhow::anyhow!(
            "cannot read the backup {from}: {e}; the journal was not changed"
        ));
    }
    let summary = match crate::store::sqlite::backup::check_backup(&candidate) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&candidate);
            anyhow::bail!("refused {from}: {e}; the journal was not changed");
        }
    };
    let aside = crate::store::sqlite::backup::put_in_place(state_dir, &lock, &candidate, &now)
        .with_context(|| format!("putting {from} in place"))?;
    println!(
        "restored {from} into {} (schema version {}, {} deliveries, {} deployments, {} bytes; \
         PRAGMA integrity_check: ok)",
        state_dir.join("journal.db").display(),
        summary.schema_version,
        summary.deliveries,
        summary.deployments,
        summary.bytes
    );
    match aside {
        Some(aside) => println!(
            "the journal it replaced is kept at {} (delete it once the restore is confirmed)",
            aside.display()
        ),
        None => println!("there was no journal before"),
    }
    Ok(())
}

/// The S3 client for the CLI, from the environment (a region is required).
async fn s3_client() -> anyhow::Result<aws_sdk_s3::Client> {
    let shared = crate::aws::shared_config().await;
    if shared.region().is_none() {
        return Err(crate::config::UsageError(crate::config::NO_REGION.to_owned()).into());
    }
    Ok(crate::aws::Clients::from_config(&shared).s3)
}

/// A client for code paths that never call S3 (file backups): no region, no credentials.
fn unused_s3() -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_copies_carry_a_stamp_before_the_extension() {
        let loc: BackupLocation = "s3://bucket/slipway/journal.db".parse().unwrap();
        let copy = stamped(&loc, "20261204T190000Z");
        assert_eq!(
            copy.to_string(),
            "s3://bucket/slipway/journal-20261204T190000Z.db"
        );
        assert_eq!(
            stamp_in("slipway/journal.db", "slipway/journal-20261204T190000Z.db"),
            Some("20261204T190000Z")
        );
        // Only stamped copies of that name count.
        assert_eq!(
            stamp_in("slipway/journal.db", "slipway/journal-manual.db"),
            None
        );
        assert_eq!(stamp_in("slipway/journal.db", "slipway/journal.db"), None);
        assert_eq!(with_stamp("backups/journal", "X"), "backups/journal-X");
        assert_eq!(with_stamp("a.b/journal", "X"), "a.b/journal-X");
        assert!(parse_stamp("20261204T190000Z").is_some());
        assert!("http://x/y".parse::<BackupLocation>().is_err());
        assert!("s3://bucket".parse::<BackupLocation>().is_err());
        assert!("s3://bucket/prefix/".parse::<BackupLocation>().is_err());
    }

    #[tokio::test]
    async fn file_copies_beyond_keep_are_deleted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let loc = BackupLocation::File(dir.path().join("journal.db"));
        for stamp in ["20261201T000000Z", "20261202T000000Z", "20261203T000000Z"] {
            let BackupLocation::File(p) = stamped(&loc, stamp) else {
                unreachable!()
            };
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::write(dir.path().join("journal-manual.db"), b"x").unwrap();
        let deleted = prune(&unused_s3(), &loc, 2).await.unwrap();
        assert_eq!(deleted.len(), 1);
        assert!(deleted[0]
            .to_string()
            .ends_with("journal-20261201T000000Z.db"));
        let left: Vec<String> = copies(&unused_s3(), &loc)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, ["20261202T000000Z", "20261203T000000Z"]);
        assert!(
            dir.path().join("journal-manual.db").exists(),
            "not a stamped copy"
        );
    }
}
