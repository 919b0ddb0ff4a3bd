//! [`PostgresStore`]: conversations and messages in PostgreSQL.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::store::group_commit::GroupCommit;
use crate::store::sql::{self, Dialect, Statements};
use crate::{redact_url, OpenError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

const DIALECT: Dialect = Dialect {
    lock_suffix: " FOR UPDATE",
    numbered_placeholders: true,
    count_upsert_tail: sql::ON_CONFLICT_ADD_COUNT,
    stats_upsert_tail: sql::ON_CONFLICT_ADD,
    // serialization_failure, deadlock_detected.
    read_text: sql::plain_text,
    open_filter: sql::OPEN_BY_STATE.0,
    open_order: sql::OPEN_BY_STATE.1,
    upsert: sql::on_conflict_update,
    retryable_code: |code| matches!(code, "40001" | "40P01"),
    retry_keys: sql::RetryKeys::Arrays,
};

/// Conversations and messages in PostgreSQL.
///
/// A pool of connections (10 by default) that reconnects by itself: after
/// the server restarts, the next call gets a fresh connection. A call made
/// while the server is down fails with `StoreError::Unavailable`; an append
/// that returned `Ok` was committed.
///
/// ```no_run
/// use cs_datahub::store::PostgresStore;
/// # async fn demo() -> Result<(), cs_datahub::OpenError> {
/// let store = PostgresStore::connect("postgres://app@127.0.0.1:5432/shop").await?;
/// // Or keep cs tables in a schema of their own:
/// let store = PostgresStore::connect_in_schema("postgres://app@127.0.0.1:5432/shop", "chat").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    statements: Arc<Statements>,
    backend: Arc<str>,
    /// Shared by clones: concurrent appends commit together.
    group: Arc<GroupCommit>,
    /// Each tenant's report zone (shared by clones).
    zones: Arc<cs_core::store::reports::ReportZones>,
}

impl PostgresStore {
    /// Connects to the database at `url` and brings the cs schema (tables
    /// prefixed `cs_`) up to date, in the connection's default schema.
    ///
    /// # Errors
    /// [`OpenError::BadUrl`], [`OpenError::Unreachable`] (naming the URL,
    /// without its password), [`OpenError::SchemaMismatch`],
    /// [`OpenError::Migration`].
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        Self::open(url, None, 10).await
    }

    /// Like [`PostgresStore::connect`], with the cs tables in `schema`
    /// (created if missing): `[a-z_][a-z0-9_]*`, at most 63 bytes.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`], and [`OpenError::BadUrl`] for a bad
    /// schema name.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, OpenError> {
        Self::open(url, Some(schema), 10).await
    }

    async fn open(url: &str, schema: Option<&str>, connections: u32) -> Result<Self, OpenError> {
        let shown = redact_url(url);
        let mut options = PgConnectOptions::from_str(url).map_err(|e| OpenError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        if let Some(schema) = schema {
            sql::check_identifier(&shown, schema)?;
        }
        // One plain connection first: it fails at once when nothing listens,
        // where the pool would keep retrying until its acquire timeout.
        let mut conn = options
            .connect()
            .await
            .map_err(|e| sql::connect_error(&shown, e))?;

        if let Some(schema) = schema {
            // The name was checked above, so quoting it is enough.
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn)
                .await
                .map_err(|e| OpenError::Backend {
                    url: shown.clone(),
                    source: Box::new(e),
                })?;
            options = options.options([("search_path", schema)]);
        }
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| sql::connect_error(&shown, e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| sql::migrate_error(&shown, e))?;
        let backend = match schema {
            Some(schema) => format!("postgres at {shown}, schema {schema}"),
            None => format!("postgres at {shown}"),
        };
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
            statements: Arc::new(Statements::new(&DIALECT)),
            zones: Arc::default(),
            backend: backend.into(),
            group: Arc::default(),
        })
    }

    /// Waits for in-flight work and closes every connection.
    pub async fn close(&self) {
        self.writer.close().await;
    }
}

mod imp {
    use super::PostgresStore;
    crate::store::sql::sql_message_store!(PostgresStore, sqlx::Postgres);
}

impl sql::FindRetries for sqlx::Postgres {
    fn find_retries(
        statements: &Statements,
        keys: Vec<(Vec<u8>, String)>,
    ) -> Vec<sqlx::QueryBuilder<'static, Self>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let (conversations, client_ids): (Vec<Vec<u8>>, Vec<String>) = keys.into_iter().unzip();
        let mut query = sqlx::QueryBuilder::new(&statements.find_client_msgs);
        query.push_bind(conversations);
        query.push("::bytea[], ");
        query.push_bind(client_ids);
        // Key columns named apart from the message columns, which the
        // head selects unqualified.
        query.push(
            "::text[]) AS batch(batch_conversation, batch_client_id) \
             ON conversation_id = batch_conversation AND client_msg_id = batch_client_id",
        );
        vec![query]
    }
}
