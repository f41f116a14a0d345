//! Issue 12: monorepos build only the apps whose files changed (`paths`, `paths_ignore`, skip
//! markers), and never skip what the payload cannot prove unneeded.

use serde_json::{json, Value};

use crate::support::github_fake::{GithubFake, STATIC_TOKEN};
use crate::support::slipway::{Slipway, WebhookResponse};
use crate::support::{eventually, fixture, Emulator, Proxy, SlipwayBuilder, MASTER_SHA};

const TOKEN: &str = "alice-token-0123456789";

/// Two apps in one repository, each with its own CodeBuild project.
const APPS: &str = r#"
[[app]]
name = "web"
repository = "octo-org/monorepo"
codebuild_project = "web-build"
cluster = "prod"
service = "web"
container = "web"
ecr_repository = "web"
paths = ["services/web/**", "libs/**"]
paths_ignore = ["**/*.md", "**/docs/**"]

[[app]]
name = "api"
repository = "octo-org/monorepo"
codebuild_project = "api-build"
cluster = "prod"
service = "api"
container = "api"
ecr_repository = "api"
paths = ["services/api/**", "libs/**"]
"#;

struct World {
    _emulator: Emulator,
    proxy: Proxy,
    slipway: Slipway,
}

async fn world_with(apps: &str) -> World {
    let emulator = Emulator::start().await;
    emulator
        .create_project("web-build", "octo-org/monorepo")
        .await;
    emulator
        .create_project("api-build", "octo-org/monorepo")
        .await;
    let proxy = Proxy::start(&emulator.url).await;
    let slipway = SlipwayBuilder::new(&proxy.url)
        .apps(apps)
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"))
        .start()
        .await;
    World {
        _emulator: emulator,
        proxy,
        slipway,
    }
}

async fn world() -> World {
    world_with(APPS).await
}

/// The two apps with GitHub credentials: slipway asks `gh`'s compare API when the payload
/// cannot prove the changed files.
async fn world_with_github(apps: &str, gh: &GithubFake) -> World {
    let emulator = Emulator::start().await;
    emulator
        .create_project("web-build", "octo-org/monorepo")
        .await;
    emulator
        .create_project("api-build", "octo-org/monorepo")
        .await;
    let proxy = Proxy::start(&emulator.url).await;
    let slipway = SlipwayBuilder::new(&proxy.url)
        .apps(apps)
        .extra(&format!("[github]\napi_url = \"{}\"\n", gh.url))
        .env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN)
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"))
        .start()
        .await;
    World {
        _emulator: emulator,
        proxy,
        slipway,
    }
}

async fn push(w: &World, delivery: &str, name: &str) -> WebhookResponse {
    w.slipway
        .deliver(
            "push",
            delivery,
            &fixture(&format!("github/monorepo/{name}.json")),
        )
        .await
}

fn apps_of(list: &Value) -> Vec<&str> {
    let mut apps: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["app"].as_str().unwrap())
        .collect();
    apps.sort();
    apps
}

/// The projects StartBuild was called for, once `n` calls were made.
async fn started_projects(w: &World, n: usize) -> Vec<String> {
    let mut projects: Vec<String> = eventually(&format!("{n} StartBuild call(s)"), || async {
        let sent = w.proxy.requests("StartBuild");
        (sent.len() >= n).then_some(sent)
    })
    .await
    .iter()
    .map(|r| r["projectName"].as_str().unwrap().to_owned())
    .collect();
    projects.sort();
    projects
}

/// The journal's lines for one delivery (`slipway deliveries`).
fn journal_lines(w: &World, delivery: &str) -> Vec<Value> {
    w.slipway
        .deliveries()
        .into_iter()
        .filter(|d| d["delivery"] == delivery)
        .collect()
}

#[tokio::test]
async fn a_change_under_services_web_builds_only_web_and_says_why_api_did_not() {
    let w = world().await;
    let r = push(&w, "web-1", "push_web").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["web"]);
    assert_eq!(
        r.body["skipped"],
        json!([{ "app": "api", "reason": "no changed file matches api's paths (2 files changed)" }])
    );
    let lines = journal_lines(&w, "web-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["app"], "web");
    let reason = lines[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("api skipped: no changed file"), "{reason}");
    assert_eq!(started_projects(&w, 1).await, ["web-build"]);
    assert_eq!(
        w.proxy.requests("StartBuild")[0]["sourceVersion"],
        MASTER_SHA
    );
}

#[tokio::test]
async fn a_change_in_libs_builds_both_apps() {
    let w = world().await;
    let r = push(&w, "libs-1", "push_libs").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(r.body["skipped"], json!([]));
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
}

#[tokio::test]
async fn docs_and_ignored_paths_build_nothing_and_the_reason_is_journaled() {
    let w = world().await;
    // docs/monorepo.md, services/web/docs/guide.txt, README.md: web's
    // paths_ignore wins over its paths for the last two, and api's paths match none.
    let r = push(&w, "docs-1", "push_docs").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "ignored");
    let reason = r.body["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "no changed file matches web's paths outside its paths_ignore (3 files changed); \
         no changed file matches api's paths (3 files changed)"
    );
    let lines = journal_lines(&w, "docs-1");
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["outcome"].as_str(), lines[0]["reason"].as_str()),
        (Some("ignored"), Some(reason))
    );
    assert!(w.proxy.requests("StartBuild").is_empty());

    // The server still serves: a push that matters builds.
    let r = push(&w, "web-2", "push_web").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(started_projects(&w, 1).await, ["web-build"]);
}

#[tokio::test]
async fn a_commit_list_at_githubs_cap_builds_every_app_without_credentials() {
    let w = world().await;
    // 20 commits, all under docs/: the payload may have left commits out, so nothing is proven.
    let r = push(&w, "capped-1", "push_capped").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
}

#[tokio::test]
async fn a_force_push_builds_every_app_without_credentials() {
    let w = world().await;
    // The same files as push_web, but forced: what the push dropped is listed nowhere.
    let r = push(&w, "forced-1", "push_forced").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
}

#[tokio::test]
async fn branch_creation_builds_every_app_without_credentials() {
    let w = world().await;
    let r = push(&w, "created-1", "push_created").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
}

#[tokio::test]
async fn a_commit_at_githubs_3000_file_cap_builds_every_app() {
    let w = world().await;
    // One commit lists 1,000 paths in each of its three lists (all under docs/): GitHub
    // reports at most 3,000 a commit, so it may have changed more.
    let r = push(&w, "huge-1", "push_huge_commit").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
}

#[tokio::test]
async fn a_commit_listed_without_files_next_to_one_with_files_builds_every_app() {
    let w = world().await;
    // GitHub leaves the lists of a very large commit empty; the other commit changed docs only.
    let r = push(&w, "empty-1", "push_empty_lists").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
}

#[tokio::test]
async fn a_force_push_whose_comparison_diverged_builds_every_app() {
    let gh = GithubFake::start().await;
    // From the merge base only web's files changed; the commits the push dropped (which may
    // have changed api) are in no list.
    gh.compare(
        vec![
            json!({ "filename": "services/web/src/login.tsx" }),
            json!({ "filename": "services/web/package.json" }),
        ],
        1,
    );
    gh.compare_status("diverged");
    let w = world_with_github(APPS, &gh).await;
    let r = push(&w, "forced-gh", "push_forced").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
    let asked = gh.requests_to("GET", "/repos/octo-org/monorepo/compare/");
    assert_eq!(asked.len(), 1, "one page: {asked:?}");

    // A force-push compared `ahead` (it dropped nothing) is trusted: only web builds.
    gh.compare_status("ahead");
    let body = String::from_utf8(fixture("github/monorepo/push_forced.json"))
        .unwrap()
        .replace(
            "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
            "2f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
        );
    let r = w
        .slipway
        .deliver("push", "forced-gh-2", body.as_bytes())
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["web"]);
}

#[tokio::test]
async fn a_recreated_release_branch_builds_every_app_and_is_not_compared() {
    let gh = GithubFake::start().await;
    // Compared with the default branch, only docs changed: both apps would be skipped,
    // though neither was ever built on this branch.
    gh.compare(vec![json!({ "filename": "docs/release-notes.md" })], 1);
    let release = APPS.replace(
        "repository = \"octo-org/monorepo\"",
        "repository = \"octo-org/monorepo\"\nbranch = \"release\"",
    );
    let w = world_with_github(&release, &gh).await;
    let r = push(&w, "recreated-1", "push_recreated").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api", "web"]);
    assert_eq!(started_projects(&w, 2).await, ["api-build", "web-build"]);
    assert!(gh
        .requests_to("GET", "/repos/octo-org/monorepo/compare/")
        .is_empty());
}

#[tokio::test]
async fn a_skip_marker_builds_nothing_unless_the_app_opts_out() {
    let w = world().await;
    let r = push(&w, "skip-1", "push_skip").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "the head commit's message says [skip ci]");
    assert_eq!(journal_lines(&w, "skip-1")[0]["outcome"], "ignored");
    assert!(w.proxy.requests("StartBuild").is_empty());

    let deaf = APPS.replacen(
        "paths = [\"services/api/**\", \"libs/**\"]",
        "paths = [\"services/api/**\", \"libs/**\"]\nhonor_skip_markers = false",
        1,
    );
    let w = world_with(&deaf).await;
    let r = push(&w, "skip-2", "push_skip").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(apps_of(&r.body["builds"]), ["api"]);
    assert_eq!(
        r.body["skipped"],
        json!([{ "app": "web", "reason": "the head commit's message says [skip ci]" }])
    );
    assert_eq!(started_projects(&w, 1).await, ["api-build"]);
}

async fn replay(w: &World, delivery: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/deliveries/{delivery}/replay",
            w.slipway.admin_url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_replay_follows_the_same_rules_and_says_so() {
    let w = world().await;
    assert_eq!(push(&w, "web-1", "push_web").await.status, 202);
    started_projects(&w, 1).await;
    let (status, body) = replay(&w, "web-1").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(apps_of(&body["replay"]["builds"]), ["web"]);
    assert_eq!(
        body["replay"]["skipped"],
        json!([{ "app": "api", "reason": "no changed file matches api's paths (2 files changed)" }])
    );
    assert_eq!(started_projects(&w, 2).await, ["web-build", "web-build"]);

    assert_eq!(push(&w, "docs-1", "push_docs").await.status, 200);
    let (status, body) = replay(&w, "docs-1").await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("same rules as pushes"), "{error}");
    assert!(
        error.contains("no changed file matches api's paths"),
        "{error}"
    );
    assert_eq!(w.proxy.requests("StartBuild").len(), 2);
}

#[test]
fn check_config_names_a_bad_glob() {
    let bad = APPS.replacen("\"libs/**\"]", "\"libs/[auth\"]", 1);
    let builder = SlipwayBuilder::new("http://127.0.0.1:9").apps(&bad);
    let config = builder.config_path();
    let (status, out, err) = builder.run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(!status.success(), "{out}");
    assert!(
        err.contains("app[0] (web).paths[1]") && err.contains("\"libs/[auth\" is not a valid glob"),
        "{err}"
    );

    let good = SlipwayBuilder::new("http://127.0.0.1:9").apps(APPS);
    let config = good.config_path();
    let (status, out, err) = good.run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok (2 apps)"), "{out}");
}

#[tokio::test]
async fn the_cli_replays_a_saved_payload_by_the_same_rules_and_lists_what_it_skipped() {
    let w = world().await;
    let mut cmd = w.slipway.builder.command();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/github/monorepo/push_web.json");
    cmd.env("SLIPWAY_SERVER", &w.slipway.admin_url)
        .env("SLIPWAY_OPS_TOKEN", TOKEN)
        .args(["replay", "--file", file.to_str().unwrap()]);
    // The CLI blocks; the proxy in this runtime keeps serving meanwhile.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replay accepted"), "{stdout}");
    assert!(
        stdout.contains("api skipped: no changed file matches api's paths (2 files changed)"),
        "{stdout}"
    );
    assert_eq!(started_projects(&w, 1).await, ["web-build"]);
}
