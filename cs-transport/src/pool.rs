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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
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

/// A message from the host of another node (see [`Target::Host`]).
#[derive(Clone, Debug)]
pub struct HostMessage {
    /// The node that sent it.
    pub from: NodeId,
    /// What it is about.
    pub topic: Arc<str>,
    /// What it says, in the hosts' own encoding.
    pub payload: Bytes,
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
    /// This connection misses messages of this conversation: one arrived
    /// past a hole, or a position check found it behind the store.
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
    /// Not sent: it has it already, it lies past a hole (reported), or the
    /// connection has not joined.
    Skipped,
    /// The connection is closing.
    Closing,
    /// Its queue overflowed; the caller closes it.
    Overflow,
}

/// What [`ConnectionPool::send_in_order`] does for a connection that has not
/// joined the conversation.
#[derive(Clone, Copy)]
enum Unjoined {
    /// Live delivery: it is not for this connection.
    Skip,
    /// A replay before the connection joins: send it.
    Send,
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
    host: broadcast::Sender<HostMessage>,
    /// Conversations another node stored a message in since this node's
    /// dispatcher last looked: its cached copy is out of date.
    written_elsewhere: DashMap<ConversationId, ()>,
    /// Bumped when `written_elsewhere` overflowed and was cleared: every
    /// cached conversation is then out of date.
    written_elsewhere_epoch: AtomicU64,
    gaps: mpsc::UnboundedSender<Gap>,
    /// Taken by the dispatcher, and handed back when it stops.
    gap_receiver: Mutex<Option<mpsc::UnboundedReceiver<Gap>>>,
    /// A [`Gap::Unknown`] is queued and not yet taken: a flood of bus losses
    /// becomes one position check, and the channel stays small even while
    /// no dispatcher reads it.
    unknown_pending: AtomicBool,
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
        let (host, _) = broadcast::channel(4096);
        // Unbounded, yet small: at most one report per joined conversation
        // of a connection is outstanding (`Joined::gap_reported`), and one
        // `Gap::Unknown` (`unknown_pending`).
        let (gaps, gap_receiver) = mpsc::unbounded_channel();
        let pool = Arc::new(Self {
            config,
            connections: DashMap::new(),
            by_party: DashMap::new(),
            by_conversation: DashMap::new(),
            by_group: DashMap::new(),
            bus,
            presence,
            host,
            written_elsewhere: DashMap::new(),
            written_elsewhere_epoch: AtomicU64::new(0),
            gaps,
            gap_receiver: Mutex::new(Some(gap_receiver)),
            unknown_pending: AtomicBool::new(false),
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
                            Inbound::Envelope(Envelope {
                                from,
                                target: Target::Host { topic },
                                frame,
                                ..
                            }) => {
                                // Nobody listening is fine: not every host uses these.
                                let _ = pool.host.send(HostMessage {
                                    from,
                                    topic,
                                    payload: frame,
                                });
                            }
                            Inbound::Envelope(envelope) => {
                                if let (Target::Conversation(id), Some(_)) =
                                    (&envelope.target, envelope.seq)
                                {
                                    pool.note_written_elsewhere(*id);
                                }
                                pool.deliver_local(&envelope.target, envelope.seq, &envelope.frame);
                            }
                            Inbound::Lost => {
                                Metrics::bump(&pool.metrics.bus_lost);
                                // What was lost may have been another node's
                                // write: no cached conversation can be trusted.
                                pool.written_elsewhere_epoch
                                    .fetch_add(1, AtomicOrdering::SeqCst);
                                if !pool.unknown_pending.swap(true, Ordering::AcqRel) {
                                    let _ = pool.gaps.send(Gap::Unknown);
                                }
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

    /// Makes every connection of `party`, on this node and (through the
    /// bus) on the others, follow `conversation` after seq `after`, as
    /// [`ConnectionPool::join_conversation`] does for one. Returns how many
    /// local connections joined. Published before the conversation's next
    /// message, it arrives before it on every node (the bus keeps one
    /// node's order); if the bus loses it, those consoles follow only once
    /// they `resume` the conversation themselves.
    pub fn join_party(
        &self,
        tenant: &TenantId,
        party: &Party,
        conversation: ConversationId,
        after: Seq,
    ) -> usize {
        let target = Target::Follow {
            tenant: tenant.clone(),
            party: party.clone(),
            conversation,
        };
        self.deliver(target, Some(after), Bytes::new())
    }

    fn follow_local(
        &self,
        tenant: &TenantId,
        party: &Party,
        conversation: ConversationId,
        after: Seq,
    ) -> usize {
        self.connections_of(tenant, party)
            .into_iter()
            .filter(|conn| self.join_conversation(*conn, conversation, after).is_ok())
            .count()
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
    /// dispatcher takes it and replays each gap, and hands it back when it
    /// stops; while it is taken, this returns `None`.
    pub fn gaps(&self) -> Option<mpsc::UnboundedReceiver<Gap>> {
        self.gap_receiver.lock().take()
    }

    /// Takes back what [`ConnectionPool::gaps`] handed out, so that a
    /// dispatcher started after this one stopped repairs again.
    pub(crate) fn restore_gaps(&self, gaps: mpsc::UnboundedReceiver<Gap>) {
        *self.gap_receiver.lock() = Some(gaps);
    }

    /// The repairer took a [`Gap::Unknown`]: a bus loss from now on is
    /// reported again. Called *before* the check it triggers, so that a loss
    /// during the check leads to one more.
    pub(crate) fn unknown_taken(&self) {
        self.unknown_pending.store(false, Ordering::Release);
    }

    /// Reports that connection `id` may miss messages of `conversation`,
    /// unless a report is already outstanding (or it has not joined).
    /// `new_hole` counts it in the `gaps` metric; a retry of a repair that
    /// did not finish is not a new hole. Returns whether it was reported.
    pub(crate) fn report_gap(
        &self,
        id: ConnId,
        conversation: ConversationId,
        new_hole: bool,
    ) -> bool {
        let Ok(connection) = self.connection(id) else {
            return false;
        };
        let mut joined = connection.joined.lock();
        let Some(entry) = joined.iter_mut().find(|j| j.conversation == conversation) else {
            return false;
        };
        self.report(id, entry, new_hole)
    }

    /// Sends a [`Gap::Connection`] for `entry` if none is outstanding. The
    /// caller holds the connection's `joined` lock, so the flag and the
    /// report cannot race with a repair clearing it.
    fn report(&self, id: ConnId, entry: &mut Joined, new_hole: bool) -> bool {
        if entry.gap_reported {
            return false;
        }
        entry.gap_reported = true;
        if new_hole {
            Metrics::bump(&self.metrics.gaps);
        }
        // The receiver is gone only while no dispatcher runs and the pool
        // is being dropped; nothing is left to repair then.
        let _ = self.gaps.send(Gap::Connection {
            conn: id,
            conversation: entry.conversation,
        });
        true
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
    /// replay does: in order if it has joined (skipped if it has it already,
    /// or if it lies past a hole), unconditionally if it has not (it is
    /// catching up before joining). Returns whether it was sent.
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
        match self.send_in_order(id, &connection, conversation, seq, frame, Unjoined::Send) {
            Ordered::Sent => Ok(true),
            Ordered::Skipped => Ok(false),
            Ordered::Closing => Err(SendError::Closing(id)),
            Ordered::Overflow => Err(self.overflowed(id)),
        }
    }

    /// The ordering rule (see the module docs), under the connection's lock
    /// so that two senders (a shard replaying, the bus listener delivering)
    /// cannot interleave their pushes out of order, and a repair cannot
    /// clear the gap flag between a check and a report.
    ///
    /// Never closes the connection itself: `close` takes the same lock. An
    /// overflow is returned for the caller to handle once the lock is gone.
    fn send_in_order(
        &self,
        id: ConnId,
        connection: &Connection,
        conversation: ConversationId,
        seq: Seq,
        frame: Bytes,
        unjoined: Unjoined,
    ) -> Ordered {
        let mut joined = connection.joined.lock();
        let Some(entry) = joined.iter_mut().find(|j| j.conversation == conversation) else {
            return match unjoined {
                // Left or closed since the index was read.
                Unjoined::Skip => Ordered::Skipped,
                Unjoined::Send => push(&self.metrics, connection, frame),
            };
        };
        if seq <= entry.position {
            return Ordered::Skipped;
        }
        if seq != entry.position.next() {
            // Held back: sending it would leave a hole the client cannot see
            // from the inside. The repair replays the hole and this message
            // from the store, which has had it since before it was routed.
            self.report(id, entry, true);
            return Ordered::Skipped;
        }
        let pushed = push(&self.metrics, connection, frame);
        if matches!(pushed, Ordered::Sent) {
            entry.position = seq;
        }
        pushed
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

    /// Most conversations remembered as written elsewhere before the whole
    /// set is dropped (and every cached copy with it): a bound on memory
    /// when other nodes write to many conversations this node never reads.
    const WRITTEN_ELSEWHERE_MAX: usize = 65_536;

    fn note_written_elsewhere(&self, id: ConversationId) {
        if self.written_elsewhere.len() >= Self::WRITTEN_ELSEWHERE_MAX {
            self.written_elsewhere.clear();
            self.written_elsewhere_epoch
                .fetch_add(1, AtomicOrdering::SeqCst);
        }
        self.written_elsewhere.insert(id, ());
    }

    /// Whether another node stored a message in `conversation` (changing its
    /// state, or only its last seq) since the last call for it: the
    /// dispatcher then reloads its cached copy from the store.
    pub(crate) fn take_written_elsewhere(&self, conversation: ConversationId) -> bool {
        self.written_elsewhere.remove(&conversation).is_some()
    }

    /// Changes when remembered writes were dropped; see
    /// `take_written_elsewhere`.
    pub(crate) fn written_elsewhere_epoch(&self) -> u64 {
        self.written_elsewhere_epoch.load(AtomicOrdering::SeqCst)
    }

    /// This node's name.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// Sends `payload` to the host of every other node, under `topic` (see
    /// [`Target::Host`]). Like everything on the bus it may be lost, so use
    /// it for news whose loss a periodic check repairs.
    pub fn publish_host(&self, topic: &str, payload: Bytes) {
        self.bus.publish(Envelope {
            from: self.config.node.clone(),
            target: Target::Host {
                topic: Arc::from(topic),
            },
            seq: None,
            frame: payload,
        });
    }

    /// What the hosts of other nodes publish with
    /// [`ConnectionPool::publish_host`]. A broadcast of 4,096: a receiver
    /// that lags gets `Lagged` and should resynchronise from shared state.
    pub fn host_messages(&self) -> broadcast::Receiver<HostMessage> {
        self.host.subscribe()
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
            // For the hosts, not for connections.
            Target::Host { .. } => None,
            Target::Follow {
                tenant,
                party,
                conversation,
            } => {
                return self.follow_local(tenant, party, *conversation, seq.unwrap_or_default());
            }
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
        let ordered = self.send_in_order(id, &connection, conversation, seq, frame, Unjoined::Skip);
        if matches!(ordered, Ordered::Overflow) {
            // Outside the connection's lock, which `close` takes.
            self.overflowed(id);
        }
        ordered
    }
}

/// Pushes `frame` to `connection`'s queue, as [`Ordered`].
fn push(metrics: &Metrics, connection: &Connection, frame: Bytes) -> Ordered {
    match connection.outbox.push(frame) {
        Ok(()) => {
            Metrics::bump(&metrics.delivered);
            Ordered::Sent
        }
        // Closing: its client resumes from what it has.
        Err(PushError::Closed) => Ordered::Closing,
        Err(PushError::Overflow) => Ordered::Overflow,
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
        pool.join_conversation(a.id, ConversationId::new(), Seq::ZERO)
            .unwrap();

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
        pool.join_conversation(a.id, conversation, Seq::ZERO)
            .unwrap();
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
        two.join_conversation(on_two.id, conversation, Seq::ZERO)
            .unwrap();

        let frame = ServerFrame::Pong.encode();
        assert_eq!(
            one.send_to_conversation(conversation, frame.clone()),
            0,
            "nobody local on node one"
        );
        assert_eq!(rx.next().await.unwrap(), frame, "node two delivered it");
        assert_eq!(bus.dropped(), 0);
    }

    async fn next_gap(gaps: &mut tokio::sync::mpsc::UnboundedReceiver<Gap>) -> Option<Gap> {
        tokio::time::timeout(std::time::Duration::from_secs(5), gaps.recv())
            .await
            .expect("a report within 5 s")
    }

    fn numbered(n: u64) -> Bytes {
        Bytes::from(format!("m{n}"))
    }

    #[tokio::test]
    async fn stored_messages_go_out_in_seq_order_and_a_hole_is_reported_once() {
        let metrics = Arc::new(Metrics::new());
        let pool = ConnectionPool::new(PoolConfig::default(), Arc::clone(&metrics));
        let mut gaps = pool.gaps().expect("no dispatcher took it");
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let ann = pool.register(shop(), visitor("ann"), tx);
        let conversation = ConversationId::new();
        pool.join_conversation(ann.id, conversation, Seq::new(2))
            .unwrap();
        let send = |n: u64| pool.send_message(conversation, Seq::new(n), numbered(n));

        assert_eq!(send(2), 0, "it has seq 2 already");
        assert_eq!(send(3), 1);
        assert_eq!(send(3), 0, "a duplicate is skipped");
        assert_eq!(send(5), 0, "held back: seq 4 is missing");
        assert_eq!(send(6), 0, "held back too");
        assert_eq!(
            gaps.try_recv(),
            Ok(Gap::Connection {
                conn: ann.id,
                conversation
            })
        );
        assert!(gaps.try_recv().is_err(), "one report for the hole");
        assert_eq!(metrics.snapshot().gaps, 1);
        assert_eq!(pool.position(ann.id, conversation), Some(Seq::new(3)));
        // Frames that are not stored messages are not ordered.
        assert_eq!(
            pool.send_to_conversation(conversation, Bytes::from_static(b"typing")),
            1
        );

        // The repair replays from the store, in order; what it has is skipped.
        pool.repairing(ann.id, conversation);
        for n in 4..=6 {
            assert!(pool
                .send_stored(ann.id, conversation, Seq::new(n), numbered(n))
                .unwrap());
        }
        assert!(!pool
            .send_stored(ann.id, conversation, Seq::new(5), numbered(5))
            .unwrap());
        assert_eq!(rx.next().await.unwrap(), numbered(3));
        assert_eq!(rx.next().await.unwrap(), "typing");
        for n in 4..=6 {
            assert_eq!(rx.next().await.unwrap(), numbered(n));
        }
        assert_eq!(pool.position(ann.id, conversation), Some(Seq::new(6)));

        // A hole found after the repair started is a new report.
        assert_eq!(send(8), 0);
        assert_eq!(
            gaps.try_recv(),
            Ok(Gap::Connection {
                conn: ann.id,
                conversation
            })
        );
        assert_eq!(metrics.snapshot().gaps, 2);
        assert!(rx.try_recv().is_err(), "nothing past the hole went out");

        // A connection that has not joined gets a replay unconditionally.
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let bob = pool.register(shop(), visitor("bob"), tx);
        assert!(pool
            .send_stored(bob.id, conversation, Seq::new(7), numbered(7))
            .unwrap());
        assert_eq!(rx.next().await.unwrap(), numbered(7));
        assert_eq!(pool.position(bob.id, conversation), None);
    }

    #[tokio::test]
    async fn a_bus_loss_is_reported_and_the_next_message_reveals_the_hole() {
        let bus = Arc::new(InProcessBus::new(1));
        let node = |name: &str| PoolConfig {
            node: NodeId::new(name),
            ..PoolConfig::default()
        };
        let one = ConnectionPool::with_bus(node("one"), bus.clone(), Arc::new(Metrics::new()));
        let metrics = Arc::new(Metrics::new());
        let two = ConnectionPool::with_bus(node("two"), bus.clone(), Arc::clone(&metrics));
        let mut gaps = two.gaps().expect("no dispatcher took it");
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let ann = two.register(shop(), visitor("ann"), tx);
        let conversation = ConversationId::new();
        two.join_conversation(ann.id, conversation, Seq::ZERO)
            .unwrap();

        // Three at once: node two's listener has no chance to run between
        // them, and its inbox holds one.
        for n in 1..=3 {
            one.send_message(conversation, Seq::new(n), numbered(n));
        }
        assert_eq!(bus.dropped(), 2);
        assert_eq!(rx.next().await.unwrap(), numbered(1));

        one.send_message(conversation, Seq::new(4), numbered(4));
        assert_eq!(next_gap(&mut gaps).await, Some(Gap::Unknown));
        assert_eq!(
            next_gap(&mut gaps).await,
            Some(Gap::Connection {
                conn: ann.id,
                conversation
            })
        );
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.bus_lost, snapshot.gaps), (1, 1));
        assert_eq!(two.position(ann.id, conversation), Some(Seq::new(1)));
        assert!(rx.try_recv().is_err(), "seq 4 was held back");
    }
}
