//! Issue 27, items 1 and 2: environments and promotion. An app with `promote_from` never
//! builds; when its source app's deploy succeeds, the image that deploy ran (by digest) is
//! promoted to it through the same deploy engine, after an approval unless `approval = "auto"`.

use serde_json::{json, Value};

use crate::deploy::{web_with, Deploy, Setup};
use crate::support::github_fake::{GithubFake, STATIC_TOKEN};
use crate::support::slipway::{Slipway, SlipwayBuilder};
use crate::support::world::{CLUSTER, ECR_REPO};
use crate::support::{eventually, MASTER_SHA};

/// `[[app]] web-prod`, promoted from `from`, on service `web-prod` of cluster `web` and the
/// same ECR repository as `web`; `settings`: more of its keys.
pub fn prod_app(from: &str, settings: &str) -> String {
    format!(
        "\n[[app]]\nname = \"web-prod\"\nrepository = \"octo-org/web\"\ncluster = \"web\"\n\
         service = \"web-prod\"\ncontainer = \"web\"\necr_repository = \"web\"\n\
         promote_from = \"{from}\"\n{settings}\n"
    )
}

#[test]
fn check_config_refuses_a_promotion_cycle_and_a_promote_from_naming_no_app() {
    let check = |apps: &str| {
        let b = SlipwayBuilder::new("http://127.0.0.1:9").apps(apps);
        let config = b.config_path();
        let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        (status.code(), out, err)
    };
    let (code, out, err) = check(&format!("{}{}", web_with(""), prod_app("web", "")));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok (2 apps)"), "{out}");

    let (code, out, err) = check(&format!("{}{}", web_with(""), prod_app("web-staging", "")));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("app[1] (web-prod).promote_from: \"web-staging\" names no app"),
        "{err}"
    );

    // web-prod ← web-qa ← web-prod: neither builds.
    let qa = prod_app("web-prod", "")
        .replace("\"web-prod\"\nrepository", "\"web-qa\"\nrepository")
        .replace("service = \"web-prod\"", "service = \"web-qa\"");
    let (code, out, err) = check(&format!("{}{}{qa}", web_with(""), prod_app("web-qa", "")));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(
            "app[1] (web-prod).promote_from: promotions go round in a cycle \
             (web-prod ← web-qa ← web-prod): one app of a chain must build"
        ),
        "{err}"
    );
}

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789abc";
const NEWER_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

/// Staging (`web`, builds) and production (`web-prod`, promoted from it, approved by alice)
/// on one repository; production's service runs the base revision.
async fn staging_and_production(prod_settings: &str, extra: &str) -> Deploy {
    let w = Deploy::with(Setup {
        apps: format!("{}{}", web_with(""), prod_app("web", prod_settings)),
        images: &[MASTER_SHA, NEWER_SHA],
        extra,
        ..Setup::default()
    })
    .await;
    w.emulator.create_service(CLUSTER, PROD, &w.base_td).await;
    let mut w = w;
    w.builder = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{ALICE},bob:{BOB}"));
    w
}

const PROD: &str = "web-prod";

pub async fn api(s: &Slipway, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.admin_url);
    let req = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&body),
    };
    let resp = req.bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn promotions(s: &Slipway) -> Vec<Value> {
    let (status, v) = api(s, ALICE, "GET", "/api/promotions?app=web-prod", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    v["promotions"].as_array().cloned().unwrap_or_default()
}

/// Waits for the promotion of `sha` to production to be in `state`.
async fn promotion_in(s: &Slipway, sha: &str, state: &str) -> Value {
    eventually(&format!("the promotion of {sha} {state}"), || async {
        promotions(s)
            .await
            .into_iter()
            .find(|p| p["sha"] == sha && p["state"] == state)
    })
    .await
}

/// Waits until the (first) deploy of `app` ends; returns its record.
async fn finished(w: &Deploy, app: &str) -> Value {
    eventually(&format!("{app}'s deploy finished"), || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["app"] == app && d["state"] != "pending" && d["state"] != "deploying")
    })
    .await
}

/// ECS and ECR calls that name production's service (the proxy records every call).
fn calls_naming_production(w: &Deploy) -> Vec<String> {
    let mut found = Vec::new();
    for op in [
        "DescribeServices",
        "UpdateService",
        "RegisterTaskDefinition",
    ] {
        for body in w.proxy.requests(op) {
            if body.to_string().contains("\"web-prod\"") {
                found.push(format!("{op} {body}"));
            }
        }
    }
    found
}

/// The digest ECR holds for `web:<tag>`.
pub async fn digest_of(w: &Deploy, tag: &str) -> String {
    let out = w
        .emulator
        .ecr()
        .describe_images()
        .repository_name(ECR_REPO)
        .image_ids(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_tag(tag)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.image_details()[0].image_digest().unwrap().to_owned()
}

fn image_of(td: &aws_sdk_ecs::types::TaskDefinition) -> String {
    td.container_definitions()[0].image().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_builds_once_staging_deploys_and_production_runs_the_same_digest_after_approval() {
    let gh = GithubFake::start().await;
    let extra = format!("[github]\napi_url = \"{}\"\n", gh.url);
    let mut w = staging_and_production("approvers = [\"alice\"]", &extra).await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN);
    let s = w.builder.start().await;

    // One push: one build, staging deployed.
    let staging = w.ship(&s, "p-1", MASTER_SHA).await;
    assert_eq!(staging["app"], "web");
    assert_eq!(staging["state"], "succeeded", "{staging}");
    let p = promotion_in(&s, MASTER_SHA, "awaiting_approval").await;
    assert_eq!(p["source_app"], "web", "{p}");
    assert_eq!(p["source_deployment"], staging["id"], "{p}");
    let digest = digest_of(&w, MASTER_SHA).await;
    assert_eq!(p["image_digest"], digest.as_str(), "{p}");
    assert!(
        p["decided_by"].is_null() && p["deployment"].is_null(),
        "{p}"
    );

    // Waiting: nothing was asked of production's service, and nothing built twice.
    assert_eq!(calls_naming_production(&w), Vec::<String>::new());
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
    let note = eventually("the awaiting_approval notification", || async {
        w.notes_of("awaiting_approval").into_iter().next()
    })
    .await;
    assert_eq!(note["app"], PROD, "{note}");
    assert_eq!(note["promotion"]["source_app"], "web", "{note}");
    assert_eq!(note["promotion"]["approval"], "awaiting_approval", "{note}");
    assert!(
        note["text"].as_str().unwrap().contains("awaiting approval"),
        "{note}"
    );

    // bob is not an approver: 403, and nothing changes.
    let (status, v) = api(&s, BOB, "POST", "/api/apps/web-prod/approve", json!({})).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "forbidden", "{v}");
    assert_eq!(
        v["error"],
        "bob may not approve promotions to web-prod: not in its approvers"
    );
    let (status, _) = api(&s, BOB, "POST", "/api/apps/web-prod/reject", json!({})).await;
    assert_eq!(status, 403);
    assert_eq!(promotions(&s).await[0]["state"], "awaiting_approval");
    assert_eq!(calls_naming_production(&w), Vec::<String>::new());

    // alice approves with the CLI.
    let out = w
        .builder
        .command()
        .env("SLIPWAY_OPS_TOKEN", ALICE)
        .args(["approve", "web-prod", &MASTER_SHA[..7], "--wait"])
        .args(["--server", &s.admin_url])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "promotion {} of {} (from web, deployment {}) approved by alice",
            p["id"],
            &MASTER_SHA[..7],
            staging["id"]
        )),
        "{stdout}"
    );

    // Production runs exactly the image staging ran, by digest; still one build.
    let prod = finished(&w, PROD).await;
    assert_eq!(prod["state"], "succeeded", "{prod}");
    assert_eq!(prod["trigger"], "promotion", "{prod}");
    assert_eq!(prod["actor"], "alice", "{prod}");
    assert_eq!(prod["promotion"], p["id"], "{prod}");
    let uri = w.emulator.repository_uri(ECR_REPO).await;
    assert_eq!(prod["image"], format!("{uri}@{digest}").as_str(), "{prod}");
    let running = w.emulator.service(CLUSTER, PROD).await;
    let (td, _) = w
        .emulator
        .task_definition(running.task_definition().unwrap())
        .await;
    assert_eq!(image_of(&td), format!("{uri}@{digest}"));
    let (staging_td, _) = w
        .emulator
        .task_definition(staging["to_task_definition"].as_str().unwrap())
        .await;
    assert_eq!(image_of(&staging_td), format!("{uri}:{MASTER_SHA}"));
    assert_eq!(w.proxy.requests("StartBuild").len(), 1, "no second build");

    // The promotion says who approved it, when, and what it made.
    let approved = promotion_in(&s, MASTER_SHA, "approved").await;
    assert_eq!(approved["decided_by"], "alice", "{approved}");
    assert!(approved["decided_ms"].is_i64(), "{approved}");
    assert_eq!(approved["deployment"], prod["id"], "{approved}");
    // Approving again changes nothing.
    let (status, v) = api(&s, ALICE, "POST", "/api/apps/web-prod/approve", json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no promotion to web-prod is awaiting approval"),
        "{v}"
    );
    let prod_deploys = w
        .builder
        .deployments()
        .into_iter()
        .filter(|d| d["app"] == PROD)
        .count();
    assert_eq!(prod_deploys, 1);

    // Wherever the deploy shows, it says where its image comes from and who approved it
    // (issue 27, item 5): the API, the CLI, the status page, notifications, GitHub.
    let id = prod["id"].as_i64().unwrap();
    let (status, api_view) = api(
        &s,
        ALICE,
        "GET",
        &format!("/api/deployments/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let promoted = &api_view["promoted"];
    assert_eq!(promoted["source_app"], "web", "{api_view}");
    assert_eq!(promoted["source_deployment"], staging["id"], "{api_view}");
    assert_eq!(promoted["approval"], "approved", "{api_view}");
    assert_eq!(promoted["decided_by"], "alice", "{api_view}");
    assert!(promoted["decided_at"].is_string(), "{api_view}");
    let (_, listed) = api(
        &s,
        ALICE,
        "GET",
        "/api/deployments?app=web-prod",
        Value::Null,
    )
    .await;
    assert_eq!(listed["deployments"][0]["promoted"], *promoted, "{listed}");
    let cli = w
        .builder
        .command()
        .env("SLIPWAY_OPS_TOKEN", ALICE)
        .args(["deployments", "--server", &s.admin_url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        table.contains(&format!("promotion {} (approved by alice)", p["id"])),
        "{table}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let page = reqwest::get(format!("{}/deployments/{id}", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            "<th>Promoted from</th><td>web <a href=\"/deployments/{0}\">deployment {0}</a>",
            staging["id"]
        )),
        "{page}"
    );
    assert!(
        page.contains(
            "<span class=\"st ok\">approved</span><br><span class=\"muted\">by alice at "
        ),
        "{page}"
    );
    let front = reqwest::get(format!("{}/", s.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(front.contains("<h2>Promotions</h2>"), "{front}");
    let done = eventually("production's success notification", || async {
        w.notes_of("deploy_succeeded")
            .into_iter()
            .find(|n| n["app"] == PROD)
    })
    .await;
    assert_eq!(done["promotion"]["source_app"], "web", "{done}");
    assert_eq!(done["promotion"]["decided_by"], "alice", "{done}");
    assert!(
        done["text"]
            .as_str()
            .unwrap()
            .contains("(promoted from *web* (deployment"),
        "{done}"
    );
    let body = eventually("production's GitHub deployment", || async {
        gh.deployments()
            .into_iter()
            .map(|(_, b)| b)
            .find(|b| b["environment"] == PROD)
    })
    .await;
    assert_eq!(body["ref"], MASTER_SHA, "{body}");
    assert_eq!(body["payload"]["promotion"]["source_app"], "web", "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("promoted from web (deployment"),
        "{body}"
    );
    let waiting = gh.statuses(MASTER_SHA, "slipway/deploy/web-prod");
    assert_eq!(
        waiting.first().map(|(s, d)| (s.as_str(), d.as_str())),
        Some(("pending", "awaiting approval (promoted from web)")),
        "{waiting:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_promotion_supersedes_the_waiting_one_and_a_rejection_deploys_nothing() {
    // GitHub (the fake) gets the commit statuses.
    let gh = GithubFake::start().await;
    let extra = format!("[github]\napi_url = \"{}\"\n", gh.url);
    let mut w = staging_and_production("approvers = [\"alice\"]", &extra).await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN);
    let s = w.builder.start().await;

    w.ship(&s, "p-1", MASTER_SHA).await;
    let first = promotion_in(&s, MASTER_SHA, "awaiting_approval").await;
    // GitHub shows the commit waiting.
    let status = eventually("the awaiting-approval commit status", || async {
        gh.statuses(MASTER_SHA, "slipway/deploy/web-prod")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        status,
        (
            "pending".to_owned(),
            "awaiting approval (promoted from web)".to_owned()
        )
    );

    // A second push before anyone approved: its promotion supersedes the first.
    w.ship(&s, "p-2", NEWER_SHA).await;
    let second = promotion_in(&s, NEWER_SHA, "awaiting_approval").await;
    let old = promotion_in(&s, MASTER_SHA, "superseded").await;
    assert_eq!(old["id"], first["id"]);
    assert!(
        old["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("superseded by promotion {}", second["id"])),
        "{old}"
    );
    // The superseded one cannot be approved any more.
    let (status, v) = api(
        &s,
        ALICE,
        "POST",
        "/api/apps/web-prod/approve",
        json!({ "sha": &MASTER_SHA[..7] }),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "the promotion to web-prod awaiting approval is of {}, not {}",
            &NEWER_SHA[..7],
            &MASTER_SHA[..7]
        )) && error.contains("is superseded"),
        "{error}"
    );
    let superseded = eventually("GitHub told the older commit is superseded", || async {
        gh.statuses(MASTER_SHA, "slipway/deploy/web-prod")
            .into_iter()
            .find(|(state, _)| state == "error")
    })
    .await;
    assert!(
        superseded.1.contains("superseded by promotion"),
        "{superseded:?}"
    );

    // A bad SHA is refused as such.
    let (status, v) = api(
        &s,
        ALICE,
        "POST",
        "/api/apps/web-prod/reject",
        json!({ "sha": "not-a-sha" }),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // An app that is not promoted has nothing to approve.
    let (status, v) = api(&s, ALICE, "POST", "/api/apps/web/approve", json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("web is not promoted"),
        "{v}"
    );
    let (status, v) = api(&s, ALICE, "POST", "/api/apps/nope/approve", json!({})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("unknown_app")),
        "{v}"
    );

    // alice rejects the newer one with the CLI: nothing is deployed to production.
    let out = w
        .builder
        .command()
        .env("SLIPWAY_OPS_TOKEN", ALICE)
        .args(["reject", "web-prod"])
        .args(["--server", &s.admin_url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rejected by alice"), "{stdout}");
    let rejected = promotion_in(&s, NEWER_SHA, "rejected").await;
    assert_eq!(rejected["decided_by"], "alice");
    assert!(rejected["deployment"].is_null(), "{rejected}");
    let note = eventually("the rejection notification", || async {
        w.notes_of("promotion_rejected").into_iter().next()
    })
    .await;
    assert_eq!(note["promotion"]["decided_by"], "alice", "{note}");
    let status = eventually("GitHub told the rejection", || async {
        gh.statuses(NEWER_SHA, "slipway/deploy/web-prod")
            .into_iter()
            .find(|(state, _)| state == "error")
    })
    .await;
    assert_eq!(status.1, "promotion rejected by alice");
    assert!(w
        .builder
        .deployments()
        .into_iter()
        .all(|d| d["app"] != PROD));
    assert_eq!(calls_naming_production(&w), Vec::<String>::new());
    assert_eq!(w.proxy.requests("StartBuild").len(), 2);
}

/// dev (`web`, builds) → staging (`web-staging`, approved automatically) → production
/// (`web-prod`, manual): one push reaches staging with no one's approval, and production
/// waits for the digest staging ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_promotes_through_an_automatic_stage_and_waits_at_the_manual_one() {
    let staging_app = prod_app("web", "approval = \"auto\"")
        .replace("\"web-prod\"\nrepository", "\"web-staging\"\nrepository")
        .replace("service = \"web-prod\"", "service = \"web-staging\"");
    let w = Deploy::with(Setup {
        apps: format!(
            "{}{staging_app}{}",
            web_with(""),
            prod_app("web-staging", "approvers = [\"alice\"]")
        ),
        ..Setup::default()
    })
    .await;
    w.emulator
        .create_service(CLUSTER, "web-staging", &w.base_td)
        .await;
    w.emulator.create_service(CLUSTER, PROD, &w.base_td).await;
    let mut w = w;
    w.builder = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{ALICE}"));
    let s = w.builder.start().await;
    w.ship(&s, "p-1", MASTER_SHA).await;
    let digest = digest_of(&w, MASTER_SHA).await;
    let staging = finished(&w, "web-staging").await;
    assert_eq!(staging["state"], "succeeded", "{staging}");
    assert_eq!(staging["actor"], "auto", "{staging}");
    let uri = w.emulator.repository_uri(ECR_REPO).await;
    assert_eq!(staging["image"], format!("{uri}@{digest}").as_str());
    // Production waits for the image staging ran: the same digest, from staging's deploy.
    let p = promotion_in(&s, MASTER_SHA, "awaiting_approval").await;
    assert_eq!(p["source_app"], "web-staging", "{p}");
    assert_eq!(p["source_deployment"], staging["id"], "{p}");
    assert_eq!(p["image_digest"], digest.as_str(), "{p}");
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
    assert_eq!(calls_naming_production(&w), Vec::<String>::new());
}

/// GitHub's push payload for annotated tag `tag` on commit `sha` (`head_commit.id`), from
/// `fixtures/github/push_tag.json` (as tests/it/tags.rs reads it).
fn tag_push(tag: &str, sha: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&crate::support::fixture("github/push_tag.json")).unwrap();
    v["ref"] = format!("refs/tags/{tag}").into();
    v["after"] = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081".into();
    v["head_commit"]["id"] = sha.into();
    serde_json::to_vec(&v).unwrap()
}

/// Issue 27, item 4: production releases on tags; a tag on a commit staging deployed is
/// promoted by digest without a build, and its deploy shows the tag; a tag on a commit staging
/// never deployed promotes nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_on_a_commit_staging_deployed_is_promoted_without_a_build() {
    let w = staging_and_production("tags = [\"v*\"]\napprovers = [\"alice\"]", "").await;
    let s = w.builder.start().await;
    let staging = w.ship(&s, "p-1", MASTER_SHA).await;
    assert_eq!(staging["state"], "succeeded", "{staging}");

    // A tag on a commit staging never deployed: nothing to promote, and why.
    let r = s
        .deliver("push", "t-0", &tag_push("v0.9.0", NEWER_SHA))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "ignored", "{}", r.text);
    assert_eq!(
        r.body["reason"],
        "tag v0.9.0: web has no successful deploy of 9f8e7d6, so web-prod has no image to \
         promote (a promoted app never builds)"
    );

    // The release tag on the commit staging runs: promoted by digest, no build.
    let r = s
        .deliver("push", "t-1", &tag_push("v1.0.0", MASTER_SHA))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["promotions"][0]["app"], PROD, "{}", r.text);
    assert_eq!(r.body["promotions"][0]["promoting"], true, "{}", r.text);
    let p = promotion_in(&s, MASTER_SHA, "awaiting_approval").await;
    assert_eq!(p["tag"], "v1.0.0", "{p}");
    assert_eq!(p["source_deployment"], staging["id"], "{p}");
    assert_eq!(p["image_digest"], digest_of(&w, MASTER_SHA).await.as_str());
    assert_eq!(
        w.proxy.requests("StartBuild").len(),
        1,
        "no build for the tag"
    );
    // GitHub redelivers the tag push: still one promotion.
    let r = s
        .deliver("push", "t-1", &tag_push("v1.0.0", MASTER_SHA))
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    let (status, _) = api(&s, ALICE, "POST", "/api/apps/web-prod/approve", json!({})).await;
    assert_eq!(status, 200);
    let prod = finished(&w, PROD).await;
    assert_eq!(prod["state"], "succeeded", "{prod}");
    assert_eq!(prod["tag"], "v1.0.0", "{prod}");
    assert_eq!(promotions(&s).await.len(), 1);
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
}
