//! [`SqliteStore`]: the embedded default, in a file or in memory.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::store::group_commit::GroupCommit;
use crate::store::sql::{self, Dialect, Statements};
use crate::OpenError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const DIALECT: Dialect = Dialect {
    // One writer connection serialises every write, so no row lock is needed.
    lock_suffix: "",
    numbered_placeholders: false,
    count_upsert_tail: sql::ON_CONFLICT_ADD_COUNT,
    stats_upsert_tail: sql::ON_CONFLICT_ADD,
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with any extended code: another
    // process holds the file's write lock for longer than busy_timeout.
    read_text: sql::plain_text,
    open_filter: sql::OPEN_BY_STATE.0,
    open_order: sql::OPEN_BY_STATE.1,
    upsert: sql::on_conflict_update,
    retryable_code: |code| code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
    retry_keys: sql::RetryKeys::RowList,
};

/// When an append that returned `Ok` is safe on a SQLite file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is synced to disk (`synchronous = FULL`): an append that
    /// returned `Ok` survives a power cut. The default.
    #[default]
    PowerLoss,
    /// Commits reach the OS but are synced only at checkpoints
    /// (`synchronous = NORMAL` with the write-ahead log): an append that
    /// returned `Ok` survives the process crashing, but a power cut may lose
    /// the last moments. Roughly twice the write rate on a cloud disk.
    ProcessCrash,
}

impl Durability {
    fn synchronous(self) -> SqliteSynchronous {
        match self {
            Durability::PowerLoss => SqliteSynchronous::Full,
            Durability::ProcessCrash => SqliteSynchronous::Normal,
        }
    }
}

/// Conversations and messages in SQLite: a file, or memory. No server.
///
/// A file store opens one writer connection (SQLite allows one writer at a
/// time anyway; queueing writers in the pool is cheaper than letting them
/// collide on the file lock) and a few reader connections, with the
/// write-ahead log, so reads never wait for writes. By default commits are
/// synced ([`Durability::PowerLoss`]); [`SqliteStore::open_with`] trades
/// that for speed.
/// Keep one process per file: other processes would contend for the write
/// lock, and retry when they lose (up to a few seconds) before failing.
///
/// ```
/// use cs_core::store::MessageStore;
/// use cs_core::{Conversation, NewMessage, Party, TenantId, Timestamp, VisitorId};
/// use cs_datahub::store::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::in_memory().await?; // or SqliteStore::open("chat.db")
/// let visitor = VisitorId::new("v1")?;
/// let conversation = Conversation::open(TenantId::new("shop")?, visitor.clone(), Timestamp::now());
/// store.create_conversation(&conversation).await?;
/// let stored = store
///     .append(NewMessage::text(conversation.id(), Party::Visitor(visitor), "hello"))
///     .await?;
/// assert_eq!(stored.message.seq.get(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    statements: Arc<Statements>,
    backend: Arc<str>,
    /// Shared by clones: concurrent appends commit together.
    group: Arc<GroupCommit>,
    /// Each tenant's report zone (shared by clones).
    zones: Arc<cs_core::store::reports::ReportZones>,
}

/// Creates a missing database file readable by its owner only (0600):
/// conversations are shoppers' personal data, and SQLite gives its `-wal`
/// and `-shm` files the database file's mode. An existing file is left as
/// it is; a failure here surfaces when SQLite opens the file.
fn create_private(path: &Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = options.open(path);
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database file at `path`,
    /// and brings its schema up to date.
    ///
    /// # Errors
    /// [`OpenError::Unreachable`] if the file cannot be opened or created,
    /// [`OpenError::SchemaMismatch`] if it holds a schema from another
    /// version, [`OpenError::Migration`] if it is not a SQLite database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path, Durability::default()).await
    }

    /// [`SqliteStore::open`] with a chosen [`Durability`].
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        create_private(path);
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(durability.synchronous())
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| sql::connect_error(&name, e))?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| sql::migrate_error(&name, e))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| sql::connect_error(&name, e))?;
        Ok(Self::from_pools(
            writer,
            reader,
            format!("sqlite at {name}"),
        ))
    }

    /// A private database in memory, gone when the store is dropped: for
    /// tests and demos.
    ///
    /// # Errors
    /// Only if SQLite itself fails to start.
    pub async fn in_memory() -> Result<Self, OpenError> {
        let name = "sqlite::memory:";
        let options =
            SqliteConnectOptions::from_str(name).map_err(|e| sql::connect_error(name, e))?;
        // Each connection to ":memory:" is a database of its own, so the
        // store keeps exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| sql::connect_error(name, e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| sql::migrate_error(name, e))?;
        Ok(Self::from_pools(
            pool.clone(),
            pool,
            "sqlite in memory".into(),
        ))
    }

    fn from_pools(writer: SqlitePool, reader: SqlitePool, backend: String) -> Self {
        Self {
            writer,
            reader,
            statements: Arc::new(Statements::new(&DIALECT)),
            zones: Arc::default(),
            backend: backend.into(),
            group: Arc::default(),
        }
    }

    /// Waits for in-flight work and closes every connection.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

mod imp {
    use super::SqliteStore;
    crate::store::sql::sql_message_store!(SqliteStore, sqlx::Sqlite);
}

impl sql::FindRetries for sqlx::Sqlite {
    fn find_retries(
        statements: &Statements,
        keys: Vec<(Vec<u8>, String)>,
    ) -> Vec<sqlx::QueryBuilder<'static, Self>> {
        sql::retries_by_row_list(statements, keys)
    }
}
