//! Issue 27, item 4: release on tags. A pushed tag matching an app's `tags` builds and deploys
//! its commit through the same pipeline as a branch push, and the deploy shows the tag; a tag
//! that matches nothing and a tag deletion are ignored with their reasons.

use serde_json::Value;

use crate::deploy::{web_with, Deploy, Setup};
use crate::support::github_fake::{GithubFake, STATIC_TOKEN};
use crate::support::slipway::{Slipway, SlipwayBuilder, HARNESS_TOKEN};
use crate::support::world::PROJECT;
use crate::support::{eventually, fixture, Emulator, MASTER_SHA};

/// GitHub's push payload for annotated tag `tag` (`refs/tags/<tag>`) on `MASTER_SHA`, from
/// `fixtures/github/push_tag.json`: `after` is the tag object's SHA, `head_commit.id` the
/// tagged commit (docs.github.com, "push" webhook payload; GitHub's changelog of 2021-10-01,
/// "The push webhook payload provides a consistent head_commit on tag creation").
fn tag_push(tag: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("github/push_tag.json")).unwrap();
    v["ref"] = format!("refs/tags/{tag}").into();
    v["after"] = TAG_OBJECT.into();
    assert_eq!(v["head_commit"]["id"], MASTER_SHA);
    serde_json::to_vec(&v).unwrap()
}

/// The SHA of an annotated tag's object (not a commit).
const TAG_OBJECT: &str = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";

/// GitHub's push payload for the deletion of tag `tag`: `deleted: true`, `after` all zeros
/// (docs.github.com, "push" webhook payload).
fn tag_deletion(tag: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&tag_push(tag)).unwrap();
    v["before"] = TAG_OBJECT.into();
    v["after"] = "0".repeat(40).into();
    v["created"] = false.into();
    v["deleted"] = true.into();
    v["base_ref"] = Value::Null;
    v["head_commit"] = Value::Null;
    serde_json::to_vec(&v).unwrap()
}

async fn html(s: &Slipway, path: &str) -> String {
    let resp = reqwest::get(format!("{}{path}", s.admin_url))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_push_matching_tags_builds_and_deploys_its_commit_and_the_deploy_shows_the_tag() {
    // Tags only: the app has no branch. GitHub (the fake) gets the deploy's statuses.
    let gh = GithubFake::start().await;
    let extra = format!("[github]\napi_url = \"{}\"\n", gh.url);
    let mut w = Deploy::with(Setup {
        apps: web_with("tags = [\"v*\"]"),
        extra: &extra,
        ..Setup::default()
    })
    .await;
    w.builder = w.builder.clone().env("SLIPWAY_GITHUB_TOKEN", STATIC_TOKEN);
    let s = w.builder.start().await;

    // A branch push no longer deploys this app.
    let r = s
        .deliver("push", "master-1", &fixture("github/push_master.json"))
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("ignored"))
    );
    let reason = r.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("refs/heads/master is not a deployed branch of octo-org/web"),
        "{reason}"
    );

    let r = s.deliver("push", "tag-1", &tag_push("v1.2.0")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let build_id = eventually("the tag's build started", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "tag-1" && d["state"] == "build_started")
            .map(|d| d["build_id"].as_str().unwrap().to_owned())
    })
    .await;
    // One StartBuild, of the tagged commit.
    let starts = w.proxy.requests("StartBuild");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["sourceVersion"], MASTER_SHA);
    let env = starts[0]["environmentVariablesOverride"]
        .as_array()
        .unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].clone())
    };
    assert_eq!(var("SLIPWAY_TAG"), Some("v1.2.0".into()), "{env:?}");
    assert_eq!(var("SLIPWAY_COMMIT"), Some(MASTER_SHA.into()), "{env:?}");
    let arn = w
        .emulator
        .builds(PROJECT)
        .await
        .iter()
        .find(|b| b.id() == Some(build_id.as_str()))
        .and_then(|b| b.arn())
        .unwrap()
        .to_owned();
    w.complete(&arn, "SUCCEEDED", MASTER_SHA).await;

    let d = w.finished(MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["tag"], "v1.2.0", "{d}");
    assert_eq!(d["trigger"], "push");
    assert_eq!(
        w.service_td().await,
        d["to_task_definition"].as_str().unwrap()
    );
    assert_eq!(d["image"], w.image_uri(MASTER_SHA).await.as_str());

    // The ops API, the status page, the CLI and the notifications show the tag.
    let id = d["id"].as_i64().unwrap();
    let api: Value = reqwest::Client::new()
        .get(format!("{}/api/deployments/{id}", s.admin_url))
        .bearer_auth(HARNESS_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["tag"], "v1.2.0", "{api}");
    let page = html(&s, &format!("/deployments/{id}")).await;
    assert!(
        page.contains("<th>Tag</th><td><code>v1.2.0</code>"),
        "{page}"
    );
    let config = w.builder.config_path();
    let cli = w
        .builder
        .command()
        .env("SLIPWAY_OPS_TOKEN", HARNESS_TOKEN)
        .args(["deployments", "--config", config.to_str().unwrap()])
        .args(["--server", &s.admin_url])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr),
    );
    assert!(cli.status.success(), "{err}");
    assert!(out.contains("push (tag v1.2.0)"), "{out}");
    let cli = w
        .builder
        .command()
        .env("SLIPWAY_OPS_TOKEN", HARNESS_TOKEN)
        .arg("status")
        .args(["--server", &s.admin_url])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&cli.stdout);
    assert!(
        status.contains(&format!("#{id} succeeded (tag v1.2.0)")),
        "{status}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let done = eventually("the success notification", || async {
        w.notes_of("deploy_succeeded").into_iter().next()
    })
    .await;
    assert_eq!(done["tag"], "v1.2.0", "{done}");
    assert!(
        done["text"]
            .as_str()
            .unwrap()
            .contains("deployed `1f2e3d4` (tag `v1.2.0`)"),
        "{done}"
    );

    // GitHub's deployment is of the commit, and says which tag.
    let body = eventually("the GitHub deployment", || async {
        gh.deployments().into_iter().next().map(|(_, b)| b)
    })
    .await;
    assert_eq!(body["ref"], MASTER_SHA, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .ends_with("of web (tag v1.2.0)"),
        "{body}"
    );
    assert_eq!(body["payload"]["tag"], "v1.2.0", "{body}");

    // The same tag delivered again (GitHub's redelivery): nothing is built twice.
    let r = s.deliver("push", "tag-1", &tag_push("v1.2.0")).await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    assert_eq!(w.proxy.requests("StartBuild").len(), 1);
}

#[tokio::test]
async fn a_tag_matching_no_app_and_a_tag_deletion_are_ignored_with_their_reasons() {
    let emulator = Emulator::start().await;
    emulator.create_project(PROJECT, "octo-org/web").await;
    let s = SlipwayBuilder::new(&emulator.url)
        .apps(&web_with(
            "branch = \"master\"\ntags = [\"v*\", \"release/**\"]",
        ))
        .start()
        .await;
    let cases = [
        (
            "nightly",
            tag_push("nightly-2026-12-06"),
            "tag nightly-2026-12-06 matches no app's tags in octo-org/web (tags: v*, release/**)",
        ),
        (
            "deleted",
            tag_deletion("v1.2.0"),
            "tag v1.2.0 was deleted: a deletion deploys nothing",
        ),
    ];
    for (delivery, body, reason) in &cases {
        let r = s.deliver("push", delivery, body).await;
        assert_eq!(r.status, 200, "{delivery}: {}", r.text);
        assert_eq!(r.body["status"], "ignored", "{delivery}: {}", r.text);
        assert_eq!(r.body["reason"], *reason, "{delivery}");
    }
    // The journal says why, as for any ignored push; nothing was built.
    let rows = s.deliveries();
    for (delivery, _, reason) in &cases {
        let row = rows
            .iter()
            .find(|r| r["delivery"] == *delivery)
            .unwrap_or_else(|| panic!("{delivery} journaled: {rows:?}"));
        assert_eq!(
            (row["outcome"].as_str(), row["reason"].as_str()),
            (Some("ignored"), Some(*reason)),
            "{row}"
        );
        assert!(row["state"].is_null(), "{row}");
    }
    assert!(emulator.builds(PROJECT).await.is_empty());
    // Still serving: a matching tag is taken.
    let r = s.deliver("push", "v2", &tag_push("v2.0.0")).await;
    assert_eq!(r.status, 202, "{}", r.text);
}

#[test]
fn check_config_refuses_a_bad_tag_glob_and_an_app_that_deploys_nothing() {
    let check = |settings: &str| {
        let b = SlipwayBuilder::new("http://127.0.0.1:9").apps(&web_with(settings));
        let config = b.config_path();
        let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        (status.code(), out, err)
    };
    let (code, out, err) = check("tags = [\"v*\", \"release/**\"]");
    assert_eq!(code, Some(0), "{out}{err}");
    for (settings, expected) in [
        (
            "tags = [\"v*\", \"v[0-9\"]",
            "app[0] (web).tags[1]: \"v[0-9\" is not a valid glob",
        ),
        (
            "tags = [\"refs/tags/v*\"]",
            "app[0] (web).tags[0]: give the tag glob (\"v*\"), not a ref",
        ),
        (
            "tags = []",
            "app[0] (web).tags: is empty and no `branch` is set: the app would deploy nothing",
        ),
        (
            "branch = \"main\"\ntags = []",
            "app[0] (web).tags: must list at least one glob",
        ),
    ] {
        let (code, out, err) = check(settings);
        assert_eq!(code, Some(1), "{settings}: {out}{err}");
        assert!(err.contains(expected), "{settings}: {err}");
    }
}
