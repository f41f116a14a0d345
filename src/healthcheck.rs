//! `slipway healthcheck`: is the slipway on this machine up? The container health check of
//! the image and of the ECS task definition, so the runtime image needs no curl (nor a shell).
//!
//! It GETs `/healthz` on the public listener of the config (an unspecified address such as
//! `0.0.0.0` is reached on the loopback of its family), or on `--url`, with a short timeout,
//! and never through a proxy: the answer must come from this host. Up (200): exit 0, and a
//! line on stdout. Down (anything else, a refused connection, a timeout): exit 1, and why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Why the check failed; the message is what the operator (or `docker inspect`) sees.
#[derive(Debug, thiserror::Error)]
pub enum Down {
    #[error("down: {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("down: {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("down: {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Where `/healthz` is reached for a server listening on `listen`.
pub fn url_for(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` once; Ok with a line saying it is up, or why it is down.
pub async fn check(url: &str, timeout: Duration) -> Result<String, Down> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Down::Unreachable {
            url: url.to_owned(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            Down::Timeout {
                url: url.to_owned(),
                timeout,
            }
        } else {
            Down::Unreachable {
                url: url.to_owned(),
                reason: cause_chain(&e),
            }
        }
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        Ok(format!("up: {url} answered {status}"))
    } else {
        Err(Down::Status {
            url: url.to_owned(),
            status,
        })
    }
}

/// reqwest's own message is only "error sending request"; the cause (e.g. "Connection
/// refused") is further down the chain.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `slipway healthcheck`: `url` if given, else the public listener of the config at
/// `config_path`. Any error (the config included) is a failed check: exit 1.
pub async fn command(
    config_path: &Path,
    url: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url.to_owned(),
        None => {
            let config = crate::config::Config::load(config_path).with_context(|| {
                format!(
                    "down: cannot tell where slipway listens (pass --url): loading {}",
                    config_path.display()
                )
            })?;
            url_for(config.listen)
        }
    };
    let up = check(&url, timeout).await?;
    println!("{up}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let u = |s: &str| url_for(s.parse().unwrap());
        assert_eq!(u("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(u("[::]:8080"), "http://[::1]:8080/healthz");
        assert_eq!(u("10.0.0.5:81"), "http://10.0.0.5:81/healthz");
    }
}
