//! Issue 25's benchmark (scripts/bench-dynamodb.sh): what the DynamoDB engine costs.
//!
//! 1. Requests and request units per accepted, ignored and duplicate delivery and per deploy.
//!    slipway runs with `[store] engine = "dynamodb"` and `AWS_ENDPOINT_URL_DYNAMODB` at a test
//!    proxy (which counts every call by operation), in front of a [`Meter`] in front of moto.
//!    The meter reads, from moto and beside slipway's own calls, each written item before and
//!    after the write and every item a read reads, so that the units can be computed by
//!    DynamoDB's documented rules ([`write_units`], [`read_units`]): computed, not billed
//!    (moto reports no consumed capacity).
//! 2. Intake on moto beside SQLite: deliveries per second and the webhook answer's p50/p99, in
//!    the same run, alternating engines. moto is not DynamoDB: its figures show the engine's
//!    overhead on a local emulator, not DynamoDB's latency.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};

use crate::deploy::{Deploy, Setup};
use crate::support::world::PROJECT;
use crate::support::{eventually, fixture, Emulator, Proxy, SlipwayBuilder, MASTER_SHA, SECRET};

const TABLE: &str = "slipway";
const TARGET_PREFIX: &str = "DynamoDB_20120810.";
/// The table's GSIs (src/store/dynamodb/table.rs `INDEXES`): name, partition key, sort key.
const INDEXES: [(&str, &str, &str); 3] = slipway::store::dynamodb::INDEXES;
/// The operations that write.
const WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

/// The longest lease period (60 s): its renewals (every 15 s, issue 26) fall into an event's
/// window as rarely as possible; the idle figure counts them.
fn store_config() -> String {
    format!("[store]\nengine = \"dynamodb\"\ntable = \"{TABLE}\"\n[replicas]\nlease_secs = 60\n")
}

/// Makes slipway's table on `emulator`, as `slipway provision` does.
async fn make_table(emulator: &Emulator) {
    emulator.create_state_table(TABLE).await;
}

// ---------------------------------------------------------------------------------------
// Item sizes and request units, by DynamoDB's documented rules.
// ---------------------------------------------------------------------------------------

/// The size of an attribute value, by "DynamoDB item sizes and formats"
/// (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html):
/// strings their UTF-8 bytes, numbers 1 byte per two significant digits + 1, binary its raw
/// bytes, null and Boolean 1 byte, a List or Map 3 bytes + its elements + 1 byte each.
fn value_size(v: &Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        "N" => number_size(inner.as_str().unwrap_or("0")),
        "B" => base64_len(inner.as_str().unwrap_or("")),
        "BOOL" | "NULL" => 1,
        "SS" => strings(inner).map(str::len).sum(),
        "NS" => strings(inner).map(number_size).sum(),
        "BS" => strings(inner).map(base64_len).sum(),
        "L" => {
            3 + inner
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| value_size(e) + 1)
                .sum::<usize>()
        }
        "M" => 3 + item_size(inner) + inner.as_object().map_or(0, |m| m.len()),
        _ => 0,
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn number_size(n: &str) -> usize {
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

fn base64_len(s: &str) -> usize {
    let padding = s.bytes().rev().take_while(|&b| b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(padding)
}

/// An item's size: its attribute names and values.
fn item_size(item: &Value) -> usize {
    item.as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| name.len() + value_size(v))
        .sum()
}

fn kb_units(bytes: usize, unit: usize) -> f64 {
    bytes.div_ceil(unit).max(1) as f64
}

/// One item one request wrote: as it was before and after (None: absent).
#[derive(Debug, Clone)]
struct Written {
    before: Option<Value>,
    after: Option<Value>,
    transactional: bool,
}

/// The index key an item carries for `(pk, sk)`, if it has both attributes.
fn index_key(item: &Option<Value>, pk: &str, sk: &str) -> Option<(Value, Value)> {
    let item = item.as_ref()?;
    Some((item.get(pk)?.clone(), item.get(sk)?.clone()))
}

/// Write request units of one written item, (table, its GSIs), by the Developer Guide:
/// - 1 WRU per 1 KB of the larger of the item before and after the write, at least 1
///   ("Write request units", CapacityUnitCalculations / read-write-capacity-mode);
///   a transactional write 2 per KB ("Capacity management for transactions",
///   https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html);
/// - each GSI whose key the item carries before or after costs a write of its own, of the
///   index entry's size (projection ALL: the item's); a write that changes the index key
///   costs two, a delete of the old entry and a put of the new
///   (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/GSI.html#GSI.ThroughputConsiderations.Writes);
///   an item that did not change writes no index.
fn write_units(w: &Written) -> (f64, f64) {
    let size = |i: &Option<Value>| i.as_ref().map_or(0, item_size);
    let (before, after) = (size(&w.before), size(&w.after));
    let table = kb_units(before.max(after), 1024) * if w.transactional { 2.0 } else { 1.0 };
    let changed = w.before != w.after;
    let mut index = 0.0;
    for (_, pk, sk) in INDEXES {
        index += match (index_key(&w.before, pk, sk), index_key(&w.after, pk, sk)) {
            (None, None) => 0.0,
            _ if !changed => 0.0,
            (Some(_), None) => kb_units(before, 1024),
            (None, Some(_)) => kb_units(after, 1024),
            (Some(a), Some(b)) if a == b => kb_units(after, 1024),
            (Some(_), Some(_)) => kb_units(before, 1024) + kb_units(after, 1024),
        };
    }
    (table, index)
}

/// Read request units of one read, by the Developer Guide ("Read request units"): 4 KB per
/// unit, an eventually consistent read half a unit; GetItem and BatchGetItem round each item
/// up to 4 KB, a Query the sum of the items it read (before any filter, all attributes
/// whatever the projection); a read that finds nothing still costs one read. A GSI's reads are
/// always eventually consistent.
fn read_units(op: &str, items: &[Value], consistent: bool) -> f64 {
    let factor = if consistent { 1.0 } else { 0.5 };
    match op {
        "Query" => kb_units(items.iter().map(item_size).sum(), 4096) * factor,
        _ if items.is_empty() => factor,
        _ => items
            .iter()
            .map(|i| kb_units(item_size(i), 4096) * factor)
            .sum(),
    }
}

// ---------------------------------------------------------------------------------------
// The meter: a forwarder in front of moto that keeps what each DynamoDB call wrote and read.
// ---------------------------------------------------------------------------------------

/// One DynamoDB call, with the items it wrote or read.
#[derive(Debug, Clone)]
struct Metered {
    op: String,
    written: Vec<Written>,
    read: Vec<Value>,
    consistent: bool,
}

impl Metered {
    fn is_write(&self) -> bool {
        WRITES.contains(&self.op.as_str())
    }
    /// (table WRU, GSI WRU, RRU).
    fn units(&self) -> (f64, f64, f64) {
        if self.is_write() {
            self.written
                .iter()
                .map(write_units)
                .fold((0.0, 0.0, 0.0), |a, (t, i)| (a.0 + t, a.1 + i, a.2))
        } else {
            (0.0, 0.0, read_units(&self.op, &self.read, self.consistent))
        }
    }
}

#[derive(Clone)]
struct Meter {
    url: String,
    calls: Arc<Mutex<Vec<Metered>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Meter {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// The meter's way to moto: the caller's headers (moto takes the region from them).
#[derive(Clone)]
struct Upstream {
    url: String,
    client: reqwest::Client,
    /// Writes are metered one at a time, so that "before" and "after" are this write's.
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl Upstream {
    async fn post(&self, headers: &HeaderMap, body: Bytes) -> Result<reqwest::Response, String> {
        let mut req = self.client.post(&self.url);
        for (name, value) in headers {
            if name != "host" && name != "content-length" {
                req = req.header(name, value);
            }
        }
        req.body(body).send().await.map_err(|e| e.to_string())
    }

    /// A call of the meter's own (not slipway's), answered as JSON.
    async fn call(&self, headers: &HeaderMap, op: &str, body: Value) -> Value {
        let mut headers = headers.clone();
        headers.insert(
            "x-amz-target",
            format!("{TARGET_PREFIX}{op}").parse().unwrap(),
        );
        match self.post(&headers, Bytes::from(body.to_string())).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn get_item(&self, headers: &HeaderMap, table: &str, key: &Value) -> Option<Value> {
        let out = self
            .call(
                headers,
                "GetItem",
                json!({ "TableName": table, "Key": key, "ConsistentRead": true }),
            )
            .await;
        out.get("Item").cloned()
    }
}

/// The primary key of an item.
fn key_of(item: &Value) -> Value {
    json!({ "pk": item["pk"], "sk": item["sk"] })
}

/// The items a write request writes: (table, key, transactional).
fn written_keys(op: &str, req: &Value) -> Vec<(String, Value, bool)> {
    let table = |v: &Value| v["TableName"].as_str().unwrap_or_default().to_owned();
    match op {
        "PutItem" => vec![(table(req), key_of(&req["Item"]), false)],
        "UpdateItem" | "DeleteItem" => vec![(table(req), req["Key"].clone(), false)],
        "TransactWriteItems" => req["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                if let Some(p) = t.get("Put") {
                    Some((table(p), key_of(&p["Item"]), true))
                } else {
                    t.get("Update")
                        .or(t.get("Delete"))
                        .map(|u| (table(u), u["Key"].clone(), true))
                }
            })
            .collect(),
        "BatchWriteItem" => req["RequestItems"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(t, writes)| {
                writes.as_array().into_iter().flatten().map(move |w| {
                    let key = match w.get("PutRequest") {
                        Some(p) => key_of(&p["Item"]),
                        None => w["DeleteRequest"]["Key"].clone(),
                    };
                    (t.clone(), key, false)
                })
            })
            .collect(),
        _ => vec![],
    }
}

/// Keeps the expression names and values a kept expression uses (DynamoDB refuses unused
/// ones).
fn keep_used(req: &mut Map<String, Value>, expressions: &str) {
    for field in ["ExpressionAttributeNames", "ExpressionAttributeValues"] {
        if let Some(Value::Object(m)) = req.get_mut(field) {
            m.retain(|k, _| expressions.contains(k.as_str()));
            if m.is_empty() {
                req.remove(field);
            }
        }
    }
}

/// The same read, asking for every attribute of every item it reads (no projection, no
/// filter, no COUNT): what DynamoDB charges a read for.
fn full_read(op: &str, req: &Value) -> Value {
    let mut req = req.as_object().cloned().unwrap_or_default();
    match op {
        "GetItem" | "Query" => {
            for f in ["ProjectionExpression", "FilterExpression", "Select"] {
                req.remove(f);
            }
            let used = req
                .get("KeyConditionExpression")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            keep_used(&mut req, &used);
        }
        "BatchGetItem" => {
            if let Some(Value::Object(tables)) = req.get_mut("RequestItems") {
                for t in tables.values_mut() {
                    if let Value::Object(t) = t {
                        t.remove("ProjectionExpression");
                        t.remove("ExpressionAttributeNames");
                    }
                }
            }
        }
        _ => {}
    }
    Value::Object(req)
}

fn items_read(op: &str, answer: &Value) -> Vec<Value> {
    match op {
        "GetItem" => answer.get("Item").cloned().into_iter().collect(),
        "Query" => answer["Items"].as_array().cloned().unwrap_or_default(),
        "BatchGetItem" => answer["Responses"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, items)| items.as_array().cloned().unwrap_or_default())
            .collect(),
        _ => vec![],
    }
}

fn consistent(op: &str, req: &Value) -> bool {
    match op {
        "BatchGetItem" => req["RequestItems"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(_, t)| t["ConsistentRead"] == true),
        _ => req["ConsistentRead"] == true && req.get("IndexName").is_none(),
    }
}

async fn meter_call(
    up: Upstream,
    calls: Arc<Mutex<Vec<Metered>>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let op = target
        .strip_prefix(TARGET_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let headers = parts.headers;
    let is_write = WRITES.contains(&op.as_str());
    let guard = if is_write {
        Some(up.writes.lock().await)
    } else {
        None
    };
    let keys = written_keys(&op, &request);
    let mut befores = vec![];
    for (table, key, _) in &keys {
        befores.push(up.get_item(&headers, table, key).await);
    }
    let answer = match up.post(&headers, body).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("meter: {e}"))));
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return r;
        }
    };
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let answer_body = answer.bytes().await.unwrap_or_default();
    if !op.is_empty() {
        let mut metered = Metered {
            op: op.clone(),
            written: vec![],
            read: vec![],
            consistent: consistent(&op, &request),
        };
        if is_write {
            for ((table, key, transactional), before) in keys.iter().zip(befores) {
                let after = up.get_item(&headers, table, key).await;
                metered.written.push(Written {
                    before,
                    after,
                    transactional: *transactional,
                });
            }
        } else if status.is_success() {
            let full = up.call(&headers, &op, full_read(&op, &request)).await;
            metered.read = items_read(&op, &full);
        }
        calls.lock().unwrap().push(metered);
    }
    drop(guard);
    let mut r = Response::new(Full::new(answer_body));
    *r.status_mut() = status;
    for (name, value) in &answer_headers {
        if name != "content-length" && name != "transfer-encoding" {
            r.headers_mut().insert(name, value.clone());
        }
    }
    r
}

impl Meter {
    async fn start(upstream: &str) -> Meter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let up = Upstream {
            url: upstream.trim_end_matches('/').to_owned() + "/",
            client: reqwest::Client::new(),
            writes: Arc::default(),
        };
        let shared = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (up, calls) = (up.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (up, calls) = (up.clone(), calls.clone());
                        async move { Ok::<_, Infallible>(meter_call(up, calls, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Meter {
            url,
            calls,
            task: Arc::new(task),
        }
    }

    fn len(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn since(&self, mark: usize) -> Vec<Metered> {
        self.calls.lock().unwrap()[mark..].to_vec()
    }

    fn writes(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_write())
            .count()
    }

    /// Waits until no DynamoDB write has come for `quiet` (slipway's work for an event done).
    async fn settle(&self, quiet: Duration) {
        let mut last = (self.writes(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.writes();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Figures.
// ---------------------------------------------------------------------------------------

/// Requests by operation and units, summed over some calls.
#[derive(Debug, Default, Clone)]
struct Tally {
    ops: BTreeMap<String, f64>,
    writes: f64,
    reads: f64,
    wru_table: f64,
    wru_index: f64,
    rru: f64,
    /// WRU (table and GSIs) by the kind of item written.
    by_kind: BTreeMap<String, f64>,
}

/// The kind of an item: its `pk` up to `#` (a delivery's items by `sk`: delivery, body).
fn kind_of(w: &Written) -> String {
    let item = w.after.as_ref().or(w.before.as_ref());
    let field = |f: &str| {
        item.and_then(|i| i[f]["S"].as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let pk = field("pk");
    let kind = pk.split('#').next().unwrap_or("?").to_owned();
    if kind == "delivery" {
        format!("delivery/{}", field("sk"))
    } else {
        kind
    }
}

impl Tally {
    fn of(calls: &[Metered]) -> Tally {
        let mut t = Tally::default();
        for c in calls {
            *t.ops.entry(c.op.clone()).or_default() += 1.0;
            let (table, index, read) = c.units();
            if c.is_write() {
                t.writes += 1.0;
            } else {
                t.reads += 1.0;
            }
            t.wru_table += table;
            t.wru_index += index;
            t.rru += read;
            for w in &c.written {
                let (table, index) = write_units(w);
                *t.by_kind.entry(kind_of(w)).or_default() += table + index;
            }
        }
        t
    }

    fn add(&mut self, o: &Tally) {
        for (op, n) in &o.ops {
            *self.ops.entry(op.clone()).or_default() += n;
        }
        self.writes += o.writes;
        self.reads += o.reads;
        self.wru_table += o.wru_table;
        self.wru_index += o.wru_index;
        self.rru += o.rru;
        for (k, n) in &o.by_kind {
            *self.by_kind.entry(k.clone()).or_default() += n;
        }
    }

    fn scaled(&self, by: f64) -> Tally {
        Tally {
            ops: self.ops.iter().map(|(k, v)| (k.clone(), v * by)).collect(),
            writes: self.writes * by,
            reads: self.reads * by,
            wru_table: self.wru_table * by,
            wru_index: self.wru_index * by,
            rru: self.rru * by,
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, v)| (k.clone(), v * by))
                .collect(),
        }
    }

    fn kinds_line(&self, name: &str) -> String {
        let kinds = self
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{name:<28} WRU by item: {kinds}")
    }

    fn wru(&self) -> f64 {
        self.wru_table + self.wru_index
    }

    fn line(&self, name: &str) -> String {
        let ops = self
            .ops
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{name:<28} writes {:>4.1}  reads {:>5.1}  WRU {:>5.1} (table {:.1} + GSIs {:.1})  RRU {:>5.1}  [{ops}]",
            self.writes,
            self.reads,
            self.wru(),
            self.wru_table,
            self.wru_index,
            self.rru
        )
    }
}

fn push_body(sha: &str, branch: &str) -> Vec<u8> {
    String::from_utf8(fixture("github/push_master.json"))
        .unwrap()
        .replace(MASTER_SHA, sha)
        .replace("refs/heads/master", &format!("refs/heads/{branch}"))
        .into_bytes()
}

fn sha(round: usize, salt: u64) -> String {
    format!("{:040x}", 0xbe4c_0000_0000u64 + salt * 1000 + round as u64)
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Per-event requests and units, the webhook's part separately (the calls before its answer).
async fn requests_and_units(rounds: usize) -> Vec<String> {
    let shas: Vec<String> = (0..rounds).map(|r| sha(r, 1)).collect();
    let images: Vec<&str> = shas.iter().map(String::as_str).collect();
    let w = Deploy::with(Setup {
        extra: &store_config(),
        images: &images,
        ..Setup::default()
    })
    .await;
    make_table(&w.emulator).await;
    let meter = Meter::start(&w.emulator.url).await;
    let dynamodb = Proxy::start(&meter.url).await;
    let builder = w
        .builder
        .clone()
        .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb.url);
    let s = builder.start().await;
    let quiet = Duration::from_millis(1500);
    meter.settle(quiet).await;

    // Idle: what slipway reads with nothing to do (its workers' polls).
    let idle_secs = env_num("BENCH_IDLE_SECS", 10) as f64;
    let mark = meter.len();
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle = Tally::of(&meter.since(mark)).scaled(1.0 / idle_secs);

    let mut kinds: BTreeMap<&str, (Tally, Tally, f64)> = BTreeMap::new();
    let mut record = |kind: &'static str, webhook: Tally, all: Tally, secs: f64| {
        let e = kinds.entry(kind).or_default();
        e.0.add(&webhook);
        e.1.add(&all);
        e.2 += secs;
    };
    for (round, sha) in shas.iter().enumerate() {
        let guid = format!("bench-push-{round}");
        // An accepted delivery of a new push: intake, then the build's start.
        let started = w.proxy.requests("StartBuild").len();
        let (webhook, all, secs) = event(&meter, quiet, || async {
            let r = s.deliver("push", &guid, &push_body(sha, "master")).await;
            assert_eq!(r.status, 202, "{}", r.text);
        })
        .await;
        assert_eq!(w.proxy.requests("StartBuild").len(), started + 1);
        record("accepted", webhook, all, secs);

        // GitHub's redelivery of it, after the build started.
        let (webhook, all, secs) = event(&meter, quiet, || async {
            let r = s.deliver("push", &guid, &push_body(sha, "master")).await;
            assert!(r.status < 300, "{}", r.text);
            assert!(r.text.contains("duplicate"), "{}", r.text);
        })
        .await;
        record("duplicate", webhook, all, secs);

        // A push to a branch no app deploys.
        let (webhook, all, secs) = event(&meter, quiet, || async {
            let r = s
                .deliver(
                    "push",
                    &format!("bench-ignored-{round}"),
                    &push_body(&sha.replace('b', "c"), "bench-no-app"),
                )
                .await;
            assert!(r.status < 300, "{}", r.text);
            assert!(r.text.contains("ignored"), "{}", r.text);
        })
        .await;
        record("ignored", webhook, all, secs);

        // The build's success event, to a deployment that succeeded.
        let arn = w
            .emulator
            .builds(PROJECT)
            .await
            .into_iter()
            .find(|b| b.source_version() == Some(sha.as_str()))
            .and_then(|b| b.arn().map(str::to_owned))
            .expect("the build slipway started");
        let succeeded = w.notes_of("deploy_succeeded").len();
        let (_, all, secs) = event(&meter, quiet, || async {
            w.complete(&arn, "SUCCEEDED", sha).await;
            eventually("the deploy succeeded", || async {
                (w.notes_of("deploy_succeeded").len() > succeeded).then_some(())
            })
            .await;
        })
        .await;
        record("deploy", Tally::default(), all, secs);
    }
    let stored = stored(&w.emulator.url).await;
    let scans = dynamodb
        .operations()
        .iter()
        .filter(|op| op.as_str() == "Scan")
        .count();
    // The proxy and the meter saw the same calls.
    assert_eq!(dynamodb.operations().len(), meter.len());
    drop(s);

    let n = rounds as f64;
    let mut out = vec![
        format!("DynamoDB requests and units (computed from item sizes, not billed), mean of {rounds} rounds"),
        idle.line("idle, per second"),
    ];
    for kind in ["accepted", "ignored", "duplicate", "deploy"] {
        let (webhook, all, secs) = &kinds[kind];
        if kind != "deploy" {
            out.push(
                webhook
                    .scaled(1.0 / n)
                    .line(&format!("{kind}: the webhook")),
            );
        }
        let all = all.scaled(1.0 / n);
        out.push(all.line(&format!("{kind}: all ({:.1} s)", secs / n)));
        out.push(all.kinds_line(&format!("{kind}: all")));
        let mut less_idle = all.clone();
        less_idle.add(&idle.scaled(-secs / n));
        out.push(format!(
            "{:<28} reads {:>5.1}  RRU {:>5.1}",
            format!("{kind}: all less idle polls"),
            less_idle.reads,
            less_idle.rru
        ));
    }
    let (kept, expiring): (Vec<_>, Vec<_>) = stored.iter().partition(|(_, _, e)| !e);
    let sum = |v: &[&(String, usize, bool)]| v.iter().map(|(_, b, _)| b).sum::<usize>() as f64 / n;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, b, _) in &stored {
        *by_kind.entry(k.as_str()).or_default() += b;
    }
    out.push(format!(
        "stored per round (an accepted push deployed, its duplicate, an ignored push), with GSI entries and 100 B per item and entry: kept {:.0} B, expiring by TTL {:.0} B",
        sum(&kept),
        sum(&expiring)
    ));
    out.push(format!(
        "stored per round by item: {}",
        by_kind
            .iter()
            .map(|(k, b)| format!("{k} {:.0} B", *b as f64 / n))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push(format!("Scans: {scans}"));
    out
}

/// Every item of the table (the benchmark's own Scan, straight to moto: not slipway's), as
/// (kind, bytes stored with its GSI entries, whether TTL expires it). Storage counts 100 bytes
/// per item and per index entry besides the data (CapacityUnitCalculations, "storage billing").
async fn stored(moto: &str) -> Vec<(String, usize, bool)> {
    let client = reqwest::Client::new();
    let mut out = vec![];
    let mut start: Option<Value> = None;
    loop {
        let mut body = json!({ "TableName": TABLE });
        if let Some(k) = start.take() {
            body["ExclusiveStartKey"] = k;
        }
        let page: Value = client
            .post(format!("{moto}/"))
            .header("x-amz-target", format!("{TARGET_PREFIX}Scan"))
            .header("content-type", "application/x-amz-json-1.0")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["Items"].as_array().into_iter().flatten() {
            let size = item_size(item) + 100;
            let entries = INDEXES
                .iter()
                .filter(|(_, pk, sk)| item.get(*pk).is_some() && item.get(*sk).is_some())
                .count();
            let w = Written {
                before: None,
                after: Some(item.clone()),
                transactional: false,
            };
            out.push((
                kind_of(&w),
                size * (1 + entries),
                item.get("expires").is_some(),
            ));
        }
        match page.get("LastEvaluatedKey") {
            Some(k) => start = Some(k.clone()),
            None => break,
        }
    }
    assert!(!out.is_empty(), "the table's items read back");
    out
}

/// The calls one event caused: (those before the webhook's answer, all of them until writes
/// settled, seconds taken).
async fn event<F, Fut>(meter: &Meter, quiet: Duration, act: F) -> (Tally, Tally, f64)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mark = meter.len();
    act().await;
    let answered = meter.len();
    meter.settle(quiet).await;
    let calls = meter.since(mark);
    let secs = start.elapsed().as_secs_f64() - quiet.as_secs_f64();
    (
        Tally::of(&calls[..answered - mark]),
        Tally::of(&calls),
        secs,
    )
}

// ---------------------------------------------------------------------------------------
// Intake: SQLite and DynamoDB on moto, same run.
// ---------------------------------------------------------------------------------------

struct Intake {
    accepted: usize,
    /// Answers other than 202: (status, body), the first few.
    refused: Vec<(u16, String)>,
    refused_count: usize,
    secs: f64,
    latencies: Vec<Duration>,
}

/// `n` signed pushes of new commits, by `senders` concurrent senders.
async fn intake(url: &str, n: usize, senders: usize, salt: u64) -> Intake {
    let requests: Vec<(String, Vec<u8>, String)> = (0..n)
        .map(|i| {
            let body = push_body(&sha(i, salt), "master");
            let signature = slipway::webhook::sign(SECRET.as_bytes(), &body);
            (format!("bench-{salt}-{i}"), body, signature)
        })
        .collect();
    let queue = Arc::new(Mutex::new(requests));
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..senders {
        let (queue, client, url) = (queue.clone(), client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut latencies, mut refused) = (0, vec![], vec![]);
            loop {
                let Some((guid, body, signature)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let r = client
                    .post(format!("{url}/webhooks/github"))
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", guid)
                    .header("x-github-hook-id", "4242")
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await
                    .expect("POST");
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                latencies.push(t.elapsed());
                if status == 202 {
                    accepted += 1;
                } else {
                    refused.push((status, text));
                }
            }
            (accepted, latencies, refused)
        }));
    }
    let mut result = Intake {
        accepted: 0,
        refused: vec![],
        refused_count: 0,
        secs: 0.0,
        latencies: vec![],
    };
    for t in tasks {
        let (a, l, r) = t.await.unwrap();
        result.accepted += a;
        result.latencies.extend(l);
        result.refused_count += r.len();
        result.refused.extend(r.into_iter().take(3));
    }
    result.secs = start.elapsed().as_secs_f64();
    result
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn intake_beside_sqlite(n: usize, senders: usize, rounds: usize) -> Vec<String> {
    // CodeBuild (the builds the pushes start) on one moto; the DynamoDB engine's table on
    // another, as DynamoDB and CodeBuild are separate services.
    let aws = Emulator::start().await;
    aws.create_project(PROJECT, "octo-org/web").await;
    let dynamodb = Emulator::start().await;
    make_table(&dynamodb).await;
    // The test proxy counts the calls (a local forwarder: little beside moto's milliseconds).
    let proxy = Proxy::start(&dynamodb.url).await;
    let sqlite = SlipwayBuilder::new(&aws.url).start().await;
    let dynamo = SlipwayBuilder::new(&aws.url)
        .extra(&store_config())
        .env("AWS_ENDPOINT_URL_DYNAMODB", &proxy.url)
        .start()
        .await;
    let before = proxy.operations().len();
    let mut results: BTreeMap<&str, Intake> = BTreeMap::new();
    for round in 0..rounds {
        for (engine, s) in [("sqlite", &sqlite), ("dynamodb (moto)", &dynamo)] {
            let salt = 10 + round as u64 * 2 + u64::from(engine == "sqlite");
            let r = intake(&s.url, n / rounds, senders, salt).await;
            let e = results.entry(engine).or_insert(Intake {
                accepted: 0,
                refused: vec![],
                refused_count: 0,
                secs: 0.0,
                latencies: vec![],
            });
            e.accepted += r.accepted;
            e.refused_count += r.refused_count;
            e.refused.extend(r.refused);
            e.secs += r.secs;
            e.latencies.extend(r.latencies);
            // The builds those pushes start are started before the next engine's turn.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let mut out = vec![format!(
        "Intake: {n} new pushes per engine, {senders} senders, {rounds} alternating rounds (moto is not DynamoDB)"
    )];
    let rate = |e: &Intake| e.accepted as f64 / e.secs;
    for (engine, e) in &mut results {
        e.latencies.sort();
        out.push(format!(
            "{engine:<16} accepted {:>5}  {:>7.1}/s  p50 {:>6.1} ms  p99 {:>6.1} ms",
            e.accepted,
            rate(e),
            percentile(&e.latencies, 0.5),
            percentile(&e.latencies, 0.99)
        ));
        if e.refused_count > 0 {
            out.push(format!(
                "{engine:<16} refused {} (not acknowledged), e.g. {:?}",
                e.refused_count,
                e.refused.iter().take(2).collect::<Vec<_>>()
            ));
        }
    }
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for op in &proxy.operations()[before..] {
        *ops.entry(op.clone()).or_default() += 1;
    }
    out.push(format!(
        "DynamoDB calls during the intake run, per accepted delivery (intake and the build's start): {}",
        ops.iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / results["dynamodb (moto)"].accepted.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (d, q) = (&results["dynamodb (moto)"], &results["sqlite"]);
    out.push(format!(
        "ratio dynamodb/sqlite: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        rate(d) / rate(q),
        percentile(&d.latencies, 0.5) / percentile(&q.latencies, 0.5),
        percentile(&d.latencies, 0.99) / percentile(&q.latencies, 0.99)
    ));
    out
}

// The listings and the proxy share this runtime: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run scripts/bench-dynamodb.sh"]
async fn bench_dynamodb_requests_units_and_intake() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "units,intake".into());
    let mut lines = vec!["BENCH DYNAMODB".to_owned()];
    if parts.contains("units") {
        lines.extend(requests_and_units(env_num("BENCH_ROUNDS", 3)).await);
    }
    if parts.contains("intake") {
        lines.extend(
            intake_beside_sqlite(
                env_num("BENCH_DELIVERIES", 300),
                env_num("BENCH_SENDERS", 4),
                2,
            )
            .await,
        );
    }
    println!("{}", lines.join("\n"));
}

#[test]
fn item_sizes_and_units_follow_dynamodbs_rules() {
    // "S" 5 + name 2; "N" 12345 = 3 significant-digit pairs + 1; binary 3 raw bytes.
    let item = json!({ "pk": { "S": "hello" }, "n": { "N": "12345" }, "b": { "B": "AAEC" } });
    assert_eq!(item_size(&item), 2 + 5 + 1 + 4 + 1 + 3);
    assert_eq!(number_size("100"), 2);
    assert_eq!(value_size(&json!({ "L": [{ "S": "ab" }] })), 3 + 2 + 1);
    let big = json!({ "pk": { "S": "x".repeat(1500) }, "due_pk": { "S": "build" }, "due_sk": { "S": "1" } });
    let moved = json!({ "pk": { "S": "x".repeat(1500) }, "due_pk": { "S": "build" }, "due_sk": { "S": "2" } });
    // 2 KB, transactional: 4; the `due` GSI's key changed: delete + put, 2 KB each.
    let w = Written {
        before: Some(big.clone()),
        after: Some(moved),
        transactional: true,
    };
    assert_eq!(write_units(&w), (4.0, 4.0));
    // A new small item in no index.
    let w = Written {
        before: None,
        after: Some(json!({ "pk": { "S": "a" } })),
        transactional: false,
    };
    assert_eq!(write_units(&w), (1.0, 0.0));
    assert_eq!(read_units("GetItem", &[], false), 0.5);
    assert_eq!(read_units("Query", &[big.clone(), big], true), 1.0);
}
