//! Issue: verified GitHub push intake that starts CodeBuild, on a durable journal.

use serde_json::Value;

use crate::support::proxy::Fault;
use crate::support::{eventually, fixture, Emulator, Proxy, SlipwayBuilder, MASTER_SHA, SECRET};

struct World {
    emulator: Emulator,
    proxy: Proxy,
}

async fn world() -> World {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    let proxy = Proxy::start(&emulator.url).await;
    World { emulator, proxy }
}

fn env_of(start_build: &Value) -> Vec<(String, String, String)> {
    start_build["environmentVariablesOverride"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["value"].as_str().unwrap().to_owned(),
                v["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn started_builds(w: &World, n: usize) -> Vec<aws_sdk_codebuild::types::Build> {
    eventually(&format!("{n} build(s) in CodeBuild"), || async {
        let builds = w.emulator.builds("web-build").await;
        (builds.len() >= n).then_some(builds)
    })
    .await
}

async fn delivery_state(s: &SlipwayBuilder, delivery: &str, state: &str) -> Value {
    eventually(&format!("delivery {delivery} in state {state}"), || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == delivery && d["state"] == state)
    })
    .await
}

#[tokio::test]
async fn push_to_the_branch_starts_exactly_one_build_of_that_commit() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let r = s
        .deliver("push", "d-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "accepted");
    assert_eq!(r.body["delivery"], "d-1");
    assert_eq!(r.body["app"], "web");
    assert_eq!(r.body["sha"], MASTER_SHA);

    let row = delivery_state(&s.builder, "d-1", "build_started").await;
    let builds = started_builds(&w, 1).await;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].source_version(), Some(MASTER_SHA));
    assert_eq!(row["build_id"].as_str(), builds[0].id());
    assert_eq!(row["app"], "web");

    // The emulator drops the environment overrides, so read what slipway sent AWS.
    let sent = w.proxy.requests("StartBuild");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["projectName"], "web-build");
    assert_eq!(sent[0]["sourceVersion"], MASTER_SHA);
    let env = env_of(&sent[0]);
    for (name, value) in [
        ("IMAGE_TAG", MASTER_SHA),
        ("SLIPWAY_COMMIT", MASTER_SHA),
        ("SLIPWAY_DELIVERY", "d-1"),
    ] {
        assert!(
            env.contains(&(name.into(), value.into(), "PLAINTEXT".into())),
            "{name} missing from {env:?}"
        );
    }
    // A branch push's build has no tag.
    assert!(
        env.iter().all(|(name, ..)| name != "SLIPWAY_TAG"),
        "{env:?}"
    );
    let token = sent[0]["idempotencyToken"].as_str().unwrap();
    assert!(!token.is_empty());
}

#[tokio::test]
async fn form_encoded_deliveries_are_verified_over_the_raw_form_body() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let json = String::from_utf8(fixture("github/push_master.json")).unwrap();
    let body = serde_urlencoded::to_string([("payload", json.as_str())]).unwrap();
    let signature = slipway::webhook::sign(SECRET.as_bytes(), body.as_bytes());
    let r = s
        .post(
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-github-event", "push"),
                ("x-github-delivery", "form-1"),
                ("x-hub-signature-256", &signature),
            ],
            body.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["sha"], MASTER_SHA);
    let builds = started_builds(&w, 1).await;
    assert_eq!(builds[0].source_version(), Some(MASTER_SHA));

    // A form without the payload field is authentic but malformed.
    let body = b"other=1".to_vec();
    let signature = slipway::webhook::sign(SECRET.as_bytes(), &body);
    let r = s
        .post(
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-github-event", "push"),
                ("x-github-delivery", "form-2"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"].as_str().unwrap().contains("payload"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn pushes_that_do_not_deploy_are_ignored_with_a_reason() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let cases = [
        (
            "push",
            "github/push_feature.json",
            "refs/heads/feature/login is not a deployed branch",
        ),
        (
            "push",
            "github/push_new_branch.json",
            "refs/heads/release-1 is not a deployed branch",
        ),
        ("push", "github/push_branch_deleted.json", "was deleted"),
        (
            "push",
            "github/push_tag.json",
            "tag v1.2.0 is not deployed: no app of octo-org/web sets `tags`",
        ),
        (
            "push",
            "github/push_other_repo.json",
            "no app is configured for repository octo-org/api",
        ),
        (
            "issues",
            "github/issues_opened.json",
            "does not act on issues events",
        ),
    ];
    for (i, (event, file, reason)) in cases.iter().enumerate() {
        let r = s.deliver(event, &format!("ign-{i}"), &fixture(file)).await;
        assert_eq!(r.status, 200, "{file}: {}", r.text);
        assert_eq!(r.body["status"], "ignored", "{file}");
        let got = r.body["reason"].as_str().unwrap();
        assert!(got.contains(reason), "{file}: {got}");
    }
    let r = s
        .deliver("ping", "ping-1", &fixture("github/ping.json"))
        .await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("pong")));

    // Every one of them is journaled; none started anything.
    let rows = s.deliveries();
    assert_eq!(rows.len(), cases.len() + 1);
    assert!(rows.iter().all(|r| r["state"].is_null()), "{rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r["outcome"] == "ignored").count(),
        cases.len()
    );
    assert!(w.proxy.requests("StartBuild").is_empty());
    assert!(w.emulator.builds("web-build").await.is_empty());
}

#[tokio::test]
async fn bad_requests_are_refused_and_nothing_is_kept() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let body = fixture("github/push_master.json");
    let good = slipway::webhook::sign(SECRET.as_bytes(), &body);
    let wrong = slipway::webhook::sign(b"not the secret", &body);
    let sha1 = format!("sha1={}", "a".repeat(40));
    let base =
        |sig: Option<&str>, ct: Option<&str>, event: Option<&str>, delivery: Option<&str>| {
            let mut h: Vec<(String, String)> = vec![];
            if let Some(sig) = sig {
                h.push(("x-hub-signature-256".into(), sig.into()));
            }
            if let Some(ct) = ct {
                h.push(("content-type".into(), ct.into()));
            }
            if let Some(e) = event {
                h.push(("x-github-event".into(), e.into()));
            }
            if let Some(d) = delivery {
                h.push(("x-github-delivery".into(), d.into()));
            }
            h
        };
    let json = Some("application/json");
    type Case<'a> = (&'a str, Vec<(String, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no signature",
            base(None, json, Some("push"), Some("b1")),
            401,
            "missing X-Hub-Signature-256",
        ),
        (
            "wrong secret",
            base(Some(&wrong), json, Some("push"), Some("b2")),
            401,
            "does not match",
        ),
        (
            "malformed signature",
            base(Some("sha256=xyz"), json, Some("push"), Some("b3")),
            401,
            "malformed",
        ),
        (
            "sha1 only",
            {
                let mut h = base(None, json, Some("push"), Some("b4"));
                h.push(("x-hub-signature".into(), sha1.clone()));
                h
            },
            401,
            "missing X-Hub-Signature-256",
        ),
        (
            "text/plain",
            base(Some(&good), Some("text/plain"), Some("push"), Some("b5")),
            415,
            "content type",
        ),
        (
            "no content type",
            base(Some(&good), None, Some("push"), Some("b6")),
            415,
            "content type",
        ),
        (
            "no event",
            base(Some(&good), json, None, Some("b7")),
            400,
            "X-GitHub-Event",
        ),
        (
            "no delivery",
            base(Some(&good), json, Some("push"), None),
            400,
            "X-GitHub-Delivery",
        ),
    ];
    for (name, headers, status, message) in cases {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let r = s.post(&h, body.clone()).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        let error = r.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {}", r.text));
        assert!(error.contains(message), "{name}: {error}");
        // The expected signature is never echoed.
        assert!(!r.text.contains(&good[7..]), "{name} echoed the signature");
    }
    assert!(
        s.deliveries().is_empty(),
        "nothing is journaled for a refused request"
    );

    // Authentic but malformed JSON: 400, and journaled as rejected.
    let r = s.deliver("push", "bad-json", b"{\"ref\": ").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.body["error"].as_str().unwrap().contains("not valid JSON"));
    let r = s.deliver("push", "bad-sha", br#"{"ref":"refs/heads/master","after":"xyz","repository":{"full_name":"octo-org/web"}}"#).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("after"),
        "{}",
        r.text
    );
    let rows = s.deliveries();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["outcome"] == "rejected"));
    assert!(w.proxy.requests("StartBuild").is_empty());

    // The server still serves the next good request.
    let r = s.deliver("push", "after-bad", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(started_builds(&w, 1).await.len(), 1);
    assert!(
        !s.logs().contains(&good[7..]),
        "the signature is never logged"
    );
    assert!(!s.logs().contains(SECRET), "the secret is never logged");
}

#[tokio::test]
async fn oversized_bodies_get_413_whether_declared_or_streamed() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/github", s.url);

    // Declared: refused from Content-Length before any of the body is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = s.url.trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/github HTTP/1.1\r\nHost: slipway\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: big-1\r\nContent-Length: {}\r\n\r\n",
            25 * 1024 * 1024 + 1
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("an answer before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    // Streamed without a length: cut off once past the cap. The server answers 413 and
    // closes while the client is still sending, so the client sees the 413 or, when the
    // close overtakes it, a reset; either way the log says the body was refused mid-stream.
    let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
    let stream =
        futures_util::stream::iter((0..26).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let sent = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "big-2")
        // Well-formed headers (a request without them is refused before its body is read).
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match sent {
        Ok(r) => {
            assert_eq!(r.status().as_u16(), 413);
            let text = r.text().await.unwrap();
            assert!(text.contains("larger than"), "{text}");
        }
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    eventually("the refusal logged", || async {
        s.logs()
            .contains("request body too large; refused while reading it")
            .then_some(())
    })
    .await;

    assert!(s.deliveries().is_empty());
    let r = s
        .deliver("push", "small", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn a_redelivery_of_a_started_build_is_a_duplicate() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "dup-1", &body).await.status, 202);
    delivery_state(&s.builder, "dup-1", "build_started").await;
    let r = s.deliver("push", "dup-1", &body).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("duplicate")),
        "{}",
        r.text
    );

    // The same delivery id from another hook is another delivery (here, another push).
    let body = String::from_utf8(body)
        .unwrap()
        .replace(MASTER_SHA, "2222222222222222222222222222222222222222")
        .into_bytes();
    let signature = slipway::webhook::sign(SECRET.as_bytes(), &body);
    let r = s
        .post(
            &[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
                ("x-github-delivery", "dup-1"),
                ("x-github-hook-id", "9999"),
                ("x-hub-signature-256", &signature),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(started_builds(&w, 2).await.len(), 2);
    assert_eq!(w.proxy.requests("StartBuild").len(), 2);
    let rows = s.deliveries();
    assert_eq!(
        rows.iter().filter(|r| r["outcome"] == "duplicate").count(),
        1
    );
}

#[tokio::test]
async fn start_build_is_retried_by_the_journaled_schedule_alone() {
    // Before: the SDK's own attempts under each scheduled one hid the failures (and held a
    // failing CodeBuild busy for seconds per attempt).
    let w = world().await;
    w.proxy.fail("StartBuild", 3, 500, "InternalFailure");
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    assert_eq!(
        s.deliver("push", "sched-1", &fixture("github/push_master.json"))
            .await
            .status,
        202
    );
    let row = delivery_state(&s.builder, "sched-1", "build_started").await;
    assert_eq!(started_builds(&w, 1).await.len(), 1);
    assert_eq!(
        w.proxy.requests("StartBuild").len(),
        4,
        "three failures, one start"
    );
    // Every call CodeBuild saw is an attempt of the journal's schedule.
    assert_eq!(row["attempts"].as_u64(), Some(4), "{row}");
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_until_the_build_starts() {
    let w = world().await;
    w.proxy.fail("StartBuild", 2, 400, "ThrottlingException");
    w.proxy.script(
        "StartBuild",
        [Fault::Error {
            status: 503,
            code: "ServiceUnavailableException".into(),
        }],
    );
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    assert_eq!(
        s.deliver("push", "thr-1", &fixture("github/push_master.json"))
            .await
            .status,
        202
    );
    let row = delivery_state(&s.builder, "thr-1", "build_started").await;
    assert_eq!(started_builds(&w, 1).await.len(), 1);
    // The SDK retries throttling itself too; every call slipway made is counted.
    let calls = w.proxy.requests("StartBuild").len();
    assert!(
        calls >= 4,
        "expected the failures and one success, saw {calls} calls"
    );
    assert!(row["attempts"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_permanent_error_fails_the_delivery_and_a_redelivery_retries_it() {
    let emulator = Emulator::start().await; // no CodeBuild project yet
    let proxy = Proxy::start(&emulator.url).await;
    let s = SlipwayBuilder::new(&proxy.url).start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "perm-1", &body).await.status, 202);
    let row = delivery_state(&s.builder, "perm-1", "failed").await;
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("StartBuild") && reason.contains("ResourceNotFoundException"),
        "{reason}"
    );
    s.wait_log("StartBuild failed for good").await;

    // The operator creates the project; GitHub's "Redeliver" now starts the build.
    emulator.create_project("web-build", "octo-org/web").await;
    let r = s.deliver("push", "perm-1", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    delivery_state(&s.builder, "perm-1", "build_started").await;
    assert_eq!(emulator.builds("web-build").await.len(), 1);
}

#[tokio::test]
async fn a_push_accepted_while_codebuild_is_unreachable_is_built_once_after_a_crash() {
    let w = world().await;
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let builder = SlipwayBuilder::new(&closed);
    let mut s = builder.start().await;
    let r = s
        .deliver("push", "crash-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let row = eventually("a failed attempt recorded", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "crash-1" && d["reason"].as_str().is_some())
    })
    .await;
    assert_eq!(row["state"], "pending");
    // The journal's reason is the one readable sentence, never the SDK's Debug form.
    let reason = row["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        format!("CodeBuild StartBuild: could not connect to {closed}"),
        "{row}"
    );
    s.kill();

    // Redelivering while it's pending is a retry, not a duplicate (checked after restart).
    let s = builder.clone().aws_endpoint(&w.proxy.url).start().await;
    delivery_state(&s.builder, "crash-1", "build_started").await;
    let r = s
        .deliver("push", "crash-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.body["status"], "duplicate", "{}", r.text);
    assert_eq!(started_builds(&w, 1).await.len(), 1);
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
}

#[tokio::test]
async fn a_redelivery_while_pending_is_a_retry() {
    let w = world().await;
    w.proxy.fail("StartBuild", 30, 500, "InternalFailure");
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "retry-1", &body).await.status, 202);
    eventually("a failed attempt", || async {
        s.deliveries().into_iter().find(|d| {
            d["delivery"] == "retry-1" && d["state"] == "pending" && d["reason"].is_string()
        })
    })
    .await;
    let r = s.deliver("push", "retry-1", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["builds"][0]["retry"], true);
}

#[tokio::test]
async fn several_secrets_are_accepted_for_rotation() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url)
        .secret(Some(&format!("old-webhook-secret-1,{SECRET}")))
        .start()
        .await;
    let body = fixture("github/ping.json");
    for (secret, status) in [
        ("old-webhook-secret-1", 200),
        (SECRET, 200),
        ("retired", 401),
    ] {
        let signature = slipway::webhook::sign(secret.as_bytes(), &body);
        let r = s
            .post(
                &[
                    ("content-type", "application/json"),
                    ("x-github-event", "ping"),
                    ("x-github-delivery", &format!("rot-{secret}")),
                    ("x-hub-signature-256", &signature),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, status, "{secret}: {}", r.text);
    }
}

#[tokio::test]
async fn start_up_refuses_a_missing_secret_and_a_bad_config() {
    let b = SlipwayBuilder::new("http://127.0.0.1:9").secret(None);
    let config = b.write_config();
    let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("SLIPWAY_WEBHOOK_SECRET is not set"), "{err}");

    let b = SlipwayBuilder::new("http://127.0.0.1:9").apps(
        &crate::support::slipway::DEFAULT_APPS.replace("cluster = \"web\"", "clustr = \"web\""),
    );
    let config = b.write_config();
    let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("unknown field `clustr`"), "{err}");
}

#[tokio::test]
async fn health_and_readiness() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    assert_eq!(s.get("/nope").await.0, 404);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_pending_work_survives() {
    let w = world().await;
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let builder = SlipwayBuilder::new(&closed);
    let mut s = builder.start().await;
    assert_eq!(
        s.deliver("push", "term-1", &fixture("github/push_master.json"))
            .await
            .status,
        202
    );
    let status = s.terminate();
    assert!(status.success(), "exit status {status}");
    s.wait_log("stopped").await;
    let rows = builder.deliveries();
    assert_eq!(rows[0]["state"], "pending");

    let s = builder.clone().aws_endpoint(&w.proxy.url).start().await;
    delivery_state(&s.builder, "term-1", "build_started").await;
    assert_eq!(started_builds(&w, 1).await.len(), 1);
}

#[tokio::test]
async fn one_push_feeds_every_app_of_its_repository() {
    let w = world().await;
    w.emulator
        .create_project("worker-build", "octo-org/web")
        .await;
    let apps = format!(
        "{}\n[[app]]\nname = \"worker\"\nrepository = \"octo-org/web\"\ncodebuild_project = \"worker-build\"\ncluster = \"web\"\nservice = \"worker\"\ncontainer = \"worker\"\necr_repository = \"web\"\nimage_tag = \"{{short_sha}}\"\n",
        crate::support::slipway::DEFAULT_APPS
    );
    let s = SlipwayBuilder::new(&w.proxy.url).apps(&apps).start().await;
    let r = s
        .deliver("push", "multi-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let apps: Vec<&str> = r.body["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["web", "worker"]);
    eventually("two StartBuild calls", || async {
        (w.proxy.requests("StartBuild").len() == 2).then_some(())
    })
    .await;
    let sent = w.proxy.requests("StartBuild");
    let worker = sent
        .iter()
        .find(|b| b["projectName"] == "worker-build")
        .unwrap();
    assert!(env_of(worker).contains(&(
        "IMAGE_TAG".into(),
        MASTER_SHA[..7].into(),
        "PLAINTEXT".into()
    )));
}

#[tokio::test]
async fn killed_after_codebuild_started_the_build_but_before_the_answer_no_second_build() {
    let w = world().await;
    // CodeBuild starts the build, but slipway dies before it hears so.
    w.proxy.script(
        "StartBuild",
        [Fault::DelayAnswer(std::time::Duration::from_secs(600))],
    );
    let builder = SlipwayBuilder::new(&w.proxy.url);
    let mut s = builder.start().await;
    assert_eq!(
        s.deliver("push", "lost-answer", &fixture("github/push_master.json"))
            .await
            .status,
        202
    );
    started_builds(&w, 1).await;
    s.kill();
    assert_eq!(builder.deliveries()[0]["state"], "pending");

    let s = builder.start().await;
    let row = delivery_state(&s.builder, "lost-answer", "build_started").await;
    let builds = w.emulator.builds("web-build").await;
    assert_eq!(
        builds.len(),
        1,
        "the restart found the build instead of starting another"
    );
    assert_eq!(row["build_id"].as_str(), builds[0].id());
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
    s.wait_log("found the build a previous attempt started")
        .await;
}

#[tokio::test]
async fn the_same_push_from_two_hooks_builds_once() {
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url).start().await;
    let body = fixture("github/push_master.json");
    assert_eq!(s.deliver("push", "repo-hook-1", &body).await.status, 202);
    delivery_state(&s.builder, "repo-hook-1", "build_started").await;
    // The organisation's hook sends the same push with its own delivery id.
    let r = s.deliver("push", "org-hook-7", &body).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("duplicate")),
        "{}",
        r.text
    );
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
}

#[tokio::test]
async fn a_second_slipway_told_not_to_wait_refuses_to_start_naming_the_first() {
    let w = world().await;
    let builder = SlipwayBuilder::new(&w.proxy.url).extra("[journal]\nlock_wait_secs = 0\n");
    let first = builder.start().await;
    let config = builder.config_path();
    let (status, _, err) = builder.run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("waiting for the journal lock, held by slipway pid")
            && err.contains(&format!("pid {} on", first.pid())),
        "{err}"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world().await;
    let s = SlipwayBuilder::new(&w.proxy.url)
        .extra("[server]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n")
        .start()
        .await;
    let addr = s.url.trim_start_matches("http://").to_owned();

    // Headers that never finish: the connection is closed.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: slipway\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the server kept a half-sent request open");

    // A body that never finishes: 408.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /webhooks/github HTTP/1.1\r\nHost: slipway\r\nContent-Type: application/json\r\n\
             X-GitHub-Event: push\r\nX-GitHub-Delivery: slow-1\r\nX-Hub-Signature-256: sha256={}\r\n\
             Content-Length: 100\r\n\r\n{{\"ref\":",
            "0".repeat(64)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    assert!(s.deliveries().is_empty());
    let r = s
        .deliver("push", "after-slow", &fixture("github/push_master.json"))
        .await;
    assert_eq!(r.status, 202);
}
