//! Issue 10: the Prometheus scrape at GET /metrics.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::deploy::Deploy;
use crate::support::slipway::Slipway;
use crate::support::{eventually, fixture, MASTER_SHA};

/// Every metric the issue lists: each must be in every scrape, described.
const ALL: &[&str] = &[
    "slipway_deliveries_total",
    "slipway_webhook_request_duration_seconds",
    "slipway_journal_commit_duration_seconds",
    "slipway_build_start_retries_total",
    "slipway_deployments_total",
    "slipway_deployment_duration_seconds",
    "slipway_deployments_in_progress",
    "slipway_sqs_messages_received_total",
    "slipway_notifications_dropped_total",
    "slipway_aws_calls_total",
    "slipway_github_requests_total",
    "slipway_builds_pending",
    "slipway_oldest_pending_build_age_seconds",
];

pub async fn scrape(s: &Slipway) -> String {
    let resp = reqwest::get(format!("{}/metrics", s.admin_url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.unwrap()
}

/// `promtool check metrics` on the text; any problem it reports fails the test.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup-test-tools.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the scrape:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The value of the one sample of `name` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = text.lines().filter_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse::<f64>().unwrap())
    });
    let first = found.next();
    assert!(
        found.next().is_none(),
        "{name} {labels:?} matches more than one sample"
    );
    first
}

#[tokio::test]
async fn the_first_scrape_lists_every_metric_and_passes_promtool() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let text = scrape(&s).await;
    promtool_check(&text);
    for name in ALL {
        assert!(
            text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} ")),
            "{name} is not described:\n{text}"
        );
    }
    // Known series read 0 before anything happens.
    assert_eq!(sample(&text, "slipway_builds_pending", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "slipway_oldest_pending_build_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "slipway_notifications_dropped_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "slipway_deliveries_total",
            &[("outcome", "accepted")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "slipway_deployments_total",
            &[("app", "web"), ("outcome", "succeeded")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "slipway_deployment_duration_seconds_count",
            &[("app", "web")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_push_build_and_deploy_move_the_aws_call_counters() {
    let w = Deploy::new().await;
    let s = w.builder.start().await;
    let before = scrape(&s).await;
    let start_build = [
        ("service", "codebuild"),
        ("operation", "StartBuild"),
        ("result", "ok"),
    ];
    assert_eq!(
        sample(&before, "slipway_aws_calls_total", &start_build),
        Some(0.0)
    );

    let d = w.ship(&s, "metrics-1", MASTER_SHA).await;
    assert_eq!(d["state"], "succeeded", "{d}");

    let after = scrape(&s).await;
    promtool_check(&after);
    assert_eq!(
        sample(&after, "slipway_aws_calls_total", &start_build),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "slipway_deployments_total",
            &[("app", "web"), ("outcome", "succeeded")]
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "slipway_deployment_duration_seconds_count",
            &[("app", "web")]
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "slipway_deployments_in_progress", &[]),
        Some(0.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "slipway_webhook_request_duration_seconds_count",
            &[]
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "slipway_deliveries_total",
            &[("outcome", "accepted")]
        ),
        Some(1.0),
        "{after}"
    );
    for op in ["RegisterTaskDefinition", "UpdateService"] {
        assert_eq!(
            sample(
                &after,
                "slipway_aws_calls_total",
                &[("service", "ecs"), ("operation", op), ("result", "ok")]
            ),
            Some(1.0),
            "{op}: {after}"
        );
    }
    assert!(
        sample(
            &after,
            "slipway_aws_calls_total",
            &[
                ("service", "ecs"),
                ("operation", "DescribeServices"),
                ("result", "ok")
            ]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(sample(&after, "slipway_builds_pending", &[]), Some(0.0));
}

#[tokio::test]
async fn a_build_codebuild_refuses_to_start_shows_as_pending_and_as_failed_calls() {
    let w = Deploy::new().await;
    w.proxy.fail("StartBuild", 1_000, 500, "InternalFailure");
    let s = w.builder.start().await;
    let r = s
        .deliver(
            "push",
            "metrics-pending",
            &fixture("github/push_master.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let text = eventually("a failed StartBuild counted", || async {
        let text = scrape(&s).await;
        sample(
            &text,
            "slipway_aws_calls_total",
            &[
                ("service", "codebuild"),
                ("operation", "StartBuild"),
                ("result", "error"),
            ],
        )
        .is_some_and(|n| n >= 1.0)
        .then_some(text)
    })
    .await;
    promtool_check(&text);
    assert_eq!(
        sample(&text, "slipway_builds_pending", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "slipway_oldest_pending_build_age_seconds", &[]).unwrap() >= 0.0);
    // Still serving, and the webhook still works.
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}
