//! Hooks: host code that runs on the message path (the bot, audit,
//! moderation).
//!
//! A hook runs *after* a message is stored and delivered, in its own task,
//! with a timeout: a slow bot delays only its own answer, never other
//! conversations, and never the message it is answering. What a hook wants to
//! say or do comes back as [`HookAction`]s, which go through the dispatcher
//! like any other command, so they are ordered, stored and delivered the same
//! way.

use async_trait::async_trait;

use cs_core::{Body, Conversation, Message, Party};

/// Any error a hook reports.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a hook sees.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// The message just stored.
    pub message: Message,
    /// The conversation as it was when the message was stored.
    pub conversation: Conversation,
}

/// What a hook asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Post a message as the bot.
    Reply(Body),
    /// Hand the visitor to a human: the conversation is queued, and hosts
    /// listening to [`PathEvent`](crate::PathEvent)s route it.
    HandOff {
        /// Why, for the agent who picks it up.
        reason: String,
    },
}

/// Host code on the message path.
///
/// ```
/// use async_trait::async_trait;
/// use cs_core::{Body, Conversation, Message, Party};
/// use cs_transport::{Hook, HookAction, HookContext, HookError};
///
/// /// Answers "hours" questions; everything else is left to humans.
/// struct OpeningHours;
///
/// #[async_trait]
/// impl Hook for OpeningHours {
///     fn name(&self) -> &str {
///         "opening-hours"
///     }
///
///     fn wants(&self, message: &Message, _conversation: &Conversation) -> bool {
///         matches!(message.sender, Party::Visitor(_))
///     }
///
///     async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
///         let asks_hours = matches!(&context.message.body, Body::Text { text, .. } if text.contains("hours"));
///         Ok(if asks_hours {
///             vec![HookAction::Reply(Body::text("We are open 9:00 to 21:00 every day."))]
///         } else {
///             Vec::new()
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// A short name, for logs and metrics.
    fn name(&self) -> &str;

    /// Whether to run for this message. Called on the message path itself,
    /// so it must be cheap. The default runs for what visitors and agents
    /// *say* (text, images, files): never for the bot's own replies, which
    /// would loop, nor for events such as read receipts.
    fn wants(&self, message: &Message, conversation: &Conversation) -> bool {
        let _ = conversation;
        matches!(message.sender, Party::Visitor(_) | Party::Agent(_))
            && !matches!(message.body, Body::Event(_))
    }

    /// Reacts to a stored message.
    ///
    /// # Errors
    /// Any error is logged and counted (`hook_failures`); the message itself
    /// is already stored and delivered.
    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError>;
}
