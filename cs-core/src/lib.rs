//! The cs domain: what a customer-service conversation *is*, independent of
//! sockets, databases and bots.
//!
//! # Layout
//!
//! - [`ids`]: typed ids ([`TenantId`], [`ConversationId`], [`VisitorId`],
//!   [`AgentId`], [`ConnId`]) and the gap-free per-conversation [`Seq`].
//! - [`message`]: [`Message`], who sent it ([`Party`]), what it says
//!   ([`Body`], [`Event`]), and the size limits checked before it is accepted.
//! - [`conversation`]: [`Conversation`] and its state machine
//!   (`Waiting → Bot → Queued → Assigned → Closed`, plus transfer and reopen).
//! - [`directory`]: which agents exist, as the host lists them
//!   ([`AgentDirectory`], [`MemoryDirectory`]), for the router to follow.
//! - [`router`]: agent presence and capacity, the waiting queue, and the
//!   pluggable [`AssignmentStrategy`](router::AssignmentStrategy).
//! - [`store`]: the [`MessageStore`](store::MessageStore) contract,
//!   [`ConversationQueries`](store::ConversationQueries) (a visitor's, an
//!   agent's and a tenant's open conversations, for a desk),
//!   [`MemoryStore`](store::MemoryStore), and (feature `testing`) the
//!   contract suite every store runs.
//! - [`testing`] (feature `testing`): the service-URL helper for tests that
//!   need a real server.
//!
//! cs-core depends on no other cs crate. `cs-transport`, `cs-intent` and
//! `cs-datahub` build on it; the `cs` facade re-exports all four.
//!
//! # Example
//!
//! Route a visitor to an agent and keep their messages:
//!
//! ```
//! use cs_core::router::{AgentProfile, LeastBusy, Presence, QueueRequest, Router};
//! use cs_core::store::{MemoryStore, MessageStore};
//! use cs_core::{AgentId, Conversation, NewMessage, Party, TenantId, Timestamp, VisitorId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cs_core::Error> {
//! let shop = TenantId::new("shop")?;
//! let alice = AgentId::new("alice")?;
//! let router = Router::new(LeastBusy);
//! router.register_agent(&shop, AgentProfile::new(alice.clone(), 3))?;
//! router.set_presence(&shop, &alice, Presence::Online)?;
//!
//! let store = MemoryStore::new();
//! let visitor = VisitorId::new("visitor-42")?;
//! let mut conversation = Conversation::open(shop.clone(), visitor.clone(), Timestamp::now());
//! store.create_conversation(&conversation).await?;
//!
//! conversation.enqueue(Timestamp::now())?;
//! let routed = router.enqueue(&shop, QueueRequest::new(conversation.id(), visitor.clone()))?;
//! if let Some(agent) = routed.agent_for(conversation.id()) {
//!     conversation.assign(agent.clone())?;
//! }
//! store.save_conversation(&conversation).await?;
//!
//! store.append(NewMessage::text(conversation.id(), Party::Visitor(visitor), "hi!")).await?;
//! let reply = store.append(NewMessage::text(conversation.id(), Party::Agent(alice), "hello!")).await?;
//! conversation.record_message(&reply.message);
//! assert_eq!(store.recent(conversation.id(), 50).await?.len(), 2);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod conversation;
pub mod directory;
mod error;
pub mod ids;
pub mod message;
mod redact;
pub mod router;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod timestamp;

pub use conversation::{Conversation, ConversationError, ConversationState, Reader, StateKind};
pub use directory::{AgentDirectory, AgentRecord, AgentRole, DirectoryError, MemoryDirectory};
pub use error::Error;
pub use ids::{
    AgentId, ClientMsgId, ConnId, ConversationId, InvalidId, Seq, Skill, TenantId, VisitorId,
};
pub use message::{
    Body, Event, InvalidMessage, Message, MessageLimits, NewMessage, Party, QuickReply,
    MAX_QUICK_REPLIES,
};
pub use redact::redact_url;
pub use timestamp::Timestamp;
