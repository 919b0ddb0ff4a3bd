//! The path of one command, as a shard worker runs it.
//!
//! For a message: **authorize** (the sender is a party of the conversation,
//! in its tenant) → **validate** (limits) → **persist** (the store assigns the
//! seq and recognises retries by `client_msg_id`) → **route** (to every
//! connection that joined the conversation, here and through the bus) →
//! **ack** (to the sender, with the seq) → **hooks** (in their own tasks).
//!
//! Each conversation belongs to exactly one shard, and a shard runs its
//! commands in queue order (the messages of a batch are checked in turn,
//! stored with one store call, then routed and acked in turn), so the shard
//! is the single writer of its conversations' state: it keeps them in a
//! small cache and saves every change to the store before anyone hears of
//! it. That is also what makes a resume exact: the replay and the switch to
//! live delivery happen between two messages of the conversation, never
//! during one.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use cs_core::store::{MessageStore, StoreError};
use cs_core::{
    Body, ClientMsgId, ConnId, Conversation, ConversationId, Event, Message, MessageLimits,
    NewMessage, Party, Reader, Seq, Timestamp,
};

use crate::command::{
    Actor, Change, Command, Origin, Outcome, PathError, PathEvent, Readmit, Reply, Request,
};
use crate::gaps;
use crate::hooks::{Hook, HookAction, HookContext};
use crate::metrics::Metrics;
use crate::pool::{ConnInfo, ConnectionPool, SendError};
use crate::protocol::ServerFrame;

/// A shard's own state: the conversations it owns.
pub(crate) struct ShardState {
    conversations: HashMap<ConversationId, Conversation>,
    /// The pool's `written_elsewhere_epoch` when the cache was last valid.
    epoch: u64,
}

/// Who is owed the answer to a job, and what the answer must name.
struct Asker {
    /// The connection that sent it, if one did.
    conn: Option<ConnId>,
    conversation: ConversationId,
    client_msg_id: Option<ClientMsgId>,
    submitted: Instant,
    reply: Option<Reply>,
}

impl Asker {
    fn of(request: Request) -> (Self, Command) {
        let Request {
            command,
            reply,
            submitted,
        } = request;
        let (conn, client_msg_id) = match &command {
            Command::Send {
                origin: Origin::Connection(conn),
                message,
            } => (Some(*conn), message.client_msg_id.clone()),
            Command::Send { message, .. } => (None, message.client_msg_id.clone()),
            Command::Join { conn, .. } => (Some(*conn), None),
            _ => (None, None),
        };
        let asker = Self {
            conn,
            conversation: command.conversation(),
            client_msg_id,
            submitted,
            reply,
        };
        (asker, command)
    }
}

/// A message that passed its checks.
struct ReadySend {
    message: NewMessage,
    /// It moved a read marker, so the conversation's record is saved.
    read_marker: bool,
}

/// What checking a message decided.
enum Checked {
    /// Store it.
    Store(ReadySend),
    /// Nothing to store: a typing frame delivered, or a refused retry
    /// answered with its stored original.
    Done(Outcome),
}

/// The settings of the dispatcher that the path itself reads.
pub(crate) struct PathSettings {
    pub(crate) message_limits: MessageLimits,
    pub(crate) hook_timeout: Duration,
    pub(crate) replay_budget_bytes: usize,
    pub(crate) cached_conversations: usize,
}

/// Everything a shard needs to run a command; shared by all shards.
pub(crate) struct MessagePath {
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) pool: Arc<ConnectionPool>,
    pub(crate) hooks: Vec<Arc<dyn Hook>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: PathSettings,
    pub(crate) events: broadcast::Sender<PathEvent>,
    /// Where the hooks' tasks run, so that shutdown can wait for them.
    pub(crate) hook_tasks: TaskTracker,
    /// Where a hook's reply or hand-off is queued. Weak, because the
    /// dispatcher owns the shards that own this.
    pub(crate) follow_ups: Weak<dyn Readmit>,
}

impl MessagePath {
    pub(crate) fn new_shard_state(&self) -> ShardState {
        ShardState {
            conversations: HashMap::new(),
            epoch: self.pool.written_elsewhere_epoch(),
        }
    }

    /// Runs a shard's batch of jobs, in queue order. Messages are checked
    /// one by one, then stored together with one [`MessageStore::append_batch`]
    /// and delivered and acked in order; any other command first lets the
    /// messages queued before it be stored, so it sees them.
    pub(crate) async fn handle_batch(&self, state: &mut ShardState, requests: Vec<Request>) {
        let mut ready = Vec::new();
        for request in requests {
            let (asker, command) = Asker::of(request);
            if !matches!(command, Command::Send { .. }) {
                self.store_ready(state, &mut ready).await;
            }
            let result = match command {
                Command::Send { origin, message } => {
                    match self.check_send(state, origin, message).await {
                        Ok(Checked::Store(send)) => {
                            ready.push((asker, send));
                            continue;
                        }
                        Ok(Checked::Done(outcome)) => Ok(outcome),
                        Err(error) => Err(error),
                    }
                }
                Command::Join {
                    conn,
                    conversation,
                    last_seq,
                } => self.join(state, conn, conversation, last_seq).await,
                Command::Leave { conn, conversation } => {
                    self.pool.leave_conversation(conn, conversation);
                    Ok(Outcome::Left)
                }
                Command::CatchUp { conn, conversation } => self.catch_up(conn, conversation).await,
                Command::Change {
                    conversation,
                    change,
                    by,
                } => self.change(state, conversation, change, by).await,
            };
            self.answer(asker, result);
        }
        self.store_ready(state, &mut ready).await;
    }

    /// Stores the checked messages with one store call, then delivers and
    /// answers each, in order.
    async fn store_ready(&self, state: &mut ShardState, ready: &mut Vec<(Asker, ReadySend)>) {
        if ready.is_empty() {
            return;
        }
        let (askers, sends): (Vec<_>, Vec<_>) = ready.drain(..).unzip();
        let (messages, read_markers): (Vec<_>, Vec<_>) = sends
            .into_iter()
            .map(|s| (s.message, s.read_marker))
            .unzip();
        let count = messages.len();
        let mut results = self.store.append_batch(messages).await.into_iter();
        for (asker, read_marker) in askers.into_iter().zip(read_markers) {
            let result = match results.next() {
                Some(Ok(appended)) => self.deliver(state, appended, read_marker).await,
                Some(Err(error)) => Err(error.into()),
                None => Err(PathError::Store(StoreError::Corrupt(format!(
                    "the store answered fewer than the {count} messages of a batch"
                )))),
            };
            self.answer(asker, result);
        }
    }

    /// Tells the asker how its command went: an ack or an error frame to
    /// its connection, and the result to whoever waits for it.
    fn answer(&self, asker: Asker, result: Result<Outcome, PathError>) {
        match &result {
            Ok(Outcome::Stored { message, duplicate }) => {
                self.metrics.record_latency(asker.submitted.elapsed());
                if let Some(conn) = asker.conn {
                    let ack = ServerFrame::Ack {
                        conversation: asker.conversation,
                        client_msg_id: message.client_msg_id.clone(),
                        seq: message.seq,
                        duplicate: *duplicate,
                    };
                    // A sender that has gone will resume and see its message.
                    let _ = self.pool.send_to_connection(conn, ack.encode());
                }
            }
            Ok(_) => {}
            Err(error) => {
                Metrics::bump(&self.metrics.rejected);
                if let Some(conn) = asker.conn {
                    let frame = ServerFrame::Error {
                        code: error.code(),
                        message: error.to_string(),
                        conversation: Some(asker.conversation),
                        client_msg_id: asker.client_msg_id,
                        retry_after_ms: None,
                    };
                    let _ = self.pool.send_to_connection(conn, frame.encode());
                }
            }
        }
        if let Some(reply) = asker.reply {
            // The waiter may have given up; the work is done either way.
            let _ = reply.send(result);
        }
    }

    /// The conversation from this shard's cache, loading it on first use.
    async fn conversation<'s>(
        &self,
        state: &'s mut ShardState,
        id: ConversationId,
    ) -> Result<&'s mut Conversation, PathError> {
        // Another node may have changed it (several nodes share a store and
        // a bus): then the cached copy goes, and the store's is read. Two
        // nodes changing one conversation at the same instant still race
        // (the last save wins); see docs/architecture.md.
        let epoch = self.pool.written_elsewhere_epoch();
        if epoch != state.epoch {
            state.conversations.clear();
            state.epoch = epoch;
        }
        if self.pool.take_written_elsewhere(id) {
            state.conversations.remove(&id);
        }
        if !state.conversations.contains_key(&id) {
            let mut conversation = self.store.conversation(id).await?;
            // The record may be older than the messages: it is saved on state
            // changes, not on every append.
            conversation.observe_seq(self.store.last_seq(id).await?);
            if state.conversations.len() >= self.settings.cached_conversations {
                // Everything cached is also saved, so dropping one is safe;
                // one at a time keeps the rest warm instead of reloading all.
                if let Some(evicted) = state.conversations.keys().next().copied() {
                    state.conversations.remove(&evicted);
                }
            }
            state.conversations.insert(id, conversation);
        }
        state
            .conversations
            .get_mut(&id)
            .ok_or(PathError::UnknownConversation(id))
    }

    /// Most recent messages searched for a refused retry's original.
    const RETRY_WINDOW: usize = 200;

    /// The stored original of `message`, if it is a retry (same
    /// `client_msg_id`, same sender) of one among the conversation's last
    /// [`Self::RETRY_WINDOW`] messages. Only asked on the refusal path, so
    /// the store's dedup stays the one check on the hot path; a retry comes
    /// soon after its original, so a recent window finds it.
    async fn stored_retry(&self, message: &NewMessage) -> Option<Message> {
        let client_msg_id = message.client_msg_id.as_ref()?;
        let recent = self
            .store
            .recent(message.conversation, Self::RETRY_WINDOW)
            .await
            .ok()?;
        recent.into_iter().find(|stored| {
            stored.client_msg_id.as_ref() == Some(client_msg_id) && stored.sender == message.sender
        })
    }

    fn sender_info(&self, origin: Origin) -> Result<Option<ConnInfo>, PathError> {
        match origin {
            Origin::Host => Ok(None),
            Origin::Connection(conn) => self
                .pool
                .info(conn)
                .map(Some)
                .ok_or(PathError::UnknownConnection(conn)),
        }
    }

    /// Everything before storing a message: who sends it, whether they
    /// may, its limits, read markers. A typing frame is delivered here (it
    /// is never stored), and a refused retry of a stored message is
    /// answered with its original.
    async fn check_send(
        &self,
        state: &mut ShardState,
        origin: Origin,
        message: NewMessage,
    ) -> Result<Checked, PathError> {
        let id = message.conversation;
        let sender = self.sender_info(origin)?;
        if let Some(info) = &sender {
            if message.sender != info.party {
                return Err(PathError::Unauthorized {
                    conversation: id,
                    reason: "a connection may only send as its own party",
                });
            }
        }
        let reader = match &message.body {
            Body::Event(Event::Typing { .. })
            | Body::Text { .. }
            | Body::Image { .. }
            | Body::File { .. } => None,
            Body::Event(Event::Read { up_to }) => Some((reader_of(&message.sender, id)?, *up_to)),
            Body::Event(_) => return Err(PathError::StateEventAsMessage),
        };
        message.validate(&self.settings.message_limits)?;

        let conversation = self.conversation(state, id).await?;
        let refused = sender
            .as_ref()
            .and_then(|info| may_write(conversation, info).err())
            .or_else(|| {
                (conversation.state().kind() == cs_core::StateKind::Closed)
                    .then_some(PathError::Closed(id))
            });
        if let Some(refused) = refused {
            // A retry of a message stored before a close or a transfer must
            // get its ack, not an error that says it was lost; only for a
            // sender who may read the conversation (its tenant, its visitor).
            if sender
                .as_ref()
                .is_none_or(|info| may_read(conversation, info).is_ok())
            {
                if let Some(original) = self.stored_retry(&message).await {
                    Metrics::bump(&self.metrics.duplicates);
                    return Ok(Checked::Done(Outcome::Stored {
                        message: original,
                        duplicate: true,
                    }));
                }
            }
            return Err(refused);
        }
        if let Body::Event(Event::Typing { active }) = message.body {
            // Ephemeral: delivered at once, even ahead of messages of the
            // same batch still being stored.
            let frame = ServerFrame::Typing {
                conversation: id,
                from: message.sender,
                active,
            };
            self.pool.send_to_conversation(id, frame.encode());
            return Ok(Checked::Done(Outcome::Delivered));
        }
        if let Some((reader, up_to)) = reader {
            conversation.mark_read(reader, up_to)?;
        }
        Ok(Checked::Store(ReadySend {
            message,
            read_marker: reader.is_some(),
        }))
    }

    /// Everything after a message is stored: the conversation's record,
    /// delivery, the hooks.
    async fn deliver(
        &self,
        state: &mut ShardState,
        appended: cs_core::store::Appended,
        read_marker: bool,
    ) -> Result<Outcome, PathError> {
        if appended.duplicate {
            // Stored and delivered the first time; the sender only needs its ack.
            Metrics::bump(&self.metrics.duplicates);
            return Ok(Outcome::Stored {
                message: appended.message,
                duplicate: true,
            });
        }
        Metrics::bump(&self.metrics.persisted);
        let id = appended.message.conversation;
        let conversation = self.conversation(state, id).await?;
        let first_response = conversation.first_response_at();
        conversation.record_message(&appended.message);
        if read_marker || conversation.first_response_at() != first_response {
            if let Err(e) = self.store.save_conversation(conversation).await {
                // The message is stored; only the record's read marker or
                // first-response time lags, and the next change saves it.
                tracing::warn!(conversation = %id, error = %e, "could not save the conversation record");
            }
        }
        self.pool.send_message(
            id,
            appended.message.seq,
            ServerFrame::encode_message(&appended.message),
        );
        self.run_hooks(&appended.message, conversation);
        Ok(Outcome::Stored {
            message: appended.message,
            duplicate: false,
        })
    }

    async fn join(
        &self,
        state: &mut ShardState,
        conn: ConnId,
        id: ConversationId,
        last_seq: Seq,
    ) -> Result<Outcome, PathError> {
        let info = self
            .pool
            .info(conn)
            .ok_or(PathError::UnknownConnection(conn))?;
        let conversation = self.conversation(state, id).await?;
        may_read(conversation, &info)?;
        // A client's seq past the end (a bug, or a forged frame) would make
        // the connection skip every live message up to it. The cache may
        // lag behind messages stored on other nodes, so the store decides.
        let mut last_seq = last_seq;
        if last_seq > conversation.last_seq() {
            let stored = self.store.last_seq(id).await?;
            conversation.observe_seq(stored);
            last_seq = last_seq.min(stored);
        }

        // Joined *before* the replay, at the client's seq: from here on every
        // stored message reaches the connection in seq order, from the
        // replay or live, whichever comes first, and the other is skipped.
        // Messages this node stores cannot interleave anyway (this shard
        // stores them); this closes the window for one stored on another
        // node while the replay reads the store. A connection joined already
        // (a console that followed an assignment) goes back to what its
        // client says it has.
        let was_joined = self.pool.rewind(conn, id, last_seq);
        if !was_joined {
            self.pool
                .join_conversation(conn, id, last_seq)
                .map_err(|e| send_failed(conn, e))?;
        }
        let (replayed, complete) = match self.replay(conn, id, last_seq).await {
            Ok(done) => done,
            Err(e) => {
                if !was_joined {
                    // Not live without its history; the client resumes again.
                    self.pool.leave_conversation(conn, id);
                }
                return Err(e);
            }
        };
        // What the connection has now: the replay, and any live message
        // from another node that came in order meanwhile.
        let up_to = self.pool.position(conn, id).unwrap_or(last_seq);
        if !complete {
            // Live only after a complete replay: the client asks for the
            // rest from `up_to`, and live messages past the hole would only
            // start a repair that its next round sends again.
            self.pool.leave_conversation(conn, id);
        }
        let done = ServerFrame::Replayed {
            conversation: id,
            up_to,
            complete,
        };
        self.pool
            .send_to_connection(conn, done.encode())
            .map_err(|e| send_failed(conn, e))?;
        Metrics::bump(&self.metrics.resumed);
        Ok(Outcome::Joined {
            replayed,
            up_to,
            complete,
        })
    }

    /// Sends a joined connection what it misses after its position: the
    /// repair of a [`Gap`](crate::pool::Gap). What does not fit in its queue
    /// now is reported again a moment later, and so is a store failure, so a
    /// repair never stops halfway for want of a next message or a timer.
    async fn catch_up(&self, conn: ConnId, id: ConversationId) -> Result<Outcome, PathError> {
        // A hole found from here on is reported again.
        self.pool.repairing(conn, id);
        let Some(position) = self.pool.position(conn, id) else {
            // It left or closed since the gap was reported.
            return Ok(Outcome::Left);
        };
        let (replayed, complete) = match self.replay(conn, id, position).await {
            Ok(done) => done,
            Err(e) => {
                if matches!(e, PathError::Store(_)) {
                    gaps::report_again_later(&self.pool, conn, id);
                }
                return Err(e);
            }
        };
        if replayed > 0 {
            Metrics::bump(&self.metrics.gap_repairs);
        }
        if !complete {
            gaps::report_again_later(&self.pool, conn, id);
        }
        Ok(Outcome::CaughtUp {
            replayed,
            up_to: self.pool.position(conn, id).unwrap_or(position),
        })
    }

    /// Sends `conn` the stored messages of `id` after `from`, in order, as
    /// many as fit. Returns how many were sent (not counting those it had
    /// already), and whether that reached the end.
    async fn replay(
        &self,
        conn: ConnId,
        id: ConversationId,
        from: Seq,
    ) -> Result<(usize, bool), PathError> {
        // Replay only what fits in the connection's queue now, less room for
        // the closing marker and live traffic, so that several resumes on
        // one connection (an agent console with many chats) cannot overflow
        // it. The client asks again for the rest.
        const PAGE: usize = 128;
        const HEADROOM: usize = 4 * 1024;
        let room = self
            .pool
            .outbound_room(conn)
            .map_err(|e| send_failed(conn, e))?;
        let mut budget = self
            .settings
            .replay_budget_bytes
            .min(room.saturating_sub(HEADROOM));
        let mut up_to = from;
        let mut replayed = 0;
        let complete = 'replay: loop {
            let page = self.store.after(id, up_to, PAGE).await?;
            if page.is_empty() {
                break 'replay true;
            }
            for message in page {
                let seq = message.seq;
                let frame = ServerFrame::encode_message(&message);
                if frame.len() > budget {
                    break 'replay false;
                }
                budget -= frame.len();
                if self
                    .pool
                    .send_stored(conn, id, seq, frame)
                    .map_err(|e| send_failed(conn, e))?
                {
                    replayed += 1;
                }
                up_to = seq;
            }
        };
        Ok((replayed, complete))
    }

    async fn change(
        &self,
        state: &mut ShardState,
        id: ConversationId,
        change: Change,
        by: Actor,
    ) -> Result<Outcome, PathError> {
        let conversation = self.conversation(state, id).await?;
        // Checked here, on the single writer, against the state this very
        // change would modify: no cached view can lag it.
        if let Some(reason) = by.refusal(&change, conversation) {
            return Err(PathError::Unauthorized {
                conversation: id,
                reason,
            });
        }
        let before = conversation.clone();
        let now = Timestamp::now();
        let mut leaving = None;
        let event = match &change {
            Change::StartBot => {
                conversation.start_bot()?;
                None
            }
            Change::HandOff { reason } => {
                conversation.enqueue(now)?;
                Some(Event::Handoff {
                    reason: reason.clone(),
                })
            }
            Change::Assign(agent) => {
                conversation.assign(agent.clone())?;
                Some(Event::Assigned {
                    agent: agent.clone(),
                })
            }
            Change::Transfer(to) => {
                let from = conversation.transfer(to.clone())?;
                leaving = Some(from.clone());
                Some(Event::Transfer {
                    from,
                    to: to.clone(),
                })
            }
            Change::Requeue => {
                leaving = conversation.agent().cloned();
                conversation.requeue(now)?;
                Some(Event::Handoff {
                    reason: "the agent left; back in the queue".into(),
                })
            }
            Change::Close { reason } => {
                conversation.close(now)?;
                Some(Event::Close {
                    reason: reason.clone(),
                })
            }
            Change::Reopen => {
                conversation.reopen(now)?;
                Some(Event::Reopen)
            }
        };
        if let Err(e) = self.store.save_conversation(conversation).await {
            // Not saved, so not changed: put the cached copy back.
            *conversation = before;
            return Err(e.into());
        }
        let tenant = conversation.tenant().clone();
        if let Some(agent) = conversation.agent() {
            // The assigned agent's open consoles, on every node, follow the
            // conversation live from the event below on; the console replays
            // the history itself when it opens the chat.
            self.pool.join_party(
                &tenant,
                &Party::Agent(agent.clone()),
                id,
                conversation.last_seq(),
            );
        }

        let mut stored_event = None;
        if let Some(event) = event {
            let message = NewMessage::new(id, Party::System, Body::Event(event));
            match self.store.append(message).await {
                Ok(appended) => {
                    Metrics::bump(&self.metrics.persisted);
                    conversation.record_message(&appended.message);
                    self.pool.send_message(
                        id,
                        appended.message.seq,
                        ServerFrame::encode_message(&appended.message),
                    );
                    stored_event = Some(appended.message);
                }
                Err(e) => {
                    // The state change is saved, which is what counts; the
                    // notice is lost, and clients see the state on resume.
                    tracing::warn!(conversation = %id, error = %e, "could not store the event of a state change");
                }
            }
        }
        if let Some(agent) = leaving {
            for conn in self.pool.connections_of(&tenant, &Party::Agent(agent)) {
                self.pool.leave_conversation(conn, id);
            }
        }
        let _ = self.events.send(PathEvent::Changed {
            tenant,
            conversation: conversation.clone(),
            change,
        });
        Ok(Outcome::Changed {
            conversation: conversation.clone(),
            event: stored_event,
        })
    }

    fn run_hooks(&self, message: &Message, conversation: &Conversation) {
        if self.hooks.is_empty() {
            return;
        }
        let Some(follow_ups) = self.follow_ups.upgrade() else {
            return;
        };
        for hook in &self.hooks {
            if !hook.wants(message, conversation) {
                continue;
            }
            let hook = Arc::clone(hook);
            let context = HookContext {
                message: message.clone(),
                conversation: conversation.clone(),
            };
            let follow_ups = Arc::clone(&follow_ups);
            let metrics = Arc::clone(&self.metrics);
            let timeout = self.settings.hook_timeout;
            self.hook_tasks.spawn(async move {
                let id = context.message.conversation;
                let run = AssertUnwindSafe(hook.on_message(context)).catch_unwind();
                let actions = match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(Ok(actions))) => actions,
                    Ok(Ok(Err(e))) => {
                        Metrics::bump(&metrics.hook_failures);
                        tracing::warn!(hook = hook.name(), conversation = %id, error = %e, "hook failed");
                        return;
                    }
                    Ok(Err(_panic)) => {
                        Metrics::bump(&metrics.hook_failures);
                        tracing::error!(hook = hook.name(), conversation = %id, "hook panicked");
                        return;
                    }
                    Err(_elapsed) => {
                        Metrics::bump(&metrics.hook_timeouts);
                        tracing::warn!(hook = hook.name(), conversation = %id, "hook timed out");
                        return;
                    }
                };
                for action in actions {
                    let command = match action {
                        HookAction::Reply(body) => Command::Send {
                            origin: Origin::Host,
                            message: NewMessage::new(id, Party::Bot, body),
                        },
                        HookAction::HandOff { reason } => Command::Change {
                            conversation: id,
                            change: Change::HandOff { reason },
                            by: Actor::Host,
                        },
                    };
                    if let Err(e) = follow_ups.readmit(command, true).await {
                        tracing::warn!(hook = hook.name(), conversation = %id, error = %e, "hook output refused");
                    }
                }
            });
        }
    }
}

/// A failed send to the joining connection, as a path error.
fn send_failed(conn: ConnId, error: SendError) -> PathError {
    match error {
        SendError::SlowConsumer(_) => PathError::SlowConsumer(conn),
        SendError::UnknownConnection(_) | SendError::Closing(_) => {
            PathError::UnknownConnection(conn)
        }
    }
}

fn reader_of(party: &Party, conversation: ConversationId) -> Result<Reader, PathError> {
    match party {
        Party::Visitor(_) => Ok(Reader::Visitor),
        Party::Agent(_) => Ok(Reader::Agent),
        Party::Bot | Party::System => Err(PathError::Unauthorized {
            conversation,
            reason: "only visitors and agents send read receipts",
        }),
    }
}

/// Who may see a conversation: its visitor, and any agent of its tenant
/// (supervisors watch chats they are not assigned to).
fn may_read(conversation: &Conversation, info: &ConnInfo) -> Result<(), PathError> {
    let deny = |reason| {
        Err(PathError::Unauthorized {
            conversation: conversation.id(),
            reason,
        })
    };
    if info.tenant != *conversation.tenant() {
        return deny("the conversation belongs to another tenant");
    }
    match &info.party {
        Party::Visitor(v) if v == conversation.visitor() => Ok(()),
        Party::Visitor(_) => deny("a visitor may only see their own conversations"),
        Party::Agent(_) => Ok(()),
        Party::Bot | Party::System => deny("only visitors and agents connect"),
    }
}

/// Who may write: its visitor, and the agent it is assigned to.
fn may_write(conversation: &Conversation, info: &ConnInfo) -> Result<(), PathError> {
    may_read(conversation, info)?;
    match &info.party {
        Party::Agent(a) if conversation.agent() != Some(a) => Err(PathError::Unauthorized {
            conversation: conversation.id(),
            reason: "only the assigned agent may write",
        }),
        _ => Ok(()),
    }
}
