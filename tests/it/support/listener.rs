//! A local HTTP listener that records the JSON bodies posted to it (notification targets,
//! Slack's response_url).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::Router;

pub struct Listener {
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn record(
    State(bodies): State<Arc<Mutex<Vec<serde_json::Value>>>>,
    body: String,
) -> &'static str {
    let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    bodies.lock().unwrap().push(value);
    "ok"
}

impl Listener {
    pub async fn start() -> Listener {
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let app = Router::new()
            .route("/{*path}", post(record))
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Listener { url, bodies, task }
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A notification target the test takes down and brings back: while down it answers 503, as
/// Slack does when it cannot take a message for now ("Handling errors" in
/// https://api.slack.com/messaging/webhooks: 5xx are worth retrying, 4xx such as `no_service`
/// are not); while up, 200 "ok" as Slack does. Records every request: body, `Idempotency-Key`
/// header and the status it was answered with.
pub struct Endpoint {
    pub url: String,
    state: Arc<EndpointState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct EndpointState {
    down: std::sync::atomic::AtomicBool,
    hits: Mutex<Vec<Hit>>,
}

/// One request an [`Endpoint`] received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub body: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub status: u16,
}

async fn answer(
    State(state): State<Arc<EndpointState>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (axum::http::StatusCode, &'static str) {
    let down = state.down.load(std::sync::atomic::Ordering::SeqCst);
    let status = if down { 503 } else { 200 };
    state.hits.lock().unwrap().push(Hit {
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        status,
    });
    if down {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else {
        (axum::http::StatusCode::OK, "ok")
    }
}

impl Endpoint {
    /// Up, answering 200.
    pub async fn start() -> Endpoint {
        let state: Arc<EndpointState> = Arc::default();
        let app = Router::new()
            .route("/{*path}", post(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/services/T0/B0/secret",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint { url, state, task }
    }

    pub fn down(&self) {
        self.state
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn up(&self) {
        self.state
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request so far, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// The requests it took (answered 200), in order.
    pub fn taken(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.status == 200)
            .collect()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
