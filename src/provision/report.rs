//! The report of a `slipway provision` run: one item per resource looked at or changed.

use super::*;

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
    /// The DynamoDB engine's table (`[store] engine = "dynamodb"`).
    DynamodbTable,
    /// The DynamoDB engine's bucket for large bodies (`[store] bodies_bucket`).
    BodiesBucket,
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
            Kind::DynamodbTable => "dynamodb_table",
            Kind::BodiesBucket => "bodies_bucket",
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
    pub(super) fn new(config: &Config, dry_run: bool) -> Report {
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

    pub(super) fn push(
        &mut self,
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
            app: None,
        });
    }

    pub(super) fn push_app(
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
    pub(super) fn finish(&mut self) {
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
