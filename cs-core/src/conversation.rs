//! The conversation and its state machine.
//!
//! ```text
//!             start_bot            enqueue (hand-off)
//!   Waiting ───────────► Bot ──────────────────► Queued ◄──────┐
//!      │                  │                        │ assign     │ requeue
//!      └──── enqueue ─────┼───────────────────────►│            │ (agent offline)
//!                         │                        ▼            │
//!                         │ close            Assigned(agent) ───┘
//!                         ▼                   │   ▲  │
//!   Closed ◄──────────────┴───── close ───────┘   └──┘ transfer
//!      │
//!      └── reopen ──► Waiting
//! ```
//!
//! Every state but `Closed` may also be closed directly. Any other move is an
//! [`ConversationError::IllegalTransition`]: a bug in the caller is reported,
//! never turned into a silent no-op.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ConversationId, Seq, TenantId, VisitorId};
use crate::message::{Body, Message, Party};
use crate::timestamp::Timestamp;

/// Where a conversation is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", content = "agent", rename_all = "snake_case")]
pub enum ConversationState {
    /// Opened; nobody has answered yet.
    Waiting,
    /// The bot is answering.
    Bot,
    /// Waiting in the router's queue for a human.
    Queued,
    /// A human agent is serving it.
    Assigned(AgentId),
    /// Finished. It can be reopened.
    Closed,
}

impl ConversationState {
    /// The state without its data, for errors and metrics labels.
    pub fn kind(&self) -> StateKind {
        match self {
            ConversationState::Waiting => StateKind::Waiting,
            ConversationState::Bot => StateKind::Bot,
            ConversationState::Queued => StateKind::Queued,
            ConversationState::Assigned(_) => StateKind::Assigned,
            ConversationState::Closed => StateKind::Closed,
        }
    }
}

/// [`ConversationState`] without the agent, as a plain label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// See [`ConversationState::Waiting`].
    Waiting,
    /// See [`ConversationState::Bot`].
    Bot,
    /// See [`ConversationState::Queued`].
    Queued,
    /// See [`ConversationState::Assigned`].
    Assigned,
    /// See [`ConversationState::Closed`].
    Closed,
}

impl StateKind {
    /// The lower-case label, as used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Waiting => "waiting",
            StateKind::Bot => "bot",
            StateKind::Queued => "queued",
            StateKind::Assigned => "assigned",
            StateKind::Closed => "closed",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move of the state machine, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Waiting → Bot.
    StartBot,
    /// Waiting or Bot → Queued.
    Enqueue,
    /// Queued → Assigned.
    Assign,
    /// Assigned → Assigned, another agent.
    Transfer,
    /// Assigned → Queued.
    Requeue,
    /// Anything open → Closed.
    Close,
    /// Closed → Waiting.
    Reopen,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transition::StartBot => "hand it to the bot",
            Transition::Enqueue => "queue it for an agent",
            Transition::Assign => "assign it to an agent",
            Transition::Transfer => "transfer it",
            Transition::Requeue => "put it back in the queue",
            Transition::Close => "close it",
            Transition::Reopen => "reopen it",
        })
    }
}

/// A conversation refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// The move is not allowed from the current state.
    #[error("conversation {id}: cannot {transition} while it is {from}")]
    IllegalTransition {
        /// The conversation.
        id: ConversationId,
        /// Its state at the time.
        from: StateKind,
        /// The move that was asked for.
        transition: Transition,
    },
    /// A transfer to the agent who already has the conversation.
    #[error("conversation {id} is already with agent {agent}; transfer it to someone else")]
    TransferToSameAgent {
        /// The conversation.
        id: ConversationId,
        /// The agent who has it.
        agent: AgentId,
    },
    /// A read receipt for a message that does not exist yet.
    #[error("conversation {id}: cannot mark seq {up_to} read, the last message is seq {last}")]
    ReadPastEnd {
        /// The conversation.
        id: ConversationId,
        /// The seq claimed read.
        up_to: Seq,
        /// The last seq recorded.
        last: Seq,
    },
}

/// Which side of the conversation read something. Agents share one marker:
/// the visitor cares that "the shop" has read their message, not which agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reader {
    /// The visitor.
    Visitor,
    /// The agent side.
    Agent,
}

/// One conversation between a visitor and the shop.
///
/// Fields are private so the state can only change through the transition
/// methods; it serializes whole, so a store can save and restore it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    id: ConversationId,
    tenant: TenantId,
    visitor: VisitorId,
    state: ConversationState,
    created_at: Timestamp,
    waiting_since: Option<Timestamp>,
    first_queued_at: Option<Timestamp>,
    first_response_at: Option<Timestamp>,
    last_agent: Option<AgentId>,
    closed_at: Option<Timestamp>,
    last_seq: Seq,
    visitor_read: Seq,
    agent_read: Seq,
}

impl Conversation {
    /// Opens a new conversation for `visitor`, in state `Waiting`.
    pub fn open(tenant: TenantId, visitor: VisitorId, at: Timestamp) -> Self {
        Self {
            id: ConversationId::new(),
            tenant,
            visitor,
            state: ConversationState::Waiting,
            created_at: at,
            waiting_since: Some(at),
            first_queued_at: None,
            first_response_at: None,
            last_agent: None,
            closed_at: None,
            last_seq: Seq::ZERO,
            visitor_read: Seq::ZERO,
            agent_read: Seq::ZERO,
        }
    }

    /// Its id.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The visitor it serves.
    pub fn visitor(&self) -> &VisitorId {
        &self.visitor
    }

    /// Its current state.
    pub fn state(&self) -> &ConversationState {
        &self.state
    }

    /// The agent serving it now, if any.
    pub fn agent(&self) -> Option<&AgentId> {
        match &self.state {
            ConversationState::Assigned(agent) => Some(agent),
            _ => None,
        }
    }

    /// The last agent who served it, even after it closed. The sticky
    /// assignment strategy prefers this agent when the visitor comes back.
    pub fn last_agent(&self) -> Option<&AgentId> {
        self.last_agent.as_ref()
    }

    /// When it was opened.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Since when the visitor has been waiting for an answer: set while it is
    /// `Waiting` or `Queued`, cleared when the bot or an agent takes it.
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.waiting_since
    }

    /// When it first entered the human queue.
    pub fn first_queued_at(&self) -> Option<Timestamp> {
        self.first_queued_at
    }

    /// When an agent first wrote in it.
    pub fn first_response_at(&self) -> Option<Timestamp> {
        self.first_response_at
    }

    /// How long the visitor waited, from first entering the queue to the first
    /// agent message. `None` until both have happened.
    pub fn first_response_time(&self) -> Option<Duration> {
        Some(
            self.first_response_at?
                .saturating_since(self.first_queued_at?),
        )
    }

    /// When it was closed, if it is closed.
    pub fn closed_at(&self) -> Option<Timestamp> {
        self.closed_at
    }

    /// The seq of the last message recorded with [`Conversation::record_message`].
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The last seq `reader` has read.
    pub fn last_read(&self, reader: Reader) -> Seq {
        match reader {
            Reader::Visitor => self.visitor_read,
            Reader::Agent => self.agent_read,
        }
    }

    fn illegal(&self, transition: Transition) -> ConversationError {
        ConversationError::IllegalTransition {
            id: self.id,
            from: self.state.kind(),
            transition,
        }
    }

    /// Waiting → Bot: the bot takes the first turn.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] from any other state.
    pub fn start_bot(&mut self) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Waiting => {
                self.state = ConversationState::Bot;
                self.waiting_since = None;
                Ok(())
            }
            _ => Err(self.illegal(Transition::StartBot)),
        }
    }

    /// Waiting or Bot → Queued: the visitor now waits for a human.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] from any other state.
    pub fn enqueue(&mut self, at: Timestamp) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Waiting | ConversationState::Bot => {
                self.enter_queue(at);
                Ok(())
            }
            _ => Err(self.illegal(Transition::Enqueue)),
        }
    }

    fn enter_queue(&mut self, at: Timestamp) {
        self.state = ConversationState::Queued;
        // A visitor already waiting (Waiting → Queued) keeps their original start.
        self.waiting_since.get_or_insert(at);
        self.first_queued_at.get_or_insert(at);
    }

    /// Queued → Assigned(agent).
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] from any other state.
    pub fn assign(&mut self, agent: AgentId) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Queued => {
                self.last_agent = Some(agent.clone());
                self.state = ConversationState::Assigned(agent);
                self.waiting_since = None;
                Ok(())
            }
            _ => Err(self.illegal(Transition::Assign)),
        }
    }

    /// Assigned(from) → Assigned(to). Returns the agent it came from.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] unless assigned, and
    /// [`ConversationError::TransferToSameAgent`] if `to` already has it.
    pub fn transfer(&mut self, to: AgentId) -> Result<AgentId, ConversationError> {
        match &self.state {
            ConversationState::Assigned(from) if *from == to => {
                Err(ConversationError::TransferToSameAgent {
                    id: self.id,
                    agent: to,
                })
            }
            ConversationState::Assigned(from) => {
                let from = from.clone();
                self.last_agent = Some(to.clone());
                self.state = ConversationState::Assigned(to);
                Ok(from)
            }
            _ => Err(self.illegal(Transition::Transfer)),
        }
    }

    /// Assigned → Queued, for example because the agent went offline.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] unless assigned.
    pub fn requeue(&mut self, at: Timestamp) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Assigned(_) => {
                self.enter_queue(at);
                Ok(())
            }
            _ => Err(self.illegal(Transition::Requeue)),
        }
    }

    /// Any open state → Closed.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] if it is already closed.
    pub fn close(&mut self, at: Timestamp) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Closed => Err(self.illegal(Transition::Close)),
            _ => {
                self.state = ConversationState::Closed;
                self.waiting_since = None;
                self.closed_at = Some(at);
                Ok(())
            }
        }
    }

    /// Closed → Waiting: the visitor came back to the same thread.
    ///
    /// # Errors
    /// [`ConversationError::IllegalTransition`] unless closed.
    pub fn reopen(&mut self, at: Timestamp) -> Result<(), ConversationError> {
        match self.state {
            ConversationState::Closed => {
                self.state = ConversationState::Waiting;
                self.waiting_since = Some(at);
                self.closed_at = None;
                Ok(())
            }
            _ => Err(self.illegal(Transition::Reopen)),
        }
    }

    /// Notes a stored message: advances the last seq and records the first
    /// agent response. Messages recorded out of order never move it back.
    /// Only something said (text, image, file) is a response: an agent who
    /// merely opens the chat (a read receipt) has not answered yet.
    pub fn record_message(&mut self, message: &Message) {
        self.last_seq = self.last_seq.max(message.seq);
        let said_something = !matches!(message.body, Body::Event(_));
        if matches!(message.sender, Party::Agent(_))
            && said_something
            && self.first_queued_at.is_some()
        {
            self.first_response_at.get_or_insert(message.created_at);
        }
    }

    /// Notes that the store holds messages up to `seq`, for a conversation
    /// loaded back from a store that saves the record less often than it
    /// appends messages. Never moves the last seq back.
    pub fn observe_seq(&mut self, seq: Seq) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Moves `reader`'s read marker to `up_to`. Returns whether it moved: a
    /// stale receipt (for a seq already read) changes nothing.
    ///
    /// # Errors
    /// [`ConversationError::ReadPastEnd`] if `up_to` is past the last message.
    pub fn mark_read(&mut self, reader: Reader, up_to: Seq) -> Result<bool, ConversationError> {
        if up_to > self.last_seq {
            return Err(ConversationError::ReadPastEnd {
                id: self.id,
                up_to,
                last: self.last_seq,
            });
        }
        let marker = match reader {
            Reader::Visitor => &mut self.visitor_read,
            Reader::Agent => &mut self.agent_read,
        };
        let moved = up_to > *marker;
        *marker = (*marker).max(up_to);
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::NewMessage;

    fn conv() -> Conversation {
        Conversation::open(
            TenantId::new("shop").unwrap(),
            VisitorId::new("v1").unwrap(),
            Timestamp::from_millis(1_000),
        )
    }

    fn agent(name: &str) -> AgentId {
        AgentId::new(name).unwrap()
    }

    #[test]
    fn the_happy_path_records_wait_and_first_response() {
        let mut c = conv();
        assert_eq!(c.waiting_since(), Some(Timestamp::from_millis(1_000)));
        c.start_bot().unwrap();
        assert_eq!(c.waiting_since(), None);
        c.enqueue(Timestamp::from_millis(5_000)).unwrap();
        assert_eq!(c.waiting_since(), Some(Timestamp::from_millis(5_000)));
        c.assign(agent("alice")).unwrap();
        assert_eq!(c.agent(), Some(&agent("alice")));
        assert_eq!(c.waiting_since(), None);

        // Opening the chat is not answering it.
        let mut receipt = NewMessage::new(
            c.id(),
            Party::Agent(agent("alice")),
            Body::Event(crate::message::Event::Read { up_to: Seq::new(1) }),
        );
        receipt.created_at = Timestamp::from_millis(6_000);
        c.record_message(&Message::from_new(receipt, Seq::new(2)));
        assert_eq!(c.first_response_at(), None);

        let mut reply = NewMessage::text(c.id(), Party::Agent(agent("alice")), "hello");
        reply.created_at = Timestamp::from_millis(9_000);
        c.record_message(&Message::from_new(reply, Seq::new(3)));
        assert_eq!(c.first_response_time(), Some(Duration::from_secs(4)));
        assert_eq!(c.last_seq(), Seq::new(3));

        c.close(Timestamp::from_millis(10_000)).unwrap();
        assert_eq!(c.state().kind(), StateKind::Closed);
        assert_eq!(c.last_agent(), Some(&agent("alice")));
        c.reopen(Timestamp::from_millis(20_000)).unwrap();
        assert_eq!(c.state(), &ConversationState::Waiting);
        // Reopening does not reset the first response: it already happened.
        assert_eq!(c.first_response_time(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn illegal_moves_are_errors_not_no_ops() {
        let mut c = conv();
        let err = c.assign(agent("alice")).unwrap_err();
        assert_eq!(
            err,
            ConversationError::IllegalTransition {
                id: c.id(),
                from: StateKind::Waiting,
                transition: Transition::Assign
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "conversation {}: cannot assign it to an agent while it is waiting",
                c.id()
            )
        );
        assert!(c.transfer(agent("bob")).is_err());
        assert!(c.requeue(Timestamp::now()).is_err());
        assert!(c.reopen(Timestamp::now()).is_err());
        c.close(Timestamp::now()).unwrap();
        assert!(c.close(Timestamp::now()).is_err());
        assert!(c.start_bot().is_err());
        assert!(c.enqueue(Timestamp::now()).is_err());
        // The failed moves changed nothing.
        assert_eq!(c.state(), &ConversationState::Closed);
    }

    #[test]
    fn transfer_and_requeue() {
        let mut c = conv();
        c.enqueue(Timestamp::from_millis(2_000)).unwrap();
        // Waiting → Queued keeps the visitor's original start of waiting.
        assert_eq!(c.waiting_since(), Some(Timestamp::from_millis(1_000)));
        c.assign(agent("alice")).unwrap();
        assert!(matches!(
            c.transfer(agent("alice")),
            Err(ConversationError::TransferToSameAgent { .. })
        ));
        assert_eq!(c.transfer(agent("bob")).unwrap(), agent("alice"));
        assert_eq!(c.agent(), Some(&agent("bob")));
        c.requeue(Timestamp::from_millis(3_000)).unwrap();
        assert_eq!(c.state(), &ConversationState::Queued);
        assert_eq!(c.waiting_since(), Some(Timestamp::from_millis(3_000)));
        assert_eq!(c.first_queued_at(), Some(Timestamp::from_millis(2_000)));
    }

    #[test]
    fn read_markers_only_move_forward_and_not_past_the_end() {
        let mut c = conv();
        for seq in 1..=5 {
            let m = NewMessage::text(c.id(), Party::Bot, "hi");
            c.record_message(&Message::from_new(m, Seq::new(seq)));
        }
        assert_eq!(c.mark_read(Reader::Visitor, Seq::new(4)), Ok(true));
        assert_eq!(c.mark_read(Reader::Visitor, Seq::new(2)), Ok(false));
        assert_eq!(c.last_read(Reader::Visitor), Seq::new(4));
        assert_eq!(c.last_read(Reader::Agent), Seq::ZERO);
        c.observe_seq(Seq::new(9));
        c.observe_seq(Seq::new(7));
        assert_eq!(c.last_seq(), Seq::new(9));
        assert_eq!(c.mark_read(Reader::Agent, Seq::new(9)), Ok(true));
        assert!(matches!(
            c.mark_read(Reader::Agent, Seq::new(10)),
            Err(ConversationError::ReadPastEnd { .. })
        ));
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let mut c = conv();
        c.enqueue(Timestamp::now()).unwrap();
        c.assign(agent("alice")).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: Conversation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
