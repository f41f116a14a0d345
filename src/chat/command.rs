//! The slash command: Slack's form fields and the text after `/slipway`, parsed.

use serde::Deserialize;

/// What the text after the slash command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Deploy {
        app: String,
        sha: String,
    },
    Rollback {
        app: String,
        to: Option<String>,
    },
    Status {
        app: Option<String>,
    },
    /// Approve (or reject) the promotion waiting for a promoted app (issue 27).
    Decide {
        approve: bool,
        app: String,
        sha: Option<String>,
    },
    Help,
    /// A known command with the wrong arguments: its usage line.
    Usage(&'static str),
    /// Not a command slipway knows (the first word, shortened).
    Unknown(String),
}

pub(super) const DEPLOY_USAGE: &str = "deploy <app> <sha>";
pub(super) const ROLLBACK_USAGE: &str = "rollback <app> [deployment id or sha]";
pub(super) const STATUS_USAGE: &str = "status [app]";
pub(super) const APPROVE_USAGE: &str = "approve <app> [sha]";
pub(super) const REJECT_USAGE: &str = "reject <app> [sha]";

impl Command {
    pub fn parse(text: &str) -> Command {
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((first, args)) = words.split_first() else {
            return Command::Help;
        };
        let owned = |s: &&str| (*s).to_owned();
        match (first.to_ascii_lowercase().as_str(), args) {
            ("help", _) => Command::Help,
            ("deploy", [app, sha]) => Command::Deploy {
                app: owned(app),
                sha: owned(sha),
            },
            ("deploy", _) => Command::Usage(DEPLOY_USAGE),
            ("rollback", [app]) => Command::Rollback {
                app: owned(app),
                to: None,
            },
            ("rollback", [app, to]) => Command::Rollback {
                app: owned(app),
                to: Some(owned(to)),
            },
            ("rollback", _) => Command::Usage(ROLLBACK_USAGE),
            ("status", []) => Command::Status { app: None },
            ("status", [app]) => Command::Status {
                app: Some(owned(app)),
            },
            ("status", _) => Command::Usage(STATUS_USAGE),
            (word @ ("approve" | "reject"), [app, rest @ ..]) if rest.len() <= 1 => {
                Command::Decide {
                    approve: word == "approve",
                    app: owned(app),
                    sha: rest.first().map(owned),
                }
            }
            ("approve", _) => Command::Usage(APPROVE_USAGE),
            ("reject", _) => Command::Usage(REJECT_USAGE),
            _ => Command::Unknown(first.chars().take(32).collect()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::Status { .. } => "status",
            Command::Decide { approve: true, .. } => "approve",
            Command::Decide { approve: false, .. } => "reject",
            Command::Help => "help",
            Command::Usage(_) => "usage",
            Command::Unknown(_) => "unknown",
        }
    }
}

/// The fields of Slack's slash command payload slipway uses; the others are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SlashCommand {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub response_url: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub team_id: String,
    #[serde(default)]
    pub channel_id: String,
}

impl SlashCommand {
    /// Who is acting, as journaled: `slack:<user_id>` (ids are unique and cannot be edited),
    /// with the display name after it for people: `slack:U123(ada)`.
    pub(super) fn actor(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(64)
                .collect()
        };
        let (id, name) = (clean(&self.user_id), clean(&self.user_name));
        match (id.is_empty(), name.is_empty()) {
            (true, _) => "slack:unknown".to_owned(),
            (false, true) => format!("slack:{id}"),
            (false, false) => format!("slack:{id}({name})"),
        }
    }

    /// `<@U123>` when the user id looks like one, for mentions.
    pub(super) fn mention(&self) -> Option<String> {
        let id = self.user_id.as_str();
        let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| format!("<@{id}>"))
    }

    /// The slash command as the user typed it (`/slipway`), for help text.
    pub(super) fn slash(&self) -> &str {
        let c = self.command.as_str();
        let ok = c.len() > 1
            && c.len() <= 32
            && c.starts_with('/')
            && c[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            c
        } else {
            "/slipway"
        }
    }
}
