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
            let (status, v) = s.get("/readyz").await;
            (status == 503).then_some(v)
        })
        .await;
        assert!(
            why["error"]
                .as_str()
                .unwrap()
                .contains("waiting for the journal"),
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
