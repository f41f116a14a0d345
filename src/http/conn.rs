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
use std::net::{IpAddr, SocketAddr};
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
use tower::ServiceExt;

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
    health.fallback(|| async { too_many() })
}

/// 503 with `Retry-After`: this client holds too many connections (or requests).
fn too_many() -> axum::response::Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": "too many connections; retry later" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert("retry-after", "1".parse().expect("static header"));
    response
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
        let service = service.map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                request
            },
        );
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

/// The address a connection came from (a load balancer's, behind one).
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(pub SocketAddr);

/// The client behind a request: the peer, or, when the peer is a trusted proxy, the nearest
/// `X-Forwarded-For` hop that is not one (proxies append the address they saw, so hops left
/// of the first untrusted one could be written by the client).
pub(super) fn client_ip(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(forwarded) = forwarded else {
        return peer;
    };
    for hop in forwarded.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}

/// Requests in flight per client behind trusted proxies, where the connection cap cannot see
/// clients (the load balancer holds all the connections).
#[derive(Default)]
pub(super) struct Forwarded(Arc<PerIp>);

/// Middleware for the public listener: a client behind a trusted proxy may have
/// `max_connections_per_ip` requests in flight; more get 503 with `Retry-After`.
pub(super) async fn limit_forwarded(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let trusted = &state.limits.trusted_proxies;
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return next.run(request).await;
    };
    if !trusted.contains(&peer.ip()) {
        return next.run(request).await;
    }
    let forwarded = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = client_ip(peer.ip(), forwarded, trusted);
    let Some(_slot) = state
        .forwarded
        .0
        .take(client, state.limits.max_connections_per_ip)
    else {
        tracing::warn!(%client, "too many requests in flight from one client behind the proxy");
        return too_many();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_forwarded_hop() {
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let lb2: IpAddr = "10.0.0.6".parse().unwrap();
        let trusted = [lb, lb2];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not a proxy: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(lb, Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        // A forged leftmost hop does not count; the one the proxy appended does.
        assert_eq!(
            client_ip(lb, Some("1.2.3.4, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(lb, Some("198.51.100.7, 10.0.0.6"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(lb, None, &trusted), lb);
        assert_eq!(client_ip(lb, Some("garbage"), &trusted), lb);
    }
}
