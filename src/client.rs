//! The CLI's side of the ops API: a small HTTP client with clear errors.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// Environment variable holding the ops token the CLI presents.
pub const TOKEN_ENV: &str = "SLIPWAY_OPS_TOKEN";

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> anyhow::Result<Client> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http(s) URL, not \"{base}\"");
        }
        Ok(Client {
            base,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "connection refused or unreachable"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            anyhow!("cannot reach slipway at {}: {why}", self.base)
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"].as_str().unwrap_or("no error message");
        match status.as_u16() {
            401 if self.token.is_none() => bail!("401: {message} (set {TOKEN_ENV})"),
            401 => bail!("401: {message} (check {TOKEN_ENV})"),
            code => bail!("{code}: {message}"),
        }
    }

    /// Follows a deployment until it ends; Ok only when it succeeded.
    pub async fn wait(&self, id: i64) -> anyhow::Result<Value> {
        let live = std::io::stdout().is_terminal();
        let mut last = String::new();
        loop {
            let d = self.get(&format!("/api/deployments/{id}")).await?;
            let line = progress_line(&d);
            if live {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else if line != last {
                println!("{line}");
            }
            last = line;
            if d["finished"].as_bool() == Some(true) {
                if live {
                    println!();
                }
                return match d["state"].as_str() {
                    Some("succeeded") => Ok(d),
                    Some(state) => Err(anyhow!(
                        "deployment {id} {state}: {}",
                        d["reason"].as_str().unwrap_or("no reason given")
                    )),
                    None => Err(anyhow!("deployment {id} has no state")),
                };
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `deployment 12 web 1f2e3d4: deploying, 1/2 tasks running, 0 failed, 35s`
pub fn progress_line(d: &Value) -> String {
    let sha: String = d["sha"].as_str().unwrap_or("").chars().take(7).collect();
    let mut line = format!(
        "deployment {} {} {sha}: {}",
        d["id"],
        d["app"].as_str().unwrap_or("?"),
        d["state"].as_str().unwrap_or("?")
    );
    if let (Some(running), Some(desired)) =
        (d["running_count"].as_i64(), d["desired_count"].as_i64())
    {
        line.push_str(&format!(
            ", {running}/{desired} tasks running, {} failed",
            d["failed_tasks"].as_i64().unwrap_or(0)
        ));
    }
    if let Some(secs) = d["elapsed_secs"].as_i64() {
        line.push_str(&format!(", {secs}s"));
    }
    if d["finished"].as_bool() == Some(true) {
        if let Some(reason) = d["reason"].as_str() {
            line.push_str(&format!(" ({reason})"));
        }
    }
    line
}
