//! `slipway provision --policy`: the two IAM policies slipway needs, generated from the
//! config with exact ARNs.
//!
//! - **runtime**, for the role `slipway serve` runs as: the configured CodeBuild projects,
//!   ECS services, ECR repositories and slipway's queue only; `iam:PassRole` only for the task
//!   and execution roles the services' task definitions use, and only to ECS tasks; with
//!   `[journal] backup_to = "s3://bucket/key"`, the backups' own calls on the stamped copies
//!   of that key only.
//! - **provisioning**, for whoever runs `slipway provision`: the queue, the dead-letter queue,
//!   their attributes (the queue policy), the EventBridge rule and its target, and the
//!   read-only checks of what the apps use.
//!
//! - with `[store] engine = "dynamodb"`, both add the engine's table and its indexes, and the
//!   bodies bucket's `bodies/` objects (runtime) or the bucket itself (provisioning).
//!
//! The task definition families and roles are read from AWS (the services' current task
//! definitions), so the policies match what slipway will register and pass.
//!
//! Apps in another account (`role_arn`, issue 27) are left out of `runtime`, which may assume
//! their roles instead (and, for an app of slipway's own account promoting images held in
//! another, may describe them: `SlipwayRunPromotedImages`); `accounts` has, per role, the policy the role needs (its apps'
//! services, read through the role) and its trust policy (slipway's account, with the
//! `external_id` when one is set); `ecr_repository_policies`, one per repository, lets every
//! account that deploys a promoted image read and pull it from the account that holds it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::aws::{AwsError, Clients};
use crate::config::{AppConfig, BackupLocation, Config};
use crate::store::StoreConfig;

/// What the policies are generated from besides the config.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub partition: String,
    pub region: String,
    pub account: String,
    /// Task definition families of the configured services.
    pub families: BTreeSet<String>,
    /// Task and execution role ARNs of those task definitions.
    pub roles: BTreeSet<String>,
    /// What the apps in other accounts use, by their `role_arn` (issue 27).
    pub accounts: BTreeMap<String, Environment>,
}

/// The policies, ready to print: `runtime` and `provisioning`, and `accounts` when an app is in
/// another account.
pub fn policies(config: &Config, env: &Environment) -> Value {
    let mut out = json!({
        "runtime": runtime(config, env),
        "provisioning": provisioning(config, env),
    });
    let accounts = accounts(config, env);
    if !accounts.is_empty() {
        out["accounts"] = Value::Array(accounts);
    }
    let repositories = repository_policies(config, env);
    if !repositories.is_empty() {
        out["ecr_repository_policies"] = Value::Array(repositories);
    }
    out
}

/// The apps slipway's own credentials reach (no `role_arn`).
fn own_apps(config: &Config) -> Vec<&AppConfig> {
    config.apps.iter().filter(|a| a.role.is_none()).collect()
}

/// Promoted images held in another account than the one that deploys them: (holder account,
/// repository) → the accounts that pull from it (the apps' role accounts, or slipway's own).
fn pulls(config: &Config, env: &Environment) -> BTreeMap<(String, String), BTreeSet<String>> {
    let account = |a: &AppConfig| {
        a.role
            .as_ref()
            .map_or(env.account.clone(), |r| r.account.clone())
    };
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for app in &config.apps {
        if !config.images_elsewhere(app) {
            continue;
        }
        let builder = config.builder_of(app);
        out.entry((account(builder), builder.ecr_repository.clone()))
            .or_default()
            .insert(account(app));
    }
    out
}

/// `puller`'s half of reading promoted images in other accounts' registries (the repository
/// policy is the other half): `ecr:DescribeImages` on those repositories.
fn promoted_images(config: &Config, env: &Environment, puller: &str) -> Option<Value> {
    let repositories: Vec<String> = pulls(config, env)
        .into_iter()
        .filter(|(_, pullers)| pullers.contains(puller))
        .map(|((holder, repo), _)| {
            format!(
                "arn:{}:ecr:{}:{holder}:repository/{repo}",
                env.partition, env.region
            )
        })
        .collect();
    (!repositories.is_empty()).then(|| {
        statement(
            "SlipwayRunPromotedImages",
            &["ecr:DescribeImages"],
            repositories,
        )
    })
}

/// The repository policies promoted images need, one per repository (a repository has one
/// policy: every account that pulls from it is in it).
fn repository_policies(config: &Config, env: &Environment) -> Vec<Value> {
    pulls(config, env)
        .into_iter()
        .map(|((holder, repo), pullers)| {
            let principals: Vec<String> = pullers
                .iter()
                .map(|a| format!("arn:{}:iam::{a}:root", env.partition))
                .collect();
            json!({
                "account": holder,
                "repository": repo,
                "policy": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "SlipwayPromotedImagesPull",
                        "Effect": "Allow",
                        "Principal": {"AWS": principals},
                        "Action": [
                            "ecr:BatchCheckLayerAvailability",
                            "ecr:BatchGetImage",
                            "ecr:DescribeImages",
                            "ecr:GetDownloadUrlForLayer",
                        ],
                    }],
                },
            })
        })
        .collect()
}

/// Per role: the role's own policy and its trust policy.
fn accounts(config: &Config, env: &Environment) -> Vec<Value> {
    let mut out = vec![];
    for (role_arn, role_env) in &env.accounts {
        let apps: Vec<&AppConfig> = config
            .apps
            .iter()
            .filter(|a| a.role.as_ref().is_some_and(|r| &r.arn == role_arn))
            .collect();
        let Some(role) = apps.first().and_then(|a| a.role.clone()) else {
            continue;
        };
        let mut statements = deploy_statements(&apps, config, role_env);
        statements.extend(tag_on_register(role_env));
        statements.extend(pass_role(role_env));
        statements.extend(promoted_images(config, env, &role.account));
        let mut trust = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "SlipwayAssumes",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:{}:iam::{}:root", env.partition, env.account)},
                "Action": "sts:AssumeRole",
            }],
        });
        if let Some(id) = &role.external_id {
            trust["Statement"][0]["Condition"] = json!({"StringEquals": {"sts:ExternalId": id}});
        }
        out.push(json!({
            "role_arn": role_arn,
            "account": role.account,
            "apps": apps.iter().map(|a| a.name.to_string()).collect::<Vec<_>>(),
            "role_policy": {"Version": "2012-10-17", "Statement": statements},
            "trust_policy": trust,
        }));
    }
    out
}

fn arn(env: &Environment, service: &str, resource: &str) -> String {
    format!(
        "arn:{}:{service}:{}:{}:{resource}",
        env.partition, env.region, env.account
    )
}

fn statement(sid: &str, actions: &[&str], resources: impl IntoIterator<Item = String>) -> Value {
    let resources: BTreeSet<String> = resources.into_iter().collect();
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": resources,
    })
}

struct Resources {
    projects: Vec<String>,
    services: Vec<String>,
    service_deployments: Vec<String>,
    service_revisions: Vec<String>,
    clusters: Vec<String>,
    repositories: Vec<String>,
    queue: String,
    dead_letter_queue: String,
    rule: String,
}

fn resources(apps: &[&AppConfig], config: &Config, env: &Environment) -> Resources {
    let p = &config.provision;
    Resources {
        projects: apps
            .iter()
            .filter_map(|a| a.codebuild_project.as_ref())
            .map(|project| arn(env, "codebuild", &format!("project/{project}")))
            .collect(),
        services: apps
            .iter()
            .map(|a| arn(env, "ecs", &format!("service/{}/{}", a.cluster, a.service)))
            .collect(),
        service_deployments: apps
            .iter()
            .map(|a| {
                arn(
                    env,
                    "ecs",
                    &format!("service-deployment/{}/{}/*", a.cluster, a.service),
                )
            })
            .collect(),
        service_revisions: apps
            .iter()
            .map(|a| {
                arn(
                    env,
                    "ecs",
                    &format!("service-revision/{}/{}/*", a.cluster, a.service),
                )
            })
            .collect(),
        clusters: apps
            .iter()
            .map(|a| arn(env, "ecs", &format!("cluster/{}", a.cluster)))
            .collect(),
        repositories: apps
            .iter()
            .map(|a| arn(env, "ecr", &format!("repository/{}", a.ecr_repository)))
            .collect(),
        queue: arn(env, "sqs", &p.queue_name),
        dead_letter_queue: arn(env, "sqs", &p.dead_letter_queue_name),
        rule: arn(env, "events", &format!("rule/{}", p.rule_name)),
    }
}

/// What `slipway serve` calls.
pub fn runtime(config: &Config, env: &Environment) -> Value {
    let apps = own_apps(config);
    let r = resources(&apps, config, env);
    let mut statements = vec![statement(
        "SlipwayRunBuilds",
        &[
            "codebuild:StartBuild",
            "codebuild:BatchGetBuilds",
            "codebuild:ListBuildsForProject",
        ],
        // Every app's project: builds run in slipway's account, whichever account deploys.
        resources(&config.apps.iter().collect::<Vec<_>>(), config, env).projects,
    )];
    statements.extend(deploy_statements(&apps, config, env));
    statements.push(statement(
        "SlipwayRunQueue",
        &[
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes",
            "sqs:GetQueueUrl",
        ],
        [r.queue],
    ));
    if !apps.is_empty() {
        statements.extend(tag_on_register(env));
    }
    statements.extend(backup_statements(config, env));
    statements.extend(store_runtime_statements(config, env));
    if !own_apps(config).is_empty() {
        statements.extend(pass_role(env));
    }
    // Apps in other accounts: their roles, and nothing of theirs directly.
    statements.extend(assume_app_roles(config, "SlipwayRunAssumeAppRoles"));
    statements.extend(promoted_images(config, env, &env.account));
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// `sts:AssumeRole` of the apps' roles in other accounts (`role_arn`), if any.
fn assume_app_roles(config: &Config, sid: &str) -> Option<Value> {
    let roles: BTreeSet<String> = config
        .apps
        .iter()
        .filter_map(|a| a.role.as_ref().map(|r| r.arn.clone()))
        .collect();
    (!roles.is_empty()).then(|| statement(sid, &["sts:AssumeRole"], roles))
}

/// `iam:PassRole` of the task definitions' roles, to ECS tasks only.
fn pass_role(env: &Environment) -> Option<Value> {
    if env.roles.is_empty() {
        return None;
    }
    let mut pass = statement(
        "SlipwayRunPassTaskRoles",
        &["iam:PassRole"],
        env.roles.iter().cloned(),
    );
    pass["Condition"] = json!({"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}});
    Some(pass)
}

/// What deploying `apps` calls, in the account `env` describes: their services, service
/// deployments and revisions, clusters, task definitions, images, and the tags on a new
/// revision (the tags' and `iam:PassRole`'s statements are added by the caller).
fn deploy_statements(apps: &[&AppConfig], config: &Config, env: &Environment) -> Vec<Value> {
    if apps.is_empty() {
        return vec![];
    }
    let r = resources(apps, config, env);
    vec![
        statement(
            "SlipwayRunServices",
            &[
                "ecs:DescribeServices",
                "ecs:UpdateService",
                "ecs:ListServiceDeployments",
            ],
            r.services.clone(),
        ),
        // Watching a rollout through ECS's service deployment (blue/green, linear, canary),
        // and, at the deadline, asking ECS to roll it back.
        statement(
            "SlipwayRunServiceDeployments",
            &[
                "ecs:DescribeServiceDeployments",
                "ecs:StopServiceDeployment",
            ],
            r.service_deployments,
        ),
        // Confirming a service deployment is ours: its target revision runs our revision.
        statement(
            "SlipwayRunServiceRevisions",
            &["ecs:DescribeServiceRevisions"],
            r.service_revisions,
        ),
        statement("SlipwayRunClusters", &["ecs:DescribeClusters"], r.clusters),
        // ECS supports no resource-level permission for these two.
        statement(
            "SlipwayRunTaskDefinitions",
            &["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"],
            ["*".to_owned()],
        ),
        statement(
            "SlipwayRunImages",
            &[
                "ecr:DescribeImages",
                "ecr:DescribeRepositories",
                "ecr:ListImages",
            ],
            r.repositories,
        ),
    ]
}

/// Tags on RegisterTaskDefinition need TagResource on the new revision, of these families.
fn tag_on_register(env: &Environment) -> Option<Value> {
    let mut tag = statement(
        "SlipwayRunTagOnRegister",
        &["ecs:TagResource"],
        env.families
            .iter()
            .map(|f| arn(env, "ecs", &format!("task-definition/{f}:*"))),
    );
    tag["Condition"] = json!({"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}});
    (!env.families.is_empty()).then_some(tag)
}

/// The journal's backups to S3 (`[journal] backup_to = "s3://bucket/key"`, see `backup`):
/// PutObject of a stamped copy, ListObjectsV2 of the copies (pruning, the schedule's next
/// due time), DeleteObject of those beyond `backup_keep`, GetObject to restore one; on the
/// copies' names (`key` without its extension, then `-`) and nothing else in the bucket.
/// Nothing for a backup to a file or no backups.
fn backup_statements(config: &Config, env: &Environment) -> Vec<Value> {
    let Some(BackupLocation::S3 { bucket, key }) = &config.journal.backup_to else {
        return vec![];
    };
    let prefix = crate::backup::copies_prefix(key);
    let bucket_arn = format!("arn:{}:s3:::{bucket}", env.partition);
    let objects = statement(
        "SlipwayRunBackupCopies",
        &["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
        [format!("{bucket_arn}/{prefix}*")],
    );
    // ListObjectsV2 is authorized as s3:ListBucket on the bucket, limited by its prefix.
    let mut list = statement("SlipwayRunBackupList", &["s3:ListBucket"], [bucket_arn]);
    list["Condition"] = json!({"StringLike": {"s3:prefix": [format!("{prefix}*")]}});
    vec![objects, list]
}

/// The DynamoDB engine's table and its indexes' ARNs, and the bodies bucket's (None for the
/// SQLite engine).
fn store_arns(config: &Config, env: &Environment) -> Option<(String, String, Option<String>)> {
    let StoreConfig::DynamoDb {
        table,
        bodies_bucket,
    } = &config.store
    else {
        return None;
    };
    let table_arn = arn(env, "dynamodb", &format!("table/{table}"));
    let indexes = format!("{table_arn}/index/*");
    let bucket = bodies_bucket
        .as_ref()
        .map(|b| format!("arn:{}:s3:::{b}", env.partition));
    Some((table_arn, indexes, bucket))
}

/// What the DynamoDB engine calls (`src/store/dynamodb/`): item reads and writes on the table,
/// queries on its indexes (a `TransactWriteItems` is authorized as the Put/Update/Delete
/// actions of its parts, DynamoDB Developer Guide, "Using IAM with DynamoDB transactions"); with a bodies bucket, PutObject and GetObject under `bodies/` only.
fn store_runtime_statements(config: &Config, env: &Environment) -> Vec<Value> {
    let Some((table, indexes, bucket)) = store_arns(config, env) else {
        return vec![];
    };
    let mut statements = vec![
        statement(
            "SlipwayRunStoreTable",
            &[
                "dynamodb:GetItem",
                "dynamodb:BatchGetItem",
                "dynamodb:Query",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                // A fenced write's check of its lease (issue 26), inside a TransactWriteItems.
                "dynamodb:ConditionCheckItem",
            ],
            [table],
        ),
        statement("SlipwayRunStoreIndexes", &["dynamodb:Query"], [indexes]),
    ];
    if let Some(bucket) = bucket {
        statements.push(statement(
            "SlipwayRunStoreBodies",
            &["s3:PutObject", "s3:GetObject"],
            [format!("{bucket}/{}", crate::store::dynamodb::BODIES_PREFIX) + "*"],
        ));
    }
    statements
}

/// What `slipway provision` calls for the DynamoDB engine: the table made, checked and
/// repaired (its `created_ms` item put once), the bucket made, checked and repaired; and what
/// `slipway store copy` (run by the same operator, slipway stopped) calls: the table checked
/// empty, filled with `BatchWriteItem`, counted, and large bodies put under `bodies/`.
fn store_provisioning_statements(config: &Config, env: &Environment) -> Vec<Value> {
    let Some((table, indexes, bucket)) = store_arns(config, env) else {
        return vec![];
    };
    let mut statements = vec![statement(
        "SlipwayProvisionStoreTable",
        &[
            "dynamodb:CreateTable",
            "dynamodb:DescribeTable",
            "dynamodb:UpdateTable",
            "dynamodb:DescribeTimeToLive",
            "dynamodb:UpdateTimeToLive",
            "dynamodb:DescribeContinuousBackups",
            "dynamodb:UpdateContinuousBackups",
            "dynamodb:PutItem",
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
        ],
        [table, indexes],
    )];
    if let Some(bucket) = bucket {
        statements.push(statement(
            "SlipwayProvisionStoreBucket",
            &[
                "s3:CreateBucket",
                "s3:ListBucket",
                "s3:GetBucketPublicAccessBlock",
                "s3:PutBucketPublicAccessBlock",
                "s3:GetEncryptionConfiguration",
                "s3:PutEncryptionConfiguration",
                "s3:GetLifecycleConfiguration",
                "s3:PutLifecycleConfiguration",
            ],
            [bucket.clone()],
        ));
        statements.push(statement(
            "SlipwayCopyStoreBodies",
            &["s3:PutObject"],
            [format!("{bucket}/{}", crate::store::dynamodb::BODIES_PREFIX) + "*"],
        ));
    }
    statements
}

/// What `slipway provision` calls.
pub fn provisioning(config: &Config, env: &Environment) -> Value {
    let mut policy = provisioning_plumbing(config, env);
    if let Some(list) = policy["Statement"].as_array_mut() {
        list.extend(store_provisioning_statements(config, env));
        // Apps in other accounts are checked through their roles.
        list.extend(assume_app_roles(config, "SlipwayProvisionAssumeAppRoles"));
        // No statement names no resource (every app in another account): IAM refuses those.
        list.retain(|st| st["Resource"].as_array().is_none_or(|r| !r.is_empty()));
    }
    policy
}

fn provisioning_plumbing(config: &Config, env: &Environment) -> Value {
    let r = resources(&own_apps(config), config, env);
    let all = resources(&config.apps.iter().collect::<Vec<_>>(), config, env);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            statement(
                "SlipwayProvisionQueues",
                &[
                    "sqs:CreateQueue",
                    "sqs:SetQueueAttributes",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                    "sqs:TagQueue",
                ],
                [r.queue, r.dead_letter_queue],
            ),
            statement(
                "SlipwayProvisionRule",
                &[
                    "events:PutRule",
                    "events:PutTargets",
                    "events:DescribeRule",
                    "events:ListTargetsByRule",
                ],
                [r.rule],
            ),
            statement("SlipwayProvisionCheckProjects", &["codebuild:BatchGetProjects"], all.projects),
            statement(
                "SlipwayProvisionCheckRepositories",
                &["ecr:DescribeRepositories"],
                r.repositories,
            ),
            statement(
                "SlipwayProvisionCheckEcs",
                &["ecs:DescribeClusters", "ecs:DescribeServices"],
                r.clusters.into_iter().chain(r.services),
            ),
            // ECS supports no resource-level permission for it.
            statement(
                "SlipwayProvisionCheckTaskDefinitions",
                &["ecs:DescribeTaskDefinition"],
                ["*".to_owned()],
            ),
            // `slipway init` looks for the project that builds the repository; ListProjects
            // supports no resource-level permission.
            statement(
                "SlipwayProvisionInitListProjects",
                &["codebuild:ListProjects"],
                ["*".to_owned()],
            ),
        ],
    })
}

/// The partition, region and account, and what the services' task definitions use; an app
/// in another account is read through its role, into `accounts`.
pub async fn discover(config: &Config, aws: &Clients, region: &str) -> anyhow::Result<Environment> {
    let accounts = crate::accounts::Accounts::new(aws, &config.apps);
    let mut env = Environment {
        partition: partition_of(region).to_owned(),
        region: region.to_owned(),
        account: config
            .queue_url
            .as_deref()
            .and_then(crate::events::trust::account_from_queue_url)
            .unwrap_or_default(),
        ..Environment::default()
    };
    let mut others: BTreeMap<String, Environment> = BTreeMap::new();
    for app in &config.apps {
        let clients = accounts.of(app);
        clients
            .check_role()
            .await
            .map_err(|e| anyhow::anyhow!("app {}: {e}", app.name))?;
        let out = clients
            .ecs
            .describe_services()
            .cluster(&app.cluster)
            .services(&app.service)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeServices", &e))?;
        let service = out.services().first().ok_or_else(|| {
            anyhow::anyhow!(
                "app {}: service {} not found in cluster {}",
                app.name,
                app.service,
                app.cluster
            )
        })?;
        let into = match &app.role {
            None => &mut env,
            Some(role) => others
                .entry(role.arn.clone())
                .or_insert_with(|| Environment {
                    partition: role.partition().to_owned(),
                    region: region.to_owned(),
                    account: role.account.clone(),
                    ..Environment::default()
                }),
        };
        if into.account.is_empty() {
            if let Some(account) = service.service_arn().and_then(|a| a.split(':').nth(4)) {
                into.account = account.to_owned();
            }
        }
        let td = service.task_definition().unwrap_or_default();
        let out = clients
            .ecs
            .describe_task_definition()
            .task_definition(td)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ECS DescribeTaskDefinition", &e))?;
        let td = out
            .task_definition()
            .ok_or_else(|| anyhow::anyhow!("app {}: task definition {td} not found", app.name))?;
        if let Some(family) = td.family() {
            into.families.insert(family.to_owned());
        }
        into.roles.extend(
            [td.task_role_arn(), td.execution_role_arn()]
                .into_iter()
                .flatten()
                .map(str::to_owned),
        );
    }
    if env.account.is_empty() {
        // Every app is in another account: slipway's own is who it is.
        if let Ok(me) = aws.sts.get_caller_identity().send().await {
            env.account = me.account().unwrap_or_default().to_owned();
        }
    }
    if env.account.is_empty() {
        anyhow::bail!("cannot tell the AWS account: set queue_url, or check the services exist");
    }
    env.accounts = others;
    Ok(env)
}

fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// `slipway provision --policy`.
pub async fn command(config: &Config) -> anyhow::Result<()> {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let region = shared
        .region()
        .map(|r| r.as_ref().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no AWS region configured (set AWS_REGION)"))?;
    let aws = Clients::from_config(&shared);
    let env = discover(config, &aws, &region).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&policies(config, &env)).expect("policies serialize")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One app, `web`, in slipway's account 123456789012.
    const WEB: &str = r#"
state_dir = "/tmp/x"
queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/slipway-events"
[[app]]
name = "web"
repository = "o/web"
codebuild_project = "web-build"
cluster = "prod"
service = "web"
container = "web"
ecr_repository = "web"
"#;

    fn config() -> Config {
        Config::parse(WEB).unwrap()
    }

    fn env() -> Environment {
        Environment {
            partition: "aws".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            families: ["web".to_owned()].into(),
            roles: ["arn:aws:iam::123456789012:role/web-task".to_owned()].into(),
            accounts: Default::default(),
        }
    }

    /// Issue 27: web (slipway's account) → staging (account 2…) → prod (account 3…): one
    /// repository policy for web's repository naming both accounts (a repository has one
    /// policy), each role's half, and nothing of theirs in `runtime` but the roles.
    #[test]
    fn a_chain_across_accounts_gets_one_repository_policy_naming_every_puller() {
        let promoted = |name: &str, from: &str, account: &str| {
            format!(
                "[[app]]\nname = \"{name}\"\nrepository = \"o/web\"\ncluster = \"c\"\n\
                 service = \"{name}\"\ncontainer = \"web\"\necr_repository = \"web\"\n\
                 promote_from = \"{from}\"\nrole_arn = \"arn:aws:iam::{account}:role/deploy\"\n"
            )
        };
        let text = WEB.to_owned()
            + &promoted("staging", "web", "222222222222")
            + &promoted("prod", "staging", "333333333333");
        let config = Config::parse(&text).unwrap();
        let mut env = env();
        for account in ["222222222222", "333333333333"] {
            env.accounts.insert(
                format!("arn:aws:iam::{account}:role/deploy"),
                Environment {
                    partition: "aws".into(),
                    region: "eu-west-1".into(),
                    account: account.into(),
                    ..Default::default()
                },
            );
        }
        let printed = policies(&config, &env);
        let repos = printed["ecr_repository_policies"].as_array().unwrap();
        assert_eq!(repos.len(), 1, "{printed}");
        assert_eq!(repos[0]["account"], "123456789012");
        assert_eq!(repos[0]["repository"], "web");
        assert_eq!(
            repos[0]["policy"]["Statement"][0]["Principal"]["AWS"],
            json!([
                "arn:aws:iam::222222222222:root",
                "arn:aws:iam::333333333333:root"
            ])
        );
        let accounts = printed["accounts"].as_array().unwrap();
        assert_eq!(accounts.len(), 2);
        for a in accounts {
            let text = a["role_policy"].to_string();
            assert!(
                text.contains("arn:aws:ecr:eu-west-1:123456789012:repository/web"),
                "{a}"
            );
            assert!(!a["trust_policy"].to_string().contains("ExternalId"), "{a}");
        }
        let runtime = printed["runtime"].to_string();
        assert!(runtime.contains("arn:aws:iam::222222222222:role/deploy"));
        assert!(!runtime.contains("service/c/prod"), "{runtime}");
        assert!(!runtime.contains("SlipwayRunPromotedImages"), "{runtime}");
    }

    #[test]
    fn runtime_names_exact_resources() {
        let p = runtime(&config(), &env());
        let text = p.to_string();
        assert!(text.contains("arn:aws:codebuild:eu-west-1:123456789012:project/web-build"));
        assert!(text.contains("arn:aws:ecs:eu-west-1:123456789012:service/prod/web"));
        assert!(text.contains("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:*"));
        assert!(text.contains("arn:aws:sqs:eu-west-1:123456789012:slipway-events"));
        assert!(text.contains("ecs-tasks.amazonaws.com"));
    }

    #[test]
    fn the_partition_follows_the_region() {
        assert_eq!(partition_of("cn-north-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("eu-west-1"), "aws");
    }
}
