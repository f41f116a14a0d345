//! Issue 8 item 9, as a user meets it: short webhook secrets and absurd durations are refused
//! at start with a message naming what is wrong, and the journal is private whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::slipway::DEFAULT_APPS;
use crate::support::{eventually, SlipwayBuilder};

#[tokio::test]
async fn a_short_webhook_secret_is_refused_at_start() {
    for (value, which) in [
        ("short-secret", "secret 1 of 1"),
        ("a-long-enough-secret-value,tiny", "secret 2 of 2"),
    ] {
        let b = SlipwayBuilder::new("http://127.0.0.1:9").secret(Some(value));
        let config = b.write_config();
        let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
        assert!(!status.success(), "{value}: slipway started");
        assert!(
            err.contains("SLIPWAY_WEBHOOK_SECRET") && err.contains(which),
            "{value}: {err}"
        );
        assert!(err.contains("shorter than 16 bytes"), "{err}");
        // Never echoed.
        assert!(
            !err.contains("tiny") && !err.contains("short-secret"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn durations_beyond_their_maximum_are_refused_naming_the_key() {
    for (settings, extra, key) in [
        (
            "rollout_timeout_secs = 9223372036854775807",
            "",
            "app[0] (web).rollout_timeout_secs",
        ),
        (
            "",
            "[deploy]\npoll_max_ms = 86400000000\n",
            "deploy.poll_max_ms",
        ),
        (
            "",
            "[events]\nreconcile_after_secs = 99999999999\n",
            "events.reconcile_after_secs",
        ),
        (
            "",
            "[server]\nheader_timeout_secs = 9223372036854775807\n",
            "server.header_timeout_secs",
        ),
    ] {
        let b = SlipwayBuilder::new("http://127.0.0.1:9")
            .apps(&format!("{DEFAULT_APPS}{settings}\n"))
            .extra(extra);
        let config = b.write_config();
        let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        assert!(!status.success(), "{key}: accepted: {out}");
        assert!(
            err.contains(key) && err.contains("too large (at most"),
            "{key}: {err}"
        );
        // serve refuses the same file before doing anything.
        let (status, _, err) = b.run(&["serve", "--config", config.to_str().unwrap()]);
        assert!(!status.success() && err.contains(key), "{key}: {err}");
        assert!(
            !b.state_dir().exists(),
            "serve created its state before refusing"
        );
    }
    // The largest value accepted still passes.
    let b = SlipwayBuilder::new("http://127.0.0.1:9")
        .apps(&format!("{DEFAULT_APPS}rollout_timeout_secs = 86400\n"));
    let config = b.write_config();
    let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok (1 app)"), "{out}");
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_journal_is_private_whatever_the_umask() {
    let b = SlipwayBuilder::new("http://127.0.0.1:9");
    let config = b.write_config();
    // `serve` under umask 000, which would make every file world-writable.
    let inner = b.command();
    let mut cmd = Command::new("sh");
    cmd.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" serve --config \"$1\"")
        .arg(inner.get_program())
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let state = b.state_dir();
    eventually("the journal with its WAL", || async {
        state.join("journal.db-wal").exists().then_some(())
    })
    .await;
    assert_eq!(mode(&state), 0o700, "state_dir");
    for file in [
        "journal.db",
        "journal.db-wal",
        "journal.db-shm",
        "slipway.lock",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    let _ = child.kill();
    let _ = child.wait();

    // A journal left readable by an older slipway is made private at the next start.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        state.join("journal.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut s = b.start().await;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("journal.db")), 0o600);
    s.kill();
}

// ---- Issue 23 items 3 and 6: per-repository secrets; headers before bodies ----

const WEB_SECRET: &str = "secret-of-octo-org-web-0001";
const API_SECRET: &str = "secret-of-octo-org-api-0002";

/// `web` (octo-org/web) and `api` (octo-org/api), each with its own secret variable.
const TWO_REPOSITORIES: &str = r#"
[[app]]
name = "web"
repository = "octo-org/web"
codebuild_project = "web-build"
cluster = "web"
service = "web"
container = "web"
ecr_repository = "web"
webhook_secret_env = "WEB_WEBHOOK_SECRET"

[[app]]
name = "api"
repository = "octo-org/api"
codebuild_project = "api-build"
cluster = "api"
service = "api"
container = "api"
ecr_repository = "api"
webhook_secret_env = "API_WEBHOOK_SECRET"
"#;

fn push_of(repository: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/master",
        "before": "0000000000000000000000000000000000000000",
        "after": crate::support::MASTER_SHA,
        "repository": { "full_name": repository },
        "pusher": { "name": "octocat" },
    }))
    .unwrap()
}

/// POSTs a push signed with `secret`, from hook `hook`.
async fn push_signed(
    s: &crate::support::slipway::Slipway,
    secret: &str,
    hook: &str,
    delivery: &str,
    body: &[u8],
) -> crate::support::slipway::WebhookResponse {
    let signature = slipway::webhook::sign(secret.as_bytes(), body);
    s.post(
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
            ("x-github-hook-id", hook),
            ("x-hub-signature-256", &signature),
        ],
        body.to_vec(),
    )
    .await
}

#[tokio::test]
async fn a_push_signed_with_one_repositorys_secret_is_refused_for_another() {
    let s = SlipwayBuilder::new("http://127.0.0.1:9")
        .secret(None)
        .apps(TWO_REPOSITORIES)
        .env("WEB_WEBHOOK_SECRET", WEB_SECRET)
        .env(
            "API_WEBHOOK_SECRET",
            &format!("old-api-secret-00003,{API_SECRET}"),
        )
        .start()
        .await;
    // web's admin signs a push for api: refused, and nothing is journaled.
    let r = push_signed(&s, WEB_SECRET, "1", "a-for-b", &push_of("octo-org/api")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        r.body["error"],
        "signature does not match a webhook secret of repository octo-org/api"
    );
    let r = push_signed(&s, API_SECRET, "1", "b-for-a", &push_of("octo-org/web")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(s.deliveries().is_empty());
    // Each repository's own secret (either of api's two, for rotation) is accepted.
    let r = push_signed(&s, WEB_SECRET, "1", "a-for-a", &push_of("octo-org/web")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["app"], "web");
    let r = push_signed(&s, API_SECRET, "1", "b-for-b", &push_of("Octo-Org/API")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["app"], "api");
    let r = push_signed(
        &s,
        "old-api-secret-00003",
        "1",
        "b-old",
        &push_of("octo-org/api"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // No default secret is set: a repository no app names has no secret at all.
    let r = push_signed(&s, WEB_SECRET, "1", "a-other", &push_of("octo-org/other")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let logs = s.logs();
    for secret in [WEB_SECRET, API_SECRET, "old-api-secret-00003"] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}

#[tokio::test]
async fn a_repository_with_named_hooks_takes_deliveries_only_from_them() {
    // Hook 11 is octo-org/web's; octo-org/api names no hook, so any of its hooks may deliver.
    let s = SlipwayBuilder::new("http://127.0.0.1:9")
        .apps(TWO_REPOSITORIES)
        .env("WEB_WEBHOOK_SECRET", WEB_SECRET)
        .env("API_WEBHOOK_SECRET", API_SECRET)
        .env("SLIPWAY_GITHUB_TOKEN", "github_pat_test")
        .extra("[github]\napi_url = \"http://127.0.0.1:9\"\n[[github.hook]]\nrepository = \"octo-org/web\"\nid = 11\n")
        .start()
        .await;
    let r = push_signed(&s, WEB_SECRET, "12", "web-12", &push_of("octo-org/web")).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        r.body["error"],
        "hook 12 is not a hook of repository octo-org/web ([[github.hook]])"
    );
    let r = push_signed(&s, WEB_SECRET, "11", "web-11", &push_of("octo-org/web")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = push_signed(&s, API_SECRET, "12", "api-12", &push_of("octo-org/api")).await;
    assert_eq!(r.status, 202, "{}", r.text);
}

#[tokio::test]
async fn a_request_without_the_signature_headers_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A budget far smaller than the body: if the header-less body were read, it would hold all
    // of it, and the signed push below would wait for it in vain (503).
    let s = SlipwayBuilder::new("http://127.0.0.1:9")
        .extra("[server]\nunauthenticated_body_bytes = 65536\n")
        .start()
        .await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::new();
    for (i, head) in [
        // No signature, event or delivery.
        "content-type: application/json\r\n",
        // A signature, but no event or delivery.
        "content-type: application/json\r\nx-hub-signature-256: sha256=00\r\n",
    ]
    .iter()
    .enumerate()
    {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket
            .write_all(
                format!(
                    "POST /webhooks/github HTTP/1.1\r\nhost: x\r\n{head}content-length: {}\r\n\r\n",
                    20 * 1024 * 1024
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // 128 KiB of the 20 MiB, then nothing more: the request stays open.
        let _ = socket.write_all(&vec![b' '; 128 * 1024]).await;
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), socket.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("request {i}: no answer without the body"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401"), "request {i}: {answer}");
        sockets.push(socket);
    }
    // The budget is whole: a signed push is read and accepted while those sockets are open.
    let body = push_of("octo-org/web");
    let r = push_signed(
        &s,
        crate::support::SECRET,
        "4242",
        "after-headerless",
        &body,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drop(sockets);
}

// ---- Issue 23 item 7: the public /readyz writes nothing and tells no detail ----

/// The row a readiness check writes (the admin `/readyz` proves the journal takes a write
/// there), read without writing. Other writers (lease renewals, the WAL checkpointer) keep
/// running meanwhile, so the files themselves say nothing about what `/readyz` did.
fn ready_check(state: &std::path::Path) -> Option<String> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("journal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row(
        "SELECT value FROM meta WHERE key = 'ready_check'",
        [],
        |r| r.get(0),
    )
    .ok()
}

#[tokio::test]
async fn the_public_readyz_writes_nothing_and_tells_no_detail() {
    // Nothing listens behind AWS_ENDPOINT_URL: the credentials check fails, naming the
    // endpoint, and no queue is found by its name.
    let s = SlipwayBuilder::new("http://127.0.0.1:9")
        .extra("[provision]\nqueue_name = \"secret-queue-name\"\n")
        .start()
        .await;
    let state = s.builder.state_dir();
    let at_rest = ready_check(&state);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "status": "not ready", "reason": "AWS unavailable" })
        );
    }
    assert_eq!(ready_check(&state), at_rest, "the public /readyz wrote");
    let (status, body) = s.get("/healthz").await;
    assert_eq!((status, body), (200, serde_json::json!({ "status": "ok" })));
    assert_eq!(ready_check(&state), at_rest, "/healthz wrote");

    // The detail is on the admin listener only, and that check does write.
    let (status, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("STS GetCallerIdentity: could not connect to http://127.0.0.1:9"),
        "{text}"
    );
    assert!(text.contains("secret-queue-name"), "{text}");
    let written = ready_check(&state);
    assert!(
        written.is_some() && written != at_rest,
        "the admin /readyz writes its check: {at_rest:?} then {written:?}"
    );
}

// ---- Issue 23 item 4: logs no request can forge ----

const SLACK_SECRET: &str = "slack-signing-secret-for-logs";

/// `slipway serve` for `b` on fixed free ports, with `SLIPWAY_LOG_FORMAT` set to `format`
/// (None: unset, slipway chooses); returns the process, its stderr as it comes, and the public
/// URL once `/healthz` answers.
async fn serve_logging(
    b: &SlipwayBuilder,
    format: Option<&str>,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    String,
) {
    use std::io::Read;
    let config = b.write_config();
    let port = crate::support::free_port();
    let admin = crate::support::free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        )
        .replacen(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
            1,
        );
    std::fs::write(&config, text).unwrap();
    let mut cmd = b.command();
    cmd.env_remove("SLIPWAY_LOG_FORMAT");
    if let Some(format) = format {
        cmd.env("SLIPWAY_LOG_FORMAT", format);
    }
    let mut child = cmd
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
    let sink = out.clone();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    // While starting, both listeners answer 503 to anything but the health checks; the real
    // server answers an unknown path 404.
    eventually("slipway serving", || async {
        let r = reqwest::get(format!("{url}/not-a-route")).await.ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    (child, out, url)
}

#[tokio::test]
async fn a_forged_line_in_slack_text_or_a_request_id_never_reaches_the_log() {
    const FORGED: &str = "2026-12-04T00:00:00.000000Z  INFO slipway: forged line";
    let b = SlipwayBuilder::new("http://127.0.0.1:9")
        .env(slipway::config::SLACK_SIGNING_SECRET_ENV, SLACK_SECRET)
        .extra("[chat]\nslack_team_id = \"T0001\"\n");
    for format in [Some("text"), None] {
        let (mut child, out, url) = serve_logging(&b, format).await;
        let client = reqwest::Client::new();
        // A signed command whose text holds a newline, a whole log line and an ESC sequence.
        let text = format!("status\n{FORGED}\u{1b}[2K");
        let body = serde_urlencoded::to_string([
            ("team_id", "T0001"),
            ("user_id", "U1\nuser_id=U0ADMIN"),
            ("user_name", "eve"),
            // Differs per run: the same signed request is refused a second time.
            ("channel_id", if format.is_some() { "C1" } else { "C2" }),
            ("command", "/slipway"),
            ("text", text.as_str()),
        ])
        .unwrap();
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let r = client
            .post(format!("{url}/chat/slack"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", &ts)
            .header(
                "x-slack-signature",
                slipway::chat::sign(SLACK_SECRET.as_bytes(), &ts, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        // A request id that would forge span fields is replaced; a fine one is kept.
        let r = client
            .get(format!("{url}/healthz"))
            .header("x-request-id", "x method=DELETE path=/api/forged")
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(!id.contains(' ') && !id.contains("forged"), "{id}");
        let r = client
            .get(format!("{url}/healthz"))
            .header("x-request-id", "req-42.a_b")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "req-42.a_b");
        let logs = eventually("the command logged", || async {
            let logs = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
            logs.contains("chat: slash command").then_some(logs)
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !logs.contains('\u{1b}'),
            "{format:?}: an ESC reached the log:\n{logs}"
        );
        for line in logs.lines() {
            assert!(
                !line.starts_with(FORGED) && !line.starts_with("user_id=U0ADMIN"),
                "{format:?}: a forged line:\n{logs}"
            );
            assert!(!line.contains("method=DELETE"), "{format:?}: {line}");
        }
        match format {
            // The escaped text is still there to read.
            Some(_) => assert!(logs.contains(r"status\n2026-12-04T00"), "{logs}"),
            // Not a terminal: JSON by default, one object a line.
            None => {
                for line in logs.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                }
            }
        }
    }
}

// ---- Issue 23 item 8: the GitHub token never travels in clear text ----

#[tokio::test]
async fn an_http_github_api_url_is_refused_unless_it_is_this_machine() {
    let b = SlipwayBuilder::new("http://127.0.0.1:9")
        .env("SLIPWAY_GITHUB_TOKEN", "github_pat_test")
        .extra("[github]\napi_url = \"http://ghe.example.com/api/v3\"\n");
    let config = b.write_config();
    let config = config.to_str().unwrap();
    for command in ["check-config", "serve"] {
        let (status, out, err) = b.run(&[command, "--config", config]);
        assert!(!status.success(), "{command} accepted it: {out}");
        assert!(
            err.contains("github.api_url") && err.contains("must be https://"),
            "{command}: {err}"
        );
        assert!(!err.contains("github_pat_test"), "{command}: {err}");
    }
    assert!(
        !b.state_dir().exists(),
        "serve created its state before refusing"
    );
    // https anywhere, and plain http to this machine, are fine.
    for url in [
        "https://ghe.example.com/api/v3",
        "http://127.0.0.1:9",
        "http://localhost:9",
    ] {
        let b = SlipwayBuilder::new("http://127.0.0.1:9")
            .env("SLIPWAY_GITHUB_TOKEN", "github_pat_test")
            .extra(&format!("[github]\napi_url = \"{url}\"\n"));
        let config = b.write_config();
        let (status, _, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        assert!(status.success(), "{url}: {err}");
    }
}
