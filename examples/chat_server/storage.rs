//! The conversation store a `--database` URL names. SQLite in the data dir
//! is the default, so the demo needs no server; PostgreSQL and MariaDB/MySQL
//! are one flag away.

use std::path::Path;
use std::sync::Arc;

use cs::core::store::MessageStore;
use cs::datahub::store::{MessageStoreExt, MySqlStore, PostgresStore, SqliteStore};
use cs::datahub::{redact_url, OpenError};

/// The store, seen through the two traits the server uses: the message
/// path's [`MessageStore`], and the inbox queries of [`MessageStoreExt`].
/// Both point at the same store.
#[derive(Clone)]
pub struct Stores {
    /// For the dispatcher and the message path.
    pub messages: Arc<dyn MessageStore>,
    /// For the desk: a visitor's conversations, the open ones at start.
    pub queries: Arc<dyn MessageStoreExt>,
    /// What it is, for logs (never with a password).
    pub describe: String,
}

impl Stores {
    fn of<S: MessageStoreExt + 'static>(store: S, describe: String) -> Self {
        let store = Arc::new(store);
        Stores {
            messages: Arc::clone(&store) as Arc<dyn MessageStore>,
            queries: store,
            describe,
        }
    }
}

/// Opens the store `url` names, creating its schema on first use.
pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Stores, OpenError> {
    let Some(url) = url else {
        let path = data_dir.join("cs.db");
        let describe = format!("sqlite at {}", path.display());
        return Ok(Stores::of(SqliteStore::open(&path).await?, describe));
    };
    if url == "sqlite::memory:" {
        return Ok(Stores::of(
            SqliteStore::in_memory().await?,
            "sqlite in memory (gone at exit)".into(),
        ));
    }
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let describe = format!("sqlite at {path}");
        return Ok(Stores::of(SqliteStore::open(path).await?, describe));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url).await?;
        return Ok(Stores::of(store, "postgresql".into()));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        let store = MySqlStore::connect(&url).await?;
        return Ok(Stores::of(store, "mariadb/mysql".into()));
    }
    Err(OpenError::BadUrl {
        url: redact_url(url),
        reason: "use sqlite://PATH, sqlite::memory:, postgres://… or mysql://…".into(),
    })
}
