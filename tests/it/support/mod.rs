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

/// `n` bytes that do not compress (xorshift from `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
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

/// The events the journal in `state_dir` recorded as rejected or not acted on, newest first.
/// slipway holds the journal while it serves (the CLI and `Journal::open_read_only` would be
/// refused): the test looks inside the file read-only, as `sqlite3 -readonly` would. No API
/// lists them.
pub fn rejected_events(state_dir: &std::path::Path) -> Vec<::slipway::store::RejectedEvent> {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("journal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the journal");
    let mut stmt = db
        .prepare(
            "SELECT message_id, build_id, source, account, reason, received_ms
             FROM rejected_events ORDER BY id DESC",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(::slipway::store::RejectedEvent {
                message_id: r.get(0)?,
                build_id: r.get(1)?,
                source: r.get(2)?,
                account: r.get(3)?,
                reason: r.get(4)?,
                received_ms: r.get(5)?,
            })
        })
        .unwrap();
    rows.collect::<Result<Vec<_>, _>>()
        .expect("rejected events")
}
