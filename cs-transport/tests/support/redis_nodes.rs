//! Two nodes over a real Redis: each with its own `RedisBus` (as separate
//! processes would have), one shared `MemoryStore`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cs_core::store::MemoryStore;
use cs_core::{ConversationId, Seq};
use cs_transport::{DispatcherConfig, RedisBus, RedisBusConfig, ServerFrame};

use super::{Client, Node};

pub struct RedisDeployment {
    pub channel: String,
    pub bus_one: Arc<RedisBus>,
    pub bus_two: Arc<RedisBus>,
    pub one: Node,
    pub two: Node,
}

/// A channel no other test (or run) uses.
pub fn unique_channel(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cs:test:{tag}:{}:{nanos}", std::process::id())
}

/// Nodes "one" (bus at `url_one`) and "two" (at `url_two`) on `channel`,
/// with a 100 ms position check, once both have subscribed.
pub async fn redis_deployment(url_one: &str, url_two: &str, channel: &str) -> RedisDeployment {
    let bus_config = RedisBusConfig {
        channel: channel.to_owned(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..RedisBusConfig::default()
    };
    let config = DispatcherConfig {
        position_check_interval: Some(Duration::from_millis(100)),
        ..DispatcherConfig::default()
    };
    let bus_one = RedisBus::connect(url_one, bus_config.clone())
        .await
        .unwrap();
    let bus_two = RedisBus::connect(url_two, bus_config).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let one = Node::on_bus("one", config.clone(), store.clone(), bus_one.clone());
    let two = Node::on_bus("two", config, store, bus_two.clone());
    for bus in [&bus_one, &bus_two] {
        wait_until("both nodes subscribed", Duration::from_secs(10), || {
            bus.stats().subscriptions >= 1
        })
        .await;
    }
    RedisDeployment {
        channel: channel.to_owned(),
        bus_one,
        bus_two,
        one,
        two,
    }
}

impl RedisDeployment {
    /// A conversation of visitor ann, assigned to alice on node one, once
    /// node two has handled everything node one published for it. The
    /// assignment joins alice's connections on every node (a `Follow`
    /// envelope), so one that node two opens before that has landed could
    /// be joined behind the test's back, mid-way through its own join.
    pub async fn conversation_for_alice(&self) -> ConversationId {
        let id = self
            .one
            .conversation("shop", "ann", Some("alice"))
            .await
            .id();
        let mut heard = self.two.pool.host_messages();
        let marker = Bytes::from(id.to_string());
        // One publisher, one channel: node two hears this after the Follow.
        self.one.pool.publish_host("settled", marker.clone());
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(message) = heard.recv().await {
                if &*message.topic == "settled" && message.payload == marker {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(settled, Ok(true), "node two heard node one within 10 s");
        id
    }
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
