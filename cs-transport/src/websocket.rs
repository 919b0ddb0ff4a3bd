//! The axum WebSocket adapter (feature `axum`): one function to upgrade with
//! small buffers, one to serve the socket.
//!
//! Authentication stays with the host: its handler decides who the client is
//! (a signed visitor token, an agent session) and passes the tenant and party
//! to [`serve`]. From then on every frame is authorized by the message path
//! against that identity, never against what the frame claims.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::extract::{State, WebSocketUpgrade};
//! use axum::response::Response;
//! use axum::routing::get;
//! use cs_core::{Party, TenantId, VisitorId};
//! use cs_transport::websocket::{self, WsConfig};
//! use cs_transport::{ConnectionPool, Dispatcher};
//!
//! #[derive(Clone)]
//! struct App {
//!     pool: Arc<ConnectionPool>,
//!     dispatcher: Dispatcher,
//!     ws: WsConfig,
//! }
//!
//! async fn chat(upgrade: WebSocketUpgrade, State(app): State<App>) -> Response {
//!     // A real host derives these from a verified token or session.
//!     let (Ok(tenant), Ok(visitor)) = (TenantId::new("shop"), VisitorId::new("visitor-1")) else {
//!         unreachable!()
//!     };
//!     websocket::upgrade(upgrade, &app.ws).on_upgrade(move |socket| {
//!         websocket::serve(socket, tenant, Party::Visitor(visitor), app.pool, app.dispatcher, app.ws)
//!     })
//! }
//!
//! # fn routes(app: App) -> axum::Router {
//! axum::Router::new().route("/chat", get(chat)).with_state(app)
//! # }
//! ```

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ::axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};

use cs_core::{Body, ConnId, Event, NewMessage, Party, TenantId};

use crate::dispatcher::{Command, DispatchError, Dispatcher, Origin};
use crate::pool::ConnectionPool;
use crate::protocol::{ClientFrame, CloseReason, ErrorCode, FrameError, ServerFrame};

/// WebSocket settings.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Socket read buffer. Default 2 KiB: tungstenite's default is 128 KiB
    /// per connection, which is 12.8 GB for 100,000 mostly idle chats; chat
    /// frames are small, and a larger one is read in several chunks.
    pub read_buffer_bytes: usize,
    /// Socket write buffer target. Default 2 KiB; the writer task flushes
    /// after each batch anyway.
    pub write_buffer_bytes: usize,
    /// Largest client frame. Default 16 KiB: a 4 KiB message of CJK text is
    /// 12 KiB of UTF-8, plus the JSON around it. Larger closes the connection.
    pub max_frame_bytes: usize,
    /// Frames per second a connection may send, sustained. Default 20.
    pub rate_per_second: u32,
    /// Frames a connection may send in a burst. Default 40.
    pub rate_burst: u32,
    /// Silence after which the connection is closed. Clients send `ping`
    /// frames to stay connected. Default 60 s.
    pub idle_timeout: Duration,
    /// One message budget per party shared by all its sockets, on top of
    /// each socket's own frame rate: without it, a visitor with 25 tabs
    /// sends 25 times the rate. Default none.
    pub party_rate: Option<Arc<PartyRate>>,
}

/// The `governor` quota of `burst` at once, refilled evenly over `per`
/// (a zero burst counts as one), which every budget of the desk uses.
pub fn burst_quota(burst: u32, per: Duration) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let period = (per / burst.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

/// Messages per party across all its sockets: a keyed budget that every
/// socket of the party draws from. Only `send` frames draw; typing, read
/// receipts and pings are left to the per-socket rate.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cs_transport::websocket::{PartyRate, WsConfig};
///
/// let ws = WsConfig {
///     // 40 at once, then 20 per second, for each visitor however many tabs they open.
///     party_rate: Some(Arc::new(PartyRate::new(40, Duration::from_secs(2)))),
///     ..WsConfig::default()
/// };
/// # let _ = ws;
/// ```
pub struct PartyRate {
    burst: u32,
    per: Duration,
    limiter: governor::DefaultKeyedRateLimiter<(TenantId, Party)>,
}

impl std::fmt::Debug for PartyRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartyRate")
            .field("burst", &self.burst)
            .field("per", &self.per)
            .finish_non_exhaustive()
    }
}

impl PartyRate {
    /// `burst` messages at once, refilled evenly over `per`.
    pub fn new(burst: u32, per: Duration) -> Self {
        Self {
            burst,
            per,
            limiter: governor::DefaultKeyedRateLimiter::keyed(burst_quota(burst, per)),
        }
    }

    /// Takes one message of `party`'s budget, or says when one is free.
    ///
    /// # Errors
    /// The wait until the budget has room again.
    pub fn take(&self, tenant: &TenantId, party: &Party) -> Result<(), Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.limiter
            .check_key(&(tenant.clone(), party.clone()))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets parties whose budget is full again, so the map holds only
    /// the recently active. Call it now and then (the desk does every minute).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            read_buffer_bytes: 2 * 1024,
            write_buffer_bytes: 2 * 1024,
            max_frame_bytes: 16 * 1024,
            rate_per_second: 20,
            rate_burst: 40,
            idle_timeout: Duration::from_secs(60),
            party_rate: None,
        }
    }
}

/// Applies `config`'s buffer and frame limits to an upgrade.
pub fn upgrade(upgrade: WebSocketUpgrade, config: &WsConfig) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.write_buffer_bytes.max(config.max_frame_bytes) * 4)
        // tungstenite's own limit is a backstop at 4x ours: frames between the
        // two reach `ClientFrame::decode`, which names the problem in the
        // close reason; beyond it the socket fails as a protocol error.
        .max_message_size(config.max_frame_bytes * 4)
        .max_frame_size(config.max_frame_bytes * 4)
}

/// Serves one upgraded socket for `party` of `tenant` until it closes.
///
/// Registers it with the pool (which runs its writer), then reads frames:
/// each is rate-limited, decoded and submitted to the dispatcher. A
/// malformed frame gets an error frame and the connection carries on; an
/// oversized frame, or silence past the idle timeout, closes it with a reason.
pub async fn serve(
    socket: WebSocket,
    tenant: TenantId,
    party: Party,
    pool: Arc<ConnectionPool>,
    dispatcher: Dispatcher,
    config: WsConfig,
) {
    let (sink, mut stream) = socket.split();
    // Frames are JSON, so valid UTF-8; browsers want text frames.
    let sink = sink.with(|frame: Bytes| async move {
        Utf8Bytes::try_from(frame)
            .map(WsMessage::Text)
            .map_err(::axum::Error::new)
    });
    let tenant_of_party = tenant.clone();
    let (conn, writer) = pool.attach(tenant, party.clone(), Box::pin(sink));
    let welcome = ServerFrame::Welcome {
        conn,
        party: party.clone(),
    };
    let _ = pool.send_to_connection(conn, welcome.encode());

    // Reader and writer share this one task: a second task per connection
    // costs about a kilobyte, which at 100,000 connections is 100 MB.
    let mut writer = std::pin::pin!(writer);
    let reader = read_loop(
        &mut stream,
        conn,
        (&tenant_of_party, &party),
        &pool,
        &dispatcher,
        &config,
    );
    let reason = tokio::select! {
        reason = reader => Some(reason),
        // The writer ends first when the pool closed the connection (slow
        // consumer, host) or the peer went away.
        _ = &mut writer => None,
    };
    if let Some(reason) = reason {
        pool.close(conn, reason);
        // The writer flushes, sends the close frame and ends; let it, so the
        // socket closes cleanly, but not forever if the peer stopped reading.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    } else {
        pool.close(conn, CloseReason::ByHost);
    }
}

/// Reads frames until the connection must close, and says why.
async fn read_loop<S>(
    stream: &mut S,
    conn: ConnId,
    (tenant, party): (&TenantId, &Party),
    pool: &ConnectionPool,
    dispatcher: &Dispatcher,
    config: &WsConfig,
) -> CloseReason
where
    S: futures::Stream<Item = Result<WsMessage, ::axum::Error>> + Unpin,
{
    let quota =
        Quota::per_second(NonZeroU32::new(config.rate_per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(config.rate_burst).unwrap_or(NonZeroU32::MIN));
    let limiter = RateLimiter::direct(quota);
    loop {
        let next = match tokio::time::timeout(config.idle_timeout, stream.next()).await {
            Ok(next) => next,
            Err(_) => return CloseReason::Idle,
        };
        let bytes = match next {
            Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            // Pings are answered by tungstenite itself; they still count as life.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => return CloseReason::ByHost,
            Some(Err(e)) => {
                tracing::debug!(%conn, error = %e, "websocket read failed");
                return CloseReason::ProtocolError;
            }
        };
        let frame = match ClientFrame::decode(&bytes, config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(FrameError::TooLarge { .. }) => return CloseReason::FrameTooLarge,
            Err(e @ FrameError::Malformed(_)) => {
                let (conversation, client_msg_id) = ClientFrame::subject_of_invalid(&bytes);
                let error = ServerFrame::Error {
                    code: ErrorCode::Malformed,
                    message: e.to_string(),
                    conversation,
                    client_msg_id,
                    retry_after_ms: None,
                };
                let _ = pool.send_to_connection(conn, error.encode());
                continue;
            }
        };
        // Decoded first (cheap, and the frame is size-bounded), so the refusal
        // can name the conversation and message the client should retry.
        if limiter.check().is_err() {
            let (conversation, client_msg_id) = frame.subject();
            let error = ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "too many frames; slow down, then retry (the limit is per connection)"
                    .into(),
                conversation,
                client_msg_id,
                // One frame's worth of the sustained rate.
                retry_after_ms: Some(1000 / u64::from(config.rate_per_second.max(1))),
            };
            let _ = pool.send_to_connection(conn, error.encode());
            continue;
        }
        if let (Some(shared), ClientFrame::Send { .. }) = (&config.party_rate, &frame) {
            if let Err(wait) = shared.take(tenant, party) {
                let (conversation, client_msg_id) = frame.subject();
                let error = ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "too many messages from you across all your connections; retry with the same client_msg_id in {} ms",
                        wait.as_millis().max(1)
                    ),
                    conversation,
                    client_msg_id,
                    retry_after_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
                };
                let _ = pool.send_to_connection(conn, error.encode());
                continue;
            }
        }
        // Boxed: its state (about 1.4 KB) would otherwise be part of every
        // idle connection's task, though it exists only while a frame is
        // being submitted.
        if let Some(reason) = Box::pin(handle_frame(frame, conn, party, pool, dispatcher)).await {
            return reason;
        }
    }
}

/// Submits one decoded frame. Returns a reason when the connection must close.
async fn handle_frame(
    frame: ClientFrame,
    conn: ConnId,
    party: &Party,
    pool: &ConnectionPool,
    dispatcher: &Dispatcher,
) -> Option<CloseReason> {
    let send = |conversation, body, client_msg_id| Command::Send {
        origin: Origin::Connection(conn),
        message: NewMessage {
            client_msg_id,
            ..NewMessage::new(conversation, party.clone(), body)
        },
    };
    let (command, client_msg_id) = match frame {
        ClientFrame::Ping => {
            let _ = pool.send_to_connection(conn, ServerFrame::Pong.encode());
            return None;
        }
        ClientFrame::Send {
            conversation,
            client_msg_id,
            body,
        } => (
            send(conversation, body, client_msg_id.clone()),
            client_msg_id,
        ),
        ClientFrame::Typing {
            conversation,
            active,
        } => (
            send(conversation, Body::Event(Event::Typing { active }), None),
            None,
        ),
        ClientFrame::Read {
            conversation,
            up_to,
        } => (
            send(conversation, Body::Event(Event::Read { up_to }), None),
            None,
        ),
        ClientFrame::Resume {
            conversation,
            last_seq,
        } => (
            Command::Join {
                conn,
                conversation,
                last_seq,
            },
            None,
        ),
    };
    let conversation = command.conversation();
    match dispatcher.submit(command).await {
        Ok(_) => None,
        Err(error) => {
            let (code, close, retry_after) = match error {
                DispatchError::Overloaded => {
                    // About when half of today's backlog ahead of it is gone.
                    let wait =
                        (dispatcher.queue_delay(conversation) / 2).max(Duration::from_millis(50));
                    (ErrorCode::Overloaded, None, Some(wait))
                }
                DispatchError::ShuttingDown => {
                    (ErrorCode::ShuttingDown, Some(CloseReason::Shutdown), None)
                }
            };
            let frame = ServerFrame::Error {
                code,
                message: error.to_string(),
                conversation: Some(conversation),
                client_msg_id,
                retry_after_ms: retry_after
                    .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            };
            let _ = pool.send_to_connection(conn, frame.encode());
            close
        }
    }
}
