//! What the network buses ([`RedisBus`](crate::RedisBus) and
//! [`NatsBus`](crate::NatsBus)) share: the wire format of an envelope, the
//! publisher's counter that lets receivers notice losses, the inbox that
//! reports them, the counters behind their stats, and small helpers.
//!
//! A bus module keeps only what talks to its server: connecting, the
//! publish loop's round trips, subscribing and noticing a lost connection.
//!
//! # The wire format
//!
//! A JSON header line, `\n`, then the frame's bytes as they are:
//! `{"v":1,"from":"node-1","boot":…,"n":…,"target":…,"seq":…}\n<frame>`.
//! `n` rises by one for every envelope a bus instance publishes (`boot`
//! tells instances apart), so a receiver that sees it jump knows that it
//! missed envelopes, wherever they were lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use cs_core::Seq;

use crate::bus::{Envelope, Inbound, NodeId, Target};

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

/// A message on the channel or subject that is not an envelope of this
/// format.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
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

/// The counters of a network bus, shared by its publisher and subscriber
/// tasks. Each bus shows them as its own stats struct (see [`bus_stats!`]).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) dropped_full_queue: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) dropped_full_inbox: AtomicU64,
    pub(crate) lost_reported: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    /// NATS only: times the client said it dropped messages for a
    /// subscription that did not keep up.
    #[cfg(feature = "nats")]
    pub(crate) slow_consumers: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Defines a bus's public stats struct over [`Counters`]: one `u64` field
/// per listed counter (with its doc comment), `to_prometheus`, and
/// `from_counters`. A macro because the two buses' stats differ only in
/// names, docs and help texts, and each must stay a plain struct with
/// public fields.
macro_rules! bus_stats {
    (
        $(#[$doc:meta])*
        $name:ident, $metric:literal {
            $( $(#[$field_doc:meta])* $field:ident: $help:literal, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $name {
            $( $(#[$field_doc])* pub $field: u64, )*
        }

        impl $name {
            #[doc = concat!(
                "The counters in the Prometheus text format, each name prefixed with\n",
                "`prefix` and `", $metric, "` (such as `cs_", $metric, "published_total`)."
            )]
            pub fn to_prometheus(&self, prefix: &str) -> String {
                let counters = [$( (concat!(stringify!($field), "_total"), $help, self.$field), )*];
                let mut out = String::new();
                crate::metrics::write_counters(&mut out, &format!("{prefix}{}", $metric), &counters);
                out
            }

            fn from_counters(c: &crate::bus_wire::Counters) -> Self {
                Self {
                    $( $field: c.$field.load(std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }
    };
}
pub(crate) use bus_stats;

/// The publishing half of a bus: numbers envelopes and queues them for the
/// bus's publisher task, never waiting.
pub(crate) struct PublishQueue {
    /// Tells this process's envelopes from those of an earlier run of the
    /// same node, whose counter started again at zero.
    boot: u64,
    /// The counter `n` of the last envelope offered to the queue. Held while
    /// queueing so that queue order is counter order: receivers then see
    /// `n` rise by one unless something was really lost.
    next_n: Mutex<u64>,
    tx: mpsc::Sender<(u64, Envelope)>,
    counters: Arc<Counters>,
}

/// What the publisher task reads: numbered envelopes, encoded on the way out.
pub(crate) struct PublishRx {
    boot: u64,
    rx: mpsc::Receiver<(u64, Envelope)>,
}

impl PublishQueue {
    /// A queue of `capacity` envelopes (at least one) and its reading end.
    pub(crate) fn new(capacity: usize, counters: Arc<Counters>) -> (Self, PublishRx) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let boot = boot_id();
        let queue = Self {
            boot,
            next_n: Mutex::new(0),
            tx,
            counters,
        };
        (queue, PublishRx { boot, rx })
    }

    /// This bus's boot id, carried in every envelope it publishes.
    pub(crate) fn boot(&self) -> u64 {
        self.boot
    }

    /// Queues `envelope`, or drops and counts it when the queue is full.
    pub(crate) fn offer(&self, envelope: Envelope) {
        let mut next_n = self.next_n.lock();
        // Counted even when dropped below: the gap in `n` is how receivers
        // learn about the drop.
        *next_n += 1;
        if self.tx.try_send((*next_n, envelope)).is_err() {
            add(&self.counters.dropped_full_queue, 1);
        }
    }
}

impl PublishRx {
    /// Waits for at least one envelope, then moves up to `limit` of them
    /// into `out`, encoded. 0 once the bus is dropped.
    pub(crate) async fn recv_encoded(&mut self, out: &mut Vec<Vec<u8>>, limit: usize) -> usize {
        let mut batch = Vec::with_capacity(limit.min(64));
        let count = self.rx.recv_many(&mut batch, limit).await;
        out.extend(
            batch
                .into_iter()
                .map(|(n, envelope)| encode(self.boot, n, &envelope)),
        );
        count
    }
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

    /// After a reconnect the counters say nothing useful (the loss is
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

/// The receiving half of one node's subscription: decodes what arrives,
/// notices losses and hands both to the node's inbox.
pub(crate) struct Delivery {
    inbox: Inbox,
    tracker: Tracker,
    counters: Arc<Counters>,
    decode_failures: LogLimit,
}

impl Delivery {
    /// A delivery for `node` and the receiver [`Bus::subscribe`](crate::Bus::subscribe)
    /// returns, holding up to `inbox` envelopes.
    pub(crate) fn new(
        node: &NodeId,
        inbox: usize,
        counters: Arc<Counters>,
    ) -> (Self, mpsc::Receiver<Inbound>) {
        // One more than `inbox`: the slot for an `Inbound::Lost`, as in
        // `InProcessBus`, so the notice never displaces an envelope.
        let (tx, rx) = mpsc::channel(inbox.max(1).saturating_add(1));
        let delivery = Self {
            inbox: Inbox {
                tx,
                pending_lost: false,
            },
            tracker: Tracker::new(node.clone()),
            counters,
            decode_failures: LogLimit::new(LOG_EVERY),
        };
        (delivery, rx)
    }

    /// One message from the channel or subject. A message that is not an
    /// envelope is counted and skipped; it comes back, with how many were
    /// skipped unlogged before it, when it is time to log one (once per
    /// [`LOG_EVERY`]).
    pub(crate) fn receive(&mut self, payload: &[u8]) -> Option<(WireError, u64)> {
        add(&self.counters.received, 1);
        match self.tracker.accept(payload) {
            Ok(Some((envelope, lost))) => {
                self.inbox.push(envelope, lost, &self.counters);
                None
            }
            Ok(None) => None,
            Err(e) => {
                add(&self.counters.decode_errors, 1);
                self.decode_failures
                    .allow()
                    .map(|suppressed| (e, suppressed))
            }
        }
    }

    /// The subscription was lost and is back: whatever was published
    /// meanwhile is gone, so the dispatcher checks every position against
    /// the store. The counters start afresh, so that the same loss is not
    /// reported twice.
    pub(crate) fn lost_connection(&mut self) {
        self.tracker.forget();
        self.report_loss();
    }

    /// Envelopes may have been lost unseen: report it, and keep counting,
    /// so that a loss just after this report still shows as a jump.
    pub(crate) fn report_loss(&mut self) {
        self.inbox.pending_lost = true;
        self.inbox.report_lost(&self.counters);
    }

    /// Resolves once the node dropped its receiver: time to unsubscribe.
    pub(crate) async fn closed(&self) {
        self.inbox.tx.closed().await;
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

/// How often a repeated failure is logged at most.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// One warning per interval instead of one per failure.
pub(crate) struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were suppressed since the last one)` when this one
    /// may be logged.
    pub(crate) fn allow(&mut self) -> Option<u64> {
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
    fn boot_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| boot_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[tokio::test]
    async fn the_queue_numbers_every_envelope_and_counts_what_it_drops() {
        let counters = Arc::new(Counters::default());
        let (queue, mut rx) = PublishQueue::new(2, Arc::clone(&counters));
        for frame in [b"a", b"b", b"c"] {
            queue.offer(envelope("one", conversation(), None, frame));
        }
        assert_eq!(counters.dropped_full_queue.load(Ordering::Relaxed), 1);
        let mut out = Vec::new();
        assert_eq!(rx.recv_encoded(&mut out, 10).await, 2);
        queue.offer(envelope("one", conversation(), None, b"d"));
        assert_eq!(rx.recv_encoded(&mut out, 10).await, 1);
        let numbers: Vec<(u64, u64)> = out
            .iter()
            .map(|payload| {
                let (header, _) = decode(payload).unwrap();
                (header.boot, header.n)
            })
            .collect();
        let boot = queue.boot();
        // 3 was dropped: the jump from 2 to 4 tells receivers.
        assert_eq!(numbers, [(boot, 1), (boot, 2), (boot, 4)]);
    }

    #[test]
    fn a_lost_connection_resets_the_counters_a_reported_loss_does_not() {
        let counters = Arc::new(Counters::default());
        let (mut delivery, mut rx) = Delivery::new(&NodeId::new("two"), 8, Arc::clone(&counters));
        let sent = envelope("one", conversation(), Some(1), b"x");
        assert!(delivery.receive(&encode(1, 1, &sent)).is_none());
        delivery.lost_connection();
        // Counting starts afresh: 7 after 1 is not a second loss.
        assert!(delivery.receive(&encode(1, 7, &sent)).is_none());
        assert!(delivery.receive(b"not an envelope").is_some(), "logged");
        assert!(
            delivery.receive(b"nor this").is_none(),
            "not logged again at once"
        );
        // Kept counting: a jump after a mere report is a loss again.
        delivery.report_loss();
        assert!(delivery.receive(&encode(1, 9, &sent)).is_none());
        let lost: Vec<bool> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|inbound| matches!(inbound, Inbound::Lost))
            .collect();
        // 1, the reconnect, 7, the report, the jump to 9, 9.
        assert_eq!(lost, [false, true, false, true, true, false]);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                get(&counters.received),
                get(&counters.decode_errors),
                get(&counters.lost_reported)
            ),
            (5, 2, 3)
        );
    }
}
