//! The dispatcher: flood handling in front of the message path.
//!
//! Commands are sharded by conversation onto N workers, so each conversation
//! is handled by one worker, in order, and its state has a single owner.
//! Admission to a shard is where backpressure lives:
//!
//! 1. **Direct.** Each shard has `queue_capacity` slots (a FIFO [`Semaphore`]).
//!    A command that gets a slot is queued at once.
//! 2. **Wait, up to a deadline.** With every slot taken, the sender waits for
//!    one, at most `enqueue_deadline` (default 100 ms). Waiting slows the
//!    flooding connection, not everybody.
//! 3. **Degrade.** Past the deadline the command is queued anyway, without a
//!    slot, onto the shard's spill path and counted as `degraded`. The shard
//!    has one FIFO, so spilled commands are drained in order, before anything
//!    admitted after them: order per conversation holds across degradation.
//! 4. **Refuse.** Spilled commands are bounded in bytes, across all shards
//!    (`max_spill_bytes`). Past that the caller gets
//!    [`DispatchError::Overloaded`] and the client is told to retry.
//!
//! Before all of that, a client's frame meets the latency bound (see
//! `admission.rs`): when its shard's measured queue delay passes
//! `queue_delay_target`, typing frames are shed, then read receipts, and
//! messages are refused with `Overloaded` and a retry time
//! ([`Dispatcher::queue_delay`]), so what is accepted waits about the
//! target at most instead of seconds behind a backlog.
//!
//! Nothing is dropped silently: a command is either refused to its sender, or
//! accepted and then processed, including during shutdown, which drains every
//! accepted command before it returns.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cs_core::store::MessageStore;
use cs_core::{
    AgentId, Body, ClientMsgId, ConnId, Conversation, ConversationId, Event, MessageLimits,
    NewMessage, Seq, VisitorId,
};

use crate::admission::{self, Decision, ShardLoad, Worth};
use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::path::{MessagePath, Outcome, PathError, PathEvent};
use crate::pool::{ConnectionPool, Gap};
use crate::protocol::{ErrorCode, ServerFrame};

/// Dispatcher settings. The defaults suit a 2-core node.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Worker shards. Default: twice the available cores, at least 4, so a
    /// shard waiting on the store does not idle a core.
    pub shards: usize,
    /// Direct slots per shard before senders wait. Default 1,024.
    pub queue_capacity: usize,
    /// How long a sender waits for a slot before its command is degraded to
    /// the spill path. Default 100 ms.
    pub enqueue_deadline: Duration,
    /// Bytes of spilled commands held at most, across all shards, before
    /// commands are refused with `Overloaded`. Default 64 MiB.
    pub max_spill_bytes: usize,
    /// The longest a client's frame should wait in its shard's queue.
    /// Past it, typing frames are shed (at a quarter of it), then read
    /// receipts (at half), and messages are refused with `Overloaded` and a
    /// retry time. Commands of the host and of hooks are never refused by
    /// it. Zero (the default) turns the bound off.
    ///
    /// Off by default because on a CPU-bound node it costs more than it
    /// saves: on the 2-core demo at 10,000–30,000 msgs/s, 200 ms refused a
    /// quarter to two thirds of the messages and cut what was delivered by
    /// 25–55%, while the p99 fell far less (most of that latency is the CPU
    /// shared with the store, not the shard queue), and smaller queues mean
    /// smaller batches. Set it where a store is slow but the CPU is not.
    pub queue_delay_target: Duration,
    /// Commands a shard takes from its queue at once: their messages are
    /// stored with one store call (`MessageStore::append_batch`), so a
    /// shard's throughput is not one message per commit. Default 128.
    pub max_batch: usize,
    /// Limits every message is checked against.
    pub message_limits: MessageLimits,
    /// How long a hook may run before it is cut off. Default 5 s.
    pub hook_timeout: Duration,
    /// Bytes of replayed messages sent per resume, so a replay cannot overflow
    /// the connection's outbound queue; a longer gap is sent in several
    /// rounds. Default 48 KiB, under the pool's 64 KiB default.
    pub replay_budget_bytes: usize,
    /// Conversations each shard keeps in memory before it starts over from
    /// the store. Default 10,000.
    pub cached_conversations: usize,
    /// How often to compare every joined connection's position with the
    /// store and replay what it misses. A lost bus envelope followed by
    /// another message is repaired at once without this; the check catches
    /// the *last* message of a burst going missing. A connection counts as
    /// behind only once it misses a message that was stored before the
    /// previous check, so a message still on its way is not replayed, and a
    /// trailing loss is repaired within two intervals. Each check asks the
    /// store for the last seq of every conversation joined on this node.
    /// Default: off, which is right for one node; with a network bus, a few
    /// seconds.
    pub position_check_interval: Option<Duration>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            shards: (cores * 2).max(4),
            queue_capacity: 1024,
            enqueue_deadline: Duration::from_millis(100),
            max_spill_bytes: 64 * 1024 * 1024,
            queue_delay_target: Duration::ZERO,
            max_batch: 128,
            message_limits: MessageLimits::default(),
            hook_timeout: Duration::from_secs(5),
            replay_budget_bytes: 48 * 1024,
            cached_conversations: 10_000,
            position_check_interval: None,
        }
    }
}

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
    /// position (see [`ConnectionPool::gaps`]). The dispatcher issues these
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
    fn asking_connection(&self) -> Option<Asked> {
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
    fn approx_bytes(&self) -> usize {
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
type Asked = (ConnId, ConversationId, Option<ClientMsgId>);

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

/// A command's result, for [`Dispatcher::submit_and_wait`].
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

pub(crate) type Reply = oneshot::Sender<Result<Outcome, PathError>>;

pub(crate) struct Job {
    pub(crate) command: Command,
    pub(crate) reply: Option<Reply>,
    pub(crate) submitted: Instant,
    /// Held until the job is processed: that is what frees the slot.
    _slot: Option<OwnedSemaphorePermit>,
    spilled_bytes: usize,
}

impl Job {
    /// Takes the job apart. Its slot is freed here, as it leaves the queue:
    /// a slot stands for a place in the queue, not for work in progress.
    pub(crate) fn into_parts(self) -> (Command, Option<Reply>) {
        (self.command, self.reply)
    }
}

/// What a shard's queue carries.
// `Stop` is sent once per shard; boxing `Job` would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Work {
    Job(Job),
    /// Sent once by shutdown: finish what is queued ahead of it, then stop.
    Stop,
}

struct Shard {
    queue: mpsc::UnboundedSender<Work>,
    slots: Arc<Semaphore>,
    load: Arc<ShardLoad>,
}

pub(crate) struct Inner {
    shards: Vec<Shard>,
    hasher: RandomState,
    config: DispatcherConfig,
    metrics: Arc<Metrics>,
    spilled_bytes: AtomicUsize,
    accepting: AtomicBool,
    /// Commands queued or running. With `admitted` and the hook tracker,
    /// this is how shutdown knows the system is quiet.
    in_flight: AtomicUsize,
    /// Commands ever admitted: a change means activity during a check.
    admitted: AtomicU64,
    pub(crate) hooks: TaskTracker,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Held for a whole shutdown, so a second caller returns only once the
    /// first has drained everything.
    shutting_down: tokio::sync::Mutex<()>,
    /// Stops the gap repairer at shutdown, or when the dispatcher is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The flood-handling front of the message path. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
    events: broadcast::Sender<PathEvent>,
}

impl Dispatcher {
    /// Starts the shard workers on the current tokio runtime.
    pub fn start(
        config: DispatcherConfig,
        store: Arc<dyn MessageStore>,
        pool: Arc<ConnectionPool>,
        hooks: Vec<Arc<dyn Hook>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shard_count = config.shards.max(1);
        let (events, _) = broadcast::channel(4096);
        let mut receivers = Vec::with_capacity(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        for _ in 0..shard_count {
            let (queue, rx) = mpsc::unbounded_channel();
            receivers.push(rx);
            shards.push(Shard {
                queue,
                slots: Arc::new(Semaphore::new(config.queue_capacity.max(1))),
                load: Arc::new(ShardLoad::new()),
            });
        }
        let inner = Arc::new(Inner {
            shards,
            hasher: RandomState::new(),
            config: config.clone(),
            metrics: Arc::clone(&metrics),
            spilled_bytes: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            hooks: TaskTracker::new(),
            workers: Mutex::new(Vec::new()),
            shutting_down: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
        });
        let path = Arc::new(MessagePath {
            store,
            pool,
            hooks,
            metrics,
            config,
            events: events.clone(),
            dispatcher: Arc::downgrade(&inner),
        });
        let workers = receivers
            .into_iter()
            .zip(&inner.shards)
            .map(|(rx, shard)| {
                tokio::spawn(run_shard(
                    rx,
                    Arc::clone(&path),
                    Arc::downgrade(&inner),
                    Arc::clone(&shard.load),
                ))
            })
            .collect();
        *inner.workers.lock() = workers;
        match path.pool.gaps() {
            Some(gaps) => {
                tokio::spawn(repair_gaps(
                    gaps,
                    Arc::clone(&path),
                    Arc::downgrade(&inner),
                    inner.stop.clone(),
                ));
            }
            // A second dispatcher on one pool: the first one repairs.
            None => tracing::warn!(
                "another dispatcher already repairs this pool's gaps; run one dispatcher per pool"
            ),
        }
        Self { inner, events }
    }

    /// Admits a command. Returns once it is queued (directly or degraded), or
    /// refused. Its result goes to the connection it came from, if any, as
    /// frames; use [`Dispatcher::submit_and_wait`] to get it here.
    ///
    /// # Errors
    /// [`DispatchError::Overloaded`] or [`DispatchError::ShuttingDown`].
    pub async fn submit(&self, command: Command) -> Result<Admission, DispatchError> {
        self.inner.admit(command, None).await
    }

    /// Admits a command and waits for the message path's result.
    ///
    /// # Errors
    /// [`SubmitError::Refused`] if it was not accepted, [`SubmitError::Rejected`]
    /// if the path rejected it (unauthorized, invalid, unknown conversation, …).
    pub async fn submit_and_wait(&self, command: Command) -> Result<Outcome, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner.admit(command, Some(tx)).await?;
        match rx.await {
            Ok(result) => Ok(result?),
            // The worker dropped the reply: only when processing panicked.
            Err(_) => Err(SubmitError::Panicked),
        }
    }

    /// Conversation changes and hand-offs, for the host to act on (route a
    /// handed-off conversation, release a closed one).
    ///
    /// A broadcast of 4,096 events: a subscriber that falls further behind
    /// gets `RecvError::Lagged` and has missed events, so it should then
    /// reread the state it routes from the store (for example the tenant's
    /// queued conversations) rather than carry on.
    pub fn events(&self) -> broadcast::Receiver<PathEvent> {
        self.events.subscribe()
    }

    /// How long a command of `conversation` would wait in its shard's queue
    /// now: the retry time a refused client is told.
    pub fn queue_delay(&self, conversation: ConversationId) -> Duration {
        self.inner.shard_of(conversation).load.delay()
    }

    /// Spilled bytes held now, across all shards.
    pub fn spilled_bytes(&self) -> usize {
        self.inner.spilled_bytes.load(Ordering::Relaxed)
    }

    /// Stops taking commands from connections and the host, then drains:
    /// every accepted command runs, every hook it triggers runs, and what
    /// those hooks say (a reply, a hand-off) is accepted and runs too, until
    /// nothing is queued, running or hooked. Then the workers stop. Hooks are
    /// bounded by their timeout, so this ends.
    pub async fn shutdown(&self) {
        let _one_at_a_time = self.inner.shutting_down.lock().await;
        self.inner.accepting.store(false, Ordering::SeqCst);
        // Repairs could no longer be admitted, and the connections are about
        // to close; their clients resume.
        self.inner.stop.cancel();
        // A command can start a hook and a hook can queue a command, so wait
        // for one moment when neither exists and nothing was admitted while
        // looking. Polling keeps the hot path free of shutdown bookkeeping.
        while !self.inner.quiet() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.inner.hooks.close();
        self.inner.hooks.wait().await;
        for shard in &self.inner.shards {
            // Wakes senders waiting for a slot: they are refused.
            shard.slots.close();
            // A stop marker: each worker drains what is ahead of it, then stops.
            let _ = shard.queue.send(Work::Stop);
        }
        let workers = std::mem::take(&mut *self.inner.workers.lock());
        for worker in workers {
            let _ = worker.await;
        }
    }
}

impl Inner {
    fn quiet(&self) -> bool {
        let before = self.admitted.load(Ordering::SeqCst);
        let quiet = self.hooks.is_empty()
            && self.in_flight.load(Ordering::SeqCst) == 0
            && self.hooks.is_empty();
        quiet && self.admitted.load(Ordering::SeqCst) == before
    }

    /// Hooks may still post replies while the dispatcher drains them.
    pub(crate) fn accepts(&self, from_hook: bool) -> bool {
        from_hook || self.accepting.load(Ordering::SeqCst)
    }

    pub(crate) async fn admit(
        &self,
        command: Command,
        reply: Option<Reply>,
    ) -> Result<Admission, DispatchError> {
        self.admit_from(command, reply, false).await
    }

    pub(crate) async fn admit_from(
        &self,
        command: Command,
        reply: Option<Reply>,
        from_hook: bool,
    ) -> Result<Admission, DispatchError> {
        if !self.accepts(from_hook) {
            return self.refuse(DispatchError::ShuttingDown);
        }
        let shard = self.shard_of(command.conversation());
        if let Command::Send {
            origin: Origin::Connection(_),
            message,
        } = &command
        {
            let delay = shard.load.delay();
            match admission::decide(
                Worth::of(&message.body),
                delay,
                self.config.queue_delay_target,
            ) {
                Decision::Admit => {}
                Decision::Shed => {
                    Metrics::bump(&self.metrics.shed);
                    return Ok(Admission::Shed);
                }
                Decision::Refuse(_) => return self.refuse(DispatchError::Overloaded),
            }
        }
        // Fast path without a timer: most of the time a slot is free.
        let slot = match Arc::clone(&shard.slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(TryAcquireError::Closed) => return self.refuse(DispatchError::ShuttingDown),
            // No wait configured: degrade at once rather than arm a timer,
            // whose resolution (1 ms) would be the real wait.
            Err(TryAcquireError::NoPermits) if self.config.enqueue_deadline.is_zero() => None,
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout(
                    self.config.enqueue_deadline,
                    Arc::clone(&shard.slots).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(slot)) => Some(slot),
                    Ok(Err(_closed)) => return self.refuse(DispatchError::ShuttingDown),
                    Err(_deadline) => None,
                }
            }
        };
        let mut spilled_bytes = 0;
        if slot.is_none() {
            let bytes = command.approx_bytes();
            let before = self.spilled_bytes.fetch_add(bytes, Ordering::SeqCst);
            if before + bytes > self.config.max_spill_bytes {
                self.spilled_bytes.fetch_sub(bytes, Ordering::SeqCst);
                return self.refuse(DispatchError::Overloaded);
            }
            spilled_bytes = bytes;
        }
        let job = Job {
            command,
            reply,
            submitted: Instant::now(),
            _slot: slot,
            spilled_bytes,
        };
        // Counted before it is queued, so the worker's decrement never comes first.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.admitted.fetch_add(1, Ordering::SeqCst);
        shard.load.enqueued();
        if shard.queue.send(Work::Job(job)).is_err() {
            // The worker has stopped: shutdown finished between our check and now.
            shard.load.withdrawn();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.spilled_bytes
                .fetch_sub(spilled_bytes, Ordering::SeqCst);
            return self.refuse(DispatchError::ShuttingDown);
        }
        Metrics::bump(&self.metrics.accepted);
        if spilled_bytes > 0 {
            Metrics::bump(&self.metrics.degraded);
            Ok(Admission::Degraded)
        } else {
            Ok(Admission::Direct)
        }
    }

    fn shard_of(&self, conversation: ConversationId) -> &Shard {
        let index = (self.hasher.hash_one(conversation) % self.shards.len() as u64) as usize;
        &self.shards[index]
    }

    fn refuse(&self, error: DispatchError) -> Result<Admission, DispatchError> {
        Metrics::bump(&self.metrics.refused);
        Err(error)
    }
}

/// Repairs what the pool reports missing: a connection's hole at once, and
/// on a possible bus loss (or the configured timer) every joined
/// connection whose position is behind the store. Hands the pool's gap
/// channel back when it stops.
async fn repair_gaps(
    mut gaps: mpsc::UnboundedReceiver<Gap>,
    path: Arc<MessagePath>,
    inner: Weak<Inner>,
    stop: CancellationToken,
) {
    let mut timer = path.config.position_check_interval.map(|every| {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    // The last seq of each joined conversation at the previous timer check.
    let mut previous = HashMap::new();
    loop {
        // `None` for a timer tick.
        let gap = tokio::select! {
            () = stop.cancelled() => break,
            gap = gaps.recv() => match gap {
                Some(gap) => Some(gap),
                None => break,
            },
            _ = async {
                match timer.as_mut() {
                    Some(timer) => timer.tick().await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let Some(inner) = inner.upgrade() else { break };
        match gap {
            Some(Gap::Connection { conn, conversation }) => {
                match inner
                    .admit(Command::CatchUp { conn, conversation }, None)
                    .await
                {
                    Ok(_) => {}
                    Err(DispatchError::Overloaded) => {
                        // Not repaired, so not outstanding: the next message
                        // past the hole reports it again, and so does the
                        // retry once the flood has had a moment to pass.
                        path.pool.repairing(conn, conversation);
                        retry_report(&path.pool, conn, conversation);
                    }
                    // Its connections are about to be closed; they resume.
                    Err(DispatchError::ShuttingDown) => {}
                }
            }
            Some(Gap::Unknown) => {
                // Before the check: a loss during it asks for another.
                path.pool.unknown_taken();
                check_positions(&path, None).await;
            }
            None => {
                previous = check_positions(&path, Some(&previous)).await;
            }
        }
    }
    path.pool.restore_gaps(gaps);
}

/// Reports a gap again after a pause.
fn retry_report(pool: &Arc<ConnectionPool>, conn: ConnId, conversation: ConversationId) {
    // Weak: a pending retry must not keep a dropped pool alive.
    let pool = Arc::downgrade(pool);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(pool) = pool.upgrade() {
            pool.report_gap(conn, conversation, false);
        }
    });
}

/// Compares every joined connection's position with its conversation's last
/// seq in the store, and reports the ones behind as gaps (at most one
/// outstanding report per connection and conversation, so a slow repair is
/// not queued again on every check). Returns the last seqs it read.
///
/// With `previous` (a timer check), a connection counts as behind only if
/// it has not reached the last seq the *previous* check read: a message
/// stored a moment ago may still be on its way over the bus, and replaying
/// it would be wasted work, but one stored a whole interval ago is lost.
/// Without it (the bus said it lost something), the store's last seq counts.
async fn check_positions(
    path: &MessagePath,
    previous: Option<&HashMap<ConversationId, Seq>>,
) -> HashMap<ConversationId, Seq> {
    let mut seen = HashMap::new();
    let mut failures = 0usize;
    let mut last_error = None;
    for (conversation, connections) in path.pool.positions() {
        let last = match path.store.last_seq(conversation).await {
            Ok(last) => last,
            Err(e) => {
                failures += 1;
                last_error = Some(e);
                continue;
            }
        };
        seen.insert(conversation, last);
        let behind = match previous {
            Some(previous) => previous.get(&conversation).copied().unwrap_or(Seq::ZERO),
            None => last,
        };
        for (conn, position) in connections {
            if position < behind {
                path.pool.report_gap(conn, conversation, true);
            }
        }
    }
    if let Some(error) = last_error {
        // One line per check, not one per conversation, while the store is down.
        tracing::warn!(failures, %error, "position check: the store did not answer for some conversations; the next check retries");
    }
    seen
}

async fn run_shard(
    mut queue: mpsc::UnboundedReceiver<Work>,
    path: Arc<MessagePath>,
    inner: Weak<Inner>,
    load: Arc<ShardLoad>,
) {
    let mut state = path.new_shard_state();
    let max_batch = path.config.max_batch.max(1);
    let mut jobs = Vec::with_capacity(max_batch);
    while let Some(work) = queue.recv().await {
        // What is queued behind it too, up to the bound: one store call for
        // all of it instead of one commit wait per message.
        let mut next = Some(work);
        while let Some(work) = next.take() {
            match work {
                Work::Job(job) => jobs.push(job),
                // Senders after this point are refused; what is queued still runs.
                Work::Stop => queue.close(),
            }
            if jobs.len() < max_batch {
                next = queue.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let settled: Vec<(usize, Option<Asked>)> = jobs
            .iter()
            .map(|job| (job.spilled_bytes, job.command.asking_connection()))
            .collect();
        let batch = std::mem::replace(&mut jobs, Vec::with_capacity(max_batch));
        let oldest = batch
            .first()
            .map_or(Duration::ZERO, |job| job.submitted.elapsed());
        load.started(batch.len(), oldest);
        let handled = AssertUnwindSafe(path.handle_batch(&mut state, batch))
            .catch_unwind()
            .await;
        load.finished();
        if handled.is_err() {
            // A panicking store (or hook filter) must not take the shard and
            // every conversation on it down. Its cache may hold a half-applied
            // change, so it starts over from the store.
            tracing::error!("the message path panicked on a batch; the shard carries on");
            state = path.new_shard_state();
            for (conn, conversation, client_msg_id) in settled.iter().filter_map(|(_, a)| a.clone())
            {
                // Each client is owed an answer (some may have had theirs
                // already); a retry with its id is safe either way.
                let frame = ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    message: SubmitError::Panicked.to_string(),
                    conversation: Some(conversation),
                    client_msg_id,
                    retry_after_ms: None,
                };
                let _ = path.pool.send_to_connection(conn, frame.encode());
            }
        }
        if let Some(inner) = inner.upgrade() {
            for (spilled, _) in &settled {
                if *spilled > 0 {
                    inner.spilled_bytes.fetch_sub(*spilled, Ordering::SeqCst);
                }
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}
