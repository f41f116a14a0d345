//! A small proxy between slipway and the emulator that the tests control.
//!
//! It forwards every request to the emulator and records it, and it lets a test script what
//! the emulator cannot do: throttling, 5xx, latency, and (for the deploy tests) rollout
//! outcomes. Operations are named by their AWS name (`StartBuild`, `DescribeServices`, …),
//! taken from the `X-Amz-Target` header of the JSON protocols.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub operation: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with an AWS error instead of forwarding.
    Error { status: u16, code: String },
    /// Wait, then forward.
    Delay(Duration),
}

#[derive(Default)]
struct State {
    upstream: String,
    recorded: Vec<Recorded>,
    faults: Vec<(String, VecDeque<Fault>)>,
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

fn operation_of(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned()
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            upstream: upstream.to_owned(),
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
                        async move { Ok::<_, Infallible>(handle(state, client, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy {
            url,
            state,
            task: Arc::new(task),
        }
    }

    /// The next `faults.len()` calls of `operation` get these faults, in order.
    pub fn script(&self, operation: &str, faults: impl IntoIterator<Item = Fault>) {
        let mut state = self.state.lock().unwrap();
        state
            .faults
            .push((operation.to_owned(), faults.into_iter().collect()));
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

    /// The requests of `operation` that reached the proxy, in order.
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

async fn handle(
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let operation = operation_of(&req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let upstream = {
        let mut s = state.lock().unwrap();
        s.recorded.push(Recorded {
            operation: operation.clone(),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
        s.upstream.clone()
    };
    match next_fault(&state, &operation) {
        Some(Fault::Error { status, code }) => {
            let payload = serde_json::json!({ "__type": code, "message": format!("injected by the test proxy: {code}") });
            return Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-errortype", code)
                .body(Full::new(Bytes::from(payload.to_string())))
                .unwrap();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let uri = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = client.request(parts.method.clone(), uri);
    for (name, value) in parts.headers.iter() {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    match forward.body(body).send().await {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    out = out.header(name, value);
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            out.body(Full::new(bytes)).unwrap()
        }
        Err(e) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(format!("proxy: {e}"))))
            .unwrap(),
    }
}
