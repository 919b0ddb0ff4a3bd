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
//!   [`breaker`] per adapter (the same breaker guards `TieredStore`'s Redis),
//!   and a panicking adapter is contained.
//! - [`store`]: implementations of [`cs_core::store::MessageStore`], each
//!   behind its cargo feature and each passing cs-core's contract suite
//!   against a real server: SQLite (`sqlite`), PostgreSQL (`postgres`),
//!   MariaDB/MySQL (`mysql`), Redis (`redis`), and `TieredStore` (`redis`):
//!   Redis as a cache of recent messages in front of any of the SQL stores.
//!   Each also answers cs-core's
//!   [`ConversationQueries`](cs_core::store::ConversationQueries) (inbox
//!   queries, the open conversations a restart re-queues). Plus
//!   [`store::MessageStoreExt`] for batched appends and per-day statistics, and
//!   [`store::VisitorStore`] for visitor records (name, email, first and
//!   last seen, the host's own attributes).
//! - [`error`]: [`OpenError`], for a store that cannot be opened.
//!
//! It depends only on `cs-core` among the cs crates.
//!
//! # Examples
//!
//! [`DataHub`] and [`DataAdapter`] have runnable examples on their pages, and
//! so do `store::SqliteStore` and [`store::VisitorStore`] (feature `sqlite`). In the workspace,
//! `examples/store_bench.rs` drives every store and `examples/datahub_profile.rs`
//! merges an ERP (a SQL table) and a CRM (an HTTP/JSON service) into one profile.

#![warn(missing_docs)]

// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
