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
//! Inside a shard, each conversation has its own queue and the worker takes
//! its batches one command per conversation in turn (`fair_queue.rs`): a
//! conversation that floods its shard delays the others on it by at most a
//! batch, not by its whole backlog. Slots and spill are still per shard, so
//! a flood can make others wait up to `enqueue_deadline` for admission.
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
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cs_core::store::MessageStore;
use cs_core::{ConversationId, MessageLimits};

use crate::admission::{self, Decision, ShardLoad, Worth};
use crate::command::{Asked, Readmit, Reply, Request};
use crate::fair_queue::FairQueue;
use crate::gaps::Repairer;
use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::path::{MessagePath, PathSettings};
use crate::pool::ConnectionPool;
use crate::protocol::{ErrorCode, ServerFrame};

// The commands and their outcomes have a module of their own, shared with
// the message path; these are their names here, where a host meets them.
pub use crate::command::{
    Actor, Admission, Change, Command, DispatchError, Origin, Outcome, PathError, PathEvent,
    SubmitError,
};

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

/// An admitted command in its shard's queue.
struct Job {
    request: Request,
    /// Held while the job waits: a slot stands for a place in the queue,
    /// so it is freed when the worker takes the job into a batch.
    _slot: Option<OwnedSemaphorePermit>,
    spilled_bytes: usize,
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
        // The path and the repairer come back to the dispatcher only to
        // queue follow-up work.
        let follow_ups: Weak<dyn Readmit> = Arc::downgrade(&inner) as Weak<Inner>;
        let path = Arc::new(MessagePath {
            store,
            pool,
            hooks,
            metrics,
            settings: PathSettings {
                message_limits: config.message_limits.clone(),
                hook_timeout: config.hook_timeout,
                replay_budget_bytes: config.replay_budget_bytes,
                cached_conversations: config.cached_conversations,
            },
            events: events.clone(),
            hook_tasks: inner.hooks.clone(),
            follow_ups: Weak::clone(&follow_ups),
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
                    config.max_batch,
                ))
            })
            .collect();
        *inner.workers.lock() = workers;
        match path.pool.gaps() {
            Some(gaps) => {
                let repairer = Repairer {
                    pool: Arc::clone(&path.pool),
                    store: Arc::clone(&path.store),
                    check_every: config.position_check_interval,
                    follow_ups,
                    stop: inner.stop.clone(),
                };
                tokio::spawn(repairer.run(gaps));
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
            request: Request {
                command,
                reply,
                submitted: Instant::now(),
            },
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

#[async_trait]
impl Readmit for Inner {
    async fn readmit(&self, command: Command, from_hook: bool) -> Result<Admission, DispatchError> {
        self.admit_from(command, None, from_hook).await
    }
}

/// One shard's worker: takes what is queued into its conversations' own
/// queues, and hands the message path batches served in turn across them
/// (see `fair_queue.rs`), until shutdown's stop marker and everything
/// ahead of it are done.
async fn run_shard(
    mut queue: mpsc::UnboundedReceiver<Work>,
    path: Arc<MessagePath>,
    inner: Weak<Inner>,
    load: Arc<ShardLoad>,
    max_batch: usize,
) {
    let mut state = path.new_shard_state();
    let max_batch = max_batch.max(1);
    let mut waiting: FairQueue<ConversationId, Job> = FairQueue::new();
    let mut open = true;
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        if waiting.is_empty() && open {
            match queue.recv().await {
                Some(work) => take(work, &mut queue, &mut waiting, &mut open),
                None => open = false,
            }
        }
        // Everything that has arrived, so a quiet conversation's command is
        // seen next to the flood's backlog (admission bounds how much).
        while open {
            match queue.try_recv() {
                Ok(work) => take(work, &mut queue, &mut waiting, &mut open),
                Err(_) => break,
            }
        }
        if waiting.is_empty() {
            if open {
                continue;
            }
            break;
        }
        // One store call for the batch instead of one commit wait per message.
        waiting.take_batch(max_batch, &mut jobs);
        let settled: Vec<(usize, Option<Asked>)> = jobs
            .iter()
            .map(|job| (job.spilled_bytes, job.request.command.asking_connection()))
            .collect();
        let oldest = jobs
            .iter()
            .map(|job| job.request.submitted.elapsed())
            .max()
            .unwrap_or_default();
        load.started(jobs.len(), oldest);
        // Their slots are freed here: they have left the queue.
        let batch: Vec<Request> = jobs.drain(..).map(|job| job.request).collect();
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

/// Files one piece of work from the shard's channel: a job into its
/// conversation's queue; the stop marker closes the channel, so senders
/// after it are refused while what is queued still runs.
fn take(
    work: Work,
    queue: &mut mpsc::UnboundedReceiver<Work>,
    waiting: &mut FairQueue<ConversationId, Job>,
    open: &mut bool,
) {
    match work {
        Work::Job(job) => waiting.push(job.request.command.conversation(), job),
        Work::Stop => {
            queue.close();
            // What was sent before the close is still read, then `None`.
            while let Ok(Work::Job(job)) = queue.try_recv() {
                waiting.push(job.request.command.conversation(), job);
            }
            *open = false;
        }
    }
}
