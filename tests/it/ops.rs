//! Issue: operators' controls over the authenticated HTTP API and the CLI.

use serde_json::{json, Value};

use crate::deploy::{Deploy, Setup};
use crate::support::proxy::Rollout;
use crate::support::slipway::Slipway;
use crate::support::world::{CLUSTER, PROJECT, SERVICE};
use crate::support::{eventually, fixture, MASTER_SHA};

const TOKEN: &str = "alice-token-0123456789";
const OTHER: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const THIRD: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

async fn ops_world(images: &'static [&'static str]) -> (Deploy, Slipway) {
    let w = Deploy::with(Setup {
        images,
        ..Setup::default()
    })
    .await;
    let s = w
        .builder
        .clone()
        .env(
            "SLIPWAY_OPS_TOKENS",
            &format!("alice:{TOKEN},bob:bob-token-0123456789"),
        )
        .start()
        .await;
    (w, s)
}

async fn call(
    s: &Slipway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.admin_url);
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn api(s: &Slipway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(s, method, path, Some(TOKEN), body).await
}

async fn deployment(s: &Slipway, id: i64) -> Value {
    eventually(&format!("deployment {id} finished"), || async {
        let (_, d) = api(s, "GET", &format!("/api/deployments/{id}"), None).await;
        (d["finished"] == true).then_some(d)
    })
    .await
}

async fn deploy_sha(s: &Slipway, sha: &str) -> Value {
    let (status, body) = api(
        s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": sha })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    deployment(s, body["deployment"].as_i64().unwrap()).await
}

#[tokio::test]
async fn the_ops_api_needs_a_valid_token_and_is_never_open() {
    let (w, s) = ops_world(&[MASTER_SHA]).await;
    for (method, path) in [
        ("GET", "/api/apps"),
        ("GET", "/api/deliveries"),
        ("GET", "/api/deliveries/x"),
        ("POST", "/api/deliveries/x/replay"),
        ("POST", "/api/apps/web/deploy"),
        ("POST", "/api/apps/web/rollback"),
        ("GET", "/api/deployments"),
        ("GET", "/api/deployments/1"),
        ("POST", "/api/replay"),
    ] {
        let (status, body) = call(&s, method, path, None, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
        let (status, _) = call(&s, method, path, Some("wrong-token-0123456789"), None).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    // Both rotated tokens work.
    assert_eq!(
        call(&s, "GET", "/api/apps", Some("bob-token-0123456789"), None)
            .await
            .0,
        200
    );
    assert_eq!(api(&s, "GET", "/api/apps", None).await.0, 200);
    assert!(!s.logs().contains(TOKEN), "tokens are never logged");

    // No tokens configured: every ops route refuses, the rest still serves.
    drop(s);
    let s = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", "")
        .start()
        .await;
    for token in [None, Some(TOKEN)] {
        let (status, body) = call(&s, "GET", "/api/apps", token, None).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("ops_disabled")));
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("SLIPWAY_OPS_TOKENS"));
    }
    assert_eq!(s.get("/healthz").await.0, 200);
    let r = s.deliver("ping", "p-1", &fixture("github/ping.json")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let (w, s) = ops_world(&[MASTER_SHA]).await;
    let cases = [
        (
            "/api/apps/nope/deploy",
            json!({ "sha": MASTER_SHA }),
            404,
            "unknown_app",
            "unknown app nope",
        ),
        (
            "/api/apps/web/deploy",
            json!({ "sha": "xyz" }),
            400,
            "bad_request",
            "not a commit SHA",
        ),
        (
            "/api/apps/web/deploy",
            json!({ "sha": "abc12" }),
            400,
            "bad_request",
            "7 to 40",
        ),
        (
            "/api/apps/web/deploy",
            json!({ "commit": MASTER_SHA }),
            400,
            "bad_request",
            "invalid JSON body",
        ),
        (
            "/api/apps/web/deploy",
            json!({ "sha": OTHER }),
            404,
            "no_image",
            "no image for 9f8e7d6 in web",
        ),
        (
            "/api/apps/web/deploy",
            json!({ "sha": "fffffff" }),
            404,
            "no_image",
            "no image for fffffff in web",
        ),
        (
            "/api/apps/web/rollback",
            json!({}),
            409,
            "conflict",
            "nothing to roll back to",
        ),
        (
            "/api/apps/nope/rollback",
            json!({}),
            404,
            "unknown_app",
            "unknown app",
        ),
        (
            "/api/deliveries/nope/replay",
            json!({}),
            404,
            "not_found",
            "no delivery nope",
        ),
    ];
    for (path, body, status, code, message) in cases {
        let (got, resp) = api(&s, "POST", path, Some(body.clone())).await;
        assert_eq!(
            (got, resp["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {resp}"
        );
        assert!(
            resp["error"].as_str().unwrap().contains(message),
            "{path}: {resp}"
        );
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/api/apps/web/deploy", s.admin_url))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(api(&s, "GET", "/api/deployments/abc", None).await.0, 400);
    assert_eq!(api(&s, "GET", "/api/deployments/999", None).await.0, 404);
    assert_eq!(
        api(&s, "GET", "/api/deliveries?app=nope", None).await.0,
        404
    );
    assert_eq!(api(&s, "GET", "/api/deliveries?limit=0", None).await.0, 400);
    // Nothing was registered or deployed, and the server still serves.
    assert!(w.proxy.requests("RegisterTaskDefinition").is_empty());
    assert!(s.builder.deployments().is_empty());
    assert_eq!(deploy_sha(&s, MASTER_SHA).await["state"], "succeeded");
}

#[tokio::test]
async fn deploy_by_sha_goes_through_the_engine_and_records_who() {
    let (w, s) = ops_world(&[MASTER_SHA, OTHER]).await;
    // A short SHA is resolved against the repository's tags.
    let d = deploy_sha(&s, &OTHER[..7]).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["sha"], OTHER);
    assert_eq!(
        (d["trigger"].as_str(), d["actor"].as_str()),
        (Some("operator"), Some("alice"))
    );
    assert_eq!(d["image"], w.image_uri(OTHER).await.as_str());
    assert_eq!(
        w.service_td().await,
        d["to_task_definition"].as_str().unwrap()
    );

    // What runs now, as the API tells it.
    let (status, apps) = api(&s, "GET", "/api/apps", None).await;
    assert_eq!(status, 200);
    let web = &apps["apps"][0];
    assert_eq!(web["app"], "web");
    assert_eq!(web["commit"], OTHER);
    assert_eq!(web["image"], w.image_uri(OTHER).await.as_str());
    assert_eq!(web["task_definition"], d["to_task_definition"]);
    assert_eq!(web["last_deployment"]["state"], "succeeded");

    let (_, list) = api(&s, "GET", "/api/deployments?app=web&limit=5", None).await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_ambiguous_short_sha_is_a_conflict() {
    let a = "abcdef01abcdef01abcdef01abcdef01abcdef01";
    let b = "abcdef02abcdef02abcdef02abcdef02abcdef02";
    let (_w, s) = ops_world(Box::leak(Box::new([a, b]))).await;
    let (status, body) = api(
        &s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": "abcdef0" })),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("ambiguous"));
    let (status, _) = api(
        &s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": "abcdef01" })),
    )
    .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn rollback_after_a_good_deploy_and_after_a_failed_one() {
    let (w, s) = ops_world(&[MASTER_SHA, OTHER, THIRD]).await;
    let a = deploy_sha(&s, MASTER_SHA).await;
    let b = deploy_sha(&s, OTHER).await;
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );

    // After a good deploy: back to the one before.
    let (status, body) = api(&s, "POST", "/api/apps/web/rollback", None).await;
    assert_eq!(status, 202, "{body}");
    let r = deployment(&s, body["deployment"].as_i64().unwrap()).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(
        (r["trigger"].as_str(), r["sha"].as_str()),
        (Some("rollback"), Some(MASTER_SHA))
    );
    assert_eq!(r["to_task_definition"], a["to_task_definition"]);
    assert_eq!(
        w.service_td().await,
        a["to_task_definition"].as_str().unwrap()
    );
    let registered = w.proxy.requests("RegisterTaskDefinition").len();
    assert_eq!(registered, 2, "a rollback registers nothing new");

    // After a failed deploy (slipway rolled it back to B's... here to A's revision), an
    // explicit target is honoured.
    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let c = deploy_sha(&s, THIRD).await;
    assert_eq!(c["state"], "rolled_back", "{c}");
    assert_eq!(
        w.service_td().await,
        a["to_task_definition"].as_str().unwrap()
    );
    let (status, body) = api(
        &s,
        "POST",
        "/api/apps/web/rollback",
        Some(json!({ "to": &OTHER[..7] })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let r = deployment(&s, body["deployment"].as_i64().unwrap()).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(
        w.service_td().await,
        b["to_task_definition"].as_str().unwrap()
    );
    let (status, body) = api(
        &s,
        "POST",
        "/api/apps/web/rollback",
        Some(json!({ "to": "12345" })),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn two_deploys_of_one_service_are_serialized() {
    let (w, s) = ops_world(&[MASTER_SHA, OTHER]).await;
    // The first rollout ends when the test says so, after the second was seen waiting.
    w.proxy
        .rollouts([Rollout::Never, Rollout::Complete { after: 1 }]);
    let (_, first) = api(
        &s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": MASTER_SHA })),
    )
    .await;
    let first = first["deployment"].as_i64().unwrap();
    let rolling = eventually("the first deploy rolling out", || async {
        let (_, d) = api(&s, "GET", &format!("/api/deployments/{first}"), None).await;
        d["ecs_deployment_id"].is_string().then_some(d)
    })
    .await;
    let (_, second) = api(
        &s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": OTHER })),
    )
    .await;
    let second = second["deployment"].as_i64().unwrap();
    let (_, waiting) = api(&s, "GET", &format!("/api/deployments/{second}"), None).await;
    assert_eq!(
        waiting["state"], "pending",
        "the second waits for the service"
    );
    let ecs_id = rolling["ecs_deployment_id"].as_str().unwrap();
    w.proxy.complete_now(CLUSTER, SERVICE, ecs_id);
    let d1 = deployment(&s, first).await;
    let d2 = deployment(&s, second).await;
    assert_eq!(
        (d1["state"].as_str(), d2["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert!(
        d2["started_ms"].as_i64().unwrap() >= d1["finished_ms"].as_i64().unwrap(),
        "the second started only after the first ended: {d1} {d2}"
    );
    assert_eq!(
        w.service_td().await,
        d2["to_task_definition"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_deployment_in_flight_shows_its_progress() {
    let (w, s) = ops_world(&[MASTER_SHA]).await;
    w.proxy.rollouts([Rollout::Never]);
    let (_, body) = api(
        &s,
        "POST",
        "/api/apps/web/deploy",
        Some(json!({ "sha": MASTER_SHA })),
    )
    .await;
    let id = body["deployment"].as_i64().unwrap();
    let d = eventually("progress reported", || async {
        let (_, d) = api(&s, "GET", &format!("/api/deployments/{id}"), None).await;
        (d["running_count"].as_i64().unwrap_or(0) >= 1).then_some(d)
    })
    .await;
    assert_eq!(d["state"], "deploying");
    assert_eq!(d["desired_count"], 2);
    assert_eq!(d["finished"], false);
    assert!(d["elapsed_secs"].is_i64());
}

#[tokio::test]
async fn replaying_a_stored_delivery_starts_exactly_one_new_build() {
    let (w, s) = ops_world(&[MASTER_SHA]).await;
    w.push(&s, "orig-1", MASTER_SHA).await;
    let (status, body) = api(&s, "POST", "/api/deliveries/orig-1/replay", None).await;
    assert_eq!(status, 202, "{body}");
    let new_id = body["replay"]["delivery"].as_str().unwrap().to_owned();
    assert_ne!(new_id, "orig-1");
    eventually("the replay's build", || async {
        (w.emulator.builds(PROJECT).await.len() == 2).then_some(())
    })
    .await;
    let (_, rec) = api(&s, "GET", &format!("/api/deliveries/{new_id}"), None).await;
    assert_eq!(
        (rec["source"].as_str(), rec["actor"].as_str()),
        (Some("replay"), Some("alice"))
    );
    let (_, orig) = api(&s, "GET", "/api/deliveries/orig-1", None).await;
    assert_eq!(rec["replay_of"], orig["row"]);
    assert_eq!(
        orig["payload"]["after"], MASTER_SHA,
        "the stored payload is shown"
    );
    assert_eq!(orig["builds"][0]["state"], "build_started");
    assert_eq!(w.proxy.requests("StartBuild").len(), 2);

    // A delivery that would still be ignored.
    let r = s
        .deliver("push", "tag-1", &fixture("github/push_tag.json"))
        .await;
    assert_eq!(r.status, 200);
    let (status, body) = api(&s, "POST", "/api/deliveries/tag-1/replay", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("tag v1.2.0 is not deployed"));
    assert_eq!(w.proxy.requests("StartBuild").len(), 2);

    let (_, list) = api(&s, "GET", "/api/deliveries?state=ignored", None).await;
    assert_eq!(list["deliveries"].as_array().unwrap().len(), 1);
}

// The CLI runs as a blocking child process; the proxy needs a second worker meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_a_running_slipway() {
    let (w, s) = ops_world(&[MASTER_SHA, OTHER]).await;
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = s.builder.command();
        cmd.env("SLIPWAY_SERVER", &s.admin_url)
            .env_remove("SLIPWAY_OPS_TOKEN");
        if let Some(t) = token {
            cmd.env("SLIPWAY_OPS_TOKEN", t);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["deploy", "web", MASTER_SHA, "--wait"], Some(TOKEN));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");

    w.proxy.rollouts([Rollout::Fail { after: 1 }]);
    let (code, out, err) = cli(&["deploy", "web", OTHER, "--wait"], Some(TOKEN));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("rolled_back"), "{err}");

    let (code, out, _) = cli(&["status"], Some(TOKEN));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("web") && out.contains(&MASTER_SHA[..7]),
        "{out}"
    );
    let (code, out, _) = cli(&["deployments"], Some(TOKEN));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("rolled_back") && out.contains("succeeded"),
        "{out}"
    );

    let (code, _, err) = cli(&["status"], None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("401") && err.contains("SLIPWAY_OPS_TOKEN"),
        "{err}"
    );
    let (code, _, err) = cli(&["deploy", "nope", MASTER_SHA], Some(TOKEN));
    assert_eq!(code, Some(1));
    assert!(err.contains("404: unknown app nope"), "{err}");
    let (code, _, err) = cli(
        &["deploy", "web", OTHER.replace('9', "1").as_str()],
        Some(TOKEN),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("no image for"), "{err}");
    let (code, _, err) = cli(&["rollback", "web", "--wait"], Some(TOKEN));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing to roll back to"), "{err}");

    // A payload saved by hand goes through the same matching rules.
    let file = s.builder.state_dir().with_file_name("push.json");
    std::fs::write(&file, fixture("github/push_master.json")).unwrap();
    let (code, out, err) = cli(&["replay", "--file", file.to_str().unwrap()], Some(TOKEN));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("replay accepted"), "{out}");
    eventually("the build of the hand-saved payload", || async {
        (w.emulator.builds(PROJECT).await.len() == 1).then_some(())
    })
    .await;
    std::fs::write(&file, fixture("github/push_tag.json")).unwrap();
    let (code, _, err) = cli(&["replay", "--file", file.to_str().unwrap()], Some(TOKEN));
    assert_eq!(code, Some(1));
    assert!(err.contains("409") && err.contains("ignored"), "{err}");

    drop(s);
    let mut cmd = w.builder.command();
    let out = cmd
        .args(["status", "--server", "http://127.0.0.1:9"])
        .env("SLIPWAY_OPS_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach slipway at http://127.0.0.1:9")
    );
    let _ = (CLUSTER, SERVICE);
}
