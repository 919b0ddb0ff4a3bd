//! The in-process store: the reference for the contract, and the store for
//! tests, demos and hosts that keep history elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::conversation::{Conversation, ConversationState};
use crate::ids::{AgentId, ClientMsgId, ConversationId, Seq, TenantId, VisitorId};
use crate::message::{Message, NewMessage};
use crate::store::reports::{self, Count, Deltas, ReportDay, ReportStore, ReportZone, ReportZones};
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
    /// Report counters by (tenant, day, agent or "", measure), added while
    /// the write they count holds its log's lock (see `reports`).
    counts: Mutex<BTreeMap<(String, ReportDay, String, String), i64>>,
    zones: ReportZones,
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

    fn count(&self, tenant: &TenantId, deltas: &Deltas) {
        let mut counts = self.counts.lock();
        for (day, agent, measure, value) in deltas.rows() {
            *counts
                .entry((
                    tenant.as_str().to_owned(),
                    day,
                    agent.to_owned(),
                    measure.to_owned(),
                ))
                .or_default() += value;
        }
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
                let zone = self.zones.of(conversation.tenant().as_str());
                self.count(conversation.tenant(), &Deltas::created(conversation, &zone));
                Ok(())
            }
        }
    }

    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        let log = self.log(conversation.id())?;
        let mut log = log.lock();
        let zone = self.zones.of(conversation.tenant().as_str());
        let deltas = Deltas::saved(&log.conversation, conversation, &log.messages, &zone);
        log.conversation = conversation.clone();
        self.count(conversation.tenant(), &deltas);
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
        let tenant = log.conversation.tenant().clone();
        let deltas = Deltas::appended(&message, &self.zones.of(tenant.as_str()));
        let stored = Message::from_new(message, seq);
        log.messages.push(stored.clone());
        self.count(&tenant, &deltas);
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

#[async_trait]
impl ReportStore for MemoryStore {
    fn set_report_zone(&self, tenant: &TenantId, zone: ReportZone) {
        self.zones.set(tenant, zone);
    }

    async fn add_report_counts(
        &self,
        tenant: &TenantId,
        deltas: &Deltas,
    ) -> Result<(), StoreError> {
        self.count(tenant, deltas);
        Ok(())
    }

    async fn report_counts(
        &self,
        tenant: &TenantId,
        from: ReportDay,
        to: ReportDay,
    ) -> Result<Vec<Count>, StoreError> {
        let key = |day| {
            (
                tenant.as_str().to_owned(),
                day,
                String::new(),
                String::new(),
            )
        };
        let counts = self.counts.lock();
        counts
            .range(key(from)..key(to.next()))
            .map(|((_, day, agent, measure), value)| {
                reports::decode_count(day.0, agent, measure.clone(), *value)
            })
            .collect()
    }
}
