//! The files under `deploy/`: the CloudFormation template passes cfn-lint, the IAM policy
//! grants what slipway calls, and the Dockerfile, systemd unit and buildspec keep the
//! properties the rest of the setup relies on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What `slipway serve` and its workers call.
const RUN_ACTIONS: &[&str] = &[
    "codebuild:StartBuild",
    "codebuild:BatchGetBuilds",
    "codebuild:ListBuildsForProject",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "ecr:DescribeImages",
    "ecr:DescribeRepositories",
    "ecr:ListImages",
    "ecs:DescribeClusters",
    "ecs:DescribeServices",
    "ecs:DescribeTaskDefinition",
    "ecs:RegisterTaskDefinition",
    "ecs:UpdateService",
    "ecs:ListServiceDeployments",
    "ecs:DescribeServiceDeployments",
    "ecs:StopServiceDeployment",
    "ecs:DescribeServiceRevisions",
    "ecs:TagResource",
    "iam:PassRole",
];

/// What `slipway provision` calls.
const PROVISION_ACTIONS: &[&str] = &[
    "sqs:CreateQueue",
    "sqs:SetQueueAttributes",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:TagQueue",
    "events:PutRule",
    "events:PutTargets",
    "events:DescribeRule",
    "events:ListTargetsByRule",
    "codebuild:BatchGetProjects",
    "ecr:DescribeRepositories",
    "ecs:DescribeClusters",
    "ecs:DescribeServices",
    "ecs:DescribeTaskDefinition",
    "codebuild:ListProjects", // slipway init
];

#[test]
fn cloudformation_template_passes_cfn_lint() {
    let cfn_lint: PathBuf = repo().join(".venv/bin/cfn-lint");
    assert!(
        cfn_lint.is_file(),
        "{} is missing: run scripts/setup-emulator.sh (it installs cfn-lint from \
         requirements-dev.txt into .venv)",
        cfn_lint.display()
    );
    let output = Command::new(&cfn_lint)
        .arg("deploy/cloudformation.yml")
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", cfn_lint.display()));
    assert!(
        output.status.success(),
        "cfn-lint deploy/cloudformation.yml failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The actions of the statements whose Sid starts with `prefix`.
fn actions_under(policy: &serde_json::Value, prefix: &str) -> BTreeSet<String> {
    let statements = policy["Statement"]
        .as_array()
        .expect("Statement is an array");
    let mut actions = BTreeSet::new();
    for statement in statements {
        let sid = statement["Sid"].as_str().unwrap_or_default();
        if !sid.starts_with(prefix) {
            continue;
        }
        match &statement["Action"] {
            serde_json::Value::String(action) => {
                actions.insert(action.clone());
            }
            serde_json::Value::Array(list) => {
                for action in list {
                    let action = action.as_str().expect("actions are strings");
                    actions.insert(action.to_owned());
                }
            }
            other => panic!("statement {sid}: unexpected Action {other}"),
        }
    }
    actions
}

#[test]
fn iam_policies_grant_exactly_what_slipway_calls() {
    for (file, prefix, expected) in [
        ("deploy/iam-policy-runtime.json", "SlipwayRun", RUN_ACTIONS),
        (
            "deploy/iam-policy-provision.json",
            "SlipwayProvision",
            PROVISION_ACTIONS,
        ),
    ] {
        let text = read(file);
        let policy: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(policy["Version"], "2012-10-17");
        let statements = policy["Statement"]
            .as_array()
            .expect("Statement is an array");
        for statement in statements {
            let sid = statement["Sid"]
                .as_str()
                .expect("every statement has a Sid");
            assert!(sid.starts_with(prefix), "{file}: statement {sid}");
            assert_eq!(statement["Effect"], "Allow", "{statement}");
            assert!(
                statement.get("NotAction").is_none() && statement.get("NotResource").is_none(),
                "{statement}"
            );
        }
        let granted = actions_under(&policy, prefix);
        let expected: BTreeSet<String> = expected.iter().map(|a| (*a).to_owned()).collect();
        let missing: Vec<_> = expected.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{file}: missing {missing:?}, not called by slipway {extra:?}"
        );
    }
}

#[test]
fn cloudformation_task_role_mirrors_the_run_actions() {
    let template = read("deploy/cloudformation.yml");
    for action in RUN_ACTIONS {
        let line = format!("- {action}");
        let single = format!("Action: {action}");
        assert!(
            template.lines().any(|l| {
                let l = l.trim();
                l == line || l == single
            }),
            "deploy/cloudformation.yml: the task role does not grant {action}"
        );
    }
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        instructions.push(current);
    }
    instructions
}

fn instruction<'a>(instructions: &'a [String], keyword: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter_map(|i| {
            let (head, rest) = i.split_once(char::is_whitespace)?;
            head.eq_ignore_ascii_case(keyword).then_some(rest.trim())
        })
        .collect()
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck() {
    let instructions = dockerfile_instructions(&read("deploy/Dockerfile"));

    let froms = instruction(&instructions, "FROM");
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    assert!(
        froms.iter().any(|f| {
            let words: Vec<&str> = f.split_whitespace().collect();
            words.len() == 3 && words[1].eq_ignore_ascii_case("AS") && words[2] == "builder"
        }),
        "no `FROM ... AS builder` stage: {froms:?}"
    );

    let users = instruction(&instructions, "USER");
    let user = users.last().expect("the Dockerfile sets a USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(name, "root" | "0" | ""),
        "the final USER is root: {user}"
    );

    let healthchecks = instruction(&instructions, "HEALTHCHECK");
    assert!(
        healthchecks.iter().any(|h| h.contains("/healthz")),
        "no HEALTHCHECK on /healthz: {healthchecks:?}"
    );

    let volumes = instruction(&instructions, "VOLUME");
    assert!(
        volumes.iter().any(|v| v.contains("/var/lib/slipway")),
        "no VOLUME /var/lib/slipway: {volumes:?}"
    );
}

#[test]
fn systemd_unit_serves_with_a_config_file() {
    let unit = read("deploy/slipway.service");
    let exec_start: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .collect();
    assert_eq!(exec_start.len(), 1, "one ExecStart=: {exec_start:?}");
    assert!(
        exec_start[0].contains("slipway serve --config "),
        "ExecStart does not run `slipway serve --config`: {}",
        exec_start[0]
    );
    for line in [
        "StateDirectory=slipway",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
        "MemoryMax=512M",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "deploy/slipway.service lacks {line}"
        );
    }
}

#[test]
fn buildspec_tags_with_image_tag_falling_back_to_the_commit() {
    let buildspec = read("deploy/buildspec.yml");
    assert!(
        buildspec.contains("${IMAGE_TAG:-$CODEBUILD_RESOLVED_SOURCE_VERSION}"),
        "deploy/buildspec.yml must tag with $IMAGE_TAG and fall back to \
         $CODEBUILD_RESOLVED_SOURCE_VERSION"
    );
    assert!(buildspec.lines().any(|l| l.trim() == "version: 0.2"));
}

#[test]
fn dockerfile_base_images_are_pinned_by_digest() {
    let instructions = dockerfile_instructions(&read("deploy/Dockerfile"));
    let args: Vec<(&str, &str)> = instruction(&instructions, "ARG")
        .into_iter()
        .filter_map(|a| a.split_once('='))
        .collect();
    let froms = instruction(&instructions, "FROM");
    for from in &froms {
        let image = from.split_whitespace().next().unwrap();
        let resolved = match image.strip_prefix("${").and_then(|i| i.strip_suffix('}')) {
            Some(arg) => args
                .iter()
                .find(|(name, _)| *name == arg)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("FROM {image}: no ARG {arg} with a default")),
            None => image,
        };
        let digest = resolved.split_once("@sha256:").map(|(_, d)| d);
        assert!(
            digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())),
            "FROM {from} ({resolved}) is not pinned by digest"
        );
    }
}

/// The lines of the template between `start` (a line equal to it, trimmed) and the next
/// resource at the same indentation.
fn resource_block<'a>(template: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("  {name}:");
    let mut lines = template.lines().skip_while(|l| *l != start);
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    out.extend(
        lines.take_while(|l| {
            l.is_empty() || l.starts_with("    ") || l.trim_start().starts_with('#')
        }),
    );
    assert!(!out.is_empty(), "no resource {name}");
    out
}

#[test]
fn cloudformation_is_https_only_with_two_public_paths_and_a_private_admin_port() {
    let t = read("deploy/cloudformation.yml");
    // A certificate is required.
    let cert = resource_block(&t, "CertificateArn").join("\n");
    assert!(
        !cert.contains("Default:"),
        "CertificateArn has a default:\n{cert}"
    );
    assert!(!t.contains("HasCertificate"), "HTTPS is still optional");
    // Port 80 only redirects.
    let http = resource_block(&t, "HttpListener").join("\n");
    assert!(
        http.contains("Type: redirect") && !http.contains("forward"),
        "{http}"
    );
    // HTTPS forwards only the two public endpoints; the default answers 404.
    let https = resource_block(&t, "HttpsListener").join("\n");
    assert!(
        https.contains("Type: fixed-response") && !https.contains("Type: forward"),
        "{https}"
    );
    let rule = resource_block(&t, "PublicEndpointsRule").join("\n");
    assert!(
        rule.contains("Values: [/webhooks/github, /chat/slack]") && rule.contains("Type: forward"),
        "{rule}"
    );
    let forwards = t.matches("Type: forward").count();
    assert_eq!(forwards, 1, "something else is forwarded to slipway");
    // The admin port is never mapped or opened.
    assert!(
        !t.contains("9090\n") && !t.contains("Port: 9090"),
        "the admin port is exposed"
    );
    let task_sg = resource_block(&t, "TaskSecurityGroup").join("\n");
    assert_eq!(task_sg.matches("FromPort:").count(), 1, "{task_sg}");
    assert!(task_sg.contains("FromPort: 8080"), "{task_sg}");
    // Secrets from Secrets Manager, read-only root.
    let td = resource_block(&t, "TaskDefinition").join("\n");
    assert!(
        td.contains("Secrets:") && td.contains("ValueFrom: !Ref WebhookSecretArn"),
        "{td}"
    );
    assert!(td.contains("ReadonlyRootFilesystem: true"), "{td}");
}

#[test]
fn cloudformation_grants_exact_resources_and_a_separate_provisioning_role() {
    let t = read("deploy/cloudformation.yml");
    for wildcard in [
        "project/*",
        "service/*",
        "repository/*",
        "cluster/*",
        "task-definition/*",
    ] {
        assert!(!t.contains(wildcard), "the template grants {wildcard}");
    }
    let task_role = resource_block(&t, "TaskRole").join("\n");
    for action in [
        "sqs:CreateQueue",
        "sqs:SetQueueAttributes",
        "events:PutRule",
        "events:PutTargets",
    ] {
        assert!(!task_role.contains(action), "the task role may {action}");
    }
    let provision = resource_block(&t, "ProvisionRole").join("\n");
    for action in PROVISION_ACTIONS {
        assert!(provision.contains(action), "ProvisionRole lacks {action}");
    }
    for action in ["codebuild:StartBuild", "ecs:UpdateService", "iam:PassRole"] {
        assert!(!provision.contains(action), "ProvisionRole may {action}");
    }
}

#[test]
fn cloudformation_gives_every_secret_through_secrets_manager_only() {
    let t = read("deploy/cloudformation.yml");
    let task = resource_block(&t, "TaskDefinition").join("\n");
    let (environment, secrets) = task
        .split_once("Secrets:")
        .expect("the container has Secrets");
    let execution = resource_block(&t, "ExecutionRole").join("\n");
    for (env, parameter) in [
        ("SLIPWAY_WEBHOOK_SECRET", "WebhookSecretArn"),
        ("SLIPWAY_OPS_TOKENS", "OpsTokensSecretArn"),
        ("SLIPWAY_SLACK_SIGNING_SECRET", "SlackSigningSecretArn"),
        ("SLIPWAY_GITHUB_TOKEN", "GithubTokenSecretArn"),
        ("SLIPWAY_GITHUB_APP_KEY", "GithubAppKeySecretArn"),
    ] {
        assert!(
            secrets.contains(&format!("Name: {env}\n")) && secrets.contains(parameter),
            "{env} is not taken from {parameter}"
        );
        assert!(!environment.contains(env), "{env} is a plain variable");
        assert!(
            execution.contains(&format!("!Ref {parameter}")),
            "the execution role cannot read {parameter}"
        );
    }
}
