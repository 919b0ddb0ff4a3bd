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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The longest handed-off question kept as its own measure, in characters.
pub const MAX_QUESTION_CHARS: usize = 80;

/// Distinct handed-off questions a desk counts apart per day; the rest are
/// [`measure::BOT_HANDOFF_OTHER`]. It bounds the counters a day can hold
/// (and so a report's read), whatever the traffic.
pub const MAX_QUESTIONS_PER_DAY: usize = 200;

/// A question as the report counts it: trimmed, lower case, runs of white
/// space as one space, cut to [`MAX_QUESTION_CHARS`], so "Where is my
/// order?" and "where is  my order?" count together.
pub fn question_key(question: &str) -> String {
    let lower = question.trim().to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    words.join(" ").chars().take(MAX_QUESTION_CHARS).collect()
}

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

    /// The bot's answers from intent `intent` (a decision the bot made, not
    /// a store write: see [`super::ReportStore::add_report_counts`]).
    pub fn bot_answer(intent: &str) -> String {
        let cut: String = intent.chars().take(super::MAX_REASON_CHARS).collect();
        format!("bot_answer:{cut}")
    }

    /// The bot handed off this question (as [`super::question_key`] gives it).
    pub fn bot_handoff(question_key: &str) -> String {
        format!("bot_handoff:{question_key}")
    }

    /// Handed-off questions past a day's [`super::MAX_QUESTIONS_PER_DAY`]
    /// distinct ones, counted together.
    pub const BOT_HANDOFF_OTHER: &str = "bot_handoff_other";

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

/// A tenant's time zone for reports: which day an event falls in. Either a
/// fixed offset from UTC, or a named zone of the IANA time zone database
/// ("Asia/Shanghai", "Europe/Berlin"), which follows its daylight saving
/// and past changes of offset (the database is compiled in, through
/// `jiff`, so a server without `/usr/share/zoneinfo` has it too). Changing
/// it applies to events from then on: days already counted keep theirs.
///
/// As text (`FromStr`, `Display`, serde): `UTC`, an offset `+05:30` /
/// `-03:00`, or an IANA name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportZone {
    kind: ZoneKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ZoneKind {
    Fixed(i32),
    Named {
        name: std::sync::Arc<str>,
        tz: jiff::tz::TimeZone,
    },
}

impl Default for ZoneKind {
    fn default() -> Self {
        ZoneKind::Fixed(0)
    }
}

/// A report zone that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidZone {
    /// A UTC offset outside −14:00..=+14:00.
    #[error("UTC offset of {0} minutes is outside -14:00..=+14:00")]
    Offset(i32),
    /// A name the time zone database does not have.
    #[error(
        "{0:?} is not a time zone: give an IANA name such as Europe/Berlin or Asia/Shanghai, \
         UTC, or an offset such as +05:30"
    )]
    Unknown(String),
}

impl ReportZone {
    /// UTC.
    pub const UTC: ReportZone = ReportZone {
        kind: ZoneKind::Fixed(0),
    };

    /// `minutes` east of UTC (+08:00 is 480, −05:00 is −300), all year.
    ///
    /// # Errors
    /// [`InvalidZone::Offset`] beyond ±14 hours.
    pub fn fixed(minutes: i32) -> Result<Self, InvalidZone> {
        if minutes.abs() > 14 * 60 {
            return Err(InvalidZone::Offset(minutes));
        }
        Ok(Self {
            kind: ZoneKind::Fixed(minutes),
        })
    }

    /// The IANA zone `name` ("Europe/Berlin"), from the compiled-in
    /// database.
    ///
    /// # Errors
    /// [`InvalidZone::Unknown`] for a name the database does not have.
    pub fn named(name: &str) -> Result<Self, InvalidZone> {
        let tz =
            jiff::tz::TimeZone::get(name).map_err(|_| InvalidZone::Unknown(name.to_owned()))?;
        // The database's own spelling, so "europe/berlin" reads back as it.
        let name = tz.iana_name().unwrap_or(name).into();
        Ok(Self {
            kind: ZoneKind::Named { name, tz },
        })
    }

    /// Minutes east of UTC at `at` (for a named zone, the offset in force
    /// then).
    pub fn offset_minutes_at(&self, at: Timestamp) -> i32 {
        match &self.kind {
            ZoneKind::Fixed(minutes) => *minutes,
            ZoneKind::Named { tz, .. } => tz.to_offset(jiff_timestamp(at)).seconds() / 60,
        }
    }

    /// The IANA name of a named zone; `None` for a fixed offset.
    pub fn iana_name(&self) -> Option<&str> {
        match &self.kind {
            ZoneKind::Fixed(_) => None,
            ZoneKind::Named { name, .. } => Some(name),
        }
    }

    /// The local day `at` falls on.
    pub fn day_of(&self, at: Timestamp) -> ReportDay {
        let offset_ms = match &self.kind {
            ZoneKind::Fixed(minutes) => i64::from(*minutes) * 60_000,
            ZoneKind::Named { tz, .. } => {
                i64::from(tz.to_offset(jiff_timestamp(at)).seconds()) * 1000
            }
        };
        let local = i64::try_from(at.as_millis()).unwrap_or(i64::MAX) + offset_ms;
        ReportDay(local.div_euclid(MILLIS_PER_DAY))
    }
}

/// `at` for jiff; past jiff's range (year 9999) the latest instant it has.
fn jiff_timestamp(at: Timestamp) -> jiff::Timestamp {
    i64::try_from(at.as_millis())
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

impl std::fmt::Display for ReportZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ZoneKind::Fixed(0) => f.write_str("UTC"),
            ZoneKind::Fixed(m) => {
                let sign = if *m < 0 { '-' } else { '+' };
                write!(f, "{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
            }
            ZoneKind::Named { name, .. } => f.write_str(name),
        }
    }
}

impl std::str::FromStr for ReportZone {
    type Err = InvalidZone;

    /// `UTC`, `Z`, an offset (`+05:30`, `-0300`, `+8`), or an IANA name.
    fn from_str(s: &str) -> Result<Self, InvalidZone> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("utc") || s == "Z" {
            return Ok(ReportZone::UTC);
        }
        if let Some(sign) = s.strip_prefix(['+', '-']).map(|_| &s[..1]) {
            let bad = || InvalidZone::Unknown(s.to_owned());
            let rest = &s[1..];
            let (h, m) = match rest.split_once(':') {
                Some((h, m)) => (h, m),
                None if rest.len() == 4 => rest.split_at(2),
                None => (rest, "0"),
            };
            let digits = |p: &str| {
                (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse::<i32>().ok())
                    .flatten()
            };
            let (h, m) = (digits(h).ok_or_else(bad)?, digits(m).ok_or_else(bad)?);
            if m >= 60 {
                return Err(bad());
            }
            let minutes = h * 60 + m;
            return ReportZone::fixed(if sign == "-" { -minutes } else { minutes });
        }
        ReportZone::named(s)
    }
}

impl Serialize for ReportZone {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReportZone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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
    pub fn created(conversation: &Conversation, zone: &ReportZone) -> Deltas {
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
    pub fn appended(message: &NewMessage, zone: &ReportZone) -> Deltas {
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
        zone: &ReportZone,
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
pub fn fold_close(closed: &Conversation, log: &[Message], zone: &ReportZone) -> Deltas {
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

/// Each tenant's [`ReportZone`], as a store holds them (UTC unless set),
/// and whether the store keeps the counters at all (on unless switched off).
#[derive(Debug, Default)]
pub struct ReportZones {
    zones: DashMap<String, ReportZone>,
    // Off rather than on, so `Default` keeps the counters.
    off: AtomicBool,
}

impl ReportZones {
    /// Whether writes keep the report counters from now on. Off, a write
    /// adds nothing to them (reports then show nothing new): for a host that
    /// keeps no reports, and for measuring what keeping them costs.
    pub fn set_counting(&self, on: bool) {
        self.off.store(!on, Ordering::Relaxed);
    }

    /// Whether writes keep the report counters.
    pub fn counting(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// Sets `tenant`'s zone.
    pub fn set(&self, tenant: &TenantId, zone: ReportZone) {
        self.zones.insert(tenant.as_str().to_owned(), zone);
    }

    /// `tenant`'s zone.
    pub fn of(&self, tenant: &str) -> ReportZone {
        self.zones
            .get(tenant)
            .map_or(ReportZone::UTC, |z| z.value().clone())
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

    /// Adds `deltas` to `tenant`'s counters in a transaction of their own:
    /// for what no store write carries (the bot's decisions: which intent it
    /// answered, which question it handed off). A desk buffers those and
    /// adds them about once a second.
    ///
    /// # Errors
    /// A backend error, or a store that keeps no reports.
    async fn add_report_counts(&self, tenant: &TenantId, deltas: &Deltas)
        -> Result<(), StoreError>;

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
    async fn add_report_counts(
        &self,
        tenant: &TenantId,
        deltas: &Deltas,
    ) -> Result<(), StoreError> {
        (**self).add_report_counts(tenant, deltas).await
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

    fn utc(y: i32, m: u32, d: u32, hour: i64, minute: i64) -> Timestamp {
        let day = ReportDay::from_ymd(y, m, d).unwrap();
        Timestamp::from_millis((day.0 * MILLIS_PER_DAY + hour * 3_600_000 + minute * 60_000) as u64)
    }

    fn day(y: i32, m: u32, d: u32) -> ReportDay {
        ReportDay::from_ymd(y, m, d).unwrap()
    }

    #[test]
    fn a_named_zone_follows_daylight_saving_across_the_day_boundary() {
        let berlin = ReportZone::named("Europe/Berlin").unwrap();
        // 22:30 UTC is 23:30 in Berlin's winter (+01:00): the same day...
        assert_eq!(berlin.day_of(utc(2026, 1, 10, 22, 30)), day(2026, 1, 10));
        assert_eq!(berlin.offset_minutes_at(utc(2026, 1, 10, 22, 30)), 60);
        // ...and 00:30 the next day in its summer (+02:00).
        assert_eq!(berlin.day_of(utc(2026, 7, 10, 22, 30)), day(2026, 7, 11));
        assert_eq!(berlin.offset_minutes_at(utc(2026, 7, 10, 22, 30)), 120);
        // The clocks go forward at 01:00 UTC on 2026-03-29: 21:59 UTC the
        // evening before is 22:59 local (+01:00), 22:30 UTC on the 29th is
        // 00:30 on the 30th (+02:00).
        assert_eq!(berlin.day_of(utc(2026, 3, 28, 22, 59)), day(2026, 3, 28));
        assert_eq!(berlin.day_of(utc(2026, 3, 28, 23, 0)), day(2026, 3, 29));
        assert_eq!(berlin.day_of(utc(2026, 3, 29, 22, 30)), day(2026, 3, 30));
        // And back at 01:00 UTC on 2026-10-25: 22:30 UTC on the 24th is
        // 00:30 on the 25th (+02:00), 22:30 UTC on the 25th is 23:30 (+01:00).
        assert_eq!(berlin.day_of(utc(2026, 10, 24, 22, 30)), day(2026, 10, 25));
        assert_eq!(berlin.day_of(utc(2026, 10, 25, 22, 30)), day(2026, 10, 25));
        // A fixed +01:00 would put that summer evening on the wrong day.
        let fixed = ReportZone::fixed(60).unwrap();
        assert_eq!(fixed.day_of(utc(2026, 7, 10, 22, 30)), day(2026, 7, 10));
    }

    #[test]
    fn shanghai_has_no_daylight_saving() {
        let shanghai = ReportZone::named("Asia/Shanghai").unwrap();
        for (m, d) in [(1, 15), (7, 15)] {
            assert_eq!(shanghai.day_of(utc(2026, m, d, 15, 59)), day(2026, m, d));
            assert_eq!(
                shanghai.day_of(utc(2026, m, d, 16, 0)),
                day(2026, m, d).next()
            );
            assert_eq!(shanghai.offset_minutes_at(utc(2026, m, d, 0, 0)), 480);
        }
    }

    #[test]
    fn zones_parse_from_text_and_print_back() {
        for (text, shown, minutes) in [
            ("UTC", "UTC", 0),
            ("utc", "UTC", 0),
            ("+05:30", "+05:30", 330),
            ("-0300", "-03:00", -180),
            ("+8", "+08:00", 480),
            ("Asia/Kolkata", "Asia/Kolkata", 330),
        ] {
            let zone: ReportZone = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(zone.to_string(), shown, "{text}");
            assert_eq!(
                zone.offset_minutes_at(utc(2026, 1, 1, 0, 0)),
                minutes,
                "{text}"
            );
            let json = serde_json::to_string(&zone).unwrap();
            assert_eq!(serde_json::from_str::<ReportZone>(&json).unwrap(), zone);
        }
        assert_eq!(
            "Mars/Olympus_Mons".parse::<ReportZone>(),
            Err(InvalidZone::Unknown("Mars/Olympus_Mons".into()))
        );
        assert_eq!(
            "+15:00".parse::<ReportZone>(),
            Err(InvalidZone::Offset(900))
        );
        assert!("+05:75".parse::<ReportZone>().is_err());
        assert!("+".parse::<ReportZone>().is_err());
        assert_eq!(
            ReportZone::named("Europe/Berlin").unwrap().iana_name(),
            Some("Europe/Berlin")
        );
        assert_eq!(ReportZone::UTC.iana_name(), None);
    }

    #[test]
    fn questions_count_together_whatever_their_case_and_spacing() {
        assert_eq!(
            question_key("  Where is  my\tORDER? "),
            "where is my order?"
        );
        assert_eq!(
            question_key(&"x".repeat(500)).chars().count(),
            MAX_QUESTION_CHARS
        );
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
