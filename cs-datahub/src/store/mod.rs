//! Storage engines: implementations of [`cs_core::store::MessageStore`] and
//! [`cs_core::store::ConversationQueries`], what a shop needs beyond them
//! ([`MessageStoreExt`]), and visitor records ([`VisitorStore`]).
//!
//! | Store | Feature | Keeps |
//! |---|---|---|
//! | [`SqliteStore`] | `sqlite` | everything, in a file or in memory; no server |
//! | [`PostgresStore`] | `postgres` | everything, in PostgreSQL |
//! | [`MySqlStore`] | `mysql` | everything, in MariaDB or MySQL |
//! | [`RedisStore`] | `redis` | a recent window of each conversation, in Redis |
//! | [`TieredStore`] | `redis` | everything in a SQL store above, with each conversation's recent messages cached in Redis |
//!
//! The three SQL stores share one schema shape (`migrations/<dialect>/`,
//! embedded in the binary and applied on connect) and one code path
//! (`sql.rs`); only the SQL dialect differs. `tiered.rs` wraps any of them;
//! `visitors.rs` holds the visitor record and its trait. Every store passes
//! cs-core's contract suite (which covers the queries), and the crate's own suites for
//! [`MessageStoreExt`] and [`VisitorStore`], against the real server in this
//! crate's tests.

// Shared by the stores: with only some store features on, parts go unused.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
mod codec;
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis"
    )),
    allow(dead_code)
)]
mod stats;

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod group_commit;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "redis")]
mod tiered;
mod visitors;

use async_trait::async_trait;
use cs_core::store::{Appended, ConversationQueries, StoreError};
use cs_core::{NewMessage, TenantId};

pub use codec::{OversizeValue, MAX_BODY_JSON_BYTES};
pub use stats::{DailyStats, Day};
pub use visitors::{
    VisitorRecord, VisitorStore, MAX_VISITOR_ATTRIBUTES_BYTES, MAX_VISITOR_FIELD_BYTES,
};

#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::{BeyondWindow, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteStore};
#[cfg(feature = "redis")]
pub use tiered::{TieredConfig, TieredStats, TieredStore};

/// What the cs-datahub stores offer beyond [`MessageStore`](cs_core::store::MessageStore) and
/// [`ConversationQueries`] (the inbox queries, which live in cs-core so that
/// a desk can run them on any store): batched appends and a manager's report.
#[async_trait]
pub trait MessageStoreExt: ConversationQueries {
    /// Appends many messages in one transaction: all are stored, or none
    /// (an error). Each gets the next seq of its own conversation, in the
    /// order given; `client_msg_id` retries are deduplicated as in
    /// [`MessageStore::append`](cs_core::store::MessageStore::append), also within the batch. Results come back in
    /// the order of `messages`.
    ///
    /// # Errors
    /// [`StoreError::UnknownConversation`] if any message names one, or a
    /// backend error; nothing of the batch is stored then.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError>;

    /// The per-day counters of `tenant` for `from..=to` (UTC days), oldest
    /// first; days with no activity are absent. Reads one row per day: the
    /// counters are kept up to date by every write (see [`DailyStats`]).
    ///
    /// # Errors
    /// A backend error.
    async fn daily_stats(
        &self,
        tenant: &TenantId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailyStats>, StoreError>;
}
