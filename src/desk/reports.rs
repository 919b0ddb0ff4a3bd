//! Reports: what the desk and the bot achieved, per day of the shop's zone,
//! read from the counters the store keeps with every write
//! (`cs_core::store::reports`), the bot's decisions the desk counts itself
//! ([`BotTally`]: its top intents and handed-off questions), and the
//! satisfaction ratings visitors give at close.
//!
//! A report reads one row per counter per day, whatever the traffic: the
//! figures are sums, exact means, and medians and 90th percentiles given as
//! the upper bound of the histogram bucket they fall in
//! ([`BUCKET_BOUNDS_MS`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use cs_core::store::reports::{
    measure, question_key, Count, Deltas, ReportDay, ReportZone, BUCKET_BOUNDS_MS,
    MAX_QUESTIONS_PER_DAY,
};
use cs_core::store::{ReportStore, StoreError};
use cs_core::Timestamp;
use cs_core::{
    AgentId, AgentRole, Body, ClientMsgId, ConversationId, Event, NewMessage, Party, StateKind,
    VisitorId,
};

use super::error::ErrorKind;
use super::state::DeskState;

/// The longest range one report covers, in days.
pub const MAX_REPORT_DAYS: i64 = 366;

/// The longest comment a rating keeps, in bytes.
pub const MAX_RATING_COMMENT_BYTES: usize = 1000;

/// Why a report was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `from` or `to` is missing or not a `YYYY-MM-DD` date.
    #[error("{field}: {problem}; give dates as YYYY-MM-DD")]
    BadDate {
        /// `from` or `to`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// `from` is after `to`.
    #[error("from ({from}) is after to ({to})")]
    Reversed {
        /// The first day asked for.
        from: ReportDay,
        /// The last day asked for.
        to: ReportDay,
    },
    /// More days than [`MAX_REPORT_DAYS`].
    #[error("{days} days asked for; a report covers at most {MAX_REPORT_DAYS} days")]
    TooLong {
        /// How many.
        days: i64,
    },
    /// `format` is neither `json` nor `csv`.
    #[error("format {0:?} is not offered; use json or csv")]
    BadFormat(String),
    /// `table` is neither `days` nor `top`.
    #[error("table {0:?} is not offered; use days or top")]
    BadTable(String),
    /// An agent asked for another agent's figures.
    #[error("agents see their own figures only; a supervisor sees everyone's")]
    NotYours,
    /// No agent of that id in the directory.
    #[error("no agent {0:?} on this desk")]
    UnknownAgent(String),
    /// The store failed (or keeps no reports).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReportError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReportError::BadDate { .. }
            | ReportError::Reversed { .. }
            | ReportError::TooLong { .. }
            | ReportError::BadFormat(_)
            | ReportError::BadTable(_) => ErrorKind::BadRequest,
            ReportError::NotYours => ErrorKind::Forbidden,
            ReportError::UnknownAgent(_) => ErrorKind::NotFound,
            ReportError::Store(_) => ErrorKind::Unavailable,
        }
    }
}

/// Why a rating was refused.
#[derive(Debug, thiserror::Error)]
pub enum RatingError {
    /// A score outside 1..=5.
    #[error("score {0} is outside 1..=5")]
    BadScore(i64),
    /// A comment longer than [`MAX_RATING_COMMENT_BYTES`].
    #[error("the comment is {0} bytes; at most {MAX_RATING_COMMENT_BYTES}")]
    CommentTooLong(usize),
    /// Not this visitor's conversation (or not this shop's).
    #[error("no conversation {0} of yours")]
    NotYours(ConversationId),
    /// Rated before it closed.
    #[error("conversation {0} is still open; rate it once it is closed")]
    StillOpen(ConversationId),
    /// Rated twice.
    #[error("conversation {0} is rated already")]
    AlreadyRated(ConversationId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RatingError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RatingError::BadScore(_) | RatingError::CommentTooLong(_) => ErrorKind::BadRequest,
            RatingError::NotYours(_) | RatingError::Store(StoreError::UnknownConversation(_)) => {
                ErrorKind::NotFound
            }
            RatingError::StillOpen(_) | RatingError::AlreadyRated(_) => ErrorKind::Conflict,
            RatingError::Store(_) => ErrorKind::Unavailable,
        }
    }
}

/// The bot's decisions, counted for the reports: which intent it answered
/// and which question it handed off, per day of the shop's zone.
///
/// No store write carries a decision (the bot's answer is a text like any
/// other), so the desk keeps them here and adds them to the store's
/// counters about once a second ([`ReportStore::add_report_counts`]) and at
/// shutdown: one small transaction a second however busy the bot is. A
/// process that dies loses at most that second's decisions from the counts.
///
/// A day counts up to [`MAX_QUESTIONS_PER_DAY`] distinct handed-off
/// questions apart (as this process saw them), the rest together, so a day
/// holds a bounded number of counters.
///
/// [`ReportStore::add_report_counts`]: cs_core::store::ReportStore::add_report_counts
#[derive(Debug)]
pub struct BotTally {
    zone: ReportZone,
    inner: parking_lot::Mutex<TallyInner>,
}

#[derive(Debug, Default)]
struct TallyInner {
    pending: Deltas,
    /// The questions counted apart, per day (the last few days only).
    questions: BTreeMap<ReportDay, HashSet<String>>,
}

/// Days of distinct questions a tally remembers (a decision is counted on
/// the day it is made, so older days get no more).
const TALLY_DAYS_KEPT: usize = 3;

impl BotTally {
    /// A tally whose days are in `zone`.
    pub fn new(zone: ReportZone) -> Self {
        Self {
            zone,
            inner: parking_lot::Mutex::default(),
        }
    }

    /// Counts the bot's answer from `intent` at `at`.
    pub fn answered(&self, intent: &str, at: Timestamp) {
        let day = self.zone.day_of(at);
        self.inner
            .lock()
            .pending
            .add(day, None, &measure::bot_answer(intent), 1);
    }

    /// Counts the bot handing off `question` at `at`.
    pub fn handed_off(&self, question: &str, at: Timestamp) {
        let day = self.zone.day_of(at);
        let key = question_key(question);
        let mut inner = self.inner.lock();
        let TallyInner { pending, questions } = &mut *inner;
        let seen = questions.entry(day).or_default();
        if seen.contains(&key) || seen.len() < MAX_QUESTIONS_PER_DAY {
            pending.add(day, None, &measure::bot_handoff(&key), 1);
            seen.insert(key);
        } else {
            pending.add(day, None, measure::BOT_HANDOFF_OTHER, 1);
        }
        while questions.len() > TALLY_DAYS_KEPT {
            questions.pop_first();
        }
    }

    /// Adds what was counted since the last flush to `store`'s counters of
    /// `tenant`. On a store error the counts are kept for the next flush.
    ///
    /// # Errors
    /// The store's.
    pub async fn flush(
        &self,
        store: &dyn ReportStore,
        tenant: &cs_core::TenantId,
    ) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.inner.lock().pending);
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = store.add_report_counts(tenant, &pending).await {
            self.inner.lock().pending.extend(pending);
            return Err(e);
        }
        Ok(())
    }
}

/// How many of the bot's top intents and handed-off questions a report lists.
pub const TOP_N: usize = 10;

/// One line of a top list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ranked {
    /// The intent, or the question as counted ([`question_key`]).
    pub name: String,
    /// How many times.
    pub count: u64,
}

/// What the bot did over the range (the whole desk's; not in an agent's
/// own report).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BotFigures {
    /// Answers the bot gave, over every intent.
    pub answers: u64,
    /// Its most answered intents, most first (at most [`TOP_N`]).
    pub top_intents: Vec<Ranked>,
    /// Questions it handed off, in all.
    pub handed_off: u64,
    /// The questions it handed off most, most first (at most [`TOP_N`]).
    pub top_handed_off: Vec<Ranked>,
    /// Handed-off questions past a day's distinct ones, not in the list.
    pub handed_off_other: u64,
    /// Where the suggested new intents are: groups of handed-off questions
    /// (`GET api/agent/suggestions`, relative to the desk's prefix; each
    /// group's `examples` and `keywords` say which questions it holds).
    pub suggestions: &'static str,
}

impl BotFigures {
    fn of(values: &BTreeMap<String, i64>) -> BotFigures {
        let top = |prefix: &str| -> (u64, Vec<Ranked>) {
            let mut all: Vec<Ranked> = values
                .iter()
                .filter_map(|(k, v)| {
                    Some(Ranked {
                        name: k.strip_prefix(prefix)?.to_owned(),
                        count: u64::try_from(*v).unwrap_or(0),
                    })
                })
                .collect();
            let sum = all.iter().map(|r| r.count).sum();
            all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            all.truncate(TOP_N);
            (sum, all)
        };
        let (answers, top_intents) = top("bot_answer:");
        let (listed, top_handed_off) = top("bot_handoff:");
        let other = values
            .get(measure::BOT_HANDOFF_OTHER)
            .map_or(0, |v| u64::try_from(*v).unwrap_or(0));
        BotFigures {
            answers,
            top_intents,
            handed_off: listed + other,
            top_handed_off,
            handed_off_other: other,
            suggestions: "api/agent/suggestions",
        }
    }
}

/// Whose figures a report holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportScope {
    /// The whole desk and every agent (a supervisor's view).
    Everyone,
    /// One agent's own figures.
    Agent(AgentId),
}

/// The days `from..=to` as asked for (`YYYY-MM-DD`), checked.
///
/// # Errors
/// [`ReportError::BadDate`], [`ReportError::Reversed`], [`ReportError::TooLong`].
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(ReportDay, ReportDay), ReportError> {
    let day = |field: &'static str, value: Option<&str>| -> Result<ReportDay, ReportError> {
        let value = value.ok_or_else(|| ReportError::BadDate {
            field,
            problem: "missing".into(),
        })?;
        value.parse().map_err(
            |e: cs_core::store::reports::InvalidDate| ReportError::BadDate {
                field,
                problem: e.to_string(),
            },
        )
    };
    let (from, to) = (day("from", from)?, day("to", to)?);
    if from > to {
        return Err(ReportError::Reversed { from, to });
    }
    let days = to.0 - from.0 + 1;
    if days > MAX_REPORT_DAYS {
        return Err(ReportError::TooLong { days });
    }
    Ok((from, to))
}

/// A time measure: how many, their mean, and where the median and the 90th
/// percentile fall.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timing {
    /// How many were measured.
    pub count: u64,
    /// Their exact mean, in milliseconds.
    pub mean_ms: Option<u64>,
    /// The median is at most this (the upper bound of its bucket); `None`
    /// when nothing was measured or it is past the last bound (24 h).
    pub p50_le_ms: Option<u64>,
    /// The 90th percentile is at most this (as `p50_le_ms`).
    pub p90_le_ms: Option<u64>,
    /// How many fell in each bucket of [`BUCKET_BOUNDS_MS`], then past it.
    pub buckets: Vec<u64>,
}

impl Timing {
    fn of(values: &BTreeMap<String, i64>, name: &str) -> Timing {
        let get = |key: String| u64::try_from(values.get(&key).copied().unwrap_or(0)).unwrap_or(0);
        let count = get(measure::count(name));
        let sum = get(measure::sum_ms(name));
        let buckets: Vec<u64> = (0..=BUCKET_BOUNDS_MS.len())
            .map(|i| get(measure::bucket(name, i)))
            .collect();
        Timing {
            count,
            mean_ms: (count > 0).then(|| sum / count),
            p50_le_ms: percentile(&buckets, 0.5),
            p90_le_ms: percentile(&buckets, 0.9),
            buckets,
        }
    }
}

/// The bound of the bucket holding the `q` quantile: the smallest bound
/// with at least `ceil(q * n)` values at or below it.
fn percentile(buckets: &[u64], q: f64) -> Option<u64> {
    let n: u64 = buckets.iter().sum();
    if n == 0 {
        return None;
    }
    // ceil of a product of a count and a fraction in 0..=1: fits a u64.
    let rank = ((q * n as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return BUCKET_BOUNDS_MS.get(i).copied();
        }
    }
    None
}

/// Satisfaction: the ratings given.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ratings {
    /// How many.
    pub count: u64,
    /// Their mean score, 1.0 to 5.0.
    pub mean: Option<f64>,
    /// How many of each score, 1 to 5.
    pub by_score: [u64; 5],
}

/// The figures of one day (or a range), of the desk or of one agent. The
/// desk-wide ones (opened, containment, waits, messages) are zero in an
/// agent's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Conversations opened.
    pub opened: u64,
    /// Conversations closed.
    pub closed: u64,
    /// Closed without reaching a person: the bot (or the visitor) settled them.
    pub contained: u64,
    /// `contained / closed`.
    pub containment_rate: Option<f64>,
    /// Hand-offs to the human queue.
    pub handoffs: u64,
    /// Hand-offs by reason.
    pub handoff_reasons: BTreeMap<String, u64>,
    /// Transfers (for an agent: those they gave away).
    pub transfers: u64,
    /// Messages (text, images, files) by party: visitor, agent, bot, system.
    pub messages: BTreeMap<String, u64>,
    /// From entering the queue to an agent taking it.
    pub wait: Timing,
    /// For the desk: first queued to the first agent message. For an
    /// agent: from taking the conversation to their first message in it.
    pub first_response: Timing,
    /// Opened to closed.
    pub resolution: Timing,
    /// Conversations an agent served (for the desk: the sum over agents).
    pub handled: u64,
    /// The time agents held them, in total, in milliseconds.
    pub handling_ms: u64,
    /// `handling_ms / handled`.
    pub mean_handling_ms: Option<u64>,
    /// Satisfaction.
    pub ratings: Ratings,
}

impl Figures {
    fn of(values: &BTreeMap<String, i64>) -> Figures {
        let get = |key: &str| u64::try_from(values.get(key).copied().unwrap_or(0)).unwrap_or(0);
        let prefixed = |prefix: &str| -> BTreeMap<String, u64> {
            values
                .iter()
                .filter_map(|(k, v)| {
                    let rest = k.strip_prefix(prefix)?;
                    Some((rest.to_owned(), u64::try_from(*v).unwrap_or(0)))
                })
                .collect()
        };
        let (closed, contained) = (get(measure::CLOSED), get(measure::CONTAINED));
        let (handled, handling_ms) = (get(measure::HANDLED), get(measure::HANDLING_MS));
        let ratings = get(measure::RATINGS);
        let mut by_score = [0; 5];
        for (score, slot) in (1u8..=5).zip(by_score.iter_mut()) {
            *slot = get(&measure::rating(score));
        }
        Figures {
            opened: get(measure::OPENED),
            closed,
            contained,
            containment_rate: (closed > 0).then(|| contained as f64 / closed as f64),
            handoffs: get(measure::HANDOFFS),
            handoff_reasons: prefixed("handoff:"),
            transfers: get(measure::TRANSFERS),
            messages: prefixed("messages:"),
            wait: Timing::of(values, measure::WAIT),
            first_response: Timing::of(values, measure::FIRST_RESPONSE),
            resolution: Timing::of(values, measure::RESOLUTION),
            handled,
            handling_ms,
            mean_handling_ms: (handled > 0).then(|| handling_ms / handled),
            ratings: Ratings {
                count: ratings,
                mean: (ratings > 0).then(|| get(measure::RATING_SUM) as f64 / ratings as f64),
                by_score,
            },
        }
    }
}

/// One day's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DayFigures {
    /// The day, `YYYY-MM-DD` in the shop's zone.
    pub day: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The whole desk over the range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeskFigures {
    /// Over every day of the range.
    pub total: Figures,
    /// The bot's top intents and handed-off questions over the range.
    pub bot: BotFigures,
    /// Each day with any activity, oldest first.
    pub days: Vec<DayFigures>,
}

/// One agent over the range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentFigures {
    /// The agent.
    pub agent: AgentId,
    /// Their display name.
    pub name: String,
    /// Over every day of the range.
    pub total: Figures,
    /// Each day they had any figure, oldest first.
    pub days: Vec<DayFigures>,
}

/// A report: `GET api/agent/reports`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The first day, `YYYY-MM-DD`.
    pub from: String,
    /// The last day, `YYYY-MM-DD`.
    pub to: String,
    /// The shop's zone that decides the days: `UTC`, an offset (`+05:30`)
    /// or an IANA name (`Europe/Berlin`).
    pub zone: String,
    /// Its offset now, minutes east of UTC (a named zone's changes with
    /// daylight saving; each event's day used the offset of its moment).
    pub zone_offset_minutes: i32,
    /// The upper bounds of the time buckets, in milliseconds.
    pub bucket_bounds_ms: Vec<u64>,
    /// The whole desk; `None` in an agent's own report.
    pub desk: Option<DeskFigures>,
    /// The agents with any figure in the range (or the one asked for).
    pub agents: Vec<AgentFigures>,
}

/// Counters grouped by agent ("" for the desk), then day, then measure.
type Grouped = BTreeMap<String, BTreeMap<ReportDay, BTreeMap<String, i64>>>;

fn group(counts: Vec<Count>) -> Grouped {
    let mut grouped = Grouped::new();
    for count in counts {
        let agent = count.agent.map_or_else(String::new, |a| a.to_string());
        *grouped
            .entry(agent)
            .or_default()
            .entry(count.day)
            .or_default()
            .entry(count.measure)
            .or_default() += count.value;
    }
    grouped
}

fn total_of(days: &BTreeMap<ReportDay, BTreeMap<String, i64>>) -> BTreeMap<String, i64> {
    let mut total = BTreeMap::new();
    for values in days.values() {
        for (k, v) in values {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    total
}

fn days_of(days: &BTreeMap<ReportDay, BTreeMap<String, i64>>) -> Vec<DayFigures> {
    days.iter()
        .map(|(day, values)| DayFigures {
            day: day.to_string(),
            figures: Figures::of(values),
        })
        .collect()
}

/// Builds the report of `from..=to` for `scope` from the store's counters
/// of those days (what [`ReportStore::report_counts`] returns), naming each
/// agent with `name_of`. This is all the work a report does besides that
/// one read: sums over days, no scan of messages.
///
/// [`ReportStore::report_counts`]: cs_core::store::ReportStore::report_counts
pub fn build_report(
    counts: Vec<Count>,
    from: ReportDay,
    to: ReportDay,
    zone: &ReportZone,
    scope: &ReportScope,
    name_of: impl Fn(&AgentId) -> String,
) -> Report {
    let mut grouped = group(counts);
    let desk_days = grouped.remove("").unwrap_or_default();
    let agents = grouped
        .into_iter()
        .filter(|(agent, _)| match scope {
            ReportScope::Everyone => true,
            ReportScope::Agent(only) => only.as_str() == agent,
        })
        .filter_map(|(agent, days)| {
            let id = AgentId::new(&agent).ok()?;
            Some(AgentFigures {
                name: name_of(&id),
                agent: id,
                total: Figures::of(&total_of(&days)),
                days: days_of(&days),
            })
        })
        .collect();
    Report {
        from: from.to_string(),
        to: to.to_string(),
        zone: zone.to_string(),
        zone_offset_minutes: zone.offset_minutes_at(Timestamp::now()),
        bucket_bounds_ms: BUCKET_BOUNDS_MS.to_vec(),
        desk: (*scope == ReportScope::Everyone).then(|| {
            let total = total_of(&desk_days);
            DeskFigures {
                bot: BotFigures::of(&total),
                total: Figures::of(&total),
                days: days_of(&desk_days),
            }
        }),
        agents,
    }
}

impl DeskState {
    /// The report of `from..=to` for `scope`.
    pub(crate) async fn report(
        &self,
        from: ReportDay,
        to: ReportDay,
        scope: &ReportScope,
    ) -> Result<Report, ReportError> {
        let counts = self.reports.report_counts(&self.tenant, from, to).await?;
        Ok(build_report(
            counts,
            from,
            to,
            &self.settings.report_zone,
            scope,
            |id| self.agent_name(id),
        ))
    }

    /// Whose figures `me` may see, asking for `agent` (or for all).
    pub(crate) fn report_scope(
        &self,
        me: &AgentId,
        agent: Option<&str>,
    ) -> Result<ReportScope, ReportError> {
        let supervisor = self
            .directory
            .agent(me)
            .is_some_and(|r| r.role == AgentRole::Supervisor);
        match agent {
            None if supervisor => Ok(ReportScope::Everyone),
            None => Ok(ReportScope::Agent(me.clone())),
            Some(asked) => {
                let id =
                    AgentId::new(asked).map_err(|_| ReportError::UnknownAgent(asked.to_owned()))?;
                if !supervisor && id != *me {
                    return Err(ReportError::NotYours);
                }
                if self.directory.agent(&id).is_none() {
                    return Err(ReportError::UnknownAgent(asked.to_owned()));
                }
                Ok(ReportScope::Agent(id))
            }
        }
    }

    /// Stores `visitor`'s rating of their closed conversation `id`, once,
    /// as an `Event::Rating` of it, naming the agent who served it last.
    ///
    /// The event goes to the store directly, not through the message path:
    /// the path takes no state events from clients and nothing into a
    /// closed conversation, and a rating is both. Its client id makes a
    /// second rating a duplicate, refused.
    pub(crate) async fn rate(
        &self,
        visitor: &VisitorId,
        id: ConversationId,
        score: i64,
        comment: Option<String>,
    ) -> Result<(), RatingError> {
        let score = u8::try_from(score)
            .ok()
            .filter(|s| (1..=5).contains(s))
            .ok_or(RatingError::BadScore(score))?;
        let comment = comment
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        if let Some(c) = &comment {
            if c.len() > MAX_RATING_COMMENT_BYTES {
                return Err(RatingError::CommentTooLong(c.len()));
            }
        }
        let conversation = match self.store.conversation(id).await {
            Ok(c) => c,
            Err(StoreError::UnknownConversation(_)) => return Err(RatingError::NotYours(id)),
            Err(e) => return Err(e.into()),
        };
        if conversation.tenant() != &self.tenant || conversation.visitor() != visitor {
            return Err(RatingError::NotYours(id));
        }
        if conversation.state().kind() != StateKind::Closed {
            return Err(RatingError::StillOpen(id));
        }
        let rating = Event::Rating {
            score,
            comment,
            agent: conversation.last_agent().cloned(),
        };
        let once = ClientMsgId::new("rating")
            .map_err(|e| StoreError::Corrupt(format!("the rating's client id: {e}")))?;
        let message = NewMessage::new(id, Party::Visitor(visitor.clone()), Body::Event(rating))
            .with_client_msg_id(once);
        let appended = self.store.append(message).await?;
        if appended.duplicate {
            return Err(RatingError::AlreadyRated(id));
        }
        Ok(())
    }
}

/// The report as CSV: one row per day for the desk (agent empty), then per
/// day for each agent. Percentile columns are bucket bounds (see [`Timing`]).
pub fn to_csv(report: &Report) -> String {
    let mut out = String::from(
        "day,agent,opened,closed,contained,handoffs,transfers,\
         messages_visitor,messages_agent,messages_bot,messages_system,\
         wait_count,wait_mean_ms,wait_p50_le_ms,wait_p90_le_ms,\
         first_response_count,first_response_mean_ms,first_response_p50_le_ms,first_response_p90_le_ms,\
         resolution_count,resolution_mean_ms,resolution_p50_le_ms,resolution_p90_le_ms,\
         handled,mean_handling_ms,ratings,rating_mean\n",
    );
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    let mut row = |day: &str, agent: &str, f: &Figures| {
        let messages = |party: &str| f.messages.get(party).copied().unwrap_or(0);
        let timing = |t: &Timing| {
            format!(
                "{},{},{},{}",
                t.count,
                opt(t.mean_ms),
                opt(t.p50_le_ms),
                opt(t.p90_le_ms)
            )
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{day},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(agent),
            f.opened,
            f.closed,
            f.contained,
            f.handoffs,
            f.transfers,
            messages("visitor"),
            messages("agent"),
            messages("bot"),
            messages("system"),
            timing(&f.wait),
            timing(&f.first_response),
            timing(&f.resolution),
            f.handled,
            opt(f.mean_handling_ms),
            f.ratings.count,
            f.ratings
                .mean
                .map_or_else(String::new, |m| format!("{m:.2}")),
        );
    };
    if let Some(desk) = &report.desk {
        for day in &desk.days {
            row(&day.day, "", &day.figures);
        }
    }
    for agent in &report.agents {
        for day in &agent.days {
            row(&day.day, agent.agent.as_str(), &day.figures);
        }
    }
    out
}

/// The bot's top lists as CSV (`table=top`): `list,rank,name,count`, the
/// intents (`intent`), then the handed-off questions (`handed_off`, and a
/// last row `handed_off_other` for those not counted apart). Empty but for
/// the header in an agent's own report.
pub fn top_to_csv(report: &Report) -> String {
    let mut out = String::from("list,rank,name,count\n");
    if let Some(desk) = &report.desk {
        let bot = &desk.bot;
        for (list, ranked) in [
            ("intent", &bot.top_intents),
            ("handed_off", &bot.top_handed_off),
        ] {
            for (i, r) in ranked.iter().enumerate() {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "{list},{},{},{}", i + 1, csv_field(&r.name), r.count);
            }
        }
        if bot.handed_off_other > 0 {
            let _ = writeln!(out, "handed_off_other,,,{}", bot.handed_off_other);
        }
    }
    out
}

/// Quotes a field that holds a comma, a quote or a line break, and puts a
/// `'` before one a spreadsheet would run as a formula (a visitor's
/// question can start with `=`).
fn csv_field(value: &str) -> String {
    let guarded;
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{value}");
        guarded.as_str()
    } else {
        value
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(parse_range(Some("2026-03-01"), Some("2026-03-01")).is_ok());
        assert!(matches!(
            parse_range(Some("2026-03-02"), Some("2026-03-01")),
            Err(ReportError::Reversed { .. })
        ));
        assert!(matches!(
            parse_range(Some("2025-01-01"), Some("2026-03-01")),
            Err(ReportError::TooLong { .. })
        ));
        assert!(matches!(
            parse_range(Some("2026-02-30"), Some("2026-03-01")),
            Err(ReportError::BadDate { field: "from", .. })
        ));
        assert!(matches!(
            parse_range(Some("2026-03-01"), None),
            Err(ReportError::BadDate { field: "to", .. })
        ));
    }

    #[test]
    fn percentiles_are_bucket_bounds() {
        let mut buckets = vec![0; BUCKET_BOUNDS_MS.len() + 1];
        assert_eq!(percentile(&buckets, 0.5), None);
        buckets[0] = 5; // ≤ 5 s
        buckets[2] = 4; // ≤ 30 s
        buckets[11] = 1; // past 24 h
        assert_eq!(percentile(&buckets, 0.5), Some(5_000));
        assert_eq!(percentile(&buckets, 0.9), Some(30_000));
        assert_eq!(percentile(&buckets, 1.0), None);
    }
}
