//! Addresses fit for errors and logs: every crate that connects to a server
//! names it in its errors, and none may show a password.

/// `url` with its password (if any) replaced by `***`.
///
/// The user info ends at the last `@` (a password may itself contain one).
/// A bare user info is a user name (`mysql://root@host`), except for Redis
/// (`redis://`, `rediss://`), where it is the password, and NATS
/// (`nats://`, `tls://`), where it is a token.
///
/// ```
/// use cs_core::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/shop"), "postgres://app:***@db:5432/shop");
/// assert_eq!(redact_url("redis://s3cret@cache:6379"), "redis://***@cache:6379");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let scheme = &url[..scheme_end];
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    match user_info.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &user_info[..colon],
            &rest[at..]
        ),
        None if matches!(scheme, "redis" | "rediss" | "nats" | "tls") => {
            format!("{}***{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
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
        assert_eq!(redact_url("redis://u:p@ss@h:6379"), "redis://u:***@h:6379");
        assert_eq!(redact_url("redis://secret@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("nats://t0ken@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://u:pw@h:4222"), "nats://u:***@h:4222");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
