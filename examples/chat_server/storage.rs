//! The conversation store a `--database` URL names. SQLite in the data dir
//! is the default, so the demo needs no server; PostgreSQL and MariaDB/MySQL
//! are one flag away.

use std::path::Path;
use std::sync::Arc;

use cs::datahub::store::{MySqlStore, PostgresStore, SqliteStore};
use cs::datahub::{redact_url, OpenError};
use cs::desk::ServiceDeskBuilder;

/// Opens the store `url` names, creating its schema on first use, and hands
/// it to the desk. Returns what it opened, for the log (never a password).
pub async fn open(
    url: Option<&str>,
    data_dir: &Path,
    desk: ServiceDeskBuilder,
) -> Result<(ServiceDeskBuilder, String), OpenError> {
    let Some(url) = url else {
        let path = data_dir.join("cs.db");
        let store = SqliteStore::open(&path).await?;
        return Ok((
            desk.store(Arc::new(store)),
            format!("sqlite at {}", path.display()),
        ));
    };
    if url == "sqlite::memory:" {
        let store = SqliteStore::in_memory().await?;
        return Ok((
            desk.store(Arc::new(store)),
            "sqlite in memory (gone at exit)".into(),
        ));
    }
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let store = SqliteStore::open(path).await?;
        return Ok((desk.store(Arc::new(store)), format!("sqlite at {path}")));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url).await?;
        return Ok((desk.store(Arc::new(store)), "postgresql".into()));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        let store = MySqlStore::connect(&url).await?;
        return Ok((desk.store(Arc::new(store)), "mariadb/mysql".into()));
    }
    Err(OpenError::BadUrl {
        url: redact_url(url),
        reason: "use sqlite://PATH, sqlite::memory:, postgres://… or mysql://…".into(),
    })
}
