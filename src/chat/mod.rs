//! The `/slipway` slash command: who may do what, and what to answer.
//!
//! Slack signs every request with the app's signing secret (`SLIPWAY_SLACK_SIGNING_SECRET`);
//! `http::slack` checks it and hands the verified command here. A command is answered within
//! Slack's 3 seconds with an ephemeral message; deploys and rollbacks are then followed to the
//! end in the background and their outcome is posted to the command's `response_url`.
//!
//! Everything goes through [`crate::ops::Ops`], with the Slack user as the actor, so chat
//! deploys take the same checks, lock and journal as any other.

mod command;
mod follow;
mod reply;

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub use command::{Command, SlashCommand};
pub use follow::ResponseUrl;
use follow::{answer_within, follow};
use reply::{code, escape, failed, help, short_sha, status_line, unknown_app};

use crate::config::{AppConfig, Config};
use crate::ops::{Ops, OpsError};

/// Slash command bodies are small.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests whose timestamp is further than this from now are refused (replay protection).
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;
/// How long a Slack request's signature is remembered to refuse it a second time: a signed
/// request is good while its timestamp is within [`MAX_CLOCK_SKEW_SECS`] of now, either way.
pub const REPLAY_WINDOW_SECS: i64 = 2 * MAX_CLOCK_SKEW_SECS;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// `v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<body>` with `secret`, as Slack sends it in
/// `X-Slack-Signature`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Missing,
    #[error("malformed X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Malformed,
    #[error("request timestamp is more than 5 minutes from now")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks Slack's `X-Slack-Signature` (`signature`) over `X-Slack-Request-Timestamp`
/// (`timestamp`) and the raw body, in constant time; `now` is the current Unix time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let presented = check_headers(timestamp, signature, now)?;
    let timestamp = timestamp.unwrap_or_default();
    mac(secret, timestamp, body)
        .verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// What Slack's headers settle before the body is read: both present, well-formed, and the
/// timestamp within [`MAX_CLOCK_SKEW_SECS`] of `now`. Returns the signature's bytes.
pub fn check_headers(
    timestamp: Option<&str>,
    signature: Option<&str>,
    now: i64,
) -> Result<Vec<u8>, SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SignatureError::Malformed);
    }
    let sent_at: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    let presented =
        crate::webhook::signature_bytes(signature, "v0=").ok_or(SignatureError::Malformed)?;
    if (now - sent_at).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(presented)
}

impl Chat {
    /// Whether a command from Slack workspace `team_id` is taken (only the configured one).
    pub fn allows_team(&self, team_id: &str) -> bool {
        self.config
            .chat
            .slack_team_id
            .as_deref()
            .is_some_and(|t| t == team_id)
    }
}

/// What a chat command can reach.
#[derive(Clone)]
pub struct Chat {
    pub config: Arc<Config>,
    pub ops: Ops,
}

impl Chat {
    /// Carries out a verified command; the answer is the ephemeral text to show its user.
    pub async fn run(
        &self,
        form: SlashCommand,
        command: Command,
        reply_to: Option<ResponseUrl>,
    ) -> String {
        let state = self;
        match command {
            Command::Help => help(&state.config, &form),
            Command::Usage(usage) => format!(
                "Usage: `{} {usage}`. Try `{} help`.",
                form.slash(),
                form.slash()
            ),
            Command::Unknown(word) => format!(
                "Sorry, unknown command `{}`.\n{}",
                code(&word),
                help(&state.config, &form)
            ),
            Command::Status { app } => {
                let apps = match app {
                    None => state.config.apps.clone(),
                    Some(name) => match state.config.app(&name) {
                        Some(app) => vec![app.clone()],
                        None => return unknown_app(&state.config, &name),
                    },
                };
                let ops = state.ops.clone();
                let work = tokio::spawn(async move {
                    let mut lines = Vec::new();
                    for app in &apps {
                        lines.push(status_line(&ops.app_status(app).await));
                    }
                    if lines.is_empty() {
                        "No apps are configured.".to_owned()
                    } else {
                        lines.join("\n")
                    }
                });
                answer_within(work, reply_to).await
            }
            Command::Deploy { app, sha } => {
                let typed = sha.clone();
                let start = move |ops: Ops, app: String, actor: String| async move {
                    ops.deploy_sha(&app, &sha, &actor).await
                };
                let announce = move |app: &AppConfig, id: i64, d: Option<&Value>| {
                    let sha = d.and_then(|d| d["sha"].as_str()).unwrap_or(&typed);
                    format!(
                        "Deploying `{}` to *{}* (deployment {id}).",
                        code(short_sha(sha)),
                        escape(app.name.as_str()),
                    )
                };
                change(state, &form, &app, reply_to, "deploy", start, announce).await
            }
            Command::Decide { approve, app, sha } => decide(state, &form, approve, app, sha).await,
            Command::Rollback { app, to } => {
                let start = move |ops: Ops, app: String, actor: String| async move {
                    ops.rollback(&app, to.as_deref(), &actor).await
                };
                let announce = |app: &AppConfig, id: i64, d: Option<&Value>| {
                    let target = d
                        .map(|d| {
                            format!(
                                " to `{}`",
                                code(short_sha(d["sha"].as_str().unwrap_or_default()))
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "Rolling back *{}*{target} (deployment {id}).",
                        escape(app.name.as_str()),
                    )
                };
                change(state, &form, &app, reply_to, "roll back", start, announce).await
            }
        }
    }
}

impl Chat {
    /// A press of a promotion's Approve or Reject button (Slack's interactivity, issue 27):
    /// the same decision as `/slipway approve|reject <app> <sha>` by `user_id`. The answer is
    /// the text to show that user.
    pub async fn press(&self, user_id: &str, approve: bool, value: &str) -> String {
        let mut words = value.split_whitespace();
        let (Some(app), sha) = (words.next(), words.next()) else {
            return "Sorry, this button names no promotion.".to_owned();
        };
        let form = SlashCommand {
            user_id: user_id.to_owned(),
            ..SlashCommand::default()
        };
        decide(self, &form, approve, app.to_owned(), sha.map(str::to_owned)).await
    }
}

/// `/slipway approve|reject <app> [sha]` (issue 27): the app's `approvers` (Slack user ids)
/// decide on its waiting promotion; anyone else is told so and nothing changes.
async fn decide(
    state: &Chat,
    form: &SlashCommand,
    approve: bool,
    app: String,
    sha: Option<String>,
) -> String {
    use crate::promote::{Approver, Verdict};
    if state.config.app(&app).is_none() {
        return unknown_app(&state.config, &app);
    }
    // Slack's user ids are letters and digits; anything else names nobody.
    let user: String = form
        .user_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(32)
        .collect();
    let verdict = if approve {
        Verdict::Approve
    } else {
        Verdict::Reject
    };
    let what = if approve { "approve" } else { "reject" };
    match state
        .ops
        .decide_promotion(&app, sha.as_deref(), &Approver::Slack(user), verdict)
        .await
    {
        Ok(p) => {
            let head = format!(
                "{} the promotion of `{}` to *{}* (from *{}*, deployment {})",
                if approve { "Approved" } else { "Rejected" },
                code(short_sha(&p.sha)),
                escape(&p.app),
                escape(&p.source_app),
                p.source_deployment
            );
            match p.deployment {
                Some(id) => format!("{head}: deploying (deployment {id})."),
                None => format!("{head}: nothing is deployed."),
            }
        }
        Err(OpsError::Forbidden(_)) => {
            let who = form.mention().unwrap_or_else(|| "there".to_owned());
            format!(
                "Sorry {who}, you may not {what} promotions to *{}*: you are not among its \
                 approvers.",
                escape(&app)
            )
        }
        Err(e) => failed(what, &app, &e),
    }
}

/// Deploy and rollback from chat: checks the user may change `app`, starts the change through
/// the ops engine, answers within Slack's patience (`announce` says what started), and follows
/// the deployment to `response_url`.
async fn change<F>(
    state: &Chat,
    form: &SlashCommand,
    app: &str,
    reply_to: Option<ResponseUrl>,
    what: &'static str,
    start: impl FnOnce(Ops, String, String) -> F + Send + 'static,
    announce: impl FnOnce(&AppConfig, i64, Option<&Value>) -> String + Send + 'static,
) -> String
where
    F: std::future::Future<Output = Result<i64, OpsError>> + Send,
{
    let app = match may_change(&state.config, form, app) {
        Ok(app) => app,
        Err(text) => return text,
    };
    let (ops, actor, mention) = (state.ops.clone(), form.actor(), form.mention());
    let follow_to = reply_to.clone();
    let work = tokio::spawn(async move {
        match start(ops.clone(), app.name.to_string(), actor).await {
            Ok(id) => {
                let record = ops.deployment(id).await.ok();
                let head = announce(&app, id, record.as_ref());
                let tail = follow(&ops, &app, id, follow_to, mention);
                format!("{head} {tail}")
            }
            Err(e) => failed(what, app.name.as_str(), &e),
        }
    });
    answer_within(work, reply_to).await
}

/// The app, if it exists and this user may deploy and roll it back; otherwise the answer.
fn may_change(config: &Config, form: &SlashCommand, name: &str) -> Result<AppConfig, String> {
    let Some(app) = config.app(name) else {
        return Err(unknown_app(config, name));
    };
    // Deny by default: an app without `slack_users` cannot be changed from Slack at all;
    // `["*"]` opens it to everyone in the workspace.
    let users = app.slack_users.as_deref().unwrap_or_default();
    if !users.iter().any(|u| u == "*" || u == &form.user_id) {
        tracing::warn!(
            user_id = ?crate::webhook::clip(&form.user_id),
            user_name = ?crate::webhook::clip(&form.user_name),
            app = %app.name,
            "chat: user not allowed to change this app"
        );
        let who = form.mention().unwrap_or_else(|| "there".to_owned());
        return Err(format!(
            "Sorry {who}, you're not on the list of people who can deploy {}.",
            escape(app.name.as_str())
        ));
    }
    Ok(app.clone())
}

#[cfg(test)]
mod tests {
    use super::command::{DEPLOY_USAGE, ROLLBACK_USAGE, STATUS_USAGE};
    use super::reply::{outcome, short_reason};
    use super::*;
    use serde_json::json;

    const SLACK_DOCS_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_DOCS_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_DOCS_SIGNATURE: &str =
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const TS: i64 = 1_531_420_618;

    #[test]
    fn sign_matches_known_vectors() {
        // Both computed independently with Python's hmac module.
        assert_eq!(
            sign(SLACK_DOCS_SECRET, "1531420618", SLACK_DOCS_BODY),
            SLACK_DOCS_SIGNATURE
        );
        assert_eq!(
            sign(b"secret", "1531420618", b"body"),
            "v0=78e394d129df51c593e1d449277f576c39c361411fecc54edd326794263d3f84"
        );
    }

    fn check(
        ts: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        verify(SLACK_DOCS_SECRET, ts, sig, body, now)
    }

    #[test]
    fn verify_accepts_the_docs_example_within_five_minutes() {
        for now in [TS, TS + 300, TS - 300, TS + 1] {
            assert_eq!(
                check(
                    Some("1531420618"),
                    Some(SLACK_DOCS_SIGNATURE),
                    SLACK_DOCS_BODY,
                    now
                ),
                Ok(())
            );
        }
        let upper = SLACK_DOCS_SIGNATURE
            .to_ascii_uppercase()
            .replace("V0=", "v0=");
        assert_eq!(
            check(Some("1531420618"), Some(&upper), SLACK_DOCS_BODY, TS),
            Ok(())
        );
    }

    #[test]
    fn verify_refuses_stale_missing_malformed_and_mismatched() {
        let ts = Some("1531420618");
        let sig = Some(SLACK_DOCS_SIGNATURE);
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(ts, sig, SLACK_DOCS_BODY, TS + 360),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(None, sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            check(ts, None, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Missing)
        );
        let no_prefix = &SLACK_DOCS_SIGNATURE[3..];
        for bad_sig in [
            no_prefix,
            "v0=abc",
            "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "v0=z2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ] {
            assert_eq!(
                check(ts, Some(bad_sig), SLACK_DOCS_BODY, TS),
                Err(SignatureError::Malformed),
                "{bad_sig}"
            );
        }
        for bad_ts in [
            "",
            "-1531420618",
            "1531420618.5",
            " 1531420618",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(Some(bad_ts), sig, SLACK_DOCS_BODY, TS),
                Err(SignatureError::Malformed),
                "{bad_ts:?}"
            );
        }
        // Another body, or the same body with another (fresh) timestamp: a replay.
        assert_eq!(
            check(ts, sig, b"text=deploy", TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(Some("1531420619"), sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret", ts, sig, SLACK_DOCS_BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert!(!SignatureError::Mismatch.to_string().contains("a2114d"));
    }

    #[test]
    fn commands_parse() {
        let deploy = |app: &str, sha: &str| Command::Deploy {
            app: app.into(),
            sha: sha.into(),
        };
        assert_eq!(
            Command::parse("deploy web 1f2e3d4"),
            deploy("web", "1f2e3d4")
        );
        assert_eq!(
            Command::parse("  DEPLOY   web\t1f2e3d4 \n"),
            deploy("web", "1f2e3d4")
        );
        assert_eq!(Command::parse("deploy web"), Command::Usage(DEPLOY_USAGE));
        assert_eq!(
            Command::parse("deploy web a b"),
            Command::Usage(DEPLOY_USAGE)
        );
        assert_eq!(
            Command::parse("rollback web"),
            Command::Rollback {
                app: "web".into(),
                to: None
            }
        );
        assert_eq!(
            Command::parse("rollback web 12"),
            Command::Rollback {
                app: "web".into(),
                to: Some("12".into())
            }
        );
        assert_eq!(Command::parse("rollback"), Command::Usage(ROLLBACK_USAGE));
        assert_eq!(Command::parse("status"), Command::Status { app: None });
        assert_eq!(
            Command::parse("status web"),
            Command::Status {
                app: Some("web".into())
            }
        );
        assert_eq!(
            Command::parse("status web api"),
            Command::Usage(STATUS_USAGE)
        );
        assert_eq!(Command::parse(""), Command::Help);
        assert_eq!(Command::parse("   "), Command::Help);
        assert_eq!(Command::parse("help"), Command::Help);
        assert_eq!(Command::parse("help deploy"), Command::Help);
        assert_eq!(
            Command::parse("launch web"),
            Command::Unknown("launch".into())
        );
        let long = "x".repeat(100);
        assert_eq!(Command::parse(&long), Command::Unknown("x".repeat(32)));
    }

    #[test]
    fn response_urls_are_https_or_local() {
        let ok = |u: &str| ResponseUrl::parse(u).is_some();
        assert!(ok(
            "https://hooks.slack.com/commands/T1/397700885554/96rGlf"
        ));
        assert!(ok("http://127.0.0.1:4000/hook"));
        assert!(ok("http://localhost:4000/hook"));
        assert!(ok("http://[::1]:4000/hook"));
        assert!(!ok("http://hooks.slack.com/commands/T1"));
        assert!(!ok("http://10.0.0.1/hook"));
        assert!(!ok("http://127.0.0.1.evil.example/hook"));
        assert!(!ok("https://user:pw@hooks.slack.com/x"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("not a url"));
        assert!(!format!(
            "{:?}",
            ResponseUrl::parse("https://hooks.slack.com/x").unwrap()
        )
        .contains("slack"));
    }

    #[test]
    fn actor_and_mention_come_from_the_user() {
        let form = |id: &str, name: &str| SlashCommand {
            user_id: id.into(),
            user_name: name.into(),
            ..Default::default()
        };
        assert_eq!(
            form("U2CERLKJA", "roadrunner").actor(),
            "slack:U2CERLKJA(roadrunner)"
        );
        assert_eq!(form("U2CERLKJA", "").actor(), "slack:U2CERLKJA");
        assert_eq!(form("U2CERLKJA", "<>\n").actor(), "slack:U2CERLKJA");
        assert_eq!(form("", "roadrunner").actor(), "slack:unknown");
        assert_eq!(
            form("U2CERLKJA", "x").mention().as_deref(),
            Some("<@U2CERLKJA>")
        );
        assert_eq!(form("U2<!channel>", "x").mention(), None);
    }

    #[test]
    fn outcome_names_the_app_short_sha_state_and_reason() {
        let d = json!({
            "id": 12, "app": "web", "sha": "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
            "state": "succeeded", "trigger": "operator", "reason": null,
        });
        let text = outcome(&d, Some("<@U1>"));
        assert!(
            text.contains("Deployment 12 of `1f2e3d4` to *web* succeeded"),
            "{text}"
        );
        assert!(text.contains("<@U1>"), "{text}");
        let d = json!({
            "id": 13, "app": "web", "sha": "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
            "state": "rolled_back", "trigger": "rollback", "reason": "tasks <failed>",
        });
        let text = outcome(&d, None);
        assert!(text.contains("Rollback 13"), "{text}");
        assert!(
            text.contains("was rolled back: tasks &lt;failed&gt;"),
            "{text}"
        );
    }

    #[test]
    fn reasons_for_the_channel_are_short_and_name_no_arns() {
        let long = format!(
            "service arn:aws:ecs:eu-west-1:123456789012:service/web/web failed: {}\nstack",
            "x".repeat(300)
        );
        let r = short_reason(&long);
        assert!(!r.contains("arn:"), "{r}");
        assert!(!r.contains("123456789012"), "{r}");
        assert!(!r.contains("stack"), "{r}");
        assert!(r.chars().count() <= 161, "{r}");
        assert_eq!(
            short_reason("tasks failed to start"),
            "tasks failed to start"
        );
    }
}
