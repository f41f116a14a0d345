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

/// Which engine the end-to-end tests run slipway's state on: `SLIPWAY_TEST_STORE`, "sqlite"
/// (the default) or "dynamodb" (scripts/test.sh runs the suite once for each).
pub fn store_engine() -> String {
    match std::env::var("SLIPWAY_TEST_STORE").ok().as_deref() {
        None | Some("") | Some("sqlite") => "sqlite".to_owned(),
        Some("dynamodb") => "dynamodb".to_owned(),
        Some(other) => panic!("SLIPWAY_TEST_STORE={other}: use sqlite or dynamodb"),
    }
}

/// The DynamoDB pass's emulator: one per test process (moto's start costs seconds of CPU),
/// each slipway with a table of its own on it. It runs under a shell that stops it when the
/// test process exits (its stdin, held open until then, closes).
fn store_emulator_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args([
                "-c",
                "\"$0\" -H 127.0.0.1 -p 0 & pid=$!; cat >/dev/null; kill $pid",
                &emulator::moto_server(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server for the DynamoDB pass");
        // Held open for the life of the test process.
        std::mem::forget(child.stdin.take());
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split_once("Running on http://127.0.0.1:")
                    .and_then(|(_, port)| port.trim().parse::<u16>().ok())
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        // Reaped when it exits (with the test process, or earlier if moto fails).
        std::thread::spawn(move || child.wait());
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server said where it runs");
        format!("http://127.0.0.1:{port}")
    })
}

/// A DynamoDB table for one slipway's state in the DynamoDB pass, as `slipway provision`
/// makes it (`DynamoStore::create_table`), on the pass's emulator.
pub struct StoreTable {
    pub url: String,
    pub name: String,
}

impl StoreTable {
    /// Makes the table. Blocking, on a thread and runtime of its own, so that any config the
    /// harness writes (from sync code too) names a table that exists.
    pub fn make(name: &str) -> StoreTable {
        let table = StoreTable {
            url: store_emulator_url().to_owned(),
            name: name.to_owned(),
        };
        let (url, name) = (table.url.clone(), table.name.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let engine = StoreTable::engine(&url, &name).await;
                let now = ::slipway::store::millis(time::OffsetDateTime::now_utc());
                // The emulator may still be starting up.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match engine.create_table(now).await {
                        Ok(()) => break,
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("create the state table {name}: {e}"),
                    }
                }
            })
        })
        .join()
        .expect("the state table made");
        table
    }

    async fn engine(url: &str, name: &str) -> ::slipway::store::dynamodb::DynamoStore {
        ::slipway::store::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk_config(url).await),
            name,
            &::slipway::config::JournalConfig::default(),
        )
    }

    /// The engine on this table, for a test's own reads.
    pub async fn store(&self) -> ::slipway::store::Store {
        ::slipway::store::Store::DynamoDb(StoreTable::engine(&self.url, &self.name).await)
    }
}

/// A table name no other slipway of this test process has.
pub fn unique_table_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "slipway-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

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

/// The events slipway's store recorded as rejected or not acted on, newest first. No API
/// lists them. The SQLite journal is held by the running slipway (the CLI and
/// `Store::open_read_only` would be refused): the test looks inside the file read-only, as
/// `sqlite3 -readonly` would. A DynamoDB table is read through the engine.
pub async fn rejected_events(builder: &SlipwayBuilder) -> Vec<::slipway::store::RejectedEvent> {
    if let Some(table) = builder.store_table() {
        return table.store().await.rejected_events(1000).await.unwrap();
    }
    rejected_events_in(&builder.state_dir())
}

fn rejected_events_in(state_dir: &std::path::Path) -> Vec<::slipway::store::RejectedEvent> {
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
