//! Cluster mode (`--bus redis://…`): several nodes behind a load balancer,
//! sharing one SQL store and one Redis.
//!
//! What the crates give (see `docs/scale-out.md`):
//!
//! - the [`RedisBus`] under the pool: a message stored on one node reaches
//!   the parties connected to any other, and a per-connection position
//!   check replays whatever pub/sub dropped;
//! - a [`Lease`] per tenant: the one node holding it runs the tenant's
//!   router, so queue order and agents' capacity hold across nodes;
//! - [`ClusterPresence`]: which agents are connected where, expiring with
//!   a dead node.
//!
//! What this file adds is how the desks of the nodes talk, on the pool's
//! host channel under the topic `desk`: followers tell the routing node
//! what happened on their side ([`DeskWire::Changed`], `Preview`,
//! `PresenceChanged`), and ask it what only it knows ([`DeskOp`]) with a
//! request that the routing node answers. Everything told may be lost (it
//! is pub/sub): the routing node rereads the open conversations from the
//! store every few seconds, and presence every second, so a lost word
//! delays, never strands, a visitor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cs::core::router::Presence;
use cs::core::{AgentId, ConversationId, TenantId, Timestamp};
use cs::transport::cluster::{ClusterPresence, Lease};
use cs::transport::{ConnectionPool, NodeId, RedisBus, RedisBusConfig};

use crate::error::ApiError;

/// The host-channel topic the desks talk on.
pub const DESK_TOPIC: &str = "desk";

/// How long a follower waits for the routing node to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and how to join.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `redis://…`.
    pub url: String,
    /// Prefix of every Redis key and channel of this cluster.
    pub prefix: String,
    /// This node's name.
    pub node: NodeId,
    /// The tenant whose routing lease this node competes for.
    pub tenant: TenantId,
    /// Lease and presence time to live: how long a dead node's routing and
    /// agents linger.
    pub ttl: Duration,
}

/// What the desks of the nodes say to each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeskWire {
    /// A follower's message path changed a conversation (a hand-off, a
    /// close): the routing node rereads it from the store.
    Changed {
        /// The conversation.
        conversation: ConversationId,
        /// Why it was handed to a person, for the consoles.
        handoff: Option<String>,
    },
    /// A message stored on a follower, for the consoles' previews.
    Preview {
        /// The conversation.
        conversation: ConversationId,
        /// The shortened text.
        text: String,
        /// Visitor, agent, bot or system.
        from: String,
        /// When.
        at: Timestamp,
    },
    /// An agent's consoles came or went on a follower: the routing node
    /// rereads the cluster's presence now rather than at its next poll.
    PresenceChanged,
    /// A follower asks the routing node.
    Request {
        /// Matches the reply to the question.
        id: u64,
        /// Who asks.
        from: NodeId,
        /// What.
        op: DeskOp,
    },
    /// The routing node's answer.
    Reply {
        /// The request's id.
        id: u64,
        /// Who asked.
        to: NodeId,
        /// The answer, or why not.
        result: Result<Value, RemoteError>,
    },
}

/// What a follower asks the routing node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DeskOp {
    /// The agents and the open conversations.
    Snapshot,
    /// An agent chose online or away.
    ChoosePresence {
        /// The agent.
        agent: AgentId,
        /// Their choice.
        presence: Presence,
    },
    /// An agent hands a conversation to a colleague.
    Transfer {
        /// The serving agent.
        by: AgentId,
        /// The conversation.
        conversation: ConversationId,
        /// The colleague.
        to: AgentId,
    },
}

/// An [`ApiError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteError {
    /// [`ApiError::code`].
    pub code: String,
    /// Its message.
    pub message: String,
}

impl From<ApiError> for RemoteError {
    fn from(e: ApiError) -> Self {
        RemoteError {
            code: e.code().to_owned(),
            message: e.message().to_owned(),
        }
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        ApiError::from_code(&e.code, e.message)
    }
}

/// This node's membership: the bus, the routing lease, shared presence
/// and the requests waiting for the routing node.
pub struct Cluster {
    settings: ClusterSettings,
    pool: Arc<ConnectionPool>,
    bus: Arc<RedisBus>,
    presence: Arc<ClusterPresence>,
    lease: Arc<Lease>,
    routing: watch::Receiver<bool>,
    pending: DashMap<u64, oneshot::Sender<Result<Value, RemoteError>>>,
    next_request: AtomicU64,
}

impl Cluster {
    /// Connects the bus, which the pool is built on.
    pub async fn connect_bus(url: &str, prefix: &str) -> Result<Arc<RedisBus>, String> {
        let config = RedisBusConfig {
            channel: format!("{prefix}:bus"),
            ..RedisBusConfig::default()
        };
        RedisBus::connect(url, config)
            .await
            .map_err(|e| format!("--bus: {e}"))
    }

    /// Joins: connects the lease and the presence, and starts keeping both
    /// until `shutdown` (the lease is then released, so another node routes
    /// at once instead of after the ttl).
    pub async fn join(
        settings: ClusterSettings,
        bus: Arc<RedisBus>,
        pool: Arc<ConnectionPool>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Cluster>, Vec<JoinHandle<()>>), String> {
        let presence = ClusterPresence::connect(
            &settings.url,
            &format!("{}:", settings.prefix),
            settings.node.clone(),
            settings.ttl,
        )
        .await
        .map_err(|e| format!("--bus: {e}"))?;
        let lease = Lease::connect(
            &settings.url,
            format!("{}:desk:{}", settings.prefix, settings.tenant),
            settings.node.clone(),
            settings.ttl,
        )
        .await
        .map_err(|e| format!("--bus: {e}"))?;
        let (routing, keeper) = lease.spawn_keeper(shutdown.clone());
        let heartbeat = presence.spawn_heartbeat(shutdown);
        let cluster = Arc::new(Cluster {
            settings,
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
        &self.settings.node
    }

    /// Whether this node routes the tenant now.
    pub fn routing(&self) -> bool {
        *self.routing.borrow()
    }

    /// Says when this node starts or stops routing.
    pub fn routing_changes(&self) -> watch::Receiver<bool> {
        self.routing.clone()
    }

    /// The node routing the tenant, as Redis says; `None` while nobody
    /// does (between a routing node's death and the ttl) or Redis is down.
    pub async fn router_node(&self) -> Option<NodeId> {
        self.lease.holder().await.ok().flatten()
    }

    /// Agents connected on live nodes, and where they are.
    pub fn presence(&self) -> &ClusterPresence {
        &self.presence
    }

    /// Tells the other nodes' desks.
    pub fn tell(&self, wire: &DeskWire) {
        match serde_json::to_vec(wire) {
            Ok(payload) => self.pool.publish_host(DESK_TOPIC, Bytes::from(payload)),
            // Ids, strings and numbers always serialize.
            Err(e) => tracing::error!(error = %e, "could not encode a desk message"),
        }
    }

    /// Asks the routing node, and waits for its answer.
    pub async fn ask(&self, op: DeskOp) -> Result<Value, ApiError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.pending.insert(id, answer);
        self.tell(&DeskWire::Request {
            id,
            from: self.settings.node.clone(),
            op,
        });
        let result = tokio::time::timeout(ASK_TIMEOUT, answered).await;
        self.pending.remove(&id);
        match result {
            Ok(Ok(result)) => result.map_err(ApiError::from),
            _ => Err(ApiError::Unavailable(format!(
                "the node routing this shop's desk did not answer within {ASK_TIMEOUT:?} \
                 (it may be failing over, which takes up to the cluster ttl of {:?}); retry shortly",
                self.settings.ttl
            ))),
        }
    }

    /// Hands the routing node's answer to the request waiting for it.
    pub fn answered(&self, id: u64, to: &NodeId, result: Result<Value, RemoteError>) {
        if to != self.node() {
            return;
        }
        if let Some((_, waiting)) = self.pending.remove(&id) {
            // It may have timed out meanwhile; then nobody needs the answer.
            let _ = waiting.send(result);
        }
    }

    /// The bus's counters, for `/metrics`.
    pub fn bus_metrics(&self, prefix: &str) -> String {
        self.bus.stats().to_prometheus(prefix)
    }
}
