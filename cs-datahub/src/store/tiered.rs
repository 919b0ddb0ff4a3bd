//! [`TieredStore`]: Redis as a hot cache of recent messages in front of a
//! SQL store.
//!
//! The SQL store (the *cold* store) is the only authority: it assigns seqs,
//! deduplicates `client_msg_id`s and keeps conversations, visitors and
//! counters. Redis holds, per conversation, a *window*: a sorted set under
//! `{prefix}win:{conversation id}` whose members are stored messages as JSON,
//! scored by seq, at most `window` of them, expiring after `ttl` untouched.
//! A window's floor is its lowest seq: a restart after a gap moves it up.
//!
//! [`TieredStore`]'s own docs say why no read is ever stale or gapped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cs_core::store::{Appended, ConversationQueries, MessageStore, StoreError};
use cs_core::{
    AgentId, Conversation, ConversationId, Message, NewMessage, Seq, TenantId, Timestamp, VisitorId,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::store::{DailyStats, Day, MessageStoreExt, VisitorRecord, VisitorStore};
use crate::{redact_url, OpenError};

/// How a [`TieredStore`] uses Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TieredConfig {
    /// Every key starts with this (default `cs:hot:`). Give each store on a
    /// shared Redis its own.
    pub prefix: String,
    /// The most messages kept per conversation (default 200; at least 1).
    /// `recent(n)` with `n` above it always goes to SQL.
    pub window: usize,
    /// A conversation's window expires after this long without a write
    /// (default 24 hours), so idle conversations leave Redis.
    pub ttl: Duration,
    /// The longest a Redis call (or a connection attempt) may take before
    /// SQL answers instead (default 250 ms).
    pub timeout: Duration,
    /// When to stop trying Redis, and for how long (default: after 3
    /// connection failures in a row, for 1 s).
    pub breaker: BreakerConfig,
}

impl Default for TieredConfig {
    fn default() -> Self {
        Self {
            prefix: "cs:hot:".into(),
            window: 200,
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_millis(250),
            breaker: BreakerConfig {
                failures_to_open: 3,
                open_for: Duration::from_secs(1),
            },
        }
    }
}

/// What a [`TieredStore`]'s cache has done since it was made.
///
/// Every `recent`, `after` and `range` call that asks for at least one
/// message counts once, as a hit or a miss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieredStats {
    /// Reads answered from the Redis window.
    pub hits: u64,
    /// Reads answered by the SQL store: the window did not hold the span,
    /// was behind SQL, did not decode, or Redis failed or was bypassed.
    pub misses: u64,
    /// Redis calls (reads, pushes, warm-ups, invalidations, connection
    /// attempts) that failed or timed out, plus windows that did not decode.
    pub redis_errors: u64,
    /// Redis calls skipped because the breaker was open after failures.
    pub bypassed: u64,
}

/// A SQL store with Redis in front as a cache of each conversation's recent
/// messages.
///
/// Writes go to the SQL store first, then the stored message is pushed onto
/// the conversation's Redis window. `recent`, `after` and `range` are served
/// from the window when it holds the whole answer, else by SQL (a `recent`
/// answered by SQL warms the window). Everything else goes to SQL, and
/// visitor records live there only. [`TieredStats`] counts hits, misses and
/// Redis failures; a failing or unreachable Redis never fails a call.
///
/// # Why a read never returns a stale or gapped answer
///
/// Three facts carry the argument:
///
/// 1. **A message in a window is exactly the message SQL stored at that
///    seq.** Members are only ever written from what the SQL store returned
///    (an append's result, or rows read back), and a stored message never
///    changes. So any message the window holds is right forever.
/// 2. **Every answer is checked for completeness, message by message.** A
///    read decodes the members it got and serves them only if their seqs are
///    exactly the consecutive run it needs; one missing seq and SQL answers.
///    The window is kept contiguous (the push script only extends it at
///    `last + 1`, and restarts it at a message after a gap), but no read
///    relies on that: it checks.
/// 3. **Where the answer ends is SQL's word.** `recent` and `after` ask the
///    SQL store for `last_seq` (one primary-key lookup, run concurrently with
///    the Redis read) and serve from Redis only if the window reaches it. So
///    a window left behind (a push that failed, with an invalidation that
///    failed too, say while Redis was unreachable) is noticed by the next
///    read, which goes to SQL. `range` needs no such check when the window
///    holds the whole span asked for, since those messages can no longer
///    change; if the span reaches past the window, it asks `last_seq` too.
///
/// A cached answer is right at the moment `last_seq` was read (every seq up
/// to it was committed then, and the window holds them), which lies inside
/// the call, as with any read.
///
/// Invalidating a window after a failed push, and restarting one after a
/// gap, are therefore about memory and hit rates, never about correctness.
///
/// # Faults
///
/// Redis is never required. Every Redis call has a timeout; a failure is
/// counted ([`TieredStats::redis_errors`]) and the SQL store answers. After a
/// few connection failures in a row a breaker stops calling Redis for a
/// while ([`TieredStats::bypassed`]), so an unreachable Redis costs nothing
/// per call. The store opens even when Redis is down, and connects when it
/// comes up. A message that does not decode is counted as an error, its
/// window dropped, and SQL answers.
///
/// If the SQL database is ever restored from a backup, delete the windows
/// (every key under the prefix): they may hold messages the restored
/// database no longer has.
///
/// ```no_run
/// use cs_datahub::store::{MessageStoreExt, TieredConfig, TieredStore};
/// # async fn demo(sql: impl MessageStoreExt) -> Result<(), cs_datahub::OpenError> {
/// // `sql` is a SqliteStore, PostgresStore or MySqlStore.
/// let store = TieredStore::new(sql, "redis://127.0.0.1:6379", TieredConfig::default())?;
/// // … use it as any MessageStore; then:
/// let stats = store.stats();
/// println!("{} hits, {} misses", stats.hits, stats.misses);
/// # Ok(()) }
/// ```
pub struct TieredStore<Cold> {
    cold: Cold,
    hot: Arc<Hot>,
}

impl<Cold: Clone> Clone for TieredStore<Cold> {
    fn clone(&self) -> Self {
        Self {
            cold: self.cold.clone(),
            hot: Arc::clone(&self.hot),
        }
    }
}

/// The Redis side: the connection, made lazily, and what guards it.
struct Hot {
    client: redis::Client,
    /// Cloned for each call (a cheap handle); `None` until the first
    /// successful connect. The connection manager reconnects by itself after
    /// that.
    conn: parking_lot::Mutex<Option<ConnectionManager>>,
    /// Held by the one call that is connecting; the others go to SQL rather
    /// than queue behind it.
    connecting: tokio::sync::Mutex<()>,
    breaker: CircuitBreaker,
    config: TieredConfig,
    /// The Redis URL without its password, for logs.
    shown_url: String,
    push: Script,
    warm: Script,
    hits: AtomicU64,
    misses: AtomicU64,
    redis_errors: AtomicU64,
    bypassed: AtomicU64,
}

/// KEYS: window keys, each once. ARGV: window size, ttl in ms, then
/// (key index, seq, member) triples, each key's in seq order.
///
/// Extends a window only with `last + 1`. A message the window already
/// reaches (`seq <= last`: a reader warmed it first, or pushes crossed) is
/// skipped. After a gap (`seq > last + 1`: the cache missed a message) the
/// window restarts at this message, its new floor; an empty window starts
/// at it too. Returns how many windows restarted.
const PUSH: &str = r#"
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local restarted = 0
-- Per key: the window's last seq as this script moves it (false: empty),
-- and the (score, member) pairs to add, so each key costs one ZRANGE and
-- one ZADD rather than two calls per message.
local last, adds = {}, {}
for i = 3, #ARGV, 3 do
  local k = tonumber(ARGV[i])
  local seq = tonumber(ARGV[i + 1])
  if last[k] == nil then
    local top = redis.call('ZRANGE', KEYS[k], -1, -1, 'WITHSCORES')
    last[k] = top[2] and tonumber(top[2]) or false
    adds[k] = {}
  end
  local l = last[k]
  if l == false or l == seq - 1 then
    local a = adds[k]
    a[#a + 1] = seq; a[#a + 1] = ARGV[i + 2]
    last[k] = seq
  elseif l < seq - 1 then
    redis.call('DEL', KEYS[k])
    adds[k] = {seq, ARGV[i + 2]}
    last[k] = seq
    restarted = restarted + 1
  end
end
for k = 1, #KEYS do
  local a = adds[k]
  if a then
    -- unpack is bounded by Lua's stack: at most 1,000 pairs per ZADD.
    for j = 1, #a, 2000 do
      redis.call('ZADD', KEYS[k], unpack(a, j, math.min(j + 1999, #a)))
    end
  end
  local n = redis.call('ZCARD', KEYS[k])
  if n > window then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, n - window - 1) end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return restarted
"#;

/// KEYS: a window. ARGV: window size, ttl in ms, first seq, then the members
/// for first, first + 1, … (a consecutive run read from SQL).
///
/// Merges the run into the window when they overlap or touch (the union of
/// two runs of right messages that touch is one run of right messages);
/// replaces the window when the run is newer with a gap between; leaves a
/// newer window alone. Returns 1 if the window changed.
const WARM: &str = r#"
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = tonumber(ARGV[3])
local last = first + (#ARGV - 4)
local key = KEYS[1]
local low = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local high = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local lo, hi = nil, nil
if low[2] then lo, hi = tonumber(low[2]), tonumber(high[2]) end
if lo ~= nil and first <= hi + 1 and lo <= last + 1 then
  for s = first, last do
    if s < lo or s > hi then redis.call('ZADD', key, s, ARGV[4 + s - first]) end
  end
elseif lo == nil or last > hi then
  redis.call('DEL', key)
  for s = first, last do redis.call('ZADD', key, s, ARGV[4 + s - first]) end
else
  return 0
end
local n = redis.call('ZCARD', key)
if n > window then redis.call('ZREMRANGEBYRANK', key, 0, n - window - 1) end
redis.call('PEXPIRE', key, ttl)
return 1
"#;

/// How a Redis call went.
enum Outcome<T> {
    Done(T),
    /// It failed or timed out (counted and logged).
    Failed,
    /// It was not tried: the breaker is open, or another call is connecting.
    Bypassed,
}

impl<T> Outcome<T> {
    fn ok(self) -> Option<T> {
        match self {
            Outcome::Done(v) => Some(v),
            Outcome::Failed | Outcome::Bypassed => None,
        }
    }
}

impl Hot {
    /// A connection if there is one, or the result of making one now.
    /// `Ok(None)` when another call is connecting at this moment.
    async fn connection(&self) -> Result<Option<ConnectionManager>, redis::RedisError> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(Some(conn));
        }
        let Ok(_connecting) = self.connecting.try_lock() else {
            return Ok(None);
        };
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(Some(conn));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.config.timeout)
            .set_response_timeout(self.config.timeout)
            // Reconnects after a drop: one quick retry, then the breaker decides.
            .set_number_of_retries(1)
            .set_factor(10)
            .set_max_delay(100);
        let connect = ConnectionManager::new_with_config(self.client.clone(), config);
        let conn = match tokio::time::timeout(self.config.timeout, connect).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting took longer than the timeout",
                )
                .into())
            }
        };
        *self.conn.lock() = Some(conn.clone());
        Ok(Some(conn))
    }

    /// Runs one Redis call under the breaker and the timeout, counting and
    /// logging what goes wrong.
    async fn run<T, F, Fut>(&self, what: &'static str, call: F) -> Outcome<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.try_acquire().is_err() {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return Outcome::Bypassed;
        }
        let conn = match self.connection().await {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                // Let a half-open breaker's trial pass to the next call.
                self.breaker.record_neutral();
                self.bypassed.fetch_add(1, Ordering::Relaxed);
                return Outcome::Bypassed;
            }
            Err(e) => {
                self.failed(what, &e, true);
                return Outcome::Failed;
            }
        };
        match tokio::time::timeout(self.config.timeout, call(conn)).await {
            Ok(Ok(value)) => {
                self.breaker.record_success();
                Outcome::Done(value)
            }
            Ok(Err(e)) => {
                // A server that answers with an error (a wrong type under our
                // key, a script error) is up: only lost connections trip the
                // breaker.
                let connection_lost = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout();
                self.failed(what, &e, connection_lost);
                Outcome::Failed
            }
            Err(_) => {
                self.failed(what, &"no answer within the timeout", true);
                Outcome::Failed
            }
        }
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display, connection_lost: bool) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        if !connection_lost {
            self.breaker.record_success();
            tracing::warn!(redis = %self.shown_url, "Redis cache {what} failed, SQL answers: {error}");
            return;
        }
        let was_open = matches!(self.breaker.state(), BreakerState::Open { .. });
        self.breaker.record_failure();
        let open = matches!(self.breaker.state(), BreakerState::Open { .. });
        if open && !was_open {
            tracing::warn!(
                redis = %self.shown_url,
                "Redis cache unreachable ({what}: {error}); SQL answers everything for the next {:?}",
                self.config.breaker.open_for
            );
        } else {
            tracing::debug!(redis = %self.shown_url, "Redis cache {what} failed, SQL answers: {error}");
        }
    }

    fn window_key(&self, conversation: ConversationId) -> String {
        format!("{}win:{conversation}", self.config.prefix)
    }

    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Decodes window members. `Err` for data that is not a message of this
    /// conversation: the caller drops the window.
    fn decode(
        &self,
        conversation: ConversationId,
        members: &[String],
    ) -> Result<Vec<Message>, String> {
        members
            .iter()
            .map(|member| {
                let message: Message = serde_json::from_str(member)
                    .map_err(|e| format!("a member does not decode: {e}"))?;
                if message.conversation != conversation {
                    return Err(format!(
                        "a member belongs to conversation {}",
                        message.conversation
                    ));
                }
                Ok(message)
            })
            .collect()
    }

    /// The window's messages, decoded; on bad data, counts it, drops the
    /// window and returns `None`.
    async fn decode_or_drop(
        &self,
        conversation: ConversationId,
        members: &[String],
    ) -> Option<Vec<Message>> {
        match self.decode(conversation, members) {
            Ok(messages) => Some(messages),
            Err(why) => {
                self.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    redis = %self.shown_url,
                    %conversation,
                    "dropping a Redis window that does not decode ({why}); SQL answers"
                );
                self.invalidate(&[conversation]).await;
                None
            }
        }
    }

    /// Deletes windows. Best effort: correctness never depends on it (see
    /// the module docs), only memory and the hit rate.
    async fn invalidate(&self, conversations: &[ConversationId]) {
        let keys: Vec<String> = conversations.iter().map(|c| self.window_key(*c)).collect();
        let outcome = self
            .run("invalidation", |mut conn| async move {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if let Outcome::Failed = outcome {
            tracing::warn!(
                redis = %self.shown_url,
                "could not drop {} Redis window(s) after a failed push; reads compare with SQL's last seq and will not serve them stale",
                conversations.len()
            );
        }
    }

    /// Pushes newly stored messages (in seq order per conversation) onto
    /// their windows. Never fails: a failed push drops the windows it
    /// touched, if Redis lets it.
    async fn push(&self, stored: &[&Message]) {
        if stored.is_empty() {
            return;
        }
        let mut conversations: Vec<ConversationId> = Vec::new();
        let mut invocation = self.push.prepare_invoke();
        invocation
            .arg(self.config.window)
            .arg(ttl_millis(self.config.ttl));
        for message in stored {
            let index = match conversations
                .iter()
                .position(|c| *c == message.conversation)
            {
                Some(i) => i,
                None => {
                    conversations.push(message.conversation);
                    invocation.key(self.window_key(message.conversation));
                    conversations.len() - 1
                }
            };
            let Ok(member) = serde_json::to_string(message) else {
                // Cannot happen for a message the SQL store just encoded;
                // skipping it leaves a gap the next push and every read detect.
                continue;
            };
            invocation.arg(index + 1).arg(message.seq.get()).arg(member);
        }
        let outcome = self
            .run("push", |mut conn| async move {
                invocation.invoke_async::<u64>(&mut conn).await
            })
            .await;
        match outcome {
            Outcome::Done(restarted) if restarted > 0 => tracing::debug!(
                redis = %self.shown_url,
                "{restarted} Redis window(s) restarted after a gap"
            ),
            Outcome::Done(_) | Outcome::Bypassed => {}
            Outcome::Failed => {
                tracing::warn!(
                    redis = %self.shown_url,
                    conversations = conversations.len(),
                    "stored in SQL, but pushing to the Redis window failed; dropping the window(s)"
                );
                self.invalidate(&conversations).await;
            }
        }
    }

    /// Merges messages read from SQL (a consecutive run) into the window.
    async fn warm(&self, conversation: ConversationId, messages: &[Message]) {
        let take = messages.len().min(self.config.window);
        let run = &messages[messages.len() - take..];
        let Some(first) = run.first() else { return };
        if !consecutive(run, first.seq.get()) {
            return;
        }
        let mut invocation = self.warm.key(self.window_key(conversation));
        invocation
            .arg(self.config.window)
            .arg(ttl_millis(self.config.ttl))
            .arg(first.seq.get());
        for message in run {
            let Ok(member) = serde_json::to_string(message) else {
                return;
            };
            invocation.arg(member);
        }
        let _ = self
            .run("warm-up", |mut conn| async move {
                invocation.invoke_async::<u64>(&mut conn).await
            })
            .await;
    }

    /// The window's members with `from <= seq <= to`, at most `limit`.
    async fn read_span(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Option<Vec<Message>> {
        let key = self.window_key(conversation);
        let limit = limit.min(self.config.window);
        let members = self
            .run("read", |mut conn| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(from)
                    .arg(to)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await
            .ok()?;
        self.decode_or_drop(conversation, &members).await
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whether `messages` have seqs `first, first + 1, …` with no hole.
fn consecutive(messages: &[Message], first: u64) -> bool {
    messages
        .iter()
        .zip(first..)
        .all(|(m, expected)| m.seq.get() == expected)
}

/// The longest prefix of `messages` whose seqs run `from, from + 1, …`,
/// ending at or before `end`.
fn run_from(mut messages: Vec<Message>, from: u64, end: u64) -> Vec<Message> {
    let keep = messages
        .iter()
        .zip(from..=end)
        .take_while(|(m, expected)| m.seq.get() == *expected)
        .count();
    messages.truncate(keep);
    messages
}

impl<Cold> TieredStore<Cold> {
    /// Puts Redis at `redis_url` in front of `cold`. Connects on first use,
    /// not here: a Redis that is down now only means SQL answers until it is
    /// up.
    ///
    /// # Errors
    /// [`OpenError::BadUrl`] if `redis_url` is not a Redis URL.
    pub fn new(cold: Cold, redis_url: &str, config: TieredConfig) -> Result<Self, OpenError> {
        let shown_url = redact_url(redis_url);
        let client = redis::Client::open(redis_url).map_err(|e| OpenError::BadUrl {
            url: shown_url.clone(),
            reason: e.to_string(),
        })?;
        let config = TieredConfig {
            window: config.window.max(1),
            ..config
        };
        Ok(Self {
            cold,
            hot: Arc::new(Hot {
                client,
                conn: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                breaker: CircuitBreaker::new(config.breaker.clone()),
                config,
                shown_url,
                push: Script::new(PUSH),
                warm: Script::new(WARM),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                redis_errors: AtomicU64::new(0),
                bypassed: AtomicU64::new(0),
            }),
        })
    }

    /// The SQL store behind the cache.
    pub fn cold(&self) -> &Cold {
        &self.cold
    }

    /// The configuration in use.
    pub fn config(&self) -> &TieredConfig {
        &self.hot.config
    }

    /// The counters so far (shared by clones of this store).
    pub fn stats(&self) -> TieredStats {
        TieredStats {
            hits: self.hot.hits.load(Ordering::Relaxed),
            misses: self.hot.misses.load(Ordering::Relaxed),
            redis_errors: self.hot.redis_errors.load(Ordering::Relaxed),
            bypassed: self.hot.bypassed.load(Ordering::Relaxed),
        }
    }
}

impl<Cold: MessageStoreExt> TieredStore<Cold> {
    /// Messages `from..=want_end` (at most `limit`): from the window when it
    /// holds them all up to SQL's last seq, else from `cold_read`.
    /// `last_now` runs SQL's `last_seq` beside the Redis read rather than
    /// after it (for `after`, whose answer nearly always reaches the end).
    async fn span<F, Fut>(
        &self,
        conversation: ConversationId,
        from: u64,
        want_end: u64,
        limit: usize,
        last_now: bool,
        cold_read: F,
    ) -> Result<Vec<Message>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Message>, StoreError>>,
    {
        let hot = &self.hot;
        let (cached, last) = if last_now {
            let (cached, last) = tokio::join!(
                hot.read_span(conversation, from, want_end, limit),
                self.cold.last_seq(conversation)
            );
            (cached, Some(last?.get()))
        } else {
            (
                hot.read_span(conversation, from, want_end, limit).await,
                None,
            )
        };
        if let Some(cached) = cached {
            let run = run_from(cached, from, want_end);
            let reached = from + run.len() as u64; // one past the run's end
            if reached > want_end {
                // The whole span, and stored messages never change: no need
                // to ask SQL where the conversation ends.
                hot.hit();
                return Ok(run);
            }
            let last = match last {
                Some(last) => last,
                None => self.cold.last_seq(conversation).await?.get(),
            };
            // Everything up to SQL's last seq is in the run: the answer is
            // complete as of that read. (`last` may even be behind the run
            // when a push landed between the two reads; cutting at `last`
            // keeps the answer true at the moment SQL was read.)
            if last < reached {
                hot.hit();
                let mut run = run;
                run.truncate(last.saturating_sub(from - 1) as usize);
                return Ok(run);
            }
        }
        hot.miss();
        cold_read().await
    }
}

#[async_trait]
impl<Cold: MessageStoreExt> MessageStore for TieredStore<Cold> {
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        self.cold.create_conversation(conversation).await
    }

    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        self.cold.save_conversation(conversation).await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        self.cold.conversation(id).await
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        let appended = self.cold.append(message).await?;
        // A retry changes nothing: the original is in SQL, and in the window
        // if it was ever pushed.
        if !appended.duplicate {
            self.hot.push(&[&appended.message]).await;
        }
        Ok(appended)
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        // SQL's counter is the truth the window is checked against.
        self.cold.last_seq(conversation).await
    }

    async fn range(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let start = from.get().max(1);
        if limit == 0 || start > to.get() {
            return self.cold.range(conversation, from, to, limit).await;
        }
        let want_end = to.get().min(start.saturating_add(limit as u64 - 1));
        self.span(conversation, start, want_end, limit, false, || {
            self.cold.range(conversation, from, to, limit)
        })
        .await
    }

    async fn recent(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let hot = &self.hot;
        if n == 0 {
            return self.cold.recent(conversation, n).await;
        }
        let take = n.min(hot.config.window);
        let key = hot.window_key(conversation);
        let newest = hot.run("read", |mut conn| async move {
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(-(take as i64))
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await
        });
        let (newest, last) = tokio::join!(newest, self.cold.last_seq(conversation));
        let last = last?.get();
        if let Some(members) = newest.ok() {
            if let Some(cached) = hot.decode_or_drop(conversation, &members).await {
                // The answer is seqs last - want + 1 ..= last, all of them.
                let want = (n as u64).min(last);
                let first = last - want + 1;
                let run = run_from(
                    cached
                        .into_iter()
                        .skip_while(|m| m.seq.get() < first)
                        .collect(),
                    first,
                    last,
                );
                if run.len() as u64 == want {
                    hot.hit();
                    return Ok(run);
                }
            }
        }
        hot.miss();
        let messages = self.cold.recent(conversation, n).await?;
        hot.warm(conversation, &messages).await;
        Ok(messages)
    }

    async fn after(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let Some(start) = after.get().checked_add(1) else {
            return self.cold.after(conversation, after, limit).await;
        };
        if limit == 0 {
            return self.cold.after(conversation, after, limit).await;
        }
        let want_end = start.saturating_add(limit as u64 - 1);
        self.span(conversation, start, want_end, limit, true, || {
            self.cold.after(conversation, after, limit)
        })
        .await
    }
}

/// The queries read SQL, which holds every conversation.
#[async_trait]
impl<Cold: MessageStoreExt> ConversationQueries for TieredStore<Cold> {
    async fn visitor_conversations(
        &self,
        tenant: &TenantId,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.cold
            .visitor_conversations(tenant, visitor, limit)
            .await
    }

    async fn agent_open_conversations(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.cold.agent_open_conversations(tenant, agent).await
    }

    async fn open_conversations(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.cold.open_conversations(tenant, limit).await
    }
}

#[async_trait]
impl<Cold: MessageStoreExt> MessageStoreExt for TieredStore<Cold> {
    async fn append_all(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        let appended = self.cold.append_all(messages).await?;
        // Each conversation's new messages in seq order, as the push script
        // wants them; retries are skipped as in `append`.
        let mut fresh: Vec<&Message> = appended
            .iter()
            .filter(|a| !a.duplicate)
            .map(|a| &a.message)
            .collect();
        fresh.sort_by_key(|m| (m.conversation, m.seq));
        self.hot.push(&fresh).await;
        Ok(appended)
    }

    async fn daily_stats(
        &self,
        tenant: &TenantId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailyStats>, StoreError> {
        self.cold.daily_stats(tenant, from, to).await
    }
}

/// Visitor records live in the SQL store only.
/// Reports are the SQL store's: every write that counts goes through it.
#[async_trait]
impl<Cold: MessageStoreExt + cs_core::store::ReportStore> cs_core::store::ReportStore
    for TieredStore<Cold>
{
    fn set_report_zone(&self, tenant: &TenantId, zone: cs_core::store::ReportZone) {
        self.cold.set_report_zone(tenant, zone);
    }

    async fn add_report_counts(
        &self,
        tenant: &TenantId,
        deltas: &cs_core::store::reports::Deltas,
    ) -> Result<(), StoreError> {
        self.cold.add_report_counts(tenant, deltas).await
    }

    async fn report_counts(
        &self,
        tenant: &TenantId,
        from: cs_core::store::ReportDay,
        to: cs_core::store::ReportDay,
    ) -> Result<Vec<cs_core::store::Count>, StoreError> {
        self.cold.report_counts(tenant, from, to).await
    }
}

#[async_trait]
impl<Cold: MessageStoreExt + VisitorStore> VisitorStore for TieredStore<Cold> {
    async fn upsert_visitor(&self, record: &VisitorRecord) -> Result<VisitorRecord, StoreError> {
        self.cold.upsert_visitor(record).await
    }

    async fn visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
    ) -> Result<Option<VisitorRecord>, StoreError> {
        self.cold.visitor(tenant, id).await
    }

    async fn touch_visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.cold.touch_visitor(tenant, id, now).await
    }

    async fn recent_visitors(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<VisitorRecord>, StoreError> {
        self.cold.recent_visitors(tenant, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cs_core::Party;

    fn messages(c: ConversationId, seqs: &[u64]) -> Vec<Message> {
        seqs.iter()
            .map(|&s| Message::from_new(NewMessage::text(c, Party::Bot, "x"), Seq::new(s)))
            .collect()
    }

    #[test]
    fn a_run_stops_at_the_first_hole_and_at_the_end() {
        let c = ConversationId::new();
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq.get()).collect::<Vec<_>>();
        assert_eq!(seqs(run_from(messages(c, &[3, 4, 6]), 3, 10)), vec![3, 4]);
        assert_eq!(seqs(run_from(messages(c, &[3, 4, 5]), 3, 4)), vec![3, 4]);
        assert!(run_from(messages(c, &[4, 5]), 3, 10).is_empty());
        assert!(consecutive(&messages(c, &[7, 8, 9]), 7));
        assert!(!consecutive(&messages(c, &[7, 9]), 7));
    }
}
