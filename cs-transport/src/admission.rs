//! Admission that bounds latency: each shard's queue delay, as its worker
//! last measured it, and what becomes of a client's frame when that delay
//! is past the target.
//!
//! A queue that only refuses when memory runs out lets a flood build
//! seconds of backlog, and every message then waits seconds. Refusing as
//! soon as the wait would pass the target (`DispatcherConfig::
//! queue_delay_target`; off by default, see there why) keeps what is accepted fast, and
//! the refused client retries with the same `client_msg_id` after the
//! `retry_after_ms` it is told. Before messages are refused, what is
//! ephemeral goes: typing frames at a quarter of the target (a stale "is
//! typing" is worth nothing), read receipts at half (the next one carries
//! the same news). Messages are never shed: they are refused, and the
//! sender is told.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cs_core::{Body, Event};

/// One shard's load, written by the worker and read at admission.
///
/// The delay is measured, not modelled: the worker notes how long the
/// oldest command of each batch it takes has waited (its sojourn, as CoDel
/// calls it). A cost-per-command model was tried first and refused far too
/// much: a commit costs about the same for one message or a hundred, so a
/// queue of forty behind a one-message batch looked like forty commits.
pub(crate) struct ShardLoad {
    /// Commands admitted and not yet taken by the worker.
    queued: AtomicUsize,
    /// How long the oldest command of the last batch waited (ns).
    last_wait_ns: AtomicU64,
    /// When the batch being handled started (ns since `epoch`), 0 when idle.
    busy_since_ns: AtomicU64,
    epoch: Instant,
}

impl ShardLoad {
    pub(crate) fn new() -> Self {
        Self {
            queued: AtomicUsize::new(0),
            last_wait_ns: AtomicU64::new(0),
            busy_since_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        // At least 1, so that 0 can mean idle.
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// One more command queued; before it is sent, so the worker's
    /// decrement never comes first.
    pub(crate) fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// A queued command was not sent after all.
    pub(crate) fn withdrawn(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// The worker took `n` commands, the oldest of which waited `waited`,
    /// and starts on them.
    pub(crate) fn started(&self, n: usize, waited: Duration) {
        self.queued.fetch_sub(n, Ordering::SeqCst);
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.last_wait_ns.store(waited, Ordering::SeqCst);
        self.busy_since_ns.store(self.now_ns(), Ordering::SeqCst);
    }

    /// The worker finished its batch.
    pub(crate) fn finished(&self) {
        self.busy_since_ns.store(0, Ordering::SeqCst);
    }

    /// How long a command admitted now would wait, about: as long as the
    /// last batch's oldest command did while a backlog remains, and at least
    /// as long as the batch in hand has been running (a store that hangs).
    pub(crate) fn delay(&self) -> Duration {
        let busy_since = self.busy_since_ns.load(Ordering::SeqCst);
        let running = if busy_since == 0 {
            0
        } else {
            self.now_ns().saturating_sub(busy_since)
        };
        let backlog = if self.queued.load(Ordering::SeqCst) > 0 {
            self.last_wait_ns.load(Ordering::SeqCst)
        } else {
            0
        };
        Duration::from_nanos(running.max(backlog))
    }
}

/// What a client's frame is worth when the queue is long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Worth {
    /// Typing: shed first.
    Typing,
    /// A read receipt: shed next.
    Receipt,
    /// A message: refused, never shed.
    Message,
}

impl Worth {
    pub(crate) fn of(body: &Body) -> Self {
        match body {
            Body::Event(Event::Typing { .. }) => Worth::Typing,
            Body::Event(Event::Read { .. }) => Worth::Receipt,
            _ => Worth::Message,
        }
    }
}

/// What admission does with a client's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Queue it.
    Admit,
    /// Drop it without a word: it is ephemeral, and worthless once late.
    Shed,
    /// Refuse it with `overloaded`; a retry after this can succeed.
    Refuse(Duration),
}

/// The decision for a frame of `worth` when the shard's queue delay is
/// `delay`; a zero `target` turns the bound off.
pub(crate) fn decide(worth: Worth, delay: Duration, target: Duration) -> Decision {
    if target.is_zero() {
        return Decision::Admit;
    }
    match worth {
        Worth::Typing if delay > target / 4 => Decision::Shed,
        Worth::Receipt if delay > target / 2 => Decision::Shed,
        // By then about half of the backlog has drained.
        Worth::Message if delay > target => Decision::Refuse((delay / 2).max(target / 4)),
        _ => Decision::Admit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_goes_first_then_receipts_and_messages_are_refused_not_shed() {
        let target = Duration::from_millis(200);
        let at = |ms| Duration::from_millis(ms);
        let all = |delay| {
            [Worth::Typing, Worth::Receipt, Worth::Message].map(|w| decide(w, delay, target))
        };
        assert_eq!(all(at(10)), [Decision::Admit; 3]);
        assert_eq!(
            all(at(60)),
            [Decision::Shed, Decision::Admit, Decision::Admit]
        );
        assert_eq!(
            all(at(150)),
            [Decision::Shed, Decision::Shed, Decision::Admit]
        );
        assert_eq!(
            all(at(400)),
            [
                Decision::Shed,
                Decision::Shed,
                Decision::Refuse(Duration::from_millis(200))
            ]
        );
        assert_eq!(
            decide(Worth::Message, at(10_000), Duration::ZERO),
            Decision::Admit
        );
    }

    #[test]
    fn the_delay_is_the_last_batchs_wait_while_a_backlog_remains_and_the_batch_in_hand() {
        let load = ShardLoad::new();
        assert_eq!(load.delay(), Duration::ZERO);
        for _ in 0..5 {
            load.enqueued();
        }
        load.started(3, Duration::from_millis(300));
        assert!(
            load.delay() >= Duration::from_millis(300),
            "two still wait behind a slow batch"
        );
        load.finished();
        assert_eq!(load.delay(), Duration::from_millis(300));
        load.started(2, Duration::from_millis(1));
        load.finished();
        assert_eq!(load.delay(), Duration::ZERO, "the backlog is gone");
        // A batch that runs long counts even with nothing queued behind it.
        load.enqueued();
        load.started(1, Duration::ZERO);
        let running = load.delay();
        assert!(running < Duration::from_secs(1));
        load.finished();
    }
}
