//! What a notification says: Slack's message (mrkdwn, user text escaped) and the generic
//! webhook's JSON (every field, plus the same one-line summary).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::json;

use super::{EventKind, Notification};

/// Longest failure reason put in a message (Slack rejects section text over 3000 characters).
const MAX_REASON_CHARS: usize = 500;

pub(super) fn slack_payload(n: &Notification) -> serde_json::Value {
    let text = summary(n, Style::Slack);
    let mut context = vec![format!("commit `{}`", escape(&n.sha))];
    if let Some(id) = n.deployment {
        context.push(format!("deployment #{id}"));
    }
    if let Some(build) = &n.build_id {
        context.push(format!("build `{}`", escape(build)));
    }
    let mut blocks = vec![
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }),
        json!({ "type": "context", "elements": [ { "type": "mrkdwn", "text": context.join(" · ") } ] }),
    ];
    // A promotion waiting (issue 27): Approve and Reject buttons, answered by slipway's
    // interactivity endpoint (`/chat/slack/actions`) as the user who pressed.
    if n.kind == EventKind::AwaitingApproval {
        let value = format!("{} {}", n.app, n.sha);
        let button = |label: &str, action: &str, style: &str| {
            json!({ "type": "button", "text": { "type": "plain_text", "text": label },
                    "style": style, "action_id": action, "value": value })
        };
        blocks.push(json!({ "type": "actions", "elements": [
            button("Approve", super::APPROVE_ACTION, "primary"),
            button("Reject", super::REJECT_ACTION, "danger"),
        ] }));
    }
    json!({ "text": text, "blocks": blocks })
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    event: EventKind,
    /// The same as the `Idempotency-Key` header: the same notification sent again has the same.
    idempotency_key: &'a str,
    text: String,
    #[serde(flatten)]
    notification: &'a Notification,
}

pub(super) fn webhook_payload(n: &Notification, idempotency_key: &str) -> serde_json::Value {
    let body = WebhookBody {
        event: n.kind,
        idempotency_key,
        text: summary(n, Style::Plain),
        notification: n,
    };
    serde_json::to_value(body).unwrap_or_else(|_| json!({ "event": n.kind }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Slack mrkdwn: user text escaped, the log as a link.
    Slack,
    /// The same words for the generic webhook: nothing escaped, the log URL spelled out.
    Plain,
}

/// The one-line summary of `n`, e.g. ":white_check_mark: *web* deployed `1f2e3d4` — image `…`".
fn summary(n: &Notification, style: Style) -> String {
    let text = |s: &str| -> String {
        match style {
            Style::Slack => escape(s).into_owned(),
            Style::Plain => s.to_owned(),
        }
    };
    let app = text(&n.app);
    // The commit, with the tag its push released (issue 27).
    let short = match &n.tag {
        Some(tag) => format!("{}` (tag `{}`)", text(short_sha(&n.sha)), text(tag)),
        None => format!("{}`", text(short_sha(&n.sha))),
    };
    let image = n
        .image
        .as_deref()
        .map(|i| format!(" — image `{}`", text(i)))
        .unwrap_or_default();
    let reason = n
        .reason
        .as_deref()
        .map(|r| one_line(r, MAX_REASON_CHARS))
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {}", text(&r)))
        .unwrap_or_default();
    let log = match (n.log_link.as_deref(), style) {
        (Some(link), Style::Slack) if is_http(link) => {
            format!(" (<{}|build log>)", slack_link(link))
        }
        (Some(link), Style::Plain) if !link.trim().is_empty() => format!(" (build log: {link})"),
        _ => String::new(),
    };
    // A promotion (issue 27): where the image comes from, and who decided.
    let from = n
        .promotion
        .as_ref()
        .map(|p| {
            format!(
                " from *{}* (deployment #{})",
                text(&p.source_app),
                p.source_deployment
            )
        })
        .unwrap_or_default();
    let by = n
        .promotion
        .as_ref()
        .and_then(|p| p.decided_by.as_deref())
        .map(|who| format!(" by {}", text(who)))
        .unwrap_or_default();
    let (image, from, by) = match n.kind {
        EventKind::DeployStarted | EventKind::DeploySucceeded if n.promotion.is_some() => (
            format!("{image} (promoted{from}, approved{by})"),
            String::new(),
            String::new(),
        ),
        _ => (image, from, by),
    };
    match n.kind {
        EventKind::BuildFailed => format!(":x: *{app}* build of `{short} failed{reason}{log}"),
        EventKind::DeployStarted => format!(":rocket: *{app}* deploying `{short}{image}"),
        EventKind::DeploySucceeded => {
            format!(":white_check_mark: *{app}* deployed `{short}{image}")
        }
        EventKind::DeployFailed => format!(":x: *{app}* deploy of `{short} failed{reason}{log}"),
        EventKind::RolledBack => format!(
            ":leftwards_arrow_with_hook: *{app}* deploy of `{short} rolled back{reason}{log}"
        ),
        EventKind::Superseded => {
            format!(":fast_forward: *{app}* `{short} superseded by a newer commit{reason}")
        }
        EventKind::ServiceUnseen => {
            format!(":warning: *{app}* deploy of `{short} is waiting{reason}; nothing is changed until slipway sees the service again")
        }
        EventKind::PastDeadline => {
            format!(":warning: *{app}* deploy of `{short} is past its deadline{reason}")
        }
        EventKind::AwaitingApproval => format!(
            ":raised_hand: *{app}* promotion of `{short}{from}{image} is awaiting approval \
             (`slipway approve {app}` or `slipway reject {app}`)"
        ),
        EventKind::PromotionRejected => {
            format!(":no_entry: *{app}* promotion of `{short}{from} rejected{by}{reason}")
        }
        EventKind::PromotionExpired => {
            format!(":hourglass: *{app}* promotion of `{short}{from} expired{reason}")
        }
    }
}

fn short_sha(sha: &str) -> &str {
    sha.char_indices().nth(7).map_or(sha, |(i, _)| &sha[..i])
}

fn is_http(link: &str) -> bool {
    link.starts_with("https://") || link.starts_with("http://")
}

/// Slack's control characters in user-supplied text.
fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// A URL inside `<url|label>`: escaped, and a `|` would end it early.
fn slack_link(url: &str) -> String {
    escape(url).replace('|', "%7C")
}

/// Whitespace runs (newlines included) collapsed to one space, cut to `max` characters.
pub(super) fn one_line(s: &str, max: usize) -> Cow<'_, str> {
    let mut out = String::new();
    for (i, word) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect::<String>() + "…";
    }
    if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SHA: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";
    const LOG: &str = "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logEvent:group=/aws/codebuild/web;stream=5f2c8e1a";
    const IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:1f2e3d4c5b6a";

    /// Issue 27: a waiting promotion's Slack message has Approve and Reject buttons naming the
    /// app and commit; no other message has buttons.
    #[test]
    fn a_waiting_promotion_has_approve_and_reject_buttons() {
        let mut n = notification(EventKind::AwaitingApproval);
        n.app = "web-prod".into();
        let v = slack_payload(&n);
        let actions = v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .expect("an actions block");
        let ids: Vec<(&str, &str)> = actions["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["action_id"].as_str().unwrap(),
                    b["value"].as_str().unwrap(),
                )
            })
            .collect();
        let value = format!("web-prod {SHA}");
        assert_eq!(
            ids,
            vec![
                ("slipway_approve", value.as_str()),
                ("slipway_reject", value.as_str())
            ]
        );
        let plain = slack_payload(&notification(EventKind::DeploySucceeded));
        assert!(plain["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["type"] != "actions"));
    }

    fn notification(kind: EventKind) -> Notification {
        Notification {
            kind,
            app: "web".into(),
            sha: SHA.into(),
            image: Some(IMAGE.into()),
            reason: Some("tests failed".into()),
            log_link: Some(LOG.into()),
            deployment: Some(42),
            build_id: Some("web:5f2c8e1a".into()),
            tag: None,
            promotion: None,
        }
    }

    #[test]
    fn slack_summaries() {
        let s = |n: Notification| summary(&n, Style::Slack);
        let image = IMAGE;
        assert_eq!(
            s(notification(EventKind::DeploySucceeded)),
            format!(":white_check_mark: *web* deployed `1f2e3d4` — image `{image}`")
        );
        assert_eq!(
            s(notification(EventKind::DeployStarted)),
            format!(":rocket: *web* deploying `1f2e3d4` — image `{image}`")
        );
        assert_eq!(
            s(notification(EventKind::BuildFailed)),
            format!(":x: *web* build of `1f2e3d4` failed: tests failed (<{LOG}|build log>)")
        );
        assert_eq!(
            s(Notification {
                log_link: None,
                ..notification(EventKind::RolledBack)
            }),
            ":leftwards_arrow_with_hook: *web* deploy of `1f2e3d4` rolled back: tests failed"
        );
        // Not a URL: no link.
        assert_eq!(
            s(Notification {
                log_link: Some("javascript:alert(1)".into()),
                reason: None,
                ..notification(EventKind::DeployFailed)
            }),
            ":x: *web* deploy of `1f2e3d4` failed"
        );
        // A tag push's deploy names its tag.
        assert_eq!(
            s(Notification {
                tag: Some("v1.2.0".into()),
                promotion: None,
                ..notification(EventKind::DeploySucceeded)
            }),
            format!(":white_check_mark: *web* deployed `1f2e3d4` (tag `v1.2.0`) — image `{image}`")
        );
        let long = s(Notification {
            reason: Some("x".repeat(5000)),
            ..notification(EventKind::DeployFailed)
        });
        assert!(long.chars().count() < 1000, "{}", long.len());
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(
            slack_link("https://a/?x=1&y=<2>|z"),
            "https://a/?x=1&amp;y=&lt;2&gt;%7Cz"
        );
    }
}
