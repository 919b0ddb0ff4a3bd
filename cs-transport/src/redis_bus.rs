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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::bus::{Bus, Envelope, Inbound, NodeId};
use crate::bus_wire::{
    add, bus_stats, Counters, Delivery, LogLimit, PublishQueue, PublishRx, LOG_EVERY,
};

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

bus_stats! {
    /// Counters of a [`RedisBus`], from [`RedisBus::stats`].
    RedisBusStats, "redis_bus_" {
        /// Envelopes Redis accepted (PUBLISH succeeded).
        published: "Envelopes Redis accepted.",
        /// Envelopes dropped because the publish queue was full.
        dropped_full_queue: "Envelopes dropped because the publish queue was full.",
        /// Envelopes whose PUBLISH failed (Redis down or too slow).
        publish_failed: "Envelopes whose PUBLISH failed.",
        /// Messages read from the channel, from every node, this one included.
        received: "Messages read from the channel.",
        /// Of those, messages that were not envelopes of this format: skipped.
        decode_errors: "Messages on the channel that could not be decoded.",
        /// Envelopes from other nodes dropped because a subscriber's inbox was full.
        dropped_full_inbox: "Envelopes dropped because a subscriber's inbox was full.",
        /// [`Inbound::Lost`] reports handed to subscribers.
        lost_reported: "Possible losses reported to subscribers.",
        /// Successful SUBSCRIBEs, first ones and resubscribes.
        subscriptions: "Successful SUBSCRIBEs.",
        /// Resubscribes after a subscription ended or a first attempt failed.
        reconnects: "Resubscribes after a lost subscription.",
    }
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
    queue: PublishQueue,
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
        let counters = Arc::new(Counters::default());
        let (queue, rx) = PublishQueue::new(config.publish_queue, Arc::clone(&counters));
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(publish_loop(
            rx,
            conn,
            config.channel.clone(),
            Arc::clone(&counters),
            Arc::clone(&addr),
        ));
        Ok(Arc::new(Self {
            client,
            config,
            addr,
            queue,
            counters,
            runtime,
        }))
    }

    /// A copy of the counters.
    pub fn stats(&self) -> RedisBusStats {
        RedisBusStats::from_counters(&self.counters)
    }

    /// This process's boot id, carried in every envelope it publishes.
    pub fn boot(&self) -> u64 {
        self.queue.boot()
    }

    /// The server's `host:port`, as shown in logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) {
        self.queue.offer(envelope);
    }

    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Inbound> {
        let (delivery, rx) = Delivery::new(node, self.config.inbox, Arc::clone(&self.counters));
        let subscriber = Subscriber {
            client: self.client.clone(),
            config: self.config.clone(),
            addr: Arc::clone(&self.addr),
            counters: Arc::clone(&self.counters),
            delivery,
        };
        self.runtime.spawn(subscriber.run());
        rx
    }
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

/// Envelopes sent in one pipeline (one round trip).
const BATCH: usize = 512;

/// Drains the queue, one pipeline of PUBLISH commands per batch, until the
/// bus is dropped (its sender with it).
async fn publish_loop(
    mut rx: PublishRx,
    mut conn: ConnectionManager,
    channel: String,
    counters: Arc<Counters>,
    addr: Arc<str>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut failures = LogLimit::new(LOG_EVERY);
    while rx.recv_encoded(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for payload in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
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

/// One node's subscription, kept alive across Redis restarts until the
/// node's receiver is dropped.
struct Subscriber {
    client: redis::Client,
    config: RedisBusConfig,
    addr: Arc<str>,
    counters: Arc<Counters>,
    delivery: Delivery,
}

impl Subscriber {
    async fn run(mut self) {
        let mut backoff = self.config.reconnect_min;
        let mut first_attempt = true;
        let mut down_since: Option<Instant> = None;
        let mut connect_failures = LogLimit::new(LOG_EVERY);
        loop {
            let subscribed = tokio::select! {
                () = self.delivery.closed() => return,
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
                        () = self.delivery.closed() => return,
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
                self.delivery.lost_connection();
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
                    () = self.delivery.closed() => return,
                    msg = stream.next() => msg,
                };
                let Some(msg) = msg else { break };
                if let Some((e, suppressed)) = self.delivery.receive(msg.get_payload_bytes()) {
                    tracing::warn!(
                        channel = %self.config.channel, error = %e, suppressed_errors = suppressed,
                        "redis bus: skipped a message that is not an envelope; is another program publishing on this channel?"
                    );
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

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redacted("redis://user:s3cret@cache:6380/2"), "cache:6380");
        assert_eq!(redacted("redis://:p@ss@cache:6379"), "cache:6379");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(redacted("s3cret"), "<not a URL>");
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
