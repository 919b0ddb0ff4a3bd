#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

/// The domain: ids, messages, conversations, the router and the store contract.
pub use cs_core as core;
/// Adapters to the shop's systems, and the storage engines. Not built yet: see its crate docs.
pub use cs_datahub as datahub;
/// The local bot. Not built yet: see its crate docs.
pub use cs_intent as intent;
/// Connections and the message path. Not built yet: see its crate docs.
pub use cs_transport as transport;
