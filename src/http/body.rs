//! What every HTTP surface shares: reading a body within limits, looking up a header, and
//! the JSON error answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request declares (`Content-Length`) a body longer than `max` bytes: refused
/// before a byte of it is read.
pub(crate) fn declared_too_large(headers: &HeaderMap, max: usize) -> bool {
    header(headers, "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
}

/// Memory for bodies whose signature is not checked yet, shared by all requests, in KiB.
pub(crate) struct Budget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Budget {
        let total_kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Budget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }
}

impl Budget {
    /// Grows what one body holds (`held`, `held_kib`) to cover `bytes`, waiting up to 2 s.
    async fn grow(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        held_kib: &mut u64,
        bytes: u64,
    ) -> Result<(), Response> {
        let need = bytes.div_ceil(1024).min(u64::from(self.total_kib));
        let more = need.saturating_sub(*held_kib) as u32;
        if more == 0 {
            return Ok(());
        }
        match tokio::time::timeout(BUDGET_WAIT, self.kib.clone().acquire_many_owned(more)).await {
            Ok(Ok(permit)) => {
                match held {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
                *held_kib += u64::from(more);
                Ok(())
            }
            _ => {
                tracing::warn!(kib = more, "no memory budget for a request body within 2 s");
                Err(busy())
            }
        }
    }
}

/// Budget held by one body; given back on drop (once its signature is checked).
pub(crate) struct Held(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// A request waits at most this long for budget, then gets 503.
const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// After this grace period a body must keep coming at `MIN_BYTES_PER_SEC`, or 408.
const RATE_GRACE: Duration = Duration::from_secs(1);
const MIN_BYTES_PER_SEC: u64 = 1024;

fn busy() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many request bodies in flight; retry later",
    );
    response
        .headers_mut()
        .insert("retry-after", "2".parse().expect("static header"));
    response
}

fn too_slow() -> Response {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "request body not received in time",
    )
}

/// A body as received: its chunks, not copied until the caller has checked the signature.
pub(crate) struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }

    /// The body in one piece (a copy: call it once the body is authenticated).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        let mut whole = Vec::with_capacity(self.len);
        for part in self.parts {
            whole.extend_from_slice(&part);
        }
        whole
    }
}

/// Reads the body, refusing more than `limit` bytes without buffering the excess. Every byte
/// held counts against `budget` (taken as the bytes arrive, so a slow client holds only what
/// it sent) until the returned [`Held`] is dropped; `each` sees the chunks as they come (to
/// compute a signature while streaming). A body that comes slower than 1 KiB/s after its
/// first second, or not within `timeout`, is cut off with 408.
pub(crate) async fn read_body(
    mut body: Body,
    limit: usize,
    timeout: Duration,
    budget: &Budget,
    mut each: impl FnMut(&[u8]),
) -> Result<(Chunks, Held), Response> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut held = None;
    let mut held_kib: u64 = 0;
    let mut waited = Duration::ZERO;
    let mut buf = Chunks {
        parts: Vec::new(),
        len: 0,
    };
    loop {
        // The slowest a client may be: `RATE_GRACE` plus one second per KiB received so far.
        // Time spent waiting for budget is slipway's, not the client's.
        let rate_deadline = start
            + waited
            + RATE_GRACE
            + Duration::from_millis(buf.len() as u64 * 1000 / MIN_BYTES_PER_SEC);
        let frame =
            match tokio::time::timeout_at(rate_deadline.min(deadline).into(), body.frame()).await {
                Err(_) => {
                    tracing::warn!(received = buf.len(), "request body too slow; cut off");
                    return Err(too_slow());
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "could not read the request body",
                    ))
                }
                Ok(Some(Ok(frame))) => frame,
            };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            tracing::warn!(limit, "request body too large; refused while reading it");
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body is larger than {limit} bytes"),
            ));
        }
        let asked = Instant::now();
        budget
            .grow(&mut held, &mut held_kib, (buf.len() + data.len()) as u64)
            .await?;
        waited += asked.elapsed();
        each(&data);
        buf.len += data.len();
        buf.parts.push(data);
    }
    Ok((buf, Held(held)))
}
