//! [`NatsBus`] (feature `nats`): the nodes of a deployment talk over one
//! NATS subject, with core NATS pub/sub.
//!
//! # What it guarantees
//!
//! The same as [`RedisBus`](crate::RedisBus): at most once, losses noticed
//! and reported with [`Inbound::Lost`], so that the dispatcher replays from
//! the store what a connection missed (see the [`bus`](crate::bus) module
//! docs). Stored messages reach every connection complete and in order;
//! only frames that are not stored (typing, presence) can vanish. Both buses
//! send the same envelopes (a header line with the publisher's counter `n`
//! and `boot`, then the frame), through the same queue and inbox.
//!
//! A loss is noticed in four ways:
//! - a jump in a publisher's counter `n` (a full publish queue, a failed
//!   publish, anything lost on the way);
//! - the client reconnected: whatever was published while it was away is
//!   gone;
//! - the client dropped messages because this bus's subscription did not
//!   keep up (NATS calls it a slow consumer);
//! - a full inbox on the receiving side.
//!
//! A trailing loss (nothing published after it) shows only through the
//! reconnect report or the dispatcher's timer
//! ([`DispatcherConfig::position_check_interval`](crate::DispatcherConfig::position_check_interval)):
//! turn the timer on when you run several nodes.
//!
//! # How it differs from `RedisBus`
//!
//! - The NATS client (`async-nats`) reconnects and resubscribes by itself,
//!   so there is no resubscribe loop here; a subscriber ends only if the
//!   client is closed, which the bus never does. Instead each subscriber watches
//!   the client: its connection count (which only grows, so no reconnect
//!   goes unseen even if an event does) and its events. Any change is
//!   reported as a loss.
//! - After a reconnect the counters are *not* reset (`RedisBus` resets them
//!   once its SUBSCRIBE is confirmed): the client resubscribes on its own,
//!   a little after it says it is connected, and a message lost in between
//!   must still show as a jump.
//! - One connection serves publishing and subscribing, and `published`
//!   counts envelopes handed to the client: core NATS has no reply to a
//!   publish, and the client sends them in the background.
//! - JetStream is not used: the store is already the durable log, and the
//!   position check repairs what pub/sub loses, so a second log would only
//!   add a server-side cost.
//!
//! # Design: one subject, broadcast
//!
//! As with `RedisBus`, every node publishes to and subscribes to one subject
//! ([`NatsBusConfig::subject`]) and keeps what concerns its connections.
//! Fine for a handful of nodes; a subject per node or per tenant would be
//! the next step.
//!
//! # When NATS goes away
//!
//! - [`NatsBus::connect`] fails at start with [`NatsBusError`], naming the
//!   server (never the password or token).
//! - While it is away, publishes wait in the client's small queue, then in
//!   ours; a batch the client does not take within [`NatsBusConfig::timeout`]
//!   is counted as `publish_failed` (one warning per ten seconds), and a
//!   full queue drops and counts.
//! - The client retries with backoff ([`NatsBusConfig::reconnect_min`] to
//!   [`NatsBusConfig::reconnect_max`]), forever; the bus logs the
//!   disconnect and the reconnect, counts `reconnects` and reports
//!   [`Inbound::Lost`] to every subscriber.
//! - Meanwhile messages are stored and delivered on the node that stored
//!   them; other nodes get them from the store once NATS is back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, Subject};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use cs_core::redact_url;

use crate::bus::{Bus, Envelope, Inbound, NodeId};
use crate::bus_wire::{
    add, bus_stats, Counters, Delivery, LogLimit, PublishQueue, PublishRx, LOG_EVERY,
};

/// Settings of a [`NatsBus`].
#[derive(Clone, Debug)]
pub struct NatsBusConfig {
    /// The subject. Every node of one deployment uses the same subject; two
    /// deployments on one NATS use different ones (or separate accounts),
    /// or they receive each other's traffic. Dot-separated tokens, no
    /// spaces or wildcards. Default `"cs.bus"`.
    pub subject: String,
    /// Envelopes waiting to be published. Past this, [`Bus::publish`] drops
    /// (and counts) rather than block the message path. Default 65,536.
    pub publish_queue: usize,
    /// Envelopes waiting for each subscriber (the pool's listener). Past
    /// this, envelopes are dropped and the loss reported. Default 65,536.
    pub inbox: usize,
    /// How long connecting may take, and how long a batch of publishes may
    /// wait for room in the client while it reconnects, before it counts as
    /// failed. Default 5 s.
    pub timeout: Duration,
    /// First delay before a reconnect attempt after a failed one, doubled
    /// after each failure (the first attempt is immediate). Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts. Default 5 s.
    pub reconnect_max: Duration,
}

impl Default for NatsBusConfig {
    fn default() -> Self {
        Self {
            subject: "cs.bus".to_owned(),
            publish_queue: 65_536,
            inbox: 65_536,
            timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// [`NatsBus::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsBusError {
    /// The URL could not be read.
    #[error("{shown} is not a NATS URL ({reason}); expected nats://[user:password@]host:port, or several separated by commas")]
    BadUrl {
        /// The URL with any password or token replaced by `***`.
        shown: String,
        /// What the NATS client said.
        reason: String,
    },
    /// No server answered.
    #[error("NATS at {shown} did not answer ({reason}); check that nats-server is running and that the URL is right")]
    Unreachable {
        /// The URL with any password or token replaced by `***`.
        shown: String,
        /// What went wrong.
        reason: String,
    },
    /// The server turned the credentials down.
    #[error("NATS at {shown} refused the connection ({reason}); check the user and password or token in the URL")]
    Refused {
        /// The URL with any password or token replaced by `***`.
        shown: String,
        /// What the server said.
        reason: String,
    },
    /// [`NatsBusConfig::subject`] cannot be published to.
    #[error("{subject:?} cannot be the bus subject: {reason}; use dot-separated tokens without spaces or wildcards, such as \"cs.bus\"")]
    BadSubject {
        /// The subject as configured.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

bus_stats! {
    /// Counters of a [`NatsBus`], from [`NatsBus::stats`].
    NatsBusStats, "nats_bus_" {
        /// Envelopes handed to the NATS client, which sends them in the
        /// background (core NATS does not confirm a publish).
        published: "Envelopes handed to the NATS client.",
        /// Envelopes dropped because the publish queue was full.
        dropped_full_queue: "Envelopes dropped because the publish queue was full.",
        /// Envelopes the client refused or did not take in time (NATS away
        /// for longer than the timeout, or an envelope over the server's
        /// payload limit).
        publish_failed: "Envelopes the NATS client refused or did not take in time.",
        /// Messages read from the subject, from every node, this one included.
        received: "Messages read from the subject.",
        /// Of those, messages that were not envelopes of this format: skipped.
        decode_errors: "Messages on the subject that could not be decoded.",
        /// Envelopes from other nodes dropped because a subscriber's inbox was full.
        dropped_full_inbox: "Envelopes dropped because a subscriber's inbox was full.",
        /// [`Inbound::Lost`] reports handed to subscribers.
        lost_reported: "Possible losses reported to subscribers.",
        /// Subscriptions made, one per subscriber (the client renews them
        /// after a reconnect by itself, which is not counted here).
        subscriptions: "Subscriptions made.",
        /// Times the client connected again after losing its connection.
        reconnects: "Reconnects of the NATS client.",
        /// Times the client dropped messages because a subscription did not
        /// keep up (each reported as a loss).
        slow_consumers: "Slow-consumer drops by the NATS client.",
    }
}

/// A [`Bus`] over NATS core pub/sub. See the module docs.
///
/// ```no_run
/// # async fn run() -> Result<(), cs_transport::NatsBusError> {
/// use std::sync::Arc;
/// use cs_transport::{ConnectionPool, Metrics, NatsBus, NatsBusConfig, NodeId, PoolConfig};
///
/// let bus = NatsBus::connect("nats://127.0.0.1:4222", NatsBusConfig::default()).await?;
/// let config = PoolConfig { node: NodeId::new("node-1"), ..PoolConfig::default() };
/// let pool = ConnectionPool::with_bus(config, bus.clone(), Arc::new(Metrics::new()));
/// # let _ = pool;
/// println!("{}", bus.stats().to_prometheus("cs_"));
/// # Ok(())
/// # }
/// ```
pub struct NatsBus {
    client: Client,
    config: NatsBusConfig,
    subject: Subject,
    /// The URL without its password or token, for logs.
    shown: Arc<str>,
    queue: PublishQueue,
    counters: Arc<Counters>,
    /// Bumped on every connect and slow-consumer drop, to wake subscribers.
    wake: Arc<watch::Sender<()>>,
    runtime: tokio::runtime::Handle,
}

impl NatsBus {
    /// Connects to NATS at `url` (several servers may be given, separated
    /// by commas), and starts the publisher task on the current tokio
    /// runtime.
    ///
    /// # Errors
    /// [`NatsBusError::BadSubject`] for a subject that cannot be published
    /// to, [`NatsBusError::BadUrl`] for a URL the client cannot read,
    /// [`NatsBusError::Refused`] when the server turns the credentials
    /// down, [`NatsBusError::Unreachable`] when no server answers within
    /// [`NatsBusConfig::timeout`].
    pub async fn connect(url: &str, config: NatsBusConfig) -> Result<Arc<Self>, NatsBusError> {
        if let Err(reason) = check_subject(&config.subject) {
            return Err(NatsBusError::BadSubject {
                subject: config.subject,
                reason,
            });
        }
        // The client takes a list; a URL with commas names several servers.
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let shown: Arc<str> = Arc::from(
            servers
                .iter()
                .map(|server| redact_url(server))
                .collect::<Vec<_>>()
                .join(","),
        );
        let counters = Arc::new(Counters::default());
        let wake = Arc::new(watch::Sender::new(()));
        let events = Events {
            shown: Arc::clone(&shown),
            counters: Arc::clone(&counters),
            wake: Arc::clone(&wake),
            errors: Mutex::new(LogLimit::new(LOG_EVERY)),
        };
        let (min, max) = (config.reconnect_min, config.reconnect_max);
        let options = ConnectOptions::new()
            .name("cs-transport bus")
            .connection_timeout(config.timeout)
            // Never give up: a node without the bus still serves its own
            // connections, and the others catch up from the store.
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| backoff(min, max, attempts))
            // Runs on the client's event task: it must not wait, so it
            // counts, logs and wakes, and hands back a finished future.
            .event_callback(move |event| {
                events.on(event);
                std::future::ready(())
            });
        let client = match tokio::time::timeout(config.timeout, options.connect(servers)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let reason = scrub(&e.to_string(), url);
                let shown = shown.to_string();
                return Err(match e.kind() {
                    ConnectErrorKind::ServerParse => NatsBusError::BadUrl { shown, reason },
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                        NatsBusError::Refused { shown, reason }
                    }
                    _ => NatsBusError::Unreachable { shown, reason },
                });
            }
            Err(_) => {
                return Err(NatsBusError::Unreachable {
                    shown: shown.to_string(),
                    reason: format!("no answer within {:?}", config.timeout),
                })
            }
        };
        let subject = Subject::from(config.subject.as_str());
        let (queue, rx) = PublishQueue::new(config.publish_queue, Arc::clone(&counters));
        let publisher = Publisher {
            client: client.clone(),
            subject: subject.clone(),
            timeout: config.timeout,
            counters: Arc::clone(&counters),
            shown: Arc::clone(&shown),
        };
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(publisher.run(rx));
        Ok(Arc::new(Self {
            client,
            config,
            subject,
            shown,
            queue,
            counters,
            wake,
            runtime,
        }))
    }

    /// This process's boot id, carried in every envelope it publishes.
    pub fn boot(&self) -> u64 {
        self.queue.boot()
    }

    /// The server's URL without its password or token, as shown in logs.
    pub fn addr(&self) -> &str {
        &self.shown
    }

    /// A copy of the counters.
    pub fn stats(&self) -> NatsBusStats {
        let mut stats = NatsBusStats::from_counters(&self.counters);
        // The client counts its connections itself, the first one included.
        stats.reconnects = connects(&self.client).saturating_sub(1);
        stats
    }
}

impl Bus for NatsBus {
    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Inbound> {
        let (delivery, rx) = Delivery::new(node, self.config.inbox, Arc::clone(&self.counters));
        self.runtime.spawn(
            Subscriber {
                client: self.client.clone(),
                subject: self.subject.clone(),
                shown: Arc::clone(&self.shown),
                counters: Arc::clone(&self.counters),
                wake: Arc::clone(&self.wake),
                delivery,
            }
            .run(),
        );
        rx
    }

    fn publish(&self, envelope: Envelope) {
        // Numbered and queued here; the publisher task hands it to the client.
        self.queue.offer(envelope);
    }
}

/// Why `subject` cannot be the bus subject, if it cannot.
fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    if subject.chars().any(char::is_whitespace) {
        return Err("it contains white space");
    }
    let mut tokens = subject.split('.');
    if tokens.clone().any(str::is_empty) {
        return Err("it has an empty token (two dots in a row, or a dot at an end)");
    }
    // Every node publishes to it, so it must name one subject.
    if tokens.any(|token| token == "*" || token == ">") {
        return Err("it has a wildcard");
    }
    Ok(())
}

/// `reason` without the credentials in `url` (one server or several,
/// separated by commas), should the client have quoted them.
fn scrub(reason: &str, url: &str) -> String {
    // The password after `user:`, or a bare token.
    let secrets = url.split(',').filter_map(|server| {
        let (_, rest) = server.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let (user_info, _) = authority.rsplit_once('@')?;
        let secret = user_info.split_once(':').map_or(user_info, |(_, pw)| pw);
        (!secret.is_empty()).then_some(secret)
    });
    secrets.fold(reason.to_owned(), |reason, secret| {
        reason.replace(secret, "***")
    })
}

/// The delay before reconnect attempt `attempts` (1 for the first retry):
/// `min`, doubled per attempt, at most `max`.
fn backoff(min: Duration, max: Duration, attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    min.saturating_mul(2u32.saturating_pow(doublings.min(31)))
        .min(max)
}

/// How many times the client has connected, the first time included.
fn connects(client: &Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// What the client tells about its connection: logged, counted, and passed
/// on to subscribers as a possible loss.
struct Events {
    shown: Arc<str>,
    counters: Arc<Counters>,
    wake: Arc<watch::Sender<()>>,
    errors: Mutex<LogLimit>,
}

impl Events {
    fn on(&self, event: Event) {
        match event {
            Event::Connected => {
                tracing::info!(server = %self.shown, "nats bus: connected");
                self.wake.send_replace(());
            }
            Event::Disconnected => tracing::warn!(
                server = %self.shown,
                "nats bus: connection lost; the client reconnects by itself, and messages from other nodes published meanwhile are replayed from the store"
            ),
            Event::SlowConsumer(_) => {
                add(&self.counters.slow_consumers, 1);
                self.wake.send_replace(());
                self.warn("the client dropped messages for a subscription that did not keep up; reported as a loss");
            }
            Event::LameDuckMode => tracing::info!(
                server = %self.shown,
                "nats bus: the server is shutting down (lame duck mode); the client will reconnect"
            ),
            Event::Closed => tracing::error!(
                server = %self.shown,
                "nats bus: the client was closed; this node no longer hears from the others"
            ),
            Event::Draining => {}
            Event::ServerError(e) => self.warn(&format!("server error: {e}")),
            Event::ClientError(e) => self.warn(&format!("client error: {e}")),
        }
    }

    /// A warning, one per ten seconds at most.
    fn warn(&self, what: &str) {
        if let Some(suppressed) = self.errors.lock().allow() {
            tracing::warn!(server = %self.shown, suppressed, "nats bus: {what}");
        }
    }
}

/// Envelopes handed to the client per batch.
const BATCH: usize = 512;
/// How often a subscriber looks at the client's connection count even
/// without an event: events pass through a bounded queue and can be missed,
/// the count cannot.
const LOSS_CHECK: Duration = Duration::from_secs(1);

/// Hands what the queue holds to the client.
struct Publisher {
    client: Client,
    subject: Subject,
    timeout: Duration,
    counters: Arc<Counters>,
    shown: Arc<str>,
}

impl Publisher {
    /// Drains the queue into the client until the bus is dropped (its
    /// sender with it).
    async fn run(self, mut rx: PublishRx) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut failures = LogLimit::new(LOG_EVERY);
        while rx.recv_encoded(&mut batch, BATCH).await > 0 {
            let total = batch.len() as u64;
            let (sent, refused, error) = self.hand_over(&mut batch).await;
            batch.clear();
            add(&self.counters.published, sent);
            let failed = total - sent;
            if failed == 0 {
                continue;
            }
            add(&self.counters.publish_failed, failed);
            if let Some(suppressed) = failures.allow() {
                tracing::warn!(
                    server = %self.shown, envelopes = failed, refused, error = error.as_deref().unwrap_or("unknown"),
                    suppressed_failures = suppressed,
                    "nats bus: publishing failed; other nodes will get these messages from the store once they notice"
                );
            }
        }
    }

    /// Publishes `batch` within the timeout: how many the client took, how
    /// many it refused, and the last error.
    async fn hand_over(&self, batch: &mut Vec<Vec<u8>>) -> (u64, u64, Option<String>) {
        let (mut sent, mut refused, mut error) = (0, 0, None);
        // One deadline per batch: while the client reconnects its own queue
        // fills and publishing waits; past the deadline the rest of the
        // batch fails rather than hold up what follows.
        let in_time = tokio::time::timeout(self.timeout, async {
            for payload in batch.drain(..) {
                let subject = self.subject.clone();
                match self.client.publish(subject, Bytes::from(payload)).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        refused += 1;
                        error = Some(e.to_string());
                    }
                }
            }
        })
        .await;
        if in_time.is_err() {
            error = Some(format!("the client took no more within {:?}", self.timeout));
        }
        (sent, refused, error)
    }
}

/// One node's subscription, until the node's receiver is dropped. The
/// client renews it after each reconnect by itself; this task only notices
/// that there was one.
struct Subscriber {
    client: Client,
    subject: Subject,
    shown: Arc<str>,
    counters: Arc<Counters>,
    /// Held so that `changed()` below never fails for want of a sender.
    wake: Arc<watch::Sender<()>>,
    delivery: Delivery,
}

impl Subscriber {
    async fn run(mut self) {
        // Waits only for room in the client's queue: during an outage,
        // until the client is back.
        let subscribed = tokio::select! {
            () = self.delivery.closed() => return,
            subscribed = self.client.subscribe(self.subject.clone()) => subscribed,
        };
        let mut messages = match subscribed {
            Ok(messages) => messages,
            Err(e) => {
                // Only a closed client refuses, and it never opens again.
                tracing::error!(
                    server = %self.shown, subject = %self.subject, error = %e,
                    "nats bus: cannot subscribe; this node will not hear from the others until it restarts"
                );
                return;
            }
        };
        add(&self.counters.subscriptions, 1);
        let mut woken = self.wake.subscribe();
        let mut check = tokio::time::interval(LOSS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seen = self.loss_marks();
        loop {
            tokio::select! {
                () = self.delivery.closed() => return,
                // Ok or not, look at the marks below; the sender lives in
                // `self.wake`, so this cannot fail over and over.
                _ = woken.changed() => {}
                _ = check.tick() => {}
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        tracing::error!(
                            server = %self.shown, subject = %self.subject,
                            "nats bus: the client was closed; this node will not hear from the others until it restarts"
                        );
                        return;
                    };
                    if let Some((e, suppressed)) = self.delivery.receive(&msg.payload) {
                        tracing::warn!(
                            subject = %self.subject, error = %e, suppressed_errors = suppressed,
                            "nats bus: skipped a message that is not an envelope; is another program publishing on this subject?"
                        );
                    }
                }
            }
            let marks = self.loss_marks();
            if marks != seen {
                seen = marks;
                // The client reconnected or dropped messages for us: what
                // was published meanwhile is gone.
                self.delivery.report_loss();
            }
        }
    }

    /// What changes when messages may have been lost unseen: the client's
    /// connection count and its slow-consumer drops.
    fn loss_marks(&self) -> (u64, u64) {
        (
            connects(&self.client),
            self.counters.slow_consumers.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        for good in ["cs.bus", "cs", "shop-1.cs_bus"] {
            assert!(check_subject(good).is_ok(), "{good}");
        }
        for bad in [
            "", "cs bus", "cs..bus", ".cs", "cs.", "cs.*", "cs.>", "cs.bus\n",
        ] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_never_reach_an_error() {
        let url = "nats://app:s3cret@nats:4222";
        assert_eq!(
            scrub(&format!("cannot reach {url}: s3cret"), url),
            "cannot reach nats://app:***@nats:4222: ***"
        );
        let token = "nats://t0ken@nats:4222";
        assert_eq!(scrub("bad token t0ken", token), "bad token ***");
        assert_eq!(scrub("refused", "nats://nats:4222"), "refused");
        let two = "nats://a:pw1@n1:4222,nats://b:pw2@n2:4222";
        assert_eq!(scrub("pw1 pw2", two), "*** ***");
    }

    #[test]
    fn reconnect_delays_double_up_to_the_limit() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<_> = [1, 2, 3, 7, 100, usize::MAX]
            .into_iter()
            .map(|attempts| backoff(min, max, attempts).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 5000, 5000, 5000]);
    }

    #[test]
    fn every_field_of_the_stats_is_a_prometheus_counter() {
        let stats = NatsBusStats {
            slow_consumers: 7,
            ..NatsBusStats::default()
        };
        let text = stats.to_prometheus("cs_");
        let fields = serde_json::to_value(&stats).unwrap();
        let names: Vec<&String> = fields.as_object().unwrap().keys().collect();
        assert_eq!(names.len(), 10);
        for name in names {
            let typed = format!("# TYPE cs_nats_bus_{name}_total counter\n");
            assert!(text.contains(&typed), "{name} in {text}");
        }
        assert!(
            text.contains("\ncs_nats_bus_slow_consumers_total 7\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_subject_or_url_is_refused_with_a_reason() {
        let bad_subject = NatsBusConfig {
            subject: "cs.*".to_owned(),
            ..NatsBusConfig::default()
        };
        let Err(e) = NatsBus::connect("nats://127.0.0.1:4222", bad_subject).await else {
            panic!("a wildcard subject was accepted");
        };
        assert!(matches!(e, NatsBusError::BadSubject { .. }), "{e}");
        // Port 1 is closed: nothing answers, and the password stays hidden.
        let config = NatsBusConfig {
            timeout: Duration::from_secs(2),
            ..NatsBusConfig::default()
        };
        let Err(e) = NatsBus::connect("nats://app:s3cret@127.0.0.1:1", config).await else {
            panic!("connected to a closed port");
        };
        let text = e.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        // Several servers, none up: each shown, no password.
        let config = NatsBusConfig {
            timeout: Duration::from_secs(2),
            ..NatsBusConfig::default()
        };
        let two = "nats://a:pw1@127.0.0.1:1, nats://b:pw2@127.0.0.1:2";
        let Err(e) = NatsBus::connect(two, config).await else {
            panic!("connected to closed ports");
        };
        let text = e.to_string();
        assert!(!text.contains("pw1") && !text.contains("pw2"), "{text}");
        assert!(
            text.contains("nats://a:***@127.0.0.1:1,nats://b:***@127.0.0.1:2"),
            "{text}"
        );
    }
}
