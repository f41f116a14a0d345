//! Accepting connections without letting one client take them all.
//!
//! Both listeners speak HTTP/1.1 only (GitHub, Slack and the CLI all do), so there is no
//! protocol sniffing to stall and no HTTP/2 connection without an idle timeout. Hyper's header
//! timeout starts whenever a connection waits for a request head: it bounds the first byte, the
//! whole head, and the idle time between keep-alive requests alike.
//!
//! Each client address may hold `max_connections_per_ip` connections and all together
//! `max_connections`. At a cap, a new connection evicts the oldest connection that is not in
//! the middle of a request (it has not sent a complete request head: idle, slow, or between
//! keep-alive requests): first one of its own address, then, at the overall cap, anyone's. So a
//! real client is always admitted and the abuser's own connections pay. Only when every
//! connection is busy with a request does a small reserve serve the newcomer `/healthz` and
//! `/readyz` only (anything else: 503), without keep-alive.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServerLimits;

/// Connections served beyond the caps, for health checks only.
const RESERVED_CONNECTIONS: usize = 32;
/// A reserved connection gets this long for its one request head.
const RESERVED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an admitted connection waits for the place an evicted one frees.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// One open connection, as eviction sees it.
struct Tracked {
    ip: IpAddr,
    /// Requests in flight on it (0: waiting for a request head).
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
    reserved: bool,
}

/// The open connections of one listener, oldest first (ids count up).
#[derive(Default)]
struct Registry(Mutex<BTreeMap<u64, Tracked>>);

impl Registry {
    /// Closes the oldest connection waiting for a request head, of `ip` if given, in the
    /// reserve or not, among those accepted before connection `newcomer`. Whether there was
    /// one. An admission runs off the accept loop, so connections accepted after it may be
    /// registered by then: they are never its victims (a client's keep-alive connection that
    /// has just been answered is not closed under it for an older newcomer).
    fn evict(&self, ip: Option<IpAddr>, reserved: bool, newcomer: u64) -> bool {
        let mut table = self.0.lock().expect("connection registry");
        let victim = table
            .range(..newcomer)
            .find(|(_, t)| {
                t.reserved == reserved
                    && ip.is_none_or(|ip| t.ip == ip)
                    && t.busy.load(Ordering::Acquire) == 0
                    && !t.close.is_cancelled()
            })
            .map(|(id, _)| *id);
        match victim.and_then(|id| table.remove(&id)) {
            Some(t) => {
                t.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection of `ip`; uncounted on drop.
struct IpSlot {
    ip: IpAddr,
    table: Arc<PerIp>,
}

impl PerIp {
    /// How many connections `ip` holds.
    fn open(&self, ip: IpAddr) -> usize {
        self.0
            .lock()
            .expect("per-ip table")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

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
    let registry: Arc<Registry> = Arc::default();
    let mut next_id: u64 = 0;
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
        next_id += 1;
        let admission = Admission {
            id: next_id,
            ip,
            cap,
            per_ip: per_ip.clone(),
            general: general.clone(),
            reserve: reserve.clone(),
            registry: registry.clone(),
        };
        let ctx = ConnCtx {
            app: app.clone(),
            reserved: reserved.clone(),
            builder: builder.clone(),
            reserved_builder: reserved_builder.clone(),
            watcher: graceful.watcher(),
        };
        // Direct admission needs no wait; an eviction waits (briefly) for the place it freed,
        // off the accept loop.
        match admission.try_now() {
            Some(slot) => ctx.serve(stream, peer, slot, &admission),
            None => {
                tokio::spawn(async move {
                    match admission.after_eviction().await {
                        Some(slot) => ctx.serve(stream, peer, slot, &admission),
                        None => {
                            tracing::warn!(%peer, "connection over the cap and the reserve, every connection busy: closed");
                        }
                    }
                });
            }
        }
    }
}

/// What one accepted connection holds (given back on drop, when it ends): its address slot
/// and general permit, or a reserve permit (health checks only).
#[allow(dead_code)]
enum Slot {
    General(IpSlot, OwnedSemaphorePermit),
    Reserved(OwnedSemaphorePermit),
}

/// Admits one connection within the caps.
struct Admission {
    id: u64,
    ip: IpAddr,
    cap: usize,
    per_ip: Arc<PerIp>,
    general: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    registry: Arc<Registry>,
}

impl Admission {
    fn try_now(&self) -> Option<Slot> {
        let slot = self.per_ip.take(self.ip, self.cap)?;
        let permit = self.general.clone().try_acquire_owned().ok()?;
        Some(Slot::General(slot, permit))
    }

    /// At a cap: evicts the oldest idle connection of this address, else (at the overall cap)
    /// anyone's, and takes the place; if every connection is busy, the health-check reserve
    /// (evicting its oldest idle one if it is full).
    async fn after_eviction(&self) -> Option<Slot> {
        let own_full = self.per_ip.open(self.ip) >= self.cap;
        let evicted = self.registry.evict(Some(self.ip), false, self.id)
            || (!own_full && self.registry.evict(None, false, self.id));
        if evicted {
            if let Some(slot) = self.wait(|| self.try_now()).await {
                return Some(slot);
            }
        }
        let reserve = || {
            self.reserve
                .clone()
                .try_acquire_owned()
                .ok()
                .map(Slot::Reserved)
        };
        if let Some(slot) = reserve() {
            return Some(slot);
        }
        if self.registry.evict(None, true, self.id) {
            return self.wait(reserve).await;
        }
        None
    }

    async fn wait(&self, take: impl Fn() -> Option<Slot>) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
        loop {
            if let Some(slot) = take() {
                return Some(slot);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What serving a connection needs.
struct ConnCtx {
    app: Router,
    reserved: Router,
    builder: hyper::server::conn::http1::Builder,
    reserved_builder: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
}

impl ConnCtx {
    fn serve(self, stream: tokio::net::TcpStream, peer: SocketAddr, slot: Slot, a: &Admission) {
        let reserved = matches!(slot, Slot::Reserved(_));
        if reserved {
            tracing::debug!(%peer, "connection over the cap, every connection busy: health checks only");
        }
        let busy = Arc::new(AtomicUsize::new(0));
        let close = CancellationToken::new();
        a.registry.0.lock().expect("connection registry").insert(
            a.id,
            Tracked {
                ip: a.ip,
                busy: busy.clone(),
                close: close.clone(),
                reserved,
            },
        );
        let (service, conn_builder) = if reserved {
            (self.reserved, self.reserved_builder)
        } else {
            (self.app, self.builder)
        };
        let (started, ended) = (busy.clone(), busy);
        // A request in flight makes the connection busy (not evictable) until it is answered.
        let service = service
            .map_request(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    started.fetch_add(1, Ordering::AcqRel);
                    request.extensions_mut().insert(Peer(peer));
                    request
                },
            )
            .map_response(move |response| {
                ended.fetch_sub(1, Ordering::AcqRel);
                response
            });
        let conn =
            conn_builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = self.watcher.watch(conn);
        let (registry, id) = (a.registry.clone(), a.id);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = close.cancelled() => {
                    tracing::debug!(%peer, "connection evicted: it had sent no request head");
                }
            }
            registry.0.lock().expect("connection registry").remove(&id);
            drop(slot);
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

    fn track(registry: &Registry, id: u64, ip: IpAddr, busy: usize) -> CancellationToken {
        let close = CancellationToken::new();
        registry.0.lock().unwrap().insert(
            id,
            Tracked {
                ip,
                busy: Arc::new(AtomicUsize::new(busy)),
                close: close.clone(),
                reserved: false,
            },
        );
        close
    }

    #[test]
    fn a_newcomer_evicts_only_idle_connections_older_than_itself_oldest_first() {
        let registry = Registry::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let busy = track(&registry, 1, ip, 1);
        let oldest_idle = track(&registry, 2, ip, 0);
        let idle = track(&registry, 3, ip, 0);
        // Accepted after newcomer 4 but registered before its admission ran.
        let later = track(&registry, 5, ip, 0);
        assert!(registry.evict(Some(ip), false, 4));
        assert!(oldest_idle.is_cancelled() && !idle.is_cancelled() && !busy.is_cancelled());
        assert!(registry.evict(Some(ip), false, 4));
        assert!(idle.is_cancelled());
        // Only the busy one and the later one are left: newcomer 4 takes neither.
        assert!(!registry.evict(Some(ip), false, 4));
        assert!(!registry.evict(None, false, 4));
        assert!(!busy.is_cancelled() && !later.is_cancelled());
        // A newer newcomer may take the later one; another address's is never taken by ip.
        assert!(!registry.evict(Some("198.51.100.7".parse().unwrap()), false, 6));
        assert!(registry.evict(Some(ip), false, 6));
        assert!(later.is_cancelled());
    }

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
