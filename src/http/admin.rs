//! What every request to the admin listener goes through: the `Host` it names must be one the
//! listener is configured for (DNS rebinding: a page an operator opens must not read the admin
//! listener through a name the attacker controls), the status page and `/metrics` may need a
//! read token, and every answer carries the security headers of a page a browser opens.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

/// Host names every admin listener answers for, with any port.
const LOOPBACK_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

/// 421 Misdirected Request for a `Host` this listener is not configured for, on every route.
pub(super) async fn known_host(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if host.is_some_and(|h| allowed_host(h, &state.limits.admin_hosts)) {
        return next.run(request).await;
    }
    tracing::warn!(
        host = ?host.map(crate::webhook::clip).unwrap_or_default(),
        "admin: a request for a host this listener does not answer for; refused"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(json!({
            "error": "the admin listener does not answer for this Host (see [server] admin_hosts)",
            "code": "misdirected",
        })),
    )
        .into_response()
}

/// Whether `host` (a `Host` header: `name` or `name:port`) is a loopback name or one of
/// `configured` (`name`, any port; or exactly `name:port`).
fn allowed_host(host: &str, configured: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    let name = host_name(&host);
    LOOPBACK_NAMES.contains(&name)
        || configured
            .iter()
            .any(|c| *c == host || (host_name(c) == c.as_str() && c == name))
}

/// The name part of `name[:port]` (an IPv6 literal keeps its brackets).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The status page and `/metrics` with `SLIPWAY_READ_TOKEN` set: a bearer token or HTTP Basic
/// with the token as password (an ops token opens them too); otherwise 401 asking for Basic.
pub(super) async fn read_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.read_token.is_enabled() || presents_read_token(&state, request.headers()) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": "the status page and /metrics need the read token (SLIPWAY_READ_TOKEN)",
            "code": "unauthorized",
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"slipway\", charset=\"UTF-8\""),
    );
    response
}

fn presents_read_token(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let Some(decoded) = aws_smithy_types::base64::decode(basic.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
        else {
            return false;
        };
        match decoded.split_once(':') {
            Some((_, password)) => password.to_owned(),
            None => return false,
        }
    } else {
        return false;
    };
    // Both checked, so the time taken does not tell which kind of token it was.
    let read = state.read_token.check(&presented);
    let ops = state.ops_tokens.check(&presented).is_some();
    read | ops
}

/// Adds the admin listener's security headers to `response`: a `Content-Security-Policy` that
/// lets nothing load or run but the status page's own stylesheet, no sniffing, no framing, no
/// referrer.
pub(super) async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(crate::page::content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_configured_hosts_only() {
        let none: Vec<String> = vec![];
        for ok in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(allowed_host(ok, &none), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:9090",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example:9090",
            "[::2]:9090",
            "",
        ] {
            assert!(!allowed_host(bad, &none), "{bad}");
        }
        let configured = vec!["slipway.internal".to_owned(), "ops.example:8443".to_owned()];
        assert!(allowed_host("slipway.internal:9090", &configured));
        assert!(allowed_host("Slipway.Internal", &configured));
        assert!(allowed_host("ops.example:8443", &configured));
        assert!(!allowed_host("ops.example:9090", &configured));
        assert!(!allowed_host("ops.example", &configured));
    }
}
