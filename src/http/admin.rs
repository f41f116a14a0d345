//! What every answer of the admin listener goes through: the security headers of a page an
//! operator's browser opens (`Content-Security-Policy` and friends).

use axum::http::{header, HeaderValue};
use axum::response::Response;

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
