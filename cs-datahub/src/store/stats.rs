//! Per-day counters, maintained on write.

use std::time::Duration;

use cs_core::{Body, Conversation, ConversationState, Event, NewMessage, Timestamp};
use serde::{Deserialize, Serialize};

const MILLIS_PER_DAY: u64 = 86_400_000;

/// A UTC calendar day, counted from 1970-01-01 (day 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Day(pub i64);

impl Day {
    /// The UTC day `at` falls on.
    pub fn of(at: Timestamp) -> Self {
        // Under 2^63 ms for the next 292 million years, so the cast cannot wrap.
        Day((at.as_millis() / MILLIS_PER_DAY) as i64)
    }

    /// Today, UTC.
    pub fn today() -> Self {
        Self::of(Timestamp::now())
    }

    /// `n` days earlier (saturating).
    pub fn minus(self, n: i64) -> Self {
        Day(self.0.saturating_sub(n))
    }

    /// The first millisecond of the day.
    pub fn start(self) -> Timestamp {
        Timestamp::from_millis(u64::try_from(self.0).unwrap_or(0) * MILLIS_PER_DAY)
    }
}

/// One tenant's activity on one UTC day.
///
/// Each counter is bumped by the write that causes it, in that write's
/// transaction:
/// - `conversations`: conversations created (on the day they were created);
/// - `messages`: messages stored (on the day they were sent);
/// - `first_responses`, `first_response_ms_total`: conversations whose first
///   agent reply was saved (with
///   [`Conversation::first_response_time`]), on the day of that reply;
/// - `closed`, `bot_resolved`: conversations closed, and those of them that
///   never reached the human queue (the bot, or the visitor, settled it);
/// - `handoffs`: [`Event::Handoff`] messages stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyStats {
    /// The day.
    pub day: Day,
    /// Conversations opened.
    pub conversations: u64,
    /// Messages stored.
    pub messages: u64,
    /// Conversations that got their first agent reply.
    pub first_responses: u64,
    /// The sum of those first-response times, in milliseconds.
    pub first_response_ms_total: u64,
    /// Conversations closed.
    pub closed: u64,
    /// Closed conversations that never entered the human queue.
    pub bot_resolved: u64,
    /// Bot-to-human hand-offs.
    pub handoffs: u64,
}

impl DailyStats {
    /// The mean first-response time, if any conversation got one that day.
    pub fn mean_first_response(&self) -> Option<Duration> {
        (self.first_responses > 0)
            .then(|| Duration::from_millis(self.first_response_ms_total / self.first_responses))
    }

    /// The share of closed conversations the bot settled alone, 0.0 to 1.0.
    pub fn bot_resolved_share(&self) -> Option<f64> {
        (self.closed > 0).then(|| self.bot_resolved as f64 / self.closed as f64)
    }
}

/// Counter increments caused by one write, for one (tenant, day) row. The
/// stores add these to their stored counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatsDelta {
    pub conversations: i64,
    pub messages: i64,
    pub first_responses: i64,
    pub first_response_ms_total: i64,
    pub closed: i64,
    pub bot_resolved: i64,
    pub handoffs: i64,
}

impl StatsDelta {
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub(crate) fn add(&mut self, other: StatsDelta) {
        self.conversations += other.conversations;
        self.messages += other.messages;
        self.first_responses += other.first_responses;
        self.first_response_ms_total += other.first_response_ms_total;
        self.closed += other.closed;
        self.bot_resolved += other.bot_resolved;
        self.handoffs += other.handoffs;
    }

    pub(crate) fn created(conversation: &Conversation) -> (Day, StatsDelta) {
        let delta = StatsDelta {
            conversations: 1,
            ..StatsDelta::default()
        };
        (Day::of(conversation.created_at()), delta)
    }

    pub(crate) fn appended(message: &NewMessage) -> (Day, StatsDelta) {
        let handoff = matches!(message.body, Body::Event(Event::Handoff { .. }));
        let delta = StatsDelta {
            messages: 1,
            handoffs: i64::from(handoff),
            ..StatsDelta::default()
        };
        (Day::of(message.created_at), delta)
    }

    /// What changed between the saved state `before` and the new `after`.
    pub(crate) fn saved(before: &Conversation, after: &Conversation) -> Vec<(Day, StatsDelta)> {
        let mut out = Vec::new();
        if before.first_response_at().is_none() {
            if let (Some(at), Some(took)) = (after.first_response_at(), after.first_response_time())
            {
                out.push((
                    Day::of(at),
                    StatsDelta {
                        first_responses: 1,
                        first_response_ms_total: i64::try_from(took.as_millis())
                            .unwrap_or(i64::MAX),
                        ..StatsDelta::default()
                    },
                ));
            }
        }
        let was_closed = matches!(before.state(), ConversationState::Closed);
        if let (false, ConversationState::Closed) = (was_closed, after.state()) {
            let at = after.closed_at().unwrap_or_else(Timestamp::now);
            out.push((
                Day::of(at),
                StatsDelta {
                    closed: 1,
                    bot_resolved: i64::from(after.first_queued_at().is_none()),
                    ..StatsDelta::default()
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cs_core::{AgentId, Party, TenantId, VisitorId};

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(Day::of(Timestamp::from_millis(0)), Day(0));
        assert_eq!(Day::of(Timestamp::from_millis(86_399_999)), Day(0));
        assert_eq!(Day::of(Timestamp::from_millis(86_400_000)), Day(1));
        assert_eq!(Day(3).start(), Timestamp::from_millis(3 * 86_400_000));
    }

    #[test]
    fn saving_counts_first_response_and_bot_resolution_once() {
        let open = Conversation::open(
            TenantId::new("t").unwrap(),
            VisitorId::new("v").unwrap(),
            Timestamp::from_millis(1_000),
        );
        let mut bot = open.clone();
        bot.start_bot().unwrap();
        let mut closed = bot.clone();
        closed.close(Timestamp::from_millis(5_000)).unwrap();
        let deltas = StatsDelta::saved(&bot, &closed);
        assert_eq!(deltas.len(), 1);
        assert_eq!((deltas[0].1.closed, deltas[0].1.bot_resolved), (1, 1));
        assert!(StatsDelta::saved(&closed, &closed).is_empty());

        let mut human = open.clone();
        human.enqueue(Timestamp::from_millis(2_000)).unwrap();
        human.assign(AgentId::new("a").unwrap()).unwrap();
        let before = human.clone();
        let reply = cs_core::Message::from_new(
            NewMessage {
                created_at: Timestamp::from_millis(9_000),
                ..NewMessage::text(open.id(), Party::Agent(AgentId::new("a").unwrap()), "hi")
            },
            cs_core::Seq::new(1),
        );
        human.record_message(&reply);
        let deltas = StatsDelta::saved(&before, &human);
        assert_eq!(deltas[0].1.first_responses, 1);
        assert_eq!(deltas[0].1.first_response_ms_total, 7_000);
        human.close(Timestamp::from_millis(10_000)).unwrap();
        let deltas = StatsDelta::saved(&before, &human);
        assert_eq!(deltas[1].1.bot_resolved, 0, "it reached a human");
    }
}
