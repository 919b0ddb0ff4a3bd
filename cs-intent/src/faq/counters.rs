//! [`FaqCounters`]: what the bot did since it started, for a host's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters since the bot was trained. `answered`, `clarified` and
/// `handed_off` count [`FaqBot::reply`](super::FaqBot::reply)'s decisions, so
/// they add up to the questions asked; `chosen` counts clarification clicks
/// ([`FaqBot::choose`](super::FaqBot::choose)) and `corrections` agents'
/// corrections made on this node ([`FaqBot::correct`](super::FaqBot::correct)),
/// so that a sum over a cluster's nodes counts each once.
#[derive(Debug, Default)]
pub struct FaqCounters {
    /// Questions answered from the FAQ.
    pub answered: AtomicU64,
    /// Questions answered with "do you mean one of these?".
    pub clarified: AtomicU64,
    /// Questions handed to a person.
    pub handed_off: AtomicU64,
    /// Corrections made by agents on this node.
    pub corrections: AtomicU64,
    /// Clarification options visitors clicked.
    pub chosen: AtomicU64,
}

/// The counters read at one moment, as plain numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaqCountersSnapshot {
    /// See [`FaqCounters::answered`].
    pub answered: u64,
    /// See [`FaqCounters::clarified`].
    pub clarified: u64,
    /// See [`FaqCounters::handed_off`].
    pub handed_off: u64,
    /// See [`FaqCounters::corrections`].
    pub corrections: u64,
    /// See [`FaqCounters::chosen`].
    pub chosen: u64,
}

impl FaqCounters {
    /// Reads every counter. Each is read on its own, so under load the
    /// numbers may be a few events apart; metrics need no more.
    pub fn snapshot(&self) -> FaqCountersSnapshot {
        FaqCountersSnapshot {
            answered: self.answered.load(Ordering::Relaxed),
            clarified: self.clarified.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            corrections: self.corrections.load(Ordering::Relaxed),
            chosen: self.chosen.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
