//! Issue 10: fail fast and say why, readable AWS errors, and a CLI that follows conventions,
//! checked the way a user meets them: exit status and output of the real binary against a real
//! slipway and the emulator.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::deploy::Deploy;
use crate::support::proxy::Rollout;
use crate::support::slipway::SlipwayBuilder;
use crate::support::{eventually, free_port, Emulator, MASTER_SHA};

const TOKEN: &str = "alice-token-0123456789";

/// Runs `cmd` to completion, killing it after 30 s (old code would have served forever).
fn finish(mut cmd: Command) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slipway");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A slipway command run to completion with `env` added: (exit code, stdout, stderr).
fn cli(b: &SlipwayBuilder, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    b.write_config();
    let mut cmd = b.command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args);
    finish(cmd)
}

fn closed_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn without_a_region_serve_and_provision_exit_2_naming_aws_region() {
    let b = SlipwayBuilder::new(&closed_endpoint());
    let config = b.write_config();
    let config = config.to_str().unwrap();
    for args in [
        ["serve", "--config", config].as_slice(),
        ["provision", "--dry-run", "--config", config].as_slice(),
    ] {
        let mut cmd = b.command();
        cmd.env_remove("AWS_REGION").args(args);
        let (code, out, err) = finish(cmd);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("AWS_REGION"), "{args:?}: {err}");
    }
    // check-config finds the same problem, without calling AWS.
    let mut cmd = b.command();
    cmd.env_remove("AWS_REGION")
        .args(["check-config", "--config", config]);
    let (code, _, err) = finish(cmd);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AWS_REGION"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_readyz_says_why_and_the_log_names_the_source_tried() {
    let emulator = Emulator::start().await;
    let b = SlipwayBuilder::new(&emulator.url)
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "");
    let s = b.start().await;
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("no credentials found"), "{body}");
    assert!(error.contains("default chain"), "{body}");
    let logs = s.logs();
    assert!(
        logs.contains("AWS credentials do not work") && logs.contains("credential_source"),
        "{logs}"
    );
    // Still serving: a push is taken and kept.
    let r = s
        .deliver(
            "push",
            "no-creds-1",
            &crate::support::fixture("github/push_master.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Its build waits for working credentials (retried), and the reason says why.
    let row = eventually("the failed StartBuild attempt recorded", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "no-creds-1" && d["reason"].as_str().is_some())
    })
    .await;
    assert_eq!(row["state"], "pending", "{row}");
    assert_eq!(
        row["reason"], "CodeBuild StartBuild: no credentials found",
        "{row}"
    );
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_queue_url_serve_finds_the_queue_by_name_or_says_it_is_late() {
    let emulator = Emulator::start().await;
    let queue = emulator.create_event_route("slipway-events").await;
    let b = SlipwayBuilder::new(&emulator.url);
    let s = b.start().await;
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    // Only that delivery recovery is off (no [github] here).
    let warnings = body["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{body}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("recovery off: pushes sent while slipway is down are lost"),
        "{body}"
    );
    let logs = s.logs();
    assert!(
        logs.contains("found the events queue by name") && logs.contains(&queue),
        "{logs}"
    );
    drop(s);

    // A queue that does not exist: the reconciler only, said in the log and by /readyz.
    let b = SlipwayBuilder::new(&emulator.url).extra("[provision]\nqueue_name = \"not-there\"");
    let s = b.start().await;
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let warning = body["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("not-there") && warning.contains("reconciler"),
        "{body}"
    );
    assert!(
        s.logs()
            .contains("build results come only from the reconciler"),
        "{}",
        s.logs()
    );
}

/// Against an AWS endpoint nobody listens on, every surface says "could not connect to
/// <endpoint>" and never the SDK's Debug form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_aws_endpoint_reads_as_one_sentence_everywhere() {
    let closed = closed_endpoint();
    let b = SlipwayBuilder::new(&closed).env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"));
    let s = b.start().await;
    let expected = format!("could not connect to {closed}");

    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&format!(
            "STS GetCallerIdentity: could not connect to {closed}"
        )),
        "{body}"
    );

    let server = s.admin_url.clone();
    let (code, out, err) = cli(
        &b,
        &[("SLIPWAY_OPS_TOKEN", TOKEN), ("SLIPWAY_SERVER", &server)],
        &["status"],
    );
    assert_eq!(code, Some(1), "an app in error is a failure: {out}{err}");
    assert!(out.contains(&expected), "{out}");
    assert!(err.contains("1 of 1 apps have an error: web"), "{err}");
    let (code, out, _) = cli(
        &b,
        &[("SLIPWAY_OPS_TOKEN", TOKEN), ("SLIPWAY_SERVER", &server)],
        &["status", "--json"],
    );
    assert_eq!(code, Some(1));
    let apps: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert!(
        apps[0]["error"].as_str().unwrap().contains(&expected),
        "{apps}"
    );

    let config = b.config_path();
    let (code, out, err) = cli(
        &b,
        &[],
        &[
            "provision",
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains(&expected), "{out}");
    for text in [&out, &err] {
        for debug in ["DispatchFailure", "ConnectorError", "Some(", "{ "] {
            assert!(!text.contains(debug), "{debug} in {text}");
        }
    }
}

#[test]
fn check_config_refuses_what_serve_refuses() {
    let b = SlipwayBuilder::new(&closed_endpoint());
    let config = b.config_path();
    let config = config.to_str().unwrap();
    let (code, out, err) = cli(&b, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok (1 app)"), "{out}");

    // A [notify] variable that is not set: serve refuses it, so check-config does too.
    let notify = b
        .clone()
        .extra("[notify]\nwebhook_url_env = \"ALERTS_URL\"");
    let (code, _, err) = cli(&notify, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ALERTS_URL"), "{err}");

    let unsigned = b.clone().secret(None);
    let (code, _, err) = cli(&unsigned, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SLIPWAY_WEBHOOK_SECRET"), "{err}");

    let (code, _, err) = cli(
        &b,
        &[("SLIPWAY_OPS_TOKENS", "short")],
        &["check-config", "--config", config],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SLIPWAY_OPS_TOKENS"), "{err}");
    assert!(!err.contains("short"), "the value is never echoed: {err}");

    // Slack's signing secret without the workspace it must come from: serve refuses to start.
    let (code, _, err) = cli(
        &b,
        &[("SLIPWAY_SLACK_SIGNING_SECRET", "sIgNiNg-0123456789")],
        &["check-config", "--config", config],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("slack_team_id"), "{err}");
    assert!(!err.contains("sIgNiNg"), "the value is never echoed: {err}");

    // A [github] table without credentials: serve refuses to start.
    let github = b.clone().extra(
        "[github]
api_url = \"http://127.0.0.1:9\"",
    );
    let (code, _, err) = cli(&github, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SLIPWAY_GITHUB_TOKEN"), "{err}");
    let (code, out, err) = cli(
        &github,
        &[("SLIPWAY_GITHUB_TOKEN", "ghp_tOkEn")],
        &["check-config", "--config", config],
    );
    assert_eq!(code, Some(0), "with a token it is accepted: {out}{err}");
    assert!(!format!("{out}{err}").contains("tOkEn"), "{out}{err}");

    // A missing file: its cause once.
    let (code, _, err) = cli(&b, &[], &["check-config", "--config", "/nonexistent.toml"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `[store] engine = "dynamodb"` with DynamoDB out of reach: the commands that read the state
/// fail saying so, backup and restore say what backs up a table, and nothing ever falls back
/// to a SQLite journal (state written where the operator did not ask for it is state they do
/// not keep). `serve` in the same case: tests/it/store_dynamodb.rs.
#[test]
fn a_dynamodb_config_never_falls_back_to_sqlite() {
    let closed = closed_endpoint();
    let b =
        SlipwayBuilder::new(&closed).extra("[store]\nengine = \"dynamodb\"\ntable = \"slipway\"");
    let config = b.config_path();
    let config = config.to_str().unwrap();
    let backup = b.state_dir().with_extension("backup.db");
    let backup = backup.to_str().unwrap();
    let (code, out, err) = cli(&b, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = cli(&b, &[], &["deliveries", "--config", config]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("DynamoDB Query") && err.contains(&format!("could not connect to {closed}")),
        "{err}"
    );
    for args in [
        ["backup", "--config", config, "--to", backup].as_slice(),
        &["restore", "--config", config, "--from", backup],
    ] {
        let (code, out, err) = cli(&b, &[], args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("point-in-time recovery"), "{args:?}: {err}");
    }
    assert!(
        !b.state_dir().join("journal.db").exists(),
        "no SQLite journal was made instead"
    );
    assert!(!std::path::Path::new(backup).exists());

    // A [store] key that does not exist is named, as everywhere in the config.
    let typo = b
        .clone()
        .extra("[store]\nengine = \"dynamodb\"\ntabel = \"slipway\"");
    let (code, _, err) = cli(&typo, &[], &["check-config", "--config", config]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown field `tabel`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_aws_checks_the_named_resources_exist() {
    let emulator = Emulator::start().await;
    let b = SlipwayBuilder::new(&emulator.url);
    let config = b.config_path();
    let config = config.to_str().unwrap();
    let (code, out, err) = cli(&b, &[], &["check-config", "--aws", "--config", config]);
    assert_eq!(code, Some(1), "nothing exists yet: {out}{err}");
    assert!(out.contains("web-build"), "{out}");
    assert!(err.contains("missing"), "{err}");

    let w = Deploy::new().await;
    let (code, out, err) = cli(
        &w.builder,
        &[],
        &[
            "check-config",
            "--aws",
            "--config",
            w.builder.config_path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "everything exists: {out}{err}");
    assert!(out.contains("ok (1 app)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lists_say_so_and_json_is_always_valid() {
    let b = SlipwayBuilder::new(&closed_endpoint())
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"));
    let mut s = b.start().await;
    let server = s.admin_url.clone();
    let config = b.config_path();
    let config = config.to_str().unwrap();
    let journal = ["--config", config];
    let remote = ["--server", server.as_str()];
    let token = [("SLIPWAY_OPS_TOKEN", TOKEN)];
    // The server first; the journal once the server is gone (the CLI is refused while a
    // server holds it).
    for source in [remote.as_slice(), journal.as_slice()] {
        if source == journal.as_slice() {
            s.terminate();
        }
        let run = |args: &[&str]| {
            let args: Vec<&str> = args.iter().chain(source).copied().collect();
            cli(&b, &token, &args)
        };
        let (code, out, err) = run(&["deliveries", "--json"]);
        assert_eq!((code, out.trim()), (Some(0), "[]"), "{source:?} {err}");
        let (code, out, _) = run(&["deployments", "--json"]);
        assert_eq!((code, out.trim()), (Some(0), "[]"), "{source:?}");
        let (code, out, _) = run(&["deliveries"]);
        assert_eq!(
            (code, out.trim()),
            (Some(0), "no deliveries yet"),
            "{source:?}"
        );
        let (code, out, _) = run(&["deployments", "--app", "web"]);
        assert_eq!(
            (code, out.trim()),
            (Some(0), "no deployments of web yet"),
            "{source:?}"
        );
        // An unknown app is an error in both modes.
        let (code, out, err) = run(&["deployments", "--app", "nope"]);
        assert_eq!(code, Some(1), "{source:?}: {out}{err}");
        assert!(err.contains("unknown app nope"), "{source:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_encodes_paths_hints_at_labels_and_keeps_tokens_off_plain_http() {
    let b = SlipwayBuilder::new(&closed_endpoint())
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"));
    let s = b.start().await;
    let server = s.admin_url.clone();
    let env = |token: &'static str| [("SLIPWAY_OPS_TOKEN", token)];

    // The server's `label:token` form given to the CLI: a hint, not only a 401.
    let label = format!("alice:{TOKEN}").leak() as &'static str;
    let (code, _, err) = cli(&b, &env(label), &["status", "--server", &server]);
    assert_eq!(code, Some(1));
    assert!(err.contains("401") && err.contains("label:"), "{err}");

    // `a/b` is one path segment: the server names the app, not a missing route.
    let (code, _, err) = cli(
        &b,
        &env(TOKEN),
        &["deploy", "a/b", MASTER_SHA, "--server", &server],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown app a/b"), "{err}");

    // A token over plain http:// to another machine is refused before anything is sent.
    let (code, _, err) = cli(
        &b,
        &env(TOKEN),
        &["status", "--server", "http://192.0.2.10:9090"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("refusing") && err.contains("--insecure"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_gives_up_after_its_timeout_and_the_deployment_goes_on() {
    let w = Deploy::new().await;
    let b = w
        .builder
        .clone()
        .env("SLIPWAY_OPS_TOKENS", &format!("alice:{TOKEN}"));
    let s = b.start().await;
    w.proxy.rollouts([Rollout::Never]);
    let (code, out, err) = cli(
        &b,
        &[
            ("SLIPWAY_OPS_TOKEN", TOKEN),
            ("SLIPWAY_SERVER", &s.admin_url),
        ],
        &["deploy", "web", MASTER_SHA, "--wait", "--timeout", "2s"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("accepted"), "{out}");
    assert!(
        err.contains("gave up following deployment") && err.contains("after 2s"),
        "{err}"
    );
    let d = eventually("the deployment still going", || async {
        b.deployments().into_iter().next()
    })
    .await;
    assert!(
        matches!(d["state"].as_str(), Some("pending" | "deploying")),
        "{d}"
    );
}

#[test]
fn completions_and_help() {
    let b = SlipwayBuilder::new(&closed_endpoint());
    let (code, out, _) = cli(&b, &[], &["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("_slipway") && out.contains("check-config"),
        "{out}"
    );
    let (code, out, _) = cli(&b, &[], &["deploy", "--help"]);
    assert_eq!(code, Some(0));
    for expected in [
        "The app, as named in slipway.toml",
        "The commit to deploy",
        "--timeout",
        "Examples:",
        "http://127.0.0.1:9090",
    ] {
        assert!(out.contains(expected), "{expected} missing from:\n{out}");
    }
    let (code, _, err) = cli(&b, &[], &["deploy"]);
    assert_eq!(code, Some(2), "a usage error: {err}");
}

/// Under systemd or in a pipe, text logs carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colour_codes_outside_a_terminal() {
    let b = SlipwayBuilder::new(&closed_endpoint());
    let config = b.write_config();
    let mut child = b
        .command()
        .env("SLIPWAY_LOG_FORMAT", "text")
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    let seen = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.expect("slipway logged `listening`");
    assert!(!seen.contains('\u{1b}'), "{seen:?}");
    assert!(seen.contains("INFO"), "{seen}");
}

/// `slipway init` reads the real service and projects and writes a file check-config accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_for_an_existing_service_that_check_config_accepts() {
    let w = Deploy::new().await;
    let b = SlipwayBuilder::new(&w.emulator.url);
    let out = b.state_dir().with_file_name("written.toml");
    let out = out.to_str().unwrap();
    let (code, stdout, err) = cli(
        &b,
        &[],
        &[
            "init",
            "--cluster",
            "web",
            "--service",
            "web",
            "--repository",
            "Octo-Org/web",
            "--output",
            out,
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{err}");
    let text = std::fs::read_to_string(out).unwrap();
    for line in [
        "repository = \"octo-org/web\"",
        "codebuild_project = \"web-build\"",
        "cluster = \"web\"",
        "container = \"web\"",
        "ecr_repository = \"web\"",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("# "), "commented:\n{text}");

    // Not overwritten by accident.
    let (code, _, err) = cli(
        &b,
        &[],
        &[
            "init",
            "--cluster",
            "web",
            "--service",
            "web",
            "--output",
            out,
        ],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("exists"), "{err}");

    let (code, stdout, err) = cli(&b, &[], &["check-config", "--aws", "--config", out]);
    assert_eq!(code, Some(0), "{stdout}{err}");

    // A service that does not exist says so.
    let (code, _, err) = cli(
        &b,
        &[],
        &[
            "init",
            "--cluster",
            "web",
            "--service",
            "nope",
            "--output",
            out,
            "--force",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("no service nope in cluster web"), "{err}");
}

/// `--wait` rides out a slipway that answers 503 for a while (a restart behind a load
/// balancer), and a 4xx still ends it. The server is a stand-in with slipway's API shape: a
/// real slipway cannot be made to answer 503 on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_rides_out_transient_poll_errors() {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let polls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/api/apps/{app}/deploy",
            post(|Path(app): Path<String>| async move {
                // "gone": a deployment the server then says does not exist.
                let id = if app == "gone" { 8 } else { 7 };
                (
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({ "deployment": id })),
                )
            }),
        )
        .route(
            "/api/deployments/{id}",
            get(
                |State(polls): State<Arc<AtomicU32>>, Path(id): Path<i64>| async move {
                    if id == 8 {
                        return (
                            StatusCode::NOT_FOUND,
                            Json(serde_json::json!({ "error": "no deployment 8" })),
                        );
                    }
                    match polls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({ "error": "restarting" })),
                        ),
                        _ => (
                            StatusCode::OK,
                            Json(serde_json::json!({
                                "id": 7, "app": "web", "sha": MASTER_SHA,
                                "state": "succeeded", "finished": true
                            })),
                        ),
                    }
                },
            ),
        )
        .with_state(polls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let b = SlipwayBuilder::new(&closed_endpoint());
    let (code, out, err) = cli(
        &b,
        &[("SLIPWAY_OPS_TOKEN", TOKEN)],
        &["deploy", "web", MASTER_SHA, "--wait", "--server", &url],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(err.matches("503: restarting").count(), 2, "{err}");
    assert_eq!(polls.load(Ordering::SeqCst), 3);

    // An answer that will not change (404) ends the wait at once.
    let (code, _, err) = cli(
        &b,
        &[("SLIPWAY_OPS_TOKEN", TOKEN)],
        &["deploy", "gone", MASTER_SHA, "--wait", "--server", &url],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("404: no deployment 8"), "{err}");
    assert!(!err.contains("still following"), "{err}");
    server.abort();
}
