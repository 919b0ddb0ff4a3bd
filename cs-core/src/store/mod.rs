//! Where conversations and their messages are kept: the [`MessageStore`]
//! contract, the [`ConversationQueries`] a desk runs on it, and
//! [`MemoryStore`], the in-process reference implementation of both.
//!
//! The contract in one paragraph: `append` gives each message of a
//! conversation the next [`Seq`] (1, 2, 3, … with no gaps, even with many
//! concurrent appenders) and stores it before returning; a message whose
//! `client_msg_id` was seen before in the same conversation is not stored again
//! and the original comes back instead. Reads are by seq: a range, the most
//! recent N, and everything after a seq (what a reconnecting client missed).
//! Every implementation proves this by running the shared suite in
//! [`contract`] (feature `testing`).

mod memory;
mod queries;
pub mod reports;

#[cfg(feature = "testing")]
pub mod contract;

use std::sync::Arc;

use async_trait::async_trait;

use crate::conversation::Conversation;
use crate::ids::{ConversationId, Seq};
use crate::message::{Message, NewMessage};

pub use memory::MemoryStore;
pub use queries::ConversationQueries;
pub use reports::{Count, ReportDay, ReportStore, ReportZone};

/// Any error from a backend (a database driver, a network client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No conversation with this id was ever created in this store.
    #[error("unknown conversation {0}; create it with MessageStore::create_conversation before appending or reading")]
    UnknownConversation(ConversationId),
    /// `create_conversation` with an id that is already taken.
    #[error("conversation {0} already exists; use MessageStore::save_conversation to update it")]
    ConversationExists(ConversationId),
    /// The backend cannot be reached (down, restarting, network). The request
    /// most likely did not take effect, but if the connection died while a
    /// commit's reply was in flight it may have: retry an append with the
    /// same `client_msg_id`, which stores it at most once.
    #[error("the message store is unavailable ({backend}); the message may not be stored, retry with the same client_msg_id: {source}")]
    Unavailable {
        /// Which backend, such as `"postgres at 127.0.0.1:5432"` (never a password).
        backend: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The backend answered, but with an error that retrying will not fix.
    #[error("the message store failed ({backend}): {source}")]
    Backend {
        /// Which backend.
        backend: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// Data read back from the backend does not decode: a schema from another
    /// version, or a row edited by hand.
    #[error("corrupt data in the message store: {0}")]
    Corrupt(String),
}

/// The result of [`MessageStore::append`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stored message, with its seq.
    pub message: Message,
    /// `true` if this was a retry of a message already stored (same
    /// `client_msg_id`); `message` is then the original.
    pub duplicate: bool,
}

/// Conversations and their messages, kept in order.
///
/// Implementations: [`MemoryStore`] here; SQLite, PostgreSQL, MySQL/MariaDB
/// and Redis in `cs-datahub`. All must pass [`contract`].
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Saves a new conversation.
    ///
    /// # Errors
    /// [`StoreError::ConversationExists`] if its id is taken, or a backend error.
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError>;

    /// Overwrites a conversation's saved state, after a transition. The last
    /// write wins: the router's per-tenant lock is what orders transitions.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`] if it was never created.
    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError>;

    /// Loads a conversation.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`].
    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError>;

    /// Stores a message with the next seq of its conversation, or returns the
    /// original if its `client_msg_id` was stored before. When this returns
    /// `Ok`, the message is as durable as the backend makes anything.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`], or a backend error (see
    /// [`StoreError::Unavailable`] on retrying).
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

    /// Stores several messages, each as [`MessageStore::append`] would, and
    /// answers each, in the order given. The message path calls it with
    /// what a shard has queued, so a store that commits a batch in one
    /// transaction turns many syncs to disk into one.
    ///
    /// Each conversation's messages get seqs in the order given, and a
    /// `client_msg_id` retry is answered as a duplicate within the batch
    /// too. One message's error (an unknown conversation) does not fail the
    /// others; a backend that is down fails each.
    ///
    /// The default appends one message at a time.
    async fn append_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append(message).await);
        }
        results
    }

    /// The seq of the conversation's last message ([`Seq::ZERO`] if none).
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`].
    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError>;

    /// Messages with `from <= seq <= to`, oldest first, at most `limit`
    /// (the oldest ones). Seqs have no gaps, so the page `[s - n, s - 1]` is
    /// exactly the `n` messages before `s`: how a client scrolls back.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`].
    async fn range(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// The last `n` messages, oldest first.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`].
    async fn recent(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Messages with seq greater than `after`, oldest first, at most `limit`:
    /// what a client that last saw `after` has missed.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`].
    async fn after(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;
}

/// A shared store is a store, so hosts can hold `Arc<dyn MessageStore>`.
#[async_trait]
impl<S: MessageStore + ?Sized> MessageStore for Arc<S> {
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        (**self).create_conversation(conversation).await
    }
    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        (**self).save_conversation(conversation).await
    }
    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        (**self).conversation(id).await
    }
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        (**self).append(message).await
    }
    async fn append_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        (**self).append_batch(messages).await
    }
    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        (**self).last_seq(conversation).await
    }
    async fn range(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        (**self).range(conversation, from, to, limit).await
    }
    async fn recent(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<Message>, StoreError> {
        (**self).recent(conversation, n).await
    }
    async fn after(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        (**self).after(conversation, after, limit).await
    }
}
