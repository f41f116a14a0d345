//! The test harness: the emulator, the proxy in front of it, and slipway itself.

#![allow(dead_code)]

pub mod cfn;
pub mod emulator;
pub mod github_fake;
pub mod listener;
pub mod proxy;
pub mod slipway;
pub mod world;

use std::time::{Duration, Instant};

pub use emulator::Emulator;
pub use proxy::Proxy;
pub use slipway::SlipwayBuilder;

pub const SECRET: &str = "test-webhook-secret";
pub const MASTER_SHA: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {full}: {e}"))
}

/// Polls `check` until it returns `Some`, or panics with `what` after a generous deadline.
/// Tests wait on state, never on time.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SDK configuration pointing at `endpoint`, for the test's own assertions.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_codebuild::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await
}
