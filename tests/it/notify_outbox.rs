//! Issue 24, item 6: one journaled outbox for every notification. Slack and the generic webhook
//! survive their endpoint being down and slipway being killed meanwhile; a notification arrives
//! once; one given up by age says why in the ops API, the status page and `/metrics`.

use serde_json::Value;

use crate::deploy::Deploy;
use crate::metrics::{promtool_check, sample, scrape};
use crate::support::listener::{Endpoint, Hit};
use crate::support::slipway::{Slipway, HARNESS_TOKEN};
use crate::support::{eventually, SlipwayBuilder, MASTER_SHA};

const SECOND_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

/// Which endpoint a test takes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Slack,
    Webhook,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Slack => "slack",
            Which::Webhook => "webhook",
        }
    }
}

struct World {
    w: Deploy,
    slack: Endpoint,
    hook: Endpoint,
    builder: SlipwayBuilder,
}

impl World {
    fn endpoint(&self, which: Which) -> &Endpoint {
        match which {
            Which::Slack => &self.slack,
            Which::Webhook => &self.hook,
        }
    }

    /// A push of `sha` whose build fails: one `build_failed` notification for each target.
    async fn failed_build(&self, s: &Slipway, delivery: &str, sha: &str) {
        let arn = self.w.push(s, delivery, sha).await;
        self.w.complete(&arn, "FAILED", sha).await;
    }
}

/// The emulator with the `web` app, Slack and a generic webhook (both up), and slipway's
/// outbox retrying every second or two; `notify_extra` adds `[notify]` keys.
async fn world(notify_extra: &str) -> World {
    let w = Deploy::new().await;
    let slack = Endpoint::start().await;
    let hook = Endpoint::start().await;
    let builder = w
        .builder
        .clone()
        .extra(&format!(
            "queue_url = \"{}\"\n[events]\nvisibility_timeout_secs = 3\n[notify]\n\
             slack_webhook_url_env = \"TEST_SLACK_URL\"\nwebhook_url_env = \"TEST_HOOK_URL\"\n\
             retry_initial_secs = 1\nretry_max_secs = 2\n{notify_extra}\n",
            w.queue
        ))
        .env("TEST_SLACK_URL", &slack.url)
        .env("TEST_HOOK_URL", &hook.url);
    World {
        w,
        slack,
        hook,
        builder,
    }
}

/// The hits that carry commit `sha` (Slack's message names it in its context block).
fn about(hits: &[Hit], sha: &str) -> Vec<Hit> {
    hits.iter()
        .filter(|h| h.body.to_string().contains(sha))
        .cloned()
        .collect()
}

/// `GET /api/notifications{query}` with the harness's ops token.
async fn notifications(s: &Slipway, query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/notifications{query}", s.admin_url))
        .bearer_auth(HARNESS_TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The journaled notifications of `target`, newest first.
async fn rows_of(s: &Slipway, target: &str) -> Vec<Value> {
    let (status, body) = notifications(s, "?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["target"] == target)
        .cloned()
        .collect()
}

/// Waits until a notification to `target` is journaled as sent.
async fn journaled_sent(s: &Slipway, target: Which) {
    eventually(
        &format!("a {} notification journaled as sent", target.name()),
        || async {
            rows_of(s, target.name())
                .await
                .into_iter()
                .find(|r| r["state"] == "sent")
        },
    )
    .await;
}

/// `which`'s endpoint is down for a while and slipway is killed (SIGKILL) and started again
/// meanwhile: the notification arrives after both, once; the other target got it once, at
/// once; the next notification arrives once, after it.
async fn down_and_restarted_then_delivered_once(which: Which) {
    let world = world("").await;
    let down = world.endpoint(which);
    let other_target = match which {
        Which::Slack => Which::Webhook,
        Which::Webhook => Which::Slack,
    };
    let other = world.endpoint(other_target);
    down.down();
    let mut s = world.builder.start().await;
    world.failed_build(&s, "outbox-1", MASTER_SHA).await;

    eventually("a failed attempt while the endpoint is down", || async {
        (!down.hits().is_empty()).then_some(())
    })
    .await;
    eventually("the other target got it", || async {
        (about(&other.taken(), MASTER_SHA).len() == 1).then_some(())
    })
    .await;
    // Journaled and pending, with why.
    let pending = eventually("the attempt journaled", || async {
        rows_of(&s, which.name())
            .await
            .into_iter()
            .find(|r| r["attempts"].as_i64() >= Some(1))
    })
    .await;
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(pending["notification"]["kind"], "build_failed");
    assert_eq!(pending["notification"]["sha"], MASTER_SHA);
    let why = pending["last_error"].as_str().unwrap();
    assert!(why.contains("503"), "{why}");
    assert!(!why.contains("secret"), "the URL is never shown: {why}");

    // The other target's delivery journaled as sent (a crash between its answer and that
    // write would send it again, with the same Idempotency-Key: at least once).
    journaled_sent(&s, other_target).await;

    // A crash while the endpoint is down.
    s.kill();
    let before_restart = down.hits().len();
    let s = world.builder.start().await;
    eventually("an attempt after the restart, still down", || async {
        (down.hits().len() > before_restart).then_some(())
    })
    .await;
    down.up();
    eventually("the notification arrives", || async {
        (!down.taken().is_empty()).then_some(())
    })
    .await;
    journaled_sent(&s, which).await;

    // The next notification arrives after it (one outbox, in order): nothing before it is
    // sent again.
    world.failed_build(&s, "outbox-2", SECOND_SHA).await;
    eventually("the next notification arrives", || async {
        (!about(&down.taken(), SECOND_SHA).is_empty()).then_some(())
    })
    .await;
    eventually("the other target got the next one", || async {
        (!about(&other.taken(), SECOND_SHA).is_empty()).then_some(())
    })
    .await;
    let taken = down.taken();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert_eq!(about(&taken[..1], MASTER_SHA).len(), 1, "{taken:?}");
    assert_eq!(about(&taken[1..], SECOND_SHA).len(), 1, "{taken:?}");
    // Every attempt at the first carried the same key, before and after the restart; the
    // second has its own.
    let first_keys: Vec<_> = about(&down.hits(), MASTER_SHA)
        .into_iter()
        .map(|h| h.idempotency_key.expect("an Idempotency-Key header"))
        .collect();
    assert!(first_keys.len() >= 3, "{first_keys:?}");
    assert!(
        first_keys.iter().all(|k| *k == first_keys[0]),
        "{first_keys:?}"
    );
    assert_ne!(taken[1].idempotency_key.as_ref(), Some(&first_keys[0]));
    // The other target, never down, got each once: the restart sent nothing again.
    let others = other.taken();
    assert_eq!(about(&others, MASTER_SHA).len(), 1, "{others:?}");
    assert_eq!(about(&others, SECOND_SHA).len(), 1, "{others:?}");
    assert_eq!(others.len(), 2, "{others:?}");
    if which == Which::Webhook {
        assert_eq!(taken[0].body["event"], "build_failed");
        assert_eq!(
            taken[0].body["idempotency_key"].as_str(),
            Some(first_keys[0].as_str())
        );
    } else {
        assert!(taken[0].body["blocks"].is_array(), "{:?}", taken[0]);
    }
    // Both journaled as sent (the mark follows the 2xx), and no other row.
    eventually("both journaled as sent", || async {
        let rows = rows_of(&s, which.name()).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        rows.iter().all(|r| r["state"] == "sent").then_some(())
    })
    .await;
}

#[tokio::test]
async fn slack_down_for_a_while_and_slipway_restarted_the_notification_arrives_after_both_once() {
    down_and_restarted_then_delivered_once(Which::Slack).await;
}

#[tokio::test]
async fn the_generic_webhook_down_and_slipway_restarted_the_notification_arrives_once() {
    down_and_restarted_then_delivered_once(Which::Webhook).await;
}

#[tokio::test]
async fn a_notification_given_up_by_age_shows_why_in_the_api_the_status_page_and_metrics() {
    let world = world("give_up_after_hours = 1").await;
    world.slack.down();
    let mut s = world.builder.start().await;
    world.failed_build(&s, "old-1", MASTER_SHA).await;
    eventually("a failed attempt", || async {
        (!world.slack.hits().is_empty()).then_some(())
    })
    .await;
    // The webhook took its copy before the stop (`terminate` blocks this test's runtime, where
    // the fake answers: a post still in flight then would time out and be sent again).
    eventually("the webhook notified", || async {
        (world.hook.taken().len() == 1).then_some(())
    })
    .await;
    s.terminate();

    // slipway stays down past the age: the journaled notification is two hours old when it
    // comes back (the row's creation time moved back, as the clock would have).
    let journal = world.builder.state_dir().join("journal.db");
    let c = rusqlite::Connection::open(&journal).unwrap();
    let aged = c
        .execute(
            "UPDATE notify_outbox SET created_ms = created_ms - 2 * 3600 * 1000
             WHERE target = 'slack' AND state = 'pending'",
            [],
        )
        .unwrap();
    assert_eq!(aged, 1);
    drop(c);

    let s = world.builder.start().await;
    let given_up = eventually("given up after its next attempt", || async {
        rows_of(&s, "slack")
            .await
            .into_iter()
            .find(|r| r["state"] == "given_up")
    })
    .await;
    let why = given_up["last_error"].as_str().unwrap().to_owned();
    assert!(
        why.contains("not delivered within 1h") && why.contains("503"),
        "{why}"
    );
    assert!(given_up["done_at"].is_string(), "{given_up}");
    assert_eq!(given_up["notification"]["sha"], MASTER_SHA);
    // The filter finds it; the webhook's (taken at once) is not among them.
    let (status, body) = notifications(&s, "?state=given_up").await;
    assert_eq!(status, 200);
    let listed = body["notifications"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["target"], "slack");

    // The status page says it, with the reason.
    let page = reqwest::get(format!("{}/", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Notifications not delivered"), "{page}");
    assert!(page.contains("given up"), "{page}");
    assert!(page.contains("not delivered within 1h"), "{page}");

    // /metrics counts it, and nothing waits any more.
    let text = scrape(&s).await;
    promtool_check(&text);
    let given_up_count = [("target", "slack"), ("result", "given_up")];
    assert_eq!(
        sample(&text, "slipway_notifications_total", &given_up_count),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "slipway_notifications_total",
            &[("target", "webhook"), ("result", "given_up")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "slipway_notifications_pending",
            &[("target", "slack")]
        ),
        Some(0.0)
    );
    for name in [
        "slipway_notifications_total",
        "slipway_notifications_pending",
        "slipway_oldest_pending_notification_age_seconds",
        "slipway_github_requests_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
    // Slack was never reached; the webhook got it once.
    assert!(world.slack.taken().is_empty());
    assert_eq!(world.hook.taken().len(), 1);

    // Bad queries say what is wrong, and the server keeps serving.
    for (query, says) in [
        (
            "?state=lost",
            "state must be one of pending, sent, given_up",
        ),
        ("?limit=0", "limit must be between 1 and 1000"),
    ] {
        let (status, body) = notifications(&s, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(says), "{query}: {body}");
    }
    let (status, _) = notifications(&s, "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_pending_notification_shows_in_metrics_while_its_target_is_down() {
    let world = world("").await;
    world.hook.down();
    let s = world.builder.start().await;
    world.failed_build(&s, "pending-1", MASTER_SHA).await;
    let text = eventually("a failed attempt counted", || async {
        let text = scrape(&s).await;
        let failed = sample(
            &text,
            "slipway_notifications_total",
            &[("target", "webhook"), ("result", "failed")],
        );
        let slack_sent = sample(
            &text,
            "slipway_notifications_total",
            &[("target", "slack"), ("result", "sent")],
        );
        (failed >= Some(1.0) && slack_sent == Some(1.0)).then_some(text)
    })
    .await;
    promtool_check(&text);
    assert_eq!(
        sample(
            &text,
            "slipway_notifications_pending",
            &[("target", "webhook")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "slipway_notifications_total",
            &[("target", "slack"), ("result", "given_up")]
        ),
        Some(0.0),
        "{text}"
    );
    let page = reqwest::get(format!("{}/", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Notifications not delivered") && page.contains("retrying"),
        "{page}"
    );
}
