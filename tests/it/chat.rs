//! Issue: the `/slipway` Slack slash command: signed requests only, deploys and rollbacks
//! followed to the end and reported to the command's `response_url`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::deploy::{Deploy, Setup};
use crate::support::listener::Listener;
use crate::support::slipway::{Slipway, DEFAULT_APPS};
use crate::support::{eventually, SlipwayBuilder, MASTER_SHA};

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const NEWER_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

struct Chat {
    w: Deploy,
    s: Slipway,
    /// Stands in for Slack's `response_url`.
    hook: Listener,
}

/// The Slack workspace slipway is configured for.
const TEAM: &str = "T0001";

/// slipway with the Slack command on for workspace `TEAM`. Apps without `slack_users` get
/// `slack_users = ["*"]` (open to the workspace); see [`chat_as_configured`] for the default.
async fn chat(setup: Setup<'_>) -> Chat {
    let apps = if setup.apps.contains("slack_users") {
        setup.apps.clone()
    } else {
        format!("{}slack_users = [\"*\"]\n", setup.apps)
    };
    chat_as_configured(Setup { apps, ..setup }).await
}

/// slipway with the Slack command on for workspace `TEAM`, apps exactly as `setup` says.
async fn chat_as_configured(setup: Setup<'_>) -> Chat {
    let extra = format!("{}\n[chat]\nslack_team_id = \"{TEAM}\"\n", setup.extra);
    let w = Deploy::with(Setup {
        extra: &extra,
        ..setup
    })
    .await;
    let s = w
        .builder
        .clone()
        .env(slipway::config::SLACK_SIGNING_SECRET_ENV, SLACK_SECRET)
        .start()
        .await;
    let hook = Listener::start().await;
    Chat { w, s, hook }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A slash command body as Slack sends it.
fn form(text: &str, user_id: &str, user_name: &str, response_url: &str) -> String {
    form_from(TEAM, text, user_id, user_name, response_url)
}

/// A slash command body from Slack workspace `team`.
fn form_from(team: &str, text: &str, user_id: &str, user_name: &str, response_url: &str) -> String {
    serde_urlencoded::to_string([
        ("token", "gIkuvaNzQIHg97ATvDxqgjtO"),
        ("team_id", team),
        ("team_domain", "example"),
        ("channel_id", "C2147483705"),
        ("channel_name", "deploys"),
        ("user_id", user_id),
        ("user_name", user_name),
        ("command", "/slipway"),
        ("text", text),
        ("response_url", response_url),
        ("trigger_id", "13345224609.738474920.8088930838d88f008e0"),
        ("api_app_id", "A123456"),
    ])
    .unwrap()
}

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }

    /// A 200 ephemeral message; returns its text.
    fn ephemeral(&self) -> &str {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.body["response_type"], "ephemeral", "{}", self.body);
        self.text()
    }
}

async fn post(s: &Slipway, headers: &[(&str, String)], body: &str) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{}/chat/slack", s.url))
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /chat/slack");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn signed(secret: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-slack-request-timestamp", ts.to_string()),
        (
            "x-slack-signature",
            slipway::chat::sign(secret.as_bytes(), &ts.to_string(), body.as_bytes()),
        ),
    ]
}

impl Chat {
    /// Runs `/slipway <text>` as `user_id` (`user_name`), signed now.
    async fn command(&self, text: &str, user_id: &str, user_name: &str) -> Answer {
        let body = form(text, user_id, user_name, &self.hook.url);
        post(&self.s, &signed(SLACK_SECRET, now(), &body), &body).await
    }

    /// Waits for the in-channel outcome message mentioning deployment `id`.
    async fn outcome(&self, id: i64) -> String {
        eventually(&format!("outcome of deployment {id} posted"), || async {
            self.hook
                .bodies()
                .into_iter()
                .filter(|b| b["response_type"] == "in_channel")
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .find(|t| t.contains(&format!(" {id} of ")))
        })
        .await
    }

    fn deployments(&self) -> Vec<Value> {
        self.w.builder.deployments()
    }
}

/// The deployment id in "… (deployment 12) …".
fn deployment_id(text: &str) -> i64 {
    let rest = text
        .split("(deployment ")
        .nth(1)
        .unwrap_or_else(|| panic!("no deployment id in {text:?}"));
    rest.split(')').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_signed_deploy_command_deploys_the_commit_and_reports_the_outcome() {
    let c = chat(Setup::default()).await;
    let a = c.command("deploy web 1f2e3d4", "U2CERLKJA", "ada").await;
    let text = a.ephemeral().to_owned();
    assert!(text.contains("Deploying `1f2e3d4` to *web*"), "{text}");
    assert!(text.contains("I'll post the outcome here"), "{text}");
    let id = deployment_id(&text);

    let d = c.w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["id"], id);
    assert_eq!(d["actor"], "slack:U2CERLKJA(ada)", "{d}");
    assert_eq!(d["trigger"], "operator", "{d}");

    let outcome = c.outcome(id).await;
    assert!(outcome.contains("succeeded"), "{outcome}");
    assert!(outcome.contains("`1f2e3d4`"), "{outcome}");
    assert!(outcome.contains("*web*"), "{outcome}");
    assert!(outcome.contains("<@U2CERLKJA>"), "{outcome}");
    assert!(
        !c.s.logs().contains(SLACK_SECRET),
        "the signing secret is never logged"
    );
}

#[tokio::test]
async fn rollback_from_chat_puts_back_the_previous_commit() {
    let c = chat(Setup {
        images: &[MASTER_SHA, NEWER_SHA],
        ..Setup::default()
    })
    .await;
    for sha in [MASTER_SHA, NEWER_SHA] {
        let a = c.command(&format!("deploy web {sha}"), "U1", "ada").await;
        let text = a.ephemeral().to_owned();
        let id = deployment_id(&text);
        assert_eq!(c.w.finished(sha).await["state"], "succeeded");
        c.outcome(id).await;
    }
    let a = c.command("rollback web", "U1", "grace").await;
    let text = a.ephemeral().to_owned();
    assert!(text.contains("Rolling back *web* to `1f2e3d4`"), "{text}");
    let id = deployment_id(&text);
    let outcome = c.outcome(id).await;
    assert!(outcome.contains("Rollback"), "{outcome}");
    assert!(outcome.contains("`1f2e3d4`"), "{outcome}");
    assert!(outcome.contains("succeeded"), "{outcome}");
    let d = c.deployments().into_iter().find(|d| d["id"] == id).unwrap();
    assert_eq!(
        (
            d["trigger"].as_str(),
            d["actor"].as_str(),
            d["sha"].as_str()
        ),
        (Some("rollback"), Some("slack:U1(grace)"), Some(MASTER_SHA))
    );
}

#[tokio::test]
async fn bad_stale_and_replayed_signatures_are_refused() {
    let c = chat(Setup::default()).await;
    let body = form("deploy web 1f2e3d4", "U1", "mallory", &c.hook.url);
    let expected =
        slipway::chat::sign(SLACK_SECRET.as_bytes(), &now().to_string(), body.as_bytes());

    let refused = |a: Answer, what: &str| {
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        assert_eq!(a.body["code"], "unauthorized", "{what}: {}", a.body);
        let shown = a.body.to_string();
        assert!(
            !shown.contains(&expected[3..]),
            "{what}: never echo the signature"
        );
    };
    // Signed with another secret.
    refused(
        post(&c.s, &signed("not-the-secret", now(), &body), &body).await,
        "bad signature",
    );
    // Correctly signed, six minutes ago (and six minutes ahead).
    refused(
        post(&c.s, &signed(SLACK_SECRET, now() - 360, &body), &body).await,
        "stale",
    );
    refused(
        post(&c.s, &signed(SLACK_SECRET, now() + 360, &body), &body).await,
        "from the future",
    );
    // A valid signature of another body.
    let other = form("status", "U1", "mallory", &c.hook.url);
    refused(
        post(&c.s, &signed(SLACK_SECRET, now(), &other), &body).await,
        "signature of another body",
    );
    // A valid signature sent with another (fresh) timestamp.
    let ts = now() - 100;
    let mut headers = signed(SLACK_SECRET, ts, &body);
    headers[0].1 = now().to_string();
    refused(post(&c.s, &headers, &body).await, "timestamp swapped");
    // Missing and malformed headers.
    refused(post(&c.s, &[], &body).await, "no headers");
    refused(
        post(&c.s, &signed(SLACK_SECRET, now(), &body)[..1], &body).await,
        "no signature",
    );
    let mut headers = signed(SLACK_SECRET, now(), &body);
    headers[1].1 = headers[1].1.replace("v0=", "v1=");
    refused(post(&c.s, &headers, &body).await, "wrong version");
    let mut headers = signed(SLACK_SECRET, now(), &body);
    headers[0].1 = "yesterday".into();
    refused(post(&c.s, &headers, &body).await, "malformed timestamp");

    // The same request, signed properly, goes through: the refusals were the signatures.
    let ok = post(&c.s, &signed(SLACK_SECRET, now(), &other), &other).await;
    ok.ephemeral();
    assert!(c.deployments().is_empty(), "nothing was deployed");
    assert!(c.hook.bodies().is_empty(), "nothing was posted");
    let logs = c.s.logs();
    assert!(
        logs.contains("signature check failed"),
        "refusals are logged"
    );
    assert!(
        !logs.contains(&expected[3..]),
        "signatures are never logged"
    );
}

#[tokio::test]
async fn without_a_signing_secret_the_command_is_disabled() {
    let s = SlipwayBuilder::new("http://127.0.0.1:9").start().await;
    let body = form(
        "deploy web 1f2e3d4",
        "U1",
        "ada",
        "https://hooks.slack.com/x",
    );
    let a = post(&s, &signed(SLACK_SECRET, now(), &body), &body).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.body["code"], "chat_disabled", "{}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("disabled"));
}

#[tokio::test]
async fn only_listed_users_may_deploy_but_anyone_may_ask_for_status() {
    let c = chat(Setup {
        apps: format!("{DEFAULT_APPS}slack_users = [\"UALLOWED\"]\n"),
        ..Setup::default()
    })
    .await;
    let a = c.command("deploy web 1f2e3d4", "UOTHER", "eve").await;
    assert_eq!(
        a.ephemeral(),
        "Sorry <@UOTHER>, you're not on the list of people who can deploy web."
    );
    let a = c.command("rollback web", "UOTHER", "eve").await;
    assert!(a.ephemeral().contains("not on the list"), "{}", a.body);
    let a = c.command("status", "UOTHER", "eve").await;
    assert!(a.ephemeral().contains("*web*"), "{}", a.body);
    let a = c.command("help", "UOTHER", "eve").await;
    assert!(a.ephemeral().contains("deploy <app> <sha>"), "{}", a.body);
    assert!(c.deployments().is_empty(), "nothing was deployed");

    let a = c.command("deploy web 1f2e3d4", "UALLOWED", "ada").await;
    let id = deployment_id(a.ephemeral());
    let d = c.w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["actor"], "slack:UALLOWED(ada)");
    assert!(c.outcome(id).await.contains("succeeded"));
    assert_eq!(c.deployments().len(), 1);
}

#[tokio::test]
async fn status_help_unknown_commands_and_refused_operations_answer_ephemerally() {
    let c = chat(Setup::default()).await;
    let status = c.command("status", "U1", "ada").await;
    let text = status.ephemeral();
    assert!(text.contains("*web*"), "{text}");
    assert!(text.contains("no deployments yet"), "{text}");
    let one = c.command("status web", "U1", "ada").await;
    assert!(one.ephemeral().contains("*web*"), "{}", one.body);
    let none = c.command("status nosuchapp", "U1", "ada").await;
    assert!(
        none.ephemeral().contains("unknown app nosuchapp"),
        "{}",
        none.body
    );

    for text in ["help", "", "   "] {
        let a = c.command(text, "U1", "ada").await;
        let help = a.ephemeral();
        for usage in [
            "/slipway deploy <app> <sha>",
            "/slipway rollback <app>",
            "/slipway status",
        ] {
            assert!(help.contains(usage), "{text:?}: {help}");
        }
    }
    let a = c.command("launch web", "U1", "ada").await;
    let text = a.ephemeral();
    assert!(text.contains("unknown command `launch`"), "{text}");
    assert!(text.contains("/slipway deploy <app> <sha>"), "{text}");

    let a = c.command("deploy nosuchapp abc1234", "U1", "ada").await;
    let text = a.ephemeral();
    assert!(text.contains("unknown app nosuchapp"), "{text}");
    assert!(text.contains("*web*"), "the known apps are listed: {text}");
    let a = c.command("rollback web", "U1", "ada").await;
    assert!(
        a.ephemeral().contains("nothing to roll back to"),
        "{}",
        a.body
    );
    let a = c.command("deploy web", "U1", "ada").await;
    assert!(
        a.ephemeral()
            .contains("Usage: `/slipway deploy <app> <sha>`"),
        "{}",
        a.body
    );
    let a = c.command("deploy web not-a-sha", "U1", "ada").await;
    assert!(a.ephemeral().contains("is not a commit SHA"), "{}", a.body);
    let a = c.command("deploy web abcdef1", "U1", "ada").await;
    assert!(a.ephemeral().contains("no image"), "{}", a.body);

    assert!(c.deployments().is_empty(), "nothing was deployed");
    assert!(
        c.hook.bodies().is_empty(),
        "nothing was posted to response_url"
    );
}

#[tokio::test]
async fn the_same_signed_request_is_accepted_once() {
    let c = chat(Setup::default()).await;
    let body = form("status", "U1", "ada", &c.hook.url);
    let headers = signed(SLACK_SECRET, now(), &body);
    let first = post(&c.s, &headers, &body).await;
    assert_eq!(first.status, 200);
    // Captured and sent again within the 5 minutes its timestamp is good for.
    let again = post(&c.s, &headers, &body).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.body["code"], "unauthorized");
    assert!(again.body["error"]
        .as_str()
        .unwrap()
        .contains("already received"));
}

/// The upper-cased hex of a captured signature is the same request: refused, also after a
/// restart (the seen signatures are kept in the journal).
#[tokio::test]
async fn a_replay_with_the_signature_re_cased_is_refused_also_after_a_restart() {
    let mut c = chat(Setup::default()).await;
    let body = form("status", "U1", "ada", &c.hook.url);
    let headers = signed(SLACK_SECRET, now(), &body);
    let first = post(&c.s, &headers, &body).await;
    first.ephemeral();
    let mut upper = headers.clone();
    upper[1].1 = format!("v0={}", upper[1].1[3..].to_ascii_uppercase());
    assert_ne!(upper[1].1, headers[1].1);
    let again = post(&c.s, &upper, &body).await;
    assert_eq!(again.status, 401, "{}", again.body);
    assert!(again.body["error"]
        .as_str()
        .unwrap()
        .contains("already received"));

    // A signed request not yet seen, then a restart: both forms of it stay refused.
    let body = form("status web", "U1", "ada", &c.hook.url);
    let headers = signed(SLACK_SECRET, now(), &body);
    post(&c.s, &headers, &body).await.ephemeral();
    assert!(c.s.terminate().success());
    c.s = c.s.builder.start().await;
    let mut upper = headers.clone();
    upper[1].1 = format!("v0={}", upper[1].1[3..].to_ascii_uppercase());
    for (what, h) in [("as captured", &headers), ("upper-cased", &upper)] {
        let a = post(&c.s, h, &body).await;
        assert_eq!(a.status, 401, "{what} after a restart: {}", a.body);
    }
    // slipway still answers new requests.
    c.command("help", "U1", "ada").await.ephemeral();
}

/// Without `slack_users` nobody may deploy or roll back an app from Slack.
#[tokio::test]
async fn without_slack_users_nobody_may_deploy_from_slack() {
    let c = chat_as_configured(Setup::default()).await;
    for text in ["deploy web 1f2e3d4", "rollback web"] {
        let a = c.command(text, "U2CERLKJA", "ada").await;
        assert!(
            a.ephemeral().contains("not on the list"),
            "{text}: {}",
            a.body
        );
    }
    let a = c.command("status", "U2CERLKJA", "ada").await;
    assert!(a.ephemeral().contains("*web*"), "{}", a.body);
    assert!(c.deployments().is_empty(), "nothing was deployed");
}

/// A correctly signed command from another Slack workspace is refused.
#[tokio::test]
async fn commands_from_another_workspace_are_refused() {
    let c = chat(Setup::default()).await;
    let body = form_from("T0THER", "deploy web 1f2e3d4", "U1", "eve", &c.hook.url);
    let a = post(&c.s, &signed(SLACK_SECRET, now(), &body), &body).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.body["code"], "forbidden", "{}", a.body);
    assert!(c.deployments().is_empty(), "nothing was deployed");
    assert!(c.hook.bodies().is_empty(), "nothing was posted");
    // The configured workspace still gets through.
    c.command("status", "U1", "ada").await.ephemeral();
}

/// A Slack signing secret without `[chat] slack_team_id` is a configuration error.
#[tokio::test]
async fn a_signing_secret_without_a_team_id_does_not_start() {
    let builder = SlipwayBuilder::new("http://127.0.0.1:9")
        .env(slipway::config::SLACK_SIGNING_SECRET_ENV, SLACK_SECRET);
    let config = builder.config_path();
    let (status, _, err) = builder.run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("slack_team_id"), "{err}");
}

#[tokio::test]
async fn a_body_declared_larger_than_the_limit_gets_413_and_commands_still_work() {
    let c = chat(Setup::default()).await;
    let body = "x".repeat(slipway::chat::MAX_BODY_BYTES + 1);
    let a = post(&c.s, &signed(SLACK_SECRET, now(), &body), &body).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.body["code"], "too_large", "{}", a.body);
    let status = c.command("status", "U1", "ada").await;
    assert!(status.ephemeral().contains("*web*"), "{}", status.body);
}

/// Issue 27: `/slipway approve <app>` from one of the app's `approvers` (Slack user ids)
/// approves its waiting promotion; anyone else is told they are not an approver, and nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_from_slack_is_for_the_apps_approvers_only() {
    let apps = format!(
        "{DEFAULT_APPS}slack_users = [\"*\"]\n{}",
        crate::promote::prod_app("web", "approvers = [\"UALICE\"]")
    );
    let c = chat_as_configured(Setup {
        apps,
        images: &[MASTER_SHA, NEWER_SHA],
        ..Setup::default()
    })
    .await;
    c.w.emulator
        .create_service(crate::support::world::CLUSTER, "web-prod", &c.w.base_td)
        .await;
    c.w.ship(&c.s, "p-1", MASTER_SHA).await;
    let waiting = || async {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/api/promotions?app=web-prod", c.s.admin_url))
            .bearer_auth(crate::support::slipway::HARNESS_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["promotions"][0].clone()
    };
    let p = eventually("the promotion waiting", || async {
        let p = waiting().await;
        (p["state"] == "awaiting_approval").then_some(p)
    })
    .await;

    // Not an approver (though allowed to deploy web from chat): refused, nothing changes.
    let text = c
        .command("approve web-prod", "UBOB", "bob")
        .await
        .ephemeral()
        .to_owned();
    assert_eq!(
        text,
        "Sorry <@UBOB>, you may not approve promotions to *web-prod*: you are not among its approvers."
    );
    assert_eq!(waiting().await["state"], "awaiting_approval");
    let text = c
        .command("approve", "UALICE", "alice")
        .await
        .ephemeral()
        .to_owned();
    assert!(text.contains("approve <app> [sha]"), "{text}");

    let text = c
        .command(
            &format!("approve web-prod {}", &MASTER_SHA[..7]),
            "UALICE",
            "alice",
        )
        .await
        .ephemeral()
        .to_owned();
    let approved = waiting().await;
    assert_eq!(approved["state"], "approved", "{approved}");
    assert_eq!(approved["decided_by"], "slack:UALICE", "{approved}");
    assert_eq!(
        text,
        format!(
            "Approved the promotion of `{}` to *web-prod* (from *web*, deployment {}): \
             deploying (deployment {}).",
            &MASTER_SHA[..7],
            p["source_deployment"],
            approved["deployment"]
        )
    );

    // The next promotion, decided with Slack's buttons (interactivity).
    c.w.finished(MASTER_SHA).await;
    c.w.ship(&c.s, "p-2", NEWER_SHA).await;
    let second = eventually("the second promotion waiting", || async {
        let p = waiting().await;
        (p["state"] == "awaiting_approval" && p["sha"] == NEWER_SHA).then_some(p)
    })
    .await;
    let value = format!("web-prod {NEWER_SHA}");
    let body = press(TEAM, "UALICE", "slipway_approve", &value, &c.hook.url);
    // A bad signature, or a press from another workspace: refused, nothing changes.
    let a = post_action(
        &c.s,
        &signed("not-the-secret-0123456789", now(), &body),
        &body,
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.body);
    let other = press("T0666", "UALICE", "slipway_approve", &value, &c.hook.url);
    let a = post_action(&c.s, &signed(SLACK_SECRET, now(), &other), &other).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.body["error"], "this Slack workspace may not use slipway");
    let bob = press(TEAM, "UBOB", "slipway_reject", &value, &c.hook.url);
    let a = post_action(&c.s, &signed(SLACK_SECRET, now(), &bob), &bob).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.text(),
        "Sorry <@UBOB>, you may not reject promotions to *web-prod*: you are not among its approvers."
    );
    let garbled = "payload=%7B%22type%22%3A1%7D";
    let a = post_action(&c.s, &signed(SLACK_SECRET, now(), garbled), garbled).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(waiting().await["state"], "awaiting_approval");

    // alice presses Approve: approved as her, deployed; the answer also goes to response_url.
    let headers = signed(SLACK_SECRET, now(), &body);
    let a = post_action(&c.s, &headers, &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let decided = waiting().await;
    assert_eq!(decided["id"], second["id"]);
    assert_eq!(decided["state"], "approved", "{decided}");
    assert_eq!(decided["decided_by"], "slack:UALICE", "{decided}");
    assert!(
        a.text().starts_with(&format!(
            "Approved the promotion of `{}` to *web-prod*",
            &NEWER_SHA[..7]
        )),
        "{}",
        a.body
    );
    let posted = eventually("the answer posted to response_url", || async {
        c.hook.bodies().into_iter().find(|b| {
            b["text"]
                .as_str()
                .is_some_and(|t| t.contains(&NEWER_SHA[..7]))
        })
    })
    .await;
    assert_eq!(posted["response_type"], "ephemeral", "{posted}");
    // The same signed press again (a replay): refused.
    let a = post_action(&c.s, &headers, &body).await;
    assert_eq!(a.status, 401, "{}", a.body);
}

/// A press of a promotion's button as Slack's interactivity sends it: the `block_actions`
/// payload (api.slack.com, "Interactivity: block_actions payloads") in the form field
/// `payload`, from workspace `team`, user `user`.
fn press(team: &str, user: &str, action: &str, value: &str, response_url: &str) -> String {
    let payload = serde_json::json!({
        "type": "block_actions",
        "team": { "id": team, "domain": "example" },
        "user": { "id": user, "username": "someone", "team_id": team },
        "api_app_id": "A123456",
        "token": "gIkuvaNzQIHg97ATvDxqgjtO",
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "response_url": response_url,
        "actions": [{
            "type": "button", "action_id": action, "block_id": "b1", "value": value,
            "text": { "type": "plain_text", "text": "Approve" }, "action_ts": "1548426417.840180"
        }],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

async fn post_action(s: &Slipway, headers: &[(&str, String)], body: &str) -> Answer {
    let resp = headers
        .iter()
        .fold(
            reqwest::Client::new()
                .post(format!("{}/chat/slack/actions", s.url))
                .header("content-type", "application/x-www-form-urlencoded"),
            |req, (k, v)| req.header(*k, v),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /chat/slack/actions");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}
