//! Issue 13: intake that stays fast with years of history — backpressure when the journal's
//! writer falls behind.

use crate::support::{eventually, fixture, Emulator, Proxy, SlipwayBuilder, SECRET};

#[tokio::test]
async fn a_stalled_journal_answers_503_with_retry_after_and_readyz_says_why() {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    let proxy = Proxy::start(&emulator.url).await;
    let s = SlipwayBuilder::new(&proxy.url)
        .extra("[journal]\nmax_queued_deliveries = 1\n")
        .start()
        .await;
    assert_eq!(s.get("/readyz").await.0, 200);
    // Stall the writer (documented: `journal.hold` in state_dir holds it).
    let hold = s.builder.state_dir().join("journal.hold");
    std::fs::write(&hold, b"").unwrap();
    let body = fixture("github/push_master.json");

    let held = s.deliver("push", "held-1", &body);
    let turned_away = async {
        let why = eventually("readyz reports the full queue", || async {
            let (status, v) = s.admin_get("/readyz").await;
            (status == 503).then_some(v)
        })
        .await;
        // Says why: deliveries waiting for the writer, or the writer stuck on a commit.
        let error = why["error"].as_str().unwrap();
        assert!(
            error.contains("waiting for the journal") || error.contains("has not committed for"),
            "{why}"
        );
        let resp = reqwest::Client::new()
            .post(format!("{}/webhooks/github", s.url))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", "held-2")
            .header("x-github-hook-id", "4242")
            .header(
                "x-hub-signature-256",
                slipway::webhook::sign(SECRET.as_bytes(), &body),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").cloned();
        let text = resp.text().await.unwrap();
        (status, retry_after, text)
    };
    let (held, (status, retry_after, text)) = tokio::join!(held, turned_away);
    assert_eq!(status, 503, "{text}");
    assert!(retry_after.is_some(), "Retry-After is set");
    assert!(text.contains("busy"), "{text}");
    // The held delivery is answered within GitHub's timeout, one way or the other.
    assert!(held.status == 202 || held.status == 503, "{}", held.text);

    std::fs::remove_file(&hold).unwrap();
    eventually("ready again", || async {
        (s.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // GitHub redelivers what got 503: accepted now, and built once.
    let again = s.deliver("push", "held-1", &body).await;
    assert_eq!(again.status, 202, "{}", again.text);
    eventually("one build started", || async {
        (emulator.builds("web-build").await.len() == 1).then_some(())
    })
    .await;
    assert!(
        !s.deliveries().iter().any(|d| d["delivery"] == "held-2"),
        "a delivery answered 503 is not kept"
    );
}

#[tokio::test]
async fn replaying_a_delivery_whose_payload_was_pruned_answers_409() {
    const TOKEN: &str = "alice-token-0123456789";
    let emulator = Emulator::start().await; // no CodeBuild project: the build fails for good
    let proxy = Proxy::start(&emulator.url).await;
    let builder = SlipwayBuilder::new(&proxy.url).env("SLIPWAY_OPS_TOKENS", TOKEN);
    let mut s = builder.start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "old-1", &body).await.status, 202);
    eventually("the build failed for good", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "old-1" && d["state"] == "failed")
    })
    .await;
    s.terminate();

    // A hundred days later (the clock is injected into pruning), with the default retention.
    {
        let journal = builder.open_store().await;
        let later = slipway::store::millis(time::OffsetDateTime::now_utc()) + 100 * 86_400_000;
        let settings = slipway::config::JournalConfig::default();
        let pruned = journal.prune(later, &settings).await.unwrap();
        assert_eq!(pruned.bodies_dropped, 1);
        journal.close();
    }

    let s = builder.start().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/deliveries/old-1/replay", s.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("payload no longer kept"),
        "{v}"
    );
    // Its metadata is still there, and a redelivery still dedups against it.
    let (status, rec) = {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/deliveries/old-1", s.admin_url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["payload"], serde_json::Value::Null);
    assert_eq!(rec["outcome"], "accepted");
}
