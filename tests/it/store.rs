//! Issue 25: the store's behaviour, asserted once and run against both engines, the SQLite
//! journal and the DynamoDB engine (on moto, through the real SDK client). Only the methods
//! the DynamoDB engine has are here; the rest stay in the SQLite engine's own tests until it
//! has them.

use slipway::config::JournalConfig;
use slipway::ids::{AppName, CommitSha, DeliveryId, HookId};
use slipway::store::dynamodb::DynamoStore;
use slipway::store::{Admission, BuildRequest, NewDelivery, Source, Store, Verdict};

use crate::support::{free_port, noise, sdk_config, Emulator, Proxy};

const T0: i64 = 1_700_000_000_000;

/// One engine under test, with what it needs kept alive.
struct Engine {
    name: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _emulator: Option<Emulator>,
}

/// A fresh SQLite journal and a fresh DynamoDB table.
async fn engines() -> Vec<Engine> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path()).unwrap();
    let emulator = Emulator::start().await;
    let dynamo = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&emulator.config),
        "slipway",
        &JournalConfig::default(),
    );
    dynamo.create_table(T0).await.unwrap();
    vec![
        Engine {
            name: "sqlite",
            store: sqlite,
            _dir: Some(dir),
            _emulator: None,
        },
        Engine {
            name: "dynamodb",
            store: Store::DynamoDb(dynamo),
            _dir: None,
            _emulator: Some(emulator),
        },
    ]
}

fn delivery(id: &str, hook: &str, received_ms: i64, body: &[u8]) -> NewDelivery {
    NewDelivery {
        delivery_id: DeliveryId::parse(id).unwrap(),
        hook_id: HookId::parse(Some(hook)).unwrap(),
        event: "push".into(),
        source: Source::Github,
        actor: None,
        replay_of: None,
        received_ms,
        content_type: "application/json".into(),
        headers: serde_json::json!({ "X-GitHub-Event": "push" }),
        body: body.to_vec(),
    }
}

fn build(sha: char) -> Verdict {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    Verdict::Build(vec![BuildRequest {
        app: AppName::parse("web").unwrap(),
        sha: CommitSha::parse(&sha).unwrap(),
        project: "web-build".into(),
        image_tag: sha.clone(),
        service_key: "main/web".into(),
        before: Some("1".repeat(40)),
        pushed_at: None,
        tag: None,
    }])
}

/// Admits delivery `id` from `hook` asking for a build of `sha`: the build it was accepted
/// with, and whether that was a retry. Panics on any other answer.
async fn accepted(store: &Store, id: &str, hook: &str, at: i64, sha: char) -> (i64, bool) {
    let body = format!("{{\"after\":\"{sha}\"}}");
    let (_, admission) = store
        .admit(delivery(id, hook, at, body.as_bytes()), build(sha))
        .await
        .unwrap();
    match admission {
        Admission::Accepted(b) => (b[0].build_row, b[0].retry),
        other => panic!("{id} from hook {hook}: {other:?}"),
    }
}

/// The builds due at `at`.
async fn due(store: &Store, at: i64) -> Vec<i64> {
    let mut due: Vec<i64> = store
        .due_builds(at, 100)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    due.sort();
    due
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_push_from_two_hooks_builds_once_and_redelivery_dedups() {
    for Engine { name, store, .. } in engines().await {
        let (first, retry) = accepted(&store, "d-1", "1", T0, 'a').await;
        assert!(!retry, "{name}");
        // The organisation's hook: another hook and delivery id, the same push, a pending build.
        assert_eq!(
            accepted(&store, "d-2", "2", T0, 'a').await,
            (first, true),
            "{name}: the pending build is retried, not doubled"
        );
        // GitHub redelivers the first hook's delivery while the build is pending: a retry.
        assert_eq!(
            accepted(&store, "d-1", "1", T0 + 1, 'a').await,
            (first, true),
            "{name}"
        );
        assert_eq!(due(&store, T0 + 1).await, [first], "{name}: one build");
        // Once it has started, a redelivery from either hook is a duplicate.
        store
            .build_started(first, "web-build:1".into(), Some("arn".into()), T0 + 2)
            .await
            .unwrap();
        for (id, hook) in [("d-1", "1"), ("d-2", "2")] {
            let (row, again) = store
                .admit(delivery(id, hook, T0 + 3, b"{}"), build('a'))
                .await
                .unwrap();
            assert_eq!((row, again), (0, Admission::Duplicate), "{name}: {id}");
        }
        assert!(due(&store, T0 + 10).await.is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_of_a_build_that_failed_for_good_does_not_build_the_push_twice() {
    for Engine { name, store, .. } in engines().await {
        let (b1, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        store
            .build_failed_to_start(b1, "AccessDenied".into(), T0 + 1)
            .await
            .unwrap();
        // The organisation's hook sends the same push: the failed build is not reused.
        let (b2, retry) = accepted(&store, "d-2", "2", T0 + 2, 'a').await;
        assert!(!retry, "{name}");
        assert_ne!(b1, b2, "{name}");
        // GitHub redelivers the repository hook's delivery: the push's live build is retried,
        // the failed one stays failed.
        assert_eq!(
            accepted(&store, "d-1", "1", T0 + 3, 'a').await,
            (b2, true),
            "{name}"
        );
        assert_eq!(
            due(&store, T0 + 10).await,
            [b2],
            "{name}: one build of the push"
        );
        store
            .build_started(b2, "web-build:1".into(), Some("arn".into()), T0 + 11)
            .await
            .unwrap();
        let (_, third) = store
            .admit(delivery("d-1", "1", T0 + 12, b"{}"), build('a'))
            .await
            .unwrap();
        assert_eq!(third, Admission::Duplicate, "{name}");
        // With no other build of the push, a redelivery retries the failed one, from zero.
        let (b3, _) = accepted(&store, "d-3", "1", T0 + 13, 'b').await;
        store
            .build_failed_to_start(b3, "AccessDenied".into(), T0 + 14)
            .await
            .unwrap();
        assert_eq!(
            accepted(&store, "d-3", "1", T0 + 15, 'b').await,
            (b3, true),
            "{name}"
        );
        let pending = store.due_builds(T0 + 15, 10).await.unwrap();
        assert_eq!(pending.len(), 1, "{name}: {pending:?}");
        assert_eq!((pending[0].id, pending[0].attempts), (b3, 0), "{name}");
    }
}

/// Both hooks' builds of one push failed for good; the repository hook's redelivery retries its
/// own. The organisation hook's redelivery then finds that live build, as the SQLite engine's
/// newest-live-build-of-the-push does: retrying its own failed one too would build twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_failed_build_is_the_pushs_build_for_the_other_hooks_redelivery() {
    for Engine { name, store, .. } in engines().await {
        let (b1, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        store
            .build_failed_to_start(b1, "AccessDenied".into(), T0 + 1)
            .await
            .unwrap();
        let (b2, retry) = accepted(&store, "d-2", "2", T0 + 2, 'a').await;
        assert!(!retry && b2 != b1, "{name}");
        store
            .build_failed_to_start(b2, "AccessDenied".into(), T0 + 3)
            .await
            .unwrap();
        // No live build of the push: the repository hook's redelivery retries its own.
        assert_eq!(
            accepted(&store, "d-1", "1", T0 + 4, 'a').await,
            (b1, true),
            "{name}"
        );
        // The organisation hook's redelivery: the push has a live build again.
        assert_eq!(
            accepted(&store, "d-2", "2", T0 + 5, 'a').await,
            (b1, true),
            "{name}: the push's live build, not a second one"
        );
        assert_eq!(
            due(&store, T0 + 10).await,
            [b1],
            "{name}: one build of the push"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_build_schedule_is_kept_retries_wait_and_a_started_build_is_done() {
    for Engine { name, store, .. } in engines().await {
        assert_eq!(store.next_due_ms().await.unwrap(), None, "{name}");
        let (b, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        let (c, _) = accepted(&store, "d-2", "1", T0 + 5, 'c').await;
        assert_eq!(store.next_due_ms().await.unwrap(), Some(T0), "{name}");
        assert_eq!(
            due(&store, T0 - 1).await,
            Vec::<i64>::new(),
            "{name}: not yet"
        );
        assert_eq!(due(&store, T0).await, [b], "{name}");
        assert_eq!(due(&store, T0 + 5).await, [b, c], "{name}");

        let first = &store.due_builds(T0, 10).await.unwrap()[0];
        assert_eq!(first.delivery_id, "d-1", "{name}");
        assert_eq!(
            (first.app.as_str(), first.project.as_str()),
            ("web", "web-build")
        );
        assert_eq!(first.sha, "a".repeat(40), "{name}");
        assert_eq!(first.token.len(), 32, "{name}: a run token");
        assert!(!first.start_requested, "{name}");

        store.build_start_requested(b, T0 + 1).await.unwrap();
        store
            .build_retry_later(b, "Throttled".into(), T0 + 100, T0 + 1)
            .await
            .unwrap();
        assert_eq!(
            due(&store, T0 + 50).await,
            [c],
            "{name}: b waits for its retry"
        );
        assert_eq!(store.next_due_ms().await.unwrap(), Some(T0 + 5), "{name}");
        let later = store.due_builds(T0 + 100, 10).await.unwrap();
        let b_again = later.iter().find(|p| p.id == b).expect("b is due again");
        assert_eq!(b_again.attempts, 1, "{name}");
        assert!(b_again.start_requested, "{name}");

        store
            .build_started(c, "web-build:2".into(), None, T0 + 6)
            .await
            .unwrap();
        // A start recorded twice (the worker repeating itself) changes nothing.
        store
            .build_started(c, "web-build:3".into(), None, T0 + 7)
            .await
            .unwrap();
        store
            .build_failed_to_start(c, "late".into(), T0 + 8)
            .await
            .unwrap();
        assert_eq!(due(&store, T0 + 100).await, [b], "{name}");
        // Updates of a build that does not exist change nothing and create nothing.
        store.build_start_requested(9_999, T0).await.unwrap();
        store
            .build_retry_later(9_999, "x".into(), T0, T0)
            .await
            .unwrap();
        assert_eq!(due(&store, T0 + 100).await, [b], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_is_kept_with_its_body_byte_for_byte_and_found_by_row_or_guid() {
    for Engine { name, store, .. } in engines().await {
        let (pong, a) = store
            .admit(delivery("g-1", "1", T0, b"{\"zen\":\"hi\"}"), Verdict::Pong)
            .await
            .unwrap();
        assert_eq!(a, Admission::Pong, "{name}");
        let (ignored, a) = store
            .admit(
                delivery("g-2", "1", T0 + 1, b"{}"),
                Verdict::Ignored("branch dev".into()),
            )
            .await
            .unwrap();
        assert_eq!(a, Admission::Ignored("branch dev".into()), "{name}");
        // A body large enough to be compressed, and bytes that are not UTF-8.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (rejected, a) = store
            .admit(
                delivery("g-3", "1", T0 + 2, &big),
                Verdict::Rejected("not JSON".into()),
            )
            .await
            .unwrap();
        assert_eq!(a, Admission::Rejected("not JSON".into()), "{name}");
        assert!(pong > 0 && ignored > pong && rejected > ignored, "{name}");

        let r = store
            .delivery(&rejected.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.payload().unwrap(), big.as_slice(), "{name}");
        assert_eq!(
            (r.delivery.as_str(), r.hook_id.as_str(), r.outcome.as_str()),
            ("g-3", "1", "rejected"),
            "{name}"
        );
        assert_eq!(r.reason.as_deref(), Some("not JSON"), "{name}");
        assert_eq!(r.headers["X-GitHub-Event"], "push", "{name}");
        assert_eq!(r.received_at, slipway::store::format_millis(T0 + 2));

        let p = store.delivery("g-1").await.unwrap().unwrap();
        assert_eq!((p.row, p.outcome.as_str()), (pong, "pong"), "{name}");
        assert_eq!(p.payload().unwrap(), b"{\"zen\":\"hi\"}", "{name}");
        // The same GUID again (a redelivery): the newest is the one found by GUID.
        let (again, _) = store
            .admit(delivery("g-1", "1", T0 + 3, b"{}"), Verdict::Pong)
            .await
            .unwrap();
        assert_eq!(
            store.delivery("g-1").await.unwrap().unwrap().row,
            again,
            "{name}"
        );
        assert!(store.delivery("nope").await.unwrap().is_none(), "{name}");
        assert!(store.delivery("123456").await.unwrap().is_none(), "{name}");
        store.check_writable(T0).await.unwrap();
    }
}

/// DynamoDB out of reach: the call fails as `Unavailable` (the webhook answers 503 with
/// Retry-After), saying which endpoint could not be reached; nothing is claimed stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dynamodb_is_unavailable_and_says_why() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let config = sdk_config(&closed).await;
    let store = Store::DynamoDb(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        "slipway",
        &JournalConfig::default(),
    ));
    let e = store
        .admit(delivery("d-1", "1", T0, b"{}"), build('a'))
        .await
        .unwrap_err();
    let why = e
        .retry_later()
        .unwrap_or_else(|| panic!("not retryable: {e}"));
    assert!(
        why.starts_with("DynamoDB BatchGetItem: could not connect to"),
        "{why}"
    );
    assert!(store
        .check_writable(T0)
        .await
        .unwrap_err()
        .retry_later()
        .is_some());
}

/// A write that meets another writer's transaction on the same item is refused with
/// `TransactionConflictException`, which DynamoDB's documentation says may be retried
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>)
/// and the SDK does not retry itself: the caller is told to try again later, and the next try
/// goes through. (moto never conflicts: the proxy answers as DynamoDB would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_meets_another_writers_transaction_is_unavailable_then_goes_through() {
    let emulator = Emulator::start().await;
    let proxy = Proxy::start(&emulator.url).await;
    let config = sdk_config(&proxy.url).await;
    let dynamo = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        "slipway",
        &JournalConfig::default(),
    );
    dynamo.create_table(T0).await.unwrap();
    let store = Store::DynamoDb(dynamo);
    let (first, _) = accepted(&store, "d-1", "1", T0, 'a').await;
    proxy.fail("UpdateItem", 1, 400, "TransactionConflictException");
    let e = store
        .build_started(first, "web-build:1".into(), None, T0 + 1)
        .await
        .unwrap_err();
    let why = e
        .retry_later()
        .unwrap_or_else(|| panic!("not retryable: {e}"));
    assert!(
        why.starts_with("DynamoDB UpdateItem:") && why.contains("TransactionConflictException"),
        "{why}"
    );
    assert_eq!(due(&store, T0 + 1).await, [first], "nothing changed");
    store
        .build_started(first, "web-build:1".into(), None, T0 + 2)
        .await
        .unwrap();
    assert!(
        due(&store, T0 + 2).await.is_empty(),
        "started on the next try"
    );
}

/// A stand-in for DynamoDB that hands out ids and cancels every transaction because DynamoDB
/// throttled one of its items, as the TransactWriteItems reference describes the answer
/// (`TransactionCanceledException` with `CancellationReasons`, code `ThrottlingError`:
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).
/// moto never throttles, and the proxy's scripted errors carry no cancellation reasons.
async fn throttling_dynamodb() -> String {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let target = req
                    .headers()
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let (status, body) = if target.ends_with(".UpdateItem") {
                    (
                        200,
                        serde_json::json!({ "Attributes": { "n": { "N": "7" } } }),
                    )
                } else {
                    (
                        400,
                        serde_json::json!({
                            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                            "Message": "Transaction cancelled, please refer cancellation reasons \
                                        for specific reasons [ThrottlingError, None]",
                            "CancellationReasons": [
                                { "Code": "ThrottlingError", "Message": "Throughput exceeds the \
                                  current capacity of your table or index." },
                                { "Code": "None" }
                            ]
                        }),
                    )
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/x-amz-json-1.0")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap(),
                )
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    url
}

/// A transaction DynamoDB cancelled for throttling may go through later: the delivery is
/// answered "try again later" (503), as a throttled single write is, not as an engine error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cancelled_for_throttling_is_unavailable() {
    let config = sdk_config(&throttling_dynamodb().await).await;
    let store = Store::DynamoDb(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        "slipway",
        &JournalConfig::default(),
    ));
    let e = store
        .admit(
            delivery("d-1", "1", T0, b"{}"),
            Verdict::Ignored("a tag".into()),
        )
        .await
        .unwrap_err();
    let why = e
        .retry_later()
        .unwrap_or_else(|| panic!("not retryable: {e}"));
    assert!(
        why.starts_with("DynamoDB TransactWriteItems:") && why.contains("ThrottlingError"),
        "{why}"
    );
}

/// A `Query` answers at most 1 MB a page, fewer items than its `Limit` then, with a
/// `LastEvaluatedKey` (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.Pagination.html>):
/// refused events and recoveries with long reasons still come back all of them, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_and_recoveries_over_a_query_page_are_all_listed() {
    for Engine { name, store, .. } in engines().await {
        for i in 0..30 {
            store
                .event_rejected(slipway::store::RejectedEvent {
                    message_id: Some(format!("m-{i}")),
                    build_id: None,
                    source: None,
                    account: None,
                    reason: format!("{i:02}{}", "x".repeat(40_000)),
                    received_ms: T0 + i,
                })
                .await
                .unwrap();
        }
        let listed = store.rejected_events(50).await.unwrap();
        let ids: Vec<String> = listed.iter().filter_map(|e| e.message_id.clone()).collect();
        let expected: Vec<String> = (0..30).rev().map(|i| format!("m-{i}")).collect();
        assert_eq!(ids, expected, "{name}");
        // The same for recoveries whose failures say a lot.
        for i in 0..30 {
            let recovery = slipway::store::NewRecovery {
                hook_id: "1".into(),
                delivery_id: format!("g-{i}"),
                attempt_id: i,
                event: "push".into(),
                status_code: Some(500),
                delivered_ms: T0,
                actor: "recovery".into(),
                outcome: "failed".into(),
                reason: Some("y".repeat(40_000)),
            };
            store.record_recovery(recovery, T0 + i).await.unwrap();
        }
        let listed = store.recoveries(50).await.unwrap();
        let guids: Vec<&str> = listed.iter().map(|r| r.delivery.as_str()).collect();
        let expected: Vec<String> = (0..30).rev().map(|i| format!("g-{i}")).collect();
        assert_eq!(guids, expected, "{name}");
    }
}

/// `n` bytes zstd cannot shrink.
/// A body too large for an item, and no bucket to keep it in: refused, saying so, nothing of
/// the delivery stored (GitHub is answered 503 and redelivers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_for_an_item_without_a_bucket_is_refused_and_nothing_is_stored() {
    let dynamodb = engines().await.pop().unwrap();
    let store = &dynamodb.store;
    let body = noise(400_000, 7);
    for verdict in [Verdict::Pong, build('a')] {
        let e = store
            .admit(delivery("big-1", "1", T0, &body), verdict)
            .await
            .unwrap_err();
        let why = e.retry_later().unwrap_or_else(|| panic!("{e}"));
        assert!(
            why.ends_with("is over 350 KB and there is no [store] bodies_bucket to keep it in"),
            "{why}"
        );
    }
    assert!(store.delivery("big-1").await.unwrap().is_none());
    assert!(store.due_builds(T0, 10).await.unwrap().is_empty());
    assert!(store.recent_deliveries(10).await.unwrap().is_empty());
}

/// Bodies over 350 KB go to the bodies bucket, one object per distinct body, and come back
/// byte for byte; the item keeps the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_kept_in_s3_once_each_and_read_back_byte_for_byte() {
    let emulator = Emulator::start().await;
    let s3 = emulator.bucket("slipway-bodies").await;
    let dynamo = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&emulator.config),
        "slipway",
        &JournalConfig::default(),
    )
    .with_bodies_bucket(s3.clone(), "slipway-bodies");
    dynamo.create_table(T0).await.unwrap();
    let store = Store::DynamoDb(dynamo);

    // A push whose payload is 1 MB of hex: about half a megabyte compressed.
    let pad: String = noise(500_000, 3)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let push = format!("{{\"pusher\":{{\"name\":\"big\"}},\"pad\":\"{pad}\"}}");
    let (row, _) = store
        .admit(delivery("big-1", "1", T0, push.as_bytes()), build('a'))
        .await
        .unwrap();
    // The same body again (GitHub's redelivery), and another large body.
    store
        .admit(delivery("big-1", "1", T0 + 1, push.as_bytes()), build('a'))
        .await
        .unwrap();
    let other = noise(400_000, 11);
    store
        .admit(delivery("big-2", "1", T0 + 2, &other), Verdict::Pong)
        .await
        .unwrap();

    let first = store.delivery(&row.to_string()).await.unwrap().unwrap();
    assert_eq!(first.payload().unwrap(), push.as_bytes());
    let second = store.delivery("big-2").await.unwrap().unwrap();
    assert_eq!(second.payload().unwrap(), other.as_slice());
    let objects = s3
        .list_objects_v2()
        .bucket("slipway-bodies")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys.len(), 2, "one object per distinct body: {keys:?}");
    assert!(keys
        .iter()
        .all(|k| k.starts_with("bodies/") && k.len() == 7 + 64));
    // Who pushed is read from the body in S3 too.
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs[0].actor.as_deref(), Some("big"), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_push_from_many_hooks_at_once_builds_once() {
    for Engine { name, store, .. } in engines().await {
        let admits = (0..6).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let hook = (i + 1).to_string();
                accepted(&store, &format!("race-{i}"), &hook, T0, 'a').await
            })
        });
        let mut builds = Vec::new();
        for admit in admits {
            builds.push(admit.await.unwrap().0);
        }
        builds.sort();
        builds.dedup();
        assert_eq!(builds.len(), 1, "{name}: {builds:?}");
        assert_eq!(due(&store, T0).await, builds, "{name}");
        for i in 0..6 {
            let d = store.delivery(&format!("race-{i}")).await.unwrap();
            assert_eq!(d.unwrap().outcome, "accepted", "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_outbox_keeps_order_counts_attempts_and_lets_go_of_posted_updates() {
    for Engine { name, store, .. } in engines().await {
        assert!(store.github_outbox(10).await.unwrap().is_empty(), "{name}");
        assert_eq!(store.github_outbox_len().await.unwrap(), 0, "{name}");
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                store
                    .queue_github_update(format!("{{\"n\":{i}}}"), T0 + i)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(store.github_outbox_len().await.unwrap(), 5, "{name}");
        let first_three = store.github_outbox(3).await.unwrap();
        let events: Vec<&str> = first_three.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"], "{name}");
        assert_eq!(first_three[0].created_ms, T0, "{name}");
        store.github_post_failed(ids[0]).await.unwrap();
        store.github_post_failed(ids[0]).await.unwrap();
        store.github_posted(ids[1]).await.unwrap();
        // Posting an update that is gone already changes nothing.
        store.github_posted(ids[1]).await.unwrap();
        store.github_post_failed(ids[1]).await.unwrap();
        let left = store.github_outbox(-1).await.unwrap();
        let seen: Vec<(i64, i64)> = left.iter().map(|e| (e.id, e.attempts)).collect();
        assert_eq!(
            seen,
            [(ids[0], 2), (ids[2], 0), (ids[3], 0), (ids[4], 0)],
            "{name}"
        );
        assert_eq!(store.github_outbox_len().await.unwrap(), 4, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_replays_refused_events_run_tokens_and_the_last_backup_are_kept() {
    for Engine { name, store, .. } in engines().await {
        // A Slack signature is taken once within its window, again after it.
        let sig = b"v0=abc".to_vec();
        assert!(
            store
                .slack_first_time(sig.clone(), 1_000, 600)
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .slack_first_time(sig.clone(), 1_300, 600)
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            store
                .slack_first_time(b"v0=abd".to_vec(), 1_300, 600)
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            store.slack_first_time(sig, 1_700, 600).await.unwrap(),
            "{name}"
        );

        // Refused events, newest first.
        assert!(
            store.rejected_events(10).await.unwrap().is_empty(),
            "{name}"
        );
        for (i, reason) in ["another account", "unknown source"]
            .into_iter()
            .enumerate()
        {
            store
                .event_rejected(slipway::store::RejectedEvent {
                    message_id: Some(format!("m-{i}")),
                    build_id: None,
                    source: Some("aws.codebuild".into()),
                    account: None,
                    reason: reason.into(),
                    received_ms: T0 + i as i64,
                })
                .await
                .unwrap();
        }
        let events = store.rejected_events(10).await.unwrap();
        let seen: Vec<(Option<&str>, &str)> = events
            .iter()
            .map(|e| (e.message_id.as_deref(), e.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("m-1"), "unknown source"),
                (Some("m-0"), "another account")
            ],
            "{name}"
        );
        assert_eq!(events[0].source.as_deref(), Some("aws.codebuild"), "{name}");
        assert_eq!(store.rejected_events(1).await.unwrap().len(), 1, "{name}");

        // The run token of a started build, by its CodeBuild id.
        let (b, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        let token = store.due_builds(T0, 1).await.unwrap()[0].token.clone();
        assert_eq!(
            store.run_token_of("web-build:7").await.unwrap(),
            None,
            "{name}"
        );
        store
            .build_started(b, "web-build:7".into(), None, T0 + 1)
            .await
            .unwrap();
        assert_eq!(
            store.run_token_of("web-build:7").await.unwrap(),
            Some(token),
            "{name}"
        );

        // The last backup's outcome.
        assert_eq!(store.last_backup().await.unwrap(), None, "{name}");
        for error in [None, Some("disk full".to_owned())] {
            let outcome = slipway::readiness::BackupOutcome {
                at: "2026-12-06T05:00:00Z".into(),
                to: "s3://b/journal.db".into(),
                error,
            };
            store.record_backup(&outcome).await.unwrap();
            assert_eq!(store.last_backup().await.unwrap(), Some(outcome), "{name}");
        }
    }
}

/// A deploy to make, of `app`'s service, as the build worker or an operator asks for it.
fn new_deployment(app: &str, sha: char, build_row: Option<i64>) -> slipway::store::NewDeployment {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    slipway::store::NewDeployment {
        app: app.into(),
        service_key: format!("main/{app}"),
        sha: sha.clone(),
        image_tag: sha,
        trigger: if build_row.is_some() {
            slipway::store::trigger::PUSH
        } else {
            slipway::store::trigger::OPERATOR
        },
        actor: build_row.is_none().then(|| "alice".to_owned()),
        build_row,
        build_id: build_row.map(|r| format!("web-build:{r}")),
        delivery_id: build_row.map(|_| "d-1".to_owned()),
        // A push's deploy ranks by its build (as `complete_build` asks); None: explicit.
        order_key: build_row.map(|r| 2 * r),
        target_task_definition: None,
        log_link: None,
        tag: None,
        promotion: None,
    }
}

/// Newer wins: an explicit deploy ranks above every push stored before it and below every
/// push stored after it (the DynamoDB engine hands out ids from blocks it reserved: the
/// explicit deploy's rank must still sit between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_deploy_ranks_between_the_pushes_before_and_after_it() {
    for Engine { name, store, .. } in engines().await {
        let (before, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        let explicit = store
            .request_deployment(new_deployment("web", 'c', None), T0 + 10)
            .await
            .unwrap();
        let (after, _) = accepted(&store, "d-2", "1", T0 + 20, 'b').await;
        let x = store.deployment(explicit).await.unwrap().unwrap();
        assert!(x.order_key > 2 * before, "{name}: above the push before");
        assert!(2 * after > x.order_key, "{name}: below the push after");
        assert!(before < after, "{name}: build ids increase");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_rank_above_their_pushes_change_field_by_field_and_finish() {
    use slipway::store::{deploy_state, DeploymentUpdate};
    for Engine { name, store, .. } in engines().await {
        let (b, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        let pushed = store
            .request_deployment(new_deployment("web", 'a', Some(b)), T0 + 10)
            .await
            .unwrap();
        let explicit = store
            .request_deployment(new_deployment("web", 'c', None), T0 + 20)
            .await
            .unwrap();
        let api = store
            .request_deployment(new_deployment("api", 'e', None), T0 + 30)
            .await
            .unwrap();
        let p = store.deployment(pushed).await.unwrap().unwrap();
        let x = store.deployment(explicit).await.unwrap().unwrap();
        assert_eq!((p.order_key, p.build_row), (2 * b, Some(b)), "{name}");
        assert!(
            x.order_key > p.order_key,
            "{name}: an explicit deploy ranks above"
        );
        assert_eq!(
            (p.state.as_str(), p.trigger.as_str(), p.created_ms),
            (deploy_state::PENDING, "push", T0 + 10),
            "{name}"
        );
        assert_eq!(
            (x.actor.as_deref(), x.build_id.as_deref()),
            (Some("alice"), None)
        );
        assert_eq!(store.deployment(9_999).await.unwrap().map(|d| d.id), None);
        let unfinished: Vec<i64> = store
            .unfinished_deployments()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(unfinished, [pushed, explicit, api], "{name}: oldest first");

        store
            .update_deployment(
                pushed,
                DeploymentUpdate {
                    state: Some(deploy_state::DEPLOYING),
                    started: true,
                    to_task_definition: Some("web:7".into()),
                    progress: Some((1, 2, 0)),
                    stage: Some("BAKE_TIME".into()),
                    unseen: Some("cannot see the service: throttled".into()),
                    deadline: Some((T0 + 900, "the strategy's bake time".into())),
                    ..Default::default()
                },
                T0 + 40,
            )
            .await
            .unwrap();
        // Started again: the first start stays; fields not given stay.
        store
            .update_deployment(
                pushed,
                DeploymentUpdate {
                    started: true,
                    unseen: Some(String::new()),
                    ..Default::default()
                },
                T0 + 50,
            )
            .await
            .unwrap();
        let d = store.deployment(pushed).await.unwrap().unwrap();
        assert_eq!(
            (d.state.as_str(), d.started_ms, d.updated_ms),
            (deploy_state::DEPLOYING, Some(T0 + 40), T0 + 50),
            "{name}"
        );
        assert_eq!(
            (d.running_count, d.desired_count, d.failed_tasks),
            (Some(1), Some(2), Some(0))
        );
        assert_eq!(d.to_task_definition.as_deref(), Some("web:7"), "{name}");
        assert_eq!(
            (d.stage.as_deref(), d.unseen.as_deref()),
            (Some("BAKE_TIME"), None)
        );
        assert_eq!(d.deadline_ms, Some(T0 + 900), "{name}");
        // The clock restarted (a resumed deploy whose UpdateService never reached ECS).
        store
            .update_deployment(
                pushed,
                DeploymentUpdate {
                    restart_clock: true,
                    unseen: Some("cannot see the service: gone".into()),
                    ..Default::default()
                },
                T0 + 60,
            )
            .await
            .unwrap();
        let d = store.deployment(pushed).await.unwrap().unwrap();
        assert_eq!(d.started_ms, Some(T0 + 60), "{name}");
        assert_eq!(d.unseen.as_deref(), Some("cannot see the service: gone"));
        // Finished: stage and "cannot see" cleared, no longer unfinished.
        store
            .update_deployment(
                pushed,
                DeploymentUpdate {
                    state: Some(deploy_state::SUCCEEDED),
                    reason: Some("steady".into()),
                    ..Default::default()
                },
                T0 + 70,
            )
            .await
            .unwrap();
        let d = store.deployment(pushed).await.unwrap().unwrap();
        assert_eq!(
            (d.state.as_str(), d.finished_ms, d.reason.as_deref()),
            (deploy_state::SUCCEEDED, Some(T0 + 70), Some("steady")),
            "{name}"
        );
        assert_eq!((d.stage, d.unseen), (None, None), "{name}");
        let unfinished: Vec<i64> = store
            .unfinished_deployments()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(unfinished, [explicit, api], "{name}");
        // An update of a deployment that does not exist changes nothing, makes nothing.
        store
            .update_deployment(9_999, DeploymentUpdate::default(), T0)
            .await
            .unwrap();
        assert!(store.deployment(9_999).await.unwrap().is_none(), "{name}");

        let ids = |ds: Vec<slipway::store::Deployment>| ds.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.recent_deployments(None, 10).await.unwrap()),
            [api, explicit, pushed],
            "{name}: newest first"
        );
        assert_eq!(
            ids(store.recent_deployments(None, 2).await.unwrap()),
            [api, explicit]
        );
        assert_eq!(
            ids(store
                .recent_deployments(Some("web".into()), 10)
                .await
                .unwrap()),
            [explicit, pushed],
            "{name}"
        );
        assert_eq!(
            ids(store
                .recent_deployments(Some("web".into()), 1)
                .await
                .unwrap()),
            [explicit]
        );
        assert!(store
            .recent_deployments(Some("db".into()), 10)
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deployments_are_kept_updated_in_place_and_replaced_per_app() {
    use slipway::store::GithubDeployment;
    for Engine { name, store, .. } in engines().await {
        // Deployment ids are the store's own: these rows refer to deployments it made.
        let mut made = Vec::new();
        for (app, sha) in [
            ("web", 'a'),
            ("web", 'b'),
            ("web", 'c'),
            ("api", 'd'),
            ("web", 'e'),
        ] {
            made.push(
                store
                    .request_deployment(new_deployment(app, sha, None), T0)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(made, {
            let mut sorted = made.clone();
            sorted.sort();
            sorted
        });
        let [d1, d2, d3, d4, d5] = made[..] else {
            unreachable!()
        };
        assert_eq!(store.github_deployment(d1).await.unwrap(), None, "{name}");
        let gh = |deployment, github_id, state: &str| GithubDeployment {
            deployment,
            repository: "octo-org/web".into(),
            github_id,
            state: state.into(),
        };
        for (d, id, state) in [
            (d1, 101, "success"),
            (d2, 102, "success"),
            (d3, 103, "failure"),
        ] {
            store
                .record_github_deployment(d, "web".into(), gh(d, id, state), T0)
                .await
                .unwrap();
        }
        store
            .record_github_deployment(d4, "api".into(), gh(d4, 104, "success"), T0)
            .await
            .unwrap();
        // Recorded again (a new GitHub deployment for the same slipway one): updated in place.
        store
            .record_github_deployment(d2, "web".into(), gh(d2, 202, "success"), T0 + 1)
            .await
            .unwrap();
        assert_eq!(
            store.github_deployment(d2).await.unwrap(),
            Some(gh(d2, 202, "success")),
            "{name}"
        );
        let replaced = store
            .replaced_github_deployments("web".into(), d5)
            .await
            .unwrap();
        assert_eq!(
            replaced,
            [gh(d1, 101, "success"), gh(d2, 202, "success")],
            "{name}"
        );
        store
            .set_github_deployment_state(d1, "inactive", T0 + 2)
            .await
            .unwrap();
        // A deployment with no GitHub record: nothing to change, nothing made.
        store
            .set_github_deployment_state(d5, "inactive", T0 + 2)
            .await
            .unwrap();
        assert_eq!(store.github_deployment(d5).await.unwrap(), None, "{name}");
        let replaced = store
            .replaced_github_deployments("web".into(), d2)
            .await
            .unwrap();
        assert!(replaced.is_empty(), "{name}: {replaced:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoveries_are_counted_and_a_delivery_that_came_is_held() {
    use slipway::store::{NewRecovery, RecoveryState};
    for Engine { name, store, .. } in engines().await {
        assert!(store.created_ms().await.unwrap().is_some(), "{name}");
        // Unknown, asked (counted), held once the delivery came.
        let state = |hook: &str, guid: &str| {
            store.delivery_recovery_state(hook.to_owned(), guid.to_owned())
        };
        assert_eq!(
            state("1", "g-1").await.unwrap(),
            RecoveryState::Unknown,
            "{name}"
        );
        let recovery = |attempt_id, outcome: &str| NewRecovery {
            hook_id: "1".into(),
            delivery_id: "g-1".into(),
            attempt_id,
            event: "push".into(),
            status_code: Some(502),
            delivered_ms: T0 - 1_000,
            actor: "recovery".into(),
            outcome: outcome.into(),
            reason: (outcome == "failed").then(|| "HTTP 500".to_owned()),
        };
        store
            .record_recovery(recovery(7, "failed"), T0 + 10)
            .await
            .unwrap();
        assert_eq!(
            state("1", "g-1").await.unwrap(),
            RecoveryState::Asked {
                attempt_id: 7,
                requested: false,
                requests: 1
            },
            "{name}"
        );
        store
            .record_recovery(recovery(8, "requested"), T0 + 20)
            .await
            .unwrap();
        assert_eq!(
            state("1", "g-1").await.unwrap(),
            RecoveryState::Asked {
                attempt_id: 8,
                requested: true,
                requests: 2
            },
            "{name}"
        );
        let listed = store.recoveries(10).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}: {listed:?}");
        assert_eq!(
            (
                listed[0].requests,
                listed[0].outcome.as_str(),
                listed[0].reason.as_deref()
            ),
            (2, "requested", None),
            "{name}"
        );
        assert_eq!(
            listed[0].requested_at,
            slipway::store::format_millis(T0 + 20)
        );
        store
            .admit(delivery("g-1", "1", T0 + 30, b"{}"), Verdict::Pong)
            .await
            .unwrap();
        assert_eq!(
            state("1", "g-1").await.unwrap(),
            RecoveryState::Held,
            "{name}"
        );
        // The same GUID from another hook is another delivery.
        assert_eq!(
            state("2", "g-1").await.unwrap(),
            RecoveryState::Unknown,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_build_gauge_counts_builds_waiting_for_start_build() {
    for Engine { name, store, .. } in engines().await {
        let none = store.pending_builds(T0).await.unwrap();
        assert_eq!((none.count, none.oldest_age_ms), (0, 0), "{name}");
        let (b, _) = accepted(&store, "d-1", "1", T0, 'a').await;
        accepted(&store, "d-2", "1", T0 + 500, 'b').await;
        let two = store.pending_builds(T0 + 1_000).await.unwrap();
        assert_eq!((two.count, two.oldest_age_ms), (2, 1_000), "{name}");
        store
            .build_started(b, "web-build:1".into(), None, T0 + 600)
            .await
            .unwrap();
        let one = store.pending_builds(T0 + 1_000).await.unwrap();
        assert_eq!((one.count, one.oldest_age_ms), (1, 500), "{name}");
    }
}

/// A DynamoDB table has no file to copy: `snapshot_into` says where its backups are instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_snapshot_is_refused_naming_point_in_time_recovery() {
    let dynamodb = engines().await.pop().unwrap();
    let store = &dynamodb.store;
    let dest = std::env::temp_dir().join("slipway-never-written.db");
    let e = store.snapshot_into(dest.clone()).await.unwrap_err();
    assert!(e.to_string().contains("point-in-time recovery"), "{e}");
    assert!(!dest.exists());
}

/// Records the name of every DynamoDB request a client sends (after the SDK's retries: one
/// entry per operation called).
#[derive(Debug, Clone, Default)]
struct Requests(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Requests {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Requests {
    fn name(&self) -> &'static str {
        "tests::store::Requests"
    }

    fn read_after_execution(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let name = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| m.name())
            .to_owned();
        self.0.lock().unwrap().push(name);
        Ok(())
    }
}

/// The intake path's requests, counted (the issue's query-plan equivalent): no Scan, and a
/// bounded number per delivery: one transaction per accepted, duplicate or ignored delivery
/// (after at most 2 batched reads), and one `UpdateItem` on the id counter per
/// `ID_BLOCK` ids (the first delivery reserves a block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_sends_a_bounded_number_of_requests_and_never_a_scan() {
    let emulator = Emulator::start().await;
    let requests = Requests::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&emulator.config)
            .interceptor(requests.clone())
            .build(),
    );
    let dynamo = DynamoStore::new(client, "slipway", &JournalConfig::default());
    dynamo.create_table(T0).await.unwrap();
    let store = Store::DynamoDb(dynamo);
    requests.take();

    let (b, _) = accepted(&store, "d-1", "1", T0, 'a').await;
    assert_eq!(
        requests.take(),
        ["BatchGetItem", "UpdateItem", "TransactWriteItems"],
        "an accepted delivery of a new push (no build yet: no second read)"
    );
    accepted(&store, "d-2", "2", T0, 'a').await;
    assert_eq!(
        requests.take(),
        ["BatchGetItem", "BatchGetItem", "TransactWriteItems"],
        "the same push from another hook (its id from the block the first reserved)"
    );
    store
        .build_started(b, "web-build:1".into(), None, T0 + 1)
        .await
        .unwrap();
    requests.take();
    let (_, dup) = store
        .admit(delivery("d-1", "1", T0 + 2, b"{}"), build('a'))
        .await
        .unwrap();
    assert_eq!(dup, Admission::Duplicate);
    assert_eq!(
        requests.take(),
        ["BatchGetItem", "BatchGetItem", "TransactWriteItems"],
        "a duplicate"
    );
    store
        .admit(
            delivery("d-3", "1", T0 + 3, b"{}"),
            Verdict::Ignored("branch dev".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        requests.take(),
        ["TransactWriteItems"],
        "an ignored delivery: one write"
    );
    // The block runs out: one more UpdateItem, then ids from the new block.
    let mut counter_updates = 0;
    for i in 0..slipway::store::dynamodb::ID_BLOCK {
        store
            .admit(
                delivery(&format!("i-{i}"), "1", T0 + 4 + i, b"{}"),
                Verdict::Ignored("branch dev".into()),
            )
            .await
            .unwrap();
        let sent = requests.take();
        counter_updates += sent.iter().filter(|r| *r == "UpdateItem").count();
        assert_eq!(sent.last().map(String::as_str), Some("TransactWriteItems"));
        assert!(sent.len() <= 2, "{sent:?}");
    }
    assert_eq!(counter_updates, 1, "one counter write per block");
}

/// A push of `sha` that followed `before`.
fn push_of(sha: char, before: char) -> Verdict {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    Verdict::Build(vec![BuildRequest {
        app: AppName::parse("web").unwrap(),
        sha: CommitSha::parse(&sha).unwrap(),
        project: "web-build".into(),
        image_tag: sha.clone(),
        service_key: "main/web".into(),
        before: Some(std::iter::repeat_n(before, 40).collect()),
        pushed_at: Some(T0 / 1000),
        tag: None,
    }])
}

/// CodeBuild's word on a build slipway journaled.
fn result(build_id: &str, succeeded: bool) -> slipway::store::BuildCompletion {
    slipway::store::BuildCompletion {
        build_id: build_id.into(),
        succeeded,
        status: if succeeded { "SUCCEEDED" } else { "FAILED" }.into(),
        log_link: Some(format!("https://logs/{build_id}")),
        foreign: None,
        run_token: None,
    }
}

/// A push of `sha` with no `before` (a new branch, or a tag when `tag` is set: GitHub's tag
/// push has `before` all zeros).
fn first_push_of(sha: char, tag: Option<&str>) -> Verdict {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    Verdict::Build(vec![BuildRequest {
        app: AppName::parse("web").unwrap(),
        sha: CommitSha::parse(&sha).unwrap(),
        project: "web-build".into(),
        image_tag: sha.clone(),
        service_key: "main/web".into(),
        before: None,
        pushed_at: Some(T0 / 1000),
        tag: tag.map(str::to_owned),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_push_is_its_own_push_and_its_deployment_keeps_the_tag() {
    use slipway::store::CompletionOutcome;
    for Engine { name, store, .. } in engines().await {
        let admit = |id: &'static str, hook: &'static str, tag: Option<&'static str>| {
            let store = store.clone();
            async move {
                let (_, admission) = store
                    .admit(delivery(id, hook, T0, b"{}"), first_push_of('a', tag))
                    .await
                    .unwrap();
                match admission {
                    Admission::Accepted(b) => b[0].build_row,
                    other => panic!("{name}: {id}: {other:?}"),
                }
            }
        };
        // A new branch and a tag on the same commit: two pushes, two builds.
        let branch = admit("d-1", "1", None).await;
        let tagged = admit("d-2", "2", Some("v1.0.0")).await;
        assert_ne!(branch, tagged, "{name}");
        // The same tag push through another hook: the same build.
        assert_eq!(admit("d-3", "3", Some("v1.0.0")).await, tagged, "{name}");
        // Another tag on the commit is another release.
        let other = admit("d-4", "4", Some("v1.0.1")).await;
        assert!(![branch, tagged].contains(&other), "{name}");

        let mut deployments = Vec::new();
        for (row, build_id) in [(branch, "web-build:1"), (tagged, "web-build:2")] {
            store
                .build_started(row, build_id.into(), None, T0 + 10)
                .await
                .unwrap();
            let done = store
                .complete_build(result(build_id, true), T0 + 20)
                .await
                .unwrap();
            let CompletionOutcome::Deploy { deployment, .. } = done else {
                panic!("{name}: {done:?}")
            };
            deployments.push(store.deployment(deployment).await.unwrap().unwrap());
        }
        assert_eq!(deployments[0].tag, None, "{name}");
        assert_eq!(deployments[1].tag.as_deref(), Some("v1.0.0"), "{name}");
        let listed = store.recent_deployments(None, 10).await.unwrap();
        let tags: Vec<Option<&str>> = listed.iter().map(|d| d.tag.as_deref()).collect();
        assert_eq!(tags, [Some("v1.0.0"), None], "{name}: newest first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_result_is_recorded_once_and_leads_to_one_deployment() {
    use slipway::store::CompletionOutcome;
    for Engine { name, store, .. } in engines().await {
        let (row, _) = store
            .admit(delivery("d-1", "1", T0, b"{}"), build('a'))
            .await
            .unwrap();
        let b = store.due_builds(T0, 1).await.unwrap()[0].id;
        store
            .build_started(b, "web-build:1".into(), None, T0 + 10)
            .await
            .unwrap();
        let in_flight = |at| {
            let store = store.clone();
            async move {
                let builds = store.builds_in_flight(at).await.unwrap();
                builds
                    .iter()
                    .map(|f| (f.build_row, f.build_id.clone()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(in_flight(T0 + 9).await, [], "{name}");
        assert_eq!(in_flight(T0 + 10).await, [(b, "web-build:1".to_owned())]);
        store.builds_checked(vec![b], T0 + 20).await.unwrap();
        assert_eq!(in_flight(T0 + 15).await, [], "{name}: looked at since");
        assert_eq!(in_flight(T0 + 20).await.len(), 1, "{name}");

        let first = store
            .complete_build(result("web-build:1", true), T0 + 30)
            .await
            .unwrap();
        let CompletionOutcome::Deploy {
            deployment,
            created: true,
        } = first
        else {
            panic!("{name}: {first:?}")
        };
        // CodeBuild (or SQS) says it again: the same deployment.
        assert_eq!(
            store
                .complete_build(result("web-build:1", true), T0 + 31)
                .await
                .unwrap(),
            CompletionOutcome::Deploy {
                deployment,
                created: false
            },
            "{name}"
        );
        let d = store.deployment(deployment).await.unwrap().unwrap();
        assert_eq!(
            (d.build_row, d.order_key, d.trigger.as_str()),
            (Some(b), 2 * b, "push"),
            "{name}"
        );
        assert_eq!(d.delivery_id.as_deref(), Some("d-1"), "{name}");
        assert_eq!(d.log_link.as_deref(), Some("https://logs/web-build:1"));
        assert_eq!(in_flight(T0 + 1_000).await, [], "{name}: done");
        let of_delivery: Vec<i64> = store
            .deployments_of_delivery(row)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(of_delivery, [deployment], "{name}");

        // A failed build: failed once, then a repeat of the same word.
        let (c, _) = accepted(&store, "d-2", "1", T0 + 40, 'c').await;
        store
            .build_started(c, "web-build:2".into(), None, T0 + 41)
            .await
            .unwrap();
        for first_time in [true, false] {
            let failed = store
                .complete_build(result("web-build:2", false), T0 + 42)
                .await
                .unwrap();
            assert_eq!(
                failed,
                CompletionOutcome::Failed {
                    app: "web".into(),
                    sha: "c".repeat(40),
                    first_time
                },
                "{name}"
            );
        }

        // Started, but the answer never stored: found by its run token and adopted.
        let (e, _) = accepted(&store, "d-3", "1", T0 + 50, 'e').await;
        let token = store
            .due_builds(T0 + 50, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.id == e)
            .unwrap()
            .token;
        let mut by_token = result("web-build:9", true);
        by_token.run_token = Some(token.clone());
        // Not yet asked to start: the token alone does not name it.
        assert_eq!(
            store
                .complete_build(by_token.clone(), T0 + 51)
                .await
                .unwrap(),
            CompletionOutcome::Foreign,
            "{name}"
        );
        store.build_start_requested(e, T0 + 52).await.unwrap();
        let adopted = store.complete_build(by_token, T0 + 53).await.unwrap();
        assert!(
            matches!(adopted, CompletionOutcome::Deploy { created: true, .. }),
            "{name}: {adopted:?}"
        );
        assert_eq!(
            store.run_token_of("web-build:9").await.unwrap(),
            Some(token),
            "{name}"
        );
        assert!(!store
            .due_builds(T0 + 100, 10)
            .await
            .unwrap()
            .iter()
            .any(|p| p.id == e));

        // A build slipway did not start: deployed as asked, once.
        let mut foreign = result("other:1", true);
        foreign.foreign = Some(slipway::store::NewDeployment {
            trigger: slipway::store::trigger::FOREIGN_BUILD,
            build_id: Some("other:1".into()),
            ..new_deployment("web", 'f', None)
        });
        let made = store
            .complete_build(foreign.clone(), T0 + 60)
            .await
            .unwrap();
        let CompletionOutcome::Deploy {
            deployment: f,
            created: true,
        } = made
        else {
            panic!("{name}: {made:?}")
        };
        assert_eq!(
            store
                .complete_build(foreign.clone(), T0 + 61)
                .await
                .unwrap(),
            CompletionOutcome::Deploy {
                deployment: f,
                created: false
            },
            "{name}"
        );
        foreign.foreign = None;
        assert_eq!(
            store.complete_build(foreign, T0 + 62).await.unwrap(),
            CompletionOutcome::Foreign,
            "{name}: without a deploy to make, a stranger's build is only noted"
        );

        // A build CodeBuild does not know: failed, out of the reconciler's view.
        let (g, _) = accepted(&store, "d-5", "1", T0 + 70, 'd').await;
        store
            .build_started(g, "web-build:11".into(), None, T0 + 71)
            .await
            .unwrap();
        store.build_unknown_to_codebuild(g, T0 + 72).await.unwrap();
        assert_eq!(in_flight(T0 + 1_000).await, [], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_deployments_win_by_rank_or_by_following_the_commit_whatever_the_delivery_order() {
    use slipway::store::{deploy_state, CompletionOutcome, DeploymentUpdate};
    for Engine { name, store, .. } in engines().await {
        // Push b (which followed a) arrives first; push a (which followed 0) second.
        let mut deployments = Vec::new();
        for (i, (sha, before)) in [('b', 'a'), ('a', '0')].into_iter().enumerate() {
            let (_, admission) = store
                .admit(
                    delivery(&format!("d-{i}"), "1", T0 + i as i64, b"{}"),
                    push_of(sha, before),
                )
                .await
                .unwrap();
            let Admission::Accepted(builds) = admission else {
                panic!("{name}: {admission:?}")
            };
            let id = format!("web-build:{sha}");
            store
                .build_started(builds[0].build_row, id.clone(), None, T0 + 10)
                .await
                .unwrap();
            let CompletionOutcome::Deploy { deployment, .. } = store
                .complete_build(result(&id, true), T0 + 20)
                .await
                .unwrap()
            else {
                panic!("{name}")
            };
            deployments.push(store.deployment(deployment).await.unwrap().unwrap());
        }
        let (of_b, of_a) = (deployments[0].clone(), deployments[1].clone());
        assert!(
            of_a.order_key > of_b.order_key,
            "{name}: a was stored later"
        );
        // a ranks higher, but b followed a: b is the newer one for a.
        let newer = store.newer_deployment(&of_a).await.unwrap();
        assert_eq!(newer.map(|d| d.id), Some(of_b.id), "{name}");
        // For b, a ranks higher, and is going ahead.
        let newer = store.newer_deployment(&of_b).await.unwrap();
        assert_eq!(newer.map(|d| d.id), Some(of_a.id), "{name}");
        // A failed deploy is no reason to stand down.
        let failed = DeploymentUpdate {
            state: Some(deploy_state::FAILED),
            ..Default::default()
        };
        store
            .update_deployment(of_b.id, failed, T0 + 30)
            .await
            .unwrap();
        assert!(
            store.newer_deployment(&of_a).await.unwrap().is_none(),
            "{name}"
        );

        // What the service last ran: none finished yet; then a's new revision; then an
        // explicit deploy, rolled back, left its previous revision running.
        assert_eq!(
            store
                .last_deployed_task_definition("main/web")
                .await
                .unwrap(),
            None
        );
        let succeeded = DeploymentUpdate {
            state: Some(deploy_state::SUCCEEDED),
            from_task_definition: Some("web:1".into()),
            to_task_definition: Some("web:2".into()),
            ..Default::default()
        };
        store
            .update_deployment(of_a.id, succeeded, T0 + 40)
            .await
            .unwrap();
        assert_eq!(
            store
                .last_deployed_task_definition("main/web")
                .await
                .unwrap()
                .as_deref(),
            Some("web:2"),
            "{name}"
        );
        let explicit = store
            .request_deployment(new_deployment("web", 'c', None), T0 + 50)
            .await
            .unwrap();
        let newer = store.newer_deployment(&of_a).await.unwrap();
        assert_eq!(
            newer.map(|d| d.id),
            Some(explicit),
            "{name}: explicit ranks above"
        );
        let rolled_back = DeploymentUpdate {
            state: Some(deploy_state::ROLLED_BACK),
            from_task_definition: Some("web:2".into()),
            to_task_definition: Some("web:3".into()),
            ..Default::default()
        };
        store
            .update_deployment(explicit, rolled_back, T0 + 60)
            .await
            .unwrap();
        assert_eq!(
            store
                .last_deployed_task_definition("main/web")
                .await
                .unwrap()
                .as_deref(),
            Some("web:2"),
            "{name}"
        );
        assert_eq!(
            store
                .last_deployed_task_definition("main/api")
                .await
                .unwrap(),
            None
        );
        let ok: Vec<i64> = store
            .successful_deployments("web")
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ok, [of_a.id], "{name}");
        assert!(store
            .successful_deployments("api")
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_lines_show_a_redelivery_with_the_build_it_repeats_and_tell_hooks_apart() {
    for Engine { name, store, .. } in engines().await {
        let (row, first) = store
            .admit(delivery("d-1", "1", T0, b"{\"a\":1}"), build('a'))
            .await
            .unwrap();
        let Admission::Accepted(builds) = first else {
            panic!("{name}: {first:?}")
        };
        // Another hook, the same GUID (GUIDs are per hook only by convention), another push.
        store
            .admit(delivery("d-1", "2", T0 + 1, b"{\"b\":1}"), build('b'))
            .await
            .unwrap();
        store
            .build_started(builds[0].build_row, "web-build:1".into(), None, T0 + 2)
            .await
            .unwrap();
        let (_, again) = store
            .admit(delivery("d-1", "1", T0 + 3, b"{\"a\":1}"), build('a'))
            .await
            .unwrap();
        assert_eq!(again, Admission::Duplicate, "{name}");
        store
            .admit(
                delivery("d-9", "1", T0 + 4, b"{}"),
                Verdict::Ignored("branch dev".into()),
            )
            .await
            .unwrap();
        let lines = store.recent_deliveries(10).await.unwrap();
        let seen: Vec<(&str, Option<&str>, Option<&str>)> = lines
            .iter()
            .map(|l| {
                (
                    l.outcome.as_str(),
                    l.sha.as_deref().map(|s| &s[..1]),
                    l.reason.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("ignored", None, Some("branch dev")),
                (
                    "duplicate",
                    Some("a"),
                    Some("every build this delivery asks for was already started")
                ),
                ("accepted", Some("b"), None),
                ("accepted", Some("a"), None)
            ],
            "{name}: {lines:?}"
        );
        assert_eq!(store.recent_deliveries(2).await.unwrap().len(), 2, "{name}");
        let one = store.delivery_summary(row).await.unwrap();
        assert_eq!(one.len(), 1, "{name}: {one:?}");
        assert_eq!(one[0].state.as_deref(), Some("build_started"), "{name}");
        assert_eq!(one[0].build_id.as_deref(), Some("web-build:1"), "{name}");
        assert!(store.delivery_summary(9_999).await.unwrap().is_empty());

        // Filtered by app and by state (a build state, or an outcome).
        let started = store
            .find_deliveries(Some("web".into()), Some("build_started".into()), 10)
            .await
            .unwrap();
        let rows: Vec<i64> = started.iter().map(|l| l.row).collect();
        assert_eq!(
            rows.len(),
            2,
            "{name}: the first delivery and its duplicate"
        );
        assert!(rows.contains(&row), "{name}");
        let ignored = store
            .find_deliveries(None, Some("ignored".into()), 10)
            .await
            .unwrap();
        assert_eq!(ignored.len(), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_found_by_prefix_per_app_and_a_bulk_admission_keeps_order() {
    for Engine { name, store, .. } in engines().await {
        let batch = vec![
            (delivery("b-1", "1", T0, b"{}"), build('a')),
            (delivery("b-2", "1", T0 + 1, b"{}"), Verdict::Pong),
            (delivery("b-3", "2", T0 + 2, b"{}"), build('a')),
            (delivery("b-4", "1", T0 + 3, b"{}"), build('c')),
        ];
        let admitted = store.admit_all(batch).await.unwrap();
        let kinds: Vec<String> = admitted
            .iter()
            .map(|(_, a)| match a {
                Admission::Accepted(b) => format!("accepted retry={}", b[0].retry),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "accepted retry=false",
                "Pong",
                "accepted retry=true",
                "accepted retry=false"
            ],
            "{name}"
        );
        // An operator's deploy of a commit no push built (the deployment holds it).
        store
            .request_deployment(new_deployment("web", 'e', None), T0 + 4)
            .await
            .unwrap();
        let mut shas = store.shas_with_prefix("web", "").await.unwrap();
        shas.sort();
        assert_eq!(
            shas,
            ["a".repeat(40), "c".repeat(40), "e".repeat(40)],
            "{name}"
        );
        assert_eq!(
            store.shas_with_prefix("web", "CCC").await.unwrap(),
            ["c".repeat(40)],
            "{name}: prefixes are case-insensitive"
        );
        assert!(store.shas_with_prefix("web", "b").await.unwrap().is_empty());
        assert!(store.shas_with_prefix("api", "a").await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_who_pushed_what_came_of_it_and_deploys_no_build_started() {
    use slipway::store::CompletionOutcome;
    for Engine { name, store, .. } in engines().await {
        // Who pushed comes from the payload, read by its JSON type; a replay names its operator.
        let pushes: [(&str, &[u8], char); 3] = [
            ("r-1", br#"{"pusher":{"name":"octocat"}}"#, 'a'),
            ("r-2", br#"{"pusher":{"name":42}}"#, 'c'),
            ("r-3", br#"{"pusher":{"name":{"x":1}}}"#, 'e'),
        ];
        for (i, (id, body, sha)) in pushes.into_iter().enumerate() {
            store
                .admit(delivery(id, "1", T0 + i as i64, body), build(sha))
                .await
                .unwrap();
        }
        let mut replay = delivery("r-4", "1", T0 + 3, b"{}");
        replay.source = Source::Replay;
        replay.actor = Some("alice".into());
        store.admit(replay, build('d')).await.unwrap();
        // The first push built and deployed.
        let b = store.due_builds(T0, 1).await.unwrap()[0].id;
        store
            .build_started(b, "web-build:1".into(), None, T0 + 10)
            .await
            .unwrap();
        let CompletionOutcome::Deploy { deployment, .. } = store
            .complete_build(result("web-build:1", true), T0 + 20)
            .await
            .unwrap()
        else {
            panic!("{name}")
        };
        let explicit = store
            .request_deployment(new_deployment("web", 'f', None), T0 + 30)
            .await
            .unwrap();

        let runs = store.recent_runs(10).await.unwrap();
        let seen: Vec<(&str, &str, Option<&str>)> = runs
            .iter()
            .map(|r| (&r.sha[..1], r.trigger.as_str(), r.actor.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("f", "operator", Some("alice")),
                ("d", "replay", Some("alice")),
                ("e", "push", None),
                ("c", "push", Some("42")),
                ("a", "push", Some("octocat")),
            ],
            "{name}: {runs:?}"
        );
        let first = runs.last().unwrap();
        assert_eq!(first.delivery.as_deref(), Some("r-1"), "{name}");
        let build = first.build.as_ref().unwrap();
        assert_eq!(
            (build.state.as_str(), build.build_id.as_deref()),
            ("build_succeeded", Some("web-build:1")),
            "{name}"
        );
        assert_eq!(build.log_link.as_deref(), Some("https://logs/web-build:1"));
        assert_eq!(first.deployment.as_ref().map(|d| d.id), Some(deployment));
        assert_eq!(runs[0].deployment.as_ref().map(|d| d.id), Some(explicit));
        assert!(runs[0].build.is_none(), "{name}");
        assert_eq!(store.recent_runs(2).await.unwrap().len(), 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bodies_are_dropped_but_not_while_their_build_or_deploy_is_unfinished() {
    use slipway::store::{deploy_state, CompletionOutcome, DeploymentUpdate, StoreError};
    const DAY: i64 = 24 * 3600 * 1000;
    for Engine { name, store, .. } in engines().await {
        let settings = JournalConfig::default();
        // A: its build never started (tied). B: built and deployed (free). R: rejected.
        let (a, _) = store
            .admit(delivery("a", "1", T0, b"{\"a\":1}"), build('a'))
            .await
            .unwrap();
        let (b, admitted) = store
            .admit(delivery("b", "1", T0, b"{\"b\":1}"), build('b'))
            .await
            .unwrap();
        let Admission::Accepted(builds) = admitted else {
            panic!("{name}")
        };
        store
            .build_started(builds[0].build_row, "web-build:b".into(), None, T0 + 1)
            .await
            .unwrap();
        let CompletionOutcome::Deploy { deployment, .. } = store
            .complete_build(result("web-build:b", true), T0 + 2)
            .await
            .unwrap()
        else {
            panic!("{name}")
        };
        let (r, _) = store
            .admit(
                delivery("r", "1", T0, b"{\"r\":1}"),
                Verdict::Rejected("bad".into()),
            )
            .await
            .unwrap();
        let (c, _) = store
            .admit(delivery("c", "1", T0 + 60 * DAY, b"{\"c\":1}"), build('c'))
            .await
            .unwrap();
        let kept = |row: i64| {
            let store = store.clone();
            async move {
                match store
                    .delivery(&row.to_string())
                    .await
                    .unwrap()
                    .unwrap()
                    .payload()
                {
                    Ok(_) => true,
                    Err(StoreError::PayloadNotKept) => false,
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let later = T0 + 91 * DAY;
        // B's deploy is still running: B is tied too.
        let pruned = store.prune(later, &settings).await.unwrap();
        assert_eq!(pruned.bodies_dropped, 1, "{name}: only R's");
        assert!(!kept(r).await && kept(b).await && kept(a).await && kept(c).await);
        store
            .update_deployment(
                deployment,
                DeploymentUpdate {
                    state: Some(deploy_state::SUCCEEDED),
                    ..Default::default()
                },
                later,
            )
            .await
            .unwrap();
        let pruned = store.prune(later, &settings).await.unwrap();
        assert_eq!(
            pruned.bodies_dropped, 1,
            "{name}: B's, now its deploy is done"
        );
        assert!(!kept(b).await && kept(a).await, "{name}");
        let row = store.delivery("b").await.unwrap().unwrap();
        assert_eq!(row.outcome, "accepted", "{name}: the delivery itself stays");
        assert_eq!(
            store.prune(later, &settings).await.unwrap().bodies_dropped,
            0
        );
        // A's build fails for good: nothing holds its body any more.
        let a_build = store.due_builds(later, 10).await.unwrap();
        let a_build = a_build.iter().find(|p| p.delivery_id == "a").unwrap().id;
        store
            .build_failed_to_start(a_build, "AccessDenied".into(), later)
            .await
            .unwrap();
        assert_eq!(
            store.prune(later, &settings).await.unwrap().bodies_dropped,
            1
        );
        assert!(!kept(a).await && kept(c).await, "{name}");
        let _ = (a, b);
    }
}

/// What DynamoDB's TTL reads: ignored, ping and duplicate deliveries expire after
/// `keep_ignored_days` (moto keeps expired items; DynamoDB deletes them within days).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_deliveries_carry_their_expiry_and_accepted_ones_none() {
    let emulator = Emulator::start().await;
    let client = aws_sdk_dynamodb::Client::new(&emulator.config);
    let settings = JournalConfig {
        keep_ignored_days: 3,
        ..JournalConfig::default()
    };
    let dynamo = DynamoStore::new(client.clone(), "slipway", &settings);
    dynamo.create_table(T0).await.unwrap();
    let store = Store::DynamoDb(dynamo);
    let (ignored, _) = store
        .admit(
            delivery("i-1", "1", T0, b"{}"),
            Verdict::Ignored("branch dev".into()),
        )
        .await
        .unwrap();
    let (accepted_row, _) = store
        .admit(delivery("a-1", "1", T0, b"{}"), build('a'))
        .await
        .unwrap();
    let expires = |row: i64, sk: &'static str| {
        let client = client.clone();
        async move {
            let item = client
                .get_item()
                .table_name("slipway")
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(format!("delivery#{row}")),
                )
                .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.into()))
                .send()
                .await
                .unwrap();
            item.item()
                .and_then(|i| i.get("expires"))
                .map(|v| v.as_n().unwrap().parse::<i64>().unwrap())
        }
    };
    let at = T0 / 1000 + 3 * 86_400;
    assert_eq!(expires(ignored, "delivery").await, Some(at));
    assert_eq!(expires(ignored, "body").await, Some(at));
    assert_eq!(expires(accepted_row, "delivery").await, None);
    assert_eq!(expires(accepted_row, "body").await, None);
}

/// Issue 24's notification outbox on both engines: one entry per target, each target's line in
/// order, attempts counted, sent or given up once (a second ending changes nothing), listed
/// newest first and by state, and counted per target for `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_outbox_keeps_each_targets_line_and_ends_an_entry_once() {
    use slipway::store::notify_state;
    for Engine { name, store, .. } in engines().await {
        let ids = store
            .queue_notification(
                vec![
                    ("slack".into(), "k1".into()),
                    ("webhook".into(), "k2".into()),
                ],
                r#"{"kind":"deploy_failed","app":"web"}"#.into(),
                T0,
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 2, "{name}");
        let later = store
            .queue_notification(vec![("slack".into(), "k3".into())], "{}".into(), T0 + 3_000)
            .await
            .unwrap();
        let slack = store.next_notification("slack").await.unwrap().unwrap();
        assert_eq!(
            (slack.id, slack.attempts, slack.idempotency_key.as_str()),
            (ids[0], 0, "k1"),
            "{name}: the oldest first"
        );
        assert_eq!(store.pending_notifications("slack").await.unwrap(), 2);
        let stats = store
            .notify_outbox_stats(&["slack", "webhook"], T0 + 10_000)
            .await
            .unwrap();
        assert_eq!(
            (stats[0].pending, stats[0].oldest_pending_age_ms),
            (2, 10_000),
            "{name}"
        );
        assert_eq!(
            (stats[1].pending, stats[1].oldest_pending_age_ms),
            (1, 10_000)
        );

        store
            .notification_failed(ids[0], "HTTP 503".into(), T0 + 1_000)
            .await
            .unwrap();
        let again = store.next_notification("slack").await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (ids[0], 1), "{name}");
        store.notification_sent(ids[0], T0 + 2_000).await.unwrap();
        let next = store.next_notification("slack").await.unwrap().unwrap();
        assert_eq!(next.id, later[0], "{name}: the next in line");
        // A sent entry is never pending again, whatever comes after.
        store
            .notification_given_up(ids[0], "late".into(), T0 + 4_000)
            .await
            .unwrap();
        store
            .notification_failed(ids[0], "late".into(), T0 + 4_000)
            .await
            .unwrap();
        store
            .notification_given_up(ids[1], "too old: HTTP 500".into(), T0 + 5_000)
            .await
            .unwrap();
        assert!(store.next_notification("webhook").await.unwrap().is_none());

        let rows = store.notifications(None, 10).await.unwrap();
        let view: Vec<(i64, &str, &str, i64)> = rows
            .iter()
            .map(|r| (r.id, r.target.as_str(), r.state.as_str(), r.attempts))
            .collect();
        assert_eq!(
            view,
            [
                (later[0], "slack", notify_state::PENDING, 0),
                (ids[1], "webhook", notify_state::GIVEN_UP, 1),
                (ids[0], "slack", notify_state::SENT, 2),
            ],
            "{name}: newest first"
        );
        assert_eq!(rows[1].last_error.as_deref(), Some("too old: HTTP 500"));
        assert_eq!(rows[2].last_error.as_deref(), Some("HTTP 503"), "{name}");
        assert_eq!(rows[2].notification["app"], "web");
        assert!(rows[2].done_at.is_some() && rows[0].done_at.is_none());
        let given_up = store
            .notifications(Some(notify_state::GIVEN_UP.into()), 10)
            .await
            .unwrap();
        assert_eq!(
            given_up.iter().map(|r| r.id).collect::<Vec<_>>(),
            [ids[1]],
            "{name}"
        );
        assert_eq!(store.notifications(None, 1).await.unwrap().len(), 1);
    }
}

/// Issue 22's `rollback_requested`: the first request's time is kept on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_rollback_keeps_its_first_time() {
    use slipway::store::DeploymentUpdate;
    for Engine { name, store, .. } in engines().await {
        let id = store
            .request_deployment(new_deployment("web", 'c', None), T0)
            .await
            .unwrap();
        let d = store.deployment(id).await.unwrap().unwrap();
        assert_eq!(d.rollback_requested_ms, None, "{name}");
        for at in [T0 + 10, T0 + 20] {
            store
                .update_deployment(
                    id,
                    DeploymentUpdate {
                        rollback_requested: true,
                        ..Default::default()
                    },
                    at,
                )
                .await
                .unwrap();
        }
        let d = store.deployment(id).await.unwrap().unwrap();
        assert_eq!(d.rollback_requested_ms, Some(T0 + 10), "{name}");
    }
}

/// Issue 26: a lease is taken by one holder at a time, renewed only by it, taken over (with a
/// larger fence) once it expired or was handed back, and a write fenced by an old owner's
/// fence changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_have_one_holder_and_an_old_owners_fenced_write_changes_nothing() {
    use slipway::store::{trigger, DeploymentUpdate, NewDeployment, StoreError};
    for e in engines().await {
        let s = &e.store;
        let name = || "deploy/prod/web".to_owned();
        let a = s
            .claim_lease(name(), "a".into(), T0, 3000)
            .await
            .unwrap()
            .expect("a free lease is taken");
        assert_eq!((a.fence, a.expires_ms), (1, T0 + 3000), "{}", e.name);
        assert!(
            s.claim_lease(name(), "b".into(), T0 + 1000, 3000)
                .await
                .unwrap()
                .is_none(),
            "{}: a live lease is not taken",
            e.name
        );
        let a = s
            .renew_lease(a, T0 + 2000, 3000)
            .await
            .unwrap()
            .expect("its holder renews it");
        assert_eq!(a.expires_ms, T0 + 5000);
        assert!(s
            .claim_lease(name(), "b".into(), T0 + 4000, 3000)
            .await
            .unwrap()
            .is_none());
        let b = s
            .claim_lease(name(), "b".into(), T0 + 5001, 3000)
            .await
            .unwrap()
            .expect("an expired lease is taken over");
        assert_eq!((b.fence, b.holder.as_str()), (2, "b"), "{}", e.name);
        assert!(
            s.renew_lease(a.clone(), T0 + 5002, 3000)
                .await
                .unwrap()
                .is_none(),
            "{}: the old owner cannot renew",
            e.name
        );
        // A handed-back lease is free at once, with the next fence.
        s.release_lease(a.clone()).await.unwrap();
        assert_eq!(
            s.lease(name()).await.unwrap().unwrap().holder,
            "b",
            "{}: an old owner cannot hand back another's lease",
            e.name
        );
        s.release_lease(b.clone()).await.unwrap();
        let c = s
            .claim_lease(name(), "c".into(), T0 + 5003, 3000)
            .await
            .unwrap()
            .expect("a handed-back lease is free");
        assert_eq!(c.fence, 3);
        let listed = s.leases().await.unwrap();
        assert_eq!(listed, vec![c.clone()], "{}", e.name);

        // Fenced writes of a deployment.
        let id = s
            .request_deployment(
                NewDeployment {
                    app: "web".into(),
                    service_key: "prod/web".into(),
                    sha: "a".repeat(40),
                    image_tag: "a".repeat(40),
                    trigger: trigger::OPERATOR,
                    actor: Some("ops".into()),
                    build_row: None,
                    build_id: None,
                    delivery_id: None,
                    order_key: None,
                    target_task_definition: None,
                    log_link: None,
                    tag: None,
                    promotion: None,
                },
                T0,
            )
            .await
            .unwrap();
        let update = |fence: slipway::store::Fence, reason: &str| DeploymentUpdate {
            reason: Some(reason.into()),
            fence: Some(fence),
            ..Default::default()
        };
        s.update_deployment(id, update(c.fence(), "by c"), T0 + 5004)
            .await
            .unwrap();
        let refused = s
            .update_deployment(id, update(b.fence(), "by b"), T0 + 5005)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, StoreError::Fenced(n) if n == "deploy/prod/web"),
            "{}: {refused}",
            e.name
        );
        assert!(refused.to_string().contains("no longer held"), "{refused}");
        let d = s.deployment(id).await.unwrap().unwrap();
        assert_eq!(
            d.reason.as_deref(),
            Some("by c"),
            "{}: nothing written",
            e.name
        );
        // Handed back: even its last owner's fence writes nothing more.
        s.release_lease(c.clone()).await.unwrap();
        assert!(matches!(
            s.update_deployment(id, update(c.fence(), "late"), T0 + 5006)
                .await,
            Err(StoreError::Fenced(_))
        ));
        assert_eq!(
            s.deployment(id).await.unwrap().unwrap().reason.as_deref(),
            Some("by c")
        );
    }
}

/// A promotion to `web-prod` of the image `source`, a deploy of `web`, ran (commit `sha`).
fn promotion_of(source: i64, sha: char, tag: Option<&str>) -> slipway::store::NewPromotion {
    let sha: String = std::iter::repeat_n(sha, 40).collect();
    slipway::store::NewPromotion {
        app: "web-prod".into(),
        source_app: "web".into(),
        source_deployment: source,
        sha: sha.clone(),
        image_digest: format!("sha256:{}", "d".repeat(64)),
        image_tag: sha,
        tag: tag.map(str::to_owned),
        service_key: "main/web-prod".into(),
        expires_ms: T0 + 3_600_000,
    }
}

/// Issue 27: a promotion is made once per source deploy (and tag), waits, is superseded by a
/// newer one, and an approval makes exactly one deployment, linked to it, in the same write;
/// a decision on a promotion that no longer waits changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_wait_are_superseded_and_an_approval_makes_one_linked_deployment() {
    use slipway::store::{promotion_state, PromotionCreated, PromotionDecided, PromotionDecision};
    for Engine { name, store, .. } in engines().await {
        let made = store
            .create_promotion(promotion_of(11, 'a', None), T0)
            .await
            .unwrap();
        let PromotionCreated::New {
            promotion: first,
            superseded,
        } = made
        else {
            panic!("{name}: {made:?}")
        };
        assert!(superseded.is_empty(), "{name}");
        assert_eq!(first.state, promotion_state::AWAITING_APPROVAL, "{name}");
        assert_eq!(
            (first.source_app.as_str(), first.source_deployment),
            ("web", 11)
        );
        // The same source deploy again (the promoter's scan after a restart): nothing new.
        let again = store
            .create_promotion(promotion_of(11, 'a', None), T0 + 1)
            .await
            .unwrap();
        assert_eq!(again, PromotionCreated::Exists(first.clone()), "{name}");
        assert_eq!(
            store
                .promotion_of_source("web-prod".into(), 11)
                .await
                .unwrap()
                .map(|p| p.id),
            Some(first.id),
            "{name}"
        );
        assert_eq!(
            store
                .promotion_of_source("web-prod".into(), 12)
                .await
                .unwrap(),
            None,
            "{name}"
        );

        // A newer deploy of the source: the older promotion, still waiting, is superseded.
        let made = store
            .create_promotion(promotion_of(12, 'b', None), T0 + 2)
            .await
            .unwrap();
        let PromotionCreated::New {
            promotion: second,
            superseded,
        } = made
        else {
            panic!("{name}: {made:?}")
        };
        assert_eq!(superseded.len(), 1, "{name}: {superseded:?}");
        assert_eq!(superseded[0].id, first.id, "{name}");
        assert_eq!(superseded[0].state, promotion_state::SUPERSEDED, "{name}");
        let reason = superseded[0].reason.clone().unwrap();
        assert!(
            reason.contains(&format!("superseded by promotion {}", second.id)),
            "{name}: {reason}"
        );
        let waiting: Vec<i64> = store
            .awaiting_promotions()
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(waiting, vec![second.id], "{name}");
        assert_eq!(
            store
                .waiting_promotion("web-prod".into())
                .await
                .unwrap()
                .map(|p| p.id),
            Some(second.id),
            "{name}"
        );

        // The superseded one can no longer be approved: nothing changes, no deployment.
        let approve = |by: &str| PromotionDecision::Approve {
            by: by.into(),
            deployment: Box::new(slipway::store::NewDeployment {
                trigger: slipway::store::trigger::PROMOTION,
                ..new_deployment("web-prod", 'b', None)
            }),
        };
        let late = store
            .decide_promotion(first.id, approve("alice"), T0 + 3)
            .await
            .unwrap();
        assert!(
            matches!(&late, PromotionDecided::NotWaiting(p) if p.state == promotion_state::SUPERSEDED),
            "{name}: {late:?}"
        );
        assert!(store
            .recent_deployments(Some("web-prod".into()), 10)
            .await
            .unwrap()
            .is_empty());

        // Approved: one deployment, linked both ways, with who and when.
        let done = store
            .decide_promotion(second.id, approve("alice"), T0 + 4)
            .await
            .unwrap();
        let PromotionDecided::Done(approved) = done else {
            panic!("{name}: {done:?}")
        };
        assert_eq!(approved.state, promotion_state::APPROVED, "{name}");
        assert_eq!(approved.decided_by.as_deref(), Some("alice"), "{name}");
        assert_eq!(approved.decided_ms, Some(T0 + 4), "{name}");
        let deployment = approved.deployment.expect("the approval's deployment");
        let d = store.deployment(deployment).await.unwrap().unwrap();
        assert_eq!(d.promotion, Some(second.id), "{name}");
        assert_eq!(d.trigger, "promotion", "{name}");
        assert_eq!(d.state, "pending", "{name}");
        // A second approval (a double click, another approver): nothing twice.
        let twice = store
            .decide_promotion(second.id, approve("bob"), T0 + 5)
            .await
            .unwrap();
        assert!(
            matches!(&twice, PromotionDecided::NotWaiting(p) if p.decided_by.as_deref() == Some("alice")),
            "{name}: {twice:?}"
        );
        assert_eq!(
            store
                .recent_deployments(Some("web-prod".into()), 10)
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
        assert!(
            store.awaiting_promotions().await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            store.waiting_promotion("web-prod".into()).await.unwrap(),
            None,
            "{name}"
        );

        // Rejected and expired ones keep who, when and why; a tag's promotion of the same
        // deploy is its own.
        let PromotionCreated::New {
            promotion: third, ..
        } = store
            .create_promotion(promotion_of(12, 'b', Some("v1.0.0")), T0 + 6)
            .await
            .unwrap()
        else {
            panic!("{name}: the tag's promotion is its own")
        };
        let rejected = store
            .decide_promotion(
                third.id,
                PromotionDecision::Reject {
                    by: "slack:U123".into(),
                    reason: "rejected by slack:U123".into(),
                },
                T0 + 7,
            )
            .await
            .unwrap();
        let PromotionDecided::Done(rejected) = rejected else {
            panic!("{name}: {rejected:?}")
        };
        assert_eq!(
            (rejected.state.as_str(), rejected.decided_by.as_deref()),
            (promotion_state::REJECTED, Some("slack:U123")),
            "{name}"
        );
        let PromotionCreated::New {
            promotion: fourth, ..
        } = store
            .create_promotion(promotion_of(13, 'c', None), T0 + 8)
            .await
            .unwrap()
        else {
            panic!("{name}: a new source deploy")
        };
        let expired = store
            .decide_promotion(
                fourth.id,
                PromotionDecision::Expire {
                    reason: "nobody approved it within 1 h".into(),
                },
                T0 + 9,
            )
            .await
            .unwrap();
        assert!(
            matches!(&expired, PromotionDecided::Done(p) if p.state == promotion_state::EXPIRED && p.decided_by.is_none()),
            "{name}: {expired:?}"
        );
        assert_eq!(
            store
                .decide_promotion(999_999, approve("alice"), T0)
                .await
                .unwrap(),
            PromotionDecided::NotFound,
            "{name}"
        );
        let listed: Vec<(i64, String)> = store
            .promotions(Some("web-prod".into()), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.state))
            .collect();
        assert_eq!(
            listed,
            vec![
                (fourth.id, promotion_state::EXPIRED.to_owned()),
                (third.id, promotion_state::REJECTED.to_owned()),
                (second.id, promotion_state::APPROVED.to_owned()),
                (first.id, promotion_state::SUPERSEDED.to_owned()),
            ],
            "{name}"
        );
        assert!(store
            .promotions(Some("web".into()), 10)
            .await
            .unwrap()
            .is_empty());
    }
}
