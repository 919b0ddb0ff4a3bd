//! The accept loop every host would otherwise write: [`serve`] runs an axum
//! app on a listener with the protections `axum::serve` leaves off.
//!
//! - `TCP_NODELAY` on every accepted socket. Without it, the second of two
//!   frames written back to back (an ack, then the bot's reply) waits for
//!   the client's delayed ACK: 40 ms on Linux.
//! - A header-read timeout, which also ends idle keep-alive connections:
//!   `axum::serve` gives hyper no timer, so a client could hold a
//!   half-sent request open forever.
//! - A body-read timeout (reset by every chunk that arrives) and a write
//!   timeout (reset by every byte the client takes), so stalled uploads and
//!   unread downloads let go of their memory.
//! - A cap on connections per client address and in all; past it, a new
//!   connection is closed at once, and `/healthz` of everyone else still
//!   answers.
//! - At start, the open-files limit is raised as far as the system allows.
//! - Graceful shutdown: on the signal it stops accepting, lets requests in
//!   flight finish (up to a drain timeout), and returns. Upgraded
//!   WebSockets are the desk's to close ([`ServiceDesk::shutdown`]).
//!
//! [`ServiceDesk::serve`] wraps this with the desk's settings and its
//! drain; call [`serve`] directly to run an app without a desk.
//!
//! [`ServiceDesk::shutdown`]: super::ServiceDesk::shutdown
//! [`ServiceDesk::serve`]: super::ServiceDesk::serve

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_service::Service;

/// How [`serve`] guards its connections. The defaults suit a shop on one
/// machine behind nothing; behind a proxy, raise `max_connections_per_ip`
/// (every client shares the proxy's address).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A request's headers must arrive within this; an idle keep-alive
    /// connection closes after it too. Default 10 s.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body arrives. Default 30 s.
    pub body_read_timeout: Duration,
    /// Longest pause while the client takes a response or a WebSocket
    /// frame. Default 30 s.
    pub write_timeout: Duration,
    /// Connections open at once from one address (HTTP and WebSocket
    /// alike). Default 256.
    pub max_connections_per_ip: usize,
    /// Connections open at once in all. Default 50,000.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight. Default 10 s.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections_per_ip: 256,
            max_connections: 50_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`serve`] has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed at once for a cap.
    pub refused: AtomicU64,
}

/// Serves `app` on `listener` until `signal` resolves, then drains.
///
/// Handlers can extract `ConnectInfo<SocketAddr>`: the client's address.
///
/// # Errors
/// Only a listener that fails for good; a failed accept (say, out of file
/// descriptors) is logged and retried after a pause.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    stats: Arc<ServeStats>,
    signal: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    raise_open_files_limit();
    let app = app.layer(RequestBodyTimeoutLayer::new(config.body_read_timeout));
    let caps = Caps::new(config, stats);
    let graceful = GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let mut signal = pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: the socket stays in the backlog;
                    // pausing lets connections close before the next try.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let Some(slot) = caps.admit(peer.ip()) else {
            // Dropping the stream closes it: no bytes spent on a client
            // that already holds its share.
            continue;
        };
        let Some(io) = guard(stream, config) else {
            continue;
        };
        let service = {
            let app = app.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().call(request)
            })
        };
        let connection = http
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that hangs up or times out is routine, not an error.
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining requests in flight");
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = config.drain_timeout.as_secs(),
            "some requests were still running when the drain timeout ran out"
        );
    }
    Ok(())
}

/// A TCP stream with `TCP_NODELAY` and the read and write timeouts.
fn guard(
    stream: TcpStream,
    config: &ServeConfig,
) -> Option<TokioIo<std::pin::Pin<Box<TimeoutStream<TcpStream>>>>> {
    if let Err(e) = stream.set_nodelay(true) {
        // The peer is already gone (ENOTCONN and the like).
        tracing::debug!(error = %e, "cannot set TCP_NODELAY; dropping the connection");
        return None;
    }
    let mut io = TimeoutStream::new(stream);
    io.set_write_timeout(Some(config.write_timeout));
    Some(TokioIo::new(Box::pin(io)))
}

/// The per-address and total connection caps.
struct Caps {
    per_ip: DashMap<IpAddr, usize>,
    max_per_ip: usize,
    max_total: u64,
    stats: Arc<ServeStats>,
    /// Refusals are logged at most once a second: a flood must not flood
    /// the log too.
    last_warned: parking_lot::Mutex<Option<Instant>>,
}

impl Caps {
    fn new(config: &ServeConfig, stats: Arc<ServeStats>) -> Arc<Self> {
        Arc::new(Self {
            per_ip: DashMap::new(),
            max_per_ip: config.max_connections_per_ip.max(1),
            max_total: config.max_connections.max(1) as u64,
            stats,
            last_warned: parking_lot::Mutex::new(None),
        })
    }

    /// A slot for one more connection from `ip`, or `None` past a cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.stats.open.load(Ordering::Relaxed) >= self.max_total {
            self.refuse(ip, "total");
            return None;
        }
        {
            // The entry guard is dropped at the end of this block, before
            // anything else touches the map.
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.refuse(ip, "per-address");
                return None;
            }
            *count += 1;
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            caps: Arc::clone(self),
            ip,
        })
    }

    fn refuse(&self, ip: IpAddr, cap: &str) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_warned.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(%ip, cap, refused_total = self.stats.refused.load(Ordering::Relaxed),
                "connection refused: over the {cap} connection cap (ServeConfig)");
        }
    }
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.caps.stats.open.fetch_sub(1, Ordering::Relaxed);
        // One call under the shard's lock: decrement, and forget the
        // address when it has no connection left.
        self.caps.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Raises the soft open-files limit to the hard limit, and logs the result:
/// each connection is a descriptor, and distributions default to 1,024.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}
