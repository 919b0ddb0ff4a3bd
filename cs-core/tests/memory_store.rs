//! MemoryStore runs the shared store contract suite.
// The suite is the `testing` feature's: on for this crate's own tests by
// its dev-dependency, which a published package does not carry.
#![cfg(feature = "testing")]

use cs_core::store::MemoryStore;

async fn make_store() -> Option<MemoryStore> {
    Some(MemoryStore::new())
}

cs_core::message_store_contract!(make_store);
cs_core::report_store_contract!(make_store);
