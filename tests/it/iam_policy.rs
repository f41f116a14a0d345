//! Issue: the IAM policies in `deploy/iam-policy-runtime.json` and
//! `deploy/iam-policy-provision.json` (what `slipway provision --policy` generates) grant every
//! AWS call the code makes, and only on the configured resources.
//!
//! The source under `src/` is scanned for SDK calls (`self.ecs.describe_services()`,
//! `aws.sqs\n    .receive_message()`, …): a `.method()` with empty parentheses whose name is an
//! operation of one of the six SDK clients (S3 for the journal's backups: its actions are
//! granted only with `[journal] backup_to = "s3://…"`, as the example policy's config has). The operations, and their IAM action names, come
//! from the SDK crates themselves (`src/operation/*.rs` of the versions in `Cargo.lock`); a
//! hand-written map is the fallback when the crates' sources cannot be found, and then any
//! `.xxx()` on a client variable the map does not know fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// An SDK client slipway uses: crate, IAM service prefix, names of variables holding it.
struct Client {
    krate: &'static str,
    prefix: &'static str,
    receivers: &'static [&'static str],
}

const CLIENTS: &[Client] = &[
    Client {
        krate: "aws-sdk-codebuild",
        prefix: "codebuild",
        receivers: &["codebuild"],
    },
    Client {
        krate: "aws-sdk-ecs",
        prefix: "ecs",
        receivers: &["ecs"],
    },
    Client {
        krate: "aws-sdk-ecr",
        prefix: "ecr",
        receivers: &["ecr"],
    },
    Client {
        krate: "aws-sdk-sqs",
        prefix: "sqs",
        receivers: &["sqs"],
    },
    Client {
        krate: "aws-sdk-eventbridge",
        prefix: "events",
        receivers: &["events", "eventbridge"],
    },
    Client {
        krate: "aws-sdk-s3",
        prefix: "s3",
        receivers: &["s3"],
    },
    // The DynamoDB engine calls through `self.client()` (no receiver name: its operations
    // are attributed by name, none of them being another client's).
    Client {
        krate: "aws-sdk-dynamodb",
        prefix: "dynamodb",
        receivers: &["dynamodb"],
    },
];

/// Operations whose IAM action has another name (Amazon S3 User Guide, "Policy actions for
/// Amazon S3": ListObjectsV2 is authorized as s3:ListBucket, HeadObject as s3:GetObject).
const ACTION_OF_OPERATION: &[(&str, &str)] = &[
    ("s3:ListObjectsV2", "s3:ListBucket"),
    ("s3:ListObjects", "s3:ListBucket"),
    ("s3:HeadObject", "s3:GetObject"),
    ("s3:HeadBucket", "s3:ListBucket"),
    ("s3:GetPublicAccessBlock", "s3:GetBucketPublicAccessBlock"),
    ("s3:PutPublicAccessBlock", "s3:PutBucketPublicAccessBlock"),
    ("s3:GetBucketEncryption", "s3:GetEncryptionConfiguration"),
    ("s3:PutBucketEncryption", "s3:PutEncryptionConfiguration"),
    (
        "s3:GetBucketLifecycleConfiguration",
        "s3:GetLifecycleConfiguration",
    ),
    (
        "s3:PutBucketLifecycleConfiguration",
        "s3:PutLifecycleConfiguration",
    ),
];

/// DynamoDB's `TransactWriteItems` has no IAM action of its own: each of its parts is
/// authorized as the item operation it is (DynamoDB Developer Guide, "Using IAM with DynamoDB
/// transactions"). `TransactWriteItem::builder().put(…)` and so on, found in the source.
const TRANSACT_PARTS: &[(&str, &str)] = &[
    ("put", "dynamodb:PutItem"),
    ("update", "dynamodb:UpdateItem"),
    ("delete", "dynamodb:DeleteItem"),
    ("condition_check", "dynamodb:ConditionCheckItem"),
];

/// Methods of a client (or of a field that happens to share a client's name) that are not
/// AWS calls.
const NOT_OPERATIONS: &[&str] = &[
    "clone", "config", "as_ref", "to_owned", "iter", "len", "is_empty",
];

/// The fallback: snake_case SDK method → IAM action.
const HAND_MAP: &[(&str, &str)] = &[
    ("start_build", "codebuild:StartBuild"),
    ("stop_build", "codebuild:StopBuild"),
    ("batch_get_builds", "codebuild:BatchGetBuilds"),
    ("list_builds_for_project", "codebuild:ListBuildsForProject"),
    ("batch_get_projects", "codebuild:BatchGetProjects"),
    ("list_projects", "codebuild:ListProjects"),
    ("describe_images", "ecr:DescribeImages"),
    ("list_images", "ecr:ListImages"),
    ("describe_repositories", "ecr:DescribeRepositories"),
    ("batch_get_image", "ecr:BatchGetImage"),
    ("describe_clusters", "ecs:DescribeClusters"),
    ("describe_services", "ecs:DescribeServices"),
    ("describe_task_definition", "ecs:DescribeTaskDefinition"),
    ("register_task_definition", "ecs:RegisterTaskDefinition"),
    ("update_service", "ecs:UpdateService"),
    ("list_services", "ecs:ListServices"),
    ("list_tasks", "ecs:ListTasks"),
    ("describe_tasks", "ecs:DescribeTasks"),
    ("list_service_deployments", "ecs:ListServiceDeployments"),
    (
        "describe_service_deployments",
        "ecs:DescribeServiceDeployments",
    ),
    ("receive_message", "sqs:ReceiveMessage"),
    ("delete_message", "sqs:DeleteMessage"),
    ("change_message_visibility", "sqs:ChangeMessageVisibility"),
    ("send_message", "sqs:SendMessage"),
    ("get_queue_attributes", "sqs:GetQueueAttributes"),
    ("get_queue_url", "sqs:GetQueueUrl"),
    ("create_queue", "sqs:CreateQueue"),
    ("set_queue_attributes", "sqs:SetQueueAttributes"),
    ("list_queues", "sqs:ListQueues"),
    ("put_rule", "events:PutRule"),
    ("put_targets", "events:PutTargets"),
    ("remove_targets", "events:RemoveTargets"),
    ("describe_rule", "events:DescribeRule"),
    ("list_rules", "events:ListRules"),
    ("list_targets_by_rule", "events:ListTargetsByRule"),
    ("put_events", "events:PutEvents"),
    ("put_object", "s3:PutObject"),
    ("get_object", "s3:GetObject"),
    ("delete_object", "s3:DeleteObject"),
    ("list_objects_v2", "s3:ListBucket"),
    ("head_bucket", "s3:ListBucket"),
    ("create_bucket", "s3:CreateBucket"),
    ("get_public_access_block", "s3:GetBucketPublicAccessBlock"),
    ("put_public_access_block", "s3:PutBucketPublicAccessBlock"),
    ("get_bucket_encryption", "s3:GetEncryptionConfiguration"),
    ("put_bucket_encryption", "s3:PutEncryptionConfiguration"),
    (
        "get_bucket_lifecycle_configuration",
        "s3:GetLifecycleConfiguration",
    ),
    (
        "put_bucket_lifecycle_configuration",
        "s3:PutLifecycleConfiguration",
    ),
    ("get_item", "dynamodb:GetItem"),
    ("batch_get_item", "dynamodb:BatchGetItem"),
    ("batch_write_item", "dynamodb:BatchWriteItem"),
    ("query", "dynamodb:Query"),
    ("put_item", "dynamodb:PutItem"),
    ("update_item", "dynamodb:UpdateItem"),
    ("delete_item", "dynamodb:DeleteItem"),
    ("transact_write_items", "dynamodb:TransactWriteItems"),
    ("create_table", "dynamodb:CreateTable"),
    ("describe_table", "dynamodb:DescribeTable"),
    ("update_table", "dynamodb:UpdateTable"),
    ("update_time_to_live", "dynamodb:UpdateTimeToLive"),
    ("describe_time_to_live", "dynamodb:DescribeTimeToLive"),
    (
        "update_continuous_backups",
        "dynamodb:UpdateContinuousBackups",
    ),
    (
        "describe_continuous_backups",
        "dynamodb:DescribeContinuousBackups",
    ),
];

/// Operations per IAM prefix: snake_case method → action (`ecs:DescribeServices`).
type Operations = BTreeMap<&'static str, BTreeMap<String, String>>;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The version of `krate` in Cargo.lock.
fn locked_version(krate: &str) -> Option<String> {
    let lock = std::fs::read_to_string(manifest_dir().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{krate}\"") {
            let version = lines.next()?.trim();
            return version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

/// `src/operation` of the locked version of `krate` in cargo's registry.
fn operation_dir(krate: &str) -> Option<PathBuf> {
    let version = locked_version(krate)?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_HOME").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registries = std::fs::read_dir(cargo_home.join("registry").join("src")).ok()?;
    registries
        .filter_map(Result::ok)
        .map(|r| {
            r.path()
                .join(format!("{krate}-{version}"))
                .join("src")
                .join("operation")
        })
        .find(|p| p.is_dir())
}

/// The operations of `krate` from its sources: every `src/operation/<name>.rs` names its
/// operation in `Metadata::new("<Operation>", "<service>")` (possibly across lines).
fn sdk_operations(krate: &str, prefix: &str) -> Option<BTreeMap<String, String>> {
    let dir = operation_dir(krate)?;
    let mut ops = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        let Some(module) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".rs"))
        else {
            continue;
        };
        if module == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let marker = "Metadata::new(";
        let after = &text[text.find(marker)? + marker.len()..];
        let after = after.trim_start().strip_prefix('"')?;
        let name = &after[..after.find('"')?];
        let action = format!("{prefix}:{name}");
        let action = ACTION_OF_OPERATION
            .iter()
            .find(|(op, _)| *op == action)
            .map_or(action, |(_, a)| (*a).to_owned());
        ops.insert(module.to_owned(), action);
    }
    (ops.len() > 10).then_some(ops)
}

/// (operations, whether they came from the SDK crates).
fn operations() -> (Operations, bool) {
    let mut from_sdk = Operations::new();
    for c in CLIENTS {
        match sdk_operations(c.krate, c.prefix) {
            Some(ops) => {
                from_sdk.insert(c.prefix, ops);
            }
            None => break,
        }
    }
    if from_sdk.len() == CLIENTS.len() {
        return (from_sdk, true);
    }
    eprintln!("SDK sources not found in cargo's registry: using the hand-written operation map");
    let mut hand = Operations::new();
    for (method, action) in HAND_MAP {
        let prefix = action.split(':').next().unwrap();
        let prefix = CLIENTS.iter().find(|c| c.prefix == prefix).unwrap().prefix;
        hand.entry(prefix)
            .or_default()
            .insert((*method).to_owned(), (*action).to_owned());
    }
    (hand, false)
}

/// An AWS call found in the source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    action: String,
    at: String,
}

/// What the scan found: calls, and problems (calls it cannot attribute to an action).
#[derive(Debug, Default)]
struct Scan {
    calls: Vec<Call>,
    problems: Vec<String>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The text without `//` comments (doc comments included), same lines.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let bytes = line.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_string => i += 1,
                    b'"' => in_string = !in_string,
                    b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => {
                        return &line[..i];
                    }
                    _ => {}
                }
                i += 1;
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds `.method()` calls (whitespace and newlines allowed around the dot and inside the
/// parentheses) and attributes them to a client's action.
fn scan_text(file: &str, text: &str, ops: &Operations, strict: bool, scan: &mut Scan) {
    let text = strip_comments(text);
    let bytes = text.as_bytes();
    let line_of = |pos: usize| text[..pos].bytes().filter(|b| *b == b'\n').count() + 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'.' || bytes.get(i + 1) == Some(&b'.') {
            i += 1;
            continue;
        }
        let dot = i;
        i += 1;
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if start == i || bytes[start].is_ascii_digit() {
            continue;
        }
        let method = &text[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if bytes.get(j) != Some(&b'(') {
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if bytes.get(j) != Some(&b')') {
            continue;
        }
        // The receiver: the identifier right before the dot.
        let mut k = dot;
        while k > 0 && bytes[k - 1].is_ascii_whitespace() {
            k -= 1;
        }
        let end = k;
        while k > 0 && is_ident(bytes[k - 1]) {
            k -= 1;
        }
        let receiver = &text[k..end];
        let at = format!("{file}:{}", line_of(start));
        let client = CLIENTS.iter().find(|c| c.receivers.contains(&receiver));
        let owners: Vec<&str> = ops
            .iter()
            .filter(|(_, m)| m.contains_key(method))
            .map(|(p, _)| *p)
            .collect();
        let prefix = match (client, owners.as_slice()) {
            (Some(c), _) if ops[c.prefix].contains_key(method) => Some(c.prefix),
            (Some(c), _) => {
                if strict && !NOT_OPERATIONS.contains(&method) {
                    scan.problems.push(format!(
                        "{at}: .{receiver}.{method}() is not an operation the map knows for {}",
                        c.krate
                    ));
                }
                None
            }
            (None, []) => None,
            (None, [one]) => Some(*one),
            (None, many) => {
                scan.problems.push(format!(
                    "{at}: .{method}() on `{receiver}` could be {}: name the client variable \
                     codebuild/ecs/ecr/sqs/events/s3/dynamodb",
                    many.join(" or ")
                ));
                None
            }
        };
        if let Some(prefix) = prefix {
            scan.calls.push(Call {
                action: ops[prefix][method].clone(),
                at,
            });
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn scan_sources(ops: &Operations, strict: bool) -> Scan {
    let root = manifest_dir();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut scan = Scan::default();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        scan_text(&name, &text, ops, strict, &mut scan);
    }
    scan
}

/// The item actions of the parts of DynamoDB transactions in `src/`, with where each is made.
fn transact_parts() -> Vec<(String, String)> {
    let root = manifest_dir();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let marker = "TransactWriteItem::builder()";
    let mut out = Vec::new();
    for path in files {
        let text = strip_comments(&std::fs::read_to_string(&path).unwrap());
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        for (pos, _) in text.match_indices(marker) {
            let rest = text[pos + marker.len()..].trim_start();
            let method: String = rest
                .strip_prefix('.')
                .unwrap_or_default()
                .trim_start()
                .bytes()
                .take_while(|b| is_ident(*b))
                .map(char::from)
                .collect();
            let action = TRANSACT_PARTS
                .iter()
                .find(|(part, _)| *part == method)
                .map(|(_, a)| (*a).to_owned())
                .unwrap_or_else(|| {
                    panic!("{name}: TransactWriteItem::builder().{method}( is not a part the test knows")
                });
            let line = text[..pos].bytes().filter(|b| *b == b'\n').count() + 1;
            out.push((action, format!("{name}:{line} (in a transaction)")));
        }
    }
    out
}

/// `*` and `?` wildcards, case-insensitive (IAM action names are).
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The actions the policy's `Allow` statements grant (patterns, as written).
fn granted(policy: &Value) -> Vec<String> {
    let statements = match &policy["Statement"] {
        Value::Array(s) => s.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        _ => vec![],
    };
    statements
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        })
        .collect()
}

/// The required actions no statement grants.
fn missing_actions<'a>(policy: &Value, required: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let granted = granted(policy);
    required
        .into_iter()
        .filter(|action| !granted.iter().any(|g| glob(g, action)))
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The statements of both example policies in one document.
fn policy() -> Value {
    let mut statements = Vec::new();
    for file in POLICY_FILES {
        let path = manifest_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        statements.extend(v["Statement"].as_array().cloned().unwrap_or_default());
    }
    serde_json::json!({ "Version": "2012-10-17", "Statement": statements })
}

/// The generated examples: runtime, then provisioning.
const POLICY_FILES: [&str; 4] = [
    "deploy/iam-policy-runtime.json",
    "deploy/iam-policy-provision.json",
    "deploy/iam-policy-runtime-dynamodb.json",
    "deploy/iam-policy-provision-dynamodb.json",
];

/// Every action the code needs, with where it is called.
fn required_actions() -> BTreeMap<String, Vec<String>> {
    let (ops, from_sdk) = operations();
    let scan = scan_sources(&ops, true);
    assert!(
        scan.problems.is_empty(),
        "AWS calls the test cannot attribute (operations from the SDK: {from_sdk}):\n{}",
        scan.problems.join("\n")
    );
    let mut required: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for call in scan.calls {
        required.entry(call.action).or_default().push(call.at);
    }
    if let Some(at) = required.remove("dynamodb:TransactWriteItems") {
        let parts = transact_parts();
        assert!(
            !parts.is_empty(),
            "TransactWriteItems is called ({}) but no TransactWriteItem::builder().<part>( was \
             found",
            at.join(", ")
        );
        for (action, part_at) in parts {
            required.entry(action).or_default().push(part_at);
        }
    }
    // RegisterTaskDefinition with tags also needs ecs:TagResource.
    if required.contains_key("ecs:RegisterTaskDefinition") {
        required
            .entry("ecs:TagResource".to_owned())
            .or_default()
            .push("(RegisterTaskDefinition with tags)".to_owned());
    }
    required
}

#[test]
fn the_policy_grants_every_call_the_code_makes() {
    let required = required_actions();
    // The scan found the calls we know are there (else it is broken, not the policy right).
    for action in [
        "codebuild:StartBuild",
        "codebuild:BatchGetBuilds",
        "ecs:DescribeServices",
        "ecs:UpdateService",
        "ecs:RegisterTaskDefinition",
        "ecr:DescribeImages",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:CreateTable",
        "s3:PutLifecycleConfiguration",
    ] {
        assert!(
            required.contains_key(action),
            "the scan did not find {action}: {required:#?}"
        );
    }
    let missing = missing_actions(&policy(), required.keys().map(String::as_str));
    let report: Vec<String> = missing
        .iter()
        .map(|a| format!("  {a}  (called at {})", required[a].join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/iam-policy-*.json do not grant:\n{}",
        report.join("\n")
    );
    assert!(
        missing_actions(&policy(), ["ecs:TagResource"]).is_empty(),
        "RegisterTaskDefinition with tags needs ecs:TagResource"
    );
}

#[test]
fn a_policy_without_one_of_the_actions_fails_the_check() {
    let required = required_actions();
    let full = policy();
    for removed in [
        "sqs:ReceiveMessage",
        "ecs:TagResource",
        "events:PutRule",
        // A part of a DynamoDB transaction, and a call of provision's on the table.
        "dynamodb:DeleteItem",
        "dynamodb:UpdateContinuousBackups",
    ] {
        assert!(required.contains_key(removed), "{removed} is not required");
        // A copy of the policy without the action, wherever it appears.
        let mut copy = full.clone();
        for statement in copy["Statement"].as_array_mut().unwrap() {
            match &mut statement["Action"] {
                Value::Array(actions) => actions.retain(|a| a != removed),
                single @ Value::String(_) if single == removed => *single = Value::Array(vec![]),
                _ => {}
            }
        }
        let before = missing_actions(&full, required.keys().map(String::as_str));
        let missing = missing_actions(&copy, required.keys().map(String::as_str));
        assert!(
            missing.contains(&removed.to_owned()) && missing.len() == before.len() + 1,
            "without {removed}: {missing:?}"
        );
    }
    // Wildcards grant.
    let wild = serde_json::json!({"Statement": [
        {"Effect": "Allow", "Action": ["sqs:*", "ecs:Describe*"]},
        {"Effect": "Allow", "Action": "codebuild:StartBuild"},
        {"Effect": "Deny", "Action": "events:*"},
    ]});
    assert_eq!(
        missing_actions(
            &wild,
            [
                "sqs:ReceiveMessage",
                "ecs:DescribeServices",
                "codebuild:startbuild",
                "ecs:UpdateService",
                "events:PutRule",
            ]
        ),
        vec!["ecs:UpdateService".to_owned(), "events:PutRule".to_owned()]
    );
}

#[test]
fn the_scanner_reads_calls_across_lines_and_refuses_what_it_cannot_attribute() {
    let (ops, from_sdk) = operations();
    let text = r#"
        // self.ecs.delete_service() in a comment is not a call
        let out = self
            .ecs
            .describe_services ( )
            .cluster("c");
        let q = aws.sqs
            .receive_message()
            .send();
        revision.apply(self.ecs.register_task_definition());
        self.update_service(app, td); // a method of ours, with arguments
        let x = "self.ecs.list_tasks()"; let y = out.failures();
        self.events.put_rule();
    "#;
    let mut scan = Scan::default();
    scan_text("sample.rs", text, &ops, true, &mut scan);
    let actions: Vec<&str> = scan.calls.iter().map(|c| c.action.as_str()).collect();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    // A string that looks like a call counts (erring on the side of asking for more).
    assert_eq!(
        actions,
        [
            "ecs:DescribeServices",
            "sqs:ReceiveMessage",
            "ecs:RegisterTaskDefinition",
            "ecs:ListTasks",
            "events:PutRule",
        ]
    );
    assert_eq!(scan.calls[0].at, "sample.rs:5");

    // An operation several clients have, on a variable that names none of them.
    let mut scan = Scan::default();
    scan_text(
        "s.rs",
        "client.tag_resource().send();",
        &ops,
        true,
        &mut scan,
    );
    if from_sdk {
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert!(scan.problems[0].contains("could be"), "{:?}", scan.problems);
    }
    // A call on a client that is no operation the map knows.
    let mut scan = Scan::default();
    scan_text(
        "s.rs",
        "self.ecs.frobnicate_cluster()",
        &ops,
        true,
        &mut scan,
    );
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
}

#[test]
fn the_hand_map_agrees_with_the_sdk() {
    let (ops, from_sdk) = operations();
    if !from_sdk {
        eprintln!("SDK sources not found: nothing to compare the hand map with");
        return;
    }
    for (method, action) in HAND_MAP {
        let prefix = action.split(':').next().unwrap();
        assert_eq!(
            ops[prefix].get(*method).map(String::as_str),
            Some(*action),
            "{method}"
        );
    }
}

/// The example policies' config: journal backups to S3 (`slipway/journal.db` in
/// `slipway-backups-example`, as the CloudFormation template sets `backup_to`).
const BACKUP_TO_S3: &str =
    "[journal]\nbackup_to = \"s3://slipway-backups-example/slipway/journal.db\"";

/// `slipway provision --policy` against the test world (app `web`: project `web-build`,
/// service `web/web` whose task definition uses the roles `web-task` and `web-exec`), with
/// `extra` top-level config.
async fn generated_policies(extra: &str) -> (Value, Value) {
    let w = crate::deploy::Deploy::with(crate::deploy::Setup {
        extra,
        ..crate::deploy::Setup::default()
    })
    .await;
    let out = printed_policies(&w.builder).await;
    (out["runtime"].clone(), out["provisioning"].clone())
}

/// What `slipway provision --policy` prints for `builder`'s config (run off the test's
/// runtime thread, so the proxy on it can answer).
pub async fn printed_policies(builder: &crate::support::slipway::SlipwayBuilder) -> Value {
    let builder = builder.clone();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let config = builder.write_config();
        builder.run(&[
            "provision",
            "--policy",
            "--config",
            config.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert!(status.success(), "provision --policy failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("provision --policy printed no JSON ({e}):\n{stdout}"))
}

/// The resources of the statements granting `action`.
fn resources_for(policy: &Value, action: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in policy["Statement"].as_array().unwrap() {
        let grants = match &s["Action"] {
            Value::String(a) => a == action,
            Value::Array(list) => list.iter().any(|a| a == action),
            _ => false,
        };
        if !grants {
            continue;
        }
        match &s["Resource"] {
            Value::String(r) => {
                out.insert(r.clone());
            }
            Value::Array(list) => out.extend(list.iter().map(|r| r.as_str().unwrap().to_owned())),
            other => panic!("unexpected Resource {other}"),
        }
    }
    out
}

#[tokio::test]
async fn generated_policies_name_exact_resources_and_match_the_examples() {
    let (runtime, provisioning) = generated_policies(BACKUP_TO_S3).await;
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    let arn = |rest: &str| format!("arn:aws:{rest}");
    for action in ["codebuild:StartBuild", "ecs:UpdateService", "iam:PassRole"] {
        let resources = resources_for(&runtime, action);
        assert!(
            !resources.is_empty(),
            "{action} is not granted: {runtime:#}"
        );
        assert!(
            resources.iter().all(|r| !r.contains('*')),
            "{action} is granted on a wildcard: {resources:?}"
        );
    }
    assert_eq!(
        resources_for(&runtime, "codebuild:StartBuild"),
        set(&[&arn("codebuild:eu-west-1:123456789012:project/web-build")])
    );
    assert_eq!(
        resources_for(&runtime, "ecs:UpdateService"),
        set(&[&arn("ecs:eu-west-1:123456789012:service/web/web")])
    );
    assert_eq!(
        resources_for(&runtime, "iam:PassRole"),
        set(&[
            "arn:aws:iam::123456789012:role/web-exec",
            "arn:aws:iam::123456789012:role/web-task"
        ])
    );
    let pass = runtime["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"].to_string().contains("iam:PassRole"))
        .unwrap();
    assert_eq!(
        pass["Condition"]["StringEquals"]["iam:PassedToService"],
        "ecs-tasks.amazonaws.com"
    );
    assert_eq!(
        resources_for(&runtime, "ecs:TagResource"),
        set(&[&arn("ecs:eu-west-1:123456789012:task-definition/web:*")])
    );
    assert_eq!(
        resources_for(&runtime, "sqs:ReceiveMessage"),
        set(&[&arn("sqs:eu-west-1:123456789012:slipway-events")])
    );
    assert_eq!(
        resources_for(&runtime, "ecr:DescribeImages"),
        set(&[&arn("ecr:eu-west-1:123456789012:repository/web")])
    );
    // Runtime cannot create queues or rules; provisioning cannot build or deploy.
    assert!(resources_for(&runtime, "sqs:CreateQueue").is_empty());
    assert!(resources_for(&runtime, "events:PutRule").is_empty());
    assert!(resources_for(&provisioning, "codebuild:StartBuild").is_empty());
    assert!(resources_for(&provisioning, "ecs:UpdateService").is_empty());
    assert_eq!(
        resources_for(&provisioning, "sqs:SetQueueAttributes"),
        set(&[
            &arn("sqs:eu-west-1:123456789012:slipway-events"),
            &arn("sqs:eu-west-1:123456789012:slipway-events-dlq")
        ])
    );
    assert_eq!(
        resources_for(&provisioning, "events:PutRule"),
        set(&[&arn("events:eu-west-1:123456789012:rule/slipway-codebuild")])
    );

    // The backups: their four calls on the stamped copies of backup_to's key, nothing else.
    let copies = "arn:aws:s3:::slipway-backups-example/slipway/journal-*";
    for action in ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"] {
        assert_eq!(resources_for(&runtime, action), set(&[copies]), "{action}");
    }
    assert_eq!(
        resources_for(&runtime, "s3:ListBucket"),
        set(&["arn:aws:s3:::slipway-backups-example"])
    );
    let list = runtime["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"].to_string().contains("s3:ListBucket"))
        .unwrap();
    assert_eq!(
        list["Condition"]["StringLike"]["s3:prefix"],
        serde_json::json!(["slipway/journal-*"])
    );
    assert_eq!(s3_actions(&runtime).len(), 4, "{runtime:#}");
    assert!(s3_actions(&provisioning).is_empty());

    // The examples in deploy/ are exactly this output (SLIPWAY_BLESS=1 rewrites them).
    assert!(granted(&runtime)
        .iter()
        .all(|a| !a.starts_with("dynamodb:")));
    assert!(granted(&provisioning)
        .iter()
        .all(|a| !a.starts_with("dynamodb:")));
    bless_or_compare(&POLICY_FILES[..2], [&runtime, &provisioning]);
}

/// The examples in deploy/ are exactly this output (SLIPWAY_BLESS=1 rewrites them).
fn bless_or_compare(files: &[&str], generated: [&Value; 2]) {
    for (file, generated) in files.iter().zip(generated) {
        let path = manifest_dir().join(file);
        let text = format!("{}\n", serde_json::to_string_pretty(generated).unwrap());
        if std::env::var_os("SLIPWAY_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk, text,
            "{file} is not what `slipway provision --policy` generates (SLIPWAY_BLESS=1 rewrites it)"
        );
    }
}

/// The DynamoDB engine's example config: the table `slipway`, a bodies bucket.
const DYNAMODB_STORE: &str =
    "[store]\nengine = \"dynamodb\"\ntable = \"slipway\"\nbodies_bucket = \"slipway-bodies-example\"";

#[tokio::test]
async fn with_the_dynamodb_engine_the_policies_name_its_table_indexes_and_bodies_only() {
    let (runtime, provisioning) = generated_policies(DYNAMODB_STORE).await;
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    let table = "arn:aws:dynamodb:eu-west-1:123456789012:table/slipway";
    let indexes = "arn:aws:dynamodb:eu-west-1:123456789012:table/slipway/index/*";
    for action in [
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    ] {
        assert_eq!(resources_for(&runtime, action), set(&[table]), "{action}");
    }
    assert_eq!(
        resources_for(&runtime, "dynamodb:Query"),
        set(&[table, indexes])
    );
    // Runtime makes no table and changes none; it never scans.
    for action in [
        "dynamodb:CreateTable",
        "dynamodb:UpdateTable",
        "dynamodb:Scan",
    ] {
        assert!(resources_for(&runtime, action).is_empty(), "{action}");
    }
    let bodies = "arn:aws:s3:::slipway-bodies-example/bodies/*";
    for action in ["s3:PutObject", "s3:GetObject"] {
        assert_eq!(resources_for(&runtime, action), set(&[bodies]), "{action}");
    }
    assert_eq!(s3_actions(&runtime).len(), 2, "{runtime:#}");
    for action in [
        "dynamodb:CreateTable",
        "dynamodb:UpdateTable",
        "dynamodb:UpdateTimeToLive",
        "dynamodb:UpdateContinuousBackups",
    ] {
        assert_eq!(
            resources_for(&provisioning, action),
            set(&[table, indexes]),
            "{action}"
        );
    }
    for action in [
        "s3:CreateBucket",
        "s3:PutBucketPublicAccessBlock",
        "s3:PutEncryptionConfiguration",
        "s3:PutLifecycleConfiguration",
    ] {
        assert_eq!(
            resources_for(&provisioning, action),
            set(&["arn:aws:s3:::slipway-bodies-example"]),
            "{action}"
        );
    }
    // Without a bodies bucket, no S3 at all.
    let (runtime, provisioning) =
        generated_policies("[store]\nengine = \"dynamodb\"\ntable = \"slipway\"").await;
    assert!(s3_actions(&runtime).is_empty(), "{runtime:#}");
    assert!(s3_actions(&provisioning).is_empty(), "{provisioning:#}");
    assert!(!resources_for(&runtime, "dynamodb:Query").is_empty());

    let (runtime, provisioning) = generated_policies(DYNAMODB_STORE).await;
    bless_or_compare(&POLICY_FILES[2..], [&runtime, &provisioning]);
}

/// The S3 actions a policy grants.
fn s3_actions(policy: &Value) -> Vec<String> {
    granted(policy)
        .into_iter()
        .filter(|a| a.starts_with("s3:"))
        .collect()
}

#[tokio::test]
async fn without_backups_to_s3_the_runtime_policy_grants_no_s3() {
    for extra in [
        "",
        "[journal]\nbackup_to = \"/var/backups/slipway/journal.db\"",
    ] {
        let (runtime, _) = generated_policies(extra).await;
        assert!(
            s3_actions(&runtime).is_empty(),
            "with {extra:?}: {runtime:#}"
        );
        assert!(!resources_for(&runtime, "ecs:UpdateService").is_empty());
    }
}
