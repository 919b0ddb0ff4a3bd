//! Shared pieces of the transport tests: a node (store, pool, dispatcher)
//! and a client that reads frames the way a browser would.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;

use cs_core::store::{MemoryStore, MessageStore};
use cs_core::testing::{AppendInterceptor, Intercepted};
use cs_core::{
    AgentId, Conversation, ConversationId, Message, NewMessage, Party, Seq, TenantId, Timestamp,
    VisitorId,
};
use cs_transport::{
    Bus, Change, Command, ConnectionPool, Dispatcher, DispatcherConfig, Hook, Metrics, NodeId,
    Origin, PoolConfig, ServerFrame,
};

pub struct Node {
    pub store: Arc<dyn MessageStore>,
    pub pool: Arc<ConnectionPool>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
}

impl Node {
    pub fn start(
        config: DispatcherConfig,
        store: Arc<dyn MessageStore>,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let pool = ConnectionPool::new(PoolConfig::default(), Arc::clone(&metrics));
        Self::with_pool(config, store, hooks, pool, metrics)
    }

    /// Node `name` of a deployment whose nodes share `bus` (and, as real
    /// nodes would, one store).
    pub fn on_bus(
        name: &str,
        config: DispatcherConfig,
        store: Arc<dyn MessageStore>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let node = PoolConfig {
            node: NodeId::new(name),
            ..PoolConfig::default()
        };
        let pool = ConnectionPool::with_bus(node, bus, Arc::clone(&metrics));
        Self::with_pool(config, store, Vec::new(), pool, metrics)
    }

    fn with_pool(
        config: DispatcherConfig,
        store: Arc<dyn MessageStore>,
        hooks: Vec<Arc<dyn Hook>>,
        pool: Arc<ConnectionPool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let dispatcher = Dispatcher::start(
            config,
            Arc::clone(&store),
            Arc::clone(&pool),
            hooks,
            Arc::clone(&metrics),
        );
        Self {
            store,
            pool,
            dispatcher,
            metrics,
        }
    }

    pub fn memory() -> Self {
        Self::start(
            DispatcherConfig::default(),
            Arc::new(MemoryStore::new()),
            Vec::new(),
        )
    }

    /// A conversation for `visitor`, assigned to `agent` if given.
    pub async fn conversation(
        &self,
        tenant: &str,
        visitor: &str,
        agent: Option<&str>,
    ) -> Conversation {
        let conversation =
            Conversation::open(tenant_id(tenant), visitor_id(visitor), Timestamp::now());
        self.store.create_conversation(&conversation).await.unwrap();
        if let Some(agent) = agent {
            self.change(
                conversation.id(),
                Change::HandOff {
                    reason: "test".into(),
                },
            )
            .await;
            self.change(conversation.id(), Change::Assign(agent_id(agent)))
                .await;
        }
        conversation
    }

    pub async fn change(&self, conversation: ConversationId, change: Change) {
        self.dispatcher
            .submit_and_wait(Command::Change {
                conversation,
                change,
                by: cs_transport::Actor::Host,
            })
            .await
            .unwrap();
    }

    pub fn connect(&self, tenant: &str, party: Party) -> Client {
        let (tx, rx) = mpsc::unbounded::<Bytes>();
        let registered = self.pool.register(tenant_id(tenant), party.clone(), tx);
        Client {
            conn: registered.id,
            party,
            rx,
        }
    }

    /// Sends as a host-side party (no connection), waiting for the result.
    pub async fn host_send(
        &self,
        conversation: ConversationId,
        sender: Party,
        text: &str,
    ) -> Message {
        let command = Command::Send {
            origin: Origin::Host,
            message: NewMessage::text(conversation, sender, text),
        };
        match self.dispatcher.submit_and_wait(command).await.unwrap() {
            cs_transport::Outcome::Stored { message, .. } => message,
            other => panic!("expected a stored message, got {other:?}"),
        }
    }

    /// Sends `text` as `client` on this node, waiting for the result; returns its seq.
    pub async fn client_send(&self, client: &Client, id: ConversationId, text: &str) -> Seq {
        match self
            .dispatcher
            .submit_and_wait(client.send_command(id, text))
            .await
            .unwrap()
        {
            cs_transport::Outcome::Stored { message, .. } => message.seq,
            other => panic!("expected a stored message, got {other:?}"),
        }
    }

    /// Joins `client` to `id` from the start on this node and reads the
    /// replay (in order, complete), returning the last seq replayed.
    pub async fn join_from_start(&self, client: &mut Client, id: ConversationId) -> Seq {
        let up_to = match self
            .dispatcher
            .submit_and_wait(client.join_command(id, Seq::ZERO))
            .await
            .unwrap()
        {
            cs_transport::Outcome::Joined {
                up_to,
                complete: true,
                ..
            } => up_to,
            other => panic!("expected a complete join, got {other:?}"),
        };
        let mut seen = Seq::ZERO;
        loop {
            match client.next().await {
                ServerFrame::Message { message } => {
                    assert_eq!(message.seq, seen.next(), "replayed in order");
                    seen = message.seq;
                }
                ServerFrame::Replayed { complete: true, .. } => break,
                other => panic!("unexpected frame during the replay: {other:?}"),
            }
        }
        assert_eq!(seen, up_to);
        up_to
    }
}

pub struct Client {
    pub conn: cs_core::ConnId,
    pub party: Party,
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl Client {
    pub async fn next(&mut self) -> ServerFrame {
        let bytes = tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open");
        ServerFrame::decode(&bytes).unwrap()
    }

    /// The next frame, if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<ServerFrame> {
        let bytes = tokio::time::timeout(wait, self.rx.next()).await.ok()??;
        Some(ServerFrame::decode(&bytes).unwrap())
    }

    /// The next frame that is not a message delivery, skipping deliveries.
    pub async fn next_non_message(&mut self) -> ServerFrame {
        loop {
            match self.next().await {
                ServerFrame::Message { .. } => continue,
                other => return other,
            }
        }
    }

    pub async fn next_message(&mut self) -> Message {
        match self.next().await {
            ServerFrame::Message { message } => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub fn try_next(&mut self) -> Option<ServerFrame> {
        match self.rx.try_recv() {
            Ok(bytes) => Some(ServerFrame::decode(&bytes).unwrap()),
            Err(_) => None,
        }
    }

    pub fn send_command(&self, conversation: ConversationId, text: &str) -> Command {
        Command::Send {
            origin: Origin::Connection(self.conn),
            message: NewMessage::text(conversation, self.party.clone(), text),
        }
    }

    pub fn join_command(&self, conversation: ConversationId, last_seq: Seq) -> Command {
        Command::Join {
            conn: self.conn,
            conversation,
            last_seq,
        }
    }
}

pub fn tenant_id(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn visitor_id(name: &str) -> VisitorId {
    VisitorId::new(name).unwrap()
}

pub fn agent_id(name: &str) -> AgentId {
    AgentId::new(name).unwrap()
}

pub fn visitor(name: &str) -> Party {
    Party::Visitor(visitor_id(name))
}

pub fn agent(name: &str) -> Party {
    Party::Agent(agent_id(name))
}

/// Holds each append for a fixed time, standing in for a database round
/// trip, so that shards can be saturated on purpose.
pub struct Delay(pub Duration);

#[async_trait]
impl AppendInterceptor for Delay {
    async fn before_append(&self, _message: &NewMessage) {
        tokio::time::sleep(self.0).await;
    }
}

/// A real `MemoryStore` behind a fixed delay per append.
pub fn delayed_store(delay: Duration) -> Arc<Intercepted<MemoryStore, Delay>> {
    Arc::new(Intercepted {
        inner: MemoryStore::new(),
        interceptor: Delay(delay),
    })
}

/// Panics when asked to store the text "panic", standing in for a buggy
/// third-party store.
pub struct PanicOnText;

#[async_trait]
impl AppendInterceptor for PanicOnText {
    async fn before_append(&self, message: &NewMessage) {
        if message.body == cs_core::Body::text("panic") {
            panic!("a bug in a store");
        }
    }
}

#[cfg(any(feature = "redis", feature = "nats"))]
pub mod bus_nodes;
#[cfg(feature = "redis")]
pub mod local_redis;
#[cfg(feature = "redis")]
pub mod redis_nodes;
