//! Issue: `slipway provision` sets up slipway's queue, dead-letter queue and EventBridge rule,
//! idempotently, and checks (never changes) the AWS resources each app needs.

use std::collections::HashMap;
use std::process::ExitStatus;

use aws_sdk_ecs::types::ContainerDefinition;
use aws_sdk_eventbridge::types::{DeadLetterConfig, RetryPolicy, Target};

use crate::support::world::circuit_breaker_on;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

use crate::support::{cfn, eventually, Emulator, Proxy, SlipwayBuilder, MASTER_SHA};

const QUEUE: &str = "slipway-events";
const DLQ: &str = "slipway-events-dlq";
const RULE: &str = "slipway-codebuild";
const TARGET: &str = "slipway-codebuild/slipway";

/// One app of the test world and the AWS resources it gets.
#[derive(Clone)]
struct App {
    name: &'static str,
    repository: &'static str,
    project: &'static str,
    cluster: &'static str,
    service: &'static str,
    container: &'static str,
    ecr: &'static str,
}

impl App {
    /// Everything present and right: repository `octo-org/<name>`, project `<name>-build`,
    /// cluster `main`, service, container and ECR repository `<name>`.
    fn good(name: &'static str) -> App {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        App {
            name,
            repository: leak(format!("octo-org/{name}")),
            project: leak(format!("{name}-build")),
            cluster: "main",
            service: name,
            container: name,
            ecr: name,
        }
    }

    fn toml(&self) -> String {
        format!(
            "\n[[app]]\nname = \"{}\"\nrepository = \"{}\"\ncodebuild_project = \"{}\"\ncluster = \"{}\"\nservice = \"{}\"\ncontainer = \"{}\"\necr_repository = \"{}\"\n",
            self.name,
            self.repository,
            self.project,
            self.cluster,
            self.service,
            self.container,
            self.ecr
        )
    }
}

fn apps_toml(apps: &[App]) -> String {
    apps.iter().map(App::toml).collect()
}

/// What to leave out or get wrong when building an app's resources.
#[derive(Clone, Copy, Default)]
struct Faults {
    no_project: bool,
    project_repository: Option<&'static str>,
    no_ecr: bool,
    no_cluster: bool,
    no_service: bool,
    inactive_service: bool,
    containers: Option<&'static [&'static str]>,
    no_circuit_breaker: bool,
}

/// Creates the resources `app` needs in the emulator, but for `faults`.
async fn build_app(emu: &Emulator, app: &App, faults: Faults) {
    if !faults.no_project {
        let repository = faults.project_repository.unwrap_or(app.repository);
        emu.create_project(app.project, repository).await;
    }
    if !faults.no_ecr {
        emu.push_image(app.ecr, MASTER_SHA).await;
    }
    if faults.no_cluster {
        return;
    }
    emu.create_cluster(app.cluster).await;
    if faults.no_service {
        return;
    }
    let containers: Vec<&str> = faults
        .containers
        .map(|c| c.to_vec())
        .unwrap_or_else(|| vec![app.container]);
    let mut register = emu.ecs().register_task_definition().family(app.name);
    for name in containers {
        register = register.container_definitions(
            ContainerDefinition::builder()
                .name(name)
                .image(format!(
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/{}:1",
                    app.ecr
                ))
                .memory(256)
                .build(),
        );
    }
    let td = register
        .send()
        .await
        .expect("RegisterTaskDefinition")
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    emu.create_service(app.cluster, app.service, &td).await;
    // The emulator ignores CreateService's deployment configuration but keeps UpdateService's.
    if !faults.no_circuit_breaker {
        emu.ecs()
            .update_service()
            .cluster(app.cluster)
            .service(app.service)
            .deployment_configuration(circuit_breaker_on())
            .send()
            .await
            .expect("UpdateService (circuit breaker)");
    }
    if faults.inactive_service {
        emu.ecs()
            .delete_service()
            .cluster(app.cluster)
            .service(app.service)
            .force(true)
            .send()
            .await
            .expect("DeleteService");
    }
}

/// An emulator with `web` (the default app) complete.
async fn world() -> (Emulator, SlipwayBuilder) {
    let emu = Emulator::start().await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let builder = SlipwayBuilder::new(&emu.url).apps(&apps_toml(&[web]));
    (emu, builder)
}

struct Run {
    status: ExitStatus,
    report: Value,
    stderr: String,
}

impl Run {
    /// The status of the item of `kind` named `name`.
    fn status(&self, kind: &str, name: &str) -> String {
        self.item(kind, name)["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn item(&self, kind: &str, name: &str) -> &Value {
        self.report["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["kind"] == kind && i["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {:#}", self.report))
    }

    fn detail(&self, kind: &str, name: &str) -> String {
        self.item(kind, name)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `(kind, name) -> status` of every item.
    fn statuses(&self) -> HashMap<(String, String), String> {
        self.report["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    (
                        i["kind"].as_str().unwrap().to_owned(),
                        i["name"].as_str().unwrap().to_owned(),
                    ),
                    i["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Runs `slipway` off the test's runtime thread, so that the proxy (a task on it) can answer.
async fn slipway(builder: &SlipwayBuilder, args: &[&str]) -> (ExitStatus, String, String) {
    let builder = builder.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        builder.run(&args)
    })
    .await
    .expect("slipway run")
}

async fn provision(builder: &SlipwayBuilder, flags: &[&str]) -> Run {
    let config = builder.write_config();
    let mut args = vec!["provision", "--json", "--config", config.to_str().unwrap()];
    args.extend_from_slice(flags);
    let (status, stdout, stderr) = slipway(builder, &args).await;
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("provision --json printed no JSON ({e}):\n{stdout}\n{stderr}"));
    Run {
        status,
        report,
        stderr,
    }
}

async fn queue_url(emu: &Emulator, name: &str) -> Option<String> {
    emu.sqs()
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url)
}

async fn queue_attributes(emu: &Emulator, url: &str) -> HashMap<String, String> {
    emu.sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect()
}

async fn rule_pattern(emu: &Emulator, rule: &str) -> Value {
    let out = emu
        .events()
        .describe_rule()
        .name(rule)
        .send()
        .await
        .expect("DescribeRule");
    serde_json::from_str(out.event_pattern().expect("a pattern")).expect("pattern JSON")
}

async fn rule_arn(emu: &Emulator, rule: &str) -> String {
    emu.events()
        .describe_rule()
        .name(rule)
        .send()
        .await
        .expect("DescribeRule")
        .arn()
        .unwrap()
        .to_owned()
}

async fn target_arn(emu: &Emulator, rule: &str) -> Option<String> {
    targets_of(emu, rule)
        .await
        .iter()
        .find(|t| t.id() == "slipway")
        .map(|t| t.arn().to_owned())
}

/// The rule's pattern: CodeBuild's final states of `projects`, or ECS's deployment events of
/// the `services` (`cluster/service`, sorted) by their ARNs in the queue's account and region,
/// as the CloudFormation template lists them (issue 22).
fn expected_pattern(projects: &[&str], services: &[&str]) -> Value {
    let arns: Vec<Value> = services
        .iter()
        .map(|s| json!(format!("arn:aws:ecs:eu-west-1:123456789012:service/{s}")))
        .collect();
    json!({ "$or": [
        {
            "source": ["aws.codebuild"],
            "detail-type": ["CodeBuild Build State Change"],
            "detail": {
                "project-name": projects,
                "build-status": ["SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"],
            },
        },
        {
            "source": ["aws.ecs"],
            "detail-type": ["ECS Deployment State Change"],
            "resources": arns,
        },
    ]})
}

#[tokio::test]
async fn fresh_account_gets_queue_dead_letter_queue_rule_and_target() {
    let (emu, builder) = world().await;
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.report["success"], true);
    assert_eq!(run.status("dead_letter_queue", DLQ), "created");
    assert_eq!(run.status("queue", QUEUE), "created");
    assert_eq!(run.status("queue_policy", QUEUE), "created");
    assert_eq!(run.status("rule", RULE), "created");
    assert_eq!(run.status("rule_target", TARGET), "created");
    for (kind, name) in [
        ("codebuild_project", "web-build"),
        ("ecr_repository", "web"),
        ("cluster", "main"),
        ("service", "main/web"),
        ("container", "web"),
        ("circuit_breaker", "main/web"),
    ] {
        assert_eq!(
            run.status(kind, name),
            "ok",
            "{kind} {name}: {:#}",
            run.report
        );
        assert_eq!(run.item(kind, name)["app"], "web");
    }

    // What was created, seen through the SDK.
    let url = queue_url(&emu, QUEUE)
        .await
        .expect("the events queue exists");
    assert_eq!(run.report["queue_url"], url.as_str());
    let dlq_url = queue_url(&emu, DLQ)
        .await
        .expect("the dead-letter queue exists");
    let dlq_arn = queue_attributes(&emu, &dlq_url).await["QueueArn"].clone();
    let attrs = queue_attributes(&emu, &url).await;
    let queue_arn = attrs["QueueArn"].clone();
    let redrive: Value = serde_json::from_str(&attrs["RedrivePolicy"]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5"
    );

    let arn = rule_arn(&emu, RULE).await;
    assert_eq!(run.report["rule_arn"], arn.as_str());
    let policy: Value = serde_json::from_str(&attrs["Policy"]).unwrap();
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(statement["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(statement["Action"], "sqs:SendMessage");
    assert_eq!(statement["Resource"], queue_arn.as_str());
    assert_eq!(
        statement["Condition"]["ArnEquals"]["aws:SourceArn"],
        arn.as_str()
    );
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);

    assert_eq!(
        rule_pattern(&emu, RULE).await,
        expected_pattern(&["web-build"], &["main/web"])
    );
    assert_eq!(target_arn(&emu, RULE).await, Some(queue_arn));
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let emu = Emulator::start().await;
    let proxy = Proxy::start(&emu.url).await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let builder = SlipwayBuilder::new(&proxy.url).apps(&apps_toml(&[web]));
    let first = provision(&builder, &[]).await;
    assert!(first.status.success(), "{:#}", first.report);
    let writes = ["CreateQueue", "SetQueueAttributes", "PutRule", "PutTargets"];
    let before: Vec<usize> = writes.iter().map(|op| proxy.requests(op).len()).collect();
    assert_eq!(before, [2, 1, 1, 1], "first run's writes");

    // The user puts the printed URL into the config, as the text output tells.
    let url = first.report["queue_url"].as_str().unwrap().to_owned();
    let builder = builder.extra(&format!("queue_url = \"{url}\"\n"));
    let second = provision(&builder, &[]).await;
    assert!(second.status.success(), "{:#}", second.report);
    for ((kind, name), status) in second.statuses() {
        assert!(
            status == "unchanged" || status == "ok",
            "{kind} {name} is {status} on the second run: {:#}",
            second.report
        );
    }
    assert_eq!(second.status("rule", RULE), "unchanged");
    assert_eq!(second.status("rule_target", TARGET), "unchanged");
    assert_eq!(second.status("queue_policy", QUEUE), "unchanged");
    assert_eq!(second.status("config", "queue_url"), "ok");
    let after: Vec<usize> = writes.iter().map(|op| proxy.requests(op).len()).collect();
    assert_eq!(after, before, "the second run wrote to AWS");

    // The text form: one line per item, a summary, the queue URL.
    let config = builder.write_config();
    let (status, text, _) = slipway(
        &builder,
        &["provision", "--config", config.to_str().unwrap()],
    )
    .await;
    assert!(status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("KIND"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rule ") && l.contains(" unchanged ")),
        "{text}"
    );
    assert!(text.contains(&format!("queue URL: {url}")), "{text}");
    assert!(text.contains("ok: "), "{text}");
    assert!(!text.contains("put it in slipway.toml"), "{text}");
    // Columns are aligned: the STATUS column starts at the same offset on every item line.
    let offset = lines[0].find("STATUS").unwrap();
    let rule_line = lines.iter().find(|l| l.starts_with("rule ")).unwrap();
    assert_eq!(&rule_line[offset..offset + "unchanged".len()], "unchanged");
    assert_eq!(proxy.requests("PutRule").len(), 1);
}

#[tokio::test]
async fn drift_is_reported_and_repaired() {
    let (emu, builder) = world().await;
    let first = provision(&builder, &[]).await;
    assert!(first.status.success(), "{:#}", first.report);
    let url = queue_url(&emu, QUEUE).await.unwrap();
    let dlq_url = queue_url(&emu, DLQ).await.unwrap();
    let dlq_arn = queue_attributes(&emu, &dlq_url).await["QueueArn"].clone();
    let queue_arn = queue_attributes(&emu, &url).await["QueueArn"].clone();

    // Someone edits the rule's pattern, points the target elsewhere and changes the redrive.
    let edited = json!({"source": ["aws.codebuild"], "detail": {"project-name": ["web-build"]}});
    emu.events()
        .put_rule()
        .name(RULE)
        .event_pattern(edited.to_string())
        .send()
        .await
        .unwrap();
    emu.events()
        .put_targets()
        .rule(RULE)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("slipway")
                .arn(&dlq_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // (Restating the policy: the emulator, unlike SQS, drops a policy that is not restated.)
    let policy = queue_attributes(&emu, &url).await["Policy"].clone();
    emu.sqs()
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 99}).to_string(),
        )
        .attributes(QueueAttributeName::Policy, policy)
        .send()
        .await
        .unwrap();

    // A dry run sees it and touches nothing.
    let dry = provision(&builder, &["--dry-run"]).await;
    assert!(dry.status.success(), "{:#}", dry.report);
    assert_eq!(dry.status("rule", RULE), "would_update");
    assert!(
        dry.detail("rule", RULE).contains("pattern"),
        "{:#}",
        dry.report
    );
    assert_eq!(dry.status("rule_target", TARGET), "would_update");
    assert_eq!(dry.status("queue", QUEUE), "would_update");
    assert_eq!(dry.status("queue_policy", QUEUE), "unchanged");
    assert_eq!(rule_pattern(&emu, RULE).await, edited);
    assert_eq!(
        target_arn(&emu, RULE).await.as_deref(),
        Some(dlq_arn.as_str())
    );

    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("rule", RULE), "updated");
    assert_eq!(run.status("rule_target", TARGET), "updated");
    assert_eq!(run.status("queue", QUEUE), "updated");
    assert_eq!(run.status("dead_letter_queue", DLQ), "unchanged");
    assert_eq!(run.status("queue_policy", QUEUE), "unchanged");
    assert_eq!(
        rule_pattern(&emu, RULE).await,
        expected_pattern(&["web-build"], &["main/web"])
    );
    assert_eq!(target_arn(&emu, RULE).await, Some(queue_arn));
    let redrive: Value =
        serde_json::from_str(&queue_attributes(&emu, &url).await["RedrivePolicy"]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5"
    );

    // A policy that lets anyone's rule send is replaced by the one naming slipway's rule.
    let arn = rule_arn(&emu, RULE).await;
    let loose = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": queue_attributes(&emu, &url).await["QueueArn"],
    }]});
    emu.sqs()
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::Policy, loose.to_string())
        .send()
        .await
        .unwrap();
    let run = provision(&builder, &[]).await;
    assert_eq!(
        run.status("queue_policy", QUEUE),
        "updated",
        "{:#}",
        run.report
    );
    let policy: Value =
        serde_json::from_str(&queue_attributes(&emu, &url).await["Policy"]).unwrap();
    assert_eq!(
        policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
        arn.as_str()
    );

    // The rule follows the configured projects.
    let builder = builder.apps(&apps_toml(&[App::good("web"), App::good("api")]));
    build_app(&emu, &App::good("api"), Faults::default()).await;
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("rule", RULE), "updated");
    assert_eq!(
        rule_pattern(&emu, RULE).await,
        expected_pattern(&["api-build", "web-build"], &["main/api", "main/web"])
    );
}

#[tokio::test]
async fn every_missing_user_resource_is_reported_in_one_run() {
    let emu = Emulator::start().await;
    let mut apps = Vec::new();
    let mut add = |name: &'static str, faults: Faults| {
        let app = App::good(name);
        apps.push((app, faults));
    };
    add("good", Faults::default());
    add(
        "noproject",
        Faults {
            no_project: true,
            ..Faults::default()
        },
    );
    add(
        "otherrepo",
        Faults {
            project_repository: Some("octo-org/otherrepo-two"),
            ..Faults::default()
        },
    );
    add(
        "noecr",
        Faults {
            no_ecr: true,
            ..Faults::default()
        },
    );
    add(
        "noservice",
        Faults {
            no_service: true,
            ..Faults::default()
        },
    );
    add(
        "inactive",
        Faults {
            inactive_service: true,
            ..Faults::default()
        },
    );
    add(
        "nocontainer",
        Faults {
            containers: Some(&["app", "envoy"]),
            ..Faults::default()
        },
    );
    add(
        "nobreaker",
        Faults {
            no_circuit_breaker: true,
            ..Faults::default()
        },
    );
    let mut nocluster = App::good("nocluster");
    nocluster.cluster = "gone";
    apps.push((
        nocluster,
        Faults {
            no_cluster: true,
            ..Faults::default()
        },
    ));
    for (app, faults) in &apps {
        build_app(&emu, app, *faults).await;
    }
    let config: Vec<App> = apps.iter().map(|(a, _)| a.clone()).collect();
    let builder = SlipwayBuilder::new(&emu.url).apps(&apps_toml(&config));

    let run = provision(&builder, &[]).await;
    assert!(!run.status.success(), "{:#}", run.report);
    assert_eq!(run.report["success"], false);
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
    let expect = |kind: &str, name: &str, status: &str, detail: &str| {
        assert_eq!(
            run.status(kind, name),
            status,
            "{kind} {name}: {:#}",
            run.report
        );
        let d = run.detail(kind, name);
        assert!(d.contains(detail), "{kind} {name}: {d:?} lacks {detail:?}");
    };
    expect("codebuild_project", "good-build", "ok", "octo-org/good");
    expect(
        "codebuild_project",
        "noproject-build",
        "missing",
        "not found",
    );
    expect(
        "codebuild_project",
        "otherrepo-build",
        "warning",
        "github.com/octo-org/otherrepo-two",
    );
    expect("ecr_repository", "noecr", "missing", "not found");
    expect("ecr_repository", "good", "ok", "");
    expect("cluster", "gone", "missing", "MISSING");
    expect("cluster", "main", "ok", "ACTIVE");
    expect("service", "main/noservice", "missing", "not found");
    expect("service", "main/inactive", "missing", "INACTIVE");
    expect("container", "nocontainer", "missing", "app, envoy");
    expect(
        "circuit_breaker",
        "main/nobreaker",
        "warning",
        "rollout timeout",
    );
    expect("circuit_breaker", "main/good", "ok", "rollback");
    // The shared cluster is one line naming every app that uses it.
    let cluster_apps = run.item("cluster", "main")["app"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        cluster_apps.contains("good") && cluster_apps.contains("nobreaker"),
        "{cluster_apps}"
    );
    // The plumbing is still set up.
    assert_eq!(run.status("rule", RULE), "created");
    assert_eq!(
        rule_pattern(&emu, RULE).await["$or"][0]["detail"]["project-name"]
            .as_array()
            .unwrap()
            .len(),
        9
    );

    // Warnings only: exit 0. A queue_url naming another queue is a warning too.
    let warnings_only: Vec<App> = apps
        .iter()
        .filter(|(a, _)| ["good", "otherrepo", "nobreaker"].contains(&a.name))
        .map(|(a, _)| a.clone())
        .collect();
    let builder = builder
        .apps(&apps_toml(&warnings_only))
        .extra("queue_url = \"https://sqs.eu-west-1.amazonaws.com/123456789012/other-queue\"\n");
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.status("config", "queue_url"), "warning");
    assert_eq!(
        run.status("codebuild_project", "otherrepo-build"),
        "warning"
    );
    assert_eq!(run.status("circuit_breaker", "main/nobreaker"), "warning");
    assert_eq!(run.status("rule", RULE), "updated");
}

#[tokio::test]
async fn a_failing_aws_call_is_an_error_and_the_other_checks_still_run() {
    let emu = Emulator::start().await;
    let proxy = Proxy::start(&emu.url).await;
    build_app(&emu, &App::good("web"), Faults::default()).await;
    let builder = SlipwayBuilder::new(&proxy.url).apps(&apps_toml(&[App::good("web")]));
    proxy.fail("DescribeClusters", 1, 400, "AccessDeniedException");
    proxy.fail("PutRule", 1, 400, "AccessDeniedException");
    let run = provision(&builder, &[]).await;
    assert!(!run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("cluster", "main"), "error");
    assert!(run.detail("cluster", "main").contains("AccessDenied"));
    assert!(
        run.detail("cluster", "main")
            .contains("ECS DescribeClusters: access denied: ecs:DescribeClusters"),
        "{}",
        run.detail("cluster", "main")
    );
    assert_eq!(run.status("rule", RULE), "error");
    // The steps after the failed one say they were not attempted.
    for (kind, name) in [("queue_policy", QUEUE), ("rule_target", TARGET)] {
        assert_eq!(run.status(kind, name), "not_attempted");
        assert!(run.detail(kind, name).contains("not attempted"));
    }
    // Only the two failed calls count as errors; the steps never tried are counted apart.
    assert_eq!(run.report["summary"]["error"], 2, "{:#}", run.report);
    assert_eq!(
        run.report["summary"]["not_attempted"], 2,
        "{:#}",
        run.report
    );
    assert!(
        run.stderr.contains("2 failed AWS call(s)"),
        "{}",
        run.stderr
    );
    assert_eq!(run.status("queue", QUEUE), "created");
    assert_eq!(run.status("codebuild_project", "web-build"), "ok");
    assert_eq!(run.status("ecr_repository", "web"), "ok");

    // The next run finishes the job.
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("queue", QUEUE), "unchanged");
    assert_eq!(run.status("rule", RULE), "created");
    assert_eq!(run.status("queue_policy", QUEUE), "created");
    assert_eq!(run.status("rule_target", TARGET), "created");
}

#[tokio::test]
async fn dry_run_on_a_fresh_account_changes_nothing() {
    let (emu, builder) = world().await;
    let run = provision(&builder, &["--dry-run"]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.report["dry_run"], true);
    for (kind, name) in [
        ("dead_letter_queue", DLQ),
        ("queue", QUEUE),
        ("queue_policy", QUEUE),
        ("rule", RULE),
        ("rule_target", TARGET),
    ] {
        assert_eq!(
            run.status(kind, name),
            "would_create",
            "{kind}: {:#}",
            run.report
        );
    }
    // The checks of what the user owns still ran.
    assert_eq!(run.status("codebuild_project", "web-build"), "ok");
    assert_eq!(run.status("service", "main/web"), "ok");
    assert_eq!(run.report["queue_url"], Value::Null);

    let queues = emu.sqs().list_queues().send().await.unwrap();
    assert!(queues.queue_urls().is_empty(), "{:?}", queues.queue_urls());
    let rules = emu.events().list_rules().send().await.unwrap();
    assert!(rules.rules().is_empty(), "{:?}", rules.rules());

    let config = builder.write_config();
    let (status, text, _) = slipway(
        &builder,
        &[
            "provision",
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(text.starts_with("dry run: nothing was changed"), "{text}");
    assert!(text.contains("would_create"), "{text}");

    // Missing user resources fail a dry run too.
    let builder = builder.apps(&apps_toml(&[App::good("web"), App::good("ghost")]));
    let run = provision(&builder, &["--dry-run"]).await;
    assert!(!run.status.success());
    assert_eq!(run.status("codebuild_project", "ghost-build"), "missing");
    assert!(emu
        .sqs()
        .list_queues()
        .send()
        .await
        .unwrap()
        .queue_urls()
        .is_empty());
}

#[tokio::test]
async fn provision_names_come_from_the_provision_table() {
    let (emu, builder) = world().await;
    let builder = builder.extra(
        "[provision]\nqueue_name = \"slipway-custom\"\nrule_name = \"slipway-other\"\nmax_receive_count = 3\n",
    );
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("queue", "slipway-custom"), "created");
    assert_eq!(
        run.status("dead_letter_queue", "slipway-custom-dlq"),
        "created"
    );
    assert_eq!(run.status("rule", "slipway-other"), "created");
    let url = queue_url(&emu, "slipway-custom").await.unwrap();
    let redrive: Value =
        serde_json::from_str(&queue_attributes(&emu, &url).await["RedrivePolicy"]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    assert!(queue_url(&emu, QUEUE).await.is_none());
}

/// Rule and target fit together: a CodeBuild state change for a configured project lands in
/// the queue; other projects' and unfinished builds' do not. (The emulator does not enforce
/// queue policies; the policy's condition is checked structurally in the first test.)
#[tokio::test]
async fn a_codebuild_event_lands_in_the_queue() {
    let (emu, builder) = world().await;
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    let url = run.report["queue_url"].as_str().unwrap().to_owned();
    let build_arn = "arn:aws:codebuild:eu-west-1:123456789012:build/web-build:1";
    emu.emit_build_event(
        "arn:aws:codebuild:eu-west-1:123456789012:build/other:1",
        "other-build",
        "SUCCEEDED",
        MASTER_SHA,
    )
    .await;
    emu.emit_build_event(build_arn, "web-build", "IN_PROGRESS", MASTER_SHA)
        .await;
    emu.emit_build_event(build_arn, "web-build", "SUCCEEDED", MASTER_SHA)
        .await;
    let message = eventually("the event in the queue", || async {
        emu.sqs()
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .ok()?
            .messages
            .unwrap_or_default()
            .into_iter()
            .next()
    })
    .await;
    let body: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(body["source"], "aws.codebuild");
    assert_eq!(body["detail"]["project-name"], "web-build");
    assert_eq!(body["detail"]["build-status"], "SUCCEEDED");
    assert_eq!(
        body["detail"]["additional-information"]["source-version"],
        MASTER_SHA
    );
    // Only that one: the other project's and the unfinished build's events were not routed.
    assert_eq!(emu.queue_depth(&url).await, 1);
}

#[tokio::test]
async fn a_service_deployed_by_codedeploy_is_reported_missing() {
    let (emu, _) = world().await;
    let blue = App {
        name: "blue",
        repository: "octo-org/web",
        project: "web-build",
        cluster: "main",
        service: "blue",
        container: "web",
        ecr: "web",
    };
    let td = emu
        .ecs()
        .describe_services()
        .cluster("main")
        .services("web")
        .send()
        .await
        .unwrap()
        .services()[0]
        .task_definition()
        .unwrap()
        .to_owned();
    emu.ecs()
        .create_service()
        .cluster("main")
        .service_name("blue")
        .task_definition(td)
        .desired_count(1)
        .deployment_controller(
            aws_sdk_ecs::types::DeploymentController::builder()
                .r#type(aws_sdk_ecs::types::DeploymentControllerType::CodeDeploy)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let builder = SlipwayBuilder::new(&emu.url).apps(&apps_toml(&[App::good("web"), blue]));
    let run = provision(&builder, &[]).await;
    assert!(!run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("service", "main/blue"), "missing");
    assert!(run
        .detail("service", "main/blue")
        .contains("deployment controller CODE_DEPLOY"));
    assert_eq!(run.status("service", "main/web"), "ok");
}

/// What CloudFormation makes of the template's queues, rule, target and queue policy, made
/// here in the emulator with the SDK from the template's own properties (evaluated for one
/// set of parameters). The stack, with what Ref and GetAtt give for them.
async fn create_template_plumbing(emu: &Emulator, projects: &str) -> cfn::Stack {
    create_template_plumbing_with(emu, projects, &[]).await
}

/// [`create_template_plumbing`] with these parameters overridden.
async fn create_template_plumbing_with(
    emu: &Emulator,
    projects: &str,
    overrides: &[(&str, Value)],
) -> cfn::Stack {
    let mut parameters = cfn::example_parameters(projects);
    parameters.extend(overrides.iter().cloned());
    let mut stack = cfn::Stack::new(cfn::load(), &parameters);
    // Not made here: only named in the generated config.
    stack.set_ref("BackupBucket", "slipway-backups-example");
    for logical in ["DeadLetterQueue", "EventsQueue"] {
        let properties = stack.properties(logical);
        let name = properties["QueueName"]
            .as_str()
            .expect("QueueName")
            .to_owned();
        let mut request = emu.sqs().create_queue().queue_name(&name);
        for (key, value) in properties.as_object().unwrap() {
            if key == "QueueName" {
                continue;
            }
            // SQS takes every attribute as text; a policy as its JSON.
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            request = request.attributes(QueueAttributeName::from(key.as_str()), text);
        }
        let url = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
            .queue_url
            .unwrap();
        let arn = queue_attributes(emu, &url).await["QueueArn"].clone();
        stack.set_ref(logical, url);
        stack.set_attribute(logical, "Arn", arn);
        stack.set_attribute(logical, "QueueName", name);
    }

    let rule = stack.properties("BuildStateRule");
    let name = rule["Name"].as_str().unwrap().to_owned();
    let rule_arn = emu
        .events()
        .put_rule()
        .name(&name)
        .description(rule["Description"].as_str().unwrap())
        .state(rule["State"].as_str().unwrap().into())
        .event_pattern(rule["EventPattern"].to_string())
        .send()
        .await
        .expect("PutRule")
        .rule_arn
        .unwrap();
    stack.set_ref("BuildStateRule", name.clone());
    stack.set_attribute("BuildStateRule", "Arn", rule_arn);
    let mut put = emu.events().put_targets().rule(&name);
    for target in rule["Targets"].as_array().expect("Targets") {
        let mut t = Target::builder()
            .id(target["Id"].as_str().unwrap())
            .arn(target["Arn"].as_str().unwrap());
        if let Some(retry) = target.get("RetryPolicy") {
            t = t.retry_policy(
                RetryPolicy::builder()
                    .maximum_event_age_in_seconds(
                        retry["MaximumEventAgeInSeconds"].as_i64().unwrap() as i32,
                    )
                    .maximum_retry_attempts(retry["MaximumRetryAttempts"].as_i64().unwrap() as i32)
                    .build(),
            );
        }
        if let Some(dlq) = target.get("DeadLetterConfig") {
            t = t.dead_letter_config(
                DeadLetterConfig::builder()
                    .arn(dlq["Arn"].as_str().unwrap())
                    .build(),
            );
        }
        put = put.targets(t.build().unwrap());
    }
    let out = put.send().await.expect("PutTargets");
    assert_eq!(out.failed_entry_count(), 0, "{out:?}");

    for logical in ["EventsQueuePolicy", "DeadLetterQueuePolicy"] {
        let policy = stack.properties(logical);
        for url in policy["Queues"].as_array().unwrap() {
            emu.sqs()
                .set_queue_attributes()
                .queue_url(url.as_str().unwrap())
                .attributes(
                    QueueAttributeName::Policy,
                    policy["PolicyDocument"].to_string(),
                )
                .send()
                .await
                .expect("SetQueueAttributes Policy");
        }
    }
    stack
}

/// The `[provision]` table and `queue_url` of the template's SlipwayToml output: the names a
/// team that followed the README has in its slipway.toml.
fn provision_table_of(stack: &cfn::Stack) -> String {
    let output = stack.output("SlipwayToml");
    let generated: toml::Table = output
        .as_str()
        .expect("SlipwayToml is text")
        .parse()
        .unwrap_or_else(|e| panic!("SlipwayToml is not TOML ({e}):\n{output}"));
    let mut table = toml::Table::new();
    table.insert("queue_url".into(), generated["queue_url"].clone());
    table.insert("provision".into(), generated["provision"].clone());
    toml::to_string(&table).unwrap()
}

async fn targets_of(emu: &Emulator, rule: &str) -> Vec<Target> {
    emu.events()
        .list_targets_by_rule()
        .rule(rule)
        .send()
        .await
        .expect("ListTargetsByRule")
        .targets()
        .to_vec()
}

/// Issue 21 (item 6): one owner for the plumbing. Against the stack's resources, provision
/// recognises the rule, the target (Id `slipway-events-queue`, with its dead-letter queue) and
/// the queue-policy statement (its Sid), reports them, and writes nothing: one target, one
/// statement, as the stack made them.
#[tokio::test]
async fn provision_against_the_templates_resources_adds_nothing() {
    let emu = Emulator::start().await;
    let proxy = Proxy::start(&emu.url).await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let stack = create_template_plumbing(&emu, web.project).await;
    let rule = stack.properties("BuildStateRule");
    let rule_name = rule["Name"].as_str().unwrap().to_owned();
    let target_id = rule["Targets"][0]["Id"].as_str().unwrap().to_owned();
    let sid = stack.properties("EventsQueuePolicy")["PolicyDocument"]["Statement"][0]["Sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let queue = stack.properties("EventsQueue")["QueueName"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = queue_url(&emu, &queue).await.unwrap();
    let policy_before = queue_attributes(&emu, &url).await["Policy"].clone();

    let builder = SlipwayBuilder::new(&proxy.url)
        .apps(&apps_toml(&[web]))
        .extra(&provision_table_of(&stack));
    for run_number in 1..=2 {
        let run = provision(&builder, &[]).await;
        assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
        assert_eq!(run.status("queue", &queue), "unchanged", "{:#}", run.report);
        assert_eq!(run.status("rule", &rule_name), "unchanged");
        let target = format!("{rule_name}/{target_id}");
        assert_eq!(run.status("rule_target", &target), "ok", "{:#}", run.report);
        assert!(
            run.detail("rule_target", &target)
                .contains("dead-letter queue"),
            "{:#}",
            run.report
        );
        assert_eq!(run.status("queue_policy", &queue), "ok", "{:#}", run.report);
        assert!(run.detail("queue_policy", &queue).contains(&sid));
        let target_items = run.report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "rule_target")
            .count();
        assert_eq!(target_items, 1, "run {run_number}: {:#}", run.report);
    }
    for write in ["CreateQueue", "SetQueueAttributes", "PutRule", "PutTargets"] {
        assert!(
            proxy.requests(write).is_empty(),
            "provision called {write} against the stack's resources"
        );
    }

    // What AWS holds: the stack's one target, with its dead-letter queue, and its one statement.
    let targets = targets_of(&emu, &rule_name).await;
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].id(), target_id);
    assert!(targets[0].dead_letter_config().is_some(), "{targets:?}");
    let policy_text = queue_attributes(&emu, &url).await["Policy"].clone();
    assert_eq!(policy_text, policy_before);
    let policy: Value = serde_json::from_str(&policy_text).unwrap();
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    assert_eq!(statements.len(), 1, "{policy:#}");
    assert_eq!(statements[0]["Sid"], sid.as_str());
}

/// An account where the old provision already added its own target next to the stack's: the
/// stack's (with the dead-letter queue) is kept as the target, and the second one, which
/// doubles every event, is reported with how to remove it; nothing is added.
#[tokio::test]
async fn provision_against_the_templates_resources_reports_a_second_target() {
    let emu = Emulator::start().await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let stack = create_template_plumbing(&emu, web.project).await;
    let rule = stack.properties("BuildStateRule");
    let rule_name = rule["Name"].as_str().unwrap().to_owned();
    let queue_arn = rule["Targets"][0]["Arn"].as_str().unwrap().to_owned();
    emu.events()
        .put_targets()
        .rule(&rule_name)
        .targets(
            Target::builder()
                .id("slipway")
                .arn(&queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutTargets");
    let builder = SlipwayBuilder::new(&emu.url)
        .apps(&apps_toml(&[web]))
        .extra(&provision_table_of(&stack));
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    let kept = format!("{rule_name}/{}", rule["Targets"][0]["Id"].as_str().unwrap());
    assert_eq!(run.status("rule_target", &kept), "ok", "{:#}", run.report);
    let extra = format!("{rule_name}/slipway");
    assert_eq!(run.status("rule_target", &extra), "warning");
    let detail = run.detail("rule_target", &extra);
    assert!(
        detail.contains("arrives twice")
            && detail.contains(&format!("remove-targets --rule {rule_name} --ids slipway")),
        "{detail}"
    );
    assert_eq!(targets_of(&emu, &rule_name).await.len(), 2);
}

// The DynamoDB engine's table and bodies bucket (`[store] engine = "dynamodb"`, issue 25).

const STATE_TABLE: &str = "slipway-state";
const BODIES_BUCKET: &str = "slipway-bodies-test";

/// `web` complete, and the DynamoDB engine with a bodies bucket kept 30 days.
async fn dynamodb_world() -> (Emulator, Proxy, SlipwayBuilder) {
    let emu = Emulator::start().await;
    let proxy = Proxy::start(&emu.url).await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let builder = SlipwayBuilder::new(&proxy.url)
        .apps(&apps_toml(&[web]))
        .extra(&format!(
            "[store]\nengine = \"dynamodb\"\ntable = \"{STATE_TABLE}\"\nbodies_bucket = \
             \"{BODIES_BUCKET}\"\n[journal]\nkeep_bodies_days = 30\n"
        ));
    (emu, proxy, builder)
}

fn dynamodb(emu: &Emulator) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&emu.config)
}

fn s3(emu: &Emulator) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&emu.config)
            .force_path_style(true)
            .build(),
    )
}

/// The table as DynamoDB describes it: billing mode, GSIs (name, keys, projection), TTL
/// (status, attribute), point-in-time recovery status.
async fn table_as_seen(emu: &Emulator) -> (String, Vec<String>, (String, String), String) {
    let ddb = dynamodb(emu);
    let t = ddb
        .describe_table()
        .table_name(STATE_TABLE)
        .send()
        .await
        .unwrap();
    let t = t.table().unwrap();
    let billing = t
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .map(|b| b.as_str().to_owned())
        .unwrap_or_default();
    let mut indexes: Vec<String> = t
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            let keys: Vec<String> = i
                .key_schema()
                .iter()
                .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
                .collect();
            format!(
                "{} {} {}",
                i.index_name().unwrap(),
                keys.join(","),
                i.projection().unwrap().projection_type().unwrap().as_str()
            )
        })
        .collect();
    indexes.sort();
    let ttl = ddb
        .describe_time_to_live()
        .table_name(STATE_TABLE)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    let ttl = (
        ttl.time_to_live_status().unwrap().as_str().to_owned(),
        ttl.attribute_name().unwrap_or_default().to_owned(),
    );
    let backups = ddb
        .describe_continuous_backups()
        .table_name(STATE_TABLE)
        .send()
        .await
        .unwrap();
    let pitr = backups
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    (billing, indexes, ttl, pitr)
}

const WANTED_INDEXES: [&str; 3] = [
    "due due_pk:HASH,due_sk:RANGE ALL",
    "lookup look_pk:HASH,look_sk:RANGE ALL",
    "recent list_pk:HASH,list_sk:RANGE ALL",
];

/// The bucket as S3 describes it: public access blocked (all four), default encryption
/// algorithm, the `bodies/` lifecycle rules as `(id, prefix, days)`.
async fn bucket_as_seen(emu: &Emulator) -> (bool, String, Vec<(String, String, i32)>) {
    let s3 = s3(emu);
    let blocked = s3
        .get_public_access_block()
        .bucket(BODIES_BUCKET)
        .send()
        .await
        .ok()
        .and_then(|o| o.public_access_block_configuration().cloned())
        .is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        });
    let encryption = s3
        .get_bucket_encryption()
        .bucket(BODIES_BUCKET)
        .send()
        .await
        .ok()
        .and_then(|o| {
            o.server_side_encryption_configuration()?
                .rules()
                .first()?
                .apply_server_side_encryption_by_default()
                .map(|d| d.sse_algorithm().as_str().to_owned())
        })
        .unwrap_or_default();
    let rules = s3
        .get_bucket_lifecycle_configuration()
        .bucket(BODIES_BUCKET)
        .send()
        .await
        .map(|o| o.rules().to_vec())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r.id().unwrap_or_default().to_owned(),
                r.filter()
                    .and_then(|f| f.prefix())
                    .unwrap_or_default()
                    .to_owned(),
                r.expiration().and_then(|e| e.days()).unwrap_or_default(),
            )
        })
        .collect();
    (blocked, encryption, rules)
}

fn our_rule() -> (String, String, i32) {
    ("slipway-bodies".to_owned(), "bodies/".to_owned(), 30)
}

/// The DynamoDB requests that change something, as the proxy saw them.
fn dynamodb_writes(proxy: &Proxy) -> usize {
    [
        "CreateTable",
        "UpdateTable",
        "UpdateTimeToLive",
        "UpdateContinuousBackups",
        "PutItem",
    ]
    .iter()
    .map(|op| proxy.requests(op).len())
    .sum()
}

#[tokio::test]
async fn dynamodb_store_fresh_account_gets_its_table_and_bucket_and_a_second_run_changes_nothing() {
    let (emu, proxy, builder) = dynamodb_world().await;
    // A new table's backups are not ready at once: DynamoDB refuses PITR for a while
    // (UpdateContinuousBackups, DynamoDB API Reference); provision asks again.
    proxy.fail(
        "UpdateContinuousBackups",
        1,
        400,
        "ContinuousBackupsUnavailableException",
    );
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.status("dynamodb_table", STATE_TABLE), "created");
    assert_eq!(proxy.requests("UpdateContinuousBackups").len(), 2);
    assert_eq!(run.status("bodies_bucket", BODIES_BUCKET), "created");
    // The plumbing is made as before.
    assert_eq!(run.status("queue", QUEUE), "created");

    let (billing, indexes, ttl, pitr) = table_as_seen(&emu).await;
    assert_eq!(billing, "PAY_PER_REQUEST");
    assert_eq!(indexes, WANTED_INDEXES);
    assert_eq!(ttl, ("ENABLED".to_owned(), "expires".to_owned()));
    assert_eq!(pitr, "ENABLED");
    // The engine's own record of when its table was made (delivery recovery reads it).
    let store = slipway::store::dynamodb::DynamoStore::new(
        dynamodb(&emu),
        STATE_TABLE,
        &slipway::config::JournalConfig::default(),
    );
    assert!(store.created_ms().await.unwrap().is_some());
    let (blocked, encryption, rules) = bucket_as_seen(&emu).await;
    assert!(blocked, "public access is not blocked");
    assert_eq!(encryption, "AES256");
    assert_eq!(rules, [our_rule()]);

    let writes = dynamodb_writes(&proxy);
    let second = provision(&builder, &[]).await;
    assert!(second.status.success(), "{:#}", second.report);
    assert_eq!(second.status("dynamodb_table", STATE_TABLE), "unchanged");
    assert_eq!(second.status("bodies_bucket", BODIES_BUCKET), "unchanged");
    assert_eq!(
        dynamodb_writes(&proxy),
        writes,
        "the second run wrote to DynamoDB"
    );

    // provision made what serve needs: check-config takes the config, and serve runs on the
    // table and keeps a push in it.
    let config = builder.write_config();
    let (status, out, stderr) = slipway(
        &builder,
        &["check-config", "--config", config.to_str().unwrap()],
    )
    .await;
    assert!(status.success(), "{out}{stderr}");
    let s = builder.start().await;
    let r = s
        .deliver(
            "push",
            "after-provision-1",
            &crate::support::fixture("github/push_master.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let kept = store.recent_deliveries(10).await.unwrap();
    assert!(
        kept.iter().any(|d| d.delivery == "after-provision-1"),
        "{kept:?}"
    );
}

#[tokio::test]
async fn dynamodb_store_dry_run_on_a_fresh_account_changes_nothing() {
    let (emu, proxy, builder) = dynamodb_world().await;
    let run = provision(&builder, &["--dry-run"]).await;
    assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.status("dynamodb_table", STATE_TABLE), "would_create");
    assert_eq!(run.status("bodies_bucket", BODIES_BUCKET), "would_create");
    assert!(
        run.detail("bodies_bucket", BODIES_BUCKET)
            .contains("after 30 days"),
        "{:#}",
        run.report
    );
    assert_eq!(dynamodb_writes(&proxy), 0);
    let tables = dynamodb(&emu).list_tables().send().await.unwrap();
    assert!(tables.table_names().is_empty(), "{tables:?}");
    let buckets = s3(&emu).list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{buckets:?}");
}

#[tokio::test]
async fn dynamodb_store_drift_is_reported_by_a_dry_run_and_repaired() {
    let (emu, proxy, builder) = dynamodb_world().await;
    let first = provision(&builder, &[]).await;
    assert!(first.status.success(), "{:#}", first.report);

    // Someone turns TTL and point-in-time recovery off, drops an index, unblocks public
    // access and replaces the lifecycle with a rule of their own.
    let ddb = dynamodb(&emu);
    ddb.update_time_to_live()
        .table_name(STATE_TABLE)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name("expires")
                .enabled(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    ddb.update_continuous_backups()
        .table_name(STATE_TABLE)
        .point_in_time_recovery_specification(
            aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    ddb.update_table()
        .table_name(STATE_TABLE)
        .global_secondary_index_updates(
            aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder()
                .delete(
                    aws_sdk_dynamodb::types::DeleteGlobalSecondaryIndexAction::builder()
                        .index_name("lookup")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let s3 = s3(&emu);
    s3.delete_public_access_block()
        .bucket(BODIES_BUCKET)
        .send()
        .await
        .unwrap();
    let theirs = aws_sdk_s3::types::LifecycleRule::builder()
        .id("theirs")
        .status(aws_sdk_s3::types::ExpirationStatus::Enabled)
        .filter(
            aws_sdk_s3::types::LifecycleRuleFilter::builder()
                .prefix("other/")
                .build(),
        )
        .expiration(
            aws_sdk_s3::types::LifecycleExpiration::builder()
                .days(7)
                .build(),
        )
        .build()
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket(BODIES_BUCKET)
        .lifecycle_configuration(
            aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
                .rules(theirs)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let theirs = ("theirs".to_owned(), "other/".to_owned(), 7);

    // A dry run says what differs and changes nothing.
    let writes = dynamodb_writes(&proxy);
    let dry = provision(&builder, &["--dry-run"]).await;
    assert!(dry.status.success(), "{:#}", dry.report);
    assert_eq!(dry.status("dynamodb_table", STATE_TABLE), "would_update");
    let detail = dry.detail("dynamodb_table", STATE_TABLE);
    for says in [
        "TTL off",
        "point-in-time recovery off",
        "GSI lookup missing",
    ] {
        assert!(detail.contains(says), "{says}: {detail}");
    }
    assert_eq!(dry.status("bodies_bucket", BODIES_BUCKET), "would_update");
    let detail = dry.detail("bodies_bucket", BODIES_BUCKET);
    for says in [
        "public access not blocked",
        "no lifecycle rule slipway-bodies",
    ] {
        assert!(detail.contains(says), "{says}: {detail}");
    }
    assert_eq!(dynamodb_writes(&proxy), writes);
    let (_, indexes, ttl, pitr) = table_as_seen(&emu).await;
    assert_eq!(indexes.len(), 2);
    assert_eq!(ttl.0, "DISABLED");
    assert_eq!(pitr, "DISABLED");
    assert_eq!(bucket_as_seen(&emu).await.2, std::slice::from_ref(&theirs));

    // A real run repairs all of it, keeping the bucket's other lifecycle rule.
    let run = provision(&builder, &[]).await;
    assert!(run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("dynamodb_table", STATE_TABLE), "updated");
    assert_eq!(run.status("bodies_bucket", BODIES_BUCKET), "updated");
    let (_, indexes, ttl, pitr) = table_as_seen(&emu).await;
    assert_eq!(indexes, WANTED_INDEXES);
    assert_eq!(ttl, ("ENABLED".to_owned(), "expires".to_owned()));
    assert_eq!(pitr, "ENABLED");
    let (blocked, _, mut rules) = bucket_as_seen(&emu).await;
    assert!(blocked);
    rules.sort();
    assert_eq!(rules, [our_rule(), theirs]);

    let again = provision(&builder, &[]).await;
    assert_eq!(again.status("dynamodb_table", STATE_TABLE), "unchanged");
    assert_eq!(again.status("bodies_bucket", BODIES_BUCKET), "unchanged");
}

/// A table slipway cannot use (other keys) is an error naming why, and left as it is.
#[tokio::test]
async fn dynamodb_store_a_table_with_other_keys_is_an_error() {
    let (emu, _proxy, builder) = dynamodb_world().await;
    dynamodb(&emu)
        .create_table()
        .table_name(STATE_TABLE)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let run = provision(&builder, &[]).await;
    assert!(!run.status.success(), "{:#}", run.report);
    assert_eq!(run.status("dynamodb_table", STATE_TABLE), "error");
    let detail = run.detail("dynamodb_table", STATE_TABLE);
    assert!(detail.contains("not pk (HASH) and sk (RANGE)"), "{detail}");
    // Nothing is done to a table slipway cannot use: its TTL stays off.
    assert!(!detail.contains("repaired"), "{detail}");
    let ttl = dynamodb(&emu)
        .describe_time_to_live()
        .table_name(STATE_TABLE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|t| t.time_to_live_status())
            .map(|s| s.as_str()),
        Some("DISABLED")
    );
    // The bucket is still made.
    assert_eq!(run.status("bodies_bucket", BODIES_BUCKET), "created");
}

/// What CloudFormation makes of the template's `StateTable` (StateStore dynamodb), made here in
/// the emulator with the SDK from the template's own properties, named `STATE_TABLE`. moto's
/// own CloudFormation would not do: it drops TimeToLiveSpecification and
/// PointInTimeRecoverySpecification (moto 5.2.5, `Table.create_from_cloudformation_json`).
/// CloudFormation applies those two after creating the table, as done here. A property this
/// does not know fails the test, so a new one is translated here before it is trusted.
async fn create_template_table(emu: &Emulator, stack: &mut cfn::Stack) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        PointInTimeRecoverySpecification, Projection, ProjectionType, ScalarAttributeType,
        SseSpecification, TimeToLiveSpecification,
    };
    let properties = stack.properties("StateTable");
    let keys = |schema: &Value| -> Vec<KeySchemaElement> {
        schema
            .as_array()
            .expect("KeySchema")
            .iter()
            .map(|k| {
                KeySchemaElement::builder()
                    .attribute_name(k["AttributeName"].as_str().unwrap())
                    .key_type(KeyType::from(k["KeyType"].as_str().unwrap()))
                    .build()
                    .unwrap()
            })
            .collect()
    };
    let ddb = dynamodb(emu);
    let mut create = ddb.create_table().table_name(STATE_TABLE);
    let mut after: Vec<(&str, Value)> = Vec::new();
    for (key, value) in properties.as_object().unwrap() {
        create = match key.as_str() {
            "BillingMode" => create.billing_mode(BillingMode::from(value.as_str().unwrap())),
            "KeySchema" => create.set_key_schema(Some(keys(value))),
            "AttributeDefinitions" => create.set_attribute_definitions(Some(
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        AttributeDefinition::builder()
                            .attribute_name(a["AttributeName"].as_str().unwrap())
                            .attribute_type(ScalarAttributeType::from(
                                a["AttributeType"].as_str().unwrap(),
                            ))
                            .build()
                            .unwrap()
                    })
                    .collect(),
            )),
            "GlobalSecondaryIndexes" => create.set_global_secondary_indexes(Some(
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        for k in i.as_object().unwrap().keys() {
                            assert!(
                                ["IndexName", "KeySchema", "Projection"].contains(&k.as_str()),
                                "GSI property {k} is not translated here"
                            );
                        }
                        GlobalSecondaryIndex::builder()
                            .index_name(i["IndexName"].as_str().unwrap())
                            .set_key_schema(Some(keys(&i["KeySchema"])))
                            .projection(
                                Projection::builder()
                                    .projection_type(ProjectionType::from(
                                        i["Projection"]["ProjectionType"].as_str().unwrap(),
                                    ))
                                    .build(),
                            )
                            .build()
                            .unwrap()
                    })
                    .collect(),
            )),
            "SSESpecification" => create.sse_specification(
                SseSpecification::builder()
                    .enabled(value["SSEEnabled"].as_bool().unwrap())
                    .build(),
            ),
            "TimeToLiveSpecification" => {
                after.push(("ttl", value.clone()));
                create
            }
            "PointInTimeRecoverySpecification" => {
                after.push(("pitr", value.clone()));
                create
            }
            other => panic!("StateTable property {other} is not translated here"),
        };
    }
    create.send().await.expect("CreateTable");
    for (what, value) in after {
        if what == "ttl" {
            ddb.update_time_to_live()
                .table_name(STATE_TABLE)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(value["AttributeName"].as_str().unwrap())
                        .enabled(value["Enabled"].as_bool().unwrap())
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .expect("UpdateTimeToLive");
        } else {
            ddb.update_continuous_backups()
                .table_name(STATE_TABLE)
                .point_in_time_recovery_specification(
                    PointInTimeRecoverySpecification::builder()
                        .point_in_time_recovery_enabled(
                            value["PointInTimeRecoveryEnabled"].as_bool().unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .expect("UpdateContinuousBackups");
        }
    }
    stack.set_ref("StateTable", STATE_TABLE);
    stack.set_attribute(
        "StateTable",
        "Arn",
        format!("arn:aws:dynamodb:eu-west-1:123456789012:table/{STATE_TABLE}"),
    );
}

/// What CloudFormation makes of the template's `BodiesBucket`, made with the SDK from the
/// template's properties, named `BODIES_BUCKET`. A lifecycle rule's `Prefix` is sent as the
/// rule's `Filter` prefix (CloudFormation's rule properties include filters, such as
/// `ObjectSizeGreaterThan`, that only a `Filter` can carry; the top-level `Prefix` of the S3
/// API is deprecated). Unknown properties fail the test.
async fn create_template_bucket(emu: &Emulator, stack: &mut cfn::Stack) {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration,
        ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, ObjectOwnership,
        OwnershipControls, OwnershipControlsRule, PublicAccessBlockConfiguration,
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    let properties = stack.properties("BodiesBucket");
    let s3 = s3(emu);
    s3.create_bucket()
        .bucket(BODIES_BUCKET)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from("eu-west-1"))
                .build(),
        )
        .send()
        .await
        .expect("CreateBucket");
    for (key, value) in properties.as_object().unwrap() {
        match key.as_str() {
            "PublicAccessBlockConfiguration" => {
                let flag = |k: &str| value[k].as_bool().unwrap();
                s3.put_public_access_block()
                    .bucket(BODIES_BUCKET)
                    .public_access_block_configuration(
                        PublicAccessBlockConfiguration::builder()
                            .block_public_acls(flag("BlockPublicAcls"))
                            .block_public_policy(flag("BlockPublicPolicy"))
                            .ignore_public_acls(flag("IgnorePublicAcls"))
                            .restrict_public_buckets(flag("RestrictPublicBuckets"))
                            .build(),
                    )
                    .send()
                    .await
                    .expect("PutPublicAccessBlock");
            }
            "BucketEncryption" => {
                let mut configuration = ServerSideEncryptionConfiguration::builder();
                for rule in value["ServerSideEncryptionConfiguration"]
                    .as_array()
                    .unwrap()
                {
                    let by_default = &rule["ServerSideEncryptionByDefault"];
                    configuration = configuration.rules(
                        ServerSideEncryptionRule::builder()
                            .apply_server_side_encryption_by_default(
                                ServerSideEncryptionByDefault::builder()
                                    .sse_algorithm(ServerSideEncryption::from(
                                        by_default["SSEAlgorithm"].as_str().unwrap(),
                                    ))
                                    .build()
                                    .unwrap(),
                            )
                            .set_bucket_key_enabled(rule["BucketKeyEnabled"].as_bool())
                            .build(),
                    );
                }
                s3.put_bucket_encryption()
                    .bucket(BODIES_BUCKET)
                    .server_side_encryption_configuration(configuration.build().unwrap())
                    .send()
                    .await
                    .expect("PutBucketEncryption");
            }
            "OwnershipControls" => {
                let mut controls = OwnershipControls::builder();
                for rule in value["Rules"].as_array().unwrap() {
                    controls = controls.rules(
                        OwnershipControlsRule::builder()
                            .object_ownership(ObjectOwnership::from(
                                rule["ObjectOwnership"].as_str().unwrap(),
                            ))
                            .build()
                            .unwrap(),
                    );
                }
                s3.put_bucket_ownership_controls()
                    .bucket(BODIES_BUCKET)
                    .ownership_controls(controls.build().unwrap())
                    .send()
                    .await
                    .expect("PutBucketOwnershipControls");
            }
            "LifecycleConfiguration" => {
                let mut rules = Vec::new();
                for rule in value["Rules"].as_array().unwrap() {
                    let mut made = LifecycleRule::builder();
                    for (k, v) in rule.as_object().unwrap() {
                        made = match k.as_str() {
                            "Id" => made.id(v.as_str().unwrap()),
                            "Status" => made.status(ExpirationStatus::from(v.as_str().unwrap())),
                            "Prefix" => made.filter(
                                LifecycleRuleFilter::builder()
                                    .prefix(v.as_str().unwrap())
                                    .build(),
                            ),
                            "ExpirationInDays" => made.expiration(
                                LifecycleExpiration::builder()
                                    .days(v.as_i64().unwrap() as i32)
                                    .build(),
                            ),
                            other => {
                                panic!("lifecycle rule property {other} is not translated here")
                            }
                        };
                    }
                    rules.push(made.build().unwrap());
                }
                s3.put_bucket_lifecycle_configuration()
                    .bucket(BODIES_BUCKET)
                    .lifecycle_configuration(
                        BucketLifecycleConfiguration::builder()
                            .set_rules(Some(rules))
                            .build()
                            .unwrap(),
                    )
                    .send()
                    .await
                    .expect("PutBucketLifecycleConfiguration");
            }
            other => panic!("BodiesBucket property {other} is not translated here"),
        }
    }
    stack.set_ref("BodiesBucket", BODIES_BUCKET);
    stack.set_attribute(
        "BodiesBucket",
        "Arn",
        format!("arn:aws:s3:::{BODIES_BUCKET}"),
    );
    let policy = stack.properties("BodiesBucketPolicy");
    s3.put_bucket_policy()
        .bucket(policy["Bucket"].as_str().unwrap())
        .policy(policy["PolicyDocument"].to_string())
        .send()
        .await
        .expect("PutBucketPolicy");
}

/// Issue 25 (item 5): against the table and bucket the template makes (StateStore dynamodb),
/// with the `[store]` and `[journal]` tables its SlipwayToml writes, `slipway provision` finds
/// nothing to change (its own definition: `DynamoStore::table_drift`, the bucket's checks) and
/// writes nothing, twice.
#[tokio::test]
async fn provision_against_the_templates_dynamodb_table_and_bucket_changes_nothing() {
    let emu = Emulator::start().await;
    let proxy = Proxy::start(&emu.url).await;
    let web = App::good("web");
    build_app(&emu, &web, Faults::default()).await;
    let mut stack = create_template_plumbing_with(
        &emu,
        web.project,
        &[("StateStore", Value::from("dynamodb"))],
    )
    .await;
    create_template_table(&emu, &mut stack).await;
    create_template_bucket(&emu, &mut stack).await;
    let table_before = table_as_seen(&emu).await;
    let bucket_before = bucket_as_seen(&emu).await;
    // The table is the engine's (the same view the provision tests check a made table with).
    assert_eq!(table_before.1, WANTED_INDEXES);

    let generated: toml::Table = stack
        .output("SlipwayToml")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut state = toml::Table::new();
    for key in ["store", "journal"] {
        state.insert(key.into(), generated[key].clone());
    }
    let builder = SlipwayBuilder::new(&proxy.url)
        .apps(&apps_toml(&[web]))
        .extra(&format!(
            "{}\n{}",
            provision_table_of(&stack),
            toml::to_string(&state).unwrap()
        ));
    for run_number in 1..=2 {
        let run = provision(&builder, &[]).await;
        assert!(run.status.success(), "{:#}\n{}", run.report, run.stderr);
        assert_eq!(
            run.status("dynamodb_table", STATE_TABLE),
            "unchanged",
            "run {run_number}: {:#}",
            run.report
        );
        assert_eq!(
            run.status("bodies_bucket", BODIES_BUCKET),
            "unchanged",
            "run {run_number}: {:#}",
            run.report
        );
        assert_eq!(run.status("queue", QUEUE), "unchanged");
    }
    assert_eq!(dynamodb_writes(&proxy), 0, "provision wrote to the table");
    assert_eq!(table_as_seen(&emu).await, table_before);
    assert_eq!(bucket_as_seen(&emu).await, bucket_before);
}
