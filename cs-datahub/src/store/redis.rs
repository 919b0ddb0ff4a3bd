//! [`RedisStore`]: a recent window of each conversation, in Redis.
//!
//! Keys (all under the store's prefix, `cs:` by default):
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `conv:{id}` | hash | `data` (the conversation as JSON), `tenant`, `last_seq` (the seq counter) |
//! | `msgs:{id}` | sorted set | the window: member `"{seq}\|{message JSON}"`, score = seq |
//! | `dedup:{id}` | hash | `client_msg_id` → seq, for the messages in the window |
//! | `visitor:{tenant}:{visitor}` | sorted set | conversation ids by creation time |
//! | `agent:{tenant}:{agent}` | set | the agent's assigned conversations |
//! | `open:{tenant}` | sorted set | the tenant's conversations that are not closed, by creation time |
//! | `stats:{tenant}` | hash | `{day}:{counter}` → count |
//! | `vrec:{tenant length}:{tenant}:{visitor}` | hash | a visitor record: `display_name`, `email`, `first_seen`, `last_seen`, `attributes` (JSON) |
//! | `visitors:{tenant}` | sorted set | the tenant's visitor ids by `last_seen` |
//!
//! A visitor record's key carries the tenant's length because both ids may
//! contain `:`, and tenant `a:b` with visitor `c` must not share a key with
//! tenant `a` and visitor `b:c`.
//!
//! `open:{tenant}` is kept by the create and save scripts since schema v2 of
//! this crate; conversations written by an older version and never saved
//! since are not in it.
//!
//! Every write is one Lua script, so it is atomic: the seq counter, the
//! window, the dedup entry and the day's counters move together, and Redis
//! runs scripts one at a time, which is what keeps seqs gap-free under
//! concurrent appenders. Scripts build some key names from the prefix, so
//! the store wants a single Redis node (or a cluster with every key in one
//! hash slot, via a `{…}` prefix).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cs_core::store::{Appended, ConversationQueries, MessageStore, StoreError};
use cs_core::{
    AgentId, Conversation, ConversationId, ConversationState, Message, NewMessage, Seq, TenantId,
    Timestamp, VisitorId,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::store::codec::{self, MAX_BODY_JSON_BYTES};
use crate::store::stats::StatsDelta;
use crate::store::visitors;
use crate::store::{DailyStats, Day, MessageStoreExt, OversizeValue, VisitorRecord, VisitorStore};
use crate::{redact_url, OpenError};

/// A read reached past the window: those messages were evicted from Redis.
/// Carried as the source of [`StoreError::Backend`]; read them from the
/// durable store instead.
#[derive(Debug, thiserror::Error)]
#[error("conversation {conversation}: seqs before {oldest_kept} have left the Redis window of {window} messages; read older history from the SQL store")]
pub struct BeyondWindow {
    /// The conversation.
    pub conversation: ConversationId,
    /// The oldest seq still in the window.
    pub oldest_kept: Seq,
    /// The window size.
    pub window: usize,
}

/// Conversations and the most recent messages of each, in Redis.
///
/// Each conversation keeps its last `window` messages (default 1,000).
/// Older ones are evicted as new ones arrive, and a read that reaches back
/// past the window, whether by `range`, `after` or `recent`, fails with a
/// [`BeyondWindow`] error instead of returning a history with a hole in it.
/// `client_msg_id` deduplication covers the window too: a retry of a message
/// already evicted would be stored again. Seqs, conversations and counters
/// are never evicted. Durability is whatever the Redis server is configured
/// for (AOF with `appendfsync always` for "Ok means on disk").
///
/// ```no_run
/// use cs_datahub::store::RedisStore;
/// # async fn demo() -> Result<(), cs_datahub::OpenError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379", "shop1:", 1_000).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    window: usize,
    backend: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    create: Script,
    append: Script,
    save: Script,
    upsert_visitor: Script,
    touch_visitor: Script,
}

/// KEYS: conv, visitor index, tenant's open set. ARGV: prefix, data, tenant,
/// created_at, day, conversation id, open (1 unless created closed).
/// Returns 1 if created, 0 if the id was taken.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'tenant', ARGV[3], 'last_seq', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
if ARGV[7] == '1' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6]) end
redis.call('HINCRBY', ARGV[1] .. 'stats:' .. ARGV[3], ARGV[5] .. ':conversations', 1)
return 1
"#;

/// KEYS: visitor record, tenant's by-last-seen set. ARGV: visitor id,
/// first_seen, last_seen, attributes, has name (0/1), name, has email (0/1),
/// email. Returns the stored first_seen (an existing record keeps its own).
const UPSERT_VISITOR: &str = r#"
local first = redis.call('HGET', KEYS[1], 'first_seen')
if not first then first = ARGV[2] end
redis.call('HSET', KEYS[1], 'first_seen', first, 'last_seen', ARGV[3], 'attributes', ARGV[4])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'display_name', ARGV[6])
else redis.call('HDEL', KEYS[1], 'display_name') end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'email', ARGV[8])
else redis.call('HDEL', KEYS[1], 'email') end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return first
"#;

/// KEYS: visitor record, tenant's by-last-seen set. ARGV: visitor id, now.
const TOUCH_VISITOR: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'first_seen', ARGV[2], 'attributes', '{}')
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"#;

/// KEYS: (conv, msgs, dedup) per message. ARGV: prefix, window, then
/// (client id or '', payload, day, handoff 0/1) per message.
/// Returns (flag, member) pairs; flag 0 new, 1 duplicate, 2 duplicate but
/// evicted (member is then the seq); or ('unknown', index).
const APPEND: &str = r#"
local prefix = ARGV[1]
local window = tonumber(ARGV[2])
local n = #KEYS / 3
for i = 0, n - 1 do
  if redis.call('EXISTS', KEYS[i * 3 + 1]) == 0 then return {'unknown', tostring(i)} end
end
local out = {}
for i = 0, n - 1 do
  local conv, msgs, dedup = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local cid, payload, day, handoff = ARGV[3 + i * 4], ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4]
  local done = false
  if cid ~= '' then
    local seq = redis.call('HGET', dedup, cid)
    if seq then
      local found = redis.call('ZRANGEBYSCORE', msgs, seq, seq)
      if found[1] then
        out[#out + 1] = '1'; out[#out + 1] = found[1]
      else
        out[#out + 1] = '2'; out[#out + 1] = seq
      end
      done = true
    end
  end
  if not done then
    local seq = redis.call('HINCRBY', conv, 'last_seq', 1)
    local member = seq .. '|' .. payload
    redis.call('ZADD', msgs, seq, member)
    if cid ~= '' then redis.call('HSET', dedup, cid, seq) end
    local kept = redis.call('ZCARD', msgs)
    if kept > window then
      -- Evict the oldest, and their dedup entries with them.
      local old = redis.call('ZRANGE', msgs, 0, kept - window - 1)
      for _, m in ipairs(old) do
        local bar = string.find(m, '|', 1, true)
        local ok, decoded = pcall(cjson.decode, string.sub(m, bar + 1))
        if ok and type(decoded.client_msg_id) == 'string' then
          redis.call('HDEL', dedup, decoded.client_msg_id)
        end
      end
      redis.call('ZREMRANGEBYRANK', msgs, 0, kept - window - 1)
    end
    local stats = prefix .. 'stats:' .. redis.call('HGET', conv, 'tenant')
    redis.call('HINCRBY', stats, day .. ':messages', 1)
    if handoff == '1' then redis.call('HINCRBY', stats, day .. ':handoffs', 1) end
    out[#out + 1] = '0'; out[#out + 1] = member
  end
end
return out
"#;

/// KEYS: conv, tenant's open set. ARGV: prefix, tenant, expected old data,
/// new data, agent set to leave or '', agent set to join or '', conversation
/// id, open (0/1), created_at, then (stats field, increment) pairs.
/// Returns 'ok', 'unknown', or 'changed' (someone saved in between: retry).
const SAVE: &str = r#"
local old = redis.call('HGET', KEYS[1], 'data')
if not old then return 'unknown' end
if old ~= ARGV[3] then return 'changed' end
redis.call('HSET', KEYS[1], 'data', ARGV[4])
if ARGV[5] ~= '' then redis.call('SREM', ARGV[5], ARGV[7]) end
if ARGV[6] ~= '' then redis.call('SADD', ARGV[6], ARGV[7]) end
if ARGV[8] == '1' then redis.call('ZADD', KEYS[2], ARGV[9], ARGV[7])
else redis.call('ZREM', KEYS[2], ARGV[7]) end
local stats = ARGV[1] .. 'stats:' .. ARGV[2]
for i = 10, #ARGV, 2 do
  redis.call('HINCRBY', stats, ARGV[i], ARGV[i + 1])
end
return 'ok'
"#;

const COUNTERS: [&str; 7] = [
    "conversations",
    "messages",
    "first_responses",
    "first_response_ms_total",
    "closed",
    "bot_resolved",
    "handoffs",
];

impl RedisStore {
    /// Connects to Redis at `url`, keeping every key under `prefix` and the
    /// last `window` messages of each conversation (at least 1).
    ///
    /// # Errors
    /// [`OpenError::BadUrl`], or [`OpenError::Unreachable`] naming the URL
    /// without its password.
    pub async fn connect(url: &str, prefix: &str, window: usize) -> Result<Self, OpenError> {
        let shown = redact_url(url);
        let client = redis::Client::open(url).map_err(|e| OpenError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        // Probe once first: the connection manager retries a refused
        // connection for a long while, and a wrong URL should fail fast.
        let unreachable = |source: cs_core::store::BoxError| OpenError::Unreachable {
            url: shown.clone(),
            source,
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Err(_) => return Err(unreachable("no answer within 3 s".into())),
            Ok(Err(e)) => return Err(unreachable(Box::new(e))),
            Ok(Ok(_probe)) => {}
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| OpenError::Unreachable {
                url: shown.clone(),
                source: Box::new(e),
            })?;
        Ok(Self {
            conn,
            prefix: prefix.into(),
            window: window.max(1),
            backend: format!("redis at {shown}").into(),
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE),
                append: Script::new(APPEND),
                save: Script::new(SAVE),
                upsert_visitor: Script::new(UPSERT_VISITOR),
                touch_visitor: Script::new(TOUCH_VISITOR),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many recent messages each conversation keeps.
    pub fn window(&self) -> usize {
        self.window
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn agent_key(&self, tenant: &TenantId, agent: &AgentId) -> String {
        format!("{}agent:{tenant}:{agent}", self.prefix)
    }

    fn open_key(&self, tenant: &TenantId) -> String {
        format!("{}open:{tenant}", self.prefix)
    }

    fn visitor_record_key(&self, tenant: &TenantId, visitor: &VisitorId) -> String {
        format!(
            "{}vrec:{}:{tenant}:{visitor}",
            self.prefix,
            tenant.as_str().len()
        )
    }

    fn visitors_key(&self, tenant: &TenantId) -> String {
        format!("{}visitors:{tenant}", self.prefix)
    }

    /// A visitor record from the fields of its hash (`None` if it has none).
    fn decode_visitor(
        &self,
        tenant: &TenantId,
        id: &str,
        mut fields: std::collections::HashMap<String, String>,
    ) -> Result<Option<VisitorRecord>, StoreError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let millis = |fields: &std::collections::HashMap<String, String>, name: &str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{}: visitor {id:?} of tenant {tenant}: {name} is missing or not a number",
                        self.backend
                    ))
                })
        };
        let first_seen = millis(&fields, "first_seen")?;
        let last_seen = millis(&fields, "last_seen")?;
        let attributes = fields.remove("attributes").unwrap_or_else(|| "{}".into());
        visitors::decode_visitor(
            tenant,
            id,
            fields.remove("display_name"),
            fields.remove("email"),
            first_seen,
            last_seen,
            &attributes,
        )
        .map(Some)
    }

    fn error(&self, e: redis::RedisError) -> StoreError {
        let unavailable = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout();
        if unavailable {
            StoreError::Unavailable {
                backend: self.backend.to_string(),
                source: Box::new(e),
            }
        } else {
            StoreError::Backend {
                backend: self.backend.to_string(),
                source: Box::new(e),
            }
        }
    }

    fn decode_member(
        &self,
        conversation: ConversationId,
        member: &str,
    ) -> Result<Message, StoreError> {
        let corrupt = |what: String| {
            StoreError::Corrupt(format!(
                "{}: conversation {conversation}: {what}",
                self.backend
            ))
        };
        let (seq, json) = member
            .split_once('|')
            .ok_or_else(|| corrupt("a window entry has no seq".into()))?;
        let seq: u64 = seq
            .parse()
            .map_err(|e| corrupt(format!("bad seq {seq:?}: {e}")))?;
        let new: NewMessage =
            serde_json::from_str(json).map_err(|e| corrupt(format!("message {seq}: {e}")))?;
        Ok(Message::from_new(new, Seq::new(seq)))
    }

    /// Runs the append script for `messages` (all in one atomic step).
    async fn run_append(&self, messages: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation.arg(&*self.prefix).arg(self.window);
        for message in messages {
            let payload = serde_json::to_string(message).map_err(|e| StoreError::Backend {
                backend: self.backend.to_string(),
                source: Box::new(e),
            })?;
            if payload.len() > MAX_BODY_JSON_BYTES {
                return Err(StoreError::Backend {
                    backend: self.backend.to_string(),
                    source: Box::new(OversizeValue {
                        field: "message",
                        len: payload.len(),
                        max: MAX_BODY_JSON_BYTES,
                    }),
                });
            }
            let (day, delta) = StatsDelta::appended(message);
            invocation
                .key(self.key("conv", message.conversation))
                .key(self.key("msgs", message.conversation))
                .key(self.key("dedup", message.conversation));
            invocation
                .arg(message.client_msg_id.as_ref().map_or("", |id| id.as_str()))
                .arg(payload)
                .arg(day.0)
                .arg(delta.handoffs);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if reply.first().map(String::as_str) == Some("unknown") {
            let index: usize = reply.get(1).and_then(|i| i.parse().ok()).unwrap_or(0);
            let id = messages
                .get(index)
                .map_or_else(ConversationId::new, |m| m.conversation);
            return Err(StoreError::UnknownConversation(id));
        }
        if reply.len() != messages.len() * 2 {
            return Err(StoreError::Corrupt(format!(
                "{}: the append script answered {} values for {} messages",
                self.backend,
                reply.len(),
                messages.len()
            )));
        }
        reply
            .chunks(2)
            .zip(messages)
            .map(|(pair, sent)| match pair[0].as_str() {
                "0" | "1" => Ok(Appended {
                    message: self.decode_member(sent.conversation, &pair[1])?,
                    duplicate: pair[0] == "1",
                }),
                _ => Err(StoreError::Backend {
                    backend: self.backend.to_string(),
                    source: Box::new(BeyondWindow {
                        conversation: sent.conversation,
                        oldest_kept: Seq::new(pair[1].parse().unwrap_or(0)),
                        window: self.window,
                    }),
                }),
            })
            .collect()
    }

    /// The conversation's last seq and the oldest seq in its window
    /// (`None` if the window is empty), or `UnknownConversation`.
    async fn bounds(&self, conversation: ConversationId) -> Result<(u64, Option<u64>), StoreError> {
        let mut conn = self.conn.clone();
        let (last, oldest): (Option<u64>, Vec<(String, u64)>) = redis::pipe()
            .hget(self.key("conv", conversation), "last_seq")
            .zrange_withscores(self.key("msgs", conversation), 0, 0)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let last = last.ok_or(StoreError::UnknownConversation(conversation))?;
        Ok((last, oldest.first().map(|(_, score)| *score)))
    }

    fn beyond(&self, conversation: ConversationId, oldest_kept: u64) -> StoreError {
        StoreError::Backend {
            backend: self.backend.to_string(),
            source: Box::new(BeyondWindow {
                conversation,
                oldest_kept: Seq::new(oldest_kept),
                window: self.window,
            }),
        }
    }

    /// Messages with `from <= seq <= to`, at most `limit`, checking that the
    /// window still holds `from` if any message at or after it exists.
    async fn read_window(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let (last, oldest) = self.bounds(conversation).await?;
        let from = from.max(1);
        if from > to || from > last || limit == 0 {
            return Ok(Vec::new());
        }
        let oldest = oldest.unwrap_or(last + 1);
        if from < oldest {
            return Err(self.beyond(conversation, oldest));
        }
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("msgs", conversation))
            .arg(from)
            .arg(to)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        members
            .iter()
            .map(|m| self.decode_member(conversation, m))
            .collect()
    }

    async fn load_conversations(&self, ids: Vec<String>) -> Result<Vec<Conversation>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.key("conv", id), "data");
        }
        let mut conn = self.conn.clone();
        let data: Vec<Option<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        data.into_iter()
            .flatten()
            .map(|d| codec::decode_conversation(&d))
            .collect()
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        let data = codec::encode_conversation(&self.backend, conversation)?;
        let (day, _) = StatsDelta::created(conversation);
        let mut conn = self.conn.clone();
        let created: i64 = self
            .scripts
            .create
            .key(self.key("conv", conversation.id()))
            .key(format!(
                "{}visitor:{}:{}",
                self.prefix,
                conversation.tenant(),
                conversation.visitor()
            ))
            .key(self.open_key(conversation.tenant()))
            .arg(&*self.prefix)
            .arg(data)
            .arg(conversation.tenant().as_str())
            .arg(conversation.created_at().as_millis())
            .arg(day.0)
            .arg(conversation.id().to_string())
            .arg(u8::from(is_open(conversation)))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::ConversationExists(conversation.id()))
        }
    }

    async fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        let data = codec::encode_conversation(&self.backend, conversation)?;
        let key = self.key("conv", conversation.id());
        // Optimistic: compute the change from the state read, and let the
        // script apply it only if nobody saved in between.
        for _ in 0..16 {
            let mut conn = self.conn.clone();
            let old: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("data")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            let old = old.ok_or(StoreError::UnknownConversation(conversation.id()))?;
            let before = codec::decode_conversation(&old)?;
            let tenant = conversation.tenant();
            let agent_set = |state: &ConversationState| match state {
                ConversationState::Assigned(agent) => self.agent_key(tenant, agent),
                _ => String::new(),
            };
            let (leave, join) = (agent_set(before.state()), agent_set(conversation.state()));
            let mut invocation = self.scripts.save.key(&key);
            invocation
                .key(self.open_key(tenant))
                .arg(&*self.prefix)
                .arg(tenant.as_str())
                .arg(&old)
                .arg(&data)
                .arg(if leave == join { "" } else { leave.as_str() })
                .arg(join.as_str())
                .arg(conversation.id().to_string())
                .arg(u8::from(is_open(conversation)))
                .arg(conversation.created_at().as_millis());
            for (day, delta) in StatsDelta::saved(&before, conversation) {
                for (name, value) in COUNTERS.iter().zip(delta_values(&delta)) {
                    if value != 0 {
                        invocation.arg(format!("{}:{name}", day.0)).arg(value);
                    }
                }
            }
            let verdict: String = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            match verdict.as_str() {
                "ok" => return Ok(()),
                "unknown" => return Err(StoreError::UnknownConversation(conversation.id())),
                _ => continue,
            }
        }
        Err(StoreError::Backend {
            backend: self.backend.to_string(),
            source: "the conversation kept changing under concurrent saves; retry".into(),
        })
    }

    async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
        let mut conn = self.conn.clone();
        let data: Option<String> = redis::cmd("HGET")
            .arg(self.key("conv", id))
            .arg("data")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        codec::decode_conversation(&data.ok_or(StoreError::UnknownConversation(id))?)
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        let mut out = self.run_append(std::slice::from_ref(&message)).await?;
        out.pop()
            .ok_or_else(|| StoreError::Corrupt("the append script answered nothing".into()))
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        Ok(Seq::new(self.bounds(conversation).await?.0))
    }

    async fn range(
        &self,
        conversation: ConversationId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_window(conversation, from.get(), to.get(), limit)
            .await
    }

    async fn recent(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let (last, _) = self.bounds(conversation).await?;
        let from = last.saturating_sub(n as u64) + 1;
        self.read_window(conversation, from, last, n).await
    }

    async fn after(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_window(conversation, after.next().get(), u64::MAX, limit)
            .await
    }
}

fn is_open(conversation: &Conversation) -> bool {
    !matches!(conversation.state(), ConversationState::Closed)
}

fn delta_values(d: &StatsDelta) -> [i64; 7] {
    [
        d.conversations,
        d.messages,
        d.first_responses,
        d.first_response_ms_total,
        d.closed,
        d.bot_resolved,
        d.handoffs,
    ]
}

#[async_trait]
impl ConversationQueries for RedisStore {
    async fn visitor_conversations(
        &self,
        tenant: &TenantId,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(format!("{}visitor:{tenant}:{visitor}", self.prefix))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.load_conversations(ids).await
    }

    async fn agent_open_conversations(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.agent_key(tenant, agent))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut found = self.load_conversations(ids).await?;
        found.sort_by_key(|c| (c.created_at(), c.id()));
        Ok(found)
    }

    async fn open_conversations(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        // Score is the creation time; equal scores come back in id order,
        // as in the SQL stores.
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.open_key(tenant))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.load_conversations(ids).await
    }
}

/// A window of recent messages cannot fold a conversation's whole log at
/// its close, so the Redis store keeps no report counters: a desk on Redis
/// alone answers reports with this error. [`TieredStore`](crate::store::TieredStore)
/// keeps them in its SQL store.
#[async_trait]
impl cs_core::store::ReportStore for RedisStore {
    fn set_report_zone(&self, _tenant: &TenantId, _zone: cs_core::store::ReportZone) {}

    async fn add_report_counts(
        &self,
        _tenant: &TenantId,
        _deltas: &cs_core::store::reports::Deltas,
    ) -> Result<(), StoreError> {
        Err(self.no_reports())
    }

    async fn report_counts(
        &self,
        _tenant: &TenantId,
        _from: cs_core::store::ReportDay,
        _to: cs_core::store::ReportDay,
    ) -> Result<Vec<cs_core::store::Count>, StoreError> {
        Err(self.no_reports())
    }
}

impl RedisStore {
    fn no_reports(&self) -> StoreError {
        StoreError::Backend {
            backend: self.backend.to_string(),
            source:
                "the Redis store keeps no report counters; use a SQL store, or TieredStore over one"
                    .into(),
        }
    }
}

#[async_trait]
impl MessageStoreExt for RedisStore {
    async fn append_all(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.run_append(&messages).await
    }

    async fn daily_stats(
        &self,
        tenant: &TenantId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailyStats>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let days: Vec<Day> = (from.0..=to.0).map(Day).collect();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{}stats:{tenant}", self.prefix));
        for day in &days {
            for name in COUNTERS {
                cmd.arg(format!("{}:{name}", day.0));
            }
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<u64>> = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for (day, v) in days.iter().zip(values.chunks(COUNTERS.len())) {
            if v.iter().all(Option::is_none) {
                continue;
            }
            let c = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
            out.push(DailyStats {
                day: *day,
                conversations: c(0),
                messages: c(1),
                first_responses: c(2),
                first_response_ms_total: c(3),
                closed: c(4),
                bot_resolved: c(5),
                handoffs: c(6),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl VisitorStore for RedisStore {
    async fn upsert_visitor(&self, record: &VisitorRecord) -> Result<VisitorRecord, StoreError> {
        let attributes = visitors::encode_attributes(&self.backend, record)?;
        let mut conn = self.conn.clone();
        let first_seen: i64 = self
            .scripts
            .upsert_visitor
            .key(self.visitor_record_key(&record.tenant, &record.id))
            .key(self.visitors_key(&record.tenant))
            .arg(record.id.as_str())
            .arg(codec::millis_to_i64(record.first_seen))
            .arg(codec::millis_to_i64(record.last_seen))
            .arg(attributes)
            .arg(u8::from(record.display_name.is_some()))
            .arg(record.display_name.as_deref().unwrap_or(""))
            .arg(u8::from(record.email.is_some()))
            .arg(record.email.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let first_seen = u64::try_from(first_seen).map_err(|_| {
            StoreError::Corrupt(format!(
                "{}: visitor {} of tenant {} has first_seen {first_seen}",
                self.backend, record.id, record.tenant
            ))
        })?;
        Ok(VisitorRecord {
            first_seen: Timestamp::from_millis(first_seen),
            ..record.clone()
        })
    }

    async fn visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
    ) -> Result<Option<VisitorRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.visitor_record_key(tenant, id))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.decode_visitor(tenant, id.as_str(), fields)
    }

    async fn touch_visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .touch_visitor
            .key(self.visitor_record_key(tenant, id))
            .key(self.visitors_key(tenant))
            .arg(id.as_str())
            .arg(codec::millis_to_i64(now))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn recent_visitors(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<VisitorRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.visitors_key(tenant))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            let visitor = VisitorId::new(id).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: the visitors of tenant {tenant} list a bad id: {e}",
                    self.backend
                ))
            })?;
            pipe.cmd("HGETALL")
                .arg(self.visitor_record_key(tenant, &visitor));
        }
        let records: Vec<std::collections::HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(records) {
            if let Some(record) = self.decode_visitor(tenant, id, fields)? {
                out.push(record);
            }
        }
        Ok(out)
    }
}
