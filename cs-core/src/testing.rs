//! Helpers for tests that need a real server (feature `testing`).

/// Set to `1` to turn a missing service URL into a test failure instead of a
/// skip. CI sets it, so a misconfigured runner cannot pass by skipping.
pub const REQUIRE_SERVICES_VAR: &str = "CS_REQUIRE_SERVICES";

/// Reads a service URL (such as `CS_TEST_POSTGRES_URL`) for a test.
///
/// - Set and non-empty: returns it.
/// - Unset or empty: prints a notice and returns `None`, so the test can
///   return early and count as skipped.
/// - Unset while `CS_REQUIRE_SERVICES=1`: panics, failing the test.
///
/// ```no_run
/// # fn connect(_: &str) {}
/// let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else { return };
/// connect(&url);
/// ```
///
/// # Panics
/// When the variable is unset and `CS_REQUIRE_SERVICES=1`; that is its job.
pub fn service_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|url| !url.trim().is_empty());
    decide(var, url, services_required())
}

fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v.trim() == "1")
}

fn decide(var: &str, url: Option<String>, required: bool) -> Option<String> {
    match url {
        Some(url) => Some(url),
        None if required => panic!(
            "{var} is not set, but {REQUIRE_SERVICES_VAR}=1 requires this service; \
             set {var} (see .ci/run for the URLs CI uses) or unset {REQUIRE_SERVICES_VAR}"
        ),
        None => {
            eprintln!("skipped: {var} is not set; set it to run this test against a real server");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn set_urls_are_returned() {
        let url = Some("redis://127.0.0.1:6379".to_owned());
        assert_eq!(decide("X", url.clone(), true), url);
        assert_eq!(decide("X", url.clone(), false), url);
    }

    #[test]
    fn unset_skips_when_not_required() {
        assert_eq!(decide("CS_TEST_NOPE_URL", None, false), None);
    }

    #[test]
    #[should_panic(expected = "CS_TEST_NOPE_URL is not set, but CS_REQUIRE_SERVICES=1")]
    fn unset_fails_when_required() {
        decide("CS_TEST_NOPE_URL", None, true);
    }
}
