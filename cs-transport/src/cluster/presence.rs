//! [`ClusterPresence`]: which parties are connected on which live node.
//!
//! # Data model
//!
//! Under the prefix `P`, for node `N` and tenant `T`:
//!
//! - `P nodes`: sorted set, node → its last heartbeat in ms by the Redis
//!   server's clock. A node is live while its heartbeat is younger than the
//!   ttl; readers prune the rest.
//! - `P presence:N \x1f T`: hash, one field per party of `T` connected on
//!   `N` (the party as JSON, as serde writes [`Party`]). Reading a tenant
//!   costs one `HKEYS` per live node, whatever the other tenants hold.
//! - `P tenants:N`: set of the tenants that have a hash on `N`, so a
//!   heartbeat can extend them and a shutdown delete them.
//!
//! Every heartbeat sets the node's keys to expire after the ttl, so a dead
//! node's entries vanish by themselves. Tenant ids contain no control
//! character, so the `\x1f` in a hash key is unambiguous.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cs_core::{Party, TenantId};
use redis::Script;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{call_timeout, ClusterError, Conn, Quiet};
use crate::NodeId;

/// The Redis server's time in ms, and the heartbeat of node `ARGV[1]` with
/// ttl `ARGV[2]`: stamps `KEYS[1]` (nodes), extends `KEYS[2]` (the node's
/// tenants) and every hash it names (`ARGV[3]` .. tenant). `heartbeat()`
/// returns 1 if the node was not live before (missing, or older than the
/// ttl): its entries may have expired meanwhile.
const HEARTBEAT_FN: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function heartbeat()
  local now = now_ms()
  local ttl = tonumber(ARGV[2])
  local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    redis.call('PEXPIRE', ARGV[3] .. tenant, ttl)
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
  if prev and now - tonumber(prev) < ttl then
    return 0
  end
  return 1
end
";

/// `ARGV[4]` tenant, `ARGV[5]` party, `ARGV[6]` 1 or 0.
const SET_ONLINE: &str = r"
local hash = ARGV[3] .. ARGV[4]
if ARGV[6] == '1' then
  redis.call('HSET', hash, ARGV[5], '1')
  redis.call('SADD', KEYS[2], ARGV[4])
else
  redis.call('HDEL', hash, ARGV[5])
  if redis.call('EXISTS', hash) == 0 then
    redis.call('SREM', KEYS[2], ARGV[4])
  end
end
return heartbeat()
";

/// `ARGV[4..]`: tenant, party, tenant, party, ...
const REPLACE_ALL: &str = r"
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[3] .. tenant)
end
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do
  redis.call('HSET', ARGV[3] .. ARGV[i], ARGV[i + 1], '1')
  redis.call('SADD', KEYS[2], ARGV[i])
end
return heartbeat()
";

const BEAT: &str = "return heartbeat()";

/// Deletes the node's hashes, its tenants set and its heartbeat.
const LEAVE: &str = r"
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[3] .. tenant)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
";

/// Prunes dead nodes from `KEYS[1]` (ttl `ARGV[1]`, key prefix `ARGV[2]`)
/// with their keys, and returns the live ones.
const LIVE_FN: &str = r"
local function live_nodes()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now - tonumber(ARGV[1])
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)) do
    local tenants = ARGV[2] .. 'tenants:' .. node
    for _, tenant in ipairs(redis.call('SMEMBERS', tenants)) do
      redis.call('DEL', ARGV[2] .. 'presence:' .. node .. '\31' .. tenant)
    end
    redis.call('DEL', tenants)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf')
end
";

const NODES: &str = "return live_nodes()";

/// `ARGV[3]` tenant: `{{node, {party, ...}}, ...}` for live nodes that
/// have any.
const ONLINE: &str = r"
local out = {}
for _, node in ipairs(live_nodes()) do
  local parties = redis.call('HKEYS', ARGV[2] .. 'presence:' .. node .. '\31' .. ARGV[3])
  if #parties > 0 then
    table.insert(out, {node, parties})
  end
end
return out
";

struct Scripts {
    set_online: Script,
    replace_all: Script,
    beat: Script,
    leave: Script,
    nodes: Script,
    online: Script,
}

/// Which parties are connected on which live node, across the cluster.
///
/// Each node records its own connections (the pool's first-connection and
/// last-connection presence events are the moments to call
/// [`set_online`](Self::set_online)), runs
/// [`spawn_heartbeat`](Self::spawn_heartbeat), and reads everyone's with
/// [`online`](Self::online). A node that dies stops heartbeating and its
/// entries disappear within the ttl; one that shuts down through its token
/// removes them at once.
///
/// # When Redis is down
/// Writes fail with [`ClusterError::Unavailable`], and a long enough outage
/// lets this node's entries expire. Either way Redis no longer matches the
/// node, so the node re-sends its full local state with
/// [`replace_all`](Self::replace_all) once Redis is back:
/// [`resyncs`](Self::resyncs) changes at exactly those moments.
///
/// ```no_run
/// # async fn run(pool_state: Vec<(cs_core::TenantId, cs_core::Party)>) -> Result<(), cs_transport::cluster::ClusterError> {
/// use std::time::Duration;
/// use cs_transport::{cluster::ClusterPresence, NodeId};
/// use tokio_util::sync::CancellationToken;
///
/// let presence = ClusterPresence::connect(
///     "redis://127.0.0.1:6379",
///     "cs:",
///     NodeId::new("node-1"),
///     Duration::from_secs(10),
/// )
/// .await?;
/// let shutdown = CancellationToken::new();
/// let heartbeat = presence.spawn_heartbeat(shutdown.clone());
/// let mut resyncs = presence.resyncs();
/// let resender = Arc::clone(&presence);
/// tokio::spawn(async move {
///     while resyncs.changed().await.is_ok() {
///         // The pool's current parties, every time Redis may have lost them.
///         let _ = resender.replace_all(&pool_state).await;
///     }
/// });
/// # use std::sync::Arc;
/// # heartbeat.await.ok(); Ok(()) }
/// ```
pub struct ClusterPresence {
    conn: Conn,
    prefix: String,
    node: NodeId,
    ttl: Duration,
    nodes_key: String,
    tenants_key: String,
    /// `{prefix}presence:{node}\x1f`: a tenant completes a hash key.
    hash_prefix: String,
    scripts: Scripts,
    /// Some write of ours reached Redis, so a node found dead means lost
    /// entries rather than a first start.
    announced: AtomicBool,
    /// A write or heartbeat failed since the last resync signal.
    lost: AtomicBool,
    resyncs: watch::Sender<u64>,
}

impl std::fmt::Debug for ClusterPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPresence")
            .field("url", &self.conn.url)
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ClusterPresence {
    /// Connects to Redis at `url` for the presence of node `node`, under
    /// the key prefix `prefix` (such as `"cs:"`), with entries that expire
    /// `ttl` after the node's last heartbeat. Checks that the server
    /// answers; writes nothing until the first heartbeat or
    /// [`set_online`](Self::set_online).
    ///
    /// # Errors
    /// [`ClusterError::BadUrl`] or [`ClusterError::Unreachable`], naming the
    /// address without its password.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let ttl = ttl.max(Duration::from_millis(30));
        let conn = Conn::open(url, call_timeout(ttl)).await?;
        let with_heartbeat = |body: &str| Script::new(&format!("{HEARTBEAT_FN}\n{body}"));
        let with_live = |body: &str| Script::new(&format!("{LIVE_FN}\n{body}"));
        Ok(Arc::new(Self {
            conn,
            nodes_key: format!("{prefix}nodes"),
            tenants_key: format!("{prefix}tenants:{node}"),
            hash_prefix: format!("{prefix}presence:{node}\u{1f}"),
            prefix: prefix.to_owned(),
            node,
            ttl,
            scripts: Scripts {
                set_online: with_heartbeat(SET_ONLINE),
                replace_all: with_heartbeat(REPLACE_ALL),
                beat: with_heartbeat(BEAT),
                leave: Script::new(LEAVE),
                nodes: with_live(NODES),
                online: with_live(ONLINE),
            },
            announced: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            resyncs: watch::channel(0).0,
        }))
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Records (`online`) or removes that this node holds a connection of
    /// `party` in `tenant`; also counts as a heartbeat.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer: the write is
    /// lost, and [`resyncs`](Self::resyncs) changes once Redis is back so the
    /// node re-sends everything with [`replace_all`](Self::replace_all).
    pub async fn set_online(
        &self,
        tenant: &TenantId,
        party: &Party,
        online: bool,
    ) -> Result<(), ClusterError> {
        let party = party_field(party);
        let mut call = self.scripts.set_online.prepare_invoke();
        call.key(&self.nodes_key)
            .key(&self.tenants_key)
            .arg(self.node.as_str())
            .arg(self.ttl_ms())
            .arg(&self.hash_prefix)
            .arg(tenant.as_str())
            .arg(party)
            .arg(if online { "1" } else { "0" });
        let result = call
            .invoke_async::<i64>(&mut self.conn.manager.clone())
            .await;
        self.after_write("recording presence", result)
    }

    /// Replaces everything this node has recorded with `entries`, in one
    /// atomic call: what a node sends after an outage (see
    /// [`resyncs`](Self::resyncs)), or at start. Also counts as a heartbeat.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer; call it
    /// again at the next change of [`resyncs`](Self::resyncs).
    pub async fn replace_all(&self, entries: &[(TenantId, Party)]) -> Result<(), ClusterError> {
        let mut call = self.scripts.replace_all.prepare_invoke();
        call.key(&self.nodes_key)
            .key(&self.tenants_key)
            .arg(self.node.as_str())
            .arg(self.ttl_ms())
            .arg(&self.hash_prefix);
        for (tenant, party) in entries {
            call.arg(tenant.as_str()).arg(party_field(party));
        }
        let result = call
            .invoke_async::<i64>(&mut self.conn.manager.clone())
            .await;
        self.after_write("replacing this node's presence", result)
    }

    /// Refreshes this node's heartbeat and the expiry of its entries.
    async fn beat(&self) -> Result<(), ClusterError> {
        let result = self
            .scripts
            .beat
            .key(&self.nodes_key)
            .key(&self.tenants_key)
            .arg(self.node.as_str())
            .arg(self.ttl_ms())
            .arg(&self.hash_prefix)
            .invoke_async::<i64>(&mut self.conn.manager.clone())
            .await;
        self.after_write("sending the presence heartbeat", result)
    }

    /// Books a write's outcome: a failure, or finding this node dead after
    /// it had written, means Redis may have lost its entries; the first
    /// success after that signals a resync.
    fn after_write(
        &self,
        what: &'static str,
        result: redis::RedisResult<i64>,
    ) -> Result<(), ClusterError> {
        match result {
            Ok(was_dead) => {
                let announced = self.announced.swap(true, Ordering::AcqRel);
                let lost = self.lost.swap(false, Ordering::AcqRel);
                if lost || (was_dead == 1 && announced) {
                    self.resyncs.send_modify(|n| *n += 1);
                }
                Ok(())
            }
            Err(e) => {
                self.lost.store(true, Ordering::Release);
                Err(self.conn.error(what, e))
            }
        }
    }

    /// Changes each time Redis may have lost this node's entries and
    /// answers again: a write or heartbeat failed, or the node was found
    /// dead (its heartbeat older than the ttl) after it had written. On
    /// each change, send the node's full local state with
    /// [`replace_all`](Self::replace_all).
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// Every party of `tenant` connected on a live node, with those nodes;
    /// sorted by party (by its JSON form) and node, so the output is stable.
    /// Prunes dead nodes while at it. An entry that does not parse as a
    /// party (written by another version) is skipped with a warning.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer.
    pub async fn online(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(Party, Vec<NodeId>)>, ClusterError> {
        let rows: Vec<(String, Vec<String>)> = self
            .scripts
            .online
            .key(&self.nodes_key)
            .arg(self.ttl_ms())
            .arg(&self.prefix)
            .arg(tenant.as_str())
            .invoke_async(&mut self.conn.manager.clone())
            .await
            .map_err(|e| self.conn.error("reading presence", e))?;
        let mut by_party: BTreeMap<String, (Party, Vec<NodeId>)> = BTreeMap::new();
        for (node, parties) in rows {
            for field in parties {
                if let Some((_, nodes)) = by_party.get_mut(&field) {
                    nodes.push(NodeId::new(&node));
                    continue;
                }
                match serde_json::from_str::<Party>(&field) {
                    Ok(party) => {
                        by_party.insert(field, (party, vec![NodeId::new(&node)]));
                    }
                    Err(e) => tracing::warn!(
                        %node, %tenant, field, error = %e,
                        "skipping a presence entry that is not a party"
                    ),
                }
            }
        }
        Ok(by_party
            .into_values()
            .map(|(party, mut nodes)| {
                nodes.sort();
                (party, nodes)
            })
            .collect())
    }

    /// The live nodes (heartbeat younger than the ttl), sorted. Prunes dead
    /// nodes while at it.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer.
    pub async fn nodes(&self) -> Result<Vec<NodeId>, ClusterError> {
        let names: Vec<String> = self
            .scripts
            .nodes
            .key(&self.nodes_key)
            .arg(self.ttl_ms())
            .arg(&self.prefix)
            .invoke_async(&mut self.conn.manager.clone())
            .await
            .map_err(|e| self.conn.error("reading the live nodes", e))?;
        let mut nodes: Vec<NodeId> = names.into_iter().map(NodeId::new).collect();
        nodes.sort();
        Ok(nodes)
    }

    /// Spawns the heartbeat: every ttl/3 it marks this node live and
    /// extends its entries. While Redis is down it logs (at most every 30 s)
    /// and keeps trying. On `shutdown` it deletes this node's entries and
    /// heartbeat, so its parties go offline at once.
    pub fn spawn_heartbeat(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let presence = Arc::clone(self);
        tokio::spawn(async move {
            let mut quiet = Quiet::new();
            let mut tick = tokio::time::interval(presence.ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match presence.beat().await {
                    Ok(()) => quiet.succeeded("presence heartbeat"),
                    Err(e) => quiet.failed("presence heartbeat failed", &e),
                }
            }
            if let Err(e) = presence.leave().await {
                tracing::warn!(node = %presence.node, error = %e, "could not remove this node's presence on shutdown; it expires after the ttl");
            }
        })
    }

    /// Deletes this node's entries and heartbeat.
    async fn leave(&self) -> Result<(), ClusterError> {
        self.scripts
            .leave
            .key(&self.nodes_key)
            .key(&self.tenants_key)
            .arg(self.node.as_str())
            .arg(self.ttl_ms())
            .arg(&self.hash_prefix)
            .invoke_async::<i64>(&mut self.conn.manager.clone())
            .await
            .map(drop)
            .map_err(|e| self.conn.error("removing this node's presence", e))
    }
}

/// A party as a hash field: its JSON, which serde writes the same way every
/// time.
fn party_field(party: &Party) -> String {
    // Serializing an enum of strings cannot fail; the fallback only keeps
    // this free of a panic path.
    serde_json::to_string(party).unwrap_or_else(|_| format!("{party:?}"))
}
