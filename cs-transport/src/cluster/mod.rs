//! Cluster state shared by the nodes through Redis (feature `redis`).
//!
//! Several chat-server nodes behind a load balancer share a store and a
//! Redis. Two pieces of state live in Redis, each in its own file:
//!
//! - [`Lease`] (`lease.rs`): one owner at a time for a key, such as the node
//!   that routes a tenant's queue. A keeper task renews it and tells the node,
//!   through a watch, whether it may act as the owner; it stops believing
//!   before anyone else can take over.
//! - [`ClusterPresence`] (`presence.rs`): which parties are connected on
//!   which live node. Each node writes only its own entries and heartbeats;
//!   a dead node's entries vanish by themselves after the ttl.
//!
//! Both speak to one Redis (or a primary behind Sentinel) through a
//! [`ConnectionManager`], which reconnects by itself; their Lua scripts
//! compute some key names, so Redis Cluster is not supported.
//!
//! Time: presence heartbeats are stamped with the Redis server's clock
//! (`TIME`), so nodes need not agree on the time. A lease only needs the
//! node's clock and Redis's to run at the same rate.

mod lease;
mod presence;

pub use lease::Lease;
pub use presence::ClusterPresence;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// What went wrong talking to the cluster state in Redis.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL is malformed.
    #[error("bad Redis address {url}: {reason}; use redis://[:password@]host:port[/db]")]
    BadUrl {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the address when connecting, or it refused the
    /// login.
    #[error(
        "cannot reach Redis at {url}; check that it is running and that the URL is right: {source}"
    )]
    Unreachable {
        /// The address, with any password replaced by `***`.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer a call (down, restarting, or slower than the
    /// timeout). The connection is re-established by itself; retry later.
    /// A presence write that fails this way is lost: see
    /// [`ClusterPresence::resyncs`] for how the node's state is re-sent.
    #[error("Redis at {url} did not answer while {what}: {source}; the cluster state is unavailable until Redis is back")]
    Unavailable {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What the call was doing.
        what: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered with an error (a full memory, a read-only replica, a
    /// key of the wrong type under the prefix).
    #[error("Redis at {url} refused {what}: {source}")]
    Refused {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What the call was doing.
        what: &'static str,
        /// The server's error.
        #[source]
        source: redis::RedisError,
    },
}

/// One Redis connection for a lease or a presence, and its shown address.
#[derive(Clone)]
struct Conn {
    manager: ConnectionManager,
    /// The URL with the password hidden, for errors and logs.
    url: Arc<str>,
}

impl Conn {
    /// Connects, checking first that the server answers: the connection
    /// manager retries a refused connection for a long while, and a wrong
    /// URL should fail fast. `timeout` bounds every later call, so a call
    /// to a hung Redis fails instead of waiting.
    async fn open(url: &str, timeout: Duration) -> Result<Self, ClusterError> {
        let shown: Arc<str> = cs_core::redact_url(url).into();
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl {
            url: shown.to_string(),
            reason: e.to_string(),
        })?;
        let unreachable = |source| ClusterError::Unreachable {
            url: shown.to_string(),
            source,
        };
        let probe = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| {
            unreachable(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 3 s",
            )))
        })?;
        let mut probe = probe.map_err(unreachable)?;
        redis::cmd("PING")
            .query_async::<()>(&mut probe)
            .await
            .map_err(unreachable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            // After a drop: a couple of quick reconnects inside one call,
            // then the call fails and the caller's loop tries again later.
            .set_number_of_retries(1)
            .set_factor(10)
            .set_max_delay(100);
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unreachable)?;
        Ok(Self {
            manager,
            url: shown,
        })
    }

    /// Turns a client error into a [`ClusterError`]: a connection problem
    /// is `Unavailable`, an error reply is `Refused`.
    fn error(&self, what: &'static str, source: redis::RedisError) -> ClusterError {
        let url = self.url.to_string();
        if source.is_io_error()
            || source.is_timeout()
            || source.is_connection_dropped()
            || source.is_connection_refusal()
        {
            ClusterError::Unavailable { url, what, source }
        } else {
            ClusterError::Refused { url, what, source }
        }
    }
}

/// The call timeout for a state kept with `ttl`: an answer slower than half
/// the ttl is as good as none.
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Logs a failing background loop at most once per interval, so a Redis
/// that is down for an hour costs a line every half minute, not one per
/// heartbeat; and says when it works again.
struct Quiet {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
    failing: bool,
}

impl Quiet {
    fn new() -> Self {
        Self {
            every: Duration::from_secs(30),
            last: None,
            suppressed: 0,
            failing: false,
        }
    }

    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.failing = true;
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.every) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            failures_since_last_report = self.suppressed,
            %error,
            "{what}; retrying"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }

    fn succeeded(&mut self, what: &str) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("{what}: Redis answers again");
            self.last = None;
            self.suppressed = 0;
        }
    }
}
