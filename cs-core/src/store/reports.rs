//! Report measures: what the desk and the bot achieved, per tenant per day,
//! kept as counters by the store in the same transaction as the writes they
//! count, so a report reads a few rows per day and never scans messages.
//!
//! Why in the store's transaction rather than a background fold: the SQL
//! stores already keep `cs_daily_stats` this way, every event a measure
//! counts is a store write (a conversation created, a message or an event
//! appended, a conversation saved closed), and a counter written with its
//! event can neither be lost nor counted twice across a crash or a restart,
//! with no watermark to keep.
//!
//! # What is counted, and when
//!
//! Each counter is a [`Count`]: a day in the tenant's [`ReportZone`], an
//! agent (or none, for the whole desk), a measure name ([`measure`]) and a
//! value that only ever grows by the deltas below.
//!
//! - created: [`measure::OPENED`] on the day it was opened;
//! - appended: [`measure::messages`] by party for text, images and files on
//!   the day sent; [`measure::HANDOFFS`] and [`measure::handoff_reason`] for
//!   each `Event::Handoff`; [`measure::TRANSFERS`] (desk, and the agent who
//!   gave it away) for each `Event::Transfer`; the rating counters for each
//!   `Event::Rating` (desk, and the agent it names);
//! - saved closed: [`fold_close`] reads the conversation's log since its
//!   last close and counts, on the day of the close, [`measure::CLOSED`],
//!   [`measure::CONTAINED`] (it never reached the human queue), the waits
//!   from each queue entry to its assignment, the first response (first
//!   queued to first agent message), the resolution time (opened to
//!   closed), and for each agent who held it: handled, their first response
//!   (taken to first message) and how long they held it.
//!
//! Times are histograms over fixed bounds ([`BUCKET_BOUNDS_MS`]) plus a
//! count and a sum, so a report gives exact means and, for medians and
//! percentiles, the bound of the bucket they fall in.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::conversation::{Conversation, ConversationState};
use crate::ids::{AgentId, TenantId};
use crate::message::{Body, Event, Message, NewMessage, Party};
use crate::store::StoreError;
use crate::timestamp::Timestamp;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// The upper bounds of the time histograms, in milliseconds: 5 s, 10 s,
/// 30 s, 1 min, 2 min, 5 min, 10 min, 30 min, 1 h, 4 h, 24 h; a last bucket
/// holds everything longer. Fixed, so counters of different days add up.
pub const BUCKET_BOUNDS_MS: [u64; 11] = [
    5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 14_400_000,
    86_400_000,
];

/// The longest handoff reason kept as its own measure (longer ones are cut).
pub const MAX_REASON_CHARS: usize = 64;

/// The measure names. Names are stable: stores keep them as keys.
pub mod measure {
    use crate::message::Party;

    /// Conversations opened.
    pub const OPENED: &str = "opened";
    /// Conversations closed.
    pub const CLOSED: &str = "closed";
    /// Closed conversations that never reached the human queue: the bot
    /// (or the visitor) settled them.
    pub const CONTAINED: &str = "contained";
    /// Hand-offs to the human queue (the bot's, and requeues).
    pub const HANDOFFS: &str = "handoffs";
    /// Transfers from one agent to another.
    pub const TRANSFERS: &str = "transfers";
    /// Conversations an agent served (counted at close, once per agent).
    pub const HANDLED: &str = "handled";
    /// Milliseconds agents held conversations (with [`HANDLED`], a mean).
    pub const HANDLING_MS: &str = "handling_ms";
    /// Ratings given.
    pub const RATINGS: &str = "ratings";
    /// The sum of their scores.
    pub const RATING_SUM: &str = "rating_sum";
    /// Waits from entering the queue to an agent (a time histogram).
    pub const WAIT: &str = "wait";
    /// First queued to the first agent message (a time histogram).
    pub const FIRST_RESPONSE: &str = "first_response";
    /// Opened to closed (a time histogram).
    pub const RESOLUTION: &str = "resolution";

    /// Messages said by a kind of party (`visitor`, `agent`, `bot`, `system`).
    pub fn messages(party: &Party) -> String {
        format!("messages:{}", party_kind(party))
    }

    /// The kind of a party, as reports name it.
    pub fn party_kind(party: &Party) -> &'static str {
        match party {
            Party::Visitor(_) => "visitor",
            Party::Agent(_) => "agent",
            Party::Bot => "bot",
            Party::System => "system",
        }
    }

    /// Hand-offs for one reason (cut to [`super::MAX_REASON_CHARS`]).
    pub fn handoff_reason(reason: &str) -> String {
        let cut: String = reason.chars().take(super::MAX_REASON_CHARS).collect();
        format!("handoff:{cut}")
    }

    /// Ratings with score `score`.
    pub fn rating(score: u8) -> String {
        format!("rating:{score}")
    }

    /// How many times were measured for histogram `name`.
    pub fn count(name: &str) -> String {
        format!("{name}:count")
    }

    /// Their sum in milliseconds.
    pub fn sum_ms(name: &str) -> String {
        format!("{name}:sum_ms")
    }

    /// The bucket `index` of histogram `name` (see [`super::BUCKET_BOUNDS_MS`];
    /// index `BUCKET_BOUNDS_MS.len()` is the overflow bucket).
    pub fn bucket(name: &str, index: usize) -> String {
        format!("{name}:b{index:02}")
    }
}

/// Which histogram bucket `took` falls in.
pub fn bucket_of(took: Duration) -> usize {
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    BUCKET_BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound)
        .unwrap_or(BUCKET_BOUNDS_MS.len())
}

/// A tenant's time zone for reports, as a fixed offset from UTC: which day
/// an event falls in. (A zone with daylight saving needs its offset set
/// again when the clocks change; named zones are not built yet.) Changing
/// it applies to events from then on: days already counted keep theirs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportZone {
    offset_minutes: i32,
}

/// A UTC offset outside −14:00..=+14:00.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UTC offset of {0} minutes is outside -14:00..=+14:00")]
pub struct InvalidZone(pub i32);

impl ReportZone {
    /// UTC.
    pub const UTC: ReportZone = ReportZone { offset_minutes: 0 };

    /// `minutes` east of UTC (+08:00 is 480, −05:00 is −300).
    ///
    /// # Errors
    /// [`InvalidZone`] beyond ±14 hours.
    pub fn fixed(minutes: i32) -> Result<Self, InvalidZone> {
        if minutes.abs() > 14 * 60 {
            return Err(InvalidZone(minutes));
        }
        Ok(Self {
            offset_minutes: minutes,
        })
    }

    /// Minutes east of UTC.
    pub fn offset_minutes(self) -> i32 {
        self.offset_minutes
    }

    /// The local day `at` falls on.
    pub fn day_of(self, at: Timestamp) -> ReportDay {
        let local = i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
            + i64::from(self.offset_minutes) * 60_000;
        ReportDay(local.div_euclid(MILLIS_PER_DAY))
    }
}

/// A calendar day, counted from 1970-01-01 (day 0), in some zone.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ReportDay(pub i64);

/// A date that is not `YYYY-MM-DD` or not in the calendar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a date of the form YYYY-MM-DD")]
pub struct InvalidDate(pub String);

impl ReportDay {
    /// The day of `year-month-day` (proleptic Gregorian).
    ///
    /// # Errors
    /// [`InvalidDate`] for a day not in the calendar (2026-02-30).
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Result<Self, InvalidDate> {
        let bad = || InvalidDate(format!("{year:04}-{month:02}-{day:02}"));
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(bad());
        }
        Ok(ReportDay(days_from_civil(
            i64::from(year),
            i64::from(month),
            i64::from(day),
        )))
    }

    /// Its year, month and day.
    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(self.0)
    }

    /// The next day.
    pub fn next(self) -> Self {
        ReportDay(self.0 + 1)
    }
}

impl std::str::FromStr for ReportDay {
    type Err = InvalidDate;

    /// Parses `YYYY-MM-DD`.
    fn from_str(s: &str) -> Result<Self, InvalidDate> {
        let bad = || InvalidDate(s.to_owned());
        let bytes = s.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(bad());
        }
        let digits = |part: &str| -> Result<u32, InvalidDate> {
            if part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let year = digits(&s[0..4])?;
        let month = digits(&s[5..7])?;
        let day = digits(&s[8..10])?;
        // Four digits always fit an i32.
        ReportDay::from_ymd(year as i32, month, day).map_err(|_| bad())
    }
}

impl std::fmt::Display for ReportDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days: exact integer
// calendar arithmetic, written here because cs-core takes no date crate for
// two functions.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Days from an i64 stay within i32 years for any timestamp a u64 of
    // milliseconds can hold; clamp rather than wrap past that.
    (i32::try_from(y).unwrap_or(i32::MAX), m as u32, d as u32)
}

/// One counter: `measure` of `agent` (or of the whole desk) on `day`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// The day, in the tenant's zone.
    pub day: ReportDay,
    /// The agent, or `None` for the whole desk.
    pub agent: Option<AgentId>,
    /// A name from [`measure`].
    pub measure: String,
    /// The counter's value (in a delta, what to add).
    pub value: i64,
}

/// Deltas, merged by (day, agent, measure) and sorted, so concurrent writers
/// touch counter rows in one order (no deadlocks) and one write adds to
/// each row once.
#[derive(Debug, Default)]
pub struct Deltas {
    merged: BTreeMap<(ReportDay, String, String), i64>,
}

impl Deltas {
    /// Adds `value` to `measure` of `agent` on `day`.
    pub fn add(&mut self, day: ReportDay, agent: Option<&AgentId>, measure: &str, value: i64) {
        let agent = agent.map_or_else(String::new, |a| a.as_str().to_owned());
        *self
            .merged
            .entry((day, agent, measure.to_owned()))
            .or_default() += value;
    }

    fn time(&mut self, day: ReportDay, agent: Option<&AgentId>, name: &str, took: Duration) {
        self.add(day, agent, &measure::count(name), 1);
        self.add(
            day,
            agent,
            &measure::sum_ms(name),
            i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
        );
        self.add(day, agent, &measure::bucket(name, bucket_of(took)), 1);
    }

    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.merged.is_empty()
    }

    /// The deltas in key order: `(day, agent or "", measure, value)`.
    pub fn rows(&self) -> impl Iterator<Item = (ReportDay, &str, &str, i64)> {
        self.merged
            .iter()
            .map(|((day, agent, measure), value)| (*day, agent.as_str(), measure.as_str(), *value))
    }

    /// Merges `other` in.
    pub fn extend(&mut self, other: Deltas) {
        for (key, value) in other.merged {
            *self.merged.entry(key).or_default() += value;
        }
    }

    /// A conversation was created.
    pub fn created(conversation: &Conversation, zone: ReportZone) -> Deltas {
        let mut deltas = Deltas::default();
        deltas.add(
            zone.day_of(conversation.created_at()),
            None,
            measure::OPENED,
            1,
        );
        deltas
    }

    /// A message (or event) was appended.
    pub fn appended(message: &NewMessage, zone: ReportZone) -> Deltas {
        let mut deltas = Deltas::default();
        let day = zone.day_of(message.created_at);
        match &message.body {
            Body::Text { .. } | Body::Image { .. } | Body::File { .. } => {
                deltas.add(day, None, &measure::messages(&message.sender), 1);
            }
            Body::Event(Event::Handoff { reason }) => {
                deltas.add(day, None, measure::HANDOFFS, 1);
                deltas.add(day, None, &measure::handoff_reason(reason), 1);
            }
            Body::Event(Event::Transfer { from, .. }) => {
                deltas.add(day, None, measure::TRANSFERS, 1);
                deltas.add(day, Some(from), measure::TRANSFERS, 1);
            }
            Body::Event(Event::Rating { score, agent, .. }) if (1..=5).contains(score) => {
                let desk_and_agent = std::iter::once(None).chain(agent.as_ref().map(Some));
                for who in desk_and_agent {
                    deltas.add(day, who, measure::RATINGS, 1);
                    deltas.add(day, who, measure::RATING_SUM, i64::from(*score));
                    deltas.add(day, who, &measure::rating(*score), 1);
                }
            }
            Body::Event(_) => {}
        }
        deltas
    }

    /// A conversation was saved; if `before` was open and `after` is
    /// closed, `log` (its messages, oldest first) is folded into the close
    /// day's measures (see [`fold_close`]). Otherwise nothing.
    pub fn saved(
        before: &Conversation,
        after: &Conversation,
        log: &[Message],
        zone: ReportZone,
    ) -> Deltas {
        if matches!(before.state(), ConversationState::Closed)
            || !matches!(after.state(), ConversationState::Closed)
        {
            return Deltas::default();
        }
        fold_close(after, log, zone)
    }

    /// Whether saving `after` over `before` closes it (a store reads the
    /// log for [`Deltas::saved`] only then).
    pub fn closes(before: &Conversation, after: &Conversation) -> bool {
        !matches!(before.state(), ConversationState::Closed)
            && matches!(after.state(), ConversationState::Closed)
    }
}

/// Who holds a conversation while the log is folded.
struct Holder {
    agent: AgentId,
    since: Timestamp,
    answered: bool,
}

/// The measures of a conversation that just closed, on the day of its
/// close, from its log (oldest first; the `Event::Close` of this close may
/// or may not be in it yet). Only the part after its previous close counts,
/// so a reopened conversation is not counted twice.
pub fn fold_close(closed: &Conversation, log: &[Message], zone: ReportZone) -> Deltas {
    let mut deltas = Deltas::default();
    let closed_at = closed.closed_at().unwrap_or_else(Timestamp::now);
    let day = zone.day_of(closed_at);
    let start = log
        .iter()
        .rposition(|m| {
            matches!(m.body, Body::Event(Event::Close { .. })) && m.created_at < closed_at
        })
        .map_or(0, |i| i + 1);
    let segment = &log[start..];
    let segment_start = segment.first().map(|m| m.created_at);

    deltas.add(day, None, measure::CLOSED, 1);
    if closed.first_queued_at().is_none() {
        deltas.add(day, None, measure::CONTAINED, 1);
    }
    let opened = if start == 0 {
        closed.created_at()
    } else {
        segment_start.unwrap_or(closed_at)
    };
    deltas.time(
        day,
        None,
        measure::RESOLUTION,
        closed_at.saturating_since(opened),
    );
    if let (Some(took), Some(at)) = (closed.first_response_time(), closed.first_response_at()) {
        if segment_start.is_some_and(|s| at >= s) || start == 0 {
            deltas.time(day, None, measure::FIRST_RESPONSE, took);
        }
    }

    let mut queued_since: Option<Timestamp> = None;
    let mut holder: Option<Holder> = None;
    // Per agent: whether counted as handled, and how long they held it.
    let mut held: BTreeMap<AgentId, u64> = BTreeMap::new();
    let mut let_go = |holder: &mut Option<Holder>, at: Timestamp| {
        if let Some(h) = holder.take() {
            let ms = u64::try_from(at.saturating_since(h.since).as_millis()).unwrap_or(u64::MAX);
            *held.entry(h.agent).or_default() += ms;
        }
    };
    for message in segment {
        let at = message.created_at;
        match &message.body {
            Body::Event(Event::Handoff { .. }) => {
                let_go(&mut holder, at);
                queued_since = Some(at);
            }
            Body::Event(Event::Assigned { agent }) => {
                if let Some(queued) = queued_since.take() {
                    deltas.time(day, None, measure::WAIT, at.saturating_since(queued));
                }
                let_go(&mut holder, at);
                holder = Some(Holder {
                    agent: agent.clone(),
                    since: at,
                    answered: false,
                });
            }
            Body::Event(Event::Transfer { to, .. }) => {
                let_go(&mut holder, at);
                holder = Some(Holder {
                    agent: to.clone(),
                    since: at,
                    answered: false,
                });
            }
            Body::Event(Event::Close { .. }) => {
                let_go(&mut holder, at);
            }
            Body::Text { .. } | Body::Image { .. } | Body::File { .. } => {
                if let (Party::Agent(sender), Some(h)) = (&message.sender, holder.as_mut()) {
                    if *sender == h.agent && !h.answered {
                        h.answered = true;
                        let took = at.saturating_since(h.since);
                        deltas.time(day, Some(sender), measure::FIRST_RESPONSE, took);
                    }
                }
            }
            Body::Event(_) => {}
        }
    }
    let_go(&mut holder, closed_at);
    for (agent, ms) in held {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        // The desk's row sums its agents'.
        for who in [None, Some(&agent)] {
            deltas.add(day, who, measure::HANDLED, 1);
            deltas.add(day, who, measure::HANDLING_MS, ms);
        }
    }
    deltas
}

/// Each tenant's [`ReportZone`], as a store holds them (UTC unless set).
#[derive(Debug, Default)]
pub struct ReportZones {
    zones: DashMap<String, ReportZone>,
}

impl ReportZones {
    /// Sets `tenant`'s zone.
    pub fn set(&self, tenant: &TenantId, zone: ReportZone) {
        self.zones.insert(tenant.as_str().to_owned(), zone);
    }

    /// `tenant`'s zone.
    pub fn of(&self, tenant: &str) -> ReportZone {
        self.zones.get(tenant).map_or(ReportZone::UTC, |z| *z)
    }
}

/// Where a report's counters are kept: every store that keeps them writes
/// them with the events they count (see the module doc) and reads them
/// back here.
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    /// Which day `tenant`'s events fall in from now on. A desk sets it at
    /// start from its settings; until then, UTC.
    fn set_report_zone(&self, tenant: &TenantId, zone: ReportZone);

    /// Every counter of `tenant` on days `from..=to`, in (day, agent,
    /// measure) order.
    ///
    /// # Errors
    /// A backend error, or a store that keeps no reports.
    async fn report_counts(
        &self,
        tenant: &TenantId,
        from: ReportDay,
        to: ReportDay,
    ) -> Result<Vec<Count>, StoreError>;
}

#[async_trait]
impl<S: ReportStore + ?Sized> ReportStore for std::sync::Arc<S> {
    fn set_report_zone(&self, tenant: &TenantId, zone: ReportZone) {
        (**self).set_report_zone(tenant, zone);
    }
    async fn report_counts(
        &self,
        tenant: &TenantId,
        from: ReportDay,
        to: ReportDay,
    ) -> Result<Vec<Count>, StoreError> {
        (**self).report_counts(tenant, from, to).await
    }
}

/// Counts read back as rows `(day, agent or "", measure, value)`, decoded.
///
/// # Errors
/// [`StoreError::Corrupt`] for an agent id that does not parse.
pub fn decode_count(
    day: i64,
    agent: &str,
    measure: String,
    value: i64,
) -> Result<Count, StoreError> {
    let agent = if agent.is_empty() {
        None
    } else {
        Some(
            AgentId::new(agent)
                .map_err(|e| StoreError::Corrupt(format!("a report counter's agent: {e}")))?,
        )
    };
    Ok(Count {
        day: ReportDay(day),
        agent,
        measure,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let day: ReportDay = "1970-01-01".parse().unwrap();
        assert_eq!(day, ReportDay(0));
        let leap: ReportDay = "2024-02-29".parse().unwrap();
        assert_eq!(leap.to_string(), "2024-02-29");
        assert_eq!(leap.next().to_string(), "2024-03-01");
        assert!("2026-02-29".parse::<ReportDay>().is_err());
        assert!("2026-13-01".parse::<ReportDay>().is_err());
        assert!("26-01-01".parse::<ReportDay>().is_err());
        assert!("2026-1-011".parse::<ReportDay>().is_err());
        assert!("+026-01-01".parse::<ReportDay>().is_err());
        for n in [-800_000, -1, 0, 1, 19_000, 20_000, 2_000_000] {
            let (y, m, d) = ReportDay(n).ymd();
            assert_eq!(ReportDay::from_ymd(y, m, d).unwrap(), ReportDay(n));
        }
    }

    #[test]
    fn a_zone_moves_the_day_boundary() {
        // 2026-03-01 23:30 UTC.
        let day = ReportDay::from_ymd(2026, 3, 1).unwrap();
        let at =
            Timestamp::from_millis((day.0 * MILLIS_PER_DAY + 23 * 3_600_000 + 1_800_000) as u64);
        assert_eq!(ReportZone::UTC.day_of(at), day);
        assert_eq!(ReportZone::fixed(60).unwrap().day_of(at), day.next());
        assert_eq!(ReportZone::fixed(-300).unwrap().day_of(at), day);
        assert!(ReportZone::fixed(15 * 60).is_err());
    }

    #[test]
    fn buckets_have_fixed_bounds() {
        assert_eq!(bucket_of(Duration::from_millis(0)), 0);
        assert_eq!(bucket_of(Duration::from_millis(5_000)), 0);
        assert_eq!(bucket_of(Duration::from_millis(5_001)), 1);
        assert_eq!(
            bucket_of(Duration::from_secs(90_000)),
            BUCKET_BOUNDS_MS.len()
        );
    }
}
