//! Issue 11: commit statuses, GitHub Deployments and recovery of missed deliveries, against a
//! scripted fake of GitHub (and, for the contract, GitHub's OpenAPI description through Prism).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::deploy::{Deploy, Setup};
use crate::support::github_fake::{
    rsa_key_pair, Delivery, GithubFake, Scripted, APP_HOOK_ID, APP_ID, INSTALLATION_ID,
    STATIC_TOKEN,
};
use crate::support::proxy::Rollout;
use crate::support::slipway::Slipway;
use crate::support::world::PROJECT;
use crate::support::{eventually, fixture, free_port, MASTER_SHA, SECRET};

const NEWER_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const OLDER_SHA: &str = "0a0b0c0d0e0f10111213141516171819202122ab";
const BROKEN_SHA: &str = "abababababababababababababababababababab";
const OPS_TOKEN: &str = "ops-token-0123456789abcdef";
const HOOK_ID: u64 = 4242;

/// A deploy world whose slipway talks to `api_url` with a token.
async fn world(api_url: &str, github_extra: &str, images: &'static [&'static str]) -> Deploy {
    let extra = format!("[github]\napi_url = \"{api_url}\"\n{github_extra}\n");
    let mut w = Deploy::with(Setup {
        extra: &extra,
        images,
        ..Setup::default()
    })
    .await;
    w.builder = w
        .builder
        .clone()
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .env("SLIPWAY_OPS_TOKENS", &format!("ops:{OPS_TOKEN}"));
    w
}

async fn api(s: &Slipway, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", s.admin_url))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `slipway <command>` against `s` without blocking the runtime the fakes run on.
async fn cli(s: &Slipway, command: &str) -> std::process::Output {
    let mut cmd = s.builder.command();
    cmd.env("SLIPWAY_SERVER", &s.admin_url)
        .env("SLIPWAY_OPS_TOKEN", OPS_TOKEN)
        .arg(command);
    tokio::process::Command::from(cmd).output().await.unwrap()
}

fn push_body(sha: &str) -> Vec<u8> {
    String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replace(MASTER_SHA, sha)
        .into_bytes()
}

/// slipway's store exists from now on, as if slipway had run once: recovery asks for no
/// delivery older than it. In the DynamoDB pass that is the table (made now, its creation
/// time journaled), not a journal file.
fn journal_exists(w: &Deploy) {
    if w.builder.store_table().is_none() {
        slipway::store::Store::open(&w.builder.state_dir())
            .unwrap()
            .close();
    }
}

/// Waits until `sha`'s statuses for `context` reach `n` and returns them.
async fn statuses(gh: &GithubFake, sha: &str, context: &str, n: usize) -> Vec<(String, String)> {
    eventually(&format!("{n} {context} statuses of {sha}"), || async {
        let s = gh.statuses(sha, context);
        (s.len() >= n).then_some(s)
    })
    .await
}

fn states(statuses: &[(String, String)]) -> Vec<&str> {
    statuses.iter().map(|(s, _)| s.as_str()).collect()
}

/// The GitHub deployment created for `sha`, once its statuses reach `n`: (id, body, states).
async fn deployment(gh: &GithubFake, sha: &str, n: usize) -> (i64, Value, Vec<String>) {
    eventually(&format!("{n} deployment statuses of {sha}"), || async {
        let (id, body) = gh
            .deployments()
            .into_iter()
            .find(|(_, b)| b["ref"] == sha)?;
        let states = gh.deployment_states(id);
        (states.len() >= n).then_some((id, body, states))
    })
    .await
}

#[tokio::test]
async fn a_successful_deploy_shows_on_the_commit_and_in_the_environment() {
    let gh = GithubFake::start().await;
    let w = world(&gh.url, "", &[MASTER_SHA, NEWER_SHA]).await;
    let s = w.builder.start().await;
    assert_eq!(
        w.ship(&s, "gh-ok-1", MASTER_SHA).await["state"],
        "succeeded"
    );

    let build = statuses(&gh, MASTER_SHA, "slipway/build", 2).await;
    assert_eq!(states(&build), ["pending", "success"], "{build:?}");
    let deploy = statuses(&gh, MASTER_SHA, "slipway/deploy/web", 2).await;
    assert_eq!(states(&deploy), ["pending", "success"], "{deploy:?}");
    assert_eq!(deploy[1].1, format!("deployed {}", &MASTER_SHA[..7]));
    // The build's statuses link to its CodeBuild log.
    let success = gh
        .requests_to(
            "POST",
            &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        )
        .into_iter()
        .find(|r| r.body["context"] == "slipway/build" && r.body["state"] == "success")
        .unwrap();
    assert!(success.body["target_url"]
        .as_str()
        .unwrap()
        .starts_with("https://console.aws.amazon.com/"));

    let (first, body, first_states) = deployment(&gh, MASTER_SHA, 2).await;
    assert_eq!(body["environment"], "web");
    assert_eq!(body["auto_merge"], false);
    assert_eq!(body["required_contexts"], json!([]));
    assert_eq!(first_states, ["in_progress", "success"]);

    // The next deploy replaces it: the old deployment goes inactive.
    assert_eq!(w.ship(&s, "gh-ok-2", NEWER_SHA).await["state"], "succeeded");
    let (second, _, second_states) = deployment(&gh, NEWER_SHA, 2).await;
    assert_ne!(first, second);
    assert_eq!(second_states, ["in_progress", "success"]);
    eventually("the replaced deployment goes inactive", || async {
        (gh.deployment_states(first) == ["in_progress", "success", "inactive"]).then_some(())
    })
    .await;
    assert_eq!(
        gh.deployments().len(),
        2,
        "one GitHub deployment per deploy"
    );
}

#[tokio::test]
async fn failures_rollbacks_and_supersedes_say_what_happened() {
    let gh = GithubFake::start().await;
    let w = world(&gh.url, "", &[MASTER_SHA, NEWER_SHA, OLDER_SHA]).await;
    let s = w.builder.start().await;

    // A failed build.
    let arn = w.push(&s, "gh-bfail", BROKEN_SHA).await;
    w.complete(&arn, "FAILED", BROKEN_SHA).await;
    let build = statuses(&gh, BROKEN_SHA, "slipway/build", 2).await;
    assert_eq!(states(&build), ["pending", "failure"]);
    assert_eq!(build[1].1, "build failed: build FAILED");

    // A rollout that fails and is rolled back.
    w.proxy.rollouts([Rollout::Fail { after: 2 }]);
    assert_eq!(
        w.ship(&s, "gh-rb", MASTER_SHA).await["state"],
        "rolled_back"
    );
    let deploy = statuses(&gh, MASTER_SHA, "slipway/deploy/web", 2).await;
    assert_eq!(states(&deploy), ["pending", "failure"]);
    assert!(deploy[1].1.starts_with("rolled back: "), "{deploy:?}");
    let (_, _, states_rb) = deployment(&gh, MASTER_SHA, 2).await;
    assert_eq!(states_rb, ["in_progress", "failure"]);

    // An older commit delivered after a newer one was deployed is superseded.
    let body = String::from_utf8(fixture("github/push_master.json")).unwrap();
    let before = serde_json::from_str::<Value>(&body).unwrap()["before"]
        .as_str()
        .unwrap()
        .to_owned();
    let newer = body
        .replace(&before, OLDER_SHA)
        .replace(MASTER_SHA, NEWER_SHA);
    assert_eq!(
        s.deliver("push", "gh-new", newer.as_bytes()).await.status,
        202
    );
    let newer_arn = eventually("the newer build", || async {
        let builds = w.emulator.builds(PROJECT).await;
        builds
            .iter()
            .find(|b| b.source_version() == Some(NEWER_SHA))
            .and_then(|b| b.arn().map(str::to_owned))
    })
    .await;
    w.complete(&newer_arn, "SUCCEEDED", NEWER_SHA).await;
    assert_eq!(w.finished(NEWER_SHA).await["state"], "succeeded");
    let older_arn = w.push(&s, "gh-old", OLDER_SHA).await;
    w.complete(&older_arn, "SUCCEEDED", OLDER_SHA).await;
    assert_eq!(w.finished(OLDER_SHA).await["state"], "superseded");
    let deploy = statuses(&gh, OLDER_SHA, "slipway/deploy/web", 1).await;
    assert_eq!(states(&deploy), ["error"]);
    assert!(
        deploy[0].1.starts_with("superseded by deployment"),
        "{deploy:?}"
    );
    let (_, _, states_sup) = deployment(&gh, OLDER_SHA, 1).await;
    assert_eq!(states_sup, ["error"]);
}

#[tokio::test]
async fn app_installation_tokens_are_minted_with_a_verified_jwt_and_refreshed() {
    let (private, public) = rsa_key_pair();
    let gh = GithubFake::start().await;
    gh.app_public_key(&public);
    // Shorter than slipway's refresh margin: every use needs a fresh token.
    gh.token_ttl(Duration::from_secs(120));
    let extra = format!("app_id = {APP_ID}\ninstallation_id = {INSTALLATION_ID}\n");
    let mut w = world(&gh.url, &extra, &[MASTER_SHA, NEWER_SHA]).await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_APP_KEY", &private);
    let s = w.builder.start().await;
    w.push(&s, "app-1", MASTER_SHA).await;
    statuses(&gh, MASTER_SHA, "slipway/build", 1).await;
    w.push(&s, "app-2", NEWER_SHA).await;
    statuses(&gh, NEWER_SHA, "slipway/build", 1).await;

    let tokens = gh.tokens();
    assert_eq!(tokens.len(), 2, "a token close to expiry is replaced");
    let posts = gh.requests_to("POST", "/repos/");
    assert_eq!(posts.len(), 2);
    for (post, token) in posts.iter().zip(&tokens) {
        assert_eq!(
            post.bearer.as_deref(),
            Some(token.as_str()),
            "the fresh token is used"
        );
    }
    // No request was refused: every JWT verified with the App's public key.
    assert!(gh.requests().iter().all(|r| r.bearer.is_some()));
    let apps = api(&s, "/api/apps").await;
    assert_eq!(apps["github"]["requests_failed"], 0, "{apps}");

    // A long-lived token is reused.
    let gh2 = GithubFake::start().await;
    gh2.app_public_key(&public);
    let w2 = world(&gh2.url, &extra, &[MASTER_SHA, NEWER_SHA]).await;
    let s2 = w2
        .builder
        .clone()
        .env("SLIPWAY_GITHUB_APP_KEY", &private)
        .start()
        .await;
    w2.push(&s2, "app-3", MASTER_SHA).await;
    statuses(&gh2, MASTER_SHA, "slipway/build", 1).await;
    w2.push(&s2, "app-4", NEWER_SHA).await;
    statuses(&gh2, NEWER_SHA, "slipway/build", 1).await;
    assert_eq!(gh2.tokens().len(), 1);
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_gets_no_token_and_nothing_else_breaks() {
    let (private, _) = rsa_key_pair();
    let (_, other_public) = rsa_key_pair();
    let gh = GithubFake::start().await;
    gh.app_public_key(&other_public);
    let extra = format!("app_id = {APP_ID}\ninstallation_id = {INSTALLATION_ID}\n");
    let mut w = world(&gh.url, &extra, &[MASTER_SHA]).await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_APP_KEY", &private);
    let s = w.builder.start().await;
    assert_eq!(
        w.ship(&s, "badkey-1", MASTER_SHA).await["state"],
        "succeeded"
    );
    let apps = eventually("the failure is shown", || async {
        let apps = api(&s, "/api/apps").await;
        (apps["github"]["requests_failed"].as_u64() > Some(0)).then_some(apps)
    })
    .await;
    let why = apps["github"]["last_error"].as_str().unwrap();
    assert!(
        why.contains("401") && why.contains("installation token"),
        "{why}"
    );
    assert!(gh.tokens().is_empty());
    assert!(!s.logs().contains("BEGIN PRIVATE KEY"));
}

#[tokio::test]
async fn a_push_missed_while_slipway_was_down_is_redelivered_once() {
    let gh = GithubFake::start().await;
    let hooks = format!(
        "recover_window_hours = 1\n[[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n"
    );
    let w = world(&gh.url, &hooks, &[MASTER_SHA]).await;
    journal_exists(&w);
    // slipway is down: GitHub cannot connect.
    assert_eq!(
        gh.deliver(HOOK_ID, "push", "lost-1", &push_body(MASTER_SHA))
            .await,
        0
    );
    // Not to be recovered: too old, not a push, or delivered fine.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    gh.add_delivery(Delivery {
        id: 1,
        hook_id: HOOK_ID,
        guid: "too-old".into(),
        event: "push".into(),
        status_code: 0,
        delivered_at: two_hours_ago,
        redelivery: false,
        body: push_body(MASTER_SHA),
    });
    assert_eq!(gh.deliver(HOOK_ID, "ping", "ping-1", b"{}").await, 0);

    let mut s = w.builder.start().await;
    gh.webhook(&s.url, SECRET);
    let row = eventually("the lost push is built", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "lost-1" && d["state"] == "build_started")
    })
    .await;
    assert_eq!(row["app"], "web");
    let attempts = gh.requests_to(
        "POST",
        &format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/"),
    );
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(attempts[0].path.ends_with("/attempts"));

    let rec = api(&s, "/api/github/recoveries").await;
    let rows = rec["recoveries"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rec}");
    assert_eq!(rows[0]["delivery"], "lost-1");
    assert_eq!(rows[0]["actor"], "github-recovery");
    assert_eq!(rows[0]["outcome"], "requested");
    assert_eq!(rows[0]["status_code"], 0);
    // The CLI shows it too.
    let out = cli(&s, "recoveries").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("lost-1") && text.contains("github-recovery"),
        "{text}"
    );

    // A restart looks again: nothing is redelivered twice, nothing built twice.
    s.terminate();
    let s = w.builder.start().await;
    gh.webhook(&s.url, SECRET);
    eventually("the recovery round after the restart", || async {
        s.logs()
            .contains("delivery recovery round finished")
            .then_some(())
    })
    .await;
    assert_eq!(
        gh.requests_to(
            "POST",
            &format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/")
        )
        .len(),
        1
    );
    assert_eq!(w.emulator.builds(PROJECT).await.len(), 1);
}

#[tokio::test]
async fn a_failing_or_unreachable_github_holds_up_no_build_and_no_deploy() {
    // GitHub answers 500 to everything.
    let gh = GithubFake::start().await;
    gh.script("POST", "/repos/", vec![Scripted::status(500); 200]);
    let w = world(&gh.url, "", &[MASTER_SHA]).await;
    let s = w.builder.start().await;
    assert_eq!(
        w.ship(&s, "gh500-1", MASTER_SHA).await["state"],
        "succeeded"
    );
    let apps = eventually("the failures are counted", || async {
        let apps = api(&s, "/api/apps").await;
        (apps["github"]["requests_failed"].as_u64() > Some(0)).then_some(apps)
    })
    .await;
    assert!(
        apps["github"]["last_error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{apps}"
    );
    // `slipway status` shows it.
    let out = cli(&s, "status").await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("github:") && text.contains("failed"),
        "{text}{err}"
    );
    drop(s);

    // Nobody listens at GitHub's address at all.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let w = world(&dead, "", &[MASTER_SHA]).await;
    let s = w.builder.start().await;
    assert_eq!(
        w.ship(&s, "ghdown-1", MASTER_SHA).await["state"],
        "succeeded"
    );
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_rate_limited_request_is_retried_after_the_reset() {
    let gh = GithubFake::start().await;
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    gh.script(
        "POST",
        &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        vec![Scripted::rate_limited(reset)],
    );
    let w = world(&gh.url, "", &[MASTER_SHA]).await;
    let s = w.builder.start().await;
    w.push(&s, "rl-1", MASTER_SHA).await;
    let build = statuses(&gh, MASTER_SHA, "slipway/build", 2).await;
    // The same status twice: refused, then accepted after the reset.
    assert_eq!(build[0], build[1]);
    let posts = gh.requests_to(
        "POST",
        &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
    );
    let reset_at = UNIX_EPOCH + Duration::from_secs(reset);
    assert!(posts[1].at >= reset_at, "retried before the reset");
    let apps = api(&s, "/api/apps").await;
    assert_eq!(apps["github"]["requests_failed"], 0, "{apps}");
}

fn client(url: &str) -> slipway::github::Client {
    slipway::github::Client::new(
        url,
        slipway::github::Credentials::Token(STATIC_TOKEN.into()),
        Arc::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn changed_files_come_from_the_first_page_and_only_an_ahead_comparison_is_complete() {
    let gh = GithubFake::start().await;
    gh.compare(
        vec![
            json!({ "filename": "web/src/main.rs", "status": "modified" }),
            json!({ "filename": "api/new.rs", "previous_filename": "api/old.rs", "status": "renamed" }),
        ],
        3,
    );
    let files =
        slipway::github::changed_files(&client(&gh.url), "octo-org/web", OLDER_SHA, MASTER_SHA)
            .await
            .unwrap();
    assert_eq!(files.files, ["api/new.rs", "api/old.rs", "web/src/main.rs"]);
    assert!(files.complete);
    // The files come only on the first page: the later pages of commits are not walked.
    let pages = gh.requests_to(
        "GET",
        &format!("/repos/octo-org/web/compare/{OLDER_SHA}...{MASTER_SHA}"),
    );
    assert_eq!(pages.len(), 1, "{pages:?}");

    // A force-push: from the merge base, the dropped commits' files are missing.
    gh.compare_status("diverged");
    let files =
        slipway::github::changed_files(&client(&gh.url), "octo-org/web", OLDER_SHA, MASTER_SHA)
            .await
            .unwrap();
    assert_eq!(files.status, "diverged");
    assert!(!files.complete);
    gh.compare_status("ahead");

    // GitHub cuts the list at 300 files: the caller must know.
    let many = (0..300)
        .map(|i| json!({ "filename": format!("f{i}") }))
        .collect();
    gh.compare(many, 1);
    let files =
        slipway::github::changed_files(&client(&gh.url), "octo-org/web", OLDER_SHA, MASTER_SHA)
            .await
            .unwrap();
    assert_eq!(files.files.len(), 300);
    assert!(!files.complete);

    // An unknown commit is an error that says so.
    gh.script(
        "GET",
        "/repos/octo-org/web/compare/",
        vec![Scripted::status(404)],
    );
    let err = slipway::github::changed_files(&client(&gh.url), "octo-org/web", "nope", MASTER_SHA)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

/// Prism, GitHub's OpenAPI description and a validating proxy in front of `upstream`: a
/// request the description rejects is answered 422 and never reaches the fake.
struct Prism {
    url: String,
    spec: String,
    _child: tokio::process::Child,
}

impl Prism {
    async fn start(upstream: &str) -> Prism {
        let root = env!("CARGO_MANIFEST_DIR");
        let prism = format!("{root}/.local/npm/node_modules/.bin/prism");
        let spec = format!(
            "{root}/.local/npm/node_modules/@octokit/openapi/generated/api.github.com.json"
        );
        assert!(
            std::path::Path::new(&prism).exists() && std::path::Path::new(&spec).exists(),
            "Prism or GitHub's OpenAPI description is missing: run scripts/setup-github-contract.sh"
        );
        let port = free_port();
        let mut child = tokio::process::Command::new(&prism)
            .args([
                "proxy",
                &spec,
                upstream,
                "--errors",
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prism");
        let url = format!("http://127.0.0.1:{port}");
        // Loading GitHub's description takes Prism a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(child.try_wait().unwrap().is_none(), "prism exited");
            assert!(std::time::Instant::now() < deadline, "prism did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Prism {
            url,
            spec,
            _child: child,
        }
    }
}

#[tokio::test]
async fn every_request_slipway_makes_is_valid_by_githubs_openapi_description() {
    let (private, public) = rsa_key_pair();
    let gh = GithubFake::start().await;
    gh.app_public_key(&public);
    let prism = Prism::start(&gh.url).await;
    gh.use_spec_examples(&prism.spec);

    // The control: a request the description rejects never gets through.
    let bad = reqwest::Client::new()
        .post(format!(
            "{}/repos/octo-org/web/statuses/{MASTER_SHA}",
            prism.url
        ))
        .bearer_auth(STATIC_TOKEN)
        .json(&json!({ "state": "deployed", "context": "slipway/build" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("state"));
    assert!(
        gh.requests().is_empty(),
        "the invalid request reached GitHub"
    );

    // slipway as an App, with a repository hook and the App's hook to recover.
    let extra = format!(
        "app_id = {APP_ID}\ninstallation_id = {INSTALLATION_ID}\n\
         [[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n\
         [[github.hook]]\nid = {APP_HOOK_ID}\n"
    );
    let mut w = world(&prism.url, &extra, &[MASTER_SHA, NEWER_SHA, BROKEN_SHA]).await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_APP_KEY", &private);
    journal_exists(&w);
    assert_eq!(
        gh.deliver(HOOK_ID, "push", "contract-lost", &push_body(BROKEN_SHA))
            .await,
        0
    );
    let s = w.builder.start().await;
    gh.webhook(&s.url, SECRET);

    // Recovery: the deliveries of both hooks are listed, the lost push redelivered.
    eventually("the lost push is redelivered", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "contract-lost" && d["state"] == "build_started")
    })
    .await;
    eventually("the first recovery round", || async {
        s.logs()
            .contains("delivery recovery round finished")
            .then_some(())
    })
    .await;
    assert_eq!(gh.requests_to("GET", "/app/hook/deliveries").len(), 1);
    // Statuses, deployments, deployment statuses, and `inactive` for the replaced one.
    assert_eq!(
        w.ship(&s, "contract-1", MASTER_SHA).await["state"],
        "succeeded"
    );
    assert_eq!(
        w.ship(&s, "contract-2", NEWER_SHA).await["state"],
        "succeeded"
    );
    let (first, _, _) = deployment(&gh, MASTER_SHA, 2).await;
    eventually("the replaced deployment goes inactive", || async {
        (gh.deployment_states(first).last().map(String::as_str) == Some("inactive")).then_some(())
    })
    .await;
    // Failures, rollbacks and supersedes use the same two status endpoints; the compare call
    // is the last kind of request slipway makes.
    let files =
        slipway::github::changed_files(&client(&prism.url), "octo-org/web", OLDER_SHA, MASTER_SHA)
            .await
            .unwrap();
    assert!(files.complete && !files.files.is_empty(), "{files:?}");

    let apps = api(&s, "/api/apps").await;
    assert_eq!(
        apps["github"]["requests_failed"], 0,
        "Prism refused a request: {apps}"
    );
    let kinds: std::collections::BTreeSet<String> = gh
        .requests()
        .iter()
        .map(|r| {
            let p = r.path.split('?').next().unwrap();
            let shape: Vec<&str> = p
                .split('/')
                .map(|seg| {
                    if seg.chars().all(|c| c.is_ascii_hexdigit()) && !seg.is_empty() {
                        "N"
                    } else {
                        seg
                    }
                })
                .collect();
            format!("{} {}", r.method, shape.join("/"))
        })
        .collect();
    for expected in [
        "POST /app/installations/N/access_tokens",
        "GET /app/hook/deliveries",
        "GET /repos/octo-org/web/hooks/N/deliveries",
        "POST /repos/octo-org/web/hooks/N/deliveries/N/attempts",
        "POST /repos/octo-org/web/statuses/N",
        "POST /repos/octo-org/web/deployments",
        "POST /repos/octo-org/web/deployments/N/statuses",
    ] {
        assert!(kinds.contains(expected), "{expected} not seen: {kinds:?}");
    }
}

fn jwt(private_pem: &str, iat: u64, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    let claims = json!({ "iat": iat, "exp": exp, "iss": APP_ID.to_string() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

async fn post(url: &str, bearer: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fake_mints_tokens_only_for_a_valid_jwt_and_refuses_expired_tokens() {
    let (private, public) = rsa_key_pair();
    let (other, _) = rsa_key_pair();
    let gh = GithubFake::start().await;
    gh.app_public_key(&public);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = format!(
        "{}/app/installations/{INSTALLATION_ID}/access_tokens",
        gh.url
    );
    // Signed with another key, or valid longer than GitHub allows: refused.
    assert_eq!(
        post(&mint, &jwt(&other, now - 60, now + 500), json!(null))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&mint, &jwt(&private, now - 60, now + 900), json!(null))
            .await
            .0,
        401
    );
    assert!(gh.tokens().is_empty());
    let (status, body) = post(&mint, &jwt(&private, now - 60, now + 500), json!(null)).await;
    assert_eq!(status, 201);
    let token = body["token"].as_str().unwrap().to_owned();
    let statuses = format!("{}/repos/octo-org/web/statuses/{MASTER_SHA}", gh.url);
    let status = json!({ "state": "pending", "context": "c" });
    assert_eq!(post(&statuses, &token, status.clone()).await.0, 201);
    assert_eq!(post(&statuses, "ghs_made_up", status.clone()).await.0, 401);
    // A token that has expired is refused.
    gh.token_ttl(Duration::ZERO);
    let (_, body) = post(&mint, &jwt(&private, now - 60, now + 500), json!(null)).await;
    let expired = body["token"].as_str().unwrap().to_owned();
    assert_eq!(post(&statuses, &expired, status).await.0, 401);
}

#[tokio::test]
async fn the_fake_serves_scripted_answers_in_order_then_its_own() {
    let gh = GithubFake::start().await;
    gh.script(
        "POST",
        "/repos/octo-org/web/statuses/",
        vec![Scripted::status(500), Scripted::rate_limited(42)],
    );
    let url = format!("{}/repos/octo-org/web/statuses/{MASTER_SHA}", gh.url);
    let body = json!({ "state": "success", "context": "c" });
    assert_eq!(post(&url, STATIC_TOKEN, body.clone()).await.0, 500);
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(STATIC_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset"], "42");
    assert_eq!(post(&url, STATIC_TOKEN, body).await.0, 201);
    assert_eq!(
        gh.statuses(MASTER_SHA, "c").len(),
        3,
        "every request is recorded"
    );
}

#[tokio::test]
async fn a_redelivery_that_fails_again_is_asked_for_again_at_most_three_times() {
    let gh = GithubFake::start().await;
    let hooks = format!("[[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n");
    let w = world(&gh.url, &hooks, &[MASTER_SHA]).await;
    journal_exists(&w);
    assert_eq!(
        gh.deliver(HOOK_ID, "push", "unlucky", &push_body(MASTER_SHA))
            .await,
        0
    );
    let attempts_path = format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/");
    for round in 1..=4 {
        let s = w.builder.start().await;
        // The hook's secret does not match slipway's: every redelivery is refused (or, sent
        // before the fake learns the new address, cannot connect).
        gh.webhook(&s.url, "not-the-secret");
        eventually("a recovery round", || async {
            s.logs()
                .contains("delivery recovery round finished")
                .then_some(())
        })
        .await;
        let asked = gh.requests_to("POST", &attempts_path).len();
        assert_eq!(asked, round.min(3), "round {round}");
        eventually("GitHub's redelivery", || async {
            let redelivered = gh.deliveries().iter().filter(|d| d.redelivery).count();
            (redelivered == asked).then_some(())
        })
        .await;
        assert!(gh
            .deliveries()
            .iter()
            .filter(|d| d.redelivery)
            .all(|d| !(200..300).contains(&d.status_code)));
        if round == 4 {
            let rec = api(&s, "/api/github/recoveries").await;
            assert_eq!(rec["recoveries"][0]["requests"], 3, "{rec}");
        }
    }
    assert!(w.emulator.builds(PROJECT).await.is_empty());
}

#[tokio::test]
async fn with_credentials_a_capped_push_asks_the_compare_api_and_builds_only_what_changed() {
    let apps = r#"
[[app]]
name = "web"
repository = "octo-org/monorepo"
codebuild_project = "web-build"
cluster = "prod"
service = "web"
container = "web"
ecr_repository = "web"
paths = ["services/web/**"]

[[app]]
name = "api"
repository = "octo-org/monorepo"
codebuild_project = "api-build"
cluster = "prod"
service = "api"
container = "api"
ecr_repository = "api"
paths = ["services/api/**"]
"#;
    let emulator = crate::support::Emulator::start().await;
    emulator
        .create_project("web-build", "octo-org/monorepo")
        .await;
    emulator
        .create_project("api-build", "octo-org/monorepo")
        .await;
    let gh = GithubFake::start().await;
    gh.compare(vec![json!({ "filename": "services/api/main.rs" })], 1);
    let s = crate::support::SlipwayBuilder::new(&emulator.url)
        .apps(apps)
        .extra(&format!("[github]\napi_url = \"{}\"\n", gh.url))
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .start()
        .await;
    // 20 commits: the payload may have left some out, so slipway asks GitHub.
    let r = s
        .deliver(
            "push",
            "capped-gh",
            &fixture("github/monorepo/push_capped.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let built: Vec<&str> = r.body["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["app"].as_str().unwrap())
        .collect();
    assert_eq!(built, ["api"], "{}", r.text);
    assert_eq!(
        gh.requests_to("GET", "/repos/octo-org/monorepo/compare/")
            .len(),
        1
    );
}

#[tokio::test]
async fn updates_github_could_not_take_are_posted_after_a_crash() {
    // Before: they waited in memory and were gone with the process.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = world(&format!("http://{addr}"), "", &[MASTER_SHA]).await;
    let mut s = w.builder.start().await;
    // Nobody listens at GitHub's address yet: the build's status cannot be posted.
    w.push(&s, "outbox-1", MASTER_SHA).await;
    eventually("the post failed", || async {
        let apps = api(&s, "/api/apps").await;
        (apps["github"]["requests_failed"].as_u64() > Some(0)).then_some(())
    })
    .await;
    s.kill();
    let gh = GithubFake::start_on(&addr).await;
    let _s = w.builder.start().await;
    let posted = statuses(&gh, MASTER_SHA, "slipway/build", 1).await;
    assert_eq!(posted[0].0, "pending", "{posted:?}");
    assert_eq!(posted[0].1, "building", "{posted:?}");
}

#[tokio::test]
async fn a_build_codebuild_refuses_to_start_fails_on_the_commit() {
    let gh = GithubFake::start().await;
    let w = world(&gh.url, "", &[MASTER_SHA]).await;
    w.proxy.fail("StartBuild", 1, 400, "InvalidInputException");
    let s = w.builder.start().await;
    assert_eq!(
        s.deliver("push", "refused-1", &push_body(MASTER_SHA))
            .await
            .status,
        202
    );
    let posted = statuses(&gh, MASTER_SHA, "slipway/build", 1).await;
    assert_eq!(posted[0].0, "failure", "{posted:?}");
    assert!(
        posted[0].1.contains("CodeBuild did not start it"),
        "{posted:?}"
    );
    assert!(!posted[0].1.contains("InvalidInputException"), "{posted:?}");
}

/// A clock whose sleeps return at once, moving its time forward by as much: slipway's waits
/// (rate limits, the outbox's backoff) take no real time, and the fake records requests at
/// this clock's time.
#[derive(Default)]
struct FastClock {
    ahead_ms: std::sync::atomic::AtomicU64,
}

impl FastClock {
    fn system_time(&self) -> SystemTime {
        SystemTime::now()
            + Duration::from_millis(self.ahead_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl slipway::clock::Clock for FastClock {
    fn now(&self) -> time::OffsetDateTime {
        self.system_time().into()
    }

    fn sleep(&self, d: Duration) -> slipway::clock::BoxSleep {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        Box::pin(tokio::task::yield_now())
    }
}

/// slipway's GitHub side in this process (the sink, its outbox in a journal of its own), on
/// `clock`, posting to `gh`.
fn github_in_process(
    gh: &GithubFake,
    clock: Arc<FastClock>,
    github_extra: &str,
) -> (
    slipway::github::Github,
    slipway::store::Store,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = slipway::config::Config::parse(&format!(
        "state_dir = \"{}\"\n\
         [[app]]\nname = \"web\"\nrepository = \"octo-org/web\"\ncodebuild_project = \"web-build\"\n\
         cluster = \"prod\"\nservice = \"web\"\ncontainer = \"web\"\necr_repository = \"web\"\n\
         [github]\napi_url = \"{}\"\n{github_extra}\n",
        dir.path().display(),
        gh.url
    ))
    .unwrap();
    let journal = slipway::store::Store::open(dir.path()).unwrap();
    let github = slipway::github::Github::start(
        slipway::github::Credentials::Token(STATIC_TOKEN.into()),
        config.github.clone().unwrap(),
        Arc::new(config),
        journal.clone(),
        clock,
        slipway::replicas::Replicas::alone(journal.clone()),
    )
    .unwrap();
    (github, journal, dir)
}

#[tokio::test]
async fn secondary_and_primary_rate_limits_are_waited_out_and_nothing_is_dropped() {
    let gh = GithubFake::start().await;
    let clock = Arc::new(FastClock::default());
    let fake_clock = clock.clone();
    gh.clock(Arc::new(move || fake_clock.system_time()));
    // The first update meets a secondary limit (403, GitHub's message, no retry-after); the
    // second a primary limit that resets in 40 minutes.
    gh.script(
        "POST",
        &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        vec![Scripted::secondary_limit()],
    );
    // A reset (whole seconds) at least 40 minutes after `started`.
    let started = clock.system_time();
    let reset = started.duration_since(UNIX_EPOCH).unwrap().as_secs() + 1 + 40 * 60;
    gh.script(
        "POST",
        &format!("/repos/octo-org/web/statuses/{NEWER_SHA}"),
        vec![Scripted::rate_limited(reset)],
    );
    let (github, journal, _dir) = github_in_process(&gh, clock.clone(), "");
    github.sink.build(
        slipway::github::BuildState::Started,
        "web",
        MASTER_SHA,
        None,
        None,
    );
    github.sink.build(
        slipway::github::BuildState::Started,
        "web",
        NEWER_SHA,
        None,
        None,
    );

    let first = eventually("the first status, after the secondary limit", || async {
        let posts = gh.requests_to(
            "POST",
            &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        );
        (posts.len() >= 2).then_some(posts)
    })
    .await;
    assert_eq!(first.len(), 2, "one post after the wait: {first:?}");
    let waited = first[1].at.duration_since(first[0].at).unwrap();
    assert!(
        waited >= Duration::from_secs(60),
        "retried after {waited:?}"
    );
    let second = eventually("the second status, after the reset", || async {
        let posts = gh.requests_to("POST", &format!("/repos/octo-org/web/statuses/{NEWER_SHA}"));
        (posts.len() >= 2).then_some(posts)
    })
    .await;
    assert_eq!(second.len(), 2, "one post after the reset: {second:?}");
    assert!(
        second[1].at >= UNIX_EPOCH + Duration::from_secs(reset),
        "retried before the reset"
    );
    assert!(second[1].at >= started + Duration::from_secs(40 * 60));
    // Nothing dropped: both were posted and the outbox is empty.
    assert_eq!(gh.statuses(MASTER_SHA, "slipway/build").len(), 2);
    assert_eq!(gh.statuses(NEWER_SHA, "slipway/build").len(), 2);
    eventually("the outbox is empty", || async {
        (journal.github_outbox_len().await.unwrap() == 0).then_some(())
    })
    .await;
    // Writes went at least a second apart.
    let posts = gh.requests_to("POST", "/repos/");
    for pair in posts.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap_or_default();
        assert!(gap >= Duration::from_secs(1), "{gap:?} between two POSTs");
    }
}

#[tokio::test]
async fn an_update_is_given_up_by_its_age_never_by_a_count_of_attempts() {
    let gh = GithubFake::start().await;
    let clock = Arc::new(FastClock::default());
    let fake_clock = clock.clone();
    gh.clock(Arc::new(move || fake_clock.system_time()));
    gh.script(
        "POST",
        &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        vec![Scripted::status(502); 100_000],
    );
    let (github, journal, _dir) = github_in_process(&gh, clock.clone(), "give_up_after_hours = 2");
    let started = clock.system_time();
    github.sink.build(
        slipway::github::BuildState::Started,
        "web",
        MASTER_SHA,
        None,
        None,
    );
    eventually("the update is given up", || async {
        (journal.github_outbox_len().await.unwrap() == 0
            && !gh.requests_to("POST", "/repos/").is_empty())
        .then_some(())
    })
    .await;
    let posts = gh.requests_to("POST", "/repos/");
    let last = posts.last().unwrap().at;
    // Tried for two hours (by the clock), far more than any fixed count of rounds.
    assert!(last >= started + Duration::from_secs(2 * 3600) - Duration::from_secs(5 * 60));
    assert!(
        last < started + Duration::from_secs(3 * 3600),
        "kept past its age"
    );
    assert!(posts.len() > 12 * 4, "{} posts", posts.len());
}

#[tokio::test]
async fn recovery_follows_the_cursor_through_2500_deliveries_and_recovers_the_failed_push() {
    let gh = GithubFake::start().await;
    let hooks = format!("[[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n");
    let w = world(&gh.url, &hooks, &[MASTER_SHA]).await;
    // slipway ran once (its journal exists), then went down for a busy while.
    let mut s = w.builder.start().await;
    eventually("the first recovery round", || async {
        s.logs()
            .contains("delivery recovery round finished")
            .then_some(())
    })
    .await;
    s.terminate();
    let now = SystemTime::now();
    for i in 0..2500u64 {
        // Oldest first: the 2,200th from the newest is the one push GitHub could not deliver.
        let failed = i == 2500 - 1 - 2200;
        gh.add_delivery(Delivery {
            id: i as i64 + 1,
            hook_id: HOOK_ID,
            guid: format!("busy-{i}"),
            event: "push".into(),
            status_code: if failed { 0 } else { 202 },
            delivered_at: now + Duration::from_millis(i),
            redelivery: false,
            body: if failed {
                push_body(MASTER_SHA)
            } else {
                Vec::new()
            },
        });
    }
    let s = w.builder.start().await;
    gh.webhook(&s.url, SECRET);
    eventually("the push 2,200 deliveries back is built", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "busy-299" && d["state"] == "build_started")
    })
    .await;
    let listed = gh.requests_to(
        "GET",
        &format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries"),
    );
    let paged: Vec<&str> = listed
        .iter()
        .map(|r| r.path.as_str())
        .filter(|p| p.contains("cursor=v1_"))
        .collect();
    assert!(paged.len() >= 24, "followed {} cursors", paged.len());
    assert!(listed.iter().all(|r| r.path.contains("per_page=100")));
    let asked = gh.requests_to(
        "POST",
        &format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/"),
    );
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].path.ends_with("/deliveries/300/attempts"),
        "{asked:?}"
    );
    assert!(!s.logs().contains("stopped early"));
}

const A_SHA: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const B_SHA: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const C_SHA: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

/// A push of `after` following `before`, received by GitHub at `pushed_at` (Unix seconds).
fn push_at(before: &str, after: &str, pushed_at: u64) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture("github/push_master.json")).unwrap();
    body["before"] = json!(before);
    body["after"] = json!(after);
    body["head_commit"]["id"] = json!(after);
    body["repository"]["pushed_at"] = json!(pushed_at);
    serde_json::to_vec(&body).unwrap()
}

/// Three pushes A → B → C of master, a minute apart.
fn pushes_a_b_c() -> [(&'static str, Vec<u8>); 3] {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    [
        (A_SHA, push_at(OLDER_SHA, A_SHA, t)),
        (B_SHA, push_at(A_SHA, B_SHA, t + 60)),
        (C_SHA, push_at(B_SHA, C_SHA, t + 120)),
    ]
}

/// The ARN of the build slipway started for `sha`.
async fn build_of(w: &Deploy, sha: &str) -> String {
    eventually(&format!("the build of {sha}"), || async {
        w.emulator
            .builds(PROJECT)
            .await
            .iter()
            .find(|b| b.source_version() == Some(sha))
            .and_then(|b| b.arn().map(str::to_owned))
    })
    .await
}

#[tokio::test]
async fn pushes_a_b_c_arriving_c_a_b_end_with_c_running_and_a_never_deploys_over_it() {
    let gh = GithubFake::start().await;
    let w = world(&gh.url, "", &[A_SHA, B_SHA, C_SHA]).await;
    let s = w.builder.start().await;
    let [a, b, c] = pushes_a_b_c();
    // GitHub's deliveries of the three pushes come back C, A, B (a redelivery, a replay), and
    // their builds finish in that order.
    for (delivery, (sha, body)) in [("late-c", &c), ("late-a", &a), ("late-b", &b)] {
        let r = s.deliver("push", delivery, body).await;
        assert_eq!(r.status, 202, "{}", r.text);
        build_of(&w, sha).await;
    }
    let c_arn = build_of(&w, C_SHA).await;
    w.complete(&c_arn, "SUCCEEDED", C_SHA).await;
    let c_deploy = w.finished(C_SHA).await;
    assert_eq!(c_deploy["state"], "succeeded", "{c_deploy}");
    let a_arn = build_of(&w, A_SHA).await;
    w.complete(&a_arn, "SUCCEEDED", A_SHA).await;
    let a_deploy = w.finished(A_SHA).await;
    assert_eq!(a_deploy["state"], "superseded", "{a_deploy}");
    let b_arn = build_of(&w, B_SHA).await;
    w.complete(&b_arn, "SUCCEEDED", B_SHA).await;
    let b_deploy = w.finished(B_SHA).await;
    assert_eq!(b_deploy["state"], "superseded", "{b_deploy}");

    // C runs; A never registered a revision or touched the service.
    assert_eq!(
        w.service_td().await,
        c_deploy["to_task_definition"].as_str().unwrap()
    );
    for d in [&a_deploy, &b_deploy] {
        assert!(d["to_task_definition"].is_null(), "{d}");
        assert!(d["ecs_deployment_id"].is_null(), "{d}");
    }
    assert_eq!(w.proxy.requests("UpdateService").len(), 1);
}

#[tokio::test]
async fn recovery_redelivers_oldest_first_one_at_a_time_and_nothing_older_than_the_journal() {
    let gh = GithubFake::start().await;
    let hooks = format!(
        "recover_window_hours = 1\n[[github.hook]]\nrepository = \"octo-org/web\"\nid = {HOOK_ID}\n"
    );
    let w = world(&gh.url, &hooks, &[A_SHA, B_SHA, C_SHA]).await;
    // A push GitHub could not deliver ten minutes before slipway's journal existed.
    gh.add_delivery(Delivery {
        id: 1,
        hook_id: HOOK_ID,
        guid: "before-slipway".into(),
        event: "push".into(),
        status_code: 0,
        delivered_at: SystemTime::now() - Duration::from_secs(600),
        redelivery: false,
        body: push_body(MASTER_SHA),
    });
    journal_exists(&w);
    // slipway is down while A, B and C are pushed. Their GUIDs sort the other way round.
    let [a, b, c] = pushes_a_b_c();
    for (guid, (_, body)) in [("zz-a", &a), ("mm-b", &b), ("aa-c", &c)] {
        assert_eq!(gh.deliver(HOOK_ID, "push", guid, body).await, 0);
    }
    let ids: Vec<i64> = ["zz-a", "mm-b", "aa-c"]
        .iter()
        .map(|g| gh.deliveries().iter().find(|d| d.guid == *g).unwrap().id)
        .collect();

    let s = w.builder.start().await;
    gh.webhook(&s.url, SECRET);
    for sha in [A_SHA, B_SHA, C_SHA] {
        build_of(&w, sha).await;
    }
    eventually("the recovery round", || async {
        s.logs()
            .contains("delivery recovery round finished")
            .then_some(())
    })
    .await;
    // Asked for oldest first, never for the push from before the journal.
    let asked: Vec<String> = gh
        .requests_to(
            "POST",
            &format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/"),
        )
        .into_iter()
        .map(|r| r.path)
        .collect();
    let expected: Vec<String> = ids
        .iter()
        .map(|id| format!("/repos/octo-org/web/hooks/{HOOK_ID}/deliveries/{id}/attempts"))
        .collect();
    assert_eq!(asked, expected);
    // One at a time: each arrived before the next was asked for, so the journal holds them in
    // push order.
    let held: Vec<String> = s
        .deliveries()
        .into_iter()
        .rev()
        .filter_map(|d| d["delivery"].as_str().map(str::to_owned))
        .filter(|g| ["zz-a", "mm-b", "aa-c"].contains(&g.as_str()))
        .collect();
    assert_eq!(held, ["zz-a", "mm-b", "aa-c"]);
    let rec = api(&s, "/api/github/recoveries").await;
    assert!(!rec.to_string().contains("before-slipway"), "{rec}");
    assert!(w
        .emulator
        .builds(PROJECT)
        .await
        .iter()
        .all(|b| b.source_version() != Some(MASTER_SHA)));
}

#[tokio::test]
async fn deployments_say_production_link_the_deploy_page_and_mark_nothing_inactive_themselves() {
    let gh = GithubFake::start().await;
    // GitHub would refuse a deployment that merges the default branch in or waits for the
    // commit's pending checks (auto_merge and required_contexts left to their defaults).
    gh.deployment_conflicts(true, &["ci/test"]);
    let extra = format!(
        "[github]\napi_url = \"{}\"\n[server]\npublic_url = \"https://slipway.example.com/\"\n",
        gh.url
    );
    let mut w = Deploy::with(Setup {
        apps: crate::deploy::web_with(
            "environment = \"production\"\nenvironment_url = \"https://web.example.com\"",
        ),
        extra: &extra,
        images: &[MASTER_SHA],
        ..Setup::default()
    })
    .await;
    w.builder = w
        .builder
        .clone()
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .env("SLIPWAY_OPS_TOKENS", &format!("ops:{OPS_TOKEN}"));
    let s = w.builder.start().await;
    let shipped = w.ship(&s, "prod-1", MASTER_SHA).await;
    assert_eq!(shipped["state"], "succeeded");
    let page = format!("https://slipway.example.com/deployments/{}", shipped["id"]);

    let (id, body, states) = deployment(&gh, MASTER_SHA, 2).await;
    assert_eq!(body["environment"], "production");
    assert_eq!(body["production_environment"], true);
    assert_eq!(states, ["in_progress", "success"]);
    for r in gh.requests_to(
        "POST",
        &format!("/repos/octo-org/web/deployments/{id}/statuses"),
    ) {
        assert_eq!(r.body["auto_inactive"], false, "{}", r.body);
        assert_eq!(r.body["environment_url"], "https://web.example.com");
        assert_eq!(r.body["log_url"], page.as_str());
    }
    let deploy_status = gh
        .requests_to(
            "POST",
            &format!("/repos/octo-org/web/statuses/{MASTER_SHA}"),
        )
        .into_iter()
        .find(|r| r.body["context"] == "slipway/deploy/web")
        .unwrap();
    assert_eq!(deploy_status.body["target_url"], page.as_str());
    let apps = api(&s, "/api/apps").await;
    assert_eq!(apps["github"]["requests_failed"], 0, "{apps}");
}

#[tokio::test]
async fn the_fake_refuses_keys_githubs_description_does_not_list_and_conflicts_where_github_would()
{
    use crate::support::github_fake::PERMITTED_KEYS;
    // The fake's lists are GitHub's (the pinned description the contract test uses).
    let spec = format!(
        "{}/.local/npm/node_modules/@octokit/openapi/generated/api.github.com.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
    for (path, keys) in PERMITTED_KEYS {
        let schema = &spec["paths"][*path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"];
        let listed: std::collections::BTreeSet<&str> = schema
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let ours: std::collections::BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(listed, ours, "{path}");
    }

    let gh = GithubFake::start().await;
    // A misspelt key is refused, as GitHub does.
    let statuses = format!("{}/repos/octo-org/web/statuses/{MASTER_SHA}", gh.url);
    let (status, body) = post(
        &statuses,
        STATIC_TOKEN,
        json!({ "state": "success", "contxt": "slipway/build" }),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("\"contxt\""));
    let deployments = format!("{}/repos/octo-org/web/deployments", gh.url);
    let (status, _) = post(
        &deployments,
        STATIC_TOKEN,
        json!({ "ref": MASTER_SHA, "environment": "web", "auto_inactive": false }),
    )
    .await;
    assert_eq!(status, 422, "auto_inactive belongs to deployment statuses");

    gh.deployment_conflicts(true, &["ci/test"]);
    // auto_merge is true unless said otherwise: the ref behind the default branch conflicts.
    let (status, body) = post(&deployments, STATIC_TOKEN, json!({ "ref": MASTER_SHA })).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("Conflict merging"));
    // Every context is required unless said otherwise: a pending check conflicts.
    let (status, body) = post(
        &deployments,
        STATIC_TOKEN,
        json!({ "ref": MASTER_SHA, "auto_merge": false }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errors"][0]["contexts"], json!(["ci/test"]));
    let (status, body) = post(
        &deployments,
        STATIC_TOKEN,
        json!({ "ref": MASTER_SHA, "auto_merge": false, "required_contexts": ["ci/test"] }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // What slipway sends goes through.
    let (status, body) = post(
        &deployments,
        STATIC_TOKEN,
        json!({ "ref": MASTER_SHA, "auto_merge": false, "required_contexts": [] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}
