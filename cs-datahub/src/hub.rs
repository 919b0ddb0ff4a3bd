//! [`DataHub`]: one question to every system that can answer it.
//!
//! A request fans out to every registered adapter with the capability, each
//! call on its own task with its own timeout. What comes back is merged into
//! one [`Answer`], which also lists the adapters that failed, timed out,
//! panicked or were skipped by their circuit breaker: a partial answer, never
//! an error, so the agent's side panel shows what is known.
//!
//! Each adapter call runs on a spawned task: a panic stays in that task (the
//! hub sees a `JoinError` and reports it), and a call past its deadline is
//! aborted rather than left running.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use cs_core::VisitorId;
use futures::future::join_all;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::adapter::{AdapterError, Capability, DataAdapter, Order, Product, UserProfile};
use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};

/// How the hub treats its adapters.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long one adapter may take to answer. Default 800 ms: the answer
    /// feeds an agent's screen, and a late one is worth less than a partial one.
    pub adapter_timeout: Duration,
    /// How long a complete answer is served from the cache. Default 30 s.
    /// Partial answers are never cached, so a recovered system is asked again.
    pub cache_ttl: Duration,
    /// Most answers kept per kind of request. Default 10,000.
    pub cache_capacity: u64,
    /// When an adapter's circuit breaker opens.
    pub breaker: BreakerConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            adapter_timeout: Duration::from_millis(800),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why an adapter is missing from an [`Answer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    /// It returned an error.
    Failed {
        /// The error, as text.
        error: String,
    },
    /// It did not answer within [`HubConfig::adapter_timeout`].
    TimedOut {
        /// The timeout it missed.
        after: Duration,
    },
    /// It panicked. The hub and the other adapters carry on.
    Panicked {
        /// The panic message, if it had one.
        message: String,
    },
    /// Its circuit breaker is open after repeated failures; it was not asked.
    CircuitOpen {
        /// When it will be tried again.
        retry_in: Duration,
    },
}

/// One adapter that did not contribute to an answer, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterFailure {
    /// The name it was registered under.
    pub adapter: String,
    /// What happened.
    pub reason: FailureReason,
}

/// A merged answer from every adapter that could give one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer<T> {
    /// The merged value.
    pub value: T,
    /// The adapters whose answers went into it, in registration order.
    pub answered_by: Vec<String>,
    /// The adapters that should have answered and did not.
    pub failures: Vec<AdapterFailure>,
    /// Whether this came from the cache.
    pub from_cache: bool,
}

impl<T> Answer<T> {
    /// Every adapter that should have answered did.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A name was registered twice.
#[derive(Debug, thiserror::Error)]
#[error("an adapter named {0:?} is already registered; give each system its own name")]
pub struct DuplicateAdapter(pub String);

struct Registered {
    name: Arc<str>,
    adapter: Arc<dyn DataAdapter>,
    breaker: CircuitBreaker,
}

/// One cache per kind of request, keyed by its arguments. The adapters'
/// answers are cached before merging; merging is cheap.
struct Caches {
    profiles: Cache<VisitorId, Answer<Vec<Option<UserProfile>>>>,
    orders: Cache<(VisitorId, usize), Answer<Vec<Vec<Order>>>>,
    order: Cache<String, Answer<Vec<Option<Order>>>>,
    product: Cache<String, Answer<Vec<Option<Product>>>>,
    query: Cache<(String, String), Answer<Vec<serde_json::Value>>>,
}

fn new_cache<K, V>(config: &HubConfig) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(config.cache_capacity)
        .time_to_live(config.cache_ttl)
        .build()
}

/// The shop's systems behind one door.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use cs_core::VisitorId;
/// use cs_datahub::{AdapterError, Capabilities, Capability, DataAdapter, DataHub, HubConfig, UserProfile};
///
/// struct Crm;
/// #[async_trait]
/// impl DataAdapter for Crm {
///     fn capabilities(&self) -> Capabilities { Capabilities::of(&[Capability::UserProfile]) }
///     async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
///         Ok(Some(UserProfile { tier: Some("gold".into()), ..Default::default() }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut hub = DataHub::new(HubConfig::default());
/// hub.register("crm", Crm)?;
/// let profile = hub.user_profile(&VisitorId::new("v1")?).await;
/// assert!(profile.is_complete());
/// assert_eq!(profile.value.unwrap().tier.as_deref(), Some("gold"));
/// # Ok(())
/// # }
/// ```
pub struct DataHub {
    adapters: Vec<Registered>,
    config: HubConfig,
    caches: Caches,
}

enum Outcome<T> {
    Answered(T),
    NotApplicable,
    Failed(FailureReason),
}

impl DataHub {
    /// A hub with no adapters yet.
    pub fn new(config: HubConfig) -> Self {
        let caches = Caches {
            profiles: new_cache(&config),
            orders: new_cache(&config),
            order: new_cache(&config),
            product: new_cache(&config),
            query: new_cache(&config),
        };
        Self {
            adapters: Vec::new(),
            config,
            caches,
        }
    }

    /// Adds an adapter. Registration order is priority order: when two
    /// systems both know a field, the one registered first wins.
    ///
    /// # Errors
    /// [`DuplicateAdapter`] if `name` is taken.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        adapter: impl DataAdapter,
    ) -> Result<(), DuplicateAdapter> {
        self.register_arc(name, Arc::new(adapter))
    }

    /// [`DataHub::register`] for an adapter that is already shared.
    ///
    /// # Errors
    /// [`DuplicateAdapter`] if `name` is taken.
    pub fn register_arc(
        &mut self,
        name: impl Into<String>,
        adapter: Arc<dyn DataAdapter>,
    ) -> Result<(), DuplicateAdapter> {
        let name = name.into();
        if self.adapters.iter().any(|a| *a.name == *name) {
            return Err(DuplicateAdapter(name));
        }
        self.adapters.push(Registered {
            name: name.into(),
            adapter,
            breaker: CircuitBreaker::new(self.config.breaker.clone()),
        });
        Ok(())
    }

    /// The registered adapter names, in priority order.
    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(|a| &*a.name)
    }

    /// Where an adapter's circuit breaker stands, `None` for an unknown name.
    pub fn breaker_state(&self, adapter: &str) -> Option<BreakerState> {
        self.adapters
            .iter()
            .find(|a| &*a.name == adapter)
            .map(|a| a.breaker.state())
    }

    /// Forgets every cached answer, for instance after the host learns that
    /// a customer's data changed.
    pub fn clear_cache(&self) {
        self.caches.profiles.invalidate_all();
        self.caches.orders.invalidate_all();
        self.caches.order.invalidate_all();
        self.caches.product.invalidate_all();
        self.caches.query.invalidate_all();
    }

    /// The shopper's profile, merged from every system that knows them:
    /// per field, the first adapter (in registration order) that has it wins;
    /// tags are united. `None` if no system knows them.
    pub async fn user_profile(&self, visitor: &VisitorId) -> Answer<Option<UserProfile>> {
        let v = visitor.clone();
        cached(&self.caches.profiles, visitor.clone(), || {
            self.fan_out(Capability::UserProfile, move |adapter| {
                let v = v.clone();
                async move { adapter.user_profile(&v).await }
            })
        })
        .await
        .map_merge(|answers| {
            answers.into_iter().flatten().reduce(|mut merged, next| {
                merged.merge_from(next);
                merged
            })
        })
    }

    /// The shopper's recent orders from every system, newest first, without
    /// duplicates (by order id; the first adapter's copy wins), at most `limit`.
    pub async fn recent_orders(&self, visitor: &VisitorId, limit: usize) -> Answer<Vec<Order>> {
        let v = visitor.clone();
        cached(&self.caches.orders, (visitor.clone(), limit), || {
            self.fan_out(Capability::RecentOrders, move |adapter| {
                let v = v.clone();
                async move { adapter.recent_orders(&v, limit).await }
            })
        })
        .await
        .map_merge(|answers| {
            let mut seen = HashSet::new();
            let mut orders: Vec<Order> = answers
                .into_iter()
                .flatten()
                .filter(|o| seen.insert(o.id.clone()))
                .collect();
            // Stable: equal times keep adapter priority order.
            orders.sort_by_key(|o| std::cmp::Reverse(o.placed_at));
            orders.truncate(limit);
            orders
        })
    }

    /// One order by the shop's order number: the first adapter (in
    /// registration order) that knows it.
    pub async fn order(&self, order_id: &str) -> Answer<Option<Order>> {
        let id = order_id.to_owned();
        cached(&self.caches.order, order_id.to_owned(), || {
            self.fan_out(Capability::OrderById, move |adapter| {
                let id = id.clone();
                async move { adapter.order(&id).await }
            })
        })
        .await
        .map_merge(|answers| answers.into_iter().flatten().next())
    }

    /// One product by SKU: the first adapter (in registration order) that knows it.
    pub async fn product(&self, sku: &str) -> Answer<Option<Product>> {
        let sku_owned = sku.to_owned();
        cached(&self.caches.product, sku.to_owned(), || {
            self.fan_out(Capability::ProductBySku, move |adapter| {
                let sku = sku_owned.clone();
                async move { adapter.product(&sku).await }
            })
        })
        .await
        .map_merge(|answers| answers.into_iter().flatten().next())
    }

    /// A custom query by name, asked of every adapter with
    /// [`Capability::CustomQuery`]; the answer maps each adapter that knew
    /// the query to its result. Adapters that do not know the name
    /// ([`AdapterError::UnknownQuery`]) are left out, not counted as failures.
    pub async fn query(
        &self,
        name: &str,
        params: serde_json::Value,
    ) -> Answer<BTreeMap<String, serde_json::Value>> {
        let key = (name.to_owned(), params.to_string());
        let name = name.to_owned();
        let params = Arc::new(params);
        let gathered = cached(&self.caches.query, key, || {
            self.fan_out(Capability::CustomQuery, move |adapter| {
                let (name, params) = (name.clone(), Arc::clone(&params));
                async move { adapter.query(&name, &params).await }
            })
        })
        .await;
        let value = gathered
            .answered_by
            .iter()
            .cloned()
            .zip(gathered.value)
            .collect();
        Answer {
            value,
            answered_by: gathered.answered_by,
            failures: gathered.failures,
            from_cache: gathered.from_cache,
        }
    }

    /// Asks every adapter with `capability` at once; returns the answers in
    /// registration order, and who failed.
    async fn fan_out<T, F, Fut>(&self, capability: Capability, call: F) -> Answer<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn DataAdapter>) -> Fut,
        Fut: Future<Output = Result<T, AdapterError>> + Send + 'static,
    {
        let timeout = self.config.adapter_timeout;
        let calls = self
            .adapters
            .iter()
            .filter(|a| a.adapter.capabilities().contains(capability))
            .map(|registered| {
                let permit = registered.breaker.try_acquire();
                let task = permit
                    .is_ok()
                    .then(|| tokio::spawn(call(Arc::clone(&registered.adapter))));
                async move {
                    let outcome = match (permit, task) {
                        (Err(retry_in), _) => {
                            return (
                                registered,
                                Outcome::Failed(FailureReason::CircuitOpen { retry_in }),
                            );
                        }
                        (Ok(()), None) => Outcome::NotApplicable,
                        (Ok(()), Some(mut task)) => {
                            match tokio::time::timeout(timeout, &mut task).await {
                                Err(_) => {
                                    task.abort();
                                    Outcome::Failed(FailureReason::TimedOut { after: timeout })
                                }
                                Ok(Err(join)) => Outcome::Failed(FailureReason::Panicked {
                                    message: panic_message(join),
                                }),
                                Ok(Ok(Ok(value))) => Outcome::Answered(value),
                                Ok(Ok(Err(e))) if e.is_not_applicable() => Outcome::NotApplicable,
                                Ok(Ok(Err(e))) => Outcome::Failed(FailureReason::Failed {
                                    error: e.to_string(),
                                }),
                            }
                        }
                    };
                    match &outcome {
                        Outcome::Answered(_) => registered.breaker.record_success(),
                        Outcome::NotApplicable => registered.breaker.record_neutral(),
                        Outcome::Failed(_) => registered.breaker.record_failure(),
                    }
                    (registered, outcome)
                }
            });
        let mut answer = Answer {
            value: Vec::new(),
            answered_by: Vec::new(),
            failures: Vec::new(),
            from_cache: false,
        };
        for (registered, outcome) in join_all(calls).await {
            match outcome {
                Outcome::Answered(value) => {
                    answer.value.push(value);
                    answer.answered_by.push(registered.name.to_string());
                }
                Outcome::NotApplicable => {}
                Outcome::Failed(reason) => answer.failures.push(AdapterFailure {
                    adapter: registered.name.to_string(),
                    reason,
                }),
            }
        }
        answer
    }
}

impl<T> Answer<Vec<T>> {
    fn map_merge<U>(self, merge: impl FnOnce(Vec<T>) -> U) -> Answer<U> {
        Answer {
            value: merge(self.value),
            answered_by: self.answered_by,
            failures: self.failures,
            from_cache: self.from_cache,
        }
    }
}

/// Serves `key` from `cache`, or runs `fetch` and caches a complete answer.
async fn cached<K, T, F, Fut>(cache: &Cache<K, Answer<Vec<T>>>, key: K, fetch: F) -> Answer<Vec<T>>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Answer<Vec<T>>>,
{
    if let Some(mut hit) = cache.get(&key) {
        hit.from_cache = true;
        return hit;
    }
    let answer = fetch().await;
    if answer.is_complete() {
        cache.insert(key, answer.clone());
    }
    answer
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "the adapter's task was cancelled".into();
    }
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
