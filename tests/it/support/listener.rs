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
