//! Several nodes behind a load balancer (feature `redis`), sharing one SQL
//! store and one Redis.
//!
//! What the crates give (see `docs/scale-out.md`):
//!
//! - the `RedisBus` under the pool: a message stored on one node reaches
//!   the parties connected to any other, and a per-connection position
//!   check replays whatever pub/sub dropped;
//! - a `Lease` per tenant: the one node holding it routes the tenant, so
//!   queue order and agents' capacity hold across nodes;
//! - `ClusterPresence`: which agents are connected where, expiring with a
//!   dead node.
//!
//! What this file adds is how the desks of the nodes talk, on the pool's
//! host channel under the topic `desk`: followers tell the routing node
//! what happened on their side (`Changed`, `Preview`, `PresenceChanged`),
//! and ask it what only it knows (`DeskOp`), which it answers. Everything
//! told may be lost (it is pub/sub): the routing node rereads the open
//! conversations from the store every few seconds and presence every
//! second, so a lost word delays, never strands, a visitor.
//!
//! Without the `redis` feature [`Cluster`] is a type with no values, so a
//! single node's desk carries no cluster code at all.

pub use imp::{Cluster, ClusterConfig};

#[cfg(feature = "redis")]
mod imp {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use dashmap::DashMap;
    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};
    use tokio::sync::broadcast::error::RecvError;
    use tokio::sync::{oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use cs_core::router::Presence;
    use cs_core::{AgentId, ConversationId, Party, TenantId, Timestamp};
    use cs_transport::cluster::{ClusterPresence, Lease};
    use cs_transport::{NodeId, RedisBus, RedisBusConfig};

    use crate::desk::error::{ClusterError, DeskError, ErrorKind};
    use crate::desk::state::DeskState;

    /// The host-channel topic the desks talk on.
    pub const DESK_TOPIC: &str = "desk";
    /// How long a follower waits for the routing node to answer.
    const ASK_TIMEOUT: Duration = Duration::from_secs(3);
    /// How often the routing node rereads the open conversations,
    /// repairing whatever a lost bus message left undone.
    const REREAD_EVERY: Duration = Duration::from_secs(5);
    /// How often the routing node rereads the agents' presence.
    const PRESENCE_EVERY: Duration = Duration::from_secs(1);

    /// Where and how a node joins.
    #[derive(Clone, Debug)]
    pub struct ClusterConfig {
        /// `redis://[:password@]host:port[/db]`.
        pub url: String,
        /// Prefix of every Redis key and channel of this cluster, so
        /// several clusters (or test runs) can share one Redis.
        pub prefix: String,
        /// This node's name, unique per node.
        pub node: NodeId,
        /// Lease and presence time to live: how long a dead node's routing
        /// and agents linger.
        pub ttl: Duration,
    }

    /// What the desks of the nodes say to each other.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum DeskWire {
        /// A follower's message path changed a conversation: the routing
        /// node rereads it from the store.
        Changed {
            conversation: ConversationId,
            handoff: Option<String>,
        },
        /// A message stored on a follower, for the consoles' previews.
        Preview {
            conversation: ConversationId,
            text: String,
            from: String,
            at: Timestamp,
        },
        /// An agent's consoles came or went on a follower.
        PresenceChanged,
        /// A follower asks the routing node.
        Request { id: u64, from: NodeId, op: DeskOp },
        /// The routing node's answer.
        Reply {
            id: u64,
            to: NodeId,
            result: Result<Value, RemoteError>,
        },
    }

    /// What a follower asks the routing node.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    pub(crate) enum DeskOp {
        /// The agents and the open conversations.
        Snapshot,
        /// An agent chose online or away.
        ChoosePresence { agent: AgentId, presence: Presence },
        /// An agent hands a conversation to a colleague.
        Transfer {
            by: AgentId,
            conversation: ConversationId,
            to: AgentId,
        },
    }

    /// A [`DeskError`] on the wire.
    #[derive(Debug, Serialize, Deserialize)]
    struct RemoteError {
        kind: ErrorKind,
        message: String,
    }

    /// This node's membership: the bus, the routing lease, shared presence
    /// and the requests waiting for the routing node.
    pub struct Cluster {
        config: ClusterConfig,
        pool: Arc<cs_transport::ConnectionPool>,
        bus: Arc<RedisBus>,
        presence: Arc<ClusterPresence>,
        lease: Arc<Lease>,
        routing: watch::Receiver<bool>,
        pending: DashMap<u64, oneshot::Sender<Result<Value, RemoteError>>>,
        next_request: AtomicU64,
    }

    impl std::fmt::Debug for Cluster {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Cluster")
                .field("node", &self.config.node)
                .field("routing", &self.routing())
                .finish_non_exhaustive()
        }
    }

    impl Cluster {
        /// Connects the bus, which the pool is built on.
        pub(crate) async fn connect_bus(
            config: &ClusterConfig,
        ) -> Result<Arc<RedisBus>, ClusterError> {
            let bus_config = RedisBusConfig {
                channel: format!("{}:bus", config.prefix),
                ..RedisBusConfig::default()
            };
            RedisBus::connect(&config.url, bus_config)
                .await
                .map_err(|e| ClusterError::Join(e.to_string()))
        }

        /// Joins: connects the lease and the presence, and keeps both until
        /// `shutdown` (the lease is then released, so another node routes at
        /// once instead of after the ttl).
        pub(crate) async fn join(
            config: ClusterConfig,
            tenant: &TenantId,
            bus: Arc<RedisBus>,
            pool: Arc<cs_transport::ConnectionPool>,
            shutdown: CancellationToken,
        ) -> Result<(Arc<Cluster>, Vec<JoinHandle<()>>), ClusterError> {
            let join = |e: &dyn std::fmt::Display| ClusterError::Join(e.to_string());
            let presence = ClusterPresence::connect(
                &config.url,
                &format!("{}:", config.prefix),
                config.node.clone(),
                config.ttl,
            )
            .await
            .map_err(|e| join(&e))?;
            let lease = Lease::connect(
                &config.url,
                format!("{}:desk:{tenant}", config.prefix),
                config.node.clone(),
                config.ttl,
            )
            .await
            .map_err(|e| join(&e))?;
            let (routing, keeper) = lease.spawn_keeper(shutdown.clone());
            let heartbeat = presence.spawn_heartbeat(shutdown);
            let cluster = Arc::new(Cluster {
                config,
                pool,
                bus,
                presence,
                lease,
                routing,
                pending: DashMap::new(),
                next_request: AtomicU64::new(1),
            });
            Ok((cluster, vec![keeper, heartbeat]))
        }

        /// This node's name.
        pub fn node(&self) -> &NodeId {
            &self.config.node
        }

        /// Whether this node routes the tenant now.
        pub fn routing(&self) -> bool {
            *self.routing.borrow()
        }

        /// The node routing the tenant, as Redis says; `None` while nobody
        /// does (between a routing node's death and the ttl) or Redis is down.
        pub async fn router_node(&self) -> Option<NodeId> {
            self.lease.holder().await.ok().flatten()
        }

        /// The bus's counters, in Prometheus text.
        pub fn bus_metrics(&self, prefix: &str) -> String {
            self.bus.stats().to_prometheus(prefix)
        }

        fn tell(&self, wire: &DeskWire) {
            match serde_json::to_vec(wire) {
                Ok(payload) => self.pool.publish_host(DESK_TOPIC, Bytes::from(payload)),
                // Ids, strings and numbers always serialize.
                Err(e) => tracing::error!(error = %e, "could not encode a desk message"),
            }
        }

        pub(crate) fn tell_changed(&self, conversation: ConversationId, handoff: Option<String>) {
            self.tell(&DeskWire::Changed {
                conversation,
                handoff,
            });
        }

        pub(crate) fn tell_preview(
            &self,
            conversation: ConversationId,
            text: String,
            from: &str,
            at: Timestamp,
        ) {
            self.tell(&DeskWire::Preview {
                conversation,
                text,
                from: from.to_owned(),
                at,
            });
        }

        /// Asks the routing node, and waits for its answer.
        pub(crate) async fn ask(&self, op: DeskOp) -> Result<Value, ClusterError> {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            let (answer, answered) = oneshot::channel();
            self.pending.insert(id, answer);
            self.tell(&DeskWire::Request {
                id,
                from: self.config.node.clone(),
                op,
            });
            let result = tokio::time::timeout(ASK_TIMEOUT, answered).await;
            self.pending.remove(&id);
            match result {
                Ok(Ok(result)) => result.map_err(|e| ClusterError::Remote {
                    kind: e.kind,
                    message: e.message,
                }),
                _ => Err(ClusterError::NoAnswer {
                    waited: ASK_TIMEOUT,
                    ttl: self.config.ttl,
                }),
            }
        }

        fn answered(&self, id: u64, to: &NodeId, result: Result<Value, RemoteError>) {
            if to != self.node() {
                return;
            }
            if let Some((_, waiting)) = self.pending.remove(&id) {
                // It may have timed out meanwhile; then nobody needs the answer.
                let _ = waiting.send(result);
            }
        }

        /// The agents with a console open on a live node; `None` when Redis
        /// cannot say.
        pub(crate) async fn online_agents(&self, tenant: &TenantId) -> Option<HashSet<AgentId>> {
            match self.presence.online(tenant).await {
                Ok(online) => Some(
                    online
                        .into_iter()
                        .filter_map(|(party, _)| match party {
                            Party::Agent(agent) => Some(agent),
                            _ => None,
                        })
                        .collect(),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the cluster's presence");
                    None
                }
            }
        }

        /// Whether the agent has a console open on any live node; yes when
        /// Redis cannot say, so its outage sends nobody's visitors back.
        pub(crate) async fn agent_online(&self, tenant: &TenantId, agent: &AgentId) -> bool {
            self.online_agents(tenant)
                .await
                .is_none_or(|online| online.contains(agent))
        }

        /// Writes whether the agent has consoles on this node to the shared
        /// presence, then has the routing node reread it.
        pub(crate) async fn share_presence(&self, desk: &Arc<DeskState>, agent: &AgentId) {
            // The pool's state now, not the event's: events can overtake.
            let party = Party::Agent(agent.clone());
            let here = desk.connected_here(agent);
            if let Err(e) = self.presence.set_online(&desk.tenant, &party, here).await {
                // The heartbeat notices the loss and `resyncs` rewrites it all.
                tracing::warn!(%agent, error = %e, "could not share the agent's presence");
            }
            if self.routing() {
                desk.reconcile_all_agents().await;
            } else {
                self.tell(&DeskWire::PresenceChanged);
            }
        }

        /// Rewrites every agent this node has consoles of, after Redis lost them.
        pub(crate) async fn share_all_presence(&self, desk: &Arc<DeskState>) {
            let here: Vec<(TenantId, Party)> = desk
                .agent_ids()
                .into_iter()
                .filter(|agent| desk.connected_here(agent))
                .map(|agent| (desk.tenant.clone(), Party::Agent(agent)))
                .collect();
            match self.presence.replace_all(&here).await {
                Ok(()) => tracing::info!(agents = here.len(), "agents' presence shared again"),
                Err(e) => tracing::warn!(error = %e, "could not share the agents' presence again"),
            }
            if !self.routing() {
                self.tell(&DeskWire::PresenceChanged);
            }
        }
    }

    impl DeskState {
        /// Follows the lease, the shared presence and the other nodes' desks.
        pub(crate) async fn follow_cluster(self: Arc<Self>, cluster: Arc<Cluster>) {
            let mut routing = cluster.routing.clone();
            let mut resyncs = cluster.presence.resyncs();
            let mut host = self.pool.host_messages();
            let mut presence_poll = tokio::time::interval(PRESENCE_EVERY);
            let mut reread = tokio::time::interval(REREAD_EVERY);
            for tick in [&mut presence_poll, &mut reread] {
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    changed = routing.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let now = *routing.borrow_and_update();
                        if now {
                            self.take_over().await;
                        } else {
                            self.hand_over();
                        }
                    }
                    changed = resyncs.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        cluster.share_all_presence(&self).await;
                    }
                    message = host.recv() => match message {
                        Ok(message) if &*message.topic == DESK_TOPIC => {
                            self.on_wire(&cluster, &message.payload).await;
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "fell behind the other nodes' desks; rereading the store");
                            self.reread_open(false).await;
                        }
                        Err(RecvError::Closed) => break,
                    },
                    _ = presence_poll.tick() => {
                        if cluster.routing() {
                            self.reconcile_all_agents().await;
                        }
                    }
                    _ = reread.tick() => {
                        self.reread_open(false).await;
                    }
                }
            }
        }

        /// This node holds the lease: it routes from now on, starting from
        /// the store's truth.
        async fn take_over(self: &Arc<Self>) {
            if let Err(e) = self.reset_router() {
                tracing::error!(error = %e, "could not build the router");
                return;
            }
            self.presence.clear_absences();
            self.consoles.reset();
            let found = self.recover().await;
            tracing::info!(open_conversations = found, "this node now routes the desk");
        }

        /// This node lost the lease (another routes now, or Redis is away):
        /// it forgets its seats, so nothing it still holds can be assigned.
        fn hand_over(&self) {
            if let Err(e) = self.reset_router() {
                tracing::warn!(error = %e, "could not reset the router");
            }
            self.forget_chats();
            tracing::info!("this node no longer routes the desk");
        }

        /// Another node's desk said something.
        async fn on_wire(self: &Arc<Self>, cluster: &Arc<Cluster>, payload: &[u8]) {
            let wire: DeskWire = match serde_json::from_slice(payload) {
                Ok(wire) => wire,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable desk message from another node; are all nodes the same version?");
                    return;
                }
            };
            match wire {
                DeskWire::Reply { id, to, result } => cluster.answered(id, &to, result),
                // Only the routing node acts on the rest.
                _ if !cluster.routing() => {}
                DeskWire::Changed {
                    conversation,
                    handoff,
                } => match self.store.conversation(conversation).await {
                    Ok(stored) => self.on_changed(stored, handoff).await,
                    // The periodic reread tries again.
                    Err(e) => {
                        tracing::warn!(%conversation, error = %e, "could not read a changed conversation")
                    }
                },
                DeskWire::Preview {
                    conversation,
                    text,
                    from,
                    at,
                } => self.preview(conversation, text, from, at),
                DeskWire::PresenceChanged => self.reconcile_all_agents().await,
                DeskWire::Request { id, from, op } => {
                    // Answered in its own task: a transfer waits on the store,
                    // and the other nodes' news must not wait behind it.
                    let desk = Arc::clone(self);
                    let cluster = Arc::clone(cluster);
                    tokio::spawn(async move {
                        let result = desk.answer(op).await.map_err(|e| RemoteError {
                            kind: e.kind(),
                            message: e.to_string(),
                        });
                        cluster.tell(&DeskWire::Reply {
                            id,
                            to: from,
                            result,
                        });
                    });
                }
            }
        }

        /// Routing node: does what a follower asked.
        async fn answer(self: &Arc<Self>, op: DeskOp) -> Result<Value, DeskError> {
            match op {
                DeskOp::Snapshot => {
                    let snapshot = self.routing.router().snapshot(&self.tenant);
                    Ok(json!({
                        "agents": self.agent_rows(&snapshot),
                        "chats": self.local_chats(),
                    }))
                }
                DeskOp::ChoosePresence { agent, presence } => {
                    self.choose_presence_here(&agent, presence).await?;
                    Ok(Value::Null)
                }
                DeskOp::Transfer {
                    by,
                    conversation,
                    to,
                } => {
                    self.transfer_here(&by, conversation, to).await?;
                    Ok(Value::Null)
                }
            }
        }
    }
}

#[cfg(not(feature = "redis"))]
mod imp {
    //! A single node: a cluster cannot exist, so every method is unreachable.

    use std::collections::HashSet;
    use std::sync::Arc;

    use cs_core::{AgentId, ConversationId, TenantId, Timestamp};

    use crate::desk::state::DeskState;

    /// Cluster settings; only with the `redis` feature.
    #[derive(Clone, Debug)]
    pub enum ClusterConfig {}

    /// A cluster membership; only with the `redis` feature.
    #[derive(Debug)]
    pub enum Cluster {}

    impl Cluster {
        pub(crate) fn routing(&self) -> bool {
            match *self {}
        }
        pub(crate) fn tell_changed(&self, _: ConversationId, _: Option<String>) {
            match *self {}
        }
        pub(crate) fn tell_preview(&self, _: ConversationId, _: String, _: &str, _: Timestamp) {
            match *self {}
        }
        pub(crate) async fn online_agents(&self, _: &TenantId) -> Option<HashSet<AgentId>> {
            match *self {}
        }
        pub(crate) async fn agent_online(&self, _: &TenantId, _: &AgentId) -> bool {
            match *self {}
        }
        pub(crate) async fn share_presence(&self, _: &Arc<DeskState>, _: &AgentId) {
            match *self {}
        }
        pub(crate) async fn share_all_presence(&self, _: &Arc<DeskState>) {
            match *self {}
        }
    }
}

#[cfg(feature = "redis")]
pub(crate) use imp::DeskOp;
