//! Two nodes over a network bus (Redis or NATS), whichever bus carries
//! them: each with its own bus instance (as separate processes would have),
//! one shared `MemoryStore`, and the checks the bus tests make.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cs_core::store::MemoryStore;
use cs_core::Seq;
use cs_transport::{Bus, DispatcherConfig, ServerFrame};

use super::{Client, Node};

/// How long a connection must stay silent to count as having nothing more.
pub const QUIET: Duration = Duration::from_millis(400);

/// A channel or subject name no other test (or run) uses.
pub fn unique_channel(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cs:test:{tag}:{}:{nanos}", std::process::id())
}

/// Nodes "one" and "two" on their buses, sharing a store, with a 100 ms
/// position check.
pub fn nodes_on(bus_one: Arc<dyn Bus>, bus_two: Arc<dyn Bus>) -> (Node, Node) {
    let config = DispatcherConfig {
        position_check_interval: Some(Duration::from_millis(100)),
        ..DispatcherConfig::default()
    };
    let store = Arc::new(MemoryStore::new());
    let one = Node::on_bus("one", config.clone(), store.clone(), bus_one);
    let two = Node::on_bus("two", config, store, bus_two);
    (one, two)
}

/// Polls `done` every 10 ms; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(limit, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{what} within {limit:?}");
}

/// Reads frames until the message with seq `last` has arrived (within
/// `limit`), returning every message's (seq, text) in arrival order and
/// skipping acks and replay markers.
pub async fn read_until(client: &mut Client, last: Seq, limit: Duration) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(limit, async {
        while seen.last().map(|(seq, _)| *seq) != Some(last.get()) {
            if let ServerFrame::Message { message } = client.next().await {
                let text = match &message.body {
                    cs_core::Body::Text { text } => text.clone(),
                    other => format!("{other:?}"),
                };
                seen.push((message.seq.get(), text));
            }
        }
    })
    .await;
    assert!(read.is_ok(), "seq {last} within {limit:?}; got {seen:?}");
    seen
}

/// Fails if a message frame arrives within `QUIET`.
pub async fn assert_no_more_messages(client: &mut Client) {
    while let Some(frame) = client.next_within(QUIET).await {
        assert!(
            !matches!(frame, ServerFrame::Message { .. }),
            "no message after the last one (a duplicate?): {frame:?}"
        );
    }
}

/// The seqs in `seen`, which must be `from..=to` exactly.
pub fn assert_complete(seen: &[(u64, String)], from: u64, to: Seq) {
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (from..=to.get()).collect::<Vec<_>>(),
        "every seq once, in order"
    );
}
