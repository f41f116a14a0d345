//! No push lost across a restart (issue 21): a starting slipway is not ready until the first
//! round of delivery recovery has asked GitHub for what it missed, or failed saying why; without
//! recovery, `/readyz` says pushes sent while slipway is down are lost.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::github_fake::{GithubFake, Scripted, STATIC_TOKEN};
use crate::support::slipway::Slipway;
use crate::support::{eventually, Emulator, SlipwayBuilder};

const HOOK_ID: u64 = 4242;
const DELIVERIES: &str = "/repos/octo-org/web/hooks/4242/deliveries";

async fn slipway(emulator: &Emulator, gh: &GithubFake) -> Slipway {
    SlipwayBuilder::new(&emulator.url)
        .extra(&format!(
            "[github]\napi_url = \"{}\"\n[[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n",
            gh.url
        ))
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .start()
        .await
}

fn in_secs(secs: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs
}

/// The admin listener's `/readyz`, which must answer 200.
async fn admin_ready(s: &Slipway) -> serde_json::Value {
    let admin = reqwest::get(format!("{}/readyz", s.admin_url))
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 200);
    admin.json().await.unwrap()
}

fn warnings(body: &serde_json::Value) -> Vec<String> {
    body["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn not_ready_until_the_first_recovery_round_has_run() {
    let emulator = Emulator::start().await;
    let gh = GithubFake::start().await;
    // The hook's delivery list is rate limited for a few seconds from slipway's first ask:
    // the first round waits.
    gh.script("GET", DELIVERIES, vec![Scripted::rate_limited_for(8)]);
    let s = slipway(&emulator, &gh).await;
    // The load balancer's /readyz says only that slipway is starting; the admin one says why.
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "starting", "{body}");
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the first round of webhook delivery recovery has not finished"),
        "{body}"
    );
    // Alive meanwhile, and taking pushes (the load balancer decides on /readyz).
    assert_eq!(s.get("/healthz").await.0, 200);
    eventually("ready once the first round ran", || async {
        let (status, body) = s.admin_get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    s.wait_log("delivery recovery round finished").await;
    assert_eq!(
        gh.requests_to("GET", DELIVERIES).len(),
        2,
        "asked again after the reset"
    );
}

#[tokio::test]
async fn a_first_round_that_fails_says_why_and_slipway_becomes_ready() {
    let emulator = Emulator::start().await;
    let gh = GithubFake::start().await;
    // A rate limit resetting in a day is not waited for: the round fails.
    gh.script(
        "GET",
        DELIVERIES,
        vec![Scripted::rate_limited(in_secs(86_400))],
    );
    let s = slipway(&emulator, &gh).await;
    let body = eventually("ready after the failed first round", || async {
        let (status, body) = s.admin_get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    let warnings = warnings(&body);
    assert!(
        warnings
            .iter()
            .any(|w| w
                .starts_with("the first round of webhook delivery recovery failed: hook 4242:")),
        "{body}"
    );
    assert!(s
        .logs()
        .contains("the first round of delivery recovery failed"));
}

#[tokio::test]
async fn without_recovery_readyz_says_pushes_sent_while_down_are_lost() {
    let emulator = Emulator::start().await;
    let gh = GithubFake::start().await;
    let lost = "recovery off: pushes sent while slipway is down are lost";
    // Credentials but no hook.
    let s = SlipwayBuilder::new(&emulator.url)
        .extra(&format!("[github]\napi_url = \"{}\"\n", gh.url))
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .start()
        .await;
    let body = admin_ready(&s).await;
    assert!(
        warnings(&body).contains(&format!(
            "{lost} (no [[github.hook]] to recover deliveries of)"
        )),
        "{body}"
    );
    s.wait_log(lost).await;
    drop(s);
    // No [github] at all.
    let s = SlipwayBuilder::new(&emulator.url).start().await;
    let body = admin_ready(&s).await;
    assert!(
        warnings(&body).contains(&format!(
            "{lost} (no [github] credentials and no [[github.hook]])"
        )),
        "{body}"
    );
}
