//! [`Lease`]: one holder at a time for a key, kept alive by a keeper task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{call_timeout, ClusterError, Conn, Quiet};
use crate::NodeId;

/// Takes the key if it is free, or extends it if we hold it; returns
/// `{held, epoch}`. A fresh acquisition increments the epoch key.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
if cur then
  return {0, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('INCR', KEYS[2])}
";

/// Deletes the key only if we hold it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Separates the node name from the instance token in the stored value.
const SEP: char = '\u{1f}';

/// A lease on one Redis key: at most one holder at a time, for as long as it
/// renews within the ttl. Use it for work that exactly one node should do,
/// such as routing a tenant's queue.
///
/// The value stored is the holder's [`NodeId`] plus a token unique to this
/// `Lease` value, so two processes that were given the same node name (a
/// default left in a config) still never both hold it. On each fresh
/// acquisition the counter `{key}:epoch` is incremented: a fencing token
/// ([`Lease::epoch`]) that a store can compare to refuse writes from a
/// holder that has been replaced.
///
/// Normally a node calls [`Lease::spawn_keeper`] and acts on its watch;
/// [`Lease::try_acquire`] and [`Lease::release`] are the single steps.
///
/// ```no_run
/// # async fn run() -> Result<(), cs_transport::cluster::ClusterError> {
/// use std::time::Duration;
/// use cs_transport::{cluster::Lease, NodeId};
/// use tokio_util::sync::CancellationToken;
///
/// let lease = Lease::connect(
///     "redis://127.0.0.1:6379",
///     "cs:lease:router:shop",
///     NodeId::new("node-1"),
///     Duration::from_secs(5),
/// )
/// .await?;
/// let shutdown = CancellationToken::new();
/// let (mut holding, keeper) = lease.spawn_keeper(shutdown.clone());
/// while holding.changed().await.is_ok() {
///     if *holding.borrow() {
///         // start routing the queue
///     } else {
///         // stop routing it, now
///     }
/// }
/// # keeper.await.ok(); Ok(()) }
/// ```
pub struct Lease {
    conn: Conn,
    key: String,
    epoch_key: String,
    holder: NodeId,
    /// What this `Lease` writes as the value: `node \x1f token`.
    value: String,
    ttl: Duration,
    acquire: Script,
    release: Script,
    /// The epoch of the last acquisition or renewal seen; 0 before any.
    epoch: AtomicU64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("url", &self.conn.url)
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Connects to Redis at `url` for a lease on `key`, held as `holder`
    /// for `ttl` at a time (a few seconds is typical: the owner is gone for
    /// up to a ttl after a crash). Checks that the server answers.
    ///
    /// # Errors
    /// [`ClusterError::BadUrl`] or [`ClusterError::Unreachable`], naming the
    /// address without its password.
    pub async fn connect(
        url: &str,
        key: impl Into<String>,
        holder: NodeId,
        ttl: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let ttl = ttl.max(Duration::from_millis(30));
        let conn = Conn::open(url, call_timeout(ttl)).await?;
        let key = key.into();
        let value = format!("{holder}{SEP}{:016x}", instance_token());
        Ok(Arc::new(Self {
            conn,
            epoch_key: format!("{key}:epoch"),
            key,
            holder,
            value,
            ttl,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            epoch: AtomicU64::new(0),
        }))
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The ttl of each acquisition or renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if it is free, or extends it by a ttl if this `Lease`
    /// holds it. Returns whether it holds it now.
    ///
    /// Do not mix this with a running keeper: the keeper's watch would not
    /// know.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer: then it is
    /// unknown whether this node holds the lease, and it must act as if not.
    pub async fn try_acquire(&self) -> Result<bool, ClusterError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let (held, epoch): (bool, u64) = self
            .acquire
            .key(&self.key)
            .key(&self.epoch_key)
            .arg(&self.value)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.manager.clone())
            .await
            .map_err(|e| self.conn.error("acquiring a lease", e))?;
        if held {
            self.epoch.store(epoch, Ordering::Relaxed);
        }
        Ok(held)
    }

    /// Gives the lease up if this `Lease` holds it; never deletes another
    /// holder's lease. Returns whether it was held.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer; the lease
    /// then expires by itself after the ttl.
    pub async fn release(&self) -> Result<bool, ClusterError> {
        let deleted: i64 = self
            .release
            .key(&self.key)
            .arg(&self.value)
            .invoke_async(&mut self.conn.manager.clone())
            .await
            .map_err(|e| self.conn.error("releasing a lease", e))?;
        Ok(deleted == 1)
    }

    /// The node holding the lease now, if any.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when Redis does not answer.
    pub async fn holder(&self) -> Result<Option<NodeId>, ClusterError> {
        let value: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.conn.manager.clone())
            .await
            .map_err(|e| self.conn.error("reading a lease", e))?;
        Ok(value.map(|value| match value.rsplit_once(SEP) {
            Some((node, _token)) => NodeId::new(node),
            // Written by something else than a `Lease`: show it whole.
            None => NodeId::new(value),
        }))
    }

    /// The fencing epoch of this `Lease`'s latest acquisition (the value of
    /// `{key}:epoch` it set, which only grows), or `None` if it never held
    /// the lease. Still the old value after the lease is lost: check the
    /// keeper's watch for whether it is held.
    pub fn epoch(&self) -> Option<u64> {
        match self.epoch.load(Ordering::Relaxed) {
            0 => None,
            epoch => Some(epoch),
        }
    }

    /// Spawns the task that acquires and renews the lease every ttl/3 until
    /// `shutdown`, then releases it. The watch says whether this node holds
    /// it; act as the owner only while it says `true`.
    ///
    /// If the task ends any other way (aborted, or its runtime shut down)
    /// the watch turns `false` as it goes, and the lease expires in Redis a
    /// ttl after the last renewal.
    pub fn spawn_keeper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let lease = Arc::clone(self);
        let task = tokio::spawn(async move { lease.keep(FalseOnDrop(tx), shutdown).await });
        (rx, task)
    }

    async fn keep(&self, holding: FalseOnDrop, shutdown: CancellationToken) {
        let period = self.ttl / 3;
        // Safety rule: the watch says `true` only until ttl/2 after the
        // instant the last successful acquire/renew was *sent*. Redis
        // started that key's ttl no earlier than that instant, so the key
        // outlives our belief by at least ttl/2, and another node can only
        // acquire it after this one has stopped believing it holds it (given
        // clocks that run at the same rate). A renewal that fails, errors, or
        // has not answered by that deadline turns the watch `false` at once.
        let grace = self.ttl / 2;
        let mut confirmed: Option<Instant> = None;
        let mut quiet = Quiet::new();
        loop {
            let sent = Instant::now();
            let deadline = confirmed.unwrap_or(sent) + grace;
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                result = self.try_acquire() => Some(result),
                () = tokio::time::sleep_until(deadline) => None,
            };
            confirmed = match outcome {
                Some(Ok(true)) => {
                    quiet.succeeded("lease keeper");
                    Some(sent)
                }
                Some(Ok(false)) => {
                    quiet.succeeded("lease keeper");
                    None
                }
                Some(Err(e)) => {
                    quiet.failed("lease keeper: cannot renew, so not holding", &e);
                    None
                }
                None => {
                    let e = format!("no answer within {grace:?} (ttl/2)");
                    quiet.failed("lease keeper: cannot renew, so not holding", &e);
                    None
                }
            };
            holding.0.send_if_modified(|held| {
                let now = confirmed.is_some();
                std::mem::replace(held, now) != now
            });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(sent + period) => {}
            }
        }
        // Stop believing first, then let the others in.
        holding.0.send_replace(false);
        match tokio::time::timeout(grace, self.release()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(key = %self.key, error = %e, "could not release the lease on shutdown; it expires after its ttl")
            }
            Err(_) => {
                tracing::warn!(key = %self.key, "Redis did not answer the release on shutdown; the lease expires after its ttl")
            }
        }
    }
}

/// Sets the watch to `false` when the keeper goes, however it goes: an
/// aborted keeper must not leave a `true` behind.
struct FalseOnDrop(watch::Sender<bool>);

impl Drop for FalseOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// A token that differs between `Lease` values, processes and restarts.
fn instance_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(since.as_nanos());
    }
    h.finish()
}
