//! Issue 27, item 3: production in another AWS account. `role_arn` (and `external_id`) on an
//! app: every ECS and ECR call for it is made with credentials from STS AssumeRole; the
//! image staging ran stays in staging's registry, read and pulled through its repository
//! policy. The emulator keeps one backend per account (credentials from its AssumeRole are
//! the role's account's); the proxy in front does what the emulator does not: trust policies
//! and cross-account repository policies, as AWS documents them (`support/proxy.rs`, "Other
//! accounts").

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use serde_json::{json, Value};

use crate::deploy::{web_with, Deploy, Setup};
use crate::promote::{digest_of, prod_app};
use crate::support::proxy::DEFAULT_ACCOUNT;
use crate::support::slipway::HARNESS_TOKEN;
use crate::support::world::{circuit_breaker_on, CLUSTER, ECR_REPO};
use crate::support::{eventually, MASTER_SHA};

const PROD_ACCOUNT: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/slipway-deploy";
const EXTERNAL_ID: &str = "slipway-e2e-7f3a";
const SECOND_SHA: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const THIRD_SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

/// The emulator as account `account` (straight to it, not through the proxy: the emulator
/// hands any role's credentials to anyone, which is how a test gets to set up that account).
async fn as_account(w: &Deploy, account: &str) -> aws_config::SdkConfig {
    let out = aws_sdk_sts::Client::new(&w.emulator.config)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/test-setup"))
        .role_session_name("test-setup")
        .send()
        .await
        .expect("the emulator's AssumeRole");
    let c = out.credentials().expect("credentials");
    w.emulator
        .config
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            None,
            "test-setup",
        )))
        .build()
}

/// Production's cluster `web` and service `web-prod` in the production account, running
/// staging's image `:previous` (from staging's registry).
async fn production_account(w: &Deploy) -> aws_sdk_ecs::Client {
    let ecs = aws_sdk_ecs::Client::new(&as_account(w, PROD_ACCOUNT).await);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    let uri = w.emulator.repository_uri(ECR_REPO).await;
    let td = ecs
        .register_task_definition()
        .family("web-prod")
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .cpu("256")
        .memory("512")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("web")
                .image(format!("{uri}:previous"))
                .essential(true)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name("web-prod")
        .task_definition(td)
        .desired_count(2)
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .deployment_configuration(circuit_breaker_on())
        .send()
        .await
        .unwrap();
    ecs
}

/// A trust policy letting `account` assume the role with `external_id`.
fn trust(account: &str, external_id: &str) -> Value {
    json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
    }]})
}

/// Waits until `app`'s deploy of `sha` ends; returns its record.
async fn deploy_of(w: &Deploy, app: &str, sha: &str) -> Value {
    eventually(&format!("{app}'s deploy of {sha} finished"), || async {
        w.builder.deployments().into_iter().find(|d| {
            d["app"] == app
                && d["sha"] == sha
                && !matches!(d["state"].as_str(), Some("pending" | "deploying"))
        })
    })
    .await
}

/// Waits until staging's deploy of `sha` succeeded.
async fn staging_deployed(w: &Deploy, sha: &str) {
    let d = deploy_of(w, "web", sha).await;
    assert_eq!(d["state"], "succeeded", "{d}");
}

/// `slipway provision --dry-run --json`'s item for production's view of staging's images.
async fn images_seen_from_production(w: &Deploy) -> Value {
    let builder = w.builder.clone();
    let (_, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let config = builder.write_config();
        builder.run(&[
            "provision",
            "--dry-run",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("provision printed no JSON ({e}): {stdout}{stderr}"));
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "ecr_repository" && i["app"] == "web-prod")
        .cloned()
        .unwrap_or_else(|| panic!("no ecr_repository item for web-prod: {report}"))
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid} in {policy}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_in_another_account_is_deployed_with_the_roles_credentials_only() {
    let settings =
        format!("approval = \"auto\"\nrole_arn = \"{ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"");
    let w = Deploy::with(Setup {
        apps: format!("{}{}", web_with(""), prod_app("web", &settings)),
        images: &[MASTER_SHA, SECOND_SHA, THIRD_SHA],
        ..Setup::default()
    })
    .await;
    let prod_ecs = production_account(&w).await;
    let region = w.emulator.config.region().unwrap().to_string();

    // `provision --policy`, while the role trusts slipway's account: what each account needs.
    w.proxy
        .trust_policy(ROLE, trust(DEFAULT_ACCOUNT, EXTERNAL_ID));
    let printed = crate::iam_policy::printed_policies(&w.builder).await;
    let runtime = &printed["runtime"];
    assert_eq!(
        statement(runtime, "SlipwayRunAssumeAppRoles")["Resource"],
        json!([ROLE])
    );
    assert_eq!(
        statement(runtime, "SlipwayRunServices")["Resource"],
        json!([format!(
            "arn:aws:ecs:{region}:{DEFAULT_ACCOUNT}:service/web/web"
        )]),
        "production's service is not slipway's own account's to call"
    );
    let account = &printed["accounts"][0];
    assert_eq!(account["role_arn"], ROLE, "{printed}");
    assert_eq!(account["apps"], json!(["web-prod"]));
    let role_policy = &account["role_policy"];
    assert_eq!(
        statement(role_policy, "SlipwayRunServices")["Resource"],
        json!([format!(
            "arn:aws:ecs:{region}:{PROD_ACCOUNT}:service/web/web-prod"
        )])
    );
    assert_eq!(
        statement(role_policy, "SlipwayRunPromotedImages")["Resource"],
        json!([format!(
            "arn:aws:ecr:{region}:{DEFAULT_ACCOUNT}:repository/web"
        )])
    );
    let trust_policy = account["trust_policy"].clone();
    assert_eq!(
        trust_policy["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{DEFAULT_ACCOUNT}:root")
    );
    assert_eq!(
        trust_policy["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        EXTERNAL_ID
    );
    let repository_policy = &printed["ecr_repository_policies"][0];
    assert_eq!(
        repository_policy["policy"]["Statement"][0]["Principal"]["AWS"],
        json!([format!("arn:aws:iam::{PROD_ACCOUNT}:root")])
    );
    assert_eq!(repository_policy["account"], DEFAULT_ACCOUNT);
    assert_eq!(repository_policy["repository"], ECR_REPO);

    // 1. The role trusts another external id: production's preflight says it cannot assume
    // the role, and nothing is asked of production's account.
    w.proxy
        .trust_policy(ROLE, trust(DEFAULT_ACCOUNT, "someone-elses-id"));
    // What `provision --policy` asked for is not slipway's serving.
    let handed_out = w.proxy.assumed_keys().len();
    let provisioned = w.proxy.recorded().len();
    let s = w.builder.start().await;
    w.build_succeeds(&s, "p-1", MASTER_SHA).await;
    staging_deployed(&w, MASTER_SHA).await;
    let refused = deploy_of(&w, "web-prod", MASTER_SHA).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "cannot assume role {ROLE} (account {PROD_ACCOUNT}): STS AssumeRole: access denied"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "User: arn:aws:iam::{DEFAULT_ACCOUNT}:user/moto is not authorized to perform: \
             sts:AssumeRole on resource: {ROLE}"
        )),
        "{reason}"
    );
    assert!(
        reason.ends_with(
            "its trust policy must let slipway's account assume it, with sts:ExternalId \
             (`slipway provision --policy` prints it)"
        ),
        "{reason}"
    );
    let assumed: Vec<_> = w
        .proxy
        .recorded()
        .into_iter()
        .skip(provisioned)
        .filter(|r| r.operation == "AssumeRole")
        .collect();
    assert!(!assumed.is_empty(), "the deploy asked STS");
    for r in &assumed {
        assert_eq!(r.body["RoleArn"], ROLE, "{:?}", r.body);
        assert_eq!(r.body["ExternalId"], EXTERNAL_ID, "{:?}", r.body);
    }
    assert_eq!(
        w.proxy.assumed_keys().len(),
        handed_out,
        "STS handed slipway nothing"
    );
    let naming_production = |w: &Deploy| -> Vec<crate::support::proxy::Recorded> {
        w.proxy
            .recorded()
            .into_iter()
            .skip(provisioned)
            .filter(|r| {
                r.body.to_string().contains("\"web-prod\"")
                    || r.body["registryId"].is_string()
                    || r.body["taskDefinition"]
                        .as_str()
                        .is_some_and(|td| td.contains(PROD_ACCOUNT))
            })
            .collect()
    };
    assert!(naming_production(&w).is_empty());

    // 2. The printed trust policy: the role is assumed, but staging's repository does not
    // let the production account see the image yet; the preflight says so.
    w.proxy.trust_policy(ROLE, trust_policy);
    w.build_succeeds(&s, "p-2", SECOND_SHA).await;
    staging_deployed(&w, SECOND_SHA).await;
    let unseen = deploy_of(&w, "web-prod", SECOND_SHA).await;
    assert_eq!(unseen["state"], "failed", "{unseen}");
    let reason = unseen["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "account {PROD_ACCOUNT} (app web-prod's role_arn) cannot see the image web@sha256:"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "in account {DEFAULT_ACCOUNT}'s registry (ECR DescribeImages: access denied"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "the repository web needs a repository policy letting account {PROD_ACCOUNT} pull it"
        )),
        "{reason}"
    );
    assert!(w.proxy.assumed_keys().len() > handed_out);
    // `provision` (and `check-config --aws`) says the same before any deploy.
    let item = images_seen_from_production(&w).await;
    assert_eq!(item["name"], format!("{DEFAULT_ACCOUNT}/web"), "{item}");
    assert_eq!(item["status"], "error", "{item}");
    let detail = item["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "account {PROD_ACCOUNT} cannot see the images it promotes (ECR DescribeImages: \
             access denied"
        )),
        "{detail}"
    );

    // 3. The printed repository policy on staging's repository: production deploys the
    // image staging ran, by digest, from staging's registry.
    w.emulator
        .ecr()
        .set_repository_policy()
        .repository_name(ECR_REPO)
        .policy_text(repository_policy["policy"].to_string())
        .send()
        .await
        .unwrap();
    let item = images_seen_from_production(&w).await;
    assert_eq!(item["status"], "ok", "{item}");
    assert_eq!(
        item["detail"],
        format!("account {PROD_ACCOUNT} can see the images it promotes")
    );
    w.build_succeeds(&s, "p-3", THIRD_SHA).await;
    staging_deployed(&w, THIRD_SHA).await;
    let prod = deploy_of(&w, "web-prod", THIRD_SHA).await;
    assert_eq!(prod["state"], "succeeded", "{prod}");
    let digest = digest_of(&w, THIRD_SHA).await;
    let uri = w.emulator.repository_uri(ECR_REPO).await;
    assert_eq!(prod["image"], format!("{uri}@{digest}"), "{prod}");
    // Production's account runs it.
    let service = prod_ecs
        .describe_services()
        .cluster(CLUSTER)
        .services("web-prod")
        .send()
        .await
        .unwrap()
        .services()[0]
        .clone();
    let td = prod_ecs
        .describe_task_definition()
        .task_definition(service.task_definition().unwrap())
        .send()
        .await
        .unwrap();
    let td = td.task_definition().unwrap();
    assert!(td.task_definition_arn().unwrap().contains(PROD_ACCOUNT));
    assert_eq!(
        td.container_definitions()[0].image(),
        Some(format!("{uri}@{digest}").as_str())
    );

    // Every call for production went with the role's credentials, and none for staging did.
    let keys = w.proxy.assumed_keys();
    let production_calls = naming_production(&w);
    for op in [
        "DescribeServices",
        "DescribeImages",
        "RegisterTaskDefinition",
        "UpdateService",
    ] {
        assert!(
            production_calls.iter().any(|r| r.operation == op),
            "no {op} for production"
        );
    }
    for r in &production_calls {
        assert!(
            keys.get(&r.caller).map(String::as_str) == Some(ROLE),
            "{} {} was signed by {}, not the role",
            r.operation,
            r.body,
            r.caller
        );
    }
    let staging_updates: Vec<_> = w
        .proxy
        .recorded()
        .into_iter()
        .filter(|r| r.operation == "UpdateService" && r.body["service"] == "web")
        .collect();
    assert_eq!(staging_updates.len(), 3);
    assert!(staging_updates
        .iter()
        .all(|r| !keys.contains_key(&r.caller)));
    assert_eq!(
        w.proxy.requests("StartBuild").len(),
        3,
        "production never builds"
    );

    // The status views say where production runs, read through the role.
    let status = |json: bool| {
        let mut cmd = w.builder.command();
        cmd.env("SLIPWAY_OPS_TOKEN", HARNESS_TOKEN)
            .args(["status", "--server", &s.admin_url]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let apps: Value = serde_json::from_str(&status(true)).unwrap();
    let prod_status = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "web-prod")
        .unwrap()
        .clone();
    assert_eq!(prod_status["account"], PROD_ACCOUNT, "{apps}");
    assert_eq!(prod_status["image"], format!("{uri}@{digest}"), "{apps}");
    assert!(prod_status["error"].is_null(), "{apps}");
    let staging_status = apps.as_array().unwrap().iter().find(|a| a["app"] == "web");
    assert!(staging_status.unwrap().get("account").is_none(), "{apps}");
    let table = status(false);
    assert!(
        table.contains(&format!("web-prod (account {PROD_ACCOUNT})")),
        "{table}"
    );
    // A commit by hand would be looked for by tag in production's own registry: refused,
    // saying how instead.
    let (code, v) = crate::promote::api(
        &s,
        HARNESS_TOKEN,
        "POST",
        "/api/apps/web-prod/deploy",
        json!({"sha": THIRD_SHA}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["error"],
        "web-prod's images are held in another account's registry: deploy a commit to it by \
         promotion (deploy web and approve), or roll it back to a revision it ran"
    );
    let (_, page) = crate::status_page::page(&s, "/").await;
    assert!(
        page.contains(&format!("web / web-prod in account {PROD_ACCOUNT}")),
        "{page}"
    );
    drop(s);
}
