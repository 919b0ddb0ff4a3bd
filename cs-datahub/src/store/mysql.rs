//! [`MySqlStore`]: conversations and messages in MariaDB or MySQL.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlPool};

use crate::store::group_commit::GroupCommit;
use crate::store::sql::{self, Dialect, Statements};
use crate::{redact_url, OpenError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mysql");

const DIALECT: Dialect = Dialect {
    lock_suffix: " FOR UPDATE",
    numbered_placeholders: false,
    count_upsert_tail: "ON DUPLICATE KEY UPDATE value = value + VALUES(value)",
    stats_upsert_tail: "ON DUPLICATE KEY UPDATE \
         conversations = conversations + VALUES(conversations), \
         messages = messages + VALUES(messages), \
         first_responses = first_responses + VALUES(first_responses), \
         first_response_ms_total = first_response_ms_total + VALUES(first_response_ms_total), \
         closed = closed + VALUES(closed), \
         bot_resolved = bot_resolved + VALUES(bot_resolved), \
         handoffs = handoffs + VALUES(handoffs)",
    // ER_LOCK_DEADLOCK reports SQLSTATE 40001.
    // Binary-collation columns come back flagged BINARY, which sqlx will not
    // decode as a string; converting in the SELECT drops the flag.
    read_text: |column| format!("CONVERT({column} USING utf8mb4)"),
    retryable_code: |code| code == "40001",
    // MySQL has no partial indexes: migration 0002 adds a generated column,
    // `open_since`, that is `created_at` while the conversation is open and
    // NULL once closed, indexed with the tenant; this reads that index in order.
    open_filter: "open_since IS NOT NULL",
    open_order: "open_since, id",
    upsert: |_key, columns| {
        let set: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = VALUES({c})"))
            .collect();
        format!("ON DUPLICATE KEY UPDATE {}", set.join(", "))
    },
    retry_keys: sql::RetryKeys::RowList,
};

/// Conversations and messages in MariaDB (10.5+) or MySQL (8+), InnoDB.
///
/// Tables are `utf8mb4` with binary collation, so ids compare byte for byte.
/// A pool of connections (10 by default) that reconnects by itself.
///
/// ```no_run
/// use cs_datahub::store::MySqlStore;
/// # async fn demo() -> Result<(), cs_datahub::OpenError> {
/// let store = MySqlStore::connect("mysql://app@127.0.0.1:3306/shop").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    writer: MySqlPool,
    reader: MySqlPool,
    statements: Arc<Statements>,
    backend: Arc<str>,
    /// Shared by clones: concurrent appends commit together.
    group: Arc<GroupCommit>,
    /// Each tenant's report zone (shared by clones).
    zones: Arc<cs_core::store::reports::ReportZones>,
}

impl MySqlStore {
    /// Connects to the database named in `url` and brings the cs schema
    /// (tables prefixed `cs_`) up to date.
    ///
    /// # Errors
    /// [`OpenError::BadUrl`], [`OpenError::Unreachable`] (naming the URL,
    /// without its password), [`OpenError::SchemaMismatch`],
    /// [`OpenError::Migration`].
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        Self::open(url, None).await
    }

    /// Like [`MySqlStore::connect`], in `database` on that server (created if
    /// missing): `[a-z_][a-z0-9_]*`, at most 63 bytes.
    ///
    /// # Errors
    /// As [`MySqlStore::connect`], and [`OpenError::BadUrl`] for a bad name.
    pub async fn connect_in_database(url: &str, database: &str) -> Result<Self, OpenError> {
        Self::open(url, Some(database)).await
    }

    async fn open(url: &str, database: Option<&str>) -> Result<Self, OpenError> {
        let shown = redact_url(url);
        let mut options = MySqlConnectOptions::from_str(url).map_err(|e| OpenError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        if let Some(database) = database {
            sql::check_identifier(&shown, database)?;
        }
        // One plain connection first: it fails at once when nothing listens,
        // where the pool would keep retrying until its acquire timeout.
        let mut conn = options
            .connect()
            .await
            .map_err(|e| sql::connect_error(&shown, e))?;

        if let Some(database) = database {
            // The name was checked above, so quoting it is enough.
            sqlx::query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| OpenError::Backend {
                url: shown.clone(),
                source: Box::new(e),
            })?;
            options = options.database(database);
        }
        let _ = conn.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| sql::connect_error(&shown, e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| sql::migrate_error(&shown, e))?;
        let backend = match database {
            Some(database) => format!("mysql at {shown}, database {database}"),
            None => format!("mysql at {shown}"),
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
    use super::MySqlStore;
    crate::store::sql::sql_message_store!(MySqlStore, sqlx::MySql);
}

impl sql::FindRetries for sqlx::MySql {
    fn find_retries(
        statements: &Statements,
        keys: Vec<(Vec<u8>, String)>,
    ) -> Vec<sqlx::QueryBuilder<'static, Self>> {
        sql::retries_by_row_list(statements, keys)
    }
}
