//! [`RedisBus`] (feature `redis`): the nodes of a deployment talk over one
//! Redis pub/sub channel.
//!
//! # What it guarantees
//!
//! At most once, and it may lose envelopes: pub/sub keeps nothing for a
//! subscriber that is not connected, a full queue drops, and a failed
//! publish is not retried. What it does promise is to **notice** losses and
//! say so with [`Inbound::Lost`], which makes the dispatcher compare every
//! joined connection with the store and replay what is missing (see the
//! [`bus`](crate::bus) module docs). Stored messages therefore still reach
//! every connection complete and in order; only frames that are not stored
//! (typing, presence) can vanish.
//!
//! A loss is noticed in three ways:
//! - every envelope carries its publisher's counter `n`, bumped for every
//!   envelope published, including the ones a full queue drops and the ones
//!   whose publish failed: a receiver that sees `n` jump knows it missed
//!   some;
//! - a subscriber whose connection ended reports a loss after each
//!   resubscribe (whatever was published meanwhile is gone);
//! - a full inbox on the receiving side drops and reports the loss before
//!   the next envelope.
//!
//! A trailing loss (nothing published after it) shows only through the
//! resubscribe report or the dispatcher's timer
//! ([`DispatcherConfig::position_check_interval`](crate::DispatcherConfig::position_check_interval)):
//! turn the timer on when you run several nodes.
//!
//! # Design: one channel, broadcast
//!
//! Every node publishes to and subscribes to the same channel
//! ([`RedisBusConfig::channel`]), so every node receives every envelope and
//! keeps what concerns its own connections. That is simple and keeps one
//! publisher's envelopes in order; it is fine for a handful of nodes. Past
//! that, each node spends most of its bus work discarding other nodes'
//! traffic, and a channel per node or per tenant would be the next step.
//!
//! # When Redis goes away
//!
//! - [`RedisBus::connect`] fails at start with [`RedisBusError`], naming the
//!   address (never the password).
//! - While running, publishes fail and are counted (`publish_failed`, one
//!   warning per ten seconds, not per envelope); the connection manager
//!   reconnects by itself.
//! - Each subscriber logs that it lost its subscription, retries with
//!   exponential backoff ([`RedisBusConfig::reconnect_min`] to
//!   [`RedisBusConfig::reconnect_max`]), logs when it is back, counts a
//!   `reconnects` and reports [`Inbound::Lost`].
//! - Messages keep being stored and delivered to connections on the node
//!   that stored them; connections on other nodes get them once Redis is
//!   back, replayed from the store. [`RedisBus::stats`] shows all of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use cs_core::Seq;

use crate::bus::{Bus, Envelope, Inbound, NodeId, Target};

/// Settings of a [`RedisBus`].
#[derive(Clone, Debug)]
pub struct RedisBusConfig {
    /// The pub/sub channel. Every node of one deployment uses the same
    /// channel; two deployments on one Redis use different ones, or they
    /// receive each other's traffic. Default `"cs:bus"`.
    pub channel: String,
    /// Envelopes waiting to be published. Past this, [`Bus::publish`] drops
    /// (and counts) rather than block the message path. Default 65,536.
    pub publish_queue: usize,
    /// Envelopes waiting for each subscriber (the pool's listener). Past
    /// this, envelopes are dropped and the loss reported. Default 65,536.
    pub inbox: usize,
    /// First delay before resubscribing after a failed attempt, doubled
    /// after each failure. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest delay between resubscribe attempts. Default 5 s.
    pub reconnect_max: Duration,
    /// How long connecting, subscribing or one publish round trip may take
    /// before it counts as failed. Default 5 s.
    pub timeout: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            channel: "cs:bus".to_owned(),
            publish_queue: 65_536,
            inbox: 65_536,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// [`RedisBus::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisBusError {
    /// The URL could not be read.
    #[error(
        "{shown} is not a Redis URL ({reason}); expected redis://[user:password@]host:port[/db]"
    )]
    BadUrl {
        /// The URL with any credentials removed.
        shown: String,
        /// What the Redis client said.
        reason: String,
    },
    /// The server did not answer a PING.
    #[error("Redis at {addr} did not answer ({reason}); check that it is running and that the URL is right")]
    Unreachable {
        /// `host:port` (or the socket path), without credentials.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Counters of a [`RedisBus`], from [`RedisBus::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisBusStats {
    /// Envelopes Redis accepted (PUBLISH succeeded).
    pub published: u64,
    /// Envelopes dropped because the publish queue was full.
    pub dropped_full_queue: u64,
    /// Envelopes whose PUBLISH failed (Redis down or too slow).
    pub publish_failed: u64,
    /// Messages read from the channel, from every node, this one included.
    pub received: u64,
    /// Of those, messages that were not envelopes of this format: skipped.
    pub decode_errors: u64,
    /// Envelopes from other nodes dropped because a subscriber's inbox was full.
    pub dropped_full_inbox: u64,
    /// [`Inbound::Lost`] reports handed to subscribers.
    pub lost_reported: u64,
    /// Successful SUBSCRIBEs, first ones and resubscribes.
    pub subscriptions: u64,
    /// Resubscribes after a subscription ended or a first attempt failed.
    pub reconnects: u64,
}

impl RedisBusStats {
    /// The counters in the Prometheus text format, each name prefixed with
    /// `prefix` and `redis_bus_` (such as `cs_redis_bus_published_total`).
    pub fn to_prometheus(&self, prefix: &str) -> String {
        let counters = [
            (
                "published_total",
                "Envelopes Redis accepted.",
                self.published,
            ),
            (
                "dropped_full_queue_total",
                "Envelopes dropped because the publish queue was full.",
                self.dropped_full_queue,
            ),
            (
                "publish_failed_total",
                "Envelopes whose PUBLISH failed.",
                self.publish_failed,
            ),
            (
                "received_total",
                "Messages read from the channel.",
                self.received,
            ),
            (
                "decode_errors_total",
                "Messages on the channel that could not be decoded.",
                self.decode_errors,
            ),
            (
                "dropped_full_inbox_total",
                "Envelopes dropped because a subscriber's inbox was full.",
                self.dropped_full_inbox,
            ),
            (
                "lost_reported_total",
                "Possible losses reported to subscribers.",
                self.lost_reported,
            ),
            (
                "subscriptions_total",
                "Successful SUBSCRIBEs.",
                self.subscriptions,
            ),
            (
                "reconnects_total",
                "Resubscribes after a lost subscription.",
                self.reconnects,
            ),
        ];
        let mut out = String::new();
        crate::metrics::write_counters(&mut out, &format!("{prefix}redis_bus_"), &counters);
        out
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped_full_queue: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    decode_errors: AtomicU64,
    dropped_full_inbox: AtomicU64,
    lost_reported: AtomicU64,
    subscriptions: AtomicU64,
    reconnects: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A [`Bus`] over Redis pub/sub. See the module docs.
///
/// ```no_run
/// # async fn run() -> Result<(), cs_transport::RedisBusError> {
/// use std::sync::Arc;
/// use cs_transport::{ConnectionPool, Metrics, NodeId, PoolConfig, RedisBus, RedisBusConfig};
///
/// let bus = RedisBus::connect("redis://127.0.0.1:6379", RedisBusConfig::default()).await?;
/// let config = PoolConfig { node: NodeId::new("node-1"), ..PoolConfig::default() };
/// let pool = ConnectionPool::with_bus(config, bus.clone(), Arc::new(Metrics::new()));
/// # let _ = pool;
/// println!("{}", bus.stats().to_prometheus("cs_"));
/// # Ok(())
/// # }
/// ```
pub struct RedisBus {
    client: redis::Client,
    config: RedisBusConfig,
    /// `host:port`, for logs: never the URL, which may hold a password.
    addr: Arc<str>,
    /// Tells this process's envelopes from those of an earlier run of the
    /// same node, whose counter started again at zero.
    boot: u64,
    /// The counter `n` of the last envelope offered to the queue. Held while
    /// queueing so that queue order is counter order: receivers then see
    /// `n` rise by one unless something was really lost.
    next_n: Mutex<u64>,
    queue: mpsc::Sender<(u64, Envelope)>,
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
}

impl RedisBus {
    /// Connects to Redis at `url`, checks that it answers, and starts the
    /// publisher task on the current tokio runtime.
    ///
    /// # Errors
    /// [`RedisBusError::BadUrl`] for a URL the client cannot read,
    /// [`RedisBusError::Unreachable`] when the server does not answer a PING
    /// within [`RedisBusConfig::timeout`].
    pub async fn connect(url: &str, config: RedisBusConfig) -> Result<Arc<Self>, RedisBusError> {
        let client = redis::Client::open(url).map_err(|e| RedisBusError::BadUrl {
            shown: redacted(url),
            reason: e.to_string(),
        })?;
        let addr: Arc<str> = Arc::from(client.get_connection_info().addr.to_string());
        let unreachable = |reason: String| RedisBusError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let min_ms = u64::try_from(config.reconnect_min.as_millis()).unwrap_or(u64::MAX);
        let max_ms = u64::try_from(config.reconnect_max.as_millis()).unwrap_or(u64::MAX);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout)
            .set_response_timeout(config.timeout)
            // Reconnects after a drop wait reconnect_min, doubling up to
            // reconnect_max; a batch that fails meanwhile is counted, not retried.
            .set_number_of_retries(2)
            .set_exponent_base(2)
            .set_factor(min_ms.max(1))
            .set_max_delay(max_ms.max(1));
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config)
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        let conn = match tokio::time::timeout(config.timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {:?}",
                    config.timeout
                )))
            }
        };
        let (queue, rx) = mpsc::channel(config.publish_queue.max(1));
        let counters = Arc::new(Counters::default());
        let boot = boot_id();
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(publish_loop(
            rx,
            conn,
            config.channel.clone(),
            boot,
            Arc::clone(&counters),
            Arc::clone(&addr),
        ));
        Ok(Arc::new(Self {
            client,
            config,
            addr,
            boot,
            next_n: Mutex::new(0),
            queue,
            counters,
            runtime,
        }))
    }

    /// A copy of the counters.
    pub fn stats(&self) -> RedisBusStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisBusStats {
            published: get(&c.published),
            dropped_full_queue: get(&c.dropped_full_queue),
            publish_failed: get(&c.publish_failed),
            received: get(&c.received),
            decode_errors: get(&c.decode_errors),
            dropped_full_inbox: get(&c.dropped_full_inbox),
            lost_reported: get(&c.lost_reported),
            subscriptions: get(&c.subscriptions),
            reconnects: get(&c.reconnects),
        }
    }

    /// This process's boot id, carried in every envelope it publishes.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// The server's `host:port`, as shown in logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) {
        let mut next_n = self.next_n.lock();
        // Counted even when dropped below: the gap in `n` is how receivers
        // learn about the drop.
        *next_n += 1;
        if self.queue.try_send((*next_n, envelope)).is_err() {
            add(&self.counters.dropped_full_queue, 1);
        }
    }

    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Inbound> {
        // One more than `inbox`: the slot for an `Inbound::Lost`, as in
        // `InProcessBus`, so the notice never displaces an envelope.
        let (tx, rx) = mpsc::channel(self.config.inbox.max(1).saturating_add(1));
        let subscriber = Subscriber {
            client: self.client.clone(),
            config: self.config.clone(),
            addr: Arc::clone(&self.addr),
            counters: Arc::clone(&self.counters),
            inbox: Inbox {
                tx,
                pending_lost: false,
            },
            tracker: Tracker::new(node.clone()),
        };
        self.runtime.spawn(subscriber.run());
        rx
    }
}

/// A boot id: only has to differ between runs of a node and between buses
/// of one process, so time, pid and a counter do, mixed so that close
/// inputs give unrelated ids.
fn boot_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let pid = u64::from(std::process::id());
    splitmix64(nanos ^ pid.rotate_left(32) ^ splitmix64(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `host:port` of a URL, for an error message: never its credentials.
fn redacted(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

/// One warning per interval instead of one per failure.
struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were suppressed since the last one)` when this one
    /// may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

const LOG_EVERY: Duration = Duration::from_secs(10);
/// Envelopes sent in one pipeline (one round trip).
const BATCH: usize = 512;

/// Drains the queue, one pipeline of PUBLISH commands per batch, until the
/// bus is dropped (its sender with it).
async fn publish_loop(
    mut rx: mpsc::Receiver<(u64, Envelope)>,
    mut conn: ConnectionManager,
    channel: String,
    boot: u64,
    counters: Arc<Counters>,
    addr: Arc<str>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut failures = LogLimit::new(LOG_EVERY);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (n, envelope) in batch.drain(..) {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(encode(boot, n, &envelope))
                .ignore();
        }
        let count = pipe.len() as u64;
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => add(&counters.published, count),
            Err(e) => {
                add(&counters.publish_failed, count);
                if let Some(suppressed) = failures.allow() {
                    tracing::warn!(
                        %addr, envelopes = count, error = %e, suppressed_failures = suppressed,
                        "redis bus: publishing failed; other nodes will get these messages from the store once they notice"
                    );
                }
            }
        }
    }
}

/// Version of the wire format, first in every header.
const WIRE_VERSION: u8 = 1;

// The wire format is ours, not a serde of `Envelope`: the frame is already
// encoded JSON, and a header line followed by the frame's bytes as they are
// avoids escaping and re-parsing it as a JSON string.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    v: u8,
    from: NodeId,
    boot: u64,
    n: u64,
    target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

/// A header line, `\n`, then the frame. serde_json escapes newlines inside
/// strings, so the first `\n` always ends the header.
fn encode(boot: u64, n: u64, envelope: &Envelope) -> Vec<u8> {
    let header = Header {
        v: WIRE_VERSION,
        from: envelope.from.clone(),
        boot,
        n,
        target: envelope.target.clone(),
        seq: envelope.seq,
    };
    let mut out = Vec::with_capacity(128 + envelope.frame.len());
    // A header of ids and numbers always serializes; if it ever did not,
    // an empty header makes receivers count a decode error, not panic.
    let _ = serde_json::to_writer(&mut out, &header);
    out.push(b'\n');
    out.extend_from_slice(&envelope.frame);
    out
}

/// A message on the channel that is not an envelope of this format.
#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("no header line (no newline in {0} bytes)")]
    NoHeader(usize),
    #[error("unreadable header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("wire format version {0}, this node reads {WIRE_VERSION}; upgrade every node")]
    Version(u8),
}

fn decode(payload: &[u8]) -> Result<(Header, Bytes), WireError> {
    let split = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError::NoHeader(payload.len()))?;
    let header: Header = serde_json::from_slice(&payload[..split])?;
    if header.v != WIRE_VERSION {
        return Err(WireError::Version(header.v));
    }
    Ok((header, Bytes::copy_from_slice(&payload[split + 1..])))
}

/// Turns channel messages into envelopes for one node, noticing counter
/// jumps.
struct Tracker {
    node: NodeId,
    /// Per other node: its current boot and the last `n` seen from it. One
    /// entry per node, so a node's restarts do not pile up entries.
    last: HashMap<NodeId, (u64, u64)>,
}

impl Tracker {
    fn new(node: NodeId) -> Self {
        Self {
            node,
            last: HashMap::new(),
        }
    }

    /// The envelope in `payload`, if it is for this node, and whether
    /// envelopes before it were lost.
    fn accept(&mut self, payload: &[u8]) -> Result<Option<(Envelope, bool)>, WireError> {
        let (header, frame) = decode(payload)?;
        if header.from == self.node {
            return Ok(None);
        }
        let lost = match self.last.get_mut(&header.from) {
            Some((boot, last)) if *boot == header.boot => {
                let lost = header.n > last.saturating_add(1);
                *last = (*last).max(header.n);
                lost
            }
            // First envelope heard from it, or it restarted: its counter
            // starts afresh, nothing to compare with.
            _ => {
                self.last
                    .insert(header.from.clone(), (header.boot, header.n));
                false
            }
        };
        let envelope = Envelope {
            from: header.from,
            target: header.target,
            seq: header.seq,
            frame,
        };
        Ok(Some((envelope, lost)))
    }

    /// After a resubscribe the counters say nothing useful (the loss is
    /// reported anyway), so start afresh rather than report it twice.
    fn forget(&mut self) {
        self.last.clear();
    }
}

/// A subscriber's queue to the pool, with the loss it still has to report.
struct Inbox {
    tx: mpsc::Sender<Inbound>,
    pending_lost: bool,
}

impl Inbox {
    /// Queues `envelope`, preceded by a loss report if one is due. Never
    /// waits: a full inbox drops the envelope and reports the loss later.
    fn push(&mut self, envelope: Envelope, lost_before: bool, counters: &Counters) {
        self.pending_lost |= lost_before;
        // One slot stays free for the loss notice. This task is the only
        // sender, so the capacity can only grow under us.
        if self.tx.capacity() < 2 {
            self.pending_lost = true;
            add(&counters.dropped_full_inbox, 1);
            return;
        }
        self.report_lost(counters);
        if self.tx.try_send(Inbound::Envelope(envelope)).is_err() {
            self.pending_lost = true;
            add(&counters.dropped_full_inbox, 1);
        }
    }

    /// Sends the due loss report, if any and if there is room.
    fn report_lost(&mut self, counters: &Counters) {
        if self.pending_lost && self.tx.try_send(Inbound::Lost).is_ok() {
            self.pending_lost = false;
            add(&counters.lost_reported, 1);
        }
    }
}

/// One node's subscription, kept alive across Redis restarts until the
/// node's receiver is dropped.
struct Subscriber {
    client: redis::Client,
    config: RedisBusConfig,
    addr: Arc<str>,
    counters: Arc<Counters>,
    inbox: Inbox,
    tracker: Tracker,
}

impl Subscriber {
    async fn run(mut self) {
        let mut backoff = self.config.reconnect_min;
        let mut first_attempt = true;
        let mut down_since: Option<Instant> = None;
        let mut connect_failures = LogLimit::new(LOG_EVERY);
        let mut decode_failures = LogLimit::new(LOG_EVERY);
        loop {
            let subscribed = tokio::select! {
                () = self.inbox.tx.closed() => return,
                subscribed = self.subscribe() => subscribed,
            };
            let stream = match subscribed {
                Ok(stream) => stream,
                Err(reason) => {
                    first_attempt = false;
                    down_since.get_or_insert_with(Instant::now);
                    if let Some(suppressed) = connect_failures.allow() {
                        tracing::warn!(
                            addr = %self.addr, channel = %self.config.channel, error = %reason,
                            retry_in = ?backoff, suppressed_failures = suppressed,
                            "redis bus: cannot subscribe; retrying. Messages from other nodes reach this node's connections once it is back"
                        );
                    }
                    tokio::select! {
                        () = self.inbox.tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.reconnect_max);
                    continue;
                }
            };
            backoff = self.config.reconnect_min;
            add(&self.counters.subscriptions, 1);
            if !first_attempt {
                // Whatever was published while we were away is gone: the
                // dispatcher checks every position against the store.
                add(&self.counters.reconnects, 1);
                self.tracker.forget();
                self.inbox.pending_lost = true;
                self.inbox.report_lost(&self.counters);
                tracing::info!(
                    addr = %self.addr, channel = %self.config.channel,
                    down_for = ?down_since.take().map(|t| t.elapsed()),
                    "redis bus: resubscribed; missed messages are replayed from the store"
                );
            }
            first_attempt = false;
            let mut stream = stream;
            loop {
                let msg = tokio::select! {
                    () = self.inbox.tx.closed() => return,
                    msg = stream.next() => msg,
                };
                let Some(msg) = msg else { break };
                add(&self.counters.received, 1);
                match self.tracker.accept(msg.get_payload_bytes()) {
                    Ok(Some((envelope, lost))) => self.inbox.push(envelope, lost, &self.counters),
                    Ok(None) => {}
                    Err(e) => {
                        add(&self.counters.decode_errors, 1);
                        if let Some(suppressed) = decode_failures.allow() {
                            tracing::warn!(
                                channel = %self.config.channel, error = %e, suppressed_errors = suppressed,
                                "redis bus: skipped a message that is not an envelope; is another program publishing on this channel?"
                            );
                        }
                    }
                }
            }
            down_since = Some(Instant::now());
            tracing::warn!(
                addr = %self.addr, channel = %self.config.channel,
                "redis bus: subscription ended (Redis restarted or the connection was closed); resubscribing"
            );
        }
    }

    /// A fresh connection subscribed to the channel, within the timeout.
    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, String> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.config.channel).await?;
            // redis 0.32 returns Ok from `subscribe` even when the server
            // refused it (NOPERM from an ACL), which would leave this node
            // deaf while it believes it is subscribed. In RESP2 a PING tells:
            // a subscribed connection answers ["pong", ""], any other "PONG".
            let checked = self.client.get_connection_info().redis.protocol
                != redis::ProtocolVersion::RESP2
                || matches!(pubsub.ping::<redis::Value>().await?, redis::Value::Array(_));
            Ok::<_, redis::RedisError>(checked.then(|| pubsub.into_on_message()))
        };
        match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(Ok(Some(stream))) => Ok(stream),
            Ok(Ok(None)) => Err(format!(
                "the server refused SUBSCRIBE {}: does the user's ACL allow this channel?",
                self.config.channel
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cs_core::{AgentId, ConversationId, Party, TenantId, VisitorId};

    fn envelope(from: &str, target: Target, seq: Option<u64>, frame: &[u8]) -> Envelope {
        Envelope {
            from: NodeId::new(from),
            target,
            seq: seq.map(Seq::new),
            frame: Bytes::copy_from_slice(frame),
        }
    }

    fn conversation() -> Target {
        Target::Conversation(ConversationId::new())
    }

    #[test]
    fn every_target_round_trips_with_its_frame_untouched() {
        let tenant = TenantId::new("shop").unwrap();
        let targets = [
            conversation(),
            Target::Party {
                tenant: tenant.clone(),
                party: Party::Visitor(VisitorId::new("ann").unwrap()),
            },
            Target::Party {
                tenant: tenant.clone(),
                party: Party::Agent(AgentId::new("bob").unwrap()),
            },
            Target::Group {
                tenant,
                group: Arc::from("agents"),
            },
            Target::Host {
                topic: Arc::from("handoff\nwith a newline"),
            },
            Target::Follow {
                tenant: TenantId::new("shop").unwrap(),
                party: Party::Agent(AgentId::new("bob").unwrap()),
                conversation: ConversationId::new(),
            },
        ];
        // A frame with newlines and non-UTF-8 bytes comes back byte for byte.
        let frame = b"{\"type\":\"message\"}\n\xff\x00\nend";
        for (i, target) in targets.into_iter().enumerate() {
            let seq = (i % 2 == 0).then_some(i as u64 + 7);
            let sent = envelope("node-1", target, seq, frame);
            let (header, got) = decode(&encode(42, i as u64, &sent)).unwrap();
            assert_eq!(
                header,
                Header {
                    v: WIRE_VERSION,
                    from: sent.from.clone(),
                    boot: 42,
                    n: i as u64,
                    target: sent.target.clone(),
                    seq: sent.seq,
                }
            );
            assert_eq!(got, sent.frame);
        }
    }

    #[test]
    fn a_jump_in_the_counter_is_a_loss_and_a_new_boot_is_not() {
        let mut tracker = Tracker::new(NodeId::new("two"));
        let sent = envelope("one", conversation(), Some(1), b"x");
        let mut lost_at = |boot, n| {
            tracker
                .accept(&encode(boot, n, &sent))
                .unwrap()
                .map(|(_, lost)| lost)
        };
        assert_eq!(lost_at(7, 1), Some(false), "the first one heard");
        assert_eq!(lost_at(7, 2), Some(false));
        assert_eq!(lost_at(7, 5), Some(true), "3 and 4 were lost");
        assert_eq!(lost_at(7, 6), Some(false));
        assert_eq!(lost_at(9, 1), Some(false), "node one restarted");
        assert_eq!(lost_at(9, 2), Some(false));
        assert_eq!(lost_at(9, 4), Some(true));
        // Its own envelopes are not for it.
        let own = envelope("two", conversation(), None, b"x");
        assert!(tracker.accept(&encode(1, 1, &own)).unwrap().is_none());
    }

    #[test]
    fn a_loss_reaches_the_inbox_before_the_envelope_after_it() {
        let counters = Counters::default();
        let (tx, mut rx) = mpsc::channel(3);
        let mut inbox = Inbox {
            tx,
            pending_lost: false,
        };
        let mut tracker = Tracker::new(NodeId::new("two"));
        for n in [1, 2, 4] {
            let sent = envelope("one", conversation(), Some(n), &[n as u8]);
            let (envelope, lost) = tracker.accept(&encode(3, n, &sent)).unwrap().unwrap();
            inbox.push(envelope, lost, &counters);
        }
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|inbound| match inbound {
                Inbound::Envelope(e) => format!("frame {:?}", e.frame.as_ref()),
                Inbound::Lost => "lost".to_owned(),
            })
            .collect();
        // Room for two envelopes and the notice: 1, 2, then 4 is dropped
        // (only the notice's slot is left) and the loss stays due.
        assert_eq!(kinds, ["frame [1]", "frame [2]"]);
        assert!(inbox.pending_lost);
        assert_eq!(counters.dropped_full_inbox.load(Ordering::Relaxed), 1);
        let sent = envelope("one", conversation(), Some(5), &[5]);
        let (envelope, lost) = tracker.accept(&encode(3, 5, &sent)).unwrap().unwrap();
        assert!(!lost);
        inbox.push(envelope, lost, &counters);
        assert!(matches!(rx.try_recv(), Ok(Inbound::Lost)));
        assert!(matches!(rx.try_recv(), Ok(Inbound::Envelope(e)) if e.frame.as_ref() == [5]));
        assert_eq!(counters.lost_reported.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_counter_jump_alone_reports_a_loss() {
        let counters = Counters::default();
        let (tx, mut rx) = mpsc::channel(16);
        let mut inbox = Inbox {
            tx,
            pending_lost: false,
        };
        let mut tracker = Tracker::new(NodeId::new("two"));
        for n in [10, 11, 13] {
            let sent = envelope("one", conversation(), None, b"f");
            let (envelope, lost) = tracker.accept(&encode(5, n, &sent)).unwrap().unwrap();
            inbox.push(envelope, lost, &counters);
        }
        let lost_positions: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|inbound| matches!(inbound, Inbound::Lost))
            .collect();
        assert_eq!(lost_positions, [false, false, true, false]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut tracker = Tracker::new(NodeId::new("two"));
        let valid = encode(1, 1, &envelope("one", conversation(), None, b"x"));
        let newer = {
            let mut bytes = valid.clone();
            let text = String::from_utf8(bytes.clone()).unwrap();
            bytes = text.replacen("\"v\":1", "\"v\":2", 1).into_bytes();
            bytes
        };
        for garbage in [
            &b""[..],
            b"no newline at all",
            b"\n",
            b"not json\nframe",
            b"{\"v\":1}\nframe",
            b"\xff\xfe\n\x00",
            &valid[..valid.len() / 3],
            &newer,
        ] {
            assert!(
                tracker.accept(garbage).is_err(),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        assert!(matches!(decode(&newer), Err(WireError::Version(2))));
        assert!(tracker.accept(&valid).unwrap().is_some(), "still works");
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redacted("redis://user:s3cret@cache:6380/2"), "cache:6380");
        assert_eq!(redacted("redis://:p@ss@cache:6379"), "cache:6379");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(redacted("s3cret"), "<not a URL>");
    }

    #[test]
    fn boot_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| boot_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn prometheus_text_has_every_counter() {
        let stats = RedisBusStats {
            published: 3,
            reconnects: 1,
            ..RedisBusStats::default()
        };
        let text = stats.to_prometheus("cs_");
        assert!(
            text.contains(
                "# TYPE cs_redis_bus_published_total counter\ncs_redis_bus_published_total 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("cs_redis_bus_reconnects_total 1\n"));
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 9);
    }
}
