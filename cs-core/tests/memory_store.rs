//! MemoryStore runs the shared store contract suite.

use cs_core::store::MemoryStore;

async fn make_store() -> Option<MemoryStore> {
    Some(MemoryStore::new())
}

cs_core::message_store_contract!(make_store);
