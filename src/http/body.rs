//! What every HTTP surface shares: reading a body within limits, looking up a header, and
//! the JSON error answer.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body, refusing more than `limit` bytes without buffering the excess.
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, Response> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            tracing::warn!(limit, "request body too large; refused while reading it");
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body is larger than {limit} bytes"),
            ))
        }
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}
