//! Errors of opening a store. Once open, every store speaks
//! [`cs_core::store::StoreError`]; the adapter side has
//! [`AdapterError`](crate::adapter::AdapterError).

use cs_core::store::BoxError;

/// A store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL (or path, or schema name) is malformed.
    #[error("bad database address {url}: {reason}")]
    BadUrl {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the address, or it refused the login.
    #[error("cannot reach the database at {url}; check that it is running and that the URL is right: {source}")]
    Unreachable {
        /// The address, with any password replaced by `***`.
        url: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The database holds a schema this build does not know: written by a
    /// newer cs-datahub, edited by hand, or left half-migrated.
    #[error("the database at {url} has a schema this version of cs-datahub cannot use ({detail}); point it at the database of a matching version, or a fresh one")]
    SchemaMismatch {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What the migrator found.
        detail: String,
    },
    /// Creating or upgrading the schema failed.
    #[error("creating the cs-datahub schema in {url} failed: {source}")]
    Migration {
        /// The address, with any password replaced by `***`.
        url: String,
        /// The migrator's error.
        #[source]
        source: BoxError,
    },
    /// Talking to the server failed after it was reached.
    #[error("the database at {url} failed while opening the store: {source}")]
    Backend {
        /// The address, with any password replaced by `***`.
        url: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

/// Re-exported from cs-core, where every crate's errors get it.
pub use cs_core::redact_url;
