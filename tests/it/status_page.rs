//! Issue 10: the status page at GET / and GET /deployments/{id}, rendered by headless chromium.

use std::process::Command;

use crate::deploy::Deploy;
use crate::support::proxy::Rollout;
use crate::support::slipway::Slipway;
use crate::support::{eventually, fixture, MASTER_SHA};

/// The DOM chromium builds from `url` (headless, no network beyond the URL).
async fn render(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("chromium (scripts/setup-test-tools.sh installs it)");
        assert!(
            out.status.success(),
            "chromium {url}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// GET `path` from the admin listener: its status and body.
pub async fn page(s: &Slipway, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}{path}", s.admin_url))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn refreshes(html: &str) -> bool {
    html.contains(r#"http-equiv="refresh""#)
}

#[tokio::test]
async fn after_a_deploy_the_page_shows_what_runs_and_the_run_that_put_it_there() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let d = w.ship(&s, "page-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let to = d["to_task_definition"].as_str().unwrap();
    let revision = to.rsplit('/').next().unwrap();

    let dom = render(format!("{}/", s.admin_url)).await;
    assert!(dom.contains(r#"name="viewport""#), "{dom}");
    for expected in [
        "<strong>web</strong>",
        &MASTER_SHA[..7],
        revision,
        d["image"].as_str().unwrap(),
        "octocat",
        "build_succeeded",
        "succeeded",
        &format!(r#"href="/deployments/{}""#, d["id"]),
    ] {
        assert!(dom.contains(expected), "{expected} missing from:\n{dom}");
    }
    assert!(!refreshes(&dom), "nothing is in progress:\n{dom}");

    let dom = render(format!("{}/deployments/{}", s.admin_url, d["id"])).await;
    for expected in [
        MASTER_SHA,
        revision,
        w.base_td.rsplit('/').next().unwrap(),
        d["ecs_deployment_id"].as_str().unwrap(),
        "<progress",
        "tasks running",
    ] {
        assert!(dom.contains(expected), "{expected} missing from:\n{dom}");
    }
}

#[tokio::test]
async fn a_rollout_in_progress_refreshes_and_a_failed_build_says_why() {
    let w = Deploy::new().await;
    w.proxy.rollouts([Rollout::Never]);
    let s = w.builder.start().await;
    w.build_succeeds(&s, "page-slow", MASTER_SHA).await;
    let id = eventually("a deploy rolling out", || async {
        w.builder
            .deployments()
            .into_iter()
            .find(|d| d["state"] == "deploying")
            .map(|d| d["id"].as_i64().unwrap())
    })
    .await;
    let dom = render(format!("{}/", s.admin_url)).await;
    assert!(refreshes(&dom), "{dom}");
    assert!(dom.contains("deploying"), "{dom}");
    let dom = render(format!("{}/deployments/{id}", s.admin_url)).await;
    assert!(refreshes(&dom), "{dom}");

    // A second push whose build fails: its row names the state and the reason.
    const OTHER: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let arn = w.push(&s, "page-failed", OTHER).await;
    w.complete(&arn, "FAILED", OTHER).await;
    let row = eventually("the build failed", || async {
        s.deliveries()
            .into_iter()
            .find(|d| d["delivery"] == "page-failed" && d["state"] == "build_failed")
    })
    .await;
    let dom = render(format!("{}/", s.admin_url)).await;
    assert!(dom.contains("build_failed"), "{dom}");
    let reason = row["reason"].as_str().expect("a failed build has a reason");
    assert!(dom.contains(reason), "{reason} missing from:\n{dom}");
}

#[tokio::test]
async fn bad_deployment_ids_are_not_found_and_payload_text_is_escaped() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    for path in ["/deployments/abc", "/deployments/999", "/deployments/-1"] {
        let (status, _) = page(&s, path).await;
        assert_eq!(status, 404, "{path}");
    }
    // Whatever a pusher calls themselves is text on the page, never markup.
    let body = String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replacen("\"octocat\"", "\"<img src=x onerror=alert(1)>\"", 1);
    let r = s.deliver("push", "page-evil", body.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (status, html) = page(&s, "/").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_page_and_the_metrics_are_not_on_the_public_listener() {
    let emulator = crate::support::Emulator::start().await;
    let s = crate::support::SlipwayBuilder::new(&emulator.url)
        .start()
        .await;
    for path in ["/", "/metrics", "/deployments/1"] {
        let public = reqwest::get(format!("{}{path}", s.url)).await.unwrap();
        assert_eq!(public.status(), 404, "{path} on the public listener");
    }
    let admin = reqwest::get(format!("{}/metrics", s.admin_url))
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

/// Issue 23 item 2: a DNS-rebinding page in an operator's browser reaches the admin listener
/// under a name the attacker controls: every admin route answers it 421.
#[tokio::test]
async fn the_admin_listener_answers_only_the_hosts_it_is_configured_for() {
    let s = crate::support::SlipwayBuilder::new("http://127.0.0.1:9")
        .env("SLIPWAY_OPS_TOKENS", "ops:a-long-enough-ops-token")
        .extra("[server]\nadmin_hosts = [\"slipway.internal\"]\n")
        .start()
        .await;
    let port = s.admin_url.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let get = |host: String, path: &'static str| {
        let client = client.clone();
        let url = format!("{}{path}", s.admin_url);
        async move {
            let r = client
                .get(url)
                .header("host", host)
                .bearer_auth("a-long-enough-ops-token")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let routes = [
        "/",
        "/metrics",
        "/deployments/1",
        "/api/apps",
        "/api/deliveries",
        "/healthz",
        "/readyz",
        "/no-such-route",
    ];
    for host in [
        "rebind.attacker.example".to_owned(),
        format!("rebind.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
    ] {
        for path in routes {
            let (status, body) = get(host.clone(), path).await;
            assert_eq!(status, 421, "{host}{path}: {body}");
            assert!(body.contains("admin_hosts"), "{body}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "slipway.internal".to_owned(),
        format!("slipway.internal:{port}"),
    ] {
        for path in ["/metrics", "/api/apps", "/healthz"] {
            assert_eq!(get(host.clone(), path).await.0, 200, "{host}{path}");
        }
    }
}

/// Issue 23 item 2: page loads share the page's ECS reads; any page the operator opens could
/// fire them blind (`<img>` tags) and throttle the ECS API that deploys need.
#[tokio::test]
async fn twenty_page_loads_ask_ecs_at_most_twice() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let before = w.proxy.requests("DescribeServices").len();
    let loads: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}/", s.admin_url);
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status().as_u16() })
        })
        .collect();
    for load in loads {
        assert_eq!(load.await.unwrap(), 200);
    }
    let calls = w.proxy.requests("DescribeServices").len() - before;
    assert!(
        (1..=2).contains(&calls),
        "{calls} DescribeServices for 20 loads"
    );
    // The page still shows what ECS said.
    let (_, html) = page(&s, "/").await;
    assert!(
        html.contains(w.base_td.rsplit('/').next().unwrap()),
        "{html}"
    );
}

/// Issue 23 item 2: with `SLIPWAY_READ_TOKEN`, the page and `/metrics` need it (a bearer
/// token, as Prometheus sends it, or Basic, as a browser asks for it); health does not.
#[tokio::test]
async fn the_read_token_guards_the_page_and_the_metrics() {
    const TOKEN: &str = "read-token-0123456789";
    let s = crate::support::SlipwayBuilder::new("http://127.0.0.1:9")
        .env("SLIPWAY_READ_TOKEN", TOKEN)
        .start()
        .await;
    let client = reqwest::Client::new();
    for path in ["/", "/metrics", "/deployments/1"] {
        let url = format!("{}{path}", s.admin_url);
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
            "{path}"
        );
        let r = client
            .get(&url)
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_ne!(r.status(), 401, "{path}");
        let r = client
            .get(&url)
            .basic_auth("operator", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{path}");
    }
    let r = client
        .get(format!("{}/healthz", s.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Issue 23 item 5: whatever type a signed payload gives `pusher.name`, the page still
/// answers; a number is shown as the name.
#[tokio::test]
async fn a_numeric_pusher_name_is_shown_and_odd_ones_break_nothing() {
    let s = crate::support::SlipwayBuilder::new("http://127.0.0.1:9")
        .start()
        .await;
    let push = |sha: &str, pusher: serde_json::Value| {
        let mut body: serde_json::Value =
            serde_json::from_slice(&fixture("github/push_master.json")).unwrap();
        body["after"] = sha.into();
        body["pusher"]["name"] = pusher;
        serde_json::to_vec(&body).unwrap()
    };
    for (i, name) in [
        serde_json::json!(4242_1337),
        serde_json::json!(2.5),
        serde_json::json!({ "nested": "object" }),
        serde_json::json!([1, 2]),
        serde_json::json!(true),
    ]
    .into_iter()
    .enumerate()
    {
        let sha = format!("{:0>40}", i + 1);
        let r = s
            .deliver("push", &format!("pusher-{i}"), &push(&sha, name))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let (status, html) = page(&s, "/").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("42421337"), "{html}");
    assert!(html.contains("2.5"), "{html}");
    assert!(!html.contains("nested"), "{html}");
    assert_eq!(s.deliveries().len(), 5);
}
