//! What slipway answers in Slack: short, escaped text.

use serde_json::Value;

use super::command::{
    SlashCommand, APPROVE_USAGE, DEPLOY_USAGE, REJECT_USAGE, ROLLBACK_USAGE, STATUS_USAGE,
};
use crate::config::Config;
use crate::ops::{AppStatus, OpsError};
use crate::store::deploy_state;

/// Text from outside (app names, SHAs, error messages) made safe for Slack's markup.
pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text shown in backticks: escaped, without backticks of its own, shortened.
pub(super) fn code(s: &str) -> String {
    escape(&s.replace('`', "'").chars().take(64).collect::<String>())
}

pub(super) fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn app_names(config: &Config) -> String {
    let names: Vec<String> = config
        .apps
        .iter()
        .map(|a| format!("*{}*", escape(a.name.as_str())))
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

pub(super) fn help(config: &Config, form: &SlashCommand) -> String {
    let c = form.slash();
    format!(
        "*slipway* deploys from chat:\n\
         • `{c} {DEPLOY_USAGE}`: deploy a commit (7 to 40 hex characters) that has an image\n\
         • `{c} {ROLLBACK_USAGE}`: put back an earlier successful deployment (by default the last one before what runs now)\n\
         • `{c} {STATUS_USAGE}`: what runs now\n\
         • `{c} {APPROVE_USAGE}` / `{c} {REJECT_USAGE}`: decide on the promotion waiting for an app (its `approvers` only)\n\
         • `{c} help`: this message\n\
         Apps: {}",
        app_names(config)
    )
}

pub(super) fn unknown_app(config: &Config, name: &str) -> String {
    format!(
        "Sorry, {}. Apps: {}.",
        escape(&OpsError::UnknownApp(name.chars().take(64).collect()).to_string()),
        app_names(config)
    )
}

pub(super) fn failed(what: &str, app: &str, e: &OpsError) -> String {
    if matches!(e, OpsError::Aws(_) | OpsError::Journal(_)) {
        tracing::error!(app, error = ?e.to_string(), "chat: {what} failed");
    } else {
        // The error may quote what the user typed: escaped.
        tracing::info!(app, error = ?e.to_string(), "chat: {what} refused");
    }
    // Everyone in the channel may read the answer: AWS errors name accounts and ARNs, so
    // those stay in the log, the journal and the ops API.
    let why = match e {
        OpsError::Aws(_) => {
            "AWS refused or failed; the server log and `slipway deployments` say more".to_owned()
        }
        OpsError::Journal(_) => "slipway could not record it; try again shortly".to_owned(),
        other => short_reason(&other.to_string()),
    };
    format!("Couldn't {what} *{}*: {}", escape(app), escape(&why))
}

/// A reason fit for a channel: its first line, ARNs replaced, at most 160 characters.
pub(super) fn short_reason(reason: &str) -> String {
    let first = reason.lines().next().unwrap_or_default();
    let words: Vec<&str> = first
        .split(' ')
        .map(|w| if w.contains("arn:") { "[ARN]" } else { w })
        .collect();
    let text = words.join(" ");
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

pub(super) fn status_line(s: &AppStatus) -> String {
    let name = escape(&s.app);
    if s.error.is_some() {
        // The AWS error itself (accounts, ARNs) stays in the server log and the ops API.
        return format!("• *{name}*: couldn't read the service right now");
    }
    let running = match (&s.commit, &s.image) {
        (Some(sha), _) => format!("runs `{}`", code(short_sha(sha))),
        (None, Some(image)) => format!(
            "runs image `{}` (not deployed by slipway)",
            code(image.rsplit('/').next().unwrap_or(image))
        ),
        (None, None) => "runs an unknown image".to_owned(),
    };
    let td = s
        .task_definition
        .as_deref()
        .map(|td| {
            format!(
                " (task definition `{}`)",
                code(td.rsplit('/').next().unwrap_or(td))
            )
        })
        .unwrap_or_default();
    let last = match &s.last_deployment {
        Some(d) => format!(
            "; last deployment {} of `{}`: {}",
            d.id,
            code(short_sha(&d.sha)),
            escape(&d.state)
        ),
        None => "; no deployments yet".to_owned(),
    };
    format!("• *{name}* {running}{td}{last}")
}

/// The in-channel message for a finished deployment.
pub(super) fn outcome(d: &Value, mention: Option<&str>) -> String {
    let id = d["id"].as_i64().unwrap_or_default();
    let app = escape(d["app"].as_str().unwrap_or_default());
    let sha = code(short_sha(d["sha"].as_str().unwrap_or_default()));
    let state = d["state"].as_str().unwrap_or_default();
    let reason = d["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {}", escape(&short_reason(r))))
        .unwrap_or_default();
    let (icon, what) = match state {
        deploy_state::SUCCEEDED => (":white_check_mark:", "succeeded".to_owned()),
        deploy_state::FAILED => (":x:", format!("failed{reason}")),
        deploy_state::ROLLED_BACK => (
            ":leftwards_arrow_with_hook:",
            format!("was rolled back{reason}"),
        ),
        deploy_state::SUPERSEDED => (":fast_forward:", format!("was superseded{reason}")),
        other => (
            ":grey_question:",
            format!("ended as {}{reason}", escape(other)),
        ),
    };
    let by = mention
        .map(|m| format!(" (requested by {m})"))
        .unwrap_or_default();
    let kind = if d["trigger"] == crate::store::trigger::ROLLBACK {
        "Rollback"
    } else {
        "Deployment"
    };
    format!("{icon} {kind} {id} of `{sha}` to *{app}* {what}{by}")
}
