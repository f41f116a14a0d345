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

/// A failed request, sorted so `--wait` can tell a blip from an answer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The HTTP status slipway answered with; None when it could not be reached.
    pub status: Option<u16>,
    pub message: String,
}

impl RequestError {
    /// Worth asking again: slipway unreachable, restarting or overloaded.
    pub fn is_transient(&self) -> bool {
        self.status.is_none_or(|s| s >= 500 || s == 429)
    }
}

/// One path segment, percent-encoded (an app named `a/b` stays one segment).
pub fn encode(segment: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Whether `url`'s host is this machine, where plain http:// does not cross a network.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client for the slipway at `server`. With a token, plain http:// is allowed only to
    /// this machine unless `insecure`: the token would cross the network in clear text.
    pub fn new(server: &str, insecure: bool) -> anyhow::Result<Client> {
        let base = server.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        let Some(url) = url else {
            bail!("--server must be an http(s) URL, not \"{base}\"");
        };
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        if token.is_some() && url.scheme() == "http" && !is_loopback(&url) && !insecure {
            bail!(
                "refusing to send {TOKEN_ENV} over plain http:// to {}: use https://, or \
                 --insecure if the network is trusted",
                url.host_str().unwrap_or("?")
            );
        }
        Ok(Client {
            base,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.http.get(self.url(path))).await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.http.post(self.url(path)).json(body)).await?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value, RequestError> {
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
            RequestError {
                status: None,
                message: format!("cannot reach slipway at {}: {why}", self.base),
            }
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"].as_str().unwrap_or("no error message");
        let code = status.as_u16();
        let message = match (code, &self.token) {
            (401, None) => format!("401: {message} (set {TOKEN_ENV})"),
            // The server's SLIPWAY_OPS_TOKENS entries are `label:token`; the CLI sends only the
            // token.
            (401, Some(t)) if t.contains(':') => format!(
                "401: {message} ({TOKEN_ENV} holds only the token: drop the `label:` prefix \
                 used in SLIPWAY_OPS_TOKENS)"
            ),
            (401, Some(_)) => format!("401: {message} (check {TOKEN_ENV})"),
            _ => format!("{code}: {message}"),
        };
        Err(RequestError {
            status: Some(code),
            message,
        })
    }

    /// Follows a deployment until it ends; Ok only when it succeeded. Polls that fail because
    /// slipway is briefly unreachable or answers 5xx are retried until `timeout`.
    pub async fn wait(&self, id: i64, timeout: Duration) -> anyhow::Result<Value> {
        let live = std::io::stdout().is_terminal();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        let mut last_error: Option<RequestError>;
        loop {
            match self
                .send(self.http.get(self.url(&format!("/api/deployments/{id}"))))
                .await
            {
                Ok(d) => {
                    last_error = None;
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
                }
                Err(e) if e.is_transient() => {
                    eprintln!("{e}; still following deployment {id}");
                    last_error = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
            if tokio::time::Instant::now() >= deadline {
                if live {
                    println!();
                }
                let why = last_error
                    .map(|e| format!(" (last poll: {e})"))
                    .unwrap_or_default();
                bail!(
                    "gave up following deployment {id} after {}{why}; it goes on in slipway: \
                     see `slipway deployments`",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `deployment 12 web 1f2e3d4: deploying, 1/2 tasks running, 0 failed, stage BAKE_TIME, 35s`
/// (the stage while ECS's blue/green, linear or canary deployment runs).
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
    if let Some(stage) = d["stage"].as_str() {
        line.push_str(&format!(", stage {stage}"));
    }
    if let Some(secs) = d["elapsed_secs"].as_i64() {
        line.push_str(&format!(", {secs}s"));
    }
    if d["finished"].as_bool() != Some(true) {
        if let Some(why) = d["deadline_why"].as_str() {
            line.push_str(&format!(", deadline {why}"));
        }
        if let Some(unseen) = d["unseen"].as_str() {
            line.push_str(&format!(", {unseen}"));
        }
    }
    if d["finished"].as_bool() == Some(true) {
        if let Some(reason) = d["reason"].as_str() {
            line.push_str(&format!(" ({reason})"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::progress_line;

    #[test]
    fn progress_shows_ecs_lifecycle_stage_while_it_runs() {
        let d = serde_json::json!({
            "id": 12, "app": "web", "sha": "1f2e3d4c5b", "state": "deploying",
            "running_count": 1, "desired_count": 2, "failed_tasks": 0,
            "stage": "BAKE_TIME", "elapsed_secs": 35, "finished": false,
        });
        assert_eq!(
            progress_line(&d),
            "deployment 12 web 1f2e3d4: deploying, 1/2 tasks running, 0 failed, stage BAKE_TIME, 35s"
        );
        let done = serde_json::json!({
            "id": 12, "app": "web", "sha": "1f2e3d4c5b", "state": "succeeded",
            "stage": null, "finished": true, "reason": "rollout completed",
        });
        assert_eq!(
            progress_line(&done),
            "deployment 12 web 1f2e3d4: succeeded (rollout completed)"
        );
    }
}
