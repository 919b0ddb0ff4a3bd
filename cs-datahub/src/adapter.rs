//! The [`DataAdapter`] trait a shop implements once per system, and the
//! shapes of what adapters answer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use async_trait::async_trait;
use cs_core::store::BoxError;
use cs_core::{Timestamp, VisitorId};
use serde::{Deserialize, Serialize};

/// One kind of question an adapter may be able to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// [`DataAdapter::user_profile`].
    UserProfile,
    /// [`DataAdapter::recent_orders`].
    RecentOrders,
    /// [`DataAdapter::order`].
    OrderById,
    /// [`DataAdapter::product`].
    ProductBySku,
    /// [`DataAdapter::query`].
    CustomQuery,
}

impl Capability {
    const ALL: [Capability; 5] = [
        Capability::UserProfile,
        Capability::RecentOrders,
        Capability::OrderById,
        Capability::ProductBySku,
        Capability::CustomQuery,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::UserProfile => "user profile",
            Capability::RecentOrders => "recent orders",
            Capability::OrderById => "order by id",
            Capability::ProductBySku => "product by SKU",
            Capability::CustomQuery => "custom query",
        })
    }
}

/// The set of [`Capability`]s an adapter has.
///
/// ```
/// use cs_datahub::{Capabilities, Capability};
/// let caps = Capabilities::of(&[Capability::UserProfile, Capability::RecentOrders]);
/// assert!(caps.contains(Capability::UserProfile));
/// assert!(!caps.contains(Capability::ProductBySku));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// The given capabilities.
    pub fn of(capabilities: &[Capability]) -> Self {
        Self(capabilities.iter().fold(0, |bits, c| bits | c.bit()))
    }

    /// Whether `capability` is in the set.
    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// The capabilities in the set.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

/// What an adapter knows about a shopper. Every field is optional: each
/// system fills what it has, and the hub merges them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    /// The name to greet them by.
    pub name: Option<String>,
    /// Email address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Loyalty tier or segment ("gold", "vip").
    pub tier: Option<String>,
    /// Free-form labels ("wholesale", "complained-2024").
    pub tags: BTreeSet<String>,
    /// Anything else, by name (lifetime value, preferred language, …).
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl UserProfile {
    /// Fills what `self` lacks from `other`: a field already set wins, tags
    /// are united, attributes already present win.
    pub fn merge_from(&mut self, other: UserProfile) {
        fn fill(slot: &mut Option<String>, value: Option<String>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        fill(&mut self.name, other.name);
        fill(&mut self.email, other.email);
        fill(&mut self.phone, other.phone);
        fill(&mut self.tier, other.tier);
        self.tags.extend(other.tags);
        for (key, value) in other.attributes {
            self.attributes.entry(key).or_insert(value);
        }
    }
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product's SKU.
    pub sku: String,
    /// Its name as ordered.
    pub name: String,
    /// How many.
    pub quantity: u32,
}

/// An order, as the shop's order system or ERP sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The shop's order number.
    pub id: String,
    /// Its status in the shop's own words ("paid", "shipped", "已发货").
    pub status: String,
    /// The total in minor units (cents, fen).
    pub total_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// When it was placed.
    pub placed_at: Timestamp,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
}

/// A product from the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Its SKU.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// The price in minor units.
    pub price_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units in stock, if the system knows.
    pub in_stock: Option<u64>,
    /// Anything else, by name.
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// An adapter could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The adapter does not have this capability. The default of every
    /// [`DataAdapter`] method; the hub never counts it as a failure.
    #[error("this adapter cannot answer {0} requests")]
    Unsupported(Capability),
    /// A custom query the adapter does not know. Not a failure either.
    #[error("this adapter has no query named {0:?}")]
    UnknownQuery(String),
    /// The request was malformed for this system (a bad id, bad parameters).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The system failed or could not be reached.
    #[error("the system failed: {0}")]
    Failed(#[source] BoxError),
}

impl AdapterError {
    /// Wraps any error as [`AdapterError::Failed`].
    pub fn failed(e: impl Into<BoxError>) -> Self {
        AdapterError::Failed(e.into())
    }

    /// Whether this means "not mine to answer" rather than a failure.
    pub fn is_not_applicable(&self) -> bool {
        matches!(
            self,
            AdapterError::Unsupported(_) | AdapterError::UnknownQuery(_)
        )
    }
}

/// One of the shop's systems (ERP, CRM, order service), as the hub sees it.
///
/// Implement [`capabilities`](DataAdapter::capabilities) and the methods for
/// those capabilities; the others keep their default, which answers
/// [`AdapterError::Unsupported`]. The hub only asks an adapter what its
/// capabilities say it can answer. Methods may take as long as they like:
/// the hub bounds each call with its timeout.
///
/// ```
/// use async_trait::async_trait;
/// use cs_core::VisitorId;
/// use cs_datahub::{AdapterError, Capabilities, Capability, DataAdapter, UserProfile};
///
/// struct Crm;
///
/// #[async_trait]
/// impl DataAdapter for Crm {
///     fn capabilities(&self) -> Capabilities {
///         Capabilities::of(&[Capability::UserProfile])
///     }
///     async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
///         Ok(Some(UserProfile { name: Some(format!("customer {visitor}")), ..Default::default() }))
///     }
/// }
/// ```
#[async_trait]
pub trait DataAdapter: Send + Sync + 'static {
    /// What this adapter can answer.
    fn capabilities(&self) -> Capabilities;

    /// The shopper's profile, `None` if this system does not know them.
    ///
    /// # Errors
    /// [`AdapterError`].
    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        let _ = visitor;
        Err(AdapterError::Unsupported(Capability::UserProfile))
    }

    /// The shopper's most recent orders, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`AdapterError`].
    async fn recent_orders(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Order>, AdapterError> {
        let _ = (visitor, limit);
        Err(AdapterError::Unsupported(Capability::RecentOrders))
    }

    /// One order by the shop's order number, `None` if unknown here.
    ///
    /// # Errors
    /// [`AdapterError`].
    async fn order(&self, order_id: &str) -> Result<Option<Order>, AdapterError> {
        let _ = order_id;
        Err(AdapterError::Unsupported(Capability::OrderById))
    }

    /// One product by SKU, `None` if unknown here.
    ///
    /// # Errors
    /// [`AdapterError`].
    async fn product(&self, sku: &str) -> Result<Option<Product>, AdapterError> {
        let _ = sku;
        Err(AdapterError::Unsupported(Capability::ProductBySku))
    }

    /// A query of the shop's own, by name, with JSON parameters and a JSON
    /// answer ("loyalty_points", "open_tickets", …).
    ///
    /// # Errors
    /// [`AdapterError::UnknownQuery`] for a name it does not know, or any
    /// other [`AdapterError`].
    async fn query(
        &self,
        name: &str,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, AdapterError> {
        let _ = (name, params);
        Err(AdapterError::Unsupported(Capability::CustomQuery))
    }
}
