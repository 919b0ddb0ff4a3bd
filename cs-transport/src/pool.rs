//! The connection pool: every live connection on this node, and who is on it.
//!
//! A connection is anything that accepts frames as a [`futures::Sink`] of
//! [`Bytes`]: a WebSocket, an SSE stream, a test channel. The pool gives each
//! one a bounded outbound queue and one writer task (see `outbox.rs`), and
//! indexes it three ways: by party (a visitor or agent may have several tabs),
//! by joined conversation, and by named group (such as a tenant's agents).
//!
//! Indexes hold `Arc<[ConnId]>` lists that are replaced on change, so a send
//! clones one `Arc` and releases the map guard before touching any
//! connection: no guard is held across a push, a close, or an `.await`.
//!
//! Stored messages reach each connection **in seq order**. Every joined
//! conversation of a connection has a position, the last seq it was sent;
//! a message at the next seq is sent and moves it, one it already has is
//! skipped, and one past a hole is held back and reported on
//! [`ConnectionPool::gaps`], so the dispatcher replays the hole from the
//! store. With one node nothing skips; across nodes the bus may lose an
//! envelope, and this is where that is caught.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use futures::Sink;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use cs_core::{ConnId, ConversationId, Party, Seq, TenantId};

use crate::bus::{Bus, Envelope, InProcessBus, Inbound, NodeId, Target};
use crate::metrics::Metrics;
use crate::outbox::{write_loop, Outbox, PushError, WriterExit};
use crate::protocol::CloseReason;

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Bytes a connection may have queued before it is closed as a slow
    /// consumer. Default 64 KiB: a few hundred chat frames, small enough that
    /// 100,000 connections cannot hoard more than a few GiB even when all lag.
    /// The batch being written to the socket is no longer counted, so a
    /// connection holds at most about twice this.
    pub outbound_limit_bytes: usize,
    /// This node's name, for the bus.
    pub node: NodeId,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            outbound_limit_bytes: 64 * 1024,
            node: NodeId::new("local"),
        }
    }
}

/// A connection could not be sent to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such connection on this node (it closed, or never existed).
    #[error("unknown connection {0}")]
    UnknownConnection(ConnId),
    /// Its queue overflowed: it is now closed as a slow consumer.
    #[error("connection {0} was too slow and is closed; its client will resume")]
    SlowConsumer(ConnId),
    /// It is already closing.
    #[error("connection {0} is closing")]
    Closing(ConnId),
}

/// A party came online (first connection) or went offline (last one closed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// The party.
    pub party: Party,
    /// `true` when they came online.
    pub online: bool,
}

/// What [`ConnectionPool::register`] returns.
pub struct Registered {
    /// The new connection's id.
    pub id: ConnId,
    /// The writer task; it ends when the connection closes, and says how.
    pub writer: JoinHandle<WriterExit>,
}

/// Who is on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The tenant.
    pub tenant: TenantId,
    /// The party.
    pub party: Party,
}

/// A connection may be missing stored messages: what the dispatcher hears
/// from [`ConnectionPool::gaps`], and repairs by replaying from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gap {
    /// A message arrived past a hole in what this connection was sent.
    Connection {
        /// The connection.
        conn: ConnId,
        /// The conversation with the hole.
        conversation: ConversationId,
    },
    /// The bus may have lost envelopes to this node: check every joined
    /// connection against the store.
    Unknown,
}

/// A joined conversation of one connection.
struct Joined {
    conversation: ConversationId,
    /// The last seq sent to the connection.
    position: Seq,
    /// A [`Gap`] was reported and its repair has not started yet.
    gap_reported: bool,
}

struct Connection {
    info: ConnInfo,
    outbox: Arc<Outbox>,
    /// Conversations and groups it joined, so unregistering can clean the
    /// indexes; conversations with their positions.
    joined: Mutex<Vec<Joined>>,
    groups: Mutex<Vec<Arc<str>>>,
}

/// What ordered delivery decided for one connection.
enum Ordered {
    Sent,
    Skipped,
    Overflow,
}

type PartyKey = (TenantId, Party);
type GroupKey = (TenantId, Arc<str>);
type ConnList = Arc<[ConnId]>;

/// Every connection on this node. Cheap to share: hold it in an `Arc`.
pub struct ConnectionPool {
    config: PoolConfig,
    connections: DashMap<ConnId, Arc<Connection>>,
    by_party: DashMap<PartyKey, ConnList>,
    by_conversation: DashMap<ConversationId, ConnList>,
    by_group: DashMap<GroupKey, ConnList>,
    bus: Arc<dyn Bus>,
    presence: broadcast::Sender<PresenceEvent>,
    gaps: mpsc::UnboundedSender<Gap>,
    /// Taken once, by the dispatcher.
    gap_receiver: Mutex<Option<mpsc::UnboundedReceiver<Gap>>>,
    metrics: Arc<Metrics>,
}

impl ConnectionPool {
    /// A single-node pool (the in-process bus forwards nothing).
    pub fn new(config: PoolConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_bus(config, Arc::new(InProcessBus::default()), metrics)
    }

    /// A pool that also delivers through `bus`, and delivers what other nodes
    /// publish on it. Call it inside a tokio runtime: it spawns the task that
    /// listens to the bus.
    pub fn with_bus(config: PoolConfig, bus: Arc<dyn Bus>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut inbox = bus.subscribe(&config.node);
        let (presence, _) = broadcast::channel(1024);
        // Unbounded, yet small: at most one report per joined conversation
        // of a connection is outstanding (`Joined::gap_reported`).
        let (gaps, gap_receiver) = mpsc::unbounded_channel();
        let pool = Arc::new(Self {
            config,
            connections: DashMap::new(),
            by_party: DashMap::new(),
            by_conversation: DashMap::new(),
            by_group: DashMap::new(),
            bus,
            presence,
            gaps,
            gap_receiver: Mutex::new(Some(gap_receiver)),
            metrics,
        });
        // The listener holds only a weak reference, so dropping the pool ends it.
        let weak = Arc::downgrade(&pool);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    while let Some(inbound) = inbox.recv().await {
                        let Some(pool) = weak.upgrade() else { break };
                        match inbound {
                            Inbound::Envelope(envelope) => {
                                pool.deliver_local(&envelope.target, envelope.seq, &envelope.frame);
                            }
                            Inbound::Lost => {
                                Metrics::bump(&pool.metrics.bus_lost);
                                let _ = pool.gaps.send(Gap::Unknown);
                            }
                        }
                    }
                });
            }
            // Without a runtime nothing can listen: say so loudly, since other
            // nodes' deliveries to this one would otherwise vanish unseen.
            Err(_) => tracing::error!(
                node = %pool.config.node,
                "ConnectionPool::with_bus called outside a tokio runtime: this node will not receive from the bus"
            ),
        }
        pool
    }

    /// Adds a connection for `party` and starts its writer task on the
    /// current tokio runtime. The first connection of a party announces it
    /// online (see [`ConnectionPool::presence`]).
    pub fn register<S>(&self, tenant: TenantId, party: Party, sink: S) -> Registered
    where
        S: Sink<Bytes> + Send + Unpin + 'static,
        S::Error: std::fmt::Display,
    {
        let (id, writer) = self.attach(tenant, party, sink);
        Registered {
            id,
            writer: tokio::spawn(writer),
        }
    }

    /// Like [`ConnectionPool::register`], but hands the writer back as a
    /// future for the caller to drive, typically beside its read loop in the
    /// same task: one task per connection instead of two, which matters at
    /// 100,000 connections.
    pub fn attach<S>(
        &self,
        tenant: TenantId,
        party: Party,
        sink: S,
    ) -> (ConnId, impl Future<Output = WriterExit> + Send + 'static)
    where
        S: Sink<Bytes> + Send + Unpin + 'static,
        S::Error: std::fmt::Display,
    {
        let id = ConnId::next();
        let outbox = Arc::new(Outbox::new(self.config.outbound_limit_bytes));
        let connection = Arc::new(Connection {
            info: ConnInfo {
                tenant: tenant.clone(),
                party: party.clone(),
            },
            outbox: Arc::clone(&outbox),
            joined: Mutex::new(Vec::new()),
            groups: Mutex::new(Vec::new()),
        });
        self.connections.insert(id, connection);
        let first = index_add(&self.by_party, (tenant.clone(), party.clone()), id);
        if first {
            // Nobody listening is fine: presence is best-effort news.
            let _ = self.presence.send(PresenceEvent {
                tenant,
                party,
                online: true,
            });
        }
        (id, write_loop(outbox, sink))
    }

    /// Removes a connection and asks its writer to close with `reason`.
    /// Returns `false` if it was already gone. The last connection of a party
    /// announces it offline.
    pub fn close(&self, id: ConnId, reason: CloseReason) -> bool {
        let Some((_, connection)) = self.connections.remove(&id) else {
            return false;
        };
        connection.outbox.close(reason);
        let joined = std::mem::take(&mut *connection.joined.lock());
        for joined in joined {
            index_remove(&self.by_conversation, &joined.conversation, id);
        }
        let groups = std::mem::take(&mut *connection.groups.lock());
        for group in groups {
            index_remove(&self.by_group, &(connection.info.tenant.clone(), group), id);
        }
        let key = (
            connection.info.tenant.clone(),
            connection.info.party.clone(),
        );
        if index_remove(&self.by_party, &key, id) {
            let _ = self.presence.send(PresenceEvent {
                tenant: key.0,
                party: key.1,
                online: false,
            });
        }
        true
    }

    /// Closes every connection on this node with `reason`, as a server does
    /// when it stops: each client gets a `close` frame and reconnects (to
    /// another node, or to this one when it is back). Returns how many closed.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        // Ids first, then close: `close` touches the same map, so no guard
        // may be held while it runs.
        let ids: Vec<ConnId> = self.connections.iter().map(|c| *c.key()).collect();
        ids.into_iter().filter(|id| self.close(*id, reason)).count()
    }

    /// Presence changes on this node, for hosts that show who is online or
    /// update the router (an agent whose last tab closed goes offline).
    pub fn presence(&self) -> broadcast::Receiver<PresenceEvent> {
        self.presence.subscribe()
    }

    /// Who is on connection `id`.
    pub fn info(&self, id: ConnId) -> Option<ConnInfo> {
        self.connections.get(&id).map(|c| c.info.clone())
    }

    /// How many connections are open on this node.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// The connections of `party` on this node.
    pub fn connections_of(&self, tenant: &TenantId, party: &Party) -> Vec<ConnId> {
        self.by_party
            .get(&(tenant.clone(), party.clone()))
            .map(|list| list.to_vec())
            .unwrap_or_default()
    }

    /// Bytes connection `id` can still take before it is closed as a slow
    /// consumer: what a replay may send now.
    ///
    /// # Errors
    /// [`SendError::UnknownConnection`] if it has closed.
    pub fn outbound_room(&self, id: ConnId) -> Result<usize, SendError> {
        Ok(self.connection(id)?.outbox.room())
    }

    /// Sends live messages of `conversation` after seq `after` to
    /// connection `id` from now on, in seq order. If it has joined already,
    /// its position only moves forward.
    ///
    /// # Errors
    /// [`SendError::UnknownConnection`] if it has closed.
    pub fn join_conversation(
        &self,
        id: ConnId,
        conversation: ConversationId,
        after: Seq,
    ) -> Result<(), SendError> {
        let connection = self.connection(id)?;
        {
            let mut joined = connection.joined.lock();
            if let Some(entry) = joined.iter_mut().find(|j| j.conversation == conversation) {
                entry.position = entry.position.max(after);
                return Ok(());
            }
            joined.push(Joined {
                conversation,
                position: after,
                gap_reported: false,
            });
        }
        index_add(&self.by_conversation, conversation, id);
        if !self.connections.contains_key(&id) {
            // It closed while joining, after its cleanup ran: undo, or the
            // index would keep a dead id forever.
            index_remove(&self.by_conversation, &conversation, id);
        }
        Ok(())
    }

    /// Stops sending `conversation` to connection `id`.
    pub fn leave_conversation(&self, id: ConnId, conversation: ConversationId) {
        if let Ok(connection) = self.connection(id) {
            connection
                .joined
                .lock()
                .retain(|j| j.conversation != conversation);
        }
        index_remove(&self.by_conversation, &conversation, id);
    }

    /// The last seq of `conversation` sent to connection `id`, if it has
    /// joined it.
    pub fn position(&self, id: ConnId, conversation: ConversationId) -> Option<Seq> {
        let connection = self.connection(id).ok()?;
        let joined = connection.joined.lock();
        joined
            .iter()
            .find(|j| j.conversation == conversation)
            .map(|j| j.position)
    }

    /// Moves a joined connection's position in `conversation` back to `seq`
    /// (what its client says it has), so that a replay from there is sent.
    /// Returns `false` if it has not joined.
    pub fn rewind(&self, id: ConnId, conversation: ConversationId, seq: Seq) -> bool {
        let Ok(connection) = self.connection(id) else {
            return false;
        };
        let mut joined = connection.joined.lock();
        match joined.iter_mut().find(|j| j.conversation == conversation) {
            Some(entry) => {
                entry.position = seq;
                true
            }
            None => false,
        }
    }

    /// Marks the reported gap of a joined connection as being repaired, so
    /// that a new hole found from now on is reported again.
    pub fn repairing(&self, id: ConnId, conversation: ConversationId) {
        if let Ok(connection) = self.connection(id) {
            if let Some(entry) = connection
                .joined
                .lock()
                .iter_mut()
                .find(|j| j.conversation == conversation)
            {
                entry.gap_reported = false;
            }
        }
    }

    /// Every joined conversation on this node, with each joined connection's
    /// position: what a position check compares with the store.
    pub fn positions(&self) -> Vec<(ConversationId, Vec<(ConnId, Seq)>)> {
        // Lists first, positions after: no map guard is held while a
        // connection's lock is taken.
        let lists: Vec<(ConversationId, ConnList)> = self
            .by_conversation
            .iter()
            .map(|entry| (*entry.key(), Arc::clone(entry.value())))
            .collect();
        lists
            .into_iter()
            .map(|(conversation, list)| {
                let positions = list
                    .iter()
                    .filter_map(|id| Some((*id, self.position(*id, conversation)?)))
                    .collect();
                (conversation, positions)
            })
            .collect()
    }

    /// Where this node reports connections that miss stored messages. The
    /// dispatcher takes it (once) and replays each gap; a host that runs no
    /// dispatcher gets `None` after the first call.
    pub fn gaps(&self) -> Option<mpsc::UnboundedReceiver<Gap>> {
        self.gap_receiver.lock().take()
    }

    /// Adds connection `id` to a named group of its tenant (such as `"agents"`).
    ///
    /// # Errors
    /// [`SendError::UnknownConnection`] if it has closed.
    pub fn join_group(&self, id: ConnId, group: &str) -> Result<(), SendError> {
        let connection = self.connection(id)?;
        let group: Arc<str> = Arc::from(group);
        {
            let mut groups = connection.groups.lock();
            if groups.contains(&group) {
                return Ok(());
            }
            groups.push(Arc::clone(&group));
        }
        let key = (connection.info.tenant.clone(), group);
        index_add(&self.by_group, key.clone(), id);
        if !self.connections.contains_key(&id) {
            // Closed while joining: see `join_conversation`.
            index_remove(&self.by_group, &key, id);
        }
        Ok(())
    }

    fn connection(&self, id: ConnId) -> Result<Arc<Connection>, SendError> {
        self.connections
            .get(&id)
            .map(|c| Arc::clone(&c))
            .ok_or(SendError::UnknownConnection(id))
    }

    /// Queues `frame` to one connection of this node. A connection whose queue
    /// overflows is closed as a slow consumer.
    ///
    /// # Errors
    /// [`SendError`] saying why the frame was not queued.
    pub fn send_to_connection(&self, id: ConnId, frame: Bytes) -> Result<(), SendError> {
        let connection = self.connection(id)?;
        match connection.outbox.push(frame) {
            Ok(()) => {
                Metrics::bump(&self.metrics.delivered);
                Ok(())
            }
            Err(PushError::Overflow) => Err(self.overflowed(id)),
            Err(PushError::Closed) => Err(SendError::Closing(id)),
        }
    }

    fn overflowed(&self, id: ConnId) -> SendError {
        Metrics::bump(&self.metrics.slow_closed);
        self.close(id, CloseReason::SlowResume);
        SendError::SlowConsumer(id)
    }

    /// Sends stored message `seq` of `conversation` to connection `id`, as a
    /// replay does: in order if it has joined (skipped if it has it already),
    /// unconditionally if it has not (it is catching up before joining).
    /// Returns whether it was sent.
    ///
    /// # Errors
    /// [`SendError`] saying why it could not be sent.
    pub fn send_stored(
        &self,
        id: ConnId,
        conversation: ConversationId,
        seq: Seq,
        frame: Bytes,
    ) -> Result<bool, SendError> {
        let connection = self.connection(id)?;
        let joined = connection
            .joined
            .lock()
            .iter()
            .any(|j| j.conversation == conversation);
        if !joined {
            return self.send_to_connection(id, frame).map(|()| true);
        }
        match self.send_in_order(id, &connection, conversation, seq, frame) {
            Ordered::Sent => Ok(true),
            Ordered::Skipped => Ok(false),
            Ordered::Overflow => Err(self.overflowed(id)),
        }
    }

    /// The ordering rule (see the module docs), under the connection's lock
    /// so that two senders (a shard replaying, the bus listener delivering)
    /// cannot interleave their pushes out of order.
    fn send_in_order(
        &self,
        id: ConnId,
        connection: &Connection,
        conversation: ConversationId,
        seq: Seq,
        frame: Bytes,
    ) -> Ordered {
        let mut joined = connection.joined.lock();
        let Some(entry) = joined.iter_mut().find(|j| j.conversation == conversation) else {
            return Ordered::Skipped;
        };
        if seq <= entry.position {
            return Ordered::Skipped;
        }
        if seq != entry.position.next() {
            if !entry.gap_reported {
                entry.gap_reported = true;
                Metrics::bump(&self.metrics.gaps);
                let _ = self.gaps.send(Gap::Connection { conn: id, conversation });
            }
            return Ordered::Skipped;
        }
        match connection.outbox.push(frame) {
            Ok(()) => {
                entry.position = seq;
                Metrics::bump(&self.metrics.delivered);
                Ordered::Sent
            }
            // Closing: its client resumes from what it has.
            Err(PushError::Closed) => Ordered::Skipped,
            Err(PushError::Overflow) => Ordered::Overflow,
        }
    }

    /// Delivers `frame`, which is not a stored message (typing, a notice),
    /// to every connection that has joined `conversation`, here and (through
    /// the bus) on other nodes. Returns how many local connections took it.
    pub fn send_to_conversation(&self, conversation: ConversationId, frame: Bytes) -> usize {
        self.deliver(Target::Conversation(conversation), None, frame)
    }

    /// Delivers stored message `seq` of `conversation` to every connection
    /// that has joined it, here and on other nodes, in seq order per
    /// connection (see the module docs). Returns how many local connections
    /// took it.
    pub fn send_message(&self, conversation: ConversationId, seq: Seq, frame: Bytes) -> usize {
        self.deliver(Target::Conversation(conversation), Some(seq), frame)
    }

    /// Delivers `frame` to every connection of `party`, on every node.
    pub fn send_to_party(&self, tenant: &TenantId, party: &Party, frame: Bytes) -> usize {
        self.deliver(
            Target::Party {
                tenant: tenant.clone(),
                party: party.clone(),
            },
            None,
            frame,
        )
    }

    /// Delivers `frame` to every connection in `group` of `tenant`, on every node.
    pub fn send_to_group(&self, tenant: &TenantId, group: &str, frame: Bytes) -> usize {
        self.deliver(
            Target::Group {
                tenant: tenant.clone(),
                group: Arc::from(group),
            },
            None,
            frame,
        )
    }

    fn deliver(&self, target: Target, seq: Option<Seq>, frame: Bytes) -> usize {
        let local = self.deliver_local(&target, seq, &frame);
        self.bus.publish(Envelope {
            from: self.config.node.clone(),
            target,
            seq,
            frame,
        });
        local
    }

    fn deliver_local(&self, target: &Target, seq: Option<Seq>, frame: &Bytes) -> usize {
        // Clone the list and drop the guard before pushing: a push may close a
        // slow connection, which edits these same indexes.
        let list: Option<ConnList> = match target {
            Target::Conversation(c) => self.by_conversation.get(c).map(|l| Arc::clone(&l)),
            Target::Party { tenant, party } => self
                .by_party
                .get(&(tenant.clone(), party.clone()))
                .map(|l| Arc::clone(&l)),
            Target::Group { tenant, group } => self
                .by_group
                .get(&(tenant.clone(), Arc::clone(group)))
                .map(|l| Arc::clone(&l)),
        };
        let Some(list) = list else { return 0 };
        match (target, seq) {
            (Target::Conversation(conversation), Some(seq)) => list
                .iter()
                .filter(|id| {
                    matches!(
                        self.send_stored_live(**id, *conversation, seq, frame.clone()),
                        Ordered::Sent
                    )
                })
                .count(),
            _ => list
                .iter()
                .filter(|id| self.send_to_connection(**id, frame.clone()).is_ok())
                .count(),
        }
    }

    fn send_stored_live(
        &self,
        id: ConnId,
        conversation: ConversationId,
        seq: Seq,
        frame: Bytes,
    ) -> Ordered {
        let Ok(connection) = self.connection(id) else {
            return Ordered::Skipped;
        };
        let ordered = self.send_in_order(id, &connection, conversation, seq, frame);
        if matches!(ordered, Ordered::Overflow) {
            self.overflowed(id);
        }
        ordered
    }
}

/// Adds `id` under `key`; returns whether it is the first there.
fn index_add<K: std::hash::Hash + Eq>(map: &DashMap<K, ConnList>, key: K, id: ConnId) -> bool {
    let mut entry = map.entry(key).or_insert_with(|| Arc::from(Vec::new()));
    if entry.contains(&id) {
        return false;
    }
    let first = entry.is_empty();
    let mut list = entry.to_vec();
    list.push(id);
    *entry = Arc::from(list);
    first
}

/// Removes `id` from `key`; returns whether that emptied it (and removed the key).
fn index_remove<K: std::hash::Hash + Eq>(map: &DashMap<K, ConnList>, key: &K, id: ConnId) -> bool {
    let emptied = match map.get_mut(key) {
        Some(mut entry) if entry.contains(&id) => {
            let list: Vec<ConnId> = entry.iter().copied().filter(|c| *c != id).collect();
            let emptied = list.is_empty();
            *entry = Arc::from(list);
            emptied
        }
        _ => false,
    };
    if emptied {
        // Only remove the key if nobody re-joined in between.
        map.remove_if(key, |_, list| list.is_empty());
    }
    emptied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServerFrame;
    use cs_core::VisitorId;
    use futures::channel::mpsc;
    use futures::StreamExt;

    fn visitor(name: &str) -> Party {
        Party::Visitor(VisitorId::new(name).unwrap())
    }

    fn shop() -> TenantId {
        TenantId::new("shop").unwrap()
    }

    #[tokio::test]
    async fn a_party_with_two_tabs_gets_everything_twice_and_presence_follows() {
        let pool = ConnectionPool::new(PoolConfig::default(), Arc::new(Metrics::new()));
        let mut presence = pool.presence();
        let (tx1, mut rx1) = mpsc::unbounded::<Bytes>();
        let (tx2, mut rx2) = mpsc::unbounded::<Bytes>();
        let a = pool.register(shop(), visitor("ann"), tx1);
        let b = pool.register(shop(), visitor("ann"), tx2);
        assert!(presence.recv().await.unwrap().online);
        assert_eq!(pool.connections_of(&shop(), &visitor("ann")).len(), 2);

        assert_eq!(
            pool.send_to_party(&shop(), &visitor("ann"), Bytes::from_static(b"hi")),
            2
        );
        assert_eq!(rx1.next().await.unwrap(), "hi");
        assert_eq!(rx2.next().await.unwrap(), "hi");
        assert_eq!(
            pool.send_to_party(&shop(), &visitor("bob"), Bytes::from_static(b"x")),
            0
        );

        assert!(pool.close(a.id, CloseReason::ByHost));
        assert!(!pool.close(a.id, CloseReason::ByHost));
        assert!(presence.try_recv().is_err(), "ann still has a tab open");
        pool.close(b.id, CloseReason::ByHost);
        let gone = presence.recv().await.unwrap();
        assert_eq!((gone.party, gone.online), (visitor("ann"), false));
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn close_all_sends_every_client_the_reason_and_empties_the_pool() {
        let pool = ConnectionPool::new(PoolConfig::default(), Arc::new(Metrics::new()));
        let (tx1, mut rx1) = mpsc::unbounded::<Bytes>();
        let (tx2, mut rx2) = mpsc::unbounded::<Bytes>();
        let a = pool.register(shop(), visitor("ann"), tx1);
        let b = pool.register(shop(), visitor("bob"), tx2);
        pool.join_conversation(a.id, ConversationId::new()).unwrap();

        assert_eq!(pool.close_all(CloseReason::Shutdown), 2);
        assert!(pool.is_empty());
        let close = ServerFrame::Close {
            reason: CloseReason::Shutdown,
        }
        .encode();
        assert_eq!(rx1.next().await.unwrap(), close);
        assert_eq!(rx2.next().await.unwrap(), close);
        assert!(matches!(
            a.writer.await.unwrap(),
            WriterExit::Closed(CloseReason::Shutdown)
        ));
        assert!(matches!(
            b.writer.await.unwrap(),
            WriterExit::Closed(CloseReason::Shutdown)
        ));
        assert_eq!(pool.close_all(CloseReason::Shutdown), 0);
    }

    #[tokio::test]
    async fn only_joined_connections_get_conversation_traffic() {
        let pool = ConnectionPool::new(PoolConfig::default(), Arc::new(Metrics::new()));
        let (tx1, mut rx1) = mpsc::unbounded::<Bytes>();
        let (tx2, _rx2) = mpsc::unbounded::<Bytes>();
        let a = pool.register(shop(), visitor("ann"), tx1);
        let _b = pool.register(shop(), visitor("bob"), tx2);
        let conversation = ConversationId::new();
        pool.join_conversation(a.id, conversation).unwrap();
        assert_eq!(
            pool.send_to_conversation(conversation, Bytes::from_static(b"m1")),
            1
        );
        assert_eq!(rx1.next().await.unwrap(), "m1");
        pool.leave_conversation(a.id, conversation);
        assert_eq!(
            pool.send_to_conversation(conversation, Bytes::from_static(b"m2")),
            0
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_and_others_are_unaffected() {
        let config = PoolConfig {
            outbound_limit_bytes: 100,
            ..PoolConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let pool = ConnectionPool::new(config, Arc::clone(&metrics));
        // A sink that never accepts anything: a client that stopped reading.
        let stuck = futures::sink::unfold((), |(), _frame: Bytes| {
            futures::future::pending::<Result<(), String>>()
        });
        let slow = pool.register(shop(), visitor("slow"), Box::pin(stuck));
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let fast = pool.register(shop(), visitor("fast"), tx);
        pool.join_group(slow.id, "everyone").unwrap();
        pool.join_group(fast.id, "everyone").unwrap();

        let frame = Bytes::from(vec![b'x'; 40]);
        let mut slow_closed = false;
        for _ in 0..10 {
            pool.send_to_group(&shop(), "everyone", frame.clone());
            slow_closed |= pool.info(slow.id).is_none();
            // Let the writers run, as they would between network reads.
            tokio::task::yield_now().await;
        }
        assert!(
            slow_closed,
            "the stuck connection must be closed, not buffered forever"
        );
        assert_eq!(metrics.snapshot().slow_closed, 1);
        for _ in 0..10 {
            assert_eq!(
                rx.next().await.unwrap().len(),
                40,
                "the fast connection got every frame"
            );
        }
        assert!(pool.info(fast.id).is_some());
    }

    #[tokio::test]
    async fn two_nodes_on_one_bus_deliver_across() {
        let bus: Arc<InProcessBus> = Arc::new(InProcessBus::default());
        let node = |name: &str| PoolConfig {
            node: NodeId::new(name),
            ..PoolConfig::default()
        };
        let one = ConnectionPool::with_bus(node("one"), bus.clone(), Arc::new(Metrics::new()));
        let two = ConnectionPool::with_bus(node("two"), bus.clone(), Arc::new(Metrics::new()));
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let on_two = two.register(shop(), visitor("ann"), tx);
        let conversation = ConversationId::new();
        two.join_conversation(on_two.id, conversation).unwrap();

        let frame = ServerFrame::Pong.encode();
        assert_eq!(
            one.send_to_conversation(conversation, frame.clone()),
            0,
            "nobody local on node one"
        );
        assert_eq!(rx.next().await.unwrap(), frame, "node two delivered it");
        assert_eq!(bus.dropped(), 0);
    }
}
