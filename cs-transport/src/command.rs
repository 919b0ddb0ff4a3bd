//! Commands and their outcomes: what hosts, connections and hooks ask of
//! the dispatcher, how it admits them, and what the message path makes of
//! them.
//!
//! These types sit in a module of their own because both sides use them:
//! the dispatcher queues commands and the message path runs them, and
//! neither needs the other's internals to do so.

use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::oneshot;

use cs_core::store::StoreError;
use cs_core::{
    AgentId, Body, ClientMsgId, ConnId, Conversation, ConversationError, ConversationId, Event,
    InvalidMessage, Message, NewMessage, Seq, TenantId, VisitorId,
};

use crate::protocol::ErrorCode;

/// Who issued a command, which decides what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client connection of the pool. Its identity (tenant and party) comes
    /// from the pool, never from the frame, and it is authorized against the
    /// conversation. Results go back to it as frames.
    Connection(ConnId),
    /// The host itself, or a hook: trusted, may speak as the bot or system.
    Host,
}

/// A change of a conversation's state, applied by its shard so that the
/// state has one writer. Each stores and delivers the matching event message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Waiting → Bot.
    StartBot,
    /// Waiting or Bot → Queued, with an `Event::Handoff`.
    HandOff {
        /// Why, for the agent.
        reason: String,
    },
    /// Queued → Assigned, with an `Event::Assigned`. The agent's connections
    /// on this node join the conversation.
    Assign(AgentId),
    /// Assigned → Assigned to another agent, with an `Event::Transfer`.
    Transfer(AgentId),
    /// Assigned → Queued (the agent left), with an `Event::Handoff`.
    Requeue,
    /// → Closed, with an `Event::Close`.
    Close {
        /// Why, if anyone said.
        reason: Option<String>,
    },
    /// Closed → Waiting, with an `Event::Reopen`.
    Reopen,
}

/// Work for the message path.
#[derive(Clone, Debug)]
pub enum Command {
    /// Store and deliver a message (or only deliver it, for typing).
    Send {
        /// Who issued it.
        origin: Origin,
        /// The message. From a connection, its sender must be the
        /// connection's own party.
        message: NewMessage,
    },
    /// Join a conversation after `last_seq`: replay the gap, then go live.
    Join {
        /// The connection joining.
        conn: ConnId,
        /// The conversation.
        conversation: ConversationId,
        /// The last seq the client has.
        last_seq: Seq,
    },
    /// Stop receiving a conversation.
    Leave {
        /// The connection.
        conn: ConnId,
        /// The conversation.
        conversation: ConversationId,
    },
    /// Send a joined connection the stored messages it misses after its
    /// position (see [`ConnectionPool::gaps`](crate::ConnectionPool::gaps)). The dispatcher issues these
    /// itself; a host rarely needs to.
    CatchUp {
        /// The connection.
        conn: ConnId,
        /// The conversation.
        conversation: ConversationId,
    },
    /// Change a conversation's state (host only).
    Change {
        /// The conversation.
        conversation: ConversationId,
        /// The change.
        change: Change,
        /// On whose behalf: checked on the conversation's shard, against
        /// its state at that moment.
        by: Actor,
    },
}

/// Who asks for a [`Command::Change`]. The check runs on the
/// conversation's shard, the single writer, so it never reads a view that
/// lags the conversation (an assignment made a moment ago counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The host itself (the router, a hook, recovery): any legal change.
    Host,
    /// An agent: only the agent the conversation is assigned to may close
    /// or transfer it, and an agent may make no other change.
    Agent(AgentId),
    /// A visitor: only the conversation's own visitor may close it, and a
    /// visitor may make no other change.
    Visitor(VisitorId),
}

impl Actor {
    /// Why `self` may not make `change` to `conversation`, if it may not.
    pub fn refusal(&self, change: &Change, conversation: &Conversation) -> Option<&'static str> {
        match self {
            Actor::Host => None,
            Actor::Agent(agent) => {
                let allowed = matches!(change, Change::Close { .. } | Change::Transfer(_));
                if !allowed {
                    Some("an agent may only close or transfer a conversation")
                } else if conversation.agent() != Some(agent) {
                    Some("only the agent serving the conversation may close or transfer it")
                } else {
                    None
                }
            }
            Actor::Visitor(visitor) => {
                if !matches!(change, Change::Close { .. }) {
                    Some("a visitor may only close a conversation")
                } else if conversation.visitor() != visitor {
                    Some("only the conversation's own visitor may close it")
                } else {
                    None
                }
            }
        }
    }
}

impl Command {
    /// The conversation, which picks the shard.
    pub fn conversation(&self) -> ConversationId {
        match self {
            Command::Send { message, .. } => message.conversation,
            Command::Join { conversation, .. }
            | Command::Leave { conversation, .. }
            | Command::CatchUp { conversation, .. }
            | Command::Change { conversation, .. } => *conversation,
        }
    }

    /// The connection that waits for this command's answer, if any, with
    /// what the answer must name.
    pub(crate) fn asking_connection(&self) -> Option<Asked> {
        match self {
            Command::Send {
                origin: Origin::Connection(conn),
                message,
            } => Some((*conn, message.conversation, message.client_msg_id.clone())),
            Command::Join {
                conn, conversation, ..
            } => Some((*conn, *conversation, None)),
            _ => None,
        }
    }

    /// Roughly what it costs to hold in memory, for the spill bound. Every
    /// string a client can fill counts, so a flood of large attachments or
    /// reasons cannot hold more than the bound says.
    pub(crate) fn approx_bytes(&self) -> usize {
        const OVERHEAD: usize = 256;
        let Command::Send { message, .. } = self else {
            return OVERHEAD;
        };
        let body = match &message.body {
            Body::Text { text, .. } => text.len(),
            Body::Image { url, mime, .. } => url.len() + mime.len(),
            Body::File {
                url, name, mime, ..
            } => url.len() + name.len() + mime.len(),
            Body::Event(Event::Handoff { reason }) => reason.len(),
            Body::Event(Event::Close { reason }) => reason.as_ref().map_or(0, String::len),
            Body::Event(_) => 0,
        };
        let client_id = message
            .client_msg_id
            .as_ref()
            .map_or(0, |id| id.as_str().len());
        OVERHEAD + body + client_id
    }
}

/// A connection waiting for a command's answer, with what it must name.
pub(crate) type Asked = (ConnId, ConversationId, Option<ClientMsgId>);

/// A command was not accepted. The sender must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The command's shard is past its queue delay target, or the node past
    /// its spill memory bound; retry shortly (with the same
    /// `client_msg_id`, so a retry is never stored twice).
    #[error("the server is overloaded and did not accept this; retry in a moment with the same client_msg_id")]
    Overloaded,
    /// The dispatcher is shutting down; reconnect, possibly to another node.
    #[error("the server is shutting down and did not accept this; reconnect")]
    ShuttingDown,
}

/// How a command was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Into a free slot (possibly after waiting).
    Direct,
    /// Onto the spill path, after the deadline.
    Degraded,
    /// Dropped on purpose: a typing frame or read receipt while the queue
    /// is past a share of its delay target. Both are ephemeral.
    Shed,
}

/// A command's result, for [`Dispatcher::submit_and_wait`](crate::Dispatcher::submit_and_wait).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// It was not accepted.
    #[error(transparent)]
    Refused(#[from] DispatchError),
    /// It was accepted and processed, and the message path rejected it.
    #[error(transparent)]
    Rejected(#[from] PathError),
    /// It was accepted, and processing it panicked (a bug in a store or a
    /// hook filter). Whether it took effect is unknown; a retry with the same
    /// `client_msg_id` is safe.
    #[error("processing panicked; it may or may not have taken effect; retry with the same client_msg_id")]
    Panicked,
}

/// Where a command's result goes when someone waits for it.
pub(crate) type Reply = oneshot::Sender<Result<Outcome, PathError>>;

/// A command on its way to the message path, with whoever waits for its
/// result and when it was admitted (its queue delay is measured from then).
pub(crate) struct Request {
    pub(crate) command: Command,
    pub(crate) reply: Option<Reply>,
    pub(crate) submitted: Instant,
}

/// The one way back into the dispatcher that the message path and the gap
/// repairer have: queueing follow-up work (a hook's reply or hand-off, the
/// repair of a gap). A trait, so that neither holds the dispatcher itself
/// and the dispatcher's internals stay its own.
#[async_trait]
pub(crate) trait Readmit: Send + Sync {
    /// Queues `command` like any other. `from_hook`: a hook's output, which
    /// is still taken while the dispatcher drains for shutdown, so a drain
    /// finishes what the hooks it waits for say.
    async fn readmit(&self, command: Command, from_hook: bool) -> Result<Admission, DispatchError>;
}

/// What a processed command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The message is stored (or was already, for a retry) and delivered.
    Stored {
        /// The stored message, with its seq.
        message: Message,
        /// `true` if it was a retry of a stored message, which is not
        /// delivered again.
        duplicate: bool,
    },
    /// An ephemeral message (typing) was delivered, not stored.
    Delivered,
    /// A join replayed `replayed` messages up to `up_to`.
    Joined {
        /// How many were replayed.
        replayed: usize,
        /// The last seq replayed (or the client's own if nothing was missing).
        up_to: Seq,
        /// Whether the connection is now live; if not, resume again from `up_to`.
        complete: bool,
    },
    /// The connection left the conversation (or had, when a catch-up ran).
    Left,
    /// A joined connection was sent `replayed` messages it missed, up to `up_to`.
    CaughtUp {
        /// How many were sent.
        replayed: usize,
        /// The last seq covered.
        up_to: Seq,
    },
    /// The conversation's state changed.
    Changed {
        /// Its new state.
        conversation: Conversation,
        /// The event message stored and delivered for the change, if any.
        event: Option<Message>,
    },
}

/// Why the message path rejected a command.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// No such conversation in the store.
    #[error("unknown conversation {0}")]
    UnknownConversation(ConversationId),
    /// The connection closed before its command ran.
    #[error("connection {0} is gone")]
    UnknownConnection(ConnId),
    /// The connection could not keep up with what it was sent and was
    /// closed; its client reconnects and resumes from its last seq.
    #[error("connection {0} fell behind and was closed; reconnect and resume from the last seq received")]
    SlowConsumer(ConnId),
    /// The sender may not do this here.
    #[error("not allowed in conversation {conversation}: {reason}")]
    Unauthorized {
        /// The conversation.
        conversation: ConversationId,
        /// Why, in words.
        reason: &'static str,
    },
    /// The conversation is closed; it must be reopened first.
    #[error("conversation {0} is closed; it must be reopened before new messages")]
    Closed(ConversationId),
    /// State events (assigned, transfer, hand-off, close, reopen) are made
    /// with `Command::Change`, which keeps the state and its event together.
    #[error("state events are not sent as messages; use Command::Change")]
    StateEventAsMessage,
    /// The message broke a limit.
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
    /// The conversation refused the change (or a read receipt past the end).
    #[error(transparent)]
    IllegalChange(#[from] ConversationError),
    /// The store failed; the message may not be stored (see `StoreError::Unavailable`): retry with the same `client_msg_id`.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for PathError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownConversation(id) => PathError::UnknownConversation(id),
            other => PathError::Store(other),
        }
    }
}

impl PathError {
    /// The wire error code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            PathError::UnknownConversation(_) => ErrorCode::UnknownConversation,
            PathError::UnknownConnection(_) | PathError::Unauthorized { .. } => {
                ErrorCode::Unauthorized
            }
            PathError::Closed(_)
            | PathError::StateEventAsMessage
            | PathError::Invalid(_)
            | PathError::IllegalChange(_) => ErrorCode::Invalid,
            // A slow consumer's connection is closed, so this never reaches it.
            PathError::Store(_) | PathError::SlowConsumer(_) => ErrorCode::Unavailable,
        }
    }
}

/// What the host hears about from the message path.
#[derive(Clone, Debug)]
pub enum PathEvent {
    /// A conversation's state changed (including hand-offs a hook asked
    /// for): route it if it is now queued, release it if closed.
    Changed {
        /// The tenant.
        tenant: TenantId,
        /// The conversation, in its new state.
        conversation: Conversation,
        /// What changed.
        change: Change,
    },
}
