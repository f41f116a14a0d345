//! The benchmark's baseline (scripts/bench-intake.sh): a bare hyper server that reads the body
//! and checks its HMAC-SHA256 signature, and nothing else (no parsing, no storage).
//!
//! `cargo run --release --example bench_baseline -- 127.0.0.1:9001` (secret from
//! SLIPWAY_WEBHOOK_SECRET).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

async fn handle(
    secret: Arc<Vec<u8>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signature = req
        .headers()
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("any key length");
    mac.update(&body);
    Ok(match mac.verify_slice(&signature) {
        Ok(()) => reply(StatusCode::ACCEPTED, "{\"status\":\"accepted\"}"),
        Err(_) => reply(StatusCode::UNAUTHORIZED, "{\"error\":\"bad signature\"}"),
    })
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let secret = Arc::new(
        std::env::var("SLIPWAY_WEBHOOK_SECRET")
            .unwrap_or_default()
            .into_bytes(),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let secret = secret.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(secret.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
