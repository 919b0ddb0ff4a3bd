//! Cross-node delivery: the [`Bus`] trait and the in-process implementation.
//!
//! Every delivery the [`ConnectionPool`](crate::ConnectionPool) makes goes to
//! its own connections *and* onto the bus, so that a party connected to
//! another node gets it too. With one node the in-process bus has nobody to
//! forward to and costs a read lock. Implementations over Redis or NATS plug
//! in here; nothing above this trait changes.
//!
//! A bus is allowed to lose envelopes (pub/sub does, when a subscriber lags or
//! reconnects). That is safe because every stored message carries its seq and
//! can be replayed from the store: the pool delivers a conversation's
//! messages to each connection strictly in seq order, notices a skipped seq
//! at once, and the dispatcher replays the gap (see
//! [`ConnectionPool::gaps`](crate::ConnectionPool::gaps)). A loss with no
//! later message to reveal it is found by the dispatcher's position check,
//! which runs when the bus reports [`Inbound::Lost`] and, if configured, on
//! a timer.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use cs_core::{ConversationId, Party, Seq, TenantId};

/// A node of a deployment: one process holding connections.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Names a node, such as `"node-1"` or a host name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

/// Who a frame is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every connection that has joined the conversation.
    Conversation(ConversationId),
    /// Every connection of one party (all of a visitor's tabs).
    Party {
        /// The tenant.
        tenant: TenantId,
        /// The party.
        party: Party,
    },
    /// Every connection in a named group of a tenant, such as its online agents.
    Group {
        /// The tenant.
        tenant: TenantId,
        /// The group name.
        group: Arc<str>,
    },
    /// Not a frame for anyone: every connection of `party` starts following
    /// `conversation` after the envelope's `seq`, on every node, as
    /// [`ConnectionPool::join_party`](crate::ConnectionPool::join_party)
    /// asks. How an agent's consoles on other nodes follow a conversation
    /// assigned to them.
    Follow {
        /// The tenant.
        tenant: TenantId,
        /// Whose connections join.
        party: Party,
        /// What they join.
        conversation: ConversationId,
    },
    /// Not for connections: the host on every other node, through
    /// [`ConnectionPool::host_messages`](crate::ConnectionPool::host_messages).
    /// How a host's own parts talk across nodes, such as a chat server
    /// forwarding hand-offs to the node that routes its tenant.
    Host {
        /// What it is about, for the receiving host to dispatch on.
        topic: Arc<str>,
    },
}

/// A frame in transit between nodes.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The node that published it (it has already delivered locally).
    pub from: NodeId,
    /// Who it is for.
    pub target: Target,
    /// For a stored message sent to a conversation: its seq, which receivers
    /// use to deliver in order and to notice a lost envelope. `None` for
    /// frames that are not stored (typing, presence, host notices).
    pub seq: Option<Seq>,
    /// The encoded frame.
    pub frame: Bytes,
}

/// What a node receives from the bus.
#[derive(Clone, Debug)]
pub enum Inbound {
    /// An envelope another node published.
    Envelope(Envelope),
    /// Envelopes to this node may have been lost: the bus reconnected, or a
    /// queue overflowed. The receiver checks every position it holds.
    Lost,
}

/// Carries envelopes between nodes.
pub trait Bus: Send + Sync + 'static {
    /// Sends `envelope` to every other node. Must not block: implementations
    /// queue and return. May lose envelopes under pressure (see the module docs).
    fn publish(&self, envelope: Envelope);

    /// Starts receiving what other nodes publish, for node `node`.
    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Inbound>;
}

/// Connects the nodes of one process: a single node (the default, where it
/// forwards nothing) or several pools in one test.
pub struct InProcessBus {
    subscribers: RwLock<Vec<Subscriber>>,
    capacity: usize,
    dropped: AtomicU64,
}

struct Subscriber {
    node: NodeId,
    tx: mpsc::Sender<Inbound>,
    /// Set when an envelope to it was dropped and it has not been told yet.
    lost: AtomicBool,
}

impl InProcessBus {
    /// A bus whose subscribers each buffer up to `capacity` envelopes; past
    /// that, envelopes to a lagging node are dropped and counted, as pub/sub
    /// does, and the node gets [`Inbound::Lost`] just before the next
    /// envelope that reaches it. A loss with nothing after it goes unnoticed
    /// by the bus: the dispatcher's position check finds it.
    pub fn new(capacity: usize) -> Self {
        Self {
            subscribers: RwLock::new(Vec::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Envelopes dropped because a node lagged.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Bus for InProcessBus {
    fn publish(&self, envelope: Envelope) {
        let subscribers = self.subscribers.read();
        for subscriber in subscribers.iter() {
            if subscriber.node == envelope.from {
                continue;
            }
            // One slot of each queue is kept for the loss notice, so that
            // it never displaces the envelope it comes with: an envelope
            // goes in only if a slot stays free behind it. `capacity()` may
            // be stale under concurrent publishers; then a `try_send` fails
            // and the loss is flagged again, never forgotten.
            if subscriber.tx.capacity() < 2 {
                subscriber.lost.store(true, Ordering::Release);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A node that missed something hears so before its next
            // envelope. Taken with a swap, so that a loss flagged by another
            // publisher meanwhile is never cleared unannounced.
            if subscriber.lost.swap(false, Ordering::AcqRel)
                && subscriber.tx.try_send(Inbound::Lost).is_err()
            {
                subscriber.lost.store(true, Ordering::Release);
            }
            if subscriber
                .tx
                .try_send(Inbound::Envelope(envelope.clone()))
                .is_err()
            {
                subscriber.lost.store(true, Ordering::Release);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Inbound> {
        // One more than `capacity`: the slot for an `Inbound::Lost`.
        let (tx, rx) = mpsc::channel(self.capacity.saturating_add(1));
        let mut subscribers = self.subscribers.write();
        // A node that subscribes again replaces its old subscription.
        subscribers.retain(|s| s.node != *node);
        subscribers.push(Subscriber {
            node: node.clone(),
            tx,
            lost: AtomicBool::new(false),
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: &str, n: u8) -> Envelope {
        Envelope {
            from: NodeId::new(from),
            target: Target::Conversation(ConversationId::new()),
            seq: Some(Seq::new(u64::from(n))),
            frame: Bytes::from(vec![n]),
        }
    }

    fn frame_of(inbound: Option<Inbound>) -> Option<Bytes> {
        match inbound {
            Some(Inbound::Envelope(envelope)) => Some(envelope.frame),
            _ => None,
        }
    }

    #[test]
    fn a_lagging_node_hears_of_its_loss_before_its_next_envelope() {
        let bus = InProcessBus::new(1);
        let mut two = bus.subscribe(&NodeId::new("two"));
        for n in 1..=3 {
            bus.publish(envelope("one", n));
        }
        assert_eq!(bus.dropped(), 2, "room for one envelope");
        assert_eq!(frame_of(two.try_recv().ok()), Some(Bytes::from(vec![1])));
        assert!(
            two.try_recv().is_err(),
            "a trailing loss: nothing after it tells the node"
        );

        bus.publish(envelope("one", 4));
        assert!(matches!(two.try_recv(), Ok(Inbound::Lost)));
        assert_eq!(
            frame_of(two.try_recv().ok()),
            Some(Bytes::from(vec![4])),
            "the notice does not take the envelope's place"
        );
        assert_eq!(bus.dropped(), 2);
        // A node never hears its own envelopes.
        let mut one = bus.subscribe(&NodeId::new("one"));
        bus.publish(envelope("one", 5));
        assert!(one.try_recv().is_err());
    }
}
