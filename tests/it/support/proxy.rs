//! A small proxy between slipway and the emulator that the tests control.
//!
//! It forwards every request to the emulator and records it, and it lets a test script what
//! the emulator cannot do: throttling, 5xx, latency, and (for the deploy tests) rollout
//! outcomes. Operations are named by their AWS name (`StartBuild`, `DescribeServices`, …),
//! taken from the `X-Amz-Target` header of the JSON protocols.
//!
//! # ECS deployment overlay
//!
//! The emulator's `UpdateService` changes the service's task definition but never starts a
//! deployment, so rollouts never progress. For every service the proxy has seen an
//! `UpdateService` for, it keeps its own deployment list and rewrites the `deployments` and
//! `taskDefinition` of that service in the `UpdateService` and `DescribeServices` answers:
//!
//! - `UpdateService` with a `taskDefinition` (or `forceNewDeployment`) is forwarded first; if
//!   the emulator accepts it, a new `PRIMARY` deployment (`IN_PROGRESS`, running 0) is put in
//!   front of the list and the previous `PRIMARY` becomes `ACTIVE`. The outcome of that
//!   deployment is the next [`Rollout`] queued with [`Proxy::rollouts`] (any service), or
//!   `Rollout::Complete { after: 1 }` when the queue is empty.
//! - Each `DescribeServices` call advances every known service it names by one step before
//!   it is answered; `after: n` means the `n`-th such call is the first to show the outcome
//!   (`after: 0` behaves like `after: 1`: `UpdateService` itself always answers `IN_PROGRESS`).
//! - The first time a service is updated, the proxy asks the emulator for the service and
//!   takes its current deployment as the baseline: `PRIMARY`, `COMPLETED`, running the
//!   service's current task definition at its desired count (a service steady before the
//!   deploy).
//! - Whenever an outcome makes the `PRIMARY` deployment run another task definition without an
//!   `UpdateService` (ECS rolling back, a foreign deploy, a vanished deployment), the proxy also
//!   sends the emulator an `UpdateService` to that task definition so the two agree (best
//!   effort: a made-up revision such as `:999` is refused by the emulator and only lives in the
//!   rewritten answers).
//! - Service deployments and revisions are modelled as the ECS API reference describes them
//!   (ListServiceDeployments, DescribeServiceDeployments, DescribeServiceRevisions,
//!   StopServiceDeployment): every deployment started by an update gets a new service revision
//!   (`…:service-revision/<cluster>/<service>/<ECS's number>`) and a service deployment with an
//!   opaque id (`…:service-deployment/<cluster>/<service>/NCWGC2ZR-taawPAYrIaU5`), neither
//!   related to the `ecs-svc/…` digits; the service shows the newest as
//!   `currentServiceDeployment`. ECS's rollback (circuit breaker, StopServiceDeployment with
//!   `ROLLBACK`) creates neither: the deployment that last completed goes IN_PROGRESS and
//!   PRIMARY again, keeping its `createdAt`, and the failed service deployment goes
//!   `ROLLBACK_IN_PROGRESS` with `rollback.serviceRevisionArn` naming the revision it goes back
//!   to.
//! - Faults scripted with [`Proxy::script`] / [`Proxy::fail`] are applied before all of this: a
//!   faulted call never reaches the emulator and does not advance any rollout.
//!
//! The proxy also runs standalone (`#[path = ".../proxy.rs"] mod proxy;` and
//! [`serve_forever`]); then `POST /_proxy/rollouts` with a JSON array such as
//! `["complete:3", "rollback:2", "foreign:1", "never"]` queues outcomes (see
//! [`Rollout::from_str`](std::str::FromStr)), and `GET /_proxy/deployments` shows the overlay.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const AMZ_JSON: &str = "application/x-amz-json-1.1";
const ECR_TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub operation: String,
    pub body: serde_json::Value,
    /// When the request arrived and when its answer was ready, on one counter shared by all
    /// requests: a call that arrived after another's answer depends on it (a round trip later).
    pub arrived: u64,
    pub answered: u64,
    /// Whose credentials signed it: the access key id of SigV4's `Credential=` (tests give
    /// each replica its own, to count each one's calls).
    pub caller: String,
}

/// The clock of [`Recorded::arrived`] / [`Recorded::answered`].
static SEQUENCE: AtomicU64 = AtomicU64::new(1);

fn tick() -> u64 {
    SEQUENCE.fetch_add(1, Ordering::SeqCst)
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with an AWS error instead of forwarding.
    Error { status: u16, code: String },
    /// Wait, then forward.
    Delay(Duration),
    /// Forward (AWS acts on the request), then wait before answering: the caller may die
    /// before it hears the answer.
    DelayAnswer(Duration),
}

/// What happens to the deployment started by one `UpdateService`.
///
/// `after` counts the `DescribeServices` calls naming the service, starting with the first one
/// after the update: the `after`-th call is the first to show the outcome (0 behaves like 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// The deployment becomes `COMPLETED`, running = desired; older deployments are removed.
    Complete { after: u32 },
    /// The deployment becomes `FAILED` (3 failed tasks) and stays `PRIMARY`: no rollback.
    Fail { after: u32 },
    /// ECS's circuit breaker rolls back: the deployment becomes `FAILED` and `ACTIVE`, the
    /// deployment that was `PRIMARY` before the update becomes `PRIMARY` and `IN_PROGRESS` again
    /// (same id, same `createdAt`), and completes at the next call (the other deployments are
    /// then removed).
    EcsRollsBack { after: u32 },
    /// Like `EcsRollsBack`, but ECS's rollback deployment fails too (`FAILED`, still `PRIMARY`)
    /// at the next call.
    EcsRollbackFails { after: u32 },
    /// Like `EcsRollsBack`, but ECS's rollback stays in progress until
    /// [`Proxy::complete_now`].
    EcsRollbackNever { after: u32 },
    /// The deployment `COMPLETED`, and in the same moment someone else deployed: a new
    /// `PRIMARY` deployment of revision 999 appears `IN_PROGRESS` and ours stays `ACTIVE`,
    /// `COMPLETED`.
    CompleteThenForeign { after: u32 },
    /// Someone else deploys: a new `PRIMARY` deployment of the same family at revision 999
    /// appears `IN_PROGRESS` (this one becomes `ACTIVE`), and completes at the next call.
    Foreign { after: u32 },
    /// Like `Foreign`, with the given task definition ARN.
    ForeignTo { after: u32, task_definition: String },
    /// The deployment disappears; only the previous `PRIMARY` is left, `PRIMARY` again.
    Vanish { after: u32 },
    /// Stays `IN_PROGRESS` forever, running creeping up to desired - 1.
    Never,
}

impl Rollout {
    fn after(&self) -> Option<u32> {
        match self {
            Rollout::Complete { after }
            | Rollout::Fail { after }
            | Rollout::EcsRollsBack { after }
            | Rollout::EcsRollbackFails { after }
            | Rollout::EcsRollbackNever { after }
            | Rollout::CompleteThenForeign { after }
            | Rollout::Foreign { after }
            | Rollout::ForeignTo { after, .. }
            | Rollout::Vanish { after } => Some(*after),
            Rollout::Never => None,
        }
    }
}

impl std::str::FromStr for Rollout {
    type Err = String;

    /// `complete[:N]`, `fail[:N]`, `rollback[:N]`, `foreign[:N[:ARN]]`, `vanish[:N]`, `never`
    /// (N defaults to 1).
    fn from_str(s: &str) -> Result<Rollout, String> {
        let mut parts = s.trim().splitn(3, ':');
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let after = match parts.next() {
            None | Some("") => 1,
            Some(n) => n.parse().map_err(|_| format!("bad step count in {s:?}"))?,
        };
        let rest = parts.next();
        Ok(match (kind.as_str(), rest) {
            ("complete", None) => Rollout::Complete { after },
            ("fail", None) => Rollout::Fail { after },
            ("rollback" | "ecs-rolls-back", None) => Rollout::EcsRollsBack { after },
            ("rollback-fails", None) => Rollout::EcsRollbackFails { after },
            ("rollback-never", None) => Rollout::EcsRollbackNever { after },
            ("complete-then-foreign", None) => Rollout::CompleteThenForeign { after },
            ("foreign", None) => Rollout::Foreign { after },
            ("foreign", Some(arn)) => Rollout::ForeignTo {
                after,
                task_definition: arn.to_owned(),
            },
            ("vanish", None) => Rollout::Vanish { after },
            ("never", None) => Rollout::Never,
            _ => return Err(format!("unknown rollout outcome {s:?}")),
        })
    }
}

/// The rollout script of the newest deployment of a service.
#[derive(Debug)]
struct Script {
    deployment: String,
    /// Id and task definition of the deployment that was `PRIMARY` before the update.
    previous: Option<(String, String)>,
    outcome: Rollout,
    seen: u32,
}

/// ECS's service deployment (ListServiceDeployments / DescribeServiceDeployments) of one
/// deployment of the overlay. The emulator has none (it answers 500), so the proxy keeps them.
#[derive(Debug, Clone)]
struct ServiceDeploymentRecord {
    /// The `ecs-svc/…` id of the deployment it rolls out.
    deployment: String,
    /// `…:service-deployment/<cluster>/<service>/<opaque id>`.
    arn: String,
    /// The service revision it rolls out (`…:service-revision/<cluster>/<service>/<digits>`).
    target_revision: String,
    created: f64,
    updated: f64,
    finished: Option<f64>,
    status: &'static str,
    reason: String,
    requested: i64,
    running: i64,
    failures: i64,
    /// ECS's rollback: its reason and the revision it goes back to.
    rollback: Option<(String, String)>,
    /// Looks at the service while this one was in progress (drives the lifecycle stage).
    steps: usize,
}

impl ServiceDeploymentRecord {
    fn is_open(&self) -> bool {
        matches!(self.status, "PENDING" | "IN_PROGRESS")
    }

    /// StopServiceDeployment accepts these: "You can stop a deployment that is in any of the
    /// following states": PENDING, IN_PROGRESS, STOP_REQUESTED, ROLLBACK_REQUESTED,
    /// ROLLBACK_IN_PROGRESS
    /// (<https://docs.aws.amazon.com/AmazonECS/latest/developerguide/stop-service-deployment.html>).
    fn is_stoppable(&self) -> bool {
        self.is_open() || matches!(self.status, "ROLLBACK_REQUESTED" | "ROLLBACK_IN_PROGRESS")
    }
}

/// A service revision: what one deployment rolls out. ECS makes one per UpdateService that
/// changes the service; a rollback makes none (it goes back to an existing one).
#[derive(Debug, Clone)]
struct RevisionRecord {
    arn: String,
    task_definition: String,
    created: f64,
}

/// The lifecycle stages the proxy walks an ECS blue/green, linear or canary deployment through,
/// one per look, staying in the last until the outcome is due.
fn lifecycle_stages(strategy: &str) -> &'static [&'static str] {
    match strategy {
        "BLUE_GREEN" => &[
            "SCALE_UP",
            "TEST_TRAFFIC_SHIFT",
            "PRODUCTION_TRAFFIC_SHIFT",
            "BAKE_TIME",
        ],
        "LINEAR" | "CANARY" => &["SCALE_UP", "PRODUCTION_TRAFFIC_SHIFT", "BAKE_TIME"],
        _ => &[],
    }
}

#[derive(Debug, Default)]
struct ServiceOverlay {
    /// `serviceArn` and `clusterArn` as the emulator reports them.
    service_arn: String,
    cluster_arn: String,
    /// Oldest first.
    service_deployments: Vec<ServiceDeploymentRecord>,
    /// ECS rollback deployment id → the deployment it rolls back.
    rollback_of: HashMap<String, String>,
    /// Every service revision of the service, oldest first.
    revisions: Vec<RevisionRecord>,
    /// `ecs-svc/…` deployment id → the ARN of the service revision it rolls out.
    revision_of: HashMap<String, String>,
    /// The ARN of the newest service deployment (`currentServiceDeployment`).
    current_service_deployment: Option<String>,
    /// Newest first.
    deployments: Vec<Value>,
    script: Option<Script>,
    /// A deployment (rollback, foreign) that completes at the next step.
    settling: Option<String>,
    /// A deployment (a rollback by ECS) that fails at the next step.
    failing: Option<String>,
}

#[derive(Default)]
struct State {
    upstream: String,
    recorded: Vec<Recorded>,
    faults: Vec<(String, VecDeque<Fault>)>,
    rollouts: VecDeque<Rollout>,
    /// Keyed by `cluster/service` (names, not ARNs).
    overlays: HashMap<String, ServiceOverlay>,
    /// `deploymentConfiguration` as last set by CreateService / UpdateService: the emulator
    /// drops it (and with it the circuit breaker), so the proxy answers with it.
    deployment_configs: HashMap<String, Value>,
    /// Answer deployments without `rolloutState` (as ECS does behind a Classic Load Balancer).
    no_rollout_state: bool,
    /// ListServiceDeployments lists nothing (ECS is late listing a service deployment).
    no_service_deployments_listed: bool,
    /// Task definition ARN → the status ECS reports for it (DELETE_IN_PROGRESS, which the
    /// emulator does not model; INACTIVE).
    td_status: HashMap<String, String>,
    /// Services are answered without `currentServiceDeployment`.
    no_current_service_deployment: bool,
    /// Rollbacks asked for with StopServiceDeployment stay in progress until
    /// [`Proxy::complete_now`] (ECS's rollback takes as long as its tasks take to start).
    hold_requested_rollbacks: bool,
    /// The next UpdateService answer lists no deployments (no PRIMARY).
    no_deployments_in_next_update: bool,
    /// StartBuild's environment overrides by build id: the emulator drops them, AWS shows
    /// them in the build's environment.
    build_env: HashMap<String, Value>,
    /// `buildStatus` overrides by build id: the emulator reports every build SUCCEEDED.
    build_status: HashMap<String, String>,
    /// StartBuild's `idempotencyToken`s, which the emulator ignores: the request and its
    /// answer (once there), for 5 minutes.
    start_tokens: HashMap<String, IdempotentStart>,
    /// Role ARN → its trust policy document (see "Other accounts" below).
    trust: HashMap<String, Value>,
    /// Access key id of credentials STS handed out → (their account, the role's ARN).
    assumed: HashMap<String, (String, String)>,
}

/// A StartBuild taken with an idempotency token: a repeat within its 5 minutes gets the same
/// answer (the same build), waiting for it while the first is still in flight.
struct IdempotentStart {
    request: Value,
    at: std::time::Instant,
    answer: Arc<tokio::sync::Mutex<Option<(StatusCode, HeaderMap, Bytes)>>>,
}

#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// Runs a proxy on `listen` (e.g. `127.0.0.1:4566`) in front of `upstream` until the process
/// ends. For the local demo.
pub async fn serve_forever(listen: &str, upstream: &str) -> std::io::Result<()> {
    let proxy = Proxy::bind(listen, upstream).await?;
    eprintln!("test proxy on {} -> {upstream}", proxy.url);
    std::future::pending::<()>().await;
    drop(proxy);
    Ok(())
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        Proxy::bind("127.0.0.1:0", upstream)
            .await
            .expect("bind the test proxy")
    }

    /// A proxy listening on `listen` (`host:port`; port 0 picks a free one).
    pub async fn bind(listen: &str, upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            ..State::default()
        }));
        let client = reqwest::Client::new();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let client = client.clone();
                        async move {
                            // AWS carries out a request it has received even when the caller
                            // is gone (killed mid-call): the forward, and what the proxy
                            // keeps of its answer (a build's environment), finish in a task
                            // of their own, not in the connection's, which a hang-up drops.
                            let done = tokio::spawn(async move {
                                let slot = Mutex::new(None);
                                let response = handle(state.clone(), client, req, &slot).await;
                                if let Some(i) = slot.into_inner().unwrap() {
                                    if let Some(r) = state.lock().unwrap().recorded.get_mut(i) {
                                        r.answered = tick();
                                    }
                                }
                                response
                            });
                            let response = done.await.unwrap_or_else(|_| {
                                let mut r = Response::new(Full::new(Bytes::from_static(
                                    b"proxy: the forwarding task failed",
                                )));
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            });
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Proxy {
            url,
            state,
            task: Arc::new(task),
        })
    }

    /// The next `faults.len()` calls of `operation` get these faults, in order.
    pub fn script(&self, operation: &str, faults: impl IntoIterator<Item = Fault>) {
        let mut state = self.state.lock().unwrap();
        state
            .faults
            .push((operation.to_owned(), faults.into_iter().collect()));
    }

    /// Faults scripted and not used yet are dropped: every call is forwarded again.
    /// Gives `role_arn` this trust policy document: STS lets a caller assume it only as the
    /// document allows (see "Other accounts").
    pub fn trust_policy(&self, role_arn: &str, policy: Value) {
        self.state
            .lock()
            .unwrap()
            .trust
            .insert(role_arn.to_owned(), policy);
    }

    /// The access key ids STS handed out through the proxy, with the role each is for.
    pub fn assumed_keys(&self) -> HashMap<String, String> {
        self.state
            .lock()
            .unwrap()
            .assumed
            .iter()
            .map(|(key, (_, role))| (key.clone(), role.clone()))
            .collect()
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// The next `times` calls of `operation` fail with this AWS error.
    pub fn fail(&self, operation: &str, times: usize, status: u16, code: &str) {
        self.script(
            operation,
            (0..times).map(|_| Fault::Error {
                status,
                code: code.to_owned(),
            }),
        );
    }

    /// From now on, deployments are shown without `rolloutState`/`rolloutStateReason`, as ECS
    /// shows them for services behind a Classic Load Balancer.
    pub fn hide_rollout_state(&self) {
        self.state.lock().unwrap().no_rollout_state = true;
    }

    /// From now on, ListServiceDeployments lists no service deployment, as ECS may for a while
    /// after one started (DescribeServiceDeployments still finds one by its ARN).
    pub fn unlist_service_deployments(&self) {
        self.state.lock().unwrap().no_service_deployments_listed = true;
    }

    /// From now on ECS reports task definition `arn` with this status (`DELETE_IN_PROGRESS`
    /// after DeleteTaskDefinitions, `INACTIVE`), and refuses UpdateService to it as ECS does:
    /// "You can't use a DELETE_IN_PROGRESS task definition revision to run new tasks or create
    /// new services. You also can't update an existing service to reference a
    /// DELETE_IN_PROGRESS task definition revision"
    /// (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeleteTaskDefinitions.html>).
    pub fn task_definition_status(&self, arn: &str, status: &str) {
        self.state
            .lock()
            .unwrap()
            .td_status
            .insert(arn.to_owned(), status.to_owned());
    }

    /// From now on services are answered without `currentServiceDeployment` (slipway must
    /// find its service deployment through ListServiceDeployments).
    pub fn hide_current_service_deployment(&self) {
        self.state.lock().unwrap().no_current_service_deployment = true;
    }

    /// From now on a rollback asked for with StopServiceDeployment stays
    /// `ROLLBACK_IN_PROGRESS` until [`Proxy::complete_now`] names the deployment it goes back to.
    pub fn hold_requested_rollbacks(&self) {
        self.state.lock().unwrap().hold_requested_rollbacks = true;
    }

    /// The next UpdateService answer lists no deployments, so it has no PRIMARY one (ECS acted
    /// on the request all the same).
    pub fn next_update_without_deployments(&self) {
        self.state.lock().unwrap().no_deployments_in_next_update = true;
    }

    /// The service deployments of a service (ARN, `ecs-svc/…` deployment id, status), oldest
    /// first.
    pub fn service_deployments(
        &self,
        cluster: &str,
        service: &str,
    ) -> Vec<(String, String, String)> {
        let key = service_key(Some(cluster), service);
        self.state
            .lock()
            .unwrap()
            .overlays
            .get(&key)
            .map(|o| {
                o.service_deployments
                    .iter()
                    .map(|r| (r.arn.clone(), r.deployment.clone(), r.status.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every request seen, in order of arrival.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    /// Every operation seen, in order.
    pub fn operations(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .recorded
            .iter()
            .map(|r| r.operation.clone())
            .collect()
    }

    pub fn requests(&self, operation: &str) -> Vec<serde_json::Value> {
        self.state
            .lock()
            .unwrap()
            .recorded
            .iter()
            .filter(|r| r.operation == operation)
            .map(|r| r.body.clone())
            .collect()
    }

    /// The bodies of the `UpdateService` requests that reached the proxy, in order.
    pub fn update_service_calls(&self) -> Vec<serde_json::Value> {
        self.requests("UpdateService")
    }

    /// Queues the outcomes of the next deployments, consumed in order by successive
    /// `UpdateService` calls that start a deployment (on any service). Once the queue is
    /// empty, deployments complete at the first `DescribeServices`.
    pub fn rollouts(&self, outcomes: impl IntoIterator<Item = Rollout>) {
        self.state.lock().unwrap().rollouts.extend(outcomes);
    }

    /// The overlay's current deployment list of a service (newest first; empty if the proxy
    /// has seen no `UpdateService` for it). Cluster and service may be names or ARNs.
    pub fn deployments(&self, cluster: &str, service: &str) -> Vec<serde_json::Value> {
        let key = service_key(Some(cluster), service);
        self.state
            .lock()
            .unwrap()
            .overlays
            .get(&key)
            .map(|o| o.deployments.clone())
            .unwrap_or_default()
    }

    /// From now on CodeBuild reports build `id` (`project:uuid`) with these environment
    /// variables (name, value), as if it had been started with them.
    pub fn build_env(&self, id: &str, vars: &[(&str, &str)]) {
        let vars: Vec<Value> = vars
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v, "type": "PLAINTEXT" }))
            .collect();
        self.state
            .lock()
            .unwrap()
            .build_env
            .insert(id.to_owned(), Value::Array(vars));
    }

    /// From now on CodeBuild reports build `id` (`project:uuid`) with this status.
    pub fn build_status(&self, id: &str, status: &str) {
        self.state
            .lock()
            .unwrap()
            .build_status
            .insert(id.to_owned(), status.to_owned());
    }

    /// ECS finishes deployment `id` now (as it would while slipway is down).
    pub fn complete_now(&self, cluster: &str, service: &str, id: &str) {
        self.end_now(cluster, service, |overlay| overlay.complete(id, now()));
    }

    /// ECS deployment `id` of a service fails now, as [`Rollout::Fail`] makes it fail; the
    /// next scripted outcome waits for the next `UpdateService`.
    pub fn fail_now(&self, cluster: &str, service: &str, id: &str) {
        self.end_now(cluster, service, |overlay| overlay.fail(id, now()));
    }

    /// Ends a service's rollout with `end`, in place of its script.
    fn end_now(&self, cluster: &str, service: &str, end: impl FnOnce(&mut ServiceOverlay)) {
        let key = service_key(Some(cluster), service);
        let mut state = self.state.lock().unwrap();
        let overlay = state
            .overlays
            .get_mut(&key)
            .expect("a service the proxy has seen");
        overlay.script = None;
        end(overlay);
    }
}

fn next_fault(state: &Mutex<State>, operation: &str) -> Option<Fault> {
    let mut state = state.lock().unwrap();
    for (op, queue) in state.faults.iter_mut() {
        if op == operation {
            if let Some(f) = queue.pop_front() {
                return Some(f);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Helpers for the overlay.

fn last_segment(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// `cluster/service` by name; the cluster defaults to `default`, as in ECS.
fn service_key(cluster: Option<&str>, service: &str) -> String {
    let cluster = cluster.filter(|c| !c.is_empty()).unwrap_or("default");
    format!("{}/{}", last_segment(cluster), last_segment(service))
}

fn now() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ms as f64 / 1000.0
}

/// A random number (a fresh hasher per call, fed a counter and the time).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// `ecs-svc/` and 19 random digits, like ECS.
fn deployment_id() -> String {
    format!("ecs-svc/{:019}", random_u64() % 10_000_000_000_000_000_000)
}

/// The opaque id that ends a service deployment's ARN. The API reference's example is
/// `NCWGC2ZR-taawPAYrIaU5` (DescribeServiceDeployments) and its StopServiceDeployment example
/// `…:service-deployment/MyCluster/MyService/r9i43YFjvgF_xlg7m2eJ1r`: nothing in it relates to
/// the `ecs-svc/…` id of the deployment it rolls out
/// (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DescribeServiceDeployments.html>).
fn service_deployment_id() -> String {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    let pick = |alphabet: &[u8], n: usize| -> String {
        let mut r = random_u64();
        (0..n)
            .map(|i| {
                if i % 8 == 7 {
                    r = random_u64();
                }
                let c = alphabet[(r % alphabet.len() as u64) as usize] as char;
                r /= alphabet.len() as u64;
                c
            })
            .collect()
    };
    format!("{}-{}", pick(UPPER, 8), pick(ANY, 12))
}

/// The numeric id that ends a service revision's ARN: ECS's own number, unrelated to the
/// deployment's `ecs-svc/…` digits
/// (<https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-revision.html>).
fn service_revision_id() -> String {
    format!("{:019}", random_u64() % 10_000_000_000_000_000_000)
}

/// The same family at revision 999.
fn foreign_revision(task_definition: &str) -> String {
    match task_definition.rsplit_once(':') {
        Some((family, rev)) if !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{family}:999")
        }
        _ => format!("{task_definition}:999"),
    }
}

fn new_deployment(id: &str, status: &str, task_definition: &str, desired: i64, t: f64) -> Value {
    json!({
        "id": id,
        "status": status,
        "taskDefinition": task_definition,
        "desiredCount": desired,
        "pendingCount": 0,
        "runningCount": 0,
        "failedTasks": 0,
        "launchType": "FARGATE",
        "createdAt": t,
        "updatedAt": t,
        "rolloutState": "IN_PROGRESS",
        "rolloutStateReason": format!("ECS deployment {id} in progress."),
    })
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

fn mark_completed(d: &mut Value, t: f64) {
    let id = str_of(d, "id").to_owned();
    d["status"] = json!("PRIMARY");
    d["rolloutState"] = json!("COMPLETED");
    d["rolloutStateReason"] = json!(format!("ECS deployment {id} completed."));
    d["runningCount"] = d["desiredCount"].clone();
    d["pendingCount"] = json!(0);
    d["updatedAt"] = json!(t);
}

fn mark_failed(d: &mut Value, t: f64) {
    d["rolloutState"] = json!("FAILED");
    d["rolloutStateReason"] = json!("ECS deployment circuit breaker: tasks failed to start.");
    d["failedTasks"] = json!(3);
    d["runningCount"] = json!(0);
    d["pendingCount"] = json!(0);
    d["updatedAt"] = json!(t);
}

impl ServiceOverlay {
    /// The ARN of the service revision deployment `deployment` rolls out.
    fn revision_arn(&self, deployment: &str) -> String {
        self.revision_of
            .get(deployment)
            .cloned()
            .unwrap_or_default()
    }

    /// A new service revision of `task_definition` for deployment `deployment`:
    /// `arn:aws:ecs:…:service-revision/<cluster>/<service>/<ECS's own number>`.
    fn new_revision(&mut self, deployment: &str, task_definition: &str, t: f64) -> String {
        let arn = format!(
            "{}/{}",
            self.service_arn
                .replacen(":service/", ":service-revision/", 1),
            service_revision_id()
        );
        self.revisions.push(RevisionRecord {
            arn: arn.clone(),
            task_definition: task_definition.to_owned(),
            created: t,
        });
        self.revision_of.insert(deployment.to_owned(), arn.clone());
        arn
    }

    fn sd_mut(&mut self, deployment: &str) -> Option<&mut ServiceDeploymentRecord> {
        self.service_deployments
            .iter_mut()
            .find(|r| r.deployment == deployment)
    }

    /// A new service deployment for `deployment` (to a new service revision of
    /// `task_definition`); the open ones are stopped (replaced).
    fn open_service_deployment(
        &mut self,
        deployment: &str,
        task_definition: &str,
        desired: i64,
        t: f64,
    ) {
        let target_revision = self.new_revision(deployment, task_definition, t);
        for r in self.service_deployments.iter_mut().filter(|r| r.is_open()) {
            r.status = "STOPPED";
            r.reason = "A newer service deployment replaced this one.".to_owned();
            r.finished = Some(t);
            r.updated = t;
        }
        let arn = format!(
            "{}/{}",
            self.service_arn
                .replacen(":service/", ":service-deployment/", 1),
            service_deployment_id()
        );
        self.current_service_deployment = Some(arn.clone());
        self.service_deployments.push(ServiceDeploymentRecord {
            deployment: deployment.to_owned(),
            arn,
            target_revision,
            created: t,
            updated: t,
            finished: None,
            status: "IN_PROGRESS",
            reason: "The service deployment is in progress.".to_owned(),
            requested: desired,
            running: 0,
            failures: 0,
            rollback: None,
            steps: 0,
        });
    }

    /// Ends the service deployment of `deployment` (or the one an ECS rollback belongs to).
    fn end_service_deployment(&mut self, deployment: &str, status: &'static str, reason: &str) {
        let t = now();
        let counts = self
            .deployments
            .iter()
            .find(|d| d["id"] == deployment)
            .map(|d| {
                (
                    d["runningCount"].as_i64().unwrap_or(0),
                    d["failedTasks"].as_i64().unwrap_or(0),
                )
            });
        if let Some(r) = self.sd_mut(deployment) {
            r.status = status;
            r.reason = reason.to_owned();
            r.finished = Some(t);
            r.updated = t;
            if let Some((running, failures)) = counts {
                r.running = running;
                r.failures = failures;
            }
        }
    }

    fn primary(&self) -> Option<&Value> {
        self.deployments.iter().find(|d| d["status"] == "PRIMARY")
    }

    fn primary_task_definition(&self) -> Option<String> {
        self.primary()
            .and_then(|d| d["taskDefinition"].as_str())
            .map(str::to_owned)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.deployments.iter_mut().find(|d| d["id"] == id)
    }

    /// Deployment `id` fails ([`Rollout::Fail`]): `FAILED`, still `PRIMARY`, and its service
    /// deployment stopped by the circuit breaker.
    fn fail(&mut self, id: &str, t: f64) {
        if let Some(d) = self.find_mut(id) {
            mark_failed(d, t);
        }
        self.end_service_deployment(
            id,
            "STOPPED",
            "ECS deployment circuit breaker: tasks failed to start.",
        );
    }

    /// `id` completes; the others are removed, as ECS does once the new tasks are steady.
    fn complete(&mut self, id: &str, t: f64) {
        self.deployments.retain(|d| d["id"] == id);
        if let Some(d) = self.find_mut(id) {
            mark_completed(d, t);
        }
        match self.rollback_of.remove(id) {
            Some(original) => {
                let running = self.find_mut(id).and_then(|d| d["runningCount"].as_i64());
                self.end_service_deployment(
                    &original,
                    "ROLLBACK_SUCCESSFUL",
                    "ECS rolled the service back to the previous service revision.",
                );
                if let (Some(r), Some(running)) = (self.sd_mut(&original), running) {
                    r.running = running;
                }
            }
            None => self.end_service_deployment(
                id,
                "SUCCESSFUL",
                "The service deployment completed successfully.",
            ),
        }
    }

    /// Puts a new `PRIMARY` deployment in front, with its own service revision and service
    /// deployment; the others become `ACTIVE`.
    fn push_primary(&mut self, task_definition: &str, desired: i64, reason: Option<String>) {
        let t = now();
        for d in self.deployments.iter_mut() {
            if d["status"] == "PRIMARY" {
                d["status"] = json!("ACTIVE");
                d["updatedAt"] = json!(t);
            }
        }
        let id = deployment_id();
        let mut d = new_deployment(&id, "PRIMARY", task_definition, desired, t);
        if let Some(reason) = &reason {
            d["rolloutStateReason"] = json!(reason);
        }
        self.deployments.insert(0, d);
        self.open_service_deployment(&id, task_definition, desired, t);
    }

    /// ECS rolls deployment `failed` back to deployment `to` (the most recent one that
    /// completed). ECS makes no new deployment and no new service revision for it: "the
    /// deployment that was previously in the COMPLETED state" moves to IN_PROGRESS (keeping its
    /// `createdAt`) and becomes `PRIMARY`; the failed one's service deployment goes
    /// ROLLBACK_IN_PROGRESS, its `rollback.serviceRevisionArn` naming the revision it goes back
    /// to (<https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deployment-circuit-breaker.html>,
    /// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Rollback.html>).
    /// Returns the task definition the service goes back to.
    fn roll_back_to(&mut self, failed: &str, to: &str, reason: String) -> Option<String> {
        let t = now();
        let td = self
            .deployments
            .iter()
            .find(|d| d["id"] == to)
            .map(|d| str_of(d, "taskDefinition").to_owned())?;
        for d in self.deployments.iter_mut() {
            if d["id"] == failed {
                d["status"] = json!("ACTIVE");
                d["updatedAt"] = json!(t);
            } else if d["id"] == to {
                d["status"] = json!("PRIMARY");
                d["rolloutState"] = json!("IN_PROGRESS");
                d["rolloutStateReason"] = json!(reason);
                d["updatedAt"] = json!(t);
            }
        }
        let revision = self.revision_arn(to);
        self.rollback_of.insert(to.to_owned(), failed.to_owned());
        if let Some(r) = self.sd_mut(failed) {
            r.status = "ROLLBACK_IN_PROGRESS";
            r.reason = reason.clone();
            r.updated = t;
            r.rollback = Some((reason, revision));
        }
        self.settling = None;
        self.failing = None;
        Some(td)
    }

    /// StopServiceDeployment(ROLLBACK) of the service deployment `arn`: "rolls back the service
    /// deployment to the previous service revision"
    /// (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_StopServiceDeployment.html>).
    /// Returns the task definition the service goes back to, or the AWS error.
    fn stop_service_deployment(
        &mut self,
        arn: &str,
    ) -> Result<Option<String>, (u16, &'static str)> {
        let r = self
            .service_deployments
            .iter()
            .find(|r| r.arn == arn)
            .ok_or((400, "ServiceDeploymentNotFoundException"))?;
        if !r.is_stoppable() {
            return Err((400, "ConflictException"));
        }
        if !r.is_open() {
            // Already rolling back: ECS "continues the rollback operation".
            return Ok(None);
        }
        let failed = r.deployment.clone();
        // The previous service revision: the deployment that was PRIMARY before this one.
        let to = match &self.script {
            Some(script) if script.deployment == failed => {
                script.previous.as_ref().map(|(id, _)| id.clone())
            }
            _ => None,
        }
        .or_else(|| {
            self.deployments
                .iter()
                .find(|d| d["id"] != failed.as_str())
                .map(|d| str_of(d, "id").to_owned())
        })
        .ok_or((400, "ConflictException"))?;
        if self.script.as_ref().is_some_and(|s| s.deployment == failed) {
            self.script = None;
        }
        let td = self.roll_back_to(
            &failed,
            &to,
            "Service deployment rolled back because StopServiceDeployment was requested."
                .to_owned(),
        );
        // The rollback completes at the next step.
        self.settling = Some(to);
        Ok(td)
    }

    fn newest_id(&self) -> String {
        self.deployments
            .first()
            .map(|d| str_of(d, "id").to_owned())
            .unwrap_or_default()
    }

    /// One `DescribeServices` step. Returns the task definition the emulator should be moved
    /// to when the `PRIMARY` deployment changed on its own.
    fn step(&mut self) -> Option<String> {
        let t = now();
        if let Some(id) = self.settling.take() {
            self.complete(&id, t);
            return None;
        }
        if let Some(id) = self.failing.take() {
            if let Some(d) = self.find_mut(&id) {
                mark_failed(d, t);
                d["rolloutStateReason"] =
                    json!("ECS deployment circuit breaker: the rollback's tasks failed to start.");
            }
            if let Some(original) = self.rollback_of.remove(&id) {
                self.end_service_deployment(
                    &original,
                    "ROLLBACK_FAILED",
                    "ECS deployment circuit breaker: the rollback's tasks failed to start.",
                );
            }
            return None;
        }
        let script = self.script.as_mut()?;
        script.seen += 1;
        let seen = script.seen;
        let id = script.deployment.clone();
        let due = script
            .outcome
            .after()
            .is_some_and(|after| seen >= after.max(1));
        if let Some(r) = self.sd_mut(&id) {
            if r.is_open() {
                r.steps += 1;
            }
        }
        if !due {
            if let Some(d) = self.find_mut(&id) {
                if d["rolloutState"] == "IN_PROGRESS" {
                    let desired = d["desiredCount"].as_i64().unwrap_or(0);
                    let running = (i64::from(seen)).min(desired - 1).max(0);
                    d["runningCount"] = json!(running);
                    d["updatedAt"] = json!(t);
                }
            }
            return None;
        }
        let script = self.script.take()?;
        let desired = self
            .deployments
            .iter()
            .find(|d| d["id"] == id.as_str())
            .and_then(|d| d["desiredCount"].as_i64())
            .unwrap_or(0);
        match script.outcome {
            Rollout::Complete { .. } => {
                self.complete(&id, t);
                None
            }
            Rollout::Fail { .. } => {
                self.fail(&id, t);
                None
            }
            Rollout::EcsRollsBack { .. }
            | Rollout::EcsRollbackFails { .. }
            | Rollout::EcsRollbackNever { .. } => {
                if let Some(d) = self.find_mut(&id) {
                    mark_failed(d, t);
                }
                let (previous_id, previous_td) = script.previous?;
                let moved = self.roll_back_to(
                    &id,
                    &previous_id,
                    format!(
                        "ECS deployment circuit breaker: rolling back to deploymentId {previous_id}."
                    ),
                );
                // ECS's rollback (the earlier deployment again) completes, or fails too, at the
                // next step.
                match script.outcome {
                    Rollout::EcsRollbackFails { .. } => self.failing = Some(previous_id),
                    Rollout::EcsRollbackNever { .. } => {}
                    _ => self.settling = Some(previous_id),
                }
                Some(moved.unwrap_or(previous_td))
            }
            Rollout::CompleteThenForeign { .. } => {
                let ours = self
                    .deployments
                    .iter()
                    .find(|d| d["id"] == id.as_str())
                    .map(|d| str_of(d, "taskDefinition").to_owned())
                    .unwrap_or_default();
                self.complete(&id, t);
                let td = foreign_revision(&ours);
                self.push_primary(&td, desired, None);
                self.settling = Some(self.newest_id());
                Some(td)
            }
            Rollout::Foreign { .. } | Rollout::ForeignTo { .. } => {
                let td = match script.outcome {
                    Rollout::ForeignTo {
                        task_definition, ..
                    } => task_definition,
                    _ => {
                        let ours = self
                            .deployments
                            .iter()
                            .find(|d| d["id"] == id.as_str())
                            .map(|d| str_of(d, "taskDefinition").to_owned())
                            .unwrap_or_default();
                        foreign_revision(&ours)
                    }
                };
                self.push_primary(&td, desired, None);
                self.settling = Some(self.newest_id());
                Some(td)
            }
            Rollout::Vanish { .. } => {
                self.end_service_deployment(&id, "STOPPED", "The deployment disappeared.");
                let (previous_id, previous_td) = script.previous?;
                self.deployments.retain(|d| d["id"] == previous_id.as_str());
                if let Some(d) = self.find_mut(&previous_id) {
                    d["status"] = json!("PRIMARY");
                    d["updatedAt"] = json!(t);
                }
                Some(previous_td)
            }
            Rollout::Never => None,
        }
    }

    /// Rewrites a service object of an ECS answer.
    fn rewrite(&self, service: &mut Value) {
        service["deployments"] = Value::Array(self.deployments.clone());
        // "The ARN of the current service deployment"
        // (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Service.html>).
        if let Some(arn) = &self.current_service_deployment {
            service["currentServiceDeployment"] = json!(arn);
        }
        if let Some(td) = self.primary_task_definition() {
            service["taskDefinition"] = json!(td);
        }
        let sum = |field: &str| -> i64 {
            self.deployments
                .iter()
                .filter_map(|d| d[field].as_i64())
                .sum()
        };
        service["runningCount"] = json!(sum("runningCount"));
        service["pendingCount"] = json!(sum("pendingCount"));
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding.

/// An answer of the emulator.
struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Option<Value> {
        if self.status.is_success() {
            serde_json::from_slice(&self.body).ok()
        } else {
            None
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut out = Response::builder().status(self.status);
        for (name, value) in self.headers {
            out = out.header(name, value);
        }
        out.body(Full::new(self.body)).unwrap()
    }

    fn with_body(mut self, body: &Value) -> Response<Full<Bytes>> {
        self.body = Bytes::from(body.to_string());
        self.into_response()
    }
}

struct Ctx {
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    upstream: String,
}

impl Ctx {
    async fn forward(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut forward = self
            .client
            .request(method.clone(), format!("{}{path_and_query}", self.upstream));
        for (name, value) in headers.iter() {
            if name != "host" && name != "content-length" {
                forward = forward.header(name, value);
            }
        }
        let resp = forward.body(body).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .filter(|(name, _)| *name != "content-length" && *name != "transfer-encoding")
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// An ECS call of the proxy's own, with the caller's headers (region, credentials).
    async fn ecs(&self, headers: &HeaderMap, operation: &str, body: Value) -> Option<Value> {
        let mut own = headers.clone();
        own.insert(
            "x-amz-target",
            HeaderValue::from_str(&format!("{ECS_TARGET_PREFIX}{operation}")).ok()?,
        );
        own.insert("content-type", HeaderValue::from_static(AMZ_JSON));
        self.forward(&Method::POST, "/", &own, Bytes::from(body.to_string()))
            .await
            .ok()?
            .json()
    }

    /// The ARN of a task definition given as ARN, `family:revision` or family.
    async fn resolve_task_definition(&self, headers: &HeaderMap, td: &str) -> String {
        if td.starts_with("arn:") {
            return td.to_owned();
        }
        self.ecs(
            headers,
            "DescribeTaskDefinition",
            json!({ "taskDefinition": td }),
        )
        .await
        .and_then(|v| {
            v["taskDefinition"]["taskDefinitionArn"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| td.to_owned())
    }

    /// The deployment a service runs before the first update the proxy sees.
    async fn baseline(
        &self,
        headers: &HeaderMap,
        cluster: Option<&str>,
        service: &str,
    ) -> Option<Value> {
        let mut request = json!({ "services": [service] });
        if let Some(cluster) = cluster {
            request["cluster"] = json!(cluster);
        }
        let answer = self.ecs(headers, "DescribeServices", request).await?;
        let svc = answer["services"].get(0)?;
        let td = self
            .resolve_task_definition(headers, svc["taskDefinition"].as_str()?)
            .await;
        Some(baseline_from(svc, &td))
    }
}

/// A `PRIMARY`, `COMPLETED` deployment of `td` made from the emulator's view of a service.
fn baseline_from(service: &Value, td: &str) -> Value {
    let moto = service["deployments"]
        .get(0)
        .cloned()
        .unwrap_or(Value::Null);
    let id = moto["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(deployment_id);
    let created = moto["createdAt"]
        .as_f64()
        .or_else(|| service["createdAt"].as_f64())
        .unwrap_or_else(now);
    let desired = service["desiredCount"].as_i64().unwrap_or(0);
    let mut d = new_deployment(&id, "PRIMARY", td, desired, created);
    mark_completed(&mut d, created);
    d
}

fn strip_current_service_deployment(service: &mut Value) {
    if let Some(service) = service.as_object_mut() {
        service.remove("currentServiceDeployment");
    }
}

fn strip_rollout_state(service: &mut Value) {
    for d in service["deployments"].as_array_mut().into_iter().flatten() {
        if let Some(d) = d.as_object_mut() {
            d.remove("rolloutState");
            d.remove("rolloutStateReason");
        }
    }
}

/// An answer made by the proxy itself (the emulator lacks the operation).
async fn json_response(body: &Value, delay: Option<Duration>) -> Response<Full<Bytes>> {
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    Response::builder()
        .status(200)
        .header("content-type", AMZ_JSON)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn text_response(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    req: Request<Incoming>,
    slot: &Mutex<Option<usize>>,
) -> Response<Full<Bytes>> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let is_ecs = target.starts_with(ECS_TARGET_PREFIX);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // The query protocol (STS) names its operation in the form body's `Action`.
    let form: HashMap<String, String> = if target.is_empty() {
        serde_urlencoded::from_bytes(&body).unwrap_or_default()
    } else {
        HashMap::new()
    };
    let operation = match form.get("Action") {
        Some(action) => action.clone(),
        None => target.rsplit('.').next().unwrap_or("").to_owned(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    if parts.uri.path().starts_with("/_proxy/") {
        return control(&state, &parts.method, parts.uri.path(), &body);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // `Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request, …`
    // (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html).
    let caller = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("Credential="))
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    let upstream = {
        let mut s = state.lock().unwrap();
        s.recorded.push(Recorded {
            operation: operation.clone(),
            body: if form.is_empty() {
                request.clone()
            } else {
                json!(form)
            },
            arrived: tick(),
            answered: u64::MAX,
            caller: caller.clone(),
        });
        *slot.lock().unwrap() = Some(s.recorded.len() - 1);
        s.upstream.clone()
    };
    let mut delay_answer = None;
    match next_fault(&state, &operation) {
        Some(Fault::Error { status, code }) => {
            let payload =
                json!({ "__type": code, "message": format!("injected by the test proxy: {code}") });
            return Response::builder()
                .status(status)
                .header("content-type", AMZ_JSON)
                .header("x-amzn-errortype", code)
                .body(Full::new(Bytes::from(payload.to_string())))
                .unwrap();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::DelayAnswer(d)) => delay_answer = Some(d),
        None => {}
    }
    if is_ecs && operation == "UpdateService" {
        if let Some(td) = request["taskDefinition"].as_str() {
            let refused = state
                .lock()
                .unwrap()
                .td_status
                .get(td)
                .filter(|st| st.as_str() != "ACTIVE")
                .cloned();
            if let Some(status) = refused {
                return aws_error(
                    400,
                    "ClientException",
                    &format!("The task definition {td} is {status}: it cannot be deployed."),
                );
            }
        }
    }
    // CodeBuild's StartBuild `idempotencyToken`: "valid for 5 minutes. If you repeat the
    // StartBuild request with the same token, but change a parameter, CodeBuild returns a
    // parameter mismatch error"; the same request again is the same build
    // (https://docs.aws.amazon.com/codebuild/latest/APIReference/API_StartBuild.html).
    let mut idempotent = None;
    if target.starts_with("CodeBuild_") && operation == "StartBuild" {
        if let Some(token) = request["idempotencyToken"].as_str() {
            let (earlier, mine) = {
                let mut s = state.lock().unwrap();
                match s.start_tokens.get(token) {
                    Some(e) if e.at.elapsed() < Duration::from_secs(300) => {
                        (Some((e.request.clone(), e.answer.clone())), None)
                    }
                    _ => {
                        let answer = Arc::new(tokio::sync::Mutex::new(None));
                        let held = answer.clone().try_lock_owned().expect("a new lock");
                        s.start_tokens.insert(
                            token.to_owned(),
                            IdempotentStart {
                                request: request.clone(),
                                at: std::time::Instant::now(),
                                answer,
                            },
                        );
                        (None, Some(held))
                    }
                }
            };
            if let Some((first_request, answer)) = earlier {
                if first_request != request {
                    return aws_error(
                        400,
                        "InvalidInputException",
                        "Idempotency token parameter mismatch",
                    );
                }
                // The first one's answer, once it has one (a first that failed: forward).
                if let Some((status, headers, body)) = answer.lock().await.clone() {
                    if status.is_success() {
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = status;
                        *response.headers_mut() = headers;
                        return response;
                    }
                }
            }
            idempotent = mine;
        }
    }
    let ctx = Ctx {
        state,
        client,
        upstream,
    };
    let headers = &parts.headers;
    if operation == "AssumeRole" && !form.is_empty() {
        return assume_role(
            &ctx,
            &parts.method,
            &path_and_query,
            headers,
            &form,
            &caller,
            body,
        )
        .await;
    }
    if target.starts_with(ECR_TARGET_PREFIX) {
        if let Some(refused) = cross_account_ecr(&ctx, headers, &operation, &request, &caller).await
        {
            return match refused {
                Ok(headers) => match ctx
                    .forward(&parts.method, &path_and_query, &headers, body)
                    .await
                {
                    Ok(answer) => answer.into_response(),
                    Err(e) => text_response(502, format!("proxy: {e}")),
                },
                Err(response) => response,
            };
        }
    }
    let looks_at = if is_ecs && operation == "DescribeServices" {
        let cluster = request["cluster"].as_str();
        request["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| service_key(cluster, s))
            .collect()
    } else if is_ecs && operation == "DescribeServiceDeployments" {
        keys_of_service_deployments(&ctx.state, &request)
    } else {
        BTreeSet::new()
    };
    if !looks_at.is_empty() {
        // Advance the rollouts of the known services looked at, before answering.
        let keys = looks_at;
        let mut moves = vec![];
        {
            let mut s = ctx.state.lock().unwrap();
            for key in keys {
                if let Some(overlay) = s.overlays.get_mut(&key) {
                    if let Some(td) = overlay.step() {
                        moves.push((key, td));
                    }
                }
            }
        }
        for (key, td) in moves {
            let (cluster, service) = key.split_once('/').unwrap_or(("default", &key));
            let _ = ctx
                .ecs(
                    headers,
                    "UpdateService",
                    json!({ "cluster": cluster, "service": service, "taskDefinition": td }),
                )
                .await;
        }
    }
    if is_ecs && operation == "ListServiceDeployments" {
        return match list_service_deployments(&ctx.state, &request) {
            Ok(out) => json_response(&out, delay_answer).await,
            Err(e) => aws_error(400, "InvalidParameterException", &e),
        };
    }
    if is_ecs && operation == "DescribeServiceRevisions" {
        return match describe_service_revisions(&ctx.state, &request) {
            Ok(out) => json_response(&out, delay_answer).await,
            Err(e) => aws_error(400, "InvalidParameterException", &e),
        };
    }
    if is_ecs && operation == "StopServiceDeployment" {
        let (answer, moved) = stop_service_deployment(&ctx.state, &request);
        if let Some((key, td)) = moved {
            let (cluster, service) = key.split_once('/').unwrap_or(("default", &key));
            let _ = ctx
                .ecs(
                    headers,
                    "UpdateService",
                    json!({ "cluster": cluster, "service": service, "taskDefinition": td }),
                )
                .await;
        }
        return match answer {
            Ok(out) => json_response(&out, delay_answer).await,
            Err((status, code)) => aws_error(status, code, "refused by the test proxy's ECS"),
        };
    }
    if is_ecs && operation == "DescribeServiceDeployments" {
        return json_response(
            &describe_service_deployments(&ctx.state, &request),
            delay_answer,
        )
        .await;
    }
    if is_ecs && (operation == "CreateService" || operation == "UpdateService") {
        if let Some(config) = request.get("deploymentConfiguration") {
            let name = request["serviceName"]
                .as_str()
                .or(request["service"].as_str())
                .unwrap_or("");
            let key = service_key(request["cluster"].as_str(), name);
            ctx.state
                .lock()
                .unwrap()
                .deployment_configs
                .insert(key, config.clone());
        }
    }
    let baseline = if is_ecs && operation == "UpdateService" && starts_deployment(&request) {
        let cluster = request["cluster"].as_str();
        let service = request["service"].as_str().unwrap_or("");
        let key = service_key(cluster, service);
        let known = ctx.state.lock().unwrap().overlays.contains_key(&key);
        if known {
            None
        } else {
            ctx.baseline(headers, cluster, service).await
        }
    } else {
        None
    };
    let answer = match ctx
        .forward(&parts.method, &path_and_query, headers, body)
        .await
    {
        Ok(answer) => answer,
        Err(e) => return text_response(502, format!("proxy: {e}")),
    };
    if path_and_query.starts_with("/moto-api/reset") && answer.status.is_success() {
        ctx.state.lock().unwrap().overlays.clear();
    }
    if target.starts_with("CodeBuild_") {
        // What AWS did is recorded before the answer is held back.
        let response = codebuild_answer(&ctx.state, &operation, &request, answer);
        let response = match idempotent.take() {
            Some(mut first) => {
                let (parts, body) = response.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                *first = Some((parts.status, parts.headers.clone(), bytes.clone()));
                Response::from_parts(parts, Full::new(bytes))
            }
            None => response,
        };
        if let Some(d) = delay_answer {
            tokio::time::sleep(d).await;
        }
        return response;
    }
    if target == "AmazonSQS.ReceiveMessage" {
        if let Some(d) = delay_answer {
            tokio::time::sleep(d).await;
        }
        return sqs_answer(&request, answer);
    }
    if !is_ecs {
        if let Some(d) = delay_answer {
            tokio::time::sleep(d).await;
        }
        return answer.into_response();
    }
    // For ECS too, what AWS did (the overlay's deployments) is recorded before the answer is
    // held back: the caller may die before it hears it, as with a lost answer.
    let response = ecs_answer(&ctx, headers, &operation, &request, baseline, answer).await;
    if let Some(d) = delay_answer {
        tokio::time::sleep(d).await;
    }
    response
}

async fn ecs_answer(
    ctx: &Ctx,
    headers: &HeaderMap,
    operation: &str,
    request: &Value,
    baseline: Option<Value>,
    answer: Answer,
) -> Response<Full<Bytes>> {
    let Some(mut out) = answer.json() else {
        return answer.into_response();
    };
    {
        let s = ctx.state.lock().unwrap();
        let fill = |service: &mut Value| {
            let key = service_key(
                service["clusterArn"].as_str(),
                service["serviceName"].as_str().unwrap_or(""),
            );
            if let Some(config) = s.deployment_configs.get(&key) {
                service["deploymentConfiguration"] = config.clone();
            }
        };
        match operation {
            "CreateService" | "UpdateService" => fill(&mut out["service"]),
            "DescribeServices" => out["services"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .for_each(fill),
            _ => {}
        }
    }
    match operation {
        "CreateService" => {}
        "DescribeTaskDefinition" => {
            let s = ctx.state.lock().unwrap();
            let arn = str_of(&out["taskDefinition"], "taskDefinitionArn").to_owned();
            match s.td_status.get(&arn) {
                Some(status) => out["taskDefinition"]["status"] = json!(status),
                None => return answer.into_response(),
            }
        }
        "UpdateService" => {
            let key = service_key(
                request["cluster"].as_str(),
                request["service"].as_str().unwrap_or(""),
            );
            let service = &mut out["service"];
            let td = match request["taskDefinition"].as_str() {
                Some(_) => {
                    let moto_td = service["taskDefinition"].as_str().unwrap_or("").to_owned();
                    Some(ctx.resolve_task_definition(headers, &moto_td).await)
                }
                None => None,
            };
            let desired = service["desiredCount"].as_i64().unwrap_or(0);
            let mut s = ctx.state.lock().unwrap();
            if starts_deployment(request) {
                let outcome = s
                    .rollouts
                    .pop_front()
                    .unwrap_or(Rollout::Complete { after: 1 });
                let overlay = s.overlays.entry(key.clone()).or_default();
                overlay.service_arn = str_of(service, "serviceArn").to_owned();
                overlay.cluster_arn = str_of(service, "clusterArn").to_owned();
                if overlay.deployments.is_empty() {
                    let base = baseline.unwrap_or_else(|| {
                        let moto_td = service["deployments"][0]["taskDefinition"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        baseline_from(service, &moto_td)
                    });
                    let id = str_of(&base, "id").to_owned();
                    let base_td = str_of(&base, "taskDefinition").to_owned();
                    let created = base["createdAt"].as_f64().unwrap_or_else(now);
                    let desired = base["desiredCount"].as_i64().unwrap_or(0);
                    overlay.deployments.push(base);
                    overlay.open_service_deployment(&id, &base_td, desired, created);
                    overlay.end_service_deployment(
                        &id,
                        "SUCCESSFUL",
                        "The service deployment completed successfully.",
                    );
                }
                let previous = overlay.primary().map(|d| {
                    (
                        str_of(d, "id").to_owned(),
                        str_of(d, "taskDefinition").to_owned(),
                    )
                });
                let td = td
                    .or_else(|| overlay.primary_task_definition())
                    .unwrap_or_default();
                overlay.push_primary(&td, desired, None);
                overlay.script = Some(Script {
                    deployment: overlay.newest_id(),
                    previous,
                    outcome,
                    seen: 0,
                });
                overlay.settling = None;
            } else if let Some(overlay) = s.overlays.get_mut(&key) {
                let t = now();
                if let Some(primary) = overlay
                    .deployments
                    .iter_mut()
                    .find(|d| d["status"] == "PRIMARY")
                {
                    primary["desiredCount"] = json!(desired);
                    if primary["rolloutState"] == "COMPLETED" {
                        primary["runningCount"] = json!(desired);
                    }
                    primary["updatedAt"] = json!(t);
                }
            }
            if let Some(overlay) = s.overlays.get(&key) {
                overlay.rewrite(service);
            }
            if s.no_rollout_state {
                strip_rollout_state(service);
            }
            if s.no_current_service_deployment {
                strip_current_service_deployment(service);
            }
            if std::mem::take(&mut s.no_deployments_in_next_update) {
                service["deployments"] = json!([]);
            }
        }
        "DescribeServices" => {
            let s = ctx.state.lock().unwrap();
            if let Some(services) = out["services"].as_array_mut() {
                for service in services {
                    let key = service_key(
                        service["clusterArn"].as_str(),
                        service["serviceName"].as_str().unwrap_or(""),
                    );
                    if let Some(overlay) = s.overlays.get(&key) {
                        overlay.rewrite(service);
                    }
                    if s.no_rollout_state {
                        strip_rollout_state(service);
                    }
                    if s.no_current_service_deployment {
                        strip_current_service_deployment(service);
                    }
                }
            }
        }
        "DeleteService" => {
            let key = service_key(
                request["cluster"].as_str(),
                request["service"].as_str().unwrap_or(""),
            );
            ctx.state.lock().unwrap().overlays.remove(&key);
            return answer.into_response();
        }
        _ => return answer.into_response(),
    }
    answer.with_body(&out)
}

/// Puts StartBuild's environment overrides into the builds CodeBuild describes, as AWS does.
fn codebuild_answer(
    state: &Mutex<State>,
    operation: &str,
    request: &Value,
    answer: Answer,
) -> Response<Full<Bytes>> {
    let Some(mut out) = answer.json() else {
        return answer.into_response();
    };
    let mut s = state.lock().unwrap();
    let builds: Vec<&mut Value> = match operation {
        "StartBuild" => {
            if let (Some(id), Some(env)) = (
                out["build"]["id"].as_str(),
                request.get("environmentVariablesOverride"),
            ) {
                s.build_env.insert(id.to_owned(), env.clone());
            }
            vec![&mut out["build"]]
        }
        "BatchGetBuilds" => out["builds"].as_array_mut().into_iter().flatten().collect(),
        _ => return answer.into_response(),
    };
    for build in builds {
        let id = build["id"].as_str().unwrap_or("").to_owned();
        if let Some(env) = s.build_env.get(&id) {
            build["environment"]["environmentVariables"] = env.clone();
        }
        if let Some(status) = s.build_status.get(&id) {
            build["buildStatus"] = Value::String(status.clone());
        }
    }
    drop(s);
    answer.with_body(&out)
}

/// EventBridge events as AWS writes them into a queue: the emulator leaves `account` empty;
/// AWS sets the account the event came from (the queue's, for slipway's own rule).
fn sqs_answer(request: &Value, answer: Answer) -> Response<Full<Bytes>> {
    let Some(mut out) = answer.json() else {
        return answer.into_response();
    };
    let account = request["QueueUrl"]
        .as_str()
        .and_then(|u| u.split('/').rev().nth(1))
        .unwrap_or("123456789012")
        .to_owned();
    for message in out["Messages"].as_array_mut().into_iter().flatten() {
        let Some(mut body) = message["Body"]
            .as_str()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
        else {
            continue;
        };
        if body.get("detail-type").is_some() && body["account"].as_str().unwrap_or("").is_empty() {
            body["account"] = Value::String(account.clone());
            message["Body"] = Value::String(body.to_string());
        }
    }
    answer.with_body(&out)
}

impl ServiceOverlay {
    /// The `ServiceDeployment` of DescribeServiceDeployments.
    fn service_deployment_json(
        &self,
        r: &ServiceDeploymentRecord,
        config: Option<&Value>,
    ) -> Value {
        let live = self
            .deployments
            .iter()
            .find(|d| d["id"] == r.deployment.as_str());
        let running = match live {
            Some(d) if r.is_open() => d["runningCount"].as_i64().unwrap_or(0),
            _ => r.running,
        };
        let mut v = json!({
            "serviceDeploymentArn": r.arn,
            "serviceArn": self.service_arn,
            "clusterArn": self.cluster_arn,
            "createdAt": r.created,
            "startedAt": r.created,
            "updatedAt": r.updated,
            "status": r.status,
            "statusReason": r.reason,
            "targetServiceRevision": {
                "arn": r.target_revision,
                "requestedTaskCount": r.requested,
                "runningTaskCount": running,
                "pendingTaskCount": 0,
            },
            "deploymentCircuitBreaker": {
                "status": if r.failures > 0 { "TRIGGERED" } else { "MONITORING" },
                "failureCount": r.failures,
                "threshold": 3,
            },
        });
        if let Some(t) = r.finished {
            v["finishedAt"] = json!(t);
        }
        if let Some(config) = config {
            v["deploymentConfiguration"] = config.clone();
        }
        let strategy = config
            .and_then(|c| c["strategy"].as_str())
            .unwrap_or("ROLLING");
        let stages = lifecycle_stages(strategy);
        if r.is_open() && !stages.is_empty() {
            v["lifecycleStage"] = json!(stages[r.steps.min(stages.len() - 1)]);
        }
        if let Some((reason, revision)) = &r.rollback {
            v["rollback"] = json!({
                "reason": reason,
                "startedAt": r.updated,
                "serviceRevisionArn": revision,
            });
        }
        v
    }

    /// The `ServiceDeploymentBrief` of ListServiceDeployments.
    fn brief_json(&self, r: &ServiceDeploymentRecord) -> Value {
        let mut v = json!({
            "serviceDeploymentArn": r.arn,
            "serviceArn": self.service_arn,
            "clusterArn": self.cluster_arn,
            "createdAt": r.created,
            "startedAt": r.created,
            "targetServiceRevisionArn": r.target_revision,
            "status": r.status,
            "statusReason": r.reason,
        });
        if let Some(t) = r.finished {
            v["finishedAt"] = json!(t);
        }
        v
    }
}

/// ListServiceDeployments, newest first, from the overlay (the emulator answers 500). As the
/// API reference says: `status` and `createdAt` (`before` / `after`) filter; at most
/// `maxResults` (1-100, default 20) a page, then a `nextToken`
/// (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ListServiceDeployments.html>).
fn list_service_deployments(state: &Mutex<State>, request: &Value) -> Result<Value, String> {
    let key = service_key(
        request["cluster"].as_str(),
        request["service"].as_str().unwrap_or(""),
    );
    let statuses: Vec<&str> = request["status"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let after = request["createdAt"]["after"].as_f64();
    let before = request["createdAt"]["before"].as_f64();
    let max = match &request["maxResults"] {
        Value::Null => 20,
        v => match v.as_u64() {
            Some(n @ 1..=100) => n as usize,
            _ => return Err("maxResults must be between 1 and 100".into()),
        },
    };
    let skip = match request["nextToken"].as_str() {
        None => 0,
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| "invalid nextToken".to_owned())?,
    };
    let s = state.lock().unwrap();
    let all: Vec<Value> = s
        .overlays
        .get(&key)
        .filter(|_| !s.no_service_deployments_listed)
        .map(|o| {
            o.service_deployments
                .iter()
                .rev()
                .filter(|r| statuses.is_empty() || statuses.contains(&r.status))
                .filter(|r| after.is_none_or(|a| r.created >= a))
                .filter(|r| before.is_none_or(|b| r.created <= b))
                .map(|r| o.brief_json(r))
                .collect()
        })
        .unwrap_or_default();
    let page: Vec<Value> = all.iter().skip(skip).take(max).cloned().collect();
    let mut out = json!({ "serviceDeployments": page });
    if skip + max < all.len() {
        out["nextToken"] = json!(format!("page-{}", skip + max));
    }
    Ok(out)
}

/// DescribeServiceRevisions from the overlay: at most 20 ARNs a call; unknown ones are
/// `failures` (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DescribeServiceRevisions.html>).
fn describe_service_revisions(state: &Mutex<State>, request: &Value) -> Result<Value, String> {
    let arns: Vec<&str> = request["serviceRevisionArns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if arns.is_empty() || arns.len() > 20 {
        return Err("serviceRevisionArns must name 1 to 20 service revisions".into());
    }
    let s = state.lock().unwrap();
    let mut found = vec![];
    let mut failures = vec![];
    for arn in arns {
        let hit = s.overlays.values().find_map(|o| {
            o.revisions.iter().find(|r| r.arn == arn).map(|r| {
                json!({
                    "serviceRevisionArn": r.arn,
                    "serviceArn": o.service_arn,
                    "clusterArn": o.cluster_arn,
                    "taskDefinition": r.task_definition,
                    "launchType": "FARGATE",
                    "createdAt": r.created,
                })
            })
        });
        match hit {
            Some(v) => found.push(v),
            None => failures.push(json!({ "arn": arn, "reason": "MISSING" })),
        }
    }
    Ok(json!({ "serviceRevisions": found, "failures": failures }))
}

/// An AWS error the proxy answers with: HTTP status and error code.
type AwsFault = (u16, &'static str);

/// StopServiceDeployment from the overlay. Returns the answer, or an AWS error, and the
/// service (key, task definition) the emulator must be moved to.
fn stop_service_deployment(
    state: &Mutex<State>,
    request: &Value,
) -> (Result<Value, AwsFault>, Option<(String, String)>) {
    let arn = request["serviceDeploymentArn"].as_str().unwrap_or("");
    if request["stopType"].as_str().unwrap_or("ROLLBACK") != "ROLLBACK" {
        // ABORT is not modelled.
        return (Err((400, "InvalidParameterException")), None);
    }
    let mut s = state.lock().unwrap();
    let key = s
        .overlays
        .iter()
        .find(|(_, o)| o.service_deployments.iter().any(|r| r.arn == arn))
        .map(|(k, _)| k.clone());
    let Some(key) = key else {
        return (Err((400, "ServiceDeploymentNotFoundException")), None);
    };
    let hold = s.hold_requested_rollbacks;
    let overlay = s.overlays.get_mut(&key).expect("found above");
    let stopped = overlay.stop_service_deployment(arn);
    if hold {
        overlay.settling = None;
    }
    match stopped {
        Ok(td) => (
            Ok(json!({ "serviceDeploymentArn": arn })),
            td.map(|td| (key, td)),
        ),
        Err(e) => (Err(e), None),
    }
}

fn aws_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let payload = json!({ "__type": code, "message": message });
    Response::builder()
        .status(status)
        .header("content-type", AMZ_JSON)
        .header("x-amzn-errortype", code)
        .body(Full::new(Bytes::from(payload.to_string())))
        .unwrap()
}

/// DescribeServiceDeployments from the overlay.
fn describe_service_deployments(state: &Mutex<State>, request: &Value) -> Value {
    let s = state.lock().unwrap();
    let mut found = vec![];
    let mut failures = vec![];
    for arn in request["serviceDeploymentArns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let hit = s.overlays.iter().find_map(|(key, o)| {
            o.service_deployments
                .iter()
                .find(|r| r.arn == arn)
                .map(|r| o.service_deployment_json(r, s.deployment_configs.get(key)))
        });
        match hit {
            Some(v) => found.push(v),
            None => failures.push(json!({ "arn": arn, "reason": "MISSING" })),
        }
    }
    json!({ "serviceDeployments": found, "failures": failures })
}

/// The `cluster/service` keys of the service deployments named in a request.
fn keys_of_service_deployments(state: &Mutex<State>, request: &Value) -> BTreeSet<String> {
    let s = state.lock().unwrap();
    request["serviceDeploymentArns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|arn| {
            s.overlays
                .iter()
                .find(|(_, o)| o.service_deployments.iter().any(|r| r.arn == arn))
                .map(|(k, _)| k.clone())
        })
        .collect()
}

/// `UpdateService` starts a deployment when it names a task definition or forces one.
fn starts_deployment(request: &Value) -> bool {
    request["taskDefinition"].is_string() || request["forceNewDeployment"] == true
}

/// The control endpoints of the standalone proxy.
fn control(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::POST, "/_proxy/rollouts") => {
            let parsed: Result<Vec<Rollout>, String> = serde_json::from_slice::<Vec<String>>(body)
                .map_err(|e| format!("expected a JSON array of strings: {e}"))
                .and_then(|list| list.iter().map(|s| s.parse()).collect());
            match parsed {
                Ok(outcomes) => {
                    let n = outcomes.len();
                    state.lock().unwrap().rollouts.extend(outcomes);
                    text_response(200, format!("queued {n} rollout outcome(s)\n"))
                }
                Err(e) => text_response(400, format!("{e}\n")),
            }
        }
        (&Method::GET, "/_proxy/deployments") => {
            let s = state.lock().unwrap();
            let all: serde_json::Map<String, Value> = s
                .overlays
                .iter()
                .map(|(k, o)| (k.clone(), Value::Array(o.deployments.clone())))
                .collect();
            text_response(200, Value::Object(all).to_string())
        }
        _ => text_response(404, "unknown proxy control endpoint\n".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Other accounts.
//
// The emulator gives STS AssumeRole's credentials to anyone for any role ("the role does not
// need to exist", moto's STS), and serves a cross-account ECR request only from the caller's
// own account, so it answers "no such repository" where AWS reads the repository's policy.
// The proxy does what AWS documents in front of it:
//
// - AssumeRole succeeds only when the role's trust policy (given with
//   [`Proxy::trust_policy`]; none: the role does not exist) has an `Allow` statement for
//   `sts:AssumeRole` whose `Principal.AWS` names the caller's account (`arn:…:iam::<account>:root`
//   or the bare account id) or `*`, and whose `sts:ExternalId` condition, if any, equals the
//   request's `ExternalId`; otherwise `403 AccessDenied` "User: … is not authorized to perform:
//   sts:AssumeRole on resource: <role>"
//   (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html,
//   https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_create_for-user_externalid.html).
//   The credentials STS hands out are remembered: a request signed with them is the role's
//   account's.
// - An ECR request naming a `registryId` other than the caller's account is allowed only when
//   that repository's policy (the emulator keeps it: SetRepositoryPolicy) allows the caller's
//   account the action (`ecr:<Operation>` or `ecr:*`); it is then carried out in the
//   registry's account. Otherwise `AccessDeniedException` "… because no resource-based policy
//   allows the ecr:<Operation> action"
//   (https://docs.aws.amazon.com/AmazonECR/latest/userguide/repository-policy-examples.html).
//   Only the emulator's default account can be such a registry here, which is all the tests need.
// ---------------------------------------------------------------------------------------------

/// The emulator's account for credentials it did not hand out through AssumeRole.
pub const DEFAULT_ACCOUNT: &str = "123456789012";

fn account_of(state: &Mutex<State>, access_key: &str) -> String {
    state.lock().unwrap().assumed.get(access_key).map_or_else(
        || DEFAULT_ACCOUNT.to_owned(),
        |(account, _)| account.clone(),
    )
}

/// Who the caller is, as AWS's messages name it.
fn caller_arn(state: &Mutex<State>, access_key: &str) -> String {
    match state.lock().unwrap().assumed.get(access_key) {
        Some((account, role)) => format!(
            "arn:aws:sts::{account}:assumed-role/{}/slipway",
            role.rsplit('/').next().unwrap_or(role)
        ),
        None => format!("arn:aws:iam::{DEFAULT_ACCOUNT}:user/moto"),
    }
}

/// A policy field that is a string or a list of strings.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(_) => vec![&policy["Statement"]],
        _ => vec![],
    }
}

/// Whether `policy` grants `action` to `account`, `external_id` meeting its conditions: an
/// `Allow` statement applies and no `Deny` statement does (an explicit deny wins). A condition
/// the proxy does not model (an operator other than `StringEquals`, a key other than
/// `sts:ExternalId`) is taken as not met: an `Allow` under it grants nothing (the fake errs
/// towards refusing), and a `Deny` under it does not apply.
fn allows(policy: &Value, account: &str, action: &str, external_id: Option<&str>) -> bool {
    let applies = |st: &Value| {
        let service = action.split(':').next().unwrap_or("");
        let conditions_met = match st.get("Condition").and_then(Value::as_object) {
            None => true,
            Some(ops) => ops.iter().all(|(op, keys)| {
                op == "StringEquals"
                    && keys.as_object().is_some_and(|keys| {
                        keys.iter().all(|(key, wanted)| {
                            key == "sts:ExternalId"
                                && external_id.is_some_and(|id| strings(wanted).contains(&id))
                        })
                    })
            }),
        };
        strings(&st["Action"])
            .iter()
            .any(|a| *a == action || *a == format!("{service}:*") || *a == "*")
            && (st["Principal"] == "*"
                || strings(&st["Principal"]["AWS"]).iter().any(|p| {
                    *p == "*" || *p == account || p.ends_with(&format!(":iam::{account}:root"))
                }))
            && conditions_met
    };
    let all = statements(policy);
    all.iter().any(|st| st["Effect"] == "Allow" && applies(st))
        && !all.iter().any(|st| st["Effect"] == "Deny" && applies(st))
}

/// The text of an XML element (the first one), as STS answers.
fn xml_text<'a>(xml: &'a str, element: &str) -> Option<&'a str> {
    let open = format!("<{element}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{element}>"))? + start;
    Some(&xml[start..end])
}

async fn assume_role(
    ctx: &Ctx,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    caller: &str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    let account = account_of(&ctx.state, caller);
    let allowed = ctx
        .state
        .lock()
        .unwrap()
        .trust
        .get(&role)
        .is_some_and(|policy| {
            allows(
                policy,
                &account,
                "sts:AssumeRole",
                form.get("ExternalId").map(String::as_str),
            )
        });
    if !allowed {
        let message = format!(
            "User: {} is not authorized to perform: sts:AssumeRole on resource: {role}",
            caller_arn(&ctx.state, caller)
        );
        let xml = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>AccessDenied</Code><Message>{message}</Message></Error>\
             <RequestId>{:016x}</RequestId></ErrorResponse>",
            random_u64()
        );
        return Response::builder()
            .status(403)
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(xml)))
            .unwrap();
    }
    let answer = match ctx.forward(method, path_and_query, headers, body).await {
        Ok(answer) => answer,
        Err(e) => return text_response(502, format!("proxy: {e}")),
    };
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    if let Some(key) = xml_text(&text, "AccessKeyId") {
        let role_account = role.split(':').nth(4).unwrap_or_default().to_owned();
        ctx.state
            .lock()
            .unwrap()
            .assumed
            .insert(key.to_owned(), (role_account, role.clone()));
    }
    answer.into_response()
}

/// An ECR request naming another account's registry: None when it is not one (forward it as
/// it is); Ok(headers to forward it with, as the registry's account) when that repository's
/// policy allows the caller; Err(AWS's refusal) otherwise.
async fn cross_account_ecr(
    ctx: &Ctx,
    headers: &HeaderMap,
    operation: &str,
    request: &Value,
    caller: &str,
) -> Option<Result<HeaderMap, Response<Full<Bytes>>>> {
    let registry = request["registryId"].as_str()?;
    let account = account_of(&ctx.state, caller);
    if registry == account || registry != DEFAULT_ACCOUNT {
        return None;
    }
    let repository = request["repositoryName"].as_str().unwrap_or_default();
    // As the registry's account: any access key the emulator did not hand out is its default.
    let mut own = headers.clone();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replacen(caller, "AKIAPROXYREGISTRYOWNER", 1);
    own.insert("authorization", HeaderValue::from_str(&auth).ok()?);
    let mut ask = own.clone();
    ask.insert(
        "x-amz-target",
        HeaderValue::from_static("AmazonEC2ContainerRegistry_V20150921.GetRepositoryPolicy"),
    );
    let policy = ctx
        .forward(
            &Method::POST,
            "/",
            &ask,
            Bytes::from(json!({"registryId": registry, "repositoryName": repository}).to_string()),
        )
        .await
        .ok()
        .and_then(|a| a.json())
        .and_then(|v| v["policyText"].as_str().map(str::to_owned))
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let action = format!("ecr:{operation}");
    if policy.is_some_and(|p| allows(&p, &account, &action, None)) {
        return Some(Ok(own));
    }
    let region = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('/').nth(2))
        .unwrap_or("us-east-1")
        .to_owned();
    Some(Err(aws_error(
        400,
        "AccessDeniedException",
        &format!(
            "User: {} is not authorized to perform: {action} on resource: \
             arn:aws:ecr:{region}:{registry}:repository/{repository} because no \
             resource-based policy allows the {action} action",
            caller_arn(&ctx.state, caller)
        ),
    )))
}
