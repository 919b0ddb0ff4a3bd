//! One door to the shop's other systems, and the storage engines of the cs
//! customer-service crates.
//!
//! **Status: not built yet.** This crate holds its place in the crate map; its
//! issue ("cs-datahub: DataAdapter/DataHub … and conversation storage") fills
//! it. Nothing here is usable today, and nothing pretends to be. Until then,
//! `cs_core::store::MemoryStore` is the only `MessageStore`.
//!
//! # Planned layout
//!
//! - `adapter`: the `DataAdapter` trait a shop implements once per system
//!   (ERP, CRM, order service), with only the capabilities it has.
//! - `hub`: `DataHub`, which fans a request out to every adapter with a
//!   timeout each, merges the answers and reports which adapters failed.
//! - `store` (features `sqlite`, `postgres`, `mysql`, `redis`): implementations
//!   of `cs_core::store::MessageStore`, each passing cs-core's contract suite
//!   against a real server.
//!
//! It depends only on `cs-core`.
