//! Cross-node delivery: the [`Bus`] trait and the in-process implementation.
//!
//! Every delivery the [`ConnectionPool`](crate::ConnectionPool) makes goes to
//! its own connections *and* onto the bus, so that a party connected to
//! another node gets it too. With one node the in-process bus has nobody to
//! forward to and costs a read lock. Implementations over Redis or NATS plug
//! in here; nothing above this trait changes.
//!
//! A bus is allowed to lose envelopes (pub/sub does, when a subscriber lags or
//! reconnects). That is safe because every stored message can be replayed
//! from the store by seq: a client that notices a gap resumes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use cs_core::{ConversationId, Party, TenantId};

/// A node of a deployment: one process holding connections.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
}

/// A frame in transit between nodes.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The node that published it (it has already delivered locally).
    pub from: NodeId,
    /// Who it is for.
    pub target: Target,
    /// The encoded frame.
    pub frame: Bytes,
}

/// Carries envelopes between nodes.
pub trait Bus: Send + Sync + 'static {
    /// Sends `envelope` to every other node. Must not block: implementations
    /// queue and return. May lose envelopes under pressure (see the module docs).
    fn publish(&self, envelope: Envelope);

    /// Starts receiving what other nodes publish, for node `node`.
    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Envelope>;
}

/// Connects the nodes of one process: a single node (the default, where it
/// forwards nothing) or several pools in one test.
pub struct InProcessBus {
    subscribers: RwLock<Vec<(NodeId, mpsc::Sender<Envelope>)>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl InProcessBus {
    /// A bus whose subscribers each buffer up to `capacity` envelopes; past
    /// that, envelopes to a lagging node are dropped and counted, as pub/sub does.
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
        for (node, tx) in subscribers.iter() {
            if *node == envelope.from {
                continue;
            }
            if tx.try_send(envelope.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn subscribe(&self, node: &NodeId) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut subscribers = self.subscribers.write();
        // A node that subscribes again replaces its old subscription.
        subscribers.retain(|(n, _)| n != node);
        subscribers.push((node.clone(), tx));
        rx
    }
}
