//! slipway itself, as a real process: the binary cargo built, a config file in a temporary
//! state directory, and AWS pointed at the emulator (or the proxy) with `AWS_ENDPOINT_URL`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const DEFAULT_APPS: &str = r#"
[[app]]
name = "web"
repository = "octo-org/web"
codebuild_project = "web-build"
cluster = "web"
service = "web"
container = "web"
ecr_repository = "web"
"#;

#[derive(Clone)]
pub struct SlipwayBuilder {
    dir: Arc<TempDir>,
    aws_endpoint: String,
    secret: Option<String>,
    apps: String,
    extra: String,
    env: Vec<(String, String)>,
    /// The admin URL of the `serve` running on this state_dir, if one is: the CLI's listings
    /// then ask it (the CLI refuses to read a journal a server holds).
    /// Its ops token too (the builder that started it may have been a clone with its own).
    running: Arc<Mutex<Option<Running>>>,
    /// The DynamoDB table this builder's slipway keeps its state in, in the DynamoDB pass
    /// (`SLIPWAY_TEST_STORE=dynamodb`): made at the first start, on an emulator of its own.
    table: Arc<std::sync::OnceLock<super::StoreTable>>,
    /// Its name (given at once: a config written before the first start names it too).
    table_name: String,
}

/// The running `serve`'s admin URL and the ops token it accepts (None: its ops API is off).
type Running = (String, Option<String>);

/// The ops token the harness gives a `serve` whose test set none, so the listings can ask it.
pub const HARNESS_TOKEN: &str = "harness-ops-token-0123456789";

pub struct Slipway {
    child: Child,
    /// The public listener: webhooks, Slack, health.
    pub url: String,
    /// The admin listener: the ops API, health.
    pub admin_url: String,
    pub builder: SlipwayBuilder,
    logs: Arc<Mutex<Vec<String>>>,
}

impl SlipwayBuilder {
    pub fn new(aws_endpoint: &str) -> Self {
        SlipwayBuilder {
            dir: Arc::new(tempfile::tempdir().unwrap()),
            aws_endpoint: aws_endpoint.to_owned(),
            secret: Some(super::SECRET.to_owned()),
            apps: DEFAULT_APPS.to_owned(),
            extra: String::new(),
            env: Vec::new(),
            running: Arc::default(),
            table: Arc::default(),
            table_name: super::unique_table_name(),
        }
    }

    pub fn aws_endpoint(mut self, url: &str) -> Self {
        self.aws_endpoint = url.to_owned();
        self
    }

    /// The value of `SLIPWAY_WEBHOOK_SECRET` (None: unset).
    pub fn secret(mut self, secret: Option<&str>) -> Self {
        self.secret = secret.map(str::to_owned);
        self
    }

    pub fn apps(mut self, apps: &str) -> Self {
        self.apps = apps.to_owned();
        self
    }

    /// Top-level config lines, placed before the apps.
    pub fn extra(mut self, extra: &str) -> Self {
        self.extra = extra.to_owned();
        self
    }

    /// An extra environment variable for slipway.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("slipway.toml")
    }

    pub fn write_config(&self) -> PathBuf {
        // The DynamoDB pass: the same tests, with the state in a DynamoDB table.
        let store = if let Some(table) = self.store_table() {
            // A slipway killed and started again by a test is a new replica: the lease
            // period is how long its work waits for the dead one's leases (15 s by default).
            format!(
                "\n[store]\nengine = \"dynamodb\"\ntable = \"{}\"\n[replicas]\nlease_secs = 3\n",
                table.name
            )
        } else {
            String::new()
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{}\n{store}[build]\nretry_initial_secs = 1\nretry_max_secs = 2\n{}",
            self.state_dir().display(),
            self.extra,
            self.apps
        );
        std::fs::write(self.config_path(), text).unwrap();
        self.config_path()
    }

    /// A `slipway` command with this builder's environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SLIPWAY_LOG_FORMAT", "json")
            .env("SLIPWAY_LOG", "info,slipway=debug,aws=warn");
        if let Some(secret) = &self.secret {
            cmd.env("SLIPWAY_WEBHOOK_SECRET", secret);
        }
        if let Some(table) = self.store_table() {
            // The SDK's service-specific endpoint: DynamoDB on the table's emulator, the rest
            // where the test points AWS.
            cmd.env("AWS_ENDPOINT_URL_DYNAMODB", &table.url);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The ops token this builder's `serve` accepts: the test's own (the first of
    /// SLIPWAY_OPS_TOKENS), or the harness's when the test set none. None: the test disabled
    /// the ops API (SLIPWAY_OPS_TOKENS set empty).
    fn ops_token(&self) -> Option<String> {
        match self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "SLIPWAY_OPS_TOKENS")
        {
            None => Some(HARNESS_TOKEN.to_owned()),
            Some((_, v)) => v
                .split(',')
                .map(str::trim)
                .find(|e| !e.is_empty())
                .map(|e| e.rsplit(':').next().unwrap_or(e).to_owned()),
        }
    }

    /// Runs `slipway serve` and waits until it serves.
    pub async fn start(&self) -> Slipway {
        let s = self.launch(true).await;
        *self.running.lock().unwrap() = Some((s.admin_url.clone(), self.ops_token()));
        s
    }

    /// Runs `slipway serve` and waits until it listens, without taking it for the one that
    /// holds the journal (a second `serve` waiting for the lock).
    pub async fn spawn(&self) -> Slipway {
        self.launch(false).await
    }

    /// Runs `slipway serve`, and waits until it serves or, unless `serving`, only listens.
    async fn launch(&self, serving: bool) -> Slipway {
        let config = self.write_config();
        let mut command = self.command();
        if !self.env.iter().any(|(k, _)| k == "SLIPWAY_OPS_TOKENS") {
            command.env("SLIPWAY_OPS_TOKENS", format!("harness:{HARNESS_TOKEN}"));
        }
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start slipway");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(String, String)>();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("slipway| {line}");
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    // "listening, starting": not serving yet (waiting for the journal lock);
                    // "listening": serving.
                    let message = v["fields"]["message"].as_str().unwrap_or("");
                    if message == "listening" || (message == "listening, starting" && !serving) {
                        let field = |k: &str| v["fields"][k].as_str().unwrap_or("").to_owned();
                        let _ = addr_tx.send((field("addr"), field("admin_addr")));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (addr, admin_addr) = loop {
            if let Ok(addr) = addr_rx.try_recv() {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("slipway exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "slipway did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Slipway {
            child,
            url: format!("http://{addr}"),
            admin_url: format!("http://{admin_addr}"),
            builder: self.clone(),
            logs,
        }
    }

    /// In the DynamoDB pass, the table this builder's slipway uses (made on first use, on the
    /// pass's emulator); None in the SQLite pass, and for a test that sets its own [store].
    pub fn store_table(&self) -> Option<&super::StoreTable> {
        if super::store_engine() != "dynamodb" || self.extra.contains("[store]") {
            return None;
        }
        Some(
            self.table
                .get_or_init(|| super::StoreTable::make(&self.table_name)),
        )
    }

    /// The store this builder's slipway keeps its state in, opened from the test: the SQLite
    /// journal in state_dir (only while no serve holds it), or the DynamoDB table.
    pub async fn open_store(&self) -> ::slipway::store::Store {
        match self.store_table() {
            Some(table) => table.store().await,
            None => ::slipway::store::Store::open(&self.state_dir()).unwrap(),
        }
    }

    /// Runs a `slipway` subcommand to completion: (exit status, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        self.write_config();
        let out = self.command().args(args).output().expect("run slipway");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `slipway deliveries --json`, parsed.
    pub fn deliveries(&self) -> Vec<serde_json::Value> {
        self.json_lines("deliveries")
    }

    /// `slipway deployments --json`, parsed (newest first).
    pub fn deployments(&self) -> Vec<serde_json::Value> {
        self.json_lines("deployments")
    }

    /// Marks the `serve` started from this builder as the one holding the journal now (after
    /// a second one took over).
    pub fn now_running(&self, s: &Slipway) {
        *self.running.lock().unwrap() = Some((s.admin_url.clone(), s.builder.ops_token()));
    }

    fn json_lines(&self, subcommand: &str) -> Vec<serde_json::Value> {
        let config = self.config_path();
        let mut args = vec![
            subcommand.to_owned(),
            "--json".to_owned(),
            "--limit".to_owned(),
            "1000".to_owned(),
            "--config".to_owned(),
            config.to_str().unwrap().to_owned(),
        ];
        let running = self.running.lock().unwrap().clone();
        self.write_config();
        let mut command = self.command();
        if let Some((admin, token)) = running {
            args.extend(["--server".to_owned(), admin]);
            if let Some(token) = token {
                command.env("SLIPWAY_OPS_TOKEN", token);
            }
        }
        let out = command.args(&args).output().expect("run slipway");
        let (status, out, err) = (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(status.success(), "slipway {subcommand} failed: {err}");
        serde_json::from_str(&out).expect("--json prints one JSON array")
    }
}

pub struct WebhookResponse {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

impl Slipway {
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until slipway's logs contain `text`: its output is read on another thread, so a
    /// line written before a state the test saw can reach [`Self::logs`] a moment later.
    pub async fn wait_log(&self, text: &str) {
        super::eventually(&format!("{text:?} in the logs"), || async {
            self.logs().contains(text).then_some(())
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped();
    }

    /// This process no longer holds the journal: the listings read it again.
    fn stopped(&self) {
        let mut running = self.builder.running.lock().unwrap();
        if running
            .as_ref()
            .is_some_and(|(admin, _)| *admin == self.admin_url)
        {
            *running = None;
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.stopped();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "slipway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn deliveries(&self) -> Vec<serde_json::Value> {
        self.builder.deliveries()
    }

    /// POSTs a signed GitHub delivery.
    pub async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> WebhookResponse {
        let signature = slipway::webhook::sign(super::SECRET.as_bytes(), body);
        self.post(
            &[
                ("content-type", "application/json"),
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-github-hook-id", "4242"),
                ("x-hub-signature-256", &signature),
                ("user-agent", "GitHub-Hookshot/test"),
            ],
            body.to_vec(),
        )
        .await
    }

    /// POSTs `body` to the webhook route with exactly these headers.
    pub async fn post(&self, headers: &[(&str, &str)], body: Vec<u8>) -> WebhookResponse {
        let mut req = reqwest::Client::new().post(format!("{}/webhooks/github", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.expect("POST /webhooks/github");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        WebhookResponse {
            status,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
        }
    }

    /// GETs `path` from the admin listener (where `/readyz` tells why in detail).
    pub async fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = reqwest::get(format!("{}{path}", self.admin_url))
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GETs `path`: `/api/…` from the admin listener, anything else from the public one.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let base = if path.starts_with("/api/") {
            &self.admin_url
        } else {
            &self.url
        };
        let resp = reqwest::get(format!("{base}{path}")).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Slipway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped();
    }
}
