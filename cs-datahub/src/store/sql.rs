//! The one code path of the SQL stores (SQLite, PostgreSQL, MariaDB/MySQL).
//!
//! The statements are written once, with `?` placeholders; a [`Dialect`]
//! supplies the few words that differ (row locks, upserts, placeholder style).
//! The store logic is written once too, in [`sql_message_store!`]: sqlx's
//! drivers are distinct types, and a macro instantiates the same body for
//! each, where a generic impl would need a wall of higher-ranked bounds.
//!
//! How an append stays gap-free and idempotent: inside one transaction it
//! locks the conversation's row (`SELECT … FOR UPDATE`; SQLite has one
//! writer connection, which serialises writes instead), checks the
//! `client_msg_id`, takes `last_seq + 1`, inserts the message and stores the
//! new `last_seq`. Appenders to one conversation queue on its row lock;
//! appenders to different conversations do not wait for each other. A unique
//! index on `(conversation_id, client_msg_id)` backs the check, and a
//! deadlock or unique-key race retries the whole transaction.

use std::time::Duration;

use cs_core::store::StoreError;

/// What differs between the SQL dialects.
pub(crate) struct Dialect {
    /// Appended to a `SELECT` to lock the rows it reads until commit.
    pub lock_suffix: &'static str,
    /// Placeholders are `$1, $2, …` rather than `?`.
    pub numbered_placeholders: bool,
    /// The tail of `INSERT INTO cs_daily_stats (…) VALUES (…)` that adds to
    /// an existing row.
    pub stats_upsert_tail: &'static str,
    /// The tail of `INSERT INTO cs_report_counts (…) VALUES (…)` that adds
    /// to an existing counter.
    pub count_upsert_tail: &'static str,
    /// Whether an error code means "run the transaction again"
    /// (deadlock, serialization failure, busy).
    pub retryable_code: fn(&str) -> bool,
    /// How a `SELECT` reads a text column so the driver decodes it as text.
    pub read_text: fn(&str) -> String,
    /// The `WHERE` condition (after `tenant = ?`) that picks open
    /// conversations, and the `ORDER BY` that goes with it, both matching
    /// the dialect's index for that query (migration 0002).
    pub open_filter: &'static str,
    /// See `open_filter`.
    pub open_order: &'static str,
    /// The tail of an `INSERT` that, when the row with key `key` exists,
    /// overwrites `columns` with the values given instead.
    pub upsert: fn(key: &str, columns: &[&str]) -> String,
    /// How an append batch passes its `(conversation_id, client_msg_id)`
    /// keys to the retry check.
    pub retry_keys: RetryKeys,
}

/// How an append batch passes its `(conversation_id, client_msg_id)` keys to
/// the query that finds its retries.
#[derive(Clone, Copy)]
pub(crate) enum RetryKeys {
    /// `WHERE (conversation_id, client_msg_id) IN ((?, ?), …)`, a pair of
    /// binds per message, in chunks (SQLite, MariaDB/MySQL).
    RowList,
    /// Two array binds joined through `unnest` (PostgreSQL). One statement
    /// text for every batch size, so it is prepared once per connection;
    /// PostgreSQL plans a long row list as an `OR` of one index scan per
    /// pair, which took milliseconds per batch at a few hundred pairs and
    /// capped the demo at a quarter of its rate without client ids.
    Arrays,
}

/// Builds the queries that find a batch's retries, for one driver: the
/// stored messages whose `(conversation_id, client_msg_id)` is among `keys`,
/// read as [`Statements::find_client_msgs`] says (message columns, then the
/// conversation).
pub(crate) trait FindRetries: sqlx::Database {
    /// The queries to run, one per chunk of `keys`.
    fn find_retries(
        statements: &Statements,
        keys: Vec<(Vec<u8>, String)>,
    ) -> Vec<sqlx::QueryBuilder<'static, Self>>;
}

/// [`FindRetries`] for the [`RetryKeys::RowList`] dialects.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn retries_by_row_list<DB>(
    statements: &Statements,
    keys: Vec<(Vec<u8>, String)>,
) -> Vec<sqlx::QueryBuilder<'static, DB>>
where
    DB: sqlx::Database,
    Vec<u8>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    let mut queries = Vec::new();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let mut query = sqlx::QueryBuilder::<DB>::new(&statements.find_client_msgs);
        let mut pairs = query.separated(", ");
        for (conversation, client_msg_id) in keys.by_ref().take(BATCH_INSERT_ROWS) {
            pairs.push("(");
            pairs.push_bind_unseparated(conversation);
            pairs.push_unseparated(", ");
            pairs.push_bind_unseparated(client_msg_id);
            pairs.push_unseparated(")");
        }
        query.push(")");
        queries.push(query);
    }
    queries
}

/// Open conversations in PostgreSQL and SQLite: the partial index
/// `cs_conversations_open` holds exactly the rows of this condition, in this
/// order, so the query reads `limit` index entries and sorts nothing.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const OPEN_BY_STATE: (&str, &str) = ("state <> 'closed'", "created_at, id");

/// `ON CONFLICT … DO UPDATE` (SQLite, PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn on_conflict_update(key: &str, columns: &[&str]) -> String {
    let set: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!("ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", "))
}

/// Reads a text column as it is (SQLite, PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn plain_text(column: &str) -> String {
    column.to_owned()
}

/// Every statement the SQL stores run, in the dialect's placeholder style.
pub(crate) struct Statements {
    pub insert_conversation: String,
    pub lock_conversation_counter: String,
    pub lock_conversation_data: String,
    pub update_conversation: String,
    pub conversation_data: String,
    pub last_seq: String,
    pub set_last_seq: String,
    pub find_client_msg: String,
    /// `… WHERE id IN (` + ids + this: every counter of a batch, locked in id order.
    pub lock_counters: (String, String),
    /// The head of the query for a batch's retries, with the conversation
    /// as the last column: for [`RetryKeys::RowList`] `… WHERE
    /// (conversation_id, client_msg_id) IN (`, to be followed by the pairs;
    /// for [`RetryKeys::Arrays`] `… JOIN unnest(`, to be followed by the
    /// arrays.
    pub find_client_msgs: String,
    pub insert_message: String,
    pub upsert_stats: String,
    pub range: String,
    pub recent: String,
    pub after: String,
    pub visitor_conversations: String,
    pub agent_open_conversations: String,
    pub open_conversations: String,
    pub daily_stats: String,
    pub upsert_count: String,
    pub report_counts: String,
    /// Every message of a conversation, oldest first: what a close folds.
    pub log: String,
    pub upsert_visitor: String,
    pub touch_visitor: String,
    pub visitor: String,
    pub recent_visitors: String,
    pub retryable_code: fn(&str) -> bool,
}

impl Statements {
    pub(crate) fn new(dialect: &Dialect) -> Self {
        let sql = |s: String| {
            if dialect.numbered_placeholders {
                number_placeholders(&s)
            } else {
                s
            }
        };
        let lock = dialect.lock_suffix;
        let text = dialect.read_text;
        #[allow(non_snake_case)]
        let MESSAGE_COLUMNS = format!(
            "seq, {}, {}, {}, created_at",
            text("sender"),
            text("body"),
            text("client_msg_id")
        );
        let data = text("data");
        let tenant = text("tenant");
        #[allow(non_snake_case)]
        let VISITOR_COLUMNS = format!(
            "{}, {}, {}, first_seen, last_seen, {}",
            text("visitor"),
            text("display_name"),
            text("email"),
            text("attributes")
        );
        let visitor_columns =
            "(tenant, visitor, display_name, email, first_seen, last_seen, attributes)";
        Self {
            insert_conversation: sql("INSERT INTO cs_conversations \
                 (id, tenant, visitor, agent, state, created_at, last_seq, data) \
                 VALUES (?, ?, ?, ?, ?, ?, 0, ?)"
                .into()),
            lock_conversation_counter: sql(format!(
                "SELECT {tenant}, last_seq FROM cs_conversations WHERE id = ?{lock}"
            )),
            lock_conversation_data: sql(format!(
                "SELECT {data} FROM cs_conversations WHERE id = ?{lock}"
            )),
            update_conversation: sql("UPDATE cs_conversations \
                 SET visitor = ?, agent = ?, state = ?, data = ? WHERE id = ?"
                .into()),
            conversation_data: sql(format!("SELECT {data} FROM cs_conversations WHERE id = ?")),
            last_seq: sql("SELECT last_seq FROM cs_conversations WHERE id = ?".into()),
            set_last_seq: sql("UPDATE cs_conversations SET last_seq = ? WHERE id = ?".into()),
            lock_counters: (
                format!("SELECT id, {tenant}, last_seq FROM cs_conversations WHERE id IN ("),
                format!(") ORDER BY id{lock}"),
            ),
            find_client_msgs: match dialect.retry_keys {
                RetryKeys::RowList => format!(
                    "SELECT {MESSAGE_COLUMNS}, conversation_id FROM cs_messages \
                     WHERE (conversation_id, client_msg_id) IN ("
                ),
                // The rest (two array binds through `unnest`) is pushed by
                // the driver's `FindRetries`.
                RetryKeys::Arrays => format!(
                    "SELECT {MESSAGE_COLUMNS}, conversation_id FROM cs_messages JOIN unnest("
                ),
            },
            find_client_msg: sql(format!(
                "SELECT {MESSAGE_COLUMNS} FROM cs_messages \
                 WHERE conversation_id = ? AND client_msg_id = ?"
            )),
            insert_message: sql("INSERT INTO cs_messages \
                 (conversation_id, seq, sender, body, client_msg_id, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)"
                .into()),
            upsert_stats: sql(format!(
                "INSERT INTO cs_daily_stats (tenant, day, conversations, messages, \
                 first_responses, first_response_ms_total, closed, bot_resolved, handoffs) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {}",
                dialect.stats_upsert_tail
            )),
            range: sql(format!(
                "SELECT {MESSAGE_COLUMNS} FROM cs_messages \
                 WHERE conversation_id = ? AND seq >= ? AND seq <= ? ORDER BY seq LIMIT ?"
            )),
            recent: sql(format!(
                "SELECT {MESSAGE_COLUMNS} FROM cs_messages \
                 WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?"
            )),
            after: sql(format!(
                "SELECT {MESSAGE_COLUMNS} FROM cs_messages \
                 WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            )),
            visitor_conversations: sql(format!(
                "SELECT {data} FROM cs_conversations \
                 WHERE tenant = ? AND visitor = ? ORDER BY created_at DESC LIMIT ?"
            )),
            agent_open_conversations: sql(format!(
                "SELECT {data} FROM cs_conversations \
                 WHERE tenant = ? AND agent = ? AND state = 'assigned' ORDER BY created_at"
            )),
            open_conversations: sql(format!(
                "SELECT {data} FROM cs_conversations \
                 WHERE tenant = ? AND {} ORDER BY {} LIMIT ?",
                dialect.open_filter, dialect.open_order
            )),
            upsert_visitor: sql(format!(
                "INSERT INTO cs_visitors {visitor_columns} VALUES (?, ?, ?, ?, ?, ?, ?) {}",
                (dialect.upsert)(
                    "tenant, visitor",
                    &["display_name", "email", "last_seen", "attributes"]
                )
            )),
            touch_visitor: sql(format!(
                "INSERT INTO cs_visitors {visitor_columns} VALUES (?, ?, NULL, NULL, ?, ?, '{{}}') {}",
                (dialect.upsert)("tenant, visitor", &["last_seen"])
            )),
            visitor: sql(format!(
                "SELECT {VISITOR_COLUMNS} FROM cs_visitors WHERE tenant = ? AND visitor = ?"
            )),
            recent_visitors: sql(format!(
                "SELECT {VISITOR_COLUMNS} FROM cs_visitors \
                 WHERE tenant = ? ORDER BY last_seen DESC, visitor DESC LIMIT ?"
            )),
            daily_stats: sql("SELECT day, conversations, messages, first_responses, \
                 first_response_ms_total, closed, bot_resolved, handoffs FROM cs_daily_stats \
                 WHERE tenant = ? AND day >= ? AND day <= ? ORDER BY day"
                .into()),
            upsert_count: sql(format!(
                "INSERT INTO cs_report_counts (tenant, day, agent, measure, value) \
                 VALUES (?, ?, ?, ?, ?) {}",
                dialect.count_upsert_tail
            )),
            report_counts: sql(format!(
                "SELECT day, {}, {}, value FROM cs_report_counts \
                 WHERE tenant = ? AND day >= ? AND day <= ? ORDER BY day, agent, measure",
                text("agent"),
                text("measure")
            )),
            log: sql(format!(
                "SELECT {MESSAGE_COLUMNS} FROM cs_messages WHERE conversation_id = ? ORDER BY seq"
            )),
            retryable_code: dialect.retryable_code,
        }
    }
}

/// The standard `ON CONFLICT` upsert (SQLite, PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const ON_CONFLICT_ADD: &str = "ON CONFLICT (tenant, day) DO UPDATE SET \
     conversations = cs_daily_stats.conversations + excluded.conversations, \
     messages = cs_daily_stats.messages + excluded.messages, \
     first_responses = cs_daily_stats.first_responses + excluded.first_responses, \
     first_response_ms_total = cs_daily_stats.first_response_ms_total + excluded.first_response_ms_total, \
     closed = cs_daily_stats.closed + excluded.closed, \
     bot_resolved = cs_daily_stats.bot_resolved + excluded.bot_resolved, \
     handoffs = cs_daily_stats.handoffs + excluded.handoffs";

/// The counter upsert of SQLite and PostgreSQL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const ON_CONFLICT_ADD_COUNT: &str = "ON CONFLICT (tenant, day, agent, measure) \
     DO UPDATE SET value = cs_report_counts.value + excluded.value";

/// `?, ?, ?` → `$1, $2, $3`. The statements above hold no `?` inside string
/// literals, so a plain scan is exact.
fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Rows per multi-row `INSERT` in a batch: 6 binds each stays far below every
/// dialect's bind limit (SQLite 32766, PostgreSQL and MySQL 65535).
pub(crate) const BATCH_INSERT_ROWS: usize = 1000;

/// How many times a transaction that hit a deadlock or a busy database is run
/// again before the error is returned.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// The pause before attempt `n` (1-based) of a retried transaction.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(2u64 << attempt.min(8))
}

/// An error inside a store transaction: either the store's verdict, or a
/// driver error still to be classified (retried or mapped).
pub(crate) enum TxError {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl TxError {
    /// Whether running the transaction again may succeed.
    pub(crate) fn is_retryable(&self, statements: &Statements) -> bool {
        let TxError::Sql(sqlx::Error::Database(db)) = self else {
            return false;
        };
        // A unique-key race on (conversation_id, client_msg_id): the rerun
        // finds the stored original and reports a duplicate.
        db.is_unique_violation()
            || db
                .code()
                .is_some_and(|code| (statements.retryable_code)(&code))
    }

    pub(crate) fn into_store_error(self, backend: &str) -> StoreError {
        match self {
            TxError::Store(e) => e,
            TxError::Sql(e) => store_error(backend, e),
        }
    }
}

/// Sorts a driver error into the store's three kinds of failure.
pub(crate) fn store_error(backend: &str, e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let unavailable = match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => true,
        // SQLSTATE class 08 is "connection exception"; 57P01..57P03 are a
        // PostgreSQL server shutting down or starting up.
        E::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    };
    match e {
        _ if unavailable => StoreError::Unavailable {
            backend: backend.to_owned(),
            source: Box::new(e),
        },
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => StoreError::Corrupt(format!("{backend}: {e}")),
        e => StoreError::Backend {
            backend: backend.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Sorts a migration error into [`OpenError`](crate::OpenError).
pub(crate) fn migrate_error(url: &str, e: sqlx::migrate::MigrateError) -> crate::OpenError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::VersionMissing(v) => crate::OpenError::SchemaMismatch {
            url: url.to_owned(),
            detail: format!("it has migration {v}, which this build does not know"),
        },
        M::VersionMismatch(v) => crate::OpenError::SchemaMismatch {
            url: url.to_owned(),
            detail: format!("migration {v} there differs from this build's"),
        },
        M::Dirty(v) => crate::OpenError::SchemaMismatch {
            url: url.to_owned(),
            detail: format!("migration {v} failed halfway earlier"),
        },
        M::Execute(sqlx::Error::Io(e)) => crate::OpenError::Unreachable {
            url: url.to_owned(),
            source: Box::new(e),
        },
        e => crate::OpenError::Migration {
            url: url.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Checks a schema or database name we splice into DDL.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn check_identifier(url: &str, name: &str) -> Result<(), crate::OpenError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(crate::OpenError::BadUrl {
            url: url.to_owned(),
            reason: format!(
                "the name {name:?} is not a plain identifier; use [a-z_][a-z0-9_]*, at most 63 bytes"
            ),
        })
    }
}

/// Sorts a connect error into [`OpenError`](crate::OpenError).
pub(crate) fn connect_error(url: &str, e: sqlx::Error) -> crate::OpenError {
    match e {
        sqlx::Error::Configuration(source) => crate::OpenError::BadUrl {
            url: url.to_owned(),
            reason: source.to_string(),
        },
        sqlx::Error::Database(db) => crate::OpenError::Unreachable {
            url: url.to_owned(),
            source: format!("the server refused: {db}").into(),
        },
        e => crate::OpenError::Unreachable {
            url: url.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Writes the [`MessageStore`](cs_core::store::MessageStore),
/// [`ConversationQueries`](cs_core::store::ConversationQueries) and
/// [`MessageStoreExt`](crate::store::MessageStoreExt) impls for a SQL store
/// type with fields `writer` and `reader` (pools of `$db`), `statements`
/// ([`Statements`]) and `backend` (its name in errors).
macro_rules! sql_message_store {
    ($store:ty, $db:ty) => {
        use std::collections::{BTreeMap, HashMap};

        use async_trait::async_trait;
        use cs_core::store::{Appended, ConversationQueries, MessageStore, StoreError};
        use cs_core::{
            AgentId, Conversation, ConversationId, Message, NewMessage, Seq, TenantId, Timestamp,
            VisitorId,
        };
        use sqlx::Row as _;

        use cs_core::store::reports::{self, Count, Deltas, ReportDay, ReportStore, ReportZone};
        use $crate::store::codec::{self, EncodedMessage};
        use $crate::store::sql::{self as common, TxError};
        use $crate::store::stats::StatsDelta;
        use $crate::store::visitors;
        use $crate::store::{DailyStats, Day, MessageStoreExt, VisitorRecord, VisitorStore};

        type DbRow = <$db as sqlx::Database>::Row;
        type Tx<'a> = sqlx::Transaction<'a, $db>;

        fn message_from_row(conversation: ConversationId, row: &DbRow) -> Result<Message, TxError> {
            Ok(codec::decode_message(
                conversation,
                row.try_get(0)?,
                row.try_get::<&str, _>(1)?,
                row.try_get::<&str, _>(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            )?)
        }

        /// A row of `Statements::visitor` / `recent_visitors`.
        fn visitor_from_row(tenant: &TenantId, row: &DbRow) -> Result<VisitorRecord, TxError> {
            Ok(visitors::decode_visitor(
                tenant,
                row.try_get::<&str, _>(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get::<&str, _>(5)?,
            )?)
        }

        impl $store {
            /// Runs `$body` (an async block using `$tx`) in a transaction,
            /// again after a deadlock or busy error, and maps the final error.
            async fn with_retries<T, F, Fut>(&self, mut attempt_once: F) -> Result<T, StoreError>
            where
                F: FnMut() -> Fut,
                Fut: std::future::Future<Output = Result<T, TxError>>,
            {
                let mut attempt = 1;
                loop {
                    match attempt_once().await {
                        Err(e)
                            if attempt < common::MAX_ATTEMPTS
                                && e.is_retryable(&self.statements) =>
                        {
                            tokio::time::sleep(common::backoff(attempt)).await;
                            attempt += 1;
                        }
                        result => return result.map_err(|e| e.into_store_error(&self.backend)),
                    }
                }
            }

            async fn exists(&self, id: ConversationId) -> Result<bool, StoreError> {
                let row = sqlx::query(&self.statements.last_seq)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?;
                Ok(row.is_some())
            }

            /// Reads messages with `query` (bound to the conversation, then
            /// `binds`), or `UnknownConversation` if it came back empty
            /// because there is no such conversation.
            async fn read_messages(
                &self,
                conversation: ConversationId,
                sql: &str,
                binds: &[i64],
            ) -> Result<Vec<Message>, StoreError> {
                let id = conversation.as_uuid();
                let mut query = sqlx::query(sql).bind(id.as_bytes().as_slice());
                for value in binds {
                    query = query.bind(*value);
                }
                let rows = query
                    .fetch_all(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?;
                if rows.is_empty() && !self.exists(conversation).await? {
                    return Err(StoreError::UnknownConversation(conversation));
                }
                rows.iter()
                    .map(|row| message_from_row(conversation, row))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.into_store_error(&self.backend))
            }

            async fn read_conversations<'q>(
                &self,
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            ) -> Result<Vec<Conversation>, StoreError> {
                let rows = query
                    .fetch_all(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?;
                rows.iter()
                    .map(|row| {
                        let data: &str = row
                            .try_get(0)
                            .map_err(|e| common::store_error(&self.backend, e))?;
                        codec::decode_conversation(data)
                    })
                    .collect()
            }

            async fn add_stats(
                &self,
                tx: &mut Tx<'_>,
                tenant: &str,
                deltas: impl IntoIterator<Item = (Day, StatsDelta)>,
            ) -> Result<(), TxError> {
                // Sorted by day, so concurrent writers lock stats rows in one
                // order and cannot deadlock on them.
                let mut by_day: BTreeMap<Day, StatsDelta> = BTreeMap::new();
                for (day, delta) in deltas {
                    by_day.entry(day).or_default().add(delta);
                }
                for (day, d) in by_day {
                    sqlx::query(&self.statements.upsert_stats)
                        .bind(tenant)
                        .bind(day.0)
                        .bind(d.conversations)
                        .bind(d.messages)
                        .bind(d.first_responses)
                        .bind(d.first_response_ms_total)
                        .bind(d.closed)
                        .bind(d.bot_resolved)
                        .bind(d.handoffs)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// The rows of a per-day table (`statement` binds tenant, first
            /// and last day) for `tenant`'s days `from..=to`, from the reader.
            async fn rows_of_days(
                &self,
                statement: &str,
                tenant: &TenantId,
                from: i64,
                to: i64,
            ) -> Result<Vec<DbRow>, StoreError> {
                sqlx::query(statement)
                    .bind(tenant.as_str())
                    .bind(from)
                    .bind(to)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))
            }

            /// Adds report counter deltas, in key order (see `Deltas`), in
            /// the write's own transaction.
            async fn add_counts(
                &self,
                tx: &mut Tx<'_>,
                tenant: &str,
                deltas: &Deltas,
            ) -> Result<(), TxError> {
                if !self.zones.counting() {
                    return Ok(());
                }
                for (day, agent, measure, value) in deltas.rows() {
                    sqlx::query(&self.statements.upsert_count)
                        .bind(tenant)
                        .bind(day.0)
                        .bind(agent)
                        .bind(measure)
                        .bind(value)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// Locks the conversation's row; returns its tenant and last seq.
            async fn lock_counter(
                &self,
                tx: &mut Tx<'_>,
                id: ConversationId,
            ) -> Result<(String, i64), TxError> {
                let row = sqlx::query(&self.statements.lock_conversation_counter)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or(StoreError::UnknownConversation(id))?;
                Ok((row.try_get(0)?, row.try_get(1)?))
            }

            async fn find_by_client_id(
                &self,
                tx: &mut Tx<'_>,
                id: ConversationId,
                client_msg_id: &str,
            ) -> Result<Option<Message>, TxError> {
                let row = sqlx::query(&self.statements.find_client_msg)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .bind(client_msg_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|row| message_from_row(id, &row)).transpose()
            }

            async fn append_once(
                &self,
                message: &NewMessage,
                encoded: &EncodedMessage,
            ) -> Result<Appended, TxError> {
                let id = encoded.conversation;
                let mut tx = self.writer.begin().await?;
                let (tenant, last) = self.lock_counter(&mut tx, id).await?;
                if let Some(cid) = &encoded.client_msg_id {
                    if let Some(original) = self.find_by_client_id(&mut tx, id, cid).await? {
                        return Ok(Appended {
                            message: original,
                            duplicate: true,
                        });
                    }
                }
                let seq = last + 1;
                sqlx::query(&self.statements.insert_message)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .bind(seq)
                    .bind(&encoded.sender)
                    .bind(&encoded.body)
                    .bind(encoded.client_msg_id.as_deref())
                    .bind(encoded.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&self.statements.set_last_seq)
                    .bind(seq)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                self.add_stats(&mut tx, &tenant, [StatsDelta::appended(message)])
                    .await?;
                let zone = self.zones.of(&tenant);
                self.add_counts(&mut tx, &tenant, &Deltas::appended(message, &zone))
                    .await?;
                tx.commit().await?;
                Ok(Appended {
                    // `seq` came from a non-negative counter plus one.
                    message: Message::from_new(message.clone(), Seq::new(seq as u64)),
                    duplicate: false,
                })
            }

            async fn append_all_once(
                &self,
                messages: &[NewMessage],
                encoded: &[EncodedMessage],
            ) -> Result<Vec<Appended>, TxError> {
                // A statement per step for the whole batch, not per message:
                // under group commit a batch is dozens of conversations, and
                // each statement is a round trip (to the server, or to
                // SQLite's worker thread).
                let mut by_conversation: BTreeMap<ConversationId, Vec<usize>> = BTreeMap::new();
                for (i, m) in encoded.iter().enumerate() {
                    by_conversation.entry(m.conversation).or_default().push(i);
                }
                let mut tx = self.writer.begin().await?;

                // 1. Lock every counter, in id order, so two batches lock rows
                //    in the same order and cannot deadlock each other.
                let (head, tail) = &self.statements.lock_counters;
                let mut query = sqlx::QueryBuilder::<$db>::new(head);
                let mut ids = query.separated(", ");
                for id in by_conversation.keys() {
                    ids.push_bind(id.as_uuid().as_bytes().to_vec());
                }
                query.push(tail);
                let mut counters: HashMap<ConversationId, (String, i64)> = HashMap::new();
                for row in query.build().fetch_all(&mut *tx).await? {
                    let id: Vec<u8> = row.try_get(0)?;
                    let id = uuid::Uuid::from_slice(&id).map_err(|e| {
                        StoreError::Corrupt(format!("a conversation id of {} bytes: {e}", id.len()))
                    })?;
                    counters.insert(
                        ConversationId::from_uuid(id),
                        (row.try_get(1)?, row.try_get(2)?),
                    );
                }
                if let Some(unknown) = by_conversation.keys().find(|id| !counters.contains_key(id))
                {
                    return Err(StoreError::UnknownConversation(*unknown).into());
                }

                // 2. Retries: messages whose client id is stored already.
                let mut stored: HashMap<(ConversationId, String), Message> = HashMap::new();
                let retries: Vec<&EncodedMessage> = encoded
                    .iter()
                    .filter(|m| m.client_msg_id.is_some())
                    .collect();
                let keys = retries
                    .iter()
                    .filter_map(|m| {
                        let cid = m.client_msg_id.clone()?;
                        Some((m.conversation.as_uuid().as_bytes().to_vec(), cid))
                    })
                    .collect();
                for mut query in <$db as common::FindRetries>::find_retries(&self.statements, keys)
                {
                    for row in query.build().fetch_all(&mut *tx).await? {
                        let id: Vec<u8> = row.try_get(5)?;
                        let id = uuid::Uuid::from_slice(&id).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "a conversation id of {} bytes: {e}",
                                id.len()
                            ))
                        })?;
                        let id = ConversationId::from_uuid(id);
                        let message = message_from_row(id, &row)?;
                        if let Some(cid) = message.client_msg_id.as_ref() {
                            stored.insert((id, cid.as_str().to_owned()), message);
                        }
                    }
                }

                // 3. Number the new ones, per conversation in batch order.
                let mut results: Vec<Option<Appended>> = vec![None; messages.len()];
                let mut to_insert: Vec<(usize, i64)> = Vec::with_capacity(messages.len());
                let mut new_last: Vec<(ConversationId, i64)> = Vec::new();
                let mut stats: BTreeMap<String, Vec<(Day, StatsDelta)>> = BTreeMap::new();
                let mut counts: BTreeMap<String, Deltas> = BTreeMap::new();
                for (&id, indexes) in &by_conversation {
                    let (tenant, first_new) = counters
                        .get(&id)
                        .cloned()
                        .ok_or(StoreError::UnknownConversation(id))?;
                    let mut last = first_new;
                    let mut in_batch: HashMap<&str, usize> = HashMap::new();
                    for &i in indexes {
                        if let Some(cid) = encoded[i].client_msg_id.as_deref() {
                            if let Some(&j) = in_batch.get(cid) {
                                results[i] = results[j].clone().map(|a| Appended {
                                    duplicate: true,
                                    ..a
                                });
                                continue;
                            }
                            if let Some(original) = stored.get(&(id, cid.to_owned())) {
                                results[i] = Some(Appended {
                                    message: original.clone(),
                                    duplicate: true,
                                });
                                continue;
                            }
                            in_batch.insert(cid, i);
                        }
                        last += 1;
                        results[i] = Some(Appended {
                            message: Message::from_new(messages[i].clone(), Seq::new(last as u64)),
                            duplicate: false,
                        });
                        to_insert.push((i, last));
                        stats
                            .entry(tenant.clone())
                            .or_default()
                            .push(StatsDelta::appended(&messages[i]));
                        let zone = self.zones.of(&tenant);
                        counts
                            .entry(tenant.clone())
                            .or_default()
                            .extend(Deltas::appended(&messages[i], &zone));
                    }
                    if last != first_new {
                        new_last.push((id, last));
                    }
                }

                // 4. Move the counters, in one statement.
                for chunk in new_last.chunks(common::BATCH_INSERT_ROWS) {
                    let mut update = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE cs_conversations SET last_seq = CASE id",
                    );
                    for (id, last) in chunk {
                        update.push(" WHEN ");
                        update.push_bind(id.as_uuid().as_bytes().to_vec());
                        update.push(" THEN ");
                        update.push_bind(*last);
                    }
                    update.push(" END WHERE id IN (");
                    let mut ids = update.separated(", ");
                    for (id, _) in chunk {
                        ids.push_bind(id.as_uuid().as_bytes().to_vec());
                    }
                    update.push(")");
                    update.build().execute(&mut *tx).await?;
                }

                // 5. Insert the messages.
                for chunk in to_insert.chunks(common::BATCH_INSERT_ROWS) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO cs_messages \
                         (conversation_id, seq, sender, body, client_msg_id, created_at) ",
                    );
                    insert.push_values(chunk, |mut row, &(i, seq)| {
                        let m = &encoded[i];
                        row.push_bind(m.conversation.as_uuid().as_bytes().to_vec())
                            .push_bind(seq)
                            .push_bind(m.sender.as_str())
                            .push_bind(m.body.as_str())
                            .push_bind(m.client_msg_id.as_deref())
                            .push_bind(m.created_at);
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                for (tenant, deltas) in stats {
                    self.add_stats(&mut tx, &tenant, deltas).await?;
                }
                for (tenant, deltas) in &counts {
                    self.add_counts(&mut tx, tenant, deltas).await?;
                }
                tx.commit().await?;
                results
                    .into_iter()
                    .map(|r| {
                        r.ok_or_else(|| {
                            StoreError::Corrupt("a batch result went missing".into()).into()
                        })
                    })
                    .collect()
            }

            /// Stores one group of the group commit (see `group_commit.rs`):
            /// one transaction for all of it, or, if that fails because of
            /// one message (an unknown conversation, a value the database
            /// refuses), one transaction per message so only that one fails.
            async fn commit_group(
                &self,
                messages: Vec<NewMessage>,
            ) -> Vec<Result<Appended, StoreError>> {
                let encoded = match messages
                    .iter()
                    .map(|m| codec::encode_message(&self.backend, m))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(encoded) => encoded,
                    // Checked before queueing, so this does not happen.
                    Err(e) => return $crate::store::group_commit::fan_out(&e, messages.len()),
                };
                if messages.len() > 1 {
                    match self
                        .with_retries(|| self.append_all_once(&messages, &encoded))
                        .await
                    {
                        Ok(appended) => return appended.into_iter().map(Ok).collect(),
                        // The backend is down: every message fails alike.
                        Err(e @ StoreError::Unavailable { .. }) => {
                            return $crate::store::group_commit::fan_out(&e, messages.len())
                        }
                        // One message's own fault: find it below.
                        Err(_) => {}
                    }
                }
                let mut results = Vec::with_capacity(messages.len());
                for (message, encoded) in messages.iter().zip(&encoded) {
                    results.push(
                        self.with_retries(|| self.append_once(message, encoded))
                            .await,
                    );
                }
                results
            }

            async fn create_once(&self, c: &Conversation, data: &str) -> Result<(), TxError> {
                let mut tx = self.writer.begin().await?;
                let inserted = sqlx::query(&self.statements.insert_conversation)
                    .bind(c.id().as_uuid().as_bytes().as_slice())
                    .bind(c.tenant().as_str())
                    .bind(c.visitor().as_str())
                    .bind(c.agent().map(AgentId::as_str))
                    .bind(c.state().kind().as_str())
                    .bind(codec::millis_to_i64(c.created_at()))
                    .bind(data)
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        return Err(StoreError::ConversationExists(c.id()).into());
                    }
                    other => other?,
                };
                self.add_stats(&mut tx, c.tenant().as_str(), [StatsDelta::created(c)])
                    .await?;
                let zone = self.zones.of(c.tenant().as_str());
                self.add_counts(&mut tx, c.tenant().as_str(), &Deltas::created(c, &zone))
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            /// The upsert and the read of what it stored, in one transaction,
            /// so the answer is this write's result whatever runs beside it.
            async fn upsert_visitor_once(
                &self,
                record: &VisitorRecord,
                attributes: &str,
            ) -> Result<VisitorRecord, TxError> {
                let mut tx = self.writer.begin().await?;
                sqlx::query(&self.statements.upsert_visitor)
                    .bind(record.tenant.as_str())
                    .bind(record.id.as_str())
                    .bind(record.display_name.as_deref())
                    .bind(record.email.as_deref())
                    .bind(codec::millis_to_i64(record.first_seen))
                    .bind(codec::millis_to_i64(record.last_seen))
                    .bind(attributes)
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query(&self.statements.visitor)
                    .bind(record.tenant.as_str())
                    .bind(record.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let stored = visitor_from_row(&record.tenant, &row)?;
                tx.commit().await?;
                Ok(stored)
            }

            async fn save_once(&self, c: &Conversation, data: &str) -> Result<(), TxError> {
                let mut tx = self.writer.begin().await?;
                let row = sqlx::query(&self.statements.lock_conversation_data)
                    .bind(c.id().as_uuid().as_bytes().as_slice())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::UnknownConversation(c.id()))?;
                let before = codec::decode_conversation(row.try_get::<&str, _>(0)?)?;
                sqlx::query(&self.statements.update_conversation)
                    .bind(c.visitor().as_str())
                    .bind(c.agent().map(AgentId::as_str))
                    .bind(c.state().kind().as_str())
                    .bind(data)
                    .bind(c.id().as_uuid().as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                self.add_stats(&mut tx, c.tenant().as_str(), StatsDelta::saved(&before, c))
                    .await?;
                if self.zones.counting() && Deltas::closes(&before, c) {
                    // The close folds the conversation's log, read in this
                    // transaction (the conversation's row is locked, so no
                    // append slips in between).
                    let log = sqlx::query(&self.statements.log)
                        .bind(c.id().as_uuid().as_bytes().as_slice())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|row| message_from_row(c.id(), row))
                        .collect::<Result<Vec<_>, _>>()?;
                    let zone = self.zones.of(c.tenant().as_str());
                    let deltas = Deltas::saved(&before, c, &log, &zone);
                    self.add_counts(&mut tx, c.tenant().as_str(), &deltas)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait]
        impl MessageStore for $store {
            async fn create_conversation(
                &self,
                conversation: &Conversation,
            ) -> Result<(), StoreError> {
                let data = codec::encode_conversation(&self.backend, conversation)?;
                self.with_retries(|| self.create_once(conversation, &data))
                    .await
            }

            async fn save_conversation(
                &self,
                conversation: &Conversation,
            ) -> Result<(), StoreError> {
                let data = codec::encode_conversation(&self.backend, conversation)?;
                self.with_retries(|| self.save_once(conversation, &data))
                    .await
            }

            async fn conversation(&self, id: ConversationId) -> Result<Conversation, StoreError> {
                let row = sqlx::query(&self.statements.conversation_data)
                    .bind(id.as_uuid().as_bytes().as_slice())
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?
                    .ok_or(StoreError::UnknownConversation(id))?;
                let data: &str = row
                    .try_get(0)
                    .map_err(|e| common::store_error(&self.backend, e))?;
                codec::decode_conversation(data)
            }

            async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
                // Encoding errors are the message's own: report them before queueing.
                codec::encode_message(&self.backend, &message)?;
                self.group
                    .append(message, &self.backend, |group| self.commit_group(group))
                    .await
            }

            async fn append_batch(
                &self,
                messages: Vec<NewMessage>,
            ) -> Vec<Result<Appended, StoreError>> {
                // Encoding errors are each message's own: answered here, and
                // the rest join the group commit together.
                let mut refused = Vec::with_capacity(messages.len());
                let mut queued = Vec::with_capacity(messages.len());
                for message in messages {
                    match codec::encode_message(&self.backend, &message) {
                        Ok(_) => {
                            refused.push(None);
                            queued.push(message);
                        }
                        Err(e) => refused.push(Some(Err(e.into()))),
                    }
                }
                let mut stored = self
                    .group
                    .append_many(queued, &self.backend, |group| self.commit_group(group))
                    .await
                    .into_iter();
                refused
                    .into_iter()
                    .map(|refusal| {
                        refusal.unwrap_or_else(|| {
                            stored.next().unwrap_or_else(|| {
                                Err(StoreError::Corrupt(
                                    "a group commit returned fewer results than messages".into(),
                                ))
                            })
                        })
                    })
                    .collect()
            }

            async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
                let row = sqlx::query(&self.statements.last_seq)
                    .bind(conversation.as_uuid().as_bytes().as_slice())
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?
                    .ok_or(StoreError::UnknownConversation(conversation))?;
                let last: i64 = row
                    .try_get(0)
                    .map_err(|e| common::store_error(&self.backend, e))?;
                u64::try_from(last).map(Seq::new).map_err(|_| {
                    StoreError::Corrupt(format!("conversation {conversation} has last_seq {last}"))
                })
            }

            async fn range(
                &self,
                conversation: ConversationId,
                from: Seq,
                to: Seq,
                limit: usize,
            ) -> Result<Vec<Message>, StoreError> {
                let binds = [
                    codec::seq_to_i64(from),
                    codec::seq_to_i64(to),
                    codec::limit_to_i64(limit),
                ];
                self.read_messages(conversation, &self.statements.range, &binds)
                    .await
            }

            async fn recent(
                &self,
                conversation: ConversationId,
                n: usize,
            ) -> Result<Vec<Message>, StoreError> {
                let mut newest_first = self
                    .read_messages(
                        conversation,
                        &self.statements.recent,
                        &[codec::limit_to_i64(n)],
                    )
                    .await?;
                newest_first.reverse();
                Ok(newest_first)
            }

            async fn after(
                &self,
                conversation: ConversationId,
                after: Seq,
                limit: usize,
            ) -> Result<Vec<Message>, StoreError> {
                let binds = [codec::seq_to_i64(after), codec::limit_to_i64(limit)];
                self.read_messages(conversation, &self.statements.after, &binds)
                    .await
            }
        }

        #[async_trait]
        impl ConversationQueries for $store {
            async fn visitor_conversations(
                &self,
                tenant: &TenantId,
                visitor: &VisitorId,
                limit: usize,
            ) -> Result<Vec<Conversation>, StoreError> {
                let query = sqlx::query(&self.statements.visitor_conversations)
                    .bind(tenant.as_str())
                    .bind(visitor.as_str())
                    .bind(codec::limit_to_i64(limit));
                self.read_conversations(query).await
            }

            async fn agent_open_conversations(
                &self,
                tenant: &TenantId,
                agent: &AgentId,
            ) -> Result<Vec<Conversation>, StoreError> {
                let query = sqlx::query(&self.statements.agent_open_conversations)
                    .bind(tenant.as_str())
                    .bind(agent.as_str());
                self.read_conversations(query).await
            }

            async fn open_conversations(
                &self,
                tenant: &TenantId,
                limit: usize,
            ) -> Result<Vec<Conversation>, StoreError> {
                let query = sqlx::query(&self.statements.open_conversations)
                    .bind(tenant.as_str())
                    .bind(codec::limit_to_i64(limit));
                self.read_conversations(query).await
            }
        }

        #[async_trait]
        impl MessageStoreExt for $store {
            async fn append_all(
                &self,
                messages: Vec<NewMessage>,
            ) -> Result<Vec<Appended>, StoreError> {
                if messages.is_empty() {
                    return Ok(Vec::new());
                }
                let encoded = messages
                    .iter()
                    .map(|m| codec::encode_message(&self.backend, m))
                    .collect::<Result<Vec<_>, _>>()?;
                self.with_retries(|| self.append_all_once(&messages, &encoded))
                    .await
            }

            async fn daily_stats(
                &self,
                tenant: &TenantId,
                from: Day,
                to: Day,
            ) -> Result<Vec<DailyStats>, StoreError> {
                let rows = self
                    .rows_of_days(&self.statements.daily_stats, tenant, from.0, to.0)
                    .await?;
                let count = |row: &DbRow, i: usize| -> Result<u64, StoreError> {
                    let v: i64 = row
                        .try_get(i)
                        .map_err(|e| common::store_error(&self.backend, e))?;
                    u64::try_from(v).map_err(|_| {
                        StoreError::Corrupt(format!("a daily counter is negative: {v}"))
                    })
                };
                rows.iter()
                    .map(|row| {
                        Ok(DailyStats {
                            day: Day(row
                                .try_get(0)
                                .map_err(|e| common::store_error(&self.backend, e))?),
                            conversations: count(row, 1)?,
                            messages: count(row, 2)?,
                            first_responses: count(row, 3)?,
                            first_response_ms_total: count(row, 4)?,
                            closed: count(row, 5)?,
                            bot_resolved: count(row, 6)?,
                            handoffs: count(row, 7)?,
                        })
                    })
                    .collect()
            }
        }

        impl $store {
            /// Whether writes keep the report counters (`cs_report_counts`)
            /// from now on, for this store and its clones. On by default.
            /// Off, reports show nothing new: for a host that keeps no
            /// reports, and for `store_bench --no-report-counters`, which
            /// measures what keeping them costs.
            pub fn set_report_counters(&self, on: bool) {
                self.zones.set_counting(on);
            }
        }

        #[async_trait]
        impl ReportStore for $store {
            fn set_report_zone(&self, tenant: &TenantId, zone: ReportZone) {
                self.zones.set(tenant, zone);
            }

            async fn add_report_counts(
                &self,
                tenant: &TenantId,
                deltas: &Deltas,
            ) -> Result<(), StoreError> {
                if deltas.is_empty() {
                    return Ok(());
                }
                self.with_retries(|| async {
                    let mut tx = self.writer.begin().await?;
                    self.add_counts(&mut tx, tenant.as_str(), deltas).await?;
                    tx.commit().await?;
                    Ok(())
                })
                .await
            }

            async fn report_counts(
                &self,
                tenant: &TenantId,
                from: ReportDay,
                to: ReportDay,
            ) -> Result<Vec<Count>, StoreError> {
                let rows = self
                    .rows_of_days(&self.statements.report_counts, tenant, from.0, to.0)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let read = || -> Result<(i64, String, String, i64), sqlx::Error> {
                            Ok((
                                row.try_get(0)?,
                                row.try_get(1)?,
                                row.try_get(2)?,
                                row.try_get(3)?,
                            ))
                        };
                        let (day, agent, measure, value) =
                            read().map_err(|e| common::store_error(&self.backend, e))?;
                        reports::decode_count(day, &agent, measure, value)
                    })
                    .collect()
            }
        }

        #[async_trait]
        impl VisitorStore for $store {
            async fn upsert_visitor(
                &self,
                record: &VisitorRecord,
            ) -> Result<VisitorRecord, StoreError> {
                let attributes = visitors::encode_attributes(&self.backend, record)?;
                self.with_retries(|| self.upsert_visitor_once(record, &attributes))
                    .await
            }

            async fn visitor(
                &self,
                tenant: &TenantId,
                id: &VisitorId,
            ) -> Result<Option<VisitorRecord>, StoreError> {
                let row = sqlx::query(&self.statements.visitor)
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?;
                row.map(|row| visitor_from_row(tenant, &row))
                    .transpose()
                    .map_err(|e| e.into_store_error(&self.backend))
            }

            async fn touch_visitor(
                &self,
                tenant: &TenantId,
                id: &VisitorId,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let now = codec::millis_to_i64(now);
                self.with_retries(|| async {
                    sqlx::query(&self.statements.touch_visitor)
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .bind(now)
                        .bind(now)
                        .execute(&self.writer)
                        .await?;
                    Ok(())
                })
                .await
            }

            async fn recent_visitors(
                &self,
                tenant: &TenantId,
                limit: usize,
            ) -> Result<Vec<VisitorRecord>, StoreError> {
                let rows = sqlx::query(&self.statements.recent_visitors)
                    .bind(tenant.as_str())
                    .bind(codec::limit_to_i64(limit))
                    .fetch_all(&self.reader)
                    .await
                    .map_err(|e| common::store_error(&self.backend, e))?;
                rows.iter()
                    .map(|row| visitor_from_row(tenant, row))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.into_store_error(&self.backend))
            }
        }
    };
}

pub(crate) use sql_message_store;

#[cfg(test)]
mod tests {
    use super::number_placeholders;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            number_placeholders("a = ? AND b = ? LIMIT ?"),
            "a = $1 AND b = $2 LIMIT $3"
        );
    }
}
