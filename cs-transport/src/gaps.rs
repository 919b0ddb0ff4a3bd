//! Gap repair: the stored messages a joined connection misses reach it.
//!
//! The pool notices holes (a message past the one a connection expects,
//! or a bus that says it lost envelopes) and reports them as [`Gap`]s. The
//! repairer here turns each into a `Command::CatchUp` on the
//! conversation's shard, which replays the hole from the store in order
//! with everything else the shard does. A check on a timer catches the
//! *last* message of a burst going missing, which no later message
//! reveals. A repair that cannot run now (the shard refuses, the store is
//! down, the connection's queue is full) is reported again after a pause,
//! with [`report_again_later`], so no repair stops halfway for want of a
//! next message.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use cs_core::store::MessageStore;
use cs_core::{ConnId, ConversationId, Seq};

use crate::command::{Command, DispatchError, Readmit};
use crate::pool::{ConnectionPool, Gap};

/// How long a repair that could not run waits before it is reported again.
pub(crate) const REPORT_AGAIN_AFTER: Duration = Duration::from_millis(200);

/// What the repairer works with.
pub(crate) struct Repairer {
    pub(crate) pool: Arc<ConnectionPool>,
    pub(crate) store: Arc<dyn MessageStore>,
    /// How often to compare every joined connection's position with the
    /// store (`DispatcherConfig::position_check_interval`).
    pub(crate) check_every: Option<Duration>,
    /// Weak: the repairer must not keep a dropped dispatcher alive.
    pub(crate) follow_ups: Weak<dyn Readmit>,
    pub(crate) stop: CancellationToken,
}

impl Repairer {
    /// Repairs what the pool reports missing: a connection's hole at once,
    /// and on a possible bus loss (or the timer) every joined connection
    /// whose position is behind the store. Hands the pool's gap channel
    /// back when it stops, at shutdown or when the dispatcher is dropped.
    pub(crate) async fn run(self, mut gaps: mpsc::UnboundedReceiver<Gap>) {
        let mut timer = self.check_every.map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        // The last seq of each joined conversation at the previous timer check.
        let mut previous = HashMap::new();
        loop {
            // `None` for a timer tick.
            let gap = tokio::select! {
                () = self.stop.cancelled() => break,
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
            let Some(follow_ups) = self.follow_ups.upgrade() else {
                break;
            };
            match gap {
                Some(Gap::Connection { conn, conversation }) => {
                    let repair = Command::CatchUp { conn, conversation };
                    match follow_ups.readmit(repair, false).await {
                        Ok(_) => {}
                        Err(DispatchError::Overloaded) => {
                            // Not repaired, so not outstanding: the next
                            // message past the hole reports it again, and so
                            // does this, once the flood has had a moment.
                            self.pool.repairing(conn, conversation);
                            report_again_later(&self.pool, conn, conversation);
                        }
                        // Its connections are about to be closed; they resume.
                        Err(DispatchError::ShuttingDown) => {}
                    }
                }
                Some(Gap::Unknown) => {
                    // Before the check: a loss during it asks for another.
                    self.pool.unknown_taken();
                    self.check_positions(None).await;
                }
                None => {
                    previous = self.check_positions(Some(&previous)).await;
                }
            }
        }
        self.pool.restore_gaps(gaps);
    }

    /// Compares every joined connection's position with its conversation's
    /// last seq in the store, and reports the ones behind as gaps (at most
    /// one outstanding report per connection and conversation, so a slow
    /// repair is not queued again on every check). Returns the last seqs it
    /// read.
    ///
    /// With `previous` (a timer check), a connection counts as behind only
    /// if it has not reached the last seq the *previous* check read: a
    /// message stored a moment ago may still be on its way over the bus, and
    /// replaying it would be wasted work, but one stored a whole interval ago
    /// is lost. Without it (the bus said it lost something), the store's last
    /// seq counts.
    async fn check_positions(
        &self,
        previous: Option<&HashMap<ConversationId, Seq>>,
    ) -> HashMap<ConversationId, Seq> {
        let mut seen = HashMap::new();
        let mut failures = 0usize;
        let mut last_error = None;
        for (conversation, connections) in self.pool.positions() {
            let last = match self.store.last_seq(conversation).await {
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
                    self.pool.report_gap(conn, conversation, true);
                }
            }
        }
        if let Some(error) = last_error {
            // One line per check, not one per conversation, while the store is down.
            tracing::warn!(failures, %error, "position check: the store did not answer for some conversations; the next check retries");
        }
        seen
    }
}

/// Reports `conn`'s gap in `conversation` again after
/// [`REPORT_AGAIN_AFTER`]: meanwhile its queue drains, the flood passes, or
/// the store comes back.
pub(crate) fn report_again_later(
    pool: &Arc<ConnectionPool>,
    conn: ConnId,
    conversation: ConversationId,
) {
    // Weak: a pending retry must not keep a dropped pool alive.
    let pool = Arc::downgrade(pool);
    tokio::spawn(async move {
        tokio::time::sleep(REPORT_AGAIN_AFTER).await;
        if let Some(pool) = pool.upgrade() {
            pool.report_gap(conn, conversation, false);
        }
    });
}
