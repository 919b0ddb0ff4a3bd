//! The DataHub against adapters written here the way a shop would write
//! them: partial answers, timeouts, the cache, the circuit breaker and a
//! panicking adapter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cs_core::{Timestamp, VisitorId};
use cs_datahub::{
    AdapterError, BreakerConfig, BreakerState, Capabilities, Capability, DataAdapter, DataHub,
    FailureReason, HubConfig, Order, UserProfile,
};

fn visitor() -> VisitorId {
    VisitorId::new("v-1").unwrap()
}

fn order(id: &str, placed_at: u64) -> Order {
    Order {
        id: id.into(),
        status: "paid".into(),
        total_minor: 1999,
        currency: "EUR".into(),
        placed_at: Timestamp::from_millis(placed_at),
        lines: Vec::new(),
    }
}

/// A CRM that knows names, emails and tags, and counts how often it is asked.
#[derive(Default)]
struct Crm {
    calls: AtomicU32,
}

#[async_trait]
impl DataAdapter for Crm {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile, Capability::CustomQuery])
    }
    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if visitor.as_str() == "stranger" {
            return Ok(None);
        }
        Ok(Some(UserProfile {
            name: Some("Li Na".into()),
            email: Some("li.na@example.com".into()),
            tags: ["vip".to_owned()].into(),
            attributes: BTreeMap::from([("lifetime_value".to_owned(), serde_json::json!(1234))]),
            ..Default::default()
        }))
    }
    async fn query(
        &self,
        name: &str,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, AdapterError> {
        match name {
            "open_tickets" => Ok(serde_json::json!({"visitor": params["visitor"], "open": 2})),
            other => Err(AdapterError::UnknownQuery(other.into())),
        }
    }
}

/// An ERP with orders and its own idea of the customer's name and tier.
struct Erp;

#[async_trait]
impl DataAdapter for Erp {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::UserProfile,
            Capability::RecentOrders,
            Capability::OrderById,
        ])
    }
    async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        Ok(Some(UserProfile {
            name: Some("LI NA (ERP)".into()),
            tier: Some("gold".into()),
            tags: ["wholesale".to_owned()].into(),
            ..Default::default()
        }))
    }
    async fn recent_orders(&self, _: &VisitorId, _: usize) -> Result<Vec<Order>, AdapterError> {
        Ok(vec![order("A-2", 2_000), order("A-1", 1_000)])
    }
    async fn order(&self, id: &str) -> Result<Option<Order>, AdapterError> {
        Ok((id == "A-1").then(|| order("A-1", 1_000)))
    }
}

/// An order service whose database is down: every call fails.
#[derive(Default)]
struct BrokenOrders {
    calls: AtomicU32,
}

#[async_trait]
impl DataAdapter for BrokenOrders {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::RecentOrders, Capability::UserProfile])
    }
    async fn recent_orders(&self, _: &VisitorId, _: usize) -> Result<Vec<Order>, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(AdapterError::failed("connection refused by orders-db:5432"))
    }
    async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(AdapterError::failed("connection refused by orders-db:5432"))
    }
}

/// A system that answers, but far too slowly.
struct Slow;

#[async_trait]
impl DataAdapter for Slow {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile])
    }
    async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Some(UserProfile {
            phone: Some("too late".into()),
            ..Default::default()
        }))
    }
}

/// An adapter with a bug.
struct Buggy;

#[async_trait]
impl DataAdapter for Buggy {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile, Capability::ProductBySku])
    }
    async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        let fields: Vec<&str> = Vec::new();
        panic!("index out of bounds: {}", fields.len());
    }
}

fn config() -> HubConfig {
    HubConfig {
        adapter_timeout: Duration::from_millis(200),
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn profiles_merge_by_priority_and_failures_make_a_partial_answer() {
    let mut hub = DataHub::new(config());
    hub.register("crm", Crm::default()).unwrap();
    hub.register("erp", Erp).unwrap();
    hub.register("orders", BrokenOrders::default()).unwrap();

    let answer = hub.user_profile(&visitor()).await;
    let profile = answer.value.clone().expect("two systems know the visitor");
    assert_eq!(
        profile.name.as_deref(),
        Some("Li Na"),
        "the CRM was registered first"
    );
    assert_eq!(
        profile.tier.as_deref(),
        Some("gold"),
        "only the ERP has a tier"
    );
    assert_eq!(profile.email.as_deref(), Some("li.na@example.com"));
    assert_eq!(
        profile.tags.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["vip", "wholesale"]
    );
    assert_eq!(answer.answered_by, vec!["crm", "erp"]);
    assert_eq!(answer.failures.len(), 1);
    assert_eq!(answer.failures[0].adapter, "orders");
    assert!(
        matches!(&answer.failures[0].reason, FailureReason::Failed { error } if error.contains("orders-db")),
        "{:?}",
        answer.failures
    );
    assert!(!answer.is_complete());

    let orders = hub.recent_orders(&visitor(), 1).await;
    assert_eq!(
        orders
            .value
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>(),
        vec!["A-2"],
        "newest first, limited"
    );
    assert_eq!(orders.failures.len(), 1);

    let unknown = hub.user_profile(&VisitorId::new("stranger").unwrap()).await;
    assert_eq!(
        unknown.value.unwrap().name.as_deref(),
        Some("LI NA (ERP)"),
        "the ERP knows them, the CRM does not"
    );

    // Nobody registered can answer product questions: an empty, complete answer.
    let product = hub.product("SKU-1").await;
    assert_eq!(product.value, None);
    assert!(product.is_complete() && product.answered_by.is_empty());
    let found = hub.order("A-1").await;
    assert_eq!(found.value.map(|o| o.id), Some("A-1".into()));
}

#[tokio::test]
async fn custom_queries_skip_adapters_that_do_not_know_them() {
    let mut hub = DataHub::new(config());
    hub.register("crm", Crm::default()).unwrap();
    hub.register("erp", Erp).unwrap();
    let answer = hub
        .query("open_tickets", serde_json::json!({"visitor": "v-1"}))
        .await;
    assert!(answer.is_complete());
    assert_eq!(answer.value.len(), 1);
    assert_eq!(answer.value["crm"]["open"], 2);
    let nobody = hub.query("no_such_query", serde_json::json!({})).await;
    assert!(nobody.value.is_empty() && nobody.is_complete());
}

#[tokio::test]
async fn a_slow_adapter_times_out_without_holding_the_others() {
    let mut hub = DataHub::new(config());
    hub.register("slow", Slow).unwrap();
    hub.register("erp", Erp).unwrap();
    let started = std::time::Instant::now();
    let answer = hub.user_profile(&visitor()).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the 30 s adapter was not waited for: {took:?}"
    );
    assert_eq!(answer.value.unwrap().tier.as_deref(), Some("gold"));
    assert_eq!(answer.answered_by, vec!["erp"]);
    assert_eq!(
        answer.failures[0].reason,
        FailureReason::TimedOut {
            after: Duration::from_millis(200)
        }
    );
}

#[tokio::test]
async fn a_panicking_adapter_is_reported_and_the_hub_keeps_serving() {
    let mut hub = DataHub::new(config());
    hub.register("buggy", Buggy).unwrap();
    hub.register("crm", Crm::default()).unwrap();
    for _ in 0..3 {
        let answer = hub.user_profile(&visitor()).await;
        assert_eq!(answer.value.unwrap().name.as_deref(), Some("Li Na"));
        match &answer.failures[..] {
            [failure] => {
                assert_eq!(failure.adapter, "buggy");
                assert!(
                    matches!(&failure.reason, FailureReason::Panicked { message } if message.contains("index out of bounds")),
                    "{failure:?}"
                );
            }
            other => panic!("expected the one panic, got {other:?}"),
        }
    }
    // Buggy declares ProductBySku but kept the default: "unsupported" is not a failure.
    let product = hub.product("SKU-1").await;
    assert!(product.is_complete(), "{:?}", product.failures);
}

#[tokio::test]
async fn complete_answers_are_cached_until_their_ttl_and_partial_ones_never() {
    let crm = Arc::new(Crm::default());
    let mut hub = DataHub::new(HubConfig {
        cache_ttl: Duration::from_millis(300),
        ..config()
    });
    hub.register_arc("crm", crm.clone()).unwrap();

    let first = hub.user_profile(&visitor()).await;
    assert!(!first.from_cache);
    let second = hub.user_profile(&visitor()).await;
    assert!(second.from_cache);
    assert_eq!(second.value, first.value);
    assert_eq!(
        crm.calls.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = hub.user_profile(&visitor()).await;
    assert!(!third.from_cache, "the TTL expired");
    assert_eq!(crm.calls.load(Ordering::SeqCst), 2);
    hub.clear_cache();
    hub.user_profile(&visitor()).await;
    assert_eq!(crm.calls.load(Ordering::SeqCst), 3);

    // With a failing adapter beside it, answers are partial and not cached.
    let crm = Arc::new(Crm::default());
    let mut hub = DataHub::new(config());
    hub.register_arc("crm", crm.clone()).unwrap();
    hub.register("orders", BrokenOrders::default()).unwrap();
    hub.user_profile(&visitor()).await;
    let again = hub.user_profile(&visitor()).await;
    assert!(!again.from_cache);
    assert_eq!(crm.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_breaker_stops_calling_a_failing_adapter_and_tries_again_later() {
    let broken = Arc::new(BrokenOrders::default());
    let mut hub = DataHub::new(HubConfig {
        breaker: BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_millis(300),
        },
        ..config()
    });
    hub.register_arc("orders", broken.clone()).unwrap();
    hub.register("erp", Erp).unwrap();

    for _ in 0..3 {
        let answer = hub.recent_orders(&visitor(), 10).await;
        assert!(matches!(
            answer.failures[0].reason,
            FailureReason::Failed { .. }
        ));
    }
    assert_eq!(broken.calls.load(Ordering::SeqCst), 3);
    assert!(matches!(
        hub.breaker_state("orders"),
        Some(BreakerState::Open { .. })
    ));

    let answer = hub.recent_orders(&visitor(), 10).await;
    assert!(
        matches!(answer.failures[0].reason, FailureReason::CircuitOpen { .. }),
        "{:?}",
        answer.failures
    );
    assert_eq!(answer.value.len(), 2, "the ERP still answers");
    assert_eq!(
        broken.calls.load(Ordering::SeqCst),
        3,
        "an open breaker does not call"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    let answer = hub.recent_orders(&visitor(), 10).await;
    assert!(
        matches!(answer.failures[0].reason, FailureReason::Failed { .. }),
        "one trial call after the pause"
    );
    assert_eq!(broken.calls.load(Ordering::SeqCst), 4);
    assert!(
        matches!(hub.breaker_state("orders"), Some(BreakerState::Open { .. })),
        "the failed trial reopens it"
    );
    assert_eq!(
        hub.breaker_state("erp"),
        Some(BreakerState::Closed {
            consecutive_failures: 0
        })
    );
}

#[test]
fn names_are_unique() {
    let mut hub = DataHub::new(HubConfig::default());
    hub.register("erp", Erp).unwrap();
    let err = hub.register("erp", Erp).unwrap_err();
    assert!(err.to_string().contains("\"erp\""), "{err}");
    assert_eq!(hub.adapter_names().collect::<Vec<_>>(), vec!["erp"]);
}
