//! `slipway provision`: sets up slipway's own plumbing and checks what the user owns.
//!
//! slipway's plumbing is created or brought back in line, idempotently: the dead-letter queue,
//! the events queue (redrive policy, and a queue policy letting only the EventBridge rule send
//! to it), the EventBridge rule matching the CodeBuild state changes of the configured
//! projects, and the rule's target. What the user owns (CodeBuild projects, ECR repositories,
//! ECS clusters, services and task definitions) is only looked at, never changed; every
//! problem is reported in the same run.
//!
//! `--dry-run` makes no change at all and reports what a real run would do.

pub mod policy;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Queue,
    DeadLetterQueue,
    QueuePolicy,
    Rule,
    RuleTarget,
    CodebuildProject,
    EcrRepository,
    Cluster,
    Service,
    Container,
    CircuitBreaker,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::DeadLetterQueue => "dead_letter_queue",
            Kind::QueuePolicy => "queue_policy",
            Kind::Rule => "rule",
            Kind::RuleTarget => "rule_target",
            Kind::CodebuildProject => "codebuild_project",
            Kind::EcrRepository => "ecr_repository",
            Kind::Cluster => "cluster",
            Kind::Service => "service",
            Kind::Container => "container",
            Kind::CircuitBreaker => "circuit_breaker",
            Kind::Config => "config",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Updated,
    Unchanged,
    WouldCreate,
    WouldUpdate,
    Ok,
    Missing,
    Warning,
    Error,
    /// A step skipped because an earlier one failed: reported, not counted as a failure
    /// (the failed step is).
    NotAttempted,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Created,
        Status::Updated,
        Status::Unchanged,
        Status::WouldCreate,
        Status::WouldUpdate,
        Status::Ok,
        Status::Warning,
        Status::Missing,
        Status::Error,
        Status::NotAttempted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Updated => "updated",
            Status::Unchanged => "unchanged",
            Status::WouldCreate => "would_create",
            Status::WouldUpdate => "would_update",
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Warning => "warning",
            Status::Error => "error",
            Status::NotAttempted => "not_attempted",
        }
    }

    /// Something the user has to fix, or a call that failed: the run is not a success.
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Missing | Status::Error)
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub kind: Kind,
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// The app(s) the item was checked for; none for slipway's own plumbing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// No item is `missing` or `error`.
    pub success: bool,
    pub queue_name: String,
    /// The events queue's URL: what `queue_url` in slipway.toml should be.
    pub queue_url: Option<String>,
    pub queue_arn: Option<String>,
    pub rule_arn: Option<String>,
    /// `queue_url` as configured.
    pub config_queue_url: Option<String>,
    /// How many items have each status.
    pub summary: BTreeMap<&'static str, usize>,
    pub items: Vec<Item>,
}

impl Report {
    fn new(config: &Config, dry_run: bool) -> Report {
        Report {
            dry_run,
            success: true,
            queue_name: config.provision.queue_name.clone(),
            queue_url: None,
            queue_arn: None,
            rule_arn: None,
            config_queue_url: config.queue_url.clone(),
            summary: BTreeMap::new(),
            items: Vec::new(),
        }
    }

    fn push(&mut self, kind: Kind, name: &str, status: Status, detail: impl Into<String>) {
        self.items.push(Item {
            kind,
            name: name.to_owned(),
            status,
            detail: detail.into(),
            app: None,
        });
    }

    fn push_app(
        &mut self,
        app: &AppConfig,
        kind: Kind,
        name: &str,
        status: Status,
        detail: impl Into<String>,
    ) {
        self.items.push(Item {
            kind,
            name: name.to_owned(),
            status,
            detail: detail.into(),
            app: Some(app.name.to_string()),
        });
    }

    /// Merges identical checks made for several apps, counts, and decides success.
    fn finish(&mut self) {
        let mut merged: Vec<Item> = Vec::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            let same = merged.iter_mut().find(|m| {
                m.app.is_some()
                    && item.app.is_some()
                    && m.kind == item.kind
                    && m.name == item.name
                    && m.status == item.status
                    && m.detail == item.detail
            });
            match (same, item.app.as_deref()) {
                (Some(m), Some(app)) => {
                    let apps = m.app.get_or_insert_with(String::new);
                    if !apps.split(", ").any(|a| a == app) {
                        apps.push_str(", ");
                        apps.push_str(app);
                    }
                }
                _ => merged.push(item),
            }
        }
        self.items = merged;
        self.summary = Status::ALL
            .iter()
            .map(|s| (s.as_str(), self.count(*s)))
            .filter(|(_, n)| *n > 0)
            .collect();
        self.success = !self.items.iter().any(|i| i.status.is_failure());
    }

    pub fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }

    /// Non-zero exit: something the user owns is missing, or an AWS call failed.
    pub fn is_success(&self) -> bool {
        self.success
    }

    pub fn item(&self, kind: Kind, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.kind == kind && i.name == name)
    }

    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    /// An aligned table, one line per item, then a summary line and the queue URL.
    pub fn render_text(&self) -> String {
        let header = ["KIND", "NAME", "STATUS", "APP", "DETAIL"];
        let rows: Vec<[String; 5]> = self
            .items
            .iter()
            .map(|i| {
                [
                    i.kind.as_str().to_owned(),
                    i.name.clone(),
                    i.status.as_str().to_owned(),
                    i.app.clone().unwrap_or_else(|| "-".to_owned()),
                    i.detail.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        if self.dry_run {
            out.push_str("dry run: nothing was changed\n");
        }
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let summary: Vec<String> = self
            .summary
            .iter()
            .map(|(status, n)| format!("{n} {}", status.replace('_', " ")))
            .collect();
        out.push('\n');
        out.push_str(&format!(
            "{}: {}\n",
            if self.success { "ok" } else { "FAILED" },
            summary.join(", ")
        ));
        match (&self.queue_url, &self.config_queue_url) {
            (Some(url), Some(configured)) if configured == url => {
                out.push_str(&format!("queue URL: {url}\n"));
            }
            (Some(url), _) => {
                out.push_str(&format!(
                    "queue URL: {url}\nput it in slipway.toml: queue_url = \"{url}\"\n"
                ));
            }
            (None, _) if self.dry_run => {
                out.push_str(&format!(
                    "queue URL: known once {} is created\n",
                    self.queue_name
                ));
            }
            (None, _) => out.push_str("queue URL: unknown (see the errors above)\n"),
        }
        out
    }

    /// A one-line reason for the non-zero exit status.
    pub fn failure_message(&self) -> String {
        let mut parts = Vec::new();
        let missing = self.count(Status::Missing);
        if missing > 0 {
            parts.push(format!("{missing} missing"));
        }
        let errors = self.count(Status::Error);
        if errors > 0 {
            parts.push(format!("{errors} failed AWS call(s)"));
        }
        format!("provision: {}", parts.join(", "))
    }
}

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
        .map(|a| a.codebuild_project.clone())
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
    if plumbing.run(&projects).await.is_err() {
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
    check_config(config, &mut report);
    check_projects(config, aws, &mut report).await;
    check_repositories(config, aws, &mut report).await;
    check_ecs(config, aws, &mut report).await;
    report.finish();
    report
}

// ---------------------------------------------------------------------------------------------
// Desired state.

/// The rule's event pattern: final build states of these projects.
pub fn event_pattern(projects: &[String]) -> Value {
    let projects: BTreeSet<&str> = projects.iter().map(String::as_str).collect();
    json!({
        "source": ["aws.codebuild"],
        "detail-type": ["CodeBuild Build State Change"],
        "detail": {
            "project-name": projects,
            "build-status": FINAL_BUILD_STATUSES,
        },
    })
}

/// The queue policy: only this rule, through EventBridge, may send to the queue.
pub fn queue_policy(queue_arn: &str, rule_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": POLICY_SID,
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
        }],
    })
}

pub fn redrive_policy(dead_letter_arn: &str, max_receive_count: u32) -> Value {
    json!({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count})
}

/// JSON compared by meaning: arrays are sets (sorted, a single element equals the element
/// itself, as in IAM policies), numbers written as strings are numbers.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(normalize).collect();
            items.sort_by_key(|v| v.to_string());
            items.dedup();
            if items.len() == 1 {
                items.pop().expect("one element")
            } else {
                Value::Array(items)
            }
        }
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) if n.to_string() == *s => Value::from(n),
            _ => v.clone(),
        },
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

fn same_json(current: Option<&str>, desired: &Value) -> bool {
    current
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .is_some_and(|v| normalize(&v) == normalize(desired))
}

/// Another resource's ARN in the same partition, region and account as `arn`.
fn sibling_arn(arn: &str, service: &str, resource: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, _, region, account, _] => Some(format!(
            "arn:{partition}:{service}:{region}:{account}:{resource}"
        )),
        _ => None,
    }
}

fn last_segment(s: &str) -> &str {
    s.rsplit(['/', ':']).next().unwrap_or(s)
}

// ---------------------------------------------------------------------------------------------
// slipway's plumbing.

/// A failed step; its item is already in the report.
struct Stopped;

struct Queue {
    url: String,
    arn: Option<String>,
    attributes: HashMap<String, String>,
}

struct Plumbing<'a> {
    aws: &'a Clients,
    names: &'a ProvisionConfig,
    dry_run: bool,
    report: &'a mut Report,
}

impl Plumbing<'_> {
    fn failed(&mut self, kind: Kind, name: &str, e: AwsError) -> Stopped {
        self.report.push(kind, name, Status::Error, e.message);
        Stopped
    }

    /// The steps build on each other: the first failure stops them.
    async fn run(&mut self, projects: &[String]) -> Result<(), Stopped> {
        let dlq_arn = self.dead_letter_queue().await?;
        let (queue, queue_is_new, queue_arn) = self.events_queue(dlq_arn).await?;
        let (rule_exists, rule_arn) = self.rule(projects, queue_arn.as_deref()).await?;
        self.queue_policy(
            queue.as_ref(),
            queue_is_new,
            queue_arn.as_deref(),
            rule_arn.as_deref(),
        )
        .await?;
        self.target(rule_exists, queue_arn.as_deref()).await
    }

    /// The dead-letter queue: created if missing. Its ARN (None in a dry run without it).
    async fn dead_letter_queue(&mut self) -> Result<Option<String>, Stopped> {
        let dlq_name = self.names.dead_letter_queue_name.clone();
        let found = self
            .find_queue(&dlq_name)
            .await
            .map_err(|e| self.failed(Kind::DeadLetterQueue, &dlq_name, e))?;
        let arn = match found {
            Some(q) => {
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::Unchanged,
                    "exists",
                );
                q.arn
            }
            None if self.dry_run => {
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::WouldCreate,
                    "keeps messages 14 days",
                );
                None
            }
            None => {
                let q = self
                    .create_queue(
                        &dlq_name,
                        &[(
                            QueueAttributeName::MessageRetentionPeriod,
                            DLQ_RETENTION_SECS.to_owned(),
                        )],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::DeadLetterQueue, &dlq_name, e))?;
                self.report.push(
                    Kind::DeadLetterQueue,
                    &dlq_name,
                    Status::Created,
                    "keeps messages 14 days",
                );
                q.arn
            }
        };
        Ok(arn)
    }

    /// The events queue with its redrive policy. The queue (None in a dry run without it),
    /// whether it is new, and its (predicted) ARN.
    async fn events_queue(
        &mut self,
        dlq_arn: Option<String>,
    ) -> Result<(Option<Queue>, bool, Option<String>), Stopped> {
        let dlq_name = self.names.dead_letter_queue_name.clone();
        let queue_name = self.names.queue_name.clone();
        let found = self
            .find_queue(&queue_name)
            .await
            .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
        let mut dlq_arn = dlq_arn;
        if dlq_arn.is_none() {
            dlq_arn = found
                .as_ref()
                .and_then(|q| q.arn.as_deref())
                .and_then(|arn| sibling_arn(arn, "sqs", &dlq_name));
        }
        let max = self.names.max_receive_count;
        let redrive_text = format!("after {max} receives to {dlq_name}");
        let desired_redrive = dlq_arn.as_deref().map(|arn| redrive_policy(arn, max));
        let mut queue = None;
        let mut queue_is_new = false;
        match found {
            None if self.dry_run => {
                self.report.push(
                    Kind::Queue,
                    &queue_name,
                    Status::WouldCreate,
                    format!("dead letters {redrive_text}"),
                );
                queue_is_new = true;
            }
            None => {
                let redrive = desired_redrive
                    .as_ref()
                    .expect("the dead-letter queue exists when not a dry run");
                let q = self
                    .create_queue(
                        &queue_name,
                        &[(QueueAttributeName::RedrivePolicy, redrive.to_string())],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
                self.report.push(
                    Kind::Queue,
                    &queue_name,
                    Status::Created,
                    format!("dead letters {redrive_text}"),
                );
                queue_is_new = true;
                queue = Some(q);
            }
            Some(q) => {
                let current = q.attributes.get("RedrivePolicy").map(String::as_str);
                let same = desired_redrive
                    .as_ref()
                    .is_some_and(|d| same_json(current, d));
                if same {
                    self.report.push(
                        Kind::Queue,
                        &queue_name,
                        Status::Unchanged,
                        format!("dead letters {redrive_text}"),
                    );
                } else {
                    let was = describe_redrive(current);
                    if self.dry_run {
                        self.report.push(
                            Kind::Queue,
                            &queue_name,
                            Status::WouldUpdate,
                            format!("redrive: {was}; would send dead letters {redrive_text}"),
                        );
                    } else {
                        let redrive = desired_redrive
                            .as_ref()
                            .expect("the dead-letter queue exists when not a dry run");
                        // The current policy goes along unchanged: AWS leaves attributes that are
                        // not named alone, but the emulator drops a policy that is not restated.
                        let mut attributes =
                            vec![(QueueAttributeName::RedrivePolicy, redrive.to_string())];
                        if let Some(policy) = q.attributes.get("Policy") {
                            attributes.push((QueueAttributeName::Policy, policy.clone()));
                        }
                        self.set_queue_attributes(&q.url, attributes)
                            .await
                            .map_err(|e| self.failed(Kind::Queue, &queue_name, e))?;
                        self.report.push(
                            Kind::Queue,
                            &queue_name,
                            Status::Updated,
                            format!("redrive was: {was}; now dead letters {redrive_text}"),
                        );
                    }
                }
                queue = Some(q);
            }
        }
        let queue_arn = queue.as_ref().and_then(|q| q.arn.clone()).or_else(|| {
            dlq_arn
                .as_deref()
                .and_then(|arn| sibling_arn(arn, "sqs", &queue_name))
        });
        self.report.queue_url = queue.as_ref().map(|q| q.url.clone());
        self.report.queue_arn = queue_arn.clone();
        Ok((queue, queue_is_new, queue_arn))
    }

    /// The EventBridge rule, restored if edited. Whether it exists (now), and its ARN.
    async fn rule(
        &mut self,
        projects: &[String],
        queue_arn: Option<&str>,
    ) -> Result<(bool, Option<String>), Stopped> {
        let rule_name = self.names.rule_name.clone();
        let pattern = event_pattern(projects);
        let pattern_text = format!("CodeBuild final states of {}", projects.join(", "));
        let rule = self
            .describe_rule(&rule_name)
            .await
            .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
        let mut rule_exists = rule.is_some();
        let rule_arn = match rule {
            None if self.dry_run => {
                self.report
                    .push(Kind::Rule, &rule_name, Status::WouldCreate, &pattern_text);
                queue_arn.and_then(|arn| sibling_arn(arn, "events", &format!("rule/{rule_name}")))
            }
            None => {
                let arn = self
                    .put_rule(&rule_name, &pattern)
                    .await
                    .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
                self.report
                    .push(Kind::Rule, &rule_name, Status::Created, &pattern_text);
                rule_exists = true;
                arn
            }
            Some(current) => {
                let same_pattern = same_json(current.pattern.as_deref(), &pattern);
                let enabled = current.state.as_deref() == Some("ENABLED");
                if same_pattern && enabled {
                    self.report
                        .push(Kind::Rule, &rule_name, Status::Unchanged, &pattern_text);
                    current.arn
                } else {
                    let mut why = Vec::new();
                    if !same_pattern {
                        why.push("event pattern had been changed".to_owned());
                    }
                    if !enabled {
                        why.push(format!(
                            "was {}",
                            current.state.as_deref().unwrap_or("without state")
                        ));
                    }
                    let why = why.join(", ");
                    if self.dry_run {
                        self.report.push(
                            Kind::Rule,
                            &rule_name,
                            Status::WouldUpdate,
                            format!("{why}; would restore: {pattern_text}"),
                        );
                        current.arn
                    } else {
                        let arn = self
                            .put_rule(&rule_name, &pattern)
                            .await
                            .map_err(|e| self.failed(Kind::Rule, &rule_name, e))?;
                        self.report.push(
                            Kind::Rule,
                            &rule_name,
                            Status::Updated,
                            format!("{why}; restored: {pattern_text}"),
                        );
                        arn.or(current.arn)
                    }
                }
            }
        };
        self.report.rule_arn = rule_arn.clone();
        Ok((rule_exists, rule_arn))
    }

    /// The queue policy: only the rule may send.
    async fn queue_policy(
        &mut self,
        queue: Option<&Queue>,
        queue_is_new: bool,
        queue_arn: Option<&str>,
        rule_arn: Option<&str>,
    ) -> Result<(), Stopped> {
        let policy_name = self.names.queue_name.clone();
        let rule_name = &self.names.rule_name;
        let policy_text = format!("only rule {rule_name} may send, through EventBridge");
        let desired_policy = match (queue_arn, rule_arn) {
            (Some(q), Some(r)) => Some(queue_policy(q, r)),
            _ => None,
        };
        match queue {
            None => {
                // Only in a dry run: the queue would be created.
                self.report.push(
                    Kind::QueuePolicy,
                    &policy_name,
                    Status::WouldCreate,
                    &policy_text,
                );
            }
            Some(q) => {
                let current = q.attributes.get("Policy").map(String::as_str);
                let same = desired_policy
                    .as_ref()
                    .is_some_and(|d| same_json(current, d));
                let status = match (same, current.is_some() && !queue_is_new, self.dry_run) {
                    (true, _, _) => Status::Unchanged,
                    (false, false, true) => Status::WouldCreate,
                    (false, true, true) => Status::WouldUpdate,
                    (false, false, false) => Status::Created,
                    (false, true, false) => Status::Updated,
                };
                if matches!(status, Status::Created | Status::Updated) {
                    let policy = desired_policy
                        .as_ref()
                        .expect("queue and rule exist when not a dry run");
                    self.set_queue_attributes(
                        &q.url,
                        vec![(QueueAttributeName::Policy, policy.to_string())],
                    )
                    .await
                    .map_err(|e| self.failed(Kind::QueuePolicy, &policy_name, e))?;
                }
                let detail = if status == Status::Updated || status == Status::WouldUpdate {
                    format!("differed; {policy_text}")
                } else {
                    policy_text
                };
                self.report
                    .push(Kind::QueuePolicy, &policy_name, status, detail);
            }
        }
        Ok(())
    }

    /// The rule's target: the queue, the whole event as the message.
    async fn target(&mut self, rule_exists: bool, queue_arn: Option<&str>) -> Result<(), Stopped> {
        let rule_name = self.names.rule_name.clone();
        let queue_name = &self.names.queue_name;
        let target_name = format!("{rule_name}/{TARGET_ID}");
        let target_text = format!("sends to {queue_name}");
        if !rule_exists {
            self.report.push(
                Kind::RuleTarget,
                &target_name,
                Status::WouldCreate,
                &target_text,
            );
            return Ok(());
        }
        let current = self
            .find_target(&rule_name)
            .await
            .map_err(|e| self.failed(Kind::RuleTarget, &target_name, e))?;
        let status = match (&current, queue_arn) {
            (Some(t), Some(arn)) if target_is(t, arn) => Status::Unchanged,
            (None, _) if self.dry_run => Status::WouldCreate,
            (Some(_), _) if self.dry_run => Status::WouldUpdate,
            (None, _) => Status::Created,
            (Some(_), _) => Status::Updated,
        };
        let detail = match (&current, status) {
            (Some(t), Status::Updated | Status::WouldUpdate) => {
                format!("was {}; {target_text}", last_segment(t.arn()))
            }
            _ => target_text,
        };
        if matches!(status, Status::Created | Status::Updated) {
            let arn = queue_arn.expect("the queue exists when not a dry run");
            self.put_target(&rule_name, arn)
                .await
                .map_err(|e| self.failed(Kind::RuleTarget, &target_name, e))?;
        }
        self.report
            .push(Kind::RuleTarget, &target_name, status, detail);
        Ok(())
    }

    /// The queue named `name`, with all its attributes, if it exists.
    async fn find_queue(&self, name: &str) -> Result<Option<Queue>, AwsError> {
        let url = match self.aws.sqs.get_queue_url().queue_name(name).send().await {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist());
                let err = AwsError::from_sdk("SQS GetQueueUrl", &e);
                let code = err.code.as_deref().unwrap_or("");
                if not_found || code.contains("NonExistentQueue") || code == "QueueDoesNotExist" {
                    return Ok(None);
                }
                return Err(err);
            }
        };
        self.queue_at(url).await.map(Some)
    }

    async fn queue_at(&self, url: String) -> Result<Queue, AwsError> {
        let out = self
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS GetQueueAttributes", &e))?;
        let attributes: HashMap<String, String> = out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect();
        Ok(Queue {
            arn: attributes.get("QueueArn").cloned(),
            url,
            attributes,
        })
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: &[(QueueAttributeName, String)],
    ) -> Result<Queue, AwsError> {
        let mut request = self.aws.sqs.create_queue().queue_name(name);
        for (k, v) in attributes {
            request = request.attributes(k.clone(), v);
        }
        let out = request
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS CreateQueue", &e))?;
        let url = out
            .queue_url
            .ok_or_else(|| AwsError::permanent("SQS CreateQueue: the answer has no queue URL"))?;
        self.queue_at(url).await
    }

    async fn set_queue_attributes(
        &self,
        url: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> Result<(), AwsError> {
        self.aws
            .sqs
            .set_queue_attributes()
            .queue_url(url)
            .set_attributes(Some(attributes.into_iter().collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("SQS SetQueueAttributes", &e))?;
        Ok(())
    }

    async fn describe_rule(&self, name: &str) -> Result<Option<Rule>, AwsError> {
        match self.aws.events.describe_rule().name(name).send().await {
            Ok(out) => Ok(Some(Rule {
                arn: out.arn().map(str::to_owned),
                pattern: out.event_pattern().map(str::to_owned),
                state: out.state().map(|s| s.as_str().to_owned()),
            })),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                let err = AwsError::from_sdk("EventBridge DescribeRule", &e);
                if not_found || err.code.as_deref() == Some("ResourceNotFoundException") {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Creates or replaces the rule; its ARN.
    async fn put_rule(&self, name: &str, pattern: &Value) -> Result<Option<String>, AwsError> {
        let out = self
            .aws
            .events
            .put_rule()
            .name(name)
            .event_pattern(pattern.to_string())
            .state(RuleState::Enabled)
            .description("CodeBuild build results for slipway (managed by slipway provision)")
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EventBridge PutRule", &e))?;
        Ok(out.rule_arn)
    }

    async fn find_target(&self, rule: &str) -> Result<Option<Target>, AwsError> {
        let mut next = None;
        loop {
            let out = self
                .aws
                .events
                .list_targets_by_rule()
                .rule(rule)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("EventBridge ListTargetsByRule", &e))?;
            if let Some(t) = out.targets().iter().find(|t| t.id() == TARGET_ID) {
                return Ok(Some(t.clone()));
            }
            match out.next_token {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(None),
            }
        }
    }

    async fn put_target(&self, rule: &str, queue_arn: &str) -> Result<(), AwsError> {
        let target = Target::builder()
            .id(TARGET_ID)
            .arn(queue_arn)
            .build()
            .map_err(|e| AwsError::permanent(format!("EventBridge PutTargets: {e}")))?;
        let out = self
            .aws
            .events
            .put_targets()
            .rule(rule)
            .targets(target)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EventBridge PutTargets", &e))?;
        if out.failed_entry_count() > 0 {
            let reasons: Vec<String> = out
                .failed_entries()
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.error_code().unwrap_or("error"),
                        f.error_message().unwrap_or("")
                    )
                })
                .collect();
            return Err(AwsError::permanent(format!(
                "EventBridge PutTargets: {}",
                reasons.join("; ")
            )));
        }
        Ok(())
    }
}

struct Rule {
    arn: Option<String>,
    pattern: Option<String>,
    state: Option<String>,
}

/// The target sends the whole event, as it is, to the queue.
fn target_is(target: &Target, queue_arn: &str) -> bool {
    target.arn() == queue_arn
        && target.input().is_none()
        && target.input_path().is_none()
        && target.input_transformer().is_none()
}

fn describe_redrive(current: Option<&str>) -> String {
    let Some(text) = current else {
        return "none".to_owned();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let target = v["deadLetterTargetArn"].as_str().map(last_segment);
            let count = normalize(&v["maxReceiveCount"]);
            format!(
                "after {count} receives to {}",
                target.unwrap_or("(no queue)")
            )
        }
        Err(_) => "unreadable".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// What the user owns: looked at, never changed.

fn check_config(config: &Config, report: &mut Report) {
    let Some(configured) = &config.queue_url else {
        return;
    };
    let name = &config.provision.queue_name;
    if configured
        .trim_end_matches('/')
        .ends_with(&format!("/{name}"))
    {
        report.push(
            Kind::Config,
            "queue_url",
            Status::Ok,
            format!("names queue {name}"),
        );
    } else {
        report.push(
            Kind::Config,
            "queue_url",
            Status::Warning,
            format!(
                "{configured} is not the queue provision manages ({name}): slipway would read a queue the rule does not feed, and deploys would wait for the reconciler"
            ),
        );
    }
}

/// `owner/name` (lowercase) of a GitHub repository URL: `https://github.com/o/n(.git)`,
/// `git@github.com:o/n.git`, … Other hosts give None.
pub fn github_repository(location: &str) -> Option<String> {
    let lower = location.trim().to_ascii_lowercase();
    let start = lower
        .find("github.com/")
        .or_else(|| lower.find("github.com:"))?
        + "github.com/".len();
    let mut parts = lower[start..].split(['/', '?', '#']);
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    Some(format!("{owner}/{name}"))
}

async fn check_projects(config: &Config, aws: &Clients, report: &mut Report) {
    let names: Vec<String> = config
        .apps
        .iter()
        .map(|a| a.codebuild_project.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = HashMap::new();
    let mut failed = BTreeSet::new();
    for chunk in names.chunks(100) {
        match aws
            .codebuild
            .batch_get_projects()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(out) => {
                for project in out.projects() {
                    if let Some(name) = project.name() {
                        found.insert(name.to_owned(), project.clone());
                    }
                }
            }
            Err(e) => {
                let e = AwsError::from_sdk("CodeBuild BatchGetProjects", &e);
                for name in chunk {
                    report.push(Kind::CodebuildProject, name, Status::Error, &e.message);
                    failed.insert(name.clone());
                }
            }
        }
    }
    for app in &config.apps {
        let name = &app.codebuild_project;
        if failed.contains(name) {
            continue;
        }
        let Some(project) = found.get(name) else {
            report.push_app(
                app,
                Kind::CodebuildProject,
                name,
                Status::Missing,
                "not found in CodeBuild",
            );
            continue;
        };
        let wanted = app.repository.to_ascii_lowercase();
        let source = project.source();
        let location = source.and_then(|s| s.location()).unwrap_or("");
        match github_repository(location) {
            Some(repo) if repo == wanted => report.push_app(
                app,
                Kind::CodebuildProject,
                name,
                Status::Ok,
                format!("builds github.com/{}", app.repository),
            ),
            _ => {
                let what = match (source.map(|s| s.r#type().as_str()), location) {
                    (Some(kind), "") => format!("{kind} source"),
                    (_, location) => location.to_owned(),
                };
                report.push_app(
                    app,
                    Kind::CodebuildProject,
                    name,
                    Status::Warning,
                    format!("builds {what}, not github.com/{}", app.repository),
                );
            }
        }
    }
}

async fn check_repositories(config: &Config, aws: &Clients, report: &mut Report) {
    let mut seen: HashMap<&str, (Status, String)> = HashMap::new();
    for app in &config.apps {
        let repo = app.ecr_repository.as_str();
        if !seen.contains_key(repo) {
            let result = aws
                .ecr
                .describe_repositories()
                .repository_names(repo)
                .send()
                .await;
            let outcome = match result {
                Ok(out) => match out.repositories().first().and_then(|r| r.repository_uri()) {
                    Some(uri) => (Status::Ok, uri.to_owned()),
                    None => (Status::Missing, "not found in ECR".to_owned()),
                },
                Err(e) => {
                    let not_found = e
                        .as_service_error()
                        .is_some_and(|s| s.is_repository_not_found_exception());
                    let err = AwsError::from_sdk("ECR DescribeRepositories", &e);
                    if not_found || err.code.as_deref() == Some("RepositoryNotFoundException") {
                        (Status::Missing, "not found in ECR".to_owned())
                    } else {
                        (Status::Error, err.message)
                    }
                }
            };
            seen.insert(repo, outcome);
        }
        let (status, detail) = seen[repo].clone();
        report.push_app(app, Kind::EcrRepository, repo, status, detail);
    }
}

async fn check_ecs(config: &Config, aws: &Clients, report: &mut Report) {
    // Clusters, all in one call (100 at a time).
    let clusters: Vec<String> = config
        .apps
        .iter()
        .map(|a| a.cluster.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut cluster_state: HashMap<String, (Status, String)> = HashMap::new();
    for chunk in clusters.chunks(100) {
        match aws
            .ecs
            .describe_clusters()
            .set_clusters(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(out) => {
                for c in out.clusters() {
                    let name = c.cluster_name().unwrap_or_default().to_owned();
                    let state = match c.status() {
                        Some("ACTIVE") => (Status::Ok, "ACTIVE".to_owned()),
                        other => (
                            Status::Missing,
                            format!("status {}, not ACTIVE", other.unwrap_or("unknown")),
                        ),
                    };
                    cluster_state.insert(name, state);
                }
                for f in out.failures() {
                    let name = last_segment(f.arn().unwrap_or_default()).to_owned();
                    let reason = f.reason().unwrap_or("MISSING");
                    cluster_state.insert(name, (Status::Missing, format!("not found ({reason})")));
                }
            }
            Err(e) => {
                let e = AwsError::from_sdk("ECS DescribeClusters", &e);
                for name in chunk {
                    cluster_state.insert(name.clone(), (Status::Error, e.message.clone()));
                }
            }
        }
    }
    for app in &config.apps {
        let (status, detail) = cluster_state
            .get(last_segment(&app.cluster))
            .cloned()
            .unwrap_or((Status::Missing, "not found".to_owned()));
        report.push_app(app, Kind::Cluster, &app.cluster, status, detail);
        if status == Status::Ok {
            check_service(app, aws, report).await;
        }
    }
}

async fn check_service(app: &AppConfig, aws: &Clients, report: &mut Report) {
    let name = app.service_key();
    let out = match aws
        .ecs
        .describe_services()
        .cluster(&app.cluster)
        .services(&app.service)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let e = AwsError::from_sdk("ECS DescribeServices", &e);
            report.push_app(app, Kind::Service, &name, Status::Error, e.message);
            return;
        }
    };
    let Some(service) = out.services().first() else {
        let reason = out
            .failures()
            .first()
            .and_then(|f| f.reason())
            .unwrap_or("MISSING");
        report.push_app(
            app,
            Kind::Service,
            &name,
            Status::Missing,
            format!("not found in cluster {} ({reason})", app.cluster),
        );
        return;
    };
    let task_definition = service.task_definition().unwrap_or_default();
    let revision = last_segment(task_definition);
    let controller = service
        .deployment_controller()
        .map(|c| c.r#type())
        .map(|t| t.as_str().to_owned());
    match service.status() {
        Some("ACTIVE") if controller.as_deref().is_some_and(|c| c != "ECS") => {
            report.push_app(
                app,
                Kind::Service,
                &name,
                Status::Missing,
                format!(
                    "deployment controller {}: slipway deploys with UpdateService, which needs the ECS controller",
                    controller.unwrap_or_default()
                ),
            );
            return;
        }
        Some("ACTIVE") => report.push_app(
            app,
            Kind::Service,
            &name,
            Status::Ok,
            format!("ACTIVE, runs {revision}"),
        ),
        other => {
            report.push_app(
                app,
                Kind::Service,
                &name,
                Status::Missing,
                format!("status {}, not ACTIVE", other.unwrap_or("unknown")),
            );
            return;
        }
    }

    // The container slipway swaps the image of, in the task definition the service runs.
    match aws
        .ecs
        .describe_task_definition()
        .task_definition(task_definition)
        .send()
        .await
    {
        Ok(out) => {
            let containers: Vec<&str> = out
                .task_definition()
                .map(|t| t.container_definitions())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.name())
                .collect();
            if containers.contains(&app.container.as_str()) {
                report.push_app(
                    app,
                    Kind::Container,
                    &app.container,
                    Status::Ok,
                    format!("in {revision}"),
                );
            } else {
                report.push_app(
                    app,
                    Kind::Container,
                    &app.container,
                    Status::Missing,
                    format!(
                        "not in {revision}, which has: {}",
                        if containers.is_empty() {
                            "no containers".to_owned()
                        } else {
                            containers.join(", ")
                        }
                    ),
                );
            }
        }
        Err(e) => {
            let e = AwsError::from_sdk("ECS DescribeTaskDefinition", &e);
            report.push_app(
                app,
                Kind::Container,
                &app.container,
                Status::Error,
                e.message,
            );
        }
    }

    let breaker = service
        .deployment_configuration()
        .and_then(|d| d.deployment_circuit_breaker());
    let timeout = app.rollout_timeout.as_secs();
    let timeout = if timeout.is_multiple_of(60) {
        format!("{} min", timeout / 60)
    } else {
        format!("{timeout} s")
    };
    let (status, detail) = match breaker {
        Some(b) if b.enable() && b.rollback() => (Status::Ok, "enabled, with rollback".to_owned()),
        Some(b) if b.enable() => (
            Status::Warning,
            format!("on without rollback: ECS stops a failing deploy, slipway rolls back itself (timeout {timeout})"),
        ),
        _ => (
            Status::Warning,
            format!("off: ECS retries failing tasks; a bad deploy ends at slipway's {timeout} rollout timeout, then slipway rolls back"),
        ),
    };
    report.push_app(app, Kind::CircuitBreaker, &name, status, detail);
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
