//! Shared pieces of the transport tests: a node (store, pool, dispatcher)
//! and a client that reads frames the way a browser would.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;

use cs_core::store::{Appended, MemoryStore, MessageStore, StoreError};
use cs_core::{
    AgentId, Conversation, ConversationId, Message, NewMessage, Party, Seq, TenantId, Timestamp,
    VisitorId,
};
use cs_transport::{
    Change, Command, ConnectionPool, Dispatcher, DispatcherConfig, Hook, Metrics, Origin,
    PoolConfig, ServerFrame,
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

/// A real [`MemoryStore`] that panics when asked to store the text "panic",
/// standing in for a buggy third-party store.
pub struct PanickyStore(pub MemoryStore);

#[async_trait]
impl MessageStore for PanickyStore {
    async fn create_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
        self.0.create_conversation(c).await
    }
    async fn save_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
        self.0.save_conversation(c).await
    }
    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        self.0.conversation(id).await
    }
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        if m.body == cs_core::Body::text("panic") {
            panic!("a bug in a store");
        }
        self.0.append(m).await
    }
    async fn last_seq(&self, id: ConversationId) -> Result<Seq, StoreError> {
        self.0.last_seq(id).await
    }
    async fn range(
        &self,
        id: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.0.range(id, from, to, limit).await
    }
    async fn recent(&self, id: ConversationId, n: usize) -> Result<Vec<Message>, StoreError> {
        self.0.recent(id, n).await
    }
    async fn after(
        &self,
        id: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.0.after(id, after, limit).await
    }
}

/// A real [`MemoryStore`] behind a fixed delay per append, standing in for a
/// database round trip so that shards can be saturated on purpose.
pub struct DelayedStore {
    pub inner: MemoryStore,
    pub append_delay: Duration,
}

#[async_trait]
impl MessageStore for DelayedStore {
    async fn create_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
        self.inner.create_conversation(c).await
    }
    async fn save_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
        self.inner.save_conversation(c).await
    }
    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        self.inner.conversation(id).await
    }
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        tokio::time::sleep(self.append_delay).await;
        self.inner.append(m).await
    }
    async fn last_seq(&self, id: ConversationId) -> Result<Seq, StoreError> {
        self.inner.last_seq(id).await
    }
    async fn range(
        &self,
        id: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.range(id, from, to, limit).await
    }
    async fn recent(&self, id: ConversationId, n: usize) -> Result<Vec<Message>, StoreError> {
        self.inner.recent(id, n).await
    }
    async fn after(
        &self,
        id: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.after(id, after, limit).await
    }
}
