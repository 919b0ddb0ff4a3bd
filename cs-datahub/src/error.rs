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

/// `url` with its password (if any) replaced by `***`, fit for errors and logs.
///
/// ```
/// use cs_datahub::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/shop"), "postgres://app:***@db:5432/shop");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last '@' ends the user info; a password may itself contain '@'.
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &user_info[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("mysql://root:p@ss@127.0.0.1:3306/test?x=1"),
            "mysql://root:***@127.0.0.1:3306/test?x=1"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("redis://:pw@host/0"), "redis://:***@host/0");
    }
}
