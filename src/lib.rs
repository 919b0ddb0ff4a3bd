#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

/// The domain: ids, messages, conversations, the router and the store contract.
pub use cs_core as core;
/// Adapters to the shop's systems (`DataHub`), and the storage engines:
/// SQLite, PostgreSQL, MariaDB/MySQL and Redis, each behind its feature.
pub use cs_datahub as datahub;
/// The local bot: intent classifier, calibrated hand-off, knowledge base.
pub use cs_intent as intent;
/// Connections, the flood-handling dispatcher, the message path and the
/// axum WebSocket adapter (feature `axum`).
pub use cs_transport as transport;
// The service desk (feature `desk`); its own module docs say what it is,
// and an outer doc here would make rustdoc resolve their links from the root.
#[cfg(feature = "desk")]
pub mod desk;
