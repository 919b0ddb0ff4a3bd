//! Visitor records: what the shop knows about a visitor beyond the id the
//! host gives (a name, an email, when they were first and last seen, and the
//! host's own free-form attributes), kept by every store through
//! [`VisitorStore`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use cs_core::store::StoreError;
use cs_core::{TenantId, Timestamp, VisitorId};
use serde::{Deserialize, Serialize};

use crate::store::OversizeValue;

/// The longest display name or email a store accepts, in bytes.
pub const MAX_VISITOR_FIELD_BYTES: usize = 256;

/// The largest JSON encoding of a visitor's attributes a store accepts, in
/// bytes. Attributes are for a handful of fields (a loyalty tier, a locale,
/// the shop's customer number), not for documents.
pub const MAX_VISITOR_ATTRIBUTES_BYTES: usize = 16 * 1024;

/// One visitor of one tenant.
///
/// ```
/// use cs_core::{TenantId, Timestamp, VisitorId};
/// use cs_datahub::store::VisitorRecord;
///
/// # fn main() -> Result<(), cs_core::InvalidId> {
/// let mut record = VisitorRecord::new(TenantId::new("shop")?, VisitorId::new("v-42")?, Timestamp::now());
/// record.display_name = Some("Ada".into());
/// record.attributes.insert("tier".into(), "gold".into());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorRecord {
    /// The tenant the visitor belongs to.
    pub tenant: TenantId,
    /// The visitor, as the host identifies them.
    pub id: VisitorId,
    /// A name to show agents, if the host knows one (at most
    /// [`MAX_VISITOR_FIELD_BYTES`]).
    pub display_name: Option<String>,
    /// An email address, if the host knows one (at most
    /// [`MAX_VISITOR_FIELD_BYTES`]).
    pub email: Option<String>,
    /// When the visitor was first seen. Kept by
    /// [`VisitorStore::upsert_visitor`] once a record exists.
    pub first_seen: Timestamp,
    /// When the visitor was last seen.
    pub last_seen: Timestamp,
    /// The host's own fields, such as a loyalty tier or a locale (at most
    /// [`MAX_VISITOR_ATTRIBUTES_BYTES`] as JSON).
    pub attributes: BTreeMap<String, String>,
}

impl VisitorRecord {
    /// A record with nothing but the id, first and last seen `now`.
    pub fn new(tenant: TenantId, id: VisitorId, now: Timestamp) -> Self {
        Self {
            tenant,
            id,
            display_name: None,
            email: None,
            first_seen: now,
            last_seen: now,
            attributes: BTreeMap::new(),
        }
    }
}

/// Where visitor records are kept. Implemented by every cs-datahub store.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cs_core::{TenantId, Timestamp, VisitorId};
/// use cs_datahub::store::{SqliteStore, VisitorRecord, VisitorStore};
///
/// let store = SqliteStore::in_memory().await?;
/// let (shop, ada) = (TenantId::new("shop")?, VisitorId::new("v-42")?);
/// store.touch_visitor(&shop, &ada, Timestamp::now()).await?; // a visit: a minimal record
/// let mut record = store.visitor(&shop, &ada).await?.expect("touched");
/// record.display_name = Some("Ada".into()); // the host learns her name
/// record.last_seen = Timestamp::now();
/// store.upsert_visitor(&record).await?;
/// assert_eq!(store.recent_visitors(&shop, 10).await?[0].display_name.as_deref(), Some("Ada"));
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[async_trait]
pub trait VisitorStore: Send + Sync + 'static {
    /// Creates or updates the record of `record.tenant`, `record.id`: an
    /// existing record keeps its `first_seen`; everything else is replaced.
    /// Returns the record as stored.
    ///
    /// # Errors
    /// [`StoreError::Backend`] carrying [`OversizeValue`] if the display
    /// name, the email or the attributes are over their limits (nothing is
    /// stored then), or a backend error.
    async fn upsert_visitor(&self, record: &VisitorRecord) -> Result<VisitorRecord, StoreError>;

    /// The visitor's record, if there is one.
    ///
    /// # Errors
    /// A backend error, or [`StoreError::Corrupt`] for a record that does not decode.
    async fn visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
    ) -> Result<Option<VisitorRecord>, StoreError>;

    /// Sets the visitor's `last_seen` to `now`, creating a minimal record
    /// (first and last seen `now`, nothing else) if there is none.
    ///
    /// # Errors
    /// A backend error.
    async fn touch_visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// The visitors of `tenant`, most recently seen first, at most `limit`.
    ///
    /// # Errors
    /// A backend error, or [`StoreError::Corrupt`] for a record that does not decode.
    async fn recent_visitors(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<VisitorRecord>, StoreError>;
}

/// A shared store is a store, so hosts can hold `Arc<dyn VisitorStore>`.
#[async_trait]
impl<S: VisitorStore + ?Sized> VisitorStore for Arc<S> {
    async fn upsert_visitor(&self, record: &VisitorRecord) -> Result<VisitorRecord, StoreError> {
        (**self).upsert_visitor(record).await
    }
    async fn visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
    ) -> Result<Option<VisitorRecord>, StoreError> {
        (**self).visitor(tenant, id).await
    }
    async fn touch_visitor(
        &self,
        tenant: &TenantId,
        id: &VisitorId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        (**self).touch_visitor(tenant, id, now).await
    }
    async fn recent_visitors(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<VisitorRecord>, StoreError> {
        (**self).recent_visitors(tenant, limit).await
    }
}

/// Checks a record's sizes and encodes its attributes as JSON, the form
/// every store keeps them in.
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis"
    )),
    allow(dead_code)
)]
pub(crate) fn encode_attributes(
    backend: &str,
    record: &VisitorRecord,
) -> Result<String, StoreError> {
    let oversize = |field: &'static str, len: usize, max: usize| StoreError::Backend {
        backend: backend.to_owned(),
        source: Box::new(OversizeValue { field, len, max }),
    };
    for (field, value) in [
        ("visitor display name", &record.display_name),
        ("visitor email", &record.email),
    ] {
        let len = value.as_ref().map_or(0, String::len);
        if len > MAX_VISITOR_FIELD_BYTES {
            return Err(oversize(field, len, MAX_VISITOR_FIELD_BYTES));
        }
    }
    let json = serde_json::to_string(&record.attributes).map_err(|e| StoreError::Backend {
        backend: backend.to_owned(),
        source: Box::new(e),
    })?;
    if json.len() > MAX_VISITOR_ATTRIBUTES_BYTES {
        return Err(oversize(
            "visitor attributes",
            json.len(),
            MAX_VISITOR_ATTRIBUTES_BYTES,
        ));
    }
    Ok(json)
}

/// A visitor record from its stored parts.
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis"
    )),
    allow(dead_code)
)]
pub(crate) fn decode_visitor(
    tenant: &TenantId,
    id: &str,
    display_name: Option<String>,
    email: Option<String>,
    first_seen: i64,
    last_seen: i64,
    attributes: &str,
) -> Result<VisitorRecord, StoreError> {
    let corrupt = |what: &str, err: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "visitor {id:?} of tenant {tenant}: bad {what}: {err}"
        ))
    };
    let millis = |what: &str, v: i64| {
        u64::try_from(v)
            .map(Timestamp::from_millis)
            .map_err(|e| corrupt(what, &e))
    };
    Ok(VisitorRecord {
        tenant: tenant.clone(),
        id: VisitorId::new(id).map_err(|e| corrupt("id", &e))?,
        display_name,
        email,
        first_seen: millis("first_seen", first_seen)?,
        last_seen: millis("last_seen", last_seen)?,
        attributes: serde_json::from_str(attributes).map_err(|e| corrupt("attributes", &e))?,
    })
}
