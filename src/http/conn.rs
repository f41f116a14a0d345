//! Accepting connections without letting one client take them all.
//!
//! Both listeners speak HTTP/1.1 only (GitHub, Slack and the CLI all do), so there is no
//! protocol sniffing to stall and no HTTP/2 connection without an idle timeout. Hyper's header
//! timeout starts whenever a connection waits for a request head: it bounds the first byte, the
//! whole head, and the idle time between keep-alive requests alike.
//!
//! Each client address may hold `max_connections_per_ip` connections and all together
//! `max_connections`. A connection over either cap is not refused at once: a small reserve
//! serves it `/healthz` and `/readyz` only (anything else: 503), without keep-alive, so health
//! checks keep answering while an abusive client holds the cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerLimits;

/// Connections served beyond the caps, for health checks only.
const RESERVED_CONNECTIONS: usize = 32;
/// A reserved connection gets this long for its one request head.
const RESERVED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection of `ip`; uncounted on drop.
struct IpSlot {
    ip: IpAddr,
    table: Arc<PerIp>,
}

impl PerIp {
    /// A slot for `ip` if it holds fewer than `cap` connections.
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut table = self.0.lock().expect("per-ip table");
        let open = table.entry(ip).or_default();
        if *open >= cap {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            ip,
            table: self.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().expect("per-ip table");
        if let Some(open) = table.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Answers over-cap connections: the health routes, or 503.
pub(super) fn reserved_router(health: Router) -> Router {
    health.fallback(|| async {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "error": "too many connections; retry later" })),
        )
            .into_response();
        response
            .headers_mut()
            .insert("retry-after", "1".parse().expect("static header"));
        response
    })
}

/// Serves `listener` until `stop` is cancelled; connections finish under `graceful`.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    reserved: Router,
    limits: ServerLimits,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
) {
    let per_ip: Arc<PerIp> = Arc::default();
    let general = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(RESERVED_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut reserved_builder = hyper::server::conn::http1::Builder::new();
    reserved_builder
        .timer(TokioTimer::new())
        .header_read_timeout(RESERVED_HEADER_TIMEOUT)
        .keep_alive(false);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        // Behind a load balancer every connection comes from it: only the total cap applies.
        let cap = if limits.trusted_proxies.contains(&ip) {
            usize::MAX
        } else {
            limits.max_connections_per_ip
        };
        let admitted = per_ip
            .take(ip, cap)
            .and_then(|slot| Some((slot, general.clone().try_acquire_owned().ok()?)));
        let (service, conn_builder, guard) = match admitted {
            Some((slot, permit)) => (app.clone(), &builder, (Some(slot), permit)),
            None => match reserve.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(%peer, "connection over the cap: health checks only");
                    (reserved.clone(), &reserved_builder, (None, permit))
                }
                Err(_) => {
                    tracing::warn!(%peer, "connection over the cap and the reserve: closed");
                    continue;
                }
            },
        };
        let conn =
            conn_builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(guard);
        });
    }
}
