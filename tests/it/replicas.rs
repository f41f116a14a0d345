//! Issue 26: several replicas on one DynamoDB table. Each replica is a `slipway serve` of its
//! own, with its own AWS access key id, so the proxy tells their calls apart
//! ([`Recorded::caller`]); the lease period is 3 s. Whichever engine this pass runs, these
//! tests keep the state in a DynamoDB table of their own: replicas need it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy::{Deploy, Setup};
use crate::support::proxy::{Fault, Rollout};
use crate::support::slipway::Slipway;
use crate::support::world::{CLUSTER, SERVICE};
use crate::support::{eventually, fixture, SlipwayBuilder, StoreTable, MASTER_SHA};

/// The deploy lease of the world's one service.
fn lease_name() -> String {
    format!("deploy/{CLUSTER}/{SERVICE}")
}

/// A deploy world whose slipways share one DynamoDB table, and a builder per replica.
struct Replicas {
    w: Deploy,
    table: StoreTable,
    a: SlipwayBuilder,
    b: SlipwayBuilder,
}

async fn replicas(images: &[&str]) -> Replicas {
    let table = StoreTable::make(&crate::support::unique_table_name());
    let extra = format!(
        "[store]\nengine = \"dynamodb\"\ntable = \"{}\"\n[replicas]\nlease_secs = 3\n",
        table.name
    );
    let w = Deploy::with(Setup {
        extra: &extra,
        images,
        ..Setup::default()
    })
    .await;
    let replica = |key: &str| {
        w.builder
            .clone()
            .env("AWS_ENDPOINT_URL_DYNAMODB", &table.url)
            .env("AWS_ACCESS_KEY_ID", key)
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    Replicas { w, table, a, b }
}

impl Replicas {
    async fn deployments(&self) -> Vec<Value> {
        let store = self.table.store().await;
        store
            .recent_deployments(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id, "sha": d.sha, "state": d.state, "reason": d.reason,
                    "to_task_definition": d.to_task_definition,
                    "ecs_deployment_id": d.ecs_deployment_id,
                })
            })
            .collect()
    }

    async fn lease(&self, name: &str) -> Option<slipway::store::Lease> {
        self.table
            .store()
            .await
            .lease(name.to_owned())
            .await
            .unwrap()
    }

    /// Waits until the deploy lease is held by a replica other than `holder`; returns it.
    async fn taken_from(&self, holder: &str) -> slipway::store::Lease {
        eventually("another replica takes the deploy's lease", || async {
            self.lease(&lease_name())
                .await
                .filter(|l| l.holder != holder && l.expires_ms > 0)
        })
        .await
    }

    async fn finished(&self, sha: &str) -> Value {
        eventually(&format!("deploy of {sha} finished"), || async {
            self.deployments().await.into_iter().find(|d| {
                d["sha"] == sha && !matches!(d["state"].as_str(), Some("pending" | "deploying"))
            })
        })
        .await
    }

    /// ECS's deployments of `task_definition` (as the proxy's ECS has them).
    fn applied(&self, task_definition: &str) -> usize {
        self.w
            .proxy
            .deployments(CLUSTER, SERVICE)
            .iter()
            .filter(|d| d["taskDefinition"] == task_definition)
            .count()
    }

    /// Calls of `operation` signed by `caller`, after the `from`th recorded request.
    fn calls(&self, caller: &str, operation: Option<&str>, from: usize) -> Vec<String> {
        self.w.proxy.recorded()[from..]
            .iter()
            .filter(|r| r.caller == caller && operation.is_none_or(|o| r.operation == o))
            .map(|r| r.operation.clone())
            .collect()
    }
}

/// The deploy's lease holder while `s` drives it alone.
async fn holder_of_the_deploy(r: &Replicas) -> String {
    eventually("the deploy's lease held", || async {
        r.lease(&lease_name()).await.filter(|l| l.expires_ms > 0)
    })
    .await
    .holder
}

/// Where replica A dies in its deploy.
enum KillAt {
    /// The new revision is registered; its UpdateService never reaches ECS.
    AfterRegister,
    /// ECS applied UpdateService; A never heard the answer.
    AfterUpdateService,
    /// A watches the rollout.
    Watching,
}

/// A drives a deploy alone (B starts once A holds it), is killed at `at`, and B finishes it:
/// succeeded, with exactly one UpdateService applied by ECS. Returns how long B took to take
/// the lease after the kill (printed; the figures are in docs/replicas.md).
async fn killed_at(at: KillAt) -> Duration {
    let r = replicas(&[MASTER_SHA]).await;
    match at {
        KillAt::AfterRegister => {
            r.w.proxy
                .script("UpdateService", [Fault::Delay(Duration::from_secs(600))])
        }
        KillAt::AfterUpdateService => r.w.proxy.script(
            "UpdateService",
            [Fault::DelayAnswer(Duration::from_secs(60))],
        ),
        KillAt::Watching => {}
    }
    r.w.proxy.rollouts([Rollout::Never]);
    let mut a = r.a.start().await;
    r.w.build_succeeds(&a, "replica-1", MASTER_SHA).await;
    let d = eventually("A's deploy at the kill point", || async {
        r.deployments().await.into_iter().find(|d| match at {
            KillAt::AfterRegister | KillAt::AfterUpdateService => {
                d["to_task_definition"].is_string()
                    && !r.calls("replica-a", Some("UpdateService"), 0).is_empty()
            }
            KillAt::Watching => d["ecs_deployment_id"].is_string(),
        })
    })
    .await;
    let to_td = d["to_task_definition"].as_str().unwrap().to_owned();
    if matches!(at, KillAt::AfterUpdateService) {
        eventually("ECS applied A's UpdateService", || async {
            (r.applied(&to_td) == 1).then_some(())
        })
        .await;
    }
    let a_id = holder_of_the_deploy(&r).await;
    let b = r.b.start().await;
    a.kill();
    let killed = Instant::now();
    let taken = r.taken_from(&a_id).await;
    let took = killed.elapsed();
    eprintln!("takeover after kill -9: {} ms", took.as_millis());
    assert!(taken.fence > 1, "a new owner has a new fence: {taken:?}");
    // B follows (or starts) the rollout; it then completes.
    let ecs_id = eventually("B watching the rollout", || async {
        r.deployments()
            .await
            .into_iter()
            .find(|x| x["id"] == d["id"] && x["ecs_deployment_id"].is_string())
            .filter(|_| r.applied(&to_td) == 1)
            .map(|x| x["ecs_deployment_id"].as_str().unwrap().to_owned())
    })
    .await;
    r.w.proxy.complete_now(CLUSTER, SERVICE, &ecs_id);
    let done = r.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(r.w.service_td().await, to_td);
    assert_eq!(r.applied(&to_td), 1, "ECS got the new revision once");
    let by_b = r.calls("replica-b", Some("UpdateService"), 0).len();
    let by_a = r.calls("replica-a", Some("UpdateService"), 0).len();
    match at {
        // A's call never reached ECS: B sends the one ECS applies.
        KillAt::AfterRegister => assert_eq!((by_a, by_b), (1, 1)),
        // ECS applied A's: B sends nothing.
        KillAt::AfterUpdateService | KillAt::Watching => assert_eq!((by_a, by_b), (1, 0)),
    }
    assert_eq!(
        r.calls("replica-b", Some("RegisterTaskDefinition"), 0)
            .len(),
        0,
        "B registers no second revision"
    );
    drop(b);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_after_register_task_definition_the_other_finishes_the_deploy() {
    killed_at(KillAt::AfterRegister).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_after_update_service_the_other_finishes_the_deploy_without_a_second_one()
{
    killed_at(KillAt::AfterUpdateService).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_watching_the_other_finishes_the_deploy() {
    killed_at(KillAt::Watching).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_failing_after_a_takeover_is_rolled_back_once() {
    let r = replicas(&[MASTER_SHA]).await;
    // The rollout fails only once B has taken it over; ECS completes slipway's rollback.
    r.w.proxy
        .rollouts([Rollout::Never, Rollout::Complete { after: 1 }]);
    let mut a = r.a.start().await;
    r.w.build_succeeds(&a, "replica-fail", MASTER_SHA).await;
    let watched = eventually("A watching", || async {
        r.deployments()
            .await
            .into_iter()
            .find(|d| d["ecs_deployment_id"].is_string())
    })
    .await;
    let a_id = holder_of_the_deploy(&r).await;
    let _b = r.b.start().await;
    a.kill();
    r.taken_from(&a_id).await;
    let ecs_id = watched["ecs_deployment_id"].as_str().unwrap();
    r.w.proxy.fail_now(CLUSTER, SERVICE, ecs_id);
    let done = r.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(r.w.service_td().await, r.w.base_td);
    assert_eq!(
        r.calls("replica-b", Some("UpdateService"), 0).len(),
        1,
        "B rolls back once"
    );
    assert_eq!(r.calls("replica-a", Some("UpdateService"), 0).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_whose_deploy_was_taken_makes_no_call_for_it_after_it_wakes() {
    let r = replicas(&[MASTER_SHA]).await;
    r.w.proxy.rollouts([Rollout::Never]);
    let a = r.a.start().await;
    r.w.build_succeeds(&a, "replica-pause", MASTER_SHA).await;
    let d = eventually("A watching", || async {
        r.deployments()
            .await
            .into_iter()
            .find(|d| d["ecs_deployment_id"].is_string())
    })
    .await;
    let a_id = holder_of_the_deploy(&r).await;
    let b = r.b.start().await;
    signal(&a, "STOP");
    let taken = r.taken_from(&a_id).await;
    // B watches the rollout now.
    let seen = r.w.proxy.recorded().len();
    eventually("B looking at the service", || async {
        r.calls("replica-b", Some("DescribeServices"), seen)
            .first()
            .cloned()
    })
    .await;
    let woke_at = r.w.proxy.recorded().len();
    signal(&a, "CONT");
    eventually("A knows it lost the lease", || async {
        a.logs().contains("lease lost").then_some(())
    })
    .await;
    // A while longer: A's timers (its polls) have all fired by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The deploy's work is ECS's and ECR's calls (and a build's start); A's queue consumer
    // goes on reading events, as every replica's does (an event handled twice acts once).
    let deploy_calls: Vec<String> = r
        .calls("replica-a", None, woke_at)
        .into_iter()
        .filter(|op| {
            !matches!(
                op.as_str(),
                "ReceiveMessage" | "DeleteMessage" | "ChangeMessageVisibility" | "BatchGetBuilds"
            )
        })
        .collect();
    assert!(
        deploy_calls.is_empty(),
        "A acted after it woke: {deploy_calls:?}"
    );
    let ecs_id = d["ecs_deployment_id"].as_str().unwrap();
    r.w.proxy.complete_now(CLUSTER, SERVICE, ecs_id);
    let done = r.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        r.lease(&lease_name()).await.unwrap().fence,
        taken.fence,
        "A took nothing back"
    );
    assert!(
        !a.logs().contains("deploy succeeded"),
        "A recorded no outcome: {}",
        a.logs()
    );
    b.wait_log("deploy succeeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_replica_holding_a_deploy_hands_it_over() {
    let r = replicas(&[MASTER_SHA]).await;
    r.w.proxy.rollouts([Rollout::Never]);
    let mut a = r.a.start().await;
    r.w.build_succeeds(&a, "replica-term", MASTER_SHA).await;
    let d = eventually("A watching", || async {
        r.deployments()
            .await
            .into_iter()
            .find(|d| d["ecs_deployment_id"].is_string())
    })
    .await;
    let a_id = holder_of_the_deploy(&r).await;
    let b = r.b.start().await;
    let stopped = Instant::now();
    assert!(a.terminate().success());
    // A hands its leases back on SIGTERM.
    a.wait_log("lease handed back").await;
    let lease = r.lease(&lease_name()).await.unwrap();
    assert!(
        lease.expires_ms == 0 || lease.holder != a_id,
        "the lease is free or B's once A has exited: {lease:?}"
    );
    r.taken_from(&a_id).await;
    eprintln!(
        "takeover after SIGTERM: {} ms",
        stopped.elapsed().as_millis()
    );
    r.w.proxy
        .complete_now(CLUSTER, SERVICE, d["ecs_deployment_id"].as_str().unwrap());
    let done = r.finished(MASTER_SHA).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    b.wait_log("deploy succeeded").await;
}

const NEWER: &str = "2222222222222222222222222222222222222222";
const OLDER: &str = "1111111111111111111111111111111111111111";

/// A push of `sha` that GitHub received at `pushed_at`.
fn push_body(sha: &str, pushed_at: i64) -> Vec<u8> {
    let text = String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replace(MASTER_SHA, sha);
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["repository"]["pushed_at"] = pushed_at.into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_of_one_service_at_two_replicas_deploy_one_at_a_time_and_the_newest_wins() {
    let r = replicas(&[MASTER_SHA, NEWER, OLDER]).await;
    r.w.proxy.rollouts([
        Rollout::Complete { after: 2 },
        Rollout::Complete { after: 2 },
        Rollout::Complete { after: 2 },
    ]);
    let a = r.a.start().await;
    let b = r.b.start().await;
    // Two pushes at once, one at each replica; then an older one, late, at A.
    let (first_body, second_body) = (
        push_body(MASTER_SHA, 1_787_306_398),
        push_body(NEWER, 1_787_306_500),
    );
    let (ra, rb) = tokio::join!(
        a.deliver("push", "two-1", &first_body),
        b.deliver("push", "two-2", &second_body),
    );
    assert_eq!(
        (ra.status, rb.status),
        (202, 202),
        "{} {}",
        ra.text,
        rb.text
    );
    for (sha, delivery) in [(MASTER_SHA, "two-1"), (NEWER, "two-2")] {
        let arn = eventually(&format!("build of {delivery}"), || async {
            let builds = r.w.emulator.builds("web-build").await;
            builds
                .iter()
                .find(|x| x.source_version() == Some(sha))
                .and_then(|x| x.arn())
                .map(str::to_owned)
        })
        .await;
        r.w.complete(&arn, "SUCCEEDED", sha).await;
    }
    let newest = r.finished(NEWER).await;
    assert_eq!(newest["state"], "succeeded", "{newest}");
    let first = r.finished(MASTER_SHA).await;
    assert!(
        matches!(first["state"].as_str(), Some("succeeded" | "superseded")),
        "{first}"
    );
    let late = a
        .deliver("push", "two-0", &push_body(OLDER, 1_787_306_000))
        .await;
    assert_eq!(late.status, 202, "{}", late.text);
    let arn = eventually("build of the late push", || async {
        let builds = r.w.emulator.builds("web-build").await;
        builds
            .iter()
            .find(|x| x.source_version() == Some(OLDER))
            .and_then(|x| x.arn())
            .map(str::to_owned)
    })
    .await;
    r.w.complete(&arn, "SUCCEEDED", OLDER).await;
    let old = r.finished(OLDER).await;
    assert_eq!(old["state"], "superseded", "{old}");
    assert_eq!(
        r.w.service_td().await,
        newest["to_task_definition"].as_str().unwrap(),
        "the newest push runs"
    );
    // One at a time: every UpdateService after the first came once the deploy before it ended
    // (ECS never had two of slipway's deployments in progress).
    let updates = r.w.proxy.update_service_calls();
    assert!(updates.len() <= 2, "{updates:?}");
    assert_eq!(
        updates.last().unwrap()["taskDefinition"],
        newest["to_task_definition"]
    );
}

fn signal(s: &Slipway, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A delivery sent: its GUID and body.
type Sent = (String, Vec<u8>);

/// Pushes each sender makes at most.
const LOAD_PUSHES: usize = 25;
const LOAD_SENDERS: usize = 4;

/// Push `n` of `sender`: its GUID, commit and body.
fn load_push(sender: usize, n: usize) -> (String, String, Vec<u8>) {
    let guid = format!("two-load-{sender}-{n}");
    let sha = format!("2{:07x}{:032x}", sender, n);
    let body = String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replace(MASTER_SHA, &sha)
        .into_bytes();
    (guid, sha, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_under_webhook_load_killed_three_times_lose_nothing_and_build_each_push_once()
{
    use std::sync::{Arc, Mutex};
    let emulator = crate::support::Emulator::start().await;
    emulator.create_project("web-build", "octo-org/web").await;
    // CodeBuild as AWS has it (a build keeps StartBuild's environment, slipway's run token).
    let proxy = crate::support::Proxy::start(&emulator.url).await;
    let table = StoreTable::make(&crate::support::unique_table_name());
    let base = SlipwayBuilder::new(&proxy.url)
        .extra(&format!(
            "[store]\nengine = \"dynamodb\"\ntable = \"{}\"\n[replicas]\nlease_secs = 3\n",
            table.name
        ))
        .env("AWS_ENDPOINT_URL_DYNAMODB", &table.url);
    let builders = [
        base.clone().env("AWS_ACCESS_KEY_ID", "replica-a"),
        base.clone().env("AWS_ACCESS_KEY_ID", "replica-b"),
    ];
    let mut running = [builders[0].start().await, builders[1].start().await];
    let urls: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(running.iter().map(|s| s.url.clone()).collect()));
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<Sent>>> = Arc::default();
    // `REPLICA_LOAD_PUSHES` sends more (scripts/bench-replicas.sh).
    let pushes: usize = std::env::var("REPLICA_LOAD_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LOAD_PUSHES);
    let mut senders = Vec::new();
    for sender in 0..LOAD_SENDERS {
        let (urls, acknowledged, attempted) =
            (urls.clone(), acknowledged.clone(), attempted.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..pushes {
                let (guid, _, body) = load_push(sender, n);
                attempted.lock().unwrap().push((guid.clone(), body.clone()));
                // Spread over both replicas; every fifth to both (GitHub's redelivery, or
                // two hooks' worth of the same delivery reaching different tasks).
                let targets: Vec<String> = {
                    let urls = urls.lock().unwrap();
                    if n % 5 == 0 {
                        urls.clone()
                    } else {
                        vec![urls[(sender + n) % 2].clone()]
                    }
                };
                for url in targets {
                    if let Some(200 | 202) =
                        crate::durability::post(&client, &url, &guid, &body).await
                    {
                        acknowledged.lock().unwrap().push(guid.clone());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // kill -9 one replica, then the other, then the first again, each under load; each is
    // started again at once (a task replaced by ECS).
    for (round, victim) in [0usize, 1, 0].into_iter().enumerate() {
        let wanted = 10 * (round + 1);
        eventually("deliveries acknowledged under load", || async {
            (acknowledged.lock().unwrap().len() >= wanted).then_some(())
        })
        .await;
        running[victim].kill();
        let again = builders[victim].start().await;
        urls.lock().unwrap()[victim] = again.url.clone();
        running[victim] = again;
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    // Every acknowledged delivery is in the store.
    let store = table.store().await;
    for guid in &acknowledged {
        assert!(
            store.delivery(guid).await.unwrap().is_some(),
            "{guid} was acknowledged and is gone"
        );
    }
    // GitHub redelivers what it sent (to either replica).
    let client = reqwest::Client::new();
    for (i, (guid, body)) in attempted.iter().enumerate() {
        let url = running[i % 2].url.clone();
        let status = crate::durability::post(&client, &url, guid, body).await;
        assert!(
            matches!(status, Some(200 | 202)),
            "redelivery of {guid}: {status:?}"
        );
    }
    // Every push is built, exactly once.
    let builds = eventually("every push built", || async {
        let builds = emulator.builds("web-build").await;
        (builds.len() >= attempted.len()).then_some(builds)
    })
    .await;
    let (versions, twice) = crate::durability::built_twice(&builds);
    assert!(twice.is_empty(), "built twice: {twice:?}");
    assert_eq!(versions.len(), attempted.len());
    let starts = proxy
        .recorded()
        .iter()
        .filter(|r| r.operation == "StartBuild")
        .count();
    eprintln!(
        "{} deliveries sent, {} acknowledged, {} StartBuild calls, {} builds",
        attempted.len(),
        acknowledged.len(),
        starts,
        builds.len()
    );
}

/// GETs `path` from `s`'s admin listener with the harness's ops token.
async fn admin(s: &Slipway, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.admin_url))
        .bearer_auth(crate::support::slipway::HARNESS_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_the_live_replicas_and_the_stores_counts_come_from_one() {
    let r = replicas(&[MASTER_SHA]).await;
    let a = r.a.start().await;
    // A holds the singletons before B starts.
    eventually("A holds the builds lease", || async {
        r.lease("builds").await.filter(|l| l.expires_ms > 0)
    })
    .await;
    let b = r.b.start().await;
    let view = eventually("both replicas live", || async {
        let (status, text) = admin(&b, "/api/replicas").await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        (v["replicas"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await;
    assert_eq!(view["lease_secs"], 3);
    let list = view["replicas"].as_array().unwrap();
    let holder_of_builds = r.lease("builds").await.unwrap().holder;
    let answering: Vec<&Value> = list.iter().filter(|x| x["this"] == true).collect();
    assert_eq!(answering.len(), 1, "{view}");
    assert_eq!(answering[0]["id"], view["replica"]);
    let with_builds: Vec<&Value> = list
        .iter()
        .filter(|x| x["holds"].as_array().unwrap().iter().any(|h| h == "builds"))
        .collect();
    assert_eq!(with_builds.len(), 1, "one replica starts builds: {view}");
    assert_eq!(with_builds[0]["id"], holder_of_builds.as_str());
    let ids: Vec<String> = list
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect();

    // The status page of either shows both.
    for s in [&a, &b] {
        let (status, page) = admin(s, "/").await;
        assert_eq!(status, 200);
        assert!(page.contains("Replicas"), "{page}");
        for id in &ids {
            assert!(page.contains(id.as_str()), "{id} missing from the page");
        }
    }
    // `slipway status` asking B lists both and what each holds.
    let mut status = r.b.command();
    status
        .args(["status", "--server", &b.admin_url])
        .env("SLIPWAY_OPS_TOKEN", crate::support::slipway::HARNESS_TOKEN);
    let out = status.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replicas: 2 live"), "{text}");
    assert!(text.contains("holds builds"), "{text}");
    assert!(text.contains("(answering)"), "{text}");

    // Metrics: every series names its replica; the store's counts come from one replica.
    let mut with_store_counts = 0;
    for s in [&a, &b] {
        let (_, text) = admin(s, "/metrics").await;
        crate::metrics::promtool_check(&text);
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(!samples.is_empty());
        let me = samples[0]
            .split("replica=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a replica label")
            .to_owned();
        assert!(ids.contains(&me), "{me} is not a live replica");
        let unlabelled: Vec<&&str> = samples
            .iter()
            .filter(|l| !l.contains(&format!("replica=\"{me}\"")))
            .collect();
        assert!(
            unlabelled.is_empty(),
            "without replica={me}: {unlabelled:?}"
        );
        if text.contains("slipway_builds_pending{") || text.contains("slipway_builds_pending ") {
            with_store_counts += 1;
        }
    }
    assert_eq!(
        with_store_counts, 1,
        "the store's counts come from one replica"
    );
}
