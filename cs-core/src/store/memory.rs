//! The in-process store: the reference for the contract, and the store for
//! tests, demos and hosts that keep history elsewhere.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::conversation::{Conversation, ConversationState};
use crate::ids::{AgentId, ClientMsgId, ConversationId, Seq, TenantId, VisitorId};
use crate::message::{Message, NewMessage};
use crate::store::{Appended, ConversationQueries, MessageStore, StoreError};

/// Keeps everything in memory, forever: memory grows with every message, so
/// use it where history is short-lived or kept elsewhere.
///
/// ```
/// use cs_core::store::{MemoryStore, MessageStore};
/// use cs_core::{Conversation, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let visitor = VisitorId::new("v1")?;
/// let conversation = Conversation::open(TenantId::new("shop")?, visitor.clone(), Timestamp::now());
/// store.create_conversation(&conversation).await?;
///
/// let sent = NewMessage::text(conversation.id(), Party::Visitor(visitor), "where is my parcel?");
/// let stored = store.append(sent).await?;
/// assert_eq!(stored.message.seq, Seq::new(1));
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct MemoryStore {
    /// The map only finds a conversation's log; the log's own mutex orders its
    /// appends. No map guard is held while a log is locked.
    logs: DashMap<ConversationId, Arc<Mutex<Log>>>,
}

struct Log {
    conversation: Conversation,
    /// `messages[i]` has seq `i + 1`: seqs are gap-free, so the position is the seq.
    messages: Vec<Message>,
    by_client_id: HashMap<ClientMsgId, Seq>,
}

impl Log {
    /// The messages with `from <= seq <= to`, as a slice of `messages`.
    fn slice(&self, from: Seq, to: Seq) -> &[Message] {
        let len = self.messages.len() as u64;
        let start = from.get().max(1) - 1;
        let end = to.get().min(len);
        if start >= end {
            return &[];
        }
        // Both bounds are within `len`, which came from a usize.
        &self.messages[start as usize..end as usize]
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self, id: ConversationId) -> Result<Arc<Mutex<Log>>, StoreError> {
        self.logs
            .get(&id)
            .map(|log| Arc::clone(&log))
            .ok_or(StoreError::UnknownConversation(id))
    }

    /// The saved conversations `keep` accepts. A scan of every conversation:
    /// this store has no indexes, and is meant for the sizes a test or a demo
    /// reaches. The logs are collected first so that no map guard is held
    /// while a log is locked (see `logs`).
    fn conversations_where(&self, keep: impl Fn(&Conversation) -> bool) -> Vec<Conversation> {
        let logs: Vec<Arc<Mutex<Log>>> = self
            .logs
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect();
        logs.iter()
            .filter_map(|log| {
                let log = log.lock();
                keep(&log.conversation).then(|| log.conversation.clone())
            })
            .collect()
    }
}

/// The same orders as the SQL stores: creation time, with the id (a UUIDv7,
/// time-ordered) breaking ties so the answer is stable.
#[async_trait]
impl ConversationQueries for MemoryStore {
    async fn visitor_conversations(
        &self,
        tenant: &TenantId,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut found =
            self.conversations_where(|c| c.tenant() == tenant && c.visitor() == visitor);
        found.sort_by_key(|c| std::cmp::Reverse((c.created_at(), c.id())));
        found.truncate(limit);
        Ok(found)
    }

    async fn agent_open_conversations(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut found = self.conversations_where(|c| {
            c.tenant() == tenant
                && matches!(c.state(), ConversationState::Assigned(a) if a == agent)
        });
        found.sort_by_key(|c| (c.created_at(), c.id()));
        Ok(found)
    }

    async fn open_conversations(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut found = self.conversations_where(|c| {
            c.tenant() == tenant && !matches!(c.state(), ConversationState::Closed)
        });
        found.sort_by_key(|c| (c.created_at(), c.id()));
        found.truncate(limit);
        Ok(found)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        use dashmap::mapref::entry::Entry;
        match self.logs.entry(conversation.id()) {
            Entry::Occupied(_) => Err(StoreError::ConversationExists(conversation.id())),
            Entry::Vacant(slot) => {
                slot.insert(Arc::new(Mutex::new(Log {
                    conversation: conversation.clone(),
                    messages: Vec::new(),
                    by_client_id: HashMap::new(),
                })));
                Ok(())
            }
        }
    }

    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        self.log(conversation.id())?.lock().conversation = conversation.clone();
        Ok(())
    }

    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        Ok(self.log(id)?.lock().conversation.clone())
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        let log = self.log(message.conversation)?;
        let mut log = log.lock();
        if let Some(seq) = message
            .client_msg_id
            .as_ref()
            .and_then(|id| log.by_client_id.get(id))
        {
            let original = log.slice(*seq, *seq).first().cloned();
            if let Some(original) = original {
                return Ok(Appended {
                    message: original,
                    duplicate: true,
                });
            }
        }
        let seq = Seq::new(log.messages.len() as u64 + 1);
        if let Some(id) = &message.client_msg_id {
            log.by_client_id.insert(id.clone(), seq);
        }
        let stored = Message::from_new(message, seq);
        log.messages.push(stored.clone());
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        Ok(Seq::new(
            self.log(conversation)?.lock().messages.len() as u64
        ))
    }

    async fn range(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let log = self.log(conversation)?;
        let log = log.lock();
        Ok(log.slice(from, to).iter().take(limit).cloned().collect())
    }

    async fn recent(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let log = self.log(conversation)?;
        let log = log.lock();
        let start = log.messages.len().saturating_sub(n);
        Ok(log.messages[start..].to_vec())
    }

    async fn after(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let log = self.log(conversation)?;
        let log = log.lock();
        Ok(log
            .slice(after.next(), Seq::new(u64::MAX))
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }
}
