//! Issue 25 item 4: `slipway store copy` moves a stopped slipway's SQLite journal into a fresh
//! DynamoDB table (on moto, through the real binary): every kind of record, its id and order
//! kept, so that both engines then answer the same; and the inputs it must refuse, refused
//! with nothing written.

use slipway::config::JournalConfig;
use slipway::ids::{AppName, CommitSha, DeliveryId, HookId};
use slipway::store::dynamodb::DynamoStore;
use slipway::store::{
    deploy_state, trigger, Admission, BuildCompletion, BuildRequest, DeploymentUpdate,
    GithubDeployment, NewDelivery, NewDeployment, NewRecovery, RejectedEvent, Source, Store,
    Verdict,
};

use crate::support::{noise, Emulator, SlipwayBuilder};

const T0: i64 = 1_700_000_000_000;
const TABLE: &str = "slipway";
const BUCKET: &str = "slipway-bodies";

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

fn delivery(id: &str, hook: &str, at: i64, source: Source) -> NewDelivery {
    NewDelivery {
        delivery_id: DeliveryId::parse(id).unwrap(),
        hook_id: HookId::parse(Some(hook)).unwrap(),
        event: "push".into(),
        source,
        actor: (source == Source::Replay).then(|| "alice".to_owned()),
        replay_of: None,
        received_ms: at,
        content_type: "application/json".into(),
        headers: serde_json::json!({ "X-GitHub-Event": "push" }),
        body: format!("{{\"delivery\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes(),
    }
}

fn push(c: char, before: Option<char>) -> Verdict {
    Verdict::Build(vec![BuildRequest {
        app: AppName::parse("web").unwrap(),
        sha: CommitSha::parse(&sha(c)).unwrap(),
        project: "web-build".into(),
        image_tag: sha(c),
        service_key: "main/web".into(),
        before: before.map(sha),
        pushed_at: Some(T0 / 1000),
        tag: None,
    }])
}

async fn accepted(store: &Store, id: &str, at: i64, c: char) -> i64 {
    let (_, admission) = store
        .admit(delivery(id, "1", at, Source::Github), push(c, Some('0')))
        .await
        .unwrap();
    match admission {
        Admission::Accepted(b) => b[0].build_row,
        other => panic!("{id}: {other:?}"),
    }
}

fn completion(build_id: &str, foreign: Option<NewDeployment>) -> BuildCompletion {
    BuildCompletion {
        build_id: build_id.into(),
        succeeded: true,
        status: "SUCCEEDED".into(),
        log_link: Some(format!("https://logs/{build_id}")),
        foreign,
        run_token: None,
    }
}

/// A build of push `c` from delivery `id`, started and succeeded: its deployment.
async fn built_and_deployed(store: &Store, id: &str, at: i64, c: char) -> i64 {
    let build = accepted(store, id, at, c).await;
    let build_id = format!("web-build:{c}");
    store
        .build_started(build, build_id.clone(), None, at + 1)
        .await
        .unwrap();
    match store
        .complete_build(completion(&build_id, None), at + 2)
        .await
        .unwrap()
    {
        slipway::store::CompletionOutcome::Deploy { deployment, .. } => deployment,
        other => panic!("{other:?}"),
    }
}

/// A deploy no push asked for: an operator's (by alice), or a build slipway did not start
/// (`other-build:1`).
/// A promotion to `web-prod` of source deployment `source` (commit of `c`s).
fn promotion(source: i64, c: char) -> slipway::store::NewPromotion {
    slipway::store::NewPromotion {
        app: "web-prod".into(),
        source_app: "web".into(),
        source_deployment: source,
        sha: sha(c),
        image_digest: format!("sha256:{}", "d".repeat(64)),
        image_tag: sha(c),
        tag: None,
        service_key: "main/web-prod".into(),
        expires_ms: T0 + 3_600_000,
    }
}

fn explicit_deploy(trigger: &'static str, c: char) -> NewDeployment {
    let foreign = trigger == trigger::FOREIGN_BUILD;
    NewDeployment {
        app: "web".into(),
        service_key: "main/web".into(),
        sha: sha(c),
        image_tag: sha(c),
        trigger,
        actor: (!foreign).then(|| "alice".to_owned()),
        build_row: None,
        build_id: foreign.then(|| "other-build:1".to_owned()),
        delivery_id: None,
        order_key: None,
        target_task_definition: None,
        log_link: None,
        tag: None,
        promotion: None,
    }
}

/// The Slack signature the journal holds, and when it was seen (now: within the window).
fn slack_signature() -> (Vec<u8>, i64) {
    (
        vec![7u8; 32],
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )
}

/// A journal in `state_dir` with every kind of record: deliveries of each outcome (with their
/// bodies, one dropped by retention), builds pending, retried, started, failed to start and
/// succeeded, push deploys finished and unfinished, an operator's deploy, a foreign build's
/// deploy, GitHub outbox entries, notifications pending and sent, a refused event, a Slack
/// key, a GitHub deployment and a recovery. Closed when it returns.
async fn journal_with_every_kind(state_dir: &std::path::Path) {
    let store = Store::open(state_dir).unwrap();
    // A pending build, tried once and waiting.
    let pending = accepted(&store, "d-pending", T0, 'a').await;
    store
        .build_retry_later(pending, "throttled".into(), T0 + 60_000, T0 + 1)
        .await
        .unwrap();
    // A started build without a result (the reconciler's), redelivered: a duplicate.
    let started = accepted(&store, "d-started", T0 + 10, 'b').await;
    store.build_start_requested(started, T0 + 11).await.unwrap();
    store
        .build_started(started, "web-build:b".into(), Some("arn:b".into()), T0 + 12)
        .await
        .unwrap();
    let (row, dup) = store
        .admit(
            delivery("d-started", "1", T0 + 13, Source::Github),
            push('b', Some('0')),
        )
        .await
        .unwrap();
    assert_eq!((row, dup), (0, Admission::Duplicate));
    // A build that succeeded, deployed and finished.
    let deployed = built_and_deployed(&store, "d-done", T0 + 20, 'c').await;
    store
        .update_deployment(
            deployed,
            DeploymentUpdate {
                state: Some(deploy_state::DEPLOYING),
                started: true,
                to_task_definition: Some("web:7".into()),
                progress: Some((1, 2, 0)),
                stage: Some("BAKE_TIME".into()),
                ..Default::default()
            },
            T0 + 23,
        )
        .await
        .unwrap();
    store
        .update_deployment(
            deployed,
            DeploymentUpdate {
                state: Some(deploy_state::SUCCEEDED),
                progress: Some((2, 2, 0)),
                ..Default::default()
            },
            T0 + 24,
        )
        .await
        .unwrap();
    // A push that followed it, built and deploying (unfinished).
    let deploying = built_and_deployed(&store, "d-next", T0 + 30, 'd').await;
    store
        .update_deployment(
            deploying,
            DeploymentUpdate {
                state: Some(deploy_state::DEPLOYING),
                started: true,
                unseen: Some("cannot see the service: AccessDenied".into()),
                ..Default::default()
            },
            T0 + 33,
        )
        .await
        .unwrap();
    // A build that failed to start for good.
    let failed = accepted(&store, "d-failed", T0 + 40, 'e').await;
    store
        .build_failed_to_start(failed, "AccessDenied".into(), T0 + 41)
        .await
        .unwrap();
    // Deliveries that build nothing.
    store
        .admit(
            delivery("d-ignored", "1", T0 + 50, Source::Github),
            Verdict::Ignored("branch feature is not deployed".into()),
        )
        .await
        .unwrap();
    store
        .admit(
            delivery("d-ping", "1", T0 + 51, Source::Github),
            Verdict::Pong,
        )
        .await
        .unwrap();
    store
        .admit(
            delivery("d-replay", "1", T0 + 52, Source::Replay),
            Verdict::Rejected("no such app".into()),
        )
        .await
        .unwrap();
    // An operator's deploy (pending) and a foreign build's deploy.
    store
        .request_deployment(explicit_deploy(trigger::OPERATOR, 'c'), T0 + 60)
        .await
        .unwrap();
    store
        .complete_build(
            completion(
                "other-build:1",
                Some(explicit_deploy(trigger::FOREIGN_BUILD, 'f')),
            ),
            T0 + 61,
        )
        .await
        .unwrap();
    // The outboxes, a refused event, a Slack key, GitHub's records.
    let posted = store
        .queue_github_update("{\"posted\":true}".into(), T0 + 70)
        .await
        .unwrap();
    store
        .queue_github_update("{\"waiting\":true}".into(), T0 + 71)
        .await
        .unwrap();
    store.github_posted(posted).await.unwrap();
    let ids = store
        .queue_notification(
            vec![
                ("slack".into(), "key-1".into()),
                ("webhook".into(), "key-2".into()),
            ],
            "{\"kind\":\"deployed\"}".into(),
            T0 + 72,
        )
        .await
        .unwrap();
    store.notification_sent(ids[0], T0 + 73).await.unwrap();
    store
        .notification_failed(ids[1], "HTTP 503".into(), T0 + 74)
        .await
        .unwrap();
    store
        .event_rejected(RejectedEvent {
            message_id: Some("m-1".into()),
            build_id: Some("web-build:x".into()),
            source: Some("aws.codebuild".into()),
            account: Some("999999999999".into()),
            reason: "another account".into(),
            received_ms: T0 + 75,
        })
        .await
        .unwrap();
    let (signature, seen_at) = slack_signature();
    assert!(store
        .slack_first_time(signature, seen_at, slipway::chat::REPLAY_WINDOW_SECS)
        .await
        .unwrap());
    store
        .record_github_deployment(
            deployed,
            "web".into(),
            GithubDeployment {
                deployment: deployed,
                repository: "octo-org/web".into(),
                github_id: 4242,
                state: "success".into(),
            },
            T0 + 76,
        )
        .await
        .unwrap();
    store
        .record_recovery(
            NewRecovery {
                hook_id: "1".into(),
                delivery_id: "d-lost".into(),
                attempt_id: 99,
                event: "push".into(),
                status_code: Some(503),
                delivered_ms: T0 + 5,
                actor: "recovery".into(),
                outcome: "requested".into(),
                reason: None,
            },
            T0 + 77,
        )
        .await
        .unwrap();
    // Promotions (issue 27): one approved (its deployment made), one waiting.
    for (source, c) in [(1, 'e'), (2, 'f')] {
        store
            .create_promotion(promotion(source, c), T0 + 78)
            .await
            .unwrap();
    }
    let first = store.promotions(None, 10).await.unwrap().pop().unwrap();
    assert_eq!(first.state, "superseded");
    let slipway::store::PromotionCreated::New {
        promotion: third, ..
    } = store
        .create_promotion(promotion(3, 'a'), T0 + 79)
        .await
        .unwrap()
    else {
        panic!("a third promotion")
    };
    store
        .decide_promotion(
            third.id,
            slipway::store::PromotionDecision::Approve {
                by: "alice".into(),
                deployment: Box::new(NewDeployment {
                    trigger: trigger::PROMOTION,
                    ..explicit_deploy(trigger::OPERATOR, 'a')
                }),
            },
            T0 + 79,
        )
        .await
        .unwrap();
    store
        .create_promotion(promotion(4, 'b'), T0 + 79)
        .await
        .unwrap();
    // Retention drops the oldest bodies (ignored ones go whole after keep_ignored_days).
    let pruned = store
        .prune(
            T0 + 31 * 86_400_000,
            &JournalConfig {
                keep_bodies_days: 30,
                keep_ignored_days: 365,
                ..JournalConfig::default()
            },
        )
        .await
        .unwrap();
    assert!(pruned.bodies_dropped > 0, "{pruned:?}");
    // A body too large for a DynamoDB item (400 KB that do not compress): the copy puts it in
    // the bodies bucket.
    let mut large = delivery("d-large", "1", T0 + 80, Source::Github);
    large.body = noise(400_000, 7);
    store
        .admit(
            large,
            Verdict::Ignored("branch feature is not deployed".into()),
        )
        .await
        .unwrap();
    store.close();
}

fn dynamodb(emulator: &Emulator) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&emulator.config),
        TABLE,
        &JournalConfig::default(),
    )
}

/// A builder whose config names the DynamoDB table on `emulator`.
fn dynamodb_config(emulator: &Emulator) -> SlipwayBuilder {
    SlipwayBuilder::new(&emulator.url).extra(&format!(
        "[store]\nengine = \"dynamodb\"\ntable = \"{TABLE}\"\n"
    ))
}

/// `slipway store copy --from <from> --to <target's config>`: its exit status, stdout, stderr.
async fn copy(
    target: &SlipwayBuilder,
    from: &std::path::Path,
) -> (std::process::ExitStatus, String, String) {
    let target = target.clone();
    let from = from.to_owned();
    tokio::task::spawn_blocking(move || {
        let to = target.write_config();
        target.run(&[
            "store",
            "copy",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ])
    })
    .await
    .unwrap()
}

fn debug<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:#?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_journal_answers_the_same_from_dynamodb_and_a_second_copy_is_refused() {
    let emulator = Emulator::start().await;
    let source = SlipwayBuilder::new(&emulator.url);
    journal_with_every_kind(&source.state_dir()).await;
    let from = source.write_config();
    let target = SlipwayBuilder::new(&emulator.url).extra(&format!(
        "[store]\nengine = \"dynamodb\"\ntable = \"{TABLE}\"\nbodies_bucket = \"{BUCKET}\"\n"
    ));
    dynamodb(&emulator).create_table(T0).await.unwrap();
    let s3 = emulator.bucket(BUCKET).await;

    let (status, stdout, stderr) = copy(&target, &from).await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("every count matches"), "{stdout}");
    for line in [
        "deliveries",
        "bodies",
        "builds",
        "deployments",
        "notifications",
        "promotions",
    ] {
        let counted = stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} count: {stdout}"));
        let numbers: Vec<&str> = counted.split_whitespace().rev().take(2).collect();
        assert_eq!(numbers[0], numbers[1], "{counted}");
        assert_ne!(numbers[0], "0", "{counted}: the journal has some");
    }

    let sqlite = Store::open_read_only(&source.state_dir()).unwrap();
    let dynamo = Store::DynamoDb(dynamodb(&emulator).with_bodies_bucket(s3.clone(), BUCKET));
    let far = T0 + 400 * 86_400_000;
    assert_eq!(
        debug(sqlite.recent_deliveries(100).await.unwrap()),
        debug(dynamo.recent_deliveries(100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.recent_runs(100).await.unwrap()),
        debug(dynamo.recent_runs(100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.recent_deployments(None, 100).await.unwrap()),
        debug(dynamo.recent_deployments(None, 100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.github_outbox(-1).await.unwrap()),
        debug(dynamo.github_outbox(-1).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.notifications(None, 100).await.unwrap()),
        debug(dynamo.notifications(None, 100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.rejected_events(100).await.unwrap()),
        debug(dynamo.rejected_events(100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.recoveries(100).await.unwrap()),
        debug(dynamo.recoveries(100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.promotions(None, 100).await.unwrap()),
        debug(dynamo.promotions(None, 100).await.unwrap())
    );
    assert_eq!(
        debug(sqlite.awaiting_promotions().await.unwrap()),
        debug(dynamo.awaiting_promotions().await.unwrap())
    );
    assert_eq!(dynamo.awaiting_promotions().await.unwrap().len(), 1);
    // Due work agrees: builds to start, rollouts to follow, builds to ask CodeBuild about.
    assert_eq!(
        debug(sqlite.due_builds(far, 100).await.unwrap()),
        debug(dynamo.due_builds(far, 100).await.unwrap())
    );
    assert_eq!(dynamo.due_builds(far, 100).await.unwrap().len(), 1);
    assert_eq!(
        debug(sqlite.unfinished_deployments().await.unwrap()),
        debug(dynamo.unfinished_deployments().await.unwrap())
    );
    // The second push's deploy (deploying), the operator's, the foreign build's and the
    // approved promotion's (pending).
    assert_eq!(dynamo.unfinished_deployments().await.unwrap().len(), 4);
    assert_eq!(
        debug(sqlite.builds_in_flight(far).await.unwrap()),
        debug(dynamo.builds_in_flight(far).await.unwrap())
    );
    assert_eq!(dynamo.builds_in_flight(far).await.unwrap().len(), 1);
    for target in ["slack", "webhook"] {
        assert_eq!(
            debug(sqlite.next_notification(target).await.unwrap()),
            debug(dynamo.next_notification(target).await.unwrap()),
            "{target}"
        );
    }
    // Records found by key: a delivery (and its body) by GUID, a GitHub deployment, a commit.
    for guid in ["d-pending", "d-ignored", "d-next", "d-large"] {
        assert_eq!(
            debug(sqlite.delivery(guid).await.unwrap()),
            debug(dynamo.delivery(guid).await.unwrap()),
            "{guid}"
        );
    }
    let large = dynamo.delivery("d-large").await.unwrap().unwrap();
    assert_eq!(large.body.as_deref(), Some(noise(400_000, 7).as_slice()));
    let objects = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    assert_eq!(objects.contents().len(), 1, "{objects:?}");
    let newest = sqlite.recent_deployments(None, 100).await.unwrap();
    for d in &newest {
        assert_eq!(
            debug(sqlite.github_deployment(d.id).await.unwrap()),
            debug(dynamo.github_deployment(d.id).await.unwrap())
        );
        assert_eq!(
            debug(sqlite.newer_deployment(d).await.unwrap()),
            debug(dynamo.newer_deployment(d).await.unwrap()),
            "deployment {}",
            d.id
        );
    }
    for prefix in ["ffff", "cccc", "aaaa"] {
        assert_eq!(
            sqlite.shas_with_prefix("web", prefix).await.unwrap(),
            dynamo.shas_with_prefix("web", prefix).await.unwrap(),
            "{prefix}"
        );
    }
    // What the deploy worker, the status page and the metrics read.
    for line in sqlite.recent_deliveries(100).await.unwrap() {
        assert_eq!(
            debug(sqlite.deployments_of_delivery(line.row).await.unwrap()),
            debug(dynamo.deployments_of_delivery(line.row).await.unwrap()),
            "delivery {}",
            line.row
        );
    }
    assert_eq!(
        debug(sqlite.successful_deployments("web").await.unwrap()),
        debug(dynamo.successful_deployments("web").await.unwrap())
    );
    assert_eq!(
        sqlite
            .last_deployed_task_definition("main/web")
            .await
            .unwrap(),
        dynamo
            .last_deployed_task_definition("main/web")
            .await
            .unwrap()
    );
    assert_eq!(
        debug(sqlite.pending_builds(far).await.unwrap()),
        debug(dynamo.pending_builds(far).await.unwrap())
    );
    assert_eq!(
        sqlite.github_outbox_len().await.unwrap(),
        dynamo.github_outbox_len().await.unwrap()
    );
    assert_eq!(
        debug(
            sqlite
                .notify_outbox_stats(&["slack", "webhook"], far)
                .await
                .unwrap()
        ),
        debug(
            dynamo
                .notify_outbox_stats(&["slack", "webhook"], far)
                .await
                .unwrap()
        )
    );
    assert_eq!(
        sqlite.created_ms().await.unwrap(),
        dynamo.created_ms().await.unwrap()
    );

    // The keys SQLite keeps in indexes were derived: a redelivery of a started build is a
    // duplicate, of a pending one a retry of the same build; the Slack key is remembered; the
    // foreign build deploys once.
    let (row, again) = dynamo
        .admit(
            delivery("d-started", "1", far, Source::Github),
            push('b', Some('0')),
        )
        .await
        .unwrap();
    assert_eq!((row, again), (0, Admission::Duplicate));
    let pending = sqlite.due_builds(far, 1).await.unwrap()[0].id;
    let (row, retried) = dynamo
        .admit(
            delivery("d-pending", "1", far, Source::Github),
            push('a', Some('0')),
        )
        .await
        .unwrap();
    match retried {
        Admission::Accepted(b) => assert_eq!((b[0].build_row, b[0].retry), (pending, true)),
        other => panic!("{other:?}"),
    }
    // New ids come after every copied one.
    let highest = sqlite.recent_deliveries(1).await.unwrap()[0].row;
    assert!(row > highest, "{row} after {highest}");
    // The copied promotions' keys were derived: the same source deploy makes none again, and
    // a new promotion supersedes the copied waiting one (with an id after every copied one).
    assert!(matches!(
        dynamo
            .create_promotion(promotion(2, 'f'), far)
            .await
            .unwrap(),
        slipway::store::PromotionCreated::Exists(_)
    ));
    let waiting = dynamo.awaiting_promotions().await.unwrap()[0].clone();
    match dynamo
        .create_promotion(promotion(5, 'c'), far)
        .await
        .unwrap()
    {
        slipway::store::PromotionCreated::New {
            promotion,
            superseded,
        } => {
            assert_eq!(superseded.len(), 1);
            assert_eq!(superseded[0].id, waiting.id);
            let copied = sqlite.promotions(None, 1).await.unwrap()[0].id;
            assert!(promotion.id > copied, "{} after {copied}", promotion.id);
        }
        other => panic!("{other:?}"),
    }
    let (signature, seen_at) = slack_signature();
    assert!(!dynamo
        .slack_first_time(signature, seen_at, slipway::chat::REPLAY_WINDOW_SECS)
        .await
        .unwrap());
    let foreign_again = dynamo
        .complete_build(
            completion(
                "other-build:1",
                Some(explicit_deploy(trigger::FOREIGN_BUILD, 'f')),
            ),
            far,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            foreign_again,
            slipway::store::CompletionOutcome::Deploy { created: false, .. }
        ),
        "{foreign_again:?}"
    );

    // A second copy into the same table is refused, and changes nothing.
    let before = debug(dynamo.recent_deliveries(100).await.unwrap());
    let (status, stdout, stderr) = copy(&target, &from).await;
    assert!(!status.success(), "{stdout}");
    assert!(stderr.contains("already holds a copy"), "{stderr}");
    assert_eq!(debug(dynamo.recent_deliveries(100).await.unwrap()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_to_a_sqlite_config_or_a_missing_table_is_refused_and_writes_nothing() {
    let emulator = Emulator::start().await;
    let source = SlipwayBuilder::new(&emulator.url);
    journal_with_every_kind(&source.state_dir()).await;
    let state_dir = source.state_dir();

    // --to a config whose engine is SQLite.
    let sqlite_target = SlipwayBuilder::new(&emulator.url);
    let (status, _, stderr) = copy(&sqlite_target, &state_dir).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("engine is \"sqlite\""), "{stderr}");
    assert!(!sqlite_target.state_dir().join("journal.db").exists());

    // --to a DynamoDB table that does not exist: provision makes it.
    let target = dynamodb_config(&emulator);
    let (status, _, stderr) = copy(&target, &state_dir).await;
    assert!(!status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("slipway provision --config"), "{stderr}");
    let tables = aws_sdk_dynamodb::Client::new(&emulator.config)
        .list_tables()
        .send()
        .await
        .unwrap();
    assert!(tables.table_names().is_empty(), "{tables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_table_in_use_or_half_copied_is_refused_and_writes_nothing() {
    let emulator = Emulator::start().await;
    let source = SlipwayBuilder::new(&emulator.url);
    journal_with_every_kind(&source.state_dir()).await;
    let state_dir = source.state_dir();
    let target = dynamodb_config(&emulator);
    let store = dynamodb(&emulator);
    store.create_table(T0).await.unwrap();

    // A copy that stopped half way (its marker written, never finished).
    assert!(store.begin_copy("/elsewhere", T0).await.unwrap());
    let (status, _, stderr) = copy(&target, &state_dir).await;
    assert!(!status.success());
    assert!(stderr.contains("did not finish"), "{stderr}");
    assert!(stderr.contains("delete the table"), "{stderr}");
    let dynamo = Store::DynamoDb(store.clone());
    assert!(dynamo.recent_deliveries(10).await.unwrap().is_empty());

    // A table a slipway has used (another table name, same account).
    let used = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&emulator.config),
        "in-use",
        &JournalConfig::default(),
    );
    used.create_table(T0).await.unwrap();
    let used = Store::DynamoDb(used);
    used.admit(
        delivery("d-live", "1", T0, Source::Github),
        Verdict::Ignored("branch feature is not deployed".into()),
    )
    .await
    .unwrap();
    let in_use = SlipwayBuilder::new(&emulator.url)
        .extra("[store]\nengine = \"dynamodb\"\ntable = \"in-use\"\n");
    let (status, _, stderr) = copy(&in_use, &state_dir).await;
    assert!(!status.success());
    assert!(stderr.contains("is not empty"), "{stderr}");
    let held = used.recent_deliveries(10).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_a_journal_a_running_slipway_holds_is_refused_and_writes_nothing() {
    let emulator = Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    let source = SlipwayBuilder::new(&emulator.url);
    let mut running = source.start().await;
    let target = dynamodb_config(&emulator);
    let store = dynamodb(&emulator);
    store.create_table(T0).await.unwrap();
    let (status, _, stderr) = copy(&target, &source.state_dir()).await;
    assert!(!status.success());
    assert!(stderr.contains("slipway is running"), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    // Nothing written: the table still takes a copy (no marker, no counter, no records).
    store.check_copy_target("slipway provision").await.unwrap();
    running.terminate();
}
