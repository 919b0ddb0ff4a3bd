//! Helpers for tests (feature `testing`): reading a real server's URL, and
//! wrapping a real store to slow it down or make it fail.

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

/// Runs host code before each append of a wrapped store: latency, a gate, a
/// fault. See [`Intercepted`].
#[async_trait::async_trait]
pub trait AppendInterceptor: Send + Sync + 'static {
    /// Called before `message` is appended; may wait or panic.
    async fn before_append(&self, message: &crate::message::NewMessage);

    /// Called before a batch is appended (`MessageStore::append_batch`).
    /// The default runs [`AppendInterceptor::before_append`] for each
    /// message, so a delay per append stays a delay per message.
    async fn before_batch(&self, messages: &[crate::message::NewMessage]) {
        for message in messages {
            self.before_append(message).await;
        }
    }
}

/// A real store with something run before every append: the way tests and
/// benchmarks slow a store down, hold it at a gate, or make it fail, without
/// writing another store. Everything else goes straight to `inner`.
///
/// ```
/// use std::time::Duration;
/// use cs_core::store::MemoryStore;
/// use cs_core::testing::{AppendInterceptor, Intercepted};
///
/// /// A database round trip, roughly.
/// struct TwoMillis;
///
/// #[async_trait::async_trait]
/// impl AppendInterceptor for TwoMillis {
///     async fn before_append(&self, _: &cs_core::NewMessage) {
///         tokio::time::sleep(Duration::from_millis(2)).await;
///     }
/// }
///
/// let slow_store = Intercepted { inner: MemoryStore::new(), interceptor: TwoMillis };
/// ```
pub struct Intercepted<S, I> {
    /// The real store.
    pub inner: S,
    /// What runs before each append.
    pub interceptor: I,
}

#[async_trait::async_trait]
impl<S: crate::store::MessageStore, I: AppendInterceptor> crate::store::MessageStore
    for Intercepted<S, I>
{
    async fn create_conversation(
        &self,
        conversation: &crate::conversation::Conversation,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.create_conversation(conversation).await
    }

    async fn save_conversation(
        &self,
        conversation: &crate::conversation::Conversation,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.save_conversation(conversation).await
    }

    async fn conversation(
        &self,
        id: crate::ids::ConversationId,
    ) -> Result<crate::conversation::Conversation, crate::store::StoreError> {
        self.inner.conversation(id).await
    }

    async fn append(
        &self,
        message: crate::message::NewMessage,
    ) -> Result<crate::store::Appended, crate::store::StoreError> {
        self.interceptor.before_append(&message).await;
        self.inner.append(message).await
    }

    async fn append_batch(
        &self,
        messages: Vec<crate::message::NewMessage>,
    ) -> Vec<Result<crate::store::Appended, crate::store::StoreError>> {
        self.interceptor.before_batch(&messages).await;
        self.inner.append_batch(messages).await
    }

    async fn last_seq(
        &self,
        conversation: crate::ids::ConversationId,
    ) -> Result<crate::ids::Seq, crate::store::StoreError> {
        self.inner.last_seq(conversation).await
    }

    async fn range(
        &self,
        conversation: crate::ids::ConversationId,
        from: crate::ids::Seq,
        to: crate::ids::Seq,
        limit: usize,
    ) -> Result<Vec<crate::message::Message>, crate::store::StoreError> {
        self.inner.range(conversation, from, to, limit).await
    }

    async fn recent(
        &self,
        conversation: crate::ids::ConversationId,
        n: usize,
    ) -> Result<Vec<crate::message::Message>, crate::store::StoreError> {
        self.inner.recent(conversation, n).await
    }

    async fn after(
        &self,
        conversation: crate::ids::ConversationId,
        after: crate::ids::Seq,
        limit: usize,
    ) -> Result<Vec<crate::message::Message>, crate::store::StoreError> {
        self.inner.after(conversation, after, limit).await
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
