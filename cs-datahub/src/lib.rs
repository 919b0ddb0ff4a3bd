//! One door to the shop's other systems, and the storage engines of the cs
//! customer-service crates.
//!
//! # Layout
//!
//! - [`adapter`]: the [`DataAdapter`] trait a shop implements once per system
//!   (ERP, CRM, order service), with only the capabilities it has, and the
//!   shapes of what they answer ([`UserProfile`], [`Order`], [`Product`]).
//! - [`hub`]: [`DataHub`], which fans a request out to every adapter that can
//!   answer, with a timeout each, merges the answers and lists which adapters
//!   failed: a partial answer, not an error. A TTL cache in front, a
//!   [`breaker`] per adapter, and a panicking adapter is contained.
//! - [`store`]: implementations of [`cs_core::store::MessageStore`], each
//!   behind its cargo feature and each passing cs-core's contract suite
//!   against a real server: SQLite (`sqlite`), PostgreSQL (`postgres`),
//!   MariaDB/MySQL (`mysql`), Redis (`redis`); plus [`store::MessageStoreExt`]
//!   for batched appends, inbox queries and per-day statistics.
//! - [`error`]: [`OpenError`], for a store that cannot be opened.
//!
//! It depends only on `cs-core` among the cs crates.
//!
//! # Examples
//!
//! [`DataHub`] and [`DataAdapter`] have runnable examples on their pages, and
//! so does `store::SqliteStore` (feature `sqlite`). In the workspace,
//! `examples/store_bench.rs` drives every store and `examples/datahub_profile.rs`
//! merges an ERP (a SQL table) and a CRM (an HTTP/JSON service) into one profile.
//!
//! # Not built yet
//!
//! - Redis as a hot cache *in front of* a SQL store (today [`store`] has a
//!   Redis store of its own, holding a recent window per conversation).
//! - Visitor records beyond their conversations (a visitor is the id the host
//!   gives; the stores index conversations by it).

#![warn(missing_docs)]

pub mod adapter;
pub mod breaker;
pub mod error;
pub mod hub;
pub mod store;

pub use error::{redact_url, OpenError};

pub use adapter::{
    AdapterError, Capabilities, Capability, DataAdapter, Order, OrderLine, Product, UserProfile,
};
pub use breaker::{BreakerConfig, BreakerState};
pub use hub::{AdapterFailure, Answer, DataHub, DuplicateAdapter, FailureReason, HubConfig};
