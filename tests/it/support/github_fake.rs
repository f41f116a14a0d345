//! A small scripted fake of the GitHub endpoints slipway calls: installation tokens (the App's
//! JWT is verified with its public key), commit statuses, deployments and their statuses, hook
//! deliveries and redelivery (which really POSTs the stored delivery, signed, to slipway), and
//! compare. Every request is recorded; scripted answers (a 500, a rate limit) can be queued in
//! front of the normal ones.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

pub const APP_ID: u64 = 4321;
pub const INSTALLATION_ID: u64 = 678;
/// The token a test configures as `SLIPWAY_GITHUB_TOKEN`.
pub const STATIC_TOKEN: &str = "github_pat_test";
/// The id of the App's own webhook: `GET /app/hook/deliveries` lists its deliveries.
pub const APP_HOOK_ID: u64 = 77;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub bearer: Option<String>,
    pub body: Value,
    pub at: SystemTime,
}

impl Recorded {
    pub fn is(&self, method: &str, path_prefix: &str) -> bool {
        self.method == method && self.path.starts_with(path_prefix)
    }
}

/// A canned answer, served instead of the normal one to the next matching request.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// Seconds after the answer is served at which its rate limit resets
    /// (`x-ratelimit-reset`, whole epoch seconds, set when served).
    pub resets_in: Option<u64>,
}

impl Scripted {
    pub fn status(status: u16) -> Scripted {
        Scripted {
            status,
            headers: Vec::new(),
            body: json!({ "message": "scripted failure" }),
            resets_in: None,
        }
    }

    /// A secondary rate limit as docs.github.com shows it: 403, GitHub's message, and the
    /// primary count's headers (far from exhausted), no `retry-after`.
    pub fn secondary_limit() -> Scripted {
        Scripted {
            status: 403,
            headers: vec![
                ("x-ratelimit-limit".into(), "5000".into()),
                ("x-ratelimit-remaining".into(), "4990".into()),
            ],
            body: json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
            }),
            resets_in: None,
        }
    }

    /// A primary rate limit that resets at `reset` (Unix seconds).
    pub fn rate_limited(reset: u64) -> Scripted {
        Scripted {
            status: 403,
            headers: vec![
                ("x-ratelimit-limit".into(), "5000".into()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), reset.to_string()),
            ],
            body: json!({ "message": "API rate limit exceeded" }),
            resets_in: None,
        }
    }

    /// [`Self::rate_limited`], resetting `secs` after the answer is served (however long
    /// slipway took to ask).
    pub fn rate_limited_for(secs: u64) -> Scripted {
        Scripted {
            resets_in: Some(secs),
            ..Self::rate_limited(0)
        }
    }
}

/// A delivery attempt as GitHub lists it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub hook_id: u64,
    pub guid: String,
    pub event: String,
    pub status_code: u16,
    pub delivered_at: SystemTime,
    pub redelivery: bool,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Fake {
    requests: Vec<Recorded>,
    scripts: Vec<(String, String, VecDeque<Scripted>)>,
    /// PEM of the App's public key; with it, installation tokens need a valid JWT.
    app_public_key: Option<String>,
    token_ttl: Option<Duration>,
    tokens: Vec<(String, SystemTime)>,
    next_id: i64,
    deliveries: Vec<Delivery>,
    webhook: Option<(String, String)>,
    compare_files: Vec<Value>,
    compare_pages: usize,
    /// The comparison's `status`: `ahead` unless a test says otherwise.
    compare_status: String,
    /// Deployments of a ref behind the default branch conflict unless `auto_merge` is false.
    behind_default: bool,
    /// Status contexts not yet successful on every ref: a deployment that requires them (by
    /// default, all of them) conflicts.
    pending_contexts: Vec<String>,
    /// The time requests are recorded at (the system's unless a test runs a faster clock).
    now: Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>,
    /// GitHub's own response examples by name, when answers must satisfy its OpenAPI
    /// description (the contract test puts a validating proxy in front of the fake).
    examples: std::collections::HashMap<String, Value>,
}

/// The response examples the fake's answers are built on, from GitHub's description.
const EXAMPLES: &[&str] = &[
    "status",
    "deployment-simple-example",
    "deployment-status",
    "installation-token",
    "commit-comparison",
];

/// `dynamic`'s keys over the named example (or `dynamic` alone without examples).
fn shaped(s: &Fake, example: &str, dynamic: Value) -> Value {
    let Some(Value::Object(base)) = s.examples.get(example).cloned() else {
        return dynamic;
    };
    let mut out = base;
    if let Value::Object(fields) = dynamic {
        out.extend(fields);
    }
    Value::Object(out)
}

pub struct GithubFake {
    pub url: String,
    state: Arc<Mutex<Fake>>,
    task: tokio::task::JoinHandle<()>,
}

impl GithubFake {
    pub async fn start() -> GithubFake {
        Self::start_on("127.0.0.1:0").await
    }

    /// Listens on `addr` (the local pipeline picks its port).
    pub async fn start_on(addr: &str) -> GithubFake {
        let state = Arc::new(Mutex::new(Fake {
            next_id: 1000,
            token_ttl: Some(Duration::from_secs(3600)),
            compare_pages: 1,
            compare_status: "ahead".into(),
            ..Fake::default()
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GithubFake { url, state, task }
    }

    /// Installation tokens need a JWT signed by the key whose public half this is.
    pub fn app_public_key(&self, pem: &str) {
        self.state.lock().unwrap().app_public_key = Some(pem.to_owned());
    }

    /// Installation tokens expire this long after they are issued.
    pub fn token_ttl(&self, ttl: Duration) {
        self.state.lock().unwrap().token_ttl = Some(ttl);
    }

    /// Answers with GitHub's own examples (from its OpenAPI description at `spec`), the fields
    /// slipway reads filled in, so that they satisfy the description.
    pub fn use_spec_examples(&self, spec: &str) {
        let text = std::fs::read(spec).unwrap();
        let spec: Value = serde_json::from_slice(&text).unwrap();
        let mut s = self.state.lock().unwrap();
        for name in EXAMPLES {
            let value = spec["components"]["examples"][name]["value"].clone();
            assert!(value.is_object(), "no example {name} in the description");
            s.examples.insert((*name).to_owned(), value);
        }
    }

    /// Where redeliveries go, and the hook secret they are signed with.
    pub fn webhook(&self, url: &str, secret: &str) {
        self.state.lock().unwrap().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    /// The next requests whose method is `method` and whose path starts with `path_prefix`
    /// get these answers, one each, in order.
    pub fn script(&self, method: &str, path_prefix: &str, answers: Vec<Scripted>) {
        self.state.lock().unwrap().scripts.push((
            method.to_owned(),
            path_prefix.to_owned(),
            answers.into(),
        ));
    }

    /// The changed files the compare endpoint returns, over `pages` pages of commits.
    pub fn compare(&self, files: Vec<Value>, pages: usize) {
        let mut s = self.state.lock().unwrap();
        s.compare_files = files;
        s.compare_pages = pages.max(1);
    }

    /// The `status` the comparison answers with (`ahead`, `behind`, `identical`, `diverged`).
    pub fn compare_status(&self, status: &str) {
        self.state.lock().unwrap().compare_status = status.to_owned();
    }

    /// What makes "Create a deployment" answer 409 (docs.github.com, "Create a deployment"):
    /// the ref is behind the default branch (with `auto_merge`, true by default), or status
    /// contexts it requires (by default every context) are not successful.
    pub fn deployment_conflicts(&self, behind_default: bool, pending_contexts: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.behind_default = behind_default;
        s.pending_contexts = pending_contexts.iter().map(|c| c.to_string()).collect();
    }

    /// Records requests at the time `now` gives (the clock slipway runs on in the test).
    pub fn clock(&self, now: Arc<dyn Fn() -> SystemTime + Send + Sync>) {
        self.state.lock().unwrap().now = Some(now);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, method: &str, path_prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.is(method, path_prefix))
            .collect()
    }

    /// The installation tokens issued so far, oldest first.
    pub fn tokens(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.tokens.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The commit statuses posted for `sha` with `context`, oldest first: (state, description).
    pub fn statuses(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/statuses/{sha}")))
            .filter(|r| r.body["context"] == context)
            .map(|r| {
                (
                    r.body["state"].as_str().unwrap_or("").to_owned(),
                    r.body["description"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// The deployments created, oldest first: (id, body).
    pub fn deployments(&self) -> Vec<(i64, Value)> {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/deployments"))
            .filter_map(|r| {
                r.body
                    .get("_id")
                    .and_then(Value::as_i64)
                    .map(|id| (id, r.body.clone()))
            })
            .collect()
    }

    /// The deployment statuses posted to GitHub deployment `id`, oldest first.
    pub fn deployment_states(&self, id: i64) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == "POST" && r.path.ends_with(&format!("/deployments/{id}/statuses"))
            })
            .map(|r| r.body["state"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// POSTs a delivery to the webhook like GitHub does, and records the attempt with the
    /// status slipway answered (0 when it could not connect, as GitHub shows it).
    pub async fn deliver(&self, hook_id: u64, event: &str, guid: &str, body: &[u8]) -> u16 {
        let webhook = self.state.lock().unwrap().webhook.clone();
        let status = match webhook {
            Some((url, secret)) => post_delivery(&url, &secret, hook_id, event, guid, body).await,
            None => 0,
        };
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.deliveries.push(Delivery {
            id,
            hook_id,
            guid: guid.to_owned(),
            event: event.to_owned(),
            status_code: status,
            delivered_at: SystemTime::now(),
            redelivery: false,
            body: body.to_vec(),
        });
        status
    }

    /// Delivery attempts so far (redeliveries included), oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Adds a delivery attempt to the hook's history without sending anything.
    pub fn add_delivery(&self, d: Delivery) {
        self.state.lock().unwrap().deliveries.push(d);
    }
}

impl Drop for GithubFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn post_delivery(
    url: &str,
    secret: &str,
    hook_id: u64,
    event: &str,
    guid: &str,
    body: &[u8],
) -> u16 {
    let signature = slipway::webhook::sign(secret.as_bytes(), body);
    let sent = reqwest::Client::new()
        .post(format!("{url}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("x-github-hook-id", hook_id.to_string())
        .header("x-hub-signature-256", signature)
        .header("user-agent", "GitHub-Hookshot/fake")
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix(t) as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

async fn handle(
    State(state): State<Arc<Mutex<Fake>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let at = match &state.lock().unwrap().now {
        Some(now) => now(),
        None => SystemTime::now(),
    };
    let mut recorded = Recorded {
        method: method.to_string(),
        path: path.clone(),
        bearer: bearer.clone(),
        body: json_body.clone(),
        at,
    };
    let mut redeliver = None::<Delivery>;
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let response = {
        let mut s = state.lock().unwrap();
        let scripted = s
            .scripts
            .iter_mut()
            .find(|(m, p, q)| {
                *m == method.as_str() && path.starts_with(p.as_str()) && !q.is_empty()
            })
            .and_then(|(_, _, q)| q.pop_front());
        if let Some(mut a) = scripted {
            s.requests.push(recorded);
            if let Some(secs) = a.resets_in {
                let reset = at.duration_since(UNIX_EPOCH).unwrap().as_secs() + secs;
                a.headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("x-ratelimit-reset"));
                a.headers
                    .push(("x-ratelimit-reset".into(), reset.to_string()));
            }
            let mut r = answer(a.status, a.body);
            for (k, v) in a.headers {
                r.headers_mut().insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            return r;
        }
        if uri.path() == "/_fake/requests" {
            // For the local pipeline: what slipway asked of "GitHub" so far.
            let list: Vec<Value> = s
                .requests
                .iter()
                .map(|r| json!({ "method": r.method, "path": r.path, "body": r.body }))
                .collect();
            return answer(200, Value::Array(list));
        }
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let now = SystemTime::now();
        // Authentication: the App's JWT for /app/..., a live token everywhere else.
        let app_call = segments.first() == Some(&"app");
        let authorised = match (&bearer, app_call) {
            (None, _) => false,
            (Some(jwt), true) => match &s.app_public_key {
                Some(pem) => verify_jwt(pem, jwt, now).is_ok(),
                None => false,
            },
            (Some(token), false) => {
                token == STATIC_TOKEN || s.tokens.iter().any(|(t, exp)| t == token && *exp > now)
            }
        };
        if !authorised {
            s.requests.push(recorded);
            return answer(401, json!({ "message": "Bad credentials" }));
        }
        let response = match (method.as_str(), segments.as_slice()) {
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                if *id != INSTALLATION_ID.to_string() {
                    answer(404, json!({ "message": "Not Found" }))
                } else {
                    let token = format!("ghs_fake{}", s.tokens.len() + 1);
                    let expires = now + s.token_ttl.unwrap();
                    s.tokens.push((token.clone(), expires));
                    let body = json!({ "token": token, "expires_at": rfc3339(expires) });
                    answer(201, shaped(&s, "installation-token", body))
                }
            }
            ("POST", [..]) if not_permitted(&segments, &json_body).is_some() => {
                let key = not_permitted(&segments, &json_body).unwrap_or_default();
                answer(
                    422,
                    json!({ "message": format!("Invalid request.\n\n\"{key}\" is not a permitted key.") }),
                )
            }
            ("POST", ["repos", _, _, "deployments"])
                if deployment_conflict(&s, &json_body).is_some() =>
            {
                answer(409, deployment_conflict(&s, &json_body).unwrap_or_default())
            }
            ("POST", ["repos", _, _, "statuses", _]) => {
                s.next_id += 1;
                let body = json!({ "id": s.next_id, "state": json_body["state"] });
                answer(201, shaped(&s, "status", body))
            }
            ("POST", ["repos", _, _, "deployments"]) => {
                s.next_id += 1;
                let id = s.next_id;
                // Remembered on the recorded request, for `deployments()`.
                recorded.body["_id"] = json!(id);
                let body = json!({ "id": id, "ref": json_body["ref"], "environment": json_body["environment"] });
                answer(201, shaped(&s, "deployment-simple-example", body))
            }
            ("POST", ["repos", _, _, "deployments", _, "statuses"]) => {
                s.next_id += 1;
                let body = json!({ "id": s.next_id, "state": json_body["state"] });
                answer(201, shaped(&s, "deployment-status", body))
            }
            ("GET", ["repos", _, _, "hooks", hook, "deliveries"])
            | ("GET", ["orgs", _, "hooks", hook, "deliveries"]) => {
                let hook: u64 = hook.parse().unwrap_or(0);
                list_deliveries(&s.deliveries, hook, &uri, &host)
            }
            ("GET", ["app", "hook", "deliveries"]) => {
                list_deliveries(&s.deliveries, APP_HOOK_ID, &uri, &host)
            }
            ("POST", ["repos", _, _, "hooks", _, "deliveries", id, "attempts"])
            | ("POST", ["orgs", _, "hooks", _, "deliveries", id, "attempts"])
            | ("POST", ["app", "hook", "deliveries", id, "attempts"]) => {
                let id: i64 = id.parse().unwrap_or(0);
                match s.deliveries.iter().find(|d| d.id == id) {
                    Some(d) => {
                        redeliver = Some(d.clone());
                        answer(202, json!({}))
                    }
                    None => answer(404, json!({ "message": "Not Found" })),
                }
            }
            ("GET", ["repos", _, _, "compare", _]) => compare(&s, &uri, &host),
            _ => answer(404, json!({ "message": "Not Found" })),
        };
        s.requests.push(recorded);
        if let Some(d) = redeliver.take() {
            let state = state.clone();
            tokio::spawn(async move {
                // GitHub redelivers a moment later; the test may not have told the fake
                // where slipway listens yet.
                let mut webhook = None;
                for _ in 0..300 {
                    webhook = state.lock().unwrap().webhook.clone();
                    if webhook.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let status = match webhook {
                    Some((url, secret)) => {
                        post_delivery(&url, &secret, d.hook_id, &d.event, &d.guid, &d.body).await
                    }
                    None => 0,
                };
                let mut s = state.lock().unwrap();
                s.next_id += 1;
                let id = s.next_id;
                s.deliveries.push(Delivery {
                    id,
                    status_code: status,
                    delivered_at: SystemTime::now(),
                    redelivery: true,
                    ..d
                });
            });
        }
        response
    };
    response
}

/// The request body keys GitHub's description (the pinned `@octokit/openapi`,
/// `api.github.com.json`) lists for each operation slipway POSTs with a body; GitHub answers
/// 422 to any other ("is not a permitted key"). `the_fakes_permitted_keys_are_githubs` checks
/// them against the description.
pub const PERMITTED_KEYS: &[(&str, &[&str])] = &[
    (
        "/repos/{owner}/{repo}/statuses/{sha}",
        &["state", "target_url", "description", "context"],
    ),
    (
        "/repos/{owner}/{repo}/deployments",
        &[
            "ref",
            "task",
            "auto_merge",
            "required_contexts",
            "payload",
            "environment",
            "description",
            "transient_environment",
            "production_environment",
        ],
    ),
    (
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        &[
            "state",
            "target_url",
            "log_url",
            "description",
            "environment",
            "environment_url",
            "auto_inactive",
        ],
    ),
];

/// The first key of `body` the operation at `segments` does not permit, if any.
fn not_permitted(segments: &[&str], body: &Value) -> Option<String> {
    let operation = match segments {
        ["repos", _, _, "statuses", _] => PERMITTED_KEYS[0].1,
        ["repos", _, _, "deployments"] => PERMITTED_KEYS[1].1,
        ["repos", _, _, "deployments", _, "statuses"] => PERMITTED_KEYS[2].1,
        _ => return None,
    };
    body.as_object()?
        .keys()
        .find(|k| !operation.contains(&k.as_str()))
        .cloned()
}

/// GitHub's 409 for "Create a deployment", when it would answer one.
fn deployment_conflict(s: &Fake, body: &Value) -> Option<Value> {
    let git_ref = body["ref"].as_str().unwrap_or("");
    if s.behind_default && body["auto_merge"].as_bool().unwrap_or(true) {
        return Some(json!({ "message": format!("Conflict merging master into {git_ref}.") }));
    }
    let pending: Vec<&String> = match body.get("required_contexts").and_then(Value::as_array) {
        None => s.pending_contexts.iter().collect(),
        Some(required) => s
            .pending_contexts
            .iter()
            .filter(|c| required.iter().any(|r| r == *c))
            .collect(),
    };
    if pending.is_empty() {
        return None;
    }
    Some(json!({
        "message": format!("Conflict: Commit status checks failed for {git_ref}."),
        "errors": [{ "contexts": pending, "resource": "Deployment", "field": "required_contexts" }],
    }))
}

fn verify_jwt(public_pem: &str, jwt: &str, now: SystemTime) -> Result<(), String> {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.set_issuer(&[APP_ID.to_string()]);
    let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    // GitHub: issued no later than now, expiring at most 10 minutes after it was issued.
    let now = unix(now);
    if claims.iat > now || claims.exp <= now || claims.exp - claims.iat > 600 {
        return Err(format!(
            "bad times: iat {} exp {} now {now}",
            claims.iat, claims.exp
        ));
    }
    Ok(())
}

/// `GET .../hooks/{hook_id}/deliveries` (docs.github.com, "List deliveries for a repository
/// webhook"): newest first, `per_page` of them (default 30, at most 100), from the delivery
/// the opaque `cursor` names; the next page's cursor comes in the `Link` header (`rel="next"`),
/// never as a page number.
fn list_deliveries(all: &[Delivery], hook: u64, uri: &Uri, host: &str) -> Response {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let per_page = match param("per_page").map(|p| p.parse::<usize>()) {
        None => 30,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return answer(422, json!({ "message": "per_page must be 1 to 100" })),
    };
    let mut list: Vec<&Delivery> = all.iter().filter(|d| d.hook_id == hook).collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.id)); // newest first, as GitHub lists them
    let start = match param("cursor") {
        None => 0,
        Some(cursor) => match cursor
            .strip_prefix("v1_")
            .and_then(|id| id.parse::<i64>().ok())
        {
            Some(id) => list.iter().position(|d| d.id <= id).unwrap_or(list.len()),
            None => return answer(422, json!({ "message": "invalid cursor" })),
        },
    };
    let page = &list[start.min(list.len())..(start + per_page).min(list.len())];
    let body = render_deliveries(page);
    let mut r = answer(200, body);
    if let Some(next) = list.get(start + per_page) {
        let link = format!(
            "<http://{host}{}?per_page={per_page}&cursor=v1_{}>; rel=\"next\"",
            uri.path(),
            next.id
        );
        r.headers_mut().insert("link", link.parse().unwrap());
    }
    r
}

fn render_deliveries(list: &[&Delivery]) -> Value {
    Value::Array(
        list.iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "guid": d.guid,
                    "delivered_at": rfc3339(d.delivered_at),
                    "redelivery": d.redelivery,
                    "duration": 0.1,
                    "status": if (200..300).contains(&d.status_code) { "OK" } else { "failed to connect" },
                    "status_code": d.status_code,
                    "event": d.event,
                    "action": null,
                    "installation_id": null,
                    "repository_id": null,
                })
            })
            .collect(),
    )
}

/// The comparison (docs.github.com, "Compare two commits"): its files on the first page only
/// (as GitHub does), `compare_pages` pages of commits linked with `Link: rel="next"`, and the
/// `status` the test set (`diverged` after a force-push).
fn compare(s: &Fake, uri: &Uri, host: &str) -> Response {
    let page: usize = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("page="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let files = if page == 1 {
        s.compare_files.clone()
    } else {
        Vec::new()
    };
    let body = if s.examples.is_empty() {
        json!({ "status": s.compare_status, "total_commits": s.compare_pages, "commits": [], "files": files })
    } else {
        // GitHub's example, its files included (its status is `behind`: the test's instead).
        shaped(
            s,
            "commit-comparison",
            json!({ "status": s.compare_status }),
        )
    };
    let mut r = answer(200, body);
    if page < s.compare_pages {
        let next = format!(
            "<http://{host}{}?per_page=100&page={}>; rel=\"next\"",
            uri.path(),
            page + 1
        );
        r.headers_mut().insert("link", next.parse().unwrap());
    }
    r
}

/// A fresh RSA key pair, from the openssl CLI: (private PEM, public PEM).
pub fn rsa_key_pair() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .expect("openssl");
    assert!(public.status.success());
    (
        std::fs::read_to_string(&private).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    )
}
