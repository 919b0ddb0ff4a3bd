//! The conversation queries a service desk needs beyond the message log:
//! a visitor's history, an agent's inbox, and what to re-queue at restart.

use std::sync::Arc;

use async_trait::async_trait;

use crate::conversation::Conversation;
use crate::ids::{AgentId, TenantId, VisitorId};
use crate::store::{MessageStore, StoreError};

/// Reads conversations by tenant, visitor or agent rather than by id.
///
/// A separate trait from [`MessageStore`] so the message path (which needs
/// only appends and reads by seq) does not ask more of a store than it uses,
/// while the desk, which needs these on every store, can.
/// [`MemoryStore`](crate::store::MemoryStore) implements it, and so does every
/// cs-datahub store; all run the same cases in
/// [`contract`](crate::store::contract).
///
/// ```
/// use cs_core::store::{ConversationQueries, MemoryStore, MessageStore};
/// use cs_core::{Conversation, TenantId, Timestamp, VisitorId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let shop = TenantId::new("shop")?;
/// let visitor = VisitorId::new("v1")?;
/// let conversation = Conversation::open(shop.clone(), visitor.clone(), Timestamp::now());
/// store.create_conversation(&conversation).await?;
///
/// let open = store.open_conversations(&shop, 100).await?;
/// assert_eq!(open, vec![conversation.clone()]);
/// let mine = store.visitor_conversations(&shop, &visitor, 10).await?;
/// assert_eq!(mine[0].id(), conversation.id());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait ConversationQueries: MessageStore {
    /// A visitor's conversations in `tenant`, newest first, at most `limit`.
    ///
    /// # Errors
    /// A backend error.
    async fn visitor_conversations(
        &self,
        tenant: &TenantId,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// The conversations assigned to `agent` in `tenant` right now, oldest first.
    ///
    /// # Errors
    /// A backend error.
    async fn agent_open_conversations(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// The conversations of `tenant` that are not closed (waiting, with the
    /// bot, queued or assigned), oldest first (by creation time, then id), at
    /// most `limit`: what a chat server re-queues when it restarts.
    ///
    /// # Errors
    /// A backend error.
    async fn open_conversations(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError>;
}

/// A shared store answers the queries too, so hosts can hold
/// `Arc<dyn ConversationQueries>`.
#[async_trait]
impl<S: ConversationQueries + ?Sized> ConversationQueries for Arc<S> {
    async fn visitor_conversations(
        &self,
        tenant: &TenantId,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        (**self).visitor_conversations(tenant, visitor, limit).await
    }
    async fn agent_open_conversations(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<Conversation>, StoreError> {
        (**self).agent_open_conversations(tenant, agent).await
    }
    async fn open_conversations(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        (**self).open_conversations(tenant, limit).await
    }
}
